//! The real validators run over rendered files: `packer validate`, `cloud-init schema`,
//! check-jsonschema with cloud-init's 24.04 cloud-config schema and netplan's v2 schema, and
//! check-jsonschema's built-in compose-spec schema. A validator that is not installed is
//! reported as not run, never as passed.

use crate::exec::{install_hint, which, Cmd, ExecError};
use crate::render::{Rendered, META_DATA, NETWORK_CONFIG, PACKER_DIR, USER_DATA};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub const CLOUD_CONFIG_SCHEMA: &str = include_str!("../schemas/cloud-config-v1.ubuntu-24.04.json");
pub const NETWORK_CONFIG_SCHEMA: &str = include_str!("../schemas/network-config-v2.json");

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "kebab-case")]
pub enum Status {
    Passed,
    Failed(String),
    NotRun(String),
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub image: String,
    pub arch: String,
    pub validator: &'static str,
    pub file: String,
    #[serde(flatten)]
    pub status: Status,
}

/// Where the validators are.
#[derive(Clone, Debug)]
pub struct Tools {
    pub packer: Option<PathBuf>,
    pub cloud_init: Option<PathBuf>,
    pub check_jsonschema: Option<PathBuf>,
}

impl Tools {
    /// Looks on PATH; check-jsonschema also in `$IMGBUILD_VENV/bin` and `./.venv/bin`
    /// (where `make host-tools` installs it).
    /// `IMGBUILD_VALIDATORS=none` finds none (every check is "not run"; the tests that feed
    /// `validate` mutated definitions use it).
    pub fn discover() -> Tools {
        if std::env::var_os("IMGBUILD_VALIDATORS").is_some_and(|v| v == "none") {
            return Tools {
                packer: None,
                cloud_init: None,
                check_jsonschema: None,
            };
        }
        let venv_tool = |name: &str| {
            let mut dirs: Vec<PathBuf> = Vec::new();
            if let Some(v) = std::env::var_os("IMGBUILD_VENV") {
                dirs.push(PathBuf::from(v).join("bin"));
            }
            dirs.push(PathBuf::from(".venv/bin"));
            if let Ok(exe) = std::env::current_exe() {
                // target/{debug,release}/imgbuild → the checkout's .venv
                if let Some(root) = exe.ancestors().nth(3) {
                    dirs.push(root.join(".venv/bin"));
                }
            }
            which(name).or_else(|| dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()))
        };
        Tools {
            packer: which("packer"),
            cloud_init: which("cloud-init"),
            check_jsonschema: venv_tool("check-jsonschema"),
        }
    }

    pub fn packer_version(&self) -> Option<String> {
        let p = self.packer.as_ref()?;
        Cmd::new(p)
            .arg("version")
            .env("CHECKPOINT_DISABLE", "1")
            .read()
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
    }
}

fn outcome(r: Result<std::process::Output, ExecError>) -> Status {
    match r {
        Ok(out) if out.status.success() => Status::Passed,
        Ok(out) => {
            let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
            msg.push_str(&String::from_utf8_lossy(&out.stderr));
            Status::Failed(crate::exec::tail(msg.trim(), 4000))
        }
        Err(e) => Status::Failed(e.to_string()),
    }
}

fn not_installed(program: &str) -> Status {
    Status::NotRun(format!(
        "{program} is not installed{}",
        install_hint(program)
            .map(|h| format!(" (install: {h})"))
            .unwrap_or_default()
    ))
}

