//! The one place that speaks HTTP: to OpenStack (Keystone, Glance) and for base image
//! downloads. TLS (custom CA bundle, client certificate, `verify: false` only when asked),
//! timeouts, retries with backoff for connection errors and 5xx, and status errors that never
//! carry a request body (which may hold a password).

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, NextTimeout, RustlsConnector,
    TcpConnector, Transport,
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub verify: bool,
    /// Where the user sets these: what a TLS error tells them to change.
    pub settings: TlsSettings,
}

/// Where the TLS options of a connection come from, so that an error names the setting to
/// change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsSettings {
    /// OpenStack: `cacert`, `cert` and `key` in clouds.yaml, or OS_CACERT, OS_CERT, OS_KEY.
    #[default]
    CloudsYaml,
    /// The remote cache: AWS_CA_BUNDLE (no client certificate).
    AwsEnv,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{method} {url}: HTTP {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{method} {url}: {message}")]
    Transport {
        method: String,
        url: String,
        message: String,
    },
    /// The server took the connection but did not answer (or stopped reading an upload)
    /// for the configured time. Not retried: the server has the request, and a retry would
    /// only multiply the time the operator allowed.
    #[error("{method} {url}: timed out after {secs} s ({phase})")]
    Timeout {
        method: String,
        url: String,
        secs: u64,
        phase: String,
    },
    #[error("{path}: {message}")]
    Tls { path: PathBuf, message: String },
}

impl HttpError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub json: serde_json::Value,
    /// The body as text (what `json` was parsed from; XML from object storage).
    pub text: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

pub struct Http {
    /// For API calls: each call (connect, request, response) within the timeout.
    agent: ureq::Agent,
    /// For uploads: no limit on the whole transfer, only on a stall (no byte written or
    /// read for the timeout) and on the wait for the answer once the data is sent.
    upload: ureq::Agent,
    /// For downloads: like `upload`, and redirects are followed (mirrors and release hosts
    /// redirect; no token is ever sent on this agent).
    download: ureq::Agent,
    timeout: Duration,
    pub retries: u32,
    settings: TlsSettings,
}

/// What went wrong below HTTP, and whether trying again can help.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Nothing reached the server (refused, unreachable, connect timeout): safe to retry.
    Connect(String),
    /// The connection broke during the exchange (reset, closed): retried unless the request
    /// was a POST, which the server may already have carried out.
    Broken(String),
    /// No progress for the configured time after the server took the connection.
    Timeout(String),
    /// TLS: certificate or protocol trouble, the same on every attempt.
    Tls(String),
    /// Anything else (bad URL, protocol error): not retried.
    Other(String),
}

/// Classifies a ureq error. TLS failures arrive as I/O errors of kind InvalidData whose text
/// comes from rustls (not a direct dependency here, so the text is what is matched).
fn failure(e: &ureq::Error, settings: TlsSettings) -> Failure {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
            Failure::Connect(format!("connect timed out ({e})"))
        }
        ureq::Error::Timeout(t) => Failure::Timeout(
            match t {
                ureq::Timeout::PerRead | ureq::Timeout::PerWrite => "no data moved",
                ureq::Timeout::RecvResponse | ureq::Timeout::SendRequest => "no answer",
                ureq::Timeout::PerCall | ureq::Timeout::Global => "no complete answer",
                _ => return Failure::Timeout(t.to_string()),
            }
            .into(),
        ),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            Failure::Connect(e.to_string())
        }
        ureq::Error::Io(io) => {
            let text = io.to_string();
            match io.kind() {
                K::ConnectionRefused
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::AddrNotAvailable => Failure::Connect(text.to_lowercase()),
                K::TimedOut | K::WouldBlock => Failure::Timeout("no data moved".into()),
                K::InvalidData => Failure::Tls(tls_message(&text, settings)),
                _ => Failure::Broken(text.to_lowercase()),
            }
        }
        ureq::Error::Tls(m) => Failure::Tls(tls_message(m, settings)),
        _ => Failure::Other(e.to_string()),
    }
}

