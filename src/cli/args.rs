//! The command line's arguments (clap derive; the doc comments are the help text, which
//! tests/cli_help.rs keeps as snapshots).

use clap::{Args, Parser, Subcommand};
use imgbuild::definition::Arch;
use std::path::PathBuf;

/// Builds golden VM images for self-hosted AI workspaces and clusters: renders Packer HCL and
/// cloud-init from a declarative definition, builds in QEMU, smoke-boots, checksums and
/// publishes to OpenStack Glance.
#[derive(Parser, Debug)]
#[command(
    name = "imgbuild",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The folder with the image definitions (NAME.yaml).
    #[arg(
        long,
        global = true,
        default_value = "images",
        env = "IMGBUILD_IMAGES_DIR"
    )]
    pub images_dir: PathBuf,
    /// Machine-readable JSON on stdout instead of plain lines.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v: every external command line, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the images in the catalog with their descriptions and arches.
    List,
    /// Print an image's resolved definition (after `extends`), as YAML or with --json as JSON.
    Show {
        /// The image name (file stem in the images folder).
        image: String,
    },
    /// Render Packer HCL, cloud-init seed files and the compose project, per arch.
    Render(RenderArgs),
    /// Check definitions and run the real validators over their rendered files: packer
    /// validate, cloud-init schema, check-jsonschema (cloud-config 24.04, netplan v2, compose-spec).
    Validate(ValidateArgs),
    /// Build an image: base, provisioning in QEMU (native or Packer), hygiene, compaction,
    /// smoke boot, digests and manifest, into OUT/IMAGE/VERSION (atomically).
    #[command(disable_version_flag = true)]
    Build(BuildArgs),
    /// Boot a built artifact on a throw-away overlay and run the image's smoke checks
    /// (the artifact is never modified); writes report.json, junit.xml, serial.log.
    Smoke(SmokeArgs),
    /// Print sha256sum-format lines for files, or verify files against a SHA256SUMS file.
    Checksum(ChecksumArgs),
    /// Check the host: tool versions, whether KVM really works, free disk in the cache.
    Doctor(DoctorArgs),
    /// Launch-time user-data for one user's VM of an image (for `openstack server create
    /// --user-data`): user and SSH key, desktop password (VNC, RDP), /shared NFS export, compose
    /// profiles, the K3s cluster to join.
    /// Validated with cloud-init's schema before it is written.
    Userdata(UserdataArgs),
    /// A Lima instance YAML that boots a built artifact (location, arch, digest), with cpus,
    /// memory and disk from the definition and port forwards for the desktop and the stack;
    /// or, with --lab, the instance files of a lab of several nodes (networks, raw disks,
    /// SSH key, NICs without address), its networks.yaml additions and start sequence.
    #[command(disable_version_flag = true)]
    Lima(LimaArgs),
    /// Upload a built version to OpenStack Glance (clouds.yaml / OS_* auth), verify Glance's
    /// md5 and sha512 against the manifest, delete the image again on any failure. A re-run
    /// with the same artifact uploads nothing.
    #[command(disable_version_flag = true)]
    Publish(PublishArgs),
    /// Packages added, removed and changed between two built versions of an image (from their
    /// bills of materials), for release notes: `+ name version`, `- name version`,
    /// `~ name old -> new`.
    Diff(DiffArgs),
    /// The build cache: `ls` what is in it, `prune` what is old. Layers are content-addressed
    /// (a layer's key covers its parent and everything it renders from).
    Cache(CacheArgs),
    /// A CI pipeline for the catalog in an existing CI engine.
    Ci(CiArgs),
}

#[derive(Args, Debug)]
pub struct CiArgs {
    #[command(subcommand)]
    pub engine: CiEngine,
}

#[derive(Subcommand, Debug)]
pub enum CiEngine {
    /// A GitLab CI child pipeline: per image and arch a build, smoke and publish job, ordered
    /// by `extends` (`needs:`), the smoke's JUnit report as a test report, publishing one at a
    /// time per image (`resource_group`), on runners with the given tags.
    Gitlab(CiGitlabArgs),
}

