//! NVIDIA: the driver, nouveau off, the container toolkit.

use super::*;
use crate::definition::{Arch, Definition, Resolved, SmokeCheck};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NvidiaSource {
    /// Ubuntu's restricted drivers (nvidia-driver-BRANCH-server) and NVIDIA's container toolkit repo.
    #[default]
    Ubuntu,
    /// Debian's non-free nvidia-driver packages.
    Debian,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nvidia {
    pub source: NvidiaSource,
    /// The driver branch, e.g. "580": on Ubuntu the `-server` (ERD) branch of Canonical's
    /// prebuilt signed modules, one branch for modules, driver and utilities. In noble the 550
    /// packages are transitional to 580, hence the default.
    pub driver_branch: String,
    pub container_toolkit: bool,
}

impl Default for Nvidia {
    fn default() -> Self {
        Nvidia {
            source: NvidiaSource::Ubuntu,
            driver_branch: "580".into(),
            container_toolkit: true,
        }
    }
}

pub(super) fn fragment(d: &Definition, n: &Nvidia, arch: Arch) -> Fragment {
    let mut fr = Fragment::default();
    fr.files.push(WriteFile::new(
        "/etc/modprobe.d/blacklist-nouveau.conf",
        "blacklist nouveau\noptions nouveau modeset=0\n",
        "0644",
    ));
    match n.source {
        NvidiaSource::Ubuntu => {
            // Canonical's prebuilt kernel modules, signed with its key (Secure Boot works, no
            // compiler, no DKMS build under TCG, no locally made signing key), then the driver
            // without DKMS and its utilities, all on one branch: canonical/ubuntu-server-
            // documentation docs/how-to/graphics/install-nvidia-drivers.md ("Installing the
            // pre-compiled NVIDIA modules for your kernel": linux-modules-nvidia-${BRANCH}
            // ${SERVER}-${FLAVOUR}; "We don't recommend using the DKMS modules"). Headless:
            // the desktop is Xvnc's, the GPU computes. Ubuntu's cloud images run the generic
            // flavour (linux-image-virtual is the generic kernel with fewer modules).
            let b = &n.driver_branch;
            fr.packages
                .push(format!("linux-modules-nvidia-{b}-server-generic"));
            fr.packages
                .push(format!("nvidia-headless-no-dkms-{b}-server"));
            fr.packages.push(format!("nvidia-utils-{b}-server"));
        }
        NvidiaSource::Debian => {
            fr.apt_sources.push((
                "debian-non-free.list".into(),
                json!({ "source": format!("deb http://deb.debian.org/debian {} contrib non-free non-free-firmware", d.os.codename) }),
            ));
            fr.pkgs(&["nvidia-driver", "firmware-misc-nonfree", "nvidia-smi"]);
        }
    }
    if n.container_toolkit {
        fr.apt_sources.push((
            "nvidia-container-toolkit.list".into(),
            keyed_source(
                d,
                format!("deb [signed-by=$KEY_FILE] https://nvidia.github.io/libnvidia-container/stable/deb/{arch} /"),
                &NVIDIA_CTK_KEY,
            ),
        ));
        fr.pkgs(&["nvidia-container-toolkit"]);
    }
    let mut script = String::new();
    if n.source == NvidiaSource::Ubuntu {
        // The doc's own check ("Check that the modules for your specific kernel/ABI were
        // installed by the metapackage"), for every kernel the image boots, not the build VM's
        // running one: the build fails here if the metapackage's kernel ABI is not the image's.
        script.push_str(
            "for k in /lib/modules/*; do\n  [ -e \"/boot/vmlinuz-${k##*/}\" ] || continue\n  \
             modinfo -k \"${k##*/}\" nvidia >/dev/null || { echo \"no prebuilt NVIDIA module for kernel ${k##*/}\" >&2; exit 1; }\n\
             done\n",
        );
    }
    script.push_str("update-initramfs -u\n");
    if n.container_toolkit && d.features.docker.is_some() {
        script.push_str("nvidia-ctk runtime configure --runtime=docker\n");
    }
    fr.step("20-nvidia", script);
    fr
}

/// The `nvidia` feature.
pub struct Feature;

impl super::Feature for Feature {
    fn name(&self) -> &'static str {
        "nvidia"
    }
    fn enabled(&self, d: &Definition) -> bool {
        d.features.nvidia.is_some()
    }
    fn repo_keys(&self, d: &Definition) -> Vec<&'static RepoKey> {
        match &d.features.nvidia {
            Some(n) if n.container_toolkit => vec![&NVIDIA_CTK_KEY],
            _ => Vec::new(),
        }
    }
    fn fragment(&self, d: &Definition, arch: Arch) -> Option<Fragment> {
        d.features.nvidia.as_ref().map(|s| fragment(d, s, arch))
    }
    /// What a VM without a GPU can prove: the driver's kernel module is there for the kernel
    /// that booted (Debian's is named nvidia-current), nouveau stays out, and the container
    /// toolkit's CLI runs. Loading the module and `nvidia-smi` need a GPU; the check says so.
    fn smoke_checks(&self, d: &Definition, _launch: Option<&LaunchUser>) -> Vec<SmokeCheck> {
        let Some(n) = &d.features.nvidia else {
            return Vec::new();
        };
        vec![SmokeCheck::builtin(
            "nvidia-driver-installed",
            json!({"toolkit": n.container_toolkit}),
        )]
    }
    fn validate(&self, r: &Resolved, err: &mut dyn FnMut(&str, String)) {
        let d = &r.definition;
        let f = &d.features;
        let Some(n) = &f.nvidia else {
            return;
        };
        if n.source == NvidiaSource::Ubuntu && d.os.distro == "debian" {
            err(
                "features.nvidia.source",
                "ubuntu drivers on a debian image: use `source: debian`".into(),
            );
        }
        if n.source == NvidiaSource::Debian && d.os.distro == "ubuntu" {
            err(
                "features.nvidia.source",
                "debian drivers on an ubuntu image: use `source: ubuntu`".into(),
            );
        }
        if n.driver_branch.is_empty() || !n.driver_branch.bytes().all(|b| b.is_ascii_digit()) {
            err(
                "features.nvidia.driver_branch",
                format!("`{}` is not a branch number like 580", n.driver_branch),
            );
        }
        if n.container_toolkit && f.docker.is_none() && f.k3s.is_none() {
            err(
                "features.nvidia.container_toolkit",
                "needs features.docker or features.k3s".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ubuntu() -> Definition {
        let mut d = Definition::default();
        d.os.distro = "ubuntu".into();
        d.os.codename = "noble".into();
        d
    }

    #[test]
    fn ubuntu_gets_canonicals_prebuilt_signed_modules_on_one_branch() {
        let n = Nvidia::default();
        assert_eq!(n.driver_branch, "580");
        let fr = fragment(&ubuntu(), &n, Arch::Amd64);
        let nv: Vec<&str> = fr
            .packages
            .iter()
            .map(String::as_str)
            .filter(|p| p.contains("nvidia"))
            .collect();
        assert_eq!(
            nv,
            [
                "linux-modules-nvidia-580-server-generic",
                "nvidia-headless-no-dkms-580-server",
                "nvidia-utils-580-server",
                "nvidia-container-toolkit"
            ]
        );
        let step = &fr
            .steps
            .iter()
            .find(|s| s.name == "20-nvidia")
            .unwrap()
            .script;
        assert!(step.contains("modinfo -k"), "{step}");
        assert!(step.find("modinfo").unwrap() < step.find("update-initramfs").unwrap());
    }

    #[test]
    fn debian_keeps_its_own_driver_and_no_module_check_of_ubuntus() {
        let mut d = ubuntu();
        d.os.distro = "debian".into();
        let n = Nvidia {
            source: NvidiaSource::Debian,
            container_toolkit: false,
            ..Nvidia::default()
        };
        let fr = fragment(&d, &n, Arch::Amd64);
        assert!(fr.packages.contains(&"nvidia-driver".to_string()));
        assert!(!fr.packages.iter().any(|p| p.contains("no-dkms")));
        let step = &fr
            .steps
            .iter()
            .find(|s| s.name == "20-nvidia")
            .unwrap()
            .script;
        assert!(!step.contains("modinfo"), "{step}");
    }
}
