//! The compose stack: a compose project run as a unit, with first-boot secrets. Its rendering is render::compose; this module owns its settings and checks.

use crate::definition::{Definition, Resolved};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComposeStack {
    /// The compose project folder, relative to the definition file.
    pub project: String,
    /// Profiles started by default (a launch can choose others).
    pub profiles: Vec<String>,
    /// Services whose published ports listen on all addresses instead of 127.0.0.1.
    pub expose: Vec<String>,
    /// Extra non-secret environment per service: `{service: {VAR: value}}`.
    pub environment: IndexMap<String, IndexMap<String, String>>,
    /// Pull the images of these profiles at build time, for an offline first start.
    pub prepull: Vec<String>,
    /// The host name users reach the services at (STACK_HOST in settings.env; services that
    /// make links to themselves take it from there); a launch can set another.
    pub host: String,
}

impl Default for ComposeStack {
    fn default() -> Self {
        ComposeStack {
            project: "../compose/ai-stack".into(),
            profiles: vec!["ai".into()],
            expose: Vec::new(),
            environment: IndexMap::new(),
            prepull: Vec::new(),
            host: "localhost".into(),
        }
    }
}

/// The `compose_stack` feature.
pub struct Feature;

impl super::Feature for Feature {
    fn name(&self) -> &'static str {
        "compose_stack"
    }
    fn enabled(&self, d: &Definition) -> bool {
        d.features.compose_stack.is_some()
    }
    fn requires(&self) -> &'static [&'static str] {
        &["docker"]
    }
    fn validate(&self, r: &Resolved, err: &mut dyn FnMut(&str, String)) {
        let Some(cs) = &r.definition.features.compose_stack else {
            return;
        };
        let dir = r.relative_path("features.compose_stack.project", &cs.project);
        if !dir.join("compose.yaml").is_file() {
            err(
                "features.compose_stack.project",
                format!("{} has no compose.yaml", dir.display()),
            );
        }
        for (svc, vars) in &cs.environment {
            for k in vars.keys() {
                if crate::definition::validate::looks_secret_name(k) {
                    err(
                        &format!("features.compose_stack.environment.{svc}.{k}"),
                        "secrets are made at first boot, never set in a definition".into(),
                    );
                }
            }
        }
        let all = cs
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("features.compose_stack.profiles[{i}]"), p))
            .chain(
                cs.prepull
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("features.compose_stack.prepull[{i}]"), p)),
            );
        if !valid_host(&cs.host) {
            err(
                "features.compose_stack.host",
                format!("`{}` is not a host name or IP address", cs.host),
            );
        }
        for (field, p) in all {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                err(&field, format!("`{p}` is not a profile name"));
            }
        }
    }
}

/// A DNS name or an IPv4 address (what a URL's host may be without brackets).
pub fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}
