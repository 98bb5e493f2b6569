//! `imgbuild build`: one pipeline, two provisioning backends.
//!
//! render → base (cache | download | bootstrap) → provision (native QEMU | packer) with the
//! hygiene at poweroff → compact (qemu-img convert) → smoke boot → digests → manifest →
//! dist/IMAGE/VERSION, renamed into place only when everything passed.
//!
//! All work happens in a folder under the cache (`work/`); dist/ only ever sees a finished
//! version folder. A failed build keeps its logs (not its disks) under the cache's `failed/`.

pub mod dist;
pub mod layers;
pub mod packer_backend;
pub mod qemu_backend;
pub mod schedule;

use crate::base::{self, BaseError, BaseImage};
use crate::definition::{Arch, DiskFormat, Resolved};
use crate::digest::{self, DigestError};
use crate::exec::{Cmd, ExecError};
use crate::manifest::{self, Artifact, BaseRef, BuildInfo, Manifest, SmokeSummary};
use crate::progress::Progress;
use crate::qemu::{self, Accel, Compression, QemuError};
use crate::render::packer::PackerTarget;
use crate::render::{self, RenderError, RenderOptions};
use crate::smoke::{self, SmokeError, SmokeOptions};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// imgbuild drives QEMU itself (no Packer needed).
    Qemu,
    /// `packer build` on the rendered HCL.
    Packer,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
            Backend::Packer => "packer",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionChoice {
    /// The definition's `disk.compression` (zstd by default; zlib where qemu-img lacks zstd).
    Auto,
    Zstd,
    Zlib,
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("provisioning failed: {summary}{log}\nserial console: {serial}")]
    Provision {
        summary: String,
        log: String,
        serial: String,
    },
    #[error("{0}")]
    Backend(String),
    #[error("smoke test failed: {summary}\nreport: {report}")]
    Smoke { summary: String, report: String },
    #[error(transparent)]
    SmokeRun(#[from] SmokeError),
    #[error("{0} already exists (pass --version for another version, or --force to replace it)")]
    Exists(PathBuf),
    #[error("version `{0}`: only letters, digits, `.`, `_`, `+` and `-` (not first)")]
    BadVersion(String),
    #[error("interrupted; nothing was written to dist/")]
    Interrupted,
}

impl BuildError {
    /// Bad input rather than a failed build (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, BuildError::Exists(_) | BuildError::BadVersion(_))
            || matches!(
                self,
                BuildError::Render(RenderError::Definition(_) | RenderError::ArchNotListed { .. })
            )
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn interrupted(e: QemuError) -> BuildError {
    match e {
        QemuError::Interrupted => BuildError::Interrupted,
        e => e.into(),
    }
}

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
}

/// What a provisioning backend hands back.
pub struct Provisioned {
    /// The provisioned disk (qcow2), hygiene done, not yet compacted.
    pub disk: PathBuf,
    /// The disk is a cache entry: compaction reads it and leaves it.
    pub keep_disk: bool,
    /// What the guest reported baking in (see `watch`).
    pub container_images: Vec<crate::manifest::ContainerImage>,
    /// The native backend's layers, bottom first.
    pub layers: Vec<crate::manifest::LayerRecord>,
    /// The cache entries the disk is made of, held (so not pruned) until the build ends.
    pub leases: Vec<crate::cache::Held>,
}

/// What the backends get.
pub struct ProvisionInput<'a> {
    pub resolved: &'a Resolved,
    pub arch: Arch,
    pub accel: Accel,
    pub base: &'a BaseImage,
    /// Rendered files written out (packer/, seed/).
    pub rendered_dir: &'a Path,
    pub work: &'a Path,
    /// logs/ inside the version folder being assembled.
    pub logs: &'a Path,
    pub cancel: &'a AtomicBool,
    /// The native backend's layers (see `layers::plan`).
    pub layers: &'a [layers::PlannedLayer],
    /// The cache root (layers, shared downloads).
    pub cache: &'a Path,
    pub no_cache: bool,
}

