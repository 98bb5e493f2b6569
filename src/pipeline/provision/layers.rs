//! The layer plan of a native build (pure): which layers, in which order, under which cache
//! keys. A layer's key hashes its parent's key and everything the layer's boot renders from:
//! its user-data, the network-config, the disk size, firmware and arch. So a change to one
//! layer changes its key and the keys of every layer above it, and nothing below.

use crate::definition::Arch;
use crate::render::{Rendered, NETWORK_CONFIG, USER_DATA};
use sha2::{Digest, Sha256};

/// Bumped when the way a layer is made changes (runner, hygiene, disk handling), so that old
/// cache entries are not mixed with new ones.
/// 2: lower layers name no image (shared across images) and export their kernel for
/// boot-free layers above them.
pub const FORMAT: &str = "imgbuild-layer-2";

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedLayer {
    pub name: &'static str,
    pub key: String,
    pub parent_key: Option<String>,
    /// The layer's user-data (a path among the rendered files) and its content.
    pub user_data_path: String,
    pub user_data: String,
    /// The top layer: its boot ends with the hygiene.
    pub top: bool,
    /// The boot-free payload (a path among the rendered files, its content), when the layer
    /// needs no running system.
    pub offline: Option<(String, String)>,
}

/// What a layer's disk depends on beyond its user-data.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskSettings {
    pub arch: Arch,
    pub size: Option<u64>,
    pub uefi: bool,
}

