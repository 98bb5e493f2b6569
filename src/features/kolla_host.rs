//! A Kolla-Ansible target host: what `kolla-ansible bootstrap-servers` would install and
//! configure, done at build time the way it does it (so it finds nothing to change and needs
//! no network for it), plus what its `prechecks` need and bootstrap leaves to the host.
//!
//! Read against openstack/ansible-collection-kolla stable/2025.2 @ e5c055a0 (the collection
//! kolla-ansible 21.x's bootstrap-servers applies) and openstack/kolla-ansible stable/2025.2
//! @ 257605a5 (`ansible/roles/prechecks`):
//! - Docker: `roles/docker/tasks/config.yml` writes /etc/docker/daemon.json with
//!   `iptables: false`, `bridge: none`, `ip-forward: false` and kolla's log options, masking
//!   Docker before installing it "which creates iptables rules before we disable iptables"
//!   (`tasks/install.yml`). The image ships that file byte for byte before Docker is installed,
//!   so no boot of the image runs Docker with its defaults (docker0, DOCKER chains).
//! - Docker SDK: `roles/docker_sdk` installs python3-setuptools, python3-pip, python3-docker
//!   and python3-dbus from apt on an externally managed Python (Debian 12's 3.11 and Ubuntu
//!   24.04's 3.12 are: `docker_sdk_packages_default` in `roles/docker_sdk/defaults/main.yml`);
//!   prechecks import docker and dbus (`prechecks/tasks/package_checks.yml`).
//! - Packages: `roles/packages` installs git, iputils-ping, tzdata and removes lxd, lxc,
//!   open-iscsi (it conflicts with kolla's iscsid container; Ubuntu's cloud image has it).
//! - /etc/hosts: `roles/etc_hosts` writes /etc/cloud/cloud.cfg.d/99-kolla.cfg
//!   (`manage_etc_hosts: false`) so cloud-init does not rewrite its entries at each boot.
//! - Time: bootstrap installs no NTP daemon; prechecks want one active and synchronized
//!   (`prechecks/tasks/timesync_checks.yml`): chrony, enabled. Debian hosts need
//!   /etc/timezone (`datetime_checks.yml`).
//! - Cinder LVM: prechecks run `vgs cinder-volumes` (`roles/cinder/tasks/precheck.yml`); the
//!   disk is known only at launch: `imgbuild-cinder-volumes DEVICE` (run by
//!   `imgbuild userdata --cinder-volumes DEVICE` or a Lima provision step) makes the group.

use super::*;
use crate::definition::{Arch, Definition, SmokeCheck};
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

/// /etc/docker/daemon.json as bootstrap-servers writes it with kolla-ansible's defaults:
/// `to_nice_json` (4-space indent, sorted keys) and no trailing newline
/// (ansible-collection-kolla `roles/docker/tasks/config.yml`, kolla-ansible
/// `ansible/group_vars/all/common.yml` docker_log_max_file/size).
pub const DOCKER_DAEMON_JSON: &str = "{\n    \"bridge\": \"none\",\n    \"ip-forward\": false,\n    \"iptables\": false,\n    \"log-opts\": {\n        \"max-file\": \"5\",\n        \"max-size\": \"50m\"\n    }\n}";

/// What `roles/etc_hosts` writes (content and mode as its `copy` task has them).
pub const CLOUD_CFG_NO_ETC_HOSTS: &str = "manage_etc_hosts: false";

/// The LVM volume group Cinder's LVM backend uses (kolla-ansible `cinder_volume_group`).
pub const CINDER_VG: &str = "cinder-volumes";

