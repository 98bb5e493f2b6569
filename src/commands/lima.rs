//! `imgbuild lima`: a Lima instance file for a built artifact.

use crate::definition::Catalog;
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

pub struct Request {
    pub image: String,
    /// The built version (default: the newest).
    pub version: Option<String>,
    pub dist: PathBuf,
    /// Write here instead of returning the text only.
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    pub image: String,
    pub version: String,
    pub artifact: PathBuf,
    #[serde(skip)]
    pub text: String,
}

pub fn lima(catalog: &Catalog, req: &Request) -> Result<Report> {
    let r = super::buildable(catalog, &req.image)?;
    let (dir, m) = super::find_build(&req.dist, &req.image, req.version.as_deref())?;
    let artifact = dir.join(&m.artifact.file);
    let len = std::fs::metadata(&artifact)
        .map_err(|e| Error::Usage(format!("{}: {e}", artifact.display())))?
        .len();
    if len != m.artifact.size {
        return Err(Error::Failed(format!(
            "{}: {len} bytes, but the manifest says {}: the artifact changed since it was built",
            artifact.display(),
            m.artifact.size
        )));
    }
    let artifact = std::fs::canonicalize(&artifact)?;
    let text = crate::render::lima::render(&r, &m.built(), &artifact);
    if let Some(out) = &req.out {
        super::write_atomic(out, &text, None)?;
    }
    Ok(Report {
        file: req.out.clone(),
        image: m.image,
        version: m.version,
        artifact,
        text,
    })
}
