//! Reading definitions from the images folder, following `extends`, and merging.
//!
//! Merge rules (a child over its parent):
//! - maps merge key by key, recursively; the child's value wins for scalars;
//! - a `null` in the child removes the key (back to the default; turns a feature off);
//! - lists replace, except the additive lists in [`APPEND_LISTS`], which append the child's
//!   items after the parent's; an item with the same key (`name`, `path`) or the same
//!   scalar value replaces the parent's item in place instead of repeating it.

use super::diagnostic::{did_you_mean, from_serde_message, DefinitionError, Diagnostic};
use super::model::Definition;
use super::source_map::{parent_path, Pos, SourceMap};
use serde_norway::{Mapping, Value};
use std::path::{Path, PathBuf};

/// Lists that append on inherit, with the key that identifies an item (None: the value).
pub const APPEND_LISTS: &[(&str, Option<&str>)] = &[
    ("packages", None),
    ("files", Some("path")),
    ("scripts", Some("name")),
    ("users", Some("name")),
    ("smoke.checks", Some("name")),
    ("publish.tags", None),
    ("features.desktop.packages", None),
];

/// The images folder.
#[derive(Clone, Debug)]
pub struct Catalog {
    dir: PathBuf,
}

/// One file in an `extends` chain.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub path: PathBuf,
    pub map: SourceMap,
    value: Value,
}

/// A definition with its `extends` chain resolved.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub name: String,
    pub definition: Definition,
    /// Leaf first: the image's own file, then its parent, ...
    pub chain: Vec<SourceFile>,
}

/// A place in a definition file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub pos: Pos,
}

pub fn valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Catalog {
    pub fn new(dir: impl Into<PathBuf>) -> Catalog {
        Catalog { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names of all definitions (file stems of *.yaml), sorted.
    pub fn names(&self) -> Result<Vec<String>, DefinitionError> {
        let rd = std::fs::read_dir(&self.dir).map_err(crate::IoError::at(&self.dir))?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.yaml"))
    }

    /// Loads `name`, follows `extends`, merges and checks types. Semantic checks are
    /// [`super::validate::check`]'s.
    pub fn load(&self, name: &str) -> Result<Resolved, DefinitionError> {
        let path = self.path_of(name);
        if !valid_image_name(name) || !path.is_file() {
            let names = self.names()?;
            let help = did_you_mean(name, names.iter().map(String::as_str))
                .map(|h| format!(" ({h})"))
                .unwrap_or_else(|| format!(" (known: {})", names.join(", ")));
            return Err(DefinitionError::NotFound {
                name: name.into(),
                dir: self.dir.clone(),
                help,
            });
        }
        let mut chain: Vec<SourceFile> = Vec::new();
        let mut current = name.to_string();
        loop {
            let file = self.read_file(&current)?;
            let parent = match file.value.get("extends") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) => Some(p.clone()),
                // The typed check reads any scalar as a string (`extends: true` is "true"); an
                // image name is written as one, or quoted.
                Some(other) => {
                    let pos = file.map.get("extends").unwrap_or(Pos { line: 1, col: 1 });
                    let found = serde_norway::to_string(other).unwrap_or_default();
                    return Err(Diagnostic {
                        file: file.path.clone(),
                        line: pos.line,
                        col: pos.col,
                        field: "extends".into(),
                        message: format!("expected the name of an image, found `{}`", found.trim()),
                        help: Some(
                            "write the image's name, quoted if it looks like a number or a boolean"
                                .into(),
                        ),
                    }
                    .into());
                }
            };
            chain.push(file);
            let Some(parent) = parent else { break };
            let at = chain.last().expect("just pushed");
            let loc = |message: String, help: Option<String>| Diagnostic {
                file: at.path.clone(),
                line: at.map.get("extends").map_or(1, |p| p.line),
                col: at.map.get("extends").map_or(1, |p| p.col),
                field: "extends".into(),
                message,
                help,
            };
            if chain.iter().any(|f| f.name == parent) {
                let mut cycle: Vec<&str> = chain.iter().rev().map(|f| f.name.as_str()).collect();
                cycle.reverse();
                let pos = cycle.iter().position(|n| *n == parent).unwrap_or(0);
                let mut names: Vec<&str> = cycle[pos..].to_vec();
                names.push(&parent);
                return Err(loc(format!("extends cycle: {}", names.join(" -> ")), None).into());
            }
            if !valid_image_name(&parent) || !self.path_of(&parent).is_file() {
                let names = self.names()?;
                let help = did_you_mean(&parent, names.iter().map(String::as_str));
                return Err(loc(format!("extends unknown image `{parent}`"), help).into());
            }
            current = parent;
        }

        let mut merged = Value::Mapping(Mapping::new());
        for (i, file) in chain.iter().enumerate().rev() {
            let mut value = file.value.clone();
            if i > 0 {
                // `abstract` marks the file itself; an image extending a template is concrete.
                if let Value::Mapping(m) = &mut value {
                    m.remove("abstract");
                }
            }
            merge(&mut merged, &value, "");
        }
        if let Value::Mapping(m) = &mut merged {
            m.remove("extends");
        }
        let definition: Definition = serde_norway::from_value(merged).map_err(|e| {
            let (field, message, help) = from_serde_message(&e.to_string());
            Diagnostic {
                file: chain[0].path.clone(),
                line: 1,
                col: 1,
                field,
                message,
                help,
            }
        })?;
        Ok(Resolved {
            name: name.to_string(),
            definition,
            chain,
        })
    }

    fn read_file(&self, name: &str) -> Result<SourceFile, DefinitionError> {
        let path = self.path_of(name);
        let text = std::fs::read_to_string(&path).map_err(crate::IoError::at(&path))?;
        let diag = |pos: Option<(usize, usize)>, msg: String| {
            let (field, message, help) = from_serde_message(&msg);
            let (line, col) = pos.unwrap_or((1, 1));
            Diagnostic {
                file: path.clone(),
                line,
                col,
                field,
                message,
                help,
            }
        };
        // Types and unknown keys, with this file's own line numbers.
        if !text.trim().is_empty() {
            if let Err(e) = serde_norway::from_str::<Definition>(&text) {
                // A `null` that removes an inherited entry is valid anywhere in a file: accept
                // the file if it type-checks with those entries taken out.
                let only_nulls = e.to_string().contains("invalid type: unit value")
                    && serde_norway::from_str::<Value>(&text)
                        .ok()
                        .map(|mut v| {
                            strip_nulls(&mut v);
                            serde_norway::from_value::<Definition>(v).is_ok()
                        })
                        .unwrap_or(false);
                if !only_nulls {
                    return Err(
                        diag(e.location().map(|l| (l.line(), l.column())), e.to_string()).into(),
                    );
                }
            }
        }
        let value: Value = if text.trim().is_empty() {
            Value::Mapping(Mapping::new())
        } else {
            serde_norway::from_str(&text).map_err(|e| diag(None, e.to_string()))?
        };
        if !value.is_mapping() {
            return Err(diag(
                Some((1, 1)),
                "a definition is a YAML map of settings".into(),
            )
            .into());
        }
        Ok(SourceFile {
            name: name.into(),
            path,
            map: SourceMap::build(&text),
            value,
        })
    }
}

