//! Semantic checks of a resolved definition: what serde's types cannot say (a base for every
//! arch, a checksum for every cloud image, no secrets, consistent features). Every finding
//! names the file and line that set the field.

use super::diagnostic::{DefinitionError, Diagnostic, Diagnostics};
use super::load::Resolved;
use super::model::*;
use std::collections::HashSet;

/// All semantic problems of `r`, or Ok.
pub fn check(r: &Resolved) -> Result<(), DefinitionError> {
    let mut out = Vec::new();
    let d = &r.definition;
    let mut err = |path: &str, msg: String| out.push(r.diag(path, msg));

    if d.is_abstract {
        // Templates are checked as part of the images that extend them.
        return Ok(());
    }
    if d.description.trim().is_empty() {
        err(
            "description",
            "missing: say in a line what the image is for".into(),
        );
    }
    if !matches!(d.os.distro.as_str(), "ubuntu" | "debian") {
        err(
            "os.distro",
            format!("`{}` is not supported (ubuntu or debian)", d.os.distro),
        );
    }
    if d.os.version.is_empty() {
        err("os.version", "missing (e.g. \"24.04\" or \"12\")".into());
    }
    if d.os.codename.is_empty() {
        err("os.codename", "missing (e.g. noble or bookworm)".into());
    }
    if d.arch.is_empty() {
        err("arch", "missing: list at least one of amd64, arm64".into());
    }
    let mut seen = HashSet::new();
    for (i, a) in d.arch.iter().enumerate() {
        if !seen.insert(a) {
            err(&format!("arch[{i}]"), format!("`{a}` is listed twice"));
        }
        check_base(r, *a, &mut err);
    }
    if parse_size(&d.disk.size).is_none() {
        err(
            "disk.size",
            format!("`{}` is not a size like 20G", d.disk.size),
        );
    }
    if d.build.cpus == 0 {
        err("build.cpus", "must be at least 1".into());
    }
    if d.build.memory < 512 {
        err(
            "build.memory",
            format!("{} MiB is too little (at least 512)", d.build.memory),
        );
    }
    if d.build.timeout == 0 {
        err("build.timeout", "must be at least 1 minute".into());
    }
    if d.smoke.timeout == 0 {
        err("smoke.timeout", "must be at least 1 minute".into());
    }
    check_features(r, &mut err);
    check_files(r, &mut err);
    check_scripts(r, &mut err);
    check_users(r, &mut err);
    check_checks(r, &mut err);
    check_publish(r, &mut err);
    check_apt(r, &mut err);

    // No secrets anywhere in the definition.
    let value = serde_json::to_value(d).unwrap_or_default();
    scan_secrets(&value, "", &mut |path, why| err(path, why));

    if out.is_empty() {
        Ok(())
    } else {
        Err(DefinitionError::Invalid(Diagnostics(dedup(out))))
    }
}

