//! Build-time cloud-init: user-data, meta-data and network-config for the NoCloud seed,
//! built as data and serialized (serde_norway quotes every string a YAML 1.1 reader such as
//! cloud-init's PyYAML could misread: `yes`, `0o17`, `*x`, `#x`, ...).

use super::compose::ComposeProject;
use super::features::{Fragment, Step, WriteFile};
use super::RenderError;
use crate::definition::{Arch, Layering, Resolved};
use crate::features::docker;
use base64::Engine;
use serde_json::{json, Map, Value};

/// Where the guest-side machinery lives in the image.
pub const LIB: &str = "/usr/local/lib/imgbuild";
pub const PROVISION: &str = include_str!("../../cloud-init/guest/provision");
pub const HYGIENE: &str = include_str!("../../cloud-init/guest/hygiene");
pub const PREPULL: &str = include_str!("../../cloud-init/guest/prepull");
pub const FIRSTBOOT_SECRETS: &str = include_str!("../../cloud-init/guest/firstboot-secrets");
pub const START_PAGE: &str = include_str!("../../cloud-init/guest/start-page");
pub const HYGIENE_UNIT: &str = include_str!("../../cloud-init/guest/imgbuild-hygiene.service");

use crate::protocol::marker;

/// Serializes a cloud-config document with its mandatory first line.
pub fn to_cloud_config(doc: &Value, comment: &str) -> String {
    let body = crate::yaml::to_string(doc);
    let mut out = String::from("#cloud-config\n");
    for line in comment.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&body);
    out
}

fn write_file(f: &WriteFile) -> Value {
    let mut m = Map::new();
    m.insert("path".into(), json!(f.path));
    if std::str::from_utf8(f.content.as_bytes()).is_ok() {
        m.insert("content".into(), json!(f.content));
    }
    m.insert("permissions".into(), json!(f.permissions));
    m.insert("owner".into(), json!(f.owner));
    if f.owner != "root:root" && f.owner != "root" {
        // Users are created after write_files' normal stage.
        m.insert("defer".into(), json!(true));
    }
    Value::Object(m)
}

fn push_unique(v: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !v.contains(&i) {
            v.push(i);
        }
    }
}

/// One build layer's share of the build-time user-data: what cloud-init sets up and the
/// provisioning steps that run in that layer's boot.
#[derive(Clone, Debug, Default)]
pub struct LayerPart {
    pub name: &'static str,
    /// The first layer upgrades the base's packages.
    pub(super) upgrade: bool,
    pub(super) apt_sources: Map<String, Value>,
    pub(super) apt_proxy: Option<String>,
    pub(super) packages: Vec<String>,
    pub(super) users: Vec<Value>,
    /// `write_files` entries, already as cloud-config values.
    pub(super) files: Vec<Value>,
    pub(super) steps: Vec<Step>,
}

impl LayerPart {
    fn new(name: &'static str) -> LayerPart {
        LayerPart {
            name,
            ..LayerPart::default()
        }
    }
    fn is_empty(&self) -> bool {
        !self.upgrade
            && self.apt_sources.is_empty()
            && self.apt_proxy.is_none()
            && self.packages.is_empty()
            && self.users.is_empty()
            && self.files.is_empty()
            && self.steps.is_empty()
    }
    /// Does the layer run `apt-get update` (cloud-init's `package_update`): an upgrade, a
    /// package or a source. One rule for the full boot's user-data and the boot-free payload.
    pub(super) fn apt_update(&self) -> bool {
        self.upgrade || !self.packages.is_empty() || !self.apt_sources.is_empty()
    }
    /// `parts` as one layer named `name`, in their order: what a single boot of all of them
    /// does (cloud-init runs every module once over the merged document).
    fn merged(name: &'static str, parts: &[&LayerPart]) -> LayerPart {
        let mut m = LayerPart::new(name);
        for p in parts {
            m.upgrade |= p.upgrade;
            for (k, v) in &p.apt_sources {
                m.apt_sources.insert(k.clone(), v.clone());
            }
            if p.apt_proxy.is_some() {
                m.apt_proxy = p.apt_proxy.clone();
            }
            push_unique(&mut m.packages, p.packages.iter().cloned());
            m.users.extend(p.users.iter().cloned());
            m.files.extend(p.files.iter().cloned());
            m.steps.extend(p.steps.iter().cloned());
        }
        m
    }
    fn add_fragment(&mut self, fr: &Fragment) {
        for (name, src) in &fr.apt_sources {
            self.apt_sources.insert(name.clone(), src.clone());
        }
        push_unique(&mut self.packages, fr.packages.iter().cloned());
        self.files.extend(fr.files.iter().map(write_file));
        self.steps.extend(fr.steps.iter().cloned());
    }
}

