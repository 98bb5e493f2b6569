//! `imgbuild doctor`: what this host can do. Tool versions with the install command for
//! anything missing, whether KVM really runs a guest (probed by booting, never assumed), and
//! free disk space in the cache.

use crate::definition::Arch;
use crate::exec::{install_hint, which, Cmd};
use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct ToolStatus {
    pub name: String,
    /// What needs it.
    pub needed_for: String,
    pub required: bool,
    pub path: Option<String>,
    pub version: Option<String>,
    pub install: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tools: Vec<ToolStatus>,
    pub accel: String,
    pub accel_reason: String,
    pub cache_dir: String,
    pub cache_free_bytes: Option<u64>,
    /// Every required tool is there.
    pub ready: bool,
}

/// (program, version argument, needed for, required for `build --backend qemu`).
const TOOLS: &[(&str, &str, &str, bool)] = &[
    (
        "qemu-system-x86_64",
        "--version",
        "build, smoke (amd64)",
        true,
    ),
    (
        "qemu-system-aarch64",
        "--version",
        "build, smoke (arm64)",
        false,
    ),
    ("qemu-img", "--version", "overlays, compaction", true),
    ("xorriso", "-version", "NoCloud seed", true),
    (
        "packer",
        "version",
        "build --backend packer, validate",
        false,
    ),
    ("mmdebstrap", "--version", "bootstrap bases", false),
    (
        "arch-test",
        "--version",
        "bootstrap bases of a foreign arch (mmdebstrap asks it)",
        false,
    ),
    ("sgdisk", "--version", "bootstrap bases", false),
    ("mcopy", "--version", "bootstrap bases (UEFI)", false),
    ("grub-mkimage", "--version", "bootstrap bases", false),
    ("cloud-init", "--version", "validate (schema)", false),
    ("check-jsonschema", "--version", "validate (schemas)", false),
];

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn run(cache: &Path) -> Report {
    let tools_found = crate::check::Tools::discover();
    let mut tools = Vec::new();
    for (name, arg, needed_for, required) in TOOLS {
        let path = if *name == "check-jsonschema" {
            tools_found.check_jsonschema.clone()
        } else {
            which(name)
        };
        let version = path.as_ref().and_then(|p| {
            let out = Cmd::new(p)
                .arg(arg)
                .env("CHECKPOINT_DISABLE", "1")
                .run_unchecked()
                .ok()?;
            let text = if out.stdout.is_empty() {
                String::from_utf8_lossy(&out.stderr).into_owned()
            } else {
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            Some(first_line(&text))
        });
        tools.push(ToolStatus {
            name: name.to_string(),
            needed_for: needed_for.to_string(),
            required: *required,
            install: if path.is_none() {
                install_hint(name).map(str::to_string)
            } else {
                None
            },
            path: path.map(|p| p.display().to_string()),
            version,
        });
    }
    let ovmf = crate::qemu::uefi_firmware(Arch::Amd64);
    tools.push(ToolStatus {
        name: "OVMF".into(),
        needed_for: "UEFI images, the KVM probe".into(),
        required: false,
        path: ovmf.as_ref().map(|(c, _)| c.display().to_string()),
        version: None,
        install: ovmf.is_none().then(|| "apt-get install ovmf".to_string()),
    });
    // arm64 (or any arch but the host's): firmware to boot it, and binfmt_misc to bootstrap it.
    for arch in Arch::ALL.into_iter().filter(|a| *a != Arch::host()) {
        if arch == Arch::Arm64 {
            let aavmf = crate::qemu::uefi_firmware(arch);
            tools.push(ToolStatus {
                name: "AAVMF".into(),
                needed_for: "build, smoke (arm64: UEFI is its only firmware)".into(),
                required: false,
                path: aavmf.as_ref().map(|(c, _)| c.display().to_string()),
                version: None,
                install: aavmf
                    .is_none()
                    .then(|| format!("apt-get install {}", crate::host::uefi_package(arch))),
            });
        }
        let entry = crate::bootstrap::binfmt_entry(arch);
        let binfmt = crate::bootstrap::check_foreign_arch(arch);
        tools.push(ToolStatus {
            name: format!("binfmt {entry}"),
            needed_for: format!("bootstrap bases for {arch} on this {} host", Arch::host()),
            required: false,
            path: binfmt
                .is_ok()
                .then(|| format!("/proc/sys/fs/binfmt_misc/{entry}")),
            version: match &binfmt {
                Ok(()) => Some("enabled".into()),
                Err(e) => Some(e.to_string()),
            },
            install: binfmt.is_err().then(|| {
                "apt-get install -t bookworm-backports qemu-user-static; scripts/install-host-tools.sh registers it".to_string()
            }),
        });
    }
    let accel = crate::qemu::probe_accel(Arch::host());
    let ready = tools.iter().all(|t| !t.required || t.path.is_some());
    Report {
        tools,
        accel: accel.accel.as_str().into(),
        accel_reason: match &accel.detail {
            Some(d) => format!("{} (QEMU said: {d})", accel.reason),
            None => accel.reason,
        },
        cache_dir: cache.display().to_string(),
        cache_free_bytes: crate::host::free_bytes(cache),
        ready,
    }
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = String::new();
        for t in &self.tools {
            let mark = match (&t.path, t.required) {
                (Some(_), _) => "ok  ",
                (None, true) => "MISS",
                (None, false) => "miss",
            };
            s.push_str(&format!(
                "{mark} {:20} {}",
                t.name,
                t.version.clone().or(t.path.clone()).unwrap_or_default()
            ));
            if let Some(i) = &t.install {
                s.push_str(&format!("  (for {}; install: {i})", t.needed_for));
            }
            s.push('\n');
        }
        s.push_str(&format!("accel {}: {}\n", self.accel, self.accel_reason));
        s.push_str(&format!(
            "cache {}: {}\n",
            self.cache_dir,
            self.cache_free_bytes
                .map(|b| format!("{:.1} GiB free", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_else(|| "free space unknown".into())
        ));
        s
    }
}
