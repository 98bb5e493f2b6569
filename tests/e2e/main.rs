//! The end-to-end tier: real builds with the real tools (mmdebstrap, QEMU under TCG or KVM,
//! `packer build`), smoke boots, and the QEMU driver against a real QEMU. Slow; `make test-e2e`
//! runs it (`cargo test --test e2e`). The desktop twin's test (`desktop_e2e::`) is the longest:
//! scripts/test.sh starts it beside the rest of the suite.

#[path = "../common/mod.rs"]
mod common;

mod build_e2e;
mod desktop_e2e;
mod parallel_e2e;
mod qemu_vm;
