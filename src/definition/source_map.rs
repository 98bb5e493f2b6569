//! Where each key of a YAML file stands: an index from a dotted path (`base.amd64.checksum`,
//! `packages[2]`) to its line and column, so that errors found after parsing (a missing
//! checksum, an unknown feature) can still name the file and line.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    positions: HashMap<String, Pos>,
}

impl SourceMap {
    /// Indexes `text`. A syntax error yields an empty map (serde reports the syntax error).
    pub fn build(text: &str) -> SourceMap {
        let mut rx = Receiver::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut rx, false);
        SourceMap {
            positions: rx.positions,
        }
    }

    /// The position of exactly this path.
    pub fn get(&self, path: &str) -> Option<Pos> {
        self.positions.get(path).copied()
    }

    pub fn contains(&self, path: &str) -> bool {
        self.positions.contains_key(path)
    }
}

/// The parent of a dotted path: `a.b[2]` → `a.b`, `a.b` → `a`, `a` → None.
pub fn parent_path(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

enum Frame {
    Map { prefix: String, key: Option<String> },
    Seq { prefix: String, index: usize },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    positions: HashMap<String, Pos>,
}

fn pos(m: Marker) -> Pos {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

impl Receiver {
    /// The path of the value about to arrive in the current frame (None for a key).
    fn value_path(&mut self, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { prefix, key }) => key.as_ref().map(|k| join(prefix, k)),
            Some(Frame::Seq { prefix, index }) => {
                let p = format!("{prefix}[{index}]");
                self.positions.entry(p.clone()).or_insert(pos(mark));
                Some(p)
            }
        }
    }

    /// The current frame has received a complete value.
    fn consumed(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    prefix,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    let path = join(prefix, &value);
                    self.positions.insert(path, pos(mark));
                    *key = Some(value);
                } else {
                    self.value_path(mark);
                    self.consumed();
                }
            }
            Event::Alias(_) => {
                self.value_path(mark);
                self.consumed();
            }
            Event::MappingStart(..) => {
                let prefix = self.value_path(mark).unwrap_or_default();
                self.stack.push(Frame::Map { prefix, key: None });
            }
            Event::SequenceStart(..) => {
                let prefix = self.value_path(mark).unwrap_or_default();
                self.stack.push(Frame::Seq { prefix, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.consumed();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_keys_and_list_items() {
        let text = "description: x\nbase:\n  amd64:\n    cloud_image:\n      url: u\n      checksum: c\npackages:\n  - a\n  - b\nusers: [{name: n}]\n";
        let m = SourceMap::build(text);
        assert_eq!(m.get("description"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(
            m.get("base.amd64.cloud_image.checksum"),
            Some(Pos { line: 6, col: 7 })
        );
        assert_eq!(m.get("packages[1]"), Some(Pos { line: 9, col: 5 }));
        assert_eq!(m.get("users[0].name").map(|p| p.line), Some(10));
        assert!(m.get("nope").is_none());
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[2]"), Some("a.b"));
        assert_eq!(parent_path("a.b"), Some("a"));
        assert_eq!(parent_path("a"), None);
    }
}