/// Makes the `cinder-volumes` group on a whole disk named at launch. Idempotent: a disk that
/// already is its physical volume is fine; a disk with anything else on it (a partition
/// table, a filesystem, another group) is refused, so a wrong device name never wipes data.
pub const CINDER_VOLUMES_SCRIPT: &str = r#"#!/bin/bash
# imgbuild-cinder-volumes DEVICE: the LVM volume group `cinder-volumes` on DEVICE (a whole,
# empty disk), as kolla-ansible's cinder guide makes it (pvcreate, vgcreate).
set -euo pipefail
vg=cinder-volumes
dev=${1:?usage: imgbuild-cinder-volumes DEVICE (e.g. /dev/vdb or /dev/disk/by-id/virtio-cinder)}
for _ in $(seq 1 30); do [ -b "$dev" ] && break; sleep 1; done
[ -b "$dev" ] || { echo "imgbuild-cinder-volumes: $dev is not a block device" >&2; exit 2; }
real=$(readlink -f "$dev")
if vgs "$vg" >/dev/null 2>&1; then
  if pvs --noheadings -o pv_name,vg_name 2>/dev/null | awk -v d="$real" -v g="$vg" '$1 == d && $2 == g {f=1} END {exit !f}'; then
    echo "imgbuild-cinder-volumes: $vg already on $real"
    exit 0
  fi
  echo "imgbuild-cinder-volumes: $vg exists, but not on $real" >&2
  exit 1
fi
if [ -n "$(lsblk -nro NAME "$real" | tail -n +2)" ] || [ -n "$(wipefs -n "$real" 2>/dev/null | tail -n +2)" ]; then
  echo "imgbuild-cinder-volumes: $real is not empty (partitions or signatures: wipefs -n $real); refusing" >&2
  exit 1
fi
pvcreate -q "$real"
vgcreate -q "$vg" "$real"
echo "imgbuild-cinder-volumes: made $vg on $real"
"#;

/// Where the image has it.
pub const CINDER_VOLUMES_BIN: &str = "/usr/local/sbin/imgbuild-cinder-volumes";

/// Packages bootstrap-servers removes on Debian-family hosts (`roles/packages` defaults
/// `ubuntu_pkg_removals`; libvirt-bin with the default libvirt container).
pub const REMOVED_PACKAGES: &[&str] = &["open-iscsi", "lxd", "lxd-installer", "lxc", "libvirt-bin"];

pub(super) fn fragment(k: &KollaHost) -> Fragment {
    let mut fr = Fragment::default();
    fr.pkgs(&[
        "python3",
        "python3-venv",
        "python3-docker",
        "python3-dbus",
        "python3-setuptools",
        "python3-pip",
        "chrony",
        "tzdata",
        "git",
        "iputils-ping",
        "apparmor",
        "lvm2",
        "thin-provisioning-tools",
        "bridge-utils",
        "qemu-guest-agent",
    ]);
    fr.files.push(WriteFile::new(
        "/etc/docker/daemon.json",
        DOCKER_DAEMON_JSON,
        "0644",
    ));
    fr.files.push(WriteFile::new(
        "/etc/cloud/cloud.cfg.d/99-kolla.cfg",
        CLOUD_CFG_NO_ETC_HOSTS,
        "0660",
    ));
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
    fr.files.push(WriteFile::new(
        CINDER_VOLUMES_BIN,
        CINDER_VOLUMES_SCRIPT,
        "0755",
    ));
    fr.offline_step(
        "40-kolla-host",
        format!(
            "{}\n{} || true\n\
             # What bootstrap-servers removes (roles/packages): only those installed (dpkg-query\n\
             # exits 1 for the names it does not know).\n\
             rm_pkgs=$(dpkg-query -W -f='${{Package}} ${{Status}}\\n' {} 2>/dev/null | awk '/ installed$/ {{print $1}}' || true)\n\
             if [ -n \"$rm_pkgs\" ]; then DEBIAN_FRONTEND=noninteractive apt-get purge -y $rm_pkgs; DEBIAN_FRONTEND=noninteractive apt-get autoremove -y --purge; fi\n\
             # Debian-family prechecks want /etc/timezone (datetime_checks.yml).\n\
             [ -s /etc/timezone ] || echo Etc/UTC > /etc/timezone\n",
            enable_units(&["chrony.service"]),
            enable_units(&["qemu-guest-agent.service"]),
            REMOVED_PACKAGES.join(" "),
        ),
    );
    fr
}