/// Builds one arch of an image into OUT/IMAGE/VERSION; returns the manifest.
pub fn build(
    r: &Resolved,
    opts: &BuildOptions,
    cancel: &AtomicBool,
    p: &mut Progress,
) -> Result<Manifest, BuildError> {
    let started = SystemTime::now();
    let (git_commit, git_dirty) = git_state(&r.chain[0].path);
    let version = match &opts.version {
        Some(v) => {
            check_version(v)?;
            v.clone()
        }
        None => default_version(started, git_commit.as_deref(), git_dirty),
    };
    let image_dir = opts.out.join(&r.name);
    let final_dir = image_dir.join(&version);
    if final_dir.exists() && !opts.force {
        return Err(BuildError::Exists(final_dir));
    }
    dist::sweep_stale(&image_dir);
    std::fs::create_dir_all(&opts.cache).map_err(io(&opts.cache))?;
    let work = dist::WorkDir::create(&opts.cache, &format!("{}-{version}-{}", r.name, opts.arch))?;
    p.line(&format!(
        "building {} {version} for {} with the {} backend (work: {})",
        r.name,
        opts.arch,
        opts.backend.as_str(),
        work.path().display()
    ));
    let result = build_in(
        r,
        opts,
        &version,
        started,
        (git_commit, git_dirty),
        &work,
        cancel,
        p,
    );
    match result {
        Ok((manifest, stage)) => {
            dist::publish_dir(&stage, &final_dir, opts.force)?;
            Ok(manifest)
        }
        Err(e) => {
            p.fail();
            if let Some(kept) = work.keep_logs(&opts.cache) {
                p.line(&format!("logs of the failed build: {}", kept.display()));
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_in(
    r: &Resolved,
    opts: &BuildOptions,
    version: &str,
    started: SystemTime,
    (git_commit, git_dirty): (Option<String>, bool),
    work: &dist::WorkDir,
    cancel: &AtomicBool,
    p: &mut Progress,
) -> Result<(Manifest, PathBuf), BuildError> {
    let arch = opts.arch;
    let w = work.path();
    let stage_dir = w.join("stage");
    let logs = stage_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(&logs))?;

    p.stage("render");
    let target = match opts.backend {
        Backend::Packer => {
            let v = Cmd::new("packer")
                .arg("version")
                .env("CHECKPOINT_DISABLE", "1")
                .read()?;
            PackerTarget::from_version(v.lines().next().unwrap_or_default())
        }
        Backend::Qemu => PackerTarget::Legacy,
    };
    let rendered = render::render(r, arch, RenderOptions { packer: target })?;
    let rendered_dir = w.join("rendered");
    rendered.write_to(&rendered_dir)?;
    p.done(&format!("{} files", rendered.files.len()));

    p.stage("base");
    let base = base::ensure(
        r.definition
            .base
            .get(&arch)
            .ok_or(BaseError::Missing(arch))?,
        arch,
        &opts.cache,
        cancel,
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
        if base.cache_hit { " (cached)" } else { "" }
    ));
    // Held while the build stands on the base, so that `cache prune` leaves it alone.
    let _base_in_use =
        crate::cache::FileLock::shared(&base.path.with_extension("use")).map_err(|e| match e {
            crate::cache::CacheError::Io { path, source } => BuildError::Io { path, source },
        })?;
    let d = &r.definition;
    let settings = layers::DiskSettings {
        arch,
        size: crate::definition::parse_size(&d.disk.size),
        uefi: crate::host::uefi(r, arch),
    };
    // Without the cache, layers would only cost boots: everything in one.
    let plan = if opts.no_cache {
        layers::single(&base.sha256, &rendered, &settings)
    } else {
        layers::plan(&base.sha256, &rendered, &settings)
    };

    let choice = qemu::probe_accel(arch);
    p.line(&format!(
        "accelerator: {} ({})",
        choice.accel.as_str(),
        choice.reason
    ));
    if cancel.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(BuildError::Interrupted);
    }

    p.stage(&format!("provision ({})", opts.backend.as_str()));
    let input = ProvisionInput {
        resolved: r,
        arch,
        accel: choice.accel,
        base: &base,
        rendered_dir: &rendered_dir,
        work: w,
        logs: &logs,
        cancel,
        layers: &plan,
        cache: &opts.cache,
        no_cache: opts.no_cache,
    };
    let provisioned = match opts.backend {
        Backend::Qemu => qemu_backend::provision(&input, p),
        Backend::Packer => packer_backend::provision(&input, p),
    }?;
    p.done("hygiene done, powered off");

    p.stage("compact");
    let format = r.definition.disk.format;
    // --compression wins; `auto` takes the definition's disk.compression. zstd falls back to
    // zlib (with a line saying so) where qemu-img cannot write it.
    let wanted = match opts.compression {
        CompressionChoice::Auto => match r.definition.disk.compression {
            crate::definition::Compression::None => Compression::None,
            crate::definition::Compression::Zlib => Compression::Zlib,
            crate::definition::Compression::Zstd => Compression::Zstd,
        },
        CompressionChoice::None => Compression::None,
        CompressionChoice::Zlib => Compression::Zlib,
        CompressionChoice::Zstd => Compression::Zstd,
    };
    let compression = match (format, wanted) {
        (DiskFormat::Raw, _) => Compression::None,
        (_, Compression::Zstd) if !qemu::qemu_supports_zstd() => {
            p.line("qemu-img cannot write zstd-compressed qcow2 here: using zlib");
            Compression::Zlib
        }
        (_, c) => c,
    };
    let file = format!("{}-{version}-{arch}.{}", r.name, format.as_str());
    let artifact = stage_dir.join(&file);
    qemu::convert(&provisioned.disk, &artifact, format.as_str(), compression)?;
    if !provisioned.keep_disk {
        let _ = std::fs::remove_file(&provisioned.disk);
    }
    let info = qemu::img_info(&artifact)?;
    let size = std::fs::metadata(&artifact).map_err(io(&artifact))?.len();
    p.done(&format!(
        "{file}: {} MiB ({} MiB virtual, {})",
        size >> 20,
        info.virtual_size >> 20,
        compression_name(compression)
    ));

    let smoke_summary = if opts.smoke {
        p.stage("smoke");
        let smoke_dir = stage_dir.join("smoke");
        let mut seen = std::collections::HashSet::new();
        let mut on_line = |line: &str| {
            if let Some(c) = crate::protocol::smoke_result(line) {
                if !seen.insert(c.name.clone()) {
                    return;
                }
                p.status(
                    &format!("{} {}", if c.passed { "ok  " } else { "FAIL" }, c.name),
                    true,
                );
            }
        };
        let report = smoke::smoke(
            r,
            arch,
            &artifact,
            SmokeOptions {
                accel: choice.accel,
                out_dir: &smoke_dir,
                cancel,
                on_line: &mut on_line,
            },
        )
        .map_err(|e| match e {
            SmokeError::Qemu(QemuError::Interrupted) => BuildError::Interrupted,
            e => e.into(),
        })?;
        // Keep the smoke serial log with the other logs when the build fails.
        let failed = report.failed_checks();
        if !report.passed {
            let mut parts: Vec<String> = failed
                .iter()
                .map(|c| format!("check `{}`: {}", c.name, c.detail))
                .collect();
            if let Some(e) = &report.error {
                parts.insert(0, e.clone());
            }
            let _ = std::fs::copy(smoke_dir.join("serial.log"), logs.join("serial-smoke.log"));
            let _ = std::fs::copy(
                smoke_dir.join("report.json"),
                logs.join("smoke-report.json"),
            );
            let _ = std::fs::copy(
                smoke_dir.join("screenshot.png"),
                logs.join("smoke-screenshot.png"),
            );
            return Err(BuildError::Smoke {
                summary: parts.join("\n  "),
                report: "smoke/report.json".into(),
            });
        }
        p.done(&format!(
            "{} checks passed in {:.0} s",
            report.checks.len(),
            report.boot_seconds
        ));
        Some(SmokeSummary {
            passed: report.passed,
            checks: report.checks.len(),
            failed: failed.len(),
            boot_seconds: report.boot_seconds,
            report: "smoke/report.json".into(),
            junit: "smoke/junit.xml".into(),
            screenshot: report.screenshot.map(|s| format!("smoke/{s}")),
        })
    } else {
        p.line("smoke boot skipped (--no-smoke)");
        None
    };

    p.stage("digests");
    let digests = digest::digest_file(&artifact, |_| {})?;
    p.done(&format!("sha256 {}", digests.sha256));

    let definition_json = serde_json::to_vec(&r.definition).expect("plain data");
    let m = Manifest {
        image: r.name.clone(),
        version: version.to_string(),
        arch,
        description: r.definition.description.clone(),
        backend: opts.backend.as_str().into(),
        accel: choice.accel.as_str().into(),
        base: BaseRef {
            kind: base.kind.into(),
            source: base.source.clone(),
            sha256: base.sha256.clone(),
        },
        definition_sha256: render::hex(&Sha256::digest(&definition_json)),
        rendered_sha256: rendered.digest(),
        artifact: Artifact {
            file: file.clone(),
            format: format.as_str().into(),
            compression: compression_name(compression).into(),
            size,
            virtual_size: info.virtual_size,
        },
        digests,
        smoke: smoke_summary,
        container_images: provisioned.container_images.clone(),
        layers: provisioned.layers.clone(),
        build: BuildInfo {
            started: humantime::format_rfc3339_seconds(started).to_string(),
            duration_seconds: (p.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            tool: "imgbuild".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            git_commit,
            git_dirty,
            host: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        },
    };
    let mp = stage_dir.join(manifest::FILE);
    std::fs::write(&mp, m.to_json()).map_err(io(&mp))?;
    let sp = stage_dir.join(manifest::SUMS);
    std::fs::write(&sp, m.sums()).map_err(io(&sp))?;
    Ok((m, stage_dir))
}

pub fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Zlib => "zlib",
        Compression::Zstd => "zstd",
    }
}

