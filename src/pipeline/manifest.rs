//! manifest.json: what was built, from what, how, and with which digests. Publish, Lima and
//! CI pipelines read it; it holds no secret.

use crate::definition::Arch;
use crate::digest::Digests;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FILE: &str = "manifest.json";
pub const SUMS: &str = "SHA256SUMS";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub image: String,
    pub version: String,
    pub arch: Arch,
    pub description: String,
    /// `qemu` or `packer`.
    pub backend: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub base: BaseRef,
    /// sha256 of the resolved definition (JSON).
    pub definition_sha256: String,
    /// sha256 over the rendered files (see `imgbuild render`'s rendered.json).
    pub rendered_sha256: String,
    pub artifact: Artifact,
    pub digests: Digests,
    /// None with `--no-smoke`.
    pub smoke: Option<SmokeSummary>,
    pub build: BuildInfo,
    /// Container images baked into the image for an offline first start (pre-pulled or
    /// loaded from archives at build time), as Docker in the guest reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_images: Vec<ContainerImage>,
    /// The layers of a native build, bottom first: which were reused from the cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerRecord>,
    /// The bill of materials beside the artifact (package list and CycloneDX SBOM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bom: Option<super::bom::BomFiles>,
}

pub use super::provision::LayerRecord;

pub use crate::protocol::ContainerImage;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BaseRef {
    /// `cloud_image` or `bootstrap`.
    pub kind: String,
    pub source: String,
    pub sha256: String,
    /// Fetched from the remote cache by this build (instead of downloaded or bootstrapped).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
    /// Steps of the image's features that ran at the end of the bootstrap instead of in a
    /// layer (e.g. the Debian NVIDIA driver's: keep DKMS's module, purge DKMS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Artifact {
    /// File name inside the version folder.
    pub file: String,
    /// `qcow2` or `raw`.
    pub format: String,
    /// `zstd`, `zlib` or `none` (qcow2 cluster compression).
    pub compression: String,
    /// Bytes on disk.
    pub size: u64,
    /// Bytes the guest sees.
    pub virtual_size: u64,
}

pub use super::smoke::SmokeSummary;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BuildInfo {
    /// RFC 3339, UTC.
    pub started: String,
    pub duration_seconds: f64,
    pub tool: String,
    pub tool_version: String,
    /// The commit of the definitions' repository, if it is one.
    pub git_commit: Option<String>,
    pub git_dirty: bool,
    pub host: String,
}

impl Manifest {
    pub fn read(path: &Path) -> std::io::Result<Manifest> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    /// What a Lima file needs to know of this build.
    pub fn built(&self) -> crate::render::lima::Built<'_> {
        crate::render::lima::Built {
            image: &self.image,
            version: &self.version,
            arch: self.arch,
            sha256: &self.digests.sha256,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data") + "\n"
    }

    /// SHA256SUMS in `sha256sum -c` format.
    pub fn sums(&self) -> String {
        crate::digest::sum_line(&self.digests.sha256, &self.artifact.file)
    }
}

/// What the pipeline's stages produced, for [`assemble`].
pub struct Parts<'a> {
    pub resolved: &'a crate::definition::Resolved,
    pub version: &'a str,
    pub backend: &'a str,
    pub accel: crate::qemu::Accel,
    pub base: &'a crate::base::BaseImage,
    pub rendered: &'a crate::render::Rendered,
    pub artifact: &'a super::compact::Compacted,
    pub digests: Digests,
    pub smoke: Option<SmokeSummary>,
    pub bom: super::bom::BomFiles,
    pub provisioned: &'a super::provision::Provisioned,
    pub started: std::time::SystemTime,
    /// Seconds the build took so far.
    pub seconds: f64,
    /// The definition's git commit and whether its tree had changes.
    pub git: (Option<String>, bool),
}

/// The manifest of a finished build.
pub fn assemble(p: Parts) -> Manifest {
    use sha2::{Digest, Sha256};
    let r = p.resolved;
    let definition_json = serde_json::to_vec(&r.definition).expect("plain data");
    Manifest {
        image: r.name.clone(),
        version: p.version.to_string(),
        arch: p.rendered.arch,
        description: r.definition.description.clone(),
        backend: p.backend.into(),
        accel: p.accel.as_str().into(),
        base: BaseRef {
            kind: p.base.kind.into(),
            source: p.base.source.clone(),
            sha256: p.base.sha256.clone(),
            remote: p.base.remote,
            steps: p.base.steps.clone(),
        },
        definition_sha256: crate::hex(&Sha256::digest(&definition_json)),
        rendered_sha256: p.rendered.digest(),
        artifact: Artifact {
            file: p.artifact.file.clone(),
            format: p.artifact.format.as_str().into(),
            compression: super::compact::compression_name(p.artifact.compression).into(),
            size: p.artifact.size,
            virtual_size: p.artifact.virtual_size,
        },
        digests: p.digests,
        smoke: p.smoke,
        container_images: p.provisioned.container_images.clone(),
        layers: p.provisioned.layers.clone(),
        bom: Some(p.bom),
        build: BuildInfo {
            started: humantime::format_rfc3339_seconds(p.started).to_string(),
            duration_seconds: (p.seconds * 10.0).round() / 10.0,
            tool: "imgbuild".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: p.git.0,
            git_dirty: p.git.1,
            host: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        },
    }
}

/// Writes manifest.json and SHA256SUMS into the version folder being assembled.
pub fn write(m: &Manifest, dir: &Path) -> Result<(), super::error::BuildError> {
    let mp = dir.join(FILE);
    std::fs::write(&mp, m.to_json()).map_err(crate::IoError::at(&mp))?;
    let sp = dir.join(SUMS);
    std::fs::write(&sp, m.sums()).map_err(crate::IoError::at(&sp))?;
    Ok(())
}
