//! `imgbuild build`: the pipeline, one stage per module, data flowing one way.
//!
//! render → base (cache | download | bootstrap) → provision (native QEMU | packer, behind
//! [`Provisioner`]) with the hygiene at poweroff → [`compact`] → [`smoke`] boot → digests →
//! [`manifest`] → dist/IMAGE/VERSION, renamed into place only when everything passed
//! ([`dist`]). [`run_stages`] reads as that sequence.
//!
//! All work happens in a folder under the cache (`work/`); dist/ only ever sees a finished
//! version folder. A failed build keeps its logs (not its disks) under the cache's `failed/`.

pub mod bom;
pub mod compact;
pub mod dist;
pub mod error;
pub mod manifest;
pub mod provision;
pub mod schedule;
pub mod smoke;
pub mod version;

pub use compact::CompressionChoice;
pub use error::BuildError;
pub use provision::{Backend, ProvisionInput, Provisioned, Provisioner};
pub use version::{check_version, default_version, git_state};

use crate::base::{self, BaseError, BaseImage};
use crate::definition::{Arch, Resolved};
use crate::progress::Progress;
use crate::qemu::{self, AccelChoice};
use crate::render::{self, RenderOptions, Rendered};
use manifest::Manifest;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

pub struct BuildOptions {
    pub arch: Arch,
    pub backend: Backend,
    pub version: Option<String>,
    /// The dist root: the version folder is OUT/IMAGE/VERSION.
    pub out: PathBuf,
    pub cache: PathBuf,
    pub smoke: bool,
    pub compression: CompressionChoice,
    pub force: bool,
    /// Build every layer afresh and keep none (the shared downloads are still used).
    pub no_cache: bool,
    /// The remote layer cache shared by the site's runners, if any.
    pub remote: Option<std::sync::Arc<crate::remote::Remote>>,
}

/// Builds one arch of an image into OUT/IMAGE/VERSION with `opts.backend`; returns the
/// manifest.
pub fn build(
    r: &Resolved,
    opts: &BuildOptions,
    cancel: &AtomicBool,
    p: &mut Progress,
) -> Result<Manifest, BuildError> {
    build_with(r, opts, opts.backend.provisioner(), cancel, p)
}

/// [`build`] with any provisioner (tests pass a fake one).
pub fn build_with(
    r: &Resolved,
    opts: &BuildOptions,
    provisioner: &dyn Provisioner,
    cancel: &AtomicBool,
    p: &mut Progress,
) -> Result<Manifest, BuildError> {
    let started = SystemTime::now();
    let git = git_state(&r.chain[0].path);
    let version = match &opts.version {
        Some(v) => {
            check_version(v)?;
            v.clone()
        }
        None => default_version(started, git.0.as_deref(), git.1),
    };
    let image_dir = opts.out.join(&r.name);
    let final_dir = image_dir.join(&version);
    if final_dir.exists() && !opts.force {
        return Err(BuildError::Exists(final_dir));
    }
    dist::sweep_stale(&image_dir);
    std::fs::create_dir_all(&opts.cache).map_err(crate::IoError::at(&opts.cache))?;
    let free_at_start = Space::now(opts);
    let work = dist::WorkDir::create(&opts.cache, &format!("{}-{version}-{}", r.name, opts.arch))?;
    p.line(&format!(
        "building {} {version} for {} with the {} backend (work: {})",
        r.name,
        opts.arch,
        provisioner.name(),
        work.path().display()
    ));
    let job = Job {
        r,
        opts,
        provisioner,
        version: &version,
        started,
        git,
        work: work.path(),
        cancel,
    };
    let result = run_stages(&job, p).and_then(|(manifest, stage)| {
        dist::publish_dir(&stage, &final_dir, opts.force)?;
        Ok(manifest)
    });
    match result {
        Ok(manifest) => Ok(manifest),
        Err(e) => {
            p.fail();
            let e = if e.is_no_space() {
                free_at_start.explain(opts, e)
            } else {
                e
            };
            if let Some(kept) = work.keep_logs(&opts.cache) {
                p.line(&format!("logs of the failed build: {}", kept.display()));
            }
            Err(e)
        }
    }
}

/// Free bytes in the cache and the output folder.
struct Space {
    cache: u64,
    out: u64,
}

impl Space {
    fn now(opts: &BuildOptions) -> Space {
        Space {
            cache: crate::host::free_bytes(&opts.cache).unwrap_or(0),
            out: crate::host::free_bytes(&opts.out).unwrap_or(0),
        }
    }

