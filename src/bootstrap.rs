//! `bootstrap` bases: a bootable qcow2 made from an apt mirror with mmdebstrap, without loop
//! devices (the build host may have none; mmdebstrap's own mounts in the tree live in a mount
//! namespace of its own). The disk is laid out like Ubuntu's
//! cloud images: p14 BIOS boot, p15 EFI system partition, p1 root (labelled `rootfs`) last so
//! growpart can grow it. The root filesystem is written straight into the raw file with
//! `mkfs.ext4 -d`; GRUB boots it from BIOS (core.img in p14, boot code in the MBR with the
//! sector pointers patched as grub-bios-setup does) and from UEFI (the removable-media path
//! on the ESP, filled with mtools). This is how air-gapped builds work from a local mirror,
//! and how this project gets real Debian bases where only Debian's archive is reachable.

use crate::definition::{Arch, Bootstrap};
use crate::exec::{Cmd, ExecError};
use crate::features::Step;
use sha2::{Digest, Sha256};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Bump when the recipe changes, so cached bases are rebuilt.
/// 4: the base's kernel export beside its disk (`kernel_dir`).
pub const RECIPE_VERSION: u32 = 4;

/// The initramfs is made once, at the end: while packages go in, the kernel's postinst and
/// initramfs-tools' trigger would each make it (measured on an arm64 bootstrap through
/// qemu-user: 164 s and 197 s of its 753 s). dpkg-divert keeps the real update-initramfs
/// aside behind a stub until the customize hook puts it back and runs it.
const DEFER_INITRAMFS: &str = "--essential-hook=chroot \"$1\" dpkg-divert --quiet --local --rename --add --divert /usr/sbin/update-initramfs.imgbuild /usr/sbin/update-initramfs && printf '#!/bin/sh\\necho \"update-initramfs: deferred to the end of the bootstrap\"\\n' > \"$1\"/usr/sbin/update-initramfs && chmod 0755 \"$1\"/usr/sbin/update-initramfs";
/// dpkg without its fsync of every file it unpacks (`--force-unsafe-io`, dpkg(1)): the tree is
/// a scratch folder until mkfs copies it into the disk image, and a bootstrap that stops
/// midway leaves nothing anyway. The layers' apt work runs with it too, as cloud-init's does.
/// Only while mmdebstrap runs (its `--dpkgopt` would stay in the image's dpkg.cfg.d).
const UNSAFE_IO_ON: &str = "--setup-hook=mkdir -p \"$1\"/etc/dpkg/dpkg.cfg.d && echo force-unsafe-io > \"$1\"/etc/dpkg/dpkg.cfg.d/99imgbuild-unsafe-io";
const UNSAFE_IO_OFF: &str =
    "--customize-hook=rm -f \"$1\"/etc/dpkg/dpkg.cfg.d/99imgbuild-unsafe-io";
const MAKE_INITRAMFS: &str = "--customize-hook=rm -f \"$1\"/usr/sbin/update-initramfs && chroot \"$1\" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs && chroot \"$1\" update-initramfs -c -k all";

const SECTOR: u64 = 512;
const BIOS_BOOT_START: u64 = 2048;
const BIOS_BOOT_SECTORS: u64 = 4 * 2048; // 4 MiB
const ESP_SECTORS: u64 = 106 * 2048; // 106 MiB

/// Packages every bootstrap base has besides the definition's.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "cloud-init",
    "cloud-guest-utils",
    "openssh-server",
    "sudo",
    "netplan.io",
    "systemd-resolved",
    "isc-dhcp-client",
    "iproute2",
    "netbase",
    "procps",
    "ca-certificates",
    "e2fsprogs",
    "gdisk",
    "fdisk",
    "python3",
    "locales",
    "gpg",
    "dirmngr",
    "apt-transport-https",
    "curl",
    "less",
    "qemu-guest-agent",
];

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Io(#[from] crate::IoError),
    /// A foreign-arch tree needs the kernel to run that arch's programs through QEMU.
    #[error("an {arch} bootstrap on an {host} host runs {arch} programs through qemu-user, but binfmt_misc has no enabled `{entry}` entry ({why}); install qemu-user-static and register it: scripts/install-host-tools.sh")]
    NoBinfmt {
        arch: Arch,
        host: Arch,
        entry: String,
        why: String,
    },
    #[error("{0}")]
    Layout(String),
    #[error("interrupted")]
    Interrupted,
}

pub fn kernel_package(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "linux-image-cloud-amd64",
        Arch::Arm64 => "linux-image-cloud-arm64",
    }
}

/// Packages a tree of `arch` needs besides [`BASE_PACKAGES`]: its kernel and, on arm64, GRUB's
/// arm64-efi modules (Debian ships them only as an arm64 package, so an amd64 host's
/// grub-mkimage builds the boot loader from the tree's copy; Ubuntu's arm64 cloud images carry
/// the same package).
pub fn arch_packages(arch: Arch) -> Vec<&'static str> {
    match arch {
        Arch::Amd64 => vec![kernel_package(arch)],
        Arch::Arm64 => vec![kernel_package(arch), "grub-efi-arm64-bin"],
    }
}

