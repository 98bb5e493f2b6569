//! Errors in definitions, each naming file, line, column and field.

use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// The dotted path of the field (`base.amd64.cloud_image.checksum`), empty for the file.
    pub field: String,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(h) = &self.help {
            write!(f, " (help: {h})")?;
        }
        Ok(())
    }
}

/// One or more diagnostics, printed one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error("image `{name}` not found in {dir}{help}")]
    NotFound {
        name: String,
        dir: PathBuf,
        help: String,
    },
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

impl DefinitionError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            DefinitionError::Invalid(d) => &d.0,
            _ => &[],
        }
    }
}

impl From<Diagnostic> for DefinitionError {
    fn from(d: Diagnostic) -> Self {
        DefinitionError::Invalid(Diagnostics(vec![d]))
    }
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Turns a serde error message into (field, message, help). serde_norway formats errors as
/// `path.to.field: message at line L column C`; unknown fields and variants list the
/// expected names, from which a did-you-mean is derived.
pub fn from_serde_message(msg: &str) -> (String, String, Option<String>) {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let (field, rest) = match msg.split_once(": ") {
        Some((f, r)) if !f.contains(' ') && !f.is_empty() => (f.to_string(), r.to_string()),
        _ => (String::new(), msg.to_string()),
    };
    let help = unknown_name(&rest)
        .and_then(|(word, expected)| did_you_mean(&word, expected.iter().map(String::as_str)));
    (field, rest, help)
}

/// From "unknown field `x`, expected one of `a`, `b`" → ("x", ["a","b"]).
fn unknown_name(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg
        .strip_prefix("unknown field `")
        .or_else(|| msg.strip_prefix("unknown variant `"))?;
    let (word, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((word.to_string(), expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("pakages", ["packages", "publish"]),
            Some("did you mean `packages`?".into())
        );
        assert_eq!(did_you_mean("zzz", ["packages", "publish"]), None);
    }

    #[test]
    fn parses_serde_unknown_field() {
        let (field, msg, help) = from_serde_message(
            "features.docker: unknown field `sorce`, expected `source` or `users` at line 3 column 5",
        );
        assert_eq!(field, "features.docker");
        assert!(msg.starts_with("unknown field `sorce`"));
        assert_eq!(help.as_deref(), Some("did you mean `source`?"));
    }
}
