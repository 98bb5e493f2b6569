//! OpenStack authentication as the OpenStack CLI does it: a cloud from clouds.yaml (merged
//! with secure.yaml) named by `--os-cloud`/`OS_CLOUD`, else plain `OS_*` variables; Keystone
//! v3 password, application-credential and token auth; the image endpoint from the service
//! catalog by interface and region. Secrets are held in [`Secret`], which never prints.

use crate::http::{Http, HttpError, TlsOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A secret string: Debug and Display print `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Project {
        id: Option<String>,
        name: Option<String>,
        domain_id: Option<String>,
        domain_name: Option<String>,
    },
    Unscoped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Password {
        username: Option<String>,
        user_id: Option<String>,
        user_domain_id: Option<String>,
        user_domain_name: Option<String>,
        password: Secret,
    },
    ApplicationCredential {
        id: Option<String>,
        name: Option<String>,
        username: Option<String>,
        user_domain_name: Option<String>,
        secret: Secret,
    },
    Token(Secret),
}

/// Everything needed to reach a cloud's image service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cloud {
    /// The clouds.yaml entry, or `None` for OS_* variables.
    pub name: Option<String>,
    pub auth_url: String,
    pub credentials: Credentials,
    pub scope: Scope,
    pub region: Option<String>,
    pub interface: String,
    pub tls: TlsOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no cloud given: pass --os-cloud NAME (clouds.yaml) or set OS_CLOUD or OS_AUTH_URL and friends")]
    NoCloud,
    #[error("cloud `{name}` is not in {}{help}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    UnknownCloud {
        name: String,
        searched: Vec<PathBuf>,
        help: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Incomplete(String),
    #[error("Keystone at {url} refused the credentials (HTTP 401): check the user, password or application credential")]
    Unauthorized { url: String },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the service catalog has no image endpoint (interface {interface}{region})")]
    NoImageEndpoint { interface: String, region: String },
}

/// Where clouds.yaml and secure.yaml are looked for, in order (as openstacksdk does).
pub fn search_paths(file: &str, env_override: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os(env_override) {
        v.push(PathBuf::from(p));
    }
    v.push(PathBuf::from(file));
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(c) = config {
        v.push(c.join("openstack").join(file));
    }
    v.push(PathBuf::from("/etc/openstack").join(file));
    v
}

fn read_yaml(path: &Path) -> Result<Value, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuthError::File {
        path: path.into(),
        message: e.to_string(),
    })?;
    serde_norway::from_str(&text).map_err(|e| AuthError::File {
        path: path.into(),
        message: e.to_string(),
    })
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The cloud named `name` (or OS_CLOUD), else one from OS_* variables.
pub fn load(name: Option<&str>) -> Result<Cloud, AuthError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let chosen = name.map(str::to_string).or_else(|| env("OS_CLOUD"));
    match chosen {
        Some(n) => from_clouds_yaml(&n),
        None if env("OS_AUTH_URL").is_some() => from_env(&env),
        None => Err(AuthError::NoCloud),
    }
}

fn from_clouds_yaml(name: &str) -> Result<Cloud, AuthError> {
    let clouds = search_paths("clouds.yaml", "OS_CLIENT_CONFIG_FILE");
    let Some(path) = clouds.iter().find(|p| p.is_file()) else {
        return Err(AuthError::UnknownCloud {
            name: name.into(),
            searched: clouds,
            help: " (no clouds.yaml found)".into(),
        });
    };
    let doc = read_yaml(path)?;
    let Some(mut entry) = doc["clouds"].get(name).cloned() else {
        let known: Vec<&str> = doc["clouds"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        return Err(AuthError::UnknownCloud {
            name: name.into(),
            searched: vec![path.clone()],
            help: crate::definition::diagnostic::did_you_mean(name, known.iter().copied())
                .map(|h| format!("; {h}"))
                .unwrap_or_else(|| format!(" (known: {})", known.join(", "))),
        });
    };
    if let Some(secure) = search_paths("secure.yaml", "OS_CLIENT_SECURE_FILE")
        .into_iter()
        .find(|p| p.is_file())
    {
        if let Some(s) = read_yaml(&secure)?["clouds"].get(name) {
            merge(&mut entry, s);
        }
    }
    let base = path.parent().unwrap_or(Path::new("."));
    cloud_from_entry(Some(name), &entry, base).map_err(|m| AuthError::File {
        path: path.clone(),
        message: format!("clouds.{name}: {m}"),
    })
}

fn s(v: &Value, k: &str) -> Option<String> {
    match v.get(k) {
        Some(Value::String(x)) if !x.is_empty() => Some(x.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A clouds.yaml entry (after secure.yaml is merged in).
pub fn cloud_from_entry(name: Option<&str>, e: &Value, base: &Path) -> Result<Cloud, String> {
    let auth = e.get("auth").cloned().unwrap_or(json!({}));
    let auth_type = s(e, "auth_type").unwrap_or_default();
    let auth_url = s(&auth, "auth_url").ok_or("auth.auth_url is missing")?;
    let credentials = credentials(&auth_type, &|k| s(&auth, k))?;
    let scope = scope(&credentials, &|k| s(&auth, k));
    let path = |k: &str| {
        s(e, k).map(|p| {
            let p = PathBuf::from(p);
            if p.is_relative() {
                base.join(p)
            } else {
                p
            }
        })
    };
    let verify = match e.get("verify") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(x)) => !matches!(x.as_str(), "false" | "False" | "no" | "0"),
        _ => true,
    };
    Ok(Cloud {
        name: name.map(str::to_string),
        auth_url,
        credentials,
        scope,
        region: s(e, "region_name"),
        interface: s(e, "interface").unwrap_or_else(|| "public".into()),
        tls: TlsOptions {
            cacert: path("cacert"),
            cert: path("cert"),
            key: path("key"),
            verify,
            settings: Default::default(),
        },
    })
}

fn credentials(
    auth_type: &str,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Credentials, String> {
    let kind = match auth_type {
        "" => {
            if get("application_credential_secret").is_some() {
                "v3applicationcredential"
            } else if get("token").is_some() && get("password").is_none() {
                "v3token"
            } else {
                "password"
            }
        }
        t => t,
    };
    match kind {
        "password" | "v3password" => Ok(Credentials::Password {
            username: get("username"),
            user_id: get("user_id"),
            user_domain_id: get("user_domain_id"),
            user_domain_name: get("user_domain_name"),
            password: Secret::new(get("password").ok_or("auth.password is missing")?),
        })
        .and_then(|c| match &c {
            Credentials::Password {
                username: None,
                user_id: None,
                ..
            } => Err("auth.username (or user_id) is missing".to_string()),
            _ => Ok(c),
        }),
        "v3applicationcredential" | "applicationcredential" => {
            let id = get("application_credential_id");
            let name = get("application_credential_name");
            if id.is_none() && name.is_none() {
                return Err("auth.application_credential_id (or _name) is missing".into());
            }
            Ok(Credentials::ApplicationCredential {
                id,
                name,
                username: get("username"),
                user_domain_name: get("user_domain_name"),
                secret: Secret::new(
                    get("application_credential_secret")
                        .ok_or("auth.application_credential_secret is missing")?,
                ),
            })
        }
        "v3token" | "token" => Ok(Credentials::Token(Secret::new(
            get("token").ok_or("auth.token is missing")?,
        ))),
        other => Err(format!(
            "auth_type `{other}` is not supported (password, v3applicationcredential, v3token)"
        )),
    }
}

fn scope(c: &Credentials, get: &dyn Fn(&str) -> Option<String>) -> Scope {
    if matches!(c, Credentials::ApplicationCredential { .. }) {
        // An application credential carries its own project.
        return Scope::Unscoped;
    }
    let id = get("project_id").or_else(|| get("tenant_id"));
    let name = get("project_name").or_else(|| get("tenant_name"));
    if id.is_none() && name.is_none() {
        return Scope::Unscoped;
    }
    Scope::Project {
        id,
        name,
        domain_id: get("project_domain_id"),
        domain_name: get("project_domain_name"),
    }
}

fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Cloud, AuthError> {
    let map = |k: &str| env(&format!("OS_{}", k.to_ascii_uppercase()));
    let auth_url = map("auth_url").ok_or(AuthError::NoCloud)?;
    let credentials = credentials(&map("auth_type").unwrap_or_default(), &map).map_err(|m| {
        let m: Vec<String> = m
            .split(' ')
            .map(|w| match w.strip_prefix("auth.") {
                Some(v) => format!("OS_{}", v.to_ascii_uppercase()),
                None => w.to_string(),
            })
            .collect();
        AuthError::Incomplete(format!("OS_* variables: {}", m.join(" ")))
    })?;
    let scope = scope(&credentials, &map);
    let insecure =
        map("insecure").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True" | "yes"));
    Ok(Cloud {
        name: None,
        auth_url,
        credentials,
        scope,
        region: map("region_name"),
        interface: map("interface").unwrap_or_else(|| "public".into()),
        tls: TlsOptions {
            cacert: map("cacert").map(PathBuf::from),
            cert: map("cert").map(PathBuf::from),
            key: map("key").map(PathBuf::from),
            verify: !insecure,
            settings: Default::default(),
        },
    })
}

/// A Keystone token and the catalog that came with it.
#[derive(Clone, Debug)]
pub struct Session {
    pub token: Secret,
    pub image_url: String,
    pub project_id: Option<String>,
    pub user_id: Option<String>,
}

fn v3(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/v3") {
        u.to_string()
    } else {
        format!("{u}/v3")
    }
}

/// The body of POST /v3/auth/tokens.
pub fn auth_body(c: &Cloud) -> Value {
    let domain = |id: &Option<String>, name: &Option<String>| match (id, name) {
        (Some(i), _) => json!({"id": i}),
        (None, Some(n)) => json!({"name": n}),
        (None, None) => json!({"id": "default"}),
    };
    let identity = match &c.credentials {
        Credentials::Password {
            username,
            user_id,
            user_domain_id,
            user_domain_name,
            password,
        } => {
            let mut user = json!({"password": password.expose()});
            match (user_id, username) {
                (Some(id), _) => user["id"] = json!(id),
                (None, Some(n)) => {
                    user["name"] = json!(n);
                    user["domain"] = domain(user_domain_id, user_domain_name);
                }
                _ => {}
            }
            json!({"methods": ["password"], "password": {"user": user}})
        }
        Credentials::ApplicationCredential {
            id,
            name,
            username,
            user_domain_name,
            secret,
        } => {
            let mut ac = json!({"secret": secret.expose()});
            match (id, name) {
                (Some(i), _) => ac["id"] = json!(i),
                (None, Some(n)) => {
                    ac["name"] = json!(n);
                    ac["user"] =
                        json!({"name": username, "domain": domain(&None, user_domain_name)});
                }
                _ => {}
            }
            json!({"methods": ["application_credential"], "application_credential": ac})
        }
        Credentials::Token(t) => json!({"methods": ["token"], "token": {"id": t.expose()}}),
    };
    let mut auth = json!({"identity": identity});
    if let Scope::Project {
        id,
        name,
        domain_id,
        domain_name,
    } = &c.scope
    {
        let mut p = json!({});
        match (id, name) {
            (Some(i), _) => p["id"] = json!(i),
            (None, Some(n)) => {
                p["name"] = json!(n);
                p["domain"] = domain(domain_id, domain_name);
            }
            _ => {}
        }
        auth["scope"] = json!({"project": p});
    }
    json!({"auth": auth})
}

/// Authenticates with Keystone v3 and finds the image endpoint.
pub fn authenticate(c: &Cloud, http: &Http) -> Result<Session, AuthError> {
    let url = format!("{}/auth/tokens", v3(&c.auth_url));
    let resp = http
        .post_json(&url, None, &auth_body(c), &[201])
        .map_err(|e| match e {
            HttpError::Status { status: 401, .. } => AuthError::Unauthorized { url: url.clone() },
            e => e.into(),
        })?;
    let token = resp
        .header("x-subject-token")
        .ok_or_else(|| AuthError::Incomplete("Keystone sent no X-Subject-Token".into()))?;
    let body = resp.json;
    let image_url = image_endpoint(&body["token"]["catalog"], &c.interface, c.region.as_deref())
        .ok_or_else(|| AuthError::NoImageEndpoint {
            interface: c.interface.clone(),
            region: c
                .region
                .as_ref()
                .map(|r| format!(", region {r}"))
                .unwrap_or_default(),
        })?;
    Ok(Session {
        token: Secret::new(token),
        image_url,
        project_id: body["token"]["project"]["id"].as_str().map(str::to_string),
        user_id: body["token"]["user"]["id"].as_str().map(str::to_string),
    })
}

/// The image endpoint in a v3 catalog for an interface (and region, if given).
pub fn image_endpoint(catalog: &Value, interface: &str, region: Option<&str>) -> Option<String> {
    let iface = interface.trim_end_matches("URL");
    catalog
        .as_array()?
        .iter()
        .filter(|s| s["type"] == "image")
        .find_map(|s| {
            s["endpoints"].as_array()?.iter().find_map(|e| {
                let region_ok = region.is_none_or(|r| e["region_id"] == r || e["region"] == r);
                (e["interface"] == iface && region_ok)
                    .then(|| {
                        e["url"]
                            .as_str()
                            .map(|u| u.trim_end_matches('/').to_string())
                    })
                    .flatten()
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(y: &str) -> Value {
        serde_norway::from_str(y).unwrap()
    }

    #[test]
    fn password_cloud_with_relative_cacert_and_scope() {
        let c = cloud_from_entry(
            Some("lab"),
            &entry("auth:\n  auth_url: https://keystone:5000\n  username: ci\n  password: pw\n  project_name: images\n  user_domain_name: Default\n  project_domain_name: Default\nregion_name: RegionOne\ncacert: ca.pem\n"),
            Path::new("/etc/openstack"),
        )
        .unwrap();
        assert_eq!(c.tls.cacert, Some(PathBuf::from("/etc/openstack/ca.pem")));
        assert!(c.tls.verify);
        assert_eq!(c.interface, "public");
        let body = auth_body(&c);
        assert_eq!(body["auth"]["identity"]["password"]["user"]["name"], "ci");
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["domain"]["name"],
            "Default"
        );
        assert_eq!(body["auth"]["scope"]["project"]["name"], "images");
        assert!(
            !format!("{c:?}").contains("pw"),
            "Debug never shows the password"
        );
        assert_eq!(v3(&c.auth_url), "https://keystone:5000/v3");
    }

    #[test]
    fn application_credential_is_unscoped_and_checked() {
        let c = cloud_from_entry(
            None,
            &entry("auth_type: v3applicationcredential\nauth:\n  auth_url: http://k/v3\n  application_credential_id: abc\n  application_credential_secret: s3\n"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.scope, Scope::Unscoped);
        let b = auth_body(&c);
        assert_eq!(
            b["auth"]["identity"]["methods"][0],
            "application_credential"
        );
        assert_eq!(b["auth"]["identity"]["application_credential"]["id"], "abc");
        assert!(b["auth"].get("scope").is_none());
        let e = cloud_from_entry(None, &entry("auth_type: v3applicationcredential\nauth:\n  auth_url: http://k\n  application_credential_id: x\n"), Path::new(".")).unwrap_err();
        assert!(e.contains("application_credential_secret"), "{e}");
        let e = cloud_from_entry(
            None,
            &entry("auth:\n  auth_url: http://k\n  username: u\n"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("password"), "{e}");
        let e = cloud_from_entry(
            None,
            &entry("auth_type: saml2\nauth:\n  auth_url: http://k\n"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("saml2"), "{e}");
    }

    #[test]
    fn catalog_lookup_by_interface_and_region() {
        let cat = json!([
            {"type": "identity", "endpoints": [{"interface": "public", "region_id": "R1", "url": "http://k"}]},
            {"type": "image", "endpoints": [
                {"interface": "internal", "region_id": "R1", "url": "http://g-int:9292"},
                {"interface": "public", "region_id": "R2", "url": "http://g2:9292/"},
                {"interface": "public", "region_id": "R1", "url": "http://g1:9292"}
            ]}
        ]);
        assert_eq!(
            image_endpoint(&cat, "public", Some("R1")).unwrap(),
            "http://g1:9292"
        );
        assert_eq!(
            image_endpoint(&cat, "public", Some("R2")).unwrap(),
            "http://g2:9292"
        );
        assert_eq!(
            image_endpoint(&cat, "internalURL", None).unwrap(),
            "http://g-int:9292"
        );
        assert!(image_endpoint(&cat, "admin", None).is_none());
    }
}
