//! `imgbuild checksum`: sha256sum-format lines, or verification against a SHA256SUMS file.

use crate::digest::{self, Algo};
use crate::error::{Error, Result};
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A file's digests.
#[derive(Debug, Serialize)]
pub struct Hashed {
    pub file: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub sha512: String,
    pub md5: String,
}

pub fn hash(files: &[PathBuf]) -> Result<Vec<Hashed>> {
    if files.is_empty() {
        return Err(Error::Usage("give files to hash, or --verify SUMS".into()));
    }
    let mut out = Vec::new();
    for f in files {
        let d =
            digest::digest_file(f, |_| {}).with_context(|| format!("hashing {}", f.display()))?;
        out.push(Hashed {
            file: f.clone(),
            size: d.size,
            sha256: d.sha256,
            sha512: d.sha512,
            md5: d.md5,
        });
    }
    Ok(out)
}

impl Hashed {
    pub fn get(&self, a: Algo) -> &str {
        match a {
            Algo::Sha256 => &self.sha256,
            Algo::Sha512 => &self.sha512,
            Algo::Md5 => &self.md5,
        }
    }
}

/// One line of a SUMS file, checked.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub file: String,
    pub algo: Algo,
    pub ok: bool,
    pub expected: String,
    pub actual: String,
}

/// Checks the files `sums` lists (only `only`'s, if given). Every line is checked before
/// [`verify_outcome`] says whether all matched.
pub fn verify(sums: &Path, only: &[PathBuf]) -> Result<Vec<Verified>> {
    let text = std::fs::read_to_string(sums)
        .map_err(|e| Error::Usage(format!("{}: {e}", sums.display())))?;
    let entries = digest::parse_sums(&text, sums).map_err(|e| Error::Usage(e.to_string()))?;
    let base = sums.parent().unwrap_or(Path::new("."));
    let wanted: Vec<String> = only
        .iter()
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for w in &wanted {
        if !entries.iter().any(|(_, n)| n.trim_start_matches("./") == w) {
            return Err(Error::Usage(format!(
                "{w} is not listed in {}",
                sums.display()
            )));
        }
    }
    let mut results = Vec::new();
    for (hex, name) in &entries {
        let short = name.trim_start_matches("./");
        if !wanted.is_empty() && !wanted.iter().any(|w| w == short) {
            continue;
        }
        let algo = digest::algo_of(hex).ok_or_else(|| {
            Error::Usage(format!(
                "{}: `{hex}` is no sha256, sha512 or md5 digest",
                sums.display()
            ))
        })?;
        let (ok, actual) = match digest::digest_file(&base.join(name), |_| {}) {
            Ok(d) => (d.get(algo) == hex, d.get(algo).to_string()),
            Err(e) => (false, format!("unreadable: {e}")),
        };
        results.push(Verified {
            file: name.clone(),
            algo,
            ok,
            expected: hex.clone(),
            actual,
        });
    }
    Ok(results)
}

pub fn verify_outcome(results: &[Verified]) -> Result<()> {
    let bad = results.iter().filter(|r| !r.ok).count();
    if bad > 0 {
        return Err(Error::Failed(format!(
            "{bad} of {} checksum(s) did not match",
            results.len()
        )));
    }
    Ok(())
}
