//! The image definition as written in images/NAME.yaml. Every field has a default so that a
//! file that only `extends` another and overrides a few keys parses on its own (and its
//! unknown keys and wrong types are reported with its own line numbers); what the resolved
//! definition must have is checked by `validate`.

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub use crate::features::{
    ComposeStack, Desktop, Docker, DockerSource, Drbd, Hardening, K3s, K3sRole, KollaHost, Nvidia,
    NvidiaSource, SharedMount, Zed,
};

/// A CPU architecture an image is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
    /// The name QEMU, Glance (`architecture`) and uname use.
    pub fn machine(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }
    /// The architecture of the machine imgbuild runs on.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(format!("unknown arch `{s}` (expected amd64 or arm64)")),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Definition {
    /// The name of another definition (file stem in the images dir) to inherit from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// A template only: listed and inherited from, never built.
    #[serde(rename = "abstract", skip_serializing_if = "std::ops::Not::not")]
    pub is_abstract: bool,
    pub description: String,
    pub os: Os,
    pub arch: Vec<Arch>,
    /// The base image per arch.
    pub base: BTreeMap<Arch, BaseSpec>,
    pub disk: Disk,
    pub build: Build,
    pub features: Features,
    pub packages: Vec<String>,
    pub apt: Apt,
    pub files: Vec<FileSpec>,
    pub scripts: Vec<Script>,
    pub users: Vec<User>,
    pub smoke: Smoke,
    pub publish: Publish,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Os {
    /// `ubuntu` or `debian`.
    pub distro: String,
    /// e.g. "24.04" or "12".
    pub version: String,
    /// e.g. "noble" or "bookworm".
    pub codename: String,
}

/// Where an arch's base image comes from: exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaseSpec {
    /// A published cloud image, downloaded and verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_image: Option<CloudImage>,
    /// A bootable image made from an apt mirror with mmdebstrap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
}

