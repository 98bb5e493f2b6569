//! The HCL runs on Debian's Packer 1.6 and on current Packer, which needs
//! `packer { required_plugins { qemu } }` that 1.6 rejects: the `packer {}` block lives in
//! packer.pkr.hcl and is rendered for the detected (or given) release.

use crate::common;
use common::*;
use std::process::Command;

fn render(version: Option<&str>) -> tempfile::TempDir {
    let dir = catalog(&[("img", MINIMAL)]);
    let mut args = vec!["render", "img", "-o", "r"];
    if let Some(v) = version {
        args.extend(["--packer-version", v]);
    }
    let out = imgbuild(dir.path(), &args);
    assert!(out.status.success(), "{:?}", text(&out));
    dir
}

fn packer_validate(dir: &std::path::Path) -> std::process::Output {
    Command::new("packer")
        .args(["validate", "-var-file=variables.pkrvars.hcl", "."])
        .current_dir(dir.join("r/amd64/packer"))
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .expect("packer installed")
}

#[test]
fn installed_packer_is_detected_and_its_hcl_validates() {
    let installed = Command::new("packer")
        .arg("version")
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .unwrap();
    let installed = String::from_utf8_lossy(&installed.stdout).to_string();
    let dir = render(None);
    let block = std::fs::read_to_string(dir.path().join("r/amd64/packer/packer.pkr.hcl")).unwrap();
    if installed.contains("v1.6.") {
        assert!(!block.contains("required_plugins"), "{block}");
    } else {
        assert!(block.contains("required_plugins"), "{block}");
    }
    let out = packer_validate(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn modern_render_declares_the_qemu_plugin_and_old_packer_rejects_it() {
    let dir = render(Some("1.11.2"));
    let block = std::fs::read_to_string(dir.path().join("r/amd64/packer/packer.pkr.hcl")).unwrap();
    let v: serde_json::Value = hcl::from_str(&block).unwrap();
    assert_eq!(
        v["packer"]["required_plugins"]["qemu"]["source"],
        "github.com/hashicorp/qemu"
    );
    assert_eq!(v["packer"]["required_version"], ">= 1.7.0");
    // The same template body is shared; only packer.pkr.hcl differs from the legacy render.
    let legacy = render(Some("1.6.6"));
    let body = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("r/amd64/packer/build.pkr.hcl")).unwrap()
    };
    assert_eq!(body(dir.path()), body(legacy.path()));
    // Debian's 1.6.6 refuses the modern block, which is why it is rendered per release.
    let installed = Command::new("packer")
        .arg("version")
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .unwrap();
    if String::from_utf8_lossy(&installed.stdout).contains("v1.6.") {
        let out = packer_validate(dir.path());
        assert!(
            !out.status.success(),
            "packer 1.6 accepted required_plugins?"
        );
    }
}
