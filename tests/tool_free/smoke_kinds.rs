//! The smoke check kinds on both sides: imgbuild's `CheckKind` and the table the guest runner
//! (cloud-init/guest/smoke.py) dispatches from must name the same kinds. Tool-free: the
//! runner's `KINDS = {...}` table is read out of its source.

use imgbuild::definition::CheckKind;

fn runner_kinds() -> Vec<String> {
    let src = include_str!("../../cloud-init/guest/smoke.py");
    let start = src
        .find("\nKINDS = {")
        .expect("smoke.py has a `KINDS = {` table");
    let body = &src[start + "\nKINDS = {".len()..];
    let body = &body[..body.find("\n}").expect("the table ends with `}`")];
    body.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

#[test]
fn the_runner_dispatches_every_check_kind_and_no_other() {
    let mut runner = runner_kinds();
    runner.sort();
    let mut ours: Vec<String> = CheckKind::NAMES.iter().map(|s| s.to_string()).collect();
    ours.sort();
    assert_eq!(
        runner, ours,
        "cloud-init/guest/smoke.py's KINDS table and CheckKind differ"
    );
}

#[test]
fn the_smoke_checks_of_a_desktop_image_come_from_imgbuild_its_features_and_its_definition() {
    let images = concat!(env!("CARGO_MANIFEST_DIR"), "/images");
    let r = imgbuild::definition::Catalog::new(images)
        .load_checked("desktop-ai")
        .expect("desktop-ai loads");
    let launch = imgbuild::pipeline::smoke::SmokeLaunch::for_image(&r).expect("a desktop image");
    let checks = imgbuild::pipeline::smoke::checks(&r, Some(&launch));
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    let n = imgbuild::pipeline::smoke::BUILTIN_CHECKS.len();
    assert_eq!(names[..n], imgbuild::pipeline::smoke::BUILTIN_CHECKS);
    assert_eq!(
        names[n..n + 6],
        [
            "nvidia-driver-installed",
            "novnc-serves-client",
            "launch-user",
            "desktop-session",
            "desktop-clean",
            "rdp-login"
        ]
    );
    assert_eq!(checks[n + 2]["groups"], serde_json::json!(["docker"]));
    assert!(
        checks[n + 2]["password"]
            .as_str()
            .is_some_and(|p| p.len() >= 6),
        "the launch user's check knows the desktop password: {}",
        checks[n + 2]
    );
    // The stack's start page is checked for the launch user (desktop-ai has no baked-in
    // profile, so no health wait).
    assert!(names.contains(&"stack-start-page"), "{names:?}");
    assert!(!names.contains(&"stack-healthy"), "{names:?}");
    for c in &checks {
        let kind = c["kind"].as_str().expect("every check has a kind");
        assert!(CheckKind::NAMES.contains(&kind), "{c}");
        assert!(
            c.get(kind).is_some(),
            "a {kind} check carries its `{kind}`: {c}"
        );
    }
    assert_eq!(
        checks.len(),
        n + 6
            + usize::from(names.contains(&"stack-ports-loopback-only"))
            + usize::from(names.contains(&"stack-start-page"))
            + r.definition.smoke.checks.len()
            + imgbuild::pipeline::smoke::FINAL_CHECKS.len()
    );
}