pub fn check_version(v: &str) -> Result<(), BuildError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with(['-', '.'])
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BuildError::BadVersion(v.to_string()))
    }
}

/// UTC date plus the short commit (`20261123-1a2b3c4`, `-dirty` for uncommitted changes); the
/// time of day instead of the commit outside a git repository.
pub fn default_version(now: SystemTime, commit: Option<&str>, dirty: bool) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let date: String = stamp[..10].chars().filter(|c| *c != '-').collect();
    match commit {
        Some(c) => format!(
            "{date}-{}{}",
            &c[..c.len().min(7)],
            if dirty { "-dirty" } else { "" }
        ),
        None => {
            let time: String = stamp[11..19].chars().filter(|c| *c != ':').collect();
            format!("{date}-{time}")
        }
    }
}

/// The commit of the repository holding `definition` and whether its tree has changes.
pub fn git_state(definition: &Path) -> (Option<String>, bool) {
    let dir = definition
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let commit = Cmd::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .read()
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() >= 7);
    let dirty = commit.is_some()
        && Cmd::new("git")
            .arg("-C")
            .arg(dir)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .read()
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false);
    (commit, dirty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn versions() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(
            default_version(t, Some("1a2b3c4d5e6f"), false),
            "20261118-1a2b3c4"
        );
        assert_eq!(
            default_version(t, Some("1a2b3c4d5e6f"), true),
            "20261118-1a2b3c4-dirty"
        );
        assert_eq!(default_version(t, None, false), "20261118-110640");
        assert!(check_version("2026.11.1").is_ok());
        assert!(check_version("1.0+build-3").is_ok());
        for bad in ["", "../x", "a/b", "-x", ".x", "a b", "ä"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }
}
