//! DRBD 9 for k3s storage nodes (Piraeus/LINSTOR), and optionally LINSTOR's satellite on the
//! host.

use super::*;
use crate::definition::{Arch, Definition, Resolved, SmokeCheck};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Drbd {
    /// DRBD 9's kernel module from LINBIT's PPA (`drbd-dkms`, built against the image's
    /// kernel headers). The kernel's own module is DRBD 8.4, which LINSTOR cannot use.
    pub kernel_module: bool,
    /// LINSTOR's satellite as a host service. Off for Piraeus, whose operator runs the
    /// satellite as a pod (piraeusdatastore/piraeus-operator docs); on for a LINSTOR set up
    /// by hand.
    pub linstor_satellite: bool,
}

impl Default for Drbd {
    fn default() -> Self {
        Drbd {
            kernel_module: true,
            linstor_satellite: false,
        }
    }
}

pub(super) fn fragment(d: &Definition, dr: &Drbd) -> Fragment {
    let mut fr = Fragment::default();
    fr.pkgs(&["drbd-utils", "lvm2", "thin-provisioning-tools"]);
    if (dr.kernel_module || dr.linstor_satellite) && d.os.distro == "ubuntu" {
        fr.apt_sources.push((
            "linbit".into(),
            json!({ "source": "ppa:linbit/linbit-drbd9-stack" }),
        ));
    }
    if dr.kernel_module {
        // DKMS builds against the headers of the kernel flavour the image boots (Ubuntu's cloud
        // images run `generic`); without them drbd-dkms installs and builds nothing.
        let headers = if d.os.distro == "ubuntu" {
            "linux-headers-generic"
        } else {
            "linux-headers-cloud-amd64"
        };
        fr.pkgs(&[headers, "drbd-dkms"]);
    }
    if dr.linstor_satellite {
        fr.pkgs(&["linstor-satellite"]);
    }
    fr.files.push(WriteFile::new(
        "/etc/modules-load.d/drbd.conf",
        "drbd\n",
        "0644",
    ));
    // DRBD must not call out to drbdadm from the kernel: LINSTOR (Piraeus) manages the
    // resources, and a helper in a container-managed node hangs state changes
    // (piraeus-operator docs: `usermode_helper=disabled`).
    fr.files.push(WriteFile::new(
        "/etc/modprobe.d/drbd.conf",
        "options drbd usermode_helper=disabled\n",
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
    fn validate(&self, r: &Resolved, err: &mut dyn FnMut(&str, String)) {
        let Some(dr) = &r.definition.features.drbd else {
            return;
        };
        // LINBIT's PPA publishes arm64 builds, but none was ever installed and loaded here.
        if dr.kernel_module && r.definition.arch.contains(&Arch::Arm64) {
            err(
                "features.drbd.kernel_module",
                "DRBD 9 on arm64 is unverified (no build of LINBIT's arm64 packages has been proven): list only amd64 in `arch`".into(),
            );
        }
    }
    /// The kernel's DRBD module is 9.x (the in-tree 8.4 module passes `drbdadm --version`
    /// with the userland alone) and was loaded with the usermode helper off.
    fn smoke_checks(&self, d: &Definition, _launch: Option<&LaunchUser>) -> Vec<SmokeCheck> {
        match &d.features.drbd {
            Some(dr) if dr.kernel_module => {
                vec![SmokeCheck::builtin("drbd-9-module", json!({"major": 9}))]
            }
            _ => Vec::new(),
        }
    }
    /// With `linstor_satellite`: the satellite's plain and SSL ports (3366, 3367); the DRBD
    /// resources' own ports (7000 and up) are made after launch and declared in
    /// `smoke.listen` if needed.
    fn listeners(&self, d: &Definition) -> Vec<crate::definition::Listener> {
        use crate::definition::Listener;
        match &d.features.drbd {
            Some(dr) if dr.linstor_satellite => vec![Listener::tcp(3366), Listener::tcp(3367)],
            _ => Vec::new(),
        }
    }
}
