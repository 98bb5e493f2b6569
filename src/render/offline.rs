//! Boot-free layers (pure): a layer whose work needs no running system — files, users, steps
//! marked offline — is applied without booting the image's init. The build boots the image's
//! own kernel and initrd (exported by the layer below) with `init=/bin/sh -- /dev/vdb`, and
//! /dev/vdb is this payload: a POSIX shell script that mounts what it needs, writes the
//! layer's files, makes its users as cloud-init's `users` module would, installs its steps and
//! the same provisioning runner, which runs them and prints the same `IMGBUILD-…` markers
//! (`provision --offline-layer`, or `--offline-top`, which runs the hygiene itself), and
//! powers off. No systemd, no cloud-init, no network.

use super::cloud_init::{LayerPart, Role, HYGIENE, LIB, PROVISION};
use base64::Engine;
use serde_json::Value;

/// The serial of the payload disk: virtio disks are named in the order QEMU adds them, and the
/// payload comes right after the system disk, so it is /dev/vdb (checked by the payload).
pub const PAYLOAD_SERIAL: &str = "imgbuild-offline";
/// What the kernel runs instead of the image's init.
pub const INIT: &str = "init=/bin/sh -- /dev/vdb";

/// Can `part` be applied without a boot? Only what the payload knows how to do: files, users,
/// and steps that need no running system. Anything with apt (upgrade, sources, proxy,
/// packages) needs the network and cloud-init's apt handling.
pub fn eligible(part: &LayerPart) -> bool {
    !part.upgrade
        && part.apt_sources.is_empty()
        && part.apt_proxy.is_none()
        && part.packages.is_empty()
        && part.steps.iter().all(|s| s.offline)
}

/// Shell single-quoting.
fn q(s: &str) -> String {
    crate::exec::quote(s)
}