impl Resolved {
    /// The file and position that set `path` (or its nearest set parent), leaf first.
    pub fn locate(&self, path: &str) -> Location {
        let mut p = Some(path);
        while let Some(cur) = p {
            for f in &self.chain {
                if let Some(pos) = f.map.get(cur) {
                    return Location {
                        file: f.path.clone(),
                        pos,
                    };
                }
            }
            p = parent_path(cur);
        }
        Location {
            file: self.chain[0].path.clone(),
            pos: Pos { line: 1, col: 1 },
        }
    }

    /// A diagnostic located at `path`.
    pub fn diag(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        let loc = self.locate(path);
        Diagnostic {
            file: loc.file,
            line: loc.pos.line,
            col: loc.pos.col,
            field: path.to_string(),
            message: message.into(),
            help: None,
        }
    }

    /// Resolves a path written in the definition relative to the file that set `field`.
    pub fn relative_path(&self, field: &str, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let loc = self.locate(field);
        // A default value (not written in any file) is relative to the images folder.
        let base = loc.file.parent().unwrap_or(Path::new("."));
        base.join(p)
    }

    /// The leaf file.
    pub fn file(&self) -> &Path {
        &self.chain[0].path
    }
}

fn child_path(prefix: &str, key: &str) -> String {
    super::source_map::join(prefix, key)
}

/// Merges `child` into `base` by the module's rules.
/// Removes map entries whose value is `null` (at any depth).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            m.retain(|_, x| !x.is_null());
            for (_, x) in m.iter_mut() {
                strip_nulls(x);
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

pub fn merge(base: &mut Value, child: &Value, path: &str) {
    match (base, child) {
        (Value::Mapping(b), Value::Mapping(c)) => {
            for (k, v) in c {
                let key = k.as_str().unwrap_or_default();
                let p = child_path(path, key);
                if v.is_null() {
                    b.remove(k);
                } else if let Some(existing) = b.get_mut(k) {
                    merge(existing, v, &p);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(c)) if is_append_list(path).is_some() => {
            let key = is_append_list(path).flatten();
            for item in c {
                let same = |x: &Value| match key {
                    Some(k) => x.get(k).is_some() && x.get(k) == item.get(k),
                    None => x == item,
                };
                match b.iter_mut().find(|x| same(x)) {
                    Some(slot) => *slot = item.clone(),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, c) => *b = c.clone(),
    }
}

fn is_append_list(path: &str) -> Option<Option<&'static str>> {
    APPEND_LISTS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        serde_norway::from_str(s).unwrap()
    }

    #[test]
    fn maps_merge_lists_replace_or_append() {
        let mut base = y("arch: [amd64, arm64]\npackages: [a, b]\nfiles: [{path: /x, content: old}]\nbuild: {cpus: 2, memory: 2048}\nfeatures: {docker: {}}\n");
        let child = y("arch: [amd64]\npackages: [b, c]\nfiles: [{path: /x, content: new}, {path: /y, content: y}]\nbuild: {cpus: 4}\nfeatures: {docker: null}\n");
        merge(&mut base, &child, "");
        assert_eq!(base, y("arch: [amd64]\npackages: [a, b, c]\nfiles: [{path: /x, content: new}, {path: /y, content: y}]\nbuild: {cpus: 4, memory: 2048}\nfeatures: {}\n"));
    }
}
