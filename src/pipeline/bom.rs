//! The bill of materials of a build, written beside the artifact: the package list in the
//! format of Ubuntu's cloud images (`IMAGE-VERSION-ARCH.manifest`: `name<TAB>version` per
//! line) and a CycloneDX 1.5 JSON SBOM (`IMAGE-VERSION-ARCH.cdx.json`: the image, its OS, the
//! kernel, every OS package with its purl, the container images baked in with their digests).
//! The packages come from the guest (the provision runner lists dpkg's installed packages on
//! the serial console; a cached layer keeps its list). [`diff`] compares two package lists.

use super::compact::Compacted;
use super::error::BuildError;
use crate::definition::Resolved;
use crate::digest::Digests;
use crate::protocol::{ContainerImage, Package};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// What manifest.json says of the bill of materials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BomFiles {
    /// The package list (`name<TAB>version`), next to the artifact.
    pub packages: String,
    /// The CycloneDX JSON SBOM, next to the artifact.
    pub cyclonedx: String,
    /// How many OS packages they list.
    pub package_count: usize,
}

/// The build's facts the SBOM describes.
pub struct Input<'a> {
    pub resolved: &'a Resolved,
    pub arch: crate::definition::Arch,
    pub version: &'a str,
    pub artifact: &'a Compacted,
    pub digests: &'a Digests,
    pub packages: &'a [Package],
    pub container_images: &'a [ContainerImage],
    pub timestamp: String,
}

/// Writes both files into `dir` (the version folder being assembled).
pub fn write(i: &Input, dir: &Path) -> Result<BomFiles, BuildError> {
    let stem = i
        .artifact
        .file
        .rsplit_once('.')
        .map(|(s, _)| s.to_string())
        .unwrap_or_else(|| i.artifact.file.clone());
    let packages = format!("{stem}.manifest");
    let cyclonedx = format!("{stem}.cdx.json");
    let p = dir.join(&packages);
    std::fs::write(&p, package_list(i.packages)).map_err(crate::IoError::at(&p))?;
    let c = dir.join(&cyclonedx);
    let doc = serde_json::to_string_pretty(&cyclonedx_doc(i)).expect("plain data") + "\n";
    std::fs::write(&c, doc).map_err(crate::IoError::at(&c))?;
    Ok(BomFiles {
        packages,
        cyclonedx,
        package_count: i.packages.len(),
    })
}

/// `name<TAB>version` per line, sorted by name, as Ubuntu's cloud image manifests.
pub fn package_list(packages: &[Package]) -> String {
    let mut v: Vec<&Package> = packages.iter().collect();
    v.sort();
    v.iter()
        .map(|p| format!("{}\t{}\n", p.name, p.version))
        .collect()
}

/// Reads a package list written by [`package_list`] (or Ubuntu's): name → version.
pub fn read_package_list(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((f.next()?.trim().to_string(), f.next()?.trim().to_string()))
        })
        .filter(|(n, _)| !n.is_empty())
        .collect()
}

/// Packages added, removed and changed from `old` to `new`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Diff {
    /// (name, version)
    pub added: Vec<(String, String)>,
    pub removed: Vec<(String, String)>,
    /// (name, old version, new version)
    pub changed: Vec<(String, String, String)>,
}

pub fn diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Diff {
    let mut d = Diff::default();
    for (n, v) in new {
        match old.get(n) {
            None => d.added.push((n.clone(), v.clone())),
            Some(o) if o != v => d.changed.push((n.clone(), o.clone(), v.clone())),
            _ => {}
        }
    }
    for (n, v) in old {
        if !new.contains_key(n) {
            d.removed.push((n.clone(), v.clone()));
        }
    }
    d
}

impl Diff {
    /// Release-note lines: `+ name version`, `- name version`, `~ name old -> new`.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (n, v) in &self.added {
            s.push_str(&format!("+ {n} {v}\n"));
        }
        for (n, v) in &self.removed {
            s.push_str(&format!("- {n} {v}\n"));
        }
        for (n, o, v) in &self.changed {
            s.push_str(&format!("~ {n} {o} -> {v}\n"));
        }
        s
    }
}

/// Why two builds could not be compared: a version or its package list is missing (bad
/// input, exit 2) or unreadable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DiffError(pub String);

/// The package list of the build `dist/IMAGE/VERSION` (its manifest names the file).
pub fn build_packages(
    dist: &Path,
    image: &str,
    version: &str,
) -> Result<BTreeMap<String, String>, DiffError> {
    let dir = dist.join(image).join(version);
    let mp = dir.join(super::manifest::FILE);
    let m = super::manifest::Manifest::read(&mp).map_err(|e| {
        DiffError(format!(
            "{}: {e} (no build {image} {version} in {})",
            mp.display(),
            dist.display()
        ))
    })?;
    let bom = m.bom.ok_or_else(|| {
        DiffError(format!(
            "{}: this build has no bill of materials (built before imgbuild wrote one)",
            mp.display()
        ))
    })?;
    let p = dir.join(&bom.packages);
    let text =
        std::fs::read_to_string(&p).map_err(|e| DiffError(format!("{}: {e}", p.display())))?;
    Ok(read_package_list(&text))
}

