//! A YAML emitter for rendered files that YAML 1.1 readers (cloud-init's PyYAML, compose's
//! loader) read back exactly. serde_norway (like serde_yaml) only avoids YAML 1.2 ambiguity and
//! writes `yes`, `on` or `2024-01-01` bare, which PyYAML turns into booleans and dates; no
//! maintained crate offers 1.1-safe output, so this small emitter decides quoting itself:
//! a string is plain only when it is unambiguous under both YAML versions, multi-line text
//! becomes a literal block with the exact chomping, everything else is double-quoted with
//! JSON escapes (a JSON string is a valid YAML double-quoted scalar).

use serde_json::Value;

/// Serializes a JSON value as block-style YAML ending in a newline.
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => emit_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => emit_seq(a, 0, &mut out),
        _ => {
            out.push_str(&scalar(v, 0));
            out.push('\n');
        }
    }
    out
}

/// Words YAML 1.1 reads as booleans or null.
const RESERVED: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
];

/// Safe as a plain scalar in YAML 1.1 and 1.2: starts with a letter, `/` or `_`, and holds
/// only characters that never start or end a YAML construct.
fn plain_ok(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '/' || first == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./+=@,()".contains(c))
        && !RESERVED.contains(&s)
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// A literal block (`|`) keeps every character when the text is printable, has no line of
/// only blanks, and does not start with a blank (which would need an indentation indicator).
fn literal_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\t', '\n'])
        && !s
            .chars()
            .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{feff}')
        && s.trim_end_matches('\n')
            .split('\n')
            .all(|l| l.is_empty() || !l.trim().is_empty())
        && !s
            .trim_end_matches('\n')
            .split('\n')
            .any(|l| l.starts_with('\t'))
}

fn literal(s: &str, indent: usize) -> String {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    let chomp = match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    };
    let pad = " ".repeat(indent + 2);
    let mut out = String::from(chomp);
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if plain_ok(s) => s.clone(),
        Value::String(s) if literal_ok(s) => literal(s, indent),
        Value::String(s) => quoted(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn key(k: &str) -> String {
    if plain_ok(k) {
        k.to_string()
    } else {
        quoted(k)
    }
}

fn emit_map(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (k, v) in m {
        out.push_str(&pad);
        out.push_str(&key(k));
        out.push(':');
        emit_value(v, indent, out);
    }
}

fn emit_value(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit_map(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit_seq(a, indent + 2, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&scalar(v, indent));
            out.push('\n');
        }
    }
}

fn emit_seq(a: &[Value], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for item in a {
        out.push_str(&pad);
        out.push('-');
        if is_block(item) {
            // The item's block starts on the dash's line, indented under it.
            let mut inner = String::new();
            match item {
                Value::Object(m) => emit_map(m, indent + 2, &mut inner),
                Value::Array(x) => emit_seq(x, indent + 2, &mut inner),
                _ => unreachable!(),
            }
            out.push(' ');
            out.push_str(&inner[indent + 2..]);
        } else {
            out.push(' ');
            out.push_str(&scalar(item, indent));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ambiguous_scalars_are_quoted() {
        for s in [
            "yes",
            "on",
            "No",
            "~",
            "null",
            "2024-01-01",
            "012",
            "1e3",
            "0x1F",
            "- x",
            "#x",
            "a: b",
            "",
            " x",
        ] {
            let out = to_string(&json!({ "k": s }));
            assert!(out.starts_with("k: \""), "{s:?} → {out}");
        }
        assert_eq!(to_string(&json!({"k": "docker-ce"})), "k: docker-ce\n");
        assert_eq!(to_string(&json!({"k": "/usr/bin/x"})), "k: /usr/bin/x\n");
    }

    #[test]
    fn multi_line_text_is_a_literal_block_with_exact_chomping() {
        assert_eq!(to_string(&json!({"k": "a\nb"})), "k: |-\n  a\n  b\n");
        assert_eq!(to_string(&json!({"k": "a\n\nb\n"})), "k: |\n  a\n\n  b\n");
        assert_eq!(to_string(&json!({"k": "a\n\n"})), "k: |+\n  a\n\n");
    }

    #[test]
    fn nested_structures() {
        let v = json!({"a": [{"x": 1, "z": [true, "s"]}, "t", []], "b": {}, "c": {"d": null}});
        assert_eq!(
            to_string(&v),
            "a:\n  - x: 1\n    z:\n      - true\n      - s\n  - t\n  - []\nb: {}\nc:\n  d: null\n"
        );
    }
}
