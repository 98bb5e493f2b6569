//! The compose project an image carries: the project's compose.yaml with the definition's
//! choices applied (GPU override, exposed services, per-service environment), serialized
//! back to YAML. Definition strings are escaped for compose's own interpolation (`$` → `$$`)
//! so they reach the container unchanged.

use super::RenderError;
use crate::definition::{ComposeStack, Resolved};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The rendered project.
#[derive(Clone, Debug, PartialEq)]
pub struct ComposeProject {
    /// Folder name of the project (e.g. `ai-stack`).
    pub name: String,
    pub compose_yaml: String,
    /// The project's secrets.yaml as the first-boot generator reads it (JSON): each secret's
    /// name and how to make it, never a value.
    pub secrets_spec: Option<String>,
    /// Non-secret settings for the stack's env file.
    pub settings_env: String,
    /// All profiles the project defines.
    pub profiles: Vec<String>,
    pub services: Vec<String>,
    /// Host ports the services publish (after `expose`), for the smoke check that none of them
    /// listens beyond the loopback unless exposed.
    pub published: Vec<Published>,
    /// Each service's image, profiles, memory limit and whether it has a healthcheck: for
    /// pre-pulling at build time, the memory fit and the smoke's health wait.
    pub images: Vec<ServiceImage>,
    /// The services the start page lists (those with `x-imgbuild.title`), in file order.
    pub start: Vec<StartEntry>,
    /// The project's other files (config files and init scripts its services mount from the
    /// project folder, `./NAME/...`): relative path with `/`, and content.
    pub support_files: Vec<(String, String)>,
}

/// Files of a project folder that imgbuild reads itself rather than ships as they are.
const PROJECT_OWN: [&str; 3] = ["compose.yaml", "compose.gpu.yaml", "secrets.yaml"];
/// A support file is configuration, not data: it travels in the user-data.
const SUPPORT_FILE_MAX: u64 = 256 * 1024;

/// The files in the project's subfolders, sorted: each must be UTF-8 text of at most
/// [`SUPPORT_FILE_MAX`] bytes (it goes into the image through cloud-init's user-data).
fn support_files(dir: &Path) -> Result<Vec<(String, String)>, RenderError> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let e = e.map_err(|e| RenderError::Compose {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        if !e.file_type().is_file()
            || (rel.components().count() == 1 && PROJECT_OWN.contains(&rel_s.as_str()))
        {
            continue;
        }
        if rel.components().count() == 1 || rel_s.split('/').any(|c| c.starts_with('.')) {
            // Top-level extras (README) and hidden files stay in the repository.
            continue;
        }
        let bad = |message: String| RenderError::Compose {
            path: e.path().to_path_buf(),
            message,
        };
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        if len > SUPPORT_FILE_MAX {
            return Err(bad(format!(
                "{len} bytes: a project's support files are configuration, at most {SUPPORT_FILE_MAX} bytes (bake data in with a script)"
            )));
        }
        let content = std::fs::read_to_string(e.path())
            .map_err(|err| bad(format!("not UTF-8 text: {err}")))?;
        out.push((rel_s, content));
    }
    Ok(out)
}

