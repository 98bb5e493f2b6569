//! imgbuild: golden VM images from declarative definitions.
//!
//! Data flows one way: `definition` (load, extends, validate) → `render` (pure: Packer HCL,
//! cloud-init, compose) → `check` (the real validators) → `build` (base, provision, compact,
//! `smoke`, `digest`, `manifest`, dist/).

pub mod base;
pub mod bootstrap;
pub mod cache;
pub mod check;
pub mod commands;
pub mod definition;
pub mod digest;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod features;
pub mod glance;
pub mod host;
pub mod http;
pub mod lab;
pub mod openpgp;
pub mod pipeline;
pub mod progress;
pub mod protocol;
pub mod qemu;
pub mod rdp;
pub mod registry;
pub mod remote;
pub mod render;
pub mod vnc;
pub mod yaml;

/// An I/O error with the path it happened on: the one shape every module's error enum
/// carries (`Io(#[from] IoError)`), made with `.map_err(IoError::at(path))?`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IoError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// The error maker for an operation on `path`.
    pub fn at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> IoError + '_ {
        move |source| IoError {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Lower-case hex of `bytes` (digests, random ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (A-Z a-z 0-9 - . _ ~): for
/// purl segments and URL query values.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A random (version 4) UUID.
pub fn uuid_v4() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `n` random bytes from the kernel (/dev/urandom; panics if it cannot be read).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("reading /dev/urandom");
    b
}

pub use error::{Error, Result};