fn dedup(v: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = HashSet::new();
    v.into_iter()
        .filter(|d| seen.insert(d.to_string()))
        .collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_base(r: &Resolved, arch: Arch, err: &mut impl FnMut(&str, String)) {
    let path = format!("base.{arch}");
    let Some(spec) = r.definition.base.get(&arch) else {
        err(
            &path,
            format!("missing: arch lists {arch} but no base is given for it"),
        );
        return;
    };
    match spec.kind() {
        None => err(&path, "give exactly one of cloud_image or bootstrap".into()),
        Some(Base::CloudImage(c)) => {
            let p = format!("{path}.cloud_image");
            if c.url.is_empty() {
                err(&format!("{p}.url"), "missing".into());
            } else if !["http://", "https://", "file://"]
                .iter()
                .any(|s| c.url.starts_with(s))
            {
                err(
                    &format!("{p}.url"),
                    format!("`{}` is not an http(s):// or file:// URL", c.url),
                );
            }
            match c.checksum.split_once(':') {
                _ if c.checksum.is_empty() => err(
                    &format!("{p}.checksum"),
                    "missing: a cloud image needs `sha256:HEX` or `sha512:HEX` to be verified"
                        .into(),
                ),
                Some(("sha256", h)) if is_hex(h, 64) => {}
                Some(("sha512", h)) if is_hex(h, 128) => {}
                _ => err(
                    &format!("{p}.checksum"),
                    format!(
                        "`{}` is not `sha256:<64 hex>` or `sha512:<128 hex>`",
                        c.checksum
                    ),
                ),
            }
        }
        Some(Base::Bootstrap(b)) => {
            let p = format!("{path}.bootstrap");
            if b.suite.is_empty() {
                err(&format!("{p}.suite"), "missing (e.g. bookworm)".into());
            }
            if !b.mirror.starts_with("http://")
                && !b.mirror.starts_with("https://")
                && !b.mirror.starts_with("file://")
            {
                err(
                    &format!("{p}.mirror"),
                    format!("`{}` is not a URL", b.mirror),
                );
            }
            if b.size_gib < 2 {
                err(&format!("{p}.size_gib"), "at least 2".into());
            }
            let name_ok = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
            };
            for (suite, pkgs) in &b.from_suite {
                let q = format!("{p}.from_suite.{suite}");
                if !name_ok(suite) || *suite == b.suite {
                    err(
                        &q,
                        format!(
                            "`{suite}` is not another suite of the mirror than `{}`",
                            b.suite
                        ),
                    );
                }
                if pkgs.is_empty() {
                    err(&q, "names no package".into());
                }
                for (i, pkg) in pkgs.iter().enumerate() {
                    if !name_ok(pkg) {
                        err(
                            &format!("{q}[{i}]"),
                            format!("`{pkg}` is not a package name"),
                        );
                    }
                }
            }
        }
    }
}

fn check_features(r: &Resolved, err: &mut impl FnMut(&str, String)) {
    crate::features::validate(r, err);
}

fn valid_mode(m: &str) -> bool {
    (3..=4).contains(&m.len()) && m.bytes().all(|b| (b'0'..=b'7').contains(&b))
}

fn check_files(r: &Resolved, err: &mut impl FnMut(&str, String)) {
    let mut seen = HashSet::new();
    for (i, f) in r.definition.files.iter().enumerate() {
        let p = format!("files[{i}]");
        if !f.path.starts_with('/') {
            err(
                &format!("{p}.path"),
                format!("`{}` must be an absolute path", f.path),
            );
        }
        if !seen.insert(&f.path) {
            err(&format!("{p}.path"), format!("`{}` is given twice", f.path));
        }
        match (&f.content, &f.source) {
            (Some(_), Some(_)) => err(&p, "give either content or source, not both".into()),
            (None, None) => err(&p, "give content or source".into()),
            (None, Some(src)) => {
                let full = r.relative_path(&format!("{p}.source"), src);
                if !full.is_file() {
                    err(
                        &format!("{p}.source"),
                        format!("{} does not exist", full.display()),
                    );
                }
            }
            _ => {}
        }
        if let Some(m) = &f.permissions {
            if !valid_mode(m) {
                err(
                    &format!("{p}.permissions"),
                    format!("`{m}` is not an octal mode like 0644"),
                );
            }
        }
        if let Some(o) = &f.owner {
            if !o.split(':').all(valid_unix_name) || o.split(':').count() > 2 {
                err(
                    &format!("{p}.owner"),
                    format!("`{o}` is not user or user:group"),
                );
            }
        }
    }
}

fn valid_unix_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
}

