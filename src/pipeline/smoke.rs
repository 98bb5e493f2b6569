//! Smoke boot: the artifact boots on a throw-away overlay (the artifact is never written) with
//! a fresh instance-id and a smoke seed; the guest runs the definition's checks and imgbuild's
//! built-in ones (cloud-init clean, host keys and machine-id made at this boot, no build
//! leftovers; last, the guards: no private keys or credential files, identities made at this
//! boot, no undeclared network listener) and reports each on the serial console. Results go to report.json, junit.xml
//! (for GitLab/GitHub test reports) and serial.log, plus a screenshot for desktop images.

use crate::definition::{Arch, Check, Listener, Resolved, SmokeCheck};
use crate::protocol::marker;
use crate::qemu::{self, Accel, QemuError, Vm, VmSpec};
use crate::random_bytes;
use crate::render::cloud_init::to_cloud_config;
use crate::render::userdata::{self, LaunchParams, UserdataError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const RUNNER: &str = include_str!("../../cloud-init/guest/smoke.py");
pub const BUILTIN_CHECKS: [&str; 5] = [
    "cloud-init-no-errors",
    "fresh-ssh-host-keys",
    "fresh-machine-id",
    "fresh-cloud-init-state",
    "no-build-leftovers",
];

/// The built-in checks that run last, after the definition's (so that the services its checks
/// wait for are up): no account but the declared ones, no private keys or credential files
/// baked in, per-instance identities made at this boot, and nothing listening beyond the
/// loopback that nobody declared.
pub const FINAL_CHECKS: [&str; 5] = [
    "accounts-as-declared",
    "no-private-keys",
    "no-credential-files",
    "identities-made-at-first-boot",
    "exposure-allowlist",
];

/// Listeners every image may have without declaring them: the SSH server (every image is
/// entered with SSH; socket-activated on Ubuntu 24.04, so no process is named) and the DHCP
/// client's UDP port 68 (dhclient or systemd-networkd, bound while the lease is renewed).
pub const SYSTEM_LISTENERS: [(u16, crate::definition::Protocol); 2] = [
    (22, crate::definition::Protocol::Tcp),
    (68, crate::definition::Protocol::Udp),
];

/// Every socket that may listen on a non-loopback address on an image of `r`: the system's
/// ([`SYSTEM_LISTENERS`]), the enabled features', the compose stack's exposed ports and the
/// definition's `smoke.listen`.
pub fn allowed_listeners(r: &Resolved) -> Vec<Listener> {
    let mut v: Vec<Listener> = SYSTEM_LISTENERS
        .iter()
        .map(|&(port, protocol)| Listener {
            port,
            protocol,
            process: None,
        })
        .collect();
    v.extend(crate::features::listeners(&r.definition));
    if let Ok(Some(stack)) = crate::render::compose::render(r) {
        // Published without a host_ip after `expose`: docker-proxy listens on all addresses.
        v.extend(
            stack
                .published
                .iter()
                .filter(|p| p.host_ip.is_none())
                .map(|p| Listener::tcp(p.port)),
        );
    }
    v.extend(r.definition.smoke.listen.iter().cloned());
    v
}

/// The accounts an image of `r` may have (the `accounts-as-declared` check): the definition's
/// users and the launch user; only the launch user may have a password, and only when the
/// launch gave one (a desktop password, for RDP).
fn declared_accounts(r: &Resolved, launch: Option<&SmokeLaunch>) -> serde_json::Value {
    let mut users: Vec<&str> = r.definition.users.iter().map(|u| u.name.as_str()).collect();
    users.extend(launch.map(|l| l.user.as_str()));
    json!({
        "users": users,
        "password": launch.map(|l| l.user.as_str()),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("the smoke launch user-data: {0}")]
    Launch(#[from] UserdataError),
    #[error(transparent)]
    Io(#[from] crate::IoError),
    /// The boot ran but checks failed (or the boot itself did): the build fails with this.
    #[error("smoke test failed: {summary}\nreport: {report}")]
    Checks { summary: String, report: String },
}

pub use crate::protocol::CheckOutcome;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SmokeReport {
    pub image: String,
    pub arch: Arch,
    pub artifact: String,
    pub accel: String,
    pub passed: bool,
    pub checks: Vec<CheckOutcome>,
    /// Seconds from QEMU start to the smoke runner's end.
    pub boot_seconds: f64,
    pub screenshot: Option<String>,
    /// Set when the smoke boot itself failed (timeout, crash).
    pub error: Option<String>,
}

impl SmokeReport {
    pub fn failed_checks(&self) -> Vec<&CheckOutcome> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }
}

fn check_json(c: &Check) -> serde_json::Value {
    // validate holds every definition's check to exactly one kind.
    let kind = c.kind().expect("a validated check");
    serde_json::to_value(SmokeCheck {
        name: c.name.clone(),
        kind,
    })
    .expect("plain data")
}

/// What the smoke boot of a desktop image gives the guest at launch, exactly as `imgbuild
/// userdata` would: a user with an SSH key and a VNC password, made fresh for each smoke boot.
#[derive(Clone, Debug)]
pub struct SmokeLaunch {
    pub user: String,
    pub ssh_key: String,
    pub vnc_password: String,
    pub vnc_display: u16,
    /// xrdp is on (the host tries RDP logins when the guest's `rdp-login` check asks).
    pub rdp: bool,
}

impl SmokeLaunch {
    /// A launch for images with a desktop; `None` for the others.
    pub fn for_image(r: &Resolved) -> Option<SmokeLaunch> {
        let desk = r.definition.features.desktop.as_ref()?;
        // An ed25519 public key blob (string "ssh-ed25519", string 32 random bytes); the
        // smoke proves that the given key lands in authorized_keys, nobody logs in with it.
        let mut blob = Vec::new();
        for part in [b"ssh-ed25519".to_vec(), random_bytes(32)] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(&part);
        }
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(blob);
        const ALNUM: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let vnc_password: String = random_bytes(8)
            .iter()
            .map(|b| ALNUM[*b as usize % ALNUM.len()] as char)
            .collect();
        Some(SmokeLaunch {
            user: "smoke".into(),
            ssh_key: format!("ssh-ed25519 {key} imgbuild-smoke"),
            vnc_password,
            vnc_display: desk.vnc_display,
            rdp: desk.rdp,
        })
    }

    pub fn params(&self) -> LaunchParams {
        LaunchParams {
            user: self.user.clone(),
            ssh_keys: vec![self.ssh_key.clone()],
            sudo: false,
            desktop_password: Some(self.vnc_password.clone()),
            shared: None,
            profiles: None,
            stack_host: None,
            k3s: None,
            cinder_volumes: None,
        }
    }
}

/// The checks the guest runs: built-ins first, then the features' and the definition's, then
/// [`FINAL_CHECKS`].
pub fn checks(r: &Resolved, launch: Option<&SmokeLaunch>) -> Vec<serde_json::Value> {
    checks_with_profiles(r, launch, None)
}

/// [`checks`] for a boot with these compose profiles instead of the image's.
pub fn checks_with_profiles(
    r: &Resolved,
    launch: Option<&SmokeLaunch>,
    profiles: Option<&[String]>,
) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = BUILTIN_CHECKS
        .iter()
        .map(|b| SmokeCheck::builtin(b, json!({})))
        .chain(crate::features::smoke_checks(
            &r.definition,
            launch.map(|l| crate::features::LaunchUser {
                user: &l.user,
                ssh_key: &l.ssh_key,
                password: Some(&l.vnc_password),
            }),
        ))
        .map(|c| serde_json::to_value(c).expect("plain data"))
        .collect();
    let stack = crate::render::compose::render(r);
    if let Err(e) = &stack {
        // The stack's checks cannot be planned: say so as a failing check, never drop them.
        let check = SmokeCheck::builtin("stack-renders", json!({"error": e.to_string()}));
        v.push(serde_json::to_value(check).expect("plain data"));
    }
    if let Ok(Some(stack)) = stack {
        let ports: Vec<u16> = stack
            .published
            .iter()
            .filter(|p| p.host_ip.is_some())
            .map(|p| p.port)
            .collect();
        let check = SmokeCheck::builtin("stack-ports-loopback-only", json!({"ports": ports}));
        v.push(serde_json::to_value(check).expect("plain data"));
        if let Some(check) = stack_healthy(r, &stack, profiles) {
            v.push(serde_json::to_value(check).expect("plain data"));
        }
        if let Some(check) = launch.and_then(|l| stack_start_page(r, &stack, l, profiles)) {
            v.push(serde_json::to_value(check).expect("plain data"));
        }
    }
    v.extend(r.definition.smoke.checks.iter().map(check_json));
    for name in FINAL_CHECKS {
        let params = match name {
            "exposure-allowlist" => json!({"allow": allowed_listeners(r)}),
            "accounts-as-declared" => declared_accounts(r, launch),
            _ => json!({}),
        };
        v.push(serde_json::to_value(SmokeCheck::builtin(name, params)).expect("plain data"));
    }
    v
}

/// How long the smoke waits for a baked-in stack to become healthy: first starts run
/// migrations (GitLab's reconfigure takes minutes even with KVM).
pub const STACK_HEALTHY_TIMEOUT_S: u64 = 900;

/// `stack-healthy`: the services that run at boot (the definition's profiles) and whose images
/// are baked in (`prepull`) all reach `healthy`. Services whose images would come from a
/// registry at first start are left out: a smoke boot has no registry to rely on.
fn stack_healthy(
    r: &Resolved,
    stack: &crate::render::compose::ComposeProject,
    profiles: Option<&[String]>,
) -> Option<SmokeCheck> {
    let cs = r.definition.features.compose_stack.as_ref()?;
    let baked: Vec<&crate::render::compose::ServiceImage> = stack
        .services_for(profiles.unwrap_or(&cs.profiles))
        .filter(|s| s.profiles.is_empty() || s.profiles.iter().any(|p| cs.prepull.contains(p)))
        .collect();
    let jobs: Vec<&str> = baked
        .iter()
        .filter(|s| s.job)
        .map(|s| s.service.as_str())
        .collect();
    let baked: Vec<&str> = baked.iter().map(|s| s.service.as_str()).collect();
    if cs.prepull.is_empty() || baked.is_empty() {
        return None;
    }
    Some(SmokeCheck::builtin(
        "stack-healthy",
        json!({
            "compose": crate::render::cloud_init::compose_command(stack),
            "services": baked,
            "jobs": jobs,
            "timeout": STACK_HEALTHY_TIMEOUT_S,
        }),
    ))
}

/// `stack-start-page`: the page lists exactly the services of the booted profiles, on the
/// stack's host, and the launch user reads their own copy of the first-login passwords
/// (0600, theirs, equal to the instance's secrets) without sudo.
fn stack_start_page(
    r: &Resolved,
    stack: &crate::render::compose::ComposeProject,
    l: &SmokeLaunch,
    profiles: Option<&[String]>,
) -> Option<SmokeCheck> {
    use crate::render::compose::Login;
    let cs = r.definition.features.compose_stack.as_ref()?;
    if stack.start.is_empty() {
        return None;
    }
    let booted = profiles.unwrap_or(&cs.profiles);
    let expect: Vec<&str> = stack
        .start
        .iter()
        .filter(|e| e.profiles.is_empty() || e.profiles.iter().any(|p| booted.contains(p)))
        .map(|e| e.service.as_str())
        .collect();
    let secrets: Vec<&str> = stack
        .start
        .iter()
        .filter_map(|e| match &e.login {
            Login::Secret { secret, .. } => Some(secret.as_str()),
            Login::Text(_) => None,
        })
        .collect();
    Some(SmokeCheck::builtin(
        "stack-start-page",
        json!({
            "page": crate::render::cloud_init::start_page_path(&stack.name),
            "expect": expect,
            "host": cs.host,
            "user": l.user,
            "credentials": format!("/home/{}/.config/imgbuild/{}-credentials.env", l.user, stack.name),
            "secrets_env": crate::render::cloud_init::secrets_env_path(&stack.name),
            "secrets": secrets,
        }),
    ))
}

/// The smoke seed's user-data (pure but for the launch's random values): for a desktop image
/// the launch-time user-data of `launch`, then the smoke runner.
pub fn user_data(
    r: &Resolved,
    instance_id: &str,
    launch: Option<&SmokeLaunch>,
    profiles: Option<&[String]>,
) -> Result<String, UserdataError> {
    let checks =
        serde_json::to_string_pretty(&checks_with_profiles(r, launch, profiles)).expect("json");
    let mut doc = match launch {
        Some(l) => userdata::document(r, &l.params())?,
        None => json!({}),
    };
    let mut files = vec![
        json!({"path": "/run/imgbuild-smoke/checks.json", "content": checks, "permissions": "0600"}),
        json!({"path": "/run/imgbuild-smoke/smoke.py", "content": RUNNER, "permissions": "0700"}),
    ];
    if let Some(p) = profiles {
        files.push(userdata::launch_env_file(r, Some(p), None)?);
    }
    let run = json!([
        "env",
        format!("IMGBUILD_SMOKE_INSTANCE={instance_id}"),
        "python3",
        "/run/imgbuild-smoke/smoke.py"
    ]);
    let obj = doc.as_object_mut().expect("a cloud-config map");
    let wf = obj.entry("write_files").or_insert_with(|| json!([]));
    wf.as_array_mut().expect("a list").extend(files);
    let rc = obj.entry("runcmd").or_insert_with(|| json!([]));
    rc.as_array_mut().expect("a list").push(run);
    Ok(to_cloud_config(
        &doc,
        &format!("imgbuild smoke seed for {}", r.name),
    ))
}

pub struct SmokeOptions<'a> {
    pub accel: Accel,
    pub out_dir: &'a Path,
    /// Compose profiles to boot with instead of the image's default (`None`: the image's).
    pub profiles: Option<&'a [String]>,
    pub cancel: &'a AtomicBool,
    pub on_line: &'a mut dyn FnMut(&str),
}

