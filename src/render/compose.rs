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
}

fn read(path: &Path) -> Result<String, RenderError> {
    std::fs::read_to_string(path).map_err(|source| RenderError::Io {
        path: path.to_path_buf(),
        source,
    })
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
    for (i, p) in cs.profiles.iter().chain(&cs.prepull).enumerate() {
        if !profiles.contains(p) {
            let loc = r.locate(&format!("features.compose_stack.profiles[{i}]"));
            return Err(RenderError::Definition(crate::definition::Diagnostic {
                file: loc.file,
                line: loc.pos.line,
                col: loc.pos.col,
                field: "features.compose_stack.profiles".into(),
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
    let mut settings = String::from("# Non-secret settings of the stack (rendered by imgbuild).\n");
    settings.push_str(&format!("COMPOSE_PROFILES={}\n", cs.profiles.join(",")));
    if let Some(sm) = &r.definition.features.shared_mount {
        settings.push_str(&format!("OLLAMA_MODELS_DIR={}/ollama\n", sm.model_cache));
    }
    let compose_yaml = format!(
        "# Rendered by imgbuild from {}; edit that instead.\n{}",
        cs.project,
        super::yaml::to_string(&doc)
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
