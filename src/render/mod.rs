//! Pure rendering: a resolved definition in, files out. Nothing here runs a program; writing
//! to disk is `Rendered::write_to`, atomic per arch folder.

pub mod cloud_init;
pub mod compose;
pub mod features;
pub mod gitlab_ci;
pub mod lima;
pub mod offline;
pub mod packer;
pub mod userdata;

use crate::definition::{Arch, Diagnostic, Resolved};
use packer::PackerTarget;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("{path}: {message}")]
    Compose { path: PathBuf, message: String },
    #[error("{0}")]
    Definition(Diagnostic),
    #[error("{image} is not built for {arch} (arch lists {listed})")]
    ArchNotListed {
        image: String,
        arch: Arch,
        listed: String,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct RenderOptions {
    pub packer: PackerTarget,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            packer: PackerTarget::Legacy,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RenderedFile {
    /// Relative to the arch folder, with `/`.
    pub path: String,
    pub content: String,
}

/// Everything rendered for one image and arch.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub image: String,
    pub arch: Arch,
    pub packer: PackerTarget,
    pub files: Vec<RenderedFile>,
    pub compose: Option<compose::ComposeProject>,
    /// The layers of a native (layered) build, in build order.
    pub layers: Vec<RenderedLayer>,
    /// `seed/offline.sh`: the boot-free payload of a build without layers, if it can be one.
    pub flat_offline: Option<String>,
}

/// One layer of a native build: its name and where its documents are among `files`.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedLayer {
    pub name: &'static str,
    /// `seed/layers/NN-NAME/user-data`.
    pub user_data: String,
    /// `seed/layers/NN-NAME/offline.sh`: the boot-free payload, if the layer can be one.
    pub offline: Option<String>,
}

pub const USER_DATA: &str = "seed/user-data";
pub const META_DATA: &str = "seed/meta-data";
pub const NETWORK_CONFIG: &str = "seed/network-config";
/// The boot-free payload of a build without layers (native backend, `--no-cache`).
pub const FLAT_OFFLINE: &str = "seed/offline.sh";
pub const PACKER_DIR: &str = "packer";
/// `seed/layers/NN-NAME/user-data`: one user-data per build layer (native backend).
pub const LAYERS_DIR: &str = "seed/layers";

pub fn render(r: &Resolved, arch: Arch, opts: RenderOptions) -> Result<Rendered, RenderError> {
    let d = &r.definition;
    if !d.arch.contains(&arch) {
        return Err(RenderError::ArchNotListed {
            image: r.name.clone(),
            arch,
            listed: d
                .arch
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let frags = features::fragments(d, arch);
    let compose = compose::render(r)?;
    // What each layer brings, once: the flat user-data, the flat payload and the layers'
    // documents are all made from it.
    let parts = cloud_init::layer_parts(r, arch, &frags, compose.as_ref())?;
    let mut files = vec![
        RenderedFile {
            path: USER_DATA.into(),
            content: cloud_init::user_data(r, arch, &parts),
        },
        RenderedFile {
            path: META_DATA.into(),
            content: cloud_init::meta_data(r, arch),
        },
        RenderedFile {
            path: NETWORK_CONFIG.into(),
            content: cloud_init::network_config(),
        },
        RenderedFile {
            path: "packer/packer.pkr.hcl".into(),
            content: packer::packer_block(opts.packer),
        },
        RenderedFile {
            path: "packer/build.pkr.hcl".into(),
            content: packer::build_template(r, arch),
        },
        RenderedFile {
            path: "packer/variables.pkrvars.hcl".into(),
            content: packer::variables_file(&packer::default_variables(r, arch)),
        },
    ];
    let flat_offline = cloud_init::flat_offline(r, &parts).map(|content| {
        files.push(RenderedFile {
            path: FLAT_OFFLINE.into(),
            content,
        });
        FLAT_OFFLINE.to_string()
    });
    let mut layers = Vec::new();
    for (i, docs) in cloud_init::layer_user_data(r, arch, &parts)
        .into_iter()
        .enumerate()
    {
        let dir = format!("{LAYERS_DIR}/{:02}-{}", i + 1, docs.name);
        let user_data = format!("{dir}/user-data");
        files.push(RenderedFile {
            path: user_data.clone(),
            content: docs.user_data,
        });
        let offline = docs.offline.map(|content| {
            let path = format!("{dir}/offline.sh");
            files.push(RenderedFile {
                path: path.clone(),
                content,
            });
            path
        });
        layers.push(RenderedLayer {
            name: docs.name,
            user_data,
            offline,
        });
    }
    if let Some(c) = &compose {
        files.push(RenderedFile {
            path: format!("compose/{}/compose.yaml", c.name),
            content: c.compose_yaml.clone(),
        });
        files.push(RenderedFile {
            path: format!("compose/{}/settings.env", c.name),
            content: c.settings_env.clone(),
        });
        for (rel, content) in &c.support_files {
            files.push(RenderedFile {
                path: format!("compose/{}/{rel}", c.name),
                content: content.clone(),
            });
        }
    }
    Ok(Rendered {
        image: r.name.clone(),
        arch,
        packer: opts.packer,
        files,
        compose,
        layers,
        flat_offline,
    })
}

impl Rendered {
    pub fn get(&self, path: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.content.as_str())
    }

    /// sha256 over every file's path and content: changes whenever any rendered byte does.
    pub fn digest(&self) -> String {
        let mut files: Vec<&RenderedFile> = self.files.iter().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut h = Sha256::new();
        for f in files {
            h.update(f.path.as_bytes());
            h.update([0]);
            h.update((f.content.len() as u64).to_le_bytes());
            h.update(f.content.as_bytes());
        }
        hex(&h.finalize())
    }

    /// Writes the files into `dir` (the arch folder), replacing it as a whole: the new tree
    /// is written next to it and renamed into place, so a reader never sees a mix.
    pub fn write_to(&self, dir: &Path) -> Result<(), RenderError> {
        let io = crate::IoError::at;
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = tempfile::Builder::new()
            .prefix(".render-")
            .tempdir_in(parent)
            .map_err(io(parent))?;
        for f in &self.files {
            let p = tmp.path().join(&f.path);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(io(d))?;
            }
            std::fs::write(&p, &f.content).map_err(io(&p))?;
        }
        let index = serde_json::json!({
            "image": self.image,
            "arch": self.arch,
            "packer": self.packer,
            "digest": self.digest(),
            "files": self.files.iter().map(|f| serde_json::json!({
                "path": f.path,
                "sha256": hex(&Sha256::digest(f.content.as_bytes())),
            })).collect::<Vec<_>>(),
        });
        let ip = tmp.path().join("rendered.json");
        std::fs::write(
            &ip,
            serde_json::to_string_pretty(&index).expect("json") + "\n",
        )
        .map_err(io(&ip))?;
        let tmp = tmp.keep();
        let old = parent.join(format!(".render-old-{}", std::process::id()));
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(io(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        Ok(())
    }
}

pub use crate::hex;
