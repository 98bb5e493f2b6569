//! A real Keystone v3 + Glance v2 on 127.0.0.1 (scripts/openstack-test-stack.sh), one per
//! test binary, gone when the binary exits.

use super::repo;
use imgbuild::http::{Http, TlsOptions};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub struct Stack {
    pub keystone: String,
    pub glance: String,
    pub password: String,
    pub state: PathBuf,
    /// The private CA the stack's HTTPS certificate is signed by (TLS stacks only).
    pub ca: Option<PathBuf>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One stack per test binary. It is started from a thread that lives as long as the process,
/// with PR_SET_PDEATHSIG, so it goes when the tests end, however they end.
pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| start(false))
}

/// The same over HTTPS, with a certificate from a private CA made for this run.
pub fn stack_tls() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| start(true))
}

pub fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`: ca.pem, ca.key,
/// server.pem, server.key.
pub fn make_certs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=imgbuild test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
        dir,
    );
}

/// A client certificate NAME.pem (key NAME.key) signed by the CA in `dir` (see [`make_certs`]).
pub fn make_client_cert(dir: &Path, name: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
        dir,
    );
    std::fs::write(
        dir.join("client-ext.cnf"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "client-ext.cnf",
            "-out",
            &pem,
        ],
        dir,
    );
}

fn start(tls: bool) -> Stack {
    {
        let (script, venv) = super::install_stack("openstack-test-stack.sh", "openstack-venv");
        // target/openstack-state/PID; folders of test runs that are gone are removed.
        let root = repo().join("target/openstack-state");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.trim_end_matches("-tls").parse::<u32>().unwrap_or(0);
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let state = root.join(format!(
            "{}{}",
            std::process::id(),
            if tls { "-tls" } else { "" }
        ));
        std::fs::create_dir_all(&state).unwrap();
        let tls_dir = state.join("tls");
        if tls {
            make_certs(&tls_dir);
        }
        let (kport, gport) = (free_port(), free_port());
        // A fresh random admin password per run; it never leaves target/.
        let password = super::random_secret();
        let (tx, rx) = std::sync::mpsc::channel();
        let (venv2, state2, pw2) = (venv.clone(), state.clone(), password.clone());
        let tls_dir2 = tls_dir.clone();
        std::thread::spawn(move || {
            let mut cmd = Command::new("bash");
            cmd.arg(&script)
                .arg("start")
                .arg(&venv2)
                .arg(&state2)
                .env("KEYSTONE_PORT", kport.to_string())
                .env("GLANCE_PORT", gport.to_string())
                .env("OS_TEST_ADMIN_PASSWORD", &pw2)
                .envs(if tls {
                    vec![
                        ("TLS_CERT", tls_dir2.join("server.pem")),
                        ("TLS_KEY", tls_dir2.join("server.key")),
                        ("TLS_CA", tls_dir2.join("ca.pem")),
                    ]
                } else {
                    vec![]
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
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
        let scheme = if tls { "https" } else { "http" };
        Stack {
            keystone: format!("{scheme}://127.0.0.1:{kport}/v3"),
            glance: format!("{scheme}://127.0.0.1:{gport}"),
            password,
            state,
            ca: tls.then(|| tls_dir.join("ca.pem")),
        }
    }
}

/// The stack's Keystone as its admin: a token and a few identity and catalog calls, through
/// imgbuild's own HTTP module.
pub struct Admin {
    pub http: Http,
    pub keystone: String,
    pub token: String,
}

impl Stack {
    pub fn admin(&self) -> Admin {
        let mut tls = TlsOptions {
            verify: true,
            ..Default::default()
        };
        tls.cacert = self.ca.clone();
        let http = Http::new(&tls, Duration::from_secs(60)).unwrap();
        let r = http
            .post_json(
                &format!("{}/auth/tokens", self.keystone),
                None,
                &json!({"auth": {
                    "identity": {"methods": ["password"], "password": {"user": {
                        "name": "admin", "domain": {"id": "default"}, "password": self.password}}},
                    "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}),
                &[201],
            )
            .unwrap();
        let token = r.header("x-subject-token").unwrap();
        Admin {
            http,
            keystone: self.keystone.clone(),
            token,
        }
    }
}

impl Admin {
    fn post(&self, path: &str, body: serde_json::Value, ok: &[u16]) -> serde_json::Value {
        let url = format!("{}{path}", self.keystone);
        self.http
            .post_json(&url, Some(&self.token), &body, ok)
            .unwrap_or_else(|e| panic!("{e}"))
            .json
    }

    /// A new project and a user in it with `role` (`reader`, `member`, ...); returns the
    /// user's name, which is also the project's.
    pub fn user_with_role(&self, name: &str, password: &str, role: &str) -> String {
        let project = self.post(
            "/projects",
            json!({"project": {"name": name, "domain_id": "default"}}),
            &[201],
        )["project"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let user = self.post(
            "/users",
            json!({"user": {"name": name, "password": password, "domain_id": "default",
                "default_project_id": project}}),
            &[201],
        )["user"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let roles = self
            .http
            .get(
                &format!("{}/roles?name={role}", self.keystone),
                Some(&self.token),
                &[200],
            )
            .unwrap()
            .json;
        let role_id = roles["roles"][0]["id"].as_str().unwrap();
        let url = format!(
            "{}/projects/{project}/users/{user}/roles/{role_id}",
            self.keystone
        );
        let req = ureq::put(&url)
            .header("X-Auth-Token", &self.token)
            .send_empty();
        assert_eq!(req.map(|r| r.status().as_u16()).ok(), Some(204), "{url}");
        name.to_string()
    }

    /// An image endpoint (`interface` public/internal/admin) in `region`, made if missing.
    pub fn image_endpoint(&self, region: &str, interface: &str, url: &str) {
        self.post("/regions", json!({"region": {"id": region}}), &[201, 409]);
        let services = self
            .http
            .get(
                &format!("{}/services?type=image", self.keystone),
                Some(&self.token),
                &[200],
            )
            .unwrap()
            .json;
        let service = services["services"][0]["id"].as_str().unwrap();
        self.post(
            "/endpoints",
            json!({"endpoint": {"service_id": service, "interface": interface, "url": url,
                "region_id": region}}),
            &[201],
        );
    }
}

/// TLS for an extra Glance: its certificate and key, and (for mutual TLS) the CA whose
/// client certificates it requires, plus one such certificate for the readiness probe.
pub struct GlanceTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub probe: Option<(PathBuf, PathBuf)>,
}

/// Starts `cmd` (a `scripts/openstack-test-stack.sh start|glance`) with its stdout piped, to
/// stop with the test process, and reads its output until it says `READY` (true) or ends
/// (false). The servers it started stop with it.
pub fn start_until_ready(mut cmd: Command) -> (std::process::Child, bool) {
    cmd.stdout(Stdio::piped());
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let ready = out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("READY"));
    (child, ready)
}

/// One more Glance for the stack's Keystone, with its own config, database and store
/// (`scripts/openstack-test-stack.sh glance`). It is stopped when dropped, and in any case when
/// the thread that started it (the test) ends.
pub struct ExtraGlance {
    pub url: String,
    /// STATE: images/ is the fs store, glance.log and glance-app.log the logs.
    pub state: PathBuf,
    child: std::process::Child,
}

impl ExtraGlance {
    /// `defaults`: lines for the [DEFAULT] section of its glance-api.conf.
    pub fn start(s: &Stack, name: &str, defaults: &str, tls: Option<&GlanceTls>) -> ExtraGlance {
        assert!(
            s.ca.is_none(),
            "extra Glances are for the plain stack's Keystone"
        );
        let port = free_port();
        let state = s.state.join(format!("glance-{name}-{port}"));
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/openstack-test-stack.sh"))
            .arg("glance")
            .arg(repo().join("target/openstack-venv"))
            .arg(&state)
            .env("KEYSTONE_URL", &s.keystone)
            .env("GLANCE_PORT", port.to_string())
            .env("GLANCE_DEFAULTS", defaults)
            .env("OS_TEST_ADMIN_PASSWORD", &s.password)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(t) = tls {
            cmd.env("TLS_CERT", &t.cert)
                .env("TLS_KEY", &t.key)
                .env("TLS_CA", &t.ca);
            if let (Some(ca), Some((c, k))) = (&t.client_ca, &t.probe) {
                cmd.env("TLS_CLIENT_CA", ca)
                    .env("TLS_PROBE_CERT", c)
                    .env("TLS_PROBE_KEY", k);
            }
        }
        let (child, ready) = start_until_ready(cmd);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let g = ExtraGlance {
            url: format!("{scheme}://127.0.0.1:{port}"),
            state,
            child,
        };
        assert!(
            ready,
            "the extra Glance did not start; logs in {}",
            g.state.display()
        );
        g
    }

    /// Stops it (SIGTERM to the script, which stops gunicorn) and waits.
    pub fn stop(&mut self) {
        super::terminate(&mut self.child);
    }
}

impl Drop for ExtraGlance {
    fn drop(&mut self) {
        self.stop();
    }
}
