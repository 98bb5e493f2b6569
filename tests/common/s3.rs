//! A real object store with an S3 API on 127.0.0.1 (scripts/s3-test-stack.sh: OpenStack Swift
//! from PyPI with s3api and tempauth), one per test, gone when it is dropped or the test
//! process ends. The test reads and changes objects through Swift's own API (what an operator
//! or a broken disk would do behind imgbuild's back); imgbuild talks S3 to it.

use super::openstack::{free_port, start_until_ready};
use super::repo;
use imgbuild::http::{Http, TlsOptions};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct S3Store {
    pub endpoint: String,
    /// The same store over HTTPS (a second Swift proxy with a certificate for 127.0.0.1
    /// signed by `ca`, a private CA made for this run).
    pub tls_endpoint: String,
    pub ca: PathBuf,
    pub bucket: String,
    pub secret: String,
    pub state: PathBuf,
    /// Swift's storage URL of the account and a token for it (tempauth).
    storage: String,
    token: String,
    http: Http,
    child: std::process::Child,
}

impl S3Store {
    /// Installs Swift into target/s3-venv (once), starts it with a random secret and makes
    /// the bucket `bucket`.
    pub fn start(bucket: &str) -> S3Store {
        let (script, venv) = super::install_stack("s3-test-stack.sh", "s3-venv");
        let state = repo()
            .join("target/s3-state")
            .join(std::process::id().to_string())
            .join(bucket);
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).unwrap();
        let secret = super::random_secret();
        let port = free_port();
        let tls_port = free_port();
        let tls = state.join("tls");
        super::openstack::make_certs(&tls);
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg("start")
            .arg(&venv)
            .arg(&state)
            .env("S3_PORT", port.to_string())
            .env("S3_TEST_SECRET", &secret)
            .env("S3_TLS_PORT", tls_port.to_string())
            .env("S3_TLS_CERT", tls.join("server.pem"))
            .env("S3_TLS_KEY", tls.join("server.key"))
            .env("S3_TLS_CA", tls.join("ca.pem"))
            .stderr(Stdio::null());
        let (child, ready) = start_until_ready(cmd);
        assert!(ready, "swift did not start; logs in {}", state.display());
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = Http::new(&TlsOptions::default(), Duration::from_secs(60)).unwrap();
        let auth = http
            .send_raw(
                "GET",
                &format!("{endpoint}/auth/v1.0"),
                &[("X-Auth-User", "test:tester"), ("X-Auth-Key", &secret)],
                None,
                &[200],
            )
            .unwrap();
        let storage = auth.header("X-Storage-Url").unwrap();
        let token = auth.header("X-Auth-Token").unwrap();
        let s = S3Store {
            endpoint,
            tls_endpoint: format!("https://127.0.0.1:{tls_port}"),
            ca: tls.join("ca.pem"),
            bucket: bucket.into(),
            secret,
            state,
            storage,
            token,
            http,
            child,
        };
        s.swift("PUT", "", None, &[201, 202]);
        s
    }

    fn swift(&self, method: &str, obj: &str, body: Option<&[u8]>, ok: &[u16]) -> String {
        let url = if obj.is_empty() {
            format!("{}/{}", self.storage, self.bucket)
        } else {
            format!("{}/{}/{obj}", self.storage, self.bucket)
        };
        self.http
            .send_raw(
                method,
                &url,
                &[("X-Auth-Token", &self.token)],
                body.map(|b| ("application/octet-stream", b)),
                ok,
            )
            .unwrap_or_else(|e| panic!("swift {method} {obj}: {e}"))
            .text
    }

    /// The objects whose names start with `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let url = format!(
            "{}/{}?prefix={prefix}&format=plain",
            self.storage, self.bucket
        );
        let text = self
            .http
            .send_raw(
                "GET",
                &url,
                &[("X-Auth-Token", &self.token)],
                None,
                &[200, 204],
            )
            .unwrap()
            .text;
        let mut v: Vec<String> = text.lines().map(str::to_string).collect();
        v.sort();
        v
    }

    /// A small object's text (entry.json).
    pub fn text(&self, obj: &str) -> String {
        self.swift("GET", obj, None, &[200])
    }

    pub fn put(&self, obj: &str, body: &[u8]) {
        self.swift("PUT", obj, Some(body), &[201]);
    }

    /// The environment imgbuild reads the remote's endpoint and keys from.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test:tester".into()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }
}

/// SIGTERM to the script, whose trap stops the servers it started (a SIGKILL would leave
/// them running), then waits for it.
impl Drop for S3Store {
    fn drop(&mut self) {
        super::terminate(&mut self.child);
    }
}
