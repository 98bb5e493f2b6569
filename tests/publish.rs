//! `imgbuild publish` against a real Keystone + Glance on 127.0.0.1: upload with hash
//! verification, seen by `openstack image show` with the expected properties; re-publish is a
//! no-op; --dry-run changes nothing; a tampered artifact or a wrong password fails with exit 1
//! and leaves no image behind.

mod common;

use common::openstack::{stack, stack_tls, Stack};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A dist folder with a real qcow2 (with data in it) and the manifest `build` would write.
fn dist_with_build(dist: &Path, version: &str) -> PathBuf {
    dist_with_image(dist, "debian12-base", version)
}

fn dist_with_image(dist: &Path, image: &str, version: &str) -> PathBuf {
    fake_build(
        dist,
        FakeBuild {
            image,
            version,
            ..Default::default()
        },
    )
}

fn clouds(dir: &Path, password: &str) -> PathBuf {
    clouds_for(dir, stack(), password, "")
}

/// clouds.yaml for cloud `lab` of stack `s`; `extra` is added to the cloud's entry.
fn clouds_for(dir: &Path, s: &Stack, password: &str, extra: &str) -> PathBuf {
    let p = dir.join("clouds.yaml");
    std::fs::write(
        &p,
        format!(
            "clouds:\n  lab:\n    auth:\n      auth_url: {}\n      username: admin\n      password: \"{password}\"\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n{extra}",
            s.keystone
        ),
    )
    .unwrap();
    p
}

fn publish(clouds: &Path, dist: &Path, args: &[&str]) -> Output {
    publish_image(clouds, dist, "debian12-base", args)
}

fn publish_image(clouds: &Path, dist: &Path, image: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(["--json", "publish", image, "--dist"])
        .arg(dist)
        .args(args)
        .current_dir(repo())
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .env("OS_CLIENT_SECURE_FILE", clouds.with_file_name("none.yaml"))
        .env("OS_CLOUD", "lab")
        .env_remove("OS_AUTH_URL")
        .output()
        .unwrap()
}

