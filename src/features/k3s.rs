//! A k3s server or agent, installed but not started: it joins with the token and URL given at launch.

use super::*;
use crate::definition::{Arch, Definition, Resolved};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum K3sRole {
    Server,
    #[default]
    Agent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct K3s {
    pub role: K3sRole,
    /// A k3s release, e.g. "v1.34.2+k3s1" (a supported minor; v1.31 is past its end of life).
    pub version: String,
    /// Node labels applied at join.
    pub node_labels: Vec<String>,
    /// Node taints applied at join.
    pub node_taints: Vec<String>,
    /// Packaged components a server does not deploy (k3s `disable`): `traefik` and
    /// `servicelb` where MetalLB and NGINX ingress take their place (seed 003), also
    /// `local-storage`, `metrics-server`, `coredns`.
    pub disable: Vec<String>,
    /// A site mirror with the release's files (binary, airgap images archive, sha256sum-ARCH.txt,
    /// install.sh) under one URL, instead of GitHub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// sha256 pins by release file name (`k3s`, `k3s-arm64`, `k3s-airgap-images-amd64.tar.zst`,
    /// ...), checked besides the release's own checksum file.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sha256: std::collections::BTreeMap<String, String>,
    /// The containerd runtime pods get without a `runtimeClassName` (k3s `default-runtime`):
    /// `nvidia` on GPU nodes, so that pods reach the GPU without naming the runtime class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_runtime: Option<String>,
}

/// What k3s's `disable` accepts (docs.k3s.io "Managing Packaged Components").
pub const DISABLE: [&str; 5] = [
    "coredns",
    "servicelb",
    "traefik",
    "local-storage",
    "metrics-server",
];

impl Default for K3s {
    fn default() -> Self {
        K3s {
            role: K3sRole::Agent,
            version: "v1.34.2+k3s1".into(),
            node_labels: Vec::new(),
            node_taints: Vec::new(),
            disable: Vec::new(),
            mirror: None,
            sha256: Default::default(),
            default_runtime: None,
        }
    }
}

pub(super) fn fragment(k: &K3s, arch: Arch) -> Fragment {
    let mut fr = Fragment::default();
    fr.pkgs(&["curl", "ca-certificates", "open-iscsi", "nfs-common", "jq"]);
    fr.files.push(WriteFile::new(
        "/etc/modules-load.d/k3s.conf",
        "overlay\nbr_netfilter\n",
        "0644",
    ));
    fr.files.push(WriteFile::new(
        "/etc/sysctl.d/60-k3s.conf",
        "net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\nnet.ipv4.ip_forward = 1\nfs.inotify.max_user_instances = 1024\n",
        "0644",
    ));
    let role = match k.role {
        K3sRole::Server => "server",
        K3sRole::Agent => "agent",
    };
    // `key+` appends to the value of earlier files instead of replacing it (docs.k3s.io
    // "Configuration File", multiple config files), so the launch's own labels and taints
    // (imgbuild userdata, a later drop-in) and the user's add up.
    let mut cfg = serde_json::Map::new();
    if !k.node_labels.is_empty() {
        cfg.insert("node-label+".into(), json!(k.node_labels));
    }
    if !k.node_taints.is_empty() {
        cfg.insert("node-taint+".into(), json!(k.node_taints));
    }
    if let Some(rt) = &k.default_runtime {
        cfg.insert("default-runtime".into(), json!(rt));
    }
    if !k.disable.is_empty() && k.role == K3sRole::Server {
        cfg.insert("disable+".into(), json!(k.disable));
    }
    let cfg = format!(
        "# imgbuild: the k3s {role} joins with the token and URL given at launch (imgbuild\n# userdata: config.yaml.d/50-launch.yaml and the token file), which also enables it.\n{}",
        if cfg.is_empty() {
            String::new()
        } else {
            crate::yaml::to_string(&serde_json::Value::Object(cfg))
        }
    );
    fr.files.push(WriteFile::new(
        "/etc/rancher/k3s/config.yaml.d/10-imgbuild.yaml",
        cfg,
        "0644",
    ));
    fr.files.push(WriteFile::new(
        "/etc/imgbuild/k3s.env",
        format!("K3S_ROLE={role}\nK3S_VERSION={}\n", k.version),
        "0644",
    ));
    fr.step("40-k3s", install_step(k, arch, role));
    fr
}

/// Where a release's files are: GitHub's release downloads, or a site mirror holding the same
/// files (`k3s[-arm64]`, `k3s-airgap-images-<arch>.tar.zst`, `sha256sum-<arch>.txt`,
/// `install.sh`) under one URL.
fn release_base(k: &K3s) -> String {
    match &k.mirror {
        Some(m) => m.trim_end_matches('/').to_string(),
        None => format!(
            "https://github.com/k3s-io/k3s/releases/download/{}",
            k.version.replace('+', "%2B")
        ),
    }
}

/// Air-gapped and verified, as docs.k3s.io "Air-Gap Install" lays it out: the binary, the
/// images archive in /var/lib/rancher/k3s/agent/images/ (k3s imports it at start: no pull of
/// its system images), both checked against the release's own `sha256sum-<arch>.txt` (as
/// k3s's install.sh checks its download) and against the definition's pins when given, and
/// install.sh from the release's tag (not get.k3s.io's moving one) run with the download
/// skipped.
fn install_step(k: &K3s, arch: Arch, role: &str) -> String {
    let (bin, a) = match arch {
        Arch::Amd64 => ("k3s", "amd64"),
        Arch::Arm64 => ("k3s-arm64", "arm64"),
    };
    let base = release_base(k);
    let install = match &k.mirror {
        Some(_) => format!("{base}/install.sh"),
        None => format!(
            "https://raw.githubusercontent.com/k3s-io/k3s/{}/install.sh",
            k.version.replace('+', "%2B")
        ),
    };
    let airgap = format!("k3s-airgap-images-{a}.tar.zst");
    let mut pins = String::new();
    for (file, pin) in [
        (bin, k.sha256.get(bin)),
        (airgap.as_str(), k.sha256.get(&airgap)),
    ] {
        if let Some(h) = pin {
            pins.push_str(&format!("echo '{h}  {file}' | sha256sum -c -\n"));
        }
    }
    format!(
        "d=$(mktemp -d)\ncd \"$d\"\n\
         for f in sha256sum-{a}.txt {bin} {airgap}; do curl -fsSL --retry 3 -o \"$f\" \"{base}/$f\"; done\n\
         grep -E ' ({bin}|{airgap})$' sha256sum-{a}.txt | sha256sum -c -\n\
         [ \"$(grep -cE ' ({bin}|{airgap})$' sha256sum-{a}.txt)\" = 2 ]\n\
         {pins}\
         install -m 0755 {bin} /usr/local/bin/k3s\n\
         install -d /var/lib/rancher/k3s/agent/images\n\
         install -m 0644 {airgap} /var/lib/rancher/k3s/agent/images/{airgap}\n\
         curl -fsSL --retry 3 -o install.sh {install}\n\
         INSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_SKIP_START=true INSTALL_K3S_SKIP_ENABLE=true INSTALL_K3S_EXEC={role} sh install.sh\n\
         cd / && rm -rf \"$d\"\n\
         /usr/local/bin/k3s --version | grep -F '{v}'\n",
        v = k.version,
    )
}

/// The `k3s` feature.
pub struct Feature;

impl super::Feature for Feature {
    fn name(&self) -> &'static str {
        "k3s"
    }
    fn enabled(&self, d: &Definition) -> bool {
        d.features.k3s.is_some()
    }
    fn fragment(&self, d: &Definition, arch: Arch) -> Option<Fragment> {
        d.features.k3s.as_ref().map(|s| fragment(s, arch))
    }
    fn validate(&self, r: &Resolved, err: &mut dyn FnMut(&str, String)) {
        let Some(k) = &r.definition.features.k3s else {
            return;
        };
        for (i, c) in k.disable.iter().enumerate() {
            if !DISABLE.contains(&c.as_str()) {
                err(
                    &format!("features.k3s.disable[{i}]"),
                    format!("`{c}` is not a packaged component ({})", DISABLE.join(", ")),
                );
            }
        }
        if !k.disable.is_empty() && k.role != K3sRole::Server {
            err(
                "features.k3s.disable",
                "only a server deploys the packaged components (role: server)".into(),
            );
        }
        for (file, h) in &k.sha256 {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                err(
                    &format!("features.k3s.sha256.{file}"),
                    "must be 64 hex digits".into(),
                );
            }
            let known = file == "k3s"
                || file == "k3s-arm64"
                || (file.starts_with("k3s-airgap-images-") && file.ends_with(".tar.zst"));
            if !known {
                err(
                    &format!("features.k3s.sha256.{file}"),
                    "not a file the build downloads (k3s, k3s-arm64, k3s-airgap-images-ARCH.tar.zst)".into(),
                );
            }
        }
        if let Some(m) = &k.mirror {
            if !(m.starts_with("https://") || m.starts_with("http://")) {
                err(
                    "features.k3s.mirror",
                    format!("`{m}` is not an http(s) URL"),
                );
            }
        }
        if let Some(rt) = &k.default_runtime {
            if rt == "nvidia"
                && r.definition
                    .features
                    .nvidia
                    .as_ref()
                    .is_none_or(|n| !n.container_toolkit)
            {
                err(
                    "features.k3s.default_runtime",
                    "`nvidia` needs features.nvidia with container_toolkit (it registers the runtime with k3s's containerd)".into(),
                );
            }
        }
        if !k.version.starts_with('v') || !k.version.contains("+k3s") {
            err(
                "features.k3s.version",
                format!("`{}` is not a k3s release like v1.31.4+k3s1", k.version),
            );
        }
    }
    /// k3s starts once launched with a token (none at the smoke boot): the kubelet (10250),
    /// kube-proxy's health port (10256), flannel's VXLAN (8472/udp, a kernel socket) and, on a
    /// server, the API (6443). docs.k3s.io/installation/requirements#inbound-rules-for-k3s-nodes
    fn listeners(&self, d: &Definition) -> Vec<crate::definition::Listener> {
        use crate::definition::Listener;
        let Some(k) = &d.features.k3s else {
            return Vec::new();
        };
        let mut v = vec![
            Listener::tcp(10250),
            Listener::tcp(10256),
            Listener::udp(8472),
        ];
        if matches!(k.role, K3sRole::Server) {
            v.push(Listener::tcp(6443));
        }
        v
    }
}
