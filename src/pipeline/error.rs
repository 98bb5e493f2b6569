//! The pipeline's error: what any stage can fail with, and which failures are bad input.

use crate::base::BaseError;
use crate::digest::DigestError;
use crate::exec::ExecError;
use crate::qemu::QemuError;
use crate::render::RenderError;
use std::path::PathBuf;

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
    #[error(transparent)]
    Io(#[from] crate::IoError),
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
    SmokeRun(super::smoke::SmokeError),
    #[error("{0} already exists (pass --version for another version, or --force to replace it)")]
    Exists(PathBuf),
    #[error("version `{0}`: only letters, digits, `.`, `_`, `+` and `-` (not first)")]
    BadVersion(String),
    #[error("interrupted; nothing was written to dist/")]
    Interrupted,
    #[error("no space left in {folder} ({role}): {free_mib} MiB free now; this build needs more than the {free_at_start_mib} MiB that were free there when it started; nothing was written to dist/\n  cause: {cause}")]
    NoSpace {
        folder: PathBuf,
        /// `the cache folder` or `the output folder`.
        role: &'static str,
        free_mib: u64,
        free_at_start_mib: u64,
        cause: String,
    },
}

/// A smoke that failed its checks is the build's `Smoke` failure; an interrupted one is the
/// build's interruption.
impl From<super::smoke::SmokeError> for BuildError {
    fn from(e: super::smoke::SmokeError) -> BuildError {
        use super::smoke::SmokeError;
        match e {
            SmokeError::Checks { summary, report } => BuildError::Smoke { summary, report },
            SmokeError::Qemu(QemuError::Interrupted) => BuildError::Interrupted,
            e => BuildError::SmokeRun(e),
        }
    }
}

impl BuildError {
    /// Whether this failure came from a full disk somewhere down its chain: an I/O error
    /// ENOSPC, a tool that said so, or QEMU pausing the guest on a full disk.
    pub fn is_no_space(&self) -> bool {
        if matches!(self, BuildError::Qemu(QemuError::DiskFull { .. })) {
            return true;
        }
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(x) = e {
            if let Some(io) = x.downcast_ref::<std::io::Error>() {
                if io.raw_os_error() == Some(libc::ENOSPC)
                    || io.kind() == std::io::ErrorKind::StorageFull
                {
                    return true;
                }
            }
            if x.to_string().contains("No space left on device") {
                return true;
            }
            e = x.source();
        }
        false
    }

    /// Bad input rather than a failed build (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, BuildError::Exists(_) | BuildError::BadVersion(_))
            || matches!(
                self,
                BuildError::Render(RenderError::Definition(_) | RenderError::ArchNotListed { .. })
            )
    }
}

pub(crate) fn interrupted(e: QemuError) -> BuildError {
    match e {
        QemuError::Interrupted => BuildError::Interrupted,
        e => e.into(),
    }
}
