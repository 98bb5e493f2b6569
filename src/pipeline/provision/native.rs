//! The native backend: imgbuild drives QEMU itself, one boot per layer. Each layer boots on a
//! copy-on-write overlay of the layer below (the first on the base, grown to `disk.size`),
//! with that layer's seed as a NoCloud CD; cloud-init provisions; the provision runner reports
//! on the serial console and the guest powers off; on the top layer the hygiene unit runs on
//! the way down. No SSH, no Packer.

use super::layers::PlannedLayer;
use super::LayerRecord;
use super::{ProvisionInput, Provisioned};
use crate::cache::{self, LayerCache, LayerMeta};
use crate::definition::parse_size;
use crate::pipeline::error::{interrupted, BuildError};
use crate::progress::Progress;
use crate::protocol::{marker, Event, Watch, APT_CACHE_SERIAL};
use crate::qemu::{self, QemuError, Vm, VmSpec};
use crate::render::cloud_init::layer_meta_data;
use crate::render::NETWORK_CONFIG;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How long the guest may take from PROVISION-OK to powered off (hygiene, fstrim).
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Provisions the image as its chain of layers (see `layers`): each layer is a qcow2 overlay
/// on the one below, booted once with that layer's seed. Layers found in the cache are reused
/// as they are; built ones go into the cache (unless `no_cache`: then they live in the work
/// folder and are thrown away). The top layer's boot ends with the hygiene.
pub fn provision(input: &ProvisionInput, p: &mut Progress) -> Result<Provisioned, BuildError> {
    let d = &input.resolved.definition;
    let logs = input.logs;
    let apt = match cache::apt_disk(
        input.cache,
        &d.os.distro,
        &d.os.version,
        input.arch.as_str(),
    ) {
        Ok(Some(a)) => Some(a),
        Ok(None) => {
            p.line("the shared apt cache is attached to another build: this build downloads its own packages");
            None
        }
        Err(e) => {
            p.line(&format!("no shared apt cache ({e})"));
            None
        }
    };
    let mut state = Chain {
        parent: input.base.path.clone(),
        parent_vars: None,
        leases: Vec::new(),
        records: Vec::new(),
        images: Vec::new(),
        packages: Vec::new(),
        serials: Vec::new(),
    };
    let result = provision_layers(input, apt.as_ref().map(|(d, _)| d.as_path()), &mut state, p);
    join_logs(logs, &state.serials);
    result?;
    Ok(Provisioned {
        disk: state.parent,
        keep_disk: !input.no_cache,
        container_images: state.images,
        packages: state.packages,
        layers: state.records,
        leases: state.leases,
    })
}

/// The layers so far: the disk to build on and what the manifest will say.
struct Chain {
    parent: PathBuf,
    parent_vars: Option<PathBuf>,
    leases: Vec<cache::Held>,
    records: Vec<LayerRecord>,
    images: Vec<crate::protocol::ContainerImage>,
    /// The packages of the layer on top so far.
    packages: Vec<crate::protocol::Package>,
    /// Each built layer's serial log (joined into logs/serial-build.log).
    serials: Vec<(String, PathBuf)>,
}

