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
    /// Each service's image and profiles, for pre-pulling at build time.
    pub images: Vec<ServiceImage>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub service: String,
    /// `None`: all addresses.
    pub host_ip: Option<String>,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceImage {
    pub service: String,
    pub image: String,
    pub profiles: Vec<String>,
}

impl ComposeProject {
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
    for svc in services.values() {
        for p in svc
            .get("profiles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(p) = p.as_str() {
                if !profiles.iter().any(|x| x == p) {
                    profiles.push(p.to_string());
                }
            }
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
    for (name, svc) in services.iter() {
        published.extend(published_ports(name, svc));
        if let Some(image) = svc.get("image").and_then(Value::as_str) {
            images.push(ServiceImage {
                service: name.clone(),
                image: image.to_string(),
                profiles: svc
                    .get("profiles")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect(),
            });
        }
    }
    let mut settings = String::from("# Non-secret settings of the stack (rendered by imgbuild).\n");
    settings.push_str(&format!("COMPOSE_PROFILES={}\n", cs.profiles.join(",")));
    if let Some(sm) = &r.definition.features.shared_mount {
        settings.push_str(&format!("OLLAMA_MODELS_DIR={}/ollama\n", sm.model_cache));
    }
    let compose_yaml = format!(
        "# Rendered by imgbuild from {}; edit that instead.\n{}",
        cs.project,
        crate::yaml::to_string(&doc)
    );
    let secrets = dir.join("secrets.yaml");
    Ok(Some(ComposeProject {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "stack".into()),
        compose_yaml,
        secrets_spec: if secrets.is_file() {
            Some(secrets_spec(&secrets)?)
        } else {
            None
        },
        settings_env: settings,
        profiles,
        services: names,
        published,
        images,
    }))
}

/// Checks secrets.yaml (`NAME: {bytes: N, encoding: hex|base64url}`) and turns it into the
/// generator's JSON. A name must be an env variable name; 16 to 128 bytes of randomness.
fn secrets_spec(path: &Path) -> Result<String, RenderError> {
    let bad = |message: String| RenderError::Compose {
        path: path.to_path_buf(),
        message,
    };
    let doc = parse(path)?;
    let map = doc
        .as_object()
        .ok_or_else(|| bad("must map secret names to {bytes, encoding}".into()))?;
    let mut out = Map::new();
    for (name, spec) in map {
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            return Err(bad(format!("`{name}` is not an environment variable name")));
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
        if let Some(extra) = spec
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "bytes" && *k != "encoding"))
        {
            return Err(bad(format!(
                "{name}: unknown setting `{extra}` (bytes, encoding)"
            )));
        }
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
