//! The smoke's guards against what must never ship: the exposure allowlist imgbuild assembles
//! (system, features, compose `expose`, `smoke.listen`) and the guest runner's listener parser
//! and secret/identity scanner (cloud-init/guest/smoke.py, run with python3 against sample
//! /proc/net text and a planted tree; nothing is booted).

use crate::common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;

fn checks_of(r: &imgbuild::definition::Resolved) -> Vec<Value> {
    let launch = imgbuild::pipeline::smoke::SmokeLaunch::for_image(r);
    imgbuild::pipeline::smoke::checks(r, launch.as_ref())
}

fn allow_of(checks: &[Value]) -> Vec<(u64, String)> {
    let c = checks
        .iter()
        .find(|c| c["name"] == "exposure-allowlist")
        .expect("an exposure-allowlist check");
    c["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["port"].as_u64().unwrap(),
                a["protocol"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_desktop_twin_declares_ssh_dhcp_vnc_novnc_rdp_and_rpcbind() {
    let images = concat!(env!("CARGO_MANIFEST_DIR"), "/images");
    let r = imgbuild::definition::Catalog::new(images)
        .load_checked("debian12-desktop-ai")
        .expect("debian12-desktop-ai loads");
    let checks = checks_of(&r);
    let allow = allow_of(&checks);
    let desk = r.definition.features.desktop.as_ref().unwrap();
    let mut want = vec![
        (22, "tcp"),
        (68, "udp"),
        (5900 + u64::from(desk.vnc_display), "tcp"),
        (u64::from(desk.novnc_port), "tcp"),
        (3389, "tcp"),
    ];
    if r.definition.features.shared_mount.is_some() {
        want.extend([(111, "tcp"), (111, "udp")]);
    }
    for (port, proto) in want {
        assert!(
            allow.contains(&(port, proto.to_string())),
            "{port}/{proto} not declared: {allow:?}"
        );
    }
    // The stack publishes on the loopback only: none of its ports is declared.
    assert!(
        !allow.iter().any(|(p, _)| *p == 11434 || *p == 8080),
        "{allow:?}"
    );
    // The guards run last, after the definition's checks, in this order.
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names[names.len() - imgbuild::pipeline::smoke::FINAL_CHECKS.len()..],
        imgbuild::pipeline::smoke::FINAL_CHECKS
    );
}

#[test]
fn smoke_listen_and_compose_expose_join_the_allowlist() {
    let dir = catalog(&[(
        "img",
        &format!(
            "{MINIMAL}smoke:\n  listen:\n    - {{port: 4444, protocol: tcp, process: nc}}\n    - {{port: 5353, protocol: udp}}\n"
        ),
    )]);
    let r = imgbuild::definition::Catalog::new(dir.path().join("images"))
        .load_checked("img")
        .expect("loads");
    let checks = checks_of(&r);
    let c = checks
        .iter()
        .find(|c| c["name"] == "exposure-allowlist")
        .unwrap();
    let allow = c["allow"].as_array().unwrap();
    assert!(allow.contains(&json!({"port": 4444, "protocol": "tcp", "process": "nc"})));
    assert!(allow.contains(&json!({"port": 5353, "protocol": "udp"})));
    assert!(allow.contains(&json!({"port": 22, "protocol": "tcp"})));
    // A minimal image has no features: nothing but the system's and the definition's.
    assert_eq!(allow.len(), 4, "{allow:?}");
}

#[test]
fn a_bad_listen_entry_is_an_error_naming_the_field() {
    for (entry, expect) in [
        ("{port: 80, protocol: sctp}", "unknown variant `sctp`"),
        (
            "{port: 80, protocol: tcp, proces: x}",
            "unknown field `proces`",
        ),
        ("{port: 0, protocol: tcp}", "smoke.listen[0].port"),
        (
            "{port: 80, protocol: tcp, process: a-process-name-too-long}",
            "smoke.listen[0].process",
        ),
    ] {
        let dir = catalog(&[(
            "img",
            &format!("{MINIMAL}smoke:\n  listen:\n    - {entry}\n"),
        )]);
        let out = imgbuild(dir.path(), &["validate", "img"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{entry}: {stdout} {stderr}");
        assert!(
            stderr.contains(expect),
            "{entry}: want `{expect}` in {stderr}"
        );
        assert!(stderr.contains("images/img.yaml:"), "{stderr}");
    }
}

#[test]
fn the_listener_parser_reads_proc_net_and_finds_the_undeclared() {
    // Real /proc/net lines: sshd on 0.0.0.0:22 and [::]:22, a listener on 127.0.0.1:631, nc on
    // 0.0.0.0:4444, a connected TCP socket; UDP 0.0.0.0:68 (DHCP), 127.0.0.53:53, [::]:111,
    // and a connected UDP socket (timesyncd).
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0\n\
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 100 0 0 10 0\n\
   2: 00000000:115C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 100 0 0 10 0\n\
   3: 0F02000A:0016 0202000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0 100 0 0 10 0\n";
    let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1005 1 0 100 0 0 10 0\n\
   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1006 1 0 100 0 0 10 0\n";
    let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  100: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2001 2 0 0\n\
  101: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 2002 2 0 0\n\
  102: 0F02000A:A1B2 0202000A:007B 01 00000000:00000000 00:00000000 00000000   100        0 2003 2 0 0\n";
    let udp6 = "   sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  200: 00000000000000000000000000000000:006F 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2004 2 0 0\n";
    let code = format!(
        "socks = []\n\
         for text, proto, v6 in (({tcp:?}, 'tcp', False), ({tcp6:?}, 'tcp', True), ({udp:?}, 'udp', False), ({udp6:?}, 'udp', True)):\n\
         \x20   socks += [s for s in m.parse_proc_net(text, proto, v6) if not s['loopback']]\n\
         procs = {{'1001': ['sshd'], '1003': ['nc'], '1005': ['sshd'], '2001': ['dhclient'], '2004': ['rpcbind']}}\n\
         for s in socks: s['processes'] = procs.get(s['inode'], ['kernel'])\n\
         allow = [{{'port': 22, 'protocol': 'tcp'}}, {{'port': 68, 'protocol': 'udp'}}, {{'port': 111, 'protocol': 'udp', 'process': 'portmap'}}]\n\
         print(json.dumps({{'all': [(s['port'], s['protocol'], s['address']) for s in socks], 'bad': [(s['port'], s['protocol'], s['address'], s['processes']) for s in m.undeclared(socks, allow)]}}))"
    );
    let v = smoke_py(&code);
    assert_eq!(
        v["all"],
        json!([
            [22, "tcp", "0.0.0.0"],
            [4444, "tcp", "0.0.0.0"],
            [22, "tcp", "::"],
            [68, "udp", "0.0.0.0"],
            [111, "udp", "::"]
        ])
    );
    // nc is undeclared; rpcbind holds 111/udp, but only `portmap` was declared for it.
    assert_eq!(
        v["bad"],
        json!([
            [4444, "tcp", "0.0.0.0", ["nc"]],
            [111, "udp", "::", ["rpcbind"]]
        ])
    );
}

fn plant(root: &Path, path: &str, content: &str, baked: bool) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    if baked {
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
}

#[test]
fn the_scanner_names_baked_keys_credentials_and_identities_and_nothing_else() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    // Base64 as long as a key body's line, never printed.
    const SECRET: &str =
        "c2VjcmV0LW1hdGVyaWFsLW5ldmVyLXByaW50ZWQc2VjcmV0LW1hdGVyaWFsLW5ldmVyLXByaW50ZWQ";
    let pem = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n-----END OPENSSH PRIVATE KEY-----\n"
    );
    // Defects.
    plant(root, "/root/.ssh/id_ed25519", &pem, true);
    plant(
        root,
        "/home/ops/key.ppk",
        &format!("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPublic-Lines: 1\n{SECRET}\nPrivate-Lines: 1\n{SECRET}\n"),
        true,
    );
    plant(
        root,
        "/etc/app/tls.key",
        &format!("-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n{SECRET}\n-----END EC PRIVATE KEY-----\n"),
        true,
    );
    plant(
        root,
        "/root/.git-credentials",
        &format!("https://u:{SECRET}@example.org\n"),
        true,
    );
    plant(
        root,
        "/home/ops/.netrc",
        "machine h login u password p\n",
        true,
    );
    plant(root, "/root/.aws/credentials", "[default]\n", true);
    plant(
        root,
        "/root/.docker/config.json",
        r#"{"auths": {"r.example": {"auth": "dTpw"}}}"#,
        true,
    );
    plant(root, "/etc/ssl/private/ssl-cert-snakeoil.key", &pem, true);
    plant(root, "/etc/xrdp/rsakeys.ini", "[keys]\n", true);
    plant(root, "/var/lib/dkms/mok.key", &pem, true);
    plant(root, "/var/lib/docker/engine-id", "x\n", true);
    // Not defects: made at this boot, shipped by a package, a Docker config without auths, a
    // public key, a pseudo file system and a container layer store, a big file.
    plant(root, "/etc/ssh/ssh_host_ed25519_key", &pem, false);
    plant(root, "/etc/xrdp/key.pem", &pem, false);
    plant(root, "/var/lib/k3s/server/tls/serving.key", &pem, false);
    plant(root, "/usr/share/doc/pkg/examples/test.key", &pem, true);
    plant(
        root,
        "/var/lib/dpkg/info/pkg.list",
        "/usr/share/doc/pkg/examples/test.key\n",
        true,
    );
    plant(
        root,
        "/home/ops/.docker/config.json",
        r#"{"auths": {}, "credsStore": "pass"}"#,
        true,
    );
    plant(
        root,
        "/root/.ssh/id_ed25519.pub",
        "ssh-ed25519 AAAA x\n",
        true,
    );
    plant(root, "/proc/1/environ", &pem, true);
    // A program that handles keys holds the BEGIN line as a constant (cloud-init's compiled
    // cc_ssh module does): no block, no key.
    plant(
        root,
        "/usr/lib/python3/dist-packages/x/__pycache__/ssh.cpython-311.pyc",
        "\u{1}\u{2}-----BEGIN OPENSSH PRIVATE KEY-----\u{0}\u{5}-----END OPENSSH PRIVATE KEY-----",
        true,
    );
    plant(
        root,
        "/var/lib/docker/overlay2/abc/diff/key.pem",
        &pem,
        true,
    );
    plant(
        root,
        "/opt/big.bin",
        &format!("{}{pem}", "x".repeat(2 << 20)),
        true,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    let code = format!(
        "keys, creds, stale = m.scan_tree({root:?}, {now})\n\
         m._SCAN.append((keys, creds, stale))\n\
         print(json.dumps({{'keys': keys, 'creds': creds, 'stale': stale, 'details': [m.builtin_no_private_keys({{}}), m.builtin_no_credential_files({{}}), m.builtin_identities({{}})]}}))",
        root = root.to_str().unwrap()
    );
    let v = smoke_py(&code);
    assert_eq!(
        v["keys"],
        json!([
            "/etc/app/tls.key",
            "/home/ops/key.ppk",
            "/root/.ssh/id_ed25519"
        ])
    );
    assert_eq!(
        v["creds"],
        json!([
            "/home/ops/.netrc",
            "/root/.aws/credentials",
            "/root/.docker/config.json",
            "/root/.git-credentials"
        ])
    );
    assert_eq!(
        v["stale"],
        json!([
            "/etc/ssl/private/ssl-cert-snakeoil.key",
            "/etc/xrdp/rsakeys.ini",
            "/var/lib/dkms/mok.key",
            "/var/lib/docker/engine-id"
        ])
    );
    let details = v["details"].to_string();
    assert!(!details.contains(SECRET), "a secret was printed: {details}");
    for d in v["details"].as_array().unwrap() {
        assert_eq!(d[0], false, "{d}");
    }
}

#[test]
fn sudo_rules_name_their_users_and_not_groups_aliases_or_defaults() {
    let sudoers = "# User rules for ubuntu\nubuntu ALL=(ALL) NOPASSWD:ALL\n\
                   Defaults env_reset\n%sudo ALL=(ALL:ALL) ALL\nroot ALL=(ALL:ALL) ALL\n\
                   User_Alias ADMINS = a, b\n@includedir /etc/sudoers.d\n\n  builder, ALL=(ALL) ALL\n";
    let v = smoke_py(&format!(
        "print(json.dumps(m.sudo_rule_users({sudoers:?})))"
    ));
    assert_eq!(v, json!(["ubuntu", "root", "builder"]));
}
