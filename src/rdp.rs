//! RDP logins from the host with FreeRDP, as a Guacamole or a user's RDP client would try
//! them: the smoke boot of a desktop image with RDP offers a wrong password and then the
//! launch's desktop password, and the guest's own check (`rdp-login`) reads xrdp's session
//! manager log for the refusal and the grant. xrdp has no NLA, so FreeRDP's `+auth-only`
//! proves nothing about the password (the connection is complete before xrdp's autologon asks
//! PAM); the full connection is made in a virtual X display (`xvfb-run`) and ended after
//! `hold`. The password goes to FreeRDP on its stdin (`/from-stdin:force`), never on a command
//! line or in a log.

use crate::exec::{Cmd, ExecError, ProcessGroup};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How one login attempt ended on the client side.
#[derive(Debug)]
pub struct Attempt {
    /// FreeRDP's exit code, or None if it was still connected after `hold` (and was stopped).
    pub exit: Option<i32>,
    pub seconds: f64,
}

/// Connects to `port` on the host's loopback as `user` with `password`, holds the connection
/// until `seen` says the other side has what it needs (or for at most `hold`), then ends it.
pub fn attempt(
    port: u16,
    user: &str,
    password: &str,
    hold: Duration,
    seen: &dyn Fn() -> bool,
) -> Result<Attempt, ExecError> {
    let cmd = Cmd::new("xvfb-run").args([
        "-a".to_string(),
        "xfreerdp".into(),
        format!("/v:127.0.0.1:{port}"),
        format!("/u:{user}"),
        "/from-stdin:force".into(),
        "/cert:ignore".into(),
        "/sec:tls".into(),
        "/log-level:ERROR".into(),
    ]);
    let t0 = Instant::now();
    let mut g = ProcessGroup::spawn_with_input(
        &cmd,
        format!("{password}\n").as_bytes(),
        Stdio::null(),
        Stdio::null(),
    )?;
    while t0.elapsed() < hold && !seen() {
        if let Ok(Some(status)) = g.try_wait() {
            return Ok(Attempt {
                exit: status.code(),
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    g.stop();
    Ok(Attempt {
        exit: None,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
