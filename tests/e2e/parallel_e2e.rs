//! Several builds in one invocation, with the real tools (QEMU under TCG here): two small
//! images built at once with `--jobs 2` (`--no-smoke`), each into its own dist folder, next to an arm64 build that cannot run here and fails alone; bad input refused
//! before any build starts; SIGTERM stopping every build and leaving nothing. The Debian 12
//! bootstrap base is shared with tests/build_e2e.rs (target/e2e-cache).

use crate::common;

use common::{
    assert_nothing_left, e2e_command, entries, qemu_processes, read_json, stop, text,
    wait_while_running,
};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

fn run(args: &[&str]) -> Output {
    e2e_command(args).output()
}

/// `build.started` (RFC 3339) plus `build.duration_seconds` of a manifest.
fn span(m: &serde_json::Value) -> (SystemTime, SystemTime) {
    let start = humantime::parse_rfc3339(m["build"]["started"].as_str().unwrap()).unwrap();
    let secs = m["build"]["duration_seconds"].as_f64().unwrap();
    (start, start + Duration::from_secs_f64(secs))
}

/// Where in `log` the first line that starts with `prefix` and contains `needle` is.
fn line_at(log: &str, prefix: &str, needle: &str) -> usize {
    let mut at = 0;
    for l in log.split_inclusive('\n') {
        if l.starts_with(prefix) && l.contains(needle) {
            return at;
        }
        at += l.len();
    }
    panic!("no line `{prefix}…{needle}` in:\n{log}")
}

