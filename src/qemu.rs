//! The one place that knows QEMU: accelerator probing (never trusting that /dev/kvm exists),
//! firmware, disks and seeds, the serial console, QMP, and making sure no QEMU outlives
//! imgbuild (PR_SET_PDEATHSIG at spawn, kill on drop).

use crate::definition::Arch;
use crate::exec::{Cmd, ExecError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("{what} did not happen within {secs} s; last serial console lines:\n{tail}")]
    Timeout {
        what: String,
        secs: u64,
        tail: String,
    },
    #[error("QEMU exited ({status}) before {what}; last serial console lines:\n{tail}\nQEMU said: {stderr}")]
    Exited {
        what: String,
        status: ExitStatus,
        tail: String,
        stderr: String,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("the guest hung before {what} (the kernel kept reporting RCU stalls, which under TCG means a vCPU is no longer scheduled); last serial console lines:\n{tail}")]
    Hung { what: String, tail: String },
    #[error("QMP: {0}")]
    Qmp(String),
    /// QEMU paused the guest because a disk write failed for lack of space (its default
    /// `werror=enospc`): the host's filesystem under the VM's disk is full.
    #[error(
        "the host ran out of disk space for the VM's disk during {what}: No space left on device"
    )]
    DiskFull { what: String },
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("no UEFI firmware for {0} (install ovmf / qemu-efi-aarch64)")]
    NoFirmware(Arch),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccelChoice {
    pub accel: Accel,
    /// Why, in the user's terms: what was probed and what it found.
    pub reason: String,
    /// What QEMU or the probe said, verbatim (shown by `-v` and `imgbuild doctor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AccelChoice {
    fn tcg(reason: impl Into<String>, detail: Option<String>) -> AccelChoice {
        AccelChoice {
            accel: Accel::Tcg,
            reason: reason.into(),
            detail,
        }
    }

    /// The line a build or smoke prints: the accelerator, why, and what TCG means for time.
    pub fn summary(&self) -> String {
        match self.accel {
            Accel::Kvm => format!("accelerator: kvm ({})", self.reason),
            Accel::Tcg => format!(
                "accelerator: tcg, emulated ({}); VMs run several times slower than under KVM, \
                 so builds and smoke boots take minutes more (`imgbuild doctor` shows the probe)",
                self.reason
            ),
        }
    }
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
    fn args(self, arch: Arch) -> Vec<String> {
        match self {
            Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
            Accel::Tcg => vec![
                "-accel".into(),
                "tcg,thread=multi".into(),
                "-cpu".into(),
                tcg_cpu(arch).into(),
            ],
        }
    }
}

/// The CPU model under TCG. arm64's `max` signs pointers with QARMA, which TCG emulates at
/// great cost; `pauth-impdef=on` uses QEMU's cheaper implementation-defined algorithm (QEMU's
/// docs/system/arm/cpu-features.rst, "TCG VCPU Features").
pub fn tcg_cpu(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "max",
        Arch::Arm64 => "max,pauth-impdef=on",
    }
}

pub use crate::host::{qemu_binary, uefi_firmware};

static ACCEL: OnceLock<AccelChoice> = OnceLock::new();

/// KVM if a guest really runs under it here, else TCG, with the reason. `IMGBUILD_ACCEL=tcg|kvm`
/// skips the probe. Probed once per process.
pub fn probe_accel(arch: Arch) -> AccelChoice {
    if arch != Arch::host() {
        return AccelChoice::tcg(
            format!(
                "an {arch} guest on an {} host can only be emulated",
                Arch::host()
            ),
            None,
        );
    }
    ACCEL
        .get_or_init(|| {
            let choice = match std::env::var("IMGBUILD_ACCEL").as_deref() {
                Ok("tcg") => AccelChoice::tcg("IMGBUILD_ACCEL=tcg", None),
                Ok("kvm") => AccelChoice {
                    accel: Accel::Kvm,
                    reason: "IMGBUILD_ACCEL=kvm".into(),
                    detail: None,
                },
                _ => {
                    let memo = ProbeMemo::for_this_boot(arch);
                    match memo.as_ref().and_then(ProbeMemo::read) {
                        Some(c) => c,
                        None => {
                            let c = probe_kvm(arch);
                            if let Some(m) = &memo {
                                m.write(&c);
                            }
                            c
                        }
                    }
                }
            };
            if let Some(d) = &choice.detail {
                tracing::debug!("KVM probe: {d}");
            }
            choice
        })
        .clone()
}