/// A desktop drawn by XFCE (panel, icons, wallpaper) has hundreds of colours; a black screen,
/// a bare X root window or an error box have a handful.
pub const MIN_DESKTOP_COLOURS: usize = 64;
/// How long the host keeps taking VNC frames until one shows a drawn desktop.
/// A give-up limit (a drawn frame ends the wait): a CI run with two build VMs beside the
/// desktop's smoke VM on two cores had XFCE's processes up but not one painted frame after
/// 187 s (its session checks had passed); CI runs have since had four or five TCG VMs at once.
pub const DESKTOP_PAINT_TIMEOUT: Duration = Duration::from_secs(600);

/// A free TCP port on 127.0.0.1 for a QEMU forward.
/// xrdp's port in the guest.
const RDP_PORT: u16 = 3389;

/// How long the host holds one RDP login at most. A give-up limit: each attempt ends as soon
/// as the guest has seen it in xrdp's log (the refusal: `IMGBUILD-SMOKE-RDP-REFUSED`; the
/// grant: the check's result). A fixed 60 s hold ended the wrong password's attempt only then
/// (xrdp keeps a refused client at its login screen), and on a loaded CI host could end the
/// launch password's before xrdp had asked PAM.
const RDP_HOLD: Duration = Duration::from_secs(300);

