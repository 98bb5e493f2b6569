//! `imgbuild smoke`: boots any artifact with an image's smoke checks.

use crate::definition::{Arch, Catalog};
use crate::error::{Error, Result};
use crate::pipeline::smoke::{self, SmokeOptions, SmokeReport};
use crate::progress::Progress;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

pub struct Request {
    pub artifact: PathBuf,
    pub image: String,
    pub arch: Option<Arch>,
    /// Where report.json, junit.xml, serial.log (and screenshot.png) go.
    pub out: PathBuf,
    /// Compose profiles to boot with instead of the image's default.
    pub profiles: Option<Vec<String>>,
    pub quiet: bool,
}

/// Boots the artifact; the report whether or not the checks passed ([`outcome`] says).
pub fn smoke(catalog: &Catalog, req: &Request, cancel: &AtomicBool) -> Result<SmokeReport> {
    let r = super::buildable(catalog, &req.image)?;
    let arch = super::one_arch(&r, req.arch)?;
    if !req.artifact.is_file() {
        return Err(Error::Usage(format!(
            "{}: no such file",
            req.artifact.display()
        )));
    }
    let accel = crate::qemu::probe_accel(arch);
    let mut p = Progress::new(req.quiet);
    p.line(&accel.summary());
    p.stage("smoke");
    let report = {
        let mut on_line = smoke::show_results(&mut p);
        smoke::smoke(
            &r,
            arch,
            &req.artifact,
            SmokeOptions {
                accel: accel.accel,
                out_dir: &req.out,
                profiles: req.profiles.as_deref(),
                cancel,
                on_line: &mut on_line,
            },
        )?
    };
    if report.passed {
        p.done("");
    } else {
        p.fail();
    }
    Ok(report)
}

/// Exit 1 unless every check passed, naming the failed ones.
pub fn outcome(report: &SmokeReport) -> Result<()> {
    if report.passed {
        return Ok(());
    }
    let failed: Vec<String> = report
        .failed_checks()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    Err(Error::Failed(format!(
        "smoke test failed{}{}",
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {}", failed.join(", "))
        },
        report
            .error
            .as_ref()
            .map(|e| format!("; {}", e.lines().next().unwrap_or_default()))
            .unwrap_or_default()
    )))
}
