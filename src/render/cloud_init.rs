//! Build-time cloud-init: user-data, meta-data and network-config for the NoCloud seed,
//! built as data and serialized (serde_norway quotes every string a YAML 1.1 reader such as
//! cloud-init's PyYAML could misread: `yes`, `0o17`, `*x`, `#x`, ...).

use super::compose::ComposeProject;
use super::features::{Fragment, Step, WriteFile};
use super::RenderError;
use crate::definition::{Arch, Resolved};
use base64::Engine;
use serde_json::{json, Map, Value};

/// Where the guest-side machinery lives in the image.
pub const LIB: &str = "/usr/local/lib/imgbuild";
pub const PROVISION: &str = include_str!("../../cloud-init/guest/provision");
pub const HYGIENE: &str = include_str!("../../cloud-init/guest/hygiene");
pub const PREPULL: &str = include_str!("../../cloud-init/guest/prepull");
pub const FIRSTBOOT_SECRETS: &str = include_str!("../../cloud-init/guest/firstboot-secrets");
pub const HYGIENE_UNIT: &str = include_str!("../../cloud-init/guest/imgbuild-hygiene.service");

/// The serial-console lines the guest prints (see cloud-init/guest/provision).
pub mod markers {
    pub const PROVISION_OK: &str = "IMGBUILD-PROVISION-OK";
    pub const PROVISION_FAILED: &str = "IMGBUILD-PROVISION-FAILED";
    pub const STEP_FAILED: &str = "IMGBUILD-STEP-FAILED";
    pub const HYGIENE_DONE: &str = "IMGBUILD-HYGIENE-DONE";
    pub const FINAL: &str = "IMGBUILD-CLOUD-INIT-FINAL";
}

