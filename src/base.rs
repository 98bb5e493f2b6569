//! Base images: cloud images downloaded (http, https, file) and verified against the
//! definition's checksum, and bootstrap bases built with mmdebstrap; both kept in a
//! content-addressed cache. A download never appears under its final name before it is
//! complete and verified; builds of the same base serialize on a lock file.

use crate::bootstrap::{self, BootstrapError};
use crate::definition::{Arch, Base, BaseSpec};
use sha2::{Digest, Sha256, Sha512};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("downloading {url}: {message}")]
    Download { url: String, message: String },
    #[error("{url}: checksum mismatch: expected {expected}, actual {actual}")]
    Mismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("no base for {0}")]
    Missing(Arch),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("interrupted")]
    Interrupted,
}

/// The cache folder: `$IMGBUILD_CACHE_DIR`, else `$XDG_CACHE_HOME/imgbuild`, else `~/.cache/imgbuild`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IMGBUILD_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("imgbuild");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
        .join(".cache/imgbuild")
}

/// A base image ready to build on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BaseImage {
    pub path: PathBuf,
    /// `cloud_image` or `bootstrap`.
    pub kind: &'static str,
    /// URL, or `mmdebstrap SUITE MIRROR`.
    pub source: String,
    pub sha256: String,
    pub cache_hit: bool,
    /// Fetched from the remote cache by this build.
    pub remote: bool,
    /// The names of the base steps run at the end of the bootstrap (features'
    /// `base_steps`; none for a cloud image).
    pub steps: Vec<String>,
    /// The kernel export that boots the disk (vmlinuz, initrd.img, cmdline, version), when
    /// known without a boot (a bootstrapped base): the first layer may then be boot-free.
    #[serde(skip)]
    pub kernel: Option<PathBuf>,
}