fn key(parent: &str, name: &str, user_data: &str, network: &str, s: &DiskSettings) -> String {
    let mut h = Sha256::new();
    for part in [
        FORMAT,
        parent,
        name,
        user_data,
        network,
        s.arch.as_str(),
        &s.size.map(|v| v.to_string()).unwrap_or_default(),
        if s.uefi { "uefi" } else { "bios" },
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    crate::hex(&h.finalize())
}

/// The payload at `path` among the rendered files, with its path.
fn payload(rendered: &Rendered, path: Option<&String>) -> Option<(String, String)> {
    path.map(|p| (p.clone(), rendered.get(p).unwrap_or_default().to_string()))
}

/// What a layer's key hashes of its own: the user-data, and the payload when it has one (made
/// from the same content, it is in the key so that a change to how payloads are made rebuilds
/// the layers that use one).
fn content(user_data: &str, offline: &Option<(String, String)>) -> String {
    match offline {
        Some((_, payload)) => format!("{user_data}\0{payload}"),
        None => user_data.to_string(),
    }
}

/// The layers of `rendered` on the base whose sha256 is `base_sha256`, bottom first.
pub fn plan(base_sha256: &str, rendered: &Rendered, s: &DiskSettings) -> Vec<PlannedLayer> {
    let network = rendered.get(NETWORK_CONFIG).unwrap_or_default();
    let mut parent = format!("base:{base_sha256}");
    let mut parent_key = None;
    let n = rendered.layers.len();
    let mut out = Vec::new();
    for (i, l) in rendered.layers.iter().enumerate() {
        let ud = rendered.get(&l.user_data).unwrap_or_default().to_string();
        let offline = payload(rendered, l.offline.as_ref());
        let k = key(&parent, l.name, &content(&ud, &offline), network, s);
        out.push(PlannedLayer {
            name: l.name,
            key: k.clone(),
            parent_key: parent_key.clone(),
            user_data_path: l.user_data.clone(),
            user_data: ud,
            top: i + 1 == n,
            offline,
        });
        parent = k.clone();
        parent_key = Some(k);
    }
    out
}

/// One layer holding everything (the flat user-data, and the flat payload when all of it can
/// be boot-free), for builds that keep no layers.
pub fn single(base_sha256: &str, rendered: &Rendered, s: &DiskSettings) -> Vec<PlannedLayer> {
    let network = rendered.get(NETWORK_CONFIG).unwrap_or_default();
    let ud = rendered.get(USER_DATA).unwrap_or_default().to_string();
    let offline = payload(rendered, rendered.flat_offline.as_ref());
    vec![PlannedLayer {
        name: "all",
        key: key(
            &format!("base:{base_sha256}"),
            "all",
            &content(&ud, &offline),
            network,
            s,
        ),
        parent_key: None,
        user_data_path: USER_DATA.to_string(),
        user_data: ud,
        top: true,
        offline,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::load::Catalog;
    use crate::render::{render, RenderOptions};

    const DEF: &str = "\
description: layers
os: {distro: debian, version: \"12\", codename: bookworm}
arch: [amd64]
base:
  amd64:
    bootstrap: {suite: bookworm}
packages: [jq]
features:
  docker: {source: distro}
scripts:
  - name: mark
    run: echo hi > /etc/mark
";

    /// The layers planned for definition `def` (amd64, a 4 GiB BIOS disk) on base `base`.
    fn plan_of(def: &str, base: &str) -> Vec<PlannedLayer> {
        let dir = tempfile::tempdir().unwrap();
        plan_in(dir.path(), def, base)
    }

    /// The same, with `def` written to the images folder `images` (for files beside it).
    fn plan_in(images: &std::path::Path, def: &str, base: &str) -> Vec<PlannedLayer> {
        plan_with(images, def, base, plan)
    }

    /// `how` (plan or single) of definition `def` written to `images`.
    fn plan_with(
        images: &std::path::Path,
        def: &str,
        base: &str,
        how: fn(&str, &Rendered, &DiskSettings) -> Vec<PlannedLayer>,
    ) -> Vec<PlannedLayer> {
        std::fs::write(images.join("t.yaml"), def).unwrap();
        let r = Catalog::new(images).load("t").expect("valid definition");
        let rendered = render(&r, Arch::Amd64, RenderOptions::default()).unwrap();
        let s = DiskSettings {
            arch: Arch::Amd64,
            size: Some(4 << 30),
            uefi: false,
        };
        how(base, &rendered, &s)
    }

    fn keys(def: &str, base: &str) -> Vec<(&'static str, String)> {
        plan_of(def, base)
            .into_iter()
            .map(|l| (l.name, l.key))
            .collect()
    }

    /// Keys of a definition with the e2e fixture's compose stack (`compose` as its file).
    fn keys_with_stack(compose: &str) -> Vec<(&'static str, String)> {
        plan_with_stack(compose)
            .into_iter()
            .map(|l| (l.name, l.key))
            .collect()
    }

    fn plan_with_stack(compose: &str) -> Vec<PlannedLayer> {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let project = dir.path().join("compose/probe");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join("compose.yaml"), compose).unwrap();
        let def = DEF.replace(
            "features:\n",
            "features:\n  compose_stack: {project: ../compose/probe, profiles: [probe]}\n",
        );
        plan_in(&images, &def, "b1")
    }

    #[test]
    fn layers_that_update_apt_bring_and_save_the_package_lists_of_the_shared_disk() {
        let compose = include_str!("../../../tests/fixtures/compose/probe/compose.yaml");
        let layers = plan_with_stack(compose);
        let carries = |l: &PlannedLayer, cmd: &str| {
            let doc: serde_json::Value = serde_norway::from_str(&l.user_data).unwrap();
            doc["bootcmd"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c[2] == cmd)
        };
        use crate::render::cloud_init::{APT_CACHE_BOOTCMD, APT_LISTS_BOOTCMD};
        let lists: Vec<(&str, bool, bool)> = layers
            .iter()
            .map(|l| {
                (
                    l.name,
                    carries(l, APT_CACHE_BOOTCMD),
                    carries(l, APT_LISTS_BOOTCMD),
                )
            })
            .collect();
        // The features (upgrade, docker) and image (jq) layers run `apt-get update`; the
        // stack layer installs nothing and keeps its parent's lists.
        assert_eq!(
            lists,
            [
                ("features", true, true),
                ("image", true, true),
                ("stack", true, false)
            ]
        );
    }

    #[test]
    fn a_change_to_the_compose_stack_changes_only_the_stack_layer() {
        let compose = include_str!("../../../tests/fixtures/compose/probe/compose.yaml");
        let a = keys_with_stack(compose);
        let names: Vec<&str> = a.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["features", "image", "stack"]);
        let b = keys_with_stack(&compose.replace(
            "    mem_limit: 64m\n",
            "    mem_limit: 64m\n    labels: {imgbuild.test: changed}\n",
        ));
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
    }

    #[test]
    fn per_feature_layers_rebuild_from_the_changed_feature_up() {
        let def = DEF.replace(
            "features:\n",
            "build: {layers: per-feature}\nfeatures:\n  hardening: true\n",
        );
        let a = keys(&def, "b1");
        let names: Vec<&str> = a.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["hardening", "docker", "image"]);

        // docker changes: hardening is reused, docker and image are rebuilt.
        let b = keys(
            &def.replace(
                "docker: {source: distro}",
                "docker: {source: distro, users: [x]}",
            ),
            "b1",
        );
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_ne!(a[2], b[2]);

        // The image's own script: only the top layer.
        let c = keys(&def.replace("echo hi", "echo ho"), "b1");
        assert_eq!(a[..2], c[..2]);
        assert_ne!(a[2], c[2]);

        // Grouped (the default) makes one features layer of the same two features.
        let g = keys(&def.replace("build: {layers: per-feature}\n", ""), "b1");
        let names: Vec<&str> = g.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["features", "image"]);
    }

    #[test]
    fn per_feature_layers_upgrade_and_configure_apt_in_the_lowest_layer_only() {
        let def = DEF.replace(
            "features:\n",
            "build: {layers: per-feature}\napt:\n  proxy: http://127.0.0.1:3142\nfeatures:\n  hardening: true\n",
        );
        let layers = plan_of(&def, "b1");
        let upgrades: Vec<bool> = layers
            .iter()
            .map(|l| l.user_data.contains("package_upgrade: true"))
            .collect();
        assert_eq!(upgrades, [true, false, false]);
        let proxies: Vec<bool> = layers
            .iter()
            .map(|l| l.user_data.contains("127.0.0.1:3142"))
            .collect();
        assert_eq!(proxies, [true, false, false]);
        // Docker's packages are in its own layer, not in hardening's.
        assert!(!layers[0].user_data.contains("docker.io"));
        assert!(layers[1].user_data.contains("docker.io"));
    }

    #[test]
    fn layers_come_in_order_and_only_the_changed_layer_and_those_above_change() {
        let a = keys(DEF, "b1");
        let names: Vec<&str> = a.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["features", "image"]);

        // The image's own script: only the top layer.
        let b = keys(&DEF.replace("echo hi", "echo ho"), "b1");
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);

        // A feature: its layer and everything above.
        let c = keys(
            &DEF.replace(
                "docker: {source: distro}",
                "docker: {source: distro, users: [x]}",
            ),
            "b1",
        );
        assert_ne!(a[0], c[0]);
        assert_ne!(a[1], c[1]);

        // Another base: all of them.
        let d = keys(DEF, "b2");
        assert!(a.iter().zip(&d).all(|(x, y)| x.1 != y.1));

        // The same input: the same keys.
        assert_eq!(a, keys(DEF, "b1"));
    }

    /// The layers of images `names` from one images folder holding `files` (name, text).
    fn plan_catalog(files: &[(&str, &str)], names: &[&str]) -> Vec<Vec<PlannedLayer>> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(format!("{name}.yaml")), text).unwrap();
        }
        let s = DiskSettings {
            arch: Arch::Amd64,
            size: Some(4 << 30),
            uefi: false,
        };
        names
            .iter()
            .map(|n| {
                let r = Catalog::new(dir.path()).load(n).expect("valid definition");
                let rendered = render(&r, Arch::Amd64, RenderOptions::default()).unwrap();
                plan("b1", &rendered, &s)
            })
            .collect()
    }

    const CHILD: &str = "extends: parentimg\ndescription: child\nscripts:\n  - name: more\n    run: echo more > /etc/more\n";

    #[test]
    fn images_that_share_content_share_their_lower_layers_and_nothing_names_the_image() {
        let copy = DEF.replace("description: layers", "description: a copy");
        let files = [
            ("parentimg", DEF),
            ("childimg", CHILD),
            ("twinimg", copy.as_str()),
        ];
        let all = plan_catalog(&files, &["parentimg", "childimg", "twinimg"]);
        let (parent, child, copy) = (&all[0], &all[1], &all[2]);
        let names = |ls: &[PlannedLayer]| ls.iter().map(|l| l.name).collect::<Vec<_>>();
        assert_eq!(names(parent), ["features", "image"]);
        assert_eq!(names(child), ["features", "image"]);
        // The child adds a script: the features layer is the parent's; its top is its own.
        assert_eq!(parent[0].key, child[0].key);
        assert_eq!(parent[0].user_data, child[0].user_data);
        assert_ne!(parent[1].key, child[1].key);
        // The same content under another name: every lower layer is shared; the top layer
        // carries the image's identity (/etc/imgbuild/image.json, its comment).
        assert_eq!(parent[0].key, copy[0].key);
        assert_ne!(parent[1].key, copy[1].key);
        for (image, layers) in [
            ("parentimg", parent),
            ("childimg", child),
            ("twinimg", copy),
        ] {
            for l in layers {
                assert_eq!(
                    l.user_data.contains(image),
                    l.top,
                    "{image}: layer {} (top: {}) names the image or its top does not:\n{}",
                    l.name,
                    l.top,
                    l.user_data
                );
            }
            assert!(layers
                .last()
                .unwrap()
                .user_data
                .contains("/etc/imgbuild/image.json"));
            assert!(layers[..layers.len() - 1]
                .iter()
                .all(|l| !l.user_data.contains("/etc/imgbuild/image.json")));
        }
        // Nor does a lower layer's meta-data (its hostname lands on the disk).
        use crate::render::cloud_init::{layer_meta_data, LAYER_HOSTNAME};
        let lower = layer_meta_data(None, Arch::Amd64, "features", &parent[0].key);
        assert!(
            lower.contains(LAYER_HOSTNAME) && !lower.contains("parentimg"),
            "{lower}"
        );
        let top = layer_meta_data(Some("parentimg"), Arch::Amd64, "image", &parent[1].key);
        assert!(top.contains("local-hostname: parentimg"), "{top}");
    }

    #[test]
    fn a_change_to_the_parents_content_rebuilds_the_shared_layer_for_both_images() {
        let before = plan_catalog(
            &[("parentimg", DEF), ("childimg", CHILD)],
            &["parentimg", "childimg"],
        );
        let changed = DEF.replace(
            "docker: {source: distro}",
            "docker: {source: distro, users: [x]}",
        );
        let after = plan_catalog(
            &[("parentimg", changed.as_str()), ("childimg", CHILD)],
            &["parentimg", "childimg"],
        );
        // Both images' features layers changed, to the same new key; every layer above too.
        assert_ne!(before[0][0].key, after[0][0].key);
        assert_eq!(after[0][0].key, after[1][0].key);
        for i in 0..2 {
            assert!(before[i].iter().zip(&after[i]).all(|(b, a)| b.key != a.key));
        }
    }

    #[test]
    fn a_layer_gets_a_payload_when_it_needs_no_boot_unless_the_definition_says_otherwise() {
        // DEF's image layer installs jq: without it, only the script decides.
        let offline = DEF
            .replace("packages: [jq]\n", "")
            .replace("    run: echo hi", "    offline: true\n    run: echo hi");
        let has = |def: &str| {
            plan_of(def, "b1")
                .iter()
                .map(|l| l.offline.is_some())
                .collect::<Vec<_>>()
        };
        // The features layer (an upgrade, docker's offline step) needs no boot; the image
        // layer needs one while its script is not marked offline, packages or not.
        assert_eq!(has(DEF), [true, false]);
        assert_eq!(has(&DEF.replace("packages: [jq]\n", "")), [true, false]);
        assert_eq!(has(&offline), [true, true]);
        assert_eq!(
            has(&DEF.replace("    run: echo hi", "    offline: true\n    run: echo hi")),
            [true, true]
        );
        let never = offline.replace("features:\n", "build: {boot_free: false}\nfeatures:\n");
        assert_eq!(has(&never), [false, false]);
        // The payload is in the key: a boot-free layer and a booted one are not the same entry.
        let a = plan_of(&offline, "b1");
        let b = plan_of(&never, "b1");
        assert_ne!(a[0].key, b[0].key);
        assert_ne!(a[1].key, b[1].key);
        let (path, text) = a[1].offline.as_ref().unwrap();
        assert!(path.ends_with("02-image/offline.sh"), "{path}");
        assert!(text.contains("provision --offline-top"));
    }

    #[test]
    fn a_build_without_layers_is_boot_free_when_all_of_its_work_can_be() {
        let dir = tempfile::tempdir().unwrap();
        let single_of = |def: &str| plan_with(dir.path(), def, "b1", single);
        // DEF's script needs a boot, so the one build of it does.
        let booted = single_of(DEF);
        assert_eq!(booted.len(), 1);
        assert!(booted[0].offline.is_none());
        let offline = DEF.replace("    run: echo hi", "    offline: true\n    run: echo hi");
        let flat = single_of(&offline);
        let (path, text) = flat[0].offline.as_ref().expect("a flat payload");
        assert_eq!(path, crate::render::FLAT_OFFLINE);
        // Every layer's work in one payload, in the layers' order, with the hygiene.
        let layered = plan_of(&offline, "b1");
        let upgrade = text
            .find("apt_run dist-upgrade")
            .expect("the features layer's upgrade");
        // One install of every layer's packages, as the flat user-data's one `packages:`.
        let jq = text.find("apt_run install ").expect("an install");
        let install = text[jq..].lines().next().unwrap();
        assert!(install.split(' ').any(|w| w == "jq"), "{install}");
        let mark = text
            .find("-mark.sh 0755")
            .expect("the image layer's script");
        assert!(upgrade < jq && jq < mark, "{text}");
        for l in &layered {
            let (_, t) = l.offline.as_ref().unwrap();
            for step in t.lines().filter(|l| l.contains("/steps/")) {
                assert!(text.contains(step), "{step} is not in the flat payload");
            }
        }
        assert!(text.contains("provision --offline-top"));
        assert!(text.contains("OFFLINE-START all"));
        // Its key is not the booted build's.
        assert_ne!(flat[0].key, booted[0].key);
        let never = offline.replace("features:\n", "build: {boot_free: false}\nfeatures:\n");
        assert!(single_of(&never)[0].offline.is_none());
    }

    #[test]
    fn packages_the_bootstrap_base_has_are_not_installed_again() {
        // DEF's image layer installs jq; with jq in the bootstrap base it does not (and with
        // its script offline, it is boot-free either way).
        let offline = DEF.replace("    run: echo hi", "    offline: true\n    run: echo hi");
        let in_base = offline.replace(
            "bootstrap: {suite: bookworm}",
            "bootstrap: {suite: bookworm, packages: [jq]}",
        );
        let has = |def: &str| {
            plan_of(def, "b1")
                .iter()
                .map(|l| {
                    let payload = l.offline.as_ref().map(|(_, t)| t.as_str()).unwrap_or("");
                    (
                        l.name,
                        l.user_data.contains("- jq"),
                        payload.contains("apt_run install jq"),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            has(&offline),
            [("features", false, false), ("image", true, true)]
        );
        assert_eq!(
            has(&in_base),
            [("features", false, false), ("image", false, false)]
        );
    }
}
