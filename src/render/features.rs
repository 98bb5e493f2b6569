//! What each feature adds to the build: packages, apt sources, files and provisioning steps.
//! Pure data; `cloud_init` assembles it into user-data.

use crate::definition::*;
use serde_json::{json, Value};

/// A file written by cloud-init's write_files.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteFile {
    pub path: String,
    pub content: String,
    pub permissions: String,
    pub owner: String,
}

impl WriteFile {
    pub fn new(path: impl Into<String>, content: impl Into<String>, permissions: &str) -> Self {
        WriteFile {
            path: path.into(),
            content: content.into(),
            permissions: permissions.into(),
            owner: "root:root".into(),
        }
    }
}

/// A provisioning step: a bash script run with `set -eu -o pipefail`, ordered by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub name: String,
    pub script: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fragment {
    pub packages: Vec<String>,
    /// cloud-init `apt.sources` entries (name → {source, keyid, keyserver, key}).
    pub apt_sources: Vec<(String, Value)>,
    pub files: Vec<WriteFile>,
    pub steps: Vec<Step>,
}

impl Fragment {
    fn step(&mut self, name: &str, script: impl Into<String>) {
        self.steps.push(Step {
            name: name.into(),
            script: script.into(),
        });
    }
    fn pkgs(&mut self, p: &[&str]) {
        self.packages.extend(p.iter().map(|s| s.to_string()));
    }
}

/// The shell command that enables `units` for the image's boots. A build step never reloads
/// systemd (`--no-reload`): the build VM powers off after provisioning, so the units start at
/// the next boot anyway, and under TCG each `daemon-reload` costs a build boot 4-6 s once
/// Docker runs (BENCHMARKS.md, the run of commit 4970aad). tests/catalog.rs holds every rendered step to it.
pub fn enable_units(units: &[&str]) -> String {
    format!("systemctl --no-reload enable {}", units.join(" "))
}

/// Docker's release signing key (download.docker.com/linux/*/gpg).
pub const DOCKER_KEY_FPR: &str = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88";
/// NVIDIA's container toolkit repository key (nvidia.github.io/libnvidia-container/gpgkey).
pub const NVIDIA_CTK_KEY_FPR: &str = "C95B321B61E88C1809C4F759DDCAE044F796ECB0";
/// Mozilla's APT repository key (packages.mozilla.org), for a Firefox that is not a snap.
pub const MOZILLA_KEY_FPR: &str = "35BAA0B33E9EB396F59CA838C0BA5CE6DC6315A3";
pub const KEYSERVER: &str = "keyserver.ubuntu.com";

fn keyed_source(source: String, fpr: &str) -> Value {
    json!({ "source": source, "keyid": fpr, "keyserver": KEYSERVER })
}

/// All fragments of the enabled features, in a fixed order.
pub fn fragments(d: &Definition, arch: Arch) -> Vec<(&'static str, Fragment)> {
    let f = &d.features;
    let mut out = Vec::new();
    if let Some(h) = &f.hardening {
        out.push(("hardening", hardening(h)));
    }
    if let Some(dk) = &f.docker {
        out.push(("docker", docker(d, dk, arch)));
    }
    if let Some(n) = &f.nvidia {
        out.push(("nvidia", nvidia(d, n, arch)));
    }
    if let Some(desk) = &f.desktop {
        out.push(("desktop", desktop(d, desk, arch)));
    }
    if let Some(s) = &f.shared_mount {
        out.push(("shared_mount", shared_mount(s)));
    }
    if let Some(k) = &f.k3s {
        out.push(("k3s", k3s(k, arch)));
    }
    if let Some(dr) = &f.drbd {
        out.push(("drbd", drbd(d, dr)));
    }
    if let Some(k) = &f.kolla_host {
        out.push(("kolla_host", kolla_host(k)));
    }
    out
}

