//! A lab description (`imgbuild lima --lab FILE`): several Lima instances of one image, each
//! with its size, its NICs on Lima's socket_vmnet networks (one of them kept without an
//! address, as Neutron's external interface must be), raw extra disks (Ceph OSDs, Cinder's
//! LVM group) and the SSH key the deployer uses. The model, loading and checks; rendering is
//! in render::lima. Bad input is exit 2 naming the file, line and field.

use crate::definition::source_map::SourceMap;
use indexmap::IndexMap;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Lima's VM drivers a lab may name (lima-vm/lima pkg/limatype/lima_yaml.go VMTypes @ v2.2.0;
/// wsl2 is Windows-only and no use here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmType {
    /// QEMU (with HVF on macOS): any arch, snapshots; the seed lab's choice.
    #[default]
    Qemu,
    /// Apple's Virtualization.framework: the host's arch only, raw disks.
    Vz,
}

impl VmType {
    pub fn as_str(self) -> &'static str {
        match self {
            VmType::Qemu => "qemu",
            VmType::Vz => "vz",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lab {
    /// The image every node boots (its newest build per arch in the dist folder).
    pub image: String,
    #[serde(default)]
    pub vm_type: VmType,
    /// A public key file (OpenSSH) installed for the Lima user on every node, for the
    /// deployer's SSH (Kolla-Ansible from the host). `~/` is the invoking user's home.
    #[serde(default)]
    pub ssh_key: Option<String>,
    /// Host-only socket_vmnet networks the lab adds to Lima's networks.yaml (Lima's own
    /// `shared`, `host` and `bridged` need no entry).
    #[serde(default)]
    pub networks: IndexMap<String, LabNetwork>,
    pub nodes: IndexMap<String, Node>,
}

/// A `mode: host` network for Lima's networks.yaml (lima-vm/lima pkg/networks/networks.go
/// Network @ v2.2.0: gateway, dhcpEnd, netmask).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabNetwork {
    pub gateway: std::net::Ipv4Addr,
    #[serde(default = "default_netmask")]
    pub netmask: std::net::Ipv4Addr,
}

fn default_netmask() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(255, 255, 255, 0)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub cpus: u32,
    /// e.g. `32GiB` (Lima's units: go-units RAMInBytes, binary multiples).
    pub memory: String,
    /// The root disk (at least the image's virtual size).
    pub disk: String,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub disks: Vec<ExtraDisk>,
    /// Host folders to mount (none unless asked).
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// A network of Lima's networks.yaml: `shared`, `host`, or one of the lab's.
    pub network: String,
    /// The guest's name for it (Lima renames the NIC by its MAC; under 16 bytes).
    pub interface: String,
    /// false: the NIC stays up without any address (Neutron's external interface).
    #[serde(default = "yes")]
    pub address: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraDisk {
    /// Lima's disk name (`limactl disk create NAME`), unique in the lab.
    pub name: String,
    pub size: String,
    /// Make the `cinder-volumes` LVM group on it at boot (kolla_host images).
    #[serde(default)]
    pub cinder_volumes: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub location: String,
    #[serde(default)]
    pub writable: bool,
}

/// Lima's built-in networks (lima-vm/lima pkg/networks/networks.TEMPLATE.yaml @ v2.2.0).
pub const LIMA_NETWORKS: &[&str] = &["shared", "host", "bridged"];

/// A bad lab file (exit 2): where and what.
#[derive(Debug, thiserror::Error)]
#[error("{file}{at}: {field}: {message}")]
pub struct LabError {
    pub file: String,
    pub at: String,
    pub field: String,
    pub message: String,
}

/// go-units RAMInBytes (Lima's size parser): a number, then an optional k/m/g/t/p with
/// optional `b`/`ib`, binary multiples, case-insensitive (docker/go-units size.go @ v0.5.0).
pub fn lima_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let mul: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    (n >= 0.0).then_some((n * mul as f64) as u64)
}

/// Lima's identifier rule for disk names (lima-vm/lima pkg/identifiers/validate.go @ v2.2.0):
/// `^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`, at most 76 characters.
pub fn lima_identifier(s: &str) -> bool {
    s.len() <= 76
        && !s.is_empty()
        && s.split(['.', '_', '-'])
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Loads and checks a lab file.
pub fn load(path: &Path) -> Result<Lab, LabError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| LabError {
        file: file.clone(),
        at: String::new(),
        field: "(file)".into(),
        message: e.to_string(),
    })?;
    let lab: Lab = serde_norway::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}", l.line()))
            .unwrap_or_default();
        let (field, message, _) = crate::definition::diagnostic::from_serde_message(&e.to_string());
        LabError {
            file: file.clone(),
            at,
            field: if field.is_empty() {
                "(root)".into()
            } else {
                field
            },
            message,
        }
    })?;
    let map = SourceMap::build(&text);
    let err = |field: String, message: String| {
        let at = crate::lab::position(&map, &field);
        LabError {
            file: file.clone(),
            at,
            field,
            message,
        }
    };
    check(&lab, &err)?;
    Ok(lab)
}

/// `:LINE` of `field` or of its nearest parent that the file has.
pub fn position(map: &SourceMap, field: &str) -> String {
    let mut f = Some(field);
    while let Some(p) = f {
        if let Some(pos) = map.get(p) {
            return format!(":{}", pos.line);
        }
        f = crate::definition::source_map::parent_path(p);
    }
    String::new()
}

