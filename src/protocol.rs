//! The guest protocol: how a build or smoke guest talks to imgbuild. There is no SSH; the
//! guest-side scripts (cloud-init/guest/: the provision runner, the hygiene, the pre-pull step,
//! the smoke runner) print `IMGBUILD-…` lines on the serial console, and imgbuild reads them.
//! This module owns both ends' vocabulary: the marker strings, the parser of the build's lines
//! ([`Watch`]), the smoke result lines ([`smoke_result`]), what a waiting loop may match
//! ([`matching`]), and the serial numbers of the disks imgbuild attaches. The tests below fail
//! when a guest script stops printing a marker this side waits for.

use serde::{Deserialize, Serialize};

/// The serial-console lines. The guest scripts print them through a `say` helper that adds
/// the `IMGBUILD-` prefix (see cloud-init/guest/provision and hygiene).
pub mod marker {
    pub const PROVISION_START: &str = "IMGBUILD-PROVISION-START";
    pub const STEP_START: &str = "IMGBUILD-STEP-START";
    pub const STEP_OK: &str = "IMGBUILD-STEP-OK";
    pub const STEP_FAILED: &str = "IMGBUILD-STEP-FAILED";
    /// A line of a failed step's log, quoted: text, never an event.
    pub const LOG: &str = "IMGBUILD-LOG";
    pub const CLOUD_INIT_ERROR: &str = "IMGBUILD-CLOUD-INIT-ERROR";
    pub const CONTAINER_IMAGE: &str = "IMGBUILD-CONTAINER-IMAGE";
    pub const PROVISION_OK: &str = "IMGBUILD-PROVISION-OK";
    pub const PROVISION_FAILED: &str = "IMGBUILD-PROVISION-FAILED";
    pub const HYGIENE_DONE: &str = "IMGBUILD-HYGIENE-DONE";
    /// cloud-init's `final_message` in build boots.
    pub const CLOUD_INIT_FINAL: &str = "IMGBUILD-CLOUD-INIT-FINAL";
    /// One installed package: `IMGBUILD-PACKAGE NAME VERSION ARCH`.
    pub const PACKAGE: &str = "IMGBUILD-PACKAGE";
    /// After the last package line: `IMGBUILD-PACKAGES-END COUNT`.
    pub const PACKAGES_END: &str = "IMGBUILD-PACKAGES-END";
    pub const APT_CACHE: &str = "IMGBUILD-APT-CACHE";
    pub const APT_LISTS: &str = "IMGBUILD-APT-LISTS";
    pub const SMOKE_START: &str = "IMGBUILD-SMOKE-START";
    pub const SMOKE_RESULT: &str = "IMGBUILD-SMOKE-RESULT";
    pub const SMOKE_DONE: &str = "IMGBUILD-SMOKE-DONE";
    /// The guest's `rdp-login` check is ready: the host now tries RDP logins.
    pub const SMOKE_RDP_READY: &str = "IMGBUILD-SMOKE-RDP-READY";
    /// The guest saw xrdp refuse the wrong password: the host ends that attempt and tries the
    /// launch's.
    pub const SMOKE_RDP_REFUSED: &str = "IMGBUILD-SMOKE-RDP-REFUSED";
    /// Not ours: the guest kernel's last words.
    pub const KERNEL_PANIC: &str = "Kernel panic";
}

/// The serial number of the shared download disk, as a literal for `concat!` in the guest's
/// shell (render::cloud_init's bootcmd): the guest finds it as /dev/disk/by-id/virtio-SERIAL.
macro_rules! apt_cache_serial {
    () => {
        "imgbuild-apt-cache"
    };
}
pub(crate) use apt_cache_serial;

/// The serial number the host gives the shared download disk.
pub const APT_CACHE_SERIAL: &str = apt_cache_serial!();

/// A container image the pre-pull step reported baking in (`IMGBUILD-CONTAINER-IMAGE {json}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerImage {
    /// The reference the compose project names.
    pub image: String,
    /// Docker's image id (sha256 of the image config).
    pub id: String,
    /// Registry digests (`repo@sha256:…`); empty for images loaded from an archive.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// `pulled` or `loaded` (from an archive) or `present`.
    pub source: String,
}

