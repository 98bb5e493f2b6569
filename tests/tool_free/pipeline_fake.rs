//! The pipeline's orchestration against a fake provisioner: a real definition is loaded and
//! planned, its base "downloaded" from a file:// URL and verified, then a fake provisioner
//! stands in for QEMU/Packer. Compaction (qemu-img), digests, manifest and the atomic hand-over
//! into dist/ are real. Needs qemu-img, boots no VM.

use crate::common;

use imgbuild::definition::{Arch, Catalog};
use imgbuild::pipeline::manifest::{LayerRecord, Manifest};
use imgbuild::pipeline::{
    build_with, Backend, BuildError, BuildOptions, CompressionChoice, ProvisionInput, Provisioned,
    Provisioner,
};
use imgbuild::progress::Progress;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

/// Stands in for a backend: records what the pipeline handed it and either makes a disk on
/// the base (as a provisioner's overlay would be) or fails like a failed provisioning.
struct Fake {
    fail: bool,
    seen: Mutex<Vec<String>>,
}

impl Provisioner for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn provision(
        &self,
        input: &ProvisionInput,
        _p: &mut Progress,
    ) -> Result<Provisioned, BuildError> {
        self.seen.lock().unwrap().push(format!(
            "{} {} layers={} rendered={}",
            input.resolved.name,
            input.arch,
            input
                .layers
                .iter()
                .map(|l| l.name)
                .collect::<Vec<_>>()
                .join(","),
            input.rendered_dir.join("seed/user-data").is_file()
        ));
        assert!(input.base.path.is_file(), "the base is in the cache");
        if self.fail {
            std::fs::write(
                input.logs.join("serial-build.log"),
                "IMGBUILD-PROVISION-FAILED\n",
            )
            .unwrap();
            return Err(BuildError::Provision {
                summary: "step `fake` failed".into(),
                log: String::new(),
                serial: "logs/serial-build.log".into(),
            });
        }
        let disk = input.work.join("fake.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&input.base.path)
            .arg(&disk)
            .status()
            .unwrap();
        assert!(st.success());
        Ok(Provisioned {
            disk,
            keep_disk: false,
            container_images: vec![imgbuild::protocol::ContainerImage {
                image: "docker.io/qdrant/qdrant:v1.12.4".into(),
                id: format!("sha256:{}", "ab".repeat(32)),
                repo_digests: vec![format!("qdrant/qdrant@sha256:{}", "cd".repeat(32))],
                source: "pulled".into(),
            }],
            packages: vec![
                imgbuild::protocol::Package {
                    name: "linux-image-6.1.0-32-cloud-amd64".into(),
                    version: "6.1.129-1".into(),
                    arch: "amd64".into(),
                },
                imgbuild::protocol::Package {
                    name: "zlib1g".into(),
                    version: "1:1.2.13.dfsg-1".into(),
                    arch: "amd64".into(),
                },
                imgbuild::protocol::Package {
                    name: "curl".into(),
                    version: "7.88.1-10+deb12u8".into(),
                    arch: "amd64".into(),
                },
            ],
            layers: input
                .layers
                .iter()
                .map(|l| LayerRecord {
                    name: l.name.into(),
                    key: l.key.clone(),
                    cached: false,
                    seconds: 0.0,
                    built_for: None,
                    boot_free: false,
                    remote: false,
                })
                .collect(),
            leases: Vec::new(),
        })
    }
}

/// A catalog with one image whose base is a small qcow2 behind a file:// URL.
fn catalog(dir: &Path) -> Catalog {
    catalog_with(dir, 0)
}

