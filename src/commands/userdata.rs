//! `imgbuild userdata`: launch-time user-data for one user's VM, validated before it is
//! written.

use crate::check::{self, Status, Tools};
use crate::definition::Catalog;
use crate::error::{Error, Result};
use crate::render::userdata::{self, K3sLaunch, LaunchParams};
use serde::Serialize;
use std::path::PathBuf;

pub struct Request {
    pub image: String,
    pub user: String,
    pub ssh_key: PathBuf,
    pub desktop_password_file: Option<PathBuf>,
    pub k3s_server: Option<String>,
    pub k3s_token_file: Option<PathBuf>,
    pub k3s_labels: Vec<String>,
    pub k3s_taints: Vec<String>,
    pub shared: Option<String>,
    pub profiles: Option<Vec<String>>,
    pub stack_host: Option<String>,
    pub cinder_volumes: Option<String>,
    pub sudo: bool,
    /// Write here (mode 0600) instead of returning the text only.
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct ValidatorRun {
    pub validator: &'static str,
    #[serde(flatten)]
    pub status: Status,
}

#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    pub image: String,
    pub user: String,
    pub validators: Vec<ValidatorRun>,
    /// The user-data itself (printed when not written to a file; never in --json).
    #[serde(skip)]
    pub text: String,
}

pub fn userdata(catalog: &Catalog, req: &Request) -> Result<Report> {
    let r = super::buildable(catalog, &req.image)?;
    let read = |p: &PathBuf, what: &str| {
        std::fs::read_to_string(p).map_err(|e| Error::Usage(format!("{what} {}: {e}", p.display())))
    };
    let ssh_keys = userdata::parse_keys(&read(&req.ssh_key, "--ssh-key")?)?;
    let desktop_password = match &req.desktop_password_file {
        Some(p) => Some(
            read(p, "--desktop-password-file")?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        None => None,
    };
    let any_k3s =
        req.k3s_server.is_some() || !req.k3s_labels.is_empty() || !req.k3s_taints.is_empty();
    let k3s = match &req.k3s_token_file {
        Some(p) => Some(K3sLaunch {
            server: req.k3s_server.clone(),
            token: read(p, "--k3s-token-file")?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            labels: req.k3s_labels.clone(),
            taints: req.k3s_taints.clone(),
        }),
        None if any_k3s && r.definition.features.k3s.is_none() => {
            return Err(userdata::UserdataError::NoK3s(r.name.clone()).into())
        }
        None => None,
    };
    let text = userdata::render(
        &r,
        &LaunchParams {
            user: req.user.clone(),
            ssh_keys,
            sudo: req.sudo,
            desktop_password,
            k3s,
            shared: req.shared.clone(),
            profiles: req.profiles.clone(),
            stack_host: req.stack_host.clone(),
            cinder_volumes: req.cinder_volumes.clone(),
        },
    )?;
    // Validate before anything is written: our own output failing is a bug (exit 1).
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("user-data");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
    }
    let mut validators = Vec::new();
    for (name, status) in check::cloud_config(&file, &Tools::discover()) {
        match &status {
            Status::Passed => tracing::info!("{name}: passed"),
            Status::NotRun(why) => tracing::warn!("{name}: not run ({why})"),
            Status::Failed(why) => {
                return Err(Error::Failed(format!(
                    "the launch user-data fails {name}:\n{}",
                    crate::check::indent(why)
                )))
            }
        }
        validators.push(ValidatorRun {
            validator: name,
            status,
        });
    }
    if let Some(out) = &req.out {
        super::write_atomic(out, &text, Some(0o600))?;
    }
    Ok(Report {
        file: req.out.clone(),
        image: req.image.clone(),
        user: req.user.clone(),
        validators,
        text,
    })
}
