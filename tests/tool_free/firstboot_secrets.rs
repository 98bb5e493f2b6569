//! The first-boot secrets generator as desktop-ai's user-data installs it: the script and its
//! spec are taken from the rendered user-data and run for real (python3): mode 0600, every
//! secret of the stack made with the declared size and encoding, kept on re-runs, different
//! per instance; and the image carries names only.

use crate::common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn first_boot_makes_private_per_instance_secrets_and_keeps_them() {
    let out = tempfile::tempdir().unwrap();
    let o = imgbuild(
        &repo(),
        &["render", "desktop-ai", "-o", out.path().to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let rendered = out.path().join("amd64");
    let ud = python_yaml(&rendered.join("seed/user-data"));
    let spec_text = write_file(&ud, "/usr/local/share/imgbuild/ai-stack/secrets.json");
    let script = write_file(&ud, "/usr/local/lib/imgbuild/firstboot-secrets");
    let unit = write_file(&ud, "/etc/systemd/system/imgbuild-secrets-ai-stack.service");
    assert!(unit.contains("Before=docker.service"), "{unit}");
    assert!(unit.contains("/var/lib/imgbuild/ai-stack/secrets.env"));
    let spec: serde_json::Value = serde_json::from_str(spec_text).unwrap();

    // Every secret the compose file interpolates is generated.
    let compose = std::fs::read_to_string(rendered.join("compose/ai-stack/compose.yaml")).unwrap();
    for part in compose.split("${").skip(1) {
        let var = part.split([':', '}']).next().unwrap();
        if part[var.len()..].starts_with(":?") {
            assert!(
                spec.get(var).is_some(),
                "{var} is required by compose but never generated"
            );
        }
    }

    let t = tempfile::tempdir().unwrap();
    let script_path = t.path().join("firstboot-secrets");
    let spec_path = t.path().join("secrets.json");
    std::fs::write(&script_path, script).unwrap();
    std::fs::write(&spec_path, spec_text).unwrap();
    let run = |out: &Path| {
        let o = Command::new("python3")
            .arg(&script_path)
            .arg(&spec_path)
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let a = t.path().join("a/secrets.env");
    let said = run(&a);
    let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = env(&a);
    let spec_map = spec.as_object().unwrap();
    assert_eq!(first.len(), spec_map.len());
    let mut jwts = 0;
    for (name, s) in spec_map {
        let v = &first[name];
        if let Some(j) = s.get("jwt") {
            let secret = &first[j["secret"].as_str().unwrap()];
            let claims = verify_jwt(v, secret, j["issuer"].as_str().unwrap());
            assert_eq!(claims["role"], j["role"], "{name}");
            let days = (claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap()) / 86400;
            assert_eq!(days, j["valid_days"].as_i64().unwrap(), "{name}");
            assert!(!said.contains(v.as_str()), "a secret value was printed");
            jwts += 1;
            continue;
        }
        let bytes = s["bytes"].as_u64().unwrap() as usize;
        match s["encoding"].as_str().unwrap() {
            "hex" => {
                assert_eq!(v.len(), bytes * 2, "{name}");
                assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
            }
            "base64url" => {
                assert_eq!(v.len(), (bytes * 4).div_ceil(3), "{name}");
                assert!(v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            }
            e => panic!("{e}"),
        }
        assert!(!said.contains(v.as_str()), "a secret value was printed");
    }
    // Supabase's anon and service-role keys are JWTs of the instance's JWT secret.
    assert_eq!(jwts, 2, "{spec_text}");
    assert_eq!(spec["SUPABASE_ANON_KEY"]["jwt"]["role"], "anon");
    assert_eq!(spec["SUPABASE_SERVICE_KEY"]["jwt"]["role"], "service_role");
    let distinct: std::collections::HashSet<_> = first.values().collect();
    assert_eq!(distinct.len(), first.len(), "every secret is its own");

    // A re-run keeps every value; a lost one is made again, alone.
    run(&a);
    assert_eq!(env(&a), first);
    let text_a = std::fs::read_to_string(&a).unwrap();
    let without: String = text_a
        .lines()
        .filter(|l| !l.starts_with("N8N_ENCRYPTION_KEY="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&a, without).unwrap();
    run(&a);
    let again = env(&a);
    assert_ne!(again["N8N_ENCRYPTION_KEY"], first["N8N_ENCRYPTION_KEY"]);
    for (k, v) in &first {
        if k != "N8N_ENCRYPTION_KEY" {
            assert_eq!(&again[k], v);
        }
    }
    // A JWT secret changed by hand: the kept tokens no longer verify and are signed again.
    let changed: String = std::fs::read_to_string(&a)
        .unwrap()
        .lines()
        .map(|l| match l.strip_prefix("SUPABASE_JWT_SECRET=") {
            Some(_) => format!("SUPABASE_JWT_SECRET={}\n", "ab".repeat(32)),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&a, changed).unwrap();
    run(&a);
    let resigned = env(&a);
    assert_ne!(resigned["SUPABASE_ANON_KEY"], first["SUPABASE_ANON_KEY"]);
    let claims = verify_jwt(
        &resigned["SUPABASE_SERVICE_KEY"],
        &"ab".repeat(32),
        "supabase",
    );
    assert_eq!(claims["role"], "service_role");
    assert_eq!(resigned["N8N_ENCRYPTION_KEY"], again["N8N_ENCRYPTION_KEY"]);

    // Another instance gets other values.
    let b = t.path().join("b/secrets.env");
    run(&b);
    let other = env(&b);
    assert!(first.iter().all(|(k, v)| &other[k] != v));

    // No value ever lands in the rendered files.
    for f in walkdir::WalkDir::new(out.path())
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
    {
        let body = std::fs::read_to_string(f.path()).unwrap_or_default();
        for v in first.values() {
            assert!(!body.contains(v.as_str()));
        }
    }
}

/// The token's claims as PyJWT (a JWT library, requirements-dev.txt) reads them after checking
/// its HS256 signature with `secret`, its issuer and its expiry; panics if any fails.
fn verify_jwt(token: &str, secret: &str, issuer: &str) -> serde_json::Value {
    let o = Command::new(python())
        .args([
            "-c",
            "import json,sys,jwt; print(json.dumps(jwt.decode(sys.argv[1], sys.argv[2], algorithms=['HS256'], issuer=sys.argv[3])))",
            token,
            secret,
            issuer,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_jwt_signed_with_another_secret_does_not_verify() {
    // The check above cannot pass by accident: PyJWT refuses a token of another secret.
    let o = Command::new(python())
        .args([
            "-c",
            "import sys,jwt; jwt.decode(jwt.encode({'role':'anon','iss':'supabase'}, 'a'*64, algorithm='HS256'), 'b'*64, algorithms=['HS256'], issuer='supabase')",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("InvalidSignatureError"));
}

#[test]
fn a_malformed_secrets_spec_is_a_clear_error() {
    let dir = catalog(&[(
        "stack",
        &format!("{MINIMAL}features:\n  docker: {{source: distro}}\n  compose_stack:\n    project: ../proj\n    profiles: [app]\n"),
    )]);
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(
        proj.join("compose.yaml"),
        "services:\n  app:\n    image: busybox:1.36\n    profiles: [app]\n    mem_limit: 64m\n    healthcheck: {test: [CMD, true]}\n    environment:\n      K: ${APP_KEY:?x}\n",
    )
    .unwrap();
    for (body, needle) in [
        ("APP_KEY: {bytes: 4}\n", "16 to 128"),
        ("app_key: {bytes: 32}\n", "not an environment variable name"),
        ("APP_KEY: {bytes: 32, encoding: rot13}\n", "rot13"),
        ("APP_KEY: {bytes: 32, lenght: 3}\n", "lenght"),
        (
            "APP_KEY: {jwt: {secret: NOPE, role: anon}}\n",
            "must be a random secret",
        ),
        (
            "S: {bytes: 16}\nAPP_KEY: {jwt: {secret: S, role: anon}}\n",
            "at least 32 bytes",
        ),
        (
            "S: {bytes: 32}\nAPP_KEY: {jwt: {secret: S, role: Anon}}\n",
            "not a role name",
        ),
        (
            "S: {bytes: 32}\nAPP_KEY: {jwt: {secret: S, role: anon, exp: 3}}\n",
            "`exp`",
        ),
    ] {
        std::fs::write(proj.join("secrets.yaml"), body).unwrap();
        let o = imgbuild(dir.path(), &["render", "stack", "-o", "out"]);
        let (_, err) = text(&o);
        assert_ne!(o.status.code(), Some(0), "{body}");
        assert!(
            err.contains("secrets.yaml") && err.contains(needle),
            "{body}: {err}"
        );
    }
    std::fs::write(proj.join("secrets.yaml"), "APP_KEY: {bytes: 32}\n").unwrap();
    let o = imgbuild(dir.path(), &["render", "stack", "-o", "out"]);
    assert!(o.status.success(), "{}", text(&o).1);
}
