//! `imgbuild publish`: a built version into Glance. The orchestration: verify the artifact
//! against its manifest, authenticate, take the publish lock, find an identical image, convert
//! to raw for a Ceph RBD store, upload or import (verified by `glance::publish`), then
//! retention. Any failure after the image was created deletes it (see `glance::publish`).

use crate::definition::Catalog;
use crate::error::{Error, Result};
use crate::glance::auth::{self, AuthError};
use crate::glance::publish::{
    self, FormatChoice, Method, Plan, PublishError, Published, Retention,
};
use crate::http::Http;
use crate::progress::Progress;
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;

pub struct Request {
    pub image: String,
    /// The built version (default: the newest).
    pub version: Option<String>,
    pub dist: PathBuf,
    pub os_cloud: Option<String>,
    pub dry_run: bool,
    /// Seconds for each API call, an upload stall and the wait for `active`.
    pub timeout: u64,
    pub method: Method,
    pub keep: Option<u32>,
    pub delete_beyond: Option<u32>,
    pub prune: bool,
    pub disk_format: FormatChoice,
    /// For the raw copy and the publish lock.
    pub cache: PathBuf,
    pub quiet: bool,
}

/// What a publish did, or (dry run) would do.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    DryRun {
        dry_run: bool,
        /// `create` or `unchanged`.
        action: &'static str,
        plan: Plan,
        retention: Retention,
        /// Ids of images that already hold this artifact.
        existing: Vec<serde_json::Value>,
        #[serde(skip)]
        size: u64,
    },
    Done {
        #[serde(flatten)]
        published: Published,
        retention: Retention,
    },
}

/// Every Glance error ends the same way: exit 1, the status and what it means.
fn failed(e: PublishError) -> Error {
    Error::Failed(publish::describe(&e))
}

pub fn publish(catalog: &Catalog, req: &Request) -> Result<Report> {
    let r = super::buildable(catalog, &req.image)?;
    let (dir, m) = super::find_build(&req.dist, &req.image, req.version.as_deref())?;
    let artifact = dir.join(&m.artifact.file);
    let mut p = Progress::new(req.quiet);
    p.stage("verify artifact");
    let d = crate::digest::digest_file(&artifact, |_| {})
        .with_context(|| format!("reading {}", artifact.display()))?;
    if d.sha256 != m.digests.sha256 {
        p.fail();
        return Err(Error::Failed(format!(
            "{}: sha256 mismatch with its manifest: expected {}, actual {}; nothing was uploaded",
            artifact.display(),
            m.digests.sha256,
            d.sha256
        )));
    }
    p.done(&format!("sha256 {}", d.sha256));
    let mut plan = publish::plan(&r, &m);
    let cloud = auth::load(req.os_cloud.as_deref()).map_err(|e| match e {
        AuthError::NoCloud
        | AuthError::UnknownCloud { .. }
        | AuthError::File { .. }
        | AuthError::Incomplete(_) => Error::Usage(e.to_string()),
        e => Error::Other(e.into()),
    })?;
    let timeout = std::time::Duration::from_secs(req.timeout);
    let http = Http::new(&cloud.tls, timeout)?;
    p.stage("authenticate");
    let session = auth::authenticate(&cloud, &http).map_err(|e| {
        p.fail();
        Error::Failed(e.to_string())
    })?;
    p.done(&format!("image service {}", session.image_url));
    // One publish of this image to this Glance and project at a time on this machine (a dry
    // run changes nothing and takes no lock).
    let _publish_lock = if req.dry_run {
        None
    } else {
        let path = publish::lock_path(&req.cache, &session, &m.image);
        tracing::debug!("publish lock {}", path.display());
        Some(
            crate::cache::FileLock::exclusive(&path, || {
                p.line(&format!(
                    "waiting for another imgbuild publish of {} to {} to finish",
                    m.image, session.image_url
                ))
            })
            .map_err(|e| Error::Failed(e.to_string()))?,
        )
    };
    // Is this artifact already there? Asked once; dry-run and upload both go by the answer.
    let existing = publish::find_existing(&http, &session, &m.digests.sha256).map_err(failed)?;
    // Raw for Ceph RBD (copy-on-write clones in Nova): a raw copy is made in the cache and its
    // digests are what Glance must report; the image keeps the build's imgbuild_sha256.
    let want_raw = existing.is_empty()
        && publish::wants_raw(&http, &session, req.disk_format, &m.artifact.format)
            .map_err(failed)?;
    let keep = req.keep.or(r.definition.publish.keep);
    let delete_beyond = if req.prune {
        req.delete_beyond.or(r.definition.publish.delete_beyond)
    } else {
        None
    };
    if req.dry_run {
        if want_raw {
            plan.disk_format = "raw".into();
        }
        let would = publish::retain(&http, &session, &m.image, keep, delete_beyond, true)
            .map_err(failed)?;
        return Ok(Report::DryRun {
            dry_run: true,
            action: if existing.is_empty() {
                "create"
            } else {
                "unchanged"
            },
            plan,
            retention: would,
            existing: existing.iter().map(|i| i["id"].clone()).collect(),
            size: m.artifact.size,
        });
    }
    let mut data_manifest = m.clone();
    let mut data_path = artifact.clone();
    let _raw_dir;
    if want_raw {
        p.stage("convert to raw");
        std::fs::create_dir_all(&req.cache).map_err(crate::IoError::at(&req.cache))?;
        let dir = tempfile::Builder::new()
            .prefix("publish-raw-")
            .tempdir_in(&req.cache)
            .map_err(crate::IoError::at(&req.cache))?;
        let raw = dir.path().join(m.artifact.file.replace(".qcow2", ".raw"));
        crate::qemu::convert(&artifact, &raw, "raw", crate::qemu::Compression::None)?;
        let rd = crate::digest::digest_file(&raw, |_| {})?;
        p.done(&format!("{} MiB raw, sha256 {}", rd.size >> 20, rd.sha256));
        plan.disk_format = "raw".into();
        plan.properties
            .insert("owner_specified.openstack.md5".into(), rd.md5.clone());
        plan.properties
            .insert("owner_specified.openstack.sha256".into(), rd.sha256.clone());
        data_manifest.artifact.format = "raw".into();
        data_manifest.artifact.size = rd.size;
        data_manifest.digests = rd;
        data_path = raw;
        _raw_dir = Some(dir);
    } else {
        _raw_dir = None;
    }
    p.stage("upload");
    let result = match existing.first() {
        Some(img) => Ok(publish::unchanged(img)),
        None => publish::publish(
            &http,
            &session,
            &plan,
            &data_manifest,
            &data_path,
            req.method,
            timeout,
            &mut |done, total| p.bytes(done, Some(total)),
        ),
    };
    let published = match result {
        Ok(x) => x,
        Err(e) => {
            p.fail();
            return Err(failed(e));
        }
    };
    p.done(&format!(
        "{} {} ({})",
        published.action, published.id, published.status
    ));
    p.stage("retention");
    let kept =
        publish::retain(&http, &session, &m.image, keep, delete_beyond, false).map_err(|e| {
            Error::Failed(format!(
                "the image was published, but retention failed: {}",
                publish::describe(&e)
            ))
        })?;
    p.done(&format!(
        "{} hidden, {} deleted",
        kept.hidden.len(),
        kept.deleted.len()
    ));
    Ok(Report::Done {
        published,
        retention: kept,
    })
}
