//! The Packer backend: real `packer build` on the rendered HCL, unmodified, with the local
//! values (base image path, seed folder, serial log, accelerator) passed as `-var`s. Packer's
//! QEMU builder has no communicator here: it waits for the guest to power off by itself,
//! while imgbuild reads the same serial console markers as the native backend, so a failed
//! provisioning stops Packer at once instead of after `shutdown_timeout`.

use super::native::{failure, log_name};
use super::{ProvisionInput, Provisioned};
use crate::exec::{Cmd, ProcessGroup};
use crate::pipeline::error::BuildError;
use crate::progress::Progress;
use crate::protocol::{marker, Event, Watch};
use crate::qemu::SerialReader;
use crate::render::PACKER_DIR;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub fn provision(input: &ProvisionInput, p: &mut Progress) -> Result<Provisioned, BuildError> {
    let d = &input.resolved.definition;
    let w = input.work;
    let packer_dir = input.rendered_dir.join(PACKER_DIR);
    let out_dir = w.join("packer-out");
    // Packer's TMPDIR (its plugin sockets): see exec::socket_tmpdir.
    let tmp = crate::exec::socket_tmpdir("imgbuild-packer-")?;
    let serial = input.logs.join("serial-build.log");
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(crate::IoError::at(p));
    let seed_dir = abs(&input.rendered_dir.join("seed"))?;
    let logs = abs(input.logs)?;
    let serial_abs = logs.join("serial-build.log");

    let cmd = Cmd::new("packer")
        .args(["build", "-color=false", "-var-file=variables.pkrvars.hcl"])
        .arg("-var")
        .arg(format!("base_image={}", abs(&input.base.path)?.display()))
        .args(["-var", "base_checksum=none"])
        .arg("-var")
        .arg(format!("output_directory={}", out_dir.display()))
        .arg("-var")
        .arg(format!("seed_dir={}", seed_dir.display()))
        .arg("-var")
        .arg(format!("serial_log={}", serial_abs.display()))
        .arg("-var")
        .arg(format!("accelerator={}", input.accel.as_str()))
        .arg("-var")
        .arg(format!(
            "cpus={}",
            crate::host::vm_cpus(input.resolved, crate::host::vm_cpu_limit())
        ))
        .arg(".")
        .current_dir(&packer_dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_NO_COLOR", "1")
        .env("TMPDIR", tmp.path())
        .env("PACKER_CACHE_DIR", w.join("packer_cache"));
    let log_path = input.logs.join("packer.log");
    let log = std::fs::File::create(&log_path).map_err(crate::IoError::at(&log_path))?;
    let out = log.try_clone().map_err(crate::IoError::at(&log_path))?;
    // Its own process group, so that stopping it reaches the QEMU it started.
    let mut packer = ProcessGroup::spawn(&cmd, out.into(), log.into()).map_err(BuildError::Exec)?;
    let mut reader = SerialReader::new(&serial);
    let mut watch = Watch::default();
    // Packer's own shutdown_timeout is the build timeout; allow for its start-up and copy.
    let timeout = Duration::from_secs(d.build.timeout as u64 * 60 + 600);
    let start = Instant::now();
    let mut last_packer_line = String::new();
    loop {
        for line in reader.new_lines() {
            match watch.line(&line) {
                Event::Step(s) => p.status(&format!("step {s}"), true),
                Event::ProvisionFailed => {
                    std::thread::sleep(Duration::from_millis(500));
                    for l in reader.new_lines() {
                        watch.line(&l);
                    }
                    packer.stop();
                    return Err(failure(&watch, &serial));
                }
                Event::Panic(l) => {
                    packer.stop();
                    return Err(BuildError::Provision {
                        summary: format!("the guest kernel panicked: {l}"),
                        log: format!("\n{}", reader.tail()),
                        serial: log_name(&serial),
                    });
                }
                Event::ProvisionOk => p.status("provisioned; hygiene and poweroff", true),
                _ if !line.trim().is_empty() => p.status(line.trim(), false),
                _ => {}
            }
        }
        if let Some(l) = last_line(&log_path) {
            if l != last_packer_line {
                p.status(&format!("packer: {l}"), false);
                last_packer_line = l;
            }
        }
        if input.cancel.load(Ordering::SeqCst) {
            packer.stop();
            return Err(BuildError::Interrupted);
        }
        if let Some(status) = packer
            .try_wait()
            .map_err(crate::IoError::at(Path::new("packer")))?
        {
            for line in reader.new_lines() {
                watch.line(&line);
            }
            let packer_log = crate::exec::tail(
                &std::fs::read_to_string(&log_path).unwrap_or_default(),
                3000,
            );
            if !status.success() {
                return Err(BuildError::Backend(format!(
                    "packer build exited with {status}; logs/packer.log ends:\n{packer_log}"
                )));
            }
            if !watch.provision_ok || !watch.hygiene_done {
                return Err(BuildError::Backend(format!(
                    "packer build succeeded but the guest never reported {}; serial console ends:\n{}",
                    if watch.provision_ok {
                        marker::HYGIENE_DONE
                    } else {
                        marker::PROVISION_OK
                    },
                    reader.tail()
                )));
            }
            break;
        }
        if start.elapsed() > timeout {
            packer.stop();
            return Err(BuildError::Backend(format!(
                "packer build did not finish within {} min; serial console ends:\n{}",
                timeout.as_secs() / 60,
                reader.tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let disk = out_dir.join(format!("{}-{}.qcow2", input.resolved.name, input.arch));
    if !disk.is_file() {
        return Err(BuildError::Backend(format!(
            "packer build succeeded but wrote no {}",
            disk.display()
        )));
    }
    Ok(Provisioned {
        disk,
        keep_disk: false,
        packages: watch.package_list().unwrap_or_default(),
        container_images: watch.container_images,
        layers: Vec::new(),
        leases: Vec::new(),
    })
}

fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}
