//! `imgbuild publish` against a real Keystone + Glance on 127.0.0.1: upload with hash
//! verification, seen by `openstack image show` with the expected properties; re-publish is a
//! no-op; --dry-run changes nothing; a tampered artifact or a wrong password fails with exit 1
//! and leaves no image behind.
//!
//! Error answers are provoked for real, each ending with exit 1, a message naming the problem
//! and nothing half-made in Glance: 403 (a `reader`-only user), 413 (a second Glance with a
//! storage quota; upload and import), 409 (a second upload), 5xx (a second Glance whose store
//! is gone: retried, then failing or recovering), a stopped Glance (connection refused,
//! retried), a Glance that never answers (--timeout), 404/300 (wrong endpoint paths), and a
//! Glance that requires a client certificate (clouds.yaml `cert`/`key`). A delete Glance
//! half-finishes (500, then 400 on the retry) counts as done (exit 0); an upload or staging
//! that a gateway in front of Glance answers with 504 after Glance took the data gets 409 on
//! the retry and is verified, not failed (exit 0, one active image). Extra Glances are
//! started only by the tests that change their config, and stop when those tests end.

use crate::common;

use common::openstack::{
    make_certs, make_client_cert, stack, stack_tls, ExtraGlance, GlanceTls, Stack,
};
use common::*;
use imgbuild::glance::publish::{describe, PublishError};
use imgbuild::http::{Http, TlsOptions};
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
    clouds_as(dir, s, ("admin", password, "admin"), "RegionOne", extra)
}