    /// The no-space error for a build that started with `self` free: names the folder that
    /// filled up (the one with less room left; the cache when both share a filesystem) and
    /// what the build needed.
    fn explain(&self, opts: &BuildOptions, cause: BuildError) -> BuildError {
        let now = Space::now(opts);
        let same_fs = same_filesystem(&opts.cache, &opts.out);
        let (folder, role, free, at_start) = if same_fs || now.cache <= now.out {
            (&opts.cache, "the cache folder", now.cache, self.cache)
        } else {
            (&opts.out, "the output folder", now.out, self.out)
        };
        BuildError::NoSpace {
            folder: folder.clone(),
            role,
            free_mib: free >> 20,
            free_at_start_mib: at_start >> 20,
            cause: cause
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    }
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| {
        p.ancestors()
            .find_map(|x| std::fs::metadata(x).ok())
            .map(|m| m.dev())
    };
    dev(a).is_some() && dev(a) == dev(b)
}

/// One build's fixed inputs.
struct Job<'a> {
    r: &'a Resolved,
    opts: &'a BuildOptions,
    provisioner: &'a dyn Provisioner,
    version: &'a str,
    started: SystemTime,
    /// The definition's git commit and whether its tree had changes.
    git: (Option<String>, bool),
    work: &'a Path,
    cancel: &'a AtomicBool,
}

/// The stages in order; returns the manifest and the assembled version folder.
fn run_stages(job: &Job, p: &mut Progress) -> Result<(Manifest, PathBuf), BuildError> {
    let (r, opts, arch) = (job.r, job.opts, job.opts.arch);
    let stage_dir = job.work.join("stage");
    let logs = stage_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(crate::IoError::at(&logs))?;

    let rendered = render_stage(job, p)?;
    let base = base_stage(job, p)?;
    // Held while the build stands on the base, so that `cache prune` leaves it alone.
    let _base_in_use = crate::cache::FileLock::shared(&base.path.with_extension("use"))
        .map_err(|crate::cache::CacheError::Io(e)| BuildError::Io(e))?;
    let accel = accel_stage(job, p)?;

    p.stage(&format!("provision ({})", job.provisioner.name()));
    let plan = layer_plan(job, &base, &rendered);
    let input = ProvisionInput {
        resolved: r,
        arch,
        accel: accel.accel,
        base: &base,
        rendered_dir: &job.work.join("rendered"),
        work: job.work,
        logs: &logs,
        cancel: job.cancel,
        layers: &plan,
        cache: &opts.cache,
        no_cache: opts.no_cache,
        remote: opts.remote.as_deref(),
    };
    let provisioned = job.provisioner.provision(&input, p)?;
    p.done(&provision_summary(&provisioned.layers));

    p.stage("compact");
    let file = format!(
        "{}-{}-{arch}.{}",
        r.name,
        job.version,
        r.definition.disk.format.as_str()
    );
    let artifact = compact::compact(r, &provisioned, opts.compression, &stage_dir, file, p)?;

    let smoke = if opts.smoke {
        Some(smoke::stage(
            r,
            arch,
            &artifact.path,
            accel.accel,
            &stage_dir,
            job.cancel,
            p,
        )?)
    } else {
        p.line("smoke boot skipped (--no-smoke)");
        None
    };

    p.stage("digests");
    let digests = crate::digest::digest_file(&artifact.path, |_| {})?;
    p.done(&format!("sha256 {}", digests.sha256));

    p.stage("bill of materials");
    let bom = bom::write(
        &bom::Input {
            resolved: r,
            arch,
            version: job.version,
            artifact: &artifact,
            digests: &digests,
            packages: &provisioned.packages,
            container_images: &provisioned.container_images,
            timestamp: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        },
        &stage_dir,
    )?;
    if provisioned.packages.is_empty() {
        p.line("the guest reported no package list: the bill of materials lists no OS packages");
    }
    p.done(&format!(
        "{} packages: {}, {}",
        bom.package_count, bom.packages, bom.cyclonedx
    ));

    let m = manifest::assemble(manifest::Parts {
        resolved: r,
        version: job.version,
        backend: job.provisioner.name(),
        accel: accel.accel,
        base: &base,
        rendered: &rendered,
        artifact: &artifact,
        digests,
        smoke,
        bom,
        provisioned: &provisioned,
        started: job.started,
        seconds: p.elapsed().as_secs_f64(),
        git: job.git.clone(),
    });
    manifest::write(&m, &stage_dir)?;
    Ok((m, stage_dir))
}

