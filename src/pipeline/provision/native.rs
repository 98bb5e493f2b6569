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

/// What ends a layer's provisioning wait, in `finish_layer`'s outcome order: success, the
/// runner's failure, a kernel panic.
const VERDICT: [&str; 3] = [
    marker::PROVISION_OK,
    marker::PROVISION_FAILED,
    "Kernel panic",
];

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
        // Known for a bootstrapped base (amd64 boots it boot-free; see boot_layer).
        kernel: input.base.kernel.clone(),
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
    /// The kernel export that boots `parent` (cache::KERNEL), for boot-free layers.
    kernel: Option<PathBuf>,
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
            let (watch, boot_free) = boot_layer(input, layer, chain, &dir, apt, p)?;
            chain.packages = watch.package_list().unwrap_or_default();
            chain.images.extend(watch.container_images);
            chain.parent = dir.join(cache::DISK);
            chain.parent_vars = Some(dir.join(cache::VARS)).filter(|v| v.is_file());
            chain.kernel = cache::kernel_in(&dir);
            chain.records.push(record(layer, false, boot_free, t));
            p.line(&format!(
                "{label}: built in {:.0} s {}(--no-cache: nothing kept)",
                t.elapsed().as_secs_f64(),
                how(boot_free)
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
            // A layer this runner has that the remote lacks (built before the remote was
            // configured, or while it was down) is shared now.
            if let Some(remote) = writable(input.remote) {
                match remote.has(crate::remote::Kind::Layer, &h.key) {
                    Ok(true) => {}
                    Ok(false) => upload_remote(remote, &h, p),
                    Err(e) => warn_down(remote, &e, p),
                }
            }
            take_cached(chain, layer, h, false);
            continue;
        }
        if let Some(remote) = input.remote.filter(|r| r.is_up()) {
            if let Some(h) = fetch_remote(remote, layer, chain, &lc, &guard, p)? {
                p.line(&format!(
                    "{label}: fetched from the remote cache ({short}, built {} for {})",
                    h.meta.created, h.meta.image
                ));
                take_cached(chain, layer, h, true);
                continue;
            }
        }
        let dir = lc.start(&guard).map_err(cache_err)?;
        let t = Instant::now();
        let (watch, boot_free) = match boot_layer(input, layer, chain, &dir, apt, p) {
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
            boot_free,
        };
        let h = lc.commit(&guard, &meta).map_err(cache_err)?;
        drop(guard);
        if let Some(remote) = writable(input.remote) {
            upload_remote(remote, &h, p);
        }
        chain.packages = meta.packages.clone();
        chain.images.extend(watch.container_images);
        chain.parent = h.disk();
        chain.parent_vars = h.vars();
        chain.kernel = h.kernel();
        chain.records.push(record(layer, false, boot_free, t));
        chain.leases.push(h);
        p.line(&format!(
            "{label}: built in {:.0} s {}, cached as {short}",
            t.elapsed().as_secs_f64(),
            how(boot_free)
        ));
    }
    Ok(())
}

/// The next layer of `chain` is the cache entry `h` (local, or fetched from the remote).
fn take_cached(chain: &mut Chain, layer: &PlannedLayer, h: cache::Held, remote: bool) {
    chain.images.extend(h.meta.container_images.iter().cloned());
    chain.packages = h.meta.packages.clone();
    chain.parent = h.disk();
    chain.parent_vars = h.vars();
    chain.kernel = h.kernel();
    let mut rec = record(layer, true, h.meta.boot_free, Instant::now());
    rec.built_for = Some(h.meta.image.clone());
    rec.remote = remote;
    chain.records.push(rec);
    chain.leases.push(h);
}

/// The remote cache, if there is one this run may write to and it answers.
fn writable(remote: Option<&crate::remote::Remote>) -> Option<&crate::remote::Remote> {
    remote.filter(|r| r.is_up() && !r.config.read_only)
}

/// One warning per run when the remote cannot be used (no answer, TLS refused); the run goes on
/// locally.
fn warn_down(remote: &crate::remote::Remote, e: &crate::remote::RemoteError, p: &mut Progress) {
    if remote.mark_down() {
        p.line(&format!(
            "warning: the remote cache {} cannot be used ({e}): this build makes its layers locally",
            remote.config.url
        ));
    }
}