/// Packages added, removed and changed from build `old` to build `new` of `image`.
pub fn diff_builds(dist: &Path, image: &str, old: &str, new: &str) -> Result<Diff, DiffError> {
    Ok(diff(
        &build_packages(dist, image, old)?,
        &build_packages(dist, image, new)?,
    ))
}

/// The purl of a Debian or Ubuntu package (purl-spec's `deb` type).
pub fn deb_purl(distro: &str, release: &str, p: &Package) -> String {
    format!(
        "pkg:deb/{}/{}@{}?arch={}&distro={}",
        crate::percent_encode(distro),
        crate::percent_encode(&p.name),
        crate::percent_encode(&p.version),
        crate::percent_encode(&p.arch),
        crate::percent_encode(&format!("{distro}-{release}"))
    )
}

/// The running kernel's package among `packages` (`linux-image-RELEASE`, not a metapackage).
fn kernel(packages: &[Package]) -> Option<(&Package, &str)> {
    packages.iter().find_map(|p| {
        let release = p.name.strip_prefix("linux-image-")?;
        // Metapackages (linux-image-amd64, linux-image-generic) have no version in their name.
        release
            .starts_with(|c: char| c.is_ascii_digit())
            .then_some((p, release))
    })
}

fn cyclonedx_doc(i: &Input) -> Value {
    let d = &i.resolved.definition;
    let os = &d.os;
    let mut components = vec![json!({
        "type": "operating-system",
        "bom-ref": "os",
        "name": os.distro,
        "version": os.version,
        "properties": [{"name": "imgbuild:codename", "value": os.codename}],
    })];
    if let Some((p, release)) = kernel(i.packages) {
        components.push(json!({
            "type": "operating-system",
            "bom-ref": "kernel",
            "name": "linux",
            "version": release,
            "purl": deb_purl(&os.distro, &os.version, p),
            "properties": [{"name": "imgbuild:package", "value": p.name}],
        }));
    }
    let mut packages: Vec<&Package> = i.packages.iter().collect();
    packages.sort();
    for p in packages {
        let purl = deb_purl(&os.distro, &os.version, p);
        components.push(json!({
            "type": "library",
            "bom-ref": purl,
            "name": p.name,
            "version": p.version,
            "purl": purl,
        }));
    }
    for c in i.container_images {
        let mut comp = json!({
            "type": "container",
            "bom-ref": format!("container:{}", c.image),
            "name": c.image,
            "properties": [{"name": "imgbuild:source", "value": c.source}],
        });
        if let Some(id) = c.id.strip_prefix("sha256:") {
            comp["hashes"] = json!([{"alg": "SHA-256", "content": id}]);
        }
        if let Some((repo, digest)) = c.repo_digests.first().and_then(|r| r.split_once('@')) {
            comp["purl"] = json!(format!(
                "pkg:docker/{}@{}",
                repo,
                crate::percent_encode(digest)
            ));
        }
        components.push(comp);
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", crate::uuid_v4()),
        "version": 1,
        "metadata": {
            "timestamp": i.timestamp,
            "tools": {"components": [{
                "type": "application",
                "name": "imgbuild",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": "operating-system",
                "bom-ref": "image",
                "name": i.resolved.name,
                "version": i.version,
                "description": d.description,
                "hashes": [
                    {"alg": "SHA-256", "content": i.digests.sha256},
                    {"alg": "SHA-512", "content": i.digests.sha512},
                ],
                "properties": [
                    {"name": "imgbuild:artifact", "value": i.artifact.file},
                    {"name": "imgbuild:arch", "value": i.arch.as_str()},
                ],
            },
        },
        "components": components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(n: &str, v: &str) -> Package {
        Package {
            name: n.into(),
            version: v.into(),
            arch: "amd64".into(),
        }
    }

    #[test]
    fn purls_encode_epochs_and_pluses() {
        assert_eq!(
            deb_purl("debian", "12", &pkg("zlib1g", "1:1.2.13.dfsg-1+b1")),
            "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1%2Bb1?arch=amd64&distro=debian-12"
        );
    }

    #[test]
    fn a_diff_names_added_removed_and_changed_packages() {
        let old = read_package_list(&package_list(&[
            pkg("a", "1"),
            pkg("b", "1"),
            pkg("c", "1"),
        ]));
        let new = read_package_list("a\t1\nb\t2\nd\t1\n");
        let d = diff(&old, &new);
        assert_eq!(d.added, vec![("d".into(), "1".into())]);
        assert_eq!(d.removed, vec![("c".into(), "1".into())]);
        assert_eq!(d.changed, vec![("b".into(), "1".into(), "2".into())]);
        assert_eq!(d.text(), "+ d 1\n- c 1\n~ b 1 -> 2\n");
    }

    #[test]
    fn the_kernel_is_the_versioned_image_package() {
        let p = [
            pkg("linux-image-cloud-amd64", "6.1.129-1"),
            pkg("linux-image-6.1.0-32-cloud-amd64", "6.1.129-1"),
        ];
        assert_eq!(kernel(&p).unwrap().1, "6.1.0-32-cloud-amd64");
    }
}
