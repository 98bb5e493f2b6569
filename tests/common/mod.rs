//! The helpers every test tier shares: [`TestCommand`] runs the real binary (images folder,
//! cache, environment; exit code asserted with all it printed), throw-away catalogs and the
//! minimal definition, fake builds in a dist folder, process and cache checks for the builds,
//! and (in [`openstack`]) the Keystone + Glance stack.
#![allow(dead_code)]

pub mod openstack;
pub mod s3;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_imgbuild")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/SCRIPT install target/VENV` (idempotent), asserted; returns the script and venv.
pub fn install_stack(script: &str, venv: &str) -> (PathBuf, PathBuf) {
    let (script, venv) = (
        repo().join("scripts").join(script),
        repo().join("target").join(venv),
    );
    let st = Command::new("bash")
        .arg(&script)
        .arg("install")
        .arg(&venv)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "{} install {} failed",
        script.display(),
        venv.display()
    );
    (script, venv)
}

/// Stops a running test-stack script with SIGTERM (its trap stops what it started) and waits.
pub fn terminate(child: &mut std::process::Child) {
    if let Ok(None) = child.try_wait() {
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let _ = child.wait();
    }
}

/// A fresh random secret for a test service (24 hex digits from /dev/urandom).
pub fn random_secret() -> String {
    let mut b = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs imgbuild with `args` in `cwd`.
pub fn imgbuild(cwd: &Path, args: &[&str]) -> Output {
    TestCommand::new(args).cwd(cwd).output()
}

/// imgbuild as the tests run it: the checkout's validators venv, no IMGBUILD_IMAGES_DIR from
/// the caller's environment, in the repository root unless [`TestCommand::cwd`] says otherwise.
pub struct TestCommand {
    images_dir: Option<PathBuf>,
    args: Vec<OsString>,
    cwd: PathBuf,
    envs: Vec<(OsString, OsString)>,
    removed: Vec<OsString>,
}

/// What a [`TestCommand`] printed, as text.
pub struct Ran {
    pub output: Output,
    pub stdout: String,
    pub stderr: String,
}

impl TestCommand {
    pub fn new<S: AsRef<OsStr>>(args: &[S]) -> TestCommand {
        TestCommand {
            images_dir: None,
            args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
            cwd: repo(),
            envs: Vec::new(),
            removed: Vec::new(),
        }
    }

    /// `--images-dir DIR` (before the subcommand).
    pub fn images_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.images_dir = Some(dir.into());
        self
    }

    /// IMGBUILD_CACHE_DIR.
    pub fn cache_dir(self, dir: impl AsRef<OsStr>) -> Self {
        self.env("IMGBUILD_CACHE_DIR", dir)
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = dir.into();
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    /// Without `k` from this process's environment (e.g. the host's AWS_CA_BUNDLE).
    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.removed.push(k.as_ref().to_os_string());
        self
    }

    /// The command, to spawn or change further.
    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        if let Some(d) = &self.images_dir {
            c.arg("--images-dir").arg(d);
        }
        c.args(&self.args)
            .current_dir(&self.cwd)
            .env("IMGBUILD_VENV", repo().join(".venv"))
            .env_remove("IMGBUILD_IMAGES_DIR");
        for k in &self.removed {
            c.env_remove(k);
        }
        c.envs(self.envs.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn output(&self) -> Output {
        self.command().output().expect("imgbuild runs")
    }

    /// Started with stdout and stderr piped (see [`stop`]).
    pub fn spawn(&self) -> std::process::Child {
        self.command()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("imgbuild starts")
    }

    /// Runs it and asserts its exit code; the failure message has the command line and all
    /// it printed.
    pub fn expect(&self, code: i32) -> Ran {
        let output = self.output();
        let (stdout, stderr) = text(&output);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{:?}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
            self.command()
        );
        Ran {
            output,
            stdout,
            stderr,
        }
    }
}

/// The fixture catalog of the end-to-end builds.
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/images")
}

