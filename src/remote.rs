//! The remote layer cache: layer cache entries in S3-compatible object storage (Ceph RGW,
//! MinIO, Swift's s3api), shared by every runner of a site. Requests are signed with AWS
//! Signature V4 by rusty-s3 (sans-IO: presigned URLs) and sent by the project's one HTTP
//! client (crate::http).
//!
//! An entry is `PREFIX/KIND/KEY/FILE` for each file of the local entry (KIND `layers`: its
//! disk.qcow2, vars.fd, kernel/*; KIND `bases`: a bootstrapped base's disk.qcow2 and kernel/*), then
//! `PREFIX/KIND/KEY/entry.json` last: the list of files with their
//! sizes and sha256, and the layer's metadata. A reader treats an entry as present only when
//! entry.json exists, so an upload cut half-way is never seen as complete; each file is
//! verified against its sha256 before the entry is used.

use crate::http::{Http, HttpError, TlsOptions};
use rusty_s3::actions::{CreateMultipartUpload, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a presigned URL is valid (one request each, made just before it is sent).
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// Files larger than this go up in parts of this size (S3 wants parts of 5 MiB or more).
pub const PART_SIZE: u64 = 64 << 20;
/// entry.json's format.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("--cache-remote {url}: {message}")]
    Config { url: String, message: String },
    #[error(transparent)]
    Http(HttpError),
    #[error("remote entry {key}: {file} has sha256 {got}, its entry.json says {want}")]
    Corrupt {
        key: String,
        file: String,
        want: String,
        got: String,
    },
    #[error("remote entry {key}: {message}")]
    Bad { key: String, message: String },
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

/// A presigned URL is a credential for an hour: crate::http's errors show it without its
/// signed query (http::loggable).
impl From<HttpError> for RemoteError {
    fn from(e: HttpError) -> RemoteError {
        RemoteError::Http(e)
    }
}

/// What a remote entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A layer cache entry (cache::LayerCache), keyed by the layer's key.
    Layer,
    /// A bootstrapped base disk, keyed by bootstrap::cache_key.
    Base,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Layer => "layers",
            Kind::Base => "bases",
        }
    }
}

/// One file of a remote entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// Relative to the entry (`disk.qcow2`, `kernel/vmlinuz`).
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// `entry.json`: what makes a remote entry complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteEntry {
    pub format: u32,
    pub files: Vec<RemoteFile>,
    /// The layer's metadata as its builder wrote it (cache::LayerMeta).
    pub meta: serde_json::Value,
}

/// Where the remote cache is and how to reach it.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteConfig {
    pub url: String,
    pub endpoint: String,
    pub bucket: String,
    /// Without a trailing slash; may be empty.
    pub prefix: String,
    pub region: String,
    /// (key, secret, session token)
    pub credentials: Option<(String, String, Option<String>)>,
    pub cacert: Option<PathBuf>,
    pub read_only: bool,
}

impl RemoteConfig {
    /// `s3://BUCKET[/PREFIX]` with the usual AWS variables from `env`: the endpoint from
    /// AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (default https://s3.REGION.amazonaws.com),
    /// the region from AWS_REGION or AWS_DEFAULT_REGION (default us-east-1), the keys from
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), else from the
    /// profile AWS_PROFILE (default `default`) of AWS_SHARED_CREDENTIALS_FILE (default
    /// ~/.aws/credentials), a CA bundle from AWS_CA_BUNDLE.
    pub fn parse(
        url: &str,
        read_only: bool,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RemoteConfig, RemoteError> {
        let bad = |message: &str| RemoteError::Config {
            url: url.into(),
            message: message.into(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(bad(
                "the bucket name must be lowercase letters, digits, - and .",
            ));
        }
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(bad(&format!(
                "endpoint {endpoint}: expected http:// or https://"
            )));
        }
        let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(k), Some(s)) => Some((k, s, env("AWS_SESSION_TOKEN"))),
            _ => {
                let file = env("AWS_SHARED_CREDENTIALS_FILE")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws/credentials")));
                let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
                match file.and_then(|f| std::fs::read_to_string(f).ok()) {
                    Some(text) => profile_credentials(&text, &profile),
                    None => None,
                }
            }
        };
        Ok(RemoteConfig {
            url: url.into(),
            endpoint,
            bucket: bucket.into(),
            prefix: prefix.into(),
            region,
            credentials,
            cacert: env("AWS_CA_BUNDLE").map(PathBuf::from),
            read_only,
        })
    }
}

/// The keys of `profile` in an AWS credentials file (INI).
fn profile_credentials(text: &str, profile: &str) -> Option<(String, String, Option<String>)> {
    let mut section = String::new();
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((key?, secret?, token))
}

/// The remote cache of a build run (shared by its parallel builds).
pub struct Remote {
    pub config: RemoteConfig,
    bucket: Bucket,
    credentials: Option<Credentials>,
    http: Http,
    /// Set when the remote failed to answer: the rest of the run builds locally.
    down: AtomicBool,
}

