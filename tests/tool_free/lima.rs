//! `imgbuild lima`: the Lima instance YAML for a built artifact, read back with PyYAML.

use crate::common;

use common::*;
use std::path::Path;
use std::process::Command;

/// A build of desktop-ai in `dist`, started at `started`.
fn fake_build(dist: &Path, version: &str, started: &str) -> std::path::PathBuf {
    common::fake_build(
        dist,
        FakeBuild {
            image: "desktop-ai",
            version,
            started,
            data_mib: 1,
            ..Default::default()
        },
    )
}

#[test]
fn lima_yaml_boots_the_newest_build_with_the_desktop_and_stack_ports() {
    let dist = tempfile::tempdir().unwrap();
    fake_build(dist.path(), "1.0", "2026-11-01T10:00:00Z");
    let newest = fake_build(dist.path(), "1.1", "2026-11-20T10:00:00Z");
    let out = dist.path().join("desktop-ai.lima.yaml");
    let o = imgbuild(
        &repo(),
        &[
            "lima",
            "desktop-ai",
            "--dist",
            dist.path().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let y = python_yaml(&out);
    let img = &y["images"][0];
    assert_eq!(
        img["location"],
        std::fs::canonicalize(&newest).unwrap().to_str().unwrap()
    );
    assert_eq!(img["arch"], "x86_64");
    let sha = String::from_utf8(
        Command::new("sha256sum")
            .arg(&newest)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        img["digest"],
        format!("sha256:{}", sha.split_whitespace().next().unwrap())
    );
    assert_eq!(y["cpus"], 4);
    assert_eq!(y["memory"], "8192MiB");
    assert_eq!(y["disk"], "60GiB");
    assert_eq!(y["vmType"], "qemu");
    assert_eq!(y["firmware"]["legacyBIOS"], true);
    let ports: Vec<u64> = y["portForwards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(
                p["hostIP"], "127.0.0.1",
                "forwards stay on the host's loopback"
            );
            assert_eq!(p["guestPort"], p["hostPort"]);
            p["guestPort"].as_u64().unwrap()
        })
        .collect();
    for want in [6080, 5901, 3389, 3000, 11434, 6333] {
        assert!(ports.contains(&want), "{want} not forwarded: {ports:?}");
    }
    // An explicit older version.
    let o = imgbuild(
        &repo(),
        &[
            "lima",
            "desktop-ai",
            "--version",
            "1.0",
            "--dist",
            dist.path().to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    assert!(text(&o).0.contains("desktop-ai-1.0-amd64.qcow2"));
}

#[test]
fn a_missing_or_changed_build_is_refused() {
    let dist = tempfile::tempdir().unwrap();
    let lima = TestCommand::new(&["lima", "desktop-ai", "--dist"]).arg(dist.path());
    let err = lima.expect(2).stderr;
    assert!(err.contains("no build of desktop-ai"), "{err}");
    let artifact = fake_build(dist.path(), "2.0", "2026-11-20T10:00:00Z");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&artifact)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let err = lima.expect(1).stderr;
    assert!(err.contains("artifact changed"), "{err}");
}

/// Lima v2.2.0's rules for an instance file, key by key, as its code states them. Pinned:
/// lima-vm/lima tag v2.2.0 (commit de0816ea4bdc5267b428ab21025889b8dd785526). Returns every
/// violation; `networks` are the names networks.yaml defines (Lima's template's and ours).
fn lima_v2_2_0_violations(y: &serde_json::Value, networks: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    let obj = y.as_object().expect("a mapping");
    // pkg/limatype/lima_yaml.go:16-63, the yaml tags of LimaYAML (an unknown key is only a
    // warning in Lima, pkg/limayaml/marshal.go:63-83; here it is a defect).
    const TOP: &[&str] = &[
        "base",
        "minimumLimaVersion",
        "vmType",
        "vmOpts",
        "os",
        "arch",
        "images",
        "cpuType",
        "cpus",
        "memory",
        "disk",
        "additionalDisks",
        "mounts",
        "mountTypesUnsupported",
        "mountType",
        "mountInotify",
        "ssh",
        "firmware",
        "audio",
        "video",
        "provision",
        "upgradePackages",
        "containerd",
        "guestInstallPrefix",
        "probes",
        "portForwards",
        "copyToHost",
        "message",
        "networks",
        "env",
        "param",
        "dns",
        "hostResolver",
        "propagateProxyEnv",
        "caCerts",
        "rosetta",
        "plain",
        "timezone",
        "nestedVirtualization",
        "user",
        "tpm",
        "osOpts",
    ];
    for k in obj.keys() {
        if !TOP.contains(&k.as_str()) {
            bad.push(format!("unknown key `{k}`"));
        }
    }
    // lima_yaml.go:87-108: VMTypes (wsl2 aside) and ArchTypes.
    const ARCHES: &[&str] = &["x86_64", "aarch64", "armv7l", "ppc64le", "riscv64", "s390x"];
    if let Some(v) = y.get("vmType") {
        if !["qemu", "vz"].contains(&v.as_str().unwrap_or_default()) {
            bad.push(format!("vmType {v}"));
        }
    }
    if let Some(a) = y.get("arch") {
        if !ARCHES.contains(&a.as_str().unwrap_or_default()) {
            bad.push(format!("field `arch` must be one of {ARCHES:?}; got {a}"));
        }
    }
    // validate.go:78-104, 489-506: images set; location; arch; digest `sha256:` + 64 lower hex
    // (go-digest v1.0.0 digest.go:103-118).
    let images = y["images"].as_array().cloned().unwrap_or_default();
    if images.is_empty() {
        bad.push("field `images` must be set".into());
    }
    for (i, img) in images.iter().enumerate() {
        for k in img.as_object().unwrap().keys() {
            if !["location", "arch", "digest", "kernel", "initrd", "variant"].contains(&k.as_str())
            {
                bad.push(format!("images[{i}]: unknown key `{k}`"));
            }
        }
        let loc = img["location"].as_str().unwrap_or_default();
        if loc.is_empty() || !(loc.starts_with('/') || loc.contains("://") || loc.starts_with('~'))
        {
            bad.push(format!("images[{i}].location `{loc}`"));
        }
        if !ARCHES.contains(&img["arch"].as_str().unwrap_or_default()) {
            bad.push(format!("images[{i}].arch {}", img["arch"]));
        }
        if let Some(d) = img.get("digest") {
            let d = d.as_str().unwrap_or_default();
            let hex = d.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64
                || !hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            {
                bad.push(format!("field `images[{i}].digest` is invalid: {d}"));
            }
        }
    }
    // validate.go:106-116 with go-units v0.5.0's sizeRegex
    // `^(\d+(\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$`.
    let go_units = |s: &str| {
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, rest) = s.split_at(num_end);
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        let mut r = rest.chars().peekable();
        if r.peek().is_some_and(|c| "kKmMgGtTpP".contains(*c)) {
            r.next();
        }
        if r.peek().is_some_and(|c| "iI".contains(*c)) {
            r.next();
        }
        if r.peek().is_some_and(|c| "bB".contains(*c)) {
            r.next();
        }
        !num.is_empty()
            && num
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            && r.next().is_none()
    };
    if y["cpus"].as_u64().unwrap_or(0) == 0 {
        bad.push("field `cpus` must be set".into());
    }
    for f in ["memory", "disk"] {
        if !y[f].as_str().is_some_and(go_units) {
            bad.push(format!("field `{f}` has an invalid value: {}", y[f]));
        }
    }
    // validate.go:118-122 and pkg/identifiers/validate.go:41-70.
    let ident = |s: &str| {
        s.len() <= 76
            && s.split(['.', '_', '-'])
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
    };
    for (i, d) in y["additionalDisks"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = d.as_str().or(d["name"].as_str()).unwrap_or_default();
        if !ident(name) {
            bad.push(format!(
                "field `additionalDisks[{i}].name is invalid`: {name}"
            ));
        }
        for k in d.as_object().into_iter().flatten().map(|(k, _)| k) {
            if !["name", "format", "fsType", "fsArgs"].contains(&k.as_str()) {
                bad.push(format!("additionalDisks[{i}]: unknown key `{k}`"));
            }
        }
    }
    // validate.go:124-161: mounts.
    for (i, m) in y["mounts"].as_array().into_iter().flatten().enumerate() {
        let l = m["location"].as_str().unwrap_or_default();
        if !(l.starts_with('/') || l.starts_with('~')) {
            bad.push(format!("mounts[{i}].location `{l}`"));
        }
    }
    // validate.go:191-272: provision modes and which fields each allows.
    for (i, p) in y["provision"].as_array().into_iter().flatten().enumerate() {
        let mode = p["mode"].as_str().unwrap_or("system");
        if ![
            "system",
            "user",
            "boot",
            "data",
            "dependency",
            "ansible",
            "yq",
        ]
        .contains(&mode)
        {
            bad.push(format!(
                "field `provision[{i}].mode` must one of ..., got {mode}"
            ));
        }
        let has = |k: &str| p.get(k).is_some();
        match mode {
            "data" | "yq" => {
                let path = p["path"].as_str().unwrap_or_default();
                if !path.starts_with('/') {
                    bad.push(format!(
                        "field `provision[{i}].path` must be an absolute path"
                    ));
                }
                if let Some(perm) = p.get("permissions") {
                    let s = perm.as_str().unwrap_or_default();
                    if s.is_empty() || !s.chars().all(|c| ('0'..='7').contains(&c)) {
                        bad.push(format!("provision[{i}].permissions `{perm}` is not octal"));
                    }
                }
                if has("script") {
                    bad.push(format!("provision[{i}]: script with mode {mode}"));
                }
            }
            _ => {
                if mode != "ansible" && p["script"].as_str().unwrap_or_default().is_empty() {
                    bad.push(format!("field `provision[{i}].script` must not be empty"));
                }
                for k in ["content", "overwrite", "path", "permissions"] {
                    if has(k) {
                        bad.push(format!("provision[{i}]: `{k}` only with mode data"));
                    }
                }
            }
        }
        // Scripts and content are Go templates (pkg/limayaml/defaults.go:937-956): only the
        // fields Name, Hostname, UID, User, Home, Param may appear between braces.
        for k in ["script", "content"] {
            let t = p[k].as_str().unwrap_or_default();
            for piece in t.split("{{").skip(1) {
                let field = piece.split("}}").next().unwrap_or_default().trim();
                if ![".Name", ".Hostname", ".UID", ".User", ".Home"].contains(&field)
                    && !field.starts_with(".Param.")
                {
                    bad.push(format!("provision[{i}].{k}: template `{{{{{field}}}}}`"));
                }
            }
        }
    }
    // validate.go:273-284: containerd archives needed only when containerd runs.
    let c = &y["containerd"];
    if (c["system"] == true || c["user"] == true) && c["archives"].is_null() {
        bad.push("containerd on without archives".into());
    }
    // validate.go:303-385: port forwards (port 22 is Lima's).
    for (i, f) in y["portForwards"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for k in ["guestPort", "hostPort"] {
            if let Some(p) = f[k].as_u64() {
                if p == 22 || p > 65535 {
                    bad.push(format!("portForwards[{i}].{k} {p}"));
                }
            }
        }
    }
    // validate.go:508-580: networks.
    let mut names = std::collections::BTreeSet::new();
    for (i, n) in y["networks"].as_array().into_iter().flatten().enumerate() {
        let set = ["lima", "socket", "vzNAT"]
            .iter()
            .filter(|k| n.get(**k).is_some())
            .count();
        if set != 1 {
            bad.push(format!("networks[{i}]: exactly one of lima, socket, vzNAT"));
        }
        if let Some(l) = n["lima"].as_str() {
            if !networks.iter().any(|x| x == l) {
                bad.push(format!(
                    "field `networks[{i}].lima` references network `{l}` which is not defined in networks.yaml"
                ));
            }
        }
        let iface = n["interface"].as_str().unwrap_or_default();
        if iface.len() >= 16 || iface.chars().any(|c| c.is_whitespace() || c == '/') {
            bad.push(format!(
                "field `networks[{i}].interface` must be less than 16 bytes: {iface}"
            ));
        }
        if !names.insert(iface.to_string()) {
            bad.push(format!(
                "field `networks[{i}].interface` value {iface} has already been used"
            ));
        }
        for k in n.as_object().unwrap().keys() {
            if ![
                "lima",
                "socket",
                "vzNAT",
                "macAddress",
                "interface",
                "metric",
            ]
            .contains(&k.as_str())
            {
                bad.push(format!("networks[{i}]: unknown key `{k}`"));
            }
        }
    }
    // pkg/driver/vz/vz_driver_darwin.go:261-360: no 9p mounts on vz.
    if y["vmType"] == "vz" && y["mountType"] == "9p" {
        bad.push("vz with 9p".into());
    }
    bad
}

