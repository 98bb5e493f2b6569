//! The crate's modules in stage order: a module may use modules of its own rank or below,
//! never one above it (a stage never reaches back into a later one, a pure renderer never
//! into the effects that use it). Read from the sources; comments are ignored.

use std::collections::BTreeMap;
use std::path::Path;

/// Crate modules by rank. Items at the crate root (`hex`, `IoError`, `random_bytes`) are 0.
const RANKS: &[(&str, u32)] = &[
    // Leaves: no knowledge of images.
    ("hex", 0),
    ("percent_encode", 0),
    ("IoError", 0),
    ("random_bytes", 0),
    ("uuid_v4", 0),
    ("exec", 0),
    ("protocol", 0),
    ("progress", 0),
    ("http", 0),
    ("yaml", 0),
    ("openpgp", 0),
    ("registry", 0),
    // What an image is: its definition, and what each feature in it means (the features'
    // settings are part of the definition's model, so the two share a rank).
    ("definition", 1),
    ("features", 1),
    // A lab of several VMs of an image (a description, like a definition).
    ("lab", 1),
    ("host", 2),
    // Pure rendering, then the validators of what was rendered.
    ("render", 3),
    ("check", 4),
    // Effects the pipeline is made of.
    ("qemu", 5),
    ("vnc", 5),
    ("rdp", 5),
    ("digest", 5),
    ("cache", 5),
    // The remote cache: object storage over http, no knowledge of images.
    ("remote", 5),
    ("bootstrap", 6),
    ("base", 6),
    ("pipeline", 7),
    // What comes after dist/.
    ("glance", 8),
    ("doctor", 8),
    // The operations behind the commands, and their error with its exit code.
    ("error", 9),
    ("Error", 9),
    ("commands", 9),
];

/// The pipeline's own stages, in order (mod.rs orchestrates them all). `error` is the
/// pipeline's error, which names each stage's own error type; every stage may use it, and it
/// is exempt.
const STAGES: &[(&str, u32)] = &[
    ("error", 0),
    ("version", 0),
    ("provision", 1),
    ("compact", 2),
    ("smoke", 3),
    ("bom", 4),
    ("manifest", 4),
    ("dist", 5),
    ("schedule", 6),
];

fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn names_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| !n.is_empty())
        .collect()
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn no_module_uses_one_later_in_the_stage_order() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let ranks: BTreeMap<&str, u32> = RANKS.iter().copied().collect();
    let stages: BTreeMap<&str, u32> = STAGES.iter().copied().collect();
    let mut problems = Vec::new();
    let mut unranked = Vec::new();
    for f in rust_files(&src) {
        let rel = f
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "main.rs" || rel == "lib.rs" || rel.starts_with("cli/") {
            continue;
        }
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let Some(&own) = ranks.get(top) else {
            unranked.push(rel.clone());
            continue;
        };
        let text = code(&std::fs::read_to_string(&f).unwrap());
        for used in names_after(&text, "crate::") {
            match ranks.get(used) {
                Some(&r) if r > own => problems.push(format!("{rel} uses crate::{used}")),
                Some(_) => {}
                None => unranked.push(format!("{rel}: crate::{used}")),
            }
        }
        // Inside the pipeline: a stage uses only stages before it.
        if let Some(inner) = rel.strip_prefix("pipeline/") {
            let stage = inner.split('/').next().unwrap().trim_end_matches(".rs");
            if stage == "mod" || stage == "error" {
                continue;
            }
            let own = stages[stage];
            let nested = inner.contains('/') && !inner.ends_with("/mod.rs");
            let mut used = names_after(&text, "crate::pipeline::");
            if !nested {
                used.extend(names_after(&text, "super::"));
            }
            for u in used {
                if let Some(&r) = stages.get(u) {
                    if r > own {
                        problems.push(format!("{rel} (stage {stage}) uses {u}, a later stage"));
                    }
                }
            }
        }
    }
    assert!(
        unranked.is_empty(),
        "modules without a rank here: {unranked:?}"
    );
    assert!(problems.is_empty(), "upward uses:\n{}", problems.join("\n"));
}