/// imgbuild on the fixture catalog with the shared e2e cache (see [`e2e_cache`]).
pub fn e2e_command(args: &[&str]) -> TestCommand {
    TestCommand::new(args)
        .images_dir(fixtures())
        .cache_dir(e2e_cache())
}

/// Sends `signal` to `child` (started by [`TestCommand::spawn`]), waits up to `limit` and
/// returns how it ended with what it printed on stdout and stderr.
pub fn stop(
    child: &mut std::process::Child,
    signal: i32,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, String, String) {
    let status = signal_and_wait(child, signal, limit);
    let read = |r: Option<&mut dyn std::io::Read>| {
        let mut s = String::new();
        if let Some(r) = r {
            r.read_to_string(&mut s).unwrap();
        }
        s
    };
    let stdout = read(child.stdout.as_mut().map(|r| r as &mut dyn std::io::Read));
    let stderr = read(child.stderr.as_mut().map(|r| r as &mut dyn std::io::Read));
    (status, stdout, stderr)
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A temporary folder with `images/NAME.yaml` files.
pub fn catalog(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join("images").join(format!("{name}.yaml")), body).unwrap();
    }
    dir
}

/// A minimal valid Debian definition body (bootstrap base), to extend or edit in tests.
pub const MINIMAL: &str = "description: test image
os: {distro: debian, version: \"12\", codename: bookworm}
arch: [amd64]
base:
  amd64:
    bootstrap:
      suite: bookworm
";

/// The project venv's python3 (PyYAML, check-jsonschema), or the host's.
pub fn python() -> PathBuf {
    let venv_py = repo().join(".venv/bin/python3");
    if venv_py.exists() {
        venv_py
    } else {
        PathBuf::from("python3")
    }
}

pub fn python_yaml(file: &Path) -> serde_json::Value {
    let out = Command::new(python())
        .args(["-c", "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))"])
        .arg(file)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "PyYAML failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// What [`fake_build`] makes.
pub struct FakeBuild<'a> {
    pub image: &'a str,
    pub version: &'a str,
    /// `build.started` in the manifest (the newest build is the one started last).
    pub started: &'a str,
    /// MiB of patterned guest data (unique per version) in the qcow2.
    pub data_mib: usize,
    pub arch: imgbuild::definition::Arch,
    /// The manifest's `artifact.compression` (the qcow2 itself is uncompressed).
    pub compression: &'a str,
}

impl Default for FakeBuild<'_> {
    fn default() -> Self {
        FakeBuild {
            image: "debian12-base",
            version: "1.0",
            started: "2026-11-23T00:00:00Z",
            data_mib: 8,
            arch: imgbuild::definition::Arch::Amd64,
            compression: "none",
        }
    }
}

/// A dist folder entry as `imgbuild build` writes it: DIST/IMAGE/VERSION with a real qcow2
/// (made by qemu-img from patterned data, so Glance's format check passes and every version
/// differs) and its manifest.json. Returns the artifact's path.
pub fn fake_build(dist: &Path, b: FakeBuild) -> PathBuf {
    use imgbuild::pipeline::manifest::*;
    let dir = dist.join(b.image).join(b.version);
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("raw.img");
    let mut data = vec![0u8; b.data_mib << 20];
    for (i, x) in data.iter_mut().enumerate() {
        *x = (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8;
    }
    data.extend_from_slice(b.version.as_bytes());
    let virtual_size = (data.len() as u64).div_ceil(512) * 512;
    std::fs::write(&raw, &data).unwrap();
    let file = format!("{}-{}-{}.qcow2", b.image, b.version, b.arch);
    let artifact = dir.join(&file);
    let o = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&artifact)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(&raw).unwrap();
    let digests = imgbuild::digest::digest_file(&artifact, |_| {}).unwrap();
    let m = Manifest {
        image: b.image.into(),
        version: b.version.into(),
        arch: b.arch,
        description: "test".into(),
        backend: "qemu".into(),
        accel: "tcg".into(),
        base: BaseRef {
            kind: "bootstrap".into(),
            source: "mmdebstrap bookworm".into(),
            sha256: "0".repeat(64),
            remote: false,
            steps: Vec::new(),
        },
        definition_sha256: "0".repeat(64),
        rendered_sha256: "0".repeat(64),
        artifact: Artifact {
            file,
            format: "qcow2".into(),
            compression: b.compression.into(),
            size: digests.size,
            virtual_size,
        },
        digests,
        smoke: None,
        build: BuildInfo {
            started: b.started.into(),
            duration_seconds: 1.0,
            tool: "imgbuild".into(),
            tool_version: "0".into(),
            git_commit: Some("1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d".into()),
            git_dirty: false,
            host: "linux".into(),
        },
        container_images: Vec::new(),
        layers: Vec::new(),
        bom: None,
    };
    std::fs::write(dir.join("manifest.json"), m.to_json()).unwrap();
    artifact
}

