//! The Debian 12 twin of desktop-ai (images/debian12-desktop-ai.yaml, the real definition)
//! builds with the real tools and smoke-boots with launch-time user-data, as a workspace VM
//! would: the named user with the given key and VNC password, XFCE in a TigerVNC session that
//! the host logs in to over the network and photographs, noVNC, Docker, the compose project
//! valid, first-boot secrets 0600. Slow (a desktop under TCG): one build serves every assertion.
//! Built in layers (kept in the shared e2e cache), the stack layer boot-free.

use crate::common;

use common::{read_json, repo, smoke_check};

#[test]
fn debian_desktop_twin_builds_and_boots_to_a_vnc_desktop_for_the_launch_user() {
    let _vm = crate::one_vm();
    let out = tempfile::tempdir().unwrap();
    let (dir, m) = common::build_real("debian12-desktop-ai", "d1", &[], out.path());
    assert_eq!(m["smoke"]["passed"], true);
    assert_eq!(m["base"]["kind"], "bootstrap");
    // nouveau blacklisted before the bootstrap made the initramfs, and the NVIDIA driver's
    // DKMS module kept and DKMS purged at the end of the bootstrap, natively; the smoke's
    // nvidia-driver-installed (dkms_free) checks the result.
    assert_eq!(
        m["base"]["steps"],
        serde_json::json!(["nvidia-blacklist-nouveau", "nvidia-keep-module-drop-dkms"])
    );
    // Layered, and no layer booted: the features (the upgrade, the apt sources, the
    // features' offline steps) on the bootstrap base's kernel straight into their payload;
    // no `image` layer (the image's own packages are in the bootstrap base already); the
    // stack (its files, its secrets unit and its own unit enabled, no pre-pull) on the kernel
    // the features layer exported. The smoke below proves the result (stack-secrets-made-at-first-boot,
    // stack-start-page, no-build-leftovers, ...).
    let layers: Vec<(&str, bool)> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l["boot_free"] == true))
        .collect();
    assert_eq!(layers, [("features", true), ("stack", true)], "{m:#}");

    let report = read_json(&dir.join("smoke/report.json"));
    assert_eq!(report["passed"], true, "{report:#}");
    for name in [
        "launch-user",
        "desktop-session",
        "desktop-clean",
        "novnc-serves-client",
        "rdp-login",
        "nvidia-driver-installed",
        "vnc-login-and-desktop",
        "docker-active",
        "novnc-listening",
        "stack-secrets-made-at-first-boot",
        "compose-project-valid",
        "stack-ports-loopback-only",
        "stack-start-page",
        "no-build-leftovers",
        "accounts-as-declared",
        "no-private-keys",
        "no-credential-files",
        "identities-made-at-first-boot",
        "exposure-allowlist",
    ] {
        assert_eq!(
            smoke_check(&report, name)["passed"],
            true,
            "{name}: {report:#}"
        );
    }
    // The start page lists the default `ai` profile's services, and the launch user reads the
    // stack's first-login passwords from their own file.
    let sp = smoke_check(&report, "stack-start-page")["detail"]
        .as_str()
        .unwrap();
    assert!(
        sp.contains("4 services on the page")
            && sp.contains("open-webui")
            && !sp.contains("gitlab"),
        "{sp}"
    );
    assert!(sp.contains("reads 6 first-login passwords"), "{sp}");
    // The launch user-data's user, key and VNC password: checked in the guest, and the VNC
    // password proven by the host's login.
    let lu = smoke_check(&report, "launch-user")["detail"]
        .as_str()
        .unwrap();
    assert!(lu.contains("smoke with the launch key"), "{lu}");
    assert!(
        lu.contains("unlocked with the launch's desktop password"),
        "{lu}"
    );
    // RDP: the host offered a wrong password and the launch's; xrdp refused and granted.
    let rdp = smoke_check(&report, "rdp-login")["detail"]
        .as_str()
        .unwrap();
    assert!(
        rdp.contains("refused a wrong password") && rdp.contains("granted the launch's"),
        "{rdp}"
    );
    let clean = smoke_check(&report, "desktop-clean")["detail"]
        .as_str()
        .unwrap();
    assert!(clean.contains("UDISKS_IGNORE=1"), "{clean}");
    assert!(lu.contains("docker"), "{lu}");
    let vnc = smoke_check(&report, "vnc-login-and-desktop")["detail"]
        .as_str()
        .unwrap();
    assert!(vnc.contains("with the launch password"), "{vnc}");
    assert!(
        smoke_check(&report, "desktop-session")["detail"]
            .as_str()
            .unwrap()
            .contains("XFCE"),
        "{report:#}"
    );

    // The screenshot is the VNC desktop: the configured geometry, and drawn (many colours).
    // A copy stays in target/ for a person (or CI artifacts) to look at.
    let png = dir.join("smoke/screenshot.png");
    let keep = repo().join("target/desktop-e2e");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::copy(&png, keep.join("screenshot.png")).unwrap();
    std::fs::copy(dir.join("smoke/report.json"), keep.join("report.json")).unwrap();
    std::fs::copy(dir.join("manifest.json"), keep.join("manifest.json")).unwrap();
    assert_eq!(report["screenshot"], "screenshot.png");
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 800), "TigerVNC geometry");
    let mut colours = std::collections::HashSet::new();
    for px in buf[..info.buffer_size()].chunks_exact(3) {
        colours.insert([px[0], px[1], px[2]]);
    }
    assert!(
        colours.len() >= 64,
        "the screenshot has {} colours: not a drawn XFCE desktop",
        colours.len()
    );

    // No secret of the stack in the manifest or the rendered files.
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    for word in ["PASSWORD=", "SECRET=", "vnc-password"] {
        assert!(!manifest.contains(word), "manifest mentions {word}");
    }
}
