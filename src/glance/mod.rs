//! OpenStack: Keystone v3 authentication (`auth`) over one HTTP module (`http`). The Glance
//! upload itself (`imgbuild publish`) is the next step; see the issue note.

pub mod auth;
pub mod http;
pub mod publish;
