//! Publishing a built artifact to Glance: the plan (name, format, properties) is pure; the
//! upload creates the image, streams the file, and compares Glance's checksum (md5) and
//! os_hash_value (sha512) with the manifest. Anything that fails after the image was created
//! deletes it, so nothing stays queued or saving. A re-run with the same artifact finds the
//! image by its `imgbuild_sha256` property and uploads nothing.

use super::auth::Session;
use crate::definition::{Arch, Firmware, Resolved, Visibility};
use crate::http::{Http, HttpError};
use crate::pipeline::manifest::Manifest;
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub name: String,
    pub disk_format: String,
    pub container_format: String,
    pub visibility: String,
    pub min_disk: Option<u32>,
    pub min_ram: Option<u32>,
    pub tags: Vec<String>,
    pub properties: IndexMap<String, String>,
}

/// How the data gets into Glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// glance-direct import when /v2/info/import offers it, else the classic upload.
    Auto,
    /// PUT /v2/images/ID/file.
    Upload,
    /// Interoperable image import: stage, then glance-direct; falls back to the classic
    /// upload when the import stalls.
    Import,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Published {
    pub id: String,
    pub name: String,
    pub status: String,
    /// `created` or `unchanged` (the same artifact was already there).
    pub action: String,
    pub checksum: String,
    pub os_hash_algo: String,
    pub os_hash_value: String,
    pub size: u64,
    /// `upload` or `glance-direct`.
    pub method: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{path}: {message}")]
    Local { path: String, message: String },
    #[error("Glance's {what} of image {id} does not match the manifest: expected {expected}, actual {actual}; the image was deleted")]
    Mismatch {
        id: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("image {id} is `{status}` after {secs} s, not active; it was deleted")]
    NotActive {
        id: String,
        status: String,
        secs: u64,
    },
    #[error("Glance failed to create image {id} whole (answered 5xx, then 409 to the retry); it was deleted")]
    HalfCreated { id: String },
    #[error(
        "Glance's import of image {id} into store `{stores}` failed ({message}); it was deleted"
    )]
    ImportFailed {
        id: String,
        stores: String,
        message: String,
    },
}

/// What an HTTP status (or a timeout) means for a publish, in words the operator can act on.
pub fn explain(e: &PublishError) -> Option<&'static str> {
    match e {
        PublishError::Http(HttpError::Status { status, .. }) => Some(match status {
            300 => "wrong image endpoint: its URL has a path Glance does not serve (see `openstack endpoint list --service image`)",
            301..=308 => "the image endpoint redirects: put the URL it redirects to in the catalog",
            401 => "authentication failed or the token expired",
            403 => "not allowed: the user lacks a role or the policy forbids it",
            404 => "not found: wrong image endpoint or the image is gone",
            409 => "conflict: the image is in a state that does not allow this",
            413 => "too large: an image or storage quota of the project is exceeded",
            415 => "Glance rejected the data (disk_format does not match the file)",
            s if *s >= 500 => "Glance failed on its side, and again on every retry",
            _ => return None,
        }),
        PublishError::Http(HttpError::Timeout { .. }) => {
            Some("no progress within --timeout seconds; a slow link or a busy Glance needs a higher --timeout")
        }
        _ => None,
    }
}

/// The one-line account of a failed publish: the error and what it means.
pub fn describe(e: &PublishError) -> String {
    match explain(e) {
        Some(h) => format!("{e} ({h})"),
        None => e.to_string(),
    }
}

fn visibility(v: Visibility) -> &'static str {
    match v {
        Visibility::Public => "public",
        Visibility::Private => "private",
        Visibility::Shared => "shared",
        Visibility::Community => "community",
    }
}