/// A KVM probe's answer, kept for the rest of this boot of the host: the probe boots firmware
/// and waits up to 8 s for it, which every `imgbuild build` and `smoke` paid on a host whose
/// KVM runs no guest. One file per user and arch in the temporary folder, used only while the
/// host's boot id, /dev/kvm and the QEMU binary are what they were when it was written, and
/// only if this user owns it. `IMGBUILD_ACCEL` still decides without a probe.
struct ProbeMemo {
    path: PathBuf,
    stamp: String,
}

impl ProbeMemo {
    fn for_this_boot(arch: Arch) -> Option<ProbeMemo> {
        use std::os::unix::fs::MetadataExt;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let qemu = crate::exec::which(qemu_binary(arch))?;
        let q = std::fs::metadata(&qemu).ok()?;
        let kvm = std::fs::metadata("/dev/kvm")
            .map(|m| format!("{}:{}:{}", m.ino(), m.mode(), m.rdev()))
            .unwrap_or_else(|_| "none".into());
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        Some(ProbeMemo {
            path: std::env::temp_dir().join(format!("imgbuild-accel-{uid}-{arch}.json")),
            stamp: format!(
                "{} {} {}:{} {kvm}",
                boot.trim(),
                qemu.display(),
                q.len(),
                q.mtime()
            ),
        })
    }

    fn read(&self) -> Option<AccelChoice> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(&self.path).ok()?;
        // SAFETY: as above.
        if !m.is_file() || m.uid() != unsafe { libc::getuid() } {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()?;
        if v["stamp"] != self.stamp.as_str() {
            return None;
        }
        let c: AccelChoice = serde_json::from_value(v["choice"].clone()).ok()?;
        tracing::debug!(
            "KVM probe: the answer of an earlier run in this boot ({})",
            self.path.display()
        );
        Some(c)
    }

    /// Best effort: a memo that cannot be written means the next run probes again.
    fn write(&self, c: &AccelChoice) {
        let body = serde_json::json!({"stamp": self.stamp, "choice": c}).to_string();
        let dir = self.path.parent().unwrap_or(Path::new("/tmp"));
        if let Ok(mut f) = tempfile::NamedTempFile::new_in(dir) {
            if f.write_all(body.as_bytes()).is_ok() {
                let _ = f.persist(&self.path);
            }
        }
    }
}

