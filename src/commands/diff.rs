//! `imgbuild diff`: packages added, removed and changed between two builds.

use crate::error::{Error, Result};
use crate::pipeline::bom::{self, Diff};
use std::path::Path;

pub fn diff(dist: &Path, image: &str, old: &str, new: &str) -> Result<Diff> {
    bom::diff_builds(dist, image, old, new).map_err(|e| Error::Usage(e.0))
}
