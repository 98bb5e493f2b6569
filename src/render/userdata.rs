//! Launch-time user-data for one user's VM of an image (`openstack server create
//! --user-data`): the user with their SSH key, the desktop password (VNC and RDP), the
//! /shared NFS export and the compose profiles the workspace runs. Pure: parameters in,
//! cloud-config out (validated by the caller with the same validators as the build seed).

use super::cloud_init::{secrets_env_path, to_cloud_config};
use crate::definition::Resolved;
use base64::Engine as _;
use des::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use serde_json::{json, Value};

#[derive(Clone, Debug, Default)]
pub struct LaunchParams {
    pub user: String,
    pub ssh_keys: Vec<String>,
    pub sudo: bool,
    /// The desktop password (VNC and RDP): hashed for the account, obfuscated the way VNC
    /// stores it for TigerVNC; never in the user-data as given.
    pub desktop_password: Option<String>,
    /// `SERVER:/PATH` of the NFS export for the image's shared mount.
    pub shared: Option<String>,
    /// Compose profiles to run instead of the image's default.
    pub profiles: Option<Vec<String>>,
    /// The host name users reach the stack's services at, instead of the image's.
    pub stack_host: Option<String>,
    /// How a K3s image joins its cluster.
    pub k3s: Option<K3sLaunch>,
    /// Kolla hosts: the disk that becomes the `cinder-volumes` volume group.
    pub cinder_volumes: Option<String>,
}

/// A K3s node's launch: the server it joins (none for a cluster's first server), the
/// cluster's token (read from a file by the caller) and extra node labels and taints.
#[derive(Clone, Debug, Default)]
pub struct K3sLaunch {
    pub server: Option<String>,
    pub token: String,
    pub labels: Vec<String>,
    pub taints: Vec<String>,
}

/// Bad launch parameters (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum UserdataError {
    #[error(
        "--user `{0}`: a user name is 1-32 of a-z, 0-9, `_`, `-`, starting with a letter or `_`"
    )]
    BadUser(String),
    #[error("--user `{0}` is a system account")]
    ReservedUser(String),
    #[error("--ssh-key: line {line} is not an OpenSSH public key (ssh-ed25519, ssh-rsa, ecdsa-sha2-*, sk-*)")]
    BadKey { line: usize },
    #[error("--ssh-key: no public key in the file")]
    NoKey,
    #[error("{0} has a desktop: give its password (VNC and RDP) with --desktop-password-file")]
    NeedVncPassword(String),
    #[error("--desktop-password-file: {0}")]
    BadVncPassword(String),
    #[error("{0} has no desktop: --desktop-password-file does not apply")]
    NoDesktop(String),
    #[error("{0} has no shared mount (features.shared_mount): --shared does not apply")]
    NoSharedMount(String),
    #[error("--shared `{0}`: expected SERVER:/PATH")]
    BadShared(String),
    #[error("{0} has no k3s (features.k3s): --k3s-* options do not apply")]
    NoK3s(String),
    #[error("{0} is no Kolla host (features.kolla_host): --cinder-volumes does not apply")]
    NoKollaHost(String),
    #[error("--cinder-volumes `{0}`: expected a device path under /dev (e.g. /dev/vdb, /dev/disk/by-id/virtio-cinder)")]
    BadCinderDevice(String),
    #[error("{0} is a K3s {1}: give the cluster token with --k3s-token-file{2}")]
    NeedK3s(String, &'static str, &'static str),
    #[error("--k3s-server `{0}`: expected https://HOST:PORT (the API server, e.g. https://10.0.0.10:6443)")]
    BadK3sServer(String),
    #[error("--k3s-token-file: {0}")]
    BadK3sToken(String),
    #[error("--k3s-label `{0}`: expected KEY=VALUE")]
    BadK3sLabel(String),
    #[error(
        "--k3s-taint `{0}`: expected KEY=VALUE:EFFECT (NoSchedule, PreferNoSchedule or NoExecute)"
    )]
    BadK3sTaint(String),
    #[error("--stack-host `{0}` is not a host name or IP address")]
    StackHost(String),
    #[error("{0} has no compose stack: --profiles and --stack-host do not apply")]
    NoStack(String),
    #[error("--profiles: `{profile}` is not a profile of the stack ({known}){help}")]
    UnknownProfile {
        profile: String,
        known: String,
        help: String,
    },
}