/// Layer `layer` from the remote cache into the local cache (under the build lock `guard`):
/// downloaded into the entry's partial folder, every file checked against its sha256,
/// pointed at the local layer below, committed. A miss, a corrupt entry (then the layer is
/// built, and its upload replaces the entry) or an unreachable remote (then this run builds
/// locally, with one warning) gives None.
fn fetch_remote(
    remote: &crate::remote::Remote,
    layer: &PlannedLayer,
    chain: &Chain,
    lc: &LayerCache,
    guard: &cache::BuildGuard,
    p: &mut Progress,
) -> Result<Option<cache::Held>, BuildError> {
    let dir = lc.start(guard).map_err(cache_err)?;
    let mut last = Instant::now();
    let fetched = remote.fetch(
        crate::remote::Kind::Layer,
        &layer.key,
        &dir,
        &mut |name, done, total| {
            if last.elapsed() >= Duration::from_secs(2) || done == total {
                last = Instant::now();
                p.status(
                    &format!(
                        "layer {}: fetching {name} {} of {} MiB",
                        layer.name,
                        done >> 20,
                        total >> 20
                    ),
                    false,
                );
            }
        },
    );
    let entry = match fetched {
        Ok(Some(e)) => e,
        Ok(None) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(None);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            match e {
                crate::remote::RemoteError::Corrupt { .. }
                | crate::remote::RemoteError::Bad { .. }
                | crate::remote::RemoteError::Io(_) => {
                    p.line(&format!("warning: {e}: not used, the layer is built"));
                }
                e => warn_down(remote, &e, p),
            }
            return Ok(None);
        }
    };
    let mut meta: cache::LayerMeta = match serde_json::from_value(entry.meta) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            p.line(&format!(
                "warning: remote entry {}: its metadata: {e}: not used",
                layer.key
            ));
            return Ok(None);
        }
    };
    let disk = dir.join(cache::DISK);
    let rebased = qemu::rebase_unsafe(&disk, &chain.parent);
    if let Err(e) = rebased {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.into());
    }
    meta.backing =
        std::fs::canonicalize(&chain.parent).map_err(crate::IoError::at(&chain.parent))?;
    Ok(Some(lc.commit(guard, &meta).map_err(cache_err)?))
}

/// Uploads a layer just built to the remote cache (a failure is a warning: the build has its
/// layer locally).
fn upload_remote(remote: &crate::remote::Remote, h: &cache::Held, p: &mut Progress) {
    let mut files: Vec<(String, PathBuf)> = walkdir::WalkDir::new(&h.dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let name = e
                .path()
                .strip_prefix(&h.dir)
                .ok()?
                .to_string_lossy()
                .into_owned();
            (name != cache::META).then(|| (name, e.path().to_path_buf()))
        })
        .collect();
    files.sort();
    let meta = serde_json::to_value(&h.meta).expect("json");
    let mut last = Instant::now();
    let r = remote.upload(
        crate::remote::Kind::Layer,
        &h.key,
        &files,
        meta,
        &mut |name, done, total| {
            if last.elapsed() >= Duration::from_secs(2) || done == total {
                last = Instant::now();
                p.status(
                    &format!(
                        "uploading {name} {} of {} MiB to the remote cache",
                        done >> 20,
                        total >> 20
                    ),
                    false,
                );
            }
        },
    );
    match r {
        Ok(()) => p.line(&format!(
            "layer {} uploaded to the remote cache",
            h.meta.layer
        )),
        Err(e) => {
            p.line(&format!(
                "warning: layer {} not uploaded to the remote cache: {e}",
                h.meta.layer
            ));
            if !matches!(
                e,
                crate::remote::RemoteError::Http(crate::http::HttpError::Status { .. })
            ) {
                remote.mark_down();
            }
        }
    }
}

/// How a layer was made, for the progress line.
fn how(boot_free: bool) -> &'static str {
    if boot_free {
        "without a boot (boot-free)"
    } else {
        "in a full boot"
    }
}