/// The binfmt_misc entry through which the kernel runs `arch`'s programs (Debian's
/// qemu-user-static registers `qemu-aarch64`).
pub fn binfmt_entry(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-x86_64",
        Arch::Arm64 => "qemu-aarch64",
    }
}

/// Whether this host can run `arch`'s programs in a tree: natively, or through an enabled
/// binfmt_misc entry. The error says what is missing.
pub fn check_foreign_arch(arch: Arch) -> Result<(), BootstrapError> {
    let host = Arch::host();
    if arch == host {
        return Ok(());
    }
    let entry = binfmt_entry(arch);
    let path = Path::new("/proc/sys/fs/binfmt_misc").join(entry);
    let why = match std::fs::read_to_string(&path) {
        Ok(s) if s.lines().next() == Some("enabled") => return Ok(()),
        Ok(_) => format!("{} is disabled", path.display()),
        Err(_) if !Path::new("/proc/sys/fs/binfmt_misc/status").exists() => {
            "binfmt_misc is not mounted at /proc/sys/fs/binfmt_misc".to_string()
        }
        Err(_) => format!("no {}", path.display()),
    };
    Err(BootstrapError::NoBinfmt {
        arch,
        host,
        entry: entry.to_string(),
        why,
    })
}

/// The cache key: every input of the recipe, hashed (the base steps too, when there are any).
pub fn cache_key(spec: &Bootstrap, arch: Arch, steps: &[Step]) -> String {
    let mut h = Sha256::new();
    let mut canon = serde_json::json!({
        "recipe": RECIPE_VERSION,
        "arch": arch,
        "suite": spec.suite,
        "mirror": spec.mirror,
        "components": spec.components,
        "packages": spec.packages,
        "size_gib": spec.size_gib,
        "base_packages": BASE_PACKAGES,
    });
    if spec.recommends {
        // Only when set, so that the keys of existing bases stay what they were.
        canon["recommends"] = true.into();
    }
    if !spec.from_suite.is_empty() {
        canon["from_suite"] = serde_json::json!(spec.from_suite);
        canon["pin"] = pin_preferences(spec).into();
    }
    if !steps.is_empty() {
        canon["steps"] = steps
            .iter()
            .map(|s| serde_json::json!([s.name, s.script]))
            .collect();
    }
    h.update(canon.to_string().as_bytes());
    crate::hex(&h.finalize())
}

/// The apt preferences that take `from_suite`'s packages, and only them, from their suites:
/// every other package of such a suite at priority 1 (never chosen over the main suite), the
/// named ones at 990 (chosen over it), as features/docker.rs pins Docker in a guest.
pub fn pin_preferences(spec: &Bootstrap) -> String {
    let mut s = String::from("# imgbuild bootstrap: packages from other suites, and only them.\n");
    for (suite, pkgs) in &spec.from_suite {
        s.push_str(&format!(
            "\nPackage: *\nPin: release n={suite}\nPin-Priority: 1\n\nPackage: {}\nPin: release n={suite}\nPin-Priority: 990\n",
            pkgs.join(" ")
        ));
    }
    s
}

/// Where the bootstrap's pin lives while mmdebstrap installs (removed before the tree becomes
/// the base).
const PIN_FILE: &str = "/etc/apt/preferences.d/imgbuild-bootstrap";

/// mmdebstrap's extra arguments for `from_suite`: a sources line per suite (after the main
/// mirror), the pin written before apt first reads its lists, and both taken out of the tree
/// at the end (mmdebstrap writes every given source into the tree's sources.list).
fn from_suite_args(spec: &Bootstrap) -> (Vec<String>, Vec<String>) {
    if spec.from_suite.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let q = crate::exec::quote;
    let lines: Vec<String> = spec
        .from_suite
        .keys()
        .map(|suite| format!("deb {} {suite} {}", spec.mirror, spec.components.join(" ")))
        .collect();
    let mut hooks = vec![
        format!(
            "--setup-hook=mkdir -p \"$1\"/etc/apt/preferences.d && printf %s {} > \"$1\"{PIN_FILE}",
            q(&pin_preferences(spec))
        ),
        format!("--customize-hook=rm -f \"$1\"{PIN_FILE}"),
    ];
    for l in &lines {
        hooks.push(format!(
            "--customize-hook=for f in \"$1\"/etc/apt/sources.list \"$1\"/etc/apt/sources.list.d/*.list; do [ -f \"$f\" ] && {{ grep -vxF {} \"$f\" > \"$f.imgbuild\" || true; mv \"$f.imgbuild\" \"$f\"; }}; done; true",
            q(l)
        ));
    }
    (lines, hooks)
}

/// mmdebstrap's customize hooks for the base steps: each says its name (a phase line the
/// progress report shows) and runs in the tree with `sh -e`, as a layer's runner would run it.
fn step_hooks(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| {
            format!(
                "--customize-hook=echo {} && chroot \"$1\" sh -e -c {}",
                crate::exec::quote(&format!("I: imgbuild base step {}...", s.name)),
                crate::exec::quote(&s.script)
            )
        })
        .collect()
}

fn check(cancel: &AtomicBool) -> Result<(), BootstrapError> {
    if cancel.load(Ordering::SeqCst) {
        Err(BootstrapError::Interrupted)
    } else {
        Ok(())
    }
}

