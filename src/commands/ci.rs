//! `imgbuild ci gitlab`: the catalog (or the named images) as a GitLab CI child pipeline.

use crate::definition::{Arch, Catalog};
use crate::error::{Error, Result};
use crate::render::gitlab_ci::{self, CiImage, CiOptions};
use serde::Serialize;
use std::path::PathBuf;

pub struct Request {
    /// The images (default: every buildable image of the catalog).
    pub images: Vec<String>,
    /// Only this arch (default: every arch each image lists).
    pub arch: Option<Arch>,
    pub runner_tags: Vec<String>,
    pub cache_remote: Option<String>,
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Job names, in pipeline order.
    pub jobs: Vec<String>,
    #[serde(skip)]
    pub text: String,
}

pub fn gitlab(catalog: &Catalog, req: &Request) -> Result<Report> {
    // Each definition loaded once: the catalog's buildable images, or the ones named.
    let resolved = if req.images.is_empty() {
        let mut all = Vec::new();
        for n in catalog.names()? {
            let r = catalog.load_checked(&n)?;
            if !r.definition.is_abstract {
                all.push(r);
            }
        }
        all
    } else {
        req.images
            .iter()
            .map(|n| super::buildable(catalog, n))
            .collect::<Result<Vec<_>>>()?
    };
    let names: Vec<String> = resolved.iter().map(|r| r.name.clone()).collect();
    let mut images = Vec::new();
    for r in &resolved {
        let n = &r.name;
        let arches = super::arches(r, req.arch)?;
        // The nearest ancestor the pipeline builds too (chain: the image first).
        let parent = r
            .chain
            .iter()
            .skip(1)
            .map(|s| s.name.clone())
            .find(|p| names.contains(p));
        images.push(CiImage {
            name: n.clone(),
            arches,
            parent,
            format: r.definition.disk.format.as_str().into(),
        });
    }
    // Parents before children, so the file reads in build order.
    let mut ordered: Vec<CiImage> = Vec::new();
    while ordered.len() < images.len() {
        let before = ordered.len();
        for img in &images {
            let ready = img
                .parent
                .as_ref()
                .is_none_or(|p| ordered.iter().any(|o| &o.name == p));
            if ready && !ordered.iter().any(|o| o.name == img.name) {
                ordered.push(img.clone());
            }
        }
        if ordered.len() == before {
            return Err(Error::Failed("extends chains form a cycle".into()));
        }
    }
    // A child's arch needs its parent's build of that arch.
    for img in &ordered {
        if let Some(p) = &img.parent {
            let parent = ordered.iter().find(|o| &o.name == p).expect("ordered");
            if let Some(a) = img.arches.iter().find(|a| !parent.arches.contains(a)) {
                return Err(Error::Usage(format!(
                    "{} builds {a}, but {p}, which it extends, does not: its {a} job would have no parent",
                    img.name
                )));
            }
        }
    }
    let text = gitlab_ci::render(
        &ordered,
        &CiOptions {
            runner_tags: req.runner_tags.clone(),
            imgbuild: "imgbuild".into(),
            cache_remote: req.cache_remote.clone(),
        },
    );
    if let Some(out) = &req.out {
        super::write_atomic(out, &text, None)?;
    }
    let jobs = ordered
        .iter()
        .flat_map(|i| {
            gitlab_ci::STAGES.iter().flat_map(move |s| {
                i.arches
                    .iter()
                    .map(move |a| gitlab_ci::job_name(s, &i.name, *a))
            })
        })
        .collect();
    Ok(Report {
        file: req.out.clone(),
        jobs,
        text,
    })
}
