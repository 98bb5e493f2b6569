//! The OpenStack tier: a real Keystone v3 + Glance v2 on 127.0.0.1
//! (scripts/openstack-test-stack.sh, one stack per test binary: see common::openstack), used by
//! `imgbuild publish` and the authentication library. `make test-openstack` runs it
//! (`cargo test --test openstack`).

#[path = "../common/mod.rs"]
mod common;

mod keystone_auth;
mod publish;
mod stack_script;
