//! A Kolla-Ansible target host: Python, chrony, LVM, bridge and kernel settings.

use super::*;
use crate::definition::{Arch, Definition};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KollaHost {
    /// Kolla-Ansible release the host is prepared for (informational; written to /etc/imgbuild).
    pub openstack_release: String,
}

impl Default for KollaHost {
    fn default() -> Self {
        KollaHost {
            openstack_release: "2025.2".into(),
        }
    }
}

pub(super) fn fragment(k: &KollaHost) -> Fragment {
    let mut fr = Fragment::default();
    fr.pkgs(&[
        "python3",
        "python3-venv",
        "python3-dev",
        "python3-docker",
        "libffi-dev",
        "gcc",
        "libssl-dev",
        "chrony",
        "lvm2",
        "thin-provisioning-tools",
        "bridge-utils",
        "iptables",
        "qemu-guest-agent",
    ]);
    fr.files.push(WriteFile::new(
        "/etc/sysctl.d/60-kolla.conf",
        "net.ipv4.ip_forward = 1\nnet.ipv4.conf.all.rp_filter = 0\nnet.ipv4.conf.default.rp_filter = 0\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n",
        "0644",
    ));
    fr.files.push(WriteFile::new(
        "/etc/modules-load.d/kolla.conf",
        "br_netfilter\nopenvswitch\ndm_thin_pool\n",
        "0644",
    ));
    fr.files.push(WriteFile::new(
        "/etc/imgbuild/kolla.env",
        format!("OPENSTACK_RELEASE={}\n", k.openstack_release),
        "0644",
    ));
    fr.step(
        "40-kolla-host",
        format!(
            "{}\n{} || true\n",
            enable_units(&["chrony.service"]),
            enable_units(&["qemu-guest-agent.service"])
        ),
    );
    fr
}

/// The `kolla_host` feature.
pub struct Feature;

impl super::Feature for Feature {
    fn name(&self) -> &'static str {
        "kolla_host"
    }
    fn enabled(&self, d: &Definition) -> bool {
        d.features.kolla_host.is_some()
    }
    fn fragment(&self, d: &Definition, _arch: Arch) -> Option<Fragment> {
        d.features.kolla_host.as_ref().map(fragment)
    }
    fn requires(&self) -> &'static [&'static str] {
        &["docker"]
    }
}