/// The fixed layers, in build order. Layers build in this order, each a qcow2 overlay on the
/// one before (see build::layers): what changes least goes lowest. Every layer costs a boot
/// of its own (40–90 s under TCG before any work), so by default (`build.layers: grouped`)
/// the features share one: the base's upgrade, apt sources, hardening, docker, nvidia,
/// desktop, cluster roles. `per-feature` puts each feature in a layer of its own, named after
/// it, in place of `features`.
pub const LAYER_ORDER: [&str; 3] = ["features", "image", "stack"];

/// What a build-time document is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything in one boot (the Packer backend, `imgbuild render`).
    Flat,
    /// A lower layer of a layered build: no hygiene, the runner clears its steps.
    Layer,
    /// The top layer of a layered build: hygiene at poweroff.
    Top,
}

/// The build-time user-data split into layers (empty layers left out), in build order.
pub fn layer_parts(
    r: &Resolved,
    arch: Arch,
    fragments: &[(&'static str, Fragment)],
    compose: Option<&ComposeProject>,
) -> Result<Vec<LayerPart>, RenderError> {
    let d = &r.definition;
    // The feature layers: one `features` layer, or one per feature (`features` first, empty
    // unless no feature is on, so the upgrade below has a layer).
    let mut parts: Vec<LayerPart> = vec![LayerPart::new("features")];
    if d.build.layers == Layering::PerFeature {
        parts.extend(fragments.iter().map(|(f, _)| LayerPart::new(f)));
    }
    parts.extend(LAYER_ORDER[1..].iter().map(|n| LayerPart::new(n)));
    let part = |parts: &mut Vec<LayerPart>, name: &str| -> usize {
        parts
            .iter()
            .position(|p| p.name == name)
            .expect("a known layer")
    };

    for (feature, fr) in fragments {
        let i = match d.build.layers {
            Layering::Grouped => part(&mut parts, "features"),
            Layering::PerFeature => part(&mut parts, feature),
        };
        parts[i].add_fragment(fr);
    }
    // The lowest layer: the base's upgrade and the definition's apt configuration (for every
    // later layer).
    if d.build.layers == Layering::PerFeature && !fragments.is_empty() {
        parts.remove(0);
    }
    let sys = 0;
    parts[sys].upgrade = true;
    // systemd-resolved answers LLMNR on 5355 (TCP and UDP) on every address by default
    // (resolved.conf(5): LLMNR= "Defaults to yes"), and mDNS where enabled: names served to
    // anyone on the network, which no image here wants (the smoke's exposure-allowlist fails
    // on them). DNS is what the VMs resolve with.
    parts[sys].files.push(write_file(&WriteFile::new(
        "/etc/systemd/resolved.conf.d/60-imgbuild.conf",
        "# imgbuild: no name service for the network\n[Resolve]\nLLMNR=no\nMulticastDNS=no\n",
        "0644",
    )));
    for (name, s) in &d.apt.sources {
        // cloud-init's own fields only: the source and its embedded key (the fingerprint was
        // checked when the definition was loaded; keyservers are refused there).
        let mut v = json!({ "source": s.source });
        if let Some(k) = &s.key {
            v["key"] = json!(k);
        }
        parts[sys].apt_sources.insert(name.clone(), v);
    }
    parts[sys].apt_proxy = d.apt.proxy.clone();

    // image: the definition's own packages, users, files and scripts.
    let img = part(&mut parts, "image");
    push_unique(&mut parts[img].packages, d.packages.iter().cloned());
    for u in &d.users {
        let mut m = Map::new();
        m.insert("name".into(), json!(u.name));
        if let Some(g) = &u.gecos {
            m.insert("gecos".into(), json!(g));
        }
        if !u.groups.is_empty() {
            m.insert("groups".into(), json!(u.groups.join(",")));
        }
        m.insert(
            "shell".into(),
            json!(u.shell.clone().unwrap_or_else(|| "/bin/bash".into())),
        );
        if u.sudo {
            m.insert("sudo".into(), json!("ALL=(ALL) NOPASSWD:ALL"));
        }
        m.insert("lock_passwd".into(), json!(true));
        if !u.ssh_authorized_keys.is_empty() {
            m.insert("ssh_authorized_keys".into(), json!(u.ssh_authorized_keys));
        }
        parts[img].users.push(Value::Object(m));
    }
    for (i, f) in d.files.iter().enumerate() {
        let content = match (&f.content, &f.source) {
            (Some(c), _) => c.clone().into_bytes(),
            (None, Some(src)) => {
                let path = r.relative_path(&format!("files[{i}].source"), src);
                std::fs::read(&path).map_err(crate::IoError::at(&path))?
            }
            (None, None) => Vec::new(),
        };
        let owner = f.owner.clone().unwrap_or_else(|| "root:root".into());
        let perms = f.permissions.clone().unwrap_or_else(|| "0644".into());
        let v = match String::from_utf8(content) {
            Ok(text) => write_file(&WriteFile {
                path: f.path.clone(),
                content: text,
                permissions: perms,
                owner,
            }),
            Err(bin) => {
                let mut m = Map::new();
                m.insert("path".into(), json!(f.path));
                m.insert("encoding".into(), json!("b64"));
                m.insert(
                    "content".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(bin.into_bytes())),
                );
                m.insert("permissions".into(), json!(perms));
                m.insert("owner".into(), json!(owner.clone()));
                if owner != "root:root" && owner != "root" {
                    m.insert("defer".into(), json!(true));
                }
                Value::Object(m)
            }
        };
        parts[img].files.push(v);
    }
    for (i, s) in d.scripts.iter().enumerate() {
        parts[img].steps.push(Step {
            name: format!("50-{:02}-{}", i + 1, s.name),
            script: s.run.clone(),
            offline: s.offline,
            network: false,
        });
    }
    // stack: the compose project, its first-boot secrets and unit, its baked-in images. On
    // top, so that a change to the stack rebuilds only this layer.
    if let Some(c) = compose {
        let st = part(&mut parts, "stack");
        let mut files: Vec<WriteFile> = Vec::new();
        let mut steps: Vec<Step> = Vec::new();
        let dir = format!("/opt/imgbuild/{}", c.name);
        files.push(WriteFile::new(
            format!("{dir}/compose.yaml"),
            c.compose_yaml.clone(),
            "0644",
        ));
        files.push(WriteFile::new(
            format!("{dir}/settings.env"),
            c.settings_env.clone(),
            "0644",
        ));
        // What the services mount from the project folder (`./NAME/...`).
        for (rel, content) in &c.support_files {
            files.push(WriteFile::new(
                format!("{dir}/{rel}"),
                content.clone(),
                "0644",
            ));
        }
        if let Some(spec) = &c.secrets_spec {
            // Names and sizes only; the values are made per instance at first boot.
            let spec_path = format!("/usr/local/share/imgbuild/{}/secrets.json", c.name);
            files.push(WriteFile::new(spec_path.clone(), spec.clone(), "0644"));
            files.push(WriteFile::new(
                format!("{LIB}/firstboot-secrets"),
                FIRSTBOOT_SECRETS,
                "0755",
            ));
            let unit = secrets_unit(&c.name);
            files.push(WriteFile::new(
                format!("/etc/systemd/system/{unit}"),
                format!(
                    "# Makes this instance's secrets for the {name} stack at first boot (never baked\n\
                     # into the image); keeps existing ones. Before Docker, so the stack never starts\n\
                     # without them.\n\
                     [Unit]\n\
                     Description=imgbuild: per-instance secrets of the {name} compose stack\n\
                     After=local-fs.target\n\
                     Before=docker.service multi-user.target\n\n\
                     [Service]\n\
                     Type=oneshot\n\
                     RemainAfterExit=yes\n\
                     UMask=0077\n\
                     ExecStart={LIB}/firstboot-secrets {spec_path} {env}\n\n\
                     [Install]\n\
                     WantedBy=multi-user.target\n",
                    name = c.name,
                    env = secrets_env_path(&c.name),
                ),
                "0644",
            ));
            steps.push(Step {
                name: "60-stack-secrets".into(),
                script: format!(
                    "# Enabled, not started: the values are made at the first boot of an instance.\n\
                     {enable}\nrm -f {env}\n",
                    enable = super::features::enable_units(&[&unit]),
                    env = secrets_env_path(&c.name)
                ),
                offline: true,
                network: false,
            });
        }
        if !c.start.is_empty() {
            files.push(WriteFile::new(
                start_services_path(&c.name),
                start_services_json(c),
                "0644",
            ));
            files.push(WriteFile::new(
                format!("{LIB}/start-page"),
                START_PAGE,
                "0755",
            ));
            if d.features.desktop.is_some() {
                // The desktop browser's home page (Firefox enterprise policies: /etc/firefox/
                // policies/policies.json on Linux, mozilla/policy-templates README; Debian's
                // firefox-esr reads its own app name's folder).
                let policy = serde_json::to_string_pretty(&json!({"policies": {"Homepage": {
                    "URL": format!("file://{}", start_page_path(&c.name)),
                    "StartPage": "homepage",
                }}}))
                .expect("json");
                for app in ["firefox", "firefox-esr"] {
                    files.push(WriteFile::new(
                        format!("/etc/{app}/policies/policies.json"),
                        format!("{policy}\n"),
                        "0644",
                    ));
                }
            }
        }
        if let Some(cs) = &d.features.compose_stack {
            stack_unit_and_prepull(c, cs, &mut files, &mut steps);
        }
        parts[st].files.extend(files.iter().map(write_file));
        parts[st].steps.extend(steps);
    }
    // A bootstrap base already has the packages it was made with (mmdebstrap installed them;
    // the first layer's upgrade keeps them current): installing them again in a layer is an
    // apt no-op that still costs that layer a full boot.
    if let Some(b) = d.base.get(&arch).and_then(|b| b.bootstrap.as_ref()) {
        for p in &mut parts {
            p.packages.retain(|x| !b.has_package(x));
        }
    }
    parts.retain(|p| !p.is_empty());
    // The image's identity goes to the top layer only, so that lower layers are the same for
    // every image whose content they share (their keys and disks name no image).
    let top = parts.len() - 1;
    parts[top].files.push(write_file(&WriteFile::new(
        "/etc/imgbuild/image.json",
        serde_json::to_string_pretty(&json!({
            "image": r.name,
            "arch": arch.as_str(),
            "os": d.os,
            "features": d.features.enabled(),
            "imgbuild": env!("CARGO_PKG_VERSION"),
        }))
        .expect("json")
            + "\n",
        "0644",
    )));

    Ok(parts)
}

/// The shell run by `bootcmd` at build time: a disk the host attaches to native builds with
/// serial `imgbuild-apt-cache` (protocol::APT_CACHE_SERIAL) becomes /var/cache/apt/archives, so packages downloaded by one
/// build are there for the next. Formatted on first use; the runner unmounts it before the
/// layer is finished, so nothing of it stays in the image. No such disk: nothing happens.
pub const APT_CACHE_BOOTCMD: &str = concat!(
    "d=/dev/disk/by-id/virtio-",
    crate::protocol::apt_cache_serial!(),
    "; \
[ -e \"$d\" ] || exit 0; \
blkid \"$d\" >/dev/null 2>&1 || mkfs.ext4 -q -L imgbuild-apt \"$d\"; \
mountpoint -q /var/cache/apt/archives || mount \"$d\" /var/cache/apt/archives; \
mkdir -p /var/cache/apt/archives/partial; \
chown _apt:root /var/cache/apt/archives/partial 2>/dev/null || true; \
printf 'APT::Keep-Downloaded-Packages \"true\";\\nBinary::apt::APT::Keep-Downloaded-Packages \"true\";\\n' > /etc/apt/apt.conf.d/00imgbuild-keep-debs; \
echo \"IMGBUILD-APT-CACHE $(ls /var/cache/apt/archives | grep -c '\\.deb$') packages\" > /dev/console"
);

/// The state of the package lists (name, size, mtime of each), as the bootcmd notes it before
/// the update and the runner (`save_lists`) compares it after: both must say it the same way,
/// which a test checks.
macro_rules! apt_lists_state {
    () => {
        "find /var/lib/apt/lists -maxdepth 1 -type f ! -name lock -printf '%f %s %T@\\n' | sort"
    };
}

/// Added to `APT_CACHE_BOOTCMD` when the boot runs `apt-get update`: the package lists an
/// earlier build saved on the disk (`imgbuild-lists/`, see the runner) are copied in where
/// they are newer, so that the update revalidates them (If-Modified-Since: `Hit`) instead of
/// downloading them again, and the lists as they are now are noted, so that the runner saves
/// them back only if the update changed them. The image's own lists go with the hygiene.
pub const APT_LISTS_BOOTCMD: &str = concat!(
    "mountpoint -q /var/cache/apt/archives || exit 0; \
l=/var/cache/apt/archives/imgbuild-lists; n=0; \
if [ -d \"$l\" ]; then n=$(ls \"$l\" | wc -l); cp -pu \"$l\"/* /var/lib/apt/lists/ 2>/dev/null || true; fi; \
mkdir -p /run/imgbuild; ",
    apt_lists_state!(),
    " > /run/imgbuild/apt-lists.before; \
echo \"IMGBUILD-APT-LISTS $n from the cache\" > /dev/console"
);

/// The cloud-config document of `parts` booted together in one `role`.
pub fn document(parts: &[&LayerPart], role: Role) -> Value {
    let mut doc = Map::new();
    let all = LayerPart::merged("all", parts);
    let update = all.apt_update();
    let LayerPart {
        upgrade,
        apt_sources: sources,
        apt_proxy: proxy,
        packages,
        users,
        files: mut wf,
        steps,
        ..
    } = all;
    doc.insert("package_update".into(), json!(update));
    doc.insert("package_upgrade".into(), json!(upgrade));
    doc.insert("ssh_pwauth".into(), json!(false));
    // Build VMs are never reached over SSH, and the hygiene removes their host keys: one
    // quick key type instead of RSA's slow generation under TCG (instances get all types).
    doc.insert("ssh_genkeytypes".into(), json!(["ed25519"]));
    // Nobody reads the build VM's console for keys: each is a process or two under TCG.
    doc.insert("no_ssh_fingerprints".into(), json!(true));
    doc.insert("ssh".into(), json!({"emit_keys_to_console": false}));
    if !update {
        // grub-dpkg points grub-pc's debconf at the boot disk (3–4 s of grub-probe under TCG);
        // it matters only to a grub-pc upgrade, and a boot without package work has none
        // (the boot that installs packages ran it; instances run it at their first boot).
        doc.insert("grub_dpkg".into(), json!({"enabled": false}));
    }
    let mut bootcmd = vec![json!(["sh", "-c", APT_CACHE_BOOTCMD])];
    if update {
        bootcmd.push(json!(["sh", "-c", APT_LISTS_BOOTCMD]));
    }
    doc.insert("bootcmd".into(), Value::Array(bootcmd));
    let mut apt = Map::new();
    if !sources.is_empty() {
        apt.insert("sources".into(), Value::Object(sources));
    }
    if let Some(p) = proxy {
        apt.insert("http_proxy".into(), json!(p));
    }
    if !apt.is_empty() {
        doc.insert("apt".into(), Value::Object(apt));
    }
    if !packages.is_empty() {
        doc.insert("packages".into(), json!(packages));
    }
    // Without a `users` list cloud-init makes the distribution's default user (`ubuntu` on
    // Ubuntu's cloud images, `debian` on Debian's, with NOPASSWD sudo in
    // /etc/sudoers.d/90-cloud-init-users: cc_users_groups, "If no users key is provided the
    // default behavior is to create the default user"). An empty list would prevent that, but
    // cloud-init's schema wants at least one item, so the hygiene removes that user instead.
    if !users.is_empty() {
        doc.insert("users".into(), json!(users));
    }
    for s in &steps {
        wf.push(write_file(&WriteFile::new(
            format!("{LIB}/steps/{}.sh", s.name),
            s.script.clone(),
            "0755",
        )));
    }
    wf.push(write_file(&WriteFile::new(
        format!("{LIB}/provision"),
        PROVISION,
        "0755",
    )));
    if role != Role::Layer {
        wf.push(write_file(&WriteFile::new(
            format!("{LIB}/hygiene"),
            HYGIENE,
            "0755",
        )));
        wf.push(write_file(&WriteFile::new(
            "/etc/systemd/system/imgbuild-hygiene.service",
            HYGIENE_UNIT,
            "0644",
        )));
    }
    doc.insert("write_files".into(), Value::Array(wf));
    let runcmd = match role {
        Role::Layer => json!([[format!("{LIB}/provision"), "--layer"]]),
        _ => json!([[format!("{LIB}/provision")]]),
    };
    doc.insert("runcmd".into(), runcmd);
    doc.insert(
        "power_state".into(),
        json!({
            "mode": "poweroff",
            "message": match role {
                Role::Layer => "imgbuild: layer provisioned, powering off",
                _ => "imgbuild: provisioning succeeded, powering off for hygiene",
            },
            "timeout": 30,
            "condition": "test -f /run/imgbuild/provision-ok",
        }),
    );
    doc.insert(
        "final_message".into(),
        json!(format!(
            "{} cloud-init finished after $UPTIME seconds",
            marker::CLOUD_INIT_FINAL
        )),
    );
    Value::Object(doc)
}

/// The build-time user-data for one boot that provisions everything (Packer, `render`), from
/// the layers' parts (`layer_parts`).
pub fn user_data(r: &Resolved, arch: Arch, parts: &[LayerPart]) -> String {
    let all: Vec<&LayerPart> = parts.iter().collect();
    to_cloud_config(
        &document(&all, Role::Flat),
        &format!(
            "imgbuild build-time user-data for {} ({arch}). Rendered; edit images/{}.yaml instead.",
            r.name, r.name
        ),
    )
}

/// The boot-free payload of a build that keeps no layers (`--no-cache`): every layer's work in
/// one, as the flat user-data does it in one boot; None when some of it needs a running system
/// or the definition says `boot_free: false`.
pub fn flat_offline(r: &Resolved, parts: &[LayerPart]) -> Option<String> {
    let all = LayerPart::merged("all", &parts.iter().collect::<Vec<_>>());
    (r.definition.build.boot_free && super::offline::eligible(&all))
        .then(|| super::offline::payload(&all, Role::Flat, &r.name))
}

/// One layer of a native build as rendered: its user-data (for a full boot) and, when its work
/// needs no running system and the definition allows it, its boot-free payload.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerDocs {
    pub name: &'static str,
    pub user_data: String,
    pub offline: Option<String>,
}