/// Lima's own networks (pkg/networks/networks.TEMPLATE.yaml @ v2.2.0).
const LIMA_DEFAULT_NETWORKS: &[&str] = &["user-v2", "shared", "bridged", "host"];

fn lab_build(
    dist: &Path,
    arch: imgbuild::definition::Arch,
    version: &str,
    compression: &str,
) -> std::path::PathBuf {
    common::fake_build(
        dist,
        FakeBuild {
            image: "kolla-node",
            version,
            started: "2026-11-20T10:00:00Z",
            data_mib: 1,
            arch,
            compression,
        },
    )
}

fn sha256(file: &Path) -> String {
    let o = Command::new("sha256sum").arg(file).output().unwrap();
    String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_kolla_lab_writes_three_nodes_that_pass_limas_rules_key_by_key() {
    use imgbuild::definition::Arch;
    let dist = tempfile::tempdir().unwrap();
    let amd = lab_build(dist.path(), Arch::Amd64, "7-amd64", "none");
    let arm = lab_build(dist.path(), Arch::Arm64, "7-arm64", "none");
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkqDp2mCMYtXJqTnJXVbQhF5Q7vUvVDm3bqNrL1o4Wq deployer@mac";
    std::fs::write(home.path().join(".ssh/id_ed25519.pub"), format!("{key}\n")).unwrap();
    let out = dist.path().join("lab");
    let o = TestCommand::new(&["lima", "--lab", "labs/kolla.yaml", "--dist"])
        .arg(dist.path())
        .arg("-o")
        .arg(&out)
        .env("HOME", home.path())
        .expect(0);
    assert!(o.stdout.contains("wrote"), "{}", o.stdout);

    // networks.yaml: the lab's host-only networks, in Lima's Network shape
    // (pkg/networks/networks.go:35-39: mode, gateway, dhcpEnd, netmask).
    let nets = python_yaml(&out.join("networks.yaml"));
    let lab_nets: Vec<String> = nets["networks"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        lab_nets,
        ["kolla-tunnel", "kolla-external", "kolla-storage"]
    );
    assert_eq!(nets["networks"]["kolla-tunnel"]["mode"], "host");
    assert_eq!(nets["networks"]["kolla-tunnel"]["gateway"], "10.0.1.1");
    assert_eq!(nets["networks"]["kolla-tunnel"]["dhcpEnd"], "10.0.1.254");
    assert_eq!(
        nets["networks"]["kolla-storage"]["netmask"],
        "255.255.255.0"
    );
    let mut known: Vec<String> = LIMA_DEFAULT_NETWORKS
        .iter()
        .map(|s| s.to_string())
        .collect();
    known.extend(lab_nets);

    // The seed's sizes (seeds/002: RAM, vCPU, OS disk per node) and networks per node.
    let want = [
        (
            "node1",
            6,
            "32GiB",
            "60GiB",
            vec!["mgmt", "tunnel", "external", "storage"],
            vec![],
        ),
        (
            "node2",
            4,
            "28GiB",
            "40GiB",
            vec!["mgmt", "tunnel", "storage"],
            vec!["node2-osd"],
        ),
        (
            "node3",
            2,
            "12GiB",
            "30GiB",
            vec!["mgmt", "storage"],
            vec!["node3-cinder", "node3-osd"],
        ),
    ];
    for (name, cpus, mem, disk, ifaces, disks) in want {
        let y = python_yaml(&out.join(format!("{name}.yaml")));
        let bad = lima_v2_2_0_violations(&y, &known);
        assert!(bad.is_empty(), "{name}: {bad:#?}");
        assert_eq!(y["vmType"], "qemu");
        assert_eq!(y["cpus"], cpus, "{name}");
        assert_eq!(y["memory"], mem, "{name}");
        assert_eq!(y["disk"], disk, "{name}");
        // Both arches built: both images, each with its own digest; no fixed arch (Lima
        // takes the host's and picks its image, pkg/instance/start.go).
        assert!(y.get("arch").is_none(), "{name}: {}", y["arch"]);
        let imgs = y["images"].as_array().unwrap();
        assert_eq!(imgs.len(), 2);
        for (img, file, arch) in [(&imgs[0], &amd, "x86_64"), (&imgs[1], &arm, "aarch64")] {
            assert_eq!(img["arch"], arch);
            assert_eq!(
                img["location"],
                std::fs::canonicalize(file).unwrap().to_str().unwrap()
            );
            assert_eq!(img["digest"], format!("sha256:{}", sha256(file)));
        }
        let got: Vec<&str> = y["networks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["interface"].as_str().unwrap())
            .collect();
        assert_eq!(got, ifaces, "{name}");
        assert_eq!(
            y["networks"][0]["lima"], "shared",
            "management is Lima's NAT network"
        );
        let got: Vec<&str> = y["additionalDisks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                assert_eq!(d["format"], false, "{name}: raw disks for LVM and Ceph");
                d["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(got, disks, "{name}");
        assert_eq!(
            y["mounts"],
            serde_json::json!([]),
            "{name}: no mounts unless asked"
        );
        assert_eq!(
            y["plain"], true,
            "{name}: no guest agent forwarding the node's ports"
        );
        // The deployer's key reaches the Lima user on every node.
        let scripts: Vec<&str> = y["provision"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["script"].as_str())
            .collect();
        assert_eq!(scripts.len(), 1, "{name}");
        let script = scripts[0];
        assert!(script.contains(key), "{name}: {script}");
        assert!(script.contains("{{.Home}}/.ssh/authorized_keys"));
        let cinder = script.contains("imgbuild-cinder-volumes /dev/vdb");
        assert_eq!(
            cinder,
            name == "node3",
            "{name}: the cinder disk is node3's first extra disk"
        );
        // The external NIC: DHCP off by a later netplan file, the lease dropped, link up.
        let data: Vec<&serde_json::Value> = y["provision"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["mode"] == "data")
            .collect();
        if name == "node1" {
            assert_eq!(data.len(), 1);
            assert_eq!(data[0]["path"], "/etc/netplan/90-imgbuild-unaddressed.yaml");
            assert_eq!(
                data[0]["permissions"], "600",
                "netplan warns on readable files"
            );
            let f = dist.path().join("override.yaml");
            std::fs::write(&f, data[0]["content"].as_str().unwrap()).unwrap();
            let np = python_yaml(&f);
            let ext = &np["network"]["ethernets"]["external"];
            assert_eq!(np["network"]["version"], 2);
            assert_eq!(ext["dhcp4"], false);
            assert_eq!(ext["dhcp6"], false);
            assert_eq!(ext["accept-ra"], false);
            assert_eq!(ext["link-local"], serde_json::json!([]));
            // The file sorts after Lima's 50-cloud-init.yaml, so netplan's merge lets it win.
            assert!("90-imgbuild-unaddressed.yaml" > "50-cloud-init.yaml");
            for cmd in [
                "netplan apply",
                "ip -4 addr flush dev external",
                "ip link set external up",
            ] {
                assert!(script.contains(cmd), "{cmd}: {script}");
            }
        } else {
            assert!(data.is_empty(), "{name}");
            assert!(!script.contains("netplan"), "{name}");
        }
        // The provision script is valid bash.
        let o = Command::new("bash")
            .args(["-n", "-c", script])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // start.sh: disks before the nodes that use them, each node from its file.
    let start = std::fs::read_to_string(out.join("start.sh")).unwrap();
    let pos = |s: &str| {
        start
            .find(s)
            .unwrap_or_else(|| panic!("{s} not in {start}"))
    };
    assert!(
        pos("limactl disk create node3-cinder --size 10GiB")
            < pos("limactl start --name=node3 --tty=false ./node3.yaml")
    );
    assert!(pos("limactl start --name=node1") < pos("limactl start --name=node2"));
    let o = Command::new("sh")
        .args(["-n"])
        .arg(out.join("start.sh"))
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn one_arch_names_it_and_vz_refuses_zstd_clusters() {
    use imgbuild::definition::Arch;
    let dist = tempfile::tempdir().unwrap();
    lab_build(dist.path(), Arch::Arm64, "8", "zstd");
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    let write_lab = |vm: &str| {
        std::fs::write(
            &lab,
            format!("image: kolla-node\nvm_type: {vm}\nnodes:\n  solo:\n    cpus: 2\n    memory: 4GiB\n    disk: 20GiB\n"),
        )
        .unwrap()
    };
    write_lab("qemu");
    let out = dir.path().join("out");
    TestCommand::new(&["lima", "--lab"])
        .arg(&lab)
        .arg("--dist")
        .arg(dist.path())
        .arg("-o")
        .arg(&out)
        .expect(0);
    let y = python_yaml(&out.join("solo.yaml"));
    assert_eq!(y["arch"], "aarch64");
    assert_eq!(y["images"].as_array().unwrap().len(), 1);
    assert!(lima_v2_2_0_violations(&y, &[]).is_empty());
    assert!(y.get("networks").is_none() && y.get("provision").is_none());
    write_lab("vz");
    let err = TestCommand::new(&["lima", "--lab"])
        .arg(&lab)
        .arg("--dist")
        .arg(dist.path())
        .arg("-o")
        .arg(&out)
        .expect(2)
        .stderr;
    assert!(
        err.contains("zstd") && err.contains("--compression zlib"),
        "{err}"
    );
}

#[test]
fn a_bad_lab_names_the_file_line_and_field() {
    let dist = tempfile::tempdir().unwrap();
    common::fake_build(
        dist.path(),
        FakeBuild {
            image: "kolla-node",
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    let cases: &[(&str, &str)] = &[
        (
            "image: kolla-node\nnodes:\n  a:\n    cpus: 2\n    memory: 4 parsecs\n    disk: 20GiB\n",
            "lab.yaml:5: nodes.a.memory",
        ),
        (
            "image: kolla-node\nnodes:\n  a:\n    cpus: 2\n    memory: 4GiB\n    disk: 20GiB\n    nics:\n      - {network: kolla-x, interface: ext}\n",
            "nodes.a.nics[0].network",
        ),
        (
            "image: kolla-node\nnodes:\n  a:\n    cpus: 2\n    memory: 4GiB\n    disk: 20GiB\n    nics:\n      - {network: shared, interface: averyveryverylongname}\n",
            "nodes.a.nics[0].interface",
        ),
        (
            "image: kolla-node\nnodes:\n  a:\n    cpus: 2\n    memory: 4GiB\n    disk: 20GiB\n    disks: [{name: d1, size: 1GiB}]\n  b:\n    cpus: 2\n    memory: 4GiB\n    disk: 20GiB\n    disks: [{name: d1, size: 1GiB}]\n",
            "nodes.b.disks[0].name",
        ),
        (
            "image: kolla-node\nnodes:\n  a:\n    cpus: 2\n    memory: 4GiB\n    disk: 20GiB\n    colour: blue\n",
            "unknown field `colour`",
        ),
        (
            "image: kolla-node\nnodes:\n  a:\n    cpus: 2\n    memory: 4GiB\n    disk: 1MiB\n",
            "nodes.a.disk: 1MiB is smaller than the image",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&lab, text).unwrap();
        let err = TestCommand::new(&["lima", "--lab"])
            .arg(&lab)
            .arg("--dist")
            .arg(dist.path())
            .arg("-o")
            .arg(dir.path().join("o"))
            .expect(2)
            .stderr;
        assert!(err.contains(want), "want `{want}` in: {err}");
        assert!(
            !dir.path().join("o").join("a.yaml").exists(),
            "nothing written on bad input"
        );
    }
}

#[test]
fn the_lima_rules_reject_what_lima_rejects() {
    let ok = serde_json::json!({
        "vmType": "qemu", "cpus": 2, "memory": "4GiB", "disk": "20GiB",
        "images": [{"location": "/x.qcow2", "arch": "aarch64", "digest": format!("sha256:{}", "a".repeat(64))}],
        "networks": [{"lima": "shared", "interface": "mgmt"}],
        "provision": [{"mode": "system", "script": "#!/bin/sh\necho {{.User}}\n"}],
    });
    assert!(lima_v2_2_0_violations(&ok, &["shared".into()]).is_empty());
    let broken: &[(&str, serde_json::Value, &str)] = &[
        ("/vmType", serde_json::json!("default"), "vmType"),
        ("/memory", serde_json::json!("4 parsecs"), "`memory`"),
        (
            "/images/0/digest",
            serde_json::json!(format!("sha256:{}", "A".repeat(64))),
            "digest",
        ),
        (
            "/networks/0/interface",
            serde_json::json!("x".repeat(16)),
            "16 bytes",
        ),
        (
            "/networks/0/lima",
            serde_json::json!("kolla-nowhere"),
            "not defined in networks.yaml",
        ),
        (
            "/provision/0/script",
            serde_json::json!("{{.Secret}}"),
            "template",
        ),
        (
            "/provision/0/mode",
            serde_json::json!("data"),
            "provision[0].path",
        ),
    ];
    for (ptr, value, want) in broken {
        let mut y = ok.clone();
        *y.pointer_mut(ptr).unwrap() = value.clone();
        let bad = lima_v2_2_0_violations(&y, &["shared".into()]);
        assert!(bad.iter().any(|b| b.contains(want)), "{ptr}: {bad:?}");
    }
    let mut y = ok.clone();
    y["mountz"] = serde_json::json!([]);
    assert!(lima_v2_2_0_violations(&y, &["shared".into()])
        .iter()
        .any(|b| b.contains("mountz")));
}