/// Builds the base into `out` (qcow2), using `work` for the tree and the raw disk. `out` appears
/// only when complete.
pub fn bootstrap(
    spec: &Bootstrap,
    arch: Arch,
    steps: &[Step],
    work: &Path,
    out: &Path,
    debs: Option<&Path>,
    cancel: &AtomicBool,
) -> Result<(), BootstrapError> {
    check_foreign_arch(arch)?;
    std::fs::create_dir_all(work).map_err(crate::IoError::at(work))?;
    let root = work.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(crate::IoError::at(&root))?;
    }
    let mut include: Vec<String> = arch_packages(arch).iter().map(|s| s.to_string()).collect();
    include.extend(BASE_PACKAGES.iter().map(|s| s.to_string()));
    include.extend(spec.packages.iter().cloned());
    include.extend(spec.from_suite.values().flatten().cloned());
    let (extra_sources, pin_hooks) = from_suite_args(spec);
    tracing::info!("bootstrap: mmdebstrap {} from {}", spec.suite, spec.mirror);
    if crate::exec::which("mmdebstrap").is_none() {
        return Err(ExecError::NotFound {
            program: "mmdebstrap".into(),
            hint: crate::exec::install_hint("mmdebstrap")
                .map(|h| format!(" (install: {h})"))
                .unwrap_or_default(),
        }
        .into());
    }
    // mmdebstrap mounts /proc, /sys and /dev/pts in the tree while it runs; in a mount
    // namespace of its own those mounts end with it, however it ends (a killed build left them
    // on the host before, under the cache, where removing the tree ran into them).
    let mut c = Cmd::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "mmdebstrap"])
        // --verbose: apt's and dpkg's own lines instead of progress bars, which the progress
        // report below counts.
        .args(["--variant=minbase", "--mode=root", "--verbose"]);
    if spec.recommends {
        c = c.arg("--aptopt=Apt::Install-Recommends \"true\"");
    }
    // The base steps run before the initramfs is made: what they install or purge may trigger
    // it, which the deferral absorbs.
    c = c
        .arg(UNSAFE_IO_ON)
        .arg(DEFER_INITRAMFS)
        .args(step_hooks(steps))
        .arg(MAKE_INITRAMFS)
        .args(&pin_hooks);
    if let Some(d) = debs {
        // Shared downloads: the packages of earlier bootstraps go in, this one's come out
        // (before mmdebstrap empties the archive folder); essential packages are kept for it.
        let d = std::fs::canonicalize(d).map_err(crate::IoError::at(d))?;
        let q = crate::exec::quote(&d.to_string_lossy());
        c = c
            .arg("--skip=essential/unlink")
            .arg(format!(
                "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/partial && cp -a {q}/. \"$1\"/var/cache/apt/archives/"
            ))
            .arg(format!(
                "--customize-hook=cp -au \"$1\"/var/cache/apt/archives/*.deb {q}/ 2>/dev/null || true"
            ));
    }
    let c = c
        .arg(UNSAFE_IO_OFF)
        .arg(format!("--architectures={arch}"))
        .arg(format!("--components={}", spec.components.join(",")))
        .arg(format!("--include={}", include.join(",")))
        .arg(&spec.suite)
        .arg(&root)
        .arg(&spec.mirror)
        .args(&extra_sources);
    run_stoppable(
        &c,
        &work.join("mmdebstrap.log"),
        cancel,
        HEARTBEAT,
        &mut |s| tracing::info!("bootstrap: {s}"),
    )?;
    check(cancel)?;
    configure_tree(&root, arch)?;
    check(cancel)?;
    let raw = work.join("disk.raw");
    assemble_disk(
        &root,
        &raw,
        spec.size_gib as u64 * 1024 * 1024 * 1024,
        work,
        arch,
    )?;
    check(cancel)?;
    // Without it the first layer boots in full: a warning, not a failed base.
    if let Err(e) = export_kernel(&root, arch, &kernel_dir(out)) {
        tracing::warn!("no kernel export beside the base ({e}): its first layer boots in full");
    }
    publish_disk(&raw, out)?;
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// The raw disk as the cache's qcow2 `out`, whole or not at all: a failed conversion (a full
/// disk) takes its `.part` and the kernel export beside `out` along (a CI run here left a
/// 2.9 GB `.qcow2.part` and the `.kernel` folder of a base that never was).
fn publish_disk(raw: &Path, out: &Path) -> Result<(), BootstrapError> {
    let tmp = out.with_extension("qcow2.part");
    let made = Cmd::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(raw)
        .arg(&tmp)
        .run()
        .map_err(BootstrapError::from)
        .and_then(|_| {
            std::fs::rename(&tmp, out)
                .map_err(crate::IoError::at(out))
                .map_err(BootstrapError::from)
        });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir_all(kernel_dir(out));
    }
    made
}

/// Where a bootstrapped base's kernel export goes beside its disk `out` (`KEY.qcow2` →
/// `KEY.kernel/`): the kernel, initrd and command line that boot it, so that the layer above
/// it can be boot-free (pipeline/provision/native.rs), as a layer's own export.
pub fn kernel_dir(out: &Path) -> std::path::PathBuf {
    out.with_extension("kernel")
}