/// A service on the stack's start page: `x-imgbuild: {title, path, login}` in compose.yaml.
/// `login` is a sentence (how the first login works) or `{user, secret}`: the account and the
/// first-boot secret (a secrets.yaml name) that is its password.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StartEntry {
    pub service: String,
    pub title: String,
    /// The published host port the page links to.
    pub port: u16,
    pub path: String,
    pub profiles: Vec<String>,
    pub login: Login,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Login {
    Text(String),
    Secret { user: String, secret: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub service: String,
    /// `None`: all addresses.
    pub host_ip: Option<String>,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProfileMemory {
    pub profile: String,
    pub bytes: u64,
    /// Services of the profile without a `mem_limit` (they may take all the VM has).
    pub unlimited: Vec<String>,
}

/// Memory the VM keeps for itself besides the stack (MiB): the OS, Docker's daemon and the page
/// cache's working minimum; a desktop adds Xvnc, XFCE and a browser with a few tabs (Firefox
/// alone is 0.5–1 GiB resident).
pub const SYSTEM_RESERVE_MIB: u64 = 768;
pub const DESKTOP_RESERVE_MIB: u64 = 1536;

/// A compose byte value (`mem_limit`): a number of bytes or a number with b, k/kb, m/mb, g/gb
/// (binary units, as the compose spec's "byte value" and Docker read them).
pub fn parse_bytes(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return None,
    };
    Some((num * mult as f64) as u64)
}

/// A service's `profiles` (none: it always runs).
fn service_profiles(svc: &Value) -> Vec<String> {
    svc.get("profiles")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

fn has_healthcheck(svc: &Value) -> bool {
    let Some(h) = svc.get("healthcheck") else {
        return false;
    };
    if h.get("disable").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    match h.get("test") {
        Some(Value::Array(a)) => a.first().and_then(Value::as_str) != Some("NONE") && !a.is_empty(),
        Some(Value::String(s)) => !s.trim().is_empty(),
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceImage {
    pub service: String,
    pub image: String,
    pub profiles: Vec<String>,
    /// `mem_limit` in bytes (`None`: no limit set).
    pub mem_limit: Option<u64>,
    /// A `healthcheck` with a test that is not `NONE` and not disabled.
    pub healthcheck: bool,
    /// A one-shot job: another service waits for it with `service_completed_successfully`
    /// (a migration). It needs no healthcheck; it is done when it exits 0.
    pub job: bool,
}

impl ComposeProject {
    /// The services that run when `profiles` are active (services without profiles always run).
    pub fn services_for<'a>(
        &'a self,
        profiles: &'a [String],
    ) -> impl Iterator<Item = &'a ServiceImage> {
        self.images
            .iter()
            .filter(|si| si.profiles.is_empty() || si.profiles.iter().any(|p| profiles.contains(p)))
    }

    /// Each profile's memory: the sum of the `mem_limit`s of the services it starts (with the
    /// services that have no profile), and the services that have no limit.
    pub fn profile_memory(&self) -> Vec<ProfileMemory> {
        self.profiles
            .iter()
            .map(|p| {
                let one = [p.clone()];
                let mut m = ProfileMemory {
                    profile: p.clone(),
                    bytes: 0,
                    unlimited: Vec::new(),
                };
                for si in self.services_for(&one) {
                    match si.mem_limit {
                        Some(b) => m.bytes += b,
                        None => m.unlimited.push(si.service.clone()),
                    }
                }
                m
            })
            .collect()
    }

    /// The distinct images of the services in any of `profiles` (services without profiles
    /// always start, so they are always included).
    pub fn images_for(&self, profiles: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for si in &self.images {
            let wanted = si.profiles.is_empty() || si.profiles.iter().any(|p| profiles.contains(p));
            if wanted && !out.contains(&si.image) {
                out.push(si.image.clone());
            }
        }
        out
    }
}

/// The host side of a service's `ports` (short and long syntax); ports without a fixed host
/// port (ephemeral) and interpolated ones are left out.
fn published_ports(service: &str, svc: &Value) -> Vec<Published> {
    let mut out = Vec::new();
    for p in svc
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (ip, port) = match p {
            Value::String(s) => {
                let s = s.split('/').next().unwrap_or_default();
                let parts: Vec<&str> = s.rsplitn(3, ':').collect();
                match parts.as_slice() {
                    [_, host] => (None, host.to_string()),
                    [_, host, ip] => (
                        Some(ip.trim_matches(['[', ']']).to_string()),
                        host.to_string(),
                    ),
                    _ => continue,
                }
            }
            Value::Object(m) => {
                let Some(port) = m.get("published").map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }) else {
                    continue;
                };
                (
                    m.get("host_ip").and_then(Value::as_str).map(str::to_string),
                    port,
                )
            }
            _ => continue,
        };
        if let Ok(port) = port.parse::<u16>() {
            out.push(Published {
                service: service.to_string(),
                host_ip: ip.filter(|i| !i.is_empty() && i != "0.0.0.0" && i != "::"),
                port,
            });
        }
    }
    out
}

