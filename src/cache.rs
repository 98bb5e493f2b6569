//! The build cache's layer store and shared downloads (the bases live in `base`).
//!
//! ```text
//! CACHE/layers/KEY/{disk.qcow2, vars.fd, layer.json}   a finished layer (content-addressed)
//! CACHE/layers/KEY.build                              lock: held while KEY is looked up or built
//! CACHE/layers/KEY.use                                lock: shared by every build using KEY
//! CACHE/layers/.partial-KEY/                          a layer being built (never read)
//! CACHE/apt/guest-DISTRO-VERSION-ARCH.qcow2 (+.lock)  the guests' shared apt archive disk
//! CACHE/apt/bootstrap-SUITE-ARCH/ (+.lock)            mmdebstrap's downloaded packages
//! ```
//!
//! An entry appears by one rename of its finished folder, after its files are synced, so a
//! crash leaves at most a `.partial-` folder, which the next build of that key or `cache
//! prune` removes. Entries are never replaced: a layer's disk is the backing file of the
//! layers above it. A build holds the `.use` lock of every layer (and base) it builds on until
//! its artifact is written, so `cache prune` skips them; two builds of the same key meet at the
//! `.build` lock, and the second reuses what the first made.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

/// An advisory lock (flock) on a file, held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

fn open_lock(path: &Path) -> Result<File, CacheError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(crate::IoError::at(d))?;
    }
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(crate::IoError::at(path))?)
}

impl FileLock {
    /// Waits for the exclusive lock; `on_wait` is called once if another holder makes it wait.
    pub fn exclusive(path: &Path, on_wait: impl FnOnce()) -> Result<FileLock, CacheError> {
        let f = open_lock(path)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                on_wait();
                f.lock().map_err(crate::IoError::at(path))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(crate::IoError::at(path)(e).into()),
        }
        Ok(FileLock { _file: f })
    }

    pub fn shared(path: &Path) -> Result<FileLock, CacheError> {
        let f = open_lock(path)?;
        f.lock_shared().map_err(crate::IoError::at(path))?;
        Ok(FileLock { _file: f })
    }

    /// The exclusive lock if nobody holds the file, else None.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>, CacheError> {
        let f = open_lock(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(FileLock { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(crate::IoError::at(path)(e).into()),
        }
    }
}

/// What `layer.json` says about an entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub key: String,
    /// The layer's name (`system`, `runtime`, `desktop`, `cluster`, `image`, `stack`).
    pub layer: String,
    /// The key of the layer below, or None on a base.
    pub parent: Option<String>,
    /// The disk this layer's disk is an overlay on (a parent entry's disk or a base).
    pub backing: PathBuf,
    /// The image whose build made it (others with the same lower layers reuse it).
    pub image: String,
    pub arch: String,
    pub created: String,
    pub build_seconds: f64,
    pub imgbuild: String,
    /// What the guest reported baking in during this layer (for the manifest of later builds
    /// that reuse it).
    #[serde(default)]
    pub container_images: Vec<crate::protocol::ContainerImage>,
    /// The packages installed when this layer was finished (the image's, when it is the top).
    #[serde(default)]
    pub packages: Vec<crate::protocol::Package>,
    /// Applied without booting the image's init (render/offline.rs).
    #[serde(default)]
    pub boot_free: bool,
}

/// A cache entry in use by this process: its `.use` lock is held until dropped.
#[derive(Debug)]
pub struct Held {
    pub key: String,
    pub dir: PathBuf,
    pub meta: LayerMeta,
    _use: FileLock,
}

impl Held {
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }
    /// The kernel export that goes with the disk, if the layer has one.
    pub fn kernel(&self) -> Option<PathBuf> {
        kernel_in(&self.dir)
    }
    /// The UEFI variable store that goes with the disk, if the layer has one.
    pub fn vars(&self) -> Option<PathBuf> {
        Some(self.dir.join(VARS)).filter(|p| p.is_file())
    }
}

/// `dir`'s kernel export (see [`KERNEL`]), if it has a complete one.
pub fn kernel_in(dir: &Path) -> Option<PathBuf> {
    kernel_files(&dir.join(KERNEL))
}

/// The files of a kernel export.
pub const KERNEL_FILES: [&str; 4] = ["vmlinuz", "initrd.img", "cmdline", "version"];

