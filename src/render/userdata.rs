//! Launch-time user-data for one user's VM of an image (`openstack server create
//! --user-data`): the user with their SSH key, the VNC password of the desktop session, the
//! /shared NFS export and the compose profiles the workspace runs. Pure: parameters in,
//! cloud-config out (validated by the caller with the same validators as the build seed).

use super::cloud_init::{secrets_env_path, to_cloud_config};
use crate::definition::Resolved;
use serde_json::{json, Value};

#[derive(Clone, Debug, Default)]
pub struct LaunchParams {
    pub user: String,
    pub ssh_keys: Vec<String>,
    pub sudo: bool,
    pub vnc_password: Option<String>,
    /// `SERVER:/PATH` of the NFS export for the image's shared mount.
    pub shared: Option<String>,
    /// Compose profiles to run instead of the image's default.
    pub profiles: Option<Vec<String>>,
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
    #[error("{0} has a desktop: give its VNC password with --vnc-password-file")]
    NeedVncPassword(String),
    #[error("--vnc-password-file: {0}")]
    BadVncPassword(String),
    #[error("{0} has no desktop: --vnc-password-file does not apply")]
    NoDesktop(String),
    #[error("{0} has no shared mount (features.shared_mount): --shared does not apply")]
    NoSharedMount(String),
    #[error("--shared `{0}`: expected SERVER:/PATH")]
    BadShared(String),
    #[error("{0} has no compose stack: --profiles does not apply")]
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
    doc.insert("users".into(), json!([user]));
    let mut files: Vec<Value> = Vec::new();
    let mut runcmd: Vec<Value> = Vec::new();

    match (&d.features.desktop, &p.vnc_password) {
        (Some(desk), Some(pw)) => {
            if !(6..=8).contains(&pw.chars().count()) || pw.chars().any(|c| c.is_control()) {
                return Err(UserdataError::BadVncPassword(
                    "VNC passwords are 6 to 8 printable characters (longer ones are cut by VNC)"
                        .into(),
                ));
            }
            // The password travels in this user-data only (it is the user's own, given at
            // launch); in the guest it lives in /run until vncpasswd has obfuscated it.
            files.push(json!({"path": "/run/imgbuild/vnc-password", "content": format!("{pw}\n"), "permissions": "0600"}));
            files.push(json!({
                "path": "/etc/tigervnc/vncserver.users",
                "content": format!("# Written at launch by imgbuild userdata.\n:{}={}\n", desk.vnc_display, p.user),
                "permissions": "0644",
            }));
            let u = &p.user;
            runcmd.push(json!(["sh", "-c", format!(
                "set -e; umask 077; install -d -o {u} -g {u} -m 0700 {home}/.config {home}/.config/tigervnc {home}/.vnc; \
                 head -n1 /run/imgbuild/vnc-password | tr -d '\\n' | vncpasswd -f > {home}/.config/tigervnc/passwd; \
                 cp {home}/.config/tigervnc/passwd {home}/.vnc/passwd; \
                 chown {u}:{u} {home}/.config/tigervnc/passwd {home}/.vnc/passwd; \
                 rm -f /run/imgbuild/vnc-password"
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

    if let Some(profiles) = &p.profiles {
        let stack = super::compose::render(r)
            .ok()
            .flatten()
            .ok_or_else(|| UserdataError::NoStack(r.name.clone()))?;
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
        let dir = secrets_env_path(&stack.name);
        let dir = dir
            .rsplit_once('/')
            .map(|(d, _)| d)
            .unwrap_or("/var/lib/imgbuild");
        files.push(json!({
            "path": format!("{dir}/launch.env"),
            "content": format!("# Chosen at launch (imgbuild userdata --profiles).\nCOMPOSE_PROFILES={}\n", profiles.join(",")),
            "permissions": "0644",
        }));
    }

    if !files.is_empty() {
        doc.insert("write_files".into(), json!(files));
    }
    if !runcmd.is_empty() {
        doc.insert("runcmd".into(), json!(runcmd));
    }
    Ok(Value::Object(doc))
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
