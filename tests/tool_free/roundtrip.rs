//! Any string from a definition arrives unchanged in the rendered files, as their real
//! consumers read them: user-data through PyYAML (cloud-init's loader), HCL through Packer
//! itself (`packer inspect`), compose through YAML plus compose's `$$` interpolation rule.

use crate::common;
use common::*;
use serde_json::Value;
use std::process::Command;

const NASTY: &[&str] = &[
    "double \" quote",
    "single ' quote",
    r"back\slash \\ \n \t literal",
    "${HOME} and $${x} and $x and $",
    "%{ if true }x%{ endif } %%{",
    "{{ .HTTPIP }} {{user `x`}} {{",
    "line1\nline2\n",
    "trailing newlines\n\n",
    "  leading and trailing spaces  ",
    "tab\there",
    "unicode: ü ß 日本語 🚀",
    "- leading dash",
    "* star",
    "&anchor",
    "!tag",
    "# hash",
    "yes",
    "no",
    "on",
    "~",
    "null",
    "0o17",
    "012",
    "1e3",
    "0x1F",
    "2024-01-01",
    "key: value",
    "[not, a, list]",
    "{not: map}",
    "@at",
    "|",
    ">",
    "? q",
    "",
];

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A definition carrying every NASTY string in files, scripts, a user's gecos and the
/// compose environment, plus all of them joined in the description.
fn definition() -> String {
    let mut d = MINIMAL.replace("description: test image\n", "");
    let joined: String = NASTY.join("|");
    d.push_str(&format!("description: {}\n", yaml_str(&joined)));
    d.push_str("files:\n");
    for (i, s) in NASTY.iter().enumerate() {
        d.push_str(&format!(
            "  - path: /etc/rt/{i}\n    content: {}\n",
            yaml_str(s)
        ));
    }
    d.push_str("scripts:\n");
    for (i, s) in NASTY
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.trim().is_empty())
    {
        d.push_str(&format!("  - name: s{i}\n    run: {}\n", yaml_str(s)));
    }
    d.push_str(&format!(
        "users:\n  - name: rt\n    gecos: {}\n",
        yaml_str(&joined)
    ));
    d.push_str("features:\n  docker: {source: distro}\n  compose_stack:\n    project: ../compose/rt\n    profiles: [ai]\n    environment:\n      app:\n");
    for (i, s) in NASTY.iter().enumerate() {
        d.push_str(&format!("        VAR_{i}: {}\n", yaml_str(s)));
    }
    d
}

fn rendered() -> tempfile::TempDir {
    let dir = catalog(&[("rt", &definition())]);
    std::fs::create_dir_all(dir.path().join("compose/rt")).unwrap();
    std::fs::write(
        dir.path().join("compose/rt/compose.yaml"),
        "services:\n  app:\n    image: busybox:1.36\n    profiles: [ai]\n    ports: [\"127.0.0.1:8080:80\"]\n    mem_limit: 64m\n    healthcheck: {test: [CMD, \"true\"]}\n",
    )
    .unwrap();
    let out = imgbuild(
        dir.path(),
        &["render", "rt", "-o", "out", "--packer-version", "1.6.6"],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    dir
}

#[test]
fn user_data_round_trips_through_pyyaml() {
    let dir = rendered();
    let ud = python_yaml(&dir.path().join("out/amd64/seed/user-data"));
    let files = ud["write_files"].as_array().unwrap();
    let content = |path: &str| -> String {
        files
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("{path} missing"))["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (i, s) in NASTY.iter().enumerate() {
        assert_eq!(content(&format!("/etc/rt/{i}")), *s, "file {i}");
        if !s.trim().is_empty() {
            assert_eq!(
                content(&format!(
                    "/usr/local/lib/imgbuild/steps/50-{:02}-s{i}.sh",
                    i + 1
                )),
                *s,
                "script {i}"
            );
        }
    }
    let user = &ud["users"][0];
    assert_eq!(user["gecos"], Value::String(NASTY.join("|")));
    // The first line is what makes it cloud-config.
    let raw = std::fs::read_to_string(dir.path().join("out/amd64/seed/user-data")).unwrap();
    assert!(raw.starts_with("#cloud-config\n"));
}

#[test]
fn hcl_round_trips_through_packer() {
    let dir = rendered();
    let packer_dir = dir.path().join("out/amd64/packer");
    let out = Command::new("packer")
        .args(["inspect", "."])
        .current_dir(&packer_dir)
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .expect("packer is installed (make host-tools)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "packer inspect failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("var.image_description: "))
        .unwrap_or_else(|| panic!("no image_description in:\n{stdout}"));
    // Packer prints Go-quoted strings; for these characters that is valid JSON.
    let seen: String = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(seen, NASTY.join("|"));

    // And every single string through hcl-rs's parser, as `packer validate` would read it.
    let hcl_text = std::fs::read_to_string(packer_dir.join("build.pkr.hcl")).unwrap();
    let v: Value = hcl::from_str(&hcl_text).unwrap();
    assert_eq!(
        v["variable"]["image_description"]["default"],
        Value::String(NASTY.join("|"))
    );
}

#[test]
fn compose_round_trips_with_interpolation() {
    let dir = rendered();
    let doc = python_yaml(&dir.path().join("out/amd64/compose/rt/compose.yaml"));
    let env = &doc["services"]["app"]["environment"];
    for (i, s) in NASTY.iter().enumerate() {
        let raw = env[format!("VAR_{i}")]
            .as_str()
            .unwrap_or_else(|| panic!("VAR_{i} missing"));
        // Compose replaces `$$` with `$` and interpolates any other `$`: an escaped value
        // has no lone `$` left.
        let unescaped = raw.replace("$$", "\u{0}").contains('$');
        assert!(!unescaped, "VAR_{i} has an unescaped $: {raw:?}");
        assert_eq!(raw.replace("$$", "$"), *s, "VAR_{i}");
    }
    // The port stayed on loopback.
    assert_eq!(doc["services"]["app"]["ports"][0], "127.0.0.1:8080:80");
}

#[test]
fn nasty_definition_still_passes_the_real_validators() {
    let dir = rendered();
    let out = imgbuild(dir.path(), &["validate", "rt", "--strict"]);
    assert!(out.status.success(), "{:?}", text(&out));
}
