//! End-to-end builds with the real tools: mmdebstrap makes a Debian 12 base (cached once in
//! target/e2e-cache for every test), QEMU (TCG here) provisions it natively or under real
//! `packer build`, the artifact is smoke-booted, checksummed and lands in dist/. Failures
//! (provisioning, smoke, SIGTERM) must leave nothing in dist/ and no QEMU behind.

use crate::common;

use common::{
    assert_nothing_left, e2e_cache, e2e_command, qemu_processes, read_json, repo, signal_and_wait,
    stop, text, wait_while_running, TestCommand,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    e2e_command(args).output()
}

/// A private copy of the fixtures (to change definitions in) and a private cache for layers
/// and shared downloads, whose bases are the shared ones (one bootstrap for every test).
struct Private {
    _dir: tempfile::TempDir,
    images: PathBuf,
    cache: PathBuf,
}

impl Private {
    fn new() -> Private {
        let dir = tempfile::tempdir().unwrap();
        let fx = dir.path().join("fixtures");
        let st = Command::new("cp")
            .arg("-a")
            .arg(repo().join("tests/fixtures"))
            .arg(&fx)
            .status()
            .unwrap();
        assert!(st.success());
        // A repository, as definitions usually live in one (the manifest records the commit).
        for args in [
            &["init", "-q"][..],
            &["add", "-A"],
            &[
                "-c",
                "user.name=imgbuild test",
                "-c",
                "user.email=test@imgbuild.invalid",
                "commit",
                "-qm",
                "fixtures",
            ],
        ] {
            let st = Command::new("git")
                .arg("-C")
                .arg(&fx)
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "git {args:?}");
        }
        let cache_dir = dir.path().join("cache");
        std::fs::create_dir_all(&cache_dir).unwrap();
        std::fs::create_dir_all(e2e_cache().join("bootstrap")).unwrap();
        std::os::unix::fs::symlink(e2e_cache().join("bootstrap"), cache_dir.join("bootstrap"))
            .unwrap();
        Private {
            images: fx.join("images"),
            cache: cache_dir,
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> TestCommand {
        TestCommand::new(args)
            .images_dir(&self.images)
            .cache_dir(&self.cache)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output()
    }

    /// Replaces `from` by `to` in a fixture file (relative to the fixtures folder).
    fn edit(&self, file: &str, from: &str, to: &str) {
        let p = self.images.parent().unwrap().join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} lacks {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }
}

/// How many checks the smoke of fixture `image` runs (built-ins, features', definition's,
/// final guards).
fn planned_checks(image: &str) -> usize {
    let r = imgbuild::definition::Catalog::new(common::fixtures())
        .load_checked(image)
        .unwrap();
    imgbuild::pipeline::smoke::checks(&r, None).len()
}

fn layers(m: &serde_json::Value) -> Vec<(String, bool)> {
    m["layers"]
        .as_array()
        .expect("the manifest lists the layers")
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_string(), l["cached"] == true))
        .collect()
}

fn layer_names_and_cached(spec: &[(&str, bool)]) -> Vec<(String, bool)> {
    spec.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

/// One layer's part of a joined serial log (from its header to the next).
fn layer_log<'a>(serial: &'a str, layer: &str) -> &'a str {
    let header = format!("===== imgbuild layer {layer} =====");
    let start = serial.find(&header).unwrap_or_else(|| panic!("{header}")) + header.len();
    let rest = &serial[start..];
    &rest[..rest.find("===== imgbuild layer ").unwrap_or(rest.len())]
}

/// The counts of the `IMGBUILD-APT-LISTS N <what>` lines in a log.
fn apt_lists(log: &str, what: &str) -> Vec<usize> {
    const MARKER: &str = "IMGBUILD-APT-LISTS ";
    log.lines()
        .filter_map(|l| l.find(MARKER).map(|i| l[i + MARKER.len()..].trim_end()))
        .filter_map(|l| l.strip_suffix(what))
        .map(|n| n.trim().parse().unwrap())
        .collect()
}

