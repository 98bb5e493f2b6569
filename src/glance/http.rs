//! The one place that speaks HTTP to OpenStack: TLS (custom CA bundle, client certificate,
//! `verify: false` only when asked), timeouts, retries with backoff for connection errors
//! and 5xx, and status errors that never carry a request body (which may hold a password).

use std::path::PathBuf;
use std::time::Duration;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub verify: bool,
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
    #[error("{path}: {message}")]
    Tls { path: PathBuf, message: String },
}

pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub json: serde_json::Value,
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
    agent: ureq::Agent,
    pub retries: u32,
}

fn pem(path: &PathBuf) -> Result<Vec<u8>, HttpError> {
    std::fs::read(path).map_err(|e| HttpError::Tls {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// A short, safe account of an error body: OpenStack's JSON message, else the text's start.
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
                return s.to_string();
            }
        }
    }
    let t: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
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
        let agent = ureq::Agent::config_builder()
            .tls_config(b.build())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        Ok(Http { agent, retries: 4 })
    }

    fn run(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
        ok: &[u16],
    ) -> Result<Response, HttpError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            tracing::debug!(target: "exec", "{method} {url}");
            let mut req = ureq::http::Request::builder()
                .method(method)
                .uri(url)
                .header("Accept", "application/json")
                .header(
                    "User-Agent",
                    concat!("imgbuild/", env!("CARGO_PKG_VERSION")),
                );
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
                        });
                    }
                    let err = HttpError::Status {
                        method: method.into(),
                        url: url.into(),
                        status,
                        message: message_of(&text),
                    };
                    if status < 500 {
                        return Err(err);
                    }
                    err
                }
                Err(e) => HttpError::Transport {
                    method: method.into(),
                    url: url.into(),
                    message: e.to_string(),
                },
            };
            if attempt > self.retries {
                return Err(transient);
            }
            let wait = Duration::from_millis(500 * 2u64.pow(attempt - 1));
            tracing::warn!("{transient}; retrying in {:.1} s", wait.as_secs_f64());
            std::thread::sleep(wait);
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
            url: url.into(),
            message: format!("{}: {e}", path.display()),
        };
        let total = std::fs::metadata(path).map_err(io_err)?.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            tracing::debug!(target: "exec", "PUT {url} < {}", path.display());
            let file = std::fs::File::open(path).map_err(io_err)?;
            let mut reader = Counting {
                inner: file,
                done: 0,
                total,
                progress: &mut *progress,
            };
            let result = self
                .agent
                .put(url)
                .header("X-Auth-Token", token)
                .header("Content-Type", content_type)
                .send(ureq::SendBody::from_reader(&mut reader));
            let err = match result {
                Ok(resp) if resp.status().as_u16() == 204 => return Ok(()),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.into_body().read_to_string().unwrap_or_default();
                    let e = HttpError::Status {
                        method: "PUT".into(),
                        url: url.into(),
                        status,
                        message: message_of(&text),
                    };
                    if status < 500 {
                        return Err(e);
                    }
                    e
                }
                Err(e) => HttpError::Transport {
                    method: "PUT".into(),
                    url: url.into(),
                    message: e.to_string(),
                },
            };
            if attempt > self.retries {
                return Err(err);
            }
            let wait = Duration::from_millis(500 * 2u64.pow(attempt - 1));
            tracing::warn!("{err}; retrying the upload in {:.1} s", wait.as_secs_f64());
            std::thread::sleep(wait);
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

struct Counting<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(self.done, self.total);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_openstack_json() {
        assert_eq!(
            message_of(
                r#"{"error": {"message": "The request you have made requires authentication.", "code": 401}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            message_of("<html>\n <h1>413</h1>  Too big</html>"),
            "<html> <h1>413</h1> Too big</html>"
        );
    }
}