/// The build-time documents per layer, in build order, from the layers' parts.
pub fn layer_user_data(r: &Resolved, arch: Arch, parts: &[LayerPart]) -> Vec<LayerDocs> {
    let n = parts.len();
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let role = if i + 1 == n { Role::Top } else { Role::Layer };
            let doc = document(&[p], role);
            // Lower layers are shared by every image with the same content below its own:
            // nothing in them (not even this comment) names the image.
            let comment = match role {
                Role::Layer => format!(
                    "imgbuild build-time user-data ({arch}), layer {}. Rendered from an image definition; edit that instead.",
                    p.name
                ),
                _ => format!(
                    "imgbuild build-time user-data for {} ({arch}), top layer {}. Rendered; edit images/{}.yaml instead.",
                    r.name, p.name, r.name
                ),
            };
            let offline = (r.definition.build.boot_free && super::offline::eligible(p))
                .then(|| super::offline::payload(p, role, &r.name));
            LayerDocs {
                name: p.name,
                user_data: to_cloud_config(&doc, &comment),
                offline,
            }
        })
        .collect()
}

pub fn meta_data(r: &Resolved, arch: Arch) -> String {
    crate::yaml::to_string(&json!({
        "instance-id": format!("imgbuild-build-{}-{arch}", r.name),
        "local-hostname": r.name,
    }))
}