impl Remote {
    pub fn new(config: RemoteConfig, timeout: Duration) -> Result<Remote, RemoteError> {
        let bad = |message: String| RemoteError::Config {
            url: config.url.clone(),
            message,
        };
        let endpoint = config
            .endpoint
            .parse()
            .map_err(|e| bad(format!("endpoint {}: {e}", config.endpoint)))?;
        let bucket = Bucket::new(
            endpoint,
            UrlStyle::Path,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| bad(format!("endpoint {}: {e}", config.endpoint)))?;
        let credentials = config.credentials.as_ref().map(|(k, s, t)| match t {
            Some(t) => Credentials::new_with_token(k.clone(), s.clone(), t.clone()),
            None => Credentials::new(k.clone(), s.clone()),
        });
        let http = Http::new(
            &TlsOptions {
                cacert: config.cacert.clone(),
                cert: None,
                key: None,
                verify: true,
                settings: crate::http::TlsSettings::AwsEnv,
            },
            timeout,
        )?;
        Ok(Remote {
            config,
            bucket,
            credentials,
            http,
            down: AtomicBool::new(false),
        })
    }

    /// Whether the remote answered so far in this run.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Notes that the remote did not answer (the caller warns once and builds locally).
    pub fn mark_down(&self) -> bool {
        !self.down.swap(true, Ordering::Relaxed)
    }

    fn object(&self, kind: Kind, key: &str, file: &str) -> String {
        let kind = kind.as_str();
        if self.config.prefix.is_empty() {
            format!("{kind}/{key}/{file}")
        } else {
            format!("{}/{kind}/{key}/{file}", self.config.prefix)
        }
    }

