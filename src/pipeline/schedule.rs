//! Several builds in one invocation (`imgbuild build A B --arch all`): each runs
//! [`build`](super::build) on its own thread, with its own work folder, logs and
//! dist/IMAGE/VERSION, as many at once as the host's cores and memory allow.
//!
//! The rule: a build needs its definition's `build.cpus` (capped at the host's cores) and
//! `build.memory` plus [`OVERHEAD_MIB`] for QEMU itself. The build VM and the smoke VM of one
//! build never run at the same time and have the same size (see `smoke::smoke`), so that is
//! the build's peak. Under TCG a vCPU is a busy host thread, so vCPUs are counted against host
//! cores: over-committing only slows every build down. Going through the builds in the order
//! given, each one that fits beside the running ones starts (a later, smaller build may pass a
//! bigger one that does not fit yet); when none runs, the next one starts even if it alone
//! exceeds the budget. `--jobs N` caps how many run at once.

use super::{build, Backend, BuildError, BuildOptions};
use crate::definition::{Arch, Resolved};
use crate::pipeline::manifest::Manifest;
use crate::progress::Progress;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// MiB a build needs on the host besides its guest's memory: the QEMU process with TCG's
/// translation cache, qemu-img while compacting, the digests' buffers.
pub const OVERHEAD_MIB: u64 = 512;

/// MiB of `MemAvailable` left to everything else on the host.
pub const HOST_RESERVE_MIB: u64 = 1024;

/// What one build takes from the host while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// vCPUs (each a busy host thread under TCG).
    pub cpus: u32,
    pub memory_mib: u64,
}

impl Need {
    /// A build of `r` on a host with `host_cpus` cores: the VM's vCPUs are capped at the
    /// host's cores as the backends cap them.
    pub fn of(r: &Resolved, host_cpus: u32) -> Need {
        let b = &r.definition.build;
        Need {
            cpus: crate::host::vm_cpus(r, host_cpus),
            memory_mib: b.memory as u64 + OVERHEAD_MIB,
        }
    }
}

/// What the builds may take together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub cpus: u32,
    pub memory_mib: u64,
    /// At most this many at once (`--jobs`); `None`: as many as fit.
    pub jobs: Option<usize>,
}

impl Budget {
    /// The host's cores and `MemAvailable` (less [`HOST_RESERVE_MIB`]), read now. Without a
    /// readable /proc/meminfo the memory budget is 0, so builds run one at a time.
    pub fn host(jobs: Option<usize>) -> Budget {
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| mem_available_mib(&t));
        Budget {
            cpus: crate::host::cpus(),
            memory_mib: mem.unwrap_or(0).saturating_sub(HOST_RESERVE_MIB),
            jobs,
        }
    }
}

/// `MemAvailable` from /proc/meminfo, in MiB.
pub fn mem_available_mib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        let mut parts = rest.split_whitespace();
        let n: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => Some(n / 1024),
            _ => None,
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
}

/// The pure scheduling rule (no threads, no clock): which builds start when.
#[derive(Debug)]
pub struct Scheduler {
    budget: Budget,
    needs: Vec<Need>,
    state: Vec<State>,
}

impl Scheduler {
    pub fn new(needs: Vec<Need>, budget: Budget) -> Scheduler {
        let state = vec![State::Waiting; needs.len()];
        Scheduler {
            budget,
            needs,
            state,
        }
    }

    /// (vCPUs, MiB, builds) taken by the running builds.
    pub fn in_use(&self) -> (u32, u64, usize) {
        self.needs
            .iter()
            .zip(&self.state)
            .filter(|(_, s)| **s == State::Running)
            .fold((0, 0, 0), |(c, m, n), (need, _)| {
                (c + need.cpus, m + need.memory_mib, n + 1)
            })
    }

    /// Marks the builds that may start now as running and returns them, in order: every
    /// waiting build that fits beside the running ones (and those started before it here);
    /// if none is running, the first waiting one starts whatever its size.
    pub fn start(&mut self) -> Vec<usize> {
        let mut started = Vec::new();
        for i in 0..self.needs.len() {
            if self.state[i] != State::Waiting {
                continue;
            }
            let (cpus, mem, count) = self.in_use();
            let need = self.needs[i];
            let fits = self.budget.jobs.is_none_or(|j| count < j)
                && cpus + need.cpus <= self.budget.cpus
                && mem + need.memory_mib <= self.budget.memory_mib;
            if fits || count == 0 {
                self.state[i] = State::Running;
                started.push(i);
            }
        }
        started
    }

