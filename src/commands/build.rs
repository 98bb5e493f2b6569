//! `imgbuild build`: one image and arch through the pipeline, or several side by side.
//! Everything that can be bad input is checked before the first build starts (exit 2).

use crate::definition::{Arch, Catalog, Resolved};
use crate::error::{Error, Result};
use crate::pipeline::manifest::Manifest;
use crate::pipeline::provision::LayerRecord;
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
    /// The remote layer cache, if one is configured.
    pub remote: Option<std::sync::Arc<crate::remote::Remote>>,
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
            remote: self.remote.clone(),
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
    let images = dependency_order(images);
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

/// The remote layer cache at `url` (bad settings are usage errors, exit 2).
pub fn remote(url: &str, read_only: bool) -> Result<crate::remote::Remote> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let config = crate::remote::RemoteConfig::parse(url, read_only, &env)
        .map_err(|e| Error::Usage(e.to_string()))?;
    crate::remote::Remote::new(config, std::time::Duration::from_secs(60))
        .map_err(|e| Error::Usage(e.to_string()))
}

/// Every buildable (not abstract) image of the catalog, by name.
pub fn catalog_images(catalog: &Catalog) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for n in catalog.names()? {
        if !catalog.load_checked(&n)?.definition.is_abstract {
            out.push(n);
        }
    }
    Ok(out)
}

/// `images` with every image after those of them it extends (directly or not), otherwise in
/// the given order: a child then finds the lower layers it shares with its parent built (or
/// being built: it waits for that layer rather than building it twice).
pub fn dependency_order(images: Vec<Resolved>) -> Vec<Resolved> {
    let names: Vec<String> = images.iter().map(|r| r.name.clone()).collect();
    let mut placed = vec![false; images.len()];
    let mut order = Vec::with_capacity(images.len());
    fn place(
        i: usize,
        images: &[Resolved],
        names: &[String],
        placed: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        if placed[i] {
            return;
        }
        placed[i] = true;
        // The chain is leaf first: ancestors from the root down.
        for f in images[i].chain.iter().skip(1).rev() {
            if let Some(j) = names.iter().position(|n| *n == f.name) {
                place(j, images, names, placed, order);
            }
        }
        order.push(i);
    }
    for i in 0..images.len() {
        place(i, &images, &names, &mut placed, &mut order);
    }
    let mut slots: Vec<Option<Resolved>> = images.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each image placed once"))
        .collect()
}

/// A layer that several builds of one run have in common.
#[derive(Debug, PartialEq, Serialize)]
pub struct SharedLayer {
    pub name: String,
    pub key: String,
    /// `image/arch` of each build that has it, in build order.
    pub builds: Vec<String>,
    /// The build of this run that made it; None when all of them reused it from the cache.
    pub built_by: Option<String>,
}

/// The layers that two or more successful builds of `outcomes` share.
pub fn shared_layers(outcomes: &[Outcome]) -> Vec<SharedLayer> {
    let builds: Vec<(String, &[LayerRecord])> = outcomes
        .iter()
        .filter_map(|o| {
            o.manifest
                .as_ref()
                .map(|m| (format!("{}/{}", o.image, o.arch), m.layers.as_slice()))
        })
        .collect();
    shared_among(&builds)
}

/// The layers (by key) that two or more of `builds` (label, layers) have.
fn shared_among(builds: &[(String, &[LayerRecord])]) -> Vec<SharedLayer> {
    let mut shared: Vec<SharedLayer> = Vec::new();
    for (label, layers) in builds {
        for l in layers.iter() {
            let i = match shared.iter().position(|s| s.key == l.key) {
                Some(i) => i,
                None => {
                    shared.push(SharedLayer {
                        name: l.name.clone(),
                        key: l.key.clone(),
                        builds: Vec::new(),
                        built_by: None,
                    });
                    shared.len() - 1
                }
            };
            shared[i].builds.push(label.clone());
            if !l.cached {
                shared[i].built_by = Some(label.clone());
            }
        }
    }
    shared.retain(|s| s.builds.len() > 1);
    shared
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

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(files: &[(&str, &str)]) -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        for (n, t) in files {
            std::fs::write(dir.path().join(format!("{n}.yaml")), t).unwrap();
        }
        let c = Catalog::new(dir.path());
        (dir, c)
    }

    const ROOT: &str = "description: root\nos: {distro: debian, version: \"12\", codename: bookworm}\narch: [amd64]\nbase:\n  amd64:\n    bootstrap: {suite: bookworm}\n";

    #[test]
    fn images_build_after_the_images_they_extend_otherwise_as_given() {
        let (_d, c) = catalog(&[
            ("root", ROOT),
            ("mid", "extends: root\ndescription: mid\n"),
            ("leaf", "extends: mid\ndescription: leaf\n"),
            ("other", ROOT),
        ]);
        let load =
            |ns: &[&str]| -> Vec<Resolved> { ns.iter().map(|n| c.load(n).unwrap()).collect() };
        let names = |rs: Vec<Resolved>| rs.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(
            names(dependency_order(load(&["leaf", "other", "root", "mid"]))),
            ["root", "mid", "leaf", "other"]
        );
        // Ancestors not asked for are not added; unrelated images keep their order.
        assert_eq!(
            names(dependency_order(load(&["other", "leaf"]))),
            ["other", "leaf"]
        );
        assert_eq!(
            names(dependency_order(load(&["leaf", "root"]))),
            ["root", "leaf"]
        );
        assert_eq!(
            catalog_images(&c).unwrap(),
            ["leaf", "mid", "other", "root"]
        );
        let (_d2, c2) = catalog(&[
            ("a", &format!("abstract: true\n{ROOT}")),
            ("b", "extends: a\ndescription: b\n"),
        ]);
        assert_eq!(
            catalog_images(&c2).unwrap(),
            ["b"],
            "abstract images are not built"
        );
    }

    fn rec(name: &str, key: &str, cached: bool) -> LayerRecord {
        LayerRecord {
            name: name.into(),
            key: key.into(),
            cached,
            seconds: if cached { 0.0 } else { 9.0 },
            built_for: None,
            boot_free: false,
            remote: false,
        }
    }

    #[test]
    fn shared_layers_name_every_build_that_has_them_and_which_one_built_them() {
        let a = [rec("features", "k1", false), rec("image", "ka", false)];
        let b = [rec("features", "k1", true), rec("image", "kb", false)];
        let c = [rec("features", "k1", true), rec("image", "kc", false)];
        let d = [rec("features", "k2", true), rec("image", "kd", false)];
        let e = [rec("features", "k2", true), rec("image", "ke", false)];
        let builds: Vec<(String, &[LayerRecord])> = vec![
            ("a/amd64".into(), &a),
            ("b/amd64".into(), &b),
            ("c/amd64".into(), &c),
            ("d/amd64".into(), &d),
            ("e/amd64".into(), &e),
        ];
        assert_eq!(
            shared_among(&builds),
            [
                SharedLayer {
                    name: "features".into(),
                    key: "k1".into(),
                    builds: vec!["a/amd64".into(), "b/amd64".into(), "c/amd64".into()],
                    built_by: Some("a/amd64".into()),
                },
                SharedLayer {
                    name: "features".into(),
                    key: "k2".into(),
                    builds: vec!["d/amd64".into(), "e/amd64".into()],
                    built_by: None,
                },
            ]
        );
        assert!(shared_among(&builds[..1]).is_empty());
    }
}
