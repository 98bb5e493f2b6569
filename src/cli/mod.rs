//! The command line: argument types (`args`) and, per command, the call into the library
//! (`imgbuild::commands`) and the printing of its report — JSON with `--json`, plain lines
//! otherwise (`output`). Progress and logs go to stderr; results to stdout.

pub mod args;
mod output;

use args::{ArchArg, CacheAction, CiEngine, Cli, Command};
use imgbuild::commands::{self, build::ArchChoice};
use imgbuild::definition::Catalog;
use imgbuild::error::Result;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Runs the parsed command.
pub fn run(cli: &Cli) -> Result<()> {
    let catalog = Catalog::new(&cli.images_dir);
    let out = output::Output { json: cli.json };
    if matches!(cli.command, Command::Build(_) | Command::Smoke(_)) {
        // The commands that boot VMs size them with it: a bad value is bad input.
        imgbuild::host::vm_cpus_env().map_err(imgbuild::error::Error::Usage)?;
    }
    match &cli.command {
        Command::List => out.list(&commands::list::list(&catalog)?),
        Command::Show { image } => out.show(image, &commands::show::show(&catalog, image)?),
        Command::Render(a) => out.render(&commands::render::render(
            &catalog,
            &commands::render::Request {
                image: a.image.clone(),
                arch: a.arch,
                out: a.out.clone(),
                packer_version: a.packer_version.clone(),
            },
        )?),
        Command::Validate(a) => {
            let req = commands::validate::Request {
                images: a.images.clone(),
                all: a.all,
                strict: a.strict,
                keep: a.keep.clone(),
                online: a.online,
            };
            let report = commands::validate::validate(&catalog, &req, &mut |name, res| {
                out.validate_line(name, res, a.strict)
            })?;
            out.validate(&report)?;
            report.outcome()
        }
        Command::Build(a) => {
            let req = commands::build::Request {
                images: if a.all {
                    commands::build::catalog_images(&catalog)?
                } else {
                    a.images.clone()
                },
                arch: a
                    .arch
                    .iter()
                    .map(|x| match x {
                        ArchArg::All => ArchChoice::All,
                        ArchArg::One(a) => ArchChoice::One(*a),
                    })
                    .collect(),
                jobs: a.jobs.map(|j| j as usize),
                backend: a.backend,
                version: a.image_version.clone(),
                out: a.out.clone(),
                cache: cache_dir(&a.cache_dir),
                smoke: !a.no_smoke,
                compression: a.compression,
                force: a.force,
                no_cache: a.no_cache,
                remote: match &a.cache_remote {
                    None => None,
                    Some(url) => Some(std::sync::Arc::new(commands::build::remote(
                        url,
                        a.cache_remote_read_only,
                    )?)),
                },
                quiet: cli.quiet,
            };
            if req.is_single() {
                let m = commands::build::build_one(&catalog, &req, &*cancel_flag()?)?;
                out.built(&a.out, &m)
            } else {
                let outcomes = commands::build::build_several(&catalog, &req, &*cancel_flag()?)?;
                out.built_several(&a.out, &outcomes)?;
                commands::build::outcome(&outcomes)
            }
        }
        Command::Smoke(a) => {
            let req = commands::smoke::Request {
                artifact: a.artifact.clone(),
                image: a.image.clone(),
                arch: a.arch,
                out: a.out.clone(),
                profiles: a.profiles.clone(),
                quiet: cli.quiet,
            };
            let report = commands::smoke::smoke(&catalog, &req, &*cancel_flag()?)?;
            out.smoke(&report, &a.out)?;
            commands::smoke::outcome(&report)
        }
        Command::Checksum(a) => match &a.verify {
            Some(sums) => {
                let results = commands::checksum::verify(sums, &a.files)?;
                out.verified(&results)?;
                commands::checksum::verify_outcome(&results)
            }
            None => out.hashed(&commands::checksum::hash(&a.files)?, a.algo),
        },
        Command::Doctor(a) => {
            let report = imgbuild::doctor::run(&cache_dir(&a.cache_dir));
            out.doctor(&report)?;
            if !report.ready {
                return Err(imgbuild::Error::Failed(
                    "required tools are missing (see above)".into(),
                ));
            }
            Ok(())
        }
        Command::Userdata(a) => out.userdata(&commands::userdata::userdata(
            &catalog,
            &commands::userdata::Request {
                image: a.image.clone(),
                user: a.user.clone(),
                ssh_key: a.ssh_key.clone(),
                desktop_password_file: a.desktop_password_file.clone(),
                k3s_server: a.k3s_server.clone(),
                k3s_token_file: a.k3s_token_file.clone(),
                k3s_labels: a.k3s_labels.clone(),
                k3s_taints: a.k3s_taints.clone(),
                shared: a.shared.clone(),
                profiles: a.profiles.clone(),
                stack_host: a.stack_host.clone(),
                cinder_volumes: a.cinder_volumes.clone(),
                sudo: !a.no_sudo,
                out: a.out.clone(),
            },
        )?),
        Command::Lima(a) => match (&a.lab, &a.image, &a.out) {
            (Some(lab), _, Some(dir)) => out.lab(&commands::lima::lab(
                &catalog,
                &commands::lima::LabRequest {
                    lab: lab.clone(),
                    version: a.image_version.clone(),
                    dist: a.dist.clone(),
                    out: dir.clone(),
                },
            )?),
            (_, Some(image), _) => out.lima(&commands::lima::lima(
                &catalog,
                &commands::lima::Request {
                    image: image.clone(),
                    version: a.image_version.clone(),
                    dist: a.dist.clone(),
                    out: a.out.clone(),
                },
            )?),
            // clap requires an image, or --lab with -o.
            _ => Err(imgbuild::error::Error::Usage(
                "lima: give an IMAGE, or --lab FILE with -o DIR".into(),
            )),
        },
        Command::Publish(a) => out.published(&commands::publish::publish(
            &catalog,
            &commands::publish::Request {
                image: a.image.clone(),
                version: a.image_version.clone(),
                dist: a.dist.clone(),
                os_cloud: a.os_cloud.clone(),
                dry_run: a.dry_run,
                timeout: a.timeout,
                method: a.method,
                keep: a.keep,
                delete_beyond: a.delete_beyond,
                prune: a.prune,
                disk_format: a.disk_format,
                cache: cache_dir(&a.cache_dir),
                quiet: cli.quiet,
            },
        )?),
        Command::Ci(a) => match &a.engine {
            CiEngine::Gitlab(g) => out.ci(&commands::ci::gitlab(
                &catalog,
                &commands::ci::Request {
                    images: g.images.clone(),
                    arch: g.arch,
                    runner_tags: g.runner_tags.clone(),
                    cache_remote: g.cache_remote.clone(),
                    out: g.out.clone(),
                },
            )?),
        },
        Command::Diff(a) => out.diff(&commands::diff::diff(&a.dist, &a.image, &a.old, &a.new)?),
        Command::Cache(a) => {
            let root = cache_dir(&a.cache_dir);
            match &a.action {
                CacheAction::Ls => out.cache_ls(&commands::cache::ls(&root), &root),
                CacheAction::Prune {
                    older_than,
                    max_size,
                    all,
                    dry_run,
                } => out.pruned(&commands::cache::prune(
                    &root,
                    &commands::cache::PruneRequest {
                        older_than: older_than.clone(),
                        max_size: max_size.clone(),
                        all: *all,
                        dry_run: *dry_run,
                    },
                )?),
            }
        }
    }
}

/// `--cache-dir` (or IMGBUILD_CACHE_DIR), else the default cache folder.
fn cache_dir(given: &Option<PathBuf>) -> PathBuf {
    given
        .clone()
        .unwrap_or_else(imgbuild::base::default_cache_dir)
}

/// Ctrl-C and SIGTERM set the flag (the work stops and cleans up); a second one exits at once.
fn cancel_flag() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(flag)
}
