//! The desktop: XFCE with per-user TigerVNC, noVNC, optional RDP, a browser and Zed.

use super::*;
use crate::definition::{Arch, Definition, Listener, Resolved, SmokeCheck};
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
    /// sha256 of zed-linux-x86_64.tar.gz (required when the image builds amd64).
    #[serde(default)]
    pub sha256: Option<String>,
    /// sha256 of zed-linux-aarch64.tar.gz (required when the image builds arm64).
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
        // xwininfo and gio: the smoke's desktop-clean check reads the session's windows and
        // volume list with them (and users use them too).
        "x11-utils",
        "libglib2.0-bin",
    ]);
    if desk.rdp {
        fr.pkgs(&["xrdp"]);
    }
    if desk.browser == "firefox" && d.os.distro == "ubuntu" {
        // Ubuntu's firefox package is a snap shim; Mozilla's repository has the real one.
        fr.apt_sources.push((
            "mozilla.list".into(),
            keyed_source(
                d,
                "deb [signed-by=$KEY_FILE] https://packages.mozilla.org/apt mozilla main".into(),
                &MOZILLA_KEY,
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
    fr.files.push(WriteFile::new(
        "/etc/polkit-1/rules.d/45-imgbuild-colord.rules",
        COLORD_POLKIT_RULE,
        "0644",
    ));
    fr.files.push(WriteFile::new(
        "/etc/udev/rules.d/90-imgbuild-hide-seed.rules",
        HIDE_SEED_RULES,
        "0644",
    ));
    fr.files.push(WriteFile::new(
        "/usr/local/lib/imgbuild/desktop-identities",
        DESKTOP_IDENTITIES,
        "0755",
    ));
    fr.files.push(WriteFile::new(
        "/etc/systemd/system/imgbuild-desktop-identities.service",
        "[Unit]\nDescription=imgbuild: this instance's own TLS snakeoil pair and xrdp keys\nBefore=xrdp.service xrdp-sesman.service\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/lib/imgbuild/desktop-identities\n\n[Install]\nWantedBy=multi-user.target xrdp.service\n",
        "0644",
    ));
    let mut script = enable_units(&[
        "imgbuild-novnc.service",
        "imgbuild-desktop-identities.service",
    ]);
    script.push_str(
        "\n\
         # The distribution's VNC session script starts `vncconfig -iconic`, a \"VNC config\"\n\
         # window in every user's task list. imgbuild's copy starts it with -nowin (it still\n\
         # serves Xvnc's parameters, without a window) and TigerVNC's wrapper runs that copy\n\
         # ($vncStartup, read from the file below: Debian's tigervnc-common documents it in\n\
         # /etc/tigervnc/vncserver-config-defaults). The grep fails the build if the\n\
         # distribution's script no longer has the line.\n\
         install -d /usr/local/lib/imgbuild\n\
         sed 's/vncconfig -iconic/vncconfig -nowin/' /etc/X11/Xtigervnc-session > /usr/local/lib/imgbuild/Xtigervnc-session\n\
         grep -q 'vncconfig -nowin' /usr/local/lib/imgbuild/Xtigervnc-session\n\
         chmod 0755 /usr/local/lib/imgbuild/Xtigervnc-session\n\
         # The VNC user and password are set at launch (imgbuild userdata). TigerVNC's wrapper\n\
         # reads this file as Perl: an XFCE session, reachable from the network (Guacamole,\n\
         # Kasm) with VncAuth/TLSVnc, not only through noVNC on the loopback.\n\
         cat >> /etc/tigervnc/vncserver-config-defaults <<'EOF'\n\
         # imgbuild desktop\n$session = \"xfce\";\n$localhost = \"no\";\n$geometry = \"1280x800\";\n\
         $vncStartup = \"/usr/local/lib/imgbuild/Xtigervnc-session\";\n1;\nEOF\n\
         update-alternatives --set x-session-manager /usr/bin/xfce4-session\n\
         # avahi-daemon comes with XFCE's recommends (Debian) and answers mDNS on 5353/udp and\n\
         # random UDP ports on every address: no workspace VM needs it, so it never starts\n\
         # (the smoke's exposure-allowlist would fail on it).\n\
         systemctl --no-reload disable avahi-daemon.service avahi-daemon.socket 2>/dev/null || true\n\
         systemctl --no-reload mask avahi-daemon.service avahi-daemon.socket\n\
         # Debian's and Ubuntu's novnc package has no index.html (vnc.html is the client), so\n\
         # websockify --web would answer `/` with a directory listing: `/` is the client.\n\
         [ -e /usr/share/novnc/index.html ] || ln -s vnc.html /usr/share/novnc/index.html\n\
         # xrdp runs as user xrdp (its unit's User=) and reads its TLS key through the link to\n\
         # the snakeoil key, root:ssl-cert 0640 (Debian's xrdp postinst makes the link but does\n\
         # not add xrdp to ssl-cert): without the group every TLS handshake fails.\n\
         if getent passwd xrdp >/dev/null && getent group ssl-cert >/dev/null; then adduser --quiet xrdp ssl-cert; fi\n",
    );
    if desk.rdp {
        script.push_str(&enable_units(&["xrdp.service"]));
        script.push_str("\necho xfce4-session > /etc/skel/.xsession\n");
    }
    fr.offline_step("30-desktop", script);
    fr
}

/// cloud-init's seed volumes are not the user's: the NoCloud seed (label `cidata`, as cloud-init's
/// DataSourceNoCloud looks for it, any case) and the OpenStack config drive (`config-2`,
/// DataSourceConfigDrive). udisks2 turns `UDISKS_IGNORE=1` into the block device's `HintIgnore`
/// (udisks2's own 80-udisks2.rules sets it the same way for recovery partitions), and GVfs's
/// udisks2 volume monitor, which xfdesktop and Thunar list volumes from, leaves such devices
/// out. `ID_FS_LABEL` comes from blkid in 60-persistent-storage.rules, so this rule runs after.
pub const HIDE_SEED_RULES: &str = "# imgbuild: cloud-init's seed volumes stay off the desktop and out of the file manager.
SUBSYSTEM==\"block\", ENV{ID_FS_LABEL}==\"cidata|CIDATA|config-2|CONFIG-2\", ENV{UDISKS_IGNORE}=\"1\"
";

/// colord's device actions for the session's own user. A VNC or RDP session is not polkit's
/// "active local" session, and colord's default policy (org.freedesktop.color-manager.*, e.g.
/// create-device: `auth_admin` for inactive sessions) then asks for an administrator's password
/// at every login, when XFCE's colour management registers the display: a password prompt
/// (seen in this image's smoke screenshot) that a workspace user cannot answer. JavaScript
/// rules, as polkit 0.106+ reads them from /etc/polkit-1/rules.d (Debian 12 and Ubuntu 24.04).
pub const COLORD_POLKIT_RULE: &str =
    "// imgbuild: colour devices of remote desktop sessions need no administrator.
polkit.addRule(function(action, subject) {
    if (action.id.indexOf(\"org.freedesktop.color-manager.\") == 0) {
        return polkit.Result.YES;
    }
});
";

/// Makes what the hygiene removed (cloud-init/guest/hygiene) before xrdp starts, at every boot
/// where it is missing (so at the first): the snakeoil pair with Debian's ssl-cert
/// (`make-ssl-cert generate-default-snakeoil --force-overwrite`, as its postinst does), xrdp's
/// RDP key with `xrdp-keygen xrdp FILE` (as upstream's install does:
/// github.com/neutrinolabs/xrdp keygen/Makefile.am) and, where xrdp's TLS cert/key are gone,
/// the links to the snakeoil pair Debian's xrdp package makes.
pub const DESKTOP_IDENTITIES: &str = "#!/bin/sh
# imgbuild: per-instance keys, made at first boot (the image carries none).
set -eu
if command -v make-ssl-cert >/dev/null && [ ! -e /etc/ssl/private/ssl-cert-snakeoil.key ]; then
  make-ssl-cert generate-default-snakeoil --force-overwrite
fi
if command -v xrdp-keygen >/dev/null; then
  if [ ! -s /etc/xrdp/rsakeys.ini ]; then
    (umask 077; xrdp-keygen xrdp /etc/xrdp/rsakeys.ini >/dev/null)
    if getent passwd xrdp >/dev/null; then chown xrdp:xrdp /etc/xrdp/rsakeys.ini; fi
  fi
  if [ ! -e /etc/xrdp/cert.pem ] && [ ! -e /etc/xrdp/key.pem ]; then
    ln -sf /etc/ssl/certs/ssl-cert-snakeoil.pem /etc/xrdp/cert.pem
    ln -sf /etc/ssl/private/ssl-cert-snakeoil.key /etc/xrdp/key.pem
  fi
fi
";

/// Zed from its release archive into /opt/zed.app, on the PATH and in the menu, verified by
/// the definition's sha256. It draws with Vulkan: Mesa's llvmpipe gives it a software device
/// in a VNC session without a GPU. The version check runs as root, which Zed's CLI refuses
/// unless ZED_ALLOW_ROOT=true (zed-industries/zed crates/cli/src/main.rs,
/// `prevent_root_execution`, PR #32583).
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
    // Validation requires the digest for every arch the image builds.
    let verify = match sha {
        Some(h) => format!("echo '{h}  /tmp/{file}' | sha256sum -c -\n"),
        None => "echo 'no sha256 for this arch in the definition' >&2; exit 1\n".into(),
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
             ZED_ALLOW_ROOT=true /opt/zed.app/bin/zed --version | grep -F ' {v}'\n",
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
    fn repo_keys(&self, d: &Definition) -> Vec<&'static RepoKey> {
        match &d.features.desktop {
            Some(desk) if desk.browser == "firefox" && d.os.distro == "ubuntu" => {
                vec![&MOZILLA_KEY]
            }
            _ => Vec::new(),
        }
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
            for (arch, field, v) in [
                (Arch::Amd64, "sha256", &z.sha256),
                (Arch::Arm64, "sha256_arm64", &z.sha256_arm64),
            ] {
                if v.is_none() && r.definition.arch.contains(&arch) {
                    err(
                        &format!("features.desktop.zed.{field}"),
                        format!("missing: the {arch} release archive is verified against it"),
                    );
                }
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
    /// TigerVNC on 5900+display (reachable from the network on purpose), noVNC's websockify
    /// and, with `rdp`, xrdp on 3389.
    fn listeners(&self, d: &Definition) -> Vec<Listener> {
        let Some(desk) = &d.features.desktop else {
            return Vec::new();
        };
        let mut v = vec![
            Listener::tcp(5900 + desk.vnc_display),
            Listener::tcp(desk.novnc_port),
        ];
        if desk.rdp {
            v.push(Listener::tcp(3389));
        }
        v
    }
    /// With a launch user: the user is there with the launch's key, groups and VNC password,
    /// its desktop session comes up, and it shows neither seed volumes nor vncconfig.
    fn smoke_checks(&self, d: &Definition, launch: Option<&LaunchUser>) -> Vec<SmokeCheck> {
        let Some(desk) = &d.features.desktop else {
            return Vec::new();
        };
        // noVNC's page at the root: the client, not a directory listing.
        let novnc = SmokeCheck {
            name: "novnc-serves-client".into(),
            kind: crate::definition::CheckKind::Command {
                command: format!(
                    "curl -fsS --max-time 20 http://127.0.0.1:{}/ | grep -o '<title>noVNC</title>'",
                    desk.novnc_port
                ),
                expect_exit: None,
                expect_output: Some("<title>noVNC".into()),
            },
        };
        let Some(l) = launch else {
            return vec![novnc];
        };
        let mut v = vec![
            novnc,
            SmokeCheck::builtin(
                "launch-user",
                json!({"user": l.user, "ssh_key": l.ssh_key, "password": l.password,
                    "groups": super::launch_groups(d), "vnc_display": desk.vnc_display}),
            ),
            SmokeCheck::builtin(
                "desktop-session",
                json!({"user": l.user, "vnc_display": desk.vnc_display,
                    "wait": (d.smoke.timeout as u64 * 60 / 2).max(120)}),
            ),
            // After the session is up: no cloud-init seed volume among its volumes (udev's
            // UDISKS_IGNORE, HIDE_SEED_RULES) and no vncconfig window in its window list.
            SmokeCheck::builtin(
                "desktop-clean",
                json!({"user": l.user, "vnc_display": desk.vnc_display,
                    "wait": (d.smoke.timeout as u64 * 60 / 4).max(180)}),
            ),
        ];
        if desk.rdp {
            // The host tries a wrong password and the launch's over RDP when this check asks
            // (pipeline::smoke); xrdp's session manager must refuse one and grant the other.
            v.push(SmokeCheck::builtin(
                "rdp-login",
                // A give-up limit, as desktop-session's: the host's two logins end as soon
                // as the guest has seen each (pipeline::smoke, RDP_HOLD).
                json!({"user": l.user, "wait": (d.smoke.timeout as u64 * 60 / 4).max(300)}),
            ));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zed_is_verified_per_arch_and_checked_as_root_with_zed_allow_root() {
        let z = Zed {
            version: "1.12.0".into(),
            sha256: Some("a".repeat(64)),
            sha256_arm64: Some("b".repeat(64)),
        };
        for (arch, asset, h) in [
            (Arch::Amd64, "zed-linux-x86_64.tar.gz", "a"),
            (Arch::Arm64, "zed-linux-aarch64.tar.gz", "b"),
        ] {
            let mut fr = Fragment::default();
            zed(&mut fr, &z, arch);
            let s = &fr.steps[0].script;
            assert!(
                s.contains(&format!(
                    "echo '{}  /tmp/{asset}' | sha256sum -c -",
                    h.repeat(64)
                )),
                "{s}"
            );
            assert!(
                s.contains("ZED_ALLOW_ROOT=true /opt/zed.app/bin/zed --version"),
                "{s}"
            );
            assert!(s.contains("/v1.12.0/"), "{s}");
        }
        // Without the digest for an arch the step stops instead of installing unverified.
        let mut fr = Fragment::default();
        zed(
            &mut fr,
            &Zed {
                sha256_arm64: None,
                ..z
            },
            Arch::Arm64,
        );
        assert!(fr.steps[0].script.contains("exit 1"));
    }
}
