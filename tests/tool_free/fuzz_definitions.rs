//! Bad input never panics (issue 15): every catalog definition in images/, mutated (types
//! swapped: scalars to lists, maps, booleans, null, numbers, odd strings; keys deleted or
//! duplicated; values nested wrongly or moved; lines deleted, repeated, re-indented or cut),
//! is either accepted or refused with a message naming the file and a line. The library runs
//! in-process (load + semantic checks for every image of the mutated catalog, `show`'s
//! serialisation and a render written to a temporary folder for the mutated image);
//! the binary's `show`, `render` and `validate` run for a sample and must exit 0 or 2, never
//! 101 (a panic) or by a signal.
//!
//! Deterministic: the seed is fixed (IMGBUILD_FUZZ_SEED changes it). IMGBUILD_FUZZ_CASES
//! random cases per definition (default 150), plus a sweep that swaps the type of every
//! top-level key; IMGBUILD_FUZZ_BINARY_EVERY: one case in that many also runs the binary
//! (default 40). A longer run: README, "Tests".

use crate::common::{bin, repo, text};
use imgbuild::definition::Catalog;
use imgbuild::render::{self, packer::PackerTarget, RenderOptions};
use serde_norway::{Mapping, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;

/// xorshift64*: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Odd values of every kind, for a node of any kind.
fn odd_value(rng: &mut Rng, near: &Value) -> Value {
    let s = |x: &str| Value::String(x.into());
    let n = |x: i64| Value::Number(x.into());
    let choices: Vec<Value> = vec![
        Value::Null,
        Value::Bool(true),
        Value::Bool(false),
        n(0),
        n(-1),
        n(i64::MAX),
        Value::Number(u64::MAX.into()),
        Value::Number(1.5e308.into()),
        Value::Number(f64::NAN.into()),
        s(""),
        s(" "),
        s("x\ny\n"),
        s("ü☃\u{202e}"),
        s("\0"),
        s("${HOME}$$'\"`\\"),
        s("../../../etc/passwd"),
        s("/"),
        s("-x"),
        s(&"a".repeat(5000)),
        s("sha256:"),
        s("12"),
        s("true"),
        Value::Sequence(vec![]),
        Value::Sequence(vec![near.clone()]),
        Value::Sequence(vec![Value::Sequence(vec![near.clone()])]),
        Value::Sequence(vec![Value::Null, n(1), s("x")]),
        Value::Mapping(Mapping::new()),
        Value::Mapping([(s("x"), near.clone())].into_iter().collect()),
        Value::Mapping([(n(1), s("y"))].into_iter().collect()),
        Value::Mapping([(s(""), Value::Null)].into_iter().collect()),
    ];
    rng.pick(&choices).clone()
}

/// The paths (keys and indices) of every node of `v`.
fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Mapping(m) => {
            for (k, x) in m {
                at.push(k.clone());
                out.push(at.clone());
                paths(x, at, out);
                at.pop();
            }
        }
        Value::Sequence(s) => {
            for (i, x) in s.iter().enumerate() {
                at.push(Value::Number(i.into()));
                out.push(at.clone());
                paths(x, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// The container holding the last step of `path`.
fn parent_mut<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let mut cur = v;
    for step in &path[..path.len() - 1] {
        cur = match (cur, step) {
            (Value::Mapping(m), k) => m.get_mut(k)?,
            (Value::Sequence(s), Value::Number(i)) => s.get_mut(i.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One change to the tree: a swap, a delete, a duplicate, a wrong nesting or a move.
fn mutate_tree(rng: &mut Rng, doc: &mut Value) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    if all.is_empty() {
        *doc = odd_value(rng, &Value::Null);
        return;
    }
    let path = rng.pick(&all).clone();
    let other = {
        let p = rng.pick(&all).clone();
        let mut cur = &*doc;
        for step in &p {
            cur = match (cur, step) {
                (Value::Mapping(m), k) => &m[k],
                (Value::Sequence(s), Value::Number(i)) => &s[i.as_u64().unwrap() as usize],
                _ => break,
            };
        }
        cur.clone()
    };
    let how = rng.below(6);
    let Some(parent) = parent_mut(doc, &path) else {
        return;
    };
    let last = path.last().unwrap();
    match parent {
        Value::Mapping(m) => {
            let old = m.get(last).cloned().unwrap_or(Value::Null);
            match how {
                0 => {
                    m.remove(last);
                }
                1 => {
                    // The same value under a near-miss key (a typo'd duplicate).
                    let k = format!("{}_", last.as_str().unwrap_or("k"));
                    m.insert(Value::String(k), old);
                }
                2 => {
                    m.insert(last.clone(), Value::Sequence(vec![old]));
                }
                3 => {
                    m.insert(last.clone(), other);
                }
                _ => {
                    m.insert(last.clone(), odd_value(rng, &old));
                }
            }
        }
        Value::Sequence(s) => {
            let i = last.as_u64().unwrap() as usize;
            match how {
                0 => {
                    s.remove(i);
                }
                1 => {
                    let x = s[i].clone();
                    s.insert(i, x);
                }
                2 => {
                    s[i] = Value::Mapping(
                        [(Value::String("x".into()), s[i].clone())]
                            .into_iter()
                            .collect(),
                    )
                }
                3 => s[i] = other,
                _ => s[i] = odd_value(rng, &s[i].clone()),
            }
        }
        _ => {}
    }
}

/// One change to the text: a line deleted, repeated (duplicate keys), re-indented, cut, or
/// YAML punctuation added.
fn mutate_text(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return "{".into();
    }
    let i = rng.below(lines.len());
    match rng.below(6) {
        0 => {
            lines.remove(i);
        }
        1 => {
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        2 => lines[i] = format!("  {}", lines[i]),
        3 => {
            let l = &lines[i];
            lines[i] = l.trim_start().to_string();
        }
        4 => {
            let cut = rng.below(lines[i].len() + 1);
            let l = &lines[i];
            lines[i] = l.get(..cut).unwrap_or(l).to_string();
        }
        _ => {
            let odd = *rng.pick(&[
                "\t",
                ": ",
                "- ",
                "&a ",
                "*a",
                "!!binary ",
                "{",
                "}",
                "[",
                "? ",
                "|",
                "'",
                "\"",
                "<<: *x",
                "%YAML 1.2",
                "---",
                "#",
            ]);
            let l = &lines[i];
            let at = rng.below(l.len() + 1);
            let at = (0..=at).rev().find(|&j| l.is_char_boundary(j)).unwrap_or(0);
            lines[i] = format!("{}{odd}{}", &l[..at], &l[at..]);
        }
    }
    lines.join("\n") + "\n"
}

/// `msg` names `file` (`NAME.yaml`) followed by `:LINE`.
fn names_file_and_line(msg: &str, file: &str) -> bool {
    msg.match_indices(file).any(|(i, _)| {
        let rest = &msg[i + file.len()..];
        rest.starts_with(':') && rest[1..].starts_with(|c: char| c.is_ascii_digit())
    })
}

/// The library on the mutated catalog in `dir`: every image loads or fails with a message
/// naming a file and line; the mutated one is shown and rendered when it loads.
fn in_process(dir: &Path, mutated: &str, out: &Path) -> Result<(), String> {
    let catalog = Catalog::new(dir.join("images"));
    let names = catalog.names().map_err(|e| e.to_string())?;
    for name in &names {
        let loaded = catch_unwind(AssertUnwindSafe(|| catalog.load_checked(name)))
            .map_err(|p| format!("{name}: load panicked: {}", panic_text(&p)))?;
        let r = match loaded {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains(".yaml:") || !e.diagnostics().iter().all(|d| d.line > 0) {
                    return Err(format!("{name}: error without file and line: {msg}"));
                }
                continue;
            }
        };
        if name != mutated || r.definition.is_abstract {
            continue;
        }
        catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            // What `show` prints.
            let json = serde_json::to_value(&r.definition).map_err(|e| e.to_string())?;
            imgbuild::yaml::to_string(&json);
            for arch in r.definition.arch.clone() {
                for packer in [PackerTarget::Modern, PackerTarget::Legacy] {
                    match render::render(&r, arch, RenderOptions { packer }) {
                        Ok(rendered) => rendered
                            .write_to(&out.join(arch.as_str()))
                            .map_err(|e| format!("writing: {e}"))?,
                        Err(e @ render::RenderError::Definition(_)) => {
                            let msg = e.to_string();
                            if !msg.contains(".yaml:") {
                                return Err(format!("render error without file: {msg}"));
                            }
                        }
                        Err(e) => return Err(format!("render failed (exit 1): {e}")),
                    }
                }
            }
            Ok(())
        }))
        .map_err(|p| format!("{name}: show/render panicked: {}", panic_text(&p)))?
        .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// The binary: `show`, `render` and `validate` (validators off) exit 0 or 2, and 2 with the
/// file and a line (or the usage error that an abstract image is not rendered).
fn binary(dir: &Path, name: &str) -> Result<(), String> {
    let out = dir.join("rendered");
    for args in [
        vec!["show", name],
        vec!["render", name, "-o", out.to_str().unwrap()],
        vec!["validate", name],
    ] {
        let o = Command::new(bin())
            .arg("--images-dir")
            .arg(dir.join("images"))
            .args(&args)
            .current_dir(dir)
            .env("IMGBUILD_VALIDATORS", "none")
            .env_remove("IMGBUILD_IMAGES_DIR")
            .output()
            .unwrap();
        let (_, stderr) = text(&o);
        match o.status.code() {
            Some(0) => {}
            Some(2) if names_file_and_line(&stderr, ".yaml") || stderr.contains("is abstract") => {
                // validate reports a definition error of any image; the mutated one or a child.
            }
            code => {
                return Err(format!(
                    "{args:?} exited {code:?} (2 wants a file and line):\n{stderr}"
                ))
            }
        }
    }
    Ok(())
}

/// A copy of images/ (the catalog's own files and the folders they point into, through the
/// same relative paths) with `name`'s file replaced by `body`.
fn catalog_with(root: &Path, name: &str, body: &str) {
    let images = root.join("images");
    if !images.exists() {
        std::fs::create_dir_all(&images).unwrap();
        for e in std::fs::read_dir(repo().join("images")).unwrap().flatten() {
            std::fs::copy(e.path(), images.join(e.file_name())).unwrap();
        }
        // Definitions name ../compose/... and ../cloud-init/...
        for d in ["compose", "cloud-init", "schemas"] {
            let from = repo().join(d);
            if from.exists() {
                std::os::unix::fs::symlink(&from, root.join(d)).unwrap();
            }
        }
    }
    for e in std::fs::read_dir(repo().join("images")).unwrap().flatten() {
        std::fs::copy(e.path(), images.join(e.file_name())).unwrap();
    }
    std::fs::write(images.join(format!("{name}.yaml")), body).unwrap();
}

/// Every case of one definition: (label, text).
fn cases(name: &str, original: &str, rng: &mut Rng, random: u64) -> Vec<(String, String)> {
    let doc: Value = serde_norway::from_str(original).unwrap();
    let mut out = Vec::new();
    // The sweep: every top-level key, removed and swapped to each kind.
    if let Value::Mapping(m) = &doc {
        let kinds: Vec<Value> = vec![
            Value::Null,
            Value::Bool(true),
            Value::Number(7.into()),
            Value::String("x".into()),
            Value::Sequence(vec![Value::String("x".into())]),
            Value::Mapping(
                [(Value::String("x".into()), Value::Bool(false))]
                    .into_iter()
                    .collect(),
            ),
        ];
        for k in m.keys() {
            let mut d = doc.clone();
            d.as_mapping_mut().unwrap().remove(k);
            out.push((
                format!("{name}: without {k:?}"),
                serde_norway::to_string(&d).unwrap(),
            ));
            for v in &kinds {
                let mut d = doc.clone();
                d.as_mapping_mut().unwrap().insert(k.clone(), v.clone());
                out.push((
                    format!("{name}: {k:?} = {v:?}"),
                    serde_norway::to_string(&d).unwrap(),
                ));
            }
        }
    }
    for i in 0..random {
        let text = if rng.below(4) == 0 {
            let mut t = original.to_string();
            for _ in 0..=rng.below(2) {
                t = mutate_text(rng, &t);
            }
            t
        } else {
            let mut d = doc.clone();
            for _ in 0..=rng.below(3) {
                mutate_tree(rng, &mut d);
            }
            serde_norway::to_string(&d).unwrap_or_else(|_| "{".into())
        };
        out.push((format!("{name}: random case {i}"), text));
    }
    out
}

#[test]
fn mutated_catalog_definitions_never_panic_and_errors_name_file_and_line() {
    let seed = env_num("IMGBUILD_FUZZ_SEED", 0x1b9_b01d);
    let random = env_num("IMGBUILD_FUZZ_CASES", 150);
    let every = env_num("IMGBUILD_FUZZ_BINARY_EVERY", 40).max(1) as usize;
    let mut rng = Rng(seed | 1);
    let mut names: Vec<String> = Catalog::new(repo().join("images")).names().unwrap();
    names.sort();
    let mut failures = Vec::new();
    let mut count = 0usize;
    for name in &names {
        let original =
            std::fs::read_to_string(repo().join("images").join(format!("{name}.yaml"))).unwrap();
        let root = tempfile::tempdir().unwrap();
        for (label, body) in cases(name, &original, &mut rng, random) {
            count += 1;
            catalog_with(root.path(), name, &body);
            let out = root.path().join("out");
            let _ = std::fs::remove_dir_all(&out);
            if let Err(e) = in_process(root.path(), name, &out) {
                failures.push((e.clone(), format!("{label}: {e}\n--- {name}.yaml:\n{body}")));
                continue;
            }
            if count.is_multiple_of(every) {
                if let Err(e) = binary(root.path(), name) {
                    failures.push((
                        e.clone(),
                        format!("{label} (binary): {e}\n--- {name}.yaml:\n{body}"),
                    ));
                }
            }
        }
        // The binary on the unchanged definition too: exit 0.
        catalog_with(root.path(), name, &original);
        if let Err(e) = binary(root.path(), name) {
            failures.push((e.clone(), format!("{name} unchanged (binary): {e}")));
        }
    }
    // One example of each kind of failure (the error's first line).
    let mut kinds = std::collections::BTreeMap::new();
    for (e, f) in &failures {
        let kind = e.lines().next().unwrap_or_default().to_string();
        kinds.entry(kind).or_insert(f.clone());
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed (seed {seed:#x}), {} kinds; one of each:\n\n{}",
        failures.len(),
        kinds.len(),
        kinds
            .values()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}