    /// Whether the remote has a complete entry `key` (its entry.json exists).
    pub fn has(&self, kind: Kind, key: &str) -> Result<bool, RemoteError> {
        let url = self
            .bucket
            .head_object(
                self.credentials.as_ref(),
                &self.object(kind, key, "entry.json"),
            )
            .sign(SIGNED_FOR);
        match self.http.send_raw("HEAD", url.as_str(), &[], None, &[200]) {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The entry of layer `key`, if the remote has a complete one; its files are downloaded
    /// into `into` (relative names kept) and each verified against its sha256.
    pub fn fetch(
        &self,
        kind: Kind,
        key: &str,
        into: &Path,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<Option<RemoteEntry>, RemoteError> {
        let obj = self.object(kind, key, "entry.json");
        let url = self
            .bucket
            .get_object(self.credentials.as_ref(), &obj)
            .sign(SIGNED_FOR);
        let entry = match self
            .http
            .get_with(url.as_str(), &[("Accept", "*/*")], &[200])
        {
            Ok(r) => r.text,
            Err(e) if e.status() == Some(404) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let entry: RemoteEntry = serde_json::from_str(&entry).map_err(|e| RemoteError::Bad {
            key: key.into(),
            message: format!("entry.json: {e}"),
        })?;
        if entry.format != FORMAT {
            return Ok(None);
        }
        for f in &entry.files {
            if f.name.contains("..") || f.name.starts_with('/') {
                return Err(RemoteError::Bad {
                    key: key.into(),
                    message: format!("bad file name {}", f.name),
                });
            }
            let dst = into.join(&f.name);
            if let Some(d) = dst.parent() {
                std::fs::create_dir_all(d).map_err(crate::IoError::at(d))?;
            }
            let url = self
                .bucket
                .get_object(self.credentials.as_ref(), &self.object(kind, key, &f.name))
                .sign(SIGNED_FOR);
            let (mut body, _) = self.http.download(url.as_str())?;
            let mut out = std::fs::File::create(&dst).map_err(crate::IoError::at(&dst))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            loop {
                let n = body.read(&mut buf).map_err(|e| RemoteError::Bad {
                    key: key.into(),
                    message: format!("{}: {e}", f.name),
                })?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                std::io::Write::write_all(&mut out, &buf[..n]).map_err(crate::IoError::at(&dst))?;
                done += n as u64;
                progress(&f.name, done, f.size);
            }
            out.sync_all().map_err(crate::IoError::at(&dst))?;
            let got = crate::hex(&h.finalize());
            if got != f.sha256 || done != f.size {
                return Err(RemoteError::Corrupt {
                    key: key.into(),
                    file: f.name.clone(),
                    want: f.sha256.clone(),
                    got,
                });
            }
        }
        Ok(Some(entry))
    }

    /// Uploads `files` (each a name in the entry and the local file) and then entry.json with
    /// `meta`, which makes the entry visible.
    pub fn upload(
        &self,
        kind: Kind,
        key: &str,
        files: &[(String, PathBuf)],
        meta: serde_json::Value,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<(), RemoteError> {
        let mut listed = Vec::new();
        for (name, path) in files {
            let path = path.as_path();
            let size = std::fs::metadata(path)
                .map_err(crate::IoError::at(path))?
                .len();
            let sha256 = sha256_file(path)?;
            let obj = self.object(kind, key, name);
            if size > PART_SIZE {
                self.put_multipart(&obj, path, size, &mut |d, t| progress(name, d, t))?;
            } else {
                let url = self
                    .bucket
                    .put_object(self.credentials.as_ref(), &obj)
                    .sign(SIGNED_FOR);
                self.http
                    .put_file_part(url.as_str(), path, 0, size, &mut |d, t| {
                        progress(name, d, t)
                    })?;
            }
            listed.push(RemoteFile {
                name: name.clone(),
                size,
                sha256,
            });
        }
        let entry = RemoteEntry {
            format: FORMAT,
            files: listed,
            meta,
        };
        let body = serde_json::to_vec_pretty(&entry).expect("json");
        let url = self
            .bucket
            .put_object(
                self.credentials.as_ref(),
                &self.object(kind, key, "entry.json"),
            )
            .sign(SIGNED_FOR);
        self.http.send_raw(
            "PUT",
            url.as_str(),
            &[],
            Some(("application/json", &body)),
            &[200],
        )?;
        Ok(())
    }

    /// A multipart upload; aborted (its parts freed) if any part fails.
    fn put_multipart(
        &self,
        obj: &str,
        path: &Path,
        size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), RemoteError> {
        let url = self
            .bucket
            .create_multipart_upload(self.credentials.as_ref(), obj)
            .sign(SIGNED_FOR);
        let r = self
            .http
            .send_raw("POST", url.as_str(), &[], None, &[200])?;
        let created =
            CreateMultipartUpload::parse_response(&r.text).map_err(|e| RemoteError::Bad {
                key: obj.into(),
                message: format!("CreateMultipartUpload answer: {e}"),
            })?;
        let id = created.upload_id().to_string();
        let result = (|| -> Result<Vec<String>, RemoteError> {
            let mut etags = Vec::new();
            let mut offset = 0;
            let mut part = 1u16;
            while offset < size {
                let len = PART_SIZE.min(size - offset);
                let url = self
                    .bucket
                    .upload_part(self.credentials.as_ref(), obj, part, &id)
                    .sign(SIGNED_FOR);
                let etag =
                    self.http
                        .put_file_part(url.as_str(), path, offset, len, &mut |d, _| {
                            progress(offset + d, size)
                        })?;
                etags.push(etag.ok_or_else(|| RemoteError::Bad {
                    key: obj.into(),
                    message: format!("part {part}: no ETag in the answer"),
                })?);
                offset += len;
                part += 1;
            }
            Ok(etags)
        })();
        let etags = match result {
            Ok(e) => e,
            Err(e) => {
                let url = self
                    .bucket
                    .abort_multipart_upload(self.credentials.as_ref(), obj, &id)
                    .sign(SIGNED_FOR);
                let _ = self
                    .http
                    .send_raw("DELETE", url.as_str(), &[], None, &[204, 200]);
                return Err(e);
            }
        };
        let action = self.bucket.complete_multipart_upload(
            self.credentials.as_ref(),
            obj,
            &id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = action.body();
        self.http.send_raw(
            "POST",
            url.as_str(),
            &[],
            Some(("application/xml", body.as_bytes())),
            &[200],
        )?;
        Ok(())
    }
}

use std::io::Read;

/// The sha256 of a file, read once.
fn sha256_file(path: &Path) -> Result<String, RemoteError> {
    let mut f = std::fs::File::open(path).map_err(crate::IoError::at(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(crate::IoError::at(path))?;
        if n == 0 {
            return Ok(crate::hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_remote_url_takes_its_endpoint_region_and_keys_from_the_aws_variables() {
        let vars = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:8089"),
            ("AWS_REGION", "lab"),
            ("AWS_ACCESS_KEY_ID", "test:tester"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ];
        let c = RemoteConfig::parse("s3://imgbuild-cache/runners/", false, &env_of(&vars)).unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:8089");
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("imgbuild-cache", "runners")
        );
        assert_eq!(c.region, "lab");
        assert_eq!(
            c.credentials,
            Some(("test:tester".into(), "testing".into(), None))
        );
        let d = RemoteConfig::parse("s3://b", true, &env_of(&[])).unwrap();
        assert_eq!(d.endpoint, "https://s3.us-east-1.amazonaws.com");
        assert_eq!(d.prefix, "");
        assert!(d.read_only && d.credentials.is_none());
        for bad in ["http://x/b", "s3://", "s3://Bad_Bucket/x"] {
            assert!(
                RemoteConfig::parse(bad, false, &env_of(&[])).is_err(),
                "{bad}"
            );
        }
        let e = [("AWS_ENDPOINT_URL", "ftp://x")];
        assert!(RemoteConfig::parse("s3://b", false, &env_of(&e)).is_err());
    }

    #[test]
    fn keys_come_from_the_named_profile_of_a_credentials_file() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[ci]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=T\n";
        assert_eq!(
            profile_credentials(text, "default"),
            Some(("A".into(), "B".into(), None))
        );
        assert_eq!(
            profile_credentials(text, "ci"),
            Some(("C".into(), "D".into(), Some("T".into())))
        );
        assert_eq!(profile_credentials(text, "none"), None);
    }
}
