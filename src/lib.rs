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
pub mod glance;
pub mod manifest;
pub mod progress;
pub mod qemu;
pub mod render;
pub mod smoke;
pub mod vnc;