/// Runs every validator over `rendered`, whose files are in `dir`.
pub fn run(rendered: &Rendered, dir: &Path, tools: &Tools) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let mut add = |validator: &'static str, file: &str, status: Status| {
        out.push(CheckResult {
            image: rendered.image.clone(),
            arch: rendered.arch.to_string(),
            validator,
            file: file.to_string(),
            status,
        })
    };

    // packer validate, in the packer folder, with its temp files (its plugins' sockets) in a
    // private folder that goes when it is done (exec::socket_tmpdir).
    let status = match &tools.packer {
        None => not_installed("packer"),
        Some(p) => match crate::exec::socket_tmpdir("imgbuild-packer-") {
            Ok(tmp) => outcome(
                Cmd::new(p)
                    .args(["validate", "-var-file=variables.pkrvars.hcl", "."])
                    .current_dir(dir.join(PACKER_DIR))
                    .env("CHECKPOINT_DISABLE", "1")
                    .env("TMPDIR", tmp.path())
                    .run_unchecked(),
            ),
            Err(e) => Status::Failed(format!("cannot make packer's temporary folder: {e}")),
        },
    };
    add("packer-validate", PACKER_DIR, status);

    let status = match &tools.cloud_init {
        None => not_installed("cloud-init"),
        Some(ci) => outcome(
            Cmd::new(ci)
                .args(["schema", "-c"])
                .arg(dir.join(USER_DATA))
                .run_unchecked(),
        ),
    };
    add("cloud-init-schema", USER_DATA, status);
    // A boot-free payload runs under /bin/sh as PID 1: its syntax is checked by sh.
    let payload_syntax =
        |p: &str| outcome(Cmd::new("sh").arg("-n").arg(dir.join(p)).run_unchecked());
    if let Some(p) = &rendered.flat_offline {
        add("payload-sh-syntax", p, payload_syntax(p));
    }
    for layer in &rendered.layers {
        let status = match &tools.cloud_init {
            None => not_installed("cloud-init"),
            Some(ci) => outcome(
                Cmd::new(ci)
                    .args(["schema", "-c"])
                    .arg(dir.join(&layer.user_data))
                    .run_unchecked(),
            ),
        };
        add("cloud-init-schema", &layer.user_data, status);
        if let Some(p) = &layer.offline {
            add("payload-sh-syntax", p, payload_syntax(p));
        }
    }

    match &tools.check_jsonschema {
        None => {
            add(
                "cloud-config-schema-24.04",
                USER_DATA,
                not_installed("check-jsonschema"),
            );
            for layer in &rendered.layers {
                add(
                    "cloud-config-schema-24.04",
                    &layer.user_data,
                    not_installed("check-jsonschema"),
                );
            }
            add(
                "netplan-v2-schema",
                NETWORK_CONFIG,
                not_installed("check-jsonschema"),
            );
            if let Some(c) = &rendered.compose {
                add(
                    "compose-spec",
                    &format!("compose/{}/compose.yaml", c.name),
                    not_installed("check-jsonschema"),
                );
            }
        }
        Some(cj) => {
            let schemas = dir.join(".tmp");
            let _ = std::fs::create_dir_all(&schemas);
            let cc = schemas.join("cloud-config-v1.json");
            let nc = schemas.join("network-config-v2.json");
            let written = std::fs::write(&cc, CLOUD_CONFIG_SCHEMA)
                .and_then(|_| std::fs::write(&nc, NETWORK_CONFIG_SCHEMA));
            let run_schema = |schema: &Path, file: &str| match &written {
                Err(e) => Status::Failed(format!("cannot write schema: {e}")),
                Ok(()) => outcome(
                    Cmd::new(cj)
                        .args(["--default-filetype", "yaml", "--schemafile"])
                        .arg(schema)
                        .arg(dir.join(file))
                        .run_unchecked(),
                ),
            };
            add(
                "cloud-config-schema-24.04",
                USER_DATA,
                run_schema(&cc, USER_DATA),
            );
            for layer in &rendered.layers {
                add(
                    "cloud-config-schema-24.04",
                    &layer.user_data,
                    run_schema(&cc, &layer.user_data),
                );
            }
            add(
                "netplan-v2-schema",
                NETWORK_CONFIG,
                run_schema(&nc, NETWORK_CONFIG),
            );
            if let Some(c) = &rendered.compose {
                let f = format!("compose/{}/compose.yaml", c.name);
                add(
                    "compose-spec",
                    &f,
                    outcome(
                        Cmd::new(cj)
                            .args(["--builtin-schema", "vendor.compose-spec"])
                            .arg(dir.join(&f))
                            .run_unchecked(),
                    ),
                );
            }
        }
    }
    // meta-data is plain YAML; a parse check is enough.
    let status = match std::fs::read_to_string(dir.join(META_DATA)) {
        Ok(t) => match serde_norway::from_str::<serde_json::Value>(&t) {
            Ok(v) if v.get("instance-id").is_some() => Status::Passed,
            Ok(_) => Status::Failed("no instance-id".into()),
            Err(e) => Status::Failed(e.to_string()),
        },
        Err(e) => Status::Failed(e.to_string()),
    };
    add("meta-data", META_DATA, status);
    out
}

/// The cloud-config validators on one user-data file (e.g. launch-time user-data):
/// `cloud-init schema -c` and cloud-init's 24.04 JSON schema through check-jsonschema.
pub fn cloud_config(file: &Path, tools: &Tools) -> Vec<(&'static str, Status)> {
    let mut out = Vec::new();
    out.push((
        "cloud-init-schema",
        match &tools.cloud_init {
            None => not_installed("cloud-init"),
            Some(ci) => outcome(
                Cmd::new(ci)
                    .args(["schema", "-c"])
                    .arg(file)
                    .run_unchecked(),
            ),
        },
    ));
    out.push((
        "cloud-config-schema-24.04",
        match &tools.check_jsonschema {
            None => not_installed("check-jsonschema"),
            Some(cj) => match tempfile::tempdir() {
                Err(e) => Status::Failed(format!("no temp dir: {e}")),
                Ok(dir) => {
                    let schema = dir.path().join("cloud-config-v1.json");
                    match std::fs::write(&schema, CLOUD_CONFIG_SCHEMA) {
                        Err(e) => Status::Failed(format!("cannot write schema: {e}")),
                        Ok(()) => outcome(
                            Cmd::new(cj)
                                .args(["--default-filetype", "yaml", "--schemafile"])
                                .arg(&schema)
                                .arg(file)
                                .run_unchecked(),
                        ),
                    }
                }
            },
        },
    ));
    out
}

/// `s` with every line indented by four spaces (validator output under a result line).
pub fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A compose image's tag asked of its registry ([`crate::registry::resolve`]).
pub fn registry_status(http: &crate::http::Http, image: &str) -> Status {
    match crate::registry::resolve(http, image) {
        crate::registry::Resolution::Exists(_) => Status::Passed,
        crate::registry::Resolution::Missing(why) => Status::Failed(why),
        crate::registry::Resolution::NotRun(why) => Status::NotRun(why),
    }
}