/// The kernel command line the base's GRUB boots with (grub_cfg).
pub fn kernel_cmdline(arch: Arch) -> String {
    let serial = match arch {
        Arch::Amd64 => "ttyS0",
        Arch::Arm64 => "ttyAMA0",
    };
    format!("root=LABEL=rootfs ro console=tty1 console={serial},115200n8")
}

/// Copies the tree's kernel and initrd (what /vmlinuz and /initrd.img point at, which GRUB
/// boots) with the command line and version into `to`, whole or not at all.
fn export_kernel(root: &Path, arch: Arch, to: &Path) -> Result<(), BootstrapError> {
    let part = to.with_extension("kernel.part");
    for d in [&part, &to.to_path_buf()] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(crate::IoError::at(d))?;
        }
    }
    let target = |link: &str| -> Result<std::path::PathBuf, BootstrapError> {
        let l = root.join(link);
        let t = std::fs::read_link(&l).map_err(crate::IoError::at(&l))?;
        Ok(root.join(t.strip_prefix("/").unwrap_or(&t)))
    };
    let (vmlinuz, initrd) = (target("vmlinuz")?, target("initrd.img")?);
    let version = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    std::fs::create_dir_all(&part).map_err(crate::IoError::at(&part))?;
    for (from, name) in [(&vmlinuz, "vmlinuz"), (&initrd, "initrd.img")] {
        let dst = part.join(name);
        std::fs::copy(from, &dst).map_err(crate::IoError::at(from))?;
    }
    write(
        &part.join("cmdline"),
        &format!("{}\n", kernel_cmdline(arch)),
    )?;
    write(&part.join("version"), &format!("{version}\n"))?;
    std::fs::rename(&part, to).map_err(crate::IoError::at(to))?;
    Ok(())
}

/// How often a running bootstrap says where it is, at the least.
const HEARTBEAT: Duration = Duration::from_secs(45);

/// What mmdebstrap's output (with `--verbose`) tells about its progress.
#[derive(Debug, Default, PartialEq)]
struct Phase {
    /// mmdebstrap's last `I: ...` line.
    phase: String,
    downloaded: usize,
    unpacked: usize,
    set_up: usize,
}

impl Phase {
    /// Takes one output line; true when it starts a new phase. mmdebstrap's own phase lines
    /// end with `...` (`I: extracting archives...`); other `I:` lines come from package
    /// scripts (`I: /initrd.img is now a symlink ...`) and are no phase.
    fn line(&mut self, l: &str) -> bool {
        if let Some(p) = l
            .strip_prefix("I: ")
            .filter(|p| p.trim_end().ends_with("..."))
        {
            self.phase = p.trim().trim_end_matches("...").trim().to_string();
            return true;
        }
        if l.starts_with("Get:") {
            self.downloaded += 1;
        } else if l.starts_with("Unpacking ") {
            self.unpacked += 1;
        } else if l.starts_with("Setting up ") {
            self.set_up += 1;
        }
        false
    }

    fn describe(&self, elapsed: Duration) -> String {
        let phase = if self.phase.is_empty() {
            "starting"
        } else {
            &self.phase
        };
        format!(
            "{phase} ({} packages downloaded, {} unpacked, {} set up; {} s)",
            self.downloaded,
            self.unpacked,
            self.set_up,
            elapsed.as_secs()
        )
    }
}

