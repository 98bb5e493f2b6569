//! The Debian 12 twin of kolla-node (images/debian12-kolla-node.yaml, the real definition)
//! checked by Kolla-Ansible itself: built and smoke-booted, then booted in the lab's shape —
//! a second NIC that must stay without an address (Neutron's external interface), an extra
//! disk named at launch for Cinder's `cinder-volumes` group (`imgbuild userdata
//! --cinder-volumes`), SSH on a loopback port forward — and Kolla-Ansible 2025.2
//! (kolla-ansible 21.3.0 and Ansible 11 from PyPI, in target/kolla-venv) runs its
//! `prechecks` against it as a one-node inventory.
//!
//! Not run here, and why (README, "The Kolla-Ansible lab"): `bootstrap-servers` applies the
//! role `openstack.kolla.baremetal` from ansible-collection-kolla, which `kolla-ansible
//! install-deps` clones from opendev.org (not on PyPI; out of reach here). What that role
//! would change the image already has (features/kolla_host.rs, checked by the smoke's
//! `kolla-host-ready`), except /etc/hosts: its `etc_hosts` role maps each host's name to its
//! API address from the inventory, which no image can know; this test writes that one line
//! the way the role does. The NTP precheck is off: nothing here serves NTP to the VM.
//!
//! With IMGBUILD_KOLLA_COLLECTION (a checkout of ansible-collection-kolla stable/2025.2) the
//! test runs bootstrap-servers first, and fails if it had to change what the image prepares.
//! Run so on 2026-11-29 (e5c055a0): it passed, changing only the role's own things (the
//! /etc/hosts block, its mask/unmask of Docker's unit, the osbpo key and repository line,
//! /etc/kolla, kolla.target); prechecks then passed. The first such run found the twin's
//! docker.io 20.10 too old for the docker role's `docker system info -f json` (now 26 from
//! trixie) and python3-setuptools/python3-pip missing (docker_sdk installs them).

use crate::common;

use common::{read_json, repo, smoke_check, text, TestCommand};
use imgbuild::definition::Arch;
use imgbuild::qemu::{Firmware, Vm, VmSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The venv `make kolla-venv` makes.
fn kolla_venv() -> PathBuf {
    repo().join("target/kolla-venv")
}

struct Ssh {
    port: u16,
    key: PathBuf,
    user: &'static str,
}

impl Ssh {
    fn run(&self, script: &str) -> std::process::Output {
        Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                "-i",
            ])
            .arg(&self.key)
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user))
            .arg(script)
            .output()
            .unwrap()
    }

    /// `script`'s stdout; panics with its stderr when it fails.
    fn ok(&self, script: &str) -> String {
        let o = self.run(script);
        let (out, err) = text(&o);
        assert!(o.status.success(), "`{script}` failed:\n{out}\n{err}");
        out
    }
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

