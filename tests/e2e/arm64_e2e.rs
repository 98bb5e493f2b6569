//! arm64 for real on this x86 host: `debian12-base` (the real definition) bootstrapped for
//! arm64 by mmdebstrap through qemu-user-static (binfmt_misc), its GRUB built from the tree's
//! arm64-efi modules, provisioned and smoke-booted under qemu-system-aarch64 (TCG, AAVMF).
//! Provisioned without a boot (`--no-cache`: one boot-free payload of everything, the kernel
//! handed to AAVMF by QEMU), then the smoke's boot: every boot is emulated.

use crate::common;

use common::{read_json, TestCommand};

#[test]
fn debian12_base_builds_for_arm64_boots_under_tcg_and_passes_its_smoke() {
    let _vm = crate::one_vm();
    let out = tempfile::tempdir().unwrap();
    let (dir, m) = common::build_real(
        "debian12-base",
        "a1",
        &["--arch", "arm64", "--no-cache"],
        out.path(),
    );
    assert_eq!(m["arch"], "arm64");
    assert_eq!(m["accel"], "tcg");
    assert_eq!(m["base"]["kind"], "bootstrap");
    assert_eq!(m["smoke"]["passed"], true, "{m:#}");
    // One layer, boot-free: the base's exported kernel straight into the payload, no init.
    let layers = m["layers"].as_array().unwrap();
    assert!(layers.len() == 1 && layers[0]["boot_free"] == true, "{m:#}");
    let build_log = std::fs::read_to_string(dir.join("logs/serial-build.log")).unwrap();
    assert!(
        build_log.contains("IMGBUILD-OFFLINE-START all"),
        "{build_log}"
    );
    assert!(!build_log.contains("cloud-init["), "{build_log}");
    let report = read_json(&dir.join("smoke/report.json"));
    assert_eq!(report["passed"], true, "{report:#}");
    // The same checks as the amd64 build of the same definition plans.
    let amd64 = TestCommand::new(&["--json", "show", "debian12-base"]).expect(0);
    let planned = serde_json::from_str::<serde_json::Value>(&amd64.stdout).unwrap()["smoke"]
        ["checks"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    let ran = report["checks"].as_array().unwrap();
    assert!(
        ran.len() >= planned && planned > 0,
        "{} checks ran, {planned} declared",
        ran.len()
    );
    assert!(ran.iter().all(|c| c["passed"] == true));
    // What booted was an arm64 kernel, through UEFI (AAVMF and GRUB's BOOTAA64.EFI).
    let serial = std::fs::read_to_string(dir.join("smoke/serial.log")).unwrap();
    assert!(
        serial.contains("Linux version") && serial.contains("-cloud-arm64"),
        "{}",
        &serial[..serial.len().min(2000)]
    );
    assert!(serial.contains("EFI stub: Booting Linux Kernel"));
    // Its packages are arm64's.
    let bom = std::fs::read_to_string(dir.join(m["bom"]["packages"].as_str().unwrap())).unwrap();
    for p in ["linux-image-cloud-arm64", "grub-efi-arm64-bin"] {
        assert!(
            bom.lines().any(|l| l.split('\t').next() == Some(p)),
            "{p} not in the BOM"
        );
    }
    assert!(!bom.contains("linux-image-cloud-amd64"));
}
