//! OpenStack: Keystone v3 authentication (`auth`) and the Glance upload behind
//! `imgbuild publish` (`publish`), over one HTTP module (`http`).

pub mod auth;
pub mod http;
pub mod publish;
