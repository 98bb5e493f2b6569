//! Authentication against a real Keystone v3 (and the catalog's real Glance endpoint) on
//! 127.0.0.1, started by scripts/openstack-test-stack.sh from the pinned PyPI set: password
//! auth through clouds.yaml + secure.yaml, an application credential, a token, and a wrong
//! password that fails clearly without echoing it.

mod common;

use common::repo;
use imgbuild::glance::auth::{self, AuthError, Credentials, Secret};
use imgbuild::glance::http::Http;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

struct Stack {
    keystone: String,
    glance: String,
    password: String,
    state: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One stack per test binary. It is started from a thread that lives as long as the process,
/// with PR_SET_PDEATHSIG, so it goes when the tests end, however they end.
fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let venv = repo().join("target/openstack-venv");
        let script = repo().join("scripts/openstack-test-stack.sh");
        let st = Command::new("bash")
            .arg(&script)
            .arg("install")
            .arg(&venv)
            .status()
            .unwrap();
        assert!(st.success(), "installing keystone + glance failed");
        // target/openstack-state/PID; folders of test runs that are gone are removed.
        let root = repo().join("target/openstack-state");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let pid = e.file_name().to_string_lossy().parse::<u32>().unwrap_or(0);
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let state = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&state).unwrap();
        let (kport, gport) = (free_port(), free_port());
        let password = {
            // A fresh random admin password per run; it never leaves target/.
            let mut b = [0u8; 12];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b)
                .unwrap();
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (venv2, state2, pw2) = (venv.clone(), state.clone(), password.clone());
        std::thread::spawn(move || {
            let mut cmd = Command::new("bash");
            cmd.arg(&script)
                .arg("start")
                .arg(&venv2)
                .arg(&state2)
                .env("KEYSTONE_PORT", kport.to_string())
                .env("GLANCE_PORT", gport.to_string())
                .env("OS_TEST_ADMIN_PASSWORD", &pw2)
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            unsafe {
                cmd.pre_exec(|| {
                    libc_prctl(1 /* PR_SET_PDEATHSIG */, 15);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().unwrap();
            let out = BufReader::new(child.stdout.take().unwrap());
            for line in out.lines().map_while(Result::ok) {
                if line.starts_with("READY") {
                    tx.send(true).unwrap();
                }
            }
            let _ = tx.send(false);
            let _ = child.wait();
            loop {
                std::thread::park();
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(300)).unwrap_or(false);
        assert!(
            ready,
            "the OpenStack test stack did not start; logs in {}",
            state.display()
        );
        Stack {
            keystone: format!("http://127.0.0.1:{kport}/v3"),
            glance: format!("http://127.0.0.1:{gport}"),
            password,
            state,
        }
    })
}

extern "C" {
    #[link_name = "prctl"]
    fn libc_prctl(option: i32, arg2: u64) -> i32;
}

fn write_clouds(dir: &Path, s: &Stack, password_in_secure: &str) -> (PathBuf, PathBuf) {
    let clouds = dir.join("clouds.yaml");
    let secure = dir.join("secure.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  lab:\n    auth:\n      auth_url: {}\n      username: admin\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    interface: public\n",
            s.keystone.trim_end_matches("/v3")
        ),
    )
    .unwrap();
    std::fs::write(
        &secure,
        format!("clouds:\n  lab:\n    auth:\n      password: \"{password_in_secure}\"\n"),
    )
    .unwrap();
    (clouds, secure)
}

fn cloud_from_files(clouds: &Path, secure: &Path) -> Result<auth::Cloud, AuthError> {
    // The search path honours OS_CLIENT_CONFIG_FILE / OS_CLIENT_SECURE_FILE; this test binary
    // sets them once, single-threaded use is not needed because every test writes the same
    // variable names only through this helper under a lock.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap();
    std::env::set_var("OS_CLIENT_CONFIG_FILE", clouds);
    std::env::set_var("OS_CLIENT_SECURE_FILE", secure);
    auth::load(Some("lab"))
}

fn http() -> Http {
    Http::new(&Default::default(), Duration::from_secs(60)).unwrap()
}

fn http_verified() -> Http {
    Http::new(
        &imgbuild::glance::http::TlsOptions {
            verify: true,
            ..Default::default()
        },
        Duration::from_secs(60),
    )
    .unwrap()
}

#[test]
fn password_auth_from_clouds_and_secure_yaml_finds_the_image_endpoint() {
    let s = stack();
    let d = tempfile::tempdir().unwrap();
    let (c, sec) = write_clouds(d.path(), s, &s.password);
    let cloud = cloud_from_files(&c, &sec).unwrap();
    assert_eq!(cloud.name.as_deref(), Some("lab"));
    assert!(matches!(cloud.credentials, Credentials::Password { .. }));
    let session = auth::authenticate(&cloud, &http_verified()).unwrap();
    assert_eq!(session.image_url, s.glance);
    assert!(session.token.expose().len() > 20);
    assert!(session.project_id.is_some());
    // The token works on Glance.
    let r = http_verified()
        .get(
            &format!("{}/v2/images", session.image_url),
            Some(session.token.expose()),
            &[200],
        )
        .unwrap();
    assert!(r.json["images"].is_array());
    // And it can be re-used as token auth.
    let token_cloud = auth::Cloud {
        credentials: Credentials::Token(session.token.clone()),
        ..cloud
    };
    let again = auth::authenticate(&token_cloud, &http()).unwrap();
    assert_eq!(again.image_url, s.glance);
}

#[test]
fn a_wrong_password_fails_clearly_and_never_shows_the_password() {
    let s = stack();
    let d = tempfile::tempdir().unwrap();
    let wrong = "definitely-Wrong-9f2c";
    let (c, sec) = write_clouds(d.path(), s, wrong);
    let cloud = cloud_from_files(&c, &sec).unwrap();
    let err = auth::authenticate(&cloud, &http()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AuthError::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains("HTTP 401") && msg.contains("127.0.0.1"),
        "{msg}"
    );
    assert!(
        !msg.contains(wrong),
        "the password leaked into the error: {msg}"
    );
    assert!(!format!("{cloud:?}").contains(wrong));
    // An unknown cloud name says what is known.
    let err = {
        let _ = cloud_from_files(&c, &sec);
        std::env::set_var("OS_CLIENT_CONFIG_FILE", &c);
        auth::load(Some("laab")).unwrap_err()
    };
    assert!(err.to_string().contains("did you mean `lab`"), "{err}");
}

#[test]
fn application_credentials_authenticate() {
    let s = stack();
    let d = tempfile::tempdir().unwrap();
    let (c, sec) = write_clouds(d.path(), s, &s.password);
    let admin = auth::authenticate(&cloud_from_files(&c, &sec).unwrap(), &http()).unwrap();
    let user_id = admin.user_id.clone().unwrap();
    let name = format!("imgbuild-test-{}", std::process::id());
    let created = http()
        .post_json(
            &format!("{}/users/{user_id}/application_credentials", s.keystone),
            Some(admin.token.expose()),
            &serde_json::json!({"application_credential": {"name": name}}),
            &[201],
        )
        .unwrap();
    let ac = &created.json["application_credential"];
    let clouds = d.path().join("ac-clouds.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  lab:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {}\n      application_credential_id: {}\n      application_credential_secret: {}\n",
            s.keystone,
            ac["id"].as_str().unwrap(),
            ac["secret"].as_str().unwrap()
        ),
    )
    .unwrap();
    let cloud = cloud_from_files(&clouds, &d.path().join("none.yaml")).unwrap();
    assert!(matches!(
        cloud.credentials,
        Credentials::ApplicationCredential { .. }
    ));
    let session = auth::authenticate(&cloud, &http()).unwrap();
    assert_eq!(session.image_url, s.glance);
    assert_eq!(session.project_id, admin.project_id);
    // A wrong secret is a 401 like a wrong password.
    let bad = auth::Cloud {
        credentials: Credentials::ApplicationCredential {
            id: ac["id"].as_str().map(str::to_string),
            name: None,
            username: None,
            user_domain_name: None,
            secret: Secret::new("nope"),
        },
        ..cloud
    };
    assert!(matches!(
        auth::authenticate(&bad, &http()),
        Err(AuthError::Unauthorized { .. })
    ));
    let _ = &s.state;
}