fn read(path: &Path) -> Result<String, RenderError> {
    Ok(std::fs::read_to_string(path).map_err(crate::IoError::at(path))?)
}

/// Parses a compose file, resolving YAML anchors and `<<` merge keys as compose does.
fn parse(path: &Path) -> Result<Value, RenderError> {
    let err = |e: serde_norway::Error| RenderError::Compose {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut doc: serde_norway::Value = serde_norway::from_str(&read(path)?).map_err(err)?;
    // A merged map may itself carry `<<` (an anchor built on another anchor): repeat until
    // nothing changes, bounded so a pathological file cannot spin.
    for _ in 0..16 {
        let before = doc.clone();
        doc.apply_merge().map_err(err)?;
        if doc == before {
            break;
        }
    }
    serde_norway::from_value(doc).map_err(err)
}

/// Escapes a string for compose interpolation.
pub fn escape(s: &str) -> String {
    s.replace('$', "$$")
}

/// Compose's merge of an override file: maps merge, other values replace.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

pub fn project_dir(r: &Resolved, cs: &ComposeStack) -> PathBuf {
    r.relative_path("features.compose_stack.project", &cs.project)
}

pub fn render(r: &Resolved) -> Result<Option<ComposeProject>, RenderError> {
    let Some(cs) = &r.definition.features.compose_stack else {
        return Ok(None);
    };
    let dir = project_dir(r, cs);
    let main = dir.join("compose.yaml");
    let mut doc = parse(&main)?;
    let bad = |message: String| RenderError::Compose {
        path: main.clone(),
        message,
    };
    if r.definition.features.nvidia.is_some() {
        let gpu = dir.join("compose.gpu.yaml");
        if gpu.is_file() {
            merge(&mut doc, &parse(&gpu)?);
        }
    }
    let services = doc
        .get_mut("services")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad("has no `services` map".into()))?;
    let names: Vec<String> = services.keys().cloned().collect();
    let mut profiles: Vec<String> = Vec::new();
    for p in services.values().flat_map(service_profiles) {
        if !profiles.contains(&p) {
            profiles.push(p);
        }
    }
    let named = cs
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| ("profiles", i, p))
        .chain(
            cs.prepull
                .iter()
                .enumerate()
                .map(|(i, p)| ("prepull", i, p)),
        );
    for (list, i, p) in named {
        if !profiles.contains(p) {
            let loc = r.locate(&format!("features.compose_stack.{list}[{i}]"));
            return Err(RenderError::Definition(crate::definition::Diagnostic {
                file: loc.file,
                line: loc.pos.line,
                col: loc.pos.col,
                field: format!("features.compose_stack.{list}"),
                message: format!(
                    "profile `{p}` is not in {} ({})",
                    main.display(),
                    profiles.join(", ")
                ),
                help: crate::definition::diagnostic::did_you_mean(
                    p,
                    profiles.iter().map(String::as_str),
                ),
            }));
        }
    }
    for svc in &cs.expose {
        let Some(s) = services.get_mut(svc) else {
            return Err(unknown_service(
                r,
                "features.compose_stack.expose",
                svc,
                &names,
                &main,
            ));
        };
        expose_ports(s);
    }
    for (svc, vars) in &cs.environment {
        let Some(s) = services.get_mut(svc) else {
            return Err(unknown_service(
                r,
                &format!("features.compose_stack.environment.{svc}"),
                svc,
                &names,
                &main,
            ));
        };
        let env = normalize_env(s);
        for (k, v) in vars {
            env.insert(k.clone(), Value::String(escape(v)));
        }
    }
    let mut published = Vec::new();
    let mut images = Vec::new();
    let jobs: Vec<String> = services
        .values()
        .filter_map(|s| s.get("depends_on").and_then(Value::as_object))
        .flat_map(|d| d.iter())
        .filter(|(_, c)| {
            c.get("condition").and_then(Value::as_str) == Some("service_completed_successfully")
        })
        .map(|(n, _)| n.clone())
        .collect();
    for (name, svc) in services.iter() {
        published.extend(published_ports(name, svc));
        if let Some(image) = svc.get("image").and_then(Value::as_str) {
            let mem_limit = match svc.get("mem_limit") {
                None => None,
                Some(v) => Some(parse_bytes(v).ok_or_else(|| {
                    bad(format!(
                        "services.{name}.mem_limit: `{v}` is not a byte value like 512m or 2g"
                    ))
                })?),
            };
            images.push(ServiceImage {
                service: name.clone(),
                image: image.to_string(),
                mem_limit,
                healthcheck: has_healthcheck(svc),
                job: jobs.contains(name),
                profiles: service_profiles(svc),
            });
        }
    }
    if let Some(si) = images.iter().find(|si| !si.healthcheck && !si.job) {
        return Err(bad(format!(
            "services.{}.healthcheck: every service needs one (the smoke waits for `healthy`, \
             `depends_on` can wait for it) but one-shot jobs other services wait for with \
             `service_completed_successfully`; none or `test: [NONE]` here",
            si.service
        )));
    }
    if let Some(si) = images.iter().find(|si| si.mem_limit.is_none()) {
        return Err(bad(format!(
            "services.{}.mem_limit: every service needs one, so that each profile can be shown to fit the VM",
            si.service
        )));
    }
    let support_files = support_files(&dir)?;
    // What a service mounts from the project folder must be there: in the image the folder
    // holds exactly these files, and Docker would make an empty directory for a missing one.
    for (name, svc) in services.iter() {
        for v in svc
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let source = match v {
                Value::String(s) => s.split(':').next().unwrap_or_default().to_string(),
                Value::Object(o) => o
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                _ => continue,
            };
            let Some(rel) = source.strip_prefix("./") else {
                continue;
            };
            if !support_files
                .iter()
                .any(|(f, _)| f == rel || f.starts_with(&format!("{rel}/")))
            {
                return Err(bad(format!(
                    "services.{name}.volumes: `{source}` is not a file in the project's subfolders ({})",
                    dir.display()
                )));
            }
        }
    }
    let start = start_entries(services, &published, &main)?;
    let mut settings = String::from("# Non-secret settings of the stack (rendered by imgbuild).\n");
    settings.push_str(&format!("COMPOSE_PROFILES={}\n", cs.profiles.join(",")));
    settings.push_str(&format!("STACK_HOST={}\n", cs.host));
    if let Some(sm) = &r.definition.features.shared_mount {
        settings.push_str(&format!("OLLAMA_MODELS_DIR={}/ollama\n", sm.model_cache));
    }
    let compose_yaml = format!(
        "# Rendered by imgbuild from {}; edit that instead.\n{}",
        cs.project,
        crate::yaml::to_string(&doc)
    );
    let secrets = dir.join("secrets.yaml");
    let secrets_spec = if secrets.is_file() {
        Some(secrets_spec(&secrets)?)
    } else {
        None
    };
    for e in &start {
        if let Login::Secret { secret, .. } = &e.login {
            let known = secrets_spec
                .as_deref()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .is_some_and(|v| v.get(secret).is_some());
            if !known {
                return Err(RenderError::Compose {
                    path: main.clone(),
                    message: format!(
                        "services.{}.x-imgbuild.login.secret: `{secret}` is not in secrets.yaml",
                        e.service
                    ),
                });
            }
        }
    }
    let project = ComposeProject {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "stack".into()),
        compose_yaml,
        secrets_spec,
        settings_env: settings,
        profiles,
        services: names,
        published,
        images,
        start,
        support_files,
    };
    check_fit(r, cs, &project, &main)?;
    Ok(Some(project))
}

