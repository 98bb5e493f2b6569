//! A Lima instance definition (`limactl start ./IMAGE.yaml`) that boots a built artifact:
//! location, arch and digest from the manifest, cpus/memory/disk from the definition, and
//! port forwards for the desktop (noVNC, VNC, RDP) and the stack's web UIs. Pure.

use crate::definition::{parse_size, Arch, Firmware, Resolved};
use crate::yaml;
use serde_json::{json, Value};
use std::path::Path;

/// A forwarded port: guest port on the guest's loopback or any address → host's 127.0.0.1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub guest: u16,
    pub host: u16,
    pub what: String,
}

/// The ports worth forwarding: the desktop's and the compose stack's published ones.
pub fn forwards(r: &Resolved) -> Vec<Forward> {
    let mut out = Vec::new();
    if let Some(d) = &r.definition.features.desktop {
        out.push(Forward {
            guest: d.novnc_port,
            host: d.novnc_port,
            what: "noVNC".into(),
        });
        let vnc = 5900 + d.vnc_display;
        out.push(Forward {
            guest: vnc,
            host: vnc,
            what: "VNC".into(),
        });
        if d.rdp {
            out.push(Forward {
                guest: 3389,
                host: 3389,
                what: "RDP".into(),
            });
        }
    }
    if let Ok(Some(stack)) = super::compose::render(r) {
        if let Ok(doc) = serde_norway::from_str::<Value>(&stack.compose_yaml) {
            for (name, svc) in doc["services"].as_object().into_iter().flatten() {
                for p in svc["ports"].as_array().into_iter().flatten() {
                    // "127.0.0.1:3000:8080" or "3000:8080": the host side is the guest's port.
                    let parts: Vec<&str> = p.as_str().unwrap_or_default().split(':').collect();
                    let host_side = match parts.len() {
                        3 => parts[1],
                        2 => parts[0],
                        _ => continue,
                    };
                    if let Ok(port) = host_side.parse::<u16>() {
                        if !out.iter().any(|f| f.guest == port) {
                            out.push(Forward {
                                guest: port,
                                host: port,
                                what: name.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

pub fn lima_arch(a: Arch) -> &'static str {
    match a {
        Arch::Amd64 => "x86_64",
        Arch::Arm64 => "aarch64",
    }
}

/// The built artifact a Lima file points at (from its manifest).
pub struct Built<'a> {
    pub image: &'a str,
    pub version: &'a str,
    pub arch: Arch,
    pub sha256: &'a str,
}

/// The instance YAML for the artifact at `artifact` described by `m`.
pub fn render(r: &Resolved, m: &Built, artifact: &Path) -> String {
    let d = &r.definition;
    let disk_gib = parse_size(&d.disk.size)
        .map(|b| b.div_ceil(1 << 30))
        .unwrap_or(20);
    let mut doc = serde_json::Map::new();
    doc.insert("vmType".into(), json!("qemu"));
    doc.insert("arch".into(), json!(lima_arch(m.arch)));
    doc.insert(
        "images".into(),
        json!([{
            "location": artifact.display().to_string(),
            "arch": lima_arch(m.arch),
            "digest": format!("sha256:{}", m.sha256),
        }]),
    );
    doc.insert("cpus".into(), json!(d.build.cpus.max(2)));
    doc.insert(
        "memory".into(),
        json!(format!("{}MiB", d.build.memory.max(2048))),
    );
    doc.insert("disk".into(), json!(format!("{disk_gib}GiB")));
    if m.arch == Arch::Amd64 && d.build.firmware == Firmware::Bios {
        doc.insert("firmware".into(), json!({"legacyBIOS": true}));
    }
    // The image brings its own Docker (if any); Lima's containerd stays off. No host mounts:
    // the workspace's data lives in the VM and on /shared.
    doc.insert("containerd".into(), json!({"system": false, "user": false}));
    doc.insert("mounts".into(), json!([]));
    let fw = forwards(r);
    if !fw.is_empty() {
        doc.insert(
            "portForwards".into(),
            Value::Array(
                fw.iter()
                    .map(|f| {
                        json!({"guestPort": f.guest, "hostPort": f.host, "hostIP": "127.0.0.1"})
                    })
                    .collect(),
            ),
        );
    }
    let mut head = format!(
        "# Lima instance for {} {} ({}), written by `imgbuild lima`.\n# Start: limactl start --name={} THIS_FILE\n",
        m.image, m.version, m.arch, m.image
    );
    for f in &fw {
        head.push_str(&format!(
            "#   {:<16} http://127.0.0.1:{} (guest port {})\n",
            f.what, f.host, f.guest
        ));
    }
    head + &yaml::to_string(&Value::Object(doc))
}

/// One node of a lab, ready to render: its name and settings, the builds it boots (one per
/// arch) and the deployer's SSH keys.
pub struct LabNode<'a> {
    pub lab: &'a crate::lab::Lab,
    pub name: &'a str,
    pub node: &'a crate::lab::Node,
    /// Every arch built, each with its artifact's absolute path.
    pub builds: Vec<(Built<'a>, std::path::PathBuf)>,
    /// OpenSSH public keys for the Lima user (already checked).
    pub ssh_keys: &'a [String],
}

/// Where the netplan override that keeps NICs without an address goes. Lima writes its own
/// network config (every NIC `dhcp4: true`, matched by MAC, renamed with `set-name`:
/// lima-vm/lima pkg/cidata/cidata.TEMPLATE.d/network-config @ v2.2.0) through cloud-init,
/// re-read at every boot (the instance id changes each boot, cidata.go); netplan merges
/// definitions of the same id across files in lexical order, so a later file turns DHCP off.
pub const NETPLAN_OVERRIDE: &str = "/etc/netplan/90-imgbuild-unaddressed.yaml";

/// The netplan override for NICs `ifaces` (no DHCP, no RA, no link-local address).
pub fn netplan_unaddressed(ifaces: &[&str]) -> String {
    let mut eth = serde_json::Map::new();
    for i in ifaces {
        eth.insert(
            (*i).into(),
            json!({"dhcp4": false, "dhcp6": false, "accept-ra": false, "link-local": []}),
        );
    }
    "# imgbuild lab: these NICs stay up without an address (Neutron's external interface).\n"
        .to_string()
        + &yaml::to_string(&json!({"network": {"version": 2, "ethernets": eth}}))
}

/// The boot-time provision script of a lab node. Lima runs `mode: system` scripts as root at
/// every boot, after its own boot scripts and after writing the `mode: data` files
/// (lima-vm/lima pkg/cidata/cidata.TEMPLATE.d/boot.sh @ v2.2.0: provision.data, then
/// provision.system).
pub fn provision_script(ifaces: &[&str], ssh_keys: &[String], cinder: Option<&str>) -> String {
    let mut s = String::from("#!/bin/bash\n# Written by `imgbuild lima --lab`; Lima runs it at every boot.\nset -eux -o pipefail\n");
    if !ifaces.is_empty() {
        s.push_str(&format!(
            "# {NETPLAN_OVERRIDE} (written by Lima before this) turns DHCP off; drop what the\n# first lease gave, keep the links up for Open vSwitch.\nnetplan apply\n"
        ));
        for i in ifaces {
            s.push_str(&format!(
                "ip -4 addr flush dev {i}\nip -6 addr flush dev {i} scope global\nip link set {i} up\n"
            ));
        }
    }
    if !ssh_keys.is_empty() {
        // {{.User}} and {{.Home}}: Lima's guest template fields (pkg/limayaml/defaults.go
        // executeGuestTemplate @ v2.2.0).
        s.push_str("# The deployer's key, for the Lima user (passwordless sudo: Lima's default).\ninstall -d -m 0700 -o \"{{.User}}\" \"{{.Home}}/.ssh\"\nkeys=\"{{.Home}}/.ssh/authorized_keys\"\ntouch \"$keys\"; chown \"{{.User}}\" \"$keys\"; chmod 0600 \"$keys\"\n");
        for k in ssh_keys {
            let q = crate::exec::quote(k);
            s.push_str(&format!(
                "grep -qxF {q} \"$keys\" || echo {q} >>\"$keys\"\n"
            ));
        }
    }
    if let Some(dev) = cinder {
        s.push_str(&format!(
            "# Cinder's LVM group on the raw disk (idempotent; refuses a disk with data).\n{} {dev}\n",
            crate::features::kolla_host::CINDER_VOLUMES_BIN
        ));
    }
    s
}

/// The guest device of the `i`th additional disk: Lima attaches them in order after the root
/// disk (lima-vm/lima pkg/cidata/cidata.go diskDeviceNameFromOrder @ v2.2.0: `vd` + 'b'+i).
pub fn extra_disk_device(i: usize) -> String {
    format!("/dev/vd{}", (b'b' + i as u8) as char)
}

/// A lab node's instance YAML.
pub fn render_lab_node(n: &LabNode) -> String {
    let node = n.node;
    let mut doc = serde_json::Map::new();
    doc.insert("vmType".into(), json!(n.lab.vm_type.as_str()));
    // One arch built: that arch (QEMU emulates it on another host); both: the host's (Lima
    // picks the image entry of the instance's arch, pkg/instance/start.go).
    if let [only] = n.builds.as_slice() {
        doc.insert("arch".into(), json!(lima_arch(only.0.arch)));
    }
    doc.insert(
        "images".into(),
        Value::Array(
            n.builds
                .iter()
                .map(|(b, path)| {
                    json!({
                        "location": path.display().to_string(),
                        "arch": lima_arch(b.arch),
                        "digest": format!("sha256:{}", b.sha256),
                    })
                })
                .collect(),
        ),
    );
    doc.insert("cpus".into(), json!(node.cpus));
    doc.insert("memory".into(), json!(node.memory));
    doc.insert("disk".into(), json!(node.disk));
    doc.insert(
        "mounts".into(),
        Value::Array(
            node.mounts
                .iter()
                .map(|m| json!({"location": m.location, "writable": m.writable}))
                .collect(),
        ),
    );
    doc.insert("containerd".into(), json!({"system": false, "user": false}));
    // Plain mode: no guest agent, so no automatic forwarding of every port the node listens
    // on (a Kolla node's MariaDB, RabbitMQ, APIs...) to the host's loopback, no mounts beyond
    // these, no containerd; provision scripts still run (lima-vm/lima templates/default.yaml
    // `plain` @ v2.2.0).
    doc.insert("plain".into(), json!(node.mounts.is_empty()));
    if !node.nics.is_empty() {
        doc.insert(
            "networks".into(),
            Value::Array(
                node.nics
                    .iter()
                    .map(|nic| json!({"lima": nic.network, "interface": nic.interface}))
                    .collect(),
            ),
        );
    }
    if !node.disks.is_empty() {
        // format: false: Lima neither partitions nor formats them (LVM and Ceph want the raw
        // disk). Lima's boot script still tries to mount /dev/vdX1 and logs a warning when
        // there is none (pkg/cidata/cidata.TEMPLATE.d/boot.Linux/05-lima-disks.sh).
        doc.insert(
            "additionalDisks".into(),
            Value::Array(
                node.disks
                    .iter()
                    .map(|d| json!({"name": d.name, "format": false}))
                    .collect(),
            ),
        );
    }
    let unaddressed: Vec<&str> = node
        .nics
        .iter()
        .filter(|n| !n.address)
        .map(|n| n.interface.as_str())
        .collect();
    let cinder = node
        .disks
        .iter()
        .position(|d| d.cinder_volumes)
        .map(extra_disk_device);
    let mut provision = Vec::new();
    if !unaddressed.is_empty() {
        provision.push(json!({
            "mode": "data",
            "path": NETPLAN_OVERRIDE,
            "permissions": "600",
            "content": netplan_unaddressed(&unaddressed),
        }));
    }
    if !unaddressed.is_empty() || !n.ssh_keys.is_empty() || cinder.is_some() {
        provision.push(json!({
            "mode": "system",
            "script": provision_script(&unaddressed, n.ssh_keys, cinder.as_deref()),
        }));
    }
    if !provision.is_empty() {
        doc.insert("provision".into(), Value::Array(provision));
    }
    let mut head = format!(
        "# Lima instance `{}` of lab image {} (written by `imgbuild lima --lab`).\n",
        n.name, n.lab.image
    );
    for (b, _) in &n.builds {
        head.push_str(&format!("#   {} {} ({})\n", b.image, b.version, b.arch));
    }
    for (i, d) in node.disks.iter().enumerate() {
        head.push_str(&format!(
            "# Disk {} ({}) is {} in the guest; create it first: limactl disk create {} --size {}\n",
            d.name,
            d.size,
            extra_disk_device(i),
            d.name,
            d.size
        ));
    }
    head.push_str(&format!(
        "# Start: limactl start --name={} --tty=false THIS_FILE\n",
        n.name
    ));
    head + &yaml::to_string(&Value::Object(doc))
}

/// The lab's additions to Lima's networks.yaml (`~/.lima/_config/networks.yaml`, under
/// `networks:`): host-only socket_vmnet networks with DHCP from macOS's bootpd.
pub fn render_lab_networks(lab: &crate::lab::Lab) -> String {
    let mut nets = serde_json::Map::new();
    for (name, n) in &lab.networks {
        let g = u32::from(n.gateway);
        let m = u32::from(n.netmask);
        let dhcp_end = std::net::Ipv4Addr::from((g & m) | (!m & !1u32));
        nets.insert(
            name.clone(),
            json!({
                "mode": "host",
                "gateway": n.gateway.to_string(),
                "dhcpEnd": dhcp_end.to_string(),
                "netmask": n.netmask.to_string(),
            }),
        );
    }
    "# Add these under `networks:` in ~/.lima/_config/networks.yaml (written by `imgbuild lima --lab`).\n"
        .to_string()
        + &yaml::to_string(&json!({ "networks": nets }))
}

/// The lab's start sequence: disks first, then each node.
pub fn render_lab_start(lab: &crate::lab::Lab) -> String {
    let mut s = String::from("#!/bin/sh\n# The lab's start sequence (written by `imgbuild lima --lab`). Needs socket_vmnet\n# (`limactl sudoers`) and the networks of networks.yaml in ~/.lima/_config/networks.yaml.\nset -eu\ncd \"$(dirname \"$0\")\"\n");
    for n in lab.nodes.values() {
        for d in &n.disks {
            s.push_str(&format!(
                "[ -n \"$(limactl disk ls --json {0} 2>/dev/null)\" ] || limactl disk create {0} --size {1}\n",
                d.name, d.size
            ));
        }
    }
    for name in lab.nodes.keys() {
        s.push_str(&format!(
            "limactl start --name={name} --tty=false ./{name}.yaml\n"
        ));
    }
    s
}