/// One entry of the base cache: `path` and its `.sha256` sidecar, made under the entry's lock
/// by `make` (which writes `path` complete or not at all) when either is missing. The sidecar is
/// written last, so an entry without it counts as missing. Returns the sha256 and whether the
/// entry was already there.
fn cached_entry(
    path: &Path,
    make: impl FnOnce(&Path) -> Result<(), BaseError>,
) -> Result<(String, bool), BaseError> {
    let sidecar = path.with_extension("sha256");
    let lock = path.with_extension("lock");
    let _lock = crate::cache::FileLock::exclusive(&lock, || {
        tracing::info!("waiting for {} (another build holds it)", lock.display())
    })
    .map_err(|crate::cache::CacheError::Io(e)| BaseError::Io(e))?;
    let cache_hit = path.is_file() && sidecar.is_file();
    if !cache_hit {
        make(path)?;
        let d = crate::digest::digest_file(path, |_| {}).map_err(|e| {
            BaseError::Io(crate::IoError {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        std::fs::write(&sidecar, &d.sha256).map_err(crate::IoError::at(&sidecar))?;
    }
    let sha256 = std::fs::read_to_string(&sidecar)
        .map_err(crate::IoError::at(&sidecar))?
        .trim()
        .to_string();
    Ok((sha256, cache_hit))
}

/// Gets the base for `arch` from the cache, downloading or bootstrapping it if needed. A
/// bootstrapped base goes through the remote cache too, if one is given: fetched from it (its
/// sha256 checked) instead of bootstrapped, and uploaded to it when this runner made it or has
/// it and the remote does not. `steps` run at the end of a bootstrap (features'
/// [`crate::features::Fragment::base_steps`]; part of its cache key).
pub fn ensure(
    spec: &BaseSpec,
    arch: Arch,
    steps: &[crate::features::Step],
    cache: &Path,
    remote: Option<&crate::remote::Remote>,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<BaseImage, BaseError> {
    match spec.kind().ok_or(BaseError::Missing(arch))? {
        Base::CloudImage(c) => {
            let (algo, hex) = c
                .checksum
                .split_once(':')
                .unwrap_or(("sha256", &c.checksum));
            let path = cache.join("images").join(format!("{algo}-{hex}.img"));
            let (sha256, cache_hit) = cached_entry(&path, |path| {
                fetch(&c.url, algo, hex, path, cancel, progress)
            })?;
            Ok(BaseImage {
                path,
                kind: "cloud_image",
                source: c.url.clone(),
                sha256,
                cache_hit,
                remote: false,
                steps: Vec::new(),
                kernel: None,
            })
        }
        Base::Bootstrap(b) => {
            let key = bootstrap::cache_key(b, arch, steps);
            let dir = cache.join("bootstrap");
            let path = dir.join(format!("{key}.qcow2"));
            let mut fetched = false;
            let (sha256, cache_hit) = cached_entry(&path, |path| {
                if let Some(r) = remote.filter(|r| r.is_up()) {
                    if fetch_remote_base(r, &key, path, progress) {
                        fetched = true;
                        return Ok(());
                    }
                }
                let work = dir.join(format!("{key}.work"));
                let debs = crate::cache::bootstrap_debs(cache, &b.suite, arch.as_str())
                    .ok()
                    .flatten();
                let result = bootstrap::bootstrap(
                    b,
                    arch,
                    steps,
                    &work,
                    path,
                    debs.as_ref().map(|(d, _)| d.as_path()),
                    cancel,
                );
                drop(debs);
                let _ = std::fs::remove_dir_all(&work);
                Ok(result?)
            })?;
            if let Some(r) = remote.filter(|r| r.is_up() && !r.config.read_only && !fetched) {
                share_base(r, &key, &path, b, arch, progress);
            }
            let kernel = crate::cache::kernel_files(&bootstrap::kernel_dir(&path));
            Ok(BaseImage {
                path,
                kind: "bootstrap",
                source: format!("mmdebstrap {} {}", b.suite, b.mirror),
                sha256,
                cache_hit,
                remote: fetched,
                steps: steps.iter().map(|s| s.name.clone()).collect(),
                kernel,
            })
        }
    }
}

/// The remote's copy of bootstrapped base `key` into `path` (whole or not at all); false when
/// the remote has none, has a corrupt one (a warning; it is bootstrapped and replaced) or does
/// not answer (a warning; the run goes on locally).
fn fetch_remote_base(
    r: &crate::remote::Remote,
    key: &str,
    path: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> bool {
    let into = path.with_extension("fetch");
    let _ = std::fs::remove_dir_all(&into);
    let got = r.fetch(
        crate::remote::Kind::Base,
        key,
        &into,
        &mut |_, done, total| progress(done, Some(total)),
    );
    let ok = match got {
        Ok(Some(_)) => {
            // The kernel export first (an entry uploaded before bases had one has none: the
            // first layer then boots in full); the disk last, as it makes the entry.
            let kernel = into.join(REMOTE_KERNEL);
            let kdir = bootstrap::kernel_dir(path);
            let _ = std::fs::remove_dir_all(&kdir);
            (!kernel.is_dir() || std::fs::rename(&kernel, &kdir).is_ok())
                && std::fs::rename(into.join(REMOTE_DISK), path).is_ok()
        }
        Ok(None) => false,
        Err(
            e @ (crate::remote::RemoteError::Corrupt { .. }
            | crate::remote::RemoteError::Bad { .. }
            | crate::remote::RemoteError::Io(_)),
        ) => {
            tracing::warn!("{e}: not used, the base is bootstrapped");
            false
        }
        Err(e) => {
            if r.mark_down() {
                tracing::warn!(
                    "the remote cache {} cannot be used ({e}): this build makes its bases and layers locally",
                    r.config.url
                );
            }
            false
        }
    };
    let _ = std::fs::remove_dir_all(&into);
    if ok {
        tracing::info!("base {} fetched from the remote cache", &key[..12]);
    }
    ok
}

/// A bootstrapped base's file name in its remote entry.
const REMOTE_DISK: &str = "disk.qcow2";
/// The folder of its kernel export in the entry.
const REMOTE_KERNEL: &str = "kernel";

/// Uploads bootstrapped base `key` unless the remote has it (a failure is a warning).
fn share_base(
    r: &crate::remote::Remote,
    key: &str,
    path: &Path,
    b: &crate::definition::Bootstrap,
    arch: Arch,
    progress: &mut dyn FnMut(u64, Option<u64>),
) {
    let result = r.has(crate::remote::Kind::Base, key).and_then(|has| {
        if has {
            return Ok(false);
        }
        tracing::info!("base {}: uploading to the remote cache", &key[..12]);
        let meta = serde_json::json!({
            "kind": "bootstrap",
            "arch": arch,
            "suite": b.suite,
            "mirror": b.mirror,
            "created": crate::cache::rfc3339(std::time::SystemTime::now()),
        });
        let mut files = Vec::new();
        if let Some(k) = crate::cache::kernel_files(&bootstrap::kernel_dir(path)) {
            for f in crate::cache::KERNEL_FILES {
                files.push((format!("{REMOTE_KERNEL}/{f}"), k.join(f)));
            }
        }
        files.push((REMOTE_DISK.to_string(), path.to_path_buf()));
        r.upload(
            crate::remote::Kind::Base,
            key,
            &files,
            meta,
            &mut |_, done, total| progress(done, Some(total)),
        )
        .map(|()| true)
    });
    match result {
        Ok(true) => tracing::info!("base {} uploaded to the remote cache", &key[..12]),
        Ok(false) => {}
        Err(e)
            if matches!(
                e,
                crate::remote::RemoteError::Http(crate::http::HttpError::Status { .. })
            ) =>
        {
            tracing::warn!("base {} not uploaded to the remote cache: {e}", &key[..12]);
        }
        Err(e) => {
            if r.mark_down() {
                tracing::warn!(
                    "the remote cache {} cannot be used ({e}): this build makes its bases and layers locally",
                    r.config.url
                );
            }
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }
    fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => crate::hex(&h.finalize()),
            Hasher::Sha512(h) => crate::hex(&h.finalize()),
        }
    }
}

/// How long a download may go without a byte before it fails.
const DOWNLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// Downloads `url` to `dest` (via `dest.part`), hashing as it goes; only a verified file is
/// renamed into place. A mismatch deletes the partial file and names both digests.
pub fn fetch(
    url: &str,
    algo: &str,
    expected: &str,
    dest: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), BaseError> {
    let dl = |message: String| BaseError::Download {
        url: url.to_string(),
        message,
    };
    if let Some(d) = dest.parent() {
        std::fs::create_dir_all(d).map_err(crate::IoError::at(d))?;
    }
    let part = dest.with_extension("part");
    let mut hasher = match algo {
        "sha512" => Hasher::Sha512(Sha512::new()),
        _ => Hasher::Sha256(Sha256::new()),
    };
    let (mut reader, total): (Box<dyn Read + Send>, Option<u64>) = if let Some(p) =
        url.strip_prefix("file://")
    {
        let f = std::fs::File::open(p).map_err(|e| dl(e.to_string()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    } else {
        let tls = crate::http::TlsOptions {
            verify: true,
            ..Default::default()
        };
        let http = crate::http::Http::new(&tls, DOWNLOAD_STALL).map_err(|e| dl(e.to_string()))?;
        http.download(url).map_err(|e| dl(e.to_string()))?
    };
    let result = (|| {
        let mut out = std::fs::File::create(&part).map_err(crate::IoError::at(&part))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(BaseError::Interrupted);
            }
            let n = reader.read(&mut buf).map_err(|e| dl(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(crate::IoError::at(&part))?;
            done += n as u64;
            progress(done, total);
        }
        out.sync_all().map_err(crate::IoError::at(&part))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    let actual = hasher.hex();
    if !actual.eq_ignore_ascii_case(expected) {
        let _ = std::fs::remove_file(&part);
        return Err(BaseError::Mismatch {
            url: url.into(),
            expected: format!("{algo}:{expected}"),
            actual: format!("{algo}:{actual}"),
        });
    }
    Ok(std::fs::rename(&part, dest).map_err(crate::IoError::at(dest))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_entry_is_made_once_and_one_without_its_sidecar_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images/e.img");
        let hello = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let made = std::cell::Cell::new(0);
        let make = |p: &Path| {
            made.set(made.get() + 1);
            Ok(std::fs::write(p, b"hello").map_err(crate::IoError::at(p))?)
        };
        assert_eq!(
            cached_entry(&path, make).unwrap(),
            (hello.to_string(), false)
        );
        assert_eq!(
            cached_entry(&path, make).unwrap(),
            (hello.to_string(), true)
        );
        assert_eq!(made.get(), 1, "a hit does not make the entry again");
        assert_eq!(
            std::fs::read_to_string(path.with_extension("sha256")).unwrap(),
            hello
        );

        // A failed make leaves no sidecar: the entry stays missing.
        let other = dir.path().join("images/f.img");
        let e = cached_entry(&other, |_| Err(BaseError::Interrupted)).unwrap_err();
        assert!(matches!(e, BaseError::Interrupted), "{e}");
        assert!(!other.with_extension("sha256").exists());

        // An image without its sidecar (a crash between the two) is made again.
        std::fs::remove_file(path.with_extension("sha256")).unwrap();
        assert_eq!(
            cached_entry(&path, make).unwrap(),
            (hello.to_string(), false)
        );
        assert_eq!(made.get(), 2);
    }

    #[test]
    fn file_url_is_verified_and_a_mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        std::fs::write(&src, b"hello").unwrap();
        let url = format!("file://{}", src.display());
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let dest = dir.path().join("cache/x.img");
        let never = AtomicBool::new(false);
        fetch(&url, "sha256", good, &dest, &never, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        let bad_dest = dir.path().join("cache/y.img");
        let e = fetch(
            &url,
            "sha256",
            &"0".repeat(64),
            &bad_dest,
            &never,
            &mut |_, _| {},
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("expected sha256:{}", "0".repeat(64))) && msg.contains(good),
            "{msg}"
        );
        assert!(!bad_dest.exists() && !bad_dest.with_extension("part").exists());
    }
}
