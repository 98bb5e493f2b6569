//! Docker: the engine and compose from Docker's repository or the distribution's, and the docker group that launch-time users join.

use super::*;
use crate::definition::{Arch, Definition};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DockerSource {
    /// Docker CE and the compose plugin from Docker's apt repository.
    #[default]
    DockerCe,
    /// The distribution's docker.io and docker-compose packages.
    Distro,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Docker {
    pub source: DockerSource,
    /// Users added to the docker group (besides the launch-time user).
    pub users: Vec<String>,
}

pub(super) fn fragment(d: &Definition, dk: &Docker, arch: Arch) -> Fragment {
    let mut fr = Fragment::default();
    match dk.source {
        DockerSource::DockerCe => {
            fr.apt_sources.push((
                "docker.list".into(),
                keyed_source(
                    d,
                    format!(
                        "deb [arch={arch} signed-by=$KEY_FILE] https://download.docker.com/linux/{} {} stable",
                        d.os.distro, d.os.codename
                    ),
                    &DOCKER_KEY,
                ),
            ));
            fr.pkgs(&[
                "docker-ce",
                "docker-ce-cli",
                "containerd.io",
                "docker-buildx-plugin",
                "docker-compose-plugin",
            ]);
        }
        DockerSource::Distro => {
            if d.os.distro == "ubuntu" {
                fr.pkgs(&["docker.io", "docker-compose-v2"]);
            } else if d.os.codename == "bookworm" {
                // Bookworm's docker.io is 20.10 and it has only Compose v1. Trixie's docker.io
                // (26.1) with its split-out docker-cli, and its docker-compose (v2, the `docker
                // compose` plugin), are Go binaries that need libc6 >= 2.34 and nothing else
                // newer than bookworm (containerd, runc, tini, iptables come from bookworm).
                // Docker >= 23 is what Kolla-Ansible's docker role needs: its "Parse Docker
                // system info" task runs `docker system info -f json` (openstack/
                // ansible-collection-kolla roles/docker/tasks/config.yml, stable/2025.2).
                // Pinned so that nothing else comes from trixie.
                fr.apt_sources.push((
                    "debian-trixie-docker.list".into(),
                    json!({ "source": "deb http://deb.debian.org/debian trixie main" }),
                ));
                fr.files.push(WriteFile::new(
                    "/etc/apt/preferences.d/imgbuild-docker",
                    TRIXIE_DOCKER_PIN,
                    "0644",
                ));
                fr.pkgs(&["docker.io", "docker-cli", "docker-compose"]);
            } else {
                fr.pkgs(&["docker.io", "docker-compose"]);
            }
        }
    }
    let mut script = format!("{}\n", enable_units(&[SERVICE, "containerd.service"]));
    for u in &dk.users {
        script.push_str(&format!("usermod -aG docker {u}\n"));
    }
    // Launch-time users get the group through the default user's groups (see userdata).
    fr.offline_step("10-docker", script);
    fr
}

/// The apt preferences that take Docker's packages, and only them, from trixie on bookworm.
pub const TRIXIE_DOCKER_PIN: &str =
    "# imgbuild: only Docker (docker.io 26, docker-cli, Compose v2) comes from trixie.\n\
     Package: *\nPin: release n=trixie\nPin-Priority: 1\n\n\
     Package: docker.io docker-cli docker-compose\nPin: release n=trixie\nPin-Priority: 990\n";

/// The engine's unit: what a unit that runs containers requires.
pub const SERVICE: &str = "docker.service";
/// The compose command of every source (the plugin or trixie's v2 binary, both `docker compose`).
pub const COMPOSE: &str = "/usr/bin/docker compose";

/// The `docker` feature.
pub struct Feature;

impl super::Feature for Feature {
    fn name(&self) -> &'static str {
        "docker"
    }
    fn enabled(&self, d: &Definition) -> bool {
        d.features.docker.is_some()
    }
    fn repo_keys(&self, d: &Definition) -> Vec<&'static RepoKey> {
        match &d.features.docker {
            Some(dk) if dk.source == DockerSource::DockerCe => vec![&DOCKER_KEY],
            _ => Vec::new(),
        }
    }
    fn fragment(&self, d: &Definition, arch: Arch) -> Option<Fragment> {
        d.features.docker.as_ref().map(|s| fragment(d, s, arch))
    }
    fn launch_groups(&self) -> &'static [&'static str] {
        &["docker"]
    }
}
