//! Reads the build guest's serial console: the `IMGBUILD-…` lines of the provision runner and
//! the hygiene unit (cloud-init/guest/), cloud-init's final message and kernel panics. Both
//! backends decide success from these lines, never from SSH.

/// What a serial line meant for the build.
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
    /// Container images the pre-pull step reported (`IMGBUILD-CONTAINER-IMAGE {json}`).
    pub container_images: Vec<crate::manifest::ContainerImage>,
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker)
        .map(|i| line[i + marker.len()..].trim_start())
}

impl Watch {
    pub fn line(&mut self, line: &str) -> Event {
        if let Some(rest) = after(line, "IMGBUILD-STEP-START ") {
            self.current_step = Some(rest.trim().to_string());
            return Event::Step(rest.trim().to_string());
        }
        if after(line, "IMGBUILD-STEP-OK ").is_some() {
            self.steps_done += 1;
            return Event::Nothing;
        }
        if let Some(rest) = after(line, "IMGBUILD-STEP-FAILED ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            self.failed_step = Some(name.to_string());
            return Event::Nothing;
        }
        if let Some(rest) = after(line, "IMGBUILD-CONTAINER-IMAGE ") {
            if let Ok(ci) = serde_json::from_str::<crate::manifest::ContainerImage>(rest.trim()) {
                // The console may show a line twice (the runner's echo and the journal).
                if !self.container_images.contains(&ci) {
                    self.container_images.push(ci);
                }
            }
            return Event::Nothing;
        }
        if let Some(rest) = after(line, "IMGBUILD-CLOUD-INIT-ERROR ") {
            self.cloud_init_errors.push(rest.to_string());
            return Event::Nothing;
        }
        if let Some(rest) = after(line, "IMGBUILD-LOG ") {
            self.log.push(rest.to_string());
            return Event::Nothing;
        }
        if line.trim_end().ends_with("IMGBUILD-LOG") {
            self.log.push(String::new());
            return Event::Nothing;
        }
        if let Some(rest) = after(line, "IMGBUILD-PROVISION-FAILED") {
            self.reason = Some(rest.trim().to_string());
            return Event::ProvisionFailed;
        }
        if line.contains("IMGBUILD-PROVISION-OK") {
            self.provision_ok = true;
            return Event::ProvisionOk;
        }
        if line.contains("IMGBUILD-HYGIENE-DONE") {
            self.hygiene_done = true;
            return Event::HygieneDone;
        }
        if line.contains("Kernel panic") {
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