fn hardening(h: &Hardening) -> Fragment {
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

fn docker(d: &Definition, dk: &Docker, arch: Arch) -> Fragment {
    let mut fr = Fragment::default();
    match dk.source {
        DockerSource::DockerCe => {
            fr.apt_sources.push((
                "docker.list".into(),
                keyed_source(
                    format!(
                        "deb [arch={arch} signed-by=$KEY_FILE] https://download.docker.com/linux/{} {} stable",
                        d.os.distro, d.os.codename
                    ),
                    DOCKER_KEY_FPR,
                ),
            ));
            fr.pkgs(&[
                "docker-ce",
                "docker-ce-cli",
                "containerd.io",
                "docker-buildx-plugin",
                "docker-compose-plugin",
            ]);
        }
        DockerSource::Distro => {
            fr.pkgs(&["docker.io"]);
            if d.os.distro == "ubuntu" {
                fr.pkgs(&["docker-compose-v2"]);
            } else if d.os.codename == "bookworm" {
                // Bookworm has only Compose v1; trixie's docker-compose is v2 (the `docker
                // compose` plugin), a Go binary that needs nothing newer than bookworm's libc.
                // Pinned so that nothing else comes from trixie.
                fr.apt_sources.push((
                    "debian-trixie-compose.list".into(),
                    json!({ "source": "deb http://deb.debian.org/debian trixie main" }),
                ));
                fr.files.push(WriteFile::new(
                    "/etc/apt/preferences.d/imgbuild-compose",
                    "# imgbuild: only docker-compose (v2) comes from trixie.\n\
                     Package: *\nPin: release n=trixie\nPin-Priority: 1\n\n\
                     Package: docker-compose\nPin: release n=trixie\nPin-Priority: 990\n",
                    "0644",
                ));
                fr.pkgs(&["docker-compose"]);
            } else {
                fr.pkgs(&["docker-compose"]);
            }
        }
    }
    let mut script = format!(
        "{}\n",
        enable_units(&["docker.service", "containerd.service"])
    );
    for u in &dk.users {
        script.push_str(&format!("usermod -aG docker {u}\n"));
    }
    // Launch-time users get the group through the default user's groups (see userdata).
    fr.step("10-docker", script);
    fr
}

fn nvidia(d: &Definition, n: &Nvidia, arch: Arch) -> Fragment {
    let mut fr = Fragment::default();
    fr.files.push(WriteFile::new(
        "/etc/modprobe.d/blacklist-nouveau.conf",
        "blacklist nouveau\noptions nouveau modeset=0\n",
        "0644",
    ));
    match n.source {
        NvidiaSource::Ubuntu => {
            let b = &n.driver_branch;
            fr.packages.push(format!("nvidia-driver-{b}-server"));
            fr.packages.push(format!("nvidia-utils-{b}-server"));
        }
        NvidiaSource::Debian => {
            fr.apt_sources.push((
                "debian-non-free.list".into(),
                json!({ "source": format!("deb http://deb.debian.org/debian {} contrib non-free non-free-firmware", d.os.codename) }),
            ));
            fr.pkgs(&["nvidia-driver", "firmware-misc-nonfree", "nvidia-smi"]);
        }
    }
    if n.container_toolkit {
        fr.apt_sources.push((
            "nvidia-container-toolkit.list".into(),
            keyed_source(
                format!("deb [signed-by=$KEY_FILE] https://nvidia.github.io/libnvidia-container/stable/deb/{arch} /"),
                NVIDIA_CTK_KEY_FPR,
            ),
        ));
        fr.pkgs(&["nvidia-container-toolkit"]);
    }
    let mut script = String::from("update-initramfs -u\n");
    if n.container_toolkit && d.features.docker.is_some() {
        script.push_str("nvidia-ctk runtime configure --runtime=docker\n");
    }
    fr.step("20-nvidia", script);
    fr
}

fn desktop(d: &Definition, desk: &Desktop, arch: Arch) -> Fragment {
    let mut fr = Fragment::default();
    fr.pkgs(&[
        "xfce4",
        "xfce4-terminal",
        "xfce4-goodies",
        "dbus-x11",
        "xauth",
        "tigervnc-standalone-server",
        "tigervnc-common",
        "tigervnc-tools",
        "novnc",
        "python3-websockify",
        "fonts-dejavu",
        "git",
        "python3-pip",
        "python3-venv",
        "pipx",
    ]);
    if desk.rdp {
        fr.pkgs(&["xrdp"]);
    }
    if desk.browser == "firefox" && d.os.distro == "ubuntu" {
        // Ubuntu's firefox package is a snap shim; Mozilla's repository has the real one.
        fr.apt_sources.push((
            "mozilla.list".into(),
            keyed_source(
                "deb [signed-by=$KEY_FILE] https://packages.mozilla.org/apt mozilla main".into(),
                MOZILLA_KEY_FPR,
            ),
        ));
        fr.files.push(WriteFile::new(
            "/etc/apt/preferences.d/mozilla",
            "Package: *\nPin: origin packages.mozilla.org\nPin-Priority: 1000\n",
            "0644",
        ));
    }
    fr.packages.push(desk.browser.clone());
    if let Some(z) = &desk.zed {
        zed(&mut fr, z, arch);
    }
    fr.packages.extend(desk.packages.iter().cloned());
    let port = 5900 + desk.vnc_display;
    fr.files.push(WriteFile::new(
        "/etc/imgbuild/desktop.env",
        format!(
            "VNC_DISPLAY=:{}\nVNC_PORT={port}\nNOVNC_PORT={}\n",
            desk.vnc_display, desk.novnc_port
        ),
        "0644",
    ));
    fr.files.push(WriteFile::new(
        "/etc/systemd/system/imgbuild-novnc.service",
        format!(
            "[Unit]\nDescription=noVNC web client for the desktop (VNC :{d})\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nType=simple\nExecStart=/usr/bin/websockify --web /usr/share/novnc {np} localhost:{port}\nRestart=on-failure\nDynamicUser=yes\n\n[Install]\nWantedBy=multi-user.target\n",
            d = desk.vnc_display,
            np = desk.novnc_port
        ),
        "0644",
    ));
    let mut script = enable_units(&["imgbuild-novnc.service"]);
    script.push_str(
        "\n\
         # The VNC user and password are set at launch (imgbuild userdata). TigerVNC's wrapper\n\
         # reads this file as Perl: an XFCE session, reachable from the network (Guacamole,\n\
         # Kasm) with VncAuth/TLSVnc, not only through noVNC on the loopback.\n\
         cat >> /etc/tigervnc/vncserver-config-defaults <<'EOF'\n\
         # imgbuild desktop\n$session = \"xfce\";\n$localhost = \"no\";\n$geometry = \"1280x800\";\n1;\nEOF\n\
         update-alternatives --set x-session-manager /usr/bin/xfce4-session\n",
    );
    if desk.rdp {
        script.push_str(&enable_units(&["xrdp.service"]));
        script.push_str("\necho xfce4-session > /etc/skel/.xsession\n");
    }
    fr.step("30-desktop", script);
    fr
}

/// Zed from its release archive into /opt/zed.app, on the PATH and in the menu. It draws with
/// Vulkan: Mesa's llvmpipe gives it a software device in a VNC session without a GPU.
fn zed(fr: &mut Fragment, z: &Zed, arch: Arch) {
    fr.pkgs(&["mesa-vulkan-drivers", "libxkbcommon-x11-0"]);
    let (file, sha) = match arch {
        Arch::Amd64 => ("zed-linux-x86_64.tar.gz", &z.sha256),
        Arch::Arm64 => ("zed-linux-aarch64.tar.gz", &z.sha256_arm64),
    };
    let url = format!(
        "https://github.com/zed-industries/zed/releases/download/v{}/{file}",
        z.version
    );
    let verify = match sha {
        Some(h) => format!("echo '{h}  /tmp/{file}' | sha256sum -c -\n"),
        None => "# No sha256 in the definition: only the installed version is checked.\n".into(),
    };
    fr.step(
        "35-zed",
        format!(
            "curl -fsSL --retry 3 -o /tmp/{file} {url}\n{verify}\
             rm -rf /opt/zed.app && mkdir -p /opt\n\
             tar -C /opt -xzf /tmp/{file}\nrm -f /tmp/{file}\n\
             ln -sf /opt/zed.app/bin/zed /usr/local/bin/zed\n\
             sed -e 's|Icon=zed|Icon=/opt/zed.app/share/icons/hicolor/512x512/apps/zed.png|' \\\n\
             \x20   -e 's|Exec=zed|Exec=/opt/zed.app/bin/zed|' \\\n\
             \x20   /opt/zed.app/share/applications/zed.desktop > /usr/share/applications/dev.zed.Zed.desktop\n\
             /opt/zed.app/bin/zed --version | grep -F ' {v}'\n",
            v = z.version
        ),
    );
}

fn shared_mount(s: &SharedMount) -> Fragment {
    let mut fr = Fragment::default();
    fr.pkgs(&["nfs-common"]);
    fr.step(
        "40-shared-mount",
        format!(
            "mkdir -p {p}\n# The NFS export is given at launch (imgbuild userdata --shared).\n",
            p = crate::exec::quote(&s.path)
        ),
    );
    fr
}

fn k3s(k: &K3s, arch: Arch) -> Fragment {
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
    let suffix = match arch {
        Arch::Amd64 => "",
        Arch::Arm64 => "-arm64",
    };
    let role = match k.role {
        K3sRole::Server => "server",
        K3sRole::Agent => "agent",
    };
    let mut cfg = serde_json::Map::new();
    if !k.node_labels.is_empty() {
        cfg.insert("node-label".into(), json!(k.node_labels));
    }
    if !k.node_taints.is_empty() {
        cfg.insert("node-taint".into(), json!(k.node_taints));
    }
    let cfg = format!(
        "# imgbuild: the k3s {role} joins with the token and URL given at launch.\n{}",
        if cfg.is_empty() {
            String::new()
        } else {
            super::yaml::to_string(&serde_json::Value::Object(cfg))
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
    let url = format!(
        "https://github.com/k3s-io/k3s/releases/download/{}/k3s{suffix}",
        k.version.replace('+', "%2B")
    );
    fr.step(
        "40-k3s",
        format!(
            "curl -fsSL --retry 3 -o /usr/local/bin/k3s {url}\nchmod 0755 /usr/local/bin/k3s\ncurl -fsSL --retry 3 -o /usr/local/lib/imgbuild-k3s-install.sh https://get.k3s.io\nINSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_SKIP_START=true INSTALL_K3S_SKIP_ENABLE=true INSTALL_K3S_EXEC={role} sh /usr/local/lib/imgbuild-k3s-install.sh\nrm -f /usr/local/lib/imgbuild-k3s-install.sh\n"
        ),
    );
    fr
}

fn drbd(d: &Definition, dr: &Drbd) -> Fragment {
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

fn kolla_host(k: &KollaHost) -> Fragment {
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