/// Serializes a cloud-config document with its mandatory first line.
pub fn to_cloud_config(doc: &Value, comment: &str) -> String {
    let body = super::yaml::to_string(doc);
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

/// The build-time user-data.
pub fn user_data(
    r: &Resolved,
    arch: Arch,
    fragments: &[(&'static str, Fragment)],
    compose: Option<&ComposeProject>,
) -> Result<String, RenderError> {
    let d = &r.definition;
    let mut doc = Map::new();
    doc.insert("package_update".into(), json!(true));
    doc.insert("package_upgrade".into(), json!(true));
    doc.insert("ssh_pwauth".into(), json!(false));

    // apt: definition sources after feature sources.
    let mut sources = Map::new();
    for (_, fr) in fragments {
        for (name, src) in &fr.apt_sources {
            sources.insert(name.clone(), src.clone());
        }
    }
    for (name, s) in &d.apt.sources {
        sources.insert(name.clone(), serde_json::to_value(s).expect("plain data"));
    }
    let mut apt = Map::new();
    if !sources.is_empty() {
        apt.insert("sources".into(), Value::Object(sources));
    }
    if let Some(p) = &d.apt.proxy {
        apt.insert("http_proxy".into(), json!(p));
    }
    if !apt.is_empty() {
        doc.insert("apt".into(), Value::Object(apt));
    }

    let mut packages = Vec::new();
    for (_, fr) in fragments {
        push_unique(&mut packages, fr.packages.iter().cloned());
    }
    push_unique(&mut packages, d.packages.iter().cloned());
    if !packages.is_empty() {
        doc.insert("packages".into(), json!(packages));
    }

    if !d.users.is_empty() {
        let users: Vec<Value> = d
            .users
            .iter()
            .map(|u| {
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
                Value::Object(m)
            })
            .collect();
        doc.insert("users".into(), json!(users));
    }

    let mut files: Vec<WriteFile> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    for (_, fr) in fragments {
        files.extend(fr.files.iter().cloned());
        steps.extend(fr.steps.iter().cloned());
    }
    if let Some(c) = compose {
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
        if let Some(spec) = &c.secrets_spec {
            // Names and sizes only; the values are made per instance at first boot.
            let spec_path = format!("/usr/local/share/imgbuild/{}/secrets.json", c.name);
            files.push(WriteFile::new(spec_path.clone(), spec.clone(), "0644"));
            files.push(WriteFile::new(
                format!("{LIB}/firstboot-secrets"),
                FIRSTBOOT_SECRETS,
                "0755",
            ));
            let unit = format!("imgbuild-secrets-{}.service", c.name);
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
                name: "45-stack-secrets".into(),
                script: format!(
                    "# Enabled, not started: the values are made at the first boot of an instance.\n\
                     systemctl enable {unit}\nrm -f {env}\n",
                    env = secrets_env_path(&c.name)
                ),
            });
        }
    }
    if let (Some(c), Some(cs)) = (compose, &d.features.compose_stack) {
        stack_unit_and_prepull(c, cs, &mut files, &mut steps);
    }
    let mut extra_b64 = Vec::new();
    for (i, f) in d.files.iter().enumerate() {
        let content = match (&f.content, &f.source) {
            (Some(c), _) => c.clone().into_bytes(),
            (None, Some(src)) => {
                let path = r.relative_path(&format!("files[{i}].source"), src);
                std::fs::read(&path).map_err(|source| RenderError::Io { path, source })?
            }
            (None, None) => Vec::new(),
        };
        let owner = f.owner.clone().unwrap_or_else(|| "root:root".into());
        let perms = f.permissions.clone().unwrap_or_else(|| "0644".into());
        match String::from_utf8(content) {
            Ok(text) => files.push(WriteFile {
                path: f.path.clone(),
                content: text,
                permissions: perms,
                owner,
            }),
            Err(bin) => extra_b64.push((f.path.clone(), bin.into_bytes(), perms, owner)),
        }
    }
    for (i, s) in d.scripts.iter().enumerate() {
        steps.push(Step {
            name: format!("50-{:02}-{}", i + 1, s.name),
            script: s.run.clone(),
        });
    }
    for s in &steps {
        files.push(WriteFile::new(
            format!("{LIB}/steps/{}.sh", s.name),
            s.script.clone(),
            "0755",
        ));
    }
    files.push(WriteFile::new(
        format!("{LIB}/provision"),
        PROVISION,
        "0755",
    ));
    files.push(WriteFile::new(format!("{LIB}/hygiene"), HYGIENE, "0755"));
    files.push(WriteFile::new(
        "/etc/systemd/system/imgbuild-hygiene.service",
        HYGIENE_UNIT,
        "0644",
    ));
    files.push(WriteFile::new(
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
    ));
    let mut wf: Vec<Value> = files.iter().map(write_file).collect();
    for (path, bytes, perms, owner) in extra_b64 {
        let mut m = Map::new();
        m.insert("path".into(), json!(path));
        m.insert("encoding".into(), json!("b64"));
        m.insert(
            "content".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
        m.insert("permissions".into(), json!(perms));
        m.insert("owner".into(), json!(owner.clone()));
        if owner != "root:root" {
            m.insert("defer".into(), json!(true));
        }
        wf.push(Value::Object(m));
    }
    doc.insert("write_files".into(), Value::Array(wf));
    doc.insert("runcmd".into(), json!([[format!("{LIB}/provision")]]));
    doc.insert(
        "power_state".into(),
        json!({
            "mode": "poweroff",
            "message": "imgbuild: provisioning succeeded, powering off for hygiene",
            "timeout": 30,
            "condition": "test -f /run/imgbuild/provision-ok",
        }),
    );
    doc.insert(
        "final_message".into(),
        json!(format!(
            "{} cloud-init finished after $UPTIME seconds",
            markers::FINAL
        )),
    );
    Ok(to_cloud_config(
        &Value::Object(doc),
        &format!(
            "imgbuild build-time user-data for {} ({arch}). Rendered; edit images/{}.yaml instead.",
            r.name, r.name
        ),
    ))
}

pub fn meta_data(r: &Resolved, arch: Arch) -> String {
    super::yaml::to_string(&json!({
        "instance-id": format!("imgbuild-build-{}-{arch}", r.name),
        "local-hostname": r.name,
    }))
}

/// DHCP on the first Ethernet interface, whatever it is called.
pub fn network_config() -> String {
    super::yaml::to_string(&json!({
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
    let mut env_files = format!("--env-file {dir}/settings.env");
    let mut requires = String::from("docker.service");
    if c.secrets_spec.is_some() {
        env_files.push_str(&format!(" --env-file {}", secrets_env_path(name)));
        requires.push_str(&format!(" imgbuild-secrets-{name}.service"));
    }
    let compose = format!("/usr/bin/docker compose --project-name {name} --project-directory {dir} {env_files} --file {dir}/compose.yaml");
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
        name: "46-stack".into(),
        script: format!("systemctl enable {unit}\n"),
    });
    let images = c.images_for(&cs.prepull);
    if cs.prepull.is_empty() || images.is_empty() {
        return;
    }
    let list: Vec<String> = images.iter().map(|i| crate::exec::quote(i)).collect();
    files.push(WriteFile::new(format!("{LIB}/prepull"), PREPULL, "0755"));
    steps.push(Step {
        // After the definition's scripts (50-…), which may place archives.
        name: "60-prepull".into(),
        script: format!(
            "# The images of profiles {profiles}, baked in for an offline first start.\n{LIB}/prepull {offline} {list}\n",
            profiles = cs.prepull.join(", "),
            offline = offline_images_dir(name),
            list = list.join(" "),
        ),
    });
}

/// Where an instance keeps its generated secrets for compose project `name` (mode 0600).
pub fn secrets_env_path(name: &str) -> String {
    format!("/var/lib/imgbuild/{name}/secrets.env")
}