/// `k`, if it is a complete kernel export (`version` is informative only).
pub fn kernel_files(k: &Path) -> Option<PathBuf> {
    KERNEL_FILES[..3]
        .iter()
        .all(|f| k.join(f).is_file())
        .then(|| k.to_path_buf())
}

/// The `.build` lock of one key: whoever holds it may look up, build and commit that key.
#[derive(Debug)]
pub struct BuildGuard {
    key: String,
    _lock: FileLock,
}

pub const DISK: &str = "disk.qcow2";
pub const VARS: &str = "vars.fd";
/// The kernel that boots the layer's disk (vmlinuz, initrd.img, cmdline, version), for
/// boot-free layers above it.
pub const KERNEL: &str = "kernel";
pub const META: &str = "layer.json";

/// One row of `imgbuild cache ls`.
#[derive(Clone, Debug, Serialize)]
pub struct EntryInfo {
    /// `layer`, `base`, `apt` or `partial`.
    pub kind: &'static str,
    pub key: String,
    pub name: String,
    pub image: Option<String>,
    pub parent: Option<String>,
    pub path: PathBuf,
    /// Bytes allocated on disk.
    pub size: u64,
    pub last_used: String,
    #[serde(skip)]
    pub last_used_at: SystemTime,
    pub in_use: bool,
    /// Its backing file is gone: unusable, removed by the next prune.
    pub broken: bool,
}

impl EntryInfo {
    /// A row for `path`, last used at `t`: no image or parent, not in use, not broken.
    fn at(kind: &'static str, key: String, name: String, path: PathBuf, t: SystemTime) -> Self {
        EntryInfo {
            kind,
            key,
            name,
            image: None,
            parent: None,
            size: allocated(&path),
            path,
            last_used: rfc3339(t),
            last_used_at: t,
            in_use: false,
            broken: false,
        }
    }
}

/// Someone else holds this lock file (or it cannot be taken): in use.
fn held(lock: &Path) -> bool {
    FileLock::try_exclusive(lock)
        .map(|l| l.is_none())
        .unwrap_or(true)
}

#[derive(Clone, Debug, Default)]
pub struct PrunePolicy {
    /// Remove layers not used for this long.
    pub older_than: Option<Duration>,
    /// Then remove the least recently used layers until the layers take at most this much.
    pub max_size: Option<u64>,
    /// Everything not in use: layers, bases, shared downloads.
    pub all: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub removed: Vec<EntryInfo>,
    /// Selected but in use by a running build: kept.
    pub busy: Vec<EntryInfo>,
    pub freed: u64,
}

/// Allocated bytes of a file or a folder tree.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if m.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| allocated(&e.path())).sum())
            .unwrap_or(0)
    } else {
        m.blocks() * 512
    }
}

