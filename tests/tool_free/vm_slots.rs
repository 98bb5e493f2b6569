//! Every end-to-end test holds one of the run's VM slots while it builds or boots
//! (tests/e2e/main.rs `one_vm`/`all_vms`): a test without one runs its VMs beside the slots'
//! and the run is back to more TCG guests than cores (the desktop twin's test had none in the
//! first run with slots, 2026-11-30 17:47). A test that starts no VM says why in a
//! `// No VM slot: …` comment. Read from the sources.

use crate::common::repo;

/// The `#[test]` functions of an e2e source and their bodies (to the first closing brace in
/// column 0).
fn tests_of(src: &str) -> Vec<(String, String)> {
    src.split("#[test]")
        .skip(1)
        .map(|part| {
            let name = part
                .split("fn ")
                .nth(1)
                .and_then(|s| s.split('(').next())
                .unwrap_or("?")
                .to_string();
            let whole = part.split("\n}\n").next().unwrap_or(part);
            // Without the signature: a test is not its own helper.
            let body = whole.split_once('{').map_or(whole, |(_, b)| b).to_string();
            (name, body)
        })
        .collect()
}

/// The functions of `src` (not tests) that take a slot themselves, e.g. guards_e2e's `build`.
fn helpers_with_a_slot(src: &str) -> Vec<String> {
    let src = format!("\n{src}");
    let pieces: Vec<&str> = src.split("\nfn ").collect();
    pieces
        .windows(2)
        .filter(|w| !w[0].trim_end().ends_with("#[test]"))
        .map(|w| w[1])
        .filter(|f| {
            let body = f.split("\n}\n").next().unwrap_or(f);
            body.contains("crate::one_vm()") || body.contains("crate::all_vms()")
        })
        .filter_map(|f| f.split('(').next().map(str::to_string))
        .collect()
}

fn takes_a_slot(body: &str, helpers: &[String]) -> bool {
    body.contains("crate::one_vm()")
        || body.contains("crate::all_vms()")
        || body.contains("// No VM slot: ")
        || helpers.iter().any(|h| body.contains(&format!("{h}(")))
}

#[test]
fn every_e2e_test_holds_a_vm_slot_or_says_why_not() {
    let dir = repo().join("tests/e2e");
    let mut missing = Vec::new();
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.file_name().unwrap() == "main.rs" {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        let helpers = helpers_with_a_slot(&src);
        for (name, body) in tests_of(&src) {
            seen += 1;
            if !takes_a_slot(&body, &helpers) {
                missing.push(format!(
                    "{}: {name}",
                    path.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        seen > 15,
        "only {seen} e2e tests found in {}",
        dir.display()
    );
    assert!(
        missing.is_empty(),
        "e2e tests without a VM slot: {missing:#?}"
    );
}

#[test]
fn the_rule_sees_a_test_without_a_slot_and_one_through_a_helper() {
    let src = "fn build(i: &str) {\n    let _vm = crate::one_vm();\n}\n\n#[test]\nfn a() {\n    build(\"x\");\n}\n\n#[test]\nfn b() {\n    let _vm = ();\n    run(&[\"build\"]);\n}\n\n#[test]\nfn c() {\n    // No VM slot: refused before any work\n}\n";
    let helpers = helpers_with_a_slot(src);
    assert_eq!(helpers, ["build"]);
    let verdicts: Vec<(String, bool)> = tests_of(src)
        .into_iter()
        .map(|(n, b)| {
            let ok = takes_a_slot(&b, &helpers);
            (n, ok)
        })
        .collect();
    assert_eq!(
        verdicts,
        [("a".into(), true), ("b".into(), false), ("c".into(), true)]
    );
}