/// A TLS error in words that say what to change, in the terms of where it is set.
fn tls_message(text: &str, settings: TlsSettings) -> String {
    let aws = settings == TlsSettings::AwsEnv;
    let hint = if text.contains("CertificateRequired") {
        if aws {
            "; the server wants a client certificate, which imgbuild does not send to a remote cache"
        } else {
            "; the server wants a client certificate: set `cert` and `key` in clouds.yaml (or OS_CERT and OS_KEY)"
        }
    } else if text.contains("HandshakeFailure") {
        if aws {
            "; the server refused the handshake: it may want a client certificate or share no cipher"
        } else {
            "; the server refused the handshake: it may want a client certificate (`cert` and `key` in clouds.yaml) or share no cipher"
        }
    } else if text.contains("BadCertificate")
        || text.contains("UnknownCA")
        || text.contains("CertificateUnknown")
        || text.contains("DecryptError")
    {
        "; the server refused the client certificate (`cert`/`key`): not signed by a CA it trusts, or the key does not match"
    } else if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        if aws {
            "; the server's certificate is not trusted: set AWS_CA_BUNDLE to the CA bundle that signed it"
        } else {
            "; the server's certificate is not trusted: set `cacert` in clouds.yaml (or OS_CACERT) to the CA bundle that signed it"
        }
    } else if text.contains("NotValidForName") {
        "; the server's certificate is not valid for this host name"
    } else {
        ""
    };
    format!("TLS: {text}{hint}")
}

