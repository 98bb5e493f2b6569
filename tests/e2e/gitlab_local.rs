//! The pipeline `imgbuild ci gitlab` writes, run for real by gitlab-ci-local (npm, pinned in
//! the Makefile's `gitlab-ci-local` target) with its shell executor: the build job builds the
//! fixture image with the shared e2e cache, the smoke job boots the build job's artifact and
//! leaves its JUnit report where `artifacts:reports:junit` says. gitlab-ci-local also checks
//! the file against GitLab's CI schema before it runs a job.

use crate::common;

use common::{e2e_cache, fixtures, repo, text, TestCommand};
use std::process::Command;

#[test]
fn gitlab_ci_local_runs_the_generated_build_and_smoke_jobs() {
    let _vm = crate::one_vm();
    let glcl = repo().join("target/gitlab-ci-local/node_modules/.bin/gitlab-ci-local");
    assert!(
        glcl.exists(),
        "{} is missing: make gitlab-ci-local",
        glcl.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let ci = dir.path().join(".gitlab-ci.yml");
    TestCommand::new(&["ci", "gitlab", "e2e-par-a", "-o"])
        .arg(&ci)
        .images_dir(fixtures())
        .expect(0);
    // gitlab-ci-local runs in a git checkout (it reads the commit for CI_COMMIT_SHORT_SHA).
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", text(&o).1);
        text(&o).0
    };
    git(&["init", "-q"]);
    git(&["add", ".gitlab-ci.yml"]);
    git(&["commit", "-qm", "pipeline"]);
    // GitLab's CI_COMMIT_SHORT_SHA has 8 characters.
    let sha = git(&["rev-parse", "--short=8", "HEAD"]);
    let bin_dir = std::path::Path::new(common::bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new(&glcl)
        .args(["--needs", "smoke:e2e-par-a:amd64"])
        .arg("--variable")
        .arg(format!("IMGBUILD_IMAGES_DIR={}", fixtures().display()))
        .arg("--variable")
        .arg(format!("IMGBUILD_CACHE_DIR={}", e2e_cache().display()))
        .arg("--variable")
        .arg(format!("IMGBUILD_VENV={}", repo().join(".venv").display()))
        .env("PATH", path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for job in ["build:e2e-par-a:amd64", "smoke:e2e-par-a:amd64"] {
        assert!(out.contains(&format!("PASS  {job}")), "{job}:\n{out}");
    }
    // The build job's version is the pipeline's (gitlab-ci-local's pipeline iid, the commit).
    let version = format!(".{}", sha.trim());
    let built: Vec<String> = common::entries(&dir.path().join("dist/e2e-par-a"));
    assert!(
        built.len() == 1 && built[0].ends_with(&version),
        "{built:?}"
    );
    // The smoke job's JUnit report where the pipeline declares it, every check passed.
    let junit =
        std::fs::read_to_string(dir.path().join("smoke/e2e-par-a-amd64/junit.xml")).unwrap();
    assert!(
        junit.contains("<testsuite") && junit.contains("failures=\"0\""),
        "{junit}"
    );
    assert!(junit.matches("<testcase").count() >= 10, "{junit}");
}