    /// Build `i` ended (however it ended), or will not run.
    pub fn finish(&mut self, i: usize) {
        self.state[i] = State::Done;
    }

    /// No build starts any more: returns the ones that were still waiting (now done).
    pub fn drain_waiting(&mut self) -> Vec<usize> {
        let mut v = Vec::new();
        for (i, s) in self.state.iter_mut().enumerate() {
            if *s == State::Waiting {
                *s = State::Done;
                v.push(i);
            }
        }
        v
    }

    pub fn running(&self) -> usize {
        self.state.iter().filter(|s| **s == State::Running).count()
    }

    pub fn all_done(&self) -> bool {
        self.state.iter().all(|s| *s == State::Done)
    }
}

/// Can this host run the VMs of a build of `r` for `arch` at all? A non-native arch needs
/// its QEMU system emulator, arm64 and UEFI images need UEFI firmware. Answers why not.
pub fn host_can_build(r: &Resolved, arch: Arch) -> Result<(), String> {
    let mut missing = Vec::new();
    let bin = crate::qemu::qemu_binary(arch);
    if crate::exec::which(bin).is_none() {
        missing.push(format!(
            "{bin} is not installed ({})",
            crate::exec::install_hint(bin).unwrap_or("install QEMU")
        ));
    }
    if crate::host::uefi(r, arch) && crate::host::uefi_firmware(arch).is_none() {
        missing.push(format!(
            "no UEFI firmware for {arch} (apt-get install {})",
            crate::host::uefi_package(arch)
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "this host cannot build {arch} images: {}",
            missing.join("; ")
        ))
    }
}

/// One build to run.
pub struct Job {
    pub resolved: Resolved,
    pub opts: BuildOptions,
    /// Its progress (prefixed with `[IMAGE/ARCH]` when several builds share stderr).
    pub progress: Progress,
}

impl Job {
    pub fn label(&self) -> String {
        format!("{}/{}", self.resolved.name, self.opts.arch)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The host lacks what the build's VMs need (checked before the build starts).
    #[error("{0}")]
    Host(String),
    #[error("interrupted before it started; nothing was written to dist/")]
    NotStarted,
    #[error("the build stopped unexpectedly: {0}")]
    Panicked(String),
}

/// How one build ended.
pub struct Outcome {
    pub image: String,
    pub arch: Arch,
    pub version: Option<String>,
    pub result: Result<Manifest, JobError>,
}

/// Runs `jobs` within `budget`, each on its own thread; returns their outcomes in the order
/// of `jobs`. A failed build does not stop the others; `cancel` (Ctrl-C, SIGTERM) stops the
/// running ones (each cleans up as a single build does) and starts no more.
pub fn run(jobs: Vec<Job>, budget: Budget, cancel: &AtomicBool) -> Vec<Outcome> {
    // What each VM gets: the host's cores, or fewer with IMGBUILD_VM_CPUS.
    let per_vm = crate::host::vm_cpu_limit();
    let needs: Vec<Need> = jobs.iter().map(|j| Need::of(&j.resolved, per_vm)).collect();
    let mut sched = Scheduler::new(needs.clone(), budget);
    let mut outcomes: Vec<Option<Outcome>> = jobs.iter().map(|_| None).collect();
    let meta: Vec<(String, Arch, Option<String>, String)> = jobs
        .iter()
        .map(|j| {
            (
                j.resolved.name.clone(),
                j.opts.arch,
                j.opts.version.clone(),
                j.label(),
            )
        })
        .collect();
    let mut slots: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
    // A build this host cannot run fails now rather than when its turn comes.
    for (i, job) in slots.iter().enumerate() {
        let job = job.as_ref().expect("not started yet");
        if let Err(e) = host_check(job) {
            job.progress.error(&e.to_string());
            sched.finish(i);
            outcomes[i] = Some(outcome(&meta[i], Err(e)));
        }
    }
    let (tx, rx) = mpsc::channel::<(usize, Result<Manifest, JobError>)>();
    std::thread::scope(|scope| {
        loop {
            if cancel.load(Ordering::SeqCst) {
                for i in sched.drain_waiting() {
                    outcomes[i] = Some(outcome(&meta[i], Err(JobError::NotStarted)));
                }
            } else {
                for i in sched.start() {
                    let mut job = slots[i].take().expect("started once");
                    let (cpus, mem, n) = sched.in_use();
                    job.progress.line(&format!(
                        "started: {} vCPU, {} MiB; {n} build(s) running, {cpus} of {} vCPUs, {mem} of {} MiB",
                        needs[i].cpus, needs[i].memory_mib, budget.cpus, budget.memory_mib
                    ));
                    let tx = tx.clone();
                    let label = meta[i].3.clone();
                    scope.spawn(move || {
                        let _span = tracing::info_span!("build", id = %label).entered();
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run_one(&mut job, cancel)
                        }))
                        .unwrap_or_else(|e| {
                            let why = e
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| e.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "panic".into());
                            Err(JobError::Panicked(why))
                        });
                        if let Err(e) = &r {
                            job.progress.error(&describe(e));
                        }
                        let _ = tx.send((i, r));
                    });
                }
            }
            if sched.all_done() {
                break;
            }
            // Wake up now and then so that an interrupt drains the waiting builds.
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok((i, r)) => {
                    sched.finish(i);
                    outcomes[i] = Some(outcome(&meta[i], r));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| o.unwrap_or_else(|| outcome(&meta[i], Err(JobError::NotStarted))))
        .collect()
}