fn pem(path: &PathBuf) -> Result<Vec<u8>, HttpError> {
    std::fs::read(path).map_err(|e| HttpError::Tls {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// A short, safe account of an error body: OpenStack's JSON message, else the text's start,
/// without markup (Glance puts `<br />` into its JSON messages and answers HTML to clients
/// that do not ask for JSON).
fn message_of(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        for path in [
            &["error", "message"][..],
            &["message"][..],
            &["badRequest", "message"][..],
            &["title"][..],
        ] {
            let mut cur = &v;
            for k in path {
                cur = &cur[*k];
            }
            if let Some(s) = cur.as_str() {
                return plain(s);
            }
        }
        if v.get("versions").is_some() {
            return "the server answered with its list of API versions".into();
        }
    }
    plain(body)
}

/// Text without HTML tags (and without an HTML head), whitespace collapsed, at most 300 chars.
fn plain(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let body = match (lower.find("<head"), lower.find("</head>")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &text[..a], &text[b + 7..]),
        _ => text.to_string(),
    };
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    let t = out.split_whitespace().collect::<Vec<_>>().join(" ");
    t.chars().take(300).collect()
}

impl Http {
    pub fn new(tls: &TlsOptions, timeout: Duration) -> Result<Http, HttpError> {
        let mut b = TlsConfig::builder();
        if let Some(ca) = &tls.cacert {
            let text = pem(ca)?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&text)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(HttpError::Tls {
                    path: ca.clone(),
                    message: "no PEM certificate in the CA bundle".into(),
                });
            }
            b = b.root_certs(RootCerts::new_with_certs(&certs));
        }
        if let Some(cert) = &tls.cert {
            let text = pem(cert)?;
            let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&text)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            let key_path = tls.key.clone().unwrap_or_else(|| cert.clone());
            let key = PrivateKey::from_pem(&pem(&key_path)?).map_err(|e| HttpError::Tls {
                path: key_path.clone(),
                message: e.to_string(),
            })?;
            b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        if !tls.verify {
            tracing::warn!("TLS certificate verification is off (verify: false / OS_INSECURE)");
            b = b.disable_verification(true);
        }
        let tls_config = b.build();
        let connect = Some(timeout.min(Duration::from_secs(15)));
        let agent = ureq::Agent::config_builder()
            .tls_config(tls_config.clone())
            .http_status_as_error(false)
            // A redirect is shown as what it is (an X-Auth-Token never follows one elsewhere).
            .max_redirects(0)
            .timeout_connect(connect)
            .timeout_per_call(Some(timeout))
            .build()
            .new_agent();
        let download = ureq::Agent::config_builder()
            .tls_config(tls_config.clone())
            .http_status_as_error(false)
            .max_redirects(10)
            .timeout_connect(connect)
            .timeout_per_read(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .build()
            .new_agent();
        let upload_config = ureq::Agent::config_builder()
            .tls_config(tls_config)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(connect)
            .timeout_per_read(Some(timeout))
            .timeout_per_write(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .build();
        // ureq's default chain (CONNECT proxy, TCP, rustls) with KeepAnswer between TCP and
        // TLS, so that an answer sent before the whole upload was read stays readable.
        let connector =
            ().chain(ConnectProxyConnector::default())
                .chain(TcpConnector::default())
                .chain(KeepAnswer)
                .chain(RustlsConnector::default());
        let upload = ureq::Agent::with_parts(
            upload_config,
            connector,
            ureq::unversioned::resolver::DefaultResolver::default(),
        );
        Ok(Http {
            agent,
            upload,
            download,
            timeout,
            retries: 4,
            settings: tls.settings,
        })
    }

    /// After failed attempt number `attempt` with a transient `err`: gives up (the error says
    /// how often it was tried) or waits 0.5, 1, 2, 4 s before the next attempt.
    fn back_off(&self, attempt: u32, err: HttpError, what: &str) -> Result<(), HttpError> {
        if attempt > self.retries {
            return Err(gave_up(err, attempt));
        }
        let wait = Duration::from_millis(500 * 2u64.pow(attempt - 1));
        tracing::warn!("{err}; retrying{what} in {:.1} s", wait.as_secs_f64());
        std::thread::sleep(wait);
        Ok(())
    }

    /// The error for a failed exchange, and whether to try again.
    fn transport(&self, method: &str, url: &str, e: &ureq::Error) -> (HttpError, bool) {
        let f = failure(e, self.settings);
        tracing::debug!(target: "exec", "{method} {}: {e:?} -> {f:?}", loggable(url));
        let (message, retry) = match f {
            Failure::Timeout(phase) => {
                return (
                    HttpError::Timeout {
                        method: method.into(),
                        url: loggable(url).into_owned(),
                        secs: self.timeout.as_secs(),
                        phase,
                    },
                    false,
                )
            }
            Failure::Connect(m) => (m, true),
            Failure::Broken(m) => (m, method != "POST"),
            Failure::Tls(m) | Failure::Other(m) => (m, false),
        };
        (
            HttpError::Transport {
                method: method.into(),
                url: loggable(url).into_owned(),
                message,
            },
            retry,
        )
    }

    fn run(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
        ok: &[u16],
    ) -> Result<Response, HttpError> {
        self.run_with(method, url, token, &[], body, ok)
    }

    /// A GET with the caller's own headers (an `Accept` of theirs replaces the JSON one) and
    /// no OpenStack token: for other APIs, such as container registries.
    pub fn get_with(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        ok: &[u16],
    ) -> Result<Response, HttpError> {
        self.run_with("GET", url, None, headers, None, ok)
    }

    /// A request with the caller's headers and body and no OpenStack token: object storage's
    /// presigned URLs (the answer's text is in [`Response::text`]).
    pub fn send_raw(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
        ok: &[u16],
    ) -> Result<Response, HttpError> {
        let mut h: Vec<(&str, &str)> = vec![("Accept", "*/*")];
        h.extend_from_slice(headers);
        self.run_with(method, url, None, &h, body, ok)
    }

    fn run_with(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
        ok: &[u16],
    ) -> Result<Response, HttpError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            tracing::debug!(target: "exec", "{method} {}", loggable(url));
            let mut req = ureq::http::Request::builder()
                .method(method)
                .uri(url)
                .header(
                    "User-Agent",
                    concat!("imgbuild/", env!("CARGO_PKG_VERSION")),
                );
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
            {
                req = req.header("Accept", "application/json");
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(t) = token {
                req = req.header("X-Auth-Token", t);
            }
            let result = match body {
                Some((ct, data)) => self.agent.run(
                    req.header("Content-Type", ct)
                        .body(data.to_vec())
                        .expect("request"),
                ),
                None => self.agent.run(req.body(()).expect("request")),
            };
            let transient = match result {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect();
                    let location = resp
                        .headers()
                        .get("location")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let text = resp.into_body().read_to_string().unwrap_or_default();
                    if ok.contains(&status) {
                        let json = if text.trim().is_empty() {
                            serde_json::Value::Null
                        } else {
                            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
                        };
                        return Ok(Response {
                            status,
                            headers,
                            json,
                            text,
                        });
                    }
                    let err = HttpError::Status {
                        method: method.into(),
                        url: loggable(url).into_owned(),
                        status,
                        message: match location {
                            Some(l) if (300..400).contains(&status) => format!("redirects to {l}"),
                            _ => message_of(&text),
                        },
                    };
                    if status < 500 {
                        return Err(err);
                    }
                    err
                }
                Err(e) => match self.transport(method, url, &e) {
                    (err, true) => err,
                    (err, false) => return Err(err),
                },
            };
            self.back_off(attempt, transient, "")?;
        }
    }

    /// GET of a file to download: its body as a reader and its length if the server said.
    /// Connection errors and 5xx are retried like API calls; a stall of the timeout ends it.
    pub fn download(
        &self,
        url: &str,
    ) -> Result<(Box<dyn std::io::Read + Send>, Option<u64>), HttpError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            tracing::debug!(target: "exec", "GET {}", loggable(url));
            let req = ureq::http::Request::builder()
                .method("GET")
                .uri(url)
                .header(
                    "User-Agent",
                    concat!("imgbuild/", env!("CARGO_PKG_VERSION")),
                )
                .body(())
                .map_err(|e| HttpError::Transport {
                    method: "GET".into(),
                    url: loggable(url).into_owned(),
                    message: e.to_string(),
                })?;
            let transient = match self.download.run(req) {
                Ok(resp) if resp.status().is_success() => {
                    let len = resp
                        .headers()
                        .get("content-length")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    return Ok((Box::new(resp.into_body().into_reader()), len));
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let err = HttpError::Status {
                        method: "GET".into(),
                        url: loggable(url).into_owned(),
                        status,
                        message: resp
                            .status()
                            .canonical_reason()
                            .unwrap_or_default()
                            .to_string(),
                    };
                    if status < 500 {
                        return Err(err);
                    }
                    err
                }
                Err(e) => match self.transport("GET", url, &e) {
                    (err, true) => err,
                    (err, false) => return Err(err),
                },
            };
            self.back_off(attempt, transient, "")?;
        }
    }

    pub fn get(&self, url: &str, token: Option<&str>, ok: &[u16]) -> Result<Response, HttpError> {
        self.run("GET", url, token, None, ok)
    }

    pub fn post_json_ok(
        &self,
        url: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<Response, HttpError> {
        self.post_json(url, Some(token), body, &[200, 201, 202, 204])
    }

    pub fn post_json(
        &self,
        url: &str,
        token: Option<&str>,
        body: &serde_json::Value,
        ok: &[u16],
    ) -> Result<Response, HttpError> {
        let data = serde_json::to_vec(body).expect("json");
        self.run("POST", url, token, Some(("application/json", &data)), ok)
    }

    /// PATCH with a JSON patch (Glance's `application/openstack-images-v2.1-json-patch`).
    pub fn patch(
        &self,
        url: &str,
        token: &str,
        ops: &serde_json::Value,
        ok: &[u16],
    ) -> Result<Response, HttpError> {
        let data = serde_json::to_vec(ops).expect("json");
        self.run(
            "PATCH",
            url,
            Some(token),
            Some(("application/openstack-images-v2.1-json-patch", &data)),
            ok,
        )
    }

    /// PUT a file as `application/octet-stream`, streamed (never read into memory), with
    /// progress as bytes sent of the total. Retried from the start on connection errors/5xx.
    pub fn put_file(
        &self,
        url: &str,
        token: &str,
        path: &std::path::Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), HttpError> {
        self.put_file_as(url, token, path, "application/octet-stream", progress)
    }

    /// PUT a file with a content type (Glance's stage wants `application/octet-stream` too).
    pub fn put_file_as(
        &self,
        url: &str,
        token: &str,
        path: &std::path::Path,
        content_type: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), HttpError> {
        let io_err = |e: std::io::Error| HttpError::Transport {
            method: "PUT".into(),
            url: loggable(url).into_owned(),
            message: format!("{}: {e}", path.display()),
        };
        let total = std::fs::metadata(path).map_err(io_err)?.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            tracing::debug!(target: "exec", "PUT {} < {}", loggable(url), path.display());
            PEER_CLOSED.with(|c| c.set(false));
            let file = std::fs::File::open(path).map_err(io_err)?;
            let mut reader = Counting {
                inner: file,
                done: 0,
                total,
                progress: &mut *progress,
            };
            let result = self
                .upload
                .put(url)
                .header("Accept", "application/json")
                .header(
                    "User-Agent",
                    concat!("imgbuild/", env!("CARGO_PKG_VERSION")),
                )
                .header("X-Auth-Token", token)
                .header("Content-Type", content_type)
                .send(ureq::SendBody::from_reader(&mut reader));
            let err = match result {
                Ok(resp) if resp.status().as_u16() == 204 => return Ok(()),
                Ok(resp) => match put_failed(url, resp) {
                    (e, true) => e,
                    (e, false) => return Err(e),
                },
                Err(e) => match self.transport("PUT", url, &e) {
                    (err, true) => err,
                    (err, false) => return Err(err),
                },
            };
            self.back_off(attempt, err, " the upload")?;
        }
    }

    /// PUT `len` bytes of `path` from `offset` (streamed), no token: an object or a part of a
    /// multipart upload to a presigned URL. Returns the answer's ETag. Retried from the start
    /// of the range on connection errors and 5xx.
    pub fn put_file_part(
        &self,
        url: &str,
        path: &std::path::Path,
        offset: u64,
        len: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Option<String>, HttpError> {
        use std::io::{Read, Seek, SeekFrom};
        let io_err = |e: std::io::Error| HttpError::Transport {
            method: "PUT".into(),
            url: loggable(url).into_owned(),
            message: format!("{}: {e}", path.display()),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            tracing::debug!(target: "exec", "PUT {} < {} [{offset}+{len}]", loggable(url), path.display());
            PEER_CLOSED.with(|c| c.set(false));
            let mut file = std::fs::File::open(path).map_err(io_err)?;
            file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
            let mut reader = Counting {
                inner: file.take(len),
                done: 0,
                total: len,
                progress: &mut *progress,
            };
            let result = self
                .upload
                .put(url)
                .header(
                    "User-Agent",
                    concat!("imgbuild/", env!("CARGO_PKG_VERSION")),
                )
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", &len.to_string())
                .send(ureq::SendBody::from_reader(&mut reader));
            let err = match result {
                Ok(resp) if resp.status().is_success() => {
                    return Ok(resp
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string))
                }
                Ok(resp) => match put_failed(url, resp) {
                    (e, true) => e,
                    (e, false) => return Err(e),
                },
                Err(e) => match self.transport("PUT", url, &e) {
                    (err, true) => err,
                    (err, false) => return Err(err),
                },
            };
            self.back_off(attempt, err, " the upload")?;
        }
    }

    pub fn delete(
        &self,
        url: &str,
        token: Option<&str>,
        ok: &[u16],
    ) -> Result<Response, HttpError> {
        self.run("DELETE", url, token, None, ok)
    }
}

