//! The QEMU driver against a real QEMU (TCG, no disk: firmware only): a wait that runs out
//! of time, a cancelled wait and a guest that never powers off each end with their own error
//! and leave no QEMU process behind; QMP answers from a work folder too deep for a UNIX socket
//! path, and its socket's private folder goes with the VM.

use imgbuild::definition::Arch;
use imgbuild::qemu::{Accel, Firmware, QemuError, Vm, VmSpec};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn spec(dir: &std::path::Path) -> VmSpec {
    VmSpec {
        arch: Arch::Amd64,
        accel: Accel::Tcg,
        firmware: Firmware::Bios,
        cpus: 1,
        memory_mib: 64,
        disk: None,
        seed_iso: None,
        serial_log: dir.join("serial.log"),
        qmp: false,
        uefi_vars: None,
        hostfwd: Vec::new(),
        extra_disks: Vec::new(),
        extra_nics: Vec::new(),
        raw_disks: Vec::new(),
        kernel: None,
    }
}

fn gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_wait_past_its_timeout_names_what_it_waited_for_and_stops_qemu() {
    // No VM slot: a QEMU without a disk for seconds, no guest.
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::start(&spec(dir.path())).unwrap();
    let pid = vm.pid().unwrap();
    assert!(!gone(pid));
    let never = AtomicBool::new(false);
    let t = Instant::now();
    let e = vm
        .wait_for(
            &["NEVER-PRINTED"],
            Duration::from_secs(2),
            "the test marker",
            &never,
        )
        .unwrap_err();
    assert!(t.elapsed() >= Duration::from_secs(2));
    match &e {
        QemuError::Timeout { what, secs, .. } => {
            assert_eq!((what.as_str(), *secs), ("the test marker", 2))
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(e.to_string().contains("did not happen within 2 s"), "{e}");
    assert!(gone(pid), "QEMU {pid} still runs after the timeout");

    // The same for a guest that never powers off.
    let mut vm = Vm::start(&spec(dir.path())).unwrap();
    let pid = vm.pid().unwrap();
    let e = vm
        .wait_exit(Duration::from_secs(1), "poweroff", &never)
        .unwrap_err();
    assert!(
        matches!(&e, QemuError::Timeout { what, .. } if what == "poweroff"),
        "{e}"
    );
    assert!(
        gone(pid),
        "QEMU {pid} still runs after the poweroff timeout"
    );
}

#[test]
fn a_cancelled_wait_is_interrupted_and_stops_qemu() {
    // No VM slot: a QEMU without a disk for seconds, no guest.
    let dir = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(true);
    for exit in [false, true] {
        let mut vm = Vm::start(&spec(dir.path())).unwrap();
        let pid = vm.pid().unwrap();
        let e = if exit {
            vm.wait_exit(Duration::from_secs(60), "poweroff", &cancel)
                .unwrap_err()
        } else {
            vm.wait_for(&["NEVER-PRINTED"], Duration::from_secs(60), "x", &cancel)
                .unwrap_err()
        };
        assert!(matches!(e, QemuError::Interrupted), "{e}");
        assert!(gone(pid), "QEMU {pid} still runs after the cancel");
    }
}

#[test]
fn qmp_answers_from_a_deep_work_folder_and_its_socket_goes_with_the_vm() {
    // No VM slot: a QEMU without a disk for seconds, no guest.
    // A work folder this deep could not hold a UNIX socket (sun_path: 108 bytes).
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("w".repeat(60)).join("x".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    let mut s = spec(&deep);
    s.qmp = true;
    let vm = Vm::start(&s).unwrap();
    let mut status = Err(QemuError::Qmp("not asked yet".into()));
    for _ in 0..50 {
        status = vm.qmp("query-status", serde_json::Value::Null);
        if status.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status.unwrap();
    assert_eq!(status["status"], "running", "{status}");
    let pid = vm.pid().unwrap();
    let socket = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split('\0')
        .find_map(|a| {
            a.strip_prefix("unix:")
                .map(|a| a.split(',').next().unwrap().to_string())
        })
        .expect("-qmp unix:PATH on the command line");
    let folder = std::path::Path::new(&socket)
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(folder.is_dir());
    drop(vm);
    assert!(gone(pid));
    assert!(!folder.exists(), "{} is left", folder.display());
    // Without QMP asked for, there is no socket.
    let vm = Vm::start(&spec(&deep)).unwrap();
    assert!(matches!(
        vm.qmp("query-status", serde_json::Value::Null),
        Err(QemuError::Qmp(_))
    ));
}
