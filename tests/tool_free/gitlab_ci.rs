//! `imgbuild ci gitlab`: the catalog as a GitLab CI child pipeline, checked with GitLab's own
//! CI schema (app/assets/javascripts/editor/schema/ci.json of the gitlab repository, as
//! check-jsonschema vendors it: `--builtin-schema vendor.gitlab-ci`) and its job graph
//! against the images' `extends` chains.

use crate::common;

use common::*;
use std::collections::BTreeMap;

fn pipeline(args: &[&str]) -> (serde_json::Value, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("images.gitlab-ci.yml");
    let mut c = TestCommand::new(&["ci", "gitlab"]);
    for a in args {
        c = c.arg(a);
    }
    c.arg("-o").arg(&file).expect(0);
    (python_yaml(&file), file, dir)
}

fn gitlab_schema(file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(repo().join(".venv/bin/check-jsonschema"))
        .args(["--builtin-schema", "vendor.gitlab-ci"])
        .arg(file)
        .output()
        .expect("check-jsonschema (make venv)")
}

#[test]
fn the_catalog_pipeline_passes_gitlabs_schema_and_follows_extends() {
    let (y, file, _dir) = pipeline(&[]);
    let o = gitlab_schema(&file);
    assert!(o.status.success(), "{}", text(&o).0);
    let jobs: BTreeMap<&String, &serde_json::Value> = y
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains(':'))
        .collect();
    assert_eq!(
        y["stages"],
        serde_json::json!(["build", "smoke", "publish"])
    );
    // Every buildable image and arch of the catalog has its three jobs.
    let list = TestCommand::new(&["--json", "list"]).expect(0).stdout;
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let mut expected = 0;
    for img in list.as_array().unwrap() {
        if img["abstract"] == true {
            continue;
        }
        let name = img["name"].as_str().unwrap();
        for arch in img["arch"].as_array().unwrap() {
            let arch = arch.as_str().unwrap();
            for stage in ["build", "smoke", "publish"] {
                let j = format!("{stage}:{name}:{arch}");
                assert!(jobs.contains_key(&j), "{j} missing");
                assert_eq!(jobs[&j]["stage"], stage);
                assert_eq!(jobs[&j]["tags"], serde_json::json!(["kvm"]));
                expected += 1;
            }
        }
    }
    assert_eq!(jobs.len(), expected);
    // Every `needs` names a job of the pipeline in an earlier stage or the same one, and a
    // build needs exactly the build of the nearest ancestor (`extends`) of the same arch.
    let stage_of = |j: &str| {
        ["build", "smoke", "publish"]
            .iter()
            .position(|s| j.starts_with(&format!("{s}:")))
            .unwrap()
    };
    for (name, job) in &jobs {
        for n in job["needs"].as_array().unwrap() {
            let need = n["job"].as_str().unwrap();
            assert!(
                jobs.keys().any(|k| k.as_str() == need),
                "{name} needs {need}, no such job"
            );
            assert!(
                stage_of(need) <= stage_of(name),
                "{name} needs the later {need}"
            );
        }
    }
    let needs = |j: &str| -> Vec<String> {
        jobs[&j.to_string()]["needs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["job"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(needs("build:base:amd64"), Vec::<String>::new());
    assert_eq!(needs("build:desktop-ai:amd64"), ["build:base:amd64"]);
    assert_eq!(
        needs("build:debian12-desktop-ai:amd64"),
        ["build:desktop-ai:amd64"]
    );
    assert_eq!(needs("build:debian12-base:arm64"), ["build:base:arm64"]);
    assert_eq!(needs("build:k3s-node-gpu:amd64"), ["build:k3s-node:amd64"]);
    // Smoke: the build's artifact booted, its JUnit report for GitLab's test view.
    let smoke = jobs[&"smoke:debian12-base:arm64".to_string()];
    assert_eq!(
        smoke["artifacts"]["reports"]["junit"],
        "smoke/debian12-base-arm64/junit.xml"
    );
    assert_eq!(smoke["artifacts"]["when"], "always");
    let script = smoke["script"][0].as_str().unwrap();
    assert!(
        script.contains("--image debian12-base --arch arm64"),
        "{script}"
    );
    assert!(
        script.contains("debian12-base-${IMGBUILD_VERSION}-arm64-arm64.qcow2"),
        "{script}"
    );
    // Publish: after its smoke, one at a time per image, on the default branch only.
    let publish = jobs[&"publish:desktop-ai:amd64".to_string()];
    assert_eq!(publish["resource_group"], "publish-desktop-ai");
    assert!(needs("publish:desktop-ai:amd64").contains(&"smoke:desktop-ai:amd64".to_string()));
    assert_eq!(
        publish["rules"][0]["if"],
        "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
    );
    // The build's own command line is one imgbuild accepts.
    let build = jobs[&"build:desktop-ai:amd64".to_string()]["script"][0]
        .as_str()
        .unwrap();
    assert_eq!(build, "imgbuild build desktop-ai --arch amd64 --version \"${IMGBUILD_VERSION}\" --no-smoke --out dist");
}

#[test]
fn a_chosen_subset_needs_only_what_it_builds_and_bad_choices_exit_2() {
    let (y, file, _dir) = pipeline(&[
        "desktop-ai",
        "debian12-desktop-ai",
        "--runner-tag",
        "kvm",
        "--runner-tag",
        "big",
    ]);
    assert!(gitlab_schema(&file).status.success());
    let jobs: Vec<&String> = y
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.contains(':'))
        .collect();
    assert_eq!(jobs.len(), 6, "{jobs:?}");
    // base is not built here: desktop-ai needs nothing; its child needs it.
    assert_eq!(y["build:desktop-ai:amd64"]["needs"], serde_json::json!([]));
    assert_eq!(
        y["build:debian12-desktop-ai:amd64"]["needs"][0]["job"],
        "build:desktop-ai:amd64"
    );
    assert_eq!(
        y["smoke:desktop-ai:amd64"]["tags"],
        serde_json::json!(["kvm", "big"])
    );
    let err = TestCommand::new(&["ci", "gitlab", "no-such-image"])
        .expect(2)
        .stderr;
    assert!(err.contains("no-such-image"), "{err}");
    let err = TestCommand::new(&["ci", "gitlab", "desktop-ai", "--arch", "arm64"])
        .expect(2)
        .stderr;
    assert!(err.contains("not built for arm64"), "{err}");
}