/// The memory a profile (and the default profiles together) asks for, plus what the VM keeps
/// for itself ([`SYSTEM_RESERVE_MIB`], a desktop's [`DESKTOP_RESERVE_MIB`]), must fit the
/// image's `publish.min_ram`: a flavor the image accepts can run any one profile, and the
/// default ones together, without the kernel's OOM killer choosing among the services.
pub fn fit_budget_mib(r: &Resolved) -> Option<u64> {
    let min_ram = u64::from(r.definition.publish.min_ram?);
    let reserve = SYSTEM_RESERVE_MIB
        + if r.definition.features.desktop.is_some() {
            DESKTOP_RESERVE_MIB
        } else {
            0
        };
    Some(min_ram.saturating_sub(reserve))
}

fn check_fit(
    r: &Resolved,
    cs: &ComposeStack,
    p: &ComposeProject,
    main: &Path,
) -> Result<(), RenderError> {
    let Some(budget) = fit_budget_mib(r) else {
        return Ok(());
    };
    let mib = |b: u64| b.div_ceil(1 << 20);
    let mut sets: Vec<(String, Vec<String>)> = p
        .profiles
        .iter()
        .map(|x| (format!("profile `{x}`"), vec![x.clone()]))
        .collect();
    if cs.profiles.len() > 1 {
        sets.push((
            format!("the default profiles {}", cs.profiles.join(", ")),
            cs.profiles.clone(),
        ));
    }
    for (what, set) in sets {
        let services: Vec<&ServiceImage> = p.services_for(&set).collect();
        let asked: u64 = services.iter().filter_map(|s| s.mem_limit).sum();
        if mib(asked) > budget {
            let loc = r.locate("publish.min_ram");
            let mut parts: Vec<String> = services
                .iter()
                .map(|s| format!("{} {} MiB", s.service, mib(s.mem_limit.unwrap_or(0))))
                .collect();
            parts.sort();
            return Err(RenderError::Definition(crate::definition::Diagnostic {
                file: loc.file,
                line: loc.pos.line,
                col: loc.pos.col,
                field: "publish.min_ram".into(),
                message: format!(
                    "{what} of {} asks for {} MiB ({}), more than the {budget} MiB that min_ram {} leaves \
                     after the system{} reserve",
                    main.display(),
                    mib(asked),
                    parts.join(", "),
                    r.definition.publish.min_ram.unwrap_or(0),
                    if r.definition.features.desktop.is_some() { " and desktop" } else { "" },
                ),
                help: Some("raise min_ram, lower the services' mem_limit, or split the profile".into()),
            }));
        }
    }
    Ok(())
}