/// Boots UEFI firmware under KVM and watches the serial console for the boot manager. On
/// hosts whose /dev/kvm cannot run a stock guest (e.g. pagetable-based kvm_pvm) QEMU aborts
/// or the firmware dies, and the answer is TCG.
fn probe_kvm(arch: Arch) -> AccelChoice {
    let tcg = |reason: &str| AccelChoice::tcg(reason, None);
    let kvm = Path::new("/dev/kvm");
    if !kvm.exists() {
        return tcg("this host offers no KVM: /dev/kvm does not exist");
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .is_err()
    {
        return tcg(
            "/dev/kvm exists but this user may not open it (add the user to the kvm group)",
        );
    }
    let Some((code, vars)) = uefi_firmware(arch) else {
        return tcg(&format!(
            "KVM could not be tried: the probe boots UEFI firmware, which is not installed (apt-get install {})",
            crate::host::uefi_package(arch)
        ));
    };
    let Ok(dir) = tempfile::tempdir() else {
        return tcg("KVM could not be tried: no temporary folder for the probe");
    };
    let vars_copy = dir.path().join("vars.fd");
    if std::fs::copy(&vars, &vars_copy).is_err() {
        return tcg("KVM could not be tried: the UEFI variable store could not be copied");
    }
    let spec = VmSpec {
        arch,
        accel: Accel::Kvm,
        firmware: Firmware::Uefi,
        cpus: 1,
        memory_mib: 256,
        disk: None,
        seed_iso: None,
        serial_log: dir.path().join("serial.log"),
        qmp: false,
        uefi_vars: Some(vars_copy),
        hostfwd: Vec::new(),
        extra_disks: Vec::new(),
        extra_nics: Vec::new(),
        raw_disks: Vec::new(),
        kernel: None,
    };
    let _ = code;
    let mut vm = match Vm::start(&spec) {
        Ok(vm) => vm,
        Err(e) => {
            return AccelChoice::tcg(
                "KVM could not be tried: QEMU did not start for the probe",
                Some(e.to_string()),
            )
        }
    };
    let never = AtomicBool::new(false);
    match vm.wait_for(
        &["BdsDxe", "Boot Manager", "UEFI Interactive Shell", "Shell>"],
        Duration::from_secs(8),
        "UEFI boot manager under KVM",
        &never,
    ) {
        Ok(_) => AccelChoice {
            accel: Accel::Kvm,
            reason: "a test VM ran UEFI firmware to its boot manager under KVM".into(),
            detail: None,
        },
        Err(QemuError::Exited { stderr, .. }) => AccelChoice::tcg(
            "/dev/kvm is there, but QEMU stopped when a test VM started under it (a KVM that \
             runs no stock guest, e.g. a nested or paravirtual one)",
            Some(stderr.lines().last().unwrap_or("QEMU exited").to_string()),
        ),
        Err(e) => AccelChoice::tcg(
            "/dev/kvm is there, but a test VM did not reach its firmware's boot manager under it",
            Some(first_line(&e.to_string()).to_string()),
        ),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// A VM to start.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub arch: Arch,
    pub accel: Accel,
    pub firmware: Firmware,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The system disk (qcow2), attached as virtio with discard.
    pub disk: Option<PathBuf>,
    /// A NoCloud seed ISO.
    pub seed_iso: Option<PathBuf>,
    pub serial_log: PathBuf,
    /// Offer QMP (on a UNIX socket in a private temp folder: a socket path must fit sun_path's
    /// 108 bytes, which a work folder in a deep checkout would not).
    pub qmp: bool,
    /// A writable copy of the UEFI variable store (UEFI only).
    pub uefi_vars: Option<PathBuf>,
    /// (host port on 127.0.0.1, guest port).
    pub hostfwd: Vec<(u16, u16)>,
    /// More qcow2 disks, each (file, serial): the guest finds them as
    /// /dev/disk/by-id/virtio-SERIAL. Written through to the host (guest flushes honoured).
    pub extra_disks: Vec<(PathBuf, String)>,
    /// More NICs after the first, each on a user-mode network of its own with no way out
    /// (`restrict=on`), with these MAC addresses: a lab's second NIC, kept without an address.
    pub extra_nics: Vec<String>,
    /// Raw disks right after the system disk (so /dev/vdb, /dev/vdc, ... in that order), each
    /// (file, serial): a boot-free layer's payload, a kernel export.
    pub raw_disks: Vec<(PathBuf, String)>,
    /// Boot this kernel directly instead of the disk's boot loader.
    pub kernel: Option<DirectKernel>,
}

/// A kernel, its initrd and command line, booted by QEMU itself (`-kernel`).
#[derive(Clone, Debug, PartialEq)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
}

impl VmSpec {
    /// The QEMU command line, with QMP on `qmp_socket` if given (`Vm::start` gives one when
    /// `self.qmp`).
    pub fn cmd(&self, qmp_socket: Option<&Path>) -> Result<Cmd, QemuError> {
        let mut c = Cmd::new(qemu_binary(self.arch))
            .args([
                "-name",
                "imgbuild",
                "-nodefaults",
                "-no-user-config",
                "-no-reboot",
            ])
            .args([
                "-machine",
                if self.arch == Arch::Arm64 {
                    "virt"
                } else {
                    "q35"
                },
            ])
            .args(self.accel.args(self.arch))
            .args([
                "-smp",
                &self.cpus.to_string(),
                "-m",
                &self.memory_mib.to_string(),
            ])
            .args([
                "-display",
                "none",
                "-device",
                if self.arch == Arch::Arm64 {
                    "virtio-gpu-pci"
                } else {
                    "VGA"
                },
            ])
            .arg("-serial")
            .arg(format!("file:{}", self.serial_log.display()))
            .args([
                "-object",
                "rng-random,filename=/dev/urandom,id=rng0",
                "-device",
                "virtio-rng-pci,rng=rng0",
            ]);
        if self.firmware == Firmware::Uefi || self.arch == Arch::Arm64 {
            let (code, _) = uefi_firmware(self.arch).ok_or(QemuError::NoFirmware(self.arch))?;
            c = c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ));
            if let Some(v) = &self.uefi_vars {
                c = c
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=1,file={}", v.display()));
            }
        }
        if let Some(d) = &self.disk {
            c = c.arg("-drive").arg(format!(
                "file={},if=none,id=disk0,format=qcow2,discard=unmap,detect-zeroes=unmap,cache=unsafe",
                d.display()
            ));
            // A direct kernel boot must not be overridden by the disk's boot index.
            c = c.args([
                "-device",
                if self.kernel.is_some() {
                    "virtio-blk-pci,drive=disk0"
                } else {
                    "virtio-blk-pci,drive=disk0,bootindex=0"
                },
            ]);
        }
        for (i, (path, serial)) in self.raw_disks.iter().enumerate() {
            c = c.arg("-drive").arg(format!(
                "file={},if=none,id=raw{i},format=raw,cache=writeback",
                path.display()
            ));
            c = c
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=raw{i},serial={serial}"));
        }
        if let Some(k) = &self.kernel {
            c = c
                .arg("-kernel")
                .arg(&k.kernel)
                .arg("-initrd")
                .arg(&k.initrd)
                .arg("-append")
                .arg(&k.append);
        }
        for (i, (path, serial)) in self.extra_disks.iter().enumerate() {
            c = c.arg("-drive").arg(format!(
                "file={},if=none,id=extra{i},format=qcow2,discard=unmap,cache=writeback",
                path.display()
            ));
            c = c
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=extra{i},serial={serial}"));
        }
        if let Some(s) = &self.seed_iso {
            c = c.arg("-drive").arg(format!(
                "file={},if=none,id=seed,format=raw,readonly=on,media=cdrom",
                s.display()
            ));
            c = c.args([
                "-device",
                "virtio-scsi-pci,id=scsi0",
                "-device",
                "scsi-cd,drive=seed,bus=scsi0.0",
            ]);
        }
        let mut net = String::from("user,id=net0");
        for (h, g) in &self.hostfwd {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
        }
        c = c.args(["-netdev", &net, "-device", "virtio-net-pci,netdev=net0"]);
        for (i, mac) in self.extra_nics.iter().enumerate() {
            let id = format!("net{}", i + 1);
            c = c
                .arg("-netdev")
                .arg(format!("user,id={id},restrict=on"))
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev={id},mac={mac}"));
        }
        if let Some(q) = qmp_socket {
            c = c
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", q.display()));
        }
        Ok(c)
    }
}