fn record(layer: &PlannedLayer, cached: bool, boot_free: bool, t: Instant) -> LayerRecord {
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
        boot_free,
        remote: false,
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

/// How big the kernel export disk is (sparse): a kernel and an initrd with room to spare
/// (a desktop's initrd with NVIDIA's firmware is about 100 MiB).
const EXPORT_DISK_BYTES: u64 = 768 << 20;
/// The serial the runner finds the export disk by (cloud-init/guest/provision).
const EXPORT_SERIAL: &str = "imgbuild-export";

/// One layer made on an overlay of the chain's top disk in `dir`: boot-free when the layer
/// can be (it has a payload, and the kernel that boots the disk below is known), else in a
/// full boot. Returns what the guest reported and whether it was boot-free.
fn boot_layer(
    input: &ProvisionInput,
    layer: &PlannedLayer,
    chain: &mut Chain,
    dir: &Path,
    apt: Option<&Path>,
    p: &mut Progress,
) -> Result<(Watch, bool), BuildError> {
    // A lower layer exports the kernel that boots its disk, for boot-free layers above it.
    let export = (!layer.top).then(|| dir.join("export.tar"));
    if let Some(e) = &export {
        let f = std::fs::File::create(e).map_err(crate::IoError::at(e))?;
        f.set_len(EXPORT_DISK_BYTES)
            .map_err(crate::IoError::at(e))?;
    }
    // On arm64 the firmware (AAVMF) boots the kernel QEMU hands it (`-kernel`) before any
    // disk (tianocore/edk2 ArmVirtPkg/Library/PlatformBootManagerLib/QemuKernel.c, called
    // from PlatformBm.c before the boot options).
    let boot_free = match (&layer.offline, chain.kernel.clone()) {
        (Some(payload), Some(kernel)) => Some((payload.1.clone(), kernel)),
        _ => None,
    };
    let result = match &boot_free {
        Some((payload, kernel)) => {
            let vm = BootFree {
                payload,
                kernel,
                apt,
                export: export.as_deref(),
            };
            boot_free_layer(input, layer, chain, dir, &vm, p)
        }
        None => full_boot_layer(input, layer, chain, dir, apt, export.as_deref(), p),
    };
    if let Some(e) = &export {
        if result.is_ok() {
            let exported = unpack_kernel(e, &dir.join(cache::KERNEL));
            match (&exported, &boot_free) {
                // A boot-free layer that left the kernel it booted as it was (or has none in
                // /boot) exports nothing: the layers above boot the one below's.
                (Ok(false), Some((_, kernel))) => link_kernel(kernel, &dir.join(cache::KERNEL))?,
                (Ok(false), None) => {
                    p.line("no kernel export from this layer: the layers above boot in full")
                }
                _ => {}
            }
            exported?;
        }
        let _ = std::fs::remove_file(e);
    }
    Ok((result?, boot_free.is_some()))
}

/// Unpacks the guest's kernel export (a tar written onto the raw disk `export`) into `to`;
/// a disk the guest left empty (no kernel in /boot, or a boot-free layer's unchanged one)
/// leaves no export (false).
fn unpack_kernel(export: &Path, to: &Path) -> Result<bool, BuildError> {
    use std::io::Read;
    let mut head = [0u8; 512];
    let mut f = std::fs::File::open(export).map_err(crate::IoError::at(export))?;
    f.read_exact(&mut head)
        .map_err(crate::IoError::at(export))?;
    if head.iter().all(|b| *b == 0) {
        return Ok(false);
    }
    std::fs::create_dir_all(to).map_err(crate::IoError::at(to))?;
    crate::exec::Cmd::new("tar")
        .arg("-xf")
        .arg(export)
        .arg("-C")
        .arg(to)
        .args(["vmlinuz", "initrd.img", "cmdline", "version"])
        .run()
        .map_err(|e| BuildError::Backend(format!("cannot unpack the kernel export: {e}")))?;
    Ok(true)
}

/// `to` gets the files of kernel export `from` (hard links where the filesystem allows).
fn link_kernel(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(to).map_err(crate::IoError::at(to))?;
    for e in std::fs::read_dir(from)
        .map_err(crate::IoError::at(from))?
        .flatten()
    {
        let dst = to.join(e.file_name());
        if std::fs::hard_link(e.path(), &dst).is_err() {
            std::fs::copy(e.path(), &dst).map_err(crate::IoError::at(&dst))?;
        }
    }
    Ok(())
}

/// What every layer's VM starts from: the overlay on the chain's top disk in `dir`, a copy of
/// the parent's UEFI variable store (UEFI builds), the layer's tag and serial log (registered
/// for the joined log).
struct LayerVm {
    disk: PathBuf,
    size: Option<u64>,
    firmware: qemu::Firmware,
    uefi_vars: Option<PathBuf>,
    tag: String,
    serial: PathBuf,
}

fn prepare_vm(
    input: &ProvisionInput,
    layer: &PlannedLayer,
    chain: &mut Chain,
    dir: &Path,
) -> Result<LayerVm, BuildError> {
    let disk = dir.join(cache::DISK);
    let size = parse_size(&input.resolved.definition.disk.size);
    qemu::create_overlay(&chain.parent, &disk, size)?;
    let uefi = crate::host::uefi(input.resolved, input.arch);
    let uefi_vars = if uefi {
        let v = dir.join(cache::VARS);
        fresh_vars(input, &v, chain.parent_vars.as_ref())?;
        Some(v)
    } else {
        None
    };
    let tag = format!("{:02}-{}", chain.serials.len() + 1, layer.name);
    let serial = input.logs.join(format!("serial-build-{tag}.log"));
    chain.serials.push((layer.name.to_string(), serial.clone()));
    Ok(LayerVm {
        disk,
        size,
        firmware: if uefi {
            qemu::Firmware::Uefi
        } else {
            qemu::Firmware::Bios
        },
        uefi_vars,
        tag,
        serial,
    })
}

/// `to` gets the parent's UEFI variable store, or the firmware's empty one on the first layer.
fn fresh_vars(input: &ProvisionInput, to: &Path, from: Option<&PathBuf>) -> Result<(), BuildError> {
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
}

/// What a boot-free layer's VM gets besides its disk: the payload, the kernel export that
/// boots the disk below, the shared apt cache disk, and the raw disk the runner exports the
/// kernel onto (lower layers).
struct BootFree<'a> {
    payload: &'a str,
    kernel: &'a Path,
    apt: Option<&'a Path>,
    export: Option<&'a Path>,
}