/// What the guest has seen of the host's RDP logins (serial lines), for the thread that makes
/// them: nothing yet, the wrong password refused, the check judged (or the smoke over).
#[derive(Default, Clone)]
struct RdpSeen(std::sync::Arc<std::sync::atomic::AtomicU8>);

impl RdpSeen {
    const REFUSED: u8 = 1;
    const JUDGED: u8 = 2;
    fn saw(&self, what: u8) {
        self.0.fetch_max(what, Ordering::SeqCst);
    }
    fn has(&self, what: u8) -> bool {
        self.0.load(Ordering::SeqCst) >= what
    }
}

/// The host's RDP logins for the guest's `rdp-login` check, in a thread while the guest
/// waits: a wrong password first (xrdp must refuse it), then the launch's. The guest judges
/// them from xrdp's log; what the client saw is returned for the log.
fn rdp_logins_in_background(
    port: u16,
    l: &SmokeLaunch,
    seen: RdpSeen,
) -> std::thread::JoinHandle<String> {
    let user = l.user.clone();
    let right = l.vnc_password.clone();
    let wrong: String = format!("{}x", crate::hex(&random_bytes(6)));
    std::thread::spawn(move || {
        let mut said = Vec::new();
        for (what, pw, until) in [
            ("wrong password", &wrong, RdpSeen::REFUSED),
            ("launch password", &right, RdpSeen::JUDGED),
        ] {
            match crate::rdp::attempt(port, &user, pw, RDP_HOLD, &|| seen.has(until)) {
                Ok(a) => said.push(format!(
                    "{what}: {} after {:.0} s",
                    match a.exit {
                        Some(c) => format!("FreeRDP exited {c}"),
                        None => "connected, ended by the host".into(),
                    },
                    a.seconds
                )),
                Err(e) => said.push(format!("{what}: {e}")),
            }
        }
        said.join("; ")
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn random_hex(n: usize) -> String {
    crate::hex(&random_bytes(n))
}

/// Boots `artifact` and runs the checks; writes report.json, junit.xml, serial.log (and
/// screenshot.png) into `opts.out_dir`. A failed check is a report with `passed: false`, not
/// an error; a boot that never reaches the end is a report with `error` set.
pub fn smoke(
    r: &Resolved,
    arch: Arch,
    artifact: &Path,
    opts: SmokeOptions,
) -> Result<SmokeReport, SmokeError> {
    let out = opts.out_dir;
    std::fs::create_dir_all(out).map_err(crate::IoError::at(out))?;
    let work = tempfile::Builder::new()
        .prefix(".smoke-")
        .tempdir_in(out)
        .map_err(crate::IoError::at(out))?;
    let w = work.path();
    let instance = format!("imgbuild-smoke-{}", random_hex(8));
    let launch = SmokeLaunch::for_image(r);
    // The host reaches the guest's VNC port as Guacamole or Kasm would, through a forward.
    let vnc_fwd = match &launch {
        Some(l) => Some((
            free_port().map_err(crate::IoError::at(out))?,
            5900 + l.vnc_display,
        )),
        None => None,
    };
    // And its RDP port, as an RDP client would.
    let rdp_fwd = match &launch {
        Some(l) if l.rdp => Some((free_port().map_err(crate::IoError::at(out))?, RDP_PORT)),
        _ => None,
    };
    let seed_dir = w.join("seed");
    std::fs::create_dir_all(&seed_dir).map_err(crate::IoError::at(&seed_dir))?;
    let files = [
        (
            "user-data",
            user_data(r, &instance, launch.as_ref(), opts.profiles)?,
        ),
        (
            "meta-data",
            crate::yaml::to_string(
                &json!({"instance-id": instance, "local-hostname": format!("{}-smoke", r.name)}),
            ),
        ),
        (
            "network-config",
            crate::render::cloud_init::network_config(),
        ),
    ];
    let mut seed_files = Vec::new();
    for (name, content) in &files {
        let p = seed_dir.join(name);
        std::fs::write(&p, content).map_err(crate::IoError::at(&p))?;
        seed_files.push((*name, p));
    }
    let seed_iso = w.join("seed.iso");
    let refs: Vec<(&str, &Path)> = seed_files.iter().map(|(n, p)| (*n, p.as_path())).collect();
    qemu::make_seed_iso(&refs, &seed_iso)?;
    let overlay = w.join("overlay.qcow2");
    qemu::create_overlay(artifact, &overlay, None)?;
    let firmware = if crate::host::uefi(r, arch) {
        qemu::Firmware::Uefi
    } else {
        qemu::Firmware::Bios
    };
    let uefi_vars = if firmware == qemu::Firmware::Uefi {
        let (_, vars) = qemu::uefi_firmware(arch).ok_or(QemuError::NoFirmware(arch))?;
        let copy = w.join("vars.fd");
        std::fs::copy(&vars, &copy).map_err(crate::IoError::at(&copy))?;
        Some(copy)
    } else {
        None
    };
    let serial = out.join("serial.log");
    let spec = VmSpec {
        arch,
        accel: opts.accel,
        firmware,
        cpus: crate::host::vm_cpus(r, crate::host::vm_cpu_limit()),
        memory_mib: r.definition.build.memory,
        disk: Some(overlay),
        seed_iso: Some(seed_iso),
        serial_log: serial.clone(),
        qmp: true,
        uefi_vars,
        hostfwd: vnc_fwd.into_iter().chain(rdp_fwd).collect(),
        extra_disks: Vec::new(),
        extra_nics: Vec::new(),
        raw_disks: Vec::new(),
        kernel: None,
    };
    let started = Instant::now();
    let mut vm = Vm::start(&spec)?;
    let mut results: Vec<CheckOutcome> = Vec::new();
    let on_line = opts.on_line;
    let mut rdp_logins: Option<std::thread::JoinHandle<String>> = None;
    let rdp_seen = RdpSeen::default();
    let wait = vm.wait_for_with(
        &[marker::SMOKE_DONE, marker::KERNEL_PANIC, "end Kernel panic"],
        Duration::from_secs(r.definition.smoke.timeout as u64 * 60),
        "the smoke checks",
        opts.cancel,
        &mut |line| {
            on_line(line);
            if line.contains(marker::SMOKE_RDP_READY) && rdp_logins.is_none() {
                if let (Some(l), Some((port, _))) = (&launch, rdp_fwd) {
                    rdp_logins = Some(rdp_logins_in_background(port, l, rdp_seen.clone()));
                }
            }
            if line.contains(marker::SMOKE_RDP_REFUSED) {
                rdp_seen.saw(RdpSeen::REFUSED);
            }
            if let Some(c) = crate::protocol::smoke_result(line) {
                if c.name == "rdp-login" {
                    rdp_seen.saw(RdpSeen::JUDGED);
                }
                // The runner writes to the console and to stdout (which cloud-init also
                // copies to the console): the first report of a check counts.
                if !results.iter().any(|x| x.name == c.name) {
                    results.push(c);
                }
            }
        },
    );
    let boot_seconds = started.elapsed().as_secs_f64();
    rdp_seen.saw(RdpSeen::JUDGED);
    if let Some(h) = rdp_logins {
        let said = h
            .join()
            .unwrap_or_else(|_| "the RDP client thread panicked".into());
        tracing::info!("smoke: RDP logins from the host: {said}");
    }
    let mut error = None;
    match wait {
        Ok((0, _)) => {}
        Ok((_, line)) => error = Some(format!("the guest crashed: {line}\n{}", vm.serial_tail())),
        Err(QemuError::Interrupted) => return Err(QemuError::Interrupted.into()),
        Err(e) => error = Some(e.to_string()),
    }
    let wants_shot = r
        .definition
        .smoke
        .screenshot
        .unwrap_or(r.definition.features.desktop.is_some());
    let mut screenshot = None;
    let png = out.join("screenshot.png");
    if let (Some(l), Some((host_port, _)), None) = (&launch, vnc_fwd, &error) {
        // The desktop as a VNC client sees it, logged in with the launch's password.
        let t0 = Instant::now();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], host_port));
        // XFCE paints its first session slowly under TCG: frames are taken until one is
        // drawn (or the time is up), and the last one is the screenshot.
        let mut captured =
            crate::vnc::capture(addr, Some(&l.vnc_password), Duration::from_secs(60));
        let mut frames = 1;
        while let Ok(f) = &captured {
            if f.distinct_colours(MIN_DESKTOP_COLOURS) >= MIN_DESKTOP_COLOURS
                || t0.elapsed() > DESKTOP_PAINT_TIMEOUT
            {
                break;
            }
            std::thread::sleep(Duration::from_secs(10));
            captured = crate::vnc::capture(addr, Some(&l.vnc_password), Duration::from_secs(60));
            frames += 1;
        }
        let outcome = match captured {
            Ok(frame) => {
                let colours = frame.distinct_colours(4096);
                let written = frame.write_png(&png);
                if written.is_ok() {
                    screenshot = Some("screenshot.png".to_string());
                }
                let drawn = colours >= MIN_DESKTOP_COLOURS;
                (drawn && written.is_ok(), format!(
                    "logged in to VNC :{} ({}) with the launch password; frame {frames}: {}x{} with {}{} colours{}{}",
                    l.vnc_display, frame.desktop_name, frame.width, frame.height,
                    colours, if colours >= 4096 { "+" } else { "" },
                    if drawn { "" } else { ": too few for a drawn desktop" },
                    match written { Ok(()) => String::new(), Err(e) => format!("; {e}") },
                ))
            }
            Err(e) => (false, e.to_string()),
        };
        results.push(CheckOutcome {
            name: "vnc-login-and-desktop".into(),
            kind: "host".into(),
            passed: outcome.0,
            detail: outcome.1,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    if wants_shot && error.is_none() && screenshot.is_none() {
        match vm.screendump(&png) {
            Ok(()) => screenshot = Some("screenshot.png".to_string()),
            Err(e) => error = Some(format!("screenshot failed: {e}")),
        }
    }
    vm.kill();
    // Every expected check must have reported.
    let mut expected = checks(r, launch.as_ref());
    if launch.is_some() {
        expected.push(json!({"name": "vnc-login-and-desktop", "kind": "host"}));
    }
    for c in expected {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        if !results.iter().any(|x| x.name == name) {
            results.push(CheckOutcome {
                name,
                kind: c["kind"].as_str().unwrap_or_default().into(),
                passed: false,
                detail: "did not report (the smoke boot did not get this far)".into(),
                seconds: 0.0,
            });
        }
    }
    let passed = error.is_none() && results.iter().all(|c| c.passed);
    let report = SmokeReport {
        image: r.name.clone(),
        arch,
        artifact: artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        accel: opts.accel.as_str().into(),
        passed,
        checks: results,
        boot_seconds,
        screenshot,
        error,
    };
    let rp = out.join("report.json");
    std::fs::write(
        &rp,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .map_err(crate::IoError::at(&rp))?;
    let jp = out.join("junit.xml");
    std::fs::write(&jp, junit(&report)).map_err(crate::IoError::at(&jp))?;
    Ok(report)
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {
                o.push_str(&format!("&#x{:x};", c as u32))
            }
            c => o.push(c),
        }
    }
    o
}

/// JUnit XML as GitLab and GitHub test reports read it.
pub fn junit(r: &SmokeReport) -> String {
    let failures = r.checks.iter().filter(|c| !c.passed).count() + usize::from(r.error.is_some());
    let total: f64 = r.checks.iter().map(|c| c.seconds).sum();
    let suite = format!("imgbuild-smoke.{}.{}", r.image, r.arch);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"imgbuild smoke\" tests=\"{}\" failures=\"{failures}\" time=\"{:.2}\">\n",
        r.checks.len() + usize::from(r.error.is_some()),
        r.boot_seconds
    ));
    x.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.2}\">\n",
        xml_escape(&suite),
        r.checks.len() + usize::from(r.error.is_some())
    ));
    if let Some(e) = &r.error {
        x.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"boot\" time=\"{:.2}\">\n      <failure message=\"smoke boot failed\">{}</failure>\n    </testcase>\n",
            xml_escape(&suite),
            r.boot_seconds,
            xml_escape(e)
        ));
    }
    for c in &r.checks {
        x.push_str(&format!(
            "    <testcase classname=\"{}.{}\" name=\"{}\" time=\"{:.2}\">",
            xml_escape(&suite),
            xml_escape(&c.kind),
            xml_escape(&c.name),
            c.seconds
        ));
        if c.passed {
            x.push_str(&format!(
                "<system-out>{}</system-out></testcase>\n",
                xml_escape(&c.detail)
            ));
        } else {
            x.push_str(&format!(
                "\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                xml_escape(c.detail.lines().next().unwrap_or("failed")),
                xml_escape(&c.detail)
            ));
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// A serial-line handler that shows each check's result once, as the runner reports it.
pub fn show_results(p: &mut crate::progress::Progress) -> impl FnMut(&str) + '_ {
    let mut seen = std::collections::HashSet::new();
    move |line: &str| {
        if let Some(c) = crate::protocol::smoke_result(line) {
            if seen.insert(c.name.clone()) {
                p.status(
                    &format!("{} {}", if c.passed { "ok  " } else { "FAIL" }, c.name),
                    true,
                );
            }
        }
    }
}

/// The smoke as the manifest records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SmokeSummary {
    pub passed: bool,
    pub checks: usize,
    pub failed: usize,
    pub boot_seconds: f64,
    pub report: String,
    pub junit: String,
    pub screenshot: Option<String>,
}

