//! Cloud-image bases: downloads over HTTP (a real local server) and file://, verified against
//! the definition's checksum, cached by content; a mismatch or a broken transfer leaves no
//! file under the final name and no partial file.

use imgbuild::base::{ensure, BaseError, BaseImage};
use imgbuild::definition::{Arch, BaseSpec};
use sha2::{Digest, Sha256, Sha512};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn payload() -> Vec<u8> {
    (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Serves `body` to every request; `cut` sends only that many bytes of it (with the full
/// Content-Length) and closes, like a dropped connection.
fn serve(body: Vec<u8>, cut: Option<usize>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let n = cut.unwrap_or(body.len());
            let _ = s.write_all(&body[..n]);
        }
    });
    format!("http://127.0.0.1:{port}/image.qcow2")
}

fn spec(url: &str, checksum: &str) -> BaseSpec {
    serde_json::from_value(serde_json::json!({"cloud_image": {"url": url, "checksum": checksum}}))
        .unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `ensure` of a cloud image at `url` into `cache`, without progress; `interrupted`: asked to
/// stop before it starts.
fn fetch(
    url: &str,
    checksum: &str,
    cache: &Path,
    interrupted: bool,
) -> Result<BaseImage, BaseError> {
    ensure(
        &spec(url, checksum),
        Arch::Amd64,
        &[],
        cache,
        None,
        &AtomicBool::new(interrupted),
        &mut |_, _| {},
    )
}

/// The files in `dir` but the lock files, which stay.
fn files_but_locks(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|f| !f.ends_with(".lock"))
        .collect()
}

#[test]
fn http_download_is_verified_and_cached_by_content() {
    let body = payload();
    let sha = hex(&Sha256::digest(&body));
    let url = serve(body.clone(), None);
    let cache = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let mut seen = 0u64;
    let b = ensure(
        &spec(&url, &format!("sha256:{sha}")),
        Arch::Amd64,
        &[],
        cache.path(),
        None,
        &never,
        &mut |done, total| {
            seen = done;
            assert_eq!(total, Some(3_000_000));
        },
    )
    .unwrap();
    assert!(!b.cache_hit);
    assert_eq!(seen, 3_000_000, "progress reached the end");
    assert_eq!(b.sha256, sha);
    assert_eq!(std::fs::read(&b.path).unwrap(), body);
    assert!(b.path.ends_with(format!("images/sha256-{sha}.img")));
    // The second time comes from the cache, without the server being asked for bytes.
    let again = ensure(
        &spec("http://127.0.0.1:9/unreachable", &format!("sha256:{sha}")),
        Arch::Amd64,
        &[],
        cache.path(),
        None,
        &never,
        &mut |_, _| panic!("no download expected"),
    )
    .unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.path, b.path);
}

#[test]
fn file_url_and_sha512_work() {
    let body = payload();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("base.img");
    std::fs::write(&file, &body).unwrap();
    let sha512 = hex(&Sha512::digest(&body));
    let cache = tempfile::tempdir().unwrap();
    let b = ensure(
        &spec(
            &format!("file://{}", file.display()),
            &format!("sha512:{sha512}"),
        ),
        Arch::Amd64,
        &[],
        cache.path(),
        None,
        &AtomicBool::new(false),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(b.sha256, hex(&Sha256::digest(&body)));
    assert_eq!(b.kind, "cloud_image");
}

#[test]
fn a_checksum_mismatch_names_both_digests_and_keeps_nothing() {
    let body = payload();
    let actual = hex(&Sha256::digest(&body));
    let wrong = "0".repeat(64);
    let url = serve(body, None);
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(&url, &format!("sha256:{wrong}"), cache.path(), false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BaseError::Mismatch { .. }), "{msg}");
    assert!(msg.contains(&wrong) && msg.contains(&actual), "{msg}");
    let left = files_but_locks(cache.path());
    assert!(
        left.is_empty(),
        "nothing but the lock file may stay: {left:?}"
    );
}

#[test]
fn a_broken_transfer_keeps_nothing() {
    let body = payload();
    let sha = hex(&Sha256::digest(&body));
    let url = serve(body, Some(1_000_000));
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(&url, &format!("sha256:{sha}"), cache.path(), false).unwrap_err();
    assert!(
        matches!(err, BaseError::Download { .. } | BaseError::Mismatch { .. }),
        "{err}"
    );
    let left = files_but_locks(cache.path());
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_interrupted_download_keeps_nothing() {
    let body = payload();
    let sha = hex(&Sha256::digest(&body));
    let url = serve(body, None);
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(&url, &format!("sha256:{sha}"), cache.path(), true).unwrap_err();
    assert!(matches!(err, BaseError::Interrupted), "{err}");
    let left = files_but_locks(cache.path());
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn two_builds_asking_for_the_same_base_at_once_fetch_it_once() {
    // Parallel builds of images that share a base: the first one fetches it while holding the
    // base's lock; the second, asking meanwhile, waits for it and then reuses the result.
    let body = payload();
    let sha = hex(&Sha256::digest(&body));
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("base.img");
    std::fs::write(&file, &body).unwrap();
    let url = format!("file://{}", file.display());
    let cache = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            let mut told = false;
            ensure(
                &spec(&url, &format!("sha256:{sha}")),
                Arch::Amd64,
                &[],
                cache.path(),
                None,
                &never,
                &mut |_, _| {
                    if !told {
                        told = true;
                        started_tx.send(()).unwrap();
                        // Still fetching while the second one asks.
                        std::thread::sleep(std::time::Duration::from_millis(700));
                    }
                },
            )
            .unwrap()
        });
        started_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the first fetch started");
        let second = s.spawn(|| {
            let asked = std::time::Instant::now();
            let b = ensure(
                &spec(&url, &format!("sha256:{sha}")),
                Arch::Amd64,
                &[],
                cache.path(),
                None,
                &never,
                &mut |_, _| panic!("the second one must not fetch"),
            )
            .unwrap();
            (b, asked.elapsed())
        });
        let a = first.join().unwrap();
        let (b, waited) = second.join().unwrap();
        assert!(!a.cache_hit, "the first one fetched");
        assert!(b.cache_hit, "the second one reused the first one's result");
        assert!(
            waited >= std::time::Duration::from_millis(300),
            "the second one waited for the first ({waited:?})"
        );
        assert_eq!(a.path, b.path);
        assert_eq!(a.sha256, sha);
        assert_eq!(b.sha256, sha);
        assert_eq!(std::fs::read(&b.path).unwrap(), body);
    });
    let left: Vec<String> = files(cache.path())
        .into_iter()
        .filter(|f| f.ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
