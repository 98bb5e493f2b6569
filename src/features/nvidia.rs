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
        NOUVEAU_BLACKLIST.0,
        NOUVEAU_BLACKLIST.1,
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
    // A bootstrapped base made with Debian's driver has DKMS's module already (built natively
    // while mmdebstrap installed it): keeping it and dropping DKMS is work on the base's own
    // packages, done there at native speed (minutes of a layer under TCG before). The nouveau
    // blacklist goes there too, before the bootstrap makes the initramfs, so that the layer
    // has no initramfs to remake (`update-initramfs -u` of the desktop twin took over ten
    // minutes of its features layer under TCG on a loaded CI host); the layer writes the same
    // file again, unchanged.
    let in_base = n.source == NvidiaSource::Debian
        && d.base
            .get(&arch)
            .and_then(|b| b.bootstrap.as_ref())
            .is_some_and(|b| b.has_package("nvidia-driver"));
    if in_base {
        fr.base_steps.push(Step {
            name: "nvidia-blacklist-nouveau".into(),
            script: format!(
                "mkdir -p /etc/modprobe.d\ncat >{} <<'IMGBUILD_EOF'\n{}IMGBUILD_EOF\n",
                NOUVEAU_BLACKLIST.0, NOUVEAU_BLACKLIST.1
            ),
            offline: true,
            network: false,
        });
        fr.base_steps.push(Step {
            name: "nvidia-keep-module-drop-dkms".into(),
            script: DEBIAN_KEEP_MODULE_DROP_DKMS.into(),
            offline: true,
            network: false,
        });
    } else {
        if n.source == NvidiaSource::Debian {
            script.push_str(DEBIAN_KEEP_MODULE_DROP_DKMS);
        }
        script.push_str("update-initramfs -u\n");
    }
    if n.container_toolkit && d.features.docker.is_some() {
        script.push_str("nvidia-ctk runtime configure --runtime=docker\n");
    }
    if !script.is_empty() {
        fr.offline_step("20-nvidia", script);
    }
    fr
}

/// nouveau, the in-tree driver for NVIDIA cards, would claim the GPU before NVIDIA's module.
const NOUVEAU_BLACKLIST: (&str, &str) = (
    "/etc/modprobe.d/blacklist-nouveau.conf",
    "blacklist nouveau\noptions nouveau modeset=0\n",
);

/// Debian builds its driver's kernel module with DKMS (`nvidia-kernel-dkms`, which depends on
/// `dkms`, and `dkms` on gcc, make, dpkg-dev and patch, recommending the kernel headers:
/// Debian bookworm's Packages for non-free `nvidia-kernel-dkms` 535.261.03-1 and main `dkms`
/// 3.0.10-8+deb12u1). The image keeps the module DKMS built and none of what built it: the
/// modules are packaged as `imgbuild-nvidia-kernel`, which provides `nvidia-kernel-VERSION` (the
/// alternative that `nvidia-driver` accepts for `nvidia-kernel-dkms`) and depends on what
/// `nvidia-kernel-dkms` depends on but `dkms` (GSP firmware, `nvidia-kernel-support`'s modprobe
/// aliases), and on the kernels it was built for; then DKMS, the headers and what only they
/// pulled in are purged. What stays of a compiler is what a declared package still needs
/// (bookworm's `python3-pip` recommends `build-essential`). The price: a new kernel from a later
/// upgrade gets no module (no DKMS to build one); rebuild the image, as for any kernel change.
/// The modules go to `updates/imgbuild-nvidia`, not DKMS's `updates/dkms`, which `dkms remove`
/// empties when `nvidia-kernel-dkms` is purged. The package is built uncompressed (`-Znone`):
/// it is installed at once and deleted, and dpkg-deb's default xz over the modules' tens of MiB
/// cost minutes of a build under emulation for nothing.
const DEBIAN_KEEP_MODULE_DROP_DKMS: &str = r#"v=$(dpkg-query -W -f='${Version}' nvidia-kernel-dkms)
up=${v%%-*}
pkg=/var/tmp/imgbuild-nvidia-kernel
rm -rf "$pkg" "$pkg.deb"
mkdir -p "$pkg/DEBIAN"
kdeps=""
for k in /lib/modules/*; do
  k=${k##*/}
  [ -e "/boot/vmlinuz-$k" ] || continue
  built=$(ls -d /var/lib/dkms/nvidia-current/"$up"/"$k"/*/module 2>/dev/null | head -n1)
  if [ -z "$built" ] || ! ls "$built"/*.ko* >/dev/null 2>&1; then
    echo "DKMS built no NVIDIA module for kernel $k" >&2
    exit 1
  fi
  mkdir -p "$pkg/lib/modules/$k/updates/imgbuild-nvidia"
  cp -a "$built"/*.ko* "$pkg/lib/modules/$k/updates/imgbuild-nvidia/"
  kdeps="$kdeps, linux-image-$k"
done
[ -n "$kdeps" ] || { echo "no kernel in /boot to keep an NVIDIA module for" >&2; exit 1; }
deps=$(dpkg-query -W -f='${Depends}' nvidia-kernel-dkms | tr ',' '\n' | sed 's/^ *//' | grep -v '^dkms\( \|$\)' | paste -sd, - | sed 's/,/, /g')
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: imgbuild-nvidia-kernel
Version: $v
Architecture: $(dpkg --print-architecture)
Maintainer: imgbuild <root@localhost>
Section: non-free/kernel
Priority: optional
Provides: nvidia-kernel-$up
Depends: $deps$kdeps
Description: NVIDIA kernel modules $up, built by DKMS when the image was built
 Packaged by imgbuild so that the image keeps the module without DKMS and its compiler.
CONTROL
printf '#!/bin/sh\nset -e\nfor k in /lib/modules/*; do [ -e "/boot/vmlinuz-${k##*/}" ] && depmod -a "${k##*/}"; done\nexit 0\n' >"$pkg/DEBIAN/postinst"
chmod 0755 "$pkg/DEBIAN/postinst"
dpkg-deb -Znone --root-owner-group --build "$pkg" "$pkg.deb"
dpkg -i "$pkg.deb"
rm -rf "$pkg" "$pkg.deb"
build_only=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' nvidia-kernel-dkms dkms 'linux-headers-*' 'linux-kbuild-*' 2>/dev/null | awk '$1 ~ /^.i/ {print $2}')
apt-get purge -y $build_only
apt-get autoremove --purge -y
rm -rf /var/lib/dkms
for k in /lib/modules/*; do
  [ -e "/boot/vmlinuz-${k##*/}" ] || continue
  modinfo -k "${k##*/}" -F filename nvidia-current | grep -q /updates/imgbuild-nvidia/ || { echo "the kept NVIDIA module is not the one kernel ${k##*/} loads" >&2; exit 1; }
