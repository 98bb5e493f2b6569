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
