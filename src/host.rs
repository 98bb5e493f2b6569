//! Facts about this host that every VM imgbuild starts depends on, in one place: the QEMU
//! system emulator per arch, the firmware files, the host's cores, and the size of a build or
//! smoke VM derived from a definition ([`vm_cpus`]). The native backend, the Packer backend,
//! the smoke boot and the scheduler all size VMs through here, so they start the same VM.
//! Probing the accelerator boots QEMU and lives in `qemu` ([`crate::qemu::probe_accel`]).

use crate::definition::{Arch, Resolved};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The QEMU system emulator for `arch`.
pub fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

/// UEFI firmware for one arch, as Debian's packages install it: split code and variable-store
/// template for pflash (imgbuild's own VMs), and the single image Packer 1.6 loads with
/// `-bios` (its template can't use pflash).
struct FirmwareFiles {
    /// (code, vars) pairs, preferred first.
    pflash: &'static [(&'static str, &'static str)],
    bios_image: &'static str,
    package: &'static str,
}

fn firmware_files(arch: Arch) -> FirmwareFiles {
    match arch {
        Arch::Amd64 => FirmwareFiles {
            pflash: &[
                (
                    "/usr/share/OVMF/OVMF_CODE_4M.fd",
                    "/usr/share/OVMF/OVMF_VARS_4M.fd",
                ),
                (
                    "/usr/share/OVMF/OVMF_CODE.fd",
                    "/usr/share/OVMF/OVMF_VARS.fd",
                ),
            ],
            bios_image: "/usr/share/ovmf/OVMF.fd",
            package: "ovmf",
        },
        Arch::Arm64 => FirmwareFiles {
            pflash: &[(
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
            )],
            bios_image: "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
            package: "qemu-efi-aarch64",
        },
    }
}

/// UEFI firmware code and variable-store template for `arch`, if installed.
pub fn uefi_firmware(arch: Arch) -> Option<(PathBuf, PathBuf)> {
    firmware_files(arch)
        .pflash
        .iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
}

/// The single UEFI image for `-bios` (the Packer template's default).
pub fn uefi_bios_image(arch: Arch) -> &'static str {
    firmware_files(arch).bios_image
}

/// The Debian package that installs `arch`'s UEFI firmware.
pub fn uefi_package(arch: Arch) -> &'static str {
    firmware_files(arch).package
}

/// The host's cores (read once).
pub fn cpus() -> u32 {
    static CPUS: OnceLock<u32> = OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    })
}

/// The most vCPUs one build or smoke VM gets here: the host's cores, or fewer with
/// `IMGBUILD_VM_CPUS=N` (read once), for a host whose cores several build processes share
/// (a CI runner running builds side by side, `make test`'s streams: one vCPU per VM, as many
/// VMs as cores). The commands that boot VMs refuse a bad value first ([`vm_cpus_env`], exit
/// 2); here one is ignored with a warning.
pub fn vm_cpu_limit() -> u32 {
    static LIMIT: OnceLock<u32> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let cap = vm_cpus_env().unwrap_or_else(|e| {
            tracing::warn!("{e}: ignored");
            None
        });
        limit_vm_cpus(cpus(), cap)
    })
}

/// `IMGBUILD_VM_CPUS` as set: none when unset or empty; an error naming the variable and its
/// value when it is not a whole number from 1 up.
pub fn vm_cpus_env() -> Result<Option<u32>, String> {
    parse_vm_cpus(std::env::var_os("IMGBUILD_VM_CPUS").as_deref())
}

fn parse_vm_cpus(v: Option<&std::ffi::OsStr>) -> Result<Option<u32>, String> {
    let Some(v) = v else { return Ok(None) };
    let text = v.to_string_lossy();
    let value = text.trim();
    if value.is_empty() {
        return Ok(None);
    }
    match value.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!(
            "IMGBUILD_VM_CPUS={text:?} is not a whole number from 1 up (the most vCPUs of one build or smoke VM)"
        )),
    }
}

fn limit_vm_cpus(host_cpus: u32, cap: Option<u32>) -> u32 {
    host_cpus.min(cap.unwrap_or(u32::MAX)).max(1)
}

/// The vCPUs of a build or smoke VM of `r` on a host with `host_cpus` cores: the definition's
/// `build.cpus`, at least 1 and at most the host's cores (under TCG each vCPU is a busy host
/// thread; more than the cores only makes the guest stall).
pub fn vm_cpus(r: &Resolved, host_cpus: u32) -> u32 {
    r.definition.build.cpus.clamp(1, host_cpus.max(1))
}

/// Whether a VM of `r` for `arch` boots UEFI (arm64 has nothing else).
pub fn uefi(r: &Resolved, arch: Arch) -> bool {
    r.definition.build.firmware == crate::definition::Firmware::Uefi || arch == Arch::Arm64
}

/// Free bytes on the filesystem of `path` (or of its nearest existing parent).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_cpus_are_clamped_to_the_host() {
        let mut r = Resolved {
            name: "x".into(),
            definition: Default::default(),
            chain: Vec::new(),
        };
        r.definition.build.cpus = 8;
        assert_eq!(vm_cpus(&r, 2), 2);
        r.definition.build.cpus = 1;
        assert_eq!(vm_cpus(&r, 4), 1);
        r.definition.build.cpus = 0;
        assert_eq!(vm_cpus(&r, 4), 1);
        assert_eq!(vm_cpus(&r, 0), 1);
    }

    #[test]
    fn imgbuild_vm_cpus_caps_each_vm_below_the_hosts_cores() {
        use std::ffi::OsStr;
        assert_eq!(parse_vm_cpus(None), Ok(None));
        assert_eq!(parse_vm_cpus(Some(OsStr::new(""))), Ok(None));
        assert_eq!(parse_vm_cpus(Some(OsStr::new(" 3 "))), Ok(Some(3)));
        for bad in ["0", "-1", "two", "1.5"] {
            let e = parse_vm_cpus(Some(OsStr::new(bad))).unwrap_err();
            assert!(e.starts_with(&format!("IMGBUILD_VM_CPUS={bad:?} ")), "{e}");
        }
        assert_eq!(limit_vm_cpus(2, None), 2);
        assert_eq!(limit_vm_cpus(8, Some(1)), 1);
        assert_eq!(limit_vm_cpus(2, Some(4)), 2);
        let mut r = Resolved {
            name: "x".into(),
            definition: Default::default(),
            chain: Vec::new(),
        };
        r.definition.build.cpus = 2;
        assert_eq!(vm_cpus(&r, limit_vm_cpus(2, Some(1))), 1);
    }
}
