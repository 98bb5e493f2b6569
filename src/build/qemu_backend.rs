//! The native backend: imgbuild drives QEMU itself. The base boots on a copy-on-write overlay
//! grown to `disk.size`, with the build seed as a NoCloud CD; cloud-init provisions; the
//! provision runner reports on the serial console; on success the guest powers off and the
//! hygiene unit runs on the way down. No SSH, no Packer.

use super::watch::{Event, Watch};
use super::{interrupted, io, BuildError, ProvisionInput, Provisioned};
use crate::definition::{parse_size, Arch, Firmware};
use crate::progress::Progress;
use crate::qemu::{self, QemuError, Vm, VmSpec};
use crate::render::{META_DATA, NETWORK_CONFIG, USER_DATA};
use std::time::Duration;

/// How long the guest may take from PROVISION-OK to powered off (hygiene, fstrim).
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(15 * 60);

pub fn provision(input: &ProvisionInput, p: &mut Progress) -> Result<Provisioned, BuildError> {
    let d = &input.resolved.definition;
    let w = input.work;
    let disk = w.join("disk.qcow2");
    let size = parse_size(&d.disk.size);
    qemu::create_overlay(&input.base.path, &disk, size)?;

    let seed_iso = w.join("seed.iso");
    let seed = |f: &str| input.rendered_dir.join(f);
    qemu::make_seed_iso(
        &[
            ("user-data", &seed(USER_DATA)),
            ("meta-data", &seed(META_DATA)),
            ("network-config", &seed(NETWORK_CONFIG)),
        ],
        &seed_iso,
    )?;
    let uefi = d.build.firmware == Firmware::Uefi || input.arch == Arch::Arm64;
    let uefi_vars = if uefi {
        let (_, vars) = qemu::uefi_firmware(input.arch).ok_or(QemuError::NoFirmware(input.arch))?;
        let copy = w.join("vars.fd");
        std::fs::copy(&vars, &copy).map_err(io(&copy))?;
        Some(copy)
    } else {
        None
    };
    let serial = input.logs.join("serial-build.log");
    let spec = VmSpec {
        arch: input.arch,
        accel: input.accel,
        firmware: if uefi {
            qemu::Firmware::Uefi
        } else {
            qemu::Firmware::Bios
        },
        cpus: d.build.cpus.min(host_cpus()),
        memory_mib: d.build.memory,
        disk: Some(disk.clone()),
        seed_iso: Some(seed_iso),
        serial_log: serial.clone(),
        qmp_socket: None,
        uefi_vars,
        hostfwd: Vec::new(),
    };
    // A TCG guest on an overloaded host can hang at boot (a vCPU that is never scheduled
    // again); such a boot is retried once on a fresh overlay, before anything was provisioned.
    let mut attempt = 0;
    let (mut vm, mut watch, outcome, line) = loop {
        attempt += 1;
        let mut vm = Vm::start(&spec)?;
        let mut watch = Watch::default();
        let timeout = Duration::from_secs(d.build.timeout as u64 * 60);
        let waited = {
            let mut on_line = |line: &str| {
                if let Event::Step(s) = watch.line(line) {
                    p.status(&format!("step {s}"), true);
                } else if !line.trim().is_empty() {
                    p.status(line.trim(), false);
                }
            };
            vm.wait_for_with(
                &[
                    "IMGBUILD-PROVISION-OK",
                    "IMGBUILD-PROVISION-FAILED",
                    "Kernel panic",
                ],
                timeout,
                "provisioning (IMGBUILD-PROVISION-OK)",
                input.cancel,
                &mut on_line,
            )
        };
        match waited {
            Ok((outcome, line)) => break (vm, watch, outcome, line),
            Err(QemuError::Hung { .. }) if attempt == 1 => {
                drop(vm);
                p.line("the build VM hung while booting (RCU stalls under TCG): retrying once on a fresh overlay");
                let _ = std::fs::remove_file(&disk);
                qemu::create_overlay(&input.base.path, &disk, size)?;
                if let Some(v) = &spec.uefi_vars {
                    let (_, vars) =
                        qemu::uefi_firmware(input.arch).ok_or(QemuError::NoFirmware(input.arch))?;
                    std::fs::copy(&vars, v).map_err(io(v))?;
                }
                let _ = std::fs::rename(&serial, input.logs.join("serial-build-hung.log"));
            }
            Err(e) => return Err(interrupted(e)),
        }
    };
    match outcome {
        0 => {}
        1 => {
            // Let the runner finish printing, then stop the guest: it stays up on failure.
            std::thread::sleep(Duration::from_millis(500));
            vm.kill();
            return Err(failure(&watch, &serial));
        }
        _ => {
            let tail = vm.serial_tail();
            vm.kill();
            return Err(BuildError::Provision {
                summary: format!("the guest kernel panicked: {line}"),
                log: format!("\n{tail}"),
                serial: log_name(&serial),
            });
        }
    }
    p.status("provisioned; hygiene and poweroff", true);
    let mut hygiene = false;
    vm.wait_for_with(
        &["IMGBUILD-HYGIENE-DONE"],
        POWEROFF_TIMEOUT,
        "the hygiene at poweroff (IMGBUILD-HYGIENE-DONE)",
        input.cancel,
        &mut |line| {
            if watch.line(line) == Event::HygieneDone {
                hygiene = true;
            }
        },
    )
    .map_err(interrupted)?;
    let status = vm
        .wait_exit(POWEROFF_TIMEOUT, "poweroff", input.cancel)
        .map_err(interrupted)?;
    if !status.success() {
        return Err(BuildError::Backend(format!(
            "QEMU exited with {status} after provisioning; see {}",
            log_name(&serial)
        )));
    }
    Ok(Provisioned {
        disk,
        container_images: watch.container_images,
    })
}

/// The error for a failed provisioning, with the runner's log tail.
pub fn failure(watch: &Watch, serial: &std::path::Path) -> BuildError {
    let log = if watch.log.is_empty() {
        String::new()
    } else {
        format!(
            "\nlast lines of the provisioning log:\n  {}",
            watch.log.join("\n  ")
        )
    };
    BuildError::Provision {
        summary: watch.failure(),
        log,
        serial: log_name(serial),
    }
}

/// `logs/NAME`: where the file is in the version folder or in the kept logs of a failure.
pub fn log_name(path: &std::path::Path) -> String {
    format!(
        "logs/{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}