fn provision_layers(
    input: &ProvisionInput,
    apt: Option<&Path>,
    chain: &mut Chain,
    p: &mut Progress,
) -> Result<(), BuildError> {
    let lc = LayerCache::new(input.cache);
    let n = input.layers.len();
    for (i, layer) in input.layers.iter().enumerate() {
        let label = format!("layer {}/{n} {}", i + 1, layer.name);
        let short = &layer.key[..12];
        if input.no_cache {
            let dir = input
                .work
                .join(format!("layer-{:02}-{}", i + 1, layer.name));
            std::fs::create_dir_all(&dir).map_err(crate::IoError::at(&dir))?;
            let t = Instant::now();
            let watch = boot_layer(input, layer, chain, &dir, apt, p)?;
            chain.packages = watch.package_list().unwrap_or_default();
            chain.images.extend(watch.container_images);
            chain.parent = dir.join(cache::DISK);
            chain.parent_vars = Some(dir.join(cache::VARS)).filter(|v| v.is_file());
            chain.records.push(record(layer, false, t));
            p.line(&format!(
                "{label}: built in {:.0} s (--no-cache: one boot, nothing kept)",
                t.elapsed().as_secs_f64()
            ));
            continue;
        }
        let guard = lc
            .lock_build(&layer.key, || {
                p.line(&format!("{label}: waiting for another build that makes it"))
            })
            .map_err(cache_err)?;
        if let Some(h) = lc.lookup(&guard).map_err(cache_err)? {
            p.line(&format!(
                "{label}: reused from the cache ({short}, built {} for {})",
                h.meta.created, h.meta.image
            ));
            chain.images.extend(h.meta.container_images.iter().cloned());
            chain.packages = h.meta.packages.clone();
            chain.parent = h.disk();
            chain.parent_vars = h.vars();
            let mut rec = record(layer, true, Instant::now());
            rec.built_for = Some(h.meta.image.clone());
            chain.records.push(rec);
            chain.leases.push(h);
            continue;
        }
        let dir = lc.start(&guard).map_err(cache_err)?;
        let t = Instant::now();
        let watch = match boot_layer(input, layer, chain, &dir, apt, p) {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let meta = LayerMeta {
            key: layer.key.clone(),
            layer: layer.name.into(),
            parent: layer.parent_key.clone(),
            backing: std::fs::canonicalize(&chain.parent)
                .map_err(crate::IoError::at(&chain.parent))?,
            image: input.resolved.name.clone(),
            arch: input.arch.as_str().into(),
            created: cache::rfc3339(SystemTime::now()),
            build_seconds: (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            imgbuild: env!("CARGO_PKG_VERSION").into(),
            container_images: watch.container_images.clone(),
            packages: watch.package_list().unwrap_or_default(),
        };
        let h = lc.commit(&guard, &meta).map_err(cache_err)?;
        drop(guard);
        chain.packages = meta.packages.clone();
        chain.images.extend(watch.container_images);
        chain.parent = h.disk();
        chain.parent_vars = h.vars();
        chain.records.push(record(layer, false, t));
        chain.leases.push(h);
        p.line(&format!(
            "{label}: built in {:.0} s, cached as {short}",
            t.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

fn record(layer: &PlannedLayer, cached: bool, t: Instant) -> LayerRecord {
    LayerRecord {
        name: layer.name.into(),
        key: layer.key.clone(),
        cached,
        seconds: if cached {
            0.0
        } else {
            (t.elapsed().as_secs_f64() * 10.0).round() / 10.0
        },
        built_for: None,
    }
}

fn cache_err(e: cache::CacheError) -> BuildError {
    match e {
        cache::CacheError::Io(crate::IoError { path, source }) => {
            BuildError::Io(crate::IoError { path, source })
        }
    }
}

/// Joins the layers' serial logs into logs/serial-build.log (and QEMU's stderr into
/// serial-build.qemu.log), one header per layer.
fn join_logs(logs: &Path, parts: &[(String, PathBuf)]) {
    for (ext, out) in [
        ("log", "serial-build.log"),
        ("qemu.log", "serial-build.qemu.log"),
    ] {
        let mut text = Vec::new();
        for (name, serial) in parts {
            let f = serial.with_extension(ext);
            if let Ok(b) = std::fs::read(&f) {
                text.extend_from_slice(format!("===== imgbuild layer {name} =====\n").as_bytes());
                text.extend_from_slice(&b);
                let _ = std::fs::remove_file(&f);
            }
        }
        if !text.is_empty() {
            let _ = std::fs::write(logs.join(out), text);
        }
    }
}

/// One layer's boot: an overlay on the chain's top disk in `dir`, the layer's seed, the
/// provisioning runner, poweroff (after the hygiene, on the top layer).
fn boot_layer(
    input: &ProvisionInput,
    layer: &PlannedLayer,
    chain: &mut Chain,
    dir: &Path,
    apt: Option<&Path>,
    p: &mut Progress,
) -> Result<Watch, BuildError> {
    let d = &input.resolved.definition;
    let w = input.work;
    let disk = dir.join(cache::DISK);
    let size = parse_size(&d.disk.size);
    qemu::create_overlay(&chain.parent, &disk, size)?;

    let tag = format!("{:02}-{}", chain.serials.len() + 1, layer.name);
    let meta = w.join(format!("meta-data-{tag}"));
    std::fs::write(
        &meta,
        layer_meta_data(
            layer.top.then_some(input.resolved.name.as_str()),
            input.arch,
            layer.name,
            &layer.key,
        ),
    )
    .map_err(crate::IoError::at(&meta))?;
    let seed_iso = w.join(format!("seed-{tag}.iso"));
    qemu::make_seed_iso(
        &[
            ("user-data", &input.rendered_dir.join(&layer.user_data_path)),
            ("meta-data", &meta),
            ("network-config", &input.rendered_dir.join(NETWORK_CONFIG)),
        ],
        &seed_iso,
    )?;
    let uefi = crate::host::uefi(input.resolved, input.arch);
    let fresh_vars = |to: &Path, from: Option<&PathBuf>| -> Result<(), BuildError> {
        let src = match from {
            Some(v) => v.clone(),
            None => {
                qemu::uefi_firmware(input.arch)
                    .ok_or(QemuError::NoFirmware(input.arch))?
                    .1
            }
        };
        std::fs::copy(&src, to).map_err(crate::IoError::at(to))?;
        Ok(())
    };
    let uefi_vars = if uefi {
        let v = dir.join(cache::VARS);
        fresh_vars(&v, chain.parent_vars.as_ref())?;
        Some(v)
    } else {
        None
    };
    let serial = input.logs.join(format!("serial-build-{tag}.log"));
    chain.serials.push((layer.name.to_string(), serial.clone()));
    let spec = VmSpec {
        arch: input.arch,
        accel: input.accel,
        firmware: if uefi {
            qemu::Firmware::Uefi
        } else {
            qemu::Firmware::Bios
        },
        cpus: crate::host::vm_cpus(input.resolved, crate::host::cpus()),
        memory_mib: d.build.memory,
        disk: Some(disk.clone()),
        seed_iso: Some(seed_iso),
        serial_log: serial.clone(),
        // QMP lets the wait notice a guest QEMU paused on a full host disk.
        qmp: true,
        uefi_vars,
        hostfwd: Vec::new(),
        extra_disks: apt
            .map(|a| vec![(a.to_path_buf(), APT_CACHE_SERIAL.to_string())])
            .unwrap_or_default(),
        extra_nics: Vec::new(),
    };
    // In error messages: the joined log every layer's console ends up in.
    let serial_name = input.logs.join("serial-build.log");
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
                    p.status(&format!("{} step {s}", layer.name), true);
                } else if !line.trim().is_empty() {
                    p.status(line.trim(), false);
                }
            };
            vm.wait_for_with(
                &[
                    marker::PROVISION_OK,
                    marker::PROVISION_FAILED,
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
                qemu::create_overlay(&chain.parent, &disk, size)?;
                if let Some(v) = &spec.uefi_vars {
                    fresh_vars(v, chain.parent_vars.as_ref())?;
                }
                let _ = std::fs::rename(
                    &serial,
                    input.logs.join(format!("serial-build-{tag}-hung.log")),
                );
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
            return Err(failure(&watch, &serial_name));
        }
        _ => {
            let tail = vm.serial_tail();
            vm.kill();
            return Err(BuildError::Provision {
                summary: format!("the guest kernel panicked: {line}"),
                log: format!("\n{tail}"),
                serial: log_name(&serial_name),
            });
        }
    }
    if layer.top {
        p.status("provisioned; hygiene and poweroff", true);
        vm.wait_for_with(
            &[marker::HYGIENE_DONE],
            POWEROFF_TIMEOUT,
            "the hygiene at poweroff (IMGBUILD-HYGIENE-DONE)",
            input.cancel,
            &mut |line| {
                watch.line(line);
            },
        )
        .map_err(interrupted)?;
    } else {
        p.status(&format!("layer {} provisioned; poweroff", layer.name), true);
    }
    let status = vm
        .wait_exit(POWEROFF_TIMEOUT, "poweroff", input.cancel)
        .map_err(interrupted)?;
    if !status.success() {
        return Err(BuildError::Backend(format!(
            "QEMU exited with {status} after provisioning layer {}; see {}",
            layer.name,
            log_name(&serial_name)
        )));
    }
    Ok(watch)
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