/// The lab's own rules and Lima's (cited where they are Lima's).
pub fn check(lab: &Lab, err: &dyn Fn(String, String) -> LabError) -> Result<(), LabError> {
    if lab.nodes.is_empty() {
        return Err(err("nodes".into(), "a lab needs at least one node".into()));
    }
    for (name, net) in &lab.networks {
        if LIMA_NETWORKS.contains(&name.as_str()) || name == "user-v2" {
            return Err(err(
                format!("networks.{name}"),
                "is one of Lima's own networks; give the lab's networks names of their own".into(),
            ));
        }
        if !lima_identifier(name) {
            return Err(err(
                format!("networks.{name}"),
                "a network name is letters and digits, joined by single `.`, `_` or `-`".into(),
            ));
        }
        let (g, m) = (u32::from(net.gateway), u32::from(net.netmask));
        if m.leading_ones() + m.trailing_zeros() != 32 || m == 0 {
            return Err(err(
                format!("networks.{name}.netmask"),
                format!("{} is not a netmask", net.netmask),
            ));
        }
        if g & !m == 0 || g | m == u32::MAX {
            return Err(err(
                format!("networks.{name}.gateway"),
                format!("{} is the network's or broadcast address", net.gateway),
            ));
        }
    }
    let mut disks = std::collections::BTreeMap::new();
    for (node, n) in &lab.nodes {
        let at = |f: &str| format!("nodes.{node}.{f}");
        // Lima's instance names are identifiers too (pkg/limatype/dirnames ValidateInstName).
        if !lima_identifier(node) {
            return Err(err(
                format!("nodes.{node}"),
                "a node name is letters and digits, joined by single `.`, `_` or `-`".into(),
            ));
        }
        if n.cpus == 0 {
            return Err(err(at("cpus"), "at least 1".into()));
        }
        for (f, v) in [("memory", &n.memory), ("disk", &n.disk)] {
            if lima_size(v).is_none_or(|b| b == 0) {
                return Err(err(
                    at(f),
                    format!("`{v}` is no size Lima reads (e.g. 32GiB, 512MiB)"),
                ));
            }
        }
        let mut ifaces = std::collections::BTreeSet::new();
        for (i, nic) in n.nics.iter().enumerate() {
            let f = at(&format!("nics[{i}]"));
            if !LIMA_NETWORKS.contains(&nic.network.as_str())
                && !lab.networks.contains_key(&nic.network)
            {
                return Err(err(
                    format!("{f}.network"),
                    format!(
                        "`{}` is neither Lima's (shared, host, bridged) nor in the lab's networks",
                        nic.network
                    ),
                ));
            }
            // lima-vm/lima pkg/limayaml/validate.go validateNetwork @ v2.2.0: interface
            // shorter than 16 bytes, no whitespace or `/`, unique; eth0 is Lima's own NIC.
            let name = &nic.interface;
            if name.is_empty()
                || name.len() >= 16
                || name.chars().any(|c| c.is_whitespace() || c == '/')
            {
                return Err(err(
                    format!("{f}.interface"),
                    format!("`{name}`: 1 to 15 bytes, no blanks or `/` (Lima's rule)"),
                ));
            }
            if name == "eth0" || !ifaces.insert(name.clone()) {
                return Err(err(
                    format!("{f}.interface"),
                    format!("`{name}` is taken (eth0 is Lima's own NIC; each name once)"),
                ));
            }
        }
        let mut cinder = 0;
        for (i, d) in n.disks.iter().enumerate() {
            let f = at(&format!("disks[{i}]"));
            if !lima_identifier(&d.name) {
                return Err(err(
                    format!("{f}.name"),
                    "a disk name is letters and digits, joined by single `.`, `_` or `-` (Lima's identifier rule)".into(),
                ));
            }
            // A Lima disk belongs to one instance at a time (pkg/store/disk.go `in_use_by`).
            if let Some(other) = disks.insert(d.name.clone(), node.clone()) {
                return Err(err(
                    format!("{f}.name"),
                    format!(
                        "`{}` is node {other}'s disk already; a Lima disk serves one instance",
                        d.name
                    ),
                ));
            }
            if lima_size(&d.size).is_none_or(|b| b == 0) {
                return Err(err(
                    format!("{f}.size"),
                    format!("`{}` is no size Lima reads", d.size),
                ));
            }
            cinder += d.cinder_volumes as usize;
        }
        if cinder > 1 {
            return Err(err(
                at("disks"),
                "one disk per node holds cinder-volumes".into(),
            ));
        }
        for (i, m) in n.mounts.iter().enumerate() {
            if !(m.location.starts_with('/') || m.location.starts_with('~')) {
                return Err(err(
                    at(&format!("mounts[{i}].location")),
                    "an absolute path or ~/... (Lima's rule)".into(),
                ));
            }
        }
    }
    Ok(())
}

/// `~/x` → $HOME/x.
pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_go_units_reads_them() {
        assert_eq!(lima_size("32GiB"), Some(32 << 30));
        assert_eq!(lima_size("20G"), Some(20 << 30));
        assert_eq!(lima_size("512mb"), Some(512 << 20));
        assert_eq!(lima_size("2048MiB"), Some(2048 << 20));
        assert_eq!(lima_size("1.5GiB"), Some(3 << 29));
        assert_eq!(lima_size("12 GiB"), Some(12 << 30));
        assert_eq!(lima_size("12 parsecs"), None);
        assert_eq!(lima_size("GiB"), None);
    }

    #[test]
    fn identifiers_follow_limas_rule() {
        assert!(lima_identifier("node3-cinder"));
        assert!(lima_identifier("kolla.tunnel_1"));
        assert!(!lima_identifier("node3--cinder"));
        assert!(!lima_identifier("-x"));
        assert!(!lima_identifier("a b"));
        assert!(!lima_identifier(&"a".repeat(77)));
    }
}