/// A running QEMU. Dropping it kills and reaps the process.
pub struct Vm {
    child: Option<Child>,
    serial: SerialReader,
    stderr_log: PathBuf,
    qmp_socket: Option<PathBuf>,
    /// The private folder holding the QMP socket, removed with the Vm.
    _socket_dir: Option<tempfile::TempDir>,
    /// RCU stall reports seen on the console.
    stalls: u32,
    /// When QMP was last asked whether the guest is paused.
    status_checked: Instant,
}

/// How often a wait asks QEMU (over QMP) whether it paused the guest.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// After this many RCU stall reports a guest counts as hung.
pub const HUNG_AFTER_STALL_REPORTS: u32 = 4;

/// Follows a serial console log file (written by QEMU's `-serial file:`) line by line.
pub struct SerialReader {
    path: PathBuf,
    offset: u64,
    pending: String,
    tail: std::collections::VecDeque<String>,
}

impl SerialReader {
    pub fn new(path: &Path) -> SerialReader {
        SerialReader {
            path: path.to_path_buf(),
            offset: 0,
            pending: String::new(),
            tail: Default::default(),
        }
    }

    /// New complete lines since the last call, ANSI escapes removed.
    pub fn new_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return lines;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return lines;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return lines;
        }
        self.offset += buf.len() as u64;
        self.pending.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=i).collect();
            let line = strip_ansi(line.trim_end_matches(['\n', '\r']));
            self.tail.push_back(line.clone());
            if self.tail.len() > 60 {
                self.tail.pop_front();
            }
            lines.push(line);
        }
        lines
    }

    /// The last (up to 60) lines, including an unfinished one.
    pub fn tail(&mut self) -> String {
        self.new_lines();
        let mut t: Vec<String> = self.tail.iter().cloned().collect();
        if !self.pending.trim().is_empty() {
            t.push(strip_ansi(&self.pending));
        }
        t.join("\n")
    }
}