fn openstack(clouds: &Path, args: &[&str]) -> serde_json::Value {
    let o = Command::new(repo().join("target/openstack-venv/bin/openstack"))
        .args(["--os-cloud", "lab"])
        .args(args)
        .args(["-f", "json"])
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn publish_verifies_hashes_sets_properties_and_is_idempotent() {
    let s = stack();
    let t = tempfile::tempdir().unwrap();
    let c = clouds(t.path(), &s.password);
    let dist = t.path().join("dist");
    dist_with_build(&dist, "1.0");

    // --dry-run: says create, creates nothing.
    let o = publish(&c, &dist, &["--dry-run"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let dry: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(dry["action"], "create");
    assert_eq!(dry["plan"]["name"], "debian12-base-1.0");
    let listed = openstack(&c, &["image", "list", "--name", "debian12-base-1.0"]);
    assert_eq!(
        listed.as_array().unwrap().len(),
        0,
        "dry-run created an image"
    );

    let o = publish(&c, &dist, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["action"], "created");
    assert_eq!(r["status"], "active");
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dist.join("debian12-base/1.0/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["checksum"], m["digests"]["md5"]);
    assert_eq!(r["os_hash_value"], m["digests"]["sha512"]);

    // The OpenStack CLI sees the same image, hashes and properties.
    let show = openstack(&c, &["image", "show", r["id"].as_str().unwrap()]);
    assert_eq!(show["name"], "debian12-base-1.0");
    assert_eq!(show["status"], "active");
    assert_eq!(show["disk_format"], "qcow2");
    assert_eq!(show["checksum"], m["digests"]["md5"]);
    // The OpenStack CLI lists os_hash_* among the properties.
    assert_eq!(show["properties"]["os_hash_algo"], "sha512", "{show}");
    assert_eq!(show["properties"]["os_hash_value"], m["digests"]["sha512"]);
    assert_eq!(show["size"], m["artifact"]["size"]);
    assert_eq!(show["visibility"], "private");
    assert_eq!(show["min_disk"], 10);
    let props = &show["properties"];
    for (k, v) in [
        ("os_distro", "debian"),
        ("os_version", "12"),
        ("architecture", "x86_64"),
        ("hw_disk_bus", "virtio"),
        ("hw_qemu_guest_agent", "yes"),
        ("hw_firmware_type", "bios"),
        ("imgbuild_version", "1.0"),
        (
            "imgbuild_commit",
            "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d",
        ),
        (
            "owner_specified.openstack.object",
            "images/debian12-base-1.0",
        ),
    ] {
        assert_eq!(props[k], v, "property {k}: {props}");
    }
    assert_eq!(props["imgbuild_sha256"], m["digests"]["sha256"]);
    assert_eq!(
        props["owner_specified.openstack.sha256"],
        m["digests"]["sha256"]
    );
    assert_eq!(props["owner_specified.openstack.md5"], m["digests"]["md5"]);
    assert!(show["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "imgbuild"));
    assert!(
        !show.to_string().contains(&s.password),
        "no secret in Glance"
    );

    // Re-publish: the same image, nothing uploaded.
    let o = publish(&c, &dist, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["action"], "unchanged");
    assert_eq!(again["id"], r["id"]);
    let listed = openstack(&c, &["image", "list", "--name", "debian12-base-1.0"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let o = publish(&c, &dist, &["--dry-run"]);
    let dry: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(dry["action"], "unchanged");
}

#[test]
fn a_tampered_artifact_or_a_wrong_password_fails_and_leaves_nothing() {
    let s = stack();
    let t = tempfile::tempdir().unwrap();
    let dist = t.path().join("dist");
    let artifact = dist_with_build(&dist, "2.0");

    let bad = clouds(t.path(), "not-the-password-77");
    let o = publish(&bad, &dist, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(
        !err.contains("not-the-password-77"),
        "password leaked: {err}"
    );

    let good_dir = t.path().join("good");
    std::fs::create_dir_all(&good_dir).unwrap();
    let good = clouds(&good_dir, &s.password);
    let mut data = std::fs::read(&artifact).unwrap();
    let n = data.len();
    data[n - 1] ^= 0xff;
    std::fs::write(&artifact, &data).unwrap();
    let o = publish(&good, &dist, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("expected") && err.contains("actual"), "{err}");
    let listed = openstack(&good, &["image", "list", "--name", "debian12-base-2.0"]);
    assert_eq!(
        listed.as_array().unwrap().len(),
        0,
        "nothing may be left in Glance"
    );
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o).1);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn import_flow_and_retention_with_os_hidden() {
    let s = stack();
    let t = tempfile::tempdir().unwrap();
    let c = clouds(t.path(), &s.password);
    let dist = t.path().join("dist");
    let image = "k3s-server";
    // Interoperable import (stage + glance-direct), verified like an upload.
    dist_with_image(&dist, image, "r1");
    let r1 = json(&publish_image(
        &c,
        &dist,
        image,
        &["--version", "r1", "--method", "import"],
    ));
    assert_eq!(r1["method"], "glance-direct");
    assert_eq!(r1["status"], "active");
    // `auto` picks the import too, since this Glance offers glance-direct.
    dist_with_image(&dist, image, "r2");
    let r2 = json(&publish_image(&c, &dist, image, &["--version", "r2"]));
    assert_eq!(r2["method"], "glance-direct");
    for v in ["r3", "r4"] {
        dist_with_image(&dist, image, v);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let r = json(&publish_image(
            &c,
            &dist,
            image,
            &["--version", v, "--method", "upload", "--keep", "2"],
        ));
        assert_eq!(r["method"], "upload");
    }
    // `openstack image list --hidden` lists exactly the images with os_hidden=true.
    let names = |args: &[&str]| -> Vec<String> {
        openstack(&c, args)
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["Name"].as_str().unwrap().to_string())
            .collect()
    };
    let hidden = |name: &str| -> bool {
        let h = names(&["image", "list", "--hidden"]);
        let v = names(&["image", "list"]);
        assert!(h.iter().chain(&v).any(|n| n == name), "{name} is gone");
        h.iter().any(|n| n == name)
    };
    assert!(!hidden("k3s-server-r4"), "k3s-server-r4 must stay visible");
    assert!(!hidden("k3s-server-r3"), "k3s-server-r3 must stay visible");
    assert!(hidden("k3s-server-r2"), "k3s-server-r2 must be hidden");
    assert!(hidden("k3s-server-r1"), "k3s-server-r1 must be hidden");
    // Hidden images are out of the default listing.
    let visible = openstack(&c, &["image", "list"]);
    assert!(!visible.to_string().contains("k3s-server-r1"));
    // --dry-run shows what pruning would delete and deletes nothing.
    let prune = [
        "--version",
        "r4",
        "--keep",
        "2",
        "--delete-beyond",
        "3",
        "--prune",
    ];
    let mut dry_args = prune.to_vec();
    dry_args.push("--dry-run");
    let dry = json(&publish_image(&c, &dist, image, &dry_args));
    assert_eq!(dry["action"], "unchanged");
    assert_eq!(
        dry["retention"]["deleted"],
        serde_json::json!(["k3s-server-r1"])
    );
    assert!(hidden("k3s-server-r1"), "dry-run deleted k3s-server-r1");
    // The real thing.
    let r = json(&publish_image(&c, &dist, image, &prune));
    assert_eq!(r["action"], "unchanged");
    assert_eq!(
        r["retention"]["deleted"],
        serde_json::json!(["k3s-server-r1"])
    );
    let mut all = names(&["image", "list", "--hidden"]);
    all.extend(names(&["image", "list"]));
    assert!(!all.iter().any(|n| n == "k3s-server-r1"), "{all:?}");
    assert!(all.iter().any(|n| n == "k3s-server-r2"), "{all:?}");
}

#[test]
fn tls_with_a_private_ca_given_through_clouds_yaml_cacert() {
    let s = stack_tls();
    assert!(s.keystone.starts_with("https://") && s.glance.starts_with("https://"));
    let ca = s.ca.clone().unwrap();
    let t = tempfile::tempdir().unwrap();
    let dist = t.path().join("dist");
    dist_with_image(&dist, "kolla-node", "t1");

    // Without the CA the certificate is not trusted: exit 1, and nothing was created.
    let plain = clouds_for(t.path(), s, &s.password, "");
    let o = publish_image(&plain, &dist, "kolla-node", &["--method", "upload"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );

    // With `cacert` it works end to end (Keystone and Glance over HTTPS).
    let dir = t.path().join("ca");
    std::fs::create_dir_all(&dir).unwrap();
    let with_ca = clouds_for(
        &dir,
        s,
        &s.password,
        &format!("    cacert: {}\n", ca.display()),
    );
    let o = publish_image(&with_ca, &dist, "kolla-node", &["--method", "upload"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["action"], "created");
    assert_eq!(r["status"], "active");

    // verify: false is honoured, with a warning.
    let dir = t.path().join("insecure");
    std::fs::create_dir_all(&dir).unwrap();
    let insecure = clouds_for(&dir, s, &s.password, "    verify: false\n");
    let o = publish_image(&insecure, &dist, "kolla-node", &["--method", "upload"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("unchanged"), "{out}");
    assert!(err.contains("verification is off"), "{err}");
}

#[test]
fn raw_upload_for_rbd_style_stores_verifies_the_raw_bytes() {
    let s = stack();
    let t = tempfile::tempdir().unwrap();
    let c = clouds(t.path(), &s.password);
    let dist = t.path().join("dist");
    let artifact = dist_with_image(&dist, "k3s-node", "raw1");
    let cache = t.path().join("cache");
    let run = |extra: &[&str]| {
        let mut args = vec!["--disk-format", "raw", "--method", "upload"];
        args.extend(extra);
        Command::new(bin())
            .args(["--json", "publish", "k3s-node", "--dist"])
            .arg(&dist)
            .args(&args)
            .current_dir(repo())
            .env("OS_CLIENT_CONFIG_FILE", &c)
            .env("OS_CLIENT_SECURE_FILE", c.with_file_name("none.yaml"))
            .env("OS_CLOUD", "lab")
            .env("IMGBUILD_CACHE_DIR", &cache)
            .output()
            .unwrap()
    };
    let dry = json(&run(&["--dry-run"]));
    assert_eq!(
        dry["plan"]["disk_format"], "raw",
        "--dry-run shows the format"
    );
    let r = json(&run(&[]));
    assert_eq!(r["action"], "created");
    // What Glance holds is the raw conversion of the artifact, byte for byte.
    let raw = t.path().join("check.raw");
    let o = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&artifact)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(o.status.success());
    let md5 = String::from_utf8(Command::new("md5sum").arg(&raw).output().unwrap().stdout).unwrap();
    assert_eq!(r["checksum"], md5.split_whitespace().next().unwrap());
    let show = openstack(&c, &["image", "show", r["id"].as_str().unwrap()]);
    assert_eq!(show["disk_format"], "raw");
    assert_eq!(show["size"], std::fs::metadata(&raw).unwrap().len());
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dist.join("k3s-node/raw1/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        show["properties"]["imgbuild_sha256"], m["digests"]["sha256"],
        "the build's identity"
    );
    // The raw copy was temporary; a re-run finds the image without converting again.
    assert_eq!(
        std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0),
        0,
        "no raw copy is left in the cache"
    );
    let again = json(&run(&[]));
    assert_eq!(again["action"], "unchanged");
    assert_eq!(again["id"], r["id"]);
}
