//! Digests of an artifact: sha256, sha512 and md5 (Glance's `os_hash_value` and `checksum`)
//! in one read of the file; `sha256sum`-format lines and their verification.

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};
use std::io::Read;
use std::path::{Path, PathBuf};

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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

const CHUNK: usize = 4 << 20;

/// Reads `path` once, feeding every chunk to the three hashers. The reader thread and the
/// hashing threads overlap: sha512 and md5 run beside sha256 on their own cores.
pub fn digest_file(path: &Path, mut progress: impl FnMut(u64)) -> Result<Digests, DigestError> {
    let io = |source| DigestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let (tx512, rx512) = std::sync::mpsc::sync_channel::<std::sync::Arc<Vec<u8>>>(4);
    let (txmd5, rxmd5) = std::sync::mpsc::sync_channel::<std::sync::Arc<Vec<u8>>>(4);
    let h512 = std::thread::spawn(move || {
        let mut h = Sha512::new();
        for c in rx512 {
            h.update(&c[..]);
        }
        crate::render::hex(&h.finalize())
    });
    let hmd5 = std::thread::spawn(move || {
        let mut h = Md5::new();
        for c in rxmd5 {
            h.update(&c[..]);
        }
        crate::render::hex(&h.finalize())
    });
    let mut sha256 = Sha256::new();
    let mut size = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        while n < CHUNK {
            let r = f.read(&mut buf[n..]).map_err(io)?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        buf.truncate(n);
        let chunk = std::sync::Arc::new(buf);
        // A closed channel means its thread died; join below reports it.
        let _ = tx512.send(chunk.clone());
        let _ = txmd5.send(chunk.clone());
        sha256.update(&chunk[..]);
        size += n as u64;
        progress(size);
    }
    drop(tx512);
    drop(txmd5);
    Ok(Digests {
        sha256: crate::render::hex(&sha256.finalize()),
        sha512: h512.join().expect("sha512 thread"),
        md5: hmd5.join().expect("md5 thread"),
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

    #[test]
    fn known_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        let d = digest_file(&p, |_| {}).unwrap();
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert!(d.sha512.starts_with("ddaf35a193617aba"));
        assert_eq!(d.size, 3);
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