/// The checked form of [`BaseSpec`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Base<'a> {
    CloudImage(&'a CloudImage),
    Bootstrap(&'a Bootstrap),
}

impl BaseSpec {
    /// The one base given (validation makes sure there is exactly one).
    pub fn kind(&self) -> Option<Base<'_>> {
        match (&self.cloud_image, &self.bootstrap) {
            (Some(c), None) => Some(Base::CloudImage(c)),
            (None, Some(b)) => Some(Base::Bootstrap(b)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudImage {
    /// http(s):// or file:// URL.
    pub url: String,
    /// `sha256:HEX` or `sha512:HEX`.
    pub checksum: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bootstrap {
    pub suite: String,
    pub mirror: String,
    pub components: Vec<String>,
    pub packages: Vec<String>,
    /// The base disk's size in GiB (the build grows it to `disk.size`).
    pub size_gib: u32,
    /// Install the packages' Recommends too, as apt does in a cloud image (mmdebstrap does
    /// not by default).
    pub recommends: bool,
    /// Packages taken from another suite of the same mirror (`{trixie: [docker.io]}`), pinned
    /// so that nothing else comes from it, as the guest's apt preferences would take them.
    /// The extra suite and its pin are used while bootstrapping only: the base keeps neither
    /// (a layer that wants the suite configures it, as a feature does).
    pub from_suite: std::collections::BTreeMap<String, Vec<String>>,
}

impl Bootstrap {
    /// Whether the base is made with `package` (from the main suite or another).
    pub fn has_package(&self, package: &str) -> bool {
        self.packages.iter().any(|p| p == package)
            || self.from_suite.values().flatten().any(|p| p == package)
    }
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            suite: String::new(),
            mirror: "http://deb.debian.org/debian".into(),
            components: vec!["main".into()],
            packages: Vec::new(),
            size_gib: 3,
            recommends: false,
            from_suite: Default::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zlib,
    #[default]
    Zstd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Disk {
    /// Virtual size, e.g. "20G" (K, M, G, T suffixes, powers of 1024).
    pub size: String,
    pub format: DiskFormat,
    pub compression: Compression,
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            size: "10G".into(),
            format: DiskFormat::Qcow2,
            compression: Compression::Zstd,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

/// How a native build splits the features into cached layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layering {
    /// All features in one layer (one boot): the fastest full build.
    #[default]
    Grouped,
    /// A layer per feature, in the order the features are rendered: a change to one feature
    /// rebuilds it and those above, at the price of a boot per feature in a full build.
    PerFeature,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Build {
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// Minutes until provisioning is given up.
    pub timeout: u32,
    pub firmware: Firmware,
    /// `grouped` (default) or `per-feature`.
    pub layers: Layering,
    /// Layers that need no running system (files, users, apt work, steps that need no
    /// services) are applied without booting the image's init (true, the default); false
    /// boots every layer.
    pub boot_free: bool,
}

impl Default for Build {
    fn default() -> Self {
        Build {
            cpus: 2,
            memory: 2048,
            timeout: 60,
            firmware: Firmware::Bios,
            layers: Layering::Grouped,
            boot_free: true,
        }
    }
}

/// Optional building blocks. Each is off unless present; `true` turns one on with its
/// defaults, `false` or `null` turns an inherited one off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Features {
    #[serde(deserialize_with = "toggle", skip_serializing_if = "Option::is_none")]
    pub hardening: Option<Hardening>,
    #[serde(deserialize_with = "toggle", skip_serializing_if = "Option::is_none")]
    pub desktop: Option<Desktop>,
    #[serde(deserialize_with = "toggle", skip_serializing_if = "Option::is_none")]
    pub docker: Option<Docker>,
    #[serde(deserialize_with = "toggle", skip_serializing_if = "Option::is_none")]
    pub nvidia: Option<Nvidia>,
    #[serde(deserialize_with = "toggle", skip_serializing_if = "Option::is_none")]
    pub compose_stack: Option<ComposeStack>,
    #[serde(deserialize_with = "toggle", skip_serializing_if = "Option::is_none")]
    pub shared_mount: Option<SharedMount>,
    #[serde(deserialize_with = "toggle", skip_serializing_if = "Option::is_none")]
    pub k3s: Option<K3s>,
    #[serde(deserialize_with = "toggle", skip_serializing_if = "Option::is_none")]
    pub drbd: Option<Drbd>,
    #[serde(deserialize_with = "toggle", skip_serializing_if = "Option::is_none")]
    pub kolla_host: Option<KollaHost>,
}

impl Features {
    /// The names of the features that are on, in the order of the fields above (the keys of
    /// `features:`; crate::features::REGISTRY has the layer order).
    pub fn enabled(&self) -> Vec<&'static str> {
        let on = serde_json::to_value(self).expect("plain data");
        let on = on.as_object().expect("a map");
        on.keys()
            .filter_map(|k| {
                crate::features::REGISTRY
                    .iter()
                    .map(|f| f.name())
                    .find(|n| n == k)
            })
            .collect()
    }
}

/// Accepts `true`/`false`/`null` or a map for a feature.
fn toggle<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Default> serde::de::Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("true, false or a map of settings")
        }
        fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Self::Value, E> {
            Ok(b.then(T::default))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(m)).map(Some)
        }
    }
    d.deserialize_option(V(std::marker::PhantomData))
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Apt {
    /// Extra apt sources by name: a deb822 or one-line source and its signing key.
    pub sources: IndexMap<String, AptSource>,
    /// The signing keys of the repositories features add (`docker`, `nvidia-container-toolkit`,
    /// `mozilla`), embedded so that no build asks a keyserver; each is checked against its
    /// fingerprint when the definition is loaded, and the fingerprint against the one imgbuild
    /// pins for that repository.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub keys: IndexMap<String, AptKey>,
    /// An HTTP proxy for apt during the build only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AptSource {
    /// A one-line source (`deb [signed-by=$KEY_FILE] URL SUITE COMPONENTS`).
    pub source: String,
    /// The ASCII-armoured public key (public keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The primary fingerprint of `key`, checked when the definition is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Refused: builds never fetch keys from a keyserver (embed `key` and `fingerprint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    /// Refused with `keyid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyserver: Option<String>,
}

/// An embedded repository signing key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptKey {
    /// The primary key's fingerprint (spaces allowed).
    pub fingerprint: String,
    /// The ASCII-armoured public key block.
    pub key: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSpec {
    /// Absolute path in the image.
    pub path: String,
    /// Inline content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Or a file next to the definition (relative path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `user:group`, default root:root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Octal mode as a string, default "0644".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Script {
    pub name: String,
    /// A shell script run as root with `set -eu` at build time, in order.
    pub run: String,
    /// The script needs no running system (no services, no network): it may run in a
    /// boot-free layer. Default false: it runs in a full boot.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct User {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gecos: Option<String>,
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Passwordless sudo.
    pub sudo: bool,
    /// Public keys only; images carry no passwords.
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smoke {
    /// Minutes until a smoke boot is given up.
    pub timeout: u32,
    pub checks: Vec<Check>,
    /// Take a screenshot of the console (on by default for desktop images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<bool>,
    /// Sockets beyond those the features and the compose stack's `expose` declare that may
    /// listen on a non-loopback address at the smoke boot (the `exposure-allowlist` check).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<Listener>,
}

impl Default for Smoke {
    fn default() -> Self {
        Smoke {
            timeout: 15,
            checks: Vec::new(),
            screenshot: None,
            listen: Vec::new(),
        }
    }
}

/// A socket that may listen on a non-loopback address: port, protocol and, optionally, the
/// process (its `comm`, as `ps -o comm` shows it) that must own it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

impl Listener {
    pub fn tcp(port: u16) -> Listener {
        Listener {
            port,
            protocol: Protocol::Tcp,
            process: None,
        }
    }
    pub fn udp(port: u16) -> Listener {
        Listener {
            port,
            protocol: Protocol::Udp,
            process: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One smoke check: exactly one of `command`, `unit`, `port`, `file`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Check {
    pub name: String,
    /// A shell command run as root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Expected exit code of `command` (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_exit: Option<i32>,
    /// A regular expression (grep -E) that `command`'s output must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_output: Option<String>,
    /// A systemd unit that must be active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// A TCP port that must be listening.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// With `port`: the address it must listen on only (e.g. 127.0.0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A path that must exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// With `file`: its octal mode, e.g. "0600".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl Check {
    /// What the check is, or `None` unless exactly one of `command`, `unit`, `port`, `file`
    /// is given (validate reports that).
    pub fn kind(&self) -> Option<CheckKind> {
        let c = self.clone();
        let mut kinds = Vec::new();
        if let Some(command) = c.command {
            kinds.push(CheckKind::Command {
                command,
                expect_exit: c.expect_exit,
                expect_output: c.expect_output,
            });
        }
        if let Some(unit) = c.unit {
            kinds.push(CheckKind::Unit { unit });
        }
        if let Some(port) = c.port {
            kinds.push(CheckKind::Port {
                port,
                address: c.address,
            });
        }
        if let Some(file) = c.file {
            kinds.push(CheckKind::File { file, mode: c.mode });
        }
        (kinds.len() == 1).then(|| kinds.remove(0))
    }
}

/// What a smoke check checks, as the guest runner gets it: `{"kind": KIND, ...its fields}`.
/// The runner (cloud-init/guest/smoke.py) dispatches on `kind` from a table with the same
/// names ([`CheckKind::NAMES`]; tests/smoke_kinds.rs holds the two sides equal).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckKind {
    /// A shell command run as root, its exit code and output matched.
    Command {
        command: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        expect_exit: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expect_output: Option<String>,
    },
    /// A systemd unit that must be active.
    Unit { unit: String },
    /// A TCP port that must be listening (only on `address` if given).
    Port {
        port: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// A path that must exist (with `mode` if given).
    File {
        file: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
    },
    /// One of imgbuild's own checks (smoke::BUILTIN_CHECKS and what features bring), with
    /// its parameters.
    Builtin {
        builtin: String,
        #[serde(flatten)]
        params: serde_json::Map<String, serde_json::Value>,
    },
}

impl CheckKind {
    /// Every kind's name, as `kind` in the runner's checks.json.
    pub const NAMES: [&'static str; 5] = ["command", "unit", "port", "file", "builtin"];

    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Command { .. } => "command",
            CheckKind::Unit { .. } => "unit",
            CheckKind::Port { .. } => "port",
            CheckKind::File { .. } => "file",
            CheckKind::Builtin { .. } => "builtin",
        }
    }
}

/// A check as the guest runner gets it: its name and what it checks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SmokeCheck {
    pub name: String,
    #[serde(flatten)]
    pub kind: CheckKind,
}

impl SmokeCheck {
    /// A built-in check named after itself, with `params` for the runner.
    pub fn builtin(name: &str, params: serde_json::Value) -> SmokeCheck {
        SmokeCheck {
            name: name.into(),
            kind: CheckKind::Builtin {
                builtin: name.into(),
                params: match params {
                    serde_json::Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                },
            },
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    #[default]
    Private,
    Shared,
    Community,
    Public,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Publish {
    /// Glance image name; `{image}`, `{version}` and `{arch}` are replaced.
    pub name: String,
    pub visibility: Visibility,
    pub tags: Vec<String>,
    /// Glance properties (os_distro, hw_*, ...). Never secrets.
    pub properties: IndexMap<String, String>,
    /// GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_disk: Option<u32>,
    /// MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ram: Option<u32>,
    /// Keep this many newest versions visible; hide older ones (os_hidden).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// Delete versions beyond this many (when publish is run with --prune).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_beyond: Option<u32>,
}

impl Default for Publish {
    fn default() -> Self {
        Publish {
            name: "{image}-{version}".into(),
            visibility: Visibility::Private,
            tags: Vec::new(),
            properties: IndexMap::new(),
            min_disk: None,
            min_ram: None,
            keep: None,
            delete_beyond: None,
        }
    }
}

/// Parses "20G", "512M", "1T", "1048576" (bytes) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().filter(|n| *n > 0)?.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G"), Some(20 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0G"), None);
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("G"), None);
    }

    #[test]
    fn feature_toggles() {
        let f: Features = serde_norway::from_str(
            "docker: true\nnvidia: false\ndesktop: {rdp: false}\nk3s: null\n",
        )
        .unwrap();
        assert_eq!(f.docker, Some(Docker::default()));
        assert_eq!(f.nvidia, None);
        assert_eq!(f.k3s, None);
        assert!(!f.desktop.unwrap().rdp);
    }

    #[test]
    fn unknown_feature_setting_is_an_error_with_location() {
        let e = serde_norway::from_str::<Features>("docker:\n  sorce: distro\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `sorce`"), "{e}");
        assert_eq!(e.location().map(|l| l.line()), Some(2));
    }

    #[test]
    fn check_kinds_serialize_under_their_names() {
        let kinds = [
            CheckKind::Command {
                command: "true".into(),
                expect_exit: None,
                expect_output: None,
            },
            CheckKind::Unit { unit: "x".into() },
            CheckKind::Port {
                port: 1,
                address: None,
            },
            CheckKind::File {
                file: "/x".into(),
                mode: None,
            },
            CheckKind::Builtin {
                builtin: "x".into(),
                params: serde_json::Map::new(),
            },
        ];
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        assert_eq!(names, CheckKind::NAMES);
        for k in &kinds {
            assert_eq!(serde_json::to_value(k).unwrap()["kind"], k.name());
        }
    }
}