const RESERVED: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "nobody",
    "systemd-network",
    "messagebus",
    "sshd",
    "docker",
    "ubuntu",
    "debian",
];

fn valid_user(u: &str) -> bool {
    let mut chars = u.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && u.len() <= 32
        && u.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The public keys of an authorized_keys-style text (comments and blank lines skipped).
pub fn parse_keys(text: &str) -> Result<Vec<String>, UserdataError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut parts = l.split_whitespace();
        let kind = parts.next().unwrap_or_default();
        let blob = parts.next().unwrap_or_default();
        let kind_ok = kind.starts_with("ssh-")
            || kind.starts_with("ecdsa-sha2-")
            || kind.starts_with("sk-ssh-")
            || kind.starts_with("sk-ecdsa-");
        let blob_ok = blob.len() >= 16
            && blob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        if !kind_ok || !blob_ok || l.contains("PRIVATE KEY") {
            return Err(UserdataError::BadKey { line: i + 1 });
        }
        keys.push(l.to_string());
    }
    if keys.is_empty() {
        return Err(UserdataError::NoKey);
    }
    Ok(keys)
}

/// A desktop password's length: VNC's own minimum, and a bound far above what anyone types.
pub const MIN_PASSWORD: usize = 6;
pub const MAX_PASSWORD: usize = 72;

/// The SHA-512 crypt hash (`$6$SALT$HASH`, glibc's crypt(3) and shadow(5) format) of `pw`
/// with a fresh 16-character salt.
pub fn hash_password(pw: &str) -> String {
    const SALT: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let salt: String = crate::random_bytes(16)
        .iter()
        .map(|b| SALT[usize::from(b % 64)] as char)
        .collect();
    let params =
        sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT).expect("the default rounds");
    let hash = sha_crypt::sha512_crypt_b64(pw.as_bytes(), salt.as_bytes(), &params)
        .expect("a 16-character salt is valid");
    format!("$6${salt}${hash}")
}

/// A password as TigerVNC's passwd file holds it (what `vncpasswd -f` writes): its first 8
/// bytes, zero-padded, DES-encrypted with VNC's fixed key (d3des.c's `fixedkey`, bit-mirrored
/// like every VNC DES key). An obfuscation, not a hash: VNC needs the password back to check a
/// login.
pub fn obfuscated_password(password: &str) -> [u8; 8] {
    const FIXED: [u8; 8] = [23, 82, 107, 6, 35, 78, 88, 7];
    let key: Vec<u8> = FIXED.iter().map(|b| b.reverse_bits()).collect();
    let cipher = des::Des::new_from_slice(&key).expect("an 8-byte DES key");
    let mut block = [0u8; 8];
    for (o, b) in block.iter_mut().zip(password.as_bytes()) {
        *o = *b;
    }
    cipher.encrypt_block(GenericArray::from_mut_slice(&mut block));
    block
}

pub fn render(r: &Resolved, p: &LaunchParams) -> Result<String, UserdataError> {
    Ok(to_cloud_config(
        &document(r, p)?,
        &format!(
            "Launch-time user-data for a {} VM of user {} (imgbuild userdata).",
            r.name, p.user
        ),
    ))
}

