//! The features: optional building blocks of an image (`features:` in a definition). Each
//! module owns one feature: its settings (the YAML under `features.NAME`), its semantic
//! checks, what it adds to the build (packages, apt sources, files, steps), the groups it gives
//! launch-time users and the features it needs. [`REGISTRY`] lists them in layer order (the
//! order of `build.layers: per-feature`); adding a feature is a module here, a line there and
//! its `Option` field in definition::Features (the YAML key; serde needs the type).

pub mod compose_stack;
pub mod desktop;
pub mod docker;
pub mod drbd;
pub mod hardening;
pub mod k3s;
pub mod kolla_host;
pub mod nvidia;
pub mod shared_mount;

pub use compose_stack::ComposeStack;
pub use desktop::{Desktop, Zed};
pub use docker::{Docker, DockerSource};
pub use drbd::Drbd;
pub use hardening::Hardening;
pub use k3s::{K3s, K3sRole};
pub use kolla_host::KollaHost;
pub use nvidia::{Nvidia, NvidiaSource};
pub use shared_mount::SharedMount;

use crate::definition::{Arch, Definition, Listener, Resolved, SmokeCheck};
use serde_json::{json, Value};

/// Every feature, in layer order: build steps, `per-feature` layers and checks go this way.
pub const REGISTRY: &[&dyn Feature] = &[
    &hardening::Feature,
    &docker::Feature,
    &nvidia::Feature,
    &desktop::Feature,
    &compose_stack::Feature,
    &shared_mount::Feature,
    &k3s::Feature,
    &drbd::Feature,
    &kolla_host::Feature,
];

/// What a feature module provides. Every method but `name` and `enabled` has a default: a
/// feature that adds nothing of a kind leaves it out.
pub trait Feature: Sync {
    /// The key under `features:`; also the name of its `per-feature` layer.
    fn name(&self) -> &'static str;
    /// Whether `d` turns the feature on.
    fn enabled(&self, d: &Definition) -> bool;
    /// The features it cannot go without (checked when it is on).
    fn requires(&self) -> &'static [&'static str] {
        &[]
    }
    /// Why it needs them, before "needs features.X" in the error.
    fn requires_reason(&self) -> &'static str {
        ""
    }
    /// Its semantic checks (called when it is on): `err(field path, message)`.
    fn validate(&self, _r: &Resolved, _err: &mut dyn FnMut(&str, String)) {}
    /// What it adds to the build of `arch` (called when it is on); `None`: nothing (rendered elsewhere).
    fn fragment(&self, _d: &Definition, _arch: Arch) -> Option<Fragment> {
        None
    }
    /// Groups a launch-time user joins on an image with the feature.
    fn launch_groups(&self) -> &'static [&'static str] {
        &[]
    }
    /// The built-in smoke checks it brings; `launch`: the user a smoke boot launches with
    /// (images with a desktop get one).
    fn smoke_checks(&self, _d: &Definition, _launch: Option<&LaunchUser>) -> Vec<SmokeCheck> {
        Vec::new()
    }
    /// The APT repository keys its sources need (embedded in the definition's `apt.keys`).
    fn repo_keys(&self, _d: &Definition) -> Vec<&'static RepoKey> {
        Vec::new()
    }
    /// The sockets it may make listen on a non-loopback address, at the smoke boot or once
    /// launched (the `exposure-allowlist` smoke check fails on any other).
    fn listeners(&self, _d: &Definition) -> Vec<Listener> {
        Vec::new()
    }
}

/// The sockets the enabled features declare, in layer order.
pub fn listeners(d: &Definition) -> Vec<Listener> {
    enabled(d).flat_map(|f| f.listeners(d)).collect()
}

/// The user a smoke boot launches the image with, as `imgbuild userdata` would.
#[derive(Clone, Copy, Debug)]
pub struct LaunchUser<'a> {
    pub user: &'a str,
    pub ssh_key: &'a str,
    /// The desktop password the launch gives (VNC and RDP), for the smoke to check.
    pub password: Option<&'a str>,
}