/// An installed OS package, as dpkg knows it in the guest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// One smoke check's outcome as the smoke runner reports it (`IMGBUILD-SMOKE-RESULT {json}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckOutcome {
    pub name: String,
    /// builtin, command, unit, port, file.
    pub kind: String,
    pub passed: bool,
    pub detail: String,
    pub seconds: f64,
}

/// The smoke result a serial line carries, if any.
pub fn smoke_result(line: &str) -> Option<CheckOutcome> {
    let j = after(line, marker::SMOKE_RESULT)?;
    serde_json::from_str(j.trim()).ok()
}

/// Which of `patterns` a serial line carries. A line the provision runner quotes from its log
/// (`IMGBUILD-LOG ...`) is text, not an event: an earlier layer's `PROVISION-OK` in a failed
/// step's log tail must not end the wait as a success.
pub fn matching(patterns: &[&str], line: &str) -> Option<usize> {
    if line.contains(marker::LOG) {
        return None;
    }
    patterns.iter().position(|p| line.contains(p))
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let i = line.find(marker)?;
    let rest = &line[i + marker.len()..];
    // A marker is a whole word: `IMGBUILD-LOG` must not match `IMGBUILD-LOGS`.
    if rest.starts_with(|c: char| !c.is_whitespace()) {
        return None;
    }
    Some(rest.trim_start())
}

/// What a build boot's serial line meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Nothing,
    /// A provisioning step started (its name).
    Step(String),
    /// Provisioning succeeded; the guest powers off next (hygiene runs on the way down).
    ProvisionOk,
    /// Provisioning failed: the guest stays up and must be stopped.
    ProvisionFailed,
    HygieneDone,
    /// The guest kernel died.
    Panic(String),
}

/// The state of a build boot as its serial lines tell it. Both provisioning backends decide
/// success from these lines, never from SSH.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    pub current_step: Option<String>,
    pub failed_step: Option<String>,
    pub reason: Option<String>,
    pub cloud_init_errors: Vec<String>,
    /// The provision log's tail, as the runner printed it before failing.
    pub log: Vec<String>,
    pub provision_ok: bool,
    pub hygiene_done: bool,
    pub steps_done: usize,
    /// Container images the pre-pull step reported.
    pub container_images: Vec<ContainerImage>,
    /// The image's packages as the runner listed them before PROVISION-OK (complete only
    /// when `packages_end` matches their count).
    pub packages: Vec<Package>,
    pub packages_end: Option<usize>,
}

impl Watch {
    /// The package list, if the guest reported it whole.
    pub fn package_list(&self) -> Option<Vec<Package>> {
        (self.packages_end == Some(self.packages.len())).then(|| {
            let mut p = self.packages.clone();
            p.sort();
            p
        })
    }
}

