//! Hardening: SSH settings, sysctl and unattended upgrades.

use super::*;
use crate::definition::{Arch, Definition};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hardening {
    /// Disable SSH password logins.
    pub ssh_password_auth: bool,
    /// Disable root login over SSH.
    pub ssh_root_login: bool,
    /// Install and enable unattended security upgrades.
    pub unattended_upgrades: bool,
    /// sysctl settings written to /etc/sysctl.d/60-imgbuild.conf.
    pub sysctl: IndexMap<String, String>,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening {
            ssh_password_auth: false,
            ssh_root_login: false,
            unattended_upgrades: true,
            sysctl: IndexMap::new(),
        }
    }
}

pub(super) fn fragment(h: &Hardening) -> Fragment {
    let mut fr = Fragment::default();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    fr.files.push(WriteFile::new(
        "/etc/ssh/sshd_config.d/60-imgbuild.conf",
        format!(
            "# imgbuild hardening\nPasswordAuthentication {}\nKbdInteractiveAuthentication no\nPermitRootLogin {}\nX11Forwarding no\nMaxAuthTries 3\n",
            yes_no(h.ssh_password_auth),
            if h.ssh_root_login { "prohibit-password" } else { "no" }
        ),
        "0644",
    ));
    let mut sysctl = String::from("# imgbuild hardening\nkernel.kptr_restrict = 2\nkernel.dmesg_restrict = 1\nnet.ipv4.conf.all.accept_redirects = 0\nnet.ipv4.conf.default.accept_redirects = 0\nnet.ipv4.conf.all.send_redirects = 0\nnet.ipv4.conf.all.rp_filter = 1\n");
    for (k, v) in &h.sysctl {
        sysctl.push_str(&format!("{k} = {v}\n"));
    }
    fr.files.push(WriteFile::new(
        "/etc/sysctl.d/60-imgbuild.conf",
        sysctl,
        "0644",
    ));
    if h.unattended_upgrades {
        fr.pkgs(&["unattended-upgrades"]);
        fr.files.push(WriteFile::new(
            "/etc/apt/apt.conf.d/20auto-upgrades",
            "APT::Periodic::Update-Package-Lists \"1\";\nAPT::Periodic::Unattended-Upgrade \"1\";\n",
            "0644",
        ));
    }
    fr
}

/// The `hardening` feature.
pub struct Feature;

impl super::Feature for Feature {
    fn name(&self) -> &'static str {
        "hardening"
    }
    fn enabled(&self, d: &Definition) -> bool {
        d.features.hardening.is_some()
    }
    fn fragment(&self, d: &Definition, _arch: Arch) -> Option<Fragment> {
        d.features.hardening.as_ref().map(fragment)
    }
}