/// The same, with the base's first `random_mib` MiB filled with random (incompressible) data.
fn catalog_with(dir: &Path, random_mib: usize) -> Catalog {
    let base = dir.join("base.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    if random_mib > 0 {
        let raw = dir.join("random.raw");
        std::fs::write(&raw, imgbuild::random_bytes(random_mib << 20)).unwrap();
        let st = Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&base)
            .status()
            .unwrap();
        assert!(st.success());
        let st = Command::new("qemu-img")
            .args(["resize", "-q"])
            .arg(&base)
            .arg("64M")
            .status()
            .unwrap();
        assert!(st.success());
    }
    let sha = imgbuild::hex(&Sha256::digest(std::fs::read(&base).unwrap()));
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(
        images.join("fake.yaml"),
        format!(
            "description: fake-provisioned image\n\
             os: {{distro: debian, version: \"12\", codename: bookworm}}\n\
             arch: [amd64]\n\
             base:\n  amd64:\n    cloud_image: {{url: \"file://{}\", checksum: \"sha256:{sha}\"}}\n\
             disk: {{size: 1G}}\n\
             packages: [curl]\n\
             scripts: [{{name: hello, run: \"echo hello\"}}]\n",
            base.display()
        ),
    )
    .unwrap();
    Catalog::new(images)
}

fn options(dir: &Path) -> BuildOptions {
    BuildOptions {
        arch: Arch::Amd64,
        backend: Backend::Qemu,
        version: Some("1.0".into()),
        out: dir.join("dist"),
        cache: dir.join("cache"),
        smoke: false,
        compression: CompressionChoice::Auto,
        force: false,
        no_cache: false,
        remote: None,
    }
}

/// Builds `fake` with `opts` through a fake provisioner that fails if `fail`.
fn build_fake(
    r: &imgbuild::definition::Resolved,
    opts: &BuildOptions,
    fail: bool,
) -> (Fake, Result<Manifest, BuildError>) {
    let fake = Fake {
        fail,
        seen: Mutex::new(Vec::new()),
    };
    let result = build_with(
        r,
        opts,
        &fake,
        &AtomicBool::new(false),
        &mut Progress::plain(true),
    );
    (fake, result)
}

#[test]
fn the_pipeline_runs_its_stages_around_a_fake_provisioner() {
    let tmp = tempfile::tempdir().unwrap();
    let r = catalog(tmp.path()).load("fake").unwrap();
    let opts = options(tmp.path());
    let (fake, m) = build_fake(&r, &opts, false);
    let m = m.expect("build");
    // The provisioner got the rendered files, the base and the plan's layers.
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen, vec!["fake amd64 layers=features,image rendered=true"]);
    // Its disk was compacted, digested and described; the version folder is complete.
    let dir = tmp.path().join("dist/fake/1.0");
    let artifact = dir.join("fake-1.0-amd64.qcow2");
    assert!(artifact.is_file());
    let on_disk = Manifest::read(&dir.join("manifest.json")).unwrap();
    assert_eq!(on_disk, m);
    assert_eq!(m.backend, "fake");
    assert_eq!(m.artifact.file, "fake-1.0-amd64.qcow2");
    // The fake's overlay keeps the base's size (a real provisioner grows it to disk.size).
    assert_eq!(m.artifact.virtual_size, 64 << 20);
    assert_eq!(
        m.digests.sha256,
        imgbuild::hex(&Sha256::digest(std::fs::read(&artifact).unwrap()))
    );
    assert_eq!(m.layers.len(), 2);
    assert!(m.smoke.is_none());
    // The bill of materials: Ubuntu's manifest format and a CycloneDX SBOM that CycloneDX's
    // own validator accepts against the official 1.5 schema.
    let bom = m
        .bom
        .as_ref()
        .expect("manifest.json points at the bill of materials");
    assert_eq!(bom.packages, "fake-1.0-amd64.manifest");
    assert_eq!(bom.cyclonedx, "fake-1.0-amd64.cdx.json");
    assert_eq!(
        std::fs::read_to_string(dir.join(&bom.packages)).unwrap(),
        "curl\t7.88.1-10+deb12u8\nlinux-image-6.1.0-32-cloud-amd64\t6.1.129-1\nzlib1g\t1:1.2.13.dfsg-1\n"
    );
    let cdx = dir.join(&bom.cyclonedx);
    let sbom: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cdx).unwrap()).unwrap();
    let purls: Vec<&str> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["purl"].as_str())
        .collect();
    assert!(
        purls.contains(&"pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64&distro=debian-12"),
        "{purls:?}"
    );
    assert!(
        purls
            .iter()
            .any(|p| p.starts_with("pkg:docker/qdrant/qdrant@sha256%3Acdcd")),
        "{purls:?}"
    );
    assert!(sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["bom-ref"] == "kernel" && c["version"] == "6.1.0-32-cloud-amd64"));
    assert_eq!(
        sbom["metadata"]["component"]["hashes"][0]["content"],
        m.digests.sha256
    );
    common::validate_cyclonedx(&cdx);
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(
        sums,
        format!("{}  fake-1.0-amd64.qcow2\n", m.digests.sha256)
    );
    // The same version again is bad input, not a rebuild.
    let again = build_fake(&r, &opts, false).1;
    assert!(
        matches!(again, Err(BuildError::Exists(_))),
        "{:?}",
        again.err()
    );
}