/// The built-in smoke checks the enabled features bring, in layer order.
pub fn smoke_checks(d: &Definition, launch: Option<LaunchUser>) -> Vec<SmokeCheck> {
    enabled(d)
        .flat_map(|f| f.smoke_checks(d, launch.as_ref()))
        .collect()
}

/// The features `d` turns on, in layer order.
pub fn enabled(d: &Definition) -> impl Iterator<Item = &'static dyn Feature> + '_ {
    REGISTRY.iter().copied().filter(move |f| f.enabled(d))
}

/// All fragments of the enabled features, in layer order.
pub fn fragments(d: &Definition, arch: Arch) -> Vec<(&'static str, Fragment)> {
    enabled(d)
        .filter_map(|f| f.fragment(d, arch).map(|fr| (f.name(), fr)))
        .collect()
}

/// The steps of `d`'s enabled features that run at the end of its bootstrapped base on `arch`
/// ([`Fragment::base_steps`]), in layer order. Empty when the base is no bootstrap.
pub fn base_steps(d: &Definition, arch: Arch) -> Vec<Step> {
    fragments(d, arch)
        .into_iter()
        .flat_map(|(_, fr)| fr.base_steps)
        .collect()
}

/// The groups a launch-time user joins on an image of `d`.
pub fn launch_groups(d: &Definition) -> Vec<&'static str> {
    enabled(d)
        .flat_map(|f| f.launch_groups())
        .copied()
        .collect()
}

/// The semantic checks of every enabled feature: first what it needs, then its own.
pub fn validate(r: &Resolved, err: &mut dyn FnMut(&str, String)) {
    let d = &r.definition;
    for f in enabled(d) {
        let missing: Vec<&str> = f
            .requires()
            .iter()
            .copied()
            .filter(|n| !REGISTRY.iter().any(|g| g.name() == *n && g.enabled(d)))
            .collect();
        if !missing.is_empty() {
            let needs: Vec<String> = missing.iter().map(|n| format!("features.{n}")).collect();
            err(
                &format!("features.{}", f.name()),
                format!("{}needs {}", f.requires_reason(), needs.join(" and ")),
            );
        }
        f.validate(r, err);
    }
}

/// A file written by cloud-init's write_files.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteFile {
    pub path: String,
    pub content: String,
    pub permissions: String,
    pub owner: String,
}

impl WriteFile {
    pub fn new(path: impl Into<String>, content: impl Into<String>, permissions: &str) -> Self {
        WriteFile {
            path: path.into(),
            content: content.into(),
            permissions: permissions.into(),
            owner: "root:root".into(),
        }
    }
}

/// A provisioning step: a bash script run with `set -eu -o pipefail`, ordered by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub name: String,
    pub script: String,
    /// Needs no running system (services, network): may run in a boot-free layer.
    pub offline: bool,
    /// Needs the network while it runs (a pull): a boot-free layer keeps QEMU's user network
    /// up for its steps (render/offline.rs). Only with `offline`; a full boot has the network.
    pub network: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fragment {
    pub packages: Vec<String>,
    /// cloud-init `apt.sources` entries (name → {source, key}).
    pub apt_sources: Vec<(String, Value)>,
    pub files: Vec<WriteFile>,
    pub steps: Vec<Step>,
    /// Steps that run at the end of a bootstrapped base (in its tree, natively, as mmdebstrap's
    /// customize hooks) instead of in a layer: work on packages the base was made with that a
    /// layer would do under emulation for nothing. A feature puts a step here only when the
    /// image's base is a bootstrap with those packages (otherwise the step stays in `steps`).
    pub base_steps: Vec<Step>,
}

