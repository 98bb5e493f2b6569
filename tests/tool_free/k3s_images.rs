//! The K3s images: every one verifies what it downloads and bakes the airgap images; DRBD for
//! the storage images: the smoke's `drbd-9-module` check, run by the guest
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

#[test]
fn every_k3s_image_verifies_what_it_downloads_and_bakes_the_airgap_images() {
    let list = imgbuild(&repo(), &["--json", "list"]);
    let images: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let mut seen = 0;
    for img in images.as_array().unwrap() {
        let name = img["name"].as_str().unwrap();
        let r = imgbuild::definition::Catalog::new(repo().join("images"))
            .load_checked(name)
            .unwrap();
        let Some(k) = &r.definition.features.k3s else {
            continue;
        };
        seen += 1;
        for arch in img["arch"].as_array().unwrap() {
            let arch = arch.as_str().unwrap();
            let out = tempfile::tempdir().unwrap();
            let o = imgbuild(
                &repo(),
                &[
                    "render",
                    name,
                    "--arch",
                    arch,
                    "--out",
                    out.path().to_str().unwrap(),
                ],
            );
            assert!(o.status.success(), "{name}: {}", text(&o).1);
            let all = walk(out.path());
            let (bin, airgap) = match arch {
                "amd64" => ("k3s", "k3s-airgap-images-amd64.tar.zst"),
                _ => ("k3s-arm64", "k3s-airgap-images-arm64.tar.zst"),
            };
            for want in [
                format!("grep -E ' ({bin}|{airgap})$' sha256sum-{arch}.txt | sha256sum -c -"),
                format!("/var/lib/rancher/k3s/agent/images/{airgap}"),
                format!(
                    "https://raw.githubusercontent.com/k3s-io/k3s/{}/install.sh",
                    k.version.replace('+', "%2B")
                ),
                format!("grep -F '{}'", k.version),
            ] {
                assert!(all.contains(&want), "{name} {arch}: {want}");
            }
            assert!(
                !all.contains("get.k3s.io"),
                "{name}: an unpinned install.sh"
            );
        }
        // A supported minor (v1.31 reached its end of life).
        let minor: u32 = k
            .version
            .trim_start_matches("v1.")
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(minor >= 33, "{name}: {}", k.version);
    }
    assert!(seen >= 4, "the catalog's K3s images");
}

#[test]
fn a_site_mirror_and_pinned_digests_replace_github_and_bad_pins_are_refused() {
    let h = "ab".repeat(32);
    let dir = catalog(&[(
        "img",
        &format!(
            "{MINIMAL}features:\n  k3s:\n    mirror: https://mirror.site/k3s/v1.34.2/\n    sha256:\n      k3s: {h}\n      k3s-airgap-images-amd64.tar.zst: {h}\n"
        ),
    )]);
    let out = tempfile::tempdir().unwrap();
    let o = imgbuild(
        dir.path(),
        &["render", "img", "--out", out.path().to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let all = walk(out.path());
    assert!(
        all.contains("\"https://mirror.site/k3s/v1.34.2/$f\""),
        "files from the mirror"
    );
    assert!(all.contains("https://mirror.site/k3s/v1.34.2/install.sh"));
    assert!(
        !all.contains("https://github.com") && !all.contains("githubusercontent"),
        "nothing from GitHub with a mirror"
    );
    assert!(all.contains(&format!("echo '{h}  k3s' | sha256sum -c -")));
    assert!(all.contains(&format!(
        "echo '{h}  k3s-airgap-images-amd64.tar.zst' | sha256sum -c -"
    )));
    let dir = catalog(&[(
        "img",
        &format!(
            "{MINIMAL}features:\n  k3s:\n    sha256:\n      k3s: nothex\n      k3s.exe: {h}\n"
        ),
    )]);
    let o = imgbuild(dir.path(), &["show", "img"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("features.k3s.sha256.k3s") && stderr.contains("64 hex digits"),
        "{stderr}"
    );
    assert!(
        stderr.contains("not a file the build downloads"),
        "{stderr}"
    );
}