#[derive(Args, Debug)]
pub struct CiGitlabArgs {
    /// The images (default: every buildable image of the catalog).
    pub images: Vec<String>,
    /// Only this arch (default: every arch each image lists).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// A runner tag every job asks for (repeatable; runners with KVM).
    #[arg(long = "runner-tag", value_name = "TAG", default_value = "kvm")]
    pub runner_tags: Vec<String>,
    /// The remote layer cache every build job uses (s3://BUCKET[/PREFIX]); its keys come
    /// from the project's CI/CD variables (AWS_ACCESS_KEY_ID, ...). Jobs of unprotected refs
    /// only read from it.
    #[arg(long, value_name = "URL")]
    pub cache_remote: Option<String>,
    /// Write here instead of stdout.
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The image.
    pub image: String,
    /// The built version (default: the newest in the dist folder).
    #[arg(long = "version", value_name = "V")]
    pub image_version: Option<String>,
    /// The dist folder the build wrote to.
    #[arg(long, default_value = "dist")]
    pub dist: PathBuf,
    /// The cloud in clouds.yaml (default: $OS_CLOUD, else the OS_* variables).
    #[arg(long)]
    pub os_cloud: Option<String>,
    /// Show what would be created (or that the image is already there); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds allowed for each API call, for an upload to stall (no data moving; a long
    /// upload that keeps moving is not cut off) and for the image to become active. A timeout
    /// is not retried; connection errors and 5xx answers are, with backoff.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// How the data gets in: auto (glance-direct import if offered), upload, import.
    #[arg(long, value_enum, default_value = "auto")]
    pub method: imgbuild::glance::publish::Method,
    /// Keep this many newest versions visible, hide older ones (default: publish.keep).
    #[arg(long)]
    pub keep: Option<u32>,
    /// Delete versions beyond this many newest (default: publish.delete_beyond); needs --prune.
    #[arg(long)]
    pub delete_beyond: Option<u32>,
    /// Really delete the versions beyond delete_beyond.
    #[arg(long)]
    pub prune: bool,
    /// Upload format: auto (raw for a Ceph RBD default store), qcow2, raw.
    #[arg(long, value_enum, default_value = "auto")]
    pub disk_format: imgbuild::glance::publish::FormatChoice,
    /// Cache for the raw copy of a qcow2 artifact and the publish lock (default:
    /// $XDG_CACHE_HOME/imgbuild).
    #[arg(long, env = "IMGBUILD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The image.
    pub image: String,
    /// The older version.
    pub old: String,
    /// The newer version.
    pub new: String,
    /// The dist folder the builds wrote to.
    #[arg(long, default_value = "dist")]
    pub dist: PathBuf,
}