/// A boot-free layer: the disk's own kernel and initrd booted straight into the layer's
/// payload (render/offline.rs) as PID 1, no systemd and no cloud-init; the same runner and
/// markers as a full boot, the hygiene on the top layer, then power off.
fn boot_free_layer(
    input: &ProvisionInput,
    layer: &PlannedLayer,
    chain: &mut Chain,
    dir: &Path,
    bf: &BootFree,
    p: &mut Progress,
) -> Result<Watch, BuildError> {
    let (payload, kernel) = (bf.payload, bf.kernel);
    let d = &input.resolved.definition;
    let lv = prepare_vm(input, layer, chain, dir)?;
    // Whole sectors, padded with newlines (which the shell reads as empty lines).
    let payload_file = input.work.join(format!("payload-{}.sh", lv.tag));
    let mut text = payload.as_bytes().to_vec();
    text.resize(text.len().div_ceil(512) * 512 + 512, b'\n');
    std::fs::write(&payload_file, &text).map_err(crate::IoError::at(&payload_file))?;
    let cmdline_file = kernel.join("cmdline");
    let cmdline =
        std::fs::read_to_string(&cmdline_file).map_err(crate::IoError::at(&cmdline_file))?;
    let spec = VmSpec {
        arch: input.arch,
        accel: input.accel,
        firmware: lv.firmware,
        // One shell running one step at a time: a second vCPU would idle.
        cpus: 1,
        memory_mib: d.build.memory,
        disk: Some(lv.disk),
        seed_iso: None,
        serial_log: lv.serial,
        qmp: true,
        uefi_vars: lv.uefi_vars,
        hostfwd: Vec::new(),
        extra_disks: bf
            .apt
            .map(|a| vec![(a.to_path_buf(), APT_CACHE_SERIAL.to_string())])
            .unwrap_or_default(),
        extra_nics: Vec::new(),
        // The payload first: it is /dev/vdb (render/offline.rs, INIT).
        raw_disks: std::iter::once((
            payload_file,
            crate::render::offline::PAYLOAD_SERIAL.to_string(),
        ))
        .chain(
            bf.export
                .map(|e| (e.to_path_buf(), EXPORT_SERIAL.to_string())),
        )
        .collect(),
        kernel: Some(qemu::DirectKernel {
            kernel: kernel.join("vmlinuz"),
            initrd: kernel.join("initrd.img"),
            append: format!("{} {}", cmdline.trim(), crate::render::offline::INIT),
        }),
    };
    p.status(
        &format!(
            "layer {} boot-free: its kernel straight into its payload",
            layer.name
        ),
        true,
    );
    let serial_name = input.logs.join("serial-build.log");
    let mut vm = Vm::start(&spec)?;
    let mut watch = Watch::default();
    let timeout = Duration::from_secs(d.build.timeout as u64 * 60);
    let (outcome, line) = vm
        .wait_for_with(
            &VERDICT,
            timeout,
            "provisioning (IMGBUILD-PROVISION-OK)",
            input.cancel,
            &mut |line: &str| {
                if let Event::Step(s) = watch.line(line) {
                    p.status(&format!("{} step {s}", layer.name), true);
                } else if !line.trim().is_empty() {
                    // apt's lines: a long install shows where it is.
                    p.status(line.trim(), false);
                }
            },
        )
        .map_err(interrupted)?;
    finish_layer(input, layer, vm, watch, outcome, &line, &serial_name, p)
}