/// Validates a CycloneDX JSON file with CycloneDX's own Python library (the official schema).
pub fn validate_cyclonedx(file: &Path) {
    let python = repo().join(".venv/bin/python");
    let script = "import sys\n\
from cyclonedx.validation.json import JsonStrictValidator\n\
from cyclonedx.schema import SchemaVersion\n\
e = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())\n\
sys.exit(str(e) if e else 0)\n";
    let o = Command::new(&python)
        .args(["-c", script])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (make venv installs it)", python.display()));
    assert!(
        o.status.success(),
        "{} is not valid CycloneDX 1.5: {}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `sh -c SCRIPT` in a private mount namespace (`unshare`): the script may mount a small
/// tmpfs, which ends with it.
pub fn in_mount_namespace(script: &str) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
    ]);
    c
}

/// `imgbuild --json build IMAGE ARGS --version VERSION --out OUT` of the real catalog with the
/// shared e2e cache; asserts it succeeded (the smoke report in the message if not) and returns
/// the version folder and the manifest it printed.
pub fn build_real(
    image: &str,
    version: &str,
    args: &[&str],
    out: &Path,
) -> (PathBuf, serde_json::Value) {
    let mut c = TestCommand::new(&["--json", "build", image]);
    for a in args {
        c = c.arg(a);
    }
    let o = c
        .arg("--version")
        .arg(version)
        .arg("--out")
        .arg(out)
        .cache_dir(e2e_cache())
        .output();
    let (stdout, stderr) = text(&o);
    let dir = out.join(image).join(version);
    let name = format!("{image}-{version}");
    keep_build_log(&name, &stderr);
    assert!(
        o.status.success(),
        "{}",
        build_failure(&name, &stderr, Some(&dir.join("smoke")))
    );
    let m = serde_json::from_str(&stdout).expect("--json prints the manifest");
    (dir, m)
}

/// Where the e2e tests keep each build's whole output (`NAME.log`); scripts/test.sh prints
/// their stage lines (`ok   base (2369.1 s)`, ...) at the end of a run, so that a CI log shows
/// which stage of which build took the time.
pub fn build_logs() -> PathBuf {
    repo().join("target/e2e-logs")
}

/// Keeps a build's output (stderr: stages, progress, errors) as target/e2e-logs/NAME.log.
pub fn keep_build_log(name: &str, stderr: &str) {
    let dir = build_logs();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.log")), stderr).unwrap();
}