/// Runs `cmd` with its output in `log`, stopping it (and all it started) when `cancel` is set.
/// Says where it is (`on_status`) at each new phase and at least every `every`.
fn run_stoppable(
    cmd: &Cmd,
    log: &Path,
    cancel: &AtomicBool,
    every: Duration,
    on_status: &mut dyn FnMut(&str),
) -> Result<(), BootstrapError> {
    let out = std::fs::File::create(log).map_err(crate::IoError::at(log))?;
    let err = out.try_clone().map_err(crate::IoError::at(log))?;
    let mut group = crate::exec::ProcessGroup::spawn(cmd, out.into(), err.into())?;
    let started = Instant::now();
    let mut reader = crate::qemu::SerialReader::new(log);
    let mut phase = Phase::default();
    let mut said = Instant::now();
    loop {
        let mut new_phase = false;
        for l in reader.new_lines() {
            new_phase |= phase.line(&l);
        }
        if new_phase || said.elapsed() >= every {
            on_status(&phase.describe(started.elapsed()));
            said = Instant::now();
        }
        if let Some(status) = group.try_wait().map_err(crate::IoError::at(log))? {
            if status.success() {
                return Ok(());
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(cmd.failed(status, &text).into());
        }
        if cancel.load(Ordering::SeqCst) {
            group.stop();
            return Err(BootstrapError::Interrupted);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn write(path: &Path, content: &str) -> Result<(), BootstrapError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(crate::IoError::at(d))?;
    }
    Ok(std::fs::write(path, content).map_err(crate::IoError::at(path))?)
}

/// GRUB's menu for `arch`: no menu wait (as Ubuntu's cloud images: every build layer, smoke
/// and instance boot would pay it), the kernel's console on the serial port QEMU logs (the
/// 16550 `ttyS0` on x86, the virt machine's PL011 `ttyAMA0` on arm64, where GRUB itself writes
/// through the firmware's console, which AAVMF mirrors to that port).
pub fn grub_cfg(arch: Arch) -> String {
    let (terminal, serial) = match arch {
        Arch::Amd64 => (
            "serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n",
            "ttyS0",
        ),
        Arch::Arm64 => ("", "ttyAMA0"),
    };
    debug_assert!(kernel_cmdline(arch).contains(serial));
    format!(
        "# imgbuild bootstrap base (no menu wait, as Ubuntu's cloud images: every build
# layer, smoke and instance boot would pay it)
set timeout=0
{terminal}menuentry 'Debian GNU/Linux' {{
  search --no-floppy --label rootfs --set=root
  linux /vmlinuz {cmdline}
  initrd /initrd.img
}}
",
        cmdline = kernel_cmdline(arch)
    )
}

const GRUB_EMBED: &str = "search --no-floppy --label rootfs --set=root
set prefix=($root)/boot/grub
configfile $prefix/grub.cfg
";

/// What a cloud image has that mmdebstrap does not: fstab, locale, cloud-init's datasources,
/// networking through netplan (as on Ubuntu), a boot menu; and no per-instance state.
pub fn configure_tree(root: &Path, arch: Arch) -> Result<(), BootstrapError> {
    write(
        &root.join("etc/fstab"),
        "LABEL=rootfs / ext4 defaults,discard,errors=remount-ro 0 1\n",
    )?;
    write(&root.join("etc/hostname"), "localhost\n")?;
    write(
        &root.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    )?;
    write(&root.join("etc/default/locale"), "LANG=C.UTF-8\n")?;
    write(
        &root.join("etc/cloud/cloud.cfg.d/90-imgbuild.cfg"),
        "# imgbuild bootstrap base\ndatasource_list: [NoCloud, ConfigDrive, OpenStack, None]\nlocale: C.UTF-8\nmanage_etc_hosts: true\nsystem_info:\n  network:\n    renderers: [netplan]\n",
    )?;
    write(&root.join("boot/grub/grub.cfg"), &grub_cfg(arch))?;
    Cmd::new("chroot")
        .arg(root)
        .args([
            "systemctl",
            "enable",
            "systemd-networkd.service",
            "systemd-resolved.service",
        ])
        .run()?;
    // Per-instance state is made at first boot.
    std::fs::write(root.join("etc/machine-id"), "").map_err(crate::IoError::at(root))?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id.exists() && !dbus_id.is_symlink() {
        std::fs::remove_file(&dbus_id).map_err(crate::IoError::at(&dbus_id))?;
    }
    for e in std::fs::read_dir(root.join("etc/ssh"))
        .map_err(crate::IoError::at(root))?
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(e.path()).map_err(crate::IoError::at(&e.path()))?;
        }
    }
    let _ = std::fs::remove_file(root.join("var/lib/systemd/random-seed"));
    Ok(())
}

/// The partition layout for a disk of `size` bytes: (start, sectors) of p14, p15, p1.
pub fn layout(size: u64) -> Result<[(u64, u64); 3], BootstrapError> {
    let total = size / SECTOR;
    let esp_start = BIOS_BOOT_START + BIOS_BOOT_SECTORS;
    let root_start = esp_start + ESP_SECTORS;
    if total < root_start + 34 + 2048 * 512 {
        return Err(BootstrapError::Layout(format!(
            "a disk of {size} bytes is too small (at least {} MiB)",
            (root_start + 34 + 2048 * 512) / 2048 + 1
        )));
    }
    // The backup GPT takes the last 33 sectors; keep the root 1 MiB-aligned in size.
    let root_sectors = ((total - 34 - root_start) / 2048) * 2048;
    Ok([
        (BIOS_BOOT_START, BIOS_BOOT_SECTORS),
        (esp_start, ESP_SECTORS),
        (root_start, root_sectors),
    ])
}