/// clouds.yaml in `dir` for cloud `lab`: (user, password, project) of the Default domain,
/// in `region`; `extra` is added to the cloud's entry.
fn clouds_as(dir: &Path, s: &Stack, who: (&str, &str, &str), region: &str, extra: &str) -> PathBuf {
    let (user, password, project) = who;
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("clouds.yaml");
    std::fs::write(
        &p,
        format!(
            "clouds:\n  lab:\n    auth:\n      auth_url: {}\n      username: {user}\n      password: \"{password}\"\n      project_name: {project}\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: {region}\n{extra}",
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
    publish_command(clouds, dist, image, args).output().unwrap()
}

fn publish_command(clouds: &Path, dist: &Path, image: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["--json", "publish", image, "--dist"])
        .arg(dist)
        .args(args)
        .current_dir(repo())
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .env("OS_CLIENT_SECURE_FILE", clouds.with_file_name("none.yaml"))
        .env("OS_CLOUD", "lab")
        .env_remove("OS_AUTH_URL");
    cmd
}

fn openstack(clouds: &Path, args: &[&str]) -> serde_json::Value {
    let o = Command::new(repo().join("target/openstack-venv/bin/openstack"))
        .args(["--os-cloud", "lab"])
        .args(args)
        .args(["-f", "json"])
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .env("OS_CLIENT_SECURE_FILE", clouds.with_file_name("none.yaml"))
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

/// Publishes `versions` of `image` one after the other with the classic upload, each a
/// second after the last (retention orders by Glance's `created_at`, which has seconds);
/// `extra` goes to every publish. Their JSON answers.
fn upload_versions(
    c: &Path,
    dist: &Path,
    image: &str,
    versions: &[&str],
    extra: &[&str],
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for v in versions {
        dist_with_image(dist, image, v);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let mut args = vec!["--version", v, "--method", "upload"];
        args.extend(extra);
        out.push(json(&publish_image(c, dist, image, &args)));
    }
    out
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
    for r in upload_versions(&c, &dist, image, &["r3", "r4"], &["--keep", "2"]) {
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

/// Runs `sql` on the sqlite database `db` (Glance's, to provoke a fault it cannot be asked
/// for through its API).
fn sqlite(db: &Path, sql: &str) {
    let o = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=30)\nc.execute(sys.argv[2])\nc.commit()",
        ])
        .arg(db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(o.status.success(), "{sql}: {}", text(&o).1);
}

/// Glance deletes an image in two steps: the status becomes `deleted`, then the row is
/// soft-deleted. A fault between them (CI met sqlite's "database is locked") answers 500 and
/// leaves the image in status `deleted`; the retried DELETE then gets 400 "transition from
/// deleted to deleted". Provoked for real with a trigger that fails the second step for one
/// image: retention counts it as deleted, and the next run goes on (Glance's first step
/// purged the image's properties, so it is no longer one of the image's versions).
#[test]
fn a_delete_glance_leaves_half_done_counts_as_deleted_and_the_next_run_goes_on() {
    let s = stack();
    let t = tempfile::tempdir().unwrap();
    let c = clouds(t.path(), &s.password);
    let dist = t.path().join("dist");
    let image = "k3s-node-drbd";
    let names: Vec<String> = upload_versions(&c, &dist, image, &["h1", "h2", "h3"], &[])
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    let (oldest, middle) = (names[0].clone(), names[1].clone());
    let trigger = "imgbuild_test_half_delete";
    sqlite(
        &s.state.join("glance.sqlite"),
        &format!(
            "CREATE TRIGGER {trigger} BEFORE UPDATE OF deleted ON images \
             WHEN NEW.deleted AND OLD.name = '{oldest}' \
             BEGIN SELECT RAISE(ABORT, 'injected by the test'); END"
        ),
    );
    let prune = ["--version", "h3", "--delete-beyond", "2", "--prune"];
    let o = publish_image(&c, &dist, image, &prune);
    let err = text(&o).1;
    let r = json(&o);
    assert!(err.contains("HTTP 500") && retries(&err) >= 1, "{err}");
    assert_eq!(
        r["retention"]["deleted"],
        serde_json::json!([oldest]),
        "{err}\n{}",
        openstack(&c, &["image", "list", "--long"])
    );
    let shown = openstack(&c, &["image", "show", &oldest]);
    assert_eq!(shown["status"], "deleted", "{shown}");

    // The next run: the half-deleted image is no version, so `--delete-beyond 1` deletes
    // the middle one only and does not meet the half-deleted one again.
    let o = publish_image(
        &c,
        &dist,
        image,
        &["--version", "h3", "--delete-beyond", "1", "--prune"],
    );
    let err = text(&o).1;
    let r = json(&o);
    assert_eq!(
        r["retention"]["deleted"],
        serde_json::json!([middle]),
        "{err}"
    );
    assert!(!err.contains("HTTP 400"), "{err}");
    sqlite(
        &s.state.join("glance.sqlite"),
        &format!("DROP TRIGGER {trigger}"),
    );
}

/// Glance creates an image in two steps too: the image, then its tags. A fault between
/// them answers 500 with the image made. imgbuild chooses the image's id, so the retry is a
/// 409 for it; the image, without its tags, is not whole and is deleted (a whole one would be
/// used). Provoked with a trigger that fails the tags of one image name: exit 1, nothing
/// left; without the trigger the same publish succeeds.
#[test]
fn a_create_glance_half_finishes_leaves_nothing_behind() {
    let s = stack();
    let admin = s.admin();
    let t = tempfile::tempdir().unwrap();
    let c = clouds(t.path(), &s.password);
    let dist = t.path().join("dist");
    let image = "k3s-node-gpu";
    let name = "k3s-node-gpu-p1";
    dist_with_image(&dist, image, "p1");
    let db = s.state.join("glance.sqlite");
    let trigger = "imgbuild_test_half_create";
    sqlite(
        &db,
        &format!(
            "CREATE TRIGGER {trigger} BEFORE INSERT ON image_tags \
             WHEN (SELECT name FROM images WHERE id = NEW.image_id) = '{name}' \
             BEGIN SELECT RAISE(ABORT, 'injected by the test'); END"
        ),
    );
    let args = ["--version", "p1", "--method", "upload"];
    let err = failed(&publish_image(&c, &dist, image, &args), s);
    assert!(err.contains("HTTP 500") && retries(&err) >= 1, "{err}");
    assert!(err.contains("failed to create image"), "{err}");
    let left = images_named(&admin.http, &admin.token, &s.glance, name);
    assert!(left.is_empty(), "half-made image left: {left:?}");
    sqlite(&db, &format!("DROP TRIGGER {trigger}"));
    let r = json(&publish_image(&c, &dist, image, &args));
    assert_eq!(r["status"], "active");
    assert_eq!(r["name"], name);
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
    // The raw copy was temporary (only the publish lock stays in the cache); a re-run finds
    // the image without converting again.
    let left: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "locks")
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
    let again = json(&run(&[]));
    assert_eq!(again["action"], "unchanged");
    assert_eq!(again["id"], r["id"]);
}

// ---- Error responses from the real services -------------------------------------------------
// Each failure below is provoked for real (a Keystone role, a Glance quota, a broken store,
// a stopped Glance, a wrong catalog URL, a TLS server that wants a client certificate) and
// must end with exit 1, a message that names the problem, and nothing half-made in Glance.

/// A build of debian12-base `version` in a fresh dist folder under `dir`.
fn dist_for(dir: &Path, version: &str) -> PathBuf {
    let dist = dir.join("dist");
    dist_with_image(&dist, "debian12-base", version);
    dist
}

/// The images named `name` in the Glance at `glance` (any status, any project: asked as admin).
fn images_named(http: &Http, token: &str, glance: &str, name: &str) -> Vec<serde_json::Value> {
    let r = http
        .get(
            &format!("{glance}/v2/images?name={name}"),
            Some(token),
            &[200],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    r.json["images"].as_array().unwrap().clone()
}

/// Exit 1 and the stderr, which must not show the admin password.
fn failed(o: &Output, s: &Stack) -> String {
    let (out, err) = text(o);
    eprintln!("imgbuild's stderr (shown with --nocapture):\n{err}");
    assert_eq!(o.status.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert!(!err.contains(&s.password), "password leaked: {err}");
    err
}

fn retries(err: &str) -> usize {
    err.lines().filter(|l| l.contains("retrying")).count()
}

#[test]
fn a_reader_is_forbidden_403_and_nothing_is_created() {
    let s = stack();
    let admin = s.admin();
    // A project whose user has only `reader`: Glance's default policy wants `member` to
    // create images.
    let who = format!("reader{}", std::process::id());
    let pw = format!("pw-{who}-x9");
    admin.user_with_role(&who, &pw, "reader");
    let t = tempfile::tempdir().unwrap();
    let dist = dist_for(t.path(), "r403");
    let c = clouds_as(t.path(), s, (&who, &pw, &who), "RegionOne", "");
    let o = publish(&c, &dist, &[]);
    let err = failed(&o, s);
    assert!(err.contains("HTTP 403"), "{err}");
    assert!(err.contains("add_image"), "Glance's reason: {err}");
    assert!(err.contains("not allowed"), "{err}");
    assert!(!err.contains(&pw) && !err.contains("<br"), "{err}");
    assert_eq!(retries(&err), 0, "a 403 is not retried: {err}");
    // Nothing in Glance: not for the reader's project, not for anyone.
    let mine = openstack(&c, &["image", "list", "--name", "debian12-base-r403"]);
    assert_eq!(mine.as_array().unwrap().len(), 0, "{mine}");
    let all = images_named(&admin.http, &admin.token, &s.glance, "debian12-base-r403");
    assert!(all.is_empty(), "{all:?}");
}

#[test]
fn a_storage_quota_is_413_for_upload_and_import_and_nothing_is_left() {
    let s = stack();
    let admin = s.admin();
    // A Glance of its own with a 4 MB storage quota per project; the artifact is 8 MiB.
    let g = ExtraGlance::start(s, "quota", "user_storage_quota = 4MB", None);
    admin.image_endpoint("RegionQuota", "public", &g.url);
    let t = tempfile::tempdir().unwrap();
    let dist = dist_for(t.path(), "q1");
    let c = clouds_as(
        t.path(),
        s,
        ("admin", &s.password, "admin"),
        "RegionQuota",
        "",
    );
    let name = "debian12-base-q1";

    // Classic upload: Glance stops reading at the quota and answers 413.
    let o = publish(&c, &dist, &["--method", "upload"]);
    let err = failed(&o, s);
    assert!(err.contains("HTTP 413"), "{err}");
    assert!(err.contains("storage quota"), "Glance's reason: {err}");
    assert!(err.contains("quota of the project is exceeded"), "{err}");
    assert_eq!(retries(&err), 0, "a 413 is not retried: {err}");
    assert!(images_named(&admin.http, &admin.token, &g.url, name).is_empty());

    // Import: staging takes the data, Glance's import task then fails on the quota; that is
    // seen at once (not after --timeout), and the classic upload that follows gets the 413.
    let started = std::time::Instant::now();
    let o = publish(&c, &dist, &["--method", "import"]);
    let err = failed(&o, s);
    assert!(
        err.contains("import of image") && err.contains("failed"),
        "{err}"
    );
    assert!(err.contains("falling back to the classic upload"), "{err}");
    assert!(
        err.contains("HTTP 413") && err.contains("storage quota"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the failed import was not noticed: {:?}",
        started.elapsed()
    );
    let left = images_named(&admin.http, &admin.token, &g.url, name);
    assert!(left.is_empty(), "half-made images left: {left:?}");
    // Nor any data in the store or in staging.
    for dir in ["images", "staging"] {
        let files: Vec<_> = std::fs::read_dir(g.state.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(files.is_empty(), "{dir}: {files:?}");
    }
}

#[test]
fn a_second_upload_to_an_active_image_is_a_409_conflict() {
    // `imgbuild publish` uploads into the image it has just created, and goes on after a 409
    // only when its own earlier try went through (the gateway test below); so the message is
    // shown with the lowest-level call: a second PUT of the data. Glance answers
    // before it reads the data, and closes; 16 MiB is more than the socket buffers hold, so
    // this also shows that such an early answer is read (over HTTP and HTTPS) instead of
    // ending as a broken pipe.
    let t = tempfile::tempdir().unwrap();
    let artifact = fake_build(
        &t.path().join("dist"),
        FakeBuild {
            version: "c409",
            data_mib: 16,
            ..Default::default()
        },
    );
    for s in [stack(), stack_tls()] {
        let admin = s.admin();
        let http = &admin.http;
        let created = http
            .post_json(
                &format!("{}/v2/images", s.glance),
                Some(&admin.token),
                &serde_json::json!({"name": "imgbuild-test-409", "disk_format": "qcow2",
                    "container_format": "bare"}),
                &[201],
            )
            .unwrap();
        let url = format!(
            "{}/v2/images/{}",
            s.glance,
            created.json["id"].as_str().unwrap()
        );
        http.put_file(
            &format!("{url}/file"),
            &admin.token,
            &artifact,
            &mut |_, _| {},
        )
        .unwrap();
        let started = std::time::Instant::now();
        let e = http
            .put_file(
                &format!("{url}/file"),
                &admin.token,
                &artifact,
                &mut |_, _| {},
            )
            .unwrap_err();
        assert!(
            started.elapsed() < std::time::Duration::from_millis(450),
            "a 409 is not retried"
        );
        assert_eq!(e.status(), Some(409), "{}: {e}", s.glance);
        let msg = describe(&PublishError::from(e));
        assert!(msg.contains("HTTP 409"), "{msg}");
        assert!(
            msg.contains("Image status transition from active to saving is not allowed"),
            "Glance's reason, without markup: {msg}"
        );
        assert!(
            msg.ends_with("(conflict: the image is in a state that does not allow this)"),
            "{msg}"
        );
        http.delete(&url, Some(&admin.token), &[204]).unwrap();
    }
}

#[test]
fn glance_5xx_is_retried_then_fails_or_recovers_and_a_stopped_glance_is_retried() {
    let s = stack();
    let admin = s.admin();
    let mut g = ExtraGlance::start(s, "flaky", "", None);
    admin.image_endpoint("RegionFlaky", "public", &g.url);
    let t = tempfile::tempdir().unwrap();
    let dist = t.path().join("dist");
    dist_with_image(&dist, "debian12-base", "f1");
    dist_with_image(&dist, "debian12-base", "f2");
    let c = clouds_as(
        t.path(),
        s,
        ("admin", &s.password, "admin"),
        "RegionFlaky",
        "",
    );
    // Without its store directory, Glance answers every upload with HTTP 500.
    let store = g.state.join("images");
    let away = g.state.join("images.away");
    std::fs::rename(&store, &away).unwrap();

    let started = std::time::Instant::now();
    let o = publish(&c, &dist, &["--version", "f1", "--method", "upload"]);
    let err = failed(&o, s);
    assert!(err.contains("HTTP 500"), "{err}");
    assert_eq!(retries(&err), 4, "4 retries with backoff: {err}");
    assert!(
        err.contains("retrying the upload in 0.5 s")
            && err.contains("retrying the upload in 4.0 s"),
        "{err}"
    );
    assert!(
        err.contains("(tried 5 times)") && err.contains("again on every retry"),
        "{err}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(7500),
        "backoff 0.5 + 1 + 2 + 4 s"
    );
    let left = images_named(&admin.http, &admin.token, &g.url, "debian12-base-f1");
    assert!(left.is_empty(), "half-made image left: {left:?}");

    // The store comes back while imgbuild waits to retry: the retry succeeds.
    let mut child = publish_command(
        &c,
        &dist,
        "debian12-base",
        &["--version", "f1", "--method", "upload"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut err = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap())) {
        let line = line.unwrap();
        if line.contains("retrying") && !store.exists() {
            std::fs::rename(&away, &store).unwrap();
        }
        err.push_str(&line);
        err.push('\n');
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{err}");
    assert_eq!(retries(&err), 1, "{err}");
    assert!(err.contains("HTTP 500"), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["status"], "active");
    assert_eq!(r["action"], "created");

    // Glance stopped: connection refused, retried with backoff, then exit 1.
    g.stop();
    let o = publish(&c, &dist, &["--version", "f2", "--method", "upload"]);
    let err = failed(&o, s);
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert_eq!(retries(&err), 4, "{err}");
    assert!(err.contains("(tried 5 times)"), "{err}");
}

#[test]
fn a_glance_that_never_answers_times_out_after_timeout_seconds() {
    let s = stack();
    let admin = s.admin();
    // Takes connections (the kernel completes the handshake) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    admin.image_endpoint("RegionSilent", "public", &url);
    let t = tempfile::tempdir().unwrap();
    let dist = dist_for(t.path(), "s1");
    let c = clouds_as(
        t.path(),
        s,
        ("admin", &s.password, "admin"),
        "RegionSilent",
        "",
    );
    // The limit also holds for the real Keystone's answer, which took over 2 s in a test run
    // beside two TCG guests (2026-11-30 18:09: `POST …/v3/auth/tokens: timed out after 2 s`);
    // 15 s is ample for Keystone and still says whether the silent Glance was given up on once
    // (five tries would take 75 s).
    let started = std::time::Instant::now();
    let o = publish(&c, &dist, &["--timeout", "15"]);
    let took = started.elapsed();
    let err = failed(&o, s);
    assert!(
        err.contains(&format!("{url}/")) && err.contains("timed out after 15 s"),
        "the silent Glance, not Keystone, timed out: {err}"
    );
    assert!(err.contains("--timeout"), "{err}");
    assert_eq!(retries(&err), 0, "a timeout is not retried: {err}");
    assert!(
        took < std::time::Duration::from_secs(60),
        "took {took:?} with --timeout 15"
    );
    drop(silent);
}

#[test]
fn a_wrong_image_endpoint_is_404_or_300_and_a_missing_one_is_named() {
    let s = stack();
    let admin = s.admin();
    // The real Glance behind URLs with a wrong path: under /v2 it answers 404, under any other
    // prefix its list of API versions (300).
    admin.image_endpoint(
        "RegionWrongPath",
        "public",
        &format!("{}/v2/glance", s.glance),
    );
    admin.image_endpoint(
        "RegionWrongPath",
        "internal",
        &format!("{}/image", s.glance),
    );
    let t = tempfile::tempdir().unwrap();
    let dist = dist_for(t.path(), "w1");
    let admin_user = ("admin", s.password.as_str(), "admin");

    let c = clouds_as(&t.path().join("a"), s, admin_user, "RegionWrongPath", "");
    let err = failed(&publish(&c, &dist, &[]), s);
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(err.contains("/v2/glance/v2/images"), "the URL asked: {err}");
    assert!(err.contains("wrong image endpoint"), "{err}");
    assert_eq!(retries(&err), 0, "{err}");

    let c = clouds_as(
        &t.path().join("b"),
        s,
        admin_user,
        "RegionWrongPath",
        "    interface: internal\n",
    );
    let err = failed(&publish(&c, &dist, &[]), s);
    assert!(err.contains("HTTP 300"), "{err}");
    assert!(err.contains("list of API versions"), "{err}");
    assert!(err.contains("wrong image endpoint"), "{err}");

    let c = clouds_as(&t.path().join("c"), s, admin_user, "RegionNowhere", "");
    let err = failed(&publish(&c, &dist, &[]), s);
    assert!(
        err.contains("no image endpoint (interface public, region RegionNowhere)"),
        "{err}"
    );
    let left = images_named(&admin.http, &admin.token, &s.glance, "debian12-base-w1");
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_glance_that_requires_a_client_certificate() {
    let s = stack();
    let admin = s.admin();
    let t = tempfile::tempdir().unwrap();
    let tls = t.path().join("tls");
    make_certs(&tls);
    make_client_cert(&tls, "client");
    let g = ExtraGlance::start(
        s,
        "mtls",
        "",
        Some(&GlanceTls {
            cert: tls.join("server.pem"),
            key: tls.join("server.key"),
            ca: tls.join("ca.pem"),
            client_ca: Some(tls.join("ca.pem")),
            probe: Some((tls.join("client.pem"), tls.join("client.key"))),
        }),
    );
    assert!(g.url.starts_with("https://"));
    admin.image_endpoint("RegionMtls", "public", &g.url);
    let dist = dist_for(t.path(), "m1");
    let admin_user = ("admin", s.password.as_str(), "admin");
    let ca = format!("    cacert: {}\n", tls.join("ca.pem").display());
    // clouds.yaml in DIR with the CA and the client certificate NAME.pem/.key of `certs`.
    let with_cert = |dir: &str, certs: &Path, name: &str| {
        let pem = certs.join(format!("{name}.pem"));
        let key = certs.join(format!("{name}.key"));
        let extra = format!(
            "{ca}    cert: {}\n    key: {}\n",
            pem.display(),
            key.display()
        );
        clouds_as(&t.path().join(dir), s, admin_user, "RegionMtls", &extra)
    };

    // The CA alone: the server refuses the connection, and the message says what is missing.
    let c = clouds_as(&t.path().join("a"), s, admin_user, "RegionMtls", &ca);
    let err = failed(&publish(&c, &dist, &["--method", "upload"]), s);
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("client certificate"), "{err}");
    assert!(err.contains("`cert` and `key`"), "{err}");
    assert_eq!(retries(&err), 0, "a TLS refusal is not retried: {err}");

    // A client certificate from another CA: refused too.
    let other = t.path().join("other");
    make_certs(&other);
    make_client_cert(&other, "stranger");
    let c = with_cert("b", &other, "stranger");
    let err = failed(&publish(&c, &dist, &["--method", "upload"]), s);
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("client certificate"), "{err}");

    // `cert` and `key` in clouds.yaml: published.
    let c = with_cert("c", &tls, "client");
    let o = publish(&c, &dist, &["--method", "upload"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["status"], "active");
    // Exactly that one image, seen through a client with the certificate.
    let http = Http::new(
        &TlsOptions {
            cacert: Some(tls.join("ca.pem")),
            cert: Some(tls.join("client.pem")),
            key: Some(tls.join("client.key")),
            verify: true,
            ..Default::default()
        },
        std::time::Duration::from_secs(30),
    )
    .unwrap();
    let imgs = images_named(&http, &admin.token, &g.url, "debian12-base-m1");
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0]["id"], r["id"]);
}

/// A gateway in front of a real Glance, as HAProxy or nginx stands in front of one in a
/// cloud. It relays every request and answer (one request per connection), except that it
/// answers the first PUT whose path ends with `suffix` with 504 after Glance has taken the
/// data and answered: a gateway's timeout while Glance still finished the upload.
struct Gateway {
    url: String,
    /// (method, path, status relayed to the client) of every request, in order.
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, u16)>>>,
}

fn gateway(upstream: &str, suffix: &'static str) -> Gateway {
    use std::io::{BufRead, Read, Write};
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let failed_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let (upstream, log, failed_once) = (upstream.clone(), log.clone(), failed_once.clone());
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(client.try_clone().unwrap());
                let mut head = Vec::new();
                let mut chunked = false;
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                        chunked = true;
                    }
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if !lower.starts_with("connection:") {
                        head.push(line);
                    }
                }
                let request_line = head[0].clone();
                let mut parts = request_line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap().to_string(),
                );
                // The body as sent (chunked framing kept), read whole before Glance sees it.
                let mut body = Vec::new();
                if chunked {
                    loop {
                        let mut size_line = String::new();
                        r.read_line(&mut size_line).unwrap();
                        body.extend_from_slice(size_line.as_bytes());
                        let size =
                            usize::from_str_radix(size_line.trim().split(';').next().unwrap(), 16)
                                .unwrap();
                        if size == 0 {
                            loop {
                                let mut trailer = String::new();
                                r.read_line(&mut trailer).unwrap();
                                body.extend_from_slice(trailer.as_bytes());
                                if trailer == "\r\n" {
                                    break;
                                }
                            }
                            break;
                        }
                        let mut chunk = vec![0; size + 2];
                        r.read_exact(&mut chunk).unwrap();
                        body.extend_from_slice(&chunk);
                    }
                } else {
                    body.resize(length, 0);
                    r.read_exact(&mut body).unwrap();
                }
                let mut up = std::net::TcpStream::connect(&upstream).unwrap();
                let mut w = up.try_clone().unwrap();
                let mut out = head.concat().into_bytes();
                out.extend_from_slice(b"Connection: close\r\n\r\n");
                out.extend_from_slice(&body);
                // Glance may answer before it has read the body (a 409), and close.
                let writer = std::thread::spawn(move || {
                    let _ = w.write_all(&out);
                });
                let mut answer = Vec::new();
                let _ = up.read_to_end(&mut answer);
                let _ = writer.join();
                let text = String::from_utf8_lossy(&answer).to_string();
                let status: u16 = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(502);
                let mut client = client;
                let relayed = if method == "PUT"
                    && path.ends_with(suffix)
                    && status < 300
                    && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    let page = "<html><body><h1>504 Gateway Time-out</h1>\nThe server didn't respond in time.\n</body></html>\n";
                    let _ = write!(
                        client,
                        "HTTP/1.1 504 Gateway Time-out\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    );
                    504
                } else {
                    // Glance's answer with `Connection: close`, since this connection ends here.
                    let split = answer
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| p + 4)
                        .unwrap_or(answer.len());
                    let head = String::from_utf8_lossy(&answer[..split]);
                    let mut out: String = head
                        .split("\r\n")
                        .filter(|l| {
                            !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:")
                        })
                        .map(|l| format!("{l}\r\n"))
                        .collect();
                    out.push_str("Connection: close\r\n\r\n");
                    let _ = client.write_all(out.as_bytes());
                    let _ = client.write_all(&answer[split..]);
                    status
                };
                let _ = client.flush();
                let _ = client.shutdown(std::net::Shutdown::Both);
                log.lock().unwrap().push((method, path, relayed));
            });
        }
    });
    Gateway { url, seen }
}