impl Watch {
    pub fn line(&mut self, line: &str) -> Event {
        // Quoted log lines first: they may quote any other marker.
        if let Some(rest) = after(line, marker::LOG) {
            self.log.push(rest.to_string());
            return Event::Nothing;
        }
        if let Some(rest) = after(line, marker::STEP_START) {
            self.current_step = Some(rest.trim().to_string());
            return Event::Step(rest.trim().to_string());
        }
        if after(line, marker::STEP_OK).is_some() {
            self.steps_done += 1;
            return Event::Nothing;
        }
        if let Some(rest) = after(line, marker::STEP_FAILED) {
            let name = rest.split_whitespace().next().unwrap_or_default();
            self.failed_step = Some(name.to_string());
            return Event::Nothing;
        }
        if let Some(rest) = after(line, marker::CONTAINER_IMAGE) {
            if let Ok(ci) = serde_json::from_str::<ContainerImage>(rest.trim()) {
                // The console may show a line twice (the runner's echo and the journal).
                if !self.container_images.contains(&ci) {
                    self.container_images.push(ci);
                }
            }
            return Event::Nothing;
        }
        if let Some(rest) = after(line, marker::PACKAGE) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let [name, version, arch] = f[..] {
                let p = Package {
                    name: name.into(),
                    version: version.into(),
                    arch: arch.into(),
                };
                // The console may show a line twice, as with container images.
                if self.packages.last() != Some(&p) {
                    self.packages.push(p);
                }
            }
            return Event::Nothing;
        }
        if let Some(rest) = after(line, marker::PACKAGES_END) {
            self.packages_end = rest.trim().parse().ok();
            return Event::Nothing;
        }
        if let Some(rest) = after(line, marker::CLOUD_INIT_ERROR) {
            self.cloud_init_errors.push(rest.to_string());
            return Event::Nothing;
        }
        if let Some(rest) = after(line, marker::PROVISION_FAILED) {
            self.reason = Some(rest.trim().to_string());
            return Event::ProvisionFailed;
        }
        if after(line, marker::PROVISION_OK).is_some() {
            self.provision_ok = true;
            return Event::ProvisionOk;
        }
        if after(line, marker::HYGIENE_DONE).is_some() {
            self.hygiene_done = true;
            return Event::HygieneDone;
        }
        if line.contains(marker::KERNEL_PANIC) {
            return Event::Panic(line.trim().to_string());
        }
        Event::Nothing
    }

    /// A one-line account of a failed provisioning.
    pub fn failure(&self) -> String {
        let mut s = match (&self.failed_step, &self.reason) {
            (Some(step), _) => format!("step `{step}` failed"),
            (None, Some(r)) if !r.is_empty() => r.clone(),
            _ => "provisioning failed".into(),
        };
        if !self.cloud_init_errors.is_empty() {
            s.push_str(&format!(
                "; cloud-init: {}",
                self.cloud_init_errors.join("; ")
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROVISION: &str = include_str!("../cloud-init/guest/provision");
    const HYGIENE: &str = include_str!("../cloud-init/guest/hygiene");
    const PREPULL: &str = include_str!("../cloud-init/guest/prepull");
    const SMOKE: &str = include_str!("../cloud-init/guest/smoke.py");

    /// The guest side prints what this side waits for: `say "NAME ..."` (the prefix added by
    /// `say`) or the whole marker.
    fn prints(script: &str, m: &str) -> bool {
        let short = m.strip_prefix("IMGBUILD-").unwrap();
        script.contains(m)
            || script.contains(&format!("say \"{short}"))
            || script.contains(&format!("say '{short}"))
    }

    #[test]
    fn the_guest_scripts_print_every_marker_this_side_reads() {
        for m in [
            marker::PROVISION_START,
            marker::STEP_START,
            marker::STEP_OK,
            marker::STEP_FAILED,
            marker::CLOUD_INIT_ERROR,
            marker::PROVISION_OK,
            marker::PROVISION_FAILED,
            marker::APT_CACHE,
            marker::APT_LISTS,
            marker::PACKAGE,
            marker::PACKAGES_END,
        ] {
            assert!(
                prints(PROVISION, m),
                "cloud-init/guest/provision prints no {m}"
            );
        }
        assert!(PROVISION.contains(&format!("sed 's/^/{} /'", marker::LOG)));
        assert!(prints(HYGIENE, marker::HYGIENE_DONE));
        assert!(prints(PREPULL, marker::CONTAINER_IMAGE));
        for m in [
            marker::SMOKE_START,
            marker::SMOKE_RESULT,
            marker::SMOKE_DONE,
            marker::SMOKE_RDP_READY,
            marker::SMOKE_RDP_REFUSED,
        ] {
            assert!(SMOKE.contains(&format!("\"{m}")), "smoke.py prints no {m}");
        }
    }

    #[test]
    fn a_quoted_log_line_is_not_a_marker() {
        let p = [marker::PROVISION_OK, marker::PROVISION_FAILED];
        assert_eq!(matching(&p, "IMGBUILD-LOG IMGBUILD-PROVISION-OK"), None);
        assert_eq!(
            matching(&p, "[ 61.2] IMGBUILD-PROVISION-FAILED step x"),
            Some(1)
        );
        assert_eq!(matching(&p, "IMGBUILD-PROVISION-OK"), Some(0));
        assert_eq!(matching(&p, "login:"), None);
        let mut w = Watch::default();
        assert_eq!(w.line("IMGBUILD-LOG IMGBUILD-PROVISION-OK"), Event::Nothing);
        assert_eq!(w.line("IMGBUILD-LOG"), Event::Nothing);
        assert_eq!(w.log, vec!["IMGBUILD-PROVISION-OK", ""]);
        assert!(!w.provision_ok);
    }

    #[test]
    fn smoke_results_are_parsed() {
        let l = r#"[ 9.1] IMGBUILD-SMOKE-RESULT {"name":"ssh","kind":"builtin","passed":true,"detail":"","seconds":0.1}"#;
        let c = smoke_result(l).unwrap();
        assert_eq!((c.name.as_str(), c.passed), ("ssh", true));
        assert_eq!(smoke_result("IMGBUILD-SMOKE-RESULT {broken"), None);
        assert_eq!(smoke_result("IMGBUILD-SMOKE-DONE"), None);
    }

    #[test]
    fn the_package_list_counts_only_when_whole() {
        let mut w = Watch::default();
        w.line("[ 50.0] IMGBUILD-PACKAGE zlib1g 1:1.2.13.dfsg-1 amd64");
        w.line("IMGBUILD-PACKAGE adduser 3.134 all");
        w.line("IMGBUILD-PACKAGE broken line");
        assert_eq!(w.package_list(), None, "no end line yet");
        w.line("IMGBUILD-PACKAGES-END 3");
        assert_eq!(w.package_list(), None, "a line was lost");
        w.line("IMGBUILD-PACKAGES-END 2");
        let l = w.package_list().unwrap();
        assert_eq!(l[0].name, "adduser");
        assert_eq!(l[1].version, "1:1.2.13.dfsg-1");
    }

    #[test]
    fn container_images_are_collected_once() {
        let mut w = Watch::default();
        let l = r#"[  80.1] IMGBUILD-CONTAINER-IMAGE {"image":"localhost/probe:1","id":"sha256:ab","repo_digests":[],"source":"loaded"}"#;
        w.line(l);
        w.line(l);
        w.line("IMGBUILD-CONTAINER-IMAGE {broken");
        assert_eq!(w.container_images.len(), 1);
        assert_eq!(w.container_images[0].image, "localhost/probe:1");
        assert_eq!(w.container_images[0].source, "loaded");
    }

    #[test]
    fn a_failed_step_is_named_with_its_log() {
        let mut w = Watch::default();
        assert_eq!(
            w.line("[  12.0] cloud-init[512]: IMGBUILD-STEP-START 50-01-fail"),
            Event::Step("50-01-fail".into())
        );
        w.line("IMGBUILD-LOG + false");
        w.line("IMGBUILD-STEP-FAILED 50-01-fail exit=3");
        assert_eq!(
            w.line("IMGBUILD-PROVISION-FAILED step 50-01-fail exited 3"),
            Event::ProvisionFailed
        );
        assert_eq!(w.failure(), "step `50-01-fail` failed");
        assert_eq!(w.log, vec!["+ false"]);
        assert!(!w.provision_ok);
    }

    #[test]
    fn cloud_init_errors_are_reported() {
        let mut w = Watch::default();
        w.line("IMGBUILD-CLOUD-INIT-ERROR Running module package_update_upgrade_install (<module>) failed");
        w.line("IMGBUILD-PROVISION-FAILED cloud-init reported errors");
        assert!(w.failure().contains("package_update_upgrade_install"));
    }

    #[test]
    fn success_and_hygiene_and_panic() {
        let mut w = Watch::default();
        assert_eq!(w.line("IMGBUILD-PROVISION-OK"), Event::ProvisionOk);
        assert_eq!(w.line("x IMGBUILD-HYGIENE-DONE"), Event::HygieneDone);
        assert!(w.provision_ok && w.hygiene_done);
        assert!(matches!(
            w.line("[ 1.0] Kernel panic - not syncing: VFS"),
            Event::Panic(_)
        ));
        assert_eq!(w.line("ordinary boot noise"), Event::Nothing);
    }
}