/// The image to create (pure).
pub fn plan(r: &Resolved, m: &Manifest) -> Plan {
    let p = &r.definition.publish;
    let name = p
        .name
        .replace("{image}", &m.image)
        .replace("{version}", &m.version)
        .replace("{arch}", m.arch.as_str());
    let mut props: IndexMap<String, String> = IndexMap::new();
    props.insert(
        "architecture".into(),
        match m.arch {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
        .into(),
    );
    props.insert(
        "hw_firmware_type".into(),
        if r.definition.build.firmware == Firmware::Uefi || m.arch == Arch::Arm64 {
            "uefi"
        } else {
            "bios"
        }
        .into(),
    );
    for (k, v) in &p.properties {
        props.insert(k.clone(), v.clone());
    }
    props.insert("imgbuild_image".into(), m.image.clone());
    props.insert("imgbuild_version".into(), m.version.clone());
    props.insert("imgbuild_sha256".into(), m.digests.sha256.clone());
    if let Some(c) = &m.build.git_commit {
        props.insert("imgbuild_commit".into(), c.clone());
    }
    // What openstacksdk writes, so `openstack image create` and other tools see the same image.
    props.insert(
        "owner_specified.openstack.md5".into(),
        m.digests.md5.clone(),
    );
    props.insert(
        "owner_specified.openstack.sha256".into(),
        m.digests.sha256.clone(),
    );
    props.insert(
        "owner_specified.openstack.object".into(),
        format!("images/{name}"),
    );
    Plan {
        name,
        disk_format: m.artifact.format.clone(),
        container_format: "bare".into(),
        visibility: visibility(p.visibility).into(),
        min_disk: p.min_disk,
        min_ram: p.min_ram,
        tags: p.tags.clone(),
        properties: props,
    }
}

fn published(v: &Value, action: &str) -> Published {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Published {
        id: s("id"),
        name: s("name"),
        status: s("status"),
        action: action.into(),
        checksum: s("checksum"),
        os_hash_algo: s("os_hash_algo"),
        os_hash_value: s("os_hash_value"),
        size: v["size"].as_u64().unwrap_or(0),
        method: String::new(),
    }
}

/// The disk format to upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    /// raw when Glance's default store is Ceph RBD (so Nova clones copy-on-write), else the
    /// artifact's own format.
    Auto,
    Qcow2,
    Raw,
}

/// Is the default store in a `/v2/info/stores/detail` answer Ceph RBD?
pub fn rbd_default(stores_detail: &Value) -> bool {
    stores_detail["stores"].as_array().is_some_and(|stores| {
        stores
            .iter()
            .find(|s| s["default"] == true)
            .or_else(|| (stores.len() == 1).then(|| &stores[0]))
            .is_some_and(|s| s["type"] == "rbd")
    })
}

/// Whether the cloud's default image store is Ceph RBD. The detail call is admin-only by
/// default policy; without it, the answer is no (and qcow2 is uploaded).
pub fn default_store_is_rbd(http: &Http, s: &Session) -> Result<bool, PublishError> {
    let r = http.get(
        &format!("{}/v2/info/stores/detail", s.image_url),
        Some(s.token.expose()),
        &[200, 403, 404],
    )?;
    Ok(r.status == 200 && rbd_default(&r.json))
}

/// Whether a qcow2 artifact goes up as raw: asked for, or the default store is Ceph RBD.
pub fn wants_raw(
    http: &Http,
    s: &Session,
    choice: FormatChoice,
    artifact_format: &str,
) -> Result<bool, PublishError> {
    Ok(artifact_format == "qcow2"
        && match choice {
            FormatChoice::Raw => true,
            FormatChoice::Qcow2 => false,
            FormatChoice::Auto => default_store_is_rbd(http, s)?,
        })
}

/// Does this Glance offer glance-direct import?
pub fn offers_import(http: &Http, s: &Session) -> Result<bool, PublishError> {
    let r = http.get(
        &format!("{}/v2/info/import", s.image_url),
        Some(s.token.expose()),
        &[200, 404],
    )?;
    Ok(r.json["import-methods"]["value"]
        .as_array()
        .is_some_and(|m| m.iter().any(|x| x == "glance-direct")))
}

/// The lock file that one machine's publishes of image `image` to the Glance and project of
/// `s` take (in `cache_root/locks`), held from the look for the artifact through retention:
/// two at once would each find no image, each create one, and each apply retention to a list
/// the other is changing. Publishes from other machines are not seen; see README.
pub fn lock_path(cache_root: &Path, s: &Session, image: &str) -> std::path::PathBuf {
    use sha2::Digest;
    let key = sha2::Sha256::digest(format!(
        "{}\n{}\n{image}",
        s.image_url,
        s.project_id.as_deref().unwrap_or_default()
    ));
    cache_root
        .join("locks")
        .join(format!("publish-{}.lock", &crate::hex(&key)[..32]))
}

