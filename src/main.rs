//! imgbuild's command line: parses arguments, calls the library, maps errors to exit codes
//! (0 ok, 1 a build/check/upload failed, 2 bad input or usage).

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use imgbuild::check::{self, Status, Tools};
use imgbuild::definition::{Arch, Catalog, DefinitionError, Resolved};
use imgbuild::render::packer::PackerTarget;
use imgbuild::render::{self, RenderError, RenderOptions};
use std::path::PathBuf;
use std::process::ExitCode;

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
struct Cli {
    /// The folder with the image definitions (NAME.yaml).
    #[arg(
        long,
        global = true,
        default_value = "images",
        env = "IMGBUILD_IMAGES_DIR"
    )]
    images_dir: PathBuf,
    /// Machine-readable JSON on stdout instead of plain lines.
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr (-v: every external command line, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    /// --user-data`): user and SSH key, VNC password, /shared NFS export, compose profiles.
    /// Validated with cloud-init's schema before it is written.
    Userdata(UserdataArgs),
    /// A Lima instance YAML that boots a built artifact (location, arch, digest), with cpus,
    /// memory and disk from the definition and port forwards for the desktop and the stack.
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
}

#[derive(Args, Debug)]
struct PublishArgs {
    /// The image.
    image: String,
    /// The built version (default: the newest in the dist folder).
    #[arg(long = "version", value_name = "V")]
    image_version: Option<String>,
    /// The dist folder the build wrote to.
    #[arg(long, default_value = "dist")]
    dist: PathBuf,
    /// The cloud in clouds.yaml (default: $OS_CLOUD, else the OS_* variables).
    #[arg(long)]
    os_cloud: Option<String>,
    /// Show what would be created (or that the image is already there); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seconds allowed for each API call, for an upload to stall (no data moving; a long
    /// upload that keeps moving is not cut off) and for the image to become active. A timeout
    /// is not retried; connection errors and 5xx answers are, with backoff.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// How the data gets in: auto (glance-direct import if offered), upload, import.
    #[arg(long, value_enum, default_value = "auto")]
    method: imgbuild::glance::publish::Method,
    /// Keep this many newest versions visible, hide older ones (default: publish.keep).
    #[arg(long)]
    keep: Option<u32>,
    /// Delete versions beyond this many newest (default: publish.delete_beyond); needs --prune.
    #[arg(long)]
    delete_beyond: Option<u32>,
    /// Really delete the versions beyond delete_beyond.
    #[arg(long)]
    prune: bool,
    /// Upload format: auto (raw for a Ceph RBD default store), qcow2, raw.
    #[arg(long, value_enum, default_value = "auto")]
    disk_format: imgbuild::glance::publish::FormatChoice,
    /// Cache for the raw copy of a qcow2 artifact and the publish lock (default:
    /// $XDG_CACHE_HOME/imgbuild).
    #[arg(long, env = "IMGBUILD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DiffArgs {
    /// The image.
    image: String,
    /// The older version.
    old: String,
    /// The newer version.
    new: String,
    /// The dist folder the builds wrote to.
    #[arg(long, default_value = "dist")]
    dist: PathBuf,
}

#[derive(Args, Debug)]
struct LimaArgs {
    /// The image.
    image: String,
    /// The built version (default: the newest in the dist folder).
    #[arg(long = "version", value_name = "V")]
    image_version: Option<String>,
    /// The dist folder the build wrote to.
    #[arg(long, default_value = "dist")]
    dist: PathBuf,
    /// Write here instead of stdout.
    #[arg(short = 'o', long = "out")]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct UserdataArgs {
    /// The image the VM boots.
    image: String,
    /// The workspace user to create.
    #[arg(long)]
    user: String,
    /// The user's OpenSSH public key(s), one per line (authorized_keys format).
    #[arg(long, value_name = "FILE")]
    ssh_key: PathBuf,
    /// A file whose first line is the VNC password (6-8 characters); needed for desktop images.
    #[arg(long, value_name = "FILE")]
    vnc_password_file: Option<PathBuf>,
    /// The NFS export for the image's shared mount, SERVER:/PATH.
    #[arg(long, value_name = "SERVER:/PATH")]
    shared: Option<String>,
    /// Compose profiles the workspace runs (comma-separated), instead of the image's default.
    #[arg(long, value_delimiter = ',')]
    profiles: Option<Vec<String>>,
    /// Do not give the user passwordless sudo.
    #[arg(long)]
    no_sudo: bool,
    /// Write here instead of stdout (mode 0600: it may hold the VNC password).
    #[arg(short = 'o', long = "out")]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// The images to build. Several (or several arches) build in parallel, as many at once as
    /// the host's cores and memory hold.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// The arch to build (default: the host's, if the image lists it, else its first). Repeat
    /// it for several arches, or give `all` for every arch each image lists.
    #[arg(long, value_name = "A|all")]
    arch: Vec<ArchArg>,
    /// At most N builds at once (default: as many as fit the host's cores and memory).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    jobs: Option<u64>,
    /// qemu: imgbuild drives QEMU itself; packer: `packer build` on the rendered HCL.
    #[arg(long, value_enum, default_value = "qemu")]
    backend: imgbuild::build::Backend,
    /// The version (default: UTC date and short git commit, e.g. 20261123-1a2b3c4).
    #[arg(long = "version", value_name = "V")]
    image_version: Option<String>,
    /// The dist folder; the build lands in OUT/IMAGE/VERSION.
    #[arg(long, default_value = "dist")]
    out: PathBuf,
    /// Skip the smoke boot (the manifest then says so).
    #[arg(long)]
    no_smoke: bool,
    /// Replace an existing OUT/IMAGE/VERSION.
    #[arg(long)]
    force: bool,
    /// qcow2 compression of the artifact.
    #[arg(long, value_enum, default_value = "auto")]
    compression: imgbuild::build::CompressionChoice,
    /// Cache for base images and work folders (default: $XDG_CACHE_HOME/imgbuild).
    #[arg(long, env = "IMGBUILD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Build every layer afresh and keep none of them (downloaded packages are still shared).
    #[arg(long)]
    no_cache: bool,
}