/// The hostname of a lower layer's build boot (cloud-init writes it to /etc/hostname): the
/// same for every image, so that the layer's disk is too. The top layer's boot sets the
/// image's own.
pub const LAYER_HOSTNAME: &str = "imgbuild-layer";

/// meta-data for one layer's boot: a new instance-id per layer (from its key), so cloud-init
/// runs that layer's user-data although the disk has seen an earlier layer's. `image` is the
/// image's name for its top layer and None for a lower one, which images share.
pub fn layer_meta_data(image: Option<&str>, arch: Arch, layer: &str, key: &str) -> String {
    let key = &key[..key.len().min(16)];
    crate::yaml::to_string(&json!({
        "instance-id": match image {
            Some(image) => format!("imgbuild-build-{image}-{arch}-{layer}-{key}"),
            None => format!("imgbuild-layer-{arch}-{layer}-{key}"),
        },
        "local-hostname": image.unwrap_or(LAYER_HOSTNAME),
    }))
}

/// DHCP on the first Ethernet interface, whatever it is called.
pub fn network_config() -> String {
    crate::yaml::to_string(&json!({
        "version": 2,
        "ethernets": {
            "primary": { "match": { "name": "e*" }, "dhcp4": true, "dhcp6": false }
        }
    }))
}

/// Where `docker save` archives wait to be loaded at build time (an air-gapped site puts its
/// images there with `files:` or a script; the archives are removed once loaded).
pub fn offline_images_dir(name: &str) -> String {
    format!("/var/lib/imgbuild/{name}/images")
}

