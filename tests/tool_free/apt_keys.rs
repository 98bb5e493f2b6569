//! The APT repository keys the catalog embeds (images/base.yaml `apt.keys`): imgbuild's own
//! fingerprint of each agrees with gpg's and with the one imgbuild pins for the repository;
//! a wrong, damaged or missing key, or a keyserver, is exit 2 naming file, line and field.

use crate::common;
use common::*;
use std::process::Command;

/// The catalog's base definition as YAML data.
fn base_keys() -> Vec<(String, String, String)> {
    let v = python_yaml(&repo().join("images/base.yaml"));
    v["apt"]["keys"]
        .as_object()
        .expect("images/base.yaml has apt.keys")
        .iter()
        .map(|(name, k)| {
            (
                name.clone(),
                k["fingerprint"].as_str().unwrap().to_string(),
                k["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// gpg's fingerprint of the primary key in `armoured` (an empty home: nothing is imported).
fn gpg_fingerprint(armoured: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("key.asc");
    std::fs::write(&file, armoured).unwrap();
    let out = Command::new("gpg")
        .arg("--homedir")
        .arg(home.path())
        .args([
            "--batch",
            "--show-keys",
            "--with-colons",
            "--fixed-list-mode",
        ])
        .arg(&file)
        .output()
        .expect("gpg (gnupg) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // The first `fpr` record follows the `pub` record: the primary key's.
    let mut lines = text.lines().skip_while(|l| !l.starts_with("pub:"));
    lines
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .expect("gpg prints the primary fingerprint")
        .to_string()
}

#[test]
fn every_embedded_key_is_the_repositorys_by_gpg_and_by_imgbuild() {
    let keys = base_keys();
    let names: Vec<&str> = keys.iter().map(|(n, _, _)| n.as_str()).collect();
    for rk in imgbuild::features::REPO_KEYS {
        assert!(names.contains(&rk.name), "apt.keys.{} missing", rk.name);
    }
    for (name, declared, key) in &keys {
        let ours = imgbuild::openpgp::fingerprint(key).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            ours,
            gpg_fingerprint(key),
            "{name}: imgbuild and gpg differ"
        );
        assert_eq!(ours, imgbuild::openpgp::normalize(declared), "{name}");
        let pinned = imgbuild::features::REPO_KEYS
            .iter()
            .find(|rk| rk.name == name)
            .unwrap();
        assert_eq!(ours, pinned.fingerprint, "{name}");
    }
}

/// A definition whose `apt.keys.docker` holds `key` declared as `fpr`.
fn with_docker_key(fpr: &str, key: &str) -> String {
    let key: String = key.lines().map(|l| format!("        {l}\n")).collect();
    format!(
        "{MINIMAL}features:\n  docker: {{source: docker-ce}}\napt:\n  keys:\n    docker:\n      fingerprint: {fpr}\n      key: |\n{key}"
    )
}

fn refused(def: &str, expect: &[&str]) {
    let dir = catalog(&[("img", def)]);
    let out = imgbuild(dir.path(), &["show", "img"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout={stdout} stderr={stderr}"
    );
    for e in expect {
        assert!(stderr.contains(e), "expected `{e}` in:\n{stderr}");
    }
}

#[test]
fn a_wrong_damaged_or_missing_key_or_a_keyserver_is_exit_2_naming_the_line() {
    let keys = base_keys();
    let (_, docker_fpr, docker_key) = keys.iter().find(|(n, _, _)| n == "docker").unwrap();
    let (_, moz_fpr, moz_key) = keys.iter().find(|(n, _, _)| n == "mozilla").unwrap();
    // The right key passes (the control case).
    let dir = catalog(&[("img", &with_docker_key(docker_fpr, docker_key))]);
    let out = imgbuild(dir.path(), &["show", "img"]);
    assert!(out.status.success(), "{}", text(&out).1);
    // Another repository's key under Docker's name, declared honestly: not Docker's.
    refused(
        &with_docker_key(moz_fpr, moz_key),
        &[
            "images/img.yaml:",
            "apt.keys.docker.fingerprint",
            "not Docker's repository key",
        ],
    );
    // Docker's fingerprint declared over another key.
    refused(
        &with_docker_key(docker_fpr, moz_key),
        &[
            "images/img.yaml:",
            "apt.keys.docker.key",
            "the key's fingerprint is",
        ],
    );
    // One character of the key changed: the armour's checksum catches it.
    let i = docker_key.find("\n\n").unwrap() + 10;
    let mut damaged = docker_key.clone();
    let c = if &damaged[i..=i] == "A" { "B" } else { "A" };
    damaged.replace_range(i..=i, c);
    refused(
        &with_docker_key(docker_fpr, &damaged),
        &["images/img.yaml:", "apt.keys.docker.key"],
    );
    // docker-ce without the key.
    refused(
        &format!("{MINIMAL}features:\n  docker: {{source: docker-ce}}\n"),
        &[
            "images/img.yaml:",
            "features.docker",
            "needs apt.keys.docker",
        ],
    );
    // A keyserver.
    refused(
        &format!(
            "{MINIMAL}apt:\n  sources:\n    x:\n      source: deb [signed-by=$KEY_FILE] http://x.example/ stable main\n      keyid: {docker_fpr}\n      keyserver: keyserver.ubuntu.com\n"
        ),
        &["images/img.yaml:", "apt.sources.x.keyid", "never ask a keyserver"],
    );
}
