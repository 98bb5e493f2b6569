//! Provisioning: the stage that turns a base into a provisioned disk, behind one trait with
//! two implementations — [`Native`] (imgbuild drives QEMU, one boot per cached layer) and
//! [`Packer`] (`packer build` on the rendered HCL, one boot). Both read the guest's serial
//! console through `protocol` and end with the hygiene done and the VM powered off. Tests
//! drive the pipeline with a fake provisioner through the same trait.

pub mod layers;
pub mod native;
pub mod packer;

use super::error::BuildError;
use crate::base::BaseImage;
use crate::definition::{Arch, Resolved};
use crate::progress::Progress;
use crate::qemu::Accel;
use crate::render::packer::PackerTarget;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// imgbuild drives QEMU itself (no Packer needed).
    Qemu,
    /// `packer build` on the rendered HCL.
    Packer,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
            Backend::Packer => "packer",
        }
    }

    /// The provisioner that implements this backend.
    pub fn provisioner(self) -> &'static dyn Provisioner {
        match self {
            Backend::Qemu => &Native,
            Backend::Packer => &Packer,
        }
    }
}

/// What a provisioner gets.
pub struct ProvisionInput<'a> {
    pub resolved: &'a Resolved,
    pub arch: Arch,
    pub accel: Accel,
    pub base: &'a BaseImage,
    /// Rendered files written out (packer/, seed/).
    pub rendered_dir: &'a Path,
    pub work: &'a Path,
    /// logs/ inside the version folder being assembled.
    pub logs: &'a Path,
    pub cancel: &'a AtomicBool,
    /// The native backend's layers (see `layers::plan`).
    pub layers: &'a [layers::PlannedLayer],
    /// The cache root (layers, shared downloads).
    pub cache: &'a Path,
    pub no_cache: bool,
    /// The remote layer cache: layers are fetched from it before being built, and built
    /// ones uploaded to it (unless it is read-only).
    pub remote: Option<&'a crate::remote::Remote>,
}

/// What a provisioner hands back.
pub struct Provisioned {
    /// The provisioned disk (qcow2), hygiene done, not yet compacted.
    pub disk: PathBuf,
    /// The disk is a cache entry: compaction reads it and leaves it.
    pub keep_disk: bool,
    /// What the guest reported baking in (see `protocol`).
    pub container_images: Vec<crate::protocol::ContainerImage>,
    /// The installed packages as the top layer's boot listed them (sorted; empty when the
    /// guest did not report a whole list).
    pub packages: Vec<crate::protocol::Package>,
    /// The native backend's layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// The cache entries the disk is made of, held (so not pruned) until the build ends.
    pub leases: Vec<crate::cache::Held>,
}

/// One layer of a native build as the manifest records it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LayerRecord {
    pub name: String,
    /// The cache key (sha256 of the parent's key and what the layer renders from).
    pub key: String,
    /// Reused from the layer cache rather than built by this build.
    pub cached: bool,
    /// Seconds this build spent on the layer (0 when cached).
    pub seconds: f64,
    /// When reused: the image whose build made the layer (another image's, when they share
    /// it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_for: Option<String>,
    /// Applied without booting the image's init (a boot-free layer: render/offline.rs).
    #[serde(default)]
    pub boot_free: bool,
    /// Fetched from the remote cache (then also `cached`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
}

/// A way to provision an image.
pub trait Provisioner: Sync {
    /// The backend's name (`qemu`, `packer`) for output and the manifest.
    fn name(&self) -> &'static str;
    /// Which Packer release the rendered HCL targets (only the Packer backend runs it).
    fn packer_target(&self) -> Result<PackerTarget, BuildError> {
        Ok(PackerTarget::Legacy)
    }
    fn provision(
        &self,
        input: &ProvisionInput,
        p: &mut Progress,
    ) -> Result<Provisioned, BuildError>;
}

/// imgbuild drives QEMU itself: one boot per layer, layers cached (see `native`).
pub struct Native;

impl Provisioner for Native {
    fn name(&self) -> &'static str {
        Backend::Qemu.as_str()
    }
    fn provision(
        &self,
        input: &ProvisionInput,
        p: &mut Progress,
    ) -> Result<Provisioned, BuildError> {
        native::provision(input, p)
    }
}

/// `packer build` on the rendered HCL (see `packer`).
pub struct Packer;

impl Provisioner for Packer {
    fn name(&self) -> &'static str {
        Backend::Packer.as_str()
    }
    fn packer_target(&self) -> Result<PackerTarget, BuildError> {
        let v = crate::exec::Cmd::new("packer")
            .arg("version")
            .env("CHECKPOINT_DISABLE", "1")
            .read()?;
        Ok(PackerTarget::from_version(
            v.lines().next().unwrap_or_default(),
        ))
    }
    fn provision(
        &self,
        input: &ProvisionInput,
        p: &mut Progress,
    ) -> Result<Provisioned, BuildError> {
        packer::provision(input, p)
    }
}