#[test]
fn a_failed_provisioning_leaves_nothing_in_dist_and_keeps_its_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let r = catalog(tmp.path()).load("fake").unwrap();
    let opts = options(tmp.path());
    let e = build_fake(&r, &opts, true).1.expect_err("the fake fails");
    assert!(e.to_string().contains("step `fake` failed"), "{e}");
    assert!(!tmp.path().join("dist/fake/1.0").exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("dist/fake"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "dist holds {leftovers:?}");
    // The work folder is gone; the failed build's logs are kept under the cache.
    let work = tmp.path().join("cache/work");
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "work folders left: {left:?}");
    let failed = tmp.path().join("cache/failed");
    let kept: Vec<_> = walkdir::WalkDir::new(&failed)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name() == "serial-build.log")
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "the failed build's serial log is kept under {failed:?}"
    );
}

/// Set in the child that runs inside its own mount namespace with the output folder on a
/// small tmpfs (see the test below).
const FULL_OUT: &str = "IMGBUILD_TEST_FULL_OUT";

#[test]
fn a_full_output_folder_ends_the_build_naming_it_and_leaves_nothing_in_dist() {
    if let Ok(out) = std::env::var(FULL_OUT) {
        // The child: the output folder is a 1 MiB tmpfs, the cache is not; the fake's
        // artifact does not fit when it is handed over into dist.
        let tmp = tempfile::tempdir().unwrap();
        let r = catalog_with(tmp.path(), 4).load("fake").unwrap();
        let mut opts = options(tmp.path());
        opts.out = out.clone().into();
        let e = build_fake(&r, &opts, false)
            .1
            .expect_err("the output folder is too small");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("no space left in {out} (the output folder)")),
            "{msg}"
        );
        assert!(msg.contains("nothing was written to dist/"), "{msg}");
        let left: Vec<_> = walkdir::WalkDir::new(&out)
            .min_depth(1)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().display().to_string())
            .collect();
        assert!(left.is_empty(), "files left in dist: {left:?}");
        return;
    }
    // The parent: runs this test again inside a mount namespace with the tmpfs.
    let out = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = r#"mount -t tmpfs -o size=1m imgbuild-out "$OUT" || exit 99; exec "$EXE" --exact "$TEST" --nocapture"#;
    let o = common::in_mount_namespace(script)
        .env("OUT", out.path())
        .env("EXE", &exe)
        .env(
            "TEST",
            format!(
                "{}::a_full_output_folder_ends_the_build_naming_it_and_leaves_nothing_in_dist",
                module_path!().split_once("::").map_or("", |(_, m)| m)
            ),
        )
        .env(FULL_OUT, out.path())
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_ne!(o.status.code(), Some(99), "could not mount a tmpfs: {se}");
    assert!(o.status.success(), "the child failed:\n{so}\n{se}");
    assert!(so.contains("1 passed"), "the child ran no test:\n{so}");
}
