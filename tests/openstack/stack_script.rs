//! scripts/openstack-test-stack.sh as a person runs it from the repository root, with a
//! relative VENV and STATE (issue 20: gunicorn was looked for under STATE/keystone-run/VENV):
//! Keystone and Glance both answer.

use crate::common::openstack::{free_port, start_until_ready};
use crate::common::repo;
use std::process::{Command, Stdio};

#[test]
fn the_stack_starts_with_a_relative_venv_and_state() {
    // The venv the tier's stack uses (installed by it or `make openstack-venv`).
    let st = Command::new("bash")
        .args([
            "scripts/openstack-test-stack.sh",
            "install",
            "target/openstack-venv",
        ])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(st.success(), "installing keystone + glance failed");
    // Not under target/openstack-state, whose folders belong to running test binaries.
    let state = format!("target/openstack-relative/{}", std::process::id());
    let (kport, gport) = (free_port(), free_port());
    let mut cmd = Command::new("bash");
    cmd.args([
        "scripts/openstack-test-stack.sh",
        "start",
        "target/openstack-venv",
        &state,
    ])
    .current_dir(repo())
    .env("KEYSTONE_PORT", kport.to_string())
    .env("GLANCE_PORT", gport.to_string())
    .env("OS_TEST_ADMIN_PASSWORD", "relative-paths-only-here")
    .stderr(Stdio::piped());
    let (child, ready) = start_until_ready(cmd);
    // Any HTTP answer will do (Glance's /versions is a 300).
    let answers = |url: &str| match ureq::get(url).call() {
        Ok(_) | Err(ureq::Error::StatusCode(_)) => true,
        Err(_) => false,
    };
    let keystone = format!("http://127.0.0.1:{kport}/v3");
    let glance = format!("http://127.0.0.1:{gport}/versions");
    let (k, g) = (ready && answers(&keystone), ready && answers(&glance));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        ready,
        "the stack did not start; stderr:\n{stderr}\nlogs in {state}"
    );
    assert!(k, "keystone does not answer at {keystone}");
    assert!(g, "glance does not answer at {glance}");
    // Everything it made is in STATE under the repository root, nowhere else.
    let abs = repo().join(&state);
    assert!(abs.join("keystone-run/gunicorn.conf.py").is_file());
    assert!(abs.join("glance.sqlite").is_file());
    std::fs::remove_dir_all(&abs).unwrap();
}