/// The launch-time cloud-config as data (the smoke boot of a desktop image merges it into its
/// seed, so the smoke proves exactly what a launch gets).
pub fn document(r: &Resolved, p: &LaunchParams) -> Result<Value, UserdataError> {
    let d = &r.definition;
    if !valid_user(&p.user) {
        return Err(UserdataError::BadUser(p.user.clone()));
    }
    if RESERVED.contains(&p.user.as_str()) {
        return Err(UserdataError::ReservedUser(p.user.clone()));
    }
    if p.ssh_keys.is_empty() {
        return Err(UserdataError::NoKey);
    }
    let home = format!("/home/{}", p.user);
    let groups = crate::features::launch_groups(d);
    let mut user = json!({
        "name": p.user,
        "gecos": format!("{} (imgbuild workspace user)", p.user),
        "shell": "/bin/bash",
        "lock_passwd": true,
        "ssh_authorized_keys": p.ssh_keys,
    });
    if !groups.is_empty() {
        user["groups"] = json!(groups.join(", "));
    }
    if p.sudo {
        user["sudo"] = json!("ALL=(ALL) NOPASSWD:ALL");
    }
    let mut doc = serde_json::Map::new();
    let mut files: Vec<Value> = Vec::new();
    let mut runcmd: Vec<Value> = Vec::new();

    match (&d.features.desktop, &p.desktop_password) {
        (Some(desk), Some(pw)) => {
            let n = pw.chars().count();
            if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) || pw.chars().any(|c| c.is_control()) {
                return Err(UserdataError::BadVncPassword(format!(
                    "a desktop password is {MIN_PASSWORD} to {MAX_PASSWORD} printable characters \
                     (VNC uses its first 8, RDP all of it)"
                )));
            }
            // The account's password, for RDP (xrdp logs in through PAM): a SHA-512 crypt hash,
            // the kind cloud-init's `passwd` takes, so the password itself is not in here.
            user["lock_passwd"] = json!(false);
            user["passwd"] = json!(hash_password(pw));
            // VNC's: the form TigerVNC's passwd file holds (what `vncpasswd -f` writes), which
            // is what VNC needs to check a login; made here, so the password is not in here.
            let b64 = base64::engine::general_purpose::STANDARD;
            files.push(json!({
                "path": "/run/imgbuild/vnc-passwd",
                "encoding": "b64",
                "content": b64.encode(obfuscated_password(pw)),
                "permissions": "0600",
            }));
            files.push(json!({
                "path": "/etc/tigervnc/vncserver.users",
                "content": format!("# Written at launch by imgbuild userdata.\n:{}={}\n", desk.vnc_display, p.user),
                "permissions": "0644",
            }));
            let u = &p.user;
            runcmd.push(json!(["sh", "-c", format!(
                "set -e; umask 077; install -d -o {u} -g {u} -m 0700 {home}/.config {home}/.config/tigervnc {home}/.vnc; \
                 install -o {u} -g {u} -m 0600 /run/imgbuild/vnc-passwd {home}/.config/tigervnc/passwd; \
                 install -o {u} -g {u} -m 0600 /run/imgbuild/vnc-passwd {home}/.vnc/passwd; \
                 rm -f /run/imgbuild/vnc-passwd"
            )]));
            runcmd.push(json!([
                "systemctl",
                "enable",
                "--now",
                format!("tigervncserver@:{}.service", desk.vnc_display)
            ]));
        }
        (Some(_), None) => return Err(UserdataError::NeedVncPassword(r.name.clone())),
        (None, Some(_)) => return Err(UserdataError::NoDesktop(r.name.clone())),
        (None, None) => {}
    }
    doc.insert("users".into(), json!([user]));

    if let Some(shared) = &p.shared {
        let sm = d
            .features
            .shared_mount
            .as_ref()
            .ok_or_else(|| UserdataError::NoSharedMount(r.name.clone()))?;
        let ok = shared
            .split_once(":/")
            .is_some_and(|(server, _)| !server.is_empty() && !server.contains(char::is_whitespace))
            && !shared.contains(char::is_whitespace);
        if !ok {
            return Err(UserdataError::BadShared(shared.clone()));
        }
        doc.insert(
            "mounts".into(),
            json!([[
                shared,
                sm.path,
                "nfs",
                "defaults,_netdev,nofail,x-systemd.automount,x-systemd.mount-timeout=30",
                "0",
                "0"
            ]]),
        );
    }

    if p.profiles.is_some() || p.stack_host.is_some() {
        files.push(launch_env_file(
            r,
            p.profiles.as_deref(),
            p.stack_host.as_deref(),
        )?);
    }
    // The launch user's own copy of the stack's first-login passwords (made once the
    // instance's secrets exist; the secrets unit is started here in case it has not run yet).
    if let Some(stack) = super::compose::render(r).ok().flatten() {
        let logins = stack
            .start
            .iter()
            .any(|e| matches!(e.login, super::compose::Login::Secret { .. }));
        if logins && stack.secrets_spec.is_some() {
            runcmd.push(json!(["sh", "-c", format!(
                "systemctl start {unit} && {lib}/start-page credentials {services} {secrets} {user}",
                unit = super::cloud_init::secrets_unit(&stack.name),
                lib = super::cloud_init::LIB,
                services = super::cloud_init::start_services_path(&stack.name),
                secrets = secrets_env_path(&stack.name),
                user = p.user,
            )]));
        }
    }

    match (&d.features.k3s, &p.k3s) {
        (Some(k), Some(l)) => k3s_launch(k, l, &mut files, &mut runcmd)?,
        (Some(k), None) => {
            let (role, also) = match k.role {
                crate::features::K3sRole::Agent => ("agent", " and the server with --k3s-server"),
                crate::features::K3sRole::Server => ("server", ""),
            };
            return Err(UserdataError::NeedK3s(r.name.clone(), role, also));
        }
        (None, Some(_)) => return Err(UserdataError::NoK3s(r.name.clone())),
        (None, None) => {}
    }

    if let Some(dev) = &p.cinder_volumes {
        if d.features.kolla_host.is_none() {
            return Err(UserdataError::NoKollaHost(r.name.clone()));
        }
        let ok = dev.starts_with("/dev/")
            && dev.len() > 5
            && dev
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-_.:".contains(c));
        if !ok {
            return Err(UserdataError::BadCinderDevice(dev.clone()));
        }
        // First boot only (runcmd); the script is idempotent and refuses a disk with data.
        runcmd.push(json!([
            crate::features::kolla_host::CINDER_VOLUMES_BIN,
            dev
        ]));
    }

    if !files.is_empty() {
        doc.insert("write_files".into(), json!(files));
    }
    if !runcmd.is_empty() {
        doc.insert("runcmd".into(), json!(runcmd));
    }
    Ok(Value::Object(doc))
}

