//! The one place that runs external programs (qemu, qemu-img, packer, mmdebstrap, xorriso,
//! cloud-init, check-jsonschema, ...). Every command line is logged in full at debug level
//! (`-v`), and a failure carries the command line and the tail of its stderr.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};

/// How many bytes of stderr a failure keeps.
const STDERR_TAIL: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("`{program}` is not installed or not on PATH{hint}")]
    NotFound { program: String, hint: String },
    #[error("`{cmdline}` failed ({status}):\n{stderr}")]
    Failed {
        cmdline: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("`{cmdline}`: {source}")]
    Io {
        cmdline: String,
        #[source]
        source: std::io::Error,
    },
}

/// A command line to run. Build it, then `run()` (capture output, fail on non-zero exit),
/// `status()` (inherit nothing, just the exit status) or `spawn()`.
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdin_null: bool,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            stdin_null: true,
        }
    }
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }
    pub fn program(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    /// The full command line, shell-quoted, as logged.
    pub fn cmdline(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.envs {
            s.push_str(&format!(
                "{}={} ",
                k.to_string_lossy(),
                quote(&v.to_string_lossy())
            ));
        }
        s.push_str(&quote(&self.program.to_string_lossy()));
        for a in &self.args {
            s.push(' ');
            s.push_str(&quote(&a.to_string_lossy()));
        }
        s
    }

    /// The std command (for callers that need spawn-time hooks, such as the QEMU module).
    pub fn std(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        if self.stdin_null {
            c.stdin(Stdio::null());
        }
        c
    }

    fn io_err(&self, e: std::io::Error) -> ExecError {
        if e.kind() == std::io::ErrorKind::NotFound {
            let program = self.program();
            let hint = install_hint(&program)
                .map(|h| format!(" (install: {h})"))
                .unwrap_or_default();
            ExecError::NotFound { program, hint }
        } else {
            ExecError::Io {
                cmdline: self.cmdline(),
                source: e,
            }
        }
    }

    /// Runs to completion capturing stdout and stderr; a non-zero exit is an error.
    pub fn run(&self) -> Result<Output, ExecError> {
        let out = self.run_unchecked()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ExecError::Failed {
                cmdline: self.cmdline(),
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: tail(&String::from_utf8_lossy(&out.stderr), STDERR_TAIL),
            })
        }
    }

    /// Runs to completion capturing output; the caller inspects the exit status.
    pub fn run_unchecked(&self) -> Result<Output, ExecError> {
        tracing::debug!(target: "exec", "{}", self.cmdline());
        self.std().output().map_err(|e| self.io_err(e))
    }

    /// Runs and returns trimmed stdout as text.
    pub fn read(&self) -> Result<String, ExecError> {
        let out = self.run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Starts the process with the given stdio; the caller owns the child.
    pub fn spawn(&self, stdout: Stdio, stderr: Stdio) -> Result<Child, ExecError> {
        tracing::debug!(target: "exec", "{}", self.cmdline());
        let mut c = self.std();
        c.stdout(stdout).stderr(stderr);
        c.spawn().map_err(|e| self.io_err(e))
    }

    /// The error for a finished child that exited non-zero (for callers that spawn).
    pub fn failed(&self, status: ExitStatus, stderr: &str) -> ExecError {
        ExecError::Failed {
            cmdline: self.cmdline(),
            status,
            stdout: String::new(),
            stderr: tail(stderr, STDERR_TAIL),
        }
    }
}

/// A child in a process group of its own, with everything it starts (Packer and its QEMU,
/// mmdebstrap and the apt and dpkg it runs). It gets SIGTERM if imgbuild dies (parent-death
/// signal), and `stop` (or drop) ends the whole group: SIGTERM, then SIGKILL after a grace time.
pub struct ProcessGroup(Option<Child>);

impl ProcessGroup {
    /// Starts `cmd` (logged like every command) with the given stdout and stderr.
    pub fn spawn(cmd: &Cmd, stdout: Stdio, stderr: Stdio) -> Result<ProcessGroup, ExecError> {
        let stdin = if cmd.stdin_null {
            Stdio::null()
        } else {
            Stdio::inherit()
        };
        ProcessGroup::spawn_stdin(cmd, stdin, stdout, stderr)
    }