#[derive(Args, Debug)]
struct CacheArgs {
    #[command(subcommand)]
    action: CacheAction,
    /// The cache (default: $XDG_CACHE_HOME/imgbuild).
    #[arg(long, env = "IMGBUILD_CACHE_DIR", global = true)]
    cache_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum CacheAction {
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
enum ArchArg {
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
struct SmokeArgs {
    /// The artifact (qcow2 or raw) to boot; it is never written.
    artifact: PathBuf,
    /// The image definition whose smoke checks to run.
    #[arg(long)]
    image: String,
    /// The artifact's arch (default: the host's, if the image lists it, else its first).
    #[arg(long)]
    arch: Option<Arch>,
    /// Where report.json, junit.xml, serial.log (and screenshot.png) go.
    #[arg(short = 'o', long = "out", default_value = "smoke")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct ChecksumArgs {
    /// Files to hash (with --verify: only these entries; default all).
    files: Vec<PathBuf>,
    /// Verify against this sha256sum-format file (sha512/md5 lines are recognised by length);
    /// names are relative to its folder.
    #[arg(long, value_name = "SUMS")]
    verify: Option<PathBuf>,
    /// The digest to print.
    #[arg(long, value_enum, default_value = "sha256")]
    algo: imgbuild::digest::Algo,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Cache folder to report free space for (default: $XDG_CACHE_HOME/imgbuild).
    #[arg(long, env = "IMGBUILD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RenderArgs {
    /// The image to render.
    image: String,
    /// Only this arch (default: every arch the image lists).
    #[arg(long)]
    arch: Option<Arch>,
    /// Output folder; each arch goes to DIR/ARCH.
    #[arg(short = 'o', long = "out", default_value = "rendered")]
    out: PathBuf,
    /// Render for this Packer release (e.g. 1.6.6 or 1.11.2) instead of the installed one.
    #[arg(long)]
    packer_version: Option<String>,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// Images to validate.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    images: Vec<String>,
    /// Validate every image in the catalog.
    #[arg(long)]
    all: bool,
    /// Treat a validator that is not installed as a failure.
    #[arg(long)]
    strict: bool,
    /// Keep the rendered files here instead of a temporary folder.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// Bad input or usage: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// A check, build or upload failed: exit code 1 (the details were printed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<DefinitionError>() || cause.is::<UsageError>() {
            return 2;
        }
        if cause.is::<imgbuild::render::userdata::UserdataError>() {
            return 2;
        }
        if let Some(b) = cause.downcast_ref::<imgbuild::build::BuildError>() {
            return if b.is_usage() { 2 } else { 1 };
        }
        if let Some(r) = cause.downcast_ref::<RenderError>() {
            if matches!(
                r,
                RenderError::Definition(_) | RenderError::ArchNotListed { .. }
            ) {
                return 2;
            }
        }
    }
    1
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMGBUILD_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("imgbuild={level},exec={level}"))
            }),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let catalog = Catalog::new(&cli.images_dir);
    match &cli.command {
        Command::List => list(cli, &catalog),
        Command::Show { image } => show(cli, &catalog, image),
        Command::Render(a) => render_cmd(cli, &catalog, a),
        Command::Validate(a) => validate(cli, &catalog, a),
        Command::Build(a) => build_cmd(cli, &catalog, a),
        Command::Smoke(a) => smoke_cmd(cli, &catalog, a),
        Command::Checksum(a) => checksum_cmd(cli, a),
        Command::Doctor(a) => doctor_cmd(cli, a),
        Command::Userdata(a) => userdata_cmd(cli, &catalog, a),
        Command::Lima(a) => lima_cmd(cli, &catalog, a),
        Command::Publish(a) => publish_cmd(cli, &catalog, a),
        Command::Diff(a) => diff_cmd(cli, a),
        Command::Cache(a) => cache_cmd(cli, a),
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn list(cli: &Cli, catalog: &Catalog) -> Result<()> {
    let mut rows = Vec::new();
    for name in catalog.names()? {
        let r = catalog.load(&name)?;
        let d = &r.definition;
        rows.push(serde_json::json!({
            "name": name,
            "description": d.description,
            "arch": d.arch,
            "extends": r.chain.get(1).map(|f| f.name.clone()),
            "abstract": d.is_abstract,
            "features": d.features.enabled(),
        }));
    }
    if cli.json {
        return print_json(&rows);
    }
    let width = rows
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(0);
    for r in &rows {
        let arch: Vec<&str> = r["arch"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        println!(
            "{:width$}  {:13}  {}",
            r["name"].as_str().unwrap_or(""),
            arch.join(","),
            r["description"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn show(cli: &Cli, catalog: &Catalog, image: &str) -> Result<()> {
    let r = catalog.load_checked(image)?;
    if cli.json {
        print_json(&r.definition)
    } else {
        print!(
            "# {} (resolved: {})\n{}",
            image,
            chain(&r),
            imgbuild::render::yaml::to_string(&serde_json::to_value(&r.definition)?)
        );
        Ok(())
    }
}

fn chain(r: &Resolved) -> String {
    r.chain
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(" <- ")
}

fn packer_target(explicit: Option<&str>, tools: &Tools) -> (PackerTarget, String) {
    match explicit {
        Some(v) => (
            PackerTarget::from_version(v),
            format!("Packer {v} (--packer-version)"),
        ),
        None => match tools.packer_version() {
            Some(v) => (PackerTarget::from_version(&v), format!("{v} (installed)")),
            None => (
                PackerTarget::Modern,
                "current Packer (none installed)".into(),
            ),
        },
    }
}

fn arches(r: &Resolved, only: Option<Arch>) -> Result<Vec<Arch>> {
    match only {
        Some(a) if !r.definition.arch.contains(&a) => Err(UsageError(format!(
            "{} is not built for {a} (arch lists {})",
            r.name,
            r.definition
                .arch
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
        Some(a) => Ok(vec![a]),
        None => Ok(r.definition.arch.clone()),
    }
}

fn render_cmd(cli: &Cli, catalog: &Catalog, a: &RenderArgs) -> Result<()> {
    let r = catalog.load_checked(&a.image)?;
    if r.definition.is_abstract {
        return Err(UsageError(format!(
            "{} is abstract: render an image that extends it",
            a.image
        ))
        .into());
    }
    let tools = Tools::discover();
    let (target, why) = packer_target(a.packer_version.as_deref(), &tools);
    tracing::info!("rendering Packer HCL for {why}");
    let mut out = Vec::new();
    for arch in arches(&r, a.arch)? {
        let rendered = render::render(&r, arch, RenderOptions { packer: target })?;
        let dir = a.out.join(arch.as_str());
        rendered
            .write_to(&dir)
            .with_context(|| format!("writing {}", dir.display()))?;
        if !cli.json {
            println!(
                "{} {arch}: {} ({} files)",
                a.image,
                dir.display(),
                rendered.files.len()
            );
        }
        out.push(serde_json::json!({
            "image": a.image, "arch": arch, "dir": dir, "digest": rendered.digest(),
            "packer": target, "files": rendered.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
        }));
    }
    if cli.json {
        print_json(&out)?;
    }
    Ok(())
}

fn validate(cli: &Cli, catalog: &Catalog, a: &ValidateArgs) -> Result<()> {
    let names = if a.all {
        catalog.names()?
    } else {
        a.images.clone()
    };
    let tools = Tools::discover();
    let (target, why) = packer_target(None, &tools);
    tracing::info!("validating HCL for {why}");
    let tmp = tempfile::tempdir()?;
    let root = a.keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let mut definition_errors: Vec<String> = Vec::new();
    let mut results = Vec::new();
    for name in &names {
        let r = match catalog.load_checked(name) {
            Ok(r) => r,
            Err(e) => {
                if !cli.json {
                    println!("FAIL {name}: definition");
                }
                definition_errors.push(e.to_string());
                continue;
            }
        };
        if r.definition.is_abstract {
            continue;
        }
        for arch in r.definition.arch.clone() {
            let rendered = match render::render(&r, arch, RenderOptions { packer: target }) {
                Ok(x) => x,
                Err(e @ (RenderError::Definition(_) | RenderError::ArchNotListed { .. })) => {
                    definition_errors.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let dir = root.join(name).join(arch.as_str());
            rendered.write_to(&dir)?;
            for res in check::run(&rendered, &dir, &tools) {
                if !cli.json {
                    let (word, detail) = match &res.status {
                        Status::Passed => ("ok  ", String::new()),
                        Status::Failed(d) => ("FAIL", format!("\n{}", indent(d))),
                        Status::NotRun(d) if a.strict => ("FAIL", format!(" (not run: {d})")),
                        Status::NotRun(d) => ("skip", format!(" (not run: {d})")),
                    };
                    println!(
                        "{word} {name} {arch} {}: {}{detail}",
                        res.validator, res.file
                    );
                }
                results.push(res);
            }
        }
    }
    let failed = results
        .iter()
        .filter(|r| {
            matches!(r.status, Status::Failed(_))
                || (a.strict && matches!(r.status, Status::NotRun(_)))
        })
        .count();
    let not_run = results
        .iter()
        .filter(|r| matches!(r.status, Status::NotRun(_)))
        .count();
    if cli.json {
        print_json(&serde_json::json!({
            "results": results, "definition_errors": definition_errors,
            "failed": failed, "not_run": not_run, "strict": a.strict,
        }))?;
    } else {
        println!(
            "{} passed, {failed} failed, {not_run} not run",
            results
                .iter()
                .filter(|r| r.status == Status::Passed)
                .count()
        );
        if not_run > 0 && !a.strict {
            tracing::warn!("{not_run} validator run(s) did not happen because a tool is missing; --strict makes that a failure");
        }
    }
    if !definition_errors.is_empty() {
        return Err(UsageError(definition_errors.join("\n")).into());
    }
    if failed > 0 {
        return Err(Failed(format!("{failed} validation(s) failed")).into());
    }
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Ctrl-C and SIGTERM set the flag (the build stops and cleans up); a second one exits at once.
fn cancel_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(flag)
}

/// The arch to build or boot: the given one, else the host's if listed, else the first listed.
fn one_arch(r: &Resolved, only: Option<Arch>) -> Result<Arch> {
    let listed = arches(r, only)?;
    Ok(if listed.contains(&Arch::host()) {
        Arch::host()
    } else {
        listed[0]
    })
}

fn buildable(catalog: &Catalog, image: &str) -> Result<Resolved> {
    let r = catalog.load_checked(image)?;
    if r.definition.is_abstract {
        return Err(UsageError(format!(
            "{image} is abstract: build an image that extends it"
        ))
        .into());
    }
    Ok(r)
}

fn build_cmd(cli: &Cli, catalog: &Catalog, a: &BuildArgs) -> Result<()> {
    use imgbuild::build;
    let several = a.images.len() > 1 || a.arch.len() > 1 || a.arch.contains(&ArchArg::All);
    if several {
        return build_several(cli, catalog, a);
    }
    let r = buildable(catalog, &a.images[0])?;
    let only = a.arch.first().map(|x| match x {
        ArchArg::One(arch) => *arch,
        ArchArg::All => unreachable!("`all` builds several"),
    });
    let arch = one_arch(&r, only)?;
    let opts = build_options(a, arch, a.image_version.clone());
    // Bad input first (exit 2), then what the host lacks for this arch (exit 1).
    if let Some(v) = &opts.version {
        build::check_version(v)?;
        let dir = a.out.join(&r.name).join(v);
        if dir.exists() && !a.force {
            return Err(build::BuildError::Exists(dir).into());
        }
    }
    build::schedule::host_can_build(&r, arch).map_err(Failed)?;
    let cancel = cancel_flag()?;
    let mut p = imgbuild::progress::Progress::new(cli.quiet);
    let m = build::build(&r, &opts, &cancel, &mut p)?;
    if cli.json {
        print_json(&m)?;
    } else {
        print_built(&a.out, &m);
    }
    Ok(())
}

fn build_options(
    a: &BuildArgs,
    arch: Arch,
    version: Option<String>,
) -> imgbuild::build::BuildOptions {
    imgbuild::build::BuildOptions {
        arch,
        backend: a.backend,
        version,
        out: a.out.clone(),
        cache: a
            .cache_dir
            .clone()
            .unwrap_or_else(imgbuild::base::default_cache_dir),
        smoke: !a.no_smoke,
        compression: a.compression,
        force: a.force,
        no_cache: a.no_cache,
    }
}

/// The plain lines of a finished build on stdout.
fn print_built(out: &std::path::Path, m: &imgbuild::manifest::Manifest) {
    let dir = out.join(&m.image).join(&m.version);
    println!("{}", dir.join(&m.artifact.file).display());
    println!("sha256 {}", m.digests.sha256);
    println!(
        "{} {} {}: built in {:.0} s ({}, {}), smoke {}",
        m.image,
        m.version,
        m.arch,
        m.build.duration_seconds,
        m.backend,
        m.accel,
        match &m.smoke {
            Some(s) => format!("passed ({} checks)", s.checks),
            None => "skipped".into(),
        }
    );
}

/// Several images and/or arches: everything is checked before the first build starts (exit
/// 2), then the builds run in parallel within the host's cores and memory (see
/// `build::schedule`); exit 1 if any of them failed.
fn build_several(cli: &Cli, catalog: &Catalog, a: &BuildArgs) -> Result<()> {
    use imgbuild::build::{self, schedule};
    let now = std::time::SystemTime::now();
    let mut names: Vec<&String> = Vec::new();
    for n in &a.images {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let mut images = Vec::new();
    for name in names {
        images.push(buildable(catalog, name)?);
    }
    if let Some(v) = &a.image_version {
        build::check_version(v)?;
    }
    let mut planned: Vec<(Resolved, Arch, String)> = Vec::new();
    for r in images {
        let mut wanted: Vec<Arch> = Vec::new();
        if a.arch.contains(&ArchArg::All) {
            wanted = r.definition.arch.clone();
        } else if a.arch.is_empty() {
            wanted.push(one_arch(&r, None)?);
        } else {
            for x in &a.arch {
                if let ArchArg::One(arch) = x {
                    for arch in arches(&r, Some(*arch))? {
                        if !wanted.contains(&arch) {
                            wanted.push(arch);
                        }
                    }
                }
            }
        }
        // One version for every image; the version folder holds one arch, so several arches
        // of one image get the arch appended (V-amd64, V-arm64).
        let version = match &a.image_version {
            Some(v) => v.clone(),
            None => {
                let (commit, dirty) = build::git_state(&r.chain[0].path);
                build::default_version(now, commit.as_deref(), dirty)
            }
        };
        let per_arch = wanted.len() > 1;
        for arch in wanted {
            let v = if per_arch {
                format!("{version}-{arch}")
            } else {
                version.clone()
            };
            build::check_version(&v)?;
            let dir = a.out.join(&r.name).join(&v);
            if dir.exists() && !a.force {
                return Err(build::BuildError::Exists(dir).into());
            }
            planned.push((r.clone(), arch, v));
        }
    }
    let jobs: Vec<schedule::Job> = planned
        .into_iter()
        .map(|(r, arch, v)| {
            let label = format!("{}/{arch}", r.name);
            schedule::Job {
                opts: build_options(a, arch, Some(v)),
                resolved: r,
                // Plain lines even on a terminal: several spinners would fight over it.
                progress: imgbuild::progress::Progress::plain(cli.quiet).with_prefix(&label),
            }
        })
        .collect();
    let budget = schedule::Budget::host(a.jobs.map(|j| j as usize));
    tracing::info!(
        "{} build(s): {}; budget {} cores, {} MiB{}",
        jobs.len(),
        jobs.iter()
            .map(|j| j.label())
            .collect::<Vec<_>>()
            .join(", "),
        budget.cpus,
        budget.memory_mib,
        match budget.jobs {
            Some(n) => format!(", at most {n} at once"),
            None => String::new(),
        }
    );
    let cancel = cancel_flag()?;
    let outcomes = schedule::run(jobs, budget, &cancel);
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for o in &outcomes {
        let mut v = serde_json::json!({
            "image": o.image, "arch": o.arch, "version": o.version, "ok": o.result.is_ok(),
        });
        match &o.result {
            Ok(m) => {
                v["manifest"] = serde_json::to_value(m)?;
                if !cli.json {
                    print_built(&a.out, m);
                }
            }
            Err(e) => {
                let msg = schedule::describe(e);
                let first = msg.lines().next().unwrap_or_default().to_string();
                if !cli.json {
                    println!(
                        "{} {} {}: FAILED: {first}",
                        o.image,
                        o.version.as_deref().unwrap_or("-"),
                        o.arch
                    );
                }
                v["error"] = serde_json::json!(msg);
                failed.push(format!("{}/{} ({first})", o.image, o.arch));
            }
        }
        results.push(v);
    }
    if cli.json {
        print_json(&results)?;
    }
    if !failed.is_empty() {
        return Err(Failed(format!(
            "{} of {} builds failed: {}",
            failed.len(),
            outcomes.len(),
            failed.join("; ")
        ))
        .into());
    }
    Ok(())
}

fn smoke_cmd(cli: &Cli, catalog: &Catalog, a: &SmokeArgs) -> Result<()> {
    let r = buildable(catalog, &a.image)?;
    let arch = one_arch(&r, a.arch)?;
    if !a.artifact.is_file() {
        return Err(UsageError(format!("{}: no such file", a.artifact.display())).into());
    }
    let cancel = cancel_flag()?;
    let accel = imgbuild::qemu::probe_accel(arch);
    let mut p = imgbuild::progress::Progress::new(cli.quiet);
    p.line(&format!(
        "accelerator: {} ({})",
        accel.accel.as_str(),
        accel.reason
    ));
    p.stage("smoke");
    let mut seen = std::collections::HashSet::new();
    let mut on_line = |line: &str| {
        if let Some(j) = line.split("IMGBUILD-SMOKE-RESULT ").nth(1) {
            if let Ok(c) = serde_json::from_str::<imgbuild::smoke::CheckOutcome>(j.trim()) {
                if !seen.insert(c.name.clone()) {
                    return;
                }
                p.status(
                    &format!("{} {}", if c.passed { "ok  " } else { "FAIL" }, c.name),
                    true,
                );
            }
        }
    };
    let report = imgbuild::smoke::smoke(
        &r,
        arch,
        &a.artifact,
        imgbuild::smoke::SmokeOptions {
            accel: accel.accel,
            out_dir: &a.out,
            cancel: &cancel,
            on_line: &mut on_line,
        },
    )?;
    if report.passed {
        p.done("");
    } else {
        p.fail();
    }
    if cli.json {
        print_json(&report)?;
    } else {
        for c in &report.checks {
            println!(
                "{} {}: {}",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        if let Some(e) = &report.error {
            println!("error: {e}");
        }
        println!("report: {}", a.out.join("report.json").display());
    }
    if !report.passed {
        let failed: Vec<String> = report
            .failed_checks()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        return Err(Failed(format!(
            "smoke test failed{}{}",
            if failed.is_empty() {
                String::new()
            } else {
                format!(": {}", failed.join(", "))
            },
            report
                .error
                .as_ref()
                .map(|e| format!("; {}", e.lines().next().unwrap_or_default()))
                .unwrap_or_default()
        ))
        .into());
    }
    Ok(())
}

fn checksum_cmd(cli: &Cli, a: &ChecksumArgs) -> Result<()> {
    use imgbuild::digest;
    if let Some(sums) = &a.verify {
        let text = std::fs::read_to_string(sums)
            .map_err(|e| UsageError(format!("{}: {e}", sums.display())))?;
        let entries = digest::parse_sums(&text, sums).map_err(|e| UsageError(e.to_string()))?;
        let base = sums.parent().unwrap_or(std::path::Path::new("."));
        let wanted: Vec<String> = a
            .files
            .iter()
            .map(|f| {
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        for w in &wanted {
            if !entries.iter().any(|(_, n)| n.trim_start_matches("./") == w) {
                return Err(UsageError(format!("{w} is not listed in {}", sums.display())).into());
            }
        }
        let mut results = Vec::new();
        let mut bad = 0;
        for (hex, name) in &entries {
            let short = name.trim_start_matches("./");
            if !wanted.is_empty() && !wanted.iter().any(|w| w == short) {
                continue;
            }
            let algo = digest::algo_of(hex).ok_or_else(|| {
                UsageError(format!(
                    "{}: `{hex}` is no sha256, sha512 or md5 digest",
                    sums.display()
                ))
            })?;
            let path = base.join(name);
            let (ok, actual) = match digest::digest_file(&path, |_| {}) {
                Ok(d) => (d.get(algo) == hex, d.get(algo).to_string()),
                Err(e) => (false, format!("unreadable: {e}")),
            };
            if !ok {
                bad += 1;
            }
            if !cli.json {
                if ok {
                    println!("{name}: OK");
                } else {
                    println!("{name}: FAILED\n  expected {algo:?}: {hex}\n  actual:   {actual}");
                }
            }
            results.push(serde_json::json!({
                "file": name, "algo": algo, "ok": ok, "expected": hex, "actual": actual,
            }));
        }
        if cli.json {
            print_json(&results)?;
        }
        if bad > 0 {
            return Err(Failed(format!(
                "{bad} of {} checksum(s) did not match",
                results.len()
            ))
            .into());
        }
        return Ok(());
    }
    if a.files.is_empty() {
        return Err(UsageError("give files to hash, or --verify SUMS".into()).into());
    }
    let mut out = Vec::new();
    for f in &a.files {
        let d =
            digest::digest_file(f, |_| {}).with_context(|| format!("hashing {}", f.display()))?;
        if cli.json {
            out.push(serde_json::json!({
                "file": f, "size": d.size, "sha256": d.sha256, "sha512": d.sha512, "md5": d.md5,
            }));
        } else {
            print!("{}", digest::sum_line(d.get(a.algo), &f.to_string_lossy()));
        }
    }
    if cli.json {
        print_json(&out)?;
    }
    Ok(())
}

fn doctor_cmd(cli: &Cli, a: &DoctorArgs) -> Result<()> {
    let cache = a
        .cache_dir
        .clone()
        .unwrap_or_else(imgbuild::base::default_cache_dir);
    let report = imgbuild::doctor::run(&cache);
    if cli.json {
        print_json(&report)?;
    } else {
        print!("{}", report.text());
    }
    if !report.ready {
        return Err(Failed("required tools are missing (see above)".into()).into());
    }
    Ok(())
}

fn userdata_cmd(cli: &Cli, catalog: &Catalog, a: &UserdataArgs) -> Result<()> {
    use imgbuild::render::userdata::{self, LaunchParams};
    let r = buildable(catalog, &a.image)?;
    let read = |p: &PathBuf, what: &str| {
        std::fs::read_to_string(p).map_err(|e| UsageError(format!("{what} {}: {e}", p.display())))
    };
    let ssh_keys = userdata::parse_keys(&read(&a.ssh_key, "--ssh-key")?)?;
    let vnc_password = match &a.vnc_password_file {
        Some(p) => Some(
            read(p, "--vnc-password-file")?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        None => None,
    };
    let text = userdata::render(
        &r,
        &LaunchParams {
            user: a.user.clone(),
            ssh_keys,
            sudo: !a.no_sudo,
            vnc_password,
            shared: a.shared.clone(),
            profiles: a.profiles.clone(),
        },
    )?;
    // Validate before anything is written: our own output failing is a bug (exit 1).
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("user-data");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
    }
    let results = check::cloud_config(&file, &Tools::discover());
    for (name, status) in &results {
        match status {
            Status::Passed => tracing::info!("{name}: passed"),
            Status::NotRun(why) => tracing::warn!("{name}: not run ({why})"),
            Status::Failed(why) => {
                return Err(Failed(format!(
                    "the launch user-data fails {name}:\n{}",
                    indent(why)
                ))
                .into())
            }
        }
    }
    match &a.out {
        Some(out) => {
            // Same folder, then rename: never a half-written file under the final name.
            let dir = out
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let staged = tempfile::Builder::new()
                .prefix(".user-data-")
                .tempfile_in(dir)?;
            std::fs::set_permissions(
                staged.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            std::fs::write(staged.path(), &text)?;
            staged.persist(out).map_err(|e| e.error)?;
            if cli.json {
                print_json(&serde_json::json!({
                    "file": out, "image": a.image, "user": a.user,
                    "validators": results.iter().map(|(n, s)| {
                        let mut v = serde_json::to_value(s).unwrap_or_default();
                        v["validator"] = serde_json::json!(n);
                        v
                    }).collect::<Vec<_>>(),
                }))?;
            }
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn diff_cmd(cli: &Cli, a: &DiffArgs) -> Result<()> {
    let d = imgbuild::pipeline::bom::diff_builds(&a.dist, &a.image, &a.old, &a.new)
        .map_err(|e| UsageError(e.0))?;
    if cli.json {
        print_json(&d)
    } else {
        print!("{}", d.text());
        Ok(())
    }
}

fn lima_cmd(cli: &Cli, catalog: &Catalog, a: &LimaArgs) -> Result<()> {
    let r = buildable(catalog, &a.image)?;
    let (dir, m) = find_build(&a.dist, &a.image, a.image_version.as_deref())?;
    let artifact = dir.join(&m.artifact.file);
    let len = std::fs::metadata(&artifact)
        .map_err(|e| UsageError(format!("{}: {e}", artifact.display())))?
        .len();
    if len != m.artifact.size {
        return Err(Failed(format!(
            "{}: {len} bytes, but the manifest says {}: the artifact changed since it was built",
            artifact.display(),
            m.artifact.size
        ))
        .into());
    }
    let artifact = std::fs::canonicalize(&artifact)?;
    let text = imgbuild::render::lima::render(&r, &m.built(), &artifact);
    match &a.out {
        Some(out) => {
            let dir = out
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let staged = tempfile::Builder::new().prefix(".lima-").tempfile_in(dir)?;
            std::fs::write(staged.path(), &text)?;
            staged.persist(out).map_err(|e| e.error)?;
            if cli.json {
                print_json(
                    &serde_json::json!({"file": out, "image": m.image, "version": m.version, "artifact": artifact}),
                )?;
            }
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// The version folder and manifest of a build: the given version, else the newest.
fn find_build(
    dist: &std::path::Path,
    image: &str,
    version: Option<&str>,
) -> Result<(PathBuf, imgbuild::manifest::Manifest)> {
    use imgbuild::manifest::{self, Manifest};
    struct A<'a> {
        image: &'a str,
        image_version: Option<&'a str>,
    }
    let a = A {
        image,
        image_version: version,
    };
    let image_dir = dist.join(a.image);
    let (dir, m) = match a.image_version {
        Some(v) => {
            let dir = image_dir.join(v);
            let m = Manifest::read(&dir.join(manifest::FILE)).map_err(|e| {
                UsageError(format!(
                    "{}: {e} (build it first: imgbuild build {} --version {v})",
                    dir.join(manifest::FILE).display(),
                    a.image
                ))
            })?;
            (dir, m)
        }
        None => {
            let mut found: Vec<(PathBuf, Manifest)> = std::fs::read_dir(&image_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| {
                    Manifest::read(&e.path().join(manifest::FILE))
                        .ok()
                        .map(|m| (e.path(), m))
                })
                .collect();
            found.sort_by(|x, y| x.1.build.started.cmp(&y.1.build.started));
            found.pop().ok_or_else(|| {
                UsageError(format!(
                    "no build of {} in {} (run: imgbuild build {})",
                    a.image,
                    image_dir.display(),
                    a.image
                ))
            })?
        }
    };
    if m.image != a.image {
        return Err(UsageError(format!(
            "{} is a build of {}, not {}",
            dir.display(),
            m.image,
            a.image
        ))
        .into());
    }
    Ok((dir, m))
}

fn publish_cmd(cli: &Cli, catalog: &Catalog, a: &PublishArgs) -> Result<()> {
    use imgbuild::glance::{auth, http::Http, publish};
    let r = buildable(catalog, &a.image)?;
    let (dir, m) = find_build(&a.dist, &a.image, a.image_version.as_deref())?;
    let artifact = dir.join(&m.artifact.file);
    let mut p = imgbuild::progress::Progress::new(cli.quiet);
    p.stage("verify artifact");
    let d = imgbuild::digest::digest_file(&artifact, |_| {})
        .with_context(|| format!("reading {}", artifact.display()))?;
    if d.sha256 != m.digests.sha256 {
        p.fail();
        return Err(Failed(format!(
            "{}: sha256 mismatch with its manifest: expected {}, actual {}; nothing was uploaded",
            artifact.display(),
            m.digests.sha256,
            d.sha256
        ))
        .into());
    }
    p.done(&format!("sha256 {}", d.sha256));
    let plan = publish::plan(&r, &m);
    let cloud = auth::load(a.os_cloud.as_deref()).map_err(|e| match e {
        auth::AuthError::NoCloud
        | auth::AuthError::UnknownCloud { .. }
        | auth::AuthError::File { .. }
        | auth::AuthError::Incomplete(_) => anyhow::Error::from(UsageError(e.to_string())),
        e => e.into(),
    })?;
    let timeout = std::time::Duration::from_secs(a.timeout);
    let http = Http::new(&cloud.tls, timeout)?;
    p.stage("authenticate");
    let session = auth::authenticate(&cloud, &http).map_err(|e| {
        p.fail();
        Failed(e.to_string())
    })?;
    p.done(&format!("image service {}", session.image_url));
    // Every Glance error ends the same way: exit 1, the status and what it means.
    let failed = |e: publish::PublishError| Failed(publish::describe(&e));
    // One publish of this image to this Glance and project at a time on this machine (a dry
    // run changes nothing and takes no lock).
    let _publish_lock = if a.dry_run {
        None
    } else {
        let cache = a
            .cache_dir
            .clone()
            .unwrap_or_else(imgbuild::base::default_cache_dir);
        let path = publish::lock_path(&cache, &session, &m.image);
        tracing::debug!("publish lock {}", path.display());
        Some(
            imgbuild::cache::FileLock::exclusive(&path, || {
                p.line(&format!(
                    "waiting for another imgbuild publish of {} to {} to finish",
                    m.image, session.image_url
                ))
            })
            .map_err(|e| Failed(e.to_string()))?,
        )
    };
    // Is this artifact already there? Asked once; dry-run and upload both go by the answer.
    let existing = publish::find_existing(&http, &session, &m.digests.sha256).map_err(failed)?;
    // Raw for Ceph RBD (copy-on-write clones in Nova): a raw copy is made in the cache and its
    // digests are what Glance must report; the image keeps the build's imgbuild_sha256.
    let want_raw = existing.is_empty()
        && publish::wants_raw(&http, &session, a.disk_format, &m.artifact.format)
            .map_err(failed)?;
    let mut plan = plan;
    if a.dry_run {
        if want_raw {
            plan.disk_format = "raw".into();
        }
        let would = publish::retain(
            &http,
            &session,
            &m.image,
            a.keep.or(r.definition.publish.keep),
            if a.prune {
                a.delete_beyond.or(r.definition.publish.delete_beyond)
            } else {
                None
            },
            true,
        )
        .map_err(failed)?;
        let action = if existing.is_empty() {
            "create"
        } else {
            "unchanged"
        };
        if cli.json {
            print_json(
                &serde_json::json!({"dry_run": true, "action": action, "plan": plan,
                "retention": would,
                "existing": existing.iter().map(|i| &i["id"]).collect::<Vec<_>>()}),
            )?;
        } else {
            match existing.first() {
                Some(i) => println!(
                    "unchanged: {} is already image {}",
                    plan.name,
                    i["id"].as_str().unwrap_or_default()
                ),
                None => {
                    println!(
                        "create: {} ({}, {} bytes, {})",
                        plan.name, plan.disk_format, m.artifact.size, plan.visibility
                    );
                    for (k, v) in &plan.properties {
                        println!("  {k} = {v}");
                    }
                    println!("  tags: {}", plan.tags.join(", "));
                }
            }
        }
        return Ok(());
    }
    let mut data_manifest = m.clone();
    let mut data_path = artifact.clone();
    let _raw_dir;
    if want_raw {
        p.stage("convert to raw");
        let cache = a
            .cache_dir
            .clone()
            .unwrap_or_else(imgbuild::base::default_cache_dir);
        std::fs::create_dir_all(&cache)?;
        let dir = tempfile::Builder::new()
            .prefix("publish-raw-")
            .tempdir_in(&cache)?;
        let raw = dir.path().join(m.artifact.file.replace(".qcow2", ".raw"));
        imgbuild::qemu::convert(&artifact, &raw, "raw", imgbuild::qemu::Compression::None)?;
        let rd = imgbuild::digest::digest_file(&raw, |_| {})?;
        p.done(&format!("{} MiB raw, sha256 {}", rd.size >> 20, rd.sha256));
        plan.disk_format = "raw".into();
        plan.properties
            .insert("owner_specified.openstack.md5".into(), rd.md5.clone());
        plan.properties
            .insert("owner_specified.openstack.sha256".into(), rd.sha256.clone());
        data_manifest.artifact.format = "raw".into();
        data_manifest.artifact.size = rd.size;
        data_manifest.digests = rd;
        data_path = raw;
        _raw_dir = Some(dir);
    } else {
        _raw_dir = None;
    }
    p.stage("upload");
    let result = match existing.first() {
        Some(img) => Ok(publish::unchanged(img)),
        None => publish::publish(
            &http,
            &session,
            &plan,
            &data_manifest,
            &data_path,
            a.method,
            timeout,
            &mut |done, total| p.bytes(done, Some(total)),
        ),
    };
    let res = match result {
        Ok(x) => x,
        Err(e) => {
            p.fail();
            return Err(failed(e).into());
        }
    };
    p.done(&format!("{} {} ({})", res.action, res.id, res.status));
    let keep = a.keep.or(r.definition.publish.keep);
    let delete_beyond = if a.prune {
        a.delete_beyond.or(r.definition.publish.delete_beyond)
    } else {
        None
    };
    p.stage("retention");
    let kept =
        publish::retain(&http, &session, &m.image, keep, delete_beyond, false).map_err(|e| {
            Failed(format!(
                "the image was published, but retention failed: {}",
                publish::describe(&e)
            ))
        })?;
    p.done(&format!(
        "{} hidden, {} deleted",
        kept.hidden.len(),
        kept.deleted.len()
    ));
    if cli.json {
        let mut v = serde_json::to_value(&res)?;
        v["retention"] = serde_json::to_value(&kept)?;
        print_json(&v)?;
    } else {
        println!(
            "{} {} {} {} ({})",
            res.action,
            res.id,
            res.name,
            res.status,
            if res.method.is_empty() {
                "existing"
            } else {
                &res.method
            }
        );
        println!(
            "checksum {} os_hash_value {}",
            res.checksum, res.os_hash_value
        );
        for h in &kept.hidden {
            println!("hidden {h}");
        }
        for d in &kept.deleted {
            println!("deleted {d}");
        }
    }
    Ok(())
}

fn cache_cmd(cli: &Cli, a: &CacheArgs) -> Result<()> {
    use imgbuild::cache::{self, LayerCache, PrunePolicy};
    let root = a
        .cache_dir
        .clone()
        .unwrap_or_else(imgbuild::base::default_cache_dir);
    let lc = LayerCache::new(&root);
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / 1048576.0);
    match &a.action {
        CacheAction::Ls => {
            let mut rows = cache::list_bases(&root);
            rows.extend(lc.list());
            rows.extend(cache::list_downloads(&root));
            if cli.json {
                return print_json(&rows);
            }
            for e in &rows {
                println!(
                    "{:<7} {:<16} {:<14} {:>10}  used {}{}{}{}",
                    e.kind,
                    &e.key[..e.key.len().min(16)],
                    e.name,
                    mib(e.size),
                    e.last_used,
                    e.image
                        .as_ref()
                        .map(|i| format!("  (built for {i})"))
                        .unwrap_or_default(),
                    if e.in_use { "  IN USE" } else { "" },
                    if e.broken { "  BROKEN" } else { "" },
                );
            }
            let total: u64 = rows.iter().map(|e| e.size).sum();
            println!(
                "{} entries, {} in {}",
                rows.len(),
                mib(total),
                root.display()
            );
            Ok(())
        }
        CacheAction::Prune {
            older_than,
            max_size,
            all,
            dry_run,
        } => {
            let policy = PrunePolicy {
                older_than: Some(
                    cache::parse_age(older_than)
                        .map_err(|e| UsageError(format!("--older-than {e}")))?,
                ),
                max_size: match max_size {
                    None => None,
                    Some(s) => Some(imgbuild::definition::parse_size(s).ok_or_else(|| {
                        UsageError(format!("--max-size `{s}`: a size such as 20G or 512M"))
                    })?),
                },
                all: *all,
            };
            let mut report = lc.prune(&policy, std::time::SystemTime::now(), *dry_run);
            if *all {
                let mut others = cache::list_bases(&root);
                others.extend(cache::list_downloads(&root));
                for e in others {
                    let removed = if e.in_use {
                        false
                    } else if *dry_run {
                        true
                    } else if e.kind == "base" {
                        cache::remove_base(&e.path)?
                    } else {
                        cache::remove_locked(&e.path, &e.path.with_extension("lock"))?
                    };
                    if removed {
                        report.freed += e.size;
                        report.removed.push(e);
                    } else {
                        report.busy.push(e);
                    }
                }
            }
            if cli.json {
                return print_json(&serde_json::json!({
                    "dry_run": dry_run,
                    "removed": report.removed,
                    "in_use": report.busy,
                    "freed": report.freed,
                }));
            }
            let verb = if *dry_run { "would remove" } else { "removed" };
            for e in &report.removed {
                println!(
                    "{verb} {} {} {} ({})",
                    e.kind,
                    &e.key[..e.key.len().min(16)],
                    e.name,
                    mib(e.size)
                );
            }
            for e in &report.busy {
                println!(
                    "kept {} {} {}: in use by a running build",
                    e.kind,
                    &e.key[..e.key.len().min(16)],
                    e.name
                );
            }
            println!(
                "{verb} {} entries, {}",
                report.removed.len(),
                mib(report.freed)
            );
            Ok(())
        }
    }
}
