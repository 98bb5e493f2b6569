//! The end-to-end tier: real builds with the real tools (mmdebstrap, QEMU under TCG or KVM,
//! `packer build`), smoke boots, and the QEMU driver against a real QEMU. Slow; `make test-e2e`
//! runs it (`cargo test --test e2e`). The desktop twin's test (`desktop_e2e::`) is the longest:
//! scripts/test.sh starts it beside the rest of the suite.

#[path = "../common/mod.rs"]
mod common;

mod arm64_e2e;
mod build_e2e;
mod desktop_e2e;
mod disk_full;
mod gitlab_local;
mod guards_e2e;
mod kolla_e2e;
mod parallel_e2e;
mod qemu_vm;
mod remote_e2e;

/// The build VMs of this binary: a test that runs several builds at once (parallel_e2e) holds
/// it alone, the one-build tests (build_e2e) share it, as when they were binaries of their own
/// run one after the other: at most two build VMs of this binary's tests at a time.
pub static VMS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A share of [`VMS`] and one of the run's [`vm_slots`], for a test that runs one build at a
/// time.
pub fn one_vm() -> VmTurn<std::sync::RwLockReadGuard<'static, ()>> {
    let lock = VMS.read().unwrap_or_else(|e| e.into_inner());
    VmTurn {
        _slots: vm_slots(1),
        _lock: lock,
    }
}

/// All of [`VMS`] and two of the run's [`vm_slots`], for a test that runs two builds at once.
pub fn all_vms() -> VmTurn<std::sync::RwLockWriteGuard<'static, ()>> {
    let lock = VMS.write().unwrap_or_else(|e| e.into_inner());
    VmTurn {
        _slots: vm_slots(2),
        _lock: lock,
    }
}

/// A test's turn to build and boot: held until dropped.
pub struct VmTurn<G> {
    _slots: Vec<std::fs::File>,
    _lock: G,
}

/// `n` of the host's VM slots (all at once or none), shared by every process of a test run (scripts/test.sh runs the
/// long tests in streams of their own, each its own process): as many as the host has cores
/// (or `IMGBUILD_TEST_VM_SLOTS`), one flock'ed file each under target/test-vm-slots. Every
/// build VM has one vCPU; before these slots a run had five TCG guests and two native
/// bootstraps on two cores at once, and a guest starved that long overran its own give-up
/// limits (the CI run of 2026-11-30 16:16: the Kolla smoke's first boot still in cloud-init
/// after 2400 s, the layered test's docker.service 36 minutes in starting). Who waited how
/// long for whom goes to target/test-vm-slots/log, which scripts/test.sh prints.
fn vm_slots(n: usize) -> Vec<std::fs::File> {
    use std::io::Write;
    let dir = common::repo().join("target/test-vm-slots");
    std::fs::create_dir_all(&dir).unwrap();
    let count = std::env::var("IMGBUILD_TEST_VM_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |c| c.get()))
        .max(n);
    let me = format!(
        "{} (pid {})",
        std::thread::current().name().unwrap_or("a test"),
        std::process::id()
    );
    let log = |line: String| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))
            .unwrap();
        writeln!(f, "{} {line}", now()).unwrap();
    };
    let start = std::time::Instant::now();
    let ticket = Ticket::new(&dir, n);
    let mut held: Vec<std::fs::File> = Vec::new();
    let mut said = false;
    while held.len() < n {
        for i in 0..count {
            if !ticket.is_next() {
                break;
            }
            if held.len() == n {
                break;
            }
            let path = dir.join(format!("slot-{i}"));
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            if f.try_lock().is_ok() {
                f.set_len(0).unwrap();
                write!(f, "{me}").unwrap();
                held.push(f);
            }
        }
        if held.len() < n {
            // All or none: a test that needs two does not keep a lane idle while it waits for
            // the second.
            held.clear();
            if !said {
                let holders: Vec<String> = (0..count)
                    .map(|i| {
                        std::fs::read_to_string(dir.join(format!("slot-{i}"))).unwrap_or_default()
                    })
                    .collect();
                log(format!(
                    "{me} waits for {n} VM slot(s); the slots' last holders: {}",
                    holders.join("; ")
                ));
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    }
    drop(ticket);
    log(format!(
        "{me} has {n} VM slot(s) after {} s",
        start.elapsed().as_secs()
    ));
    held
}

/// A place in the queue for VM slots (target/test-vm-slots/queue/TIME-PID-SEQ-N, removed when
/// dropped): slots go first come, first served, so that a long test that asked early (the
/// Kolla twin's, started right after the desktop's and the arm64 test) is not passed by the
/// short tests of the foreground that ask later. A test that needs two slots lets those that
/// need one go first (else a lane would idle while it waits for the second). The ticket of a
/// process that is gone does not count.
struct Ticket {
    path: std::path::PathBuf,
    name: String,
}

impl Ticket {
    fn new(dir: &std::path::Path, n: usize) -> Ticket {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let queue = dir.join("queue");
        std::fs::create_dir_all(&queue).unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{nanos:024}-{}-{seq}-{n}", std::process::id());
        let path = queue.join(&name);
        std::fs::write(&path, "").unwrap();
        Ticket { path, name }
    }

    /// Whether no live ticket before this one is waiting for a single slot.
    fn is_next(&self) -> bool {
        let mut ahead: Vec<String> = std::fs::read_dir(self.path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|t| t.as_str() < self.name.as_str())
            .collect();
        ahead.sort();
        let mine_is_one = self.name.ends_with("-1");
        !ahead.iter().any(|t| {
            let mut parts = t.split('-');
            let pid = parts.nth(1).unwrap_or("0");
            let alive = std::path::Path::new("/proc").join(pid).exists();
            // A single-slot ticket waits only for the single-slot tickets before it.
            alive && (t.ends_with("-1") || !mine_is_one)
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The time of day in UTC, as scripts/test.sh stamps its lines on a UTC host (CI's).
fn now() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 86_400;
    format!("[{:02}:{:02}:{:02}]", s / 3600, s / 60 % 60, s % 60)
}
