//! The crate's error at its edge: what an operation (see `commands`) fails with, and the exit
//! code it means — 2 for bad input or usage (the definition, a flag, a missing build), 1 for a
//! build, check or upload that failed. Modules keep their own error enums for callers that
//! match on them; this one wraps them and decides the exit code once.

use crate::definition::DefinitionError;
use crate::pipeline::BuildError;
use crate::render::userdata::UserdataError;
use crate::render::RenderError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input or usage (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A check, build or upload failed (exit 1); the details were reported.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Userdata(#[from] UserdataError),
    /// Anything else (I/O, a tool that failed): exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    /// 0 is success; 2 bad input or usage; 1 a failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Definition(_) | Error::Userdata(_) => 2,
            Error::Render(r) => render_is_usage(r),
            Error::Build(b) => {
                if b.is_usage() {
                    2
                } else {
                    1
                }
            }
            Error::Failed(_) | Error::Other(_) => 1,
        }
    }
}

fn render_is_usage(r: &RenderError) -> u8 {
    match r {
        // A compose project or secrets.yaml that is not as imgbuild needs it is bad input too.
        RenderError::Definition(_)
        | RenderError::ArchNotListed { .. }
        | RenderError::Compose { .. } => 2,
        _ => 1,
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Errors of the layers below that only ever mean "failed" (exit 1) at the edge.
macro_rules! failure_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Other(anyhow::Error::from(e))
            }
        }
    )*};
}

failure_from!(
    std::io::Error,
    serde_json::Error,
    crate::IoError,
    crate::exec::ExecError,
    crate::digest::DigestError,
    crate::cache::CacheError,
    crate::qemu::QemuError,
    crate::pipeline::smoke::SmokeError,
    crate::http::HttpError,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(Error::Failed("x".into()).exit_code(), 1);
        assert_eq!(
            Error::Build(BuildError::BadVersion("-x".into())).exit_code(),
            2
        );
        assert_eq!(Error::Build(BuildError::Interrupted).exit_code(), 1);
        assert_eq!(Error::from(std::io::Error::other("x")).exit_code(), 1);
    }
}
