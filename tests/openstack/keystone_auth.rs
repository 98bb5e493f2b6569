//! Authentication against a real Keystone v3 (and the catalog's real Glance endpoint) on
//! 127.0.0.1, started by scripts/openstack-test-stack.sh from the pinned PyPI set: password
//! auth through clouds.yaml + secure.yaml, an application credential, a token, and a wrong
//! password that fails clearly without echoing it.

use crate::common;

use common::openstack::{stack, Stack};
use imgbuild::glance::auth::{self, AuthError, Credentials, Secret};
use imgbuild::http::Http;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    cloud_named(clouds, secure, "lab")
}

/// Cloud `name` as auth::load finds it through OS_CLIENT_CONFIG_FILE / OS_CLIENT_SECURE_FILE.
/// The variables are set only here, under a lock, and taken away again at once: the tier's
/// other tests (publish) start programs that must not inherit them.
fn cloud_named(clouds: &Path, secure: &Path, name: &str) -> Result<auth::Cloud, AuthError> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("OS_CLIENT_CONFIG_FILE", clouds);
    std::env::set_var("OS_CLIENT_SECURE_FILE", secure);
    let cloud = auth::load(Some(name));
    std::env::remove_var("OS_CLIENT_CONFIG_FILE");
    std::env::remove_var("OS_CLIENT_SECURE_FILE");
    cloud
}

fn http() -> Http {
    Http::new(&Default::default(), Duration::from_secs(60)).unwrap()
}

fn http_verified() -> Http {
    Http::new(
        &imgbuild::http::TlsOptions {
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
    let err = cloud_named(&c, &sec, "laab").unwrap_err();
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