#[test]
fn debian_kolla_twin_in_the_lab_shape_passes_kolla_ansibles_prechecks() {
    let _vm = crate::one_vm();
    let out = tempfile::tempdir().unwrap();
    let (dir, m) = common::build_real("debian12-kolla-node", "k1", &["--no-cache"], out.path());
    assert_eq!(m["smoke"]["passed"], true);
    // Every step of the twin needs no running system: its one layer is boot-free.
    assert_eq!(m["layers"][0]["boot_free"], true, "{m:#}");
    let report = read_json(&dir.join("smoke/report.json"));
    let ready = smoke_check(&report, "kolla-host-ready");
    assert_eq!(ready["passed"], true, "{ready:#}");
    for name in ["docker-active", "chrony-active", "no-private-keys"] {
        assert_eq!(smoke_check(&report, name)["passed"], true, "{name}");
    }
    let artifact = dir.join(m["artifact"]["file"].as_str().unwrap());

    // The lab's shape: a copy-on-write overlay of the artifact, a blank disk for Cinder, a
    // second NIC, the launch's user-data with the deployer's key and the Cinder disk.
    let work = out.path().join("lab");
    std::fs::create_dir_all(&work).unwrap();
    let key = work.join("id_ed25519");
    let o = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "kolla-deployer",
            "-f",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success());
    let user_data = work.join("user-data");
    TestCommand::new(&[
        "userdata",
        "debian12-kolla-node",
        "--user",
        "kolla",
        "--cinder-volumes",
        "/dev/disk/by-id/virtio-cinder",
        "--ssh-key",
    ])
    .arg(key.with_extension("pub"))
    .arg("-o")
    .arg(&user_data)
    .expect(0);
    write(
        &work.join("meta-data"),
        "instance-id: kolla-e2e-1\nlocal-hostname: kolla1\n",
    );
    let seed = work.join("seed.iso");
    imgbuild::qemu::make_seed_iso(
        &[
            ("user-data", user_data.as_path()),
            ("meta-data", work.join("meta-data").as_path()),
        ],
        &seed,
    )
    .unwrap();
    let disk = work.join("root.qcow2");
    imgbuild::qemu::create_overlay(&artifact, &disk, None).unwrap();
    let cinder = work.join("cinder.qcow2");
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&cinder)
        .arg("2G")
        .output()
        .unwrap();
    assert!(o.status.success());
    let port = common::openstack::free_port();
    let external_mac = "52:54:00:6b:6f:02";
    let mut vm = Vm::start(&VmSpec {
        arch: Arch::Amd64,
        accel: imgbuild::qemu::probe_accel(Arch::Amd64).accel,
        firmware: Firmware::Bios,
        cpus: 1,
        memory_mib: 2048,
        disk: Some(disk),
        seed_iso: Some(seed),
        serial_log: work.join("serial.log"),
        qmp: false,
        uefi_vars: None,
        hostfwd: vec![(port, 22)],
        extra_disks: vec![(cinder, "cinder".into())],
        extra_nics: vec![external_mac.into()],
        raw_disks: Vec::new(),
        kernel: None,
    })
    .unwrap();
    let ssh = Ssh {
        port,
        key: key.clone(),
        user: "kolla",
    };
    // Up when cloud-init is done (its runcmd made the volume group).
    let t = Instant::now();
    loop {
        let o = ssh.run("cloud-init status --wait >/dev/null 2>&1; cloud-init status");
        if o.status.success() && text(&o).0.contains("done") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "no SSH login with cloud-init done after 30 min: {}\nserial:\n{}",
            text(&o).1,
            vm.serial_tail()
        );
        std::thread::sleep(Duration::from_secs(5));
    }

    // The launch made cinder-volumes on the named disk, and nothing else on it.
    let pvs = ssh.ok("sudo pvs --noheadings -o pv_name,vg_name");
    assert!(
        pvs.split_whitespace().collect::<Vec<_>>() == ["/dev/vdb", "cinder-volumes"],
        "{pvs}"
    );
    // The NICs: the first has the API address, the external one none at all.
    let links = ssh.ok("ip -o link show | awk -F': ' '{print $2}'; ip -o -4 addr show");
    let nic = |mac: &str| {
        ssh.ok(&format!(
            "ip -o link | awk -v m={mac} '$0 ~ m {{sub(\":\", \"\", $2); print $2}}'"
        ))
        .trim()
        .to_string()
    };
    let external = nic(external_mac);
    let api = ssh
        .ok("ip -o -4 route get 10.0.2.2 | awk '{for (i=1;i<NF;i++) if ($i==\"dev\") print $(i+1)}'")
        .trim()
        .to_string();
    assert!(
        !external.is_empty() && !api.is_empty() && external != api,
        "{links}"
    );
    let ext_addrs = ssh.ok(&format!("ip -o addr show dev {external} scope global"));
    assert!(
        ext_addrs.trim().is_empty(),
        "{external} has an address: {ext_addrs}"
    );
    let api_ip = ssh
        .ok(&format!(
            "ip -o -4 addr show dev {api} | awk '{{print $4}}' | cut -d/ -f1"
        ))
        .trim()
        .to_string();
    assert!(api_ip.starts_with("10.0.2."), "{api_ip}");
    // cloud-init kept off /etc/hosts (bootstrap-servers' etc_hosts role, 99-kolla.cfg).
    let hosts = ssh.ok("cat /etc/hosts");
    assert!(
        !hosts.contains("kolla1"),
        "cloud-init wrote the hostname: {hosts}"
    );
    // bootstrap-servers runs only where its collection is at hand (IMGBUILD_KOLLA_COLLECTION:
    // a checkout of ansible-collection-kolla stable/2025.2); else the test writes the one
    // thing it would that no image can know: the etc_hosts role's block of
    // `<api address> <nodename> <hostname>` (roles/etc_hosts/tasks/etc-hosts.yml).
    let collection = std::env::var_os("IMGBUILD_KOLLA_COLLECTION").map(PathBuf::from);
    if collection.is_none() {
        eprintln!("kolla_e2e: bootstrap-servers not run (no IMGBUILD_KOLLA_COLLECTION: ansible-collection-kolla comes from opendev.org)");
        ssh.ok(&format!(
            "printf '# BEGIN ANSIBLE GENERATED HOSTS\\n{api_ip} kolla1\\n# END ANSIBLE GENERATED HOSTS\\n' | sudo tee -a /etc/hosts >/dev/null"
        ));
    }

    // Kolla-Ansible: config dir, passwords, one-node inventory ([deployment] stays this host).
    let venv = kolla_venv();
    assert!(
        venv.join("bin/kolla-ansible").exists(),
        "{} has no kolla-ansible (make kolla-venv)",
        venv.display()
    );
    let share = venv.join("share/kolla-ansible");
    let conf = work.join("kolla");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::copy(
        share.join("etc_examples/kolla/passwords.yml"),
        conf.join("passwords.yml"),
    )
    .unwrap();
    let o = Command::new(venv.join("bin/kolla-genpwd"))
        .arg("-p")
        .arg(conf.join("passwords.yml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    write(
        &conf.join("globals.yml"),
        &format!(
            "kolla_base_distro: debian\n\
             network_interface: {api}\n\
             neutron_external_interface: {external}\n\
             # No VIP: one node, HAProxy off, the VIP is the node's own address\n\
             # (kolla-ansible doc/source/admin/advanced-configuration.rst).\n\
             kolla_internal_vip_address: {api_ip}\n\
             enable_haproxy: \"no\"\n\
             enable_cinder: \"yes\"\n\
             enable_cinder_backend_lvm: \"yes\"\n\
             nova_compute_virt_type: qemu\n\
             # Nothing serves NTP to this VM (chrony runs, but cannot synchronize).\n\
             prechecks_enable_host_ntp_checks: false\n"
        ),
    );
    let all_in_one = std::fs::read_to_string(share.join("ansible/inventory/all-in-one")).unwrap();
    let node = format!(
        "kolla1 ansible_host=127.0.0.1 ansible_port={port} ansible_user=kolla ansible_ssh_private_key_file={} ansible_python_interpreter=/usr/bin/python3",
        key.display()
    );
    let mut inventory = String::new();
    let mut group = String::new();
    for line in all_in_one.lines() {
        if let Some(g) = line.strip_prefix('[') {
            group = g.trim_end_matches(']').to_string();
        }
        if line.starts_with("localhost") {
            if group == "deployment" {
                // This host runs as root without sudo: become by su; Python: the venv's (the
                // PATH's python3 may be a shim of another version).
                inventory.push_str(&format!(
                    "localhost ansible_connection=local ansible_become_method=su ansible_python_interpreter={}\n",
                    venv.join("bin/python3").display()
                ));
            } else {
                inventory.push_str(&node);
                inventory.push('\n');
            }
        } else {
            inventory.push_str(line);
            inventory.push('\n');
        }
    }
    write(&work.join("inventory"), &inventory);
    let collections = work.join("collections");
    let kolla_ansible = |verb: &str, extra: &[&str]| {
        let mut c = Command::new(venv.join("bin/kolla-ansible"));
        c.arg(verb)
            .arg("-i")
            .arg(work.join("inventory"))
            .arg("--configdir")
            .arg(&conf)
            .arg("--passwords")
            .arg(conf.join("passwords.yml"))
            .args(extra)
            .env(
                "PATH",
                // bootstrap-servers discovers localhost's Python itself
                // (`ansible_python_interpreter=auto_silent`, kolla_ansible/cli/commands.py):
                // a pyenv shim first in PATH would be found and fail; the system's is meant.
                format!(
                    "{}:{}",
                    venv.join("bin").display(),
                    std::env::var("PATH")
                        .unwrap()
                        .split(':')
                        .filter(|d| !d.contains("/.pyenv/"))
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
            .env("ANSIBLE_COLLECTIONS_PATH", &collections)
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_LOG_PATH", work.join(format!("{verb}.log")));
        c.output().unwrap()
    };
    if let Some(src) = &collection {
        let o = Command::new(venv.join("bin/ansible-galaxy"))
            .args(["collection", "install", "--force", "-p"])
            .arg(&collections)
            .arg(src)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o).1);
        // Out of reach here, pointed elsewhere with the roles' own settings: Docker CE's
        // repository (the image has docker.io) and osbpo.debian.net's python3-docker (the
        // image has Debian's; the docker_sdk role's repo line is pointed at Debian's archive).
        write(
            &work.join("offline.yml"),
            "enable_docker_repo: false\n\
             docker_apt_package: docker.io\n\
             docker_sdk_osbpo_apt_repo: \"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\"\n",
        );
        let extra = format!("@{}", work.join("offline.yml").display());
        let o = kolla_ansible("bootstrap-servers", &["-e", &extra]);
        let (bout, berr) = text(&o);
        assert!(
            o.status.success(),
            "bootstrap-servers failed:\n{bout}\n{berr}"
        );
        // What it changed on the node: the tasks reported `changed`.
        let mut task = "";
        let mut changed = Vec::new();
        for l in bout.lines() {
            if let Some(t) = l.strip_prefix("TASK [") {
                task = t.split(']').next().unwrap_or_default();
            } else if l.starts_with("changed: [kolla1") {
                changed.push(task.to_string());
            }
        }
        eprintln!(
            "kolla_e2e: bootstrap-servers changed {} tasks on the node:\n  {}",
            changed.len(),
            changed.join("\n  ")
        );
        // None of it is what the image prepares: Docker's packages and config, the Docker SDK,
        // the packages it adds or removes, cloud-init's /etc/hosts setting.
        for t in &changed {
            for prepared in [
                "Install packages",
                "Remove packages",
                "Write docker config",
                "Disable cloud-init manage_etc_hosts",
            ] {
                assert!(
                    !t.ends_with(prepared),
                    "bootstrap-servers had to change `{t}`: the image should have prepared it"
                );
            }
        }
    }
    let o = kolla_ansible("prechecks", &[]);
    let (pout, perr) = text(&o);
    vm.kill();
    assert!(
        o.status.success(),
        "kolla-ansible prechecks failed:\n{}\n{perr}",
        pout.lines()
            .filter(|l| l.contains("FAILED") || l.contains("fatal:") || l.contains("msg"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The recap: the node was checked (tasks ran on it), nothing failed or was unreachable.
    let recap = pout
        .lines()
        .find(|l| l.starts_with("kolla1"))
        .unwrap_or_else(|| panic!("no recap for kolla1:\n{pout}"));
    assert!(
        recap.contains("failed=0") && recap.contains("unreachable=0"),
        "{recap}"
    );
    let ok: u32 = recap
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ok="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(ok > 50, "only {ok} tasks ran on the node: {recap}");
    for task in [
        "Checking dbus-python package",
        "Checking docker SDK version",
        "Checking LVM volume group exists for Cinder",
        "Check if each rabbit hostname resolves uniquely to the proper IP address",
    ] {
        assert!(pout.contains(task), "prechecks did not run `{task}`");
    }
}