/// The start page's entries from the services' `x-imgbuild` (see [`StartEntry`]).
fn start_entries(
    services: &Map<String, Value>,
    published: &[Published],
    main: &Path,
) -> Result<Vec<StartEntry>, RenderError> {
    let bad = |svc: &str, message: String| RenderError::Compose {
        path: main.to_path_buf(),
        message: format!("services.{svc}.x-imgbuild{message}"),
    };
    let mut out = Vec::new();
    for (name, svc) in services {
        let Some(x) = svc.get("x-imgbuild") else {
            continue;
        };
        let Some(o) = x.as_object() else {
            return Err(bad(name, ": a map of title, path, login".into()));
        };
        if let Some(k) = o
            .keys()
            .find(|k| !["title", "path", "login"].contains(&k.as_str()))
        {
            return Err(bad(
                name,
                format!(": unknown setting `{k}` (title, path, login)"),
            ));
        }
        let title = o.get("title").and_then(Value::as_str).unwrap_or("");
        if title.is_empty() {
            return Err(bad(name, ".title: the name the start page shows".into()));
        }
        let path = o.get("path").and_then(Value::as_str).unwrap_or("/");
        if !path.starts_with('/') {
            return Err(bad(name, format!(".path: `{path}` must start with /")));
        }
        let login = match o.get("login") {
            Some(Value::String(s)) if !s.is_empty() => Login::Text(s.clone()),
            Some(Value::Object(l))
                if l.len() == 2
                    && l.get("user").and_then(Value::as_str).is_some()
                    && l.get("secret").and_then(Value::as_str).is_some() =>
            {
                Login::Secret {
                    user: l["user"].as_str().unwrap_or_default().into(),
                    secret: l["secret"].as_str().unwrap_or_default().into(),
                }
            }
            _ => {
                return Err(bad(
                    name,
                    ".login: a sentence, or {user, secret} naming a secrets.yaml entry".into(),
                ))
            }
        };
        let Some(port) = published
            .iter()
            .find(|p| &p.service == name)
            .map(|p| p.port)
        else {
            return Err(bad(
                name,
                ": the service publishes no port to link to".into(),
            ));
        };
        out.push(StartEntry {
            service: name.clone(),
            title: title.into(),
            port,
            path: path.into(),
            profiles: service_profiles(svc),
            login,
        });
    }
    Ok(out)
}