/// The K3s node's launch configuration: a k3s config drop-in (k3s reads
/// /etc/rancher/k3s/config.yaml.d/*.yaml in order; `key+` appends to what the image's
/// drop-in set, docs.k3s.io "Configuration File"), the token in a 0600 file of its own
/// (`token-file`), and the service enabled and started. The token is in no other file and on
/// no command line.
fn k3s_launch(
    k: &crate::features::K3s,
    l: &K3sLaunch,
    files: &mut Vec<Value>,
    runcmd: &mut Vec<Value>,
) -> Result<(), UserdataError> {
    use crate::features::K3sRole;
    if let Some(s) = &l.server {
        let ok = s.strip_prefix("https://").is_some_and(|h| {
            let host = h.trim_end_matches('/');
            !host.is_empty() && !host.contains('/') && !host.contains(char::is_whitespace)
        });
        if !ok {
            return Err(UserdataError::BadK3sServer(s.clone()));
        }
    } else if k.role == K3sRole::Agent {
        return Err(UserdataError::NeedK3s(
            "this image".into(),
            "agent",
            " and the server with --k3s-server",
        ));
    }
    let token = l.token.trim();
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UserdataError::BadK3sToken(
            "the first line must be the cluster token: at least 16 characters, no spaces".into(),
        ));
    }
    for label in &l.labels {
        let ok = label.split_once('=').is_some_and(|(k, v)| {
            !k.is_empty() && !k.contains(char::is_whitespace) && !v.contains(char::is_whitespace)
        });
        if !ok {
            return Err(UserdataError::BadK3sLabel(label.clone()));
        }
    }
    for taint in &l.taints {
        let ok = taint.rsplit_once(':').is_some_and(|(kv, effect)| {
            matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
                && kv.split('=').next().is_some_and(|k| !k.is_empty())
                && !kv.contains(char::is_whitespace)
        });
        if !ok {
            return Err(UserdataError::BadK3sTaint(taint.clone()));
        }
    }
    let mut cfg = serde_json::Map::new();
    if let Some(s) = &l.server {
        cfg.insert("server".into(), json!(s));
    } else {
        // A cluster's first server: embedded etcd, so that more servers can join it.
        cfg.insert("cluster-init".into(), json!(true));
    }
    cfg.insert("token-file".into(), json!(K3S_TOKEN_FILE));
    if !l.labels.is_empty() {
        cfg.insert("node-label+".into(), json!(l.labels));
    }
    if !l.taints.is_empty() {
        cfg.insert("node-taint+".into(), json!(l.taints));
    }
    files.push(json!({
        "path": K3S_TOKEN_FILE,
        "content": format!("{token}\n"),
        "permissions": "0600",
    }));
    files.push(json!({
        "path": "/etc/rancher/k3s/config.yaml.d/50-launch.yaml",
        "content": format!(
            "# Written at launch by imgbuild userdata.\n{}",
            crate::yaml::to_string(&Value::Object(cfg))
        ),
        "permissions": "0600",
    }));
    let unit = match k.role {
        K3sRole::Server => "k3s.service",
        K3sRole::Agent => "k3s-agent.service",
    };
    runcmd.push(json!(["systemctl", "enable", "--now", "--no-block", unit]));
    Ok(())
}

