//! DRBD (and LINSTOR's satellite) for k3s storage nodes.

use super::*;
use crate::definition::{Arch, Definition};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Drbd {
    /// Also install LINSTOR's satellite for piraeus/linstor CSI.
    pub linstor: bool,
}

pub(super) fn fragment(d: &Definition, dr: &Drbd) -> Fragment {
    let mut fr = Fragment::default();
    fr.pkgs(&["drbd-utils", "lvm2", "thin-provisioning-tools"]);
    if dr.linstor && d.os.distro == "ubuntu" {
        fr.apt_sources.push((
            "linbit".into(),
            json!({ "source": "ppa:linbit/linbit-drbd9-stack" }),
        ));
        fr.pkgs(&["drbd-dkms", "linstor-satellite"]);
    }
    fr.files.push(WriteFile::new(
        "/etc/modules-load.d/drbd.conf",
        "drbd\n",
        "0644",
    ));
    fr
}

/// The `drbd` feature.
pub struct Feature;

impl super::Feature for Feature {
    fn name(&self) -> &'static str {
        "drbd"
    }
    fn enabled(&self, d: &Definition) -> bool {
        d.features.drbd.is_some()
    }
    fn fragment(&self, d: &Definition, _arch: Arch) -> Option<Fragment> {
        d.features.drbd.as_ref().map(|s| fragment(d, s))
    }
    fn requires(&self) -> &'static [&'static str] {
        &["k3s"]
    }
    fn requires_reason(&self) -> &'static str {
        "serves k3s storage nodes: "
    }
    /// With `linstor`: the satellite's plain and SSL ports (3366, 3367); the DRBD resources'
    /// own ports (7000 and up) are made after launch and declared in `smoke.listen` if needed.
    fn listeners(&self, d: &Definition) -> Vec<crate::definition::Listener> {
        use crate::definition::Listener;
        match &d.features.drbd {
            Some(dr) if dr.linstor => vec![Listener::tcp(3366), Listener::tcp(3367)],
            _ => Vec::new(),
        }
    }
}
