//! `imgbuild lima`: the Lima instance YAML for a built artifact, read back with PyYAML.

use crate::common;

use common::*;
use std::path::Path;
use std::process::Command;

/// A build of desktop-ai in `dist`, started at `started`.
fn fake_build(dist: &Path, version: &str, started: &str) -> std::path::PathBuf {
    common::fake_build(
        dist,
        FakeBuild {
            image: "desktop-ai",
            version,
            started,
            data_mib: 1,
        },
    )
}

#[test]
fn lima_yaml_boots_the_newest_build_with_the_desktop_and_stack_ports() {
    let dist = tempfile::tempdir().unwrap();
    fake_build(dist.path(), "1.0", "2026-11-01T10:00:00Z");
    let newest = fake_build(dist.path(), "1.1", "2026-11-20T10:00:00Z");
    let out = dist.path().join("desktop-ai.lima.yaml");
    let o = imgbuild(
        &repo(),
        &[
            "lima",
            "desktop-ai",
            "--dist",
            dist.path().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let y = python_yaml(&out);
    let img = &y["images"][0];
    assert_eq!(
        img["location"],
        std::fs::canonicalize(&newest).unwrap().to_str().unwrap()
    );
    assert_eq!(img["arch"], "x86_64");
    let sha = String::from_utf8(
        Command::new("sha256sum")
            .arg(&newest)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        img["digest"],
        format!("sha256:{}", sha.split_whitespace().next().unwrap())
    );
    assert_eq!(y["cpus"], 4);
    assert_eq!(y["memory"], "8192MiB");
    assert_eq!(y["disk"], "60GiB");
    assert_eq!(y["vmType"], "qemu");
    assert_eq!(y["firmware"]["legacyBIOS"], true);
    let ports: Vec<u64> = y["portForwards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(
                p["hostIP"], "127.0.0.1",
                "forwards stay on the host's loopback"
            );
            assert_eq!(p["guestPort"], p["hostPort"]);
            p["guestPort"].as_u64().unwrap()
        })
        .collect();
    for want in [6080, 5901, 3389, 3000, 11434, 6333] {
        assert!(ports.contains(&want), "{want} not forwarded: {ports:?}");
    }
    // An explicit older version.
    let o = imgbuild(
        &repo(),
        &[
            "lima",
            "desktop-ai",
            "--version",
            "1.0",
            "--dist",
            dist.path().to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    assert!(text(&o).0.contains("desktop-ai-1.0-amd64.qcow2"));
}

#[test]
fn a_missing_or_changed_build_is_refused() {
    let dist = tempfile::tempdir().unwrap();
    let lima = TestCommand::new(&["lima", "desktop-ai", "--dist"]).arg(dist.path());
    let err = lima.expect(2).stderr;
    assert!(err.contains("no build of desktop-ai"), "{err}");
    let artifact = fake_build(dist.path(), "2.0", "2026-11-20T10:00:00Z");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&artifact)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let err = lima.expect(1).stderr;
    assert!(err.contains("artifact changed"), "{err}");
}