#[test]
fn with_a_remote_cache_every_build_uses_it_and_unprotected_refs_only_read() {
    let (y, file, _dir) = pipeline(&["--cache-remote", "s3://imgbuild-cache/ci"]);
    let o = gitlab_schema(&file);
    assert!(o.status.success(), "{}", text(&o).0);
    assert_eq!(
        y["variables"]["IMGBUILD_CACHE_REMOTE"],
        "s3://imgbuild-cache/ci"
    );
    let builds: Vec<&serde_json::Value> = y
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("build:"))
        .map(|(_, v)| v)
        .collect();
    assert!(!builds.is_empty());
    for b in &builds {
        let script = b["script"].as_array().unwrap();
        assert_eq!(script.len(), 2, "{b:#}");
        // What the first line does, run by sh as a GitLab shell runner runs it.
        let first = script[0].as_str().unwrap();
        for (protected, read_only) in [("true", ""), ("false", "true"), ("", "true")] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "{first}\nprintf %s \"$IMGBUILD_CACHE_REMOTE_READ_ONLY\""
                ))
                .env("CI_COMMIT_REF_PROTECTED", protected)
                .env_remove("IMGBUILD_CACHE_REMOTE_READ_ONLY")
                .output()
                .unwrap();
            assert_eq!(text(&out).0, read_only, "protected={protected}");
        }
        assert!(script[1].as_str().unwrap().contains(" build "));
    }
    // Without --cache-remote, no remote and no extra line.
    let (plain, _, _d) = pipeline(&[]);
    assert!(plain["variables"].get("IMGBUILD_CACHE_REMOTE").is_none());
    assert!(plain
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("build:"))
        .all(|(_, v)| v["script"].as_array().unwrap().len() == 1));
}
