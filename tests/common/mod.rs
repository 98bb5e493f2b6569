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

/// What [`fake_build`] makes.
pub struct FakeBuild<'a> {
    pub image: &'a str,
    pub version: &'a str,
    /// `build.started` in the manifest (the newest build is the one started last).
    pub started: &'a str,
    /// MiB of patterned guest data (unique per version) in the qcow2.
    pub data_mib: usize,
}

impl Default for FakeBuild<'_> {
    fn default() -> Self {
        FakeBuild {
            image: "debian12-base",
            version: "1.0",
            started: "2026-11-23T00:00:00Z",
            data_mib: 8,
        }
    }
}

/// A dist folder entry as `imgbuild build` writes it: DIST/IMAGE/VERSION with a real qcow2
/// (made by qemu-img from patterned data, so Glance's format check passes and every version
/// differs) and its manifest.json. Returns the artifact's path.
pub fn fake_build(dist: &Path, b: FakeBuild) -> PathBuf {
    use imgbuild::definition::Arch;
    use imgbuild::manifest::*;
    let dir = dist.join(b.image).join(b.version);
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("raw.img");
    let mut data = vec![0u8; b.data_mib << 20];
    for (i, x) in data.iter_mut().enumerate() {
        *x = (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8;
    }
    data.extend_from_slice(b.version.as_bytes());
    let virtual_size = (data.len() as u64).div_ceil(512) * 512;
    std::fs::write(&raw, &data).unwrap();
    let file = format!("{}-{}-amd64.qcow2", b.image, b.version);
    let artifact = dir.join(&file);
    let o = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&artifact)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(&raw).unwrap();
    let digests = imgbuild::digest::digest_file(&artifact, |_| {}).unwrap();
    let m = Manifest {
        image: b.image.into(),
        version: b.version.into(),
        arch: Arch::Amd64,
        description: "test".into(),
        backend: "qemu".into(),
        accel: "tcg".into(),
        base: BaseRef {
            kind: "bootstrap".into(),
            source: "mmdebstrap bookworm".into(),
            sha256: "0".repeat(64),
        },
        definition_sha256: "0".repeat(64),
        rendered_sha256: "0".repeat(64),
        artifact: Artifact {
            file,
            format: "qcow2".into(),
            compression: "none".into(),
            size: digests.size,
            virtual_size,
        },
        digests,
        smoke: None,
        build: BuildInfo {
            started: b.started.into(),
            duration_seconds: 1.0,
            tool: "imgbuild".into(),
            tool_version: "0".into(),
            git_commit: Some("1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d".into()),
            git_dirty: false,
            host: "linux".into(),
        },
        container_images: Vec::new(),
        layers: Vec::new(),
    };
    std::fs::write(dir.join("manifest.json"), m.to_json()).unwrap();
    artifact
}
