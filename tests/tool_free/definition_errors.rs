//! Bad definitions fail with exit 2 and a message naming file, line and field.

use crate::common;
use common::*;

fn assert_bad(files: &[(&str, &str)], image: &str, expect: &[&str]) {
    let dir = catalog(files);
    for args in [
        vec!["show", image],
        vec!["validate", image],
        vec!["render", image],
    ] {
        let out = imgbuild(dir.path(), &args);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: stdout={stdout} stderr={stderr}"
        );
        for e in expect {
            assert!(stderr.contains(e), "{args:?}: expected `{e}` in:\n{stderr}");
        }
    }
    // Nothing was rendered.
    assert!(!dir.path().join("rendered").exists());
}

/// [`assert_bad`] on one image `img`: [`MINIMAL`] followed by `extra`.
fn assert_bad_minimal(extra: &str, expect: &[&str]) {
    assert_bad(&[("img", &format!("{MINIMAL}{extra}"))], "img", expect);
}

#[test]
fn unknown_key_names_file_line_and_suggests() {
    assert_bad_minimal(
        "pakages: [curl]\n",
        &[
            "images/img.yaml:8:1",
            "unknown field `pakages`",
            "did you mean `packages`?",
        ],
    );
}

#[test]
fn unknown_nested_key_in_parent_file_names_that_file() {
    let parent = format!("{MINIMAL}features:\n  docker:\n    sorce: distro\n");
    assert_bad(
        &[
            ("parent", &parent),
            ("child", "extends: parent\ndescription: child\n"),
        ],
        "child",
        &[
            "images/parent.yaml:10:5",
            "features.docker",
            "unknown field `sorce`",
            "did you mean `source`?",
        ],
    );
}

#[test]
fn wrong_type_names_file_and_line() {
    assert_bad_minimal(
        "build:\n  cpus: many\n",
        &["images/img.yaml:9:9", "build.cpus", "invalid type"],
    );
}

#[test]
fn unknown_layering_names_the_choices() {
    assert_bad_minimal(
        "build:\n  layers: nested\n",
        &[
            "images/img.yaml:9:11",
            "build.layers",
            "expected `grouped` or `per-feature`",
        ],
    );
}

