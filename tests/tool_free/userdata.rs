//! `imgbuild userdata`: launch-time user-data for a per-user VM, checked by cloud-init's own
//! schema check and the 24.04 JSON schema (run by the command itself), its content read back
//! with PyYAML, and bad launch parameters refused with exit 2.

use crate::common;

use common::*;
use std::os::unix::fs::PermissionsExt;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINKIzFSoZBDV8xDcjGci1bwv84kEv2jAZ0eSz0TlZ6DT alice@laptop";

fn inputs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("key.pub"), format!("# alice\n{KEY}\n")).unwrap();
    std::fs::write(d.path().join("vnc"), "s3cr'$t\n").unwrap();
    d
}

#[test]
fn desktop_user_data_is_valid_and_carries_the_launch_parameters() {
    let d = inputs();
    let out = d.path().join("user-data");
    let o = imgbuild(
        &repo(),
        &[
            "--json",
            "userdata",
            "desktop-ai",
            "--user",
            "alice",
            "--ssh-key",
            d.path().join("key.pub").to_str().unwrap(),
            "--desktop-password-file",
            d.path().join("vnc").to_str().unwrap(),
            "--shared",
            "nfs.lab:/export/shared",
            "--profiles",
            "ai,search",
            "--stack-host",
            "ws7.lab.example",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for v in report["validators"].as_array().unwrap() {
        assert_eq!(v["status"], "passed", "{v}");
    }
    assert_eq!(report["validators"].as_array().unwrap().len(), 2);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600,
        "it holds the VNC password"
    );
    let body = std::fs::read_to_string(&out).unwrap();
    assert!(body.starts_with("#cloud-config\n"));
    let ud = python_yaml(&out);
    let user = &ud["users"][0];
    assert_eq!(user["name"], "alice");
    assert_eq!(user["ssh_authorized_keys"][0], KEY);
    // The desktop password unlocks the account (RDP logs in through PAM), as a SHA-512 crypt
    // hash that OpenSSL's own crypt computes again from the password and the hash's salt.
    assert_eq!(user["lock_passwd"], false);
    let hash = user["passwd"].as_str().unwrap();
    let salt = hash
        .strip_prefix("$6$")
        .and_then(|h| h.split('$').next())
        .unwrap_or_else(|| panic!("not a SHA-512 crypt hash: {hash}"));
    assert_eq!(salt.len(), 16, "{hash}");
    let again = std::process::Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, "s3cr'$t"])
        .output()
        .expect("openssl runs");
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), hash);
    assert!(
        !body.contains("s3cr'$t"),
        "the password itself is in the user-data"
    );
    assert!(user["groups"].as_str().unwrap().contains("docker"));
    assert_eq!(ud["mounts"][0][0], "nfs.lab:/export/shared");
    assert_eq!(ud["mounts"][0][1], "/shared");
    let files = ud["write_files"].as_array().unwrap();
    let file = |p: &str| {
        files
            .iter()
            .find(|f| f["path"] == p)
            .unwrap_or_else(|| panic!("{p}"))
            .clone()
    };
    // VNC's copy arrives as TigerVNC's passwd file holds it: the bytes `vncpasswd -f` makes
    // of the same password (quotes and `$` included), private, in /run only.
    let vnc = file("/run/imgbuild/vnc-passwd");
    assert_eq!(vnc["encoding"], "b64");
    assert_eq!(vnc["permissions"], "0600");
    let want = {
        use std::io::Write;
        let mut c = std::process::Command::new("vncpasswd")
            .arg("-f")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("vncpasswd (tigervnc-tools) runs");
        c.stdin.take().unwrap().write_all(b"s3cr'$t\n").unwrap();
        c.wait_with_output().unwrap().stdout
    };
    use base64::Engine as _;
    let got = base64::engine::general_purpose::STANDARD
        .decode(vnc["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, want, "the VNC passwd file differs from vncpasswd -f's");
    assert!(file("/etc/tigervnc/vncserver.users")["content"]
        .as_str()
        .unwrap()
        .contains(":1=alice"));
    assert!(file("/var/lib/imgbuild/ai-stack/launch.env")["content"]
        .as_str()
        .unwrap()
        .contains("COMPOSE_PROFILES=ai,search\nSTACK_HOST=ws7.lab.example\n"));
    let runcmd = serde_json::to_string(&ud["runcmd"]).unwrap();
    // The launch user's own copy of the stack's first-login passwords, once the secrets exist.
    assert!(
        runcmd.contains("systemctl start imgbuild-secrets-ai-stack.service && /usr/local/lib/imgbuild/start-page credentials /opt/imgbuild/ai-stack/services.json /var/lib/imgbuild/ai-stack/secrets.env alice"),
        "{runcmd}"
    );
    assert!(runcmd.contains("/run/imgbuild/vnc-passwd"), "{runcmd}");
    assert!(runcmd.contains("tigervncserver@:1.service"));
}

#[test]
fn stdout_without_a_desktop_and_without_sudo() {
    let d = inputs();
    let o = imgbuild(
        &repo(),
        &[
            "userdata",
            "kolla-node",
            "--user",
            "bob",
            "--no-sudo",
            "--ssh-key",
            d.path().join("key.pub").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let f = d.path().join("ud");
    std::fs::write(&f, &o.stdout).unwrap();
    let ud = python_yaml(&f);
    assert_eq!(ud["users"][0]["name"], "bob");
    assert!(ud["users"][0].get("sudo").is_none());
    assert!(ud.get("write_files").is_none() && ud.get("mounts").is_none());
}

/// `IMAGE --user USER --ssh-key KEY [--desktop-password-file PW] EXTRA...`
fn launch<'a>(
    image: &'a str,
    user: &'a str,
    key: &'a str,
    vnc: Option<&'a str>,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec![image, "--user", user, "--ssh-key", key];
    if let Some(vnc) = vnc {
        v.extend(["--desktop-password-file", vnc]);
    }
    v.extend(extra);
    v
}

#[test]
fn bad_launch_parameters_are_exit_2_and_write_nothing() {
    let d = inputs();
    let key = d.path().join("key.pub");
    let bad_key = d.path().join("bad.pub");
    std::fs::write(&bad_key, "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n").unwrap();
    let short = d.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let out = d.path().join("never");
    let k = key.to_str().unwrap();
    let vnc = d.path().join("vnc");
    let v = vnc.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            launch("desktop-ai", "alice", k, None, &[]),
            "--desktop-password-file",
        ),
        (launch("desktop-ai", "Alice", k, Some(v), &[]), "user name"),
        (
            launch("desktop-ai", "root", k, Some(v), &[]),
            "system account",
        ),
        (
            launch("desktop-ai", "a", bad_key.to_str().unwrap(), Some(v), &[]),
            "line 1",
        ),
        (launch("desktop-ai", "a", k, short.to_str(), &[]), "6 to 72"),
        (
            launch("desktop-ai", "a", k, Some(v), &["--profiles", "ai,serch"]),
            "did you mean `search`",
        ),
        (
            launch("desktop-ai", "a", k, Some(v), &["--shared", "just-a-host"]),
            "SERVER:/PATH",
        ),
        (
            launch("desktop-ai", "a", k, Some(v), &["--stack-host", "http://x"]),
            "--stack-host",
        ),
        (
            launch("kolla-node", "a", k, None, &["--shared", "h:/x"]),
            "no shared mount",
        ),
        (launch("kolla-node", "a", k, Some(v), &[]), "no desktop"),
        (
            launch("kolla-node", "a", "/nonexistent", None, &[]),
            "--ssh-key",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["userdata"];
        all.extend(&args);
        all.extend(["-o", out.to_str().unwrap()]);
        let err = TestCommand::new(&all).expect(2).stderr;
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote a file");
    }
}

/// `imgbuild userdata` for `image` with a token file and `extra` options, validated by the
/// command itself (cloud-init's schema and the 24.04 JSON schema).
fn k3s_userdata(image: &str, extra: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let d = inputs();
    std::fs::write(
        d.path().join("token"),
        "K10-cluster-token-not-real-0123456789\n",
    )
    .unwrap();
    let mut args = vec![
        "--json".to_string(),
        "userdata".into(),
        image.into(),
        "--user".into(),
        "ops".into(),
        "--ssh-key".into(),
        d.path().join("key.pub").to_str().unwrap().into(),
        "--k3s-token-file".into(),
        d.path().join("token").to_str().unwrap().into(),
        "-o".into(),
        d.path().join("ud").to_str().unwrap().into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (imgbuild(&repo(), &args), d)
}

#[test]
fn k3s_nodes_join_with_a_token_file_and_add_their_labels_and_taints() {
    let (o, d) = k3s_userdata(
        "k3s-node",
        &[
            "--k3s-server",
            "https://10.0.0.10:6443",
            "--k3s-label",
            "topology.kubernetes.io/zone=rack1",
            "--k3s-taint",
            "gpu=true:NoSchedule",
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for v in report["validators"].as_array().unwrap() {
        assert_eq!(v["status"], "passed", "{v}");
    }
    let body = std::fs::read_to_string(d.path().join("ud")).unwrap();
    let ud = python_yaml(&d.path().join("ud"));
    let files = ud["write_files"].as_array().unwrap();
    let token = "K10-cluster-token-not-real-0123456789";
    // The token is in exactly one place: its own 0600 file.
    let holders: Vec<&serde_json::Value> = files
        .iter()
        .filter(|f| f["content"].as_str().unwrap_or_default().contains(token))
        .collect();
    assert_eq!(holders.len(), 1, "{body}");
    assert_eq!(holders[0]["path"], "/etc/rancher/k3s/cluster-token");
    assert_eq!(holders[0]["permissions"], "0600");
    assert_eq!(
        body.matches(token).count(),
        1,
        "the token appears elsewhere"
    );
    let cfg = files
        .iter()
        .find(|f| f["path"] == "/etc/rancher/k3s/config.yaml.d/50-launch.yaml")
        .expect("the launch drop-in");
    assert_eq!(cfg["permissions"], "0600");
    // As k3s reads it (YAML).
    let cfg_file = d.path().join("50-launch.yaml");
    std::fs::write(&cfg_file, cfg["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        python_yaml(&cfg_file),
        serde_json::json!({
            "server": "https://10.0.0.10:6443",
            "token-file": "/etc/rancher/k3s/cluster-token",
            "node-label+": ["topology.kubernetes.io/zone=rack1"],
            "node-taint+": ["gpu=true:NoSchedule"],
        })
    );
    let runcmd = serde_json::to_string(&ud["runcmd"]).unwrap();
    assert!(runcmd.contains("k3s-agent.service"), "{runcmd}");
    assert!(!runcmd.contains(token));

    // A server without --k3s-server starts a new cluster.
    let (o, d) = k3s_userdata("k3s-server", &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let ud = python_yaml(&d.path().join("ud"));
    let cfg = ud["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/rancher/k3s/config.yaml.d/50-launch.yaml")
        .expect("the launch drop-in");
    let cfg_file = d.path().join("50-launch.yaml");
    std::fs::write(&cfg_file, cfg["content"].as_str().unwrap()).unwrap();
    let cfg = python_yaml(&cfg_file);
    assert_eq!(cfg["cluster-init"], true, "{cfg}");
    assert!(cfg.get("server").is_none(), "{cfg}");
    assert!(serde_json::to_string(&ud["runcmd"])
        .unwrap()
        .contains("\"k3s.service\""));
}

#[test]
fn bad_k3s_launch_parameters_are_exit_2_and_write_nothing() {
    for (image, extra, expect) in [
        ("k3s-node", vec![], "--k3s-server"),
        (
            "k3s-node",
            vec!["--k3s-server", "http://10.0.0.10:6443"],
            "https://HOST:PORT",
        ),
        (
            "k3s-node",
            vec!["--k3s-server", "https://s:6443", "--k3s-label", "nolabel"],
            "KEY=VALUE",
        ),
        (
            "k3s-node",
            vec![
                "--k3s-server",
                "https://s:6443",
                "--k3s-taint",
                "gpu=true:Sometimes",
            ],
            "NoSchedule",
        ),
        ("kolla-node", vec![], "no k3s"),
    ] {
        let (o, d) = k3s_userdata(image, &extra);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{image} {extra:?}: {stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
        assert!(!d.path().join("ud").exists());
    }
    // A k3s image needs the token.
    let d = inputs();
    let o = imgbuild(
        &repo(),
        &[
            "userdata",
            "k3s-node",
            "--user",
            "ops",
            "--ssh-key",
            d.path().join("key.pub").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--k3s-token-file"), "{}", text(&o).1);
}

#[test]
fn the_k3s_images_drop_in_appends_labels_and_taints() {
    let out = tempfile::tempdir().unwrap();
    let o = imgbuild(
        &repo(),
        &[
            "render",
            "k3s-server",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let seed = std::fs::read_to_string(out.path().join("amd64/seed/user-data")).unwrap()
        + &std::fs::read_dir(out.path().join("amd64/seed/layers"))
            .map(|d| {
                d.map(|e| std::fs::read_to_string(e.unwrap().path().join("user-data")).unwrap())
                    .collect::<String>()
            })
            .unwrap_or_default();
    assert!(
        seed.contains("node-taint+:"),
        "the image's taints replace the user's"
    );
    assert!(!seed.contains("node-taint:"), "a replacing node-taint key");
}