/// A failed build's panic message, the cause first: the error and FAIL lines, the smoke
/// checks that failed (from `smoke_dir`/report.json), then the output's last lines without
/// the bootstrap's progress. A CI log shows the start and the end of a long output, and a
/// desktop build prints hundreds of lines before its cause (the run of 7f89411 showed none of
/// it); the whole output is in target/e2e-logs/NAME.log, which the caller keeps with
/// [`keep_build_log`] whether the build passed or not.
pub fn build_failure(name: &str, stderr: &str, smoke_dir: Option<&Path>) -> String {
    let text_of = |l: &str| {
        let l = l.trim_start();
        match l.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((_, rest)) => rest.trim_start().to_string(),
            None => l.to_string(),
        }
    };
    let causes: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            let t = text_of(l);
            t.starts_with("FAIL") || t.starts_with("error")
        })
        .collect();
    let mut msg = format!("build {name} failed\n== its error and FAIL lines\n");
    for l in &causes {
        msg.push_str(l);
        msg.push('\n');
    }
    if let Some(r) = smoke_dir
        .map(|d| d.join("report.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
    {
        msg.push_str("== its smoke report\n");
        if let Some(e) = r["error"].as_str() {
            msg.push_str(&format!("error: {e}\n"));
        }
        msg.push_str(&format!("boot_seconds: {}\n", r["boot_seconds"]));
        for c in r["checks"].as_array().into_iter().flatten() {
            if c["passed"] != true {
                msg.push_str(&format!("FAILED {}: {}\n", c["name"], c["detail"]));
            }
        }
    }
    let rest: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("INFO bootstrap:"))
        .collect();
    msg.push_str(&format!(
        "== its last lines (all {} in target/e2e-logs/{name}.log)\n",
        stderr.lines().count()
    ));
    for l in &rest[rest.len().saturating_sub(60)..] {
        msg.push_str(l);
        msg.push('\n');
    }
    msg
}

/// The layer and base cache the build end-to-end tests share (built once, reused).
pub fn e2e_cache() -> PathBuf {
    repo().join("target/e2e-cache")
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The content of `path` among a cloud-config's write_files; panics if it is not there.
pub fn write_file<'a>(user_data: &'a serde_json::Value, path: &str) -> &'a str {
    user_data["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} is not in user-data"))["content"]
        .as_str()
        .unwrap()
}

/// The smoke report's entry for check `name`; panics with the whole report if there is none.
pub fn smoke_check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("the smoke report has no check {name}: {report:#}"))
}

/// The names in `dir`, sorted; none when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// QEMU processes whose command line mentions `needle`.
pub fn qemu_processes(needle: &str) -> Vec<String> {
    processes_with(needle)
        .into_iter()
        .filter(|l| l.contains("qemu-system"))
        .collect()
}

/// The command lines of running processes (not zombies) that contain `needle`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            if !line.is_empty() && line.contains(needle) {
                found.push(line);
            }
        }
    }
    found
}

/// No QEMU, no work folder in the e2e cache and nothing in dist/IMAGE of `image` at `version`.
pub fn assert_nothing_left(out: &Path, image: &str, version: &str) {
    assert!(
        entries(&out.join(image)).is_empty(),
        "dist/{image} must stay empty, has {:?}",
        entries(&out.join(image))
    );
    let tag = format!("{image}-{version}-amd64.");
    assert!(
        qemu_processes(&tag).is_empty(),
        "a QEMU of {image} is still running"
    );
    let work: Vec<String> = entries(&e2e_cache().join("work"))
        .into_iter()
        .filter(|n| n.starts_with(&tag))
        .collect();
    assert!(work.is_empty(), "work folder left behind: {work:?}");
}

/// Polls `ready` every 200 ms; panics with `what` after `limit`, or when `child` (the build
/// being watched) ends first.
pub fn wait_while_running(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) {
    let started = std::time::Instant::now();
    while !ready() {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("build ended early ({s}) while waiting: {what}");
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Sends `signal` (libc's number) to `child` and waits up to `limit` for it to end.
pub fn signal_and_wait(
    child: &mut std::process::Child,
    signal: i32,
    limit: std::time::Duration,
) -> std::process::ExitStatus {
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build did not stop within {limit:?} after signal {signal}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Runs `code` with smoke.py's functions in scope (the module is loaded, its main() is not run).
pub fn smoke_py(code: &str) -> serde_json::Value {
    let runner = repo().join("cloud-init/guest/smoke.py");
    let prog = format!(
        "import importlib.util, json, sys\n\
         spec = importlib.util.spec_from_file_location('smoke', {runner:?})\n\
         m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n\
         {code}\n"
    );
    let out = Command::new(python())
        .arg("-c")
        .arg(prog)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json on stdout")
}
