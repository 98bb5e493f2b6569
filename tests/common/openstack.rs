//! A real Keystone v3 + Glance v2 on 127.0.0.1 (scripts/openstack-test-stack.sh), one per
//! test binary, gone when the binary exits.

use super::repo;
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

fn free_port() -> u16 {
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

fn openssl(args: &[&str], dir: &Path) {
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

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_certs(dir: &Path) {
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

fn start(tls: bool) -> Stack {
    {
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
        let password = {
            // A fresh random admin password per run; it never leaves target/.
            let mut b = [0u8; 12];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b)
                .unwrap();
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
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

extern "C" {
    #[link_name = "prctl"]
    fn libc_prctl(option: i32, arg2: u64) -> i32;
}