thread_local! {
    /// Set by [`KeepAnswerTransport`] when the server closed the connection during an upload
    /// on this thread (ureq runs a request on the caller's thread).
    static PEER_CLOSED: Cell<bool> = const { Cell::new(false) };
}

/// Glance answers some uploads before it has read them (401, 409, 413 at a quota, 500 when
/// its store fails) and closes the connection. ureq writes the whole body before it reads,
/// so the write fails (broken pipe, reset) and the answer, already in the socket's receive
/// buffer, would be lost. This transport sits below TLS: when a write fails that way, it
/// drops the rest of the body and lets the answer be read, so the caller sees Glance's status
/// and message. If there is no answer, the read fails and the error is a broken connection
/// as before. The connection is never reused.
#[derive(Debug)]
struct KeepAnswer;

impl<In: Transport> Connector<In> for KeepAnswer {
    type Out = KeepAnswerTransport<In>;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        Ok(chained.map(|inner| KeepAnswerTransport {
            inner,
            closed: false,
        }))
    }
}

#[derive(Debug)]
struct KeepAnswerTransport<T> {
    inner: T,
    closed: bool,
}

impl<T: Transport> Transport for KeepAnswerTransport<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if self.closed {
            return Ok(());
        }
        match self.inner.transmit_output(amount, timeout) {
            Err(ureq::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::debug!(target: "exec", "the server closed the connection while data was sent ({e}); reading its answer");
                self.closed = true;
                PEER_CLOSED.with(|c| c.set(true));
                Ok(())
            }
            r => r,
        }
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        !self.closed && self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

