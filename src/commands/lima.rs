//! `imgbuild lima`: a Lima instance file for a built artifact, or the instance files of a lab
//! (`--lab`: several nodes of one image with their networks, disks and SSH key).

use crate::definition::{Arch, Catalog};
use crate::error::{Error, Result};
use crate::pipeline::manifest::Manifest;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub struct Request {
    pub image: String,
    /// The built version (default: the newest).
    pub version: Option<String>,
    pub dist: PathBuf,
    /// Write here instead of returning the text only.
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    pub image: String,
    pub version: String,
    pub artifact: PathBuf,
    #[serde(skip)]
    pub text: String,
}

/// An artifact as its manifest describes it, checked unchanged; its absolute path.
fn checked_artifact(dir: &Path, m: &Manifest) -> Result<PathBuf> {
    let artifact = dir.join(&m.artifact.file);
    let len = std::fs::metadata(&artifact)
        .map_err(|e| Error::Usage(format!("{}: {e}", artifact.display())))?
        .len();
    if len != m.artifact.size {
        return Err(Error::Failed(format!(
            "{}: {len} bytes, but the manifest says {}: the artifact changed since it was built",
            artifact.display(),
            m.artifact.size
        )));
    }
    Ok(std::fs::canonicalize(&artifact)?)
}

pub fn lima(catalog: &Catalog, req: &Request) -> Result<Report> {
    let r = super::buildable(catalog, &req.image)?;
    let (dir, m) = super::find_build(&req.dist, &req.image, req.version.as_deref())?;
    let artifact = checked_artifact(&dir, &m)?;
    let text = crate::render::lima::render(&r, &m.built(), &artifact);
    if let Some(out) = &req.out {
        super::write_atomic(out, &text, None)?;
    }
    Ok(Report {
        file: req.out.clone(),
        image: m.image,
        version: m.version,
        artifact,
        text,
    })
}

pub struct LabRequest {
    pub lab: PathBuf,
    /// The built version (V, or V-ARCH of a multi-arch build; default: the newest per arch).
    pub version: Option<String>,
    pub dist: PathBuf,
    /// The folder the node files, networks.yaml and start.sh go to.
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct LabReport {
    pub image: String,
    pub vm_type: String,
    /// The builds the nodes boot, per arch.
    pub builds: Vec<LabBuild>,
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct LabBuild {
    pub arch: Arch,
    pub version: String,
    pub artifact: PathBuf,
}

/// The newest build of `image` per arch in `dist` (or those of `version`: V or V-ARCH).
fn builds_per_arch(
    dist: &Path,
    image: &str,
    version: Option<&str>,
) -> Result<Vec<(PathBuf, Manifest)>> {
    let mut out: Vec<(PathBuf, Manifest)> = Vec::new();
    let matching = super::builds(dist, image)
        .into_iter()
        .rev()
        .filter(|(_, m)| {
            m.image == image
                && version.is_none_or(|v| m.version == v || m.version == format!("{v}-{}", m.arch))
        });
    for b in matching {
        if !out.iter().any(|(_, m)| m.arch == b.1.arch) {
            out.push(b);
        }
    }
    out.sort_by_key(|(_, m)| m.arch);
    if out.is_empty() {
        return Err(Error::Usage(format!(
            "no build of {image}{} in {} (run: imgbuild build {image} --arch all)",
            version.map(|v| format!(" {v}")).unwrap_or_default(),
            dist.join(image).display()
        )));
    }
    Ok(out)
}

pub fn lab(catalog: &Catalog, req: &LabRequest) -> Result<LabReport> {
    let lab = crate::lab::load(&req.lab).map_err(|e| Error::Usage(e.to_string()))?;
    let r = super::buildable(catalog, &lab.image)?;
    let found = builds_per_arch(&req.dist, &lab.image, req.version.as_deref())?;
    let mut builds = Vec::new();
    for (dir, m) in &found {
        let artifact = checked_artifact(dir, m)?;
        if lab.vm_type == crate::lab::VmType::Vz && m.artifact.compression == "zstd" {
            // Lima converts a qcow2 to raw for vz with qemu-img if the Mac has it, else with
            // its own reader, which reads zlib clusters but not zstd ("unsupported compression
            // type": lima-vm/go-qcow2reader v0.7.1 image/qcow2, as Lima v2.2.0 uses it).
            return Err(Error::Usage(format!(
                "{}: {} has zstd-compressed clusters, which Lima's own converter for vz cannot read; rebuild it with `--compression zlib` (or use vm_type: qemu)",
                req.lab.display(),
                artifact.display()
            )));
        }
        builds.push((m.clone(), artifact));
    }
    if lab.vm_type == crate::lab::VmType::Vz && !found.iter().any(|(_, m)| m.arch == Arch::Arm64) {
        tracing::warn!(
            "vm_type vz runs only the host's arch: on Apple silicon it needs an arm64 build of {} (imgbuild build {} --arch arm64)",
            lab.image,
            lab.image
        );
    }
    let ssh_keys = match &lab.ssh_key {
        Some(p) => {
            let path = crate::lab::expand_home(p);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::Usage(format!(
                    "{}: ssh_key {}: {e}",
                    req.lab.display(),
                    path.display()
                ))
            })?;
            crate::render::userdata::parse_keys(&text).map_err(|e| {
                Error::Usage(format!(
                    "{}: ssh_key {}: {e}",
                    req.lab.display(),
                    path.display()
                ))
            })?
        }
        None => Vec::new(),
    };
    let kolla = r.definition.features.kolla_host.is_some();
    for (name, node) in &lab.nodes {
        if node.disks.iter().any(|d| d.cinder_volumes) && !kolla {
            return Err(Error::Usage(format!(
                "{}: nodes.{name}.disks: cinder_volumes needs a Kolla host image (features.kolla_host); {} is none",
                req.lab.display(),
                lab.image
            )));
        }
        let want = crate::lab::lima_size(&node.disk).unwrap_or(0);
        for (m, _) in &builds {
            if want < m.artifact.virtual_size {
                return Err(Error::Usage(format!(
                    "{}: nodes.{name}.disk: {} is smaller than the image ({} bytes); Lima cannot shrink a disk",
                    req.lab.display(),
                    node.disk,
                    m.artifact.virtual_size
                )));
            }
        }
    }
    std::fs::create_dir_all(&req.out)
        .map_err(|e| Error::Usage(format!("{}: {e}", req.out.display())))?;
    let mut files = Vec::new();
    let mut write = |name: String, text: String, mode: Option<u32>| -> Result<()> {
        let p = req.out.join(name);
        super::write_atomic(&p, &text, mode)?;
        files.push(p);
        Ok(())
    };
    for (name, node) in &lab.nodes {
        let text = crate::render::lima::render_lab_node(&crate::render::lima::LabNode {
            lab: &lab,
            name,
            node,
            builds: builds.iter().map(|(m, a)| (m.built(), a.clone())).collect(),
            ssh_keys: &ssh_keys,
        });
        write(format!("{name}.yaml"), text, None)?;
    }
    if !lab.networks.is_empty() {
        write(
            "networks.yaml".into(),
            crate::render::lima::render_lab_networks(&lab),
            None,
        )?;
    }
    write(
        "start.sh".into(),
        crate::render::lima::render_lab_start(&lab),
        Some(0o755),
    )?;
    Ok(LabReport {
        image: lab.image.clone(),
        vm_type: lab.vm_type.as_str().into(),
        builds: builds
            .iter()
            .map(|(m, a)| LabBuild {
                arch: m.arch,
                version: m.version.clone(),
                artifact: a.clone(),
            })
            .collect(),
        files,
    })
}
