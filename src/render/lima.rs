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