/// The last error of a request that was tried `attempts` times.
fn gave_up(e: HttpError, attempts: u32) -> HttpError {
    match e {
        HttpError::Transport {
            method,
            url,
            message,
        } => HttpError::Transport {
            method,
            url,
            message: format!("{message} (tried {attempts} times)"),
        },
        HttpError::Status {
            method,
            url,
            status,
            message,
        } => HttpError::Status {
            method,
            url,
            status,
            message: format!("{message} (tried {attempts} times)"),
        },
        e => e,
    }
}

struct Counting<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if PEER_CLOSED.with(Cell::get) {
            // The server stopped reading and has answered: end the body, read the answer.
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(self.done, self.total);
        Ok(n)
    }
}

/// A PUT's answer that is no success: the error, and whether a retry may pass (5xx).
fn put_failed(url: &str, resp: ureq::http::Response<ureq::Body>) -> (HttpError, bool) {
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().unwrap_or_default();
    let e = HttpError::Status {
        method: "PUT".into(),
        url: loggable(url).into_owned(),
        status,
        message: message_of(&text),
    };
    (e, status >= 500)
}

/// `url` as the verbose log shows it: a presigned object-storage URL's query is a credential
/// (valid for an hour), so a query with a signature is cut.
pub fn loggable(url: &str) -> std::borrow::Cow<'_, str> {
    match url.split_once('?') {
        Some((base, q))
            if q.split('&').any(|kv| {
                let k = kv.split('=').next().unwrap_or_default();
                k.eq_ignore_ascii_case("X-Amz-Signature")
                    || k.eq_ignore_ascii_case("X-Amz-Credential")
                    || k.eq_ignore_ascii_case("X-Amz-Security-Token")
                    || k.eq_ignore_ascii_case("Signature")
            }) =>
        {
            format!("{base}?(signed query not shown)").into()
        }
        _ => url.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_the_server_drops_without_an_answer_is_retried() {
        // A server that reads a little of the body and closes without answering: no real
        // service does that on purpose (a crashing one does), so a socket stands in for it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::thread::spawn(move || {
            let mut n = 0;
            for conn in listener.incoming().take(2) {
                let mut conn = conn.unwrap();
                let mut buf = vec![0u8; 64 << 10];
                let _ = std::io::Read::read(&mut conn, &mut buf);
                n += 1;
            }
            n
        });
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, vec![7u8; 16 << 20]).unwrap();
        let mut http = Http::new(&TlsOptions::default(), Duration::from_secs(10)).unwrap();
        http.retries = 1;
        let url = format!("http://{addr}/v2/images/x/file");
        let e = http.put_file(&url, "t", &file, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, HttpError::Transport { .. }), "{e}");
        assert!(e.to_string().contains("(tried 2 times)"), "{e}");
        assert_eq!(accepted.join().unwrap(), 2);
    }

    #[test]
    fn tls_failures_say_what_to_change() {
        let os = TlsSettings::CloudsYaml;
        let m = tls_message("invalid peer certificate: UnknownIssuer", os);
        assert!(m.contains("cacert"), "{m}");
        let m = tls_message("received fatal alert: CertificateRequired", os);
        assert!(
            m.contains("client certificate") && m.contains("`cert`"),
            "{m}"
        );
        let m = tls_message("received fatal alert: UnknownCA", os);
        assert!(m.contains("refused the client certificate"), "{m}");
        // The remote cache's settings are AWS's, and it sends no client certificate.
        let aws = TlsSettings::AwsEnv;
        let m = tls_message("invalid peer certificate: UnknownIssuer", aws);
        assert!(
            m.contains("AWS_CA_BUNDLE") && !m.contains("clouds.yaml"),
            "{m}"
        );
        let m = tls_message("received fatal alert: CertificateRequired", aws);
        assert!(!m.contains("clouds.yaml"), "{m}");
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        use std::io::{Error, ErrorKind};
        let io = |k: ErrorKind, m: &str| ureq::Error::Io(Error::new(k, m.to_string()));
        let os = TlsSettings::CloudsYaml;
        let refused = failure(&io(ErrorKind::ConnectionRefused, "Connection refused"), os);
        assert!(matches!(refused, Failure::Connect(_)), "{refused:?}");
        let reset = failure(
            &io(ErrorKind::ConnectionReset, "Connection reset by peer"),
            os,
        );
        assert!(matches!(reset, Failure::Broken(_)), "{reset:?}");
        let tls = failure(
            &io(
                ErrorKind::InvalidData,
                "invalid peer certificate: UnknownIssuer",
            ),
            os,
        );
        assert!(matches!(tls, Failure::Tls(_)), "{tls:?}");
        let t = failure(&ureq::Error::Timeout(ureq::Timeout::RecvResponse), os);
        assert_eq!(t, Failure::Timeout("no answer".into()));
        let t = failure(&ureq::Error::Timeout(ureq::Timeout::Connect), os);
        assert!(matches!(t, Failure::Connect(_)), "{t:?}");
        let http = Http::new(&TlsOptions::default(), Duration::from_secs(3)).unwrap();
        let (e, retry) = http.transport(
            "POST",
            "http://g/v2/images",
            &io(ErrorKind::ConnectionReset, "reset"),
        );
        assert!(
            !retry,
            "a POST that may have been carried out is not repeated: {e}"
        );
        let (_, retry) = http.transport(
            "GET",
            "http://g/v2/images",
            &io(ErrorKind::ConnectionReset, "reset"),
        );
        assert!(retry);
        let (e, retry) = http.transport(
            "GET",
            "http://g/v2/images",
            &ureq::Error::Timeout(ureq::Timeout::PerCall),
        );
        assert!(!retry);
        assert_eq!(
            e.to_string(),
            "GET http://g/v2/images: timed out after 3 s (no complete answer)"
        );
    }

    #[test]
    fn signed_queries_never_reach_the_log() {
        let u = "http://127.0.0.1:8089/b/layers/k/disk.qcow2?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=test%3Atester%2F20261129&X-Amz-Signature=abc";
        let l = loggable(u);
        assert_eq!(
            l,
            "http://127.0.0.1:8089/b/layers/k/disk.qcow2?(signed query not shown)"
        );
        assert!(!l.contains("tester") && !l.contains("abc"));
        let g = "http://127.0.0.1:9292/v2/images?name=x&limit=10";
        assert_eq!(loggable(g), g);
    }

    #[test]
    fn error_messages_come_from_openstack_json() {
        assert_eq!(
            message_of(
                r#"{"error": {"message": "The request you have made requires authentication.", "code": 401}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            message_of(
                "<html>\n <head>\n  <title>413 Request Entity Too Large</title>\n </head>\n <body>\n  <h1>413 Request Entity Too Large</h1>\n  Image exceeds the storage quota: 42 bytes remaining.<br /><br />\n\n </body>\n</html>"
            ),
            "413 Request Entity Too Large Image exceeds the storage quota: 42 bytes remaining."
        );
        // Glance's JSON faults carry markup in the message.
        assert_eq!(
            message_of(
                r#"{"message": "You are not authorized to complete add_image action.<br /><br />\n\n\n", "code": "403 Forbidden", "title": "Forbidden"}"#
            ),
            "You are not authorized to complete add_image action."
        );
        assert_eq!(
            message_of(r#"{"versions": [{"id": "v2.15", "status": "CURRENT"}]}"#),
            "the server answered with its list of API versions"
        );
    }
}