/// An error with its sources, each once (`a: b: c`).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        cause = c.source();
    }
    s
}

fn outcome(
    meta: &(String, Arch, Option<String>, String),
    result: Result<Manifest, JobError>,
) -> Outcome {
    Outcome {
        image: meta.0.clone(),
        arch: meta.1,
        version: result
            .as_ref()
            .ok()
            .map(|m| m.version.clone())
            .or_else(|| meta.2.clone()),
        result,
    }
}

fn host_check(job: &Job) -> Result<(), JobError> {
    host_can_build(&job.resolved, job.opts.arch).map_err(JobError::Host)?;
    if job.opts.backend == Backend::Packer && crate::exec::which("packer").is_none() {
        return Err(JobError::Host(format!(
            "packer is not installed ({})",
            crate::exec::install_hint("packer").unwrap_or_default()
        )));
    }
    Ok(())
}

fn run_one(job: &mut Job, cancel: &AtomicBool) -> Result<Manifest, JobError> {
    Ok(build(&job.resolved, &job.opts, cancel, &mut job.progress)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(cpus: u32, memory_mib: u64) -> Need {
        Need { cpus, memory_mib }
    }

    fn budget(cpus: u32, memory_mib: u64, jobs: Option<usize>) -> Budget {
        Budget {
            cpus,
            memory_mib,
            jobs,
        }
    }

    /// Runs the scheduler against durations (whole seconds): returns each build's
    /// (start, end) and the most that ran at once.
    fn simulate(needs: &[Need], secs: &[u64], b: Budget) -> (Vec<(u64, u64)>, usize) {
        let mut s = Scheduler::new(needs.to_vec(), b);
        let mut times = vec![(u64::MAX, u64::MAX); needs.len()];
        let mut now = 0;
        let mut peak = 0;
        loop {
            for i in s.start() {
                times[i] = (now, now + secs[i]);
            }
            peak = peak.max(s.running());
            if s.all_done() {
                break;
            }
            // The next build to end.
            let (i, end) = times
                .iter()
                .enumerate()
                .filter(|(i, t)| t.0 != u64::MAX && t.1 >= now && s.state[*i] == State::Running)
                .map(|(i, t)| (i, t.1))
                .min_by_key(|(i, end)| (*end, *i))
                .expect("something runs");
            now = end;
            s.finish(i);
        }
        (times, peak)
    }

    #[test]
    fn two_one_cpu_builds_share_two_cores() {
        let (t, peak) = simulate(
            &[need(1, 2560), need(1, 2560)],
            &[10, 10],
            budget(2, 20_000, None),
        );
        assert_eq!(t, vec![(0, 10), (0, 10)]);
        assert_eq!(peak, 2);
    }

    #[test]
    fn vcpus_are_counted_against_cores() {
        // Three 1-vCPU builds on two cores: the third waits for the first to end.
        let (t, peak) = simulate(
            &[need(1, 1000), need(1, 1000), need(1, 1000)],
            &[10, 20, 5],
            budget(2, 100_000, None),
        );
        assert_eq!(t, vec![(0, 10), (0, 20), (10, 15)]);
        assert_eq!(peak, 2);
        // A 2-vCPU build on two cores runs alone.
        let (t, peak) = simulate(
            &[need(2, 1000), need(1, 1000)],
            &[10, 10],
            budget(2, 100_000, None),
        );
        assert_eq!(t, vec![(0, 10), (10, 20)]);
        assert_eq!(peak, 1);
    }

    #[test]
    fn memory_limits_concurrency() {
        // Plenty of cores, memory for two 2.5 GiB builds at a time.
        let n = [need(1, 2560); 4];
        let (t, peak) = simulate(&n, &[10, 10, 10, 10], budget(16, 6000, None));
        assert_eq!(t, vec![(0, 10), (0, 10), (10, 20), (10, 20)]);
        assert_eq!(peak, 2);
    }

    #[test]
    fn one_build_always_runs_even_when_it_alone_is_too_big() {
        let (t, peak) = simulate(
            &[need(4, 64_000), need(1, 1000)],
            &[10, 10],
            budget(2, 8000, None),
        );
        // The oversized build runs alone; the small one waits for it rather than joining it.
        assert_eq!(t, vec![(0, 10), (10, 20)]);
        assert_eq!(peak, 1);
    }

    #[test]
    fn jobs_caps_the_count() {
        let n = [need(1, 100); 4];
        let (t, peak) = simulate(&n, &[10, 10, 10, 10], budget(8, 100_000, Some(1)));
        assert_eq!(t, vec![(0, 10), (10, 20), (20, 30), (30, 40)]);
        assert_eq!(peak, 1);
        let (_, peak) = simulate(&n, &[10, 10, 10, 10], budget(8, 100_000, Some(3)));
        assert_eq!(peak, 3);
        let (_, peak) = simulate(&n, &[10, 10, 10, 10], budget(8, 100_000, None));
        assert_eq!(peak, 4);
    }

    #[test]
    fn a_smaller_later_build_may_pass_a_bigger_one() {
        // 2 cores: A (1) runs; B (2) does not fit beside it, C (1) does and starts; B starts
        // when both have ended.
        let (t, _) = simulate(
            &[need(1, 1000), need(2, 1000), need(1, 1000)],
            &[10, 10, 30],
            budget(2, 100_000, None),
        );
        assert_eq!(t, vec![(0, 10), (30, 40), (0, 30)]);
    }

    #[test]
    fn a_cancel_drains_the_waiting_ones() {
        let mut s = Scheduler::new(vec![need(1, 100); 3], budget(1, 100_000, None));
        assert_eq!(s.start(), vec![0]);
        assert_eq!(s.drain_waiting(), vec![1, 2]);
        assert!(!s.all_done());
        s.finish(0);
        assert!(s.all_done());
        assert!(s.start().is_empty());
    }

    #[test]
    fn mem_available_is_read_in_mib() {
        let text = "MemTotal:       32768000 kB\nMemFree:         1000000 kB\nMemAvailable:   24014668 kB\nBuffers: 1 kB\n";
        assert_eq!(mem_available_mib(text), Some(23451));
        assert_eq!(mem_available_mib("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn need_caps_cpus_at_the_host_and_adds_overhead() {
        let mut r = Resolved {
            name: "x".into(),
            definition: Default::default(),
            chain: Vec::new(),
        };
        r.definition.build.cpus = 8;
        r.definition.build.memory = 2048;
        assert_eq!(
            Need::of(&r, 2),
            Need {
                cpus: 2,
                memory_mib: 2048 + OVERHEAD_MIB
            }
        );
        r.definition.build.cpus = 1;
        assert_eq!(Need::of(&r, 2).cpus, 1);
    }
}