#[test]
fn two_images_build_in_parallel_and_an_impossible_arch_fails_alone() {
    // The VM tests of this file run alone (each already runs two builds at once).
    let _vms = crate::all_vms();
    let out = tempfile::tempdir().unwrap();
    let o = run(&[
        "--json",
        "build",
        "e2e-par-arm64",
        "e2e-par-a",
        "e2e-par-b",
        "--jobs",
        "2",
        // Scheduling is what is tested here; smoke boots are the other e2e tests' (CI time).
        "--no-smoke",
        "--version",
        "par1",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "one build failed, so exit 1:\n{stderr}"
    );
    let results: Vec<serde_json::Value> =
        serde_json::from_str(&stdout).expect("--json prints an array of results");
    assert_eq!(results.len(), 3, "{stdout}");
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["image"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["e2e-par-arm64", "e2e-par-a", "e2e-par-b"]);

    // The arm64 build cannot run on this amd64 host and says why; it leaves nothing.
    let arm = &results[0];
    assert_eq!(arm["arch"], "arm64");
    assert_eq!(arm["ok"], false);
    assert_eq!(arm["version"], "par1");
    assert!(arm.get("manifest").is_none());
    let why = arm["error"].as_str().unwrap();
    let emulator = Command::new("sh")
        .args(["-c", "command -v qemu-system-aarch64"])
        .output()
        .unwrap()
        .status
        .success();
    if emulator && Path::new("/usr/share/AAVMF/AAVMF_CODE.fd").is_file() {
        // Where arm64 guests can run, it fails on its base, which does not exist.
        assert!(why.contains("imgbuild-e2e-arm64.img"), "{why}");
    } else {
        assert!(
            why.contains("cannot build arm64") && why.contains("qemu-system-aarch64")
                || why.contains("UEFI firmware for arm64"),
            "{why}"
        );
    }
    assert!(entries(&out.path().join("e2e-par-arm64")).is_empty());
    assert!(
        stderr.contains("[e2e-par-arm64/arm64] ") && stderr.contains("error: "),
        "the failure is in the log, prefixed:\n{stderr}"
    );

    // Both amd64 builds landed, each in its own version folder.
    let mut spans = Vec::new();
    for (r, image) in [(&results[1], "e2e-par-a"), (&results[2], "e2e-par-b")] {
        assert_eq!(r["ok"], true, "{image}: {}", r["error"]);
        assert_eq!(r["arch"], "amd64");
        assert_eq!(r["version"], "par1");
        let dir = out.path().join(image).join("par1");
        let m = &r["manifest"];
        assert_eq!(*m, read_json(&dir.join("manifest.json")));
        assert_eq!(m["image"], image);
        assert_eq!(m["version"], "par1");
        assert!(m["smoke"].is_null(), "--no-smoke is recorded");
        assert!(dir.join(m["artifact"]["file"].as_str().unwrap()).is_file());
        // The top layer is the image's own; it was built unless an earlier run of this test
        // left it in the shared cache (then no layer was booted and there is no serial log).
        if m["layers"][1]["cached"] == false {
            let serial = std::fs::read_to_string(dir.join("logs/serial-build.log")).unwrap();
            assert!(serial.contains("IMGBUILD-HYGIENE-DONE"), "{image}");
            // Each ran its own definition: only e2e-par-b has the script mark-b.
            assert_eq!(
                serial.contains("IMGBUILD-STEP-OK 50-01-mark-b"),
                image == "e2e-par-b",
                "{image}"
            );
        }
        assert_eq!(entries(&out.path().join(image)), ["par1"], "no partials");
        assert!(qemu_processes(&format!("{image}-par1-amd64.")).is_empty());
        spans.push(span(m));
    }

    // Their features layers are the same (nothing in them names the image): one disk, made
    // once. One build made it (or an earlier test did) and the other reused it in 0 s,
    // waiting for it rather than building it twice.
    let features = |r: &serde_json::Value| r["manifest"]["layers"][0].clone();
    let (fa, fb) = (features(&results[1]), features(&results[2]));
    assert_eq!(fa["name"], "features");
    assert_eq!(
        fa["key"], fb["key"],
        "the two images share their lower layer"
    );
    let built: Vec<&serde_json::Value> = [&fa, &fb]
        .into_iter()
        .filter(|l| l["cached"] == false)
        .collect();
    assert!(
        built.len() <= 1,
        "the shared layer was built twice: {fa} {fb}"
    );
    for l in [&fa, &fb] {
        if l["cached"] == true {
            assert_eq!(l["seconds"], 0.0, "{l}");
            let by = l["built_for"]
                .as_str()
                .expect("a reused layer names who built it");
            if built.len() == 1 {
                let other = if std::ptr::eq(l, &fa) {
                    "e2e-par-b"
                } else {
                    "e2e-par-a"
                };
                assert_eq!(by, other, "{l}");
            }
        }
    }
    if built.len() == 1 {
        assert!(
            stderr.contains("features: waiting for another build that makes it")
                || stderr.contains("features: reused from the cache"),
            "{stderr}"
        );
    }
    // The features layer (an upgrade: apt, network) was made without a boot, the bootstrap
    // base's kernel straight into its payload, and so was each top layer (files, a user,
    // par-b's offline script) on the kernel the features layer exported — all reported in
    // the manifest.
    assert_eq!(fa["boot_free"], true, "{fa}");
    for r in [&results[1], &results[2]] {
        let top = &r["manifest"]["layers"][1];
        assert_eq!(top["name"], "image");
        assert_eq!(top["boot_free"], true, "{top}");
    }
    // Their own top layers differ (par-b has a script; each names its image).
    assert_ne!(
        results[1]["manifest"]["layers"][1]["key"],
        results[2]["manifest"]["layers"][1]["key"]
    );

    // They ran at the same time: by their manifests and by the log.
    let ((a0, a1), (b0, b1)) = (spans[0], spans[1]);
    assert!(
        a0 < b1 && b0 < a1,
        "the two builds did not overlap: a {a0:?}..{a1:?}, b {b0:?}..{b1:?}"
    );
    let a = "[e2e-par-a/amd64] ";
    let b = "[e2e-par-b/amd64] ";
    assert!(
        line_at(&stderr, b, "building e2e-par-b par1 for amd64")
            < line_at(&stderr, a, "ok   digests"),
        "b started before a ended:\n{stderr}"
    );
    assert!(
        line_at(&stderr, a, "building e2e-par-a par1 for amd64")
            < line_at(&stderr, b, "ok   digests"),
        "{stderr}"
    );
    // The build that cannot run here failed at once and gave its place to the next: its
    // error comes before b, which waited for a place, started (without qemu-system-aarch64 and
    // AAVMF it fails before its render, with them at its base, which does not exist). (Before
    // a's provisioning, as this said once, held only while every build probed KVM for 8 s
    // first; the probe's answer is now kept for the boot.)
    assert!(
        line_at(&stderr, "[e2e-par-arm64/arm64] ", "error: ") < line_at(&stderr, b, "started: "),
        "{stderr}"
    );
    // Every progress line of a build carries its prefix.
    for l in stderr.lines() {
        if l.contains("provision (qemu)") || l.contains("ok   compact") {
            assert!(l.starts_with(a) || l.starts_with(b), "unprefixed: {l}");
        }
    }
    // A change to the parent's content rebuilds the shared layer for both images: keys,
    // in pipeline::provision::layers' unit tests (an e2e run of it cost CI 4-5 minutes of
    // every VM slot).
}

#[test]
fn bad_input_is_refused_before_any_build_starts() {
    // No VM slot: refused before any build starts, nothing boots.
    let out = tempfile::tempdir().unwrap();
    let o_ = out.path().to_str().unwrap();
    std::fs::create_dir_all(out.path().join("e2e-par-b/x1")).unwrap();
    let cases: &[&[&str]] = &[
        &["build", "e2e-par-a", "no-such-image", "--out", o_],
        &["build", "e2e-par-a", "e2e-common", "--out", o_],
        &[
            "build",
            "e2e-par-a",
            "e2e-par-b",
            "--version",
            "x1",
            "--out",
            o_,
        ],
        &[
            "build",
            "e2e-par-a",
            "e2e-par-b",
            "--version=../x",
            "--out",
            o_,
        ],
        &[
            "build",
            "e2e-par-a",
            "e2e-par-b",
            "--arch",
            "arm64",
            "--out",
            o_,
        ],
        &["build", "e2e-par-a", "--arch", "sparc", "--out", o_],
        &["build", "--all", "e2e-par-a", "--out", o_],
        &["build", "--all", "--version=../x", "--out", o_],
        &[
            "build",
            "e2e-par-a",
            "e2e-par-b",
            "--jobs",
            "0",
            "--out",
            o_,
        ],
    ];
    for args in cases {
        let started = Instant::now();
        let o = run(args);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(
            !stderr.contains("building "),
            "{args:?}: a build started:\n{stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?}");
    }
    assert_eq!(entries(out.path()), ["e2e-par-b"]);
    assert_eq!(entries(&out.path().join("e2e-par-b")), ["x1"]);
    assert!(entries(&out.path().join("e2e-par-b/x1")).is_empty());
}

#[test]
fn sigterm_stops_every_build_and_starts_no_more() {
    // The VM tests of this file run alone (each already runs two builds at once).
    let _vms = crate::all_vms();
    let out = tempfile::tempdir().unwrap();
    let mut child = e2e_command(&[
        "--json",
        "build",
        "e2e-par-a",
        "e2e-par-b",
        "e2e-guards",
        "--jobs",
        "2",
        "--version",
        "int2",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .spawn();
    // Both build VMs run (the third build waits for a slot).
    wait_while_running(
        &mut child,
        Duration::from_secs(1200),
        "both build VMs start",
        || {
            !qemu_processes("e2e-par-a-int2-amd64.").is_empty()
                && !qemu_processes("e2e-par-b-int2-amd64.").is_empty()
        },
    );
    assert!(qemu_processes("e2e-guards-int2-amd64.").is_empty());
    std::thread::sleep(Duration::from_secs(3));
    let (status, stdout, stderr) = stop(&mut child, libc::SIGTERM, Duration::from_secs(90));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let results: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect(&stdout);
    assert_eq!(results.len(), 3);
    for r in &results {
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().unwrap().contains("interrupted"), "{r}");
    }
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("before it started"),
        "{}",
        results[2]
    );
    for image in ["e2e-par-a", "e2e-par-b", "e2e-guards"] {
        assert_nothing_left(out.path(), image, "int2");
    }
}