    /// Like [`ProcessGroup::spawn`], with `input` written to the leader's stdin (then closed):
    /// how a secret reaches a program without being on its command line or in the log.
    pub fn spawn_with_input(
        cmd: &Cmd,
        input: &[u8],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<ProcessGroup, ExecError> {
        use std::io::Write;
        let mut piped = cmd.clone();
        piped.stdin_null = false;
        let mut g = ProcessGroup::spawn_stdin(&piped, Stdio::piped(), stdout, stderr)?;
        if let Some(mut w) = g.0.as_mut().and_then(|c| c.stdin.take()) {
            w.write_all(input).map_err(|e| cmd.io_err(e))?;
        }
        Ok(g)
    }

    fn spawn_stdin(
        cmd: &Cmd,
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<ProcessGroup, ExecError> {
        use std::os::unix::process::CommandExt;
        tracing::debug!(target: "exec", "{}", cmd.cmdline());
        let mut c = cmd.std();
        c.stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().map_err(|e| cmd.io_err(e))?;
        Ok(ProcessGroup(Some(child)))
    }

    /// The leader's exit status once it has ended.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self.0.as_mut() {
            None => Ok(None),
            Some(c) => {
                let s = c.try_wait()?;
                if s.is_some() {
                    self.0 = None;
                }
                Ok(s)
            }
        }
    }

    /// SIGTERM to the group (so that the leader can clean up: Packer stops QEMU and removes
    /// its output), SIGKILL to what is left after 30 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.0.take() else { return };
        let pgid = c.id() as i32;
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cmdline())
    }
}

/// Is `program` on PATH?
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// How to install a host tool that imgbuild drives.
pub fn install_hint(program: &str) -> Option<&'static str> {
    Some(match program {
        "qemu-system-x86_64" => {
            "apt-get install -t bookworm-backports qemu-system-x86 (or `make host-tools`)"
        }
        "qemu-system-aarch64" => {
            "apt-get install -t bookworm-backports qemu-system-arm (UEFI: qemu-efi-aarch64)"
        }
        "qemu-img" => "apt-get install qemu-utils",
        "packer" => "apt-get install packer",
        "mmdebstrap" => "apt-get install mmdebstrap",
        "arch-test" => "apt-get install arch-test",
        "xorriso" => "apt-get install xorriso",
        "xvfb-run" => "apt-get install xvfb freerdp2-x11 (or `make host-tools`)",
        "xfreerdp" => "apt-get install freerdp2-x11 (or `make host-tools`)",
        "cloud-init" => "apt-get install cloud-init",
        "check-jsonschema" => "pip install check-jsonschema (or `make host-tools`)",
        "sgdisk" => "apt-get install gdisk",
        "mcopy" | "mmd" => "apt-get install mtools",
        "mkfs.vfat" => "apt-get install dosfstools",
        "grub-mkimage" => "apt-get install grub-pc-bin grub-efi-amd64-bin grub2-common",
        _ => return None,
    })
}

/// Shell-quotes one word for display (POSIX single quotes when needed).
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A private folder for a program's TMPDIR when the program makes Unix sockets there
/// (Packer's plugins: `packer-pluginNNNNNNNNNN`), in the system's temporary folder and
/// removed when dropped. A work folder in a deep cache is too long for a socket's path
/// (unix(7): `sun_path` holds 107 bytes): Packer crashed with "bind: invalid argument".
pub fn socket_tmpdir(prefix: &str) -> Result<tempfile::TempDir, crate::IoError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(crate::IoError::at(&std::env::temp_dir()))
}

/// The last `max` bytes of `s`, cut at a char boundary.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_socket_tmpdir_holds_packers_plugin_sockets_and_goes_when_dropped() {
        let tmp = socket_tmpdir("imgbuild-packer-").unwrap();
        // Packer's plugin socket name (packer/plugin/server.go: "packer-plugin" + digits).
        let socket = tmp.path().join("packer-plugin1311239959");
        assert!(socket.as_os_str().len() <= 107, "{}", socket.display());
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let path = tmp.path().to_path_buf();
        drop(tmp);
        assert!(!path.exists());
    }

    use super::*;

    #[test]
    fn quoting_is_shell_safe() {
        assert_eq!(quote("abc-1.2"), "abc-1.2");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn failure_carries_cmdline_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c 'echo oops >&2; exit 3'"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
    }

    #[test]
    fn missing_program_is_not_found_with_hint() {
        let err = Cmd::new("definitely-not-a-program-xyz").run().unwrap_err();
        assert!(matches!(err, ExecError::NotFound { .. }));
    }
}
