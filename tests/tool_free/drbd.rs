//! DRBD for the K3s storage images: the smoke's `drbd-9-module` check, run by the guest
//! runner (cloud-init/guest/smoke.py) against a fake `modinfo` first on PATH, fails on the
//! kernel's own 8.4 module and passes on 9.x; the images render the module options and
//! refuse an unproven arch.

use crate::common;
use common::*;
use serde_json::json;

/// The check's result with a `modinfo` that prints `version` (or fails when None).
fn with_modinfo(version: Option<&str>) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("modinfo");
    let body = match version {
        Some(v) => format!("#!/bin/sh\necho {v}\n"),
        None => "#!/bin/sh\necho 'modinfo: ERROR: Module drbd not found.' >&2\nexit 1\n".into(),
    };
    std::fs::write(&fake, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    smoke_py(&format!(
        "import os\nos.environ['PATH'] = {d:?} + ':' + os.environ['PATH']\n\
         print(json.dumps(m.builtin_drbd_module({{'major': 9}})))",
        d = dir.path().to_str().unwrap()
    ))
}

#[test]
fn the_drbd_check_fails_on_the_kernels_8_4_module_and_passes_on_9() {
    let v = with_modinfo(Some("8.4.11"));
    assert_eq!(v[0], false, "{v}");
    assert!(v[1].as_str().unwrap().contains("8.4.11"), "{v}");
    assert_eq!(with_modinfo(None)[0], false);
    let v = with_modinfo(Some("9.2.12"));
    assert_eq!(v[0], true, "{v}");
}

#[test]
fn drbd_images_disable_the_usermode_helper_and_check_the_module() {
    for image in ["k3s-node-drbd", "k3s-server-drbd"] {
        let out = tempfile::tempdir().unwrap();
        let o = imgbuild(
            &repo(),
            &["render", image, "--out", out.path().to_str().unwrap()],
        );
        assert!(o.status.success(), "{image}: {}", text(&o).1);
        let all: String = walk(out.path());
        assert!(
            all.contains("options drbd usermode_helper=disabled"),
            "{image}"
        );
        assert!(
            all.contains("linux-headers-generic") && all.contains("drbd-dkms"),
            "{image}"
        );
        assert!(
            !all.contains("linstor-satellite"),
            "{image}: Piraeus runs the satellite"
        );
        let show = imgbuild(&repo(), &["--json", "show", image]);
        assert!(show.status.success());
    }
    let r = imgbuild::definition::Catalog::new(repo().join("images"))
        .load_checked("k3s-node-drbd")
        .unwrap();
    let checks = imgbuild::pipeline::smoke::checks(&r, None);
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "drbd-9-module" && c["major"] == json!(9)),
        "{checks:?}"
    );
}

#[test]
fn drbd_on_arm64_is_refused_until_proven() {
    let dir = catalog(&[(
        "img",
        &format!(
            "{}features:\n  k3s: {{}}\n  drbd: {{kernel_module: true}}\n",
            MINIMAL.replace("arch: [amd64]", "arch: [amd64, arm64]").replace(
                "base:\n  amd64:\n    bootstrap:\n      suite: bookworm\n",
                "base:\n  amd64:\n    bootstrap:\n      suite: bookworm\n  arm64:\n    bootstrap:\n      suite: bookworm\n"
            )
        ),
    )]);
    let o = imgbuild(dir.path(), &["show", "img"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("features.drbd.kernel_module") && stderr.contains("arm64"),
        "{stderr}"
    );
}

/// Every file under `dir` as one text.
fn walk(dir: &std::path::Path) -> String {
    let mut s = String::new();
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_file() {
            s.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    s
}

#[test]
fn the_gpu_node_defaults_to_the_nvidia_runtime_and_checks_what_needs_no_gpu() {
    let r = imgbuild::definition::Catalog::new(repo().join("images"))
        .load_checked("k3s-node-gpu")
        .unwrap();
    let checks = imgbuild::pipeline::smoke::checks(&r, None);
    let nv = checks
        .iter()
        .find(|c| c["name"] == "nvidia-driver-installed")
        .expect("a driver check");
    assert_eq!(nv["toolkit"], true);
    let out = tempfile::tempdir().unwrap();
    let o = imgbuild(
        &repo(),
        &[
            "render",
            "k3s-node-gpu",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(walk(out.path()).contains("default-runtime: nvidia"));
    // With the module installed (a fake modinfo knows it) the check passes and says what a
    // VM without a GPU did not prove; without it, it fails.
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [
        (
            "modinfo",
            "#!/bin/sh\n[ \"$5\" = nvidia ] && echo 580.95.05 && exit 0\nexit 1\n",
        ),
        ("nomodinfo", "#!/bin/sh\nexit 1\n"),
    ] {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("modinfo"), body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(sub.join("modinfo"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let run = |sub: &str| {
        smoke_py(&format!(
            "import os\nos.environ['PATH'] = {d:?} + ':' + os.environ['PATH']\n\
             print(json.dumps(m.builtin_nvidia_driver({{'toolkit': False}})))",
            d = dir.path().join(sub).to_str().unwrap()
        ))
    };
    let v = run("modinfo");
    assert_eq!(v[0], true, "{v}");
    assert!(
        v[1].as_str().unwrap().contains("nvidia 580.95.05")
            && v[1].as_str().unwrap().contains("not checked"),
        "{v}"
    );
    assert_eq!(run("nomodinfo")[0], false);
}