/// Active images carrying this artifact's sha256, hidden ones included.
pub fn find_existing(http: &Http, s: &Session, sha256: &str) -> Result<Vec<Value>, PublishError> {
    let mut out = Vec::new();
    for hidden in ["false", "true"] {
        let url = format!(
            "{}/v2/images?imgbuild_sha256={sha256}&os_hidden={hidden}&limit=100",
            s.image_url
        );
        let r = http.get(&url, Some(s.token.expose()), &[200])?;
        for img in r.json["images"].as_array().into_iter().flatten() {
            if img["status"] == "active" && img["imgbuild_sha256"] == sha256 {
                out.push(img.clone());
            }
        }
    }
    Ok(out)
}

/// The answer for an artifact that is already in Glance (an image from [`find_existing`]).
pub fn unchanged(existing: &Value) -> Published {
    published(existing, "unchanged")
}

/// Creates the image and uploads `artifact`; verifies; deletes the image on any failure.
/// Call [`find_existing`] first: this always creates a new image.
#[allow(clippy::too_many_arguments)]
pub fn publish(
    http: &Http,
    s: &Session,
    plan: &Plan,
    m: &Manifest,
    artifact: &Path,
    method: Method,
    timeout: Duration,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Published, PublishError> {
    let import = match method {
        Method::Upload => false,
        Method::Import => true,
        Method::Auto => offers_import(http, s)?,
    };
    if import {
        match create_and(http, s, plan, |id| {
            send_and_verify(http, s, id, m, artifact, true, timeout, progress)
        }) {
            Ok(p) => return Ok(p),
            Err(PublishError::NotActive { id, status, secs }) => {
                tracing::warn!(
                    "import of image {id} stalled in `{status}` after {secs} s (deleted); falling back to the classic upload"
                );
            }
            Err(e @ PublishError::ImportFailed { .. }) => {
                tracing::warn!("{e}; falling back to the classic upload");
            }
            Err(e) => return Err(e),
        }
    }
    create_and(http, s, plan, |id| {
        send_and_verify(http, s, id, m, artifact, false, timeout, progress)
    })
}

/// Creates the image, runs `fill` on its id, and deletes the image if `fill` fails.
fn create_and(
    http: &Http,
    s: &Session,
    plan: &Plan,
    fill: impl FnOnce(&str) -> Result<Published, PublishError>,
) -> Result<Published, PublishError> {
    let token = Some(s.token.expose());
    let mut body = json!({
        "name": plan.name,
        "disk_format": plan.disk_format,
        "container_format": plan.container_format,
        "visibility": plan.visibility,
        "tags": plan.tags,
    });
    if let Some(d) = plan.min_disk {
        body["min_disk"] = json!(d);
    }
    if let Some(r) = plan.min_ram {
        body["min_ram"] = json!(r);
    }
    for (k, v) in &plan.properties {
        body[k] = json!(v);
    }
    // The id is chosen here, so a create that Glance answered with 5xx but made all the same
    // is found: its retry is a 409 for this id, and a failed create deletes it.
    let id = crate::uuid_v4();
    body["id"] = json!(id);
    let url = format!("{}/v2/images/{id}", s.image_url);
    let delete_half_made = || {
        if let Err(e) = delete_image(http, &url, token) {
            tracing::error!("could not delete the half-made image {id}: {e}");
        }
    };
    match http.post_json(&format!("{}/v2/images", s.image_url), token, &body, &[201]) {
        Ok(_) => {}
        Err(e) if e.status() == Some(409) => {
            let made = http.get(&url, token, &[200, 404])?;
            if !made_whole(&made.json, plan) {
                delete_half_made();
                return Err(PublishError::HalfCreated { id });
            }
            tracing::warn!("image {id}: an earlier try of the create made it; using it");
        }
        Err(e) => {
            delete_half_made();
            return Err(e.into());
        }
    }
    let result = fill(&id);
    if result.is_err() {
        delete_half_made();
    }
    result
}

/// Is `image` (Glance's JSON) the whole image an earlier try of the create made for `plan`:
/// queued, with the plan's name and every tag? Glance writes the image, then its tags; a
/// fault between them leaves an image without tags.
fn made_whole(image: &Value, plan: &Plan) -> bool {
    let tags: Vec<&str> = image["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    image["status"] == "queued"
        && image["name"] == plan.name.as_str()
        && plan.tags.iter().all(|t| tags.contains(&t.as_str()))
}

/// Sends `artifact` into image `id`: a PUT to `stage` and a glance-direct import (`import`),
/// or a PUT to `file` (the classic upload); then waits for `active` and verifies.
#[allow(clippy::too_many_arguments)]
fn send_and_verify(
    http: &Http,
    s: &Session,
    id: &str,
    m: &Manifest,
    artifact: &Path,
    import: bool,
    timeout: Duration,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Published, PublishError> {
    let url = format!("{}/v2/images/{id}", s.image_url);
    let token = s.token.expose();
    let target = if import { "stage" } else { "file" };
    data_put(http.put_file(&format!("{url}/{target}"), token, artifact, progress))?;
    if import {
        http.post_json_ok(
            &format!("{url}/import"),
            token,
            &json!({"method": {"name": "glance-direct"}}),
        )?;
    }
    let mut p = wait_and_verify(http, s, id, m, timeout)?;
    p.method = if import { "glance-direct" } else { "upload" }.into();
    Ok(p)
}

/// The outcome of the PUT of the image's data (`file` or `stage`). A 409 means the image has
/// left `queued`: into an image imgbuild has just created, only an earlier try of this PUT
/// can have taken it there, one that Glance finished although the answer that reached
/// imgbuild was a 5xx (a gateway's timeout in front of a Glance still busy with the data,
/// say). Such an upload goes on: what Glance holds is then checked as always (status, size,
/// md5 and sha512 against the manifest), and anything but the artifact fails and is deleted.
fn data_put(r: Result<(), HttpError>) -> Result<(), HttpError> {
    match r {
        Err(e) if e.status() == Some(409) => {
            tracing::warn!(
                "{e}; an earlier try went through, it seems: checking what Glance holds"
            );
            Ok(())
        }
        r => r,
    }
}

fn wait_and_verify(
    http: &Http,
    s: &Session,
    id: &str,
    m: &Manifest,
    timeout: Duration,
) -> Result<Published, PublishError> {
    let url = format!("{}/v2/images/{id}", s.image_url);
    let started = Instant::now();
    let img = loop {
        let r = http.get(&url, Some(s.token.expose()), &[200])?;
        let status = r.json["status"].as_str().unwrap_or_default().to_string();
        if status == "active" {
            break r.json;
        }
        // A failed import task leaves the image `importing` (or `queued`) with the store in
        // os_glance_failed_import and none left in os_glance_importing_to_stores; it would
        // never become active.
        let failed = r.json["os_glance_failed_import"]
            .as_str()
            .unwrap_or_default();
        let pending = r.json["os_glance_importing_to_stores"]
            .as_str()
            .unwrap_or_default();
        if !failed.is_empty() && pending.is_empty() {
            return Err(PublishError::ImportFailed {
                id: id.into(),
                stores: failed.into(),
                message: import_task_message(http, s, id),
            });
        }
        if matches!(status.as_str(), "killed" | "deleted" | "deactivated")
            || started.elapsed() > timeout
        {
            return Err(PublishError::NotActive {
                id: id.into(),
                status,
                secs: started.elapsed().as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let checks = [
        (
            "checksum (md5)",
            m.digests.md5.as_str(),
            img["checksum"].as_str(),
        ),
        (
            "os_hash_value (sha512)",
            m.digests.sha512.as_str(),
            if img["os_hash_algo"] == "sha512" {
                img["os_hash_value"].as_str()
            } else {
                None
            },
        ),
    ];
    for (what, expected, actual) in checks {
        let actual = actual.unwrap_or("(none)");
        if actual != expected {
            return Err(PublishError::Mismatch {
                id: id.into(),
                what: what.into(),
                expected: expected.into(),
                actual: actual.into(),
            });
        }
    }
    if img["size"].as_u64() != Some(m.artifact.size) {
        return Err(PublishError::Mismatch {
            id: id.into(),
            what: "size".into(),
            expected: m.artifact.size.to_string(),
            actual: img["size"].to_string(),
        });
    }
    Ok(published(&img, "created"))
}

/// The message of the image's last failed import task (Glance keeps the cause in its log).
fn import_task_message(http: &Http, s: &Session, id: &str) -> String {
    let url = format!("{}/v2/images/{id}/tasks", s.image_url);
    http.get(&url, Some(s.token.expose()), &[200])
        .ok()
        .and_then(|r| {
            r.json["tasks"]
                .as_array()?
                .iter()
                .find(|t| t["status"] == "failure")
                .and_then(|t| t["message"].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| "see Glance's log".into())
}

/// Deletes the image at `url`; an image that is gone already counts as deleted. Glance
/// deletes in two steps (status `deleted`, then the row) and can answer 5xx between them
/// (sqlite's "database is locked", say); the retry then gets 400 "transition from deleted
/// to deleted" (or 404 once the row is gone). So on a 400 or 409 the image is looked up:
/// 404 or status `deleted` is success, anything else the original error.
fn delete_image(http: &Http, url: &str, token: Option<&str>) -> Result<(), HttpError> {
    let err = match http.delete(url, token, &[204, 404]) {
        Ok(_) => return Ok(()),
        Err(e) if matches!(e.status(), Some(400 | 409)) => e,
        Err(e) => return Err(e),
    };
    match http.get(url, token, &[200, 404]) {
        Ok(r) if r.status == 404 || r.json["status"] == "deleted" => {
            tracing::info!("{url}: already deleted ({err})");
            Ok(())
        }
        _ => Err(err),
    }
}

/// What retention did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Retention {
    pub hidden: Vec<String>,
    pub deleted: Vec<String>,
}

/// Keeps the `keep` newest versions of `image` visible and hides older ones (os_hidden);
/// deletes those beyond the `delete_beyond` newest. Newest by creation time.
pub fn retain(
    http: &Http,
    s: &Session,
    image: &str,
    keep: Option<u32>,
    delete_beyond: Option<u32>,
    dry_run: bool,
) -> Result<Retention, PublishError> {
    let mut all: Vec<Value> = Vec::new();
    for hidden in ["false", "true"] {
        let url = format!(
            "{}/v2/images?imgbuild_image={image}&os_hidden={hidden}&limit=1000",
            s.image_url
        );
        let r = http.get(&url, Some(s.token.expose()), &[200])?;
        all.extend(
            r.json["images"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["imgbuild_image"] == image)
                .cloned(),
        );
    }
    all.sort_by(|a, b| {
        b["created_at"]
            .as_str()
            .cmp(&a["created_at"].as_str())
            .then(b["name"].as_str().cmp(&a["name"].as_str()))
    });
    let mut out = Retention::default();
    let token = s.token.expose();
    for (i, img) in all.iter().enumerate() {
        let id = img["id"].as_str().unwrap_or_default();
        let url = format!("{}/v2/images/{id}", s.image_url);
        if delete_beyond.is_some_and(|d| i >= d as usize) {
            if !dry_run {
                delete_image(http, &url, Some(token))?;
            }
            out.deleted
                .push(img["name"].as_str().unwrap_or(id).to_string());
        } else if keep.is_some_and(|k| i >= k as usize) && img["os_hidden"] != true {
            if !dry_run {
                http.patch(
                    &url,
                    token,
                    &json!([{"op": "replace", "path": "/os_hidden", "value": true}]),
                    &[200],
                )?;
            }
            out.hidden
                .push(img["name"].as_str().unwrap_or(id).to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_are_random_version_4_uuids() {
        let (a, b) = (crate::uuid_v4(), crate::uuid_v4());
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
        assert_eq!(&a[14..15], "4", "{a}");
        assert!("89ab".contains(&a[19..20]), "{a}");
    }

    #[test]
    fn an_image_an_earlier_create_made_is_used_only_when_whole() {
        let plan = Plan {
            name: "k3s-node-r1".into(),
            disk_format: "qcow2".into(),
            container_format: "bare".into(),
            visibility: "private".into(),
            min_disk: None,
            min_ram: None,
            tags: vec!["imgbuild".into(), "k3s".into()],
            properties: IndexMap::new(),
        };
        let whole = json!({"status": "queued", "name": "k3s-node-r1", "tags": ["k3s", "imgbuild"]});
        assert!(made_whole(&whole, &plan));
        let mut no_tags = whole.clone();
        no_tags["tags"] = json!([]);
        assert!(!made_whole(&no_tags, &plan), "tags were not written");
        let mut other = whole.clone();
        other["name"] = json!("someone-else");
        assert!(!made_whole(&other, &plan));
        let mut saving = whole.clone();
        saving["status"] = json!("saving");
        assert!(!made_whole(&saving, &plan));
    }

    #[test]
    fn rbd_is_detected_from_the_default_store() {
        assert!(rbd_default(&json!({"stores": [
            {"id": "fast", "type": "file", "default": false},
            {"id": "ceph", "type": "rbd", "default": true}
        ]})));
        assert!(!rbd_default(&json!({"stores": [
            {"id": "ceph", "type": "rbd"},
            {"id": "fs", "type": "file", "default": true}
        ]})));
        assert!(rbd_default(
            &json!({"stores": [{"id": "ceph", "type": "rbd"}]})
        ));
        assert!(!rbd_default(&json!({})));
    }
}