done
"#;

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
            json!({"toolkit": n.container_toolkit, "dkms_free": n.source == NvidiaSource::Debian}),
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

    fn nvidia_step(fr: &Fragment) -> &str {
        &fr.steps
            .iter()
            .find(|s| s.name == "20-nvidia")
            .unwrap()
            .script
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
        let step = nvidia_step(&fr);
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
        let step = nvidia_step(&fr);
        assert!(!step.contains("modinfo -k \"${k##*/}\" nvidia >"), "{step}");
        // The DKMS-built module is kept as a package that stands in for nvidia-kernel-dkms,
        // and DKMS with what built the module is purged before the initramfs is remade.
        assert!(step.contains("Provides: nvidia-kernel-$up"), "{step}");
        assert!(step.contains("grep -v '^dkms"), "{step}");
        let purge = step.find("apt-get purge -y $build_only").unwrap();
        assert!(step.find("dpkg -i").unwrap() < purge);
        assert!(purge < step.find("autoremove --purge").unwrap());
        assert!(purge < step.find("update-initramfs").unwrap());
        assert!(
            fr.base_steps.is_empty(),
            "no bootstrap base: all in the layer"
        );

        // A bootstrapped base made with the driver: keeping the module and purging DKMS run
        // at the end of the bootstrap, the layer keeps the flagship's initramfs update.
        let mut b = crate::definition::Bootstrap {
            suite: "bookworm".into(),
            ..Default::default()
        };
        b.packages.push("nvidia-driver".into());
        d.base.insert(
            Arch::Amd64,
            crate::definition::BaseSpec {
                cloud_image: None,
                bootstrap: Some(b),
            },
        );
        let fr = fragment(&d, &n, Arch::Amd64);
        let names: Vec<&str> = fr.base_steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["nvidia-blacklist-nouveau", "nvidia-keep-module-drop-dkms"]
        );
        assert_eq!(fr.base_steps[1].script, DEBIAN_KEEP_MODULE_DROP_DKMS);
        // The blacklist the base's initramfs is made with is the file the layer writes.
        let dir = tempfile::tempdir().unwrap();
        let script = fr.base_steps[0]
            .script
            .replace("/etc/modprobe.d", &dir.path().display().to_string());
        let out = std::process::Command::new("sh")
            .args(["-e", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let layer_file = fr
            .files
            .iter()
            .find(|f| f.path == NOUVEAU_BLACKLIST.0)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("blacklist-nouveau.conf")).unwrap(),
            layer_file.content
        );
        // Nothing left for the layer: no initramfs to remake, no step.
        assert!(!fr.steps.iter().any(|s| s.name == "20-nvidia"), "{fr:?}");
        // Another arch's base (none here) keeps the whole step in its layer.
        let fr = fragment(&d, &n, Arch::Arm64);
        assert!(fr.base_steps.is_empty());
    }
}
