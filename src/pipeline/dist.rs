//! The build's work folder and the atomic hand-over into dist/.
//!
//! A build works in CACHE/work/NAME.PID; dist/IMAGE/VERSION appears by one rename at the end
//! (or, across filesystems, by a copy into a hidden `.VERSION.partial-PID` folder and a rename).
//! Work folders and partial folders of processes that no longer run are swept at the next
//! build, so even a SIGKILL leaves nothing that looks like a finished image.

use super::error::BuildError;
use std::path::{Path, PathBuf};

/// A work folder, removed on drop.
pub struct WorkDir {
    path: PathBuf,
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn pid_suffix(name: &str, sep: char) -> Option<u32> {
    name.rsplit_once(sep).and_then(|(_, p)| p.parse().ok())
}

impl WorkDir {
    pub fn create(cache: &Path, name: &str) -> Result<WorkDir, BuildError> {
        let root = cache.join("work");
        std::fs::create_dir_all(&root).map_err(crate::IoError::at(&root))?;
        // Folders of builds that died without cleaning up.
        for e in std::fs::read_dir(&root)
            .map_err(crate::IoError::at(&root))?
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = pid_suffix(&n, '.') {
                if !pid_alive(pid) {
                    tracing::info!(
                        "removing the work folder of a dead build: {}",
                        e.path().display()
                    );
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let path = root.join(format!("{name}.{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(crate::IoError::at(&path))?;
        }
        std::fs::create_dir_all(&path).map_err(crate::IoError::at(&path))?;
        Ok(WorkDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the logs (serial consoles, packer output, smoke report) of a failed build to
    /// CACHE/failed/NAME; disks are not kept.
    pub fn keep_logs(&self, cache: &Path) -> Option<PathBuf> {
        let logs = self.path.join("stage/logs");
        if !logs.is_dir() {
            return None;
        }
        let name = self.path.file_name()?.to_string_lossy().into_owned();
        let name = name
            .rsplit_once('.')
            .map(|(n, _)| n.to_string())
            .unwrap_or(name);
        let dest = cache.join("failed").join(name);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir_all(dest.parent()?).ok()?;
        std::fs::rename(&logs, &dest).ok()?;
        Some(dest)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes `.VERSION.partial-PID` folders of dead processes from dist/IMAGE.
pub fn sweep_stale(image_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(image_dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with('.') || !n.contains(".partial-") {
            continue;
        }
        if let Some(pid) = pid_suffix(&n, '-') {
            if !pid_alive(pid) {
                tracing::info!(
                    "removing a partial folder of a dead build: {}",
                    e.path().display()
                );
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Puts the assembled `stage` folder at `dest` in one rename. With `force`, an existing
/// `dest` is replaced (moved aside first, then removed).
pub fn publish_dir(stage: &Path, dest: &Path, force: bool) -> Result<(), BuildError> {
    let parent = dest.parent().expect("dest has a parent");
    std::fs::create_dir_all(parent).map_err(crate::IoError::at(parent))?;
    let version = dest
        .file_name()
        .expect("dest has a name")
        .to_string_lossy()
        .into_owned();
    if dest.exists() && !force {
        return Err(BuildError::Exists(dest.to_path_buf()));
    }
    let pid = std::process::id();
    // Across filesystems a rename fails: copy into a hidden partial folder next to dest.
    let ready = match std::fs::rename(stage, parent.join(format!(".{version}.partial-{pid}"))) {
        Ok(()) => parent.join(format!(".{version}.partial-{pid}")),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let partial = parent.join(format!(".{version}.partial-{pid}"));
            let r = copy_tree(stage, &partial);
            if let Err(e) = r {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(e);
            }
            partial
        }
        Err(e) => return Err(crate::IoError::at(stage)(e).into()),
    };
    if dest.exists() {
        if !force {
            // Someone else finished the same version meanwhile: theirs stays.
            let _ = std::fs::remove_dir_all(&ready);
            return Err(BuildError::Exists(dest.to_path_buf()));
        }
        let old = parent.join(format!(".{version}.replaced-{pid}"));
        std::fs::rename(dest, &old).map_err(crate::IoError::at(dest))?;
        std::fs::rename(&ready, dest).map_err(crate::IoError::at(dest))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&ready, dest).map_err(crate::IoError::at(dest))?;
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), BuildError> {
    for e in walkdir::WalkDir::new(src) {
        let e = e.map_err(|e| crate::IoError::at(src)(std::io::Error::other(e)))?;
        let rel = e.path().strip_prefix(src).expect("under src");
        let target = dst.join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&target).map_err(crate::IoError::at(&target))?;
        } else {
            std::fs::copy(e.path(), &target).map_err(crate::IoError::at(&target))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_is_one_rename_and_refuses_to_overwrite() {
        let t = tempfile::tempdir().unwrap();
        let stage = t.path().join("stage");
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(stage.join("a.qcow2"), "x").unwrap();
        let dest = t.path().join("dist/img/1.0");
        publish_dir(&stage, &dest, false).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("a.qcow2")).unwrap(), "x");
        assert!(!stage.exists());

        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(stage.join("a.qcow2"), "y").unwrap();
        assert!(matches!(
            publish_dir(&stage, &dest, false),
            Err(BuildError::Exists(_))
        ));
        assert_eq!(std::fs::read_to_string(dest.join("a.qcow2")).unwrap(), "x");
        publish_dir(&stage, &dest, true).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("a.qcow2")).unwrap(), "y");
        // Nothing hidden is left behind.
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("1.0")]);
    }

    #[test]
    fn stale_partials_of_dead_processes_are_swept() {
        let t = tempfile::tempdir().unwrap();
        let dead = t.path().join(".1.0.partial-999999999");
        let live = t
            .path()
            .join(format!(".1.0.partial-{}", std::process::id()));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        sweep_stale(t.path());
        assert!(!dead.exists());
        assert!(live.exists());
    }
}