/// Glance finished the upload (or the staging) but the gateway in front of it answered 504:
/// the retry of the PUT gets 409, and the publish goes on to verify what Glance holds, which
/// is the artifact: one image, active, with the manifest's hashes (checked by `publish`
/// itself, and here again with `openstack image show`).
#[test]
fn a_gateway_timeout_on_a_finished_upload_is_verified_not_failed() {
    let s = stack();
    let admin = s.admin();
    for (method, suffix, version) in [("upload", "/file", "gw1"), ("import", "/stage", "gw2")] {
        let gw = gateway(&s.glance, suffix);
        let region = format!("RegionGateway{version}");
        admin.image_endpoint(&region, "public", &gw.url);
        let t = tempfile::tempdir().unwrap();
        let dist = dist_for(t.path(), version);
        let c = clouds_as(t.path(), s, ("admin", &s.password, "admin"), &region, "");
        let o = publish(&c, &dist, &["--version", version, "--method", method]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{method}: stdout {out}\nstderr {err}");
        assert!(err.contains("HTTP 504"), "{err}");
        assert!(err.contains("HTTP 409"), "{err}");
        assert!(err.contains("checking what Glance holds"), "{err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["status"], "active");
        assert_eq!(r["action"], "created");
        let puts: Vec<u16> = gw
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _)| m == "PUT" && p.ends_with(suffix))
            .map(|(_, _, st)| *st)
            .collect();
        assert_eq!(puts, [504, 409], "{method}: the PUTs through the gateway");
        let name = format!("debian12-base-{version}");
        let images = images_named(&admin.http, &admin.token, &s.glance, &name);
        assert_eq!(images.len(), 1, "{images:?}");
        assert_eq!(images[0]["status"], "active");
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dist.join(format!("debian12-base/{version}/manifest.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(images[0]["os_hash_value"], manifest["digests"]["sha512"]);
        assert_eq!(images[0]["checksum"], manifest["digests"]["md5"]);
    }
}

/// Two publishes of one image to one Glance at once, from one machine: the second waits for
/// the first (a lock under the cache folder), then finds its image. One image in Glance, one
/// run `created`, the other `unchanged`.
#[test]
fn two_publishes_of_one_image_at_once_make_one_image() {
    let s = stack();
    let admin = s.admin();
    let t = tempfile::tempdir().unwrap();
    let c = clouds(t.path(), &s.password);
    let dist = t.path().join("dist");
    let image = "k3s-node-gpu";
    dist_with_image(&dist, image, "twice");
    let cache = t.path().join("cache");
    let runs: Vec<_> = (0..2)
        .map(|_| {
            publish_command(
                &c,
                &dist,
                image,
                &["--version", "twice", "--method", "upload"],
            )
            .arg("--cache-dir")
            .arg(&cache)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = runs
        .into_iter()
        .map(|r| r.wait_with_output().unwrap())
        .collect();
    let mut actions = Vec::new();
    let mut waited = 0;
    for o in &outputs {
        let (out, err) = text(o);
        assert!(o.status.success(), "stdout {out}\nstderr {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], "active");
        actions.push(v["action"].as_str().unwrap().to_string());
        waited += usize::from(err.contains("waiting for another imgbuild publish"));
    }
    actions.sort();
    assert_eq!(actions, ["created", "unchanged"]);
    assert!(waited <= 1, "both waited");
    let name = format!("{image}-twice");
    let images = images_named(&admin.http, &admin.token, &s.glance, &name);
    assert_eq!(images.len(), 1, "{images:?}");
}