/// The pipeline's smoke stage: boots the compacted artifact, shows each check as it reports,
/// and fails the build (keeping the smoke's serial log, report and screenshot with the build's
/// logs) unless every check passed.
pub fn stage(
    r: &Resolved,
    arch: Arch,
    artifact: &Path,
    accel: Accel,
    version_dir: &Path,
    cancel: &AtomicBool,
    p: &mut crate::progress::Progress,
) -> Result<SmokeSummary, SmokeError> {
    p.stage("smoke");
    let smoke_dir = version_dir.join("smoke");
    let logs = version_dir.join("logs");
    let report = {
        let mut on_line = show_results(p);
        smoke(
            r,
            arch,
            artifact,
            SmokeOptions {
                accel,
                out_dir: &smoke_dir,
                profiles: None,
                cancel,
                on_line: &mut on_line,
            },
        )
    }?;
    let failed = report.failed_checks();
    if !report.passed {
        let mut parts: Vec<String> = failed
            .iter()
            .map(|c| format!("check `{}`: {}", c.name, c.detail))
            .collect();
        if let Some(e) = &report.error {
            parts.insert(0, e.clone());
        }
        for (from, to) in [
            ("serial.log", "serial-smoke.log"),
            ("report.json", "smoke-report.json"),
            ("screenshot.png", "smoke-screenshot.png"),
        ] {
            let _ = std::fs::copy(smoke_dir.join(from), logs.join(to));
        }
        return Err(SmokeError::Checks {
            summary: parts.join("\n  "),
            report: "smoke/report.json".into(),
        });
    }
    p.done(&format!(
        "{} checks passed in {:.0} s",
        report.checks.len(),
        report.boot_seconds
    ));
    Ok(SmokeSummary {
        passed: report.passed,
        checks: report.checks.len(),
        failed: failed.len(),
        boot_seconds: report.boot_seconds,
        report: "smoke/report.json".into(),
        junit: "smoke/junit.xml".into(),
        screenshot: report.screenshot.map(|s| format!("smoke/{s}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_counts_and_escapes() {
        let r = SmokeReport {
            image: "img".into(),
            arch: Arch::Amd64,
            artifact: "a.qcow2".into(),
            accel: "tcg".into(),
            passed: false,
            checks: vec![
                CheckOutcome {
                    name: "ok".into(),
                    kind: "unit".into(),
                    passed: true,
                    detail: "fine".into(),
                    seconds: 1.0,
                },
                CheckOutcome {
                    name: "bad<&>".into(),
                    kind: "command".into(),
                    passed: false,
                    detail: "exit 1 \"x\"".into(),
                    seconds: 2.0,
                },
            ],
            boot_seconds: 40.0,
            screenshot: None,
            error: None,
        };
        let x = junit(&r);
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("name=\"bad&lt;&amp;&gt;\""), "{x}");
        assert!(
            x.contains("<failure message=\"exit 1 &quot;x&quot;\">"),
            "{x}"
        );
    }
}
