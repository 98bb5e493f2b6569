//! The tool-free tier: the imgbuild binary and library with the validators that run without a
//! VM (check-jsonschema, `cloud-init schema`, `packer validate`/`inspect`, PyYAML, qemu-img,
//! coreutils) and a local HTTP server; no QEMU guest, no mmdebstrap, no `packer build`, no
//! OpenStack. `make test-tool-free` runs it (`cargo test --test tool_free`).

#[path = "../common/mod.rs"]
mod common;

mod apt_keys;
mod base_cache;
mod catalog;
mod checksum;
mod cli_help;
mod compose_stack;
mod definition_errors;
mod desktop_clean;
mod firstboot_secrets;
mod fuzz_definitions;
mod gitlab_ci;
mod k3s_images;
mod kolla;
mod layering;
mod lima;
mod packer_versions;
mod pipeline_fake;
mod roundtrip;
mod smoke_guards;
mod smoke_kinds;
mod userdata;
mod vm_slots;