#[derive(Args, Debug)]
pub struct LimaArgs {
    /// The image (not with --lab, whose file names it).
    #[arg(required_unless_present = "lab", conflicts_with = "lab")]
    pub image: Option<String>,
    /// A lab description (YAML: image, vm_type, ssh_key, networks, nodes); writes one
    /// NODE.yaml per node, networks.yaml and start.sh into the folder given with -o.
    #[arg(long, value_name = "FILE", requires = "out")]
    pub lab: Option<PathBuf>,
    /// The built version (default: the newest in the dist folder).
    #[arg(long = "version", value_name = "V")]
    pub image_version: Option<String>,
    /// The dist folder the build wrote to.
    #[arg(long, default_value = "dist")]
    pub dist: PathBuf,
    /// Write here instead of stdout (with --lab: the folder for the lab's files).
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UserdataArgs {
    /// The image the VM boots.
    pub image: String,
    /// The workspace user to create.
    #[arg(long)]
    pub user: String,
    /// The user's OpenSSH public key(s), one per line (authorized_keys format).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: PathBuf,
    /// A file whose first line is the desktop password for VNC and RDP (6-72 characters; VNC
    /// uses the first 8); needed for desktop images. It reaches the user-data only hashed.
    #[arg(long, value_name = "FILE", alias = "vnc-password-file")]
    pub desktop_password_file: Option<PathBuf>,
    /// The NFS export for the image's shared mount, SERVER:/PATH.
    #[arg(long, value_name = "SERVER:/PATH")]
    pub shared: Option<String>,
    /// Compose profiles the workspace runs (comma-separated), instead of the image's default.
    #[arg(long, value_delimiter = ',')]
    pub profiles: Option<Vec<String>>,
    /// The host name or address users reach the stack's services at (their own links and the
    /// start page use it), instead of the image's `compose_stack.host`.
    #[arg(long, value_name = "HOST")]
    pub stack_host: Option<String>,
    /// K3s images: the API server this node joins, https://HOST:PORT (a server image without
    /// it starts a new cluster).
    #[arg(long, value_name = "URL")]
    pub k3s_server: Option<String>,
    /// K3s images: a file whose first line is the cluster token (never on the command line);
    /// it lands in a 0600 file of its own in the VM.
    #[arg(long, value_name = "FILE")]
    pub k3s_token_file: Option<PathBuf>,
    /// K3s images: an extra node label KEY=VALUE (repeatable), added to the image's.
    #[arg(long = "k3s-label", value_name = "KEY=VALUE")]
    pub k3s_labels: Vec<String>,
    /// K3s images: an extra node taint KEY=VALUE:EFFECT (repeatable), added to the image's.
    #[arg(long = "k3s-taint", value_name = "KEY=VALUE:EFFECT")]
    pub k3s_taints: Vec<String>,
    /// Kolla hosts: the whole, empty disk that becomes LVM's `cinder-volumes` group at first
    /// boot (e.g. /dev/vdb or /dev/disk/by-id/virtio-SERIAL); a disk with data is refused.
    #[arg(long, value_name = "DEVICE")]
    pub cinder_volumes: Option<String>,
    /// Do not give the user passwordless sudo.
    #[arg(long)]
    pub no_sudo: bool,
    /// Write here instead of stdout (mode 0600: it may hold a password hash or a cluster token).
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The images to build. Several (or several arches) build in parallel, as many at once as
    /// the host's cores and memory hold; an image after the images it extends, so that it
    /// reuses the layers they share.
    #[arg(
        required_unless_present = "all",
        conflicts_with = "all",
        value_name = "IMAGE"
    )]
    pub images: Vec<String>,
    /// Build every buildable image of the catalog (in dependency order).
    #[arg(long)]
    pub all: bool,
    /// The arch to build (default: the host's, if the image lists it, else its first). Repeat
    /// it for several arches, or give `all` for every arch each image lists.
    #[arg(long, value_name = "A|all")]
    pub arch: Vec<ArchArg>,
    /// At most N builds at once (default: as many as fit the host's cores and memory).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,
    /// qemu: imgbuild drives QEMU itself; packer: `packer build` on the rendered HCL.
    #[arg(long, value_enum, default_value = "qemu")]
    pub backend: imgbuild::pipeline::Backend,
    /// The version (default: UTC date and short git commit, e.g. 20261123-1a2b3c4).
    #[arg(long = "version", value_name = "V")]
    pub image_version: Option<String>,
    /// The dist folder; the build lands in OUT/IMAGE/VERSION.
    #[arg(long, default_value = "dist")]
    pub out: PathBuf,
    /// Skip the smoke boot (the manifest then says so).
    #[arg(long)]
    pub no_smoke: bool,
    /// Replace an existing OUT/IMAGE/VERSION.
    #[arg(long)]
    pub force: bool,
    /// qcow2 compression of the artifact.
    #[arg(long, value_enum, default_value = "auto")]
    pub compression: imgbuild::pipeline::CompressionChoice,
    /// Cache for base images and work folders (default: $XDG_CACHE_HOME/imgbuild).
    #[arg(long, env = "IMGBUILD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Build every layer afresh and keep none of them (downloaded packages are still shared).
    #[arg(long)]
    pub no_cache: bool,
    /// A remote layer cache in S3-compatible object storage, s3://BUCKET[/PREFIX]: layers are
    /// fetched from it before being built and uploaded after. Endpoint, region, keys and CA
    /// from the usual AWS variables (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_CA_BUNDLE). Bootstrapped bases go through it
    /// too (with --no-cache, only they do).
    #[arg(long, env = "IMGBUILD_CACHE_REMOTE", value_name = "URL")]
    pub cache_remote: Option<String>,
    /// Only fetch from the remote cache, never upload (for untrusted branches).
    #[arg(
        long,
        env = "IMGBUILD_CACHE_REMOTE_READ_ONLY",
        requires = "cache_remote"
    )]
    pub cache_remote_read_only: bool,
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
    /// The cache (default: $XDG_CACHE_HOME/imgbuild).
    #[arg(long, env = "IMGBUILD_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// List the cached layers, bases and shared downloads: size, last use, whether a running
    /// build holds them.
    Ls,
    /// Remove layers not used for a while (and the layers built on them), broken and abandoned
    /// ones; never anything a running build holds.
    Prune {
        /// Remove layers not used for this long (e.g. 7d, 12h).
        #[arg(long, default_value = "7d")]
        older_than: String,
        /// Then remove the least recently used layers until they take at most this much
        /// (e.g. 20G).
        #[arg(long)]
        max_size: Option<String>,
        /// Remove everything no running build holds: layers, bases, shared downloads.
        #[arg(long)]
        all: bool,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `--arch` of `build`: one arch, or every arch the image lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchArg {
    All,
    One(Arch),
}

impl std::str::FromStr for ArchArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            Ok(ArchArg::All)
        } else {
            s.parse()
                .map(ArchArg::One)
                .map_err(|_| format!("unknown arch `{s}` (expected amd64, arm64 or all)"))
        }
    }
}

