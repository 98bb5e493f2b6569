//! imgbuild: golden VM images from declarative definitions.
//!
//! Data flows one way: `definition` (load, extends, validate) → `render` (pure: Packer HCL,
//! cloud-init, compose) → `check` (the real validators) → build stages.

pub mod base;
pub mod bootstrap;
pub mod check;
pub mod definition;
pub mod digest;
pub mod exec;
pub mod qemu;
pub mod render;
pub mod smoke;
