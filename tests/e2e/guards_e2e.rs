//! The smoke's guards against what must never ship, on a mutation fixture: e2e-guards.yaml
//! leaves a build-time sudo user, bakes a private key, a .git-credentials and a per-instance identity and starts an
//! undeclared listener; each defect fails its own built-in check, named with the file or the
//! port (never the secret), and nothing lands in dist/. A declared check that cannot pass
//! fails beside them, named, and no passing check is (the failed-smoke test of build_e2e.rs
//! until the run of 2026-11-30 10:00: one smoke boot for both). Each failing guard names only its
//! planted defect: not what the image has and declares (ssl-cert's snakeoil key, which the
//! hygiene removes; the declared listener on 4444; the e2e user), so the same image without
//! the defects (e2e-guards-clean.yaml, which this one extends) would pass them. Its own build
//! and smoke were a test of their own until the run of 2026-11-30: two more full TCG boots in
//! a CI run over its time; every other image's smoke (the layered test's, the twins', the
//! parallel pair's) passes these guards too.

use crate::common;

use common::{assert_nothing_left, e2e_cache, e2e_command, read_json, smoke_check, text};

const GUARDS: [&str; 5] = [
    "accounts-as-declared",
    "no-private-keys",
    "no-credential-files",
    "identities-made-at-first-boot",
    "exposure-allowlist",
];

/// Builds `image` as version g1 into a fresh output folder (one VM).
fn build(image: &str) -> (std::process::Output, tempfile::TempDir) {
    let _vm = crate::one_vm();
    let out = tempfile::tempdir().unwrap();
    let o = e2e_command(&[
        "build",
        image,
        "--version",
        "g1",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .output();
    (o, out)
}

#[test]
fn each_defect_fails_its_own_guard_naming_the_file_or_port() {
    let (o, out) = build("e2e-guards");
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("smoke test failed"), "{stderr}");
    for name in GUARDS.iter().chain(&["impossible-file"]) {
        assert!(stderr.contains(name), "names {name}:\n{stderr}");
    }
    assert!(
        !stderr.contains("not-a-real-token"),
        "a secret was printed:\n{stderr}"
    );
    assert_nothing_left(out.path(), "e2e-guards", "g1");
    let report = read_json(&e2e_cache().join("failed/e2e-guards-g1-amd64/smoke-report.json"));
    assert_eq!(report["passed"], false);
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // The declared check that cannot pass, then each guard; nothing that passes.
    let mut want = vec!["impossible-file"];
    want.extend(GUARDS);
    assert_eq!(failed, want, "{report:#}");
    assert!(
        !stderr.contains("check `file-present`"),
        "only failing checks are named:\n{stderr}"
    );
    let detail = |name| {
        smoke_check(&report, name)["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let accounts = detail("accounts-as-declared");
    for want in [
        "home /home/builder",
        "user builder",
        "sudo rule for builder in /etc/sudoers.d/builder",
    ] {
        assert!(accounts.contains(want), "{want}: {accounts}");
    }
    assert!(!accounts.contains("e2e"), "e2e is declared: {accounts}");
    assert!(
        !accounts.contains("debian"),
        "the hygiene removes cloud-init's default user: {accounts}"
    );
    let keys = detail("no-private-keys");
    assert!(keys.contains("/root/.ssh/id_ed25519"), "{keys}");
    assert!(
        !keys.contains("snakeoil"),
        "the hygiene removes what ssl-cert made at build time: {keys}"
    );
    assert!(
        !keys.contains(".ollama"),
        "the identity is its own check's: {keys}"
    );
    // Only the planted key: programs holding a BEGIN line as a constant are no keys.
    assert!(!keys.contains(".pyc"), "{keys}");
    let creds = detail("no-credential-files");
    assert!(creds.contains("/root/.git-credentials"), "{creds}");
    assert!(!creds.contains("not-a-real-token"), "{creds}");
    let ids = detail("identities-made-at-first-boot");
    assert!(ids.contains("/home/e2e/.ollama/id_ed25519"), "{ids}");
    assert!(
        !ids.contains("snakeoil"),
        "the hygiene removes ssl-cert's pair, made at build time: {ids}"
    );
    let exposed = detail("exposure-allowlist");
    assert!(
        exposed.contains("8445/tcp on 0.0.0.0 by python3"),
        "{exposed}"
    );
    assert!(!exposed.contains("4444/"), "4444 is declared: {exposed}");
    assert!(
        !exposed.contains("5355/"),
        "systemd-resolved's LLMNR is off in every image: {exposed}"
    );
    assert_eq!(smoke_check(&report, "declared-listener-up")["passed"], true);
}
