//! imgbuild: golden VM images from declarative definitions.
//!
//! Data flows one way: `definition` (load, extends, validate) → `render` (pure: Packer HCL,
//! cloud-init, compose) → `check` (the real validators) → `build` (base, provision, compact,
//! `smoke`, `digest`, `manifest`, dist/).

pub mod base;
pub mod bootstrap;
pub mod build;
pub mod cache;
pub mod check;
pub mod definition;
pub mod digest;
pub mod doctor;
pub mod exec;
pub mod features;
pub mod glance;
pub mod manifest;
pub mod progress;
pub mod qemu;
pub mod render;
pub mod smoke;
pub mod vnc;

/// `n` random bytes from the kernel (/dev/urandom; panics if it cannot be read).
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("reading /dev/urandom");
    b
}
