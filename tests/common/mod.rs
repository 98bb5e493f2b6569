//! Shared helpers for the end-to-end tests: run the real binary, make throw-away catalogs.
#![allow(dead_code)]

pub mod openstack;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_imgbuild")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs imgbuild with `args` in `cwd`.
pub fn imgbuild(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("IMGBUILD_VENV", repo().join(".venv"))
        .env_remove("IMGBUILD_IMAGES_DIR")
        .output()
        .expect("imgbuild runs")
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A temporary folder with `images/NAME.yaml` files.
pub fn catalog(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join("images").join(format!("{name}.yaml")), body).unwrap();
    }
    dir
}

/// A minimal valid Debian definition body (bootstrap base), to extend or edit in tests.
pub const MINIMAL: &str = "description: test image
os: {distro: debian, version: \"12\", codename: bookworm}
arch: [amd64]
base:
  amd64:
    bootstrap:
      suite: bookworm
";

pub fn python_yaml(file: &Path) -> serde_json::Value {
    let venv_py = repo().join(".venv/bin/python3");
    let py = if venv_py.exists() {
        venv_py
    } else {
        PathBuf::from("python3")
    };
    let out = Command::new(py)
        .args(["-c", "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))"])
        .arg(file)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "PyYAML failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}
