//! The desktop: XFCE with per-user TigerVNC, noVNC, optional RDP, a browser and Zed.

use super::*;
use crate::definition::{Arch, Definition, Resolved, SmokeCheck};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Desktop {
    /// Only `xfce` today.
    pub environment: String,
    /// The VNC display of the per-user TigerVNC session (:1 → port 5901).
    pub vnc_display: u16,
    pub novnc_port: u16,
    /// Also offer RDP (xrdp on 3389).
    pub rdp: bool,
    /// Browser package.
    pub browser: String,
    /// Extra desktop packages (editors, tools).
    pub packages: Vec<String>,
    /// The Zed editor from Zed's release archive (no distribution packages it).
    pub zed: Option<Zed>,
}

/// A pinned Zed release, installed system-wide into /opt/zed.app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zed {
    /// The release, e.g. "0.212.4" (no `v`).
    pub version: String,
    /// sha256 of zed-linux-x86_64.tar.gz; with it the download is verified, without it only
    /// the installed binary's version is.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub sha256_arm64: Option<String>,
}

impl Default for Desktop {
    fn default() -> Self {
        Desktop {
            environment: "xfce".into(),
            vnc_display: 1,
            novnc_port: 6080,
            rdp: true,
            browser: "firefox".into(),
            packages: Vec::new(),
            zed: None,
        }
    }
}

pub(super) fn fragment(d: &Definition, desk: &Desktop, arch: Arch) -> Fragment {
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

/// The `desktop` feature.
pub struct Feature;

impl super::Feature for Feature {
    fn name(&self) -> &'static str {
        "desktop"
    }
    fn enabled(&self, d: &Definition) -> bool {
        d.features.desktop.is_some()
    }
    fn fragment(&self, d: &Definition, arch: Arch) -> Option<Fragment> {
        d.features.desktop.as_ref().map(|s| fragment(d, s, arch))
    }
    fn validate(&self, r: &Resolved, err: &mut dyn FnMut(&str, String)) {
        let Some(desk) = &r.definition.features.desktop else {
            return;
        };
        if desk.environment != "xfce" {
            err(
                "features.desktop.environment",
                format!("`{}` is not supported (xfce)", desk.environment),
            );
        }
        if desk.vnc_display == 0 || desk.vnc_display > 99 {
            err("features.desktop.vnc_display", "must be 1..99".into());
        }
        if let Some(z) = &desk.zed {
            let ok = !z.version.is_empty()
                && z.version
                    .split('.')
                    .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if !ok {
                err(
                    "features.desktop.zed.version",
                    format!("`{}` is not a release number like 0.212.4", z.version),
                );
            }
            for (field, v) in [("sha256", &z.sha256), ("sha256_arm64", &z.sha256_arm64)] {
                if let Some(h) = v {
                    if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                        err(
                            &format!("features.desktop.zed.{field}"),
                            "must be 64 hex digits".into(),
                        );
                    }
                }
            }
        }
    }
    /// With a launch user: the user is there with the launch's key, groups and VNC password,
    /// and its desktop session comes up.
    fn smoke_checks(&self, d: &Definition, launch: Option<&LaunchUser>) -> Vec<SmokeCheck> {
        let (Some(desk), Some(l)) = (&d.features.desktop, launch) else {
            return Vec::new();
        };
        vec![
            SmokeCheck::builtin(
                "launch-user",
                json!({"user": l.user, "ssh_key": l.ssh_key,
                    "groups": super::launch_groups(d), "vnc_display": desk.vnc_display}),
            ),
            SmokeCheck::builtin(
                "desktop-session",
                json!({"user": l.user, "vnc_display": desk.vnc_display,
                    "wait": (d.smoke.timeout as u64 * 60 / 2).max(120)}),
            ),
        ]
    }
}
