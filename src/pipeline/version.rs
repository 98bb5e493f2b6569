//! A build's version: given (`--version`, checked) or made from the date and the git commit
//! of the definition's repository.

use super::error::BuildError;
use crate::exec::Cmd;
use std::path::Path;
use std::time::SystemTime;

pub fn check_version(v: &str) -> Result<(), BuildError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with(['-', '.'])
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BuildError::BadVersion(v.to_string()))
    }
}

/// UTC date plus the short commit (`20261123-1a2b3c4`, `-dirty` for uncommitted changes); the
/// time of day instead of the commit outside a git repository.
pub fn default_version(now: SystemTime, commit: Option<&str>, dirty: bool) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let date: String = stamp[..10].chars().filter(|c| *c != '-').collect();
    match commit {
        Some(c) => format!(
            "{date}-{}{}",
            &c[..c.len().min(7)],
            if dirty { "-dirty" } else { "" }
        ),
        None => {
            let time: String = stamp[11..19].chars().filter(|c| *c != ':').collect();
            format!("{date}-{time}")
        }
    }
}

/// The commit of the repository holding `definition` and whether its tree has changes.
pub fn git_state(definition: &Path) -> (Option<String>, bool) {
    let dir = definition
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let commit = Cmd::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .read()
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() >= 7);
    let dirty = commit.is_some()
        && Cmd::new("git")
            .arg("-C")
            .arg(dir)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .read()
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false);
    (commit, dirty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn versions() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(
            default_version(t, Some("1a2b3c4d5e6f"), false),
            "20261118-1a2b3c4"
        );
        assert_eq!(
            default_version(t, Some("1a2b3c4d5e6f"), true),
            "20261118-1a2b3c4-dirty"
        );
        assert_eq!(default_version(t, None, false), "20261118-110640");
        assert!(check_version("2026.11.1").is_ok());
        assert!(check_version("1.0+build-3").is_ok());
        for bad in ["", "../x", "a/b", "-x", ".x", "a b", "ä"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }
}