/// The stack's systemd unit (started at boot, profiles from settings.env, overridden by the
/// launch's launch.env) and the build step that bakes its images in for an offline start.
fn stack_unit_and_prepull(
    c: &ComposeProject,
    cs: &crate::definition::ComposeStack,
    files: &mut Vec<WriteFile>,
    steps: &mut Vec<Step>,
) {
    let name = &c.name;
    let dir = format!("/opt/imgbuild/{name}");
    let var = format!("/var/lib/imgbuild/{name}");
    let mut requires = String::from(docker::SERVICE);
    if c.secrets_spec.is_some() {
        requires.push_str(&format!(" {}", secrets_unit(name)));
    }
    let compose = compose_command(c);
    // The start page for the profiles this boot runs (a failure there does not stop the stack).
    let start_page = if c.start.is_empty() {
        String::new()
    } else {
        format!(
            "ExecStartPre=-{LIB}/start-page page {} {}\n",
            start_services_path(name),
            start_page_path(name)
        )
    };
    let unit = format!("imgbuild-stack-{name}.service");
    files.push(WriteFile::new(
        format!("/etc/systemd/system/{unit}"),
        format!(
            "# The {name} compose stack. Profiles: COMPOSE_PROFILES in settings.env (the image's\n\
             # default), overridden by launch.env (imgbuild userdata --profiles). Runs attached, so\n\
             # the services' logs go to the journal and the boot does not wait for image pulls.\n\
             [Unit]\n\
             Description=imgbuild: the {name} compose stack\n\
             Requires={requires}\n\
             After={requires} network-online.target remote-fs.target\n\
             Wants=network-online.target\n\n\
             [Service]\n\
             Type=exec\n\
             EnvironmentFile={dir}/settings.env\n\
             EnvironmentFile=-{var}/launch.env\n\
             {start_page}\
             ExecStart={compose} up --remove-orphans\n\
             ExecStop={compose} stop\n\
             Restart=on-failure\n\
             RestartSec=30\n\
             TimeoutStopSec=120\n\n\
             [Install]\n\
             WantedBy=multi-user.target\n"
        ),
        "0644",
    ));
    steps.push(Step {
        name: "61-stack".into(),
        script: format!("{}\n", super::features::enable_units(&[&unit])),
        offline: true,
        network: false,
    });
    let images = c.images_for(&cs.prepull);
    if cs.prepull.is_empty() || images.is_empty() {
        return;
    }
    let list: Vec<String> = images.iter().map(|i| crate::exec::quote(i)).collect();
    files.push(WriteFile::new(format!("{LIB}/prepull"), PREPULL, "0755"));
    steps.push(Step {
        // After the definition's scripts (50-…, a lower layer), which may place archives.
        name: "62-prepull".into(),
        script: format!(
            "# The images of profiles {profiles}, baked in for an offline first start.\n{LIB}/prepull {offline} {list}\n",
            profiles = cs.prepull.join(", "),
            offline = offline_images_dir(name),
            list = list.join(" "),
        ),
        // docker load/pull: a running dockerd, which the prepull script starts itself when no
        // systemd runs (a boot-free layer), and the network for a pull, which a boot-free
        // layer keeps up for it.
        offline: true,
        network: true,
    });
}

