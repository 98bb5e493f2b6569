//! Compaction: the provisioned disk (an overlay chain or Packer's output) becomes one
//! standalone image in the dist format (`qemu-img convert`), compressed as the definition or
//! `--compression` asks and qemu-img can.

use super::error::BuildError;
use super::provision::Provisioned;
use crate::definition::{self, DiskFormat, Resolved};
use crate::progress::Progress;
use crate::qemu::{self, Compression};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionChoice {
    /// The definition's `disk.compression` (zstd by default; zlib where qemu-img lacks zstd).
    Auto,
    Zstd,
    Zlib,
    None,
}

/// The compacted artifact.
pub struct Compacted {
    pub path: PathBuf,
    /// Its file name in the version folder.
    pub file: String,
    pub format: DiskFormat,
    pub compression: Compression,
    pub size: u64,
    pub virtual_size: u64,
}

/// Converts `provisioned` into `dir/file`; the provisioned disk is removed unless it is a
/// cache entry.
pub fn compact(
    r: &Resolved,
    provisioned: &Provisioned,
    choice: CompressionChoice,
    dir: &Path,
    file: String,
    p: &mut Progress,
) -> Result<Compacted, BuildError> {
    let format = r.definition.disk.format;
    let wanted = match choice {
        CompressionChoice::Auto => match r.definition.disk.compression {
            definition::Compression::None => Compression::None,
            definition::Compression::Zlib => Compression::Zlib,
            definition::Compression::Zstd => Compression::Zstd,
        },
        CompressionChoice::None => Compression::None,
        CompressionChoice::Zlib => Compression::Zlib,
        CompressionChoice::Zstd => Compression::Zstd,
    };
    let compression = match (format, wanted) {
        (DiskFormat::Raw, _) => Compression::None,
        (_, Compression::Zstd) if !qemu::qemu_supports_zstd() => {
            p.line("qemu-img cannot write zstd-compressed qcow2 here: using zlib");
            Compression::Zlib
        }
        (_, c) => c,
    };
    let path = dir.join(&file);
    qemu::convert(&provisioned.disk, &path, format.as_str(), compression)?;
    if !provisioned.keep_disk {
        let _ = std::fs::remove_file(&provisioned.disk);
    }
    let info = qemu::img_info(&path)?;
    let size = std::fs::metadata(&path)
        .map_err(crate::IoError::at(&path))?
        .len();
    p.done(&format!(
        "{file}: {} MiB ({} MiB virtual, {})",
        size >> 20,
        info.virtual_size >> 20,
        compression_name(compression)
    ));
    Ok(Compacted {
        path,
        file,
        format,
        compression,
        size,
        virtual_size: info.virtual_size,
    })
}

pub fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Zlib => "zlib",
        Compression::Zstd => "zstd",
    }
}
