//! `imgbuild checksum` against coreutils' sha256sum, sha512sum and md5sum, and `--verify`
//! with its failure output; `imgbuild doctor` reports the host.

use crate::common;

use common::{imgbuild, text};
use std::path::Path;
use std::process::Command;

fn coreutils(tool: &str, dir: &Path, files: &[&str]) -> String {
    let o = Command::new(tool)
        .args(files)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Larger than one read chunk and not a multiple of it; an empty file; a name with a space.
    let mut big = vec![0u8; (9 << 20) + 12345];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(dir.path().join("big.img"), &big).unwrap();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    std::fs::write(dir.path().join("with space.txt"), b"imgbuild\n").unwrap();
    dir
}

const FILES: [&str; 3] = ["big.img", "empty", "with space.txt"];

#[test]
fn checksum_lines_equal_coreutils_for_every_algorithm() {
    let d = fixture();
    for (algo, tool) in [
        ("sha256", "sha256sum"),
        ("sha512", "sha512sum"),
        ("md5", "md5sum"),
    ] {
        let mut args = vec!["checksum", "--algo", algo];
        args.extend(FILES);
        let o = imgbuild(d.path(), &args);
        assert!(o.status.success(), "{}", text(&o).1);
        assert_eq!(text(&o).0, coreutils(tool, d.path(), &FILES), "{algo}");
    }
    // Default is sha256, in a format `sha256sum -c` accepts.
    let mut args = vec!["checksum"];
    args.extend(FILES);
    let o = imgbuild(d.path(), &args);
    std::fs::write(d.path().join("SUMS"), &o.stdout).unwrap();
    let c = Command::new("sha256sum")
        .args(["-c", "SUMS"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));
}

#[test]
fn json_has_all_three_digests() {
    let d = fixture();
    let o = imgbuild(d.path(), &["--json", "checksum", "big.img", "empty"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let first = |tool: &str, f: &str| {
        coreutils(tool, d.path(), &[f])
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    for (i, f) in ["big.img", "empty"].iter().enumerate() {
        assert_eq!(v[i]["sha256"], first("sha256sum", f));
        assert_eq!(v[i]["sha512"], first("sha512sum", f));
        assert_eq!(v[i]["md5"], first("md5sum", f));
        assert_eq!(
            v[i]["size"],
            std::fs::metadata(d.path().join(f)).unwrap().len()
        );
    }
}

#[test]
fn verify_accepts_coreutils_sums_and_reports_a_mismatch_with_both_values() {
    let d = fixture();
    for (tool, name) in [
        ("sha256sum", "SHA256SUMS"),
        ("sha512sum", "SHA512SUMS"),
        ("md5sum", "MD5SUMS"),
    ] {
        std::fs::write(d.path().join(name), coreutils(tool, d.path(), &FILES)).unwrap();
        // Run from elsewhere: names are relative to the sums file.
        let o = imgbuild(
            Path::new("/"),
            &[
                "checksum",
                "--verify",
                d.path().join(name).to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{name}: {}", text(&o).1);
        assert_eq!(
            text(&o).0.lines().filter(|l| l.ends_with(": OK")).count(),
            3
        );
    }
    let good = coreutils("sha256sum", d.path(), &["big.img"]);
    let expected = good.split_whitespace().next().unwrap().to_string();
    // Flip one byte in the middle.
    let p = d.path().join("big.img");
    let mut data = std::fs::read(&p).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 1;
    std::fs::write(&p, &data).unwrap();
    let actual = coreutils("sha256sum", d.path(), &["big.img"])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let o = imgbuild(d.path(), &["checksum", "--verify", "SHA256SUMS"]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.contains("big.img: FAILED"), "{out}");
    assert!(out.contains(&expected) && out.contains(&actual), "{out}");
    assert!(out.contains("empty: OK"), "{out}");
    // Only the named file.
    let o = imgbuild(d.path(), &["checksum", "--verify", "SHA256SUMS", "empty"]);
    assert!(o.status.success());
    assert_eq!(text(&o).0, "empty: OK\n");
    // --json tells each result.
    let o = imgbuild(d.path(), &["--json", "checksum", "--verify", "SHA256SUMS"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let big = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"] == "big.img")
        .unwrap();
    assert_eq!(big["ok"], false);
    assert_eq!(big["expected"], expected);
    assert_eq!(big["actual"], actual);
}

#[test]
fn bad_input_is_exit_2_and_a_missing_file_is_a_failure() {
    let d = fixture();
    std::fs::write(d.path().join("BAD"), "not a sums line\n").unwrap();
    let o = imgbuild(d.path(), &["checksum", "--verify", "BAD"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("BAD:1"), "{}", text(&o).1);
    let o = imgbuild(d.path(), &["checksum"]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(
        d.path().join("GONE"),
        format!("{}  gone.img\n", "0".repeat(64)),
    )
    .unwrap();
    let o = imgbuild(d.path(), &["checksum", "--verify", "GONE"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).0.contains("gone.img: FAILED"));
    let o = imgbuild(d.path(), &["checksum", "--verify", "GONE", "other.img"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a file not in the sums file is bad input"
    );
}

#[test]
fn doctor_reports_tools_accel_and_cache_space() {
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(common::bin())
        .args(["--json", "doctor"])
        .env("IMGBUILD_CACHE_DIR", d.path().join("cache"))
        .env("IMGBUILD_ACCEL", "tcg")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        o.status.success(),
        "required tools are installed by make host-tools: {v}"
    );
    let tool = |n: &str| {
        v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap_or_else(|| panic!("{n} not reported"))
            .clone()
    };
    assert!(tool("qemu-img")["version"]
        .as_str()
        .unwrap()
        .contains("qemu-img version"));
    assert!(tool("qemu-system-x86_64")["version"]
        .as_str()
        .unwrap()
        .contains("QEMU emulator"));
    assert!(tool("packer")["version"]
        .as_str()
        .unwrap()
        .contains("Packer"));
    assert!(tool("mmdebstrap")["path"].is_string());
    assert!(tool("xorriso")["path"].is_string());
    assert!(tool("cloud-init")["path"].is_string());
    assert_eq!(v["accel"], "tcg");
    assert_eq!(v["accel_reason"], "IMGBUILD_ACCEL=tcg");
    assert!(v["cache_free_bytes"].as_u64().unwrap() > 0);
    // A missing tool comes with its install command.
    let o = Command::new(common::bin())
        .args(["doctor"])
        .env("PATH", "/nonexistent")
        .env("IMGBUILD_ACCEL", "tcg")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("MISS qemu-img"), "{out}");
    assert!(out.contains("install: apt-get install qemu-utils"), "{out}");
}