fn check_scripts(r: &Resolved, err: &mut impl FnMut(&str, String)) {
    let mut seen = HashSet::new();
    for (i, s) in r.definition.scripts.iter().enumerate() {
        let p = format!("scripts[{i}]");
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            err(
                &format!("{p}.name"),
                format!("`{}` must be letters, digits, - _ .", s.name),
            );
        }
        if !seen.insert(&s.name) {
            err(&format!("{p}.name"), format!("`{}` is used twice", s.name));
        }
        if s.run.trim().is_empty() {
            err(&format!("{p}.run"), "is empty".into());
        }
    }
}

fn check_users(r: &Resolved, err: &mut impl FnMut(&str, String)) {
    for (i, u) in r.definition.users.iter().enumerate() {
        let p = format!("users[{i}]");
        if !valid_unix_name(&u.name) {
            err(
                &format!("{p}.name"),
                format!("`{}` is not a valid user name", u.name),
            );
        }
        for (j, k) in u.ssh_authorized_keys.iter().enumerate() {
            let ok = [
                "ssh-ed25519 ",
                "ssh-rsa ",
                "ecdsa-sha2-",
                "sk-ssh-ed25519",
                "sk-ecdsa-",
            ]
            .iter()
            .any(|pfx| k.starts_with(pfx));
            if !ok {
                err(
                    &format!("{p}.ssh_authorized_keys[{j}]"),
                    "not an OpenSSH public key".into(),
                );
            }
        }
    }
}

fn check_checks(r: &Resolved, err: &mut impl FnMut(&str, String)) {
    for (i, l) in r.definition.smoke.listen.iter().enumerate() {
        if l.port == 0 {
            err(
                &format!("smoke.listen[{i}].port"),
                "must be 1..65535".into(),
            );
        }
        if let Some(p) = &l.process {
            // The kernel keeps 15 bytes of a process name (comm); a longer one never matches.
            if p.is_empty() || p.len() > 15 || p.contains('/') {
                err(
                    &format!("smoke.listen[{i}].process"),
                    format!("`{p}` is not a process name (comm: 1-15 bytes, no `/`)"),
                );
            }
        }
    }
    let mut seen = HashSet::new();
    for (i, c) in r.definition.smoke.checks.iter().enumerate() {
        let p = format!("smoke.checks[{i}]");
        if c.name.is_empty() {
            err(&format!("{p}.name"), "missing".into());
        } else if !seen.insert(&c.name) {
            err(&format!("{p}.name"), format!("`{}` is used twice", c.name));
        }
        if c.kind().is_none() {
            err(&p, "give exactly one of command, unit, port, file".into());
        }
        if c.command.is_none() && (c.expect_exit.is_some() || c.expect_output.is_some()) {
            err(&p, "expect_exit and expect_output go with command".into());
        }
        if c.port.is_none() && c.address.is_some() {
            err(&format!("{p}.address"), "goes with port".into());
        }
        if let Some(m) = &c.mode {
            if c.file.is_none() {
                err(&format!("{p}.mode"), "goes with file".into());
            } else if !valid_mode(m) {
                err(
                    &format!("{p}.mode"),
                    format!("`{m}` is not an octal mode like 0600"),
                );
            }
        }
    }
}

fn check_publish(r: &Resolved, err: &mut impl FnMut(&str, String)) {
    let p = &r.definition.publish;
    let mut rest = p.name.as_str();
    while let Some(i) = rest.find('{') {
        let Some(j) = rest[i..].find('}') else {
            err("publish.name", "unclosed `{`".into());
            break;
        };
        let ph = &rest[i + 1..i + j];
        if !matches!(ph, "image" | "version" | "arch") {
            err(
                "publish.name",
                format!("unknown placeholder `{{{ph}}}` (image, version, arch)"),
            );
        }
        rest = &rest[i + j + 1..];
    }
    if !p.name.contains("{version}") {
        err(
            "publish.name",
            "must contain {version}, or versions overwrite each other".into(),
        );
    }
    for (k, _) in &p.properties {
        if k.starts_with("imgbuild_") || k.starts_with("owner_specified.") || k == "os_hidden" {
            err(
                &format!("publish.properties.{k}"),
                "is set by imgbuild itself".into(),
            );
        }
    }
    if let (Some(keep), Some(del)) = (p.keep, p.delete_beyond) {
        if del < keep {
            err(
                "publish.delete_beyond",
                format!("{del} is below keep ({keep})"),
            );
        }
    }
}

