//! OpenStack: Keystone v3 authentication (`auth`) and the Glance upload behind
//! `imgbuild publish` (`publish`), over the crate's one HTTP module (`crate::http`).

pub mod auth;
pub mod publish;