impl Fragment {
    pub(crate) fn step(&mut self, name: &str, script: impl Into<String>) {
        self.steps.push(Step {
            name: name.into(),
            script: script.into(),
            offline: false,
            network: false,
        });
    }
    /// A step that needs no running system (no service, no network): it may run in a
    /// boot-free layer (render/offline.rs).
    pub(crate) fn offline_step(&mut self, name: &str, script: impl Into<String>) {
        self.steps.push(Step {
            name: name.into(),
            script: script.into(),
            offline: true,
            network: false,
        });
    }
    pub(crate) fn pkgs(&mut self, p: &[&str]) {
        self.packages.extend(p.iter().map(|s| s.to_string()));
    }
}

/// The shell command that enables `units` for the image's boots. A build step never reloads
/// systemd (`--no-reload`): the build VM powers off after provisioning, so the units start at
/// the next boot anyway, and under TCG each `daemon-reload` costs a build boot 4-6 s once
/// Docker runs (BENCHMARKS.md, the run of commit 4970aad). tests/catalog.rs holds every rendered step to it.
pub fn enable_units(units: &[&str]) -> String {
    format!("systemctl --no-reload enable {}", units.join(" "))
}

/// An APT repository a feature adds and the fingerprint of its signing key, which the
/// definition embeds in `apt.keys.<name>` (checked when loaded; no keyserver at build time).
#[derive(Debug)]
pub struct RepoKey {
    pub name: &'static str,
    pub owner: &'static str,
    /// Where the owner publishes the key.
    pub url: &'static str,
    pub fingerprint: &'static str,
}

/// Docker's release signing key (docs.docker.com/engine/install/ubuntu: "Add Docker's
/// official GPG key", the fingerprint Docker's docs print).
pub const DOCKER_KEY: RepoKey = RepoKey {
    name: "docker",
    owner: "Docker",
    url: "https://download.docker.com/linux/ubuntu/gpg",
    fingerprint: "9DC858229FC7DD38854AE2D88D81803C0EBFCD88",
};
/// NVIDIA's container toolkit repository key (NVIDIA container toolkit install guide).
pub const NVIDIA_CTK_KEY: RepoKey = RepoKey {
    name: "nvidia-container-toolkit",
    owner: "NVIDIA",
    url: "https://nvidia.github.io/libnvidia-container/gpgkey",
    fingerprint: "C95B321B61E88C1809C4F759DDCAE044F796ECB0",
};
/// Mozilla's APT repository key (support.mozilla.org "Install Firefox on Linux", the
/// fingerprint Mozilla prints), for a Firefox that is not a snap.
pub const MOZILLA_KEY: RepoKey = RepoKey {
    name: "mozilla",
    owner: "Mozilla",
    url: "https://packages.mozilla.org/apt/repo-signing-key.gpg",
    fingerprint: "35BAA0B33E9EB396F59CA838C0BA5CE6DC6315A3",
};
pub const REPO_KEYS: [&RepoKey; 3] = [&DOCKER_KEY, &NVIDIA_CTK_KEY, &MOZILLA_KEY];

/// The repository keys the enabled features need, each with the field that asks for it.
pub fn repo_keys(d: &Definition) -> Vec<(String, &'static RepoKey)> {
    enabled(d)
        .flat_map(|f| {
            f.repo_keys(d)
                .into_iter()
                .map(move |k| (format!("features.{}", f.name()), k))
        })
        .collect()
}

/// A cloud-init apt source signed by `key`, with the key the definition embeds.
pub(crate) fn keyed_source(d: &Definition, source: String, key: &RepoKey) -> Value {
    match d.apt.keys.get(key.name) {
        Some(k) => json!({ "source": source, "key": k.key }),
        // Refused by validation before anything renders.
        None => json!({ "source": source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_the_definition_keys() {
        let yaml: String = REGISTRY
            .iter()
            .map(|f| format!("{}: true\n", f.name()))
            .collect();
        let features: crate::definition::Features = serde_norway::from_str(&yaml).unwrap();
        let mut on = features.enabled();
        let mut names: Vec<&str> = REGISTRY.iter().map(|f| f.name()).collect();
        on.sort();
        names.sort();
        assert_eq!(on, names);
    }
}
