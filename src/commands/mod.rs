//! imgbuild's operations, one module per command: each takes a typed request and returns a
//! typed, serializable report (what `--json` prints; the CLI renders plain lines from it).
//! Long work reports progress through `progress::Progress`; nothing here parses arguments or
//! prints results.

pub mod build;
pub mod cache;
pub mod checksum;
pub mod ci;
pub mod diff;
pub mod lima;
pub mod list;
pub mod publish;
pub mod render;
pub mod show;
pub mod smoke;
pub mod userdata;
pub mod validate;

use crate::definition::{Arch, Catalog, Resolved};
use crate::error::{Error, Result};
use crate::pipeline::manifest::{self, Manifest};
use std::path::{Path, PathBuf};

/// An image that can be built (not abstract).
pub fn buildable(catalog: &Catalog, image: &str) -> Result<Resolved> {
    let r = catalog.load_checked(image)?;
    if r.definition.is_abstract {
        return Err(Error::Usage(format!(
            "{image} is abstract: build an image that extends it"
        )));
    }
    Ok(r)
}

/// The arches to work on: `only` if the image lists it, else every arch it lists.
pub fn arches(r: &Resolved, only: Option<Arch>) -> Result<Vec<Arch>> {
    match only {
        Some(a) if !r.definition.arch.contains(&a) => Err(Error::Usage(format!(
            "{} is not built for {a} (arch lists {})",
            r.name,
            r.definition
                .arch
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Some(a) => Ok(vec![a]),
        None => Ok(r.definition.arch.clone()),
    }
}

/// The arch to build or boot: the given one, else the host's if listed, else the first listed.
pub fn one_arch(r: &Resolved, only: Option<Arch>) -> Result<Arch> {
    let listed = arches(r, only)?;
    Ok(if listed.contains(&Arch::host()) {
        Arch::host()
    } else {
        listed[0]
    })
}

/// Every build of `image` in `dist` (version folder and manifest), the newest last.
pub fn builds(dist: &Path, image: &str) -> Vec<(PathBuf, Manifest)> {
    let mut found: Vec<(PathBuf, Manifest)> = std::fs::read_dir(dist.join(image))
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
    found
}

/// The version folder and manifest of a build of `image` in `dist`: `version`, else the
/// newest.
pub fn find_build(dist: &Path, image: &str, version: Option<&str>) -> Result<(PathBuf, Manifest)> {
    let image_dir = dist.join(image);
    let (dir, m) = match version {
        Some(v) => {
            let dir = image_dir.join(v);
            let m = Manifest::read(&dir.join(manifest::FILE)).map_err(|e| {
                Error::Usage(format!(
                    "{}: {e} (build it first: imgbuild build {image} --version {v})",
                    dir.join(manifest::FILE).display(),
                ))
            })?;
            (dir, m)
        }
        None => {
            let mut found = builds(dist, image);
            found.pop().ok_or_else(|| {
                Error::Usage(format!(
                    "no build of {image} in {} (run: imgbuild build {image})",
                    image_dir.display(),
                ))
            })?
        }
    };
    if m.image != image {
        return Err(Error::Usage(format!(
            "{} is a build of {}, not {image}",
            dir.display(),
            m.image,
        )));
    }
    Ok((dir, m))
}

/// Writes `text` to `path` in one rename from a temporary file beside it (a reader never sees
/// half a file), with `mode` set before any byte is written.
pub fn write_atomic(path: &Path, text: &str, mode: Option<u32>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staged = tempfile::Builder::new()
        .prefix(".imgbuild-")
        .tempfile_in(dir)
        .map_err(crate::IoError::at(dir))?;
    if let Some(m) = mode {
        std::fs::set_permissions(
            staged.path(),
            std::os::unix::fs::PermissionsExt::from_mode(m),
        )
        .map_err(crate::IoError::at(staged.path()))?;
    }
    std::fs::write(staged.path(), text).map_err(crate::IoError::at(staged.path()))?;
    staged
        .persist(path)
        .map_err(|e| crate::IoError::at(path)(e.error))?;
    Ok(())
}