/// The `docker compose` command line of an image's stack (project, folder, env files, file):
/// the unit runs `up` with it, the smoke `ps` and `logs`.
pub fn compose_command(c: &ComposeProject) -> String {
    let name = &c.name;
    let dir = format!("/opt/imgbuild/{name}");
    let mut env_files = format!("--env-file {dir}/settings.env");
    if c.secrets_spec.is_some() {
        env_files.push_str(&format!(" --env-file {}", secrets_env_path(name)));
    }
    format!(
        "{} --project-name {name} --project-directory {dir} {env_files} --file {dir}/compose.yaml",
        docker::COMPOSE
    )
}

/// The start page's service list in the image (rendered from the services' `x-imgbuild`).
pub fn start_services_path(name: &str) -> String {
    format!("/opt/imgbuild/{name}/services.json")
}

/// The start page an instance writes each time its stack starts.
pub fn start_page_path(name: &str) -> String {
    format!("/var/lib/imgbuild/{name}/start.html")
}

pub fn start_services_json(c: &ComposeProject) -> String {
    serde_json::to_string_pretty(&json!({"stack": c.name, "entries": c.start})).expect("json")
        + "\n"
}

/// The unit that makes compose project `name`'s secrets at first boot.
pub fn secrets_unit(name: &str) -> String {
    format!("imgbuild-secrets-{name}.service")
}