fn coreutils(tool: &str, file: &Path) -> String {
    let o = Command::new(tool).arg(file).output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

impl Private {
    /// `imgbuild --json build e2e --version VERSION ARGS --out OUT`: asserts it succeeded and
    /// returns the manifest it printed and its stderr.
    fn build_e2e(&self, version: &str, args: &[&str], out: &Path) -> (serde_json::Value, String) {
        let mut a = vec!["--json", "build", "e2e", "--version", version];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--out", out.to_str().unwrap()]);
        let o = self.run(&a);
        let (stdout, stderr) = text(&o);
        let name = format!("e2e-{version}");
        common::keep_build_log(&name, &stderr);
        assert!(
            o.status.success(),
            "{}",
            common::build_failure(
                &name,
                &stderr,
                Some(&out.join("e2e").join(version).join("smoke"))
            )
        );
        let m = serde_json::from_str(&stdout).expect("--json prints the manifest");
        (m, stderr)
    }
}

#[test]
fn a_layered_qemu_build_makes_every_layer_passes_its_smoke_and_leaves_nothing() {
    let _vm = crate::one_vm();
    let private = Private::new();
    let out = tempfile::tempdir().unwrap();
    let (m, stderr) = private.build_e2e("q1", &[], out.path());
    let dir = out.path().join("e2e/q1");
    assert_eq!(m, read_json(&dir.join("manifest.json")));
    assert_eq!(m["image"], "e2e");
    assert_eq!(m["version"], "q1");
    assert_eq!(m["arch"], "amd64");
    assert_eq!(m["backend"], "qemu");
    assert!(m["accel"] == "tcg" || m["accel"] == "kvm");
    assert!(
        stderr.contains("accelerator: "),
        "the output says which accelerator"
    );
    assert_eq!(m["base"]["kind"], "bootstrap");
    assert_eq!(m["base"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(m["definition_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(m["rendered_sha256"].as_str().unwrap().len(), 64);
    assert!(m["build"]["git_commit"].as_str().unwrap().len() >= 40);
    assert!(m["build"]["duration_seconds"].as_f64().unwrap() > 0.0);

    // The artifact: standalone qcow2 of the declared size, named as the manifest says.
    let artifact = dir.join("e2e-q1-amd64.qcow2");
    assert_eq!(m["artifact"]["file"], "e2e-q1-amd64.qcow2");
    assert_eq!(m["artifact"]["format"], "qcow2");
    assert_eq!(m["artifact"]["virtual_size"], 4u64 << 30);
    assert_eq!(
        m["artifact"]["size"],
        std::fs::metadata(&artifact).unwrap().len()
    );
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&artifact)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(info.get("backing-filename").is_none(), "no backing file");

    // Digests agree with coreutils; SHA256SUMS passes `sha256sum -c`.
    let first = |s: String| s.split_whitespace().next().unwrap().to_string();
    assert_eq!(
        m["digests"]["sha256"],
        first(coreutils("sha256sum", &artifact))
    );
    assert_eq!(
        m["digests"]["sha512"],
        first(coreutils("sha512sum", &artifact))
    );
    assert_eq!(m["digests"]["md5"], first(coreutils("md5sum", &artifact)));
    let c = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));
    assert_eq!(
        String::from_utf8_lossy(&c.stdout),
        "e2e-q1-amd64.qcow2: OK\n"
    );

    // Provisioning and hygiene happened, as the serial console says.
    let serial = std::fs::read_to_string(dir.join("logs/serial-build.log")).unwrap();
    for marker in [
        "IMGBUILD-STEP-OK 50-01-mark",
        "IMGBUILD-PROVISION-OK",
        "IMGBUILD-HYGIENE-DONE",
    ] {
        assert!(serial.contains(marker), "serial log lacks {marker}");
    }

    // The smoke report: every check once, all passed, in JSON and JUnit.
    let report = read_json(&dir.join("smoke/report.json"));
    assert_eq!(report["passed"], true);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "cloud-init-no-errors",
        "fresh-ssh-host-keys",
        "fresh-machine-id",
        "fresh-cloud-init-state",
        "no-build-leftovers",
        "file-present",
        "user-present",
        "ssh-listening",
        "docker-active",
        "docker-answers",
        "marker-from-script",
        "stack-ports-loopback-only",
        "stack-started-offline",
        "stack-healthy",
        "accounts-as-declared",
        "no-private-keys",
        "no-credential-files",
        "identities-made-at-first-boot",
        "exposure-allowlist",
    ] {
        assert_eq!(
            names.iter().filter(|n| **n == want).count(),
            1,
            "check {want} reported once"
        );
    }
    // Every check the smoke plans for the image reported once (the names above among them).
    assert_eq!(names.len(), planned_checks("e2e"));
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["passed"] == true));
    assert_eq!(m["smoke"]["passed"], true);
    assert_eq!(m["smoke"]["checks"], names.len());
    let junit = std::fs::read_to_string(dir.join("smoke/junit.xml")).unwrap();
    assert!(junit.starts_with("<?xml"));
    assert!(
        junit.contains(&format!("tests=\"{}\" failures=\"0\"", names.len())),
        "{junit}"
    );
    assert_eq!(junit.matches("<testcase ").count(), names.len());
    assert!(junit.contains("name=\"docker-active\""));
    assert!(!junit.contains("<failure"));
    assert!(dir.join("smoke/serial.log").is_file());

    // Offline start: the probe stack's image came from a `docker save` archive in the image
    // (no registry reachable), the manifest lists it with its id, and the stack's unit
    // started it at first boot without any pull.
    let imgs = m["container_images"].as_array().expect("container_images");
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0]["image"], "localhost/imgbuild-probe:1");
    assert_eq!(imgs[0]["source"], "loaded");
    assert!(
        imgs[0]["id"].as_str().unwrap().starts_with("sha256:"),
        "{imgs:?}"
    );
    let offline = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "stack-started-offline")
        .unwrap();
    assert_eq!(offline["passed"], true, "{offline}");

    // `imgbuild checksum` on the artifact is what coreutils print.
    for (algo, tool) in [
        ("sha256", "sha256sum"),
        ("sha512", "sha512sum"),
        ("md5", "md5sum"),
    ] {
        let o = Command::new(common::bin())
            .args(["checksum", "--algo", algo])
            .arg(&artifact)
            .output()
            .unwrap();
        assert!(o.status.success());
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            coreutils(tool, &artifact)
        );
    }
    let v = Command::new(common::bin())
        .args(["checksum", "--verify"])
        .arg(dir.join("SHA256SUMS"))
        .output()
        .unwrap();
    assert!(v.status.success());
    assert_eq!(
        String::from_utf8_lossy(&v.stdout),
        "e2e-q1-amd64.qcow2: OK\n"
    );

    // Nothing of the build is left: no QEMU, no work folder, no hidden partials.
    assert!(qemu_processes("e2e-q1-amd64.").is_empty());
    let names: Vec<_> = std::fs::read_dir(out.path().join("e2e"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("q1")]);

    // Every layer was built (a fresh layer cache), each in its own boot, the top one with the
    // hygiene; the joined serial log has them in order.
    assert_eq!(
        layers(&m),
        layer_names_and_cached(&[("features", false), ("image", false), ("stack", false)])
    );
    let mut at = 0;
    for l in ["features", "image", "stack"] {
        let header = format!("===== imgbuild layer {l} =====");
        let i = serial[at..]
            .find(&header)
            .unwrap_or_else(|| panic!("{header}"));
        at += i;
    }
    assert_eq!(serial.matches("IMGBUILD-HYGIENE-DONE").count(), 1);
    // One image, both kinds of layer: the features layer (the upgrade, trixie's source,
    // docker's offline step) without a boot, its apt work done by its payload on the network
    // it brought up itself, no cloud-init; the image layer (a script that needs Docker) in a
    // full boot, with cloud-init; the stack layer (the pre-pull: `docker load` of the archive
    // the image layer made) without a boot again, its dockerd started by the prepull step, the
    // network up for its steps (a pull would need it), and the hygiene run by its runner.
    let boot_free: Vec<bool> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["boot_free"] == true)
        .collect();
    assert_eq!(boot_free, [true, false, true], "{m:#}");
    let features = layer_log(&serial, "features");
    assert!(features.contains("up as 10.0.2.15 for apt"), "{features}");
    assert!(
        features.contains("IMGBUILD-STEP-OK 10-docker"),
        "{features}"
    );
    assert!(!features.contains("cloud-init["), "{features}");
    assert!(layer_log(&serial, "image").contains("cloud-init["));
    let stack = layer_log(&serial, "stack");
    assert!(!stack.contains("cloud-init["), "{stack}");
    for want in [
        "up as 10.0.2.15 for its steps",
        "IMGBUILD-STEP-OK 62-prepull",
        "IMGBUILD-CONTAINER-IMAGE {\"image\":\"localhost/imgbuild-probe:1\"",
        "IMGBUILD-HYGIENE-DONE",
    ] {
        assert!(stack.contains(want), "{want}:\n{stack}");
    }
    // The boot-free lower layer exports its kernel only if its apt work touched it (a new
    // kernel's initrd or a rebuilt one); else the layers above boot the base's.
    let touched = features.contains("update-initramfs: Generating");
    let export = if touched {
        "IMGBUILD-EXPORT kernel"
    } else {
        "IMGBUILD-EXPORT unchanged"
    };
    assert!(features.contains(export), "{export}:\n{features}");
    // The package lists travel on the shared apt disk: the features layer's update (on an empty
    // disk) saved its lists, the image layer's update found them there; the stack layer runs
    // no update and leaves the lists alone.
    assert_eq!(apt_lists(features, "from the cache"), vec![0], "{features}");
    let saved = apt_lists(features, "saved to the cache");
    assert!(saved.len() == 1 && saved[0] > 0, "{saved:?}");
    assert_eq!(
        apt_lists(layer_log(&serial, "image"), "from the cache"),
        saved
    );
    assert!(!layer_log(&serial, "stack").contains("IMGBUILD-APT-LISTS"));
    let ls = private.run(&["--json", "cache", "ls"]);
    assert!(ls.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let kinds = |k: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == k)
            .count()
    };
    assert_eq!(kinds("layer"), 3, "{rows:#}");
    assert_eq!(kinds("partial"), 0, "{rows:#}");
    assert!(kinds("apt") >= 1, "the shared apt disk: {rows:#}");

    // The bill of materials lists the image's packages (Ubuntu's manifest format) and a
    // CycloneDX SBOM the official schema accepts.
    let q1 = out.path().join("e2e/q1");
    let list = std::fs::read_to_string(q1.join("e2e-q1-amd64.manifest")).unwrap();
    for p in [
        "busybox-static\t",
        "docker.io\t",
        "less\t",
        "openssh-server\t",
    ] {
        assert!(
            list.lines().any(|l| l.starts_with(p)),
            "{p} missing in:\n{list}"
        );
    }
    assert_eq!(m["bom"]["packages"], "e2e-q1-amd64.manifest");
    assert_eq!(
        m["bom"]["package_count"].as_u64().unwrap() as usize,
        list.lines().count()
    );
    common::validate_cyclonedx(&q1.join("e2e-q1-amd64.cdx.json"));
    // A change to the image's own script (the image and stack layers rebuilt on the cached
    // features layer, the package from the shared apt disk, `imgbuild diff`): the ignored test
    // below, two more full boots that `make test` cannot afford (README, "Set-up").

    // prune: nothing is used now; every layer older than 0 s goes, and the cache is empty of
    // layers (q1's three).
    let o = private.run(&["--json", "cache", "prune", "--older-than", "0s"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let pr: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pr["removed"].as_array().unwrap().len(), 3, "{pr:#}");
    assert!(private.cache.join("layers").read_dir().unwrap().all(|e| {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        n.ends_with(".build") || n.ends_with(".use")
    }));
}