fn check_apt(r: &Resolved, err: &mut impl FnMut(&str, String)) {
    let apt = &r.definition.apt;
    for (name, s) in &apt.sources {
        let p = format!("apt.sources.{name}");
        if s.source.trim().is_empty() {
            err(&format!("{p}.source"), "missing".into());
        }
        if s.keyid.is_some() || s.keyserver.is_some() {
            err(
                &format!("{p}.keyid"),
                "builds never ask a keyserver: embed the armoured key as `key` with its `fingerprint`"
                    .into(),
            );
        }
        match (&s.key, &s.fingerprint) {
            (Some(k), Some(f)) => check_key(&p, k, f, None, err),
            (Some(_), None) => err(
                &format!("{p}.key"),
                "give the key's `fingerprint` too (checked against the key)".into(),
            ),
            (None, Some(_)) => err(
                &format!("{p}.fingerprint"),
                "no `key` to check it against".into(),
            ),
            (None, None) => {}
        }
    }
    for (name, k) in &apt.keys {
        let pinned = crate::features::REPO_KEYS
            .iter()
            .copied()
            .find(|rk| rk.name == name);
        check_key(
            &format!("apt.keys.{name}"),
            &k.key,
            &k.fingerprint,
            pinned,
            err,
        );
    }
    for (field, rk) in crate::features::repo_keys(&r.definition) {
        if !apt.keys.contains_key(rk.name) {
            err(
                &field,
                format!(
                    "needs apt.keys.{}: {}'s armoured key ({}, fingerprint {})",
                    rk.name, rk.owner, rk.url, rk.fingerprint
                ),
            );
        }
    }
}

/// An embedded key: armoured, public, and its fingerprint the declared one (and, for a
/// repository imgbuild knows, the one it pins).
fn check_key(
    p: &str,
    key: &str,
    declared: &str,
    pinned: Option<&crate::features::RepoKey>,
    err: &mut impl FnMut(&str, String),
) {
    let declared = crate::openpgp::normalize(declared);
    match crate::openpgp::fingerprint(key) {
        Err(e) => err(&format!("{p}.key"), e.to_string()),
        Ok(f) if f != declared => err(
            &format!("{p}.key"),
            format!("the key's fingerprint is {f}, not the declared {declared}"),
        ),
        Ok(_) => {}
    }
    if let Some(rk) = pinned {
        if declared != rk.fingerprint {
            err(
                &format!("{p}.fingerprint"),
                format!(
                    "{declared} is not {}'s repository key ({}, published at {})",
                    rk.owner, rk.fingerprint, rk.url
                ),
            );
        }
    }
}

/// Does a key name suggest it holds a secret?
pub fn looks_secret_name(k: &str) -> bool {
    let k = k.to_ascii_uppercase();
    [
        "PASSWORD", "PASSWD", "SECRET", "TOKEN", "PRIVATE", "API_KEY", "APIKEY", "SALT",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// Private keys and the like have no place in a definition.
fn scan_secrets(v: &serde_json::Value, path: &str, err: &mut impl FnMut(&str, String)) {
    match v {
        serde_json::Value::String(s) if s.contains("PRIVATE KEY-----") => {
            err(
                path,
                "contains a private key: images carry no secrets".into(),
            );
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                scan_secrets(x, &format!("{path}[{i}]"), err);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = super::source_map::join(path, k);
                if path == "publish.properties" && looks_secret_name(k) {
                    err(&p, "looks like a secret: Glance properties are readable by every user of the image".into());
                }
                scan_secrets(x, &p, err);
            }
        }
        _ => {}
    }
}
