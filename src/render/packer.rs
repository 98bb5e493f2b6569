//! Packer HCL2 for the QEMU builder, built as an `hcl::Body` and formatted by hcl-rs (which
//! escapes `${` and `%{` in literal strings), never pasted together.
//!
//! The template boots the base image with the NoCloud `cidata` seed and no communicator:
//! cloud-init provisions, the guest runs imgbuild's hygiene at poweroff, and Packer waits for
//! the shutdown. The same seed drives the native QEMU backend, so both backends build the
//! same image. Packer 1.6 (Debian's) rejects `required_plugins`; current Packer needs it, so
//! the `packer {}` block lives in its own file `packer.pkr.hcl` whose content depends on the
//! target release.

use crate::definition::{Arch, Base, Resolved};
use hcl::expr::{Expression, TemplateExpr, Traversal, Variable};
use hcl::{Attribute, Block, Body};

/// Which Packer release the HCL is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackerTarget {
    /// Packer 1.6.x (Debian 12's 1.6.6): plugins are built in; no `required_plugins`.
    Legacy,
    /// Packer ≥ 1.7: the qemu plugin is declared in `required_plugins` (`packer init`).
    Modern,
}

impl PackerTarget {
    /// From `packer version` output such as "Packer v1.6.6".
    pub fn from_version(v: &str) -> PackerTarget {
        let v = v
            .trim()
            .trim_start_matches("Packer")
            .trim()
            .trim_start_matches('v');
        let mut parts = v
            .split(['.', ' ', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if major > 1 || (major == 1 && minor >= 7) {
            PackerTarget::Modern
        } else {
            PackerTarget::Legacy
        }
    }
}

/// The qemu plugin version current Packer is pinned to.
pub const QEMU_PLUGIN_VERSION: &str = ">= 1.1.0";

/// A literal HCL string: every character escaped by hand, since hcl-rs leaves an already
/// escaped-looking `$${` alone (and so loses a `$` of a literal `$${`).
fn s(v: impl Into<String>) -> Expression {
    let v: String = v.into();
    let mut out = String::with_capacity(v.len() + 8);
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    Expression::TemplateExpr(Box::new(TemplateExpr::QuotedString(out)))
}

fn var(name: &str) -> Expression {
    Expression::Traversal(Box::new(
        Traversal::builder(Variable::unchecked("var"))
            .attr(name)
            .build(),
    ))
}

fn template(t: &str) -> Expression {
    Expression::TemplateExpr(Box::new(TemplateExpr::QuotedString(t.into())))
}

fn variable(name: &str, description: &str, default: Option<Expression>) -> Block {
    typed_variable(name, "string", description, default)
}

fn typed_variable(name: &str, ty: &str, description: &str, default: Option<Expression>) -> Block {
    let mut b = Block::builder("variable")
        .add_label(name)
        .add_attribute(("type", Expression::Variable(Variable::unchecked(ty))))
        .add_attribute(("description", s(description)));
    if let Some(d) = default {
        b = b.add_attribute(("default", d));
    }
    b.build()
}

/// `packer.pkr.hcl`.
pub fn packer_block(target: PackerTarget) -> String {
    let mut b = Block::builder("packer");
    b = match target {
        PackerTarget::Legacy => b.add_attribute(("required_version", s(">= 1.6.6, < 1.7.0"))),
        PackerTarget::Modern => b
            .add_attribute(("required_version", s(">= 1.7.0")))
            .add_block(
                Block::builder("required_plugins")
                    .add_attribute(Attribute::new(
                        "qemu",
                        Expression::Object(
                            [
                                (
                                    hcl::ObjectKey::from("source"),
                                    s("github.com/hashicorp/qemu"),
                                ),
                                (hcl::ObjectKey::from("version"), s(QEMU_PLUGIN_VERSION)),
                            ]
                            .into_iter()
                            .collect(),
                        ),
                    ))
                    .build(),
            ),
    };
    header()
        + &hcl::format::to_string(&Body::builder().add_block(b.build()).build())
            .expect("hcl formats")
}

fn header() -> String {
    "# Rendered by imgbuild; edit the image definition instead.\n".to_string()
}

/// The seed files the template puts on the cidata CD, relative to the packer folder.
pub const SEED_FILES: [&str; 3] = ["user-data", "meta-data", "network-config"];

/// `build.pkr.hcl`.
pub fn build_template(r: &Resolved, arch: Arch) -> String {
    let d = &r.definition;
    let source_name = r.name.replace('-', "_");
    let uefi = crate::host::uefi(r, arch);

    let mut body = Body::builder()
        .add_block(variable(
            "base_image",
            "Path or URL of the base disk image.",
            None,
        ))
        .add_block(variable(
            "base_checksum",
            "`sha256:HEX` of the base image, or `none` for a base imgbuild verified itself.",
            Some(s("none")),
        ))
        .add_block(variable(
            "output_directory",
            "Where Packer writes the image.",
            Some(s("output")),
        ))
        .add_block(variable(
            "seed_dir",
            "The folder with user-data, meta-data, network-config.",
            Some(s("../seed")),
        ))
        .add_block(variable(
            "serial_log",
            "The guest's serial console log.",
            Some(s("serial.log")),
        ))
        .add_block(variable(
            "accelerator",
            "kvm or tcg (imgbuild probes which works).",
            Some(s("tcg")),
        ))
        .add_block(variable(
            "qemu_binary",
            "The QEMU system emulator.",
            Some(s(crate::host::qemu_binary(arch))),
        ))
        .add_block(typed_variable(
            "cpus",
            "number",
            "vCPUs of the build VM (imgbuild passes the definition's, capped at the host's cores).",
            Some(Expression::from(d.build.cpus as u64)),
        ))
        .add_block(variable(
            "image_description",
            "The image definition's description.",
            Some(s(d.description.clone())),
        ));
    if uefi {
        body = body.add_block(variable(
            "firmware",
            "UEFI firmware image for -bios.",
            Some(s(crate::host::uefi_bios_image(arch))),
        ));
    }

    let cd_files = Expression::Array(
        SEED_FILES
            .iter()
            .map(|f| template(&format!("${{var.seed_dir}}/{f}")))
            .collect(),
    );
    let mut qemuargs: Vec<Vec<Expression>> = vec![
        vec![s("-cpu"), s("max")],
        vec![s("-serial"), template("file:${var.serial_log}")],
        // No host port forwards at all: there is no communicator.
        vec![s("-netdev"), s("user,id=user.0")],
        vec![s("-device"), s("virtio-net-pci,netdev=user.0")],
    ];
    if uefi {
        qemuargs.push(vec![s("-bios"), var("firmware")]);
    }
    let qemuargs = Expression::Array(qemuargs.into_iter().map(Expression::Array).collect());

    let disk_size_mib = crate::definition::parse_size(&d.disk.size).unwrap_or(10 << 30) >> 20;
    let mut source = Block::builder("source")
        .add_label("qemu")
        .add_label(&source_name)
        .add_attribute(("qemu_binary", var("qemu_binary")))
        .add_attribute(("accelerator", var("accelerator")))
        .add_attribute((
            "machine_type",
            s(if arch == Arch::Arm64 { "virt" } else { "pc" }),
        ))
        .add_attribute(("disk_image", true))
        .add_attribute(("iso_url", var("base_image")))
        .add_attribute(("iso_checksum", var("base_checksum")))
        .add_attribute(("output_directory", var("output_directory")))
        .add_attribute(("vm_name", s(format!("{}-{arch}.qcow2", r.name))))
        .add_attribute(("format", s("qcow2")))
        .add_attribute(("disk_size", s(format!("{disk_size_mib}M"))))
        .add_attribute(("disk_interface", s("virtio")))
        .add_attribute(("disk_discard", s("unmap")))
        .add_attribute(("disk_detect_zeroes", s("unmap")))
        .add_attribute(("disk_compression", false))
        .add_attribute(("skip_compaction", true))
        .add_attribute(("use_backing_file", false))
        .add_attribute(("cpus", var("cpus")))
        .add_attribute(("memory", d.build.memory as u64))
        .add_attribute(("headless", true))
        .add_attribute(("cd_files", cd_files))
        .add_attribute(("cd_label", s("cidata")))
        .add_attribute(("communicator", s("none")))
        .add_attribute(("shutdown_timeout", s(format!("{}m", d.build.timeout))))
        .add_attribute(("qemuargs", qemuargs));
    if arch == Arch::Arm64 {
        source = source.add_attribute(("net_device", s("virtio-net-pci")));
    }
    let build = Block::builder("build")
        .add_attribute((
            "sources",
            Expression::Array(vec![s(format!("source.qemu.{source_name}"))]),
        ))
        .build();
    let body = body.add_block(source.build()).add_block(build).build();
    header() + &hcl::format::to_string(&body).expect("hcl formats")
}

/// `variables.pkrvars.hcl`: the values render knows. `build` writes its own with local paths.
pub fn variables_file(values: &[(&str, String)]) -> String {
    let mut b = Body::builder();
    for (k, v) in values {
        b = b.add_attribute((*k, s(v.clone())));
    }
    header() + &hcl::format::to_string(&b.build()).expect("hcl formats")
}

/// The render-time variables: the base image as the definition names it.
pub fn default_variables(r: &Resolved, arch: Arch) -> Vec<(&'static str, String)> {
    let (image, checksum) = match r.definition.base.get(&arch).and_then(|b| b.kind()) {
        Some(Base::CloudImage(c)) => (c.url.clone(), c.checksum.clone()),
        // A bootstrap base is made by `imgbuild build`, which passes its cached path.
        _ => ("../base/base.qcow2".to_string(), "none".to_string()),
    };
    vec![("base_image", image), ("base_checksum", checksum)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packer_versions() {
        assert_eq!(
            PackerTarget::from_version("Packer v1.6.6"),
            PackerTarget::Legacy
        );
        assert_eq!(
            PackerTarget::from_version("Packer v1.11.2"),
            PackerTarget::Modern
        );
        assert_eq!(PackerTarget::from_version("1.7.0"), PackerTarget::Modern);
        assert_eq!(
            PackerTarget::from_version("Packer v2.0.0"),
            PackerTarget::Modern
        );
    }

    #[test]
    fn legacy_has_no_required_plugins_modern_has() {
        assert!(!packer_block(PackerTarget::Legacy).contains("required_plugins"));
        let m = packer_block(PackerTarget::Modern);
        assert!(m.contains("required_plugins"), "{m}");
        let v: serde_json::Value = hcl::from_str(&m).unwrap();
        assert_eq!(
            v["packer"]["required_plugins"]["qemu"]["source"],
            "github.com/hashicorp/qemu"
        );
    }
}