fn fsync_path(p: &Path) -> Result<(), CacheError> {
    Ok(File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(crate::IoError::at(p))?)
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub struct LayerCache {
    dir: PathBuf,
}

impl LayerCache {
    pub fn new(cache_root: &Path) -> LayerCache {
        LayerCache {
            dir: cache_root.join("layers"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn partial(&self, key: &str) -> PathBuf {
        self.dir.join(format!(".partial-{key}"))
    }

    /// Takes the key's `.build` lock, waiting for another build that holds it.
    pub fn lock_build(&self, key: &str, on_wait: impl FnOnce()) -> Result<BuildGuard, CacheError> {
        std::fs::create_dir_all(&self.dir).map_err(crate::IoError::at(&self.dir))?;
        Ok(BuildGuard {
            key: key.to_string(),
            _lock: FileLock::exclusive(&self.dir.join(format!("{key}.build")), on_wait)?,
        })
    }

    /// The finished entry for the guard's key, marked as used now and held; None if there is
    /// none or it is unusable (then it is removed, when nobody uses it).
    pub fn lookup(&self, g: &BuildGuard) -> Result<Option<Held>, CacheError> {
        let dir = self.entry(&g.key);
        let meta_path = dir.join(META);
        if !meta_path.is_file() {
            return Ok(None);
        }
        let use_lock = FileLock::shared(&self.dir.join(format!("{}.use", g.key)))?;
        let meta: Option<LayerMeta> = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let usable = meta
            .as_ref()
            .is_some_and(|m| m.key == g.key && dir.join(DISK).is_file() && m.backing.is_file());
        if !usable {
            drop(use_lock);
            tracing::warn!("cache entry {} is unusable: removing it", dir.display());
            if let Some(_x) = FileLock::try_exclusive(&self.dir.join(format!("{}.use", g.key)))? {
                remove_entry_dir(&dir)?;
            }
            return Ok(None);
        }
        let now = SystemTime::now();
        if let Ok(f) = File::options().write(true).open(&meta_path) {
            let _ = f.set_modified(now);
        }
        Ok(Some(Held {
            key: g.key.clone(),
            dir,
            meta: meta.expect("checked"),
            _use: use_lock,
        }))
    }

    /// A fresh, empty `.partial-KEY` folder to build the guard's key in.
    pub fn start(&self, g: &BuildGuard) -> Result<PathBuf, CacheError> {
        let p = self.partial(&g.key);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(crate::IoError::at(&p))?;
        }
        std::fs::create_dir_all(&p).map_err(crate::IoError::at(&p))?;
        Ok(p)
    }

    /// Makes the finished `.partial-KEY` folder the entry: its files synced, `layer.json`
    /// written, then one rename. Returns the entry, held.
    pub fn commit(&self, g: &BuildGuard, meta: &LayerMeta) -> Result<Held, CacheError> {
        let p = self.partial(&g.key);
        let mp = p.join(META);
        std::fs::write(&mp, serde_json::to_vec_pretty(meta).expect("json"))
            .map_err(crate::IoError::at(&mp))?;
        for f in [DISK, VARS, META] {
            let fp = p.join(f);
            if fp.exists() {
                fsync_path(&fp)?;
            }
        }
        if let Some(k) = kernel_in(&p) {
            for f in std::fs::read_dir(&k)
                .map_err(crate::IoError::at(&k))?
                .flatten()
            {
                fsync_path(&f.path())?;
            }
            fsync_path(&k)?;
        }
        fsync_path(&p)?;
        let dest = self.entry(&g.key);
        std::fs::rename(&p, &dest).map_err(crate::IoError::at(&dest))?;
        fsync_path(&self.dir)?;
        self.lookup(g)?.ok_or_else(|| {
            CacheError::Io(crate::IoError {
                path: dest,
                source: std::io::Error::other("the committed entry is not readable"),
            })
        })
    }

    /// Every entry and partial folder, oldest use first.
    pub fn list(&self) -> Vec<EntryInfo> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !path.is_dir() {
                continue;
            }
            if let Some(key) = name.strip_prefix(".partial-") {
                let busy = held(&self.dir.join(format!("{key}.build")));
                let t = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(EntryInfo {
                    in_use: busy,
                    broken: !busy,
                    ..EntryInfo::at("partial", key.to_string(), "(being built)".into(), path, t)
                });
                continue;
            }
            let mp = path.join(META);
            let meta: Option<LayerMeta> = std::fs::read(&mp)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let t = std::fs::metadata(&mp)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let in_use = held(&self.dir.join(format!("{name}.use")));
            let broken = meta
                .as_ref()
                .is_none_or(|m| !m.backing.is_file() || !path.join(DISK).is_file());
            let layer = meta.as_ref().map(|m| m.layer.clone()).unwrap_or_default();
            out.push(EntryInfo {
                image: meta.as_ref().map(|m| m.image.clone()),
                parent: meta.as_ref().and_then(|m| m.parent.clone()),
                in_use,
                broken,
                ..EntryInfo::at("layer", name, layer, path, t)
            });
        }
        out.sort_by_key(|e| e.last_used_at);
        out
    }

    /// Removes what `policy` selects, the layers above each removed one with it (they would
    /// lose their backing file), and every broken entry and abandoned partial folder. Entries
    /// in use are kept and reported. `dry_run` only reports.
    pub fn prune(&self, policy: &PrunePolicy, now: SystemTime, dry_run: bool) -> PruneReport {
        let entries = self.list();
        let layers: Vec<&EntryInfo> = entries.iter().filter(|e| e.kind == "layer").collect();
        let mut selected: Vec<String> = Vec::new();
        let select = |k: &str, sel: &mut Vec<String>| {
            if !sel.iter().any(|s| s == k) {
                sel.push(k.to_string());
            }
        };
        for e in &entries {
            let old = policy
                .older_than
                .is_some_and(|d| now.duration_since(e.last_used_at).unwrap_or_default() >= d);
            if policy.all || e.broken || old {
                select(&e.key, &mut selected);
            }
        }
        if let Some(max) = policy.max_size {
            let mut total: u64 = layers
                .iter()
                .filter(|e| !selected.contains(&e.key))
                .map(|e| e.size)
                .sum();
            for e in &layers {
                if total <= max {
                    break;
                }
                if !selected.contains(&e.key) && !e.in_use {
                    total -= e.size;
                    select(&e.key, &mut selected);
                }
            }
        }
        // Whatever stands on a removed layer goes with it.
        loop {
            let before = selected.len();
            for e in &layers {
                if let Some(p) = &e.parent {
                    if selected.contains(p) {
                        select(&e.key, &mut selected);
                    }
                }
            }
            if selected.len() == before {
                break;
            }
        }
        let mut report = PruneReport::default();
        for e in entries.iter().filter(|e| selected.contains(&e.key)) {
            if dry_run {
                if e.in_use {
                    report.busy.push(e.clone());
                } else {
                    report.freed += e.size;
                    report.removed.push(e.clone());
                }
                continue;
            }
            let build = FileLock::try_exclusive(&self.dir.join(format!("{}.build", e.key)));
            let used = FileLock::try_exclusive(&self.dir.join(format!("{}.use", e.key)));
            match (build, used) {
                (Ok(Some(_b)), Ok(Some(_u))) => {
                    if remove_entry_dir(&e.path).is_ok() {
                        report.freed += e.size;
                        report.removed.push(e.clone());
                    }
                }
                _ => report.busy.push(e.clone()),
            }
        }
        report
    }
}

/// Removes an entry so that a crash part-way leaves no folder that looks finished: renamed to
/// a `.partial-` name first.
fn remove_entry_dir(dir: &Path) -> Result<(), CacheError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed = if name.starts_with(".partial-") {
        dir.to_path_buf()
    } else {
        let d = dir.with_file_name(format!(".partial-{name}"));
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(crate::IoError::at(&d))?;
        }
        std::fs::rename(dir, &d).map_err(crate::IoError::at(dir))?;
        d
    };
    Ok(std::fs::remove_dir_all(&doomed).map_err(crate::IoError::at(&doomed))?)
}

