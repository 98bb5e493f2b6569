//! Digests of an artifact: sha256, sha512 and md5 (Glance's `os_hash_value` and `checksum`)
//! in one read of the file; `sha256sum`-format lines and their verification.

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Digests {
    pub sha256: String,
    pub sha512: String,
    pub md5: String,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    Sha256,
    Sha512,
    Md5,
}

impl Digests {
    pub fn get(&self, a: Algo) -> &str {
        match a {
            Algo::Sha256 => &self.sha256,
            Algo::Sha512 => &self.sha512,
            Algo::Md5 => &self.md5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("{path}: {algo:?} mismatch: expected {expected}, actual {actual}")]
    Mismatch {
        path: PathBuf,
        algo: Algo,
        expected: String,
        actual: String,
    },
    #[error("{file}:{line}: not a `HEX  NAME` line")]
    BadLine { file: PathBuf, line: usize },
}

/// Bytes per `read` and per message to the hashing threads (chosen by measurement, see
/// BENCHMARKS.md "Digest pass": 1 MiB buffers stay in the shared L3 cache between the copy
/// out of the page cache and the hashers reading them).
const CHUNK: usize = 1 << 20;
/// Buffers in flight: the reader refills a buffer once all three hashers are done with it.
const POOL: usize = 8;

/// Reads `path` once, feeding every chunk to the three hashers. The reader thread and the
/// hashing threads overlap: the reader hashes sha256 (SHA-NI where the CPU has it, picked
/// at run time by the sha2 crate), sha512 and md5 run on their own threads. A fixed pool of
/// buffers goes round: no allocation per chunk, and memory stays at `CHUNK * POOL`.
pub fn digest_file(path: &Path, progress: impl FnMut(u64)) -> Result<Digests, DigestError> {
    digest_with(path, CHUNK, POOL, progress)
}

/// One filled buffer, shared by the hashers; the last one to drop it sends the buffer home
/// to the reader (also when a hasher unwinds, so the reader can never wait for a lost one).
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    home: mpsc::Sender<Vec<u8>>,
}

impl Chunk {
    fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // The reader has gone only when the pass is over; then the buffer is just freed.
        let _ = self.home.send(std::mem::take(&mut self.buf));
    }
}

fn hasher<D: Digest>(rx: mpsc::Receiver<Arc<Chunk>>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut h = D::new();
        for c in rx {
            h.update(c.data());
        }
        crate::hex(&h.finalize())
    })
}