/// Where the launch puts the cluster token (k3s's `token-file`).
pub const K3S_TOKEN_FILE: &str = "/etc/rancher/k3s/cluster-token";

/// The launch's choices for the stack (`launch.env` beside its secrets, read by the stack's
/// unit after the image's settings.env): compose profiles, each checked against the stack's,
/// and the host name its services are reached at.
pub fn launch_env_file(
    r: &Resolved,
    profiles: Option<&[String]>,
    host: Option<&str>,
) -> Result<Value, UserdataError> {
    let stack = super::compose::render(r)
        .ok()
        .flatten()
        .ok_or_else(|| UserdataError::NoStack(r.name.clone()))?;
    let mut content = String::from("# Chosen at launch (imgbuild userdata).\n");
    if let Some(profiles) = profiles {
        for pr in profiles {
            if !stack.profiles.contains(pr) {
                return Err(UserdataError::UnknownProfile {
                    profile: pr.clone(),
                    known: stack.profiles.join(", "),
                    help: crate::definition::diagnostic::did_you_mean(
                        pr,
                        stack.profiles.iter().map(String::as_str),
                    )
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default(),
                });
            }
        }
        content.push_str(&format!("COMPOSE_PROFILES={}\n", profiles.join(",")));
    }
    if let Some(h) = host {
        if !crate::features::compose_stack::valid_host(h) {
            return Err(UserdataError::StackHost(h.into()));
        }
        content.push_str(&format!("STACK_HOST={h}\n"));
    }
    let dir = secrets_env_path(&stack.name);
    let dir = dir
        .rsplit_once('/')
        .map(|(d, _)| d)
        .unwrap_or("/var/lib/imgbuild");
    Ok(json!({
        "path": format!("{dir}/launch.env"),
        "content": content,
        "permissions": "0644",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGp0c3Rsb25nZW5vdWdoYmxvYg me@host";
        assert_eq!(parse_keys(&format!("# mine\n\n{k}\n")).unwrap(), vec![k]);
        assert!(matches!(
            parse_keys("hello world"),
            Err(UserdataError::BadKey { line: 1 })
        ));
        assert!(matches!(
            parse_keys("-----BEGIN OPENSSH PRIVATE KEY-----\n"),
            Err(UserdataError::BadKey { .. })
        ));
        assert!(matches!(
            parse_keys("# nothing\n"),
            Err(UserdataError::NoKey)
        ));
    }

    #[test]
    fn user_names() {
        for ok in ["alice", "_svc", "a-b_1"] {
            assert!(valid_user(ok), "{ok}");
        }
        for bad in ["", "Alice", "1a", "a b", "a;rm", &"a".repeat(33)] {
            assert!(!valid_user(bad), "{bad}");
        }
    }
}