/// Parses `30d`, `12h`, `90m`, `45s`, `2w` (humantime's forms).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 7d, 12h)"))
}

/// The shared apt archive disk for guests of one distro release and arch, if no other build
/// has it attached: (disk, its lock). Created empty (the guest formats it) on first use.
pub fn apt_disk(
    cache_root: &Path,
    distro: &str,
    version: &str,
    arch: &str,
) -> Result<Option<(PathBuf, FileLock)>, CacheError> {
    let dir = cache_root.join("apt");
    std::fs::create_dir_all(&dir).map_err(crate::IoError::at(&dir))?;
    let disk = dir.join(format!("guest-{distro}-{version}-{arch}.qcow2"));
    let Some(lock) = FileLock::try_exclusive(&disk.with_extension("lock"))? else {
        return Ok(None);
    };
    if !disk.is_file() {
        let tmp = disk.with_extension("qcow2.tmp");
        crate::exec::Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&tmp)
            .arg("64G")
            .run()
            .map_err(|e| {
                CacheError::Io(crate::IoError {
                    path: tmp.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?;
        std::fs::rename(&tmp, &disk).map_err(crate::IoError::at(&disk))?;
    }
    Ok(Some((disk, lock)))
}

/// mmdebstrap's package folder for one suite and arch, if no other bootstrap uses it.
pub fn bootstrap_debs(
    cache_root: &Path,
    suite: &str,
    arch: &str,
) -> Result<Option<(PathBuf, FileLock)>, CacheError> {
    let dir = cache_root
        .join("apt")
        .join(format!("bootstrap-{suite}-{arch}"));
    let Some(lock) = FileLock::try_exclusive(&dir.with_extension("lock"))? else {
        return Ok(None);
    };
    std::fs::create_dir_all(&dir).map_err(crate::IoError::at(&dir))?;
    Ok(Some((dir, lock)))
}

/// The shared downloads (`apt/`) as `cache ls` rows.
pub fn list_downloads(cache_root: &Path) -> Vec<EntryInfo> {
    let dir = cache_root.join("apt");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in rd.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock") || name.ends_with(".tmp") {
            continue;
        }
        let lock = path.with_extension("lock");
        let in_use = held(&lock);
        let t = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        out.push(EntryInfo {
            in_use,
            ..EntryInfo::at("apt", name.clone(), name, path, t)
        });
    }
    out
}

/// The bases (downloaded cloud images, bootstrapped disks) as `cache ls` rows.
pub fn list_bases(cache_root: &Path) -> Vec<EntryInfo> {
    let mut out = Vec::new();
    for (sub, ext) in [("images", "img"), ("bootstrap", "qcow2")] {
        let Ok(rd) = std::fs::read_dir(cache_root.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some(ext) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let in_use = [path.with_extension("lock"), path.with_extension("use")]
                .iter()
                .any(|l| held(l));
            let t = std::fs::metadata(&path)
                .and_then(|m| m.accessed().or_else(|_| m.modified()))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let key = name.trim_end_matches(&format!(".{ext}")).to_string();
            out.push(EntryInfo {
                in_use,
                ..EntryInfo::at("base", key, sub.to_string(), path, t)
            });
        }
    }
    out
}

/// Removes a base (and its checksum sidecar) if no build holds it.
pub fn remove_base(path: &Path) -> Result<bool, CacheError> {
    let Some(_l) = FileLock::try_exclusive(&path.with_extension("lock"))? else {
        return Ok(false);
    };
    let Some(_u) = FileLock::try_exclusive(&path.with_extension("use"))? else {
        return Ok(false);
    };
    let sidecar = path.with_extension("sha256");
    // The sidecar first: without it the base is not a cache hit, even if the removal stops.
    if sidecar.exists() {
        std::fs::remove_file(&sidecar).map_err(crate::IoError::at(&sidecar))?;
    }
    std::fs::remove_file(path).map_err(crate::IoError::at(path))?;
    // A bootstrapped base's kernel export (bootstrap::kernel_dir).
    let kernel = path.with_extension("kernel");
    if kernel.is_dir() {
        std::fs::remove_dir_all(&kernel).map_err(crate::IoError::at(&kernel))?;
    }
    Ok(true)
}

/// Removes a shared-download entry or a base file if nobody holds its lock.
pub fn remove_locked(path: &Path, lock: &Path) -> Result<bool, CacheError> {
    let Some(_l) = FileLock::try_exclusive(lock)? else {
        return Ok(false);
    };
    if path.is_dir() {
        std::fs::remove_dir_all(path).map_err(crate::IoError::at(path))?;
    } else if path.exists() {
        std::fs::remove_file(path).map_err(crate::IoError::at(path))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, parent: Option<&str>, backing: &Path) -> LayerMeta {
        LayerMeta {
            key: key.into(),
            layer: "image".into(),
            parent: parent.map(String::from),
            backing: backing.into(),
            image: "t".into(),
            arch: "amd64".into(),
            created: rfc3339(SystemTime::now()),
            build_seconds: 1.0,
            imgbuild: "test".into(),
            container_images: Vec::new(),
            packages: Vec::new(),
            boot_free: false,
        }
    }

    /// Builds an entry the way a build does: lock, start, put a disk in, commit.
    fn add(c: &LayerCache, key: &str, parent: Option<&str>, backing: &Path) -> Held {
        let g = c.lock_build(key, || {}).unwrap();
        assert!(c.lookup(&g).unwrap().is_none());
        let p = c.start(&g).unwrap();
        std::fs::write(p.join(DISK), b"disk").unwrap();
        c.commit(&g, &meta(key, parent, backing)).unwrap()
    }

    #[test]
    fn commit_then_lookup_finds_the_entry_and_a_partial_is_never_found() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.qcow2");
        std::fs::write(&base, b"base").unwrap();
        let c = LayerCache::new(t.path());
        let g = c.lock_build("k1", || {}).unwrap();
        let p = c.start(&g).unwrap();
        std::fs::write(p.join(DISK), b"half").unwrap();
        // A crash here: only the partial folder exists, and lookups do not see it.
        assert!(c.lookup(&g).unwrap().is_none());
        assert_eq!(c.list()[0].kind, "partial");
        drop(g);
        // The partial's lock is free: it is an abandoned one, and prune takes it away.
        let r = c.prune(&PrunePolicy::default(), SystemTime::now(), false);
        assert_eq!(r.removed.len(), 1);
        assert!(!t.path().join("layers/.partial-k1").exists());

        let h = add(&c, "k1", None, &base);
        assert_eq!(std::fs::read(h.disk()).unwrap(), b"disk");
        drop(h);
        let g = c.lock_build("k1", || {}).unwrap();
        let h = c.lookup(&g).unwrap().expect("committed entry");
        assert_eq!(h.meta.key, "k1");
        assert_eq!(h.meta.backing, base);
    }

    #[test]
    fn a_second_builder_of_the_same_key_waits_and_then_finds_the_entry() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.qcow2");
        std::fs::write(&base, b"base").unwrap();
        let root = t.path().to_path_buf();
        let c = LayerCache::new(&root);
        let g = c.lock_build("k", || {}).unwrap();
        let p = c.start(&g).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = root.clone();
        let other = std::thread::spawn(move || {
            let c2 = LayerCache::new(&r2);
            let mut waited = false;
            let g2 = c2.lock_build("k", || waited = true).unwrap();
            tx.send(()).unwrap();
            (waited, c2.lookup(&g2).unwrap().map(|h| h.meta.key.clone()))
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(rx.try_recv().is_err(), "the second builder must wait");
        std::fs::write(p.join(DISK), b"disk").unwrap();
        let h = c.commit(&g, &meta("k", None, &base)).unwrap();
        drop(g);
        let (waited, found) = other.join().unwrap();
        assert!(waited);
        assert_eq!(found.as_deref(), Some("k"));
        drop(h);
    }

    #[test]
    fn prune_takes_descendants_along_and_keeps_what_is_in_use() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.qcow2");
        std::fs::write(&base, b"base").unwrap();
        let c = LayerCache::new(t.path());
        let a = add(&c, "a", None, &base);
        let b = add(&c, "b", Some("a"), &a.disk());
        let x = add(&c, "x", None, &base);
        let y = add(&c, "y", Some("x"), &x.disk());
        drop((a, b, x));
        // y in use (and so its parent x by the build using it).
        let x_again = c
            .lookup(&c.lock_build("x", || {}).unwrap())
            .unwrap()
            .unwrap();
        // Only `a` is old enough: its child `b` goes with it.
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(t.path().join("layers/a").join(META))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let r = c.prune(
            &PrunePolicy {
                older_than: Some(Duration::from_secs(600)),
                ..PrunePolicy::default()
            },
            SystemTime::now(),
            false,
        );
        let mut removed: Vec<&str> = r.removed.iter().map(|e| e.key.as_str()).collect();
        removed.sort();
        assert_eq!(removed, ["a", "b"]);
        assert!(!t.path().join("layers/a").exists() && !t.path().join("layers/b").exists());
        // --all: x and y are in use and stay.
        let r = c.prune(
            &PrunePolicy {
                all: true,
                ..PrunePolicy::default()
            },
            SystemTime::now(),
            false,
        );
        assert!(r.removed.is_empty(), "{r:?}");
        assert_eq!(r.busy.len(), 2);
        drop((x_again, y));
        let r = c.prune(
            &PrunePolicy {
                all: true,
                ..PrunePolicy::default()
            },
            SystemTime::now(),
            false,
        );
        assert_eq!(r.removed.len(), 2);
        assert!(c.list().is_empty());
    }

    #[test]
    fn an_entry_whose_backing_file_is_gone_is_not_used() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.qcow2");
        std::fs::write(&base, b"base").unwrap();
        let c = LayerCache::new(t.path());
        drop(add(&c, "k", None, &base));
        std::fs::remove_file(&base).unwrap();
        assert!(c.list()[0].broken);
        let g = c.lock_build("k", || {}).unwrap();
        assert!(c.lookup(&g).unwrap().is_none());
        assert!(!t.path().join("layers/k").exists());
    }

    #[test]
    fn max_size_removes_least_recently_used_first() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.qcow2");
        std::fs::write(&base, b"base").unwrap();
        let c = LayerCache::new(t.path());
        for (i, k) in ["old", "mid", "new"].iter().enumerate() {
            drop(add(&c, k, None, &base));
            File::options()
                .write(true)
                .open(t.path().join("layers").join(k).join(META))
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(1000 - i as u64 * 100))
                .unwrap();
        }
        let each = c.list()[0].size;
        let r = c.prune(
            &PrunePolicy {
                max_size: Some(each * 2),
                ..PrunePolicy::default()
            },
            SystemTime::now(),
            false,
        );
        assert_eq!(
            r.removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["old"]
        );
    }

    #[test]
    fn ages() {
        assert_eq!(parse_age("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_age("soon").is_err());
    }
}
