//! Boot-free layers (pure): a layer whose work needs no running system — files, users, apt
//! work, steps marked offline — is applied without booting the image's init. The build boots
//! the image's own kernel and initrd (exported by the layer below, or by the bootstrap that
//! made the base) with `init=/bin/sh -- /dev/vdb`, and /dev/vdb is this payload: a POSIX shell
//! script that mounts what it needs, grows the root filesystem as cloud-init's growpart and
//! resizefs would, writes the layer's files, makes its users as cloud-init's `users` module
//! would, does the layer's apt work as cloud-init's apt modules would (below), installs its
//! steps and the same provisioning runner, which runs them and prints the same `IMGBUILD-…`
//! markers (`provision --offline-layer`, or `--offline-top`, which runs the hygiene itself),
//! and powers off. No systemd, no udev, no cloud-init.
//!
//! apt without a booted system is what mmdebstrap does in its chroot: services are held off
//! with a policy-rc.d that denies every start (invoke-rc.d(8), "policy-rc.d"), and
//! deb-systemd-invoke starts nothing without a running systemd. The payload brings up QEMU's
//! user network itself (slirp's fixed addresses: guest 10.0.2.15/24, gateway 10.0.2.2, DNS
//! 10.0.2.3; QEMU's docs, "Network emulation", user networking), attaches the shared apt
//! cache disk as the full boot's bootcmd does, and then does what cloud-init 22.4 (Debian 12's;
//! canonical/cloud-init cloudinit/config/cc_apt_configure.py and
//! cloudinit/config/cc_package_update_upgrade_install.py, distros/debian.py) does with the
//! same user-data: each source appended to /etc/apt/sources.list.d/NAME.list (`.list` added),
//! its key dearmoured to /etc/apt/cloud-init.gpg.d/STEM.gpg when the source says `$KEY_FILE`,
//! else to /etc/apt/trusted.gpg.d/STEM.gpg; the proxy in
//! /etc/apt/apt.conf.d/90cloud-init-aptproxy; then `apt-get update`, `dist-upgrade` and
//! `install`, each with `--force-confold --force-unsafe-io --assume-yes --quiet`. The
//! network, the resolver and the policy-rc.d are gone before the steps run; a layer with a
//! step that pulls (the stack's prepull, which starts its own dockerd when no systemd runs)
//! has the network and the resolver again for its runner's time.

use super::cloud_init::{
    LayerPart, Role, APT_CACHE_BOOTCMD, APT_LISTS_BOOTCMD, HYGIENE, LIB, PROVISION,
};
use base64::Engine;
use serde_json::Value;

/// The serial of the payload disk: virtio disks are named in the order QEMU adds them, and the
/// payload comes right after the system disk, so it is /dev/vdb (checked by the payload).
pub const PAYLOAD_SERIAL: &str = "imgbuild-offline";
/// What the kernel runs instead of the image's init (the provision runner strips it from the
/// command line it exports for the layer above).
pub const INIT: &str = "init=/bin/sh -- /dev/vdb";

/// Can `part` be applied without a boot? Only what the payload knows how to do: files, users,
/// apt work (sources whose only template is `$KEY_FILE`, with an armoured key if any), and
/// steps that need no running system.
pub fn eligible(part: &LayerPart) -> bool {
    part.steps.iter().all(|s| s.offline) && part.apt_sources.values().all(|v| source(v).is_some())
}

/// Does the layer do apt work (and so need the network and the apt cache)?
pub fn has_apt(part: &LayerPart) -> bool {
    part.upgrade
        || !part.apt_sources.is_empty()
        || part.apt_proxy.is_some()
        || !part.packages.is_empty()
}

/// One apt source as the payload writes it: its line and its key's binary packets, or None
/// when it uses something only cloud-init knows (another template, a keyserver).
fn source(v: &Value) -> Option<(String, Option<Vec<u8>>)> {
    let obj = v.as_object()?;
    if obj.keys().any(|k| k != "source" && k != "key") {
        return None;
    }
    let line = obj.get("source")?.as_str()?.to_string();
    // A one-line source; cloud-init hands `ppa:…` and the like to add-apt-repository.
    let one_line = line.starts_with("deb ") || line.starts_with("deb-src ");
    if !one_line || line.replace("$KEY_FILE", "").contains('$') {
        return None;
    }
    let key = match obj.get("key") {
        Some(k) => Some(crate::openpgp::dearmour(k.as_str()?).ok()?),
        None => None,
    };
    if line.contains("$KEY_FILE") && key.is_none() {
        return None;
    }
    Some((line, key))
}