#[test]
fn missing_base_checksum_names_the_field_and_line() {
    let body = "description: x
os: {distro: ubuntu, version: \"24.04\", codename: noble}
arch: [amd64]
base:
  amd64:
    cloud_image:
      url: https://example.org/noble.img
";
    assert_bad(
        &[("img", body)],
        "img",
        &[
            "images/img.yaml:6:5",
            "base.amd64.cloud_image.checksum",
            "missing",
        ],
    );
}

#[test]
fn inherited_base_missing_checksum_points_at_the_parent() {
    let parent = "abstract: true
os: {distro: ubuntu, version: \"24.04\", codename: noble}
arch: [amd64]
base:
  amd64:
    cloud_image:
      url: https://example.org/noble.img
      checksum: sha256:abc
";
    assert_bad(
        &[
            ("parent", parent),
            ("child", "extends: parent\ndescription: child\n"),
        ],
        "child",
        &[
            "images/parent.yaml:8:7",
            "base.amd64.cloud_image.checksum",
            "is not `sha256:<64 hex>`",
        ],
    );
}

#[test]
fn extends_cycle_is_rejected_with_the_chain() {
    assert_bad(
        &[
            ("a", "extends: b\ndescription: a\n"),
            ("b", "extends: c\n"),
            ("c", "extends: a\n"),
        ],
        "a",
        &["images/c.yaml:1:1", "extends cycle: a -> b -> c -> a"],
    );
}

#[test]
fn self_extends_is_a_cycle() {
    assert_bad(
        &[("a", "extends: a\n")],
        "a",
        &["images/a.yaml:1:1", "extends cycle: a -> a"],
    );
}

#[test]
fn unknown_parent_suggests_a_name() {
    let body = MINIMAL.to_string();
    assert_bad(
        &[("base", &body), ("child", "extends: bsae\n")],
        "child",
        &[
            "images/child.yaml:1:1",
            "extends unknown image `bsae`",
            "did you mean `base`?",
        ],
    );
}

#[test]
fn yaml_syntax_error_names_line() {
    let body = format!("{MINIMAL}packages: [curl\n");
    let dir = catalog(&[("img", &body)]);
    let out = imgbuild(dir.path(), &["show", "img"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("images/img.yaml:"), "{stderr}");
}

#[test]
fn private_key_in_a_file_is_refused() {
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\n      abc\n";
    assert_bad_minimal(
        &format!("files:\n  - path: /root/.ssh/id_ed25519\n    content: |\n      {key}"),
        &["images/img.yaml:10:5", "files[0].content", "private key"],
    );
}

#[test]
fn secret_looking_glance_property_is_refused() {
    assert_bad_minimal(
        "publish:\n  properties:\n    admin_password: x\n",
        &[
            "images/img.yaml:10:5",
            "publish.properties.admin_password",
            "secret",
        ],
    );
}

#[test]
fn several_problems_are_all_reported() {
    let body = "description: \"\"
os: {distro: arch, version: \"1\", codename: x}
arch: [amd64, arm64]
base:
  amd64:
    bootstrap:
      suite: bookworm
";
    assert_bad(
        &[("img", body)],
        "img",
        &["description: missing", "os.distro", "base.arm64: missing"],
    );
}

#[test]
fn unknown_image_suggests_a_name() {
    let dir = catalog(&[("desktop", MINIMAL)]);
    let out = imgbuild(dir.path(), &["show", "dekstop"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("did you mean `desktop`?"), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = catalog(&[("img", MINIMAL)]);
    assert_eq!(imgbuild(dir.path(), &["render"]).status.code(), Some(2));
    assert_eq!(
        imgbuild(dir.path(), &["render", "img", "--arch", "arm64"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(imgbuild(dir.path(), &["frobnicate"]).status.code(), Some(2));
    // A bad IMGBUILD_VM_CPUS (the vCPUs of each VM) stops the commands that boot VMs before
    // any work, naming the variable; a command that boots none does not read it.
    for (args, bad) in [
        (&["build", "img"][..], "0"),
        (&["smoke", "--image", "img", "img.qcow2"][..], "two"),
    ] {
        let o = TestCommand::new(args)
            .cwd(dir.path())
            .env("IMGBUILD_VM_CPUS", bad)
            .cache_dir(dir.path().join("cache"))
            .output();
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("IMGBUILD_VM_CPUS=\"{bad}\" is not a whole number")),
            "{args:?}: {err}"
        );
        assert!(!dir.path().join("cache").exists(), "{args:?}: work began");
    }
    let o = TestCommand::new(&["show", "img"])
        .cwd(dir.path())
        .env("IMGBUILD_VM_CPUS", "0")
        .output();
    assert!(o.status.success(), "{}", text(&o).1);
}

#[test]
fn a_null_removes_an_inherited_struct_entry() {
    // `base.arm64: null` in a child deletes the parent's arm64 base (a struct, not an Option).
    let parent = format!("{MINIMAL}  arm64:\n    bootstrap:\n      suite: bookworm\n")
        .replace("arch: [amd64]", "arch: [amd64, arm64]");
    let dir = catalog(&[
        ("parent", &parent),
        (
            "child",
            "extends: parent\narch: [amd64]\nbase:\n  arm64: null\n",
        ),
    ]);
    let o = imgbuild(dir.path(), &["--json", "show", "child"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["base"].get("arm64").is_none(), "{v}");
    assert!(v["base"]["amd64"]["bootstrap"].is_object());
    // A null where the type allows none is still an error, with the file and line.
    let dir = catalog(&[("bad", &format!("{MINIMAL}disk:\n  size: [1]\n"))]);
    let o = imgbuild(dir.path(), &["show", "bad"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("bad.yaml:"), "{}", text(&o).1);
}

#[test]
fn a_bad_prepull_profile_is_named_by_its_own_list_and_line() {
    let stack = "compose_stack:\n    project: ../compose/x\n    profiles: [ai]\n";
    assert_bad_minimal(
        &format!("features:\n  {stack}    prepull: [ai, Bad_Name]\n"),
        &[
            "images/img.yaml:12",
            "features.compose_stack.prepull[1]",
            "`Bad_Name` is not a profile name",
        ],
    );
}

#[test]
fn a_non_string_extends_names_file_and_line() {
    // Was a panic ("entered unreachable code"): the typed check reads `true` as a string.
    for value in ["true", "12", "[base]", "{a: b}"] {
        let body = format!("description: x\nextends: {value}\n");
        assert_bad(
            &[("img", &body)],
            "img",
            &["images/img.yaml:2:1", "extends"],
        );
    }
}
