//! The remote cache against a real object store on 127.0.0.1 (OpenStack Swift with its S3 API,
//! scripts/s3-test-stack.sh), with separate local caches playing separate CI runners:
//! - runner A has built `e2e-par-a` before (the shared e2e cache) and shares its base and
//!   layers when it is given the remote;
//! - runner B, with an empty cache, builds the same image with no layer boot and no
//!   mmdebstrap: base and layers fetched, each checked against its sha256, the result the
//!   same disk as A's;
//! - a corrupted object is detected and not used: runner C rebuilds that layer and replaces the
//!   remote entry, which runner D then fetches whole;
//! - over HTTPS with a private CA given in AWS_CA_BUNDLE, runner E fetches every layer; without
//!   the CA the store is not trusted: one warning naming AWS_CA_BUNDLE, a local build;
//! - a read-only runner uploads nothing; a remote that does not answer is one warning and a
//!   local build.

use crate::common;

use common::s3::S3Store;
use common::{e2e_cache, fixtures, text, TestCommand};
use std::path::Path;

const IMAGE: &str = "e2e-par-a";

/// A runner: `imgbuild --json build IMAGE --no-smoke` with `cache` and the remote `url` of
/// `s3`, its endpoint and keys in the environment.
fn runner(s3: &S3Store, url: &str, cache: &Path, version: &str, out: &Path) -> TestCommand {
    let mut c = TestCommand::new(&["--json", "build", IMAGE, "--no-smoke"])
        .images_dir(fixtures())
        .cache_dir(cache)
        .arg("--cache-remote")
        .arg(url)
        .arg("--version")
        .arg(version)
        .arg("--out")
        .arg(out);
    for (k, v) in s3.env() {
        c = c.env(k, v);
    }
    c
}

/// [`runner`] with `-v` and `extra` arguments, run: it must pass and log no secret.
fn build(
    s3: &S3Store,
    url: &str,
    cache: &Path,
    version: &str,
    out: &Path,
    extra: &[&str],
) -> (serde_json::Value, String) {
    let mut c = runner(s3, url, cache, version, out).arg("-v");
    for a in extra {
        c = c.arg(a);
    }
    let o = c.output();
    let (stdout, stderr) = text(&o);
    let name = format!("e2e-remote-{version}");
    common::keep_build_log(&name, &stderr);
    assert!(
        o.status.success(),
        "{}",
        common::build_failure(&name, &stderr, None)
    );
    // -v logs every request: never a presigned URL's signature, never the secret.
    assert!(
        !stderr.contains("X-Amz-Signature") && !stderr.contains(&s3.secret),
        "{stderr}"
    );
    (serde_json::from_str(&stdout).unwrap(), stderr)
}

/// (layer name, cached, fetched from the remote) of each layer of a manifest.
fn layers(m: &serde_json::Value) -> Vec<(String, bool, bool)> {
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["cached"] == true,
                l["remote"] == true,
            )
        })
        .collect()
}

fn artifact(out: &Path, version: &str, m: &serde_json::Value) -> std::path::PathBuf {
    out.join(IMAGE)
        .join(version)
        .join(m["artifact"]["file"].as_str().unwrap())
}