/// Writes partition table, root filesystem, ESP and both boot loaders into `raw`.
pub fn assemble_disk(
    root: &Path,
    raw: &Path,
    size: u64,
    work: &Path,
    arch: Arch,
) -> Result<(), BootstrapError> {
    let [bios, esp, rootp] = layout(size)?;
    let f = std::fs::File::create(raw).map_err(crate::IoError::at(raw))?;
    f.set_len(size).map_err(crate::IoError::at(raw))?;
    drop(f);
    Cmd::new("sgdisk")
        .args(["--clear", "--disk-guid=R"])
        .arg(format!("--new=14:{}:{}", bios.0, bios.0 + bios.1 - 1))
        .args(["--typecode=14:ef02", "--change-name=14:bios"])
        .arg(format!("--new=15:{}:{}", esp.0, esp.0 + esp.1 - 1))
        .args(["--typecode=15:ef00", "--change-name=15:UEFI"])
        .arg(format!("--new=1:{}:{}", rootp.0, rootp.0 + rootp.1 - 1))
        .args(["--typecode=1:8300", "--change-name=1:rootfs"])
        .arg(raw)
        .run()?;
    tracing::info!("bootstrap: writing the root filesystem");
    Cmd::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "rootfs",
            "-b",
            "4096",
            "-O",
            "^orphan_file,^metadata_csum_seed",
        ])
        .arg("-E")
        .arg(format!("offset={}", rootp.0 * SECTOR))
        .arg("-d")
        .arg(root)
        .arg(raw)
        .arg(format!("{}k", rootp.1 * SECTOR / 1024))
        .run()?;

    let embed = work.join("grub-embed.cfg");
    write(&embed, GRUB_EMBED)?;
    // UEFI: GRUB on the removable-media path of a FAT ESP. arm64's modules come from the
    // tree (grub-efi-arm64-bin, see arch_packages); the host's grub-mkimage builds any target.
    let (target, efi_name, modules) = match arch {
        Arch::Amd64 => ("x86_64-efi", "BOOTX64.EFI", None),
        Arch::Arm64 => (
            "arm64-efi",
            "BOOTAA64.EFI",
            Some(root.join("usr/lib/grub/arm64-efi")),
        ),
    };
    let efi = work.join(efi_name);
    let mut mkimage = Cmd::new("grub-mkimage");
    if let Some(d) = &modules {
        mkimage = mkimage.arg("-d").arg(d);
    }
    // serial/terminal: x86's console is the 16550; on arm64 GRUB writes through the firmware.
    let console_modules: &[&str] = match arch {
        Arch::Amd64 => &["serial", "terminal"],
        Arch::Arm64 => &[],
    };
    mkimage
        .args(["-O", target, "-p", "/boot/grub", "-c"])
        .arg(&embed)
        .arg("-o")
        .arg(&efi)
        .args(console_modules)
        .args([
            "part_gpt",
            "part_msdos",
            "ext2",
            "fat",
            "search",
            "search_label",
            "normal",
            "linux",
            "configfile",
            "echo",
            "test",
            "gzio",
            "efi_gop",
            "all_video",
        ])
        .run()?;
    let esp_img = work.join("esp.img");
    let _ = std::fs::remove_file(&esp_img);
    Cmd::new("mkfs.vfat")
        .args(["-F", "32", "-n", "UEFI", "-C"])
        .arg(&esp_img)
        .arg((esp.1 * SECTOR / 1024).to_string())
        .run()?;
    Cmd::new("mmd")
        .arg("-i")
        .arg(&esp_img)
        .args(["::/EFI", "::/EFI/BOOT"])
        .run()?;
    Cmd::new("mcopy")
        .arg("-i")
        .arg(&esp_img)
        .arg(&efi)
        .arg(format!("::/EFI/BOOT/{efi_name}"))
        .run()?;
    let esp_bytes = std::fs::read(&esp_img).map_err(crate::IoError::at(&esp_img))?;
    write_at(raw, esp.0 * SECTOR, &esp_bytes)?;
    if arch != Arch::Amd64 {
        // No BIOS on arm64: the BIOS boot partition stays empty (the layout is the same so
        // growpart and the smoke see one shape).
        return Ok(());
    }

    // BIOS: core.img in the BIOS boot partition, boot.img's code in the MBR.
    let core = work.join("core.img");
    Cmd::new("grub-mkimage")
        .args(["-O", "i386-pc", "-p", "/boot/grub", "-c"])
        .arg(&embed)
        .arg("-o")
        .arg(&core)
        .args([
            "biosdisk",
            "part_gpt",
            "part_msdos",
            "ext2",
            "search",
            "search_label",
            "normal",
            "linux",
            "configfile",
            "echo",
            "test",
            "serial",
            "terminal",
            "gzio",
        ])
        .run()?;
    let mut core_img = std::fs::read(&core).map_err(crate::IoError::at(&core))?;
    let mut boot_img = std::fs::read("/usr/lib/grub/i386-pc/boot.img").map_err(
        crate::IoError::at(Path::new("/usr/lib/grub/i386-pc/boot.img")),
    )?;
    patch_bios_boot(&mut boot_img, &mut core_img, bios.0, bios.1)?;
    write_at(raw, bios.0 * SECTOR, &core_img)?;
    write_at(raw, 0, &boot_img[..440])?;
    Ok(())
}