/// A change to the image's own script rebuilds the image and stack layers on the cached
/// features layer; the image layer's package (busybox-static) comes from the shared apt disk,
/// which the first build filled: nothing is downloaded again; `imgbuild diff` shows the
/// package the script removed. Ignored in `make test` (scripts/test.sh): as part of the
/// layered test, its second build's two full boots under TCG made that test the last of the
/// CI run (66 minutes in the run of 2026-11-30 02:48); alone it needs five boots (the first
/// build without a smoke); `cargo test --test e2e -- --ignored` runs it.
#[test]
#[ignore = "five full TCG boots; run with --ignored (README, Set-up)"]
fn a_script_change_rebuilds_the_image_and_stack_layers_from_the_apt_disk() {
    let _vm = crate::one_vm();
    let private = Private::new();
    let out = tempfile::tempdir().unwrap();
    let (m, _) = private.build_e2e("q1", &["--no-smoke"], out.path());
    assert_eq!(
        layers(&m),
        layer_names_and_cached(&[("features", false), ("image", false), ("stack", false)])
    );
    let serial = std::fs::read_to_string(out.path().join("e2e/q1/logs/serial-build.log")).unwrap();
    let saved = apt_lists(layer_log(&serial, "features"), "saved to the cache");
    assert!(saved.len() == 1 && saved[0] > 0, "{saved:?}");

    // A change to the image's own script: the image and stack layers are rebuilt on the cached
    // features layer. The image layer's package (busybox-static) comes from the shared apt
    // disk, filled by the first build: nothing is downloaded again. (No smoke boot: the layered
    // test's smoke proves that a chain of layers boots. That a change to the stack alone keeps both lower
    // layers is shown on the keys, in build::layers' unit tests.)
    // The script also removes a package, which the bills of materials show (imgbuild diff).
    private.edit(
        "images/e2e.yaml",
        "echo \"built by imgbuild\"",
        "apt-get purge -y -q less >/dev/null\n      echo \"built by imgbuild, again\"",
    );
    let (m2, stderr) = private.build_e2e("q2", &["--no-smoke"], out.path());
    assert_eq!(
        layers(&m2),
        layer_names_and_cached(&[("features", true), ("image", false), ("stack", false)])
    );
    assert!(
        stderr.contains("features: reused from the cache"),
        "{stderr}"
    );
    assert!(m2["smoke"].is_null());
    // The stack layer was rebuilt: its pre-pull step loaded the archive again.
    let imgs2 = m2["container_images"].as_array().expect("container_images");
    assert_eq!(imgs2.len(), 1, "{imgs2:?}");
    assert_eq!(imgs2[0]["image"], "localhost/imgbuild-probe:1");
    assert_eq!(imgs2[0]["source"], "loaded");
    let serial2 = std::fs::read_to_string(out.path().join("e2e/q2/logs/serial-build.log")).unwrap();
    assert!(!serial2.contains("===== imgbuild layer features ====="));
    assert!(serial2.contains("IMGBUILD-HYGIENE-DONE"));
    let need: Vec<&str> = serial2
        .lines()
        .filter(|l| l.contains("Need to get "))
        .collect();
    assert!(!need.is_empty(), "apt installed nothing?\n{serial2}");
    assert!(
        need.iter().all(|l| l.contains("Need to get 0 B")),
        "packages were downloaded again: {need:?}"
    );
    assert!(serial2.contains("IMGBUILD-APT-CACHE "), "{serial2}");

    let o = private.run(&[
        "diff",
        "e2e",
        "q1",
        "q2",
        "--dist",
        out.path().to_str().unwrap(),
    ]);
    let (diff, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "q2 differs from q1 by one removed package: {diff}"
    );
    assert!(lines[0].starts_with("- less "), "{diff}");
    let o = private.run(&[
        "diff",
        "e2e",
        "q1",
        "nope",
        "--dist",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "a missing version is bad input");
    assert_eq!(
        apt_lists(layer_log(&serial2, "image"), "from the cache"),
        saved
    );

    let o = private.run(&["--json", "cache", "prune", "--older-than", "0s"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let pr: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pr["removed"].as_array().unwrap().len(), 5, "{pr:#}");
}

#[test]
fn packer_backend_builds_the_same_definition_and_it_passes_the_same_smoke() {
    let _vm = crate::one_vm();
    let out = tempfile::tempdir().unwrap();
    let o = run(&[
        "--json",
        "build",
        "e2e",
        "--backend",
        "packer",
        "--no-smoke",
        "--version",
        "p1",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    common::keep_build_log("e2e-p1-packer", &stderr);
    assert!(
        o.status.success(),
        "{}",
        common::build_failure("e2e-p1-packer", &stderr, None)
    );
    let m: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(m["backend"], "packer");
    assert!(m["smoke"].is_null(), "--no-smoke is recorded");
    let dir = out.path().join("e2e/p1");
    let log = std::fs::read_to_string(dir.join("logs/packer.log")).unwrap();
    assert!(
        log.contains("Builds finished"),
        "real packer build ran:\n{log}"
    );
    let serial = std::fs::read_to_string(dir.join("logs/serial-build.log")).unwrap();
    assert!(serial.contains("IMGBUILD-PROVISION-OK") && serial.contains("IMGBUILD-HYGIENE-DONE"));

    // The standalone smoke command on Packer's artifact, with the `sick` profile too (baked
    // in, never healthy): every check of the qemu build's smoke passes but the health wait,
    // which fails naming that service and its state, not probe. One boot shows both that the
    // same definition passes the same smoke and that the health wait fails as it should
    // (a second boot with the probe profile alone cost CI minutes and proved nothing more: the
    // layered test's smoke passes the same checks on the qemu backend's build). The artifact is
    // not modified by booting it.
    let artifact = dir.join("e2e-p1-amd64.qcow2");
    let before = coreutils("sha256sum", &artifact);
    let smoke_dir = out.path().join("smoke-sick");
    let o = run(&[
        "--json",
        "smoke",
        artifact.to_str().unwrap(),
        "--image",
        "e2e",
        "--profiles",
        "probe,sick",
        "-o",
        smoke_dir.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(report, read_json(&smoke_dir.join("report.json")));
    let junit = std::fs::read_to_string(smoke_dir.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<failure").count(), 1, "{junit}");
    let checks = report["checks"].as_array().unwrap();
    // The qemu build's checks: the same definition, the same smoke.
    assert_eq!(checks.len(), planned_checks("e2e"));
    for want in ["docker-active", "stack-started-offline", "no-private-keys"] {
        assert!(
            checks
                .iter()
                .any(|c| c["name"] == want && c["passed"] == true),
            "{want} passed: {checks:?}"
        );
    }
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["passed"] == false).collect();
    assert_eq!(failed.len(), 1, "only the health wait fails: {failed:?}");
    assert_eq!(failed[0]["name"], "stack-healthy");
    let detail = failed[0]["detail"].as_str().unwrap();
    assert!(detail.contains("sick: running, unhealthy"), "{detail}");
    assert!(!detail.contains("probe:"), "{detail}");
    assert!(stderr.contains("stack-healthy"), "{stderr}");
    assert_eq!(
        before,
        coreutils("sha256sum", &artifact),
        "smoke must not write the artifact"
    );
    assert!(qemu_processes("e2e-p1-amd64").is_empty());
}

#[test]
fn failed_provisioning_names_the_step_and_leaves_nothing() {
    let _vm = crate::one_vm();
    let out = tempfile::tempdir().unwrap();
    let o = run(&[
        "build",
        "e2e-fail-provision",
        "--version",
        "fp1",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("provisioning failed"), "{stderr}");
    assert!(
        stderr.contains("50-01-doomed-step"),
        "names the step:\n{stderr}"
    );
    assert!(
        stderr.contains("about to fail on purpose"),
        "shows the step's output:\n{stderr}"
    );
    assert_nothing_left(out.path(), "e2e-fail-provision", "fp1");
    // The logs of the failed build are kept outside dist/.
    let kept = e2e_cache().join("failed/e2e-fail-provision-fp1-amd64/serial-build.log");
    assert!(
        std::fs::read_to_string(&kept)
            .unwrap()
            .contains("IMGBUILD-STEP-FAILED 50-01-doomed-step exit=3"),
        "{}",
        kept.display()
    );
    // It failed in a boot-free layer (its payload ran, not cloud-init), reported as a full
    // boot's failure is.
    let serial = std::fs::read_to_string(&kept).unwrap();
    assert!(
        layer_log(&serial, "image").contains("IMGBUILD-OFFLINE-START image"),
        "{serial}"
    );
    assert!(
        !layer_log(&serial, "image").contains("Cloud-init v."),
        "{serial}"
    );
}

/// apt fails in a boot-free layer: the payload's apt work is reported as cloud-init's would
/// be in a full boot (the command, apt's own last lines), and nothing is left.
#[test]
fn failed_apt_in_a_boot_free_layer_quotes_apt_and_leaves_nothing() {
    let _vm = crate::one_vm();
    let out = tempfile::tempdir().unwrap();
    let o = run(&[
        "build",
        "e2e-fail-apt",
        "--version",
        "fa1",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("provisioning failed"), "{stderr}");
    assert!(stderr.contains("apt-get install failed"), "{stderr}");
    assert!(
        stderr.contains("Unable to locate package imgbuild-no-such-package"),
        "quotes apt:\n{stderr}"
    );
    assert!(!stderr.contains("50-01-never-runs"), "{stderr}");
    assert_nothing_left(out.path(), "e2e-fail-apt", "fa1");
    let kept = e2e_cache().join("failed/e2e-fail-apt-fa1-amd64/serial-build.log");
    let serial = std::fs::read_to_string(&kept).unwrap();
    let image = layer_log(&serial, "image");
    assert!(image.contains("IMGBUILD-OFFLINE-START image"), "{serial}");
    assert!(image.contains("up as 10.0.2.15 for apt"), "{serial}");
    assert!(!image.contains("IMGBUILD-STEP-START"), "{serial}");
}

/// SIGTERM while a boot-free layer runs (the kernel booted straight into the payload): QEMU
/// is stopped, nothing is left.
#[test]
fn sigterm_during_a_boot_free_layer_stops_qemu_and_leaves_nothing() {
    let _vm = crate::one_vm();
    let out = tempfile::tempdir().unwrap();
    let mut child = e2e_command(&[
        "build",
        "e2e-offline-slow",
        "--version",
        "bf1",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .spawn();
    let tag = "e2e-offline-slow-bf1-amd64.";
    wait_while_running(
        &mut child,
        Duration::from_secs(1800),
        "the boot-free layer's VM starts",
        || !processes_with(&["qemu-system", tag, "-kernel", "init=/bin/sh"]).is_empty(),
    );
    std::thread::sleep(Duration::from_secs(5));
    let (status, _, err) = stop(&mut child, libc::SIGTERM, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_nothing_left(out.path(), "e2e-offline-slow", "bf1");
}

/// SIGTERM while a full boot provisions (e2e's scripts need Docker, so its one flat layer
/// boots in full; the boot-free case is the test above).
#[test]
fn sigterm_during_provisioning_stops_qemu_and_leaves_nothing() {
    let _vm = crate::one_vm();
    let out = tempfile::tempdir().unwrap();
    let mut child = e2e_command(&[
        "build",
        "e2e",
        "--no-cache",
        "--version",
        "int1",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .spawn();
    wait_while_running(
        &mut child,
        Duration::from_secs(1200),
        "the build VM starts",
        || !qemu_processes("e2e-int1-amd64.").is_empty(),
    );
    std::thread::sleep(Duration::from_secs(5));
    let (status, _, err) = stop(&mut child, libc::SIGTERM, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_nothing_left(out.path(), "e2e", "int1");
}

/// A crash (SIGKILL: no clean-up code runs) while a layer is being built: QEMU dies with
/// imgbuild (parent-death signal), dist/ has nothing, and the layer cache holds no entry, only
/// the abandoned `.partial-` folder, which lookups never see and `cache prune` removes.
#[test]
fn a_killed_layered_build_leaves_no_qemu_no_entry_and_prune_clears_the_partial() {
    let _vm = crate::one_vm();
    let private = Private::new();
    let out = tempfile::tempdir().unwrap();
    let mut child = private
        .command(&["build", "e2e-common-kill", "--version", "k1", "--out"])
        .arg(out.path())
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tag = "e2e-common-kill-k1-amd64.";
    wait_while_running(
        &mut child,
        Duration::from_secs(1200),
        "the build VM starts",
        || !qemu_processes(tag).is_empty(),
    );
    std::thread::sleep(Duration::from_secs(5));
    signal_and_wait(&mut child, libc::SIGKILL, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemu_processes(tag).is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU outlived the killed imgbuild"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let dist: Vec<_> = std::fs::read_dir(out.path())
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(dist.is_empty(), "dist has {dist:?}");

    let rows = |private: &Private| -> Vec<String> {
        let o = private.run(&["--json", "cache", "ls"]);
        assert!(o.status.success(), "{}", text(&o).1);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] != "apt" && r["kind"] != "base")
            .map(|r| r["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        rows(&private),
        ["partial"],
        "no entry, one abandoned partial"
    );
    let o = private.run(&["--json", "cache", "prune"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let pr: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pr["removed"].as_array().unwrap().len(), 1, "{pr:#}");
    assert!(rows(&private).is_empty());
    assert!(std::fs::read_dir(private.cache.join("layers"))
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".partial-")));
}

#[test]
fn an_existing_version_or_a_bad_one_is_refused_before_any_work() {
    // No VM slot: refused before any work, nothing boots.
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(out.path().join("e2e/x1")).unwrap();
    std::fs::write(out.path().join("e2e/x1/keep"), "mine").unwrap();
    let o = run(&[
        "build",
        "e2e",
        "--version",
        "x1",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("e2e/x1/keep")).unwrap(),
        "mine"
    );
    for bad in ["../escape", "a/b", "-x"] {
        let o = run(&[
            "build",
            "e2e",
            &format!("--version={bad}"),
            "--out",
            out.path().to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o).1);
    }
    let o = run(&["build", "e2e-common"]);
    assert_eq!(o.status.code(), Some(2), "abstract images are not built");
}

/// The pids of processes whose command line mentions every one of `needles`.
fn processes_with(needles: &[&str]) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            if needles.iter().all(|n| line.contains(n)) {
                found.push(pid);
            }
        }
    }
    found
}

/// `pid` and every process below it (children first found, then theirs).
fn process_tree(pid: i32) -> Vec<i32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            let child = e.file_name().to_string_lossy().parse::<i32>().ok();
            if let (Some(ppid), Some(child)) = (ppid, child) {
                if ppid == tree[i] && !tree.contains(&child) {
                    tree.push(child);
                }
            }
        }
        i += 1;
    }
    tree
}

/// The mount points below `dir` that process `pid` (or `self`) sees.
fn mounts_below(pid: &str, dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// A bootstrap (mmdebstrap, which mounts /proc, /sys and /dev/pts in the tree it builds)
/// stopped midway. Killed outright, imgbuild and everything it started (SIGKILL: as a CI
/// timeout or the OOM killer does), it leaves no mount on the host: they lived in mmdebstrap's
/// own mount namespace (before, they stayed under the cache). The next build starts over in
/// the leftover work folder; SIGTERM stops it, mmdebstrap included, within seconds (before,
/// imgbuild waited for mmdebstrap to finish), and the work folder goes.
#[test]
fn a_bootstrap_killed_or_stopped_midway_leaves_no_mount_and_no_work_folder() {
    let _vm = crate::one_vm();
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let start = |version: &str| {
        e2e_command(&[
            "build",
            "e2e",
            "--no-cache",
            "--no-smoke",
            "--version",
            version,
        ])
        .arg("--out")
        .arg(out.path())
        .cache_dir(cache.path())
        .spawn()
    };
    // Until mmdebstrap has its mounts (seen from inside its namespace).
    let mounted = || {
        processes_with(&["mmdebstrap", cache_dir])
            .iter()
            .any(|p| !mounts_below(&p.to_string(), cache.path()).is_empty())
    };
    let bootstrap = cache.path().join("bootstrap");

    let mut child = start("k1");
    wait_while_running(
        &mut child,
        Duration::from_secs(300),
        "mmdebstrap mounts in its tree",
        mounted,
    );
    for pid in process_tree(child.id() as i32) {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_with(&["mmdebstrap", cache_dir]).is_empty() {
        assert!(Instant::now() < deadline, "mmdebstrap outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        mounts_below("self", cache.path()),
        Vec::<String>::new(),
        "mounts left on the host"
    );
    assert!(
        common::entries(&bootstrap)
            .iter()
            .any(|n| n.ends_with(".work")),
        "a SIGKILL leaves the work folder (nothing can clean up): {:?}",
        common::entries(&bootstrap)
    );

    let mut child = start("k2");
    wait_while_running(
        &mut child,
        Duration::from_secs(300),
        "the next build's mmdebstrap mounts in the leftover work folder",
        mounted,
    );
    let (status, _, err) = stop(&mut child, libc::SIGTERM, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        processes_with(&["mmdebstrap", cache_dir]).is_empty(),
        "mmdebstrap outlived the stopped build"
    );
    assert_eq!(mounts_below("self", cache.path()), Vec::<String>::new());
    let left: Vec<String> = common::entries(&bootstrap)
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "bootstrap folder keeps {left:?}");
    assert!(common::entries(&out.path().join("e2e")).is_empty());
}