/// The smoke's check of what kolla-ansible's prechecks read on the host and bootstrap-servers
/// would otherwise change. Prints each defect; exit 0 only when there is none.
pub const READY_CHECK: &str = r#"bad=0
say() { echo "$*"; bad=1; }
python3 -c 'import docker, dbus' 2>/dev/null || say "python3 cannot import docker and dbus (prechecks' package_checks)"
# Byte for byte, without a trailing newline ($(...) drops the heredoc's).
printf '%s' "$(cat <<'J'
__DAEMON_JSON__
J
)" | cmp -s /etc/docker/daemon.json - || say "/etc/docker/daemon.json differs from what bootstrap-servers writes"
systemctl is-active -q docker || say "docker is not active"
# bootstrap-servers' docker role parses this (Docker >= 23; openstack/ansible-collection-kolla
# roles/docker/tasks/config.yml "Get Docker API version", stable/2025.2).
docker system info -f json >/dev/null 2>&1 || say "docker system info -f json fails: bootstrap-servers' docker role needs Docker 23 or later"
ip link show docker0 >/dev/null 2>&1 && say "docker0 exists: Docker ran with its default bridge"
iptables -S 2>/dev/null | grep -q -- '-N DOCKER' && say "DOCKER iptables chains exist: Docker ran with iptables on"
for p in __REMOVED__ nscd; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' && say "$p is installed (bootstrap-servers removes it / prechecks fail on it)"; done
[ -e /var/run/libvirt/libvirt-sock ] && say "a host libvirtd runs (nova-cell precheck)"
[ -s /etc/timezone ] || say "no /etc/timezone (datetime_checks)"
systemctl is-enabled -q chrony || say "chrony is not enabled (timesync_checks)"
grep -qx 'manage_etc_hosts: false' /etc/cloud/cloud.cfg.d/99-kolla.cfg || say "cloud-init still manages /etc/hosts"
[ -x __CINDER__ ] || say "no __CINDER__"
exit $bad"#;

/// The `kolla-host-ready` smoke check.
pub fn ready_check() -> SmokeCheck {
    SmokeCheck {
        name: "kolla-host-ready".into(),
        kind: crate::definition::CheckKind::Command {
            command: READY_CHECK
                .replace("__DAEMON_JSON__", DOCKER_DAEMON_JSON)
                .replace("__REMOVED__", &REMOVED_PACKAGES.join(" "))
                .replace("__CINDER__", CINDER_VOLUMES_BIN),
            expect_exit: Some(0),
            expect_output: None,
        },
    }
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
    fn smoke_checks(&self, _d: &Definition, _launch: Option<&LaunchUser>) -> Vec<SmokeCheck> {
        vec![ready_check()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_json_is_what_ansible_to_nice_json_writes() {
        // Byte for byte against Python's json.dumps (Ansible's to_nice_json):
        // tests/tool_free/kolla.rs; here: it parses and has kolla's settings.
        let v: serde_json::Value = serde_json::from_str(DOCKER_DAEMON_JSON).unwrap();
        assert_eq!(v["iptables"], false);
        assert_eq!(v["ip-forward"], false);
        assert_eq!(v["bridge"], "none");
        assert_eq!(v["log-opts"]["max-file"], "5");
        assert!(!DOCKER_DAEMON_JSON.ends_with('\n'));
    }

    #[test]
    fn the_ready_check_has_every_placeholder_filled() {
        let c = ready_check();
        let crate::definition::CheckKind::Command { command, .. } = c.kind else {
            panic!("not a command check")
        };
        assert!(!command.contains("__"), "{command}");
        assert!(command.contains("open-iscsi lxd"));
    }
}