/// What grub-bios-setup does for a core.img at `core_sector`: point boot.img at core.img's
/// first sector, and core.img's first blocklist at the rest of itself.
pub fn patch_bios_boot(
    boot_img: &mut [u8],
    core_img: &mut [u8],
    core_sector: u64,
    max_sectors: u64,
) -> Result<(), BootstrapError> {
    if boot_img.len() != 512 {
        return Err(BootstrapError::Layout("boot.img is not 512 bytes".into()));
    }
    let sectors = core_img.len().div_ceil(SECTOR as usize) as u64;
    if sectors > max_sectors || sectors > u16::MAX as u64 {
        return Err(BootstrapError::Layout(format!(
            "core.img ({sectors} sectors) does not fit the BIOS boot partition"
        )));
    }
    // GRUB_BOOT_MACHINE_KERNEL_SECTOR, _BOOT_DRIVE (0xff: the drive BIOS booted), _DRIVE_CHECK (nop).
    boot_img[0x5c..0x64].copy_from_slice(&core_sector.to_le_bytes());
    boot_img[0x64] = 0xff;
    boot_img[0x66] = 0x90;
    boot_img[0x67] = 0x90;
    // The first blocklist entry sits at the end of diskboot's sector: start u64, len u16, segment u16.
    let bl = 512 - 12;
    core_img[bl..bl + 8].copy_from_slice(&(core_sector + 1).to_le_bytes());
    core_img[bl + 8..bl + 10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    core_img[bl + 10..bl + 12].copy_from_slice(&0x820u16.to_le_bytes());
    Ok(())
}

fn write_at(path: &Path, offset: u64, data: &[u8]) -> Result<(), BootstrapError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(crate::IoError::at(path))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(crate::IoError::at(path))?;
    f.write_all(data).map_err(crate::IoError::at(path))?;
    Ok(f.sync_all().map_err(crate::IoError::at(path))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_run_says_its_phase_and_counts_at_least_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        // mmdebstrap's shape: phase lines, apt's lines, then a silent stretch.
        let script = "echo 'I: downloading packages with apt...'; echo 'Get:1 http://x a 1'; \
                      echo 'Get:2 http://x b 1'; sleep 1; echo 'I: extracting archives...'; \
                      echo 'Unpacking a (1) ...'; echo 'Setting up a (1) ...'; \
                      echo 'I: /initrd.img is now a symlink to boot/initrd.img-6.1'; sleep 3";
        let cmd = Cmd::new("sh").args(["-c", script]);
        let mut said = Vec::new();
        run_stoppable(
            &cmd,
            &log,
            &AtomicBool::new(false),
            Duration::from_millis(900),
            &mut |s| said.push(s.to_string()),
        )
        .unwrap();
        assert!(
            said.iter()
                .any(|s| s.starts_with("downloading packages with apt (2 packages downloaded")),
            "{said:?}"
        );
        let extracting: Vec<_> = said
            .iter()
            .filter(|s| {
                s.starts_with("extracting archives (2 packages downloaded, 1 unpacked, 1 set up")
            })
            .collect();
        // The phase line, then the silent 3 s reported at least twice more.
        assert!(extracting.len() >= 3, "{said:?}");
    }

    #[test]
    fn cache_key_is_stable_and_sensitive() {
        let a = Bootstrap {
            suite: "bookworm".into(),
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(
            cache_key(&a, Arch::Amd64, &[]),
            cache_key(&b, Arch::Amd64, &[])
        );
        b.packages.push("docker.io".into());
        assert_ne!(
            cache_key(&a, Arch::Amd64, &[]),
            cache_key(&b, Arch::Amd64, &[])
        );
        assert_ne!(
            cache_key(&a, Arch::Amd64, &[]),
            cache_key(&a, Arch::Arm64, &[])
        );
        let step = |script: &str| Step {
            name: "s".into(),
            script: script.into(),
            offline: true,
            network: false,
        };
        assert_ne!(
            cache_key(&a, Arch::Amd64, &[step("true")]),
            cache_key(&a, Arch::Amd64, &[])
        );
        assert_ne!(
            cache_key(&a, Arch::Amd64, &[step("true")]),
            cache_key(&a, Arch::Amd64, &[step("false")])
        );
    }

    #[test]
    fn a_failed_conversion_leaves_no_part_and_no_kernel_export() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("k.qcow2");
        std::fs::create_dir_all(kernel_dir(&out)).unwrap();
        std::fs::write(kernel_dir(&out).join("vmlinuz"), "k").unwrap();
        // Not a disk qemu-img can read: the conversion fails.
        let e = publish_disk(&dir.path().join("missing.raw"), &out).unwrap_err();
        assert!(e.to_string().contains("qemu-img"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn dpkg_runs_without_fsync_only_while_mmdebstrap_does() {
        // Run as mmdebstrap runs its hooks: `sh -c HOOK sh TREE`.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etc/dpkg/dpkg.cfg.d/99imgbuild-unsafe-io");
        let hook = |h: &str, prefix: &str| {
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(h.strip_prefix(prefix).unwrap())
                .arg("sh")
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
        };
        hook(UNSAFE_IO_ON, "--setup-hook=");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "force-unsafe-io\n");
        hook(UNSAFE_IO_OFF, "--customize-hook=");
        assert!(!file.exists());
    }

    #[test]
    fn base_steps_run_in_the_tree_with_sh_e_and_say_their_name() {
        let hooks = step_hooks(&[Step {
            name: "keep-it".into(),
            script: "echo 'it'\nexit 3\n".into(),
            offline: true,
            network: false,
        }]);
        assert_eq!(hooks.len(), 1);
        let cmd = hooks[0].strip_prefix("--customize-hook=").unwrap();
        // Run as mmdebstrap runs a hook (`sh -c HOOK` with the tree as $1), with `chroot`
        // a function that runs the rest in this shell: the script fails, so the hook does.
        let dir = tempfile::tempdir().unwrap();
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("chroot() {{ shift; \"$@\"; }}; {cmd}"))
            .arg("sh")
            .arg(dir.path())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(3), "{out}");
        assert!(
            out.starts_with("I: imgbuild base step keep-it...\nit\n"),
            "{out}"
        );
        let mut p = Phase::default();
        assert!(p.line(out.lines().next().unwrap()));
        assert_eq!(p.phase, "imgbuild base step keep-it");
    }

    #[test]
    fn packages_from_another_suite_are_pinned_while_bootstrapping_and_leave_nothing() {
        let mut b = Bootstrap {
            suite: "bookworm".into(),
            components: vec!["main".into(), "contrib".into()],
            ..Default::default()
        };
        assert_eq!(from_suite_args(&b), (vec![], vec![]));
        let plain = cache_key(&b, Arch::Amd64, &[]);
        b.from_suite.insert(
            "trixie".into(),
            vec!["docker.io".into(), "docker-cli".into()],
        );
        assert_ne!(cache_key(&b, Arch::Amd64, &[]), plain);
        assert!(b.has_package("docker-cli") && !b.has_package("docker-compose"));
        // The same preferences the docker feature gives a guest: the rest of trixie at 1.
        let pin = pin_preferences(&b);
        assert!(pin.contains(
            "Package: *\nPin: release n=trixie\nPin-Priority: 1\n\nPackage: docker.io docker-cli\nPin: release n=trixie\nPin-Priority: 990\n"
        ), "{pin}");
        let (lines, hooks) = from_suite_args(&b);
        assert_eq!(
            lines,
            ["deb http://deb.debian.org/debian trixie main contrib"]
        );
        // The pin is written before apt runs and removed, with the extra source, at the end.
        assert!(hooks[0].starts_with("--setup-hook=") && hooks[0].contains(PIN_FILE));
        assert!(hooks[1..]
            .iter()
            .all(|h| h.starts_with("--customize-hook=")));
        assert!(hooks
            .iter()
            .any(|h| h.contains("rm -f") && h.contains(PIN_FILE)));
        assert!(hooks.iter().any(
            |h| h.contains("grep -vxF 'deb http://deb.debian.org/debian trixie main contrib'")
        ));
        // The hooks are valid sh (mmdebstrap runs them with sh -c).
        for h in &hooks {
            let body = h.split_once('=').unwrap().1;
            let o = std::process::Command::new("sh")
                .args(["-n", "-c", body])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{h}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    #[test]
    fn the_kernel_export_is_what_grub_boots_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-9-cloud-amd64"), "kernel").unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-8-cloud-amd64"), "older").unwrap();
        std::fs::write(root.join("boot/initrd.img-6.1.0-9-cloud-amd64"), "initrd").unwrap();
        // As linux-update-symlinks makes them: relative, at the tree's root.
        std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-9-cloud-amd64", root.join("vmlinuz"))
            .unwrap();
        std::os::unix::fs::symlink(
            "boot/initrd.img-6.1.0-9-cloud-amd64",
            root.join("initrd.img"),
        )
        .unwrap();
        let out = dir.path().join("KEY.qcow2");
        let k = kernel_dir(&out);
        assert_eq!(k, dir.path().join("KEY.kernel"));
        export_kernel(&root, Arch::Amd64, &k).unwrap();
        let read = |f: &str| std::fs::read_to_string(k.join(f)).unwrap();
        assert_eq!(read("vmlinuz"), "kernel");
        assert_eq!(read("initrd.img"), "initrd");
        assert_eq!(read("version"), "6.1.0-9-cloud-amd64\n");
        // The command line GRUB's entry boots with.
        let cmdline = read("cmdline");
        assert!(grub_cfg(Arch::Amd64).contains(&format!("linux /vmlinuz {}", cmdline.trim())));
        assert_eq!(crate::cache::kernel_files(&k), Some(k.clone()));
        // A tree without its initrd link leaves no export (and removes an old one).
        std::fs::remove_file(root.join("initrd.img")).unwrap();
        assert!(export_kernel(&root, Arch::Amd64, &k).is_err());
        assert!(!k.exists() || crate::cache::kernel_files(&k).is_none());
    }

    #[test]
    fn layout_puts_root_last_and_aligned() {
        let [bios, esp, root] = layout(3 << 30).unwrap();
        assert_eq!(bios.0, 2048);
        assert_eq!(esp.0, bios.0 + bios.1);
        assert_eq!(root.0, esp.0 + esp.1);
        assert_eq!(root.1 % 2048, 0);
        assert!((root.0 + root.1) * 512 <= (3 << 30) - 34 * 512);
        assert!(layout(100 << 20).is_err());
    }

    #[test]
    fn bios_patch_points_at_core() {
        let mut boot = vec![0u8; 512];
        let mut core = vec![0u8; 512 * 60 + 7];
        patch_bios_boot(&mut boot, &mut core, 2048, 8192).unwrap();
        assert_eq!(
            u64::from_le_bytes(boot[0x5c..0x64].try_into().unwrap()),
            2048
        );
        assert_eq!(u64::from_le_bytes(core[500..508].try_into().unwrap()), 2049);
        assert_eq!(u16::from_le_bytes(core[508..510].try_into().unwrap()), 60);
        assert_eq!(
            u16::from_le_bytes(core[510..512].try_into().unwrap()),
            0x820
        );
    }
}