fn b64(bytes: &[u8]) -> String {
    let enc = base64::engine::general_purpose::STANDARD.encode(bytes);
    // Lines of 76, as base64(1) writes them; `base64 -d` reads any.
    enc.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One `write_files` entry (as the cloud-config value the full boot gets) as a `put` call.
fn put_file(out: &mut String, f: &Value) {
    let path = f["path"].as_str().unwrap_or_default();
    let content = f["content"].as_str().unwrap_or_default();
    let bytes = if f["encoding"] == "b64" {
        base64::engine::general_purpose::STANDARD
            .decode(content)
            .unwrap_or_default()
    } else {
        content.as_bytes().to_vec()
    };
    out.push_str(&format!(
        "put {} {} {} <<'IMGBUILD_B64'\n{}\nIMGBUILD_B64\n",
        q(path),
        q(f["permissions"].as_str().unwrap_or("0644")),
        q(f["owner"].as_str().unwrap_or("root:root")),
        b64(&bytes)
    ));
}

/// One `users` entry as cloud-init's users module makes it (cc_users_groups,
/// distros.create_user): groups that do not exist are made, the password is locked, a sudo
/// rule goes to /etc/sudoers.d/90-cloud-init-users, keys to ~/.ssh/authorized_keys.
fn make_user(out: &mut String, u: &Value) {
    let name = u["name"].as_str().unwrap_or_default();
    let groups: Vec<&str> = u["groups"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    for g in &groups {
        out.push_str(&format!(
            "getent group {g} >/dev/null || groupadd {g} || die 'cannot make group '{g}\n",
            g = q(g)
        ));
    }
    let mut add = format!(
        "useradd -m -s {}",
        q(u["shell"].as_str().unwrap_or("/bin/bash"))
    );
    if let Some(g) = u["gecos"].as_str() {
        add.push_str(&format!(" -c {}", q(g)));
    }
    if !groups.is_empty() {
        add.push_str(&format!(" -G {}", q(&groups.join(","))));
    }
    out.push_str(&format!(
        "getent passwd {n} >/dev/null || {add} {n} || die 'cannot make user '{n}\n",
        n = q(name)
    ));
    out.push_str(&format!("passwd -l {} >/dev/null\n", q(name)));
    if let Some(rule) = u["sudo"].as_str() {
        out.push_str(&format!(
            "printf '\\n# User rules for %s\\n%s %s\\n' {n} {n} {r} >>/etc/sudoers.d/90-cloud-init-users\n\
             chmod 0440 /etc/sudoers.d/90-cloud-init-users\n",
            n = q(name),
            r = q(rule)
        ));
    }
    if let Some(keys) = u["ssh_authorized_keys"].as_array() {
        let text: String = keys
            .iter()
            .filter_map(|k| k.as_str())
            .map(|k| format!("{k}\n"))
            .collect();
        out.push_str(&format!(
            "h=$(getent passwd {n} | cut -d: -f6)\n\
             put \"$h/.ssh/authorized_keys\" 0600 {n}: <<'IMGBUILD_B64'\n{}\nIMGBUILD_B64\n\
             chown {n}: \"$h/.ssh\"; chmod 0700 \"$h/.ssh\"\n",
            b64(text.as_bytes()),
            n = q(name)
        ));
    }
}

/// The payload script of a boot-free layer (`image`: the hostname its top layer gets).
pub fn payload(part: &LayerPart, role: Role, image: &str) -> String {
    let top = role != Role::Layer;
    let mut s = format!(
        "#!/bin/sh\n\
         # imgbuild boot-free layer {name} ({what}): run by /bin/sh as PID 1 from the payload disk\n\
         # ({INIT}). Rendered; edit the image definition instead.\n",
        name = part.name,
        what = if top { "top layer" } else { "lower layer" },
    );
    s.push_str(RUNTIME);
    s.push_str("say \"OFFLINE-START ");
    s.push_str(part.name);
    s.push_str("\"\n# Files (root's first; files of users made below after them, as cloud-init defers them).\n");
    let deferred = |f: &&Value| f["defer"] == true;
    for f in part.files.iter().filter(|f| !deferred(f)) {
        put_file(&mut s, f);
    }
    if !part.users.is_empty() {
        s.push_str("# Users.\n");
        for u in &part.users {
            make_user(&mut s, u);
        }
    }
    for f in part.files.iter().filter(deferred) {
        put_file(&mut s, f);
    }
    s.push_str("# The steps and the runner.\n");
    for st in &part.steps {
        put_file(
            &mut s,
            &serde_json::json!({"path": format!("{LIB}/steps/{}.sh", st.name), "content": st.script, "permissions": "0755", "owner": "root:root"}),
        );
    }
    put_file(
        &mut s,
        &serde_json::json!({"path": format!("{LIB}/provision"), "content": PROVISION, "permissions": "0755", "owner": "root:root"}),
    );
    if top {
        put_file(
            &mut s,
            &serde_json::json!({"path": format!("{LIB}/hygiene"), "content": HYGIENE, "permissions": "0755", "owner": "root:root"}),
        );
        // cloud-init's set_hostname would write the top layer's name (meta-data's
        // local-hostname); an instance gets its own at launch.
        s.push_str(&format!("echo {} >/etc/hostname\n", q(image)));
    }
    s.push_str(&format!(
        "/bin/bash {LIB}/provision {mode} </dev/null || die \"the runner exited $?\"\n",
        mode = if top {
            "--offline-top"
        } else {
            "--offline-layer"
        }
    ));
    s.push_str("off\n");
    s
}

/// What every payload starts with: a minimal PID 1's environment, `say`, `put`, `die`, `off`.
const RUNTIME: &str = r#"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
LANG=C.UTF-8
# systemctl edits unit files itself instead of asking a running systemd (systemctl(1)).
SYSTEMD_OFFLINE=1
DEBIAN_FRONTEND=noninteractive
export PATH HOME LANG SYSTEMD_OFFLINE DEBIAN_FRONTEND
say() { echo "IMGBUILD-$*" >/dev/console; }
off() {
  sync
  # Read-only before power goes: the layer's disk is left clean (no journal to replay).
  mount -o remount,ro / 2>/dev/null || sync
  echo 1 >/proc/sys/kernel/sysrq
  echo o >/proc/sysrq-trigger
  sleep 60
}
die() { say "PROVISION-FAILED $*"; off; }
# put PATH MODE OWNER, base64 content on stdin.
put() {
  mkdir -p "$(dirname "$1")" || die "cannot make the folder of $1"
  base64 -d >"$1" || die "cannot write $1"
  chmod "$2" "$1" && chown "$3" "$1" || die "cannot set the mode or owner of $1"
}
# The initramfs moved /proc, /sys, /dev and /run onto the root; mount whatever it did not.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /run || mount -t tmpfs -o mode=0755 tmpfs /run
[ "$(cat /sys/block/vdb/serial 2>/dev/null)" = imgbuild-offline ] || die "/dev/vdb is not the payload disk"
mount -o remount,rw / || die "cannot mount / read-write"
mkdir -p /run/imgbuild /run/lock /tmp
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::load::Catalog;
    use crate::definition::Arch;
    use crate::render::cloud_init::layer_parts;

    fn parts(def: &str) -> Vec<LayerPart> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.yaml"), def).unwrap();
        let r = Catalog::new(dir.path()).load("t").unwrap();
        let frags = crate::render::features::fragments(&r.definition, Arch::Amd64);
        layer_parts(&r, Arch::Amd64, &frags, None).unwrap()
    }

    const DEF: &str = "\
description: offline
os: {distro: debian, version: \"12\", codename: bookworm}
arch: [amd64]
base:
  amd64:
    bootstrap: {suite: bookworm}
features:
  docker: {source: distro}
users:
  - {name: al, gecos: \"Al O'Neil\", groups: [adm, extra], sudo: true, ssh_authorized_keys: [\"ssh-ed25519 AAAA al@x\"]}
files:
  - {path: /etc/x/plain.txt, content: \"it's $HOME `x`\\n\", permissions: \"0640\"}
  - {path: /home/al/mine.txt, content: \"mine\\n\", owner: \"al:al\"}
scripts:
  - {name: quiet, run: \"echo hi > /etc/hi\", offline: true}
";

    #[test]
    fn only_layers_without_apt_and_with_offline_steps_are_boot_free() {
        let p = parts(DEF);
        let names: Vec<&str> = p.iter().map(|p| p.name).collect();
        assert_eq!(names, ["features", "image"]);
        assert!(
            !eligible(&p[0]),
            "the features layer upgrades and installs packages"
        );
        assert!(eligible(&p[1]));
        // A script not marked offline needs a boot; so do packages.
        assert!(!eligible(&parts(&DEF.replace(", offline: true", ""))[1]));
        assert!(!eligible(&parts(&format!("{DEF}packages: [jq]\n"))[1]));
    }

    /// Runs `sh -n` (the shell that runs payloads) on `script`.
    fn syntax_ok(script: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.sh");
        std::fs::write(&f, script).unwrap();
        let o = std::process::Command::new("sh")
            .arg("-n")
            .arg(&f)
            .output()
            .unwrap();
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    #[test]
    fn the_payload_is_valid_sh_and_carries_the_layers_work() {
        let p = parts(DEF);
        let top = payload(&p[1], Role::Top, "offimg");
        syntax_ok(&top).unwrap();
        // Every file, byte for byte (base64 of the content), with its mode and owner; the
        // user's file after the user.
        let enc = |s: &str| b64(s.as_bytes());
        assert!(top.contains(&format!(
            "put /etc/x/plain.txt 0640 root:root <<'IMGBUILD_B64'\n{}\n",
            enc("it's $HOME `x`\n")
        )));
        let user_at = top
            .find("useradd -m -s /bin/bash -c 'Al O'\\''Neil' -G adm,extra al")
            .unwrap();
        let file_at = top.find("put /home/al/mine.txt 0644 al:al").unwrap();
        assert!(user_at < file_at);
        assert!(top.contains("getent group extra >/dev/null || groupadd extra"));
        assert!(top.contains(&enc("ssh-ed25519 AAAA al@x\n")));
        assert!(top.contains("ALL=(ALL) NOPASSWD:ALL"));
        // The steps and the same runner, in its offline mode; the top layer's hygiene.
        assert!(top.contains(&format!("put {LIB}/steps/50-01-quiet.sh 0755 root:root")));
        assert!(top.contains(&enc(PROVISION)));
        assert!(top.contains(&enc(HYGIENE)));
        assert!(top.contains("provision --offline-top"));
        assert!(top.contains("echo offimg >/etc/hostname"));
        let lower = payload(&p[1], Role::Layer, "offimg");
        syntax_ok(&lower).unwrap();
        assert!(lower.contains("provision --offline-layer"));
        assert!(!lower.contains(&enc(HYGIENE)));
        assert!(!lower.contains("offimg"), "a lower layer names no image");
        // The check itself fails on a broken script.
        assert!(syntax_ok("if then fi\n").is_err());
    }
}