fn join(h: std::thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Fills `buf` from `f` up to its length or the end of the file; returns the bytes read.
fn fill(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn digest_with(
    path: &Path,
    chunk: usize,
    pool: usize,
    mut progress: impl FnMut(u64),
) -> Result<Digests, DigestError> {
    let io = |source| {
        DigestError::Io(crate::IoError {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let (home, back) = mpsc::channel::<Vec<u8>>();
    // Room for every buffer: the reader waits for a free buffer, never on a hasher's queue.
    let (tx512, rx512) = mpsc::sync_channel(pool);
    let (txmd5, rxmd5) = mpsc::sync_channel(pool);
    let h512 = hasher::<Sha512>(rx512);
    let hmd5 = hasher::<Md5>(rxmd5);
    let mut sha256 = Sha256::new();
    let mut size = 0u64;
    let mut made = 0;
    let read = loop {
        let mut buf = match back.try_recv() {
            Ok(b) => b,
            Err(_) if made < pool => {
                made += 1;
                vec![0u8; chunk]
            }
            // Every buffer is out and each Chunk sends its buffer home when dropped.
            Err(_) => back.recv().expect("the reader holds a sender"),
        };
        let n = match fill(&mut f, &mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let c = Arc::new(Chunk {
            buf,
            len: n,
            home: home.clone(),
        });
        // A closed channel means its thread panicked; join below passes the panic on.
        if tx512.send(c.clone()).is_err() || txmd5.send(c.clone()).is_err() {
            break Ok(());
        }
        sha256.update(c.data());
        drop(c);
        size += n as u64;
        progress(size);
    };
    drop(tx512);
    drop(txmd5);
    let sha512 = join(h512);
    let md5 = join(hmd5);
    read.map_err(io)?;
    Ok(Digests {
        sha256: crate::hex(&sha256.finalize()),
        sha512,
        md5,
        size,
    })
}

/// A `sha256sum`-format line (two spaces, text mode), as `sha256sum -c` accepts.
pub fn sum_line(hex: &str, name: &str) -> String {
    format!("{hex}  {name}\n")
}

/// Parses `sha256sum`-format text into (hex, name).
pub fn parse_sums(text: &str, file: &Path) -> Result<Vec<(String, String)>, DigestError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (hex, name) = line
            .split_once("  ")
            .or_else(|| line.split_once(" *"))
            .filter(|(h, _)| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(DigestError::BadLine {
                file: file.to_path_buf(),
                line: i + 1,
            })?;
        out.push((hex.to_ascii_lowercase(), name.to_string()));
    }
    Ok(out)
}

/// Which algorithm a hex digest of this length is.
pub fn algo_of(hex: &str) -> Option<Algo> {
    match hex.len() {
        64 => Some(Algo::Sha256),
        128 => Some(Algo::Sha512),
        32 => Some(Algo::Md5),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    /// Not-repeating bytes, so a chunk hashed twice, dropped or out of order changes every
    /// digest.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// The three digests of `data` in memory, in one call each: no chunks, no threads.
    fn oneshot(data: &[u8]) -> (String, String, String) {
        (
            crate::hex(&Sha256::digest(data)),
            crate::hex(&Sha512::digest(data)),
            crate::hex(&Md5::digest(data)),
        )
    }

    #[test]
    fn known_vectors() {
        let dir = tempfile::tempdir().unwrap();
        // FIPS 180-2 / RFC 1321 test vectors.
        let cases: [(&str, Vec<u8>, &str, &str, &str); 3] = [
            (
                "empty",
                vec![],
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
                 47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
                "d41d8cd98f00b204e9800998ecf8427e",
            ),
            (
                "abc",
                b"abc".to_vec(),
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
                "900150983cd24fb0d6963f7d28e17f72",
            ),
            (
                "million-a",
                vec![b'a'; 1_000_000],
                "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
                "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973eb\
                 de0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b",
                "7707d6ae4e027c70eea2a935c2296f21",
            ),
        ];
        for (name, data, sha256, sha512, md5) in cases {
            let p = file(dir.path(), name, &data);
            let want = Digests {
                sha256: sha256.into(),
                sha512: sha512.into(),
                md5: md5.into(),
                size: data.len() as u64,
            };
            assert_eq!(digest_file(&p, |_| {}).unwrap(), want, "{name}");
            // The same with tiny chunks and two buffers: the million goes round the pool
            // thousands of times.
            assert_eq!(digest_with(&p, 100, 2, |_| {}).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn chunk_boundaries_match_one_shot_digests() {
        let dir = tempfile::tempdir().unwrap();
        // Around one chunk, and enough chunks to reuse every pooled buffer twice.
        for len in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            2 * POOL * CHUNK + 7,
        ] {
            let data = noise(len);
            let p = file(dir.path(), &format!("f{len}"), &data);
            let (sha256, sha512, md5) = oneshot(&data);
            let mut seen = Vec::new();
            let d = digest_file(&p, |n| seen.push(n)).unwrap();
            assert_eq!(
                (d.sha256, d.sha512, d.md5, d.size),
                (sha256, sha512, md5, len as u64),
                "length {len}"
            );
            // Progress: once per chunk, growing, ending at the size.
            assert_eq!(seen.len(), len.div_ceil(CHUNK), "length {len}");
            assert!(seen.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(seen.last().copied().unwrap_or(0), len as u64);
        }
        // Small chunks, each pool size, lengths on and beside chunk edges.
        let data = noise(10_000);
        let p = file(dir.path(), "small", &data);
        for chunk in [1, 63, 64, 128, 4096] {
            for pool in [1, 2, 3] {
                for len in [0, 1, chunk - 1, chunk, chunk + 1, 10_000] {
                    std::fs::write(&p, &data[..len]).unwrap();
                    let (sha256, sha512, md5) = oneshot(&data[..len]);
                    let d = digest_with(&p, chunk, pool, |_| {}).unwrap();
                    assert_eq!(
                        (d.sha256, d.sha512, d.md5, d.size),
                        (sha256, sha512, md5, len as u64),
                        "chunk {chunk}, pool {pool}, length {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn unreadable_file_is_an_io_error_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone.img");
        let e = digest_file(&gone, |_| {}).unwrap_err();
        assert!(matches!(e, DigestError::Io(crate::IoError { ref path, .. }) if path == &gone));
        // A directory opens but does not read: the error comes from the read loop.
        let e = digest_file(dir.path(), |_| {}).unwrap_err();
        assert!(
            matches!(e, DigestError::Io(crate::IoError { ref path, .. }) if path == dir.path())
        );
    }

    #[test]
    fn parses_both_sum_formats() {
        let v = parse_sums("ab12  a.img\nCD34 *b.img\n", Path::new("S")).unwrap();
        assert_eq!(
            v,
            vec![
                ("ab12".into(), "a.img".into()),
                ("cd34".into(), "b.img".into())
            ]
        );
        assert!(parse_sums("nothex  x\n", Path::new("S")).is_err());
    }
}