/// A layer in a full boot: an overlay on the chain's top disk in `dir`, the layer's seed, the
/// provisioning runner, poweroff (after the hygiene, on the top layer); `export`, a raw disk
/// the runner writes the kernel export onto (lower layers).
fn full_boot_layer(
    input: &ProvisionInput,
    layer: &PlannedLayer,
    chain: &mut Chain,
    dir: &Path,
    apt: Option<&Path>,
    export: Option<&Path>,
    p: &mut Progress,
) -> Result<Watch, BuildError> {
    let d = &input.resolved.definition;
    let w = input.work;
    let lv = prepare_vm(input, layer, chain, dir)?;
    let (disk, size, tag, serial) = (lv.disk, lv.size, lv.tag, lv.serial);
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
    let spec = VmSpec {
        arch: input.arch,
        accel: input.accel,
        firmware: lv.firmware,
        cpus: crate::host::vm_cpus(input.resolved, crate::host::vm_cpu_limit()),
        memory_mib: d.build.memory,
        disk: Some(disk.clone()),
        seed_iso: Some(seed_iso),
        serial_log: serial.clone(),
        // QMP lets the wait notice a guest QEMU paused on a full host disk.
        qmp: true,
        uefi_vars: lv.uefi_vars,
        hostfwd: Vec::new(),
        extra_disks: apt
            .map(|a| vec![(a.to_path_buf(), APT_CACHE_SERIAL.to_string())])
            .unwrap_or_default(),
        extra_nics: Vec::new(),
        raw_disks: export
            .map(|e| vec![(e.to_path_buf(), EXPORT_SERIAL.to_string())])
            .unwrap_or_default(),
        kernel: None,
    };
    // In error messages: the joined log every layer's console ends up in.
    let serial_name = input.logs.join("serial-build.log");
    // A TCG guest on an overloaded host can hang at boot (a vCPU that is never scheduled
    // again); such a boot is retried once on a fresh overlay, before anything was provisioned.
    let mut attempt = 0;
    let (vm, watch, outcome, line) = loop {
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
                &VERDICT,
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
                    fresh_vars(input, v, chain.parent_vars.as_ref())?;
                }
                let _ = std::fs::rename(
                    &serial,
                    input.logs.join(format!("serial-build-{tag}-hung.log")),
                );
            }
            Err(e) => return Err(interrupted(e)),
        }
    };
    finish_layer(input, layer, vm, watch, outcome, &line, &serial_name, p)
}

/// After the runner's verdict (`outcome`: 0 ok, 1 failed, 2 kernel panic): the failure, or the
/// hygiene (top layer) and the poweroff.
#[allow(clippy::too_many_arguments)]
fn finish_layer(
    input: &ProvisionInput,
    layer: &PlannedLayer,
    mut vm: Vm,
    mut watch: Watch,
    outcome: usize,
    line: &str,
    serial_name: &Path,
    p: &mut Progress,
) -> Result<Watch, BuildError> {
    match outcome {
        0 => {}
        1 => {
            // Let the runner finish printing, then stop the guest: it stays up on failure.
            std::thread::sleep(Duration::from_millis(500));
            vm.kill();
            return Err(failure(&watch, serial_name));
        }
        _ => {
            let tail = vm.serial_tail();
            vm.kill();
            return Err(BuildError::Provision {
                summary: format!("the guest kernel panicked: {line}"),
                log: format!("\n{tail}"),
                serial: log_name(serial_name),
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
            log_name(serial_name)
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