impl Vm {
    pub fn start(spec: &VmSpec) -> Result<Vm, QemuError> {
        let socket_dir = if spec.qmp {
            Some(
                tempfile::Builder::new()
                    .prefix("imgbuild-qmp-")
                    .tempdir()
                    .map_err(crate::IoError::at(&std::env::temp_dir()))?,
            )
        } else {
            None
        };
        let qmp_socket = socket_dir.as_ref().map(|d| d.path().join("qmp.sock"));
        let cmd = spec.cmd(qmp_socket.as_deref())?;
        let stderr_log = spec.serial_log.with_extension("qemu.log");
        std::fs::write(&spec.serial_log, b"").map_err(crate::IoError::at(&spec.serial_log))?;
        let err = std::fs::File::create(&stderr_log).map_err(crate::IoError::at(&stderr_log))?;
        tracing::debug!(target: "exec", "{}", cmd.cmdline());
        let mut std_cmd = cmd.std();
        std_cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        // The kernel kills QEMU when the thread that started it goes away, whatever the reason.
        unsafe {
            std_cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = std_cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                QemuError::Exec(ExecError::NotFound {
                    program: cmd.program(),
                    hint: crate::exec::install_hint(&cmd.program())
                        .map(|h| format!(" (install: {h})"))
                        .unwrap_or_default(),
                })
            } else {
                QemuError::Io(crate::IoError {
                    path: PathBuf::from(cmd.program()),
                    source: e,
                })
            }
        })?;
        Ok(Vm {
            child: Some(child),
            serial: SerialReader::new(&spec.serial_log),
            stderr_log,
            qmp_socket,
            _socket_dir: socket_dir,
            stalls: 0,
            status_checked: Instant::now(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn new_lines(&mut self) -> Vec<String> {
        self.serial.new_lines()
    }

    /// The last lines of the serial console.
    pub fn serial_tail(&mut self) -> String {
        self.serial.tail()
    }

    fn stderr_text(&self) -> String {
        crate::exec::tail(
            &std::fs::read_to_string(&self.stderr_log).unwrap_or_default(),
            2000,
        )
    }

    /// Waits until a serial line carries one of `patterns`; returns its index and the line.
    /// Every line seen is passed to `on_line` (for progress output). Lines quoted from a guest
    /// log (`IMGBUILD-LOG ...`) never match.
    pub fn wait_for_with(
        &mut self,
        patterns: &[&str],
        timeout: Duration,
        what: &str,
        cancel: &AtomicBool,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(usize, String), QemuError> {
        let start = Instant::now();
        loop {
            for line in self.new_lines() {
                on_line(&line);
                if let Some(i) = crate::protocol::matching(patterns, &line) {
                    return Ok((i, line));
                }
                if line.contains("detected stalls on CPUs") {
                    self.stalls += 1;
                    if self.stalls >= HUNG_AFTER_STALL_REPORTS {
                        let tail = self.serial_tail();
                        self.kill();
                        return Err(QemuError::Hung {
                            what: what.into(),
                            tail,
                        });
                    }
                }
            }
            self.stop_if_cancelled(cancel)?;
            self.stop_if_disk_full(what)?;
            if let Some(status) = self.try_wait()? {
                // Read what was written just before the exit.
                for line in self.new_lines() {
                    on_line(&line);
                    if let Some(i) = crate::protocol::matching(patterns, &line) {
                        return Ok((i, line));
                    }
                }
                return Err(QemuError::Exited {
                    what: what.into(),
                    status,
                    tail: self.serial_tail(),
                    stderr: self.stderr_text(),
                });
            }
            self.stop_if_late(start, timeout, what)?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_for(
        &mut self,
        patterns: &[&str],
        timeout: Duration,
        what: &str,
        cancel: &AtomicBool,
    ) -> Result<(usize, String), QemuError> {
        self.wait_for_with(patterns, timeout, what, cancel, &mut |_| {})
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        match self.child.as_mut() {
            None => Ok(None),
            Some(c) => c.try_wait().map_err(|source| {
                QemuError::Io(crate::IoError {
                    path: "qemu".into(),
                    source,
                })
            }),
        }
    }

    /// Waits for QEMU to exit (the guest powered off); returns its status.
    pub fn wait_exit(
        &mut self,
        timeout: Duration,
        what: &str,
        cancel: &AtomicBool,
    ) -> Result<ExitStatus, QemuError> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait()? {
                self.child = None;
                return Ok(s);
            }
            self.stop_if_cancelled(cancel)?;
            self.stop_if_disk_full(what)?;
            self.stop_if_late(start, timeout, what)?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops a guest QEMU paused on a full host disk (asked over QMP every few seconds, when
    /// the VM has QMP): it would otherwise sit paused until the timeout.
    fn stop_if_disk_full(&mut self, what: &str) -> Result<(), QemuError> {
        if self.qmp_socket.is_none() || self.status_checked.elapsed() < STATUS_EVERY {
            return Ok(());
        }
        self.status_checked = Instant::now();
        let Ok(status) = self.qmp("query-status", serde_json::Value::Null) else {
            return Ok(());
        };
        if status["status"] == "io-error" {
            self.kill();
            return Err(QemuError::DiskFull { what: what.into() });
        }
        Ok(())
    }

    /// Kills QEMU when the build was cancelled (SIGINT/SIGTERM).
    fn stop_if_cancelled(&mut self, cancel: &AtomicBool) -> Result<(), QemuError> {
        if cancel.load(Ordering::SeqCst) {
            self.kill();
            return Err(QemuError::Interrupted);
        }
        Ok(())
    }

    /// Kills QEMU when `timeout` has passed since `start`; the error carries the console's tail.
    fn stop_if_late(
        &mut self,
        start: Instant,
        timeout: Duration,
        what: &str,
    ) -> Result<(), QemuError> {
        if start.elapsed() >= timeout {
            let tail = self.serial_tail();
            self.kill();
            return Err(QemuError::Timeout {
                what: what.into(),
                secs: timeout.as_secs(),
                tail,
            });
        }
        Ok(())
    }

    /// Kills QEMU and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A QMP command; returns its `return` value.
    pub fn qmp(
        &self,
        command: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, QemuError> {
        let sock = self
            .qmp_socket
            .as_ref()
            .ok_or_else(|| QemuError::Qmp("no QMP socket".into()))?;
        let mut s = UnixStream::connect(sock).map_err(crate::IoError::at(sock))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut reader = std::io::BufReader::new(s.try_clone().map_err(crate::IoError::at(sock))?);
        let read_reply =
            |reader: &mut std::io::BufReader<UnixStream>| -> Result<serde_json::Value, QemuError> {
                loop {
                    let mut line = String::new();
                    std::io::BufRead::read_line(reader, &mut line)
                        .map_err(crate::IoError::at(sock))?;
                    if line.is_empty() {
                        return Err(QemuError::Qmp("connection closed".into()));
                    }
                    let v: serde_json::Value =
                        serde_json::from_str(&line).map_err(|e| QemuError::Qmp(e.to_string()))?;
                    if v.get("event").is_some() {
                        continue;
                    }
                    if let Some(e) = v.get("error") {
                        return Err(QemuError::Qmp(e.to_string()));
                    }
                    return Ok(v);
                }
            };
        read_reply(&mut reader)?; // greeting
        writeln!(s, "{}", serde_json::json!({"execute": "qmp_capabilities"}))
            .map_err(crate::IoError::at(sock))?;
        read_reply(&mut reader)?;
        let mut cmd = serde_json::json!({ "execute": command });
        if !args.is_null() {
            cmd["arguments"] = args;
        }
        writeln!(s, "{cmd}").map_err(crate::IoError::at(sock))?;
        Ok(read_reply(&mut reader)?
            .get("return")
            .cloned()
            .unwrap_or_default())
    }

    /// Saves the display as PNG (QEMU ≥ 7.1 writes PNG itself).
    pub fn screendump(&self, png: &Path) -> Result<(), QemuError> {
        self.qmp(
            "screendump",
            serde_json::json!({ "filename": png, "format": "png" }),
        )?;
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for n in chars.by_ref() {
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// Image information from `qemu-img info`.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct ImgInfo {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
}

pub fn img_info(path: &Path) -> Result<ImgInfo, QemuError> {
    let out = Cmd::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .read()?;
    serde_json::from_str(&out).map_err(|e| QemuError::Qmp(format!("qemu-img info: {e}")))
}

/// A copy-on-write overlay on `backing`, optionally larger.
pub fn create_overlay(backing: &Path, overlay: &Path, size: Option<u64>) -> Result<(), QemuError> {
    let fmt = img_info(backing)?.format;
    let backing_abs = std::fs::canonicalize(backing).map_err(crate::IoError::at(backing))?;
    let mut c = Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", &fmt, "-b"])
        .arg(&backing_abs)
        .arg(overlay);
    if let Some(s) = size {
        let base = img_info(backing)?.virtual_size;
        c = c.arg(s.max(base).to_string());
    }
    c.run()?;
    Ok(())
}

/// Points overlay `disk` at `backing` without touching its data (`qemu-img rebase -u`): a
/// layer fetched from the remote cache names its builder's path to the layer below.
pub fn rebase_unsafe(disk: &Path, backing: &Path) -> Result<(), QemuError> {
    let fmt = img_info(backing)?.format;
    let abs = std::fs::canonicalize(backing).map_err(crate::IoError::at(backing))?;
    Cmd::new("qemu-img")
        .args(["rebase", "-u", "-F", &fmt, "-b"])
        .arg(&abs)
        .arg(disk)
        .run()?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zlib,
    Zstd,
}

/// Converts (and so compacts: unallocated and zeroed clusters are dropped) `src` to `dst`.
pub fn convert(
    src: &Path,
    dst: &Path,
    format: &str,
    compression: Compression,
) -> Result<(), QemuError> {
    let mut c = Cmd::new("qemu-img").args(["convert", "-O", format]);
    if format == "qcow2" {
        match compression {
            Compression::None => {}
            Compression::Zlib => c = c.arg("-c"),
            Compression::Zstd => c = c.args(["-c", "-o", "compression_type=zstd"]),
        }
    }
    c.args(["-m", "4", "-W"]).arg(src).arg(dst).run()?;
    Ok(())
}

/// Does this qemu-img write zstd-compressed qcow2 (QEMU ≥ 5.1, built with zstd)? Probed by
/// creating a tiny image with it.
pub fn qemu_supports_zstd() -> bool {
    static ZSTD: OnceLock<bool> = OnceLock::new();
    *ZSTD.get_or_init(|| {
        let Ok(dir) = tempfile::tempdir() else {
            return false;
        };
        Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd"])
            .arg(dir.path().join("probe.qcow2"))
            .arg("1M")
            .run()
            .is_ok()
    })
}

/// A NoCloud seed ISO (volume label `cidata`) from the given files.
pub fn make_seed_iso(files: &[(&str, &Path)], out: &Path) -> Result<(), QemuError> {
    let dir = tempfile::tempdir().map_err(crate::IoError::at(out))?;
    for (name, src) in files {
        std::fs::copy(src, dir.path().join(name)).map_err(crate::IoError::at(src))?;
    }
    Cmd::new("xorriso")
        .args([
            "-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-rock", "-o",
        ])
        .arg(out)
        .arg(dir.path())
        .run()?;
    Ok(())
}

pub fn qemu_version(arch: Arch) -> Option<String> {
    Cmd::new(qemu_binary(arch))
        .arg("--version")
        .read()
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_answer_is_reused_only_with_the_same_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let memo = |stamp: &str| ProbeMemo {
            path: dir.path().join("accel.json"),
            stamp: stamp.into(),
        };
        assert_eq!(memo("boot-1").read(), None, "nothing probed yet");
        let c = AccelChoice::tcg("no KVM here", Some("qemu said so".into()));
        memo("boot-1").write(&c);
        assert_eq!(memo("boot-1").read(), Some(c));
        // Another boot, /dev/kvm or QEMU binary: probe again.
        assert_eq!(memo("boot-2").read(), None);
        std::fs::write(dir.path().join("accel.json"), "not json").unwrap();
        assert_eq!(memo("boot-1").read(), None);
        // This boot's real stamp names the boot and the QEMU binary.
        if let Some(m) = ProbeMemo::for_this_boot(Arch::host()) {
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
            assert!(m.stamp.starts_with(boot.trim()), "{}", m.stamp);
            assert!(m.stamp.contains(qemu_binary(Arch::host())), "{}", m.stamp);
        }
    }

    #[test]
    fn the_accelerator_line_speaks_the_users_terms_and_keeps_qemus_text_for_v() {
        let c = AccelChoice::tcg(
            "/dev/kvm is there, but QEMU stopped",
            Some("qemu: ../accel/kvm/kvm-all.c:1234: assertion failed".into()),
        );
        let line = c.summary();
        assert!(
            line.starts_with("accelerator: tcg, emulated (/dev/kvm is there"),
            "{line}"
        );
        assert!(
            line.contains("imgbuild doctor") && line.contains("slower"),
            "{line}"
        );
        assert!(
            !line.contains("assertion"),
            "raw QEMU text only at -v: {line}"
        );
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\u{1b}[0;32m OK \u{1b}[0m done\r"), " OK  done");
    }
}
