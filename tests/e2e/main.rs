//! The end-to-end tier: real builds with the real tools (mmdebstrap, QEMU under TCG or KVM,
//! `packer build`), smoke boots, and the QEMU driver against a real QEMU. Slow; `make test-e2e`
//! runs it (`cargo test --test e2e`). The desktop twin's test (`desktop_e2e::`) is the longest:
//! scripts/test.sh starts it beside the rest of the suite.

#[path = "../common/mod.rs"]
mod common;

mod arm64_e2e;
mod build_e2e;
mod desktop_e2e;
mod disk_full;
mod gitlab_local;
mod guards_e2e;
mod kolla_e2e;
mod parallel_e2e;
mod qemu_vm;
mod remote_e2e;

/// The build VMs of this binary: a test that runs several builds at once (parallel_e2e) holds
/// it alone, the one-build tests (build_e2e) share it, as when they were binaries of their own
/// run one after the other: at most two build VMs of this binary's tests at a time.
pub static VMS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A share of [`VMS`] for a test that runs one build at a time.
pub fn one_vm() -> std::sync::RwLockReadGuard<'static, ()> {
    VMS.read().unwrap_or_else(|e| e.into_inner())
}

/// All of [`VMS`], for a test that runs two builds at once.
pub fn all_vms() -> std::sync::RwLockWriteGuard<'static, ()> {
    VMS.write().unwrap_or_else(|e| e.into_inner())
}