#[test]
fn a_second_runner_fetches_every_layer_and_a_corrupt_or_silent_remote_means_a_local_build() {
    let _vm = crate::one_vm();
    let s3 = S3Store::start("imgbuild-cache");
    let url = "s3://imgbuild-cache/ci";
    let out = tempfile::tempdir().unwrap();

    // Runner A: the shared e2e cache; whatever it has or builds goes up.
    let (a, _) = build(&s3, url, &e2e_cache(), "ra", out.path(), &[]);
    let names: Vec<String> = layers(&a).into_iter().map(|l| l.0).collect();
    assert!(names.len() >= 2, "{a:#}");
    let keys: Vec<String> = a["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap().to_string())
        .collect();
    let objects = s3.list("ci/");
    for k in &keys {
        for f in ["entry.json", "disk.qcow2"] {
            let o = format!("ci/layers/{k}/{f}");
            assert!(objects.contains(&o), "{o} not in {objects:#?}");
        }
    }
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with("ci/bases/") && o.ends_with("/disk.qcow2")),
        "{objects:#?}"
    );
    // A lower layer that a boot-free one above needs carries the kernel it exported.
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with(&format!("ci/layers/{}/kernel/", keys[0]))),
        "{objects:#?}"
    );

    // Runner B: an empty cache. No mmdebstrap, no layer boot: all fetched and checked.
    let b_cache = tempfile::tempdir().unwrap();
    let (b, b_err) = build(&s3, url, b_cache.path(), "rb", out.path(), &[]);
    assert_eq!(b["base"]["remote"], true, "{b:#}");
    assert!(
        layers(&b)
            .iter()
            .all(|(_, cached, remote)| *cached && *remote),
        "{b:#}"
    );
    // (-v logs every command: no mmdebstrap ran, no VM booted a layer.)
    assert!(
        !b_err.contains("mmdebstrap") && !b_err.contains("serial-build"),
        "{b_err}"
    );
    // The same image as A's, byte for byte in what the guest sees.
    let cmp = std::process::Command::new("qemu-img")
        .arg("compare")
        .arg(artifact(out.path(), "ra", &a))
        .arg(artifact(out.path(), "rb", &b))
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );

    // A corrupted top layer: runner C sees the sha256 differ, builds the layer and replaces
    // the remote entry; runner D fetches the new one whole.
    let top = keys.last().unwrap();
    s3.put(&format!("ci/layers/{top}/disk.qcow2"), b"not a disk");
    let c_cache = tempfile::tempdir().unwrap();
    let (c, c_err) = build(&s3, url, c_cache.path(), "rc", out.path(), &[]);
    assert!(
        c_err.contains(&format!("remote entry {top}: disk.qcow2 has sha256"))
            && c_err.contains("not used, the layer is built"),
        "{c_err}"
    );
    let lc = layers(&c);
    assert!(
        lc[..lc.len() - 1].iter().all(|l| l.1 && l.2) && !lc[lc.len() - 1].1,
        "{c:#}"
    );
    let entry: serde_json::Value =
        serde_json::from_str(&s3.text(&format!("ci/layers/{top}/entry.json"))).unwrap();
    assert!(entry["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "disk.qcow2" && f["size"].as_u64().unwrap() > 1000));
    let d_cache = tempfile::tempdir().unwrap();
    let (d, d_err) = build(&s3, url, d_cache.path(), "rd", out.path(), &[]);
    assert!(layers(&d).iter().all(|l| l.1 && l.2), "{d:#}");
    assert!(!d_err.contains("warning"), "{d_err}");

    // Over HTTPS with the store's private CA in AWS_CA_BUNDLE: runner B's cache without its
    // layers fetches them all again, checked, without a warning.
    std::fs::remove_dir_all(b_cache.path().join("layers")).unwrap();
    let e_out = tempfile::tempdir().unwrap();
    let ran = runner(&s3, url, b_cache.path(), "re", e_out.path())
        .env("AWS_ENDPOINT_URL", &s3.tls_endpoint)
        .env("AWS_CA_BUNDLE", &s3.ca)
        .expect(0);
    assert!(!ran.stderr.contains("warning"), "{}", ran.stderr);
    let em: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(layers(&em).iter().all(|l| l.1 && l.2), "{em:#}");
    // Without the CA the store's certificate is not trusted: one warning naming the setting
    // to change, and the build goes on with the local cache.
    let ran = runner(&s3, url, b_cache.path(), "rg", e_out.path())
        .env("AWS_ENDPOINT_URL", &s3.tls_endpoint)
        .env_remove("AWS_CA_BUNDLE")
        .expect(0);
    assert_eq!(
        ran.stderr.matches("cannot be used").count(),
        1,
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("not trusted") && ran.stderr.contains("AWS_CA_BUNDLE"),
        "{}",
        ran.stderr
    );
    let fm: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(layers(&fm).iter().all(|l| l.1 && !l.2), "{fm:#}");

    // Read-only (an untrusted branch): a runner with layers the remote lacks shares none.
    let before = s3.list("ro/");
    let (_, _) = build(
        &s3,
        "s3://imgbuild-cache/ro",
        &e2e_cache(),
        "re",
        out.path(),
        &["--cache-remote-read-only"],
    );
    assert!(before.is_empty() && s3.list("ro/").is_empty());

    // A remote that does not answer: one warning, the build goes on with the local cache.
    let closed = common::openstack::free_port();
    let ran = runner(&s3, url, &e2e_cache(), "rf", out.path())
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))
        .expect(0);
    assert_eq!(
        ran.stderr.matches("cannot be used").count(),
        1,
        "{}",
        ran.stderr
    );
    let f: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(layers(&f).iter().all(|l| l.1 && !l.2), "{f:#}");

    // The store goes with its fixture: no server of it is left running.
    let state = s3.state.to_string_lossy().into_owned();
    drop(s3);
    let left = common::processes_with(&state);
    assert!(left.is_empty(), "{left:?}");
}
