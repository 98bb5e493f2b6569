//! `imgbuild build`: one image and arch through the pipeline, or several side by side.
//! Everything that can be bad input is checked before the first build starts (exit 2).

use crate::definition::{Arch, Catalog, Resolved};
use crate::error::{Error, Result};
use crate::pipeline::manifest::Manifest;
use crate::pipeline::{
    self, check_version, schedule, Backend, BuildError, BuildOptions, CompressionChoice,
};
use crate::progress::Progress;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// Which arches of an image to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchChoice {
    /// Every arch the image lists.
    All,
    One(Arch),
}

pub struct Request {
    pub images: Vec<String>,
    /// Empty: the host's arch if the image lists it, else its first.
    pub arch: Vec<ArchChoice>,
    pub jobs: Option<usize>,
    pub backend: Backend,
    pub version: Option<String>,
    pub out: PathBuf,
    pub cache: PathBuf,
    pub smoke: bool,
    pub compression: CompressionChoice,
    pub force: bool,
    pub no_cache: bool,
    /// Only errors on stderr.
    pub quiet: bool,
}

impl Request {
    /// One image, one arch (no scheduler, a spinner on a terminal).
    pub fn is_single(&self) -> bool {
        self.images.len() == 1 && self.arch.len() <= 1 && !self.arch.contains(&ArchChoice::All)
    }

    fn options(&self, arch: Arch, version: Option<String>) -> BuildOptions {
        BuildOptions {
            arch,
            backend: self.backend,
            version,
            out: self.out.clone(),
            cache: self.cache.clone(),
            smoke: self.smoke,
            compression: self.compression,
            force: self.force,
            no_cache: self.no_cache,
        }
    }
}

/// One build of several: its manifest or why it failed.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub image: String,
    pub arch: Arch,
    pub version: Option<String>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    /// The first line of the error, if it failed.
    pub fn first_error_line(&self) -> Option<&str> {
        self.error
            .as_deref()
            .map(|e| e.lines().next().unwrap_or_default())
    }
}

/// Builds one image for one arch.
pub fn build_one(catalog: &Catalog, req: &Request, cancel: &AtomicBool) -> Result<Manifest> {
    let r = super::buildable(catalog, &req.images[0])?;
    let only = match req.arch.first() {
        Some(ArchChoice::One(a)) => Some(*a),
        _ => None,
    };
    let arch = super::one_arch(&r, only)?;
    let opts = req.options(arch, req.version.clone());
    // Bad input first (exit 2), then what the host lacks for this arch (exit 1).
    if let Some(v) = &opts.version {
        check_version(v)?;
        let dir = req.out.join(&r.name).join(v);
        if dir.exists() && !req.force {
            return Err(BuildError::Exists(dir).into());
        }
    }
    schedule::host_can_build(&r, arch).map_err(Error::Failed)?;
    let mut p = Progress::new(req.quiet);
    Ok(pipeline::build(&r, &opts, cancel, &mut p)?)
}

/// Several images and/or arches: everything is checked before the first build starts, then
/// the builds run in parallel within the host's cores and memory (see `schedule`). Returns
/// every outcome; the caller decides the exit code ([`outcome`]).
pub fn build_several(
    catalog: &Catalog,
    req: &Request,
    cancel: &AtomicBool,
) -> Result<Vec<Outcome>> {
    let now = std::time::SystemTime::now();
    let mut names: Vec<&String> = Vec::new();
    for n in &req.images {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let mut images = Vec::new();
    for name in names {
        images.push(super::buildable(catalog, name)?);
    }
    if let Some(v) = &req.version {
        check_version(v)?;
    }
    let mut planned: Vec<(Resolved, Arch, String)> = Vec::new();
    for r in images {
        let wanted = wanted_arches(&r, &req.arch)?;
        // One version for every image; the version folder holds one arch, so several arches
        // of one image get the arch appended (V-amd64, V-arm64).
        let version = match &req.version {
            Some(v) => v.clone(),
            None => {
                let (commit, dirty) = pipeline::git_state(&r.chain[0].path);
                pipeline::default_version(now, commit.as_deref(), dirty)
            }
        };
        let per_arch = wanted.len() > 1;
        for arch in wanted {
            let v = if per_arch {
                format!("{version}-{arch}")
            } else {
                version.clone()
            };
            check_version(&v)?;
            let dir = req.out.join(&r.name).join(&v);
            if dir.exists() && !req.force {
                return Err(BuildError::Exists(dir).into());
            }
            planned.push((r.clone(), arch, v));
        }
    }
    let jobs: Vec<schedule::Job> = planned
        .into_iter()
        .map(|(r, arch, v)| {
            let label = format!("{}/{arch}", r.name);
            schedule::Job {
                opts: req.options(arch, Some(v)),
                resolved: r,
                // Plain lines even on a terminal: several spinners would fight over it.
                progress: Progress::plain(req.quiet).with_prefix(&label),
            }
        })
        .collect();
    let budget = schedule::Budget::host(req.jobs);
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
    Ok(schedule::run(jobs, budget, cancel)
        .into_iter()
        .map(|o| {
            let (manifest, error) = match o.result {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(schedule::describe(&e))),
            };
            Outcome {
                image: o.image,
                arch: o.arch,
                version: o.version,
                ok: manifest.is_some(),
                manifest,
                error,
            }
        })
        .collect())
}

/// Exit 1 if any of several builds failed, naming them.
pub fn outcome(outcomes: &[Outcome]) -> Result<()> {
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.first_error_line()
                .map(|e| format!("{}/{} ({e})", o.image, o.arch))
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::Failed(format!(
        "{} of {} builds failed: {}",
        failed.len(),
        outcomes.len(),
        failed.join("; ")
    )))
}

fn wanted_arches(r: &Resolved, choice: &[ArchChoice]) -> Result<Vec<Arch>> {
    if choice.contains(&ArchChoice::All) {
        return Ok(r.definition.arch.clone());
    }
    if choice.is_empty() {
        return Ok(vec![super::one_arch(r, None)?]);
    }
    let mut wanted: Vec<Arch> = Vec::new();
    for x in choice {
        if let ArchChoice::One(arch) = x {
            for arch in super::arches(r, Some(*arch))? {
                if !wanted.contains(&arch) {
                    wanted.push(arch);
                }
            }
        }
    }
    Ok(wanted)
}