/// The provision stage's line: what was built, booted or reused (a build whose layers all came
/// from a cache booted nothing and says so; Packer's one boot has no layers).
fn provision_summary(layers: &[provision::LayerRecord]) -> String {
    let n = layers.len();
    let built: Vec<_> = layers.iter().filter(|l| !l.cached).collect();
    let remote = layers.iter().filter(|l| l.remote).count();
    let from_remote = if remote > 0 {
        format!(", {remote} fetched from the remote cache")
    } else {
        String::new()
    };
    if n == 0 {
        "hygiene done, powered off".into()
    } else if built.is_empty() {
        format!("all {n} layers reused{from_remote}: nothing booted")
    } else {
        let booted = built.iter().filter(|l| !l.boot_free).count();
        format!(
            "{} of {n} layers built ({booted} in a full boot, {} boot-free){from_remote}, hygiene done, powered off",
            built.len(),
            built.len() - booted
        )
    }
}

/// Renders the definition into the work folder (`rendered/`).
fn render_stage(job: &Job, p: &mut Progress) -> Result<Rendered, BuildError> {
    p.stage("render");
    let packer = job.provisioner.packer_target()?;
    let rendered = render::render(job.r, job.opts.arch, RenderOptions { packer })?;
    rendered.write_to(&job.work.join("rendered"))?;
    p.done(&format!("{} files", rendered.files.len()));
    Ok(rendered)
}

/// The base image from the cache, downloaded or bootstrapped.
fn base_stage(job: &Job, p: &mut Progress) -> Result<BaseImage, BuildError> {
    p.stage("base");
    let arch = job.opts.arch;
    let spec = job
        .r
        .definition
        .base
        .get(&arch)
        .ok_or(BaseError::Missing(arch))?;
    let steps = crate::features::base_steps(&job.r.definition, arch);
    let base = base::ensure(
        spec,
        arch,
        &steps,
        &job.opts.cache,
        job.opts.remote.as_deref(),
        job.cancel,
        &mut |done, total| p.bytes(done, total),
    )
    .map_err(|e| match e {
        BaseError::Interrupted => BuildError::Interrupted,
        e => e.into(),
    })?;
    p.done(&format!(
        "{} {}{}",
        base.kind,
        &base.sha256[..12],
        if base.remote {
            " (fetched from the remote cache)"
        } else if base.cache_hit {
            " (cached)"
        } else {
            ""
        }
    ));
    Ok(base)
}

/// KVM where a guest really runs under it, else TCG; said once per build.
fn accel_stage(job: &Job, p: &mut Progress) -> Result<AccelChoice, BuildError> {
    let choice = qemu::probe_accel(job.opts.arch);
    p.line(&choice.summary());
    if job.cancel.load(Ordering::SeqCst) {
        return Err(BuildError::Interrupted);
    }
    Ok(choice)
}

/// The native backend's layers. Without the cache, layers would only cost boots: everything
/// in one.
fn layer_plan(
    job: &Job,
    base: &BaseImage,
    rendered: &Rendered,
) -> Vec<provision::layers::PlannedLayer> {
    let settings = provision::layers::DiskSettings {
        arch: job.opts.arch,
        size: crate::definition::parse_size(&job.r.definition.disk.size),
        uefi: crate::host::uefi(job.r, job.opts.arch),
    };
    if job.opts.no_cache {
        provision::layers::single(&base.sha256, rendered, &settings)
    } else {
        provision::layers::plan(&base.sha256, rendered, &settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use provision::LayerRecord;

    fn layer(name: &str, cached: bool, boot_free: bool, remote: bool) -> LayerRecord {
        LayerRecord {
            name: name.into(),
            key: "k".into(),
            cached,
            seconds: 0.0,
            built_for: None,
            boot_free,
            remote,
        }
    }

    #[test]
    fn the_provision_line_says_what_was_built_booted_or_reused() {
        assert_eq!(provision_summary(&[]), "hygiene done, powered off");
        assert_eq!(
            provision_summary(&[
                layer("features", true, false, true),
                layer("image", true, true, false)
            ]),
            "all 2 layers reused, 1 fetched from the remote cache: nothing booted"
        );
        assert_eq!(
            provision_summary(&[
                layer("features", true, false, false),
                layer("image", false, false, false),
                layer("stack", false, true, false)
            ]),
            "2 of 3 layers built (1 in a full boot, 1 boot-free), hygiene done, powered off"
        );
    }
}