/// cloud-init's file name for source `name` (relative names go to sources.list.d, `.list` is
/// added) and the stem its key file is named by (`pathlib.Path(name).stem`).
fn source_paths(name: &str) -> (String, String) {
    let mut file = if name.starts_with('/') {
        name.to_string()
    } else {
        format!("/etc/apt/sources.list.d/{name}")
    };
    if !file.ends_with(".list") {
        file.push_str(".list");
    }
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = match base.rfind('.') {
        Some(i) if i > 0 => &base[..i],
        _ => base,
    };
    (file, stem.to_string())
}

/// The payload's apt work for `part` (see the module's comment).
fn apt_work(out: &mut String, part: &LayerPart) {
    out.push_str(
        "# apt, as cloud-init's apt modules do it in a full boot.\nnet_up apt\nhold_services\n",
    );
    out.push_str(&format!(
        "# The bootcmd's own line, with the link udev would have made.\n\
         mkdir -p /dev/disk/by-id\nd=$(dev_by_serial {serial})\n\
         [ -z \"$d\" ] || ln -sf \"$d\" /dev/disk/by-id/virtio-{serial}\n\
         sh -c {cache} || die 'cannot attach the shared apt cache'\n",
        serial = crate::protocol::APT_CACHE_SERIAL,
        cache = q(APT_CACHE_BOOTCMD),
    ));
    let update = part.apt_update();
    if update {
        out.push_str(&format!("sh -c {} || true\n", q(APT_LISTS_BOOTCMD)));
    }
    for (name, v) in &part.apt_sources {
        let (mut line, key) = source(v).expect("eligible() checked every source");
        let (file, stem) = source_paths(name);
        if let Some(bytes) = key {
            let dir = if line.contains("$KEY_FILE") {
                "/etc/apt/cloud-init.gpg.d"
            } else {
                "/etc/apt/trusted.gpg.d"
            };
            let key_file = format!("{dir}/{stem}.gpg");
            line = line.replace("$KEY_FILE", &key_file);
            out.push_str(&format!(
                "put {} 0644 root:root <<'IMGBUILD_B64'\n{}\nIMGBUILD_B64\n",
                q(&key_file),
                b64(&bytes)
            ));
        }
        out.push_str(&format!(
            "mkdir -p {dir} && printf '%s\\n' {line} >>{file} || die 'cannot write '{file}\n",
            dir = q(file.rsplit_once('/').map(|(d, _)| d).unwrap_or("/")),
            line = q(&line),
            file = q(&file),
        ));
    }
    match &part.apt_proxy {
        Some(p) => out.push_str(&format!(
            "printf 'Acquire::http::Proxy \"%s\";\\n' {} >/etc/apt/apt.conf.d/90cloud-init-aptproxy\n",
            q(p)
        )),
        None => out.push_str("rm -f /etc/apt/apt.conf.d/90cloud-init-aptproxy\n"),
    }
    if update {
        out.push_str("apt_run update\n");
    }
    if part.upgrade {
        out.push_str("apt_run dist-upgrade\n");
    }
    if !part.packages.is_empty() {
        let pkgs: Vec<String> = part.packages.iter().map(|p| q(p)).collect();
        out.push_str(&format!("apt_run install {}\n", pkgs.join(" ")));
    }
    out.push_str("release_services\nnet_down\n");
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
    if has_apt(part) {
        apt_work(&mut s, part);
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
    // A step that pulls (the stack's prepull) gets the network apt had, for the runner's time.
    let network = part.steps.iter().any(|st| st.network);
    if network {
        s.push_str("net_up \"its steps\"\n");
    }
    s.push_str(&format!(
        "/bin/bash {LIB}/provision {mode} </dev/null || die \"the runner exited $?\"\n",
        mode = if top {
            "--offline-top"
        } else {
            "--offline-layer"
        }
    ));
    if network {
        s.push_str("net_down\n");
    }
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
# When this boot began: the runner exports no kernel that nothing since has touched.
: >/run/imgbuild/started
# The block device whose virtio serial is $1 (no udev: no /dev/disk/by-id).
dev_by_serial() {
  for s in /sys/block/*/serial; do
    [ "$(cat "$s" 2>/dev/null)" = "$1" ] && { echo "/dev/$(basename "$(dirname "$s")")"; return 0; }
  done
  return 0
}
# The root filesystem grown to its disk, as cloud-init's growpart and resizefs do at every
# boot (the layer's disk may be larger than the one below).
grow_root() {
  command -v growpart >/dev/null || return 0
  mm=$(mountpoint -d /) || return 0
  sys=$(readlink -f "/sys/dev/block/$mm")
  [ -f "$sys/partition" ] || return 0
  part=$(basename "$sys")
  disk=$(basename "$(dirname "$sys")")
  growpart "/dev/$disk" "$(cat "$sys/partition")" >/dev/null 2>&1 || return 0
  case "$(awk '$2 == "/" { t = $3 } END { print t }' /proc/mounts)" in
    ext*) resize2fs "/dev/$part" >/dev/null 2>&1 || die "cannot grow /dev/$part" ;;
    xfs) xfs_growfs / >/dev/null || die "cannot grow /" ;;
  esac
  echo "imgbuild: grew /dev/$part to its disk" >/dev/console
}
grow_root
# QEMU's user network (slirp) without DHCP: its fixed addresses (`net_up WHAT-FOR`). The NIC's
# driver is loaded as udev's coldplug would; the resolver goes to /run (tmpfs), or over the
# image's file by a bind mount, so nothing of it stays on the disk.
net_up() {
  modprobe -abq $(cat /sys/bus/virtio/devices/*/modalias 2>/dev/null) 2>/dev/null || true
  nic=""
  n=0
  while [ -z "$nic" ] && [ $n -lt 40 ]; do
    for f in /sys/class/net/*; do
      [ -e "$f/device" ] && { nic=${f##*/}; break; }
    done
    [ -n "$nic" ] || { sleep 0.5; n=$((n + 1)); }
  done
  [ -n "$nic" ] || die "no network interface for $1 (QEMU's user network)"
  ip link set lo up
  ip link set "$nic" up && ip addr add 10.0.2.15/24 dev "$nic" && ip route add default via 10.0.2.2 ||
    die "cannot bring up $nic for $1"
  resolv=$(readlink -m /etc/resolv.conf)
  case "$resolv" in
    /run/*) mkdir -p "$(dirname "$resolv")" && echo "nameserver 10.0.2.3" >"$resolv" || die "cannot write $resolv" ;;
    *)
      echo "nameserver 10.0.2.3" >/run/imgbuild/resolv.conf
      [ -e /etc/resolv.conf ] || { : >/etc/resolv.conf && resolv_made=1; }
      mount --bind /run/imgbuild/resolv.conf /etc/resolv.conf || die "cannot set the resolver"
      resolv_bound=1
      ;;
  esac
  echo "imgbuild: $nic up as 10.0.2.15 for $1" >/dev/console
}
net_down() {
  [ -z "${resolv_bound:-}" ] || umount /etc/resolv.conf || die "cannot restore /etc/resolv.conf"
  [ -z "${resolv_made:-}" ] || rm -f /etc/resolv.conf
  resolv_bound="" resolv_made=""
  ip addr flush dev "$nic" && ip link set "$nic" down
}
# No service starts while packages go in (invoke-rc.d asks policy-rc.d; 101: not allowed).
hold_services() {
  [ ! -e /usr/sbin/policy-rc.d ] || mv /usr/sbin/policy-rc.d /run/imgbuild/policy-rc.d.image
  printf '#!/bin/sh\n# imgbuild: a boot-free layer installs packages; nothing starts.\nexit 101\n' >/usr/sbin/policy-rc.d &&
    chmod 0755 /usr/sbin/policy-rc.d || die "cannot write /usr/sbin/policy-rc.d"
}
release_services() {
  rm -f /usr/sbin/policy-rc.d
  [ ! -e /run/imgbuild/policy-rc.d.image ] || mv /run/imgbuild/policy-rc.d.image /usr/sbin/policy-rc.d
}
# apt-get WHAT ARGS..., its output on the console as it comes; on failure its last lines
# quoted for the build's report, and the layer fails.
apt_run() {
  rm -f /run/imgbuild/apt.rc
  { apt-get --option=Dpkg::Options::=--force-confold --option=Dpkg::options::=--force-unsafe-io \
      --assume-yes --quiet "$@" </dev/null 2>&1; echo $? >/run/imgbuild/apt.rc; } |
    tee /run/imgbuild/apt.log >/dev/console
  rc=$(cat /run/imgbuild/apt.rc 2>/dev/null || echo 1)
  [ "$rc" = 0 ] && return 0
  tail -n 30 /run/imgbuild/apt.log | sed 's/^/IMGBUILD-LOG /' >/dev/console
  die "apt-get $1 failed (exit $rc)"
}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::load::Catalog;
    use crate::definition::Arch;
    use crate::render::cloud_init::layer_parts;
    use serde_json::json;

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
    fn layers_whose_steps_need_no_system_and_whose_apt_work_it_knows_are_boot_free() {
        let p = parts(DEF);
        let names: Vec<&str> = p.iter().map(|p| p.name).collect();
        assert_eq!(names, ["features", "image"]);
        // The features layer upgrades, adds trixie's source and runs docker's offline step.
        assert!(has_apt(&p[0]) && eligible(&p[0]));
        assert!(!has_apt(&p[1]) && eligible(&p[1]));
        // A script not marked offline needs a boot; packages do not.
        assert!(!eligible(&parts(&DEF.replace(", offline: true", ""))[1]));
        let with_pkg = parts(&format!("{DEF}packages: [jq]\n"));
        assert!(has_apt(&with_pkg[1]) && eligible(&with_pkg[1]));
        // Sources only cloud-init can write: a PPA (add-apt-repository), another template, a
        // keyserver, a `$KEY_FILE` without a key, a key that is not armoured.
        let mut part = apt_part();
        assert!(eligible(&part));
        for bad in [
            json!({"source": "ppa:linbit/linbit-drbd9-stack"}),
            json!({"source": "deb $MIRROR $RELEASE main"}),
            json!({"source": "deb http://x/ y main", "keyid": "ABCD", "keyserver": "k"}),
            json!({"source": "deb [signed-by=$KEY_FILE] http://x/ y main"}),
            json!({"source": "deb [signed-by=$KEY_FILE] http://x/ y main", "key": "not a key"}),
        ] {
            part.apt_sources.insert("bad".into(), bad.clone());
            assert!(!eligible(&part), "{bad}");
        }
    }

    const KEY_BYTES: &[u8] = b"\x99\x00\x0dimgbuild-test";

    /// A layer with every kind of apt work the payload does, and an offline step.
    fn apt_part() -> LayerPart {
        let armoured = format!(
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{}\n-----END PGP PUBLIC KEY BLOCK-----\n",
            b64(KEY_BYTES)
        );
        let mut p = LayerPart {
            name: "features",
            upgrade: true,
            apt_proxy: Some("http://proxy.example:3128".into()),
            packages: vec!["docker-ce".into(), "jq=1.6*".into()],
            ..LayerPart::default()
        };
        p.apt_sources.insert(
            "docker.list".into(),
            json!({"source": "deb [arch=amd64 signed-by=$KEY_FILE] https://download.docker.com/linux/ubuntu noble stable", "key": armoured}),
        );
        p.apt_sources.insert(
            "plain".into(),
            json!({"source": "deb http://deb.example/ stable main", "key": armoured}),
        );
        p.apt_sources.insert(
            "nokey".into(),
            json!({"source": "deb http://deb.debian.org/debian trixie main"}),
        );
        p.files.push(json!({"path": "/etc/apt/preferences.d/pin", "content": "x\n", "permissions": "0644", "owner": "root:root"}));
        p.users.push(json!({"name": "al"}));
        p.files.push(json!({"path": "/home/al/f", "content": "y\n", "permissions": "0644", "owner": "al:al", "defer": true}));
        p.steps.push(crate::features::Step {
            name: "10-x".into(),
            script: "true\n".into(),
            offline: true,
            network: false,
        });
        p
    }

    #[test]
    fn apt_work_is_written_as_cloud_init_does_it_in_the_order_it_does_it() {
        let text = payload(&apt_part(), Role::Layer, "img");
        syntax_ok(&text).unwrap();
        // Keys: dearmoured, in cloud-init.gpg.d when the source names `$KEY_FILE`, else in
        // trusted.gpg.d, named by the source's stem; lines appended to NAME.list.
        let key = format!("<<'IMGBUILD_B64'\n{}\n", b64(KEY_BYTES));
        assert!(text.contains(&format!(
            "put /etc/apt/cloud-init.gpg.d/docker.gpg 0644 root:root {key}"
        )));
        assert!(text.contains(&format!(
            "put /etc/apt/trusted.gpg.d/plain.gpg 0644 root:root {key}"
        )));
        assert!(text.contains("printf '%s\\n' 'deb [arch=amd64 signed-by=/etc/apt/cloud-init.gpg.d/docker.gpg] https://download.docker.com/linux/ubuntu noble stable' >>/etc/apt/sources.list.d/docker.list"));
        assert!(text.contains("printf '%s\\n' 'deb http://deb.example/ stable main' >>/etc/apt/sources.list.d/plain.list"));
        assert!(text.contains(">>/etc/apt/sources.list.d/nokey.list"));
        assert!(!text.contains("nokey.gpg"));
        assert!(text.contains("printf 'Acquire::http::Proxy \"%s\";\\n' http://proxy.example:3128 >/etc/apt/apt.conf.d/90cloud-init-aptproxy"));
        // cloud-init's order: files, users, apt (sources, proxy, update, upgrade, install),
        // deferred files, then the runner; the network and policy-rc.d gone before the steps.
        let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("no {needle}"));
        let order = [
            "put /etc/apt/preferences.d/pin",
            "useradd",
            "\nnet_up apt\nhold_services\n",
            "APT-CACHE",
            "APT-LISTS",
            "put /etc/apt/cloud-init.gpg.d/docker.gpg",
            "90cloud-init-aptproxy",
            "apt_run update\n",
            "apt_run dist-upgrade\n",
            "apt_run install docker-ce 'jq=1.6*'\n",
            "\nrelease_services\nnet_down\n",
            "put /home/al/f",
            "provision --offline-layer",
        ];
        for w in order.windows(2) {
            assert!(at(w[0]) < at(w[1]), "{} before {}", w[0], w[1]);
        }
        // Without apt work, none of it.
        let mut plain = apt_part();
        (plain.upgrade, plain.apt_proxy) = (false, None);
        plain.apt_sources.clear();
        plain.packages.clear();
        let text = payload(&plain, Role::Layer, "img");
        assert!(!text.contains("\nnet_up ") && !text.contains("apt_run "));
    }

    #[test]
    fn a_step_that_pulls_has_the_network_for_the_runners_time() {
        let mut p = apt_part();
        (p.upgrade, p.apt_proxy) = (false, None);
        p.apt_sources.clear();
        p.packages.clear();
        p.steps.push(crate::features::Step {
            name: "62-prepull".into(),
            script: "prepull /var/lib/imgbuild/x/images nginx\n".into(),
            offline: true,
            network: true,
        });
        assert!(eligible(&p));
        let text = payload(&p, Role::Top, "img");
        let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("no {needle}"));
        assert!(at("\nnet_up \"its steps\"\n") < at("provision --offline-top"));
        assert!(at("provision --offline-top") < at("\nnet_down\noff\n"));
        // No apt work: no policy-rc.d, no apt cache.
        assert!(!text.contains("\nhold_services\n") && !text.contains("apt_run "));
    }

    #[test]
    fn source_files_and_key_stems_are_cloud_inits() {
        assert_eq!(
            source_paths("docker.list"),
            (
                "/etc/apt/sources.list.d/docker.list".into(),
                "docker".into()
            )
        );
        assert_eq!(
            source_paths("nvidia"),
            (
                "/etc/apt/sources.list.d/nvidia.list".into(),
                "nvidia".into()
            )
        );
        assert_eq!(
            source_paths("/etc/apt/sources.list.d/a.b.list"),
            ("/etc/apt/sources.list.d/a.b.list".into(), "a.b".into())
        );
    }

    #[test]
    fn the_runner_exports_the_command_line_without_the_payloads_init() {
        // The runner's own sed line, run over a boot-free layer's command line.
        let line = PROVISION
            .lines()
            .find(|l| l.contains("/proc/cmdline >\"$d/cmdline\""))
            .expect("the runner's cmdline line");
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("proc-cmdline");
        let base = "BOOT_IMAGE=/vmlinuz root=LABEL=rootfs ro console=tty1 console=ttyS0,115200n8";
        std::fs::write(&cmdline, format!("{base} {INIT}\n")).unwrap();
        let script = format!(
            "d={}\n{}\ncat \"$d/cmdline\"",
            dir.path().display(),
            line.replace("/proc/cmdline", &cmdline.display().to_string())
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "root=LABEL=rootfs ro console=tty1 console=ttyS0,115200n8"
        );
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