#[derive(Args, Debug)]
pub struct SmokeArgs {
    /// The artifact (qcow2 or raw) to boot; it is never written.
    pub artifact: PathBuf,
    /// The image definition whose smoke checks to run.
    #[arg(long)]
    pub image: String,
    /// The artifact's arch (default: the host's, if the image lists it, else its first).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Where report.json, junit.xml, serial.log (and screenshot.png) go.
    #[arg(short = 'o', long = "out", default_value = "smoke")]
    pub out: PathBuf,
    /// Boot with these compose profiles (comma-separated) instead of the image's default, as
    /// `imgbuild userdata --profiles` would; the health wait covers their baked-in services.
    #[arg(long, value_delimiter = ',')]
    pub profiles: Option<Vec<String>>,
}

#[derive(Args, Debug)]
pub struct ChecksumArgs {
    /// Files to hash (with --verify: only these entries; default all).
    pub files: Vec<PathBuf>,
    /// Verify against this sha256sum-format file (sha512/md5 lines are recognised by length);
    /// names are relative to its folder.
    #[arg(long, value_name = "SUMS")]
    pub verify: Option<PathBuf>,
    /// The digest to print.
    #[arg(long, value_enum, default_value = "sha256")]
    pub algo: imgbuild::digest::Algo,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Cache folder to report free space for (default: $XDG_CACHE_HOME/imgbuild).
    #[arg(long, env = "IMGBUILD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// The image to render.
    pub image: String,
    /// Only this arch (default: every arch the image lists).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Output folder; each arch goes to DIR/ARCH.
    #[arg(short = 'o', long = "out", default_value = "rendered")]
    pub out: PathBuf,
    /// Render for this Packer release (e.g. 1.6.6 or 1.11.2) instead of the installed one.
    #[arg(long)]
    pub packer_version: Option<String>,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Images to validate.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub images: Vec<String>,
    /// Validate every image in the catalog.
    #[arg(long)]
    pub all: bool,
    /// Treat a validator that is not installed as a failure.
    #[arg(long)]
    pub strict: bool,
    /// Keep the rendered files here instead of a temporary folder.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Also ask each compose stack image's registry whether its tag exists (the OCI
    /// distribution API, anonymous pull tokens); an unreachable registry is "not run".
    #[arg(long)]
    pub online: bool,
}
