//! Whether a container image reference exists in its registry, by the OCI distribution API
//! (opencontainers/distribution-spec `spec.md`, "Pulling manifests": `GET /v2/<name>/manifests/
//! <reference>`, 200 or 404) with the token flow registries put in front of it (Docker's
//! distribution `docs/spec/auth/token.md`: a 401 names a `Bearer realm`, `service` and `scope`;
//! an anonymous GET of the realm gives a pull token). Nothing is pulled.

use crate::http::{Http, HttpError};

/// A parsed image reference: `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `registry-1.docker.io` for Docker Hub names.
    pub registry: String,
    pub repository: String,
    /// The tag, or the digest when there is one.
    pub reference: String,
}

/// Docker's rules (distribution/reference `normalize.go`): the first component is a registry
/// when it has a `.` or a `:` or is `localhost`; Docker Hub's single names are `library/`.
pub fn parse(image: &str) -> Option<Reference> {
    let (name, reference) = match image.split_once('@') {
        // `name:tag@digest`: the digest is what is pulled, the tag only a label.
        Some((n, d)) => match n.rsplit_once(':') {
            Some((bare, t)) if !t.contains('/') => (bare, d.to_string()),
            _ => (n, d.to_string()),
        },
        None => match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t.to_string()),
            _ => (image, "latest".to_string()),
        },
    };
    if name.is_empty() || reference.is_empty() || name.contains("${") {
        return None;
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        Some(_) => ("registry-1.docker.io".to_string(), name.to_string()),
        None => (
            "registry-1.docker.io".to_string(),
            format!("library/{name}"),
        ),
    };
    let registry = if registry == "docker.io" {
        "registry-1.docker.io".to_string()
    } else {
        registry
    };
    Some(Reference {
        registry,
        repository,
        reference,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The registry has it: its manifest digest when the registry said.
    Exists(Option<String>),
    /// The registry answered that there is no such tag or repository.
    Missing(String),
    /// Not asked: a local image name, or the registry could not be reached.
    NotRun(String),
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// `http://` only for a registry on this machine with a port (`localhost:5000`,
/// `127.0.0.1:5000`), as Docker treats those; HTTPS for every other.
fn base_url(registry: &str) -> String {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    if registry.contains(':') && (host == "localhost" || host == "127.0.0.1") {
        format!("http://{registry}")
    } else {
        format!("https://{registry}")
    }
}

/// `Bearer realm="…",service="…",scope="…"` → (realm, [(key, value)]).
pub fn bearer_challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut realm = None;
    let mut params = Vec::new();
    for part in split_params(rest) {
        let (k, v) = part.split_once('=')?;
        let v = v.trim().trim_matches('"').to_string();
        if k.trim() == "realm" {
            realm = Some(v);
        } else {
            params.push((k.trim().to_string(), v));
        }
    }
    Some((realm?, params))
}

/// Comma-separated `k="v"` pairs, where a quoted value may hold commas (scopes do).
fn split_params(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn unreachable(r: &Reference, e: &HttpError) -> Resolution {
    Resolution::NotRun(format!("{} unreachable: {e}", r.registry))
}

/// Asks the registry for the reference's manifest.
pub fn resolve(http: &Http, image: &str) -> Resolution {
    let Some(r) = parse(image) else {
        return Resolution::NotRun(format!("`{image}` is not a plain image reference"));
    };
    if r.registry == "localhost" {
        return Resolution::NotRun(
            "a local image (made or loaded on the machine, no registry)".into(),
        );
    }
    let url = format!(
        "{}/v2/{}/manifests/{}",
        base_url(&r.registry),
        r.repository,
        r.reference
    );
    let accept = [("Accept", MANIFEST_TYPES)];
    let answer = match http.get_with(&url, &accept, &[200, 401, 404]) {
        Ok(a) => a,
        Err(e) => return unreachable(&r, &e),
    };
    let answer = if answer.status == 401 {
        let Some((realm, params)) = answer
            .header("www-authenticate")
            .as_deref()
            .and_then(bearer_challenge)
        else {
            return Resolution::NotRun(format!(
                "{} wants credentials imgbuild does not have (no Bearer challenge)",
                r.registry
            ));
        };
        let mut q: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "service")
            .map(|(k, v)| format!("{k}={}", crate::percent_encode(v)))
            .collect();
        q.push(format!(
            "scope={}",
            crate::percent_encode(&format!("repository:{}:pull", r.repository))
        ));
        let token_url = format!("{realm}?{}", q.join("&"));
        let token = match http.get_with(&token_url, &[], &[200]) {
            Ok(t) => t,
            Err(e) => return unreachable(&r, &e),
        };
        let Some(t) = token.json["token"]
            .as_str()
            .or(token.json["access_token"].as_str())
            .map(str::to_string)
        else {
            return Resolution::NotRun(format!("{realm} gave no token"));
        };
        let auth = format!("Bearer {t}");
        match http.get_with(
            &url,
            &[("Accept", MANIFEST_TYPES), ("Authorization", &auth)],
            &[200, 401, 404],
        ) {
            Ok(a) => a,
            Err(e) => return unreachable(&r, &e),
        }
    } else {
        answer
    };
    match answer.status {
        200 => Resolution::Exists(answer.header("docker-content-digest")),
        // Docker Hub answers 401 for a repository that does not exist (or is private).
        401 => Resolution::Missing(format!(
            "{} refuses {} (no such repository, or private)",
            r.registry, r.repository
        )),
        _ => Resolution::Missing(format!(
            "{} has no {}:{}",
            r.registry, r.repository, r.reference
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_as_docker_reads_them() {
        let p = |s| parse(s).unwrap();
        assert_eq!(
            p("ollama/ollama:0.6.5"),
            Reference {
                registry: "registry-1.docker.io".into(),
                repository: "ollama/ollama".into(),
                reference: "0.6.5".into()
            }
        );
        assert_eq!(p("redis:7.4-alpine").repository, "library/redis");
        assert_eq!(p("kong").reference, "latest");
        let g = p("ghcr.io/open-webui/open-webui:v0.6.5");
        assert_eq!(
            (g.registry.as_str(), g.repository.as_str()),
            ("ghcr.io", "open-webui/open-webui")
        );
        let l = p("localhost:5000/a/b:1");
        assert_eq!(
            (l.registry.as_str(), l.reference.as_str()),
            ("localhost:5000", "1")
        );
        assert_eq!(p("localhost/imgbuild-probe:1").registry, "localhost");
        assert_eq!(
            p("docker.io/library/postgres:16").registry,
            "registry-1.docker.io"
        );
        assert_eq!(p("x/y@sha256:abc").reference, "sha256:abc");
        let t = p("cgr.dev/chainguard/minio:latest@sha256:abc");
        assert_eq!(
            (t.repository.as_str(), t.reference.as_str()),
            ("chainguard/minio", "sha256:abc")
        );
        assert_eq!(p("localhost:5000/a@sha256:abc").registry, "localhost:5000");
        assert_eq!(parse("${IMAGE}"), None);
        assert_eq!(base_url("localhost:5000"), "http://localhost:5000");
        assert_eq!(base_url("ghcr.io"), "https://ghcr.io");
    }

    #[test]
    fn bearer_challenges_keep_commas_inside_quotes() {
        let (realm, params) = bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(realm, "https://auth.docker.io/token");
        assert_eq!(
            params,
            [
                ("service".to_string(), "registry.docker.io".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string())
            ]
        );
        assert_eq!(bearer_challenge("Basic realm=x"), None);
    }
}
