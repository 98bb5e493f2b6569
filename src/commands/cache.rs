//! `imgbuild cache ls|prune`.

use crate::cache::{self, EntryInfo, LayerCache, PrunePolicy};
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// Bases, layers and shared downloads, in that order.
pub fn ls(root: &Path) -> Vec<EntryInfo> {
    let mut rows = cache::list_bases(root);
    rows.extend(LayerCache::new(root).list());
    rows.extend(cache::list_downloads(root));
    rows
}

pub struct PruneRequest {
    /// e.g. 7d, 12h.
    pub older_than: String,
    /// e.g. 20G.
    pub max_size: Option<String>,
    /// Everything no running build holds: layers, bases, shared downloads.
    pub all: bool,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct Pruned {
    pub dry_run: bool,
    pub removed: Vec<EntryInfo>,
    /// Selected but held by a running build: kept.
    pub in_use: Vec<EntryInfo>,
    pub freed: u64,
}

pub fn prune(root: &Path, req: &PruneRequest) -> Result<Pruned> {
    let policy = PrunePolicy {
        older_than: Some(
            cache::parse_age(&req.older_than)
                .map_err(|e| Error::Usage(format!("--older-than {e}")))?,
        ),
        max_size: match &req.max_size {
            None => None,
            Some(s) => Some(crate::definition::parse_size(s).ok_or_else(|| {
                Error::Usage(format!("--max-size `{s}`: a size such as 20G or 512M"))
            })?),
        },
        all: req.all,
    };
    let mut report =
        LayerCache::new(root).prune(&policy, std::time::SystemTime::now(), req.dry_run);
    if req.all {
        let mut others = cache::list_bases(root);
        others.extend(cache::list_downloads(root));
        for e in others {
            let removed = if e.in_use {
                false
            } else if req.dry_run {
                true
            } else if e.kind == "base" {
                cache::remove_base(&e.path)?
            } else {
                cache::remove_locked(&e.path, &e.path.with_extension("lock"))?
            };
            if removed {
                report.freed += e.size;
                report.removed.push(e);
            } else {
                report.busy.push(e);
            }
        }
    }
    Ok(Pruned {
        dry_run: req.dry_run,
        removed: report.removed,
        in_use: report.busy,
        freed: report.freed,
    })
}
