//! `imgbuild validate`: definitions checked, rendered for every arch, and the real validators
//! run over the rendered files.

use crate::check::{self, CheckResult, Status, Tools};
use crate::definition::Catalog;
use crate::error::{Error, Result};
use crate::render::{RenderError, RenderOptions};
use serde::Serialize;
use std::path::PathBuf;

pub struct Request {
    /// The images; empty with `all`.
    pub images: Vec<String>,
    pub all: bool,
    /// A validator that is not installed counts as failed.
    pub strict: bool,
    /// Keep the rendered files here instead of a temporary folder.
    pub keep: Option<PathBuf>,
    /// Resolve the compose stacks' images against their registries.
    pub online: bool,
}

/// What a run found; an `Err` is returned only after the whole report is made.
#[derive(Debug, Serialize)]
pub struct Report {
    pub results: Vec<CheckResult>,
    pub definition_errors: Vec<String>,
    pub failed: usize,
    pub not_run: usize,
    pub strict: bool,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.status == Status::Passed)
            .count()
    }

    /// The run's outcome: bad definitions are bad input (exit 2), failed validators a
    /// failure (exit 1).
    pub fn outcome(&self) -> Result<()> {
        if !self.definition_errors.is_empty() {
            return Err(Error::Usage(self.definition_errors.join("\n")));
        }
        if self.failed > 0 {
            return Err(Error::Failed(format!(
                "{} validation(s) failed",
                self.failed
            )));
        }
        Ok(())
    }
}

/// Runs the validators; each result is passed to `on_result` as it comes (a definition that
/// does not load is passed as its name with `None`).
pub fn validate(
    catalog: &Catalog,
    req: &Request,
    on_result: &mut dyn FnMut(&str, Option<&CheckResult>),
) -> Result<Report> {
    let names = if req.all {
        catalog.names()?
    } else {
        req.images.clone()
    };
    let tools = Tools::discover();
    let (target, why) = super::render::packer_target(None, &tools);
    tracing::info!("validating HCL for {why}");
    let tmp = tempfile::tempdir()?;
    let root = req.keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let mut definition_errors: Vec<String> = Vec::new();
    let mut results = Vec::new();
    let mut resolved: std::collections::BTreeMap<String, Status> = Default::default();
    let mut unreachable: std::collections::BTreeMap<String, String> = Default::default();
    let http = if req.online {
        let mut h = crate::http::Http::new(
            &crate::http::TlsOptions {
                verify: true,
                ..Default::default()
            },
            std::time::Duration::from_secs(20),
        )?;
        h.retries = 1;
        Some(h)
    } else {
        None
    };
    for name in &names {
        let r = match catalog.load_checked(name) {
            Ok(r) => r,
            Err(e) => {
                on_result(name, None);
                definition_errors.push(e.to_string());
                continue;
            }
        };
        if r.definition.is_abstract {
            continue;
        }
        for arch in r.definition.arch.clone() {
            let rendered = match crate::render::render(&r, arch, RenderOptions { packer: target }) {
                Ok(x) => x,
                Err(
                    e @ (RenderError::Definition(_)
                    | RenderError::ArchNotListed { .. }
                    | RenderError::Compose { .. }),
                ) => {
                    definition_errors.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let dir = root.join(name).join(arch.as_str());
            rendered.write_to(&dir)?;
            for res in check::run(&rendered, &dir, &tools) {
                on_result(name, Some(&res));
                results.push(res);
            }
            // Each stack image once per run, however many images and arches carry it.
            if let (Some(http), Some(stack)) = (&http, &rendered.compose) {
                for image in stack.images_for(&stack.profiles) {
                    let registry = crate::registry::parse(&image).map(|r| r.registry);
                    let status = match registry.as_ref().and_then(|r| unreachable.get(r)) {
                        // A registry that could not be reached is not asked again.
                        Some(why) => Status::NotRun(why.clone()),
                        None => resolved
                            .entry(image.clone())
                            .or_insert_with(|| check::registry_status(http, &image))
                            .clone(),
                    };
                    if let (Status::NotRun(why), Some(r)) = (&status, registry) {
                        if why.contains(" unreachable: ") {
                            unreachable.entry(r.clone()).or_insert_with(|| {
                                format!("{r} unreachable (see the first image of it)")
                            });
                        }
                    }
                    let res = CheckResult {
                        image: name.clone(),
                        arch: arch.as_str().into(),
                        validator: "registry",
                        file: image,
                        status,
                    };
                    on_result(name, Some(&res));
                    results.push(res);
                }
            }
        }
    }
    let failed = results
        .iter()
        .filter(|r| {
            matches!(r.status, Status::Failed(_))
                || (req.strict && matches!(r.status, Status::NotRun(_)))
        })
        .count();
    let not_run = results
        .iter()
        .filter(|r| matches!(r.status, Status::NotRun(_)))
        .count();
    if not_run > 0 && !req.strict {
        tracing::warn!("{not_run} validator run(s) did not happen (a tool is missing or a registry unreachable); --strict makes that a failure");
    }
    Ok(Report {
        results,
        definition_errors,
        failed,
        not_run,
        strict: req.strict,
    })
}
