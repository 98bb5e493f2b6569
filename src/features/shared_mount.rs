//! A shared NFS mount (the export is given at launch) with a model cache below it.

use super::*;
use crate::definition::{Arch, Definition, Listener};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedMount {
    /// Where the NFS export given at launch is mounted.
    pub path: String,
    /// The model cache below it.
    pub model_cache: String,
}

impl Default for SharedMount {
    fn default() -> Self {
        SharedMount {
            path: "/shared".into(),
            model_cache: "/shared/models".into(),
        }
    }
}

pub(super) fn fragment(s: &SharedMount) -> Fragment {
    let mut fr = Fragment::default();
    fr.pkgs(&["nfs-common"]);
    fr.offline_step(
        "40-shared-mount",
        format!(
            "mkdir -p {p}\n# The NFS export is given at launch (imgbuild userdata --shared).\n",
            p = crate::exec::quote(&s.path)
        ),
    );
    fr
}

/// The `shared_mount` feature.
pub struct Feature;

impl super::Feature for Feature {
    fn name(&self) -> &'static str {
        "shared_mount"
    }
    fn enabled(&self, d: &Definition) -> bool {
        d.features.shared_mount.is_some()
    }
    fn fragment(&self, d: &Definition, _arch: Arch) -> Option<Fragment> {
        d.features.shared_mount.as_ref().map(fragment)
    }
    /// nfs-common depends on rpcbind, which Debian and Ubuntu enable with a socket on port 111
    /// (TCP and UDP, all addresses); an NFSv3 mount needs it, so it is declared, not stopped.
    fn listeners(&self, _d: &Definition) -> Vec<Listener> {
        vec![Listener::tcp(111), Listener::udp(111)]
    }
}