/// Checks secrets.yaml and turns it into the generator's JSON. Each entry is either random,
/// `NAME: {bytes: N, encoding: hex|base64url}` (16 to 128 bytes), or a JWT signed with one of
/// the random ones, `NAME: {jwt: {secret: OTHER, role: R, issuer: I, valid_days: D}}` (HS256,
/// as Supabase's anon and service-role keys are: supabase/supabase `docker/.env.example`).
/// A name must be an env variable name.
fn secrets_spec(path: &Path) -> Result<String, RenderError> {
    let bad = |message: String| RenderError::Compose {
        path: path.to_path_buf(),
        message,
    };
    let doc = parse(path)?;
    let map = doc
        .as_object()
        .ok_or_else(|| bad("must map secret names to {bytes, encoding} or {jwt: {...}}".into()))?;
    let env_name = |name: &str| {
        name.chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    let unknown = |name: &str, spec: &Value, known: &[&str]| -> Result<(), RenderError> {
        match spec
            .as_object()
            .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
        {
            Some(extra) => Err(bad(format!(
                "{name}: unknown setting `{extra}` ({})",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    };
    let mut out = Map::new();
    for (name, spec) in map {
        if !env_name(name) {
            return Err(bad(format!("`{name}` is not an environment variable name")));
        }
        if let Some(jwt) = spec.get("jwt") {
            unknown(name, spec, &["jwt"])?;
            unknown(
                &format!("{name}.jwt"),
                jwt,
                &["secret", "role", "issuer", "valid_days"],
            )?;
            let secret = jwt.get("secret").and_then(Value::as_str).unwrap_or("");
            let signer = map.get(secret).filter(|s| s.get("jwt").is_none());
            if signer
                .and_then(|s| s.get("bytes"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
                < 32
            {
                return Err(bad(format!(
                    "{name}.jwt.secret: `{secret}` must be a random secret of this file with at least 32 bytes (HS256)"
                )));
            }
            let role = jwt.get("role").and_then(Value::as_str).unwrap_or("");
            if role.is_empty() || !role.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                return Err(bad(format!(
                    "{name}.jwt.role: `{role}` is not a role name like anon"
                )));
            }
            let days = jwt
                .get("valid_days")
                .map_or(Some(1825), Value::as_u64)
                .unwrap_or(0);
            if !(1..=3650).contains(&days) {
                return Err(bad(format!("{name}.jwt.valid_days: 1 to 3650")));
            }
            out.insert(
                name.clone(),
                serde_json::json!({"jwt": {
                    "secret": secret,
                    "role": role,
                    "issuer": jwt.get("issuer").and_then(Value::as_str).unwrap_or("supabase"),
                    "valid_days": days,
                }}),
            );
            continue;
        }
        let bytes = spec.get("bytes").and_then(Value::as_u64).unwrap_or(0);
        if !(16..=128).contains(&bytes) {
            return Err(bad(format!("{name}.bytes: 16 to 128 bytes of randomness")));
        }
        let encoding = spec
            .get("encoding")
            .and_then(Value::as_str)
            .unwrap_or("hex");
        if !matches!(encoding, "hex" | "base64url") {
            return Err(bad(format!(
                "{name}.encoding: `{encoding}` is not hex or base64url"
            )));
        }
        unknown(name, spec, &["bytes", "encoding"])?;
        out.insert(
            name.clone(),
            serde_json::json!({"bytes": bytes, "encoding": encoding}),
        );
    }
    Ok(serde_json::to_string_pretty(&Value::Object(out)).expect("json") + "\n")
}

fn unknown_service(
    r: &Resolved,
    field: &str,
    svc: &str,
    names: &[String],
    main: &Path,
) -> RenderError {
    let loc = r.locate(field);
    RenderError::Definition(crate::definition::Diagnostic {
        file: loc.file,
        line: loc.pos.line,
        col: loc.pos.col,
        field: field.into(),
        message: format!("service `{svc}` is not in {}", main.display()),
        help: crate::definition::diagnostic::did_you_mean(svc, names.iter().map(String::as_str)),
    })
}

/// Publishes a service's ports on all addresses instead of loopback.
fn expose_ports(svc: &mut Value) {
    let Some(ports) = svc.get_mut("ports").and_then(Value::as_array_mut) else {
        return;
    };
    for p in ports {
        match p {
            Value::String(s) => {
                if let Some(rest) = s.strip_prefix("127.0.0.1:") {
                    *s = rest.to_string();
                }
            }
            Value::Object(m) => {
                m.remove("host_ip");
            }
            _ => {}
        }
    }
}

/// Turns a list-form `environment` into a map and returns it.
fn normalize_env(svc: &mut Value) -> &mut Map<String, Value> {
    let obj = svc.as_object_mut().expect("a service is a map");
    let current = obj
        .remove("environment")
        .unwrap_or(Value::Object(Map::new()));
    let map = match current {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .map(|i| match i.split_once('=') {
                Some((k, v)) => (k.to_string(), Value::String(v.to_string())),
                None => (i, Value::Null),
            })
            .collect(),
        Value::Object(m) => m,
        _ => Map::new(),
    };
    obj.insert("environment".into(), Value::Object(map));
    obj.get_mut("environment")
        .and_then(Value::as_object_mut)
        .expect("just inserted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn published_ports_short_and_long_syntax() {
        let svc = json!({"ports": [
            "127.0.0.1:8080:80", "9000:9000/udp", "3000", "[::1]:5432:5432",
            {"target": 80, "published": "81", "host_ip": "127.0.0.1"},
            {"target": 443, "published": 8443},
            "${PORT:-1}:1"
        ]});
        let p: Vec<(Option<String>, u16)> = published_ports("s", &svc)
            .into_iter()
            .map(|p| (p.host_ip, p.port))
            .collect();
        assert_eq!(
            p,
            vec![
                (Some("127.0.0.1".into()), 8080),
                (None, 9000),
                (Some("::1".into()), 5432),
                (Some("127.0.0.1".into()), 81),
                (None, 8443),
            ]
        );
    }

    #[test]
    fn expose_drops_loopback_binding() {
        let mut s = json!({"ports": ["127.0.0.1:8080:8080", {"target": 80, "published": "81", "host_ip": "127.0.0.1"}]});
        expose_ports(&mut s);
        assert_eq!(
            s,
            json!({"ports": ["8080:8080", {"target": 80, "published": "81"}]})
        );
    }

    #[test]
    fn env_list_becomes_map() {
        let mut s = json!({"environment": ["A=1", "B"]});
        normalize_env(&mut s).insert("C".into(), json!("x"));
        assert_eq!(s, json!({"environment": {"A": "1", "B": null, "C": "x"}}));
    }

    #[test]
    fn dollar_is_escaped() {
        assert_eq!(escape("a${B}$c$$"), "a$${B}$$c$$$$");
    }
}
