//! `imgbuild render`: Packer HCL, cloud-init seeds and the compose project, per arch.

use crate::check::Tools;
use crate::definition::{Arch, Catalog};
use crate::error::{Error, Result};
use crate::render::packer::PackerTarget;
use crate::render::RenderOptions;
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;

pub struct Request {
    pub image: String,
    pub arch: Option<Arch>,
    pub out: PathBuf,
    /// Render for this Packer release instead of the installed one.
    pub packer_version: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RenderedArch {
    pub image: String,
    pub arch: Arch,
    pub dir: PathBuf,
    pub digest: String,
    pub packer: PackerTarget,
    pub files: Vec<String>,
}

/// The Packer release to render for: the one asked for, else the installed one, else
/// current Packer; and a phrase saying which.
pub fn packer_target(explicit: Option<&str>, tools: &Tools) -> (PackerTarget, String) {
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

pub fn render(catalog: &Catalog, req: &Request) -> Result<Vec<RenderedArch>> {
    let r = catalog.load_checked(&req.image)?;
    if r.definition.is_abstract {
        return Err(Error::Usage(format!(
            "{} is abstract: render an image that extends it",
            req.image
        )));
    }
    let (target, why) = packer_target(req.packer_version.as_deref(), &Tools::discover());
    tracing::info!("rendering Packer HCL for {why}");
    let mut out = Vec::new();
    for arch in super::arches(&r, req.arch)? {
        let rendered = crate::render::render(&r, arch, RenderOptions { packer: target })?;
        let dir = req.out.join(arch.as_str());
        rendered
            .write_to(&dir)
            .with_context(|| format!("writing {}", dir.display()))?;
        out.push(RenderedArch {
            image: req.image.clone(),
            arch,
            digest: rendered.digest(),
            packer: target,
            files: rendered.files.iter().map(|f| f.path.clone()).collect(),
            dir,
        });
    }
    Ok(out)
}