/// Where an instance keeps its generated secrets for compose project `name` (mode 0600).
pub fn secrets_env_path(name: &str) -> String {
    format!("/var/lib/imgbuild/{name}/secrets.env")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &'static str, packages: &[&str]) -> LayerPart {
        LayerPart {
            packages: packages.iter().map(|p| p.to_string()).collect(),
            ..LayerPart::new(name)
        }
    }

    #[test]
    fn the_runner_notes_the_package_lists_as_the_bootcmd_does() {
        let line = format!("{}\n", apt_lists_state!());
        assert!(PROVISION.contains(&line), "runner lacks: {line}");
        assert!(APT_LISTS_BOOTCMD.contains(apt_lists_state!()));
        assert!(APT_LISTS_BOOTCMD
            .contains("-printf '%f %s %T@\\n' | sort > /run/imgbuild/apt-lists.before"));
    }

    #[test]
    fn grub_dpkg_is_skipped_only_in_boots_without_package_work() {
        let pkgs = part("image", &["busybox-static"]);
        let doc = document(&[&pkgs], Role::Layer);
        assert_eq!(doc["package_update"], json!(true));
        assert!(doc.get("grub_dpkg").is_none(), "{doc:#}");
        let upgrade = LayerPart {
            upgrade: true,
            ..part("features", &[])
        };
        assert!(document(&[&upgrade], Role::Layer)
            .get("grub_dpkg")
            .is_none());

        let files_only = part("stack", &[]);
        let doc = document(&[&files_only], Role::Top);
        assert_eq!(doc["package_update"], json!(false));
        assert_eq!(doc["grub_dpkg"], json!({"enabled": false}));
        for d in [&doc, &document(&[&pkgs], Role::Flat)] {
            assert_eq!(d["no_ssh_fingerprints"], json!(true));
            assert_eq!(d["ssh"], json!({"emit_keys_to_console": false}));
        }
    }

    #[test]
    fn only_the_top_boot_arms_the_hygiene_and_it_is_armed_by_a_start_not_a_reload() {
        let stack = part("stack", &[]);
        let paths = |d: &Value| -> Vec<String> {
            d["write_files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["path"].as_str().unwrap().to_string())
                .collect()
        };
        let lower = document(&[&stack], Role::Layer);
        assert!(!paths(&lower).iter().any(|p| p.contains("hygiene")));
        assert_eq!(
            lower["runcmd"],
            json!([[format!("{LIB}/provision"), "--layer"]])
        );
        let top = document(&[&stack], Role::Top);
        assert!(paths(&top).contains(&"/etc/systemd/system/imgbuild-hygiene.service".to_string()));
        assert_eq!(top["runcmd"], json!([[format!("{LIB}/provision")]]));
        // The unit runs the hygiene when it stops (poweroff), armed by a start, not a reload.
        assert!(HYGIENE_UNIT.contains("ExecStop=/usr/local/lib/imgbuild/hygiene"));
        assert!(HYGIENE_UNIT.contains("RemainAfterExit=yes"));
        assert!(PROVISION.contains("systemctl start imgbuild-hygiene.service"));
        assert!(!PROVISION.contains("daemon-reload"));
    }
}
