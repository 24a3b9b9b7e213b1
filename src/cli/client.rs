//! The client side of the API: the saved session under `$JITGATE_HOME` and the HTTPS
//! calls made with it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::CliError;
use crate::time::Timestamp;

const SESSION_FILE: &str = "session.json";

/// What `jitgate login` keeps so that later commands need no flags.
#[derive(Serialize, Deserialize)]
pub struct Session {
    pub proxy: String,
    /// PEM of the CA that signs the proxy's certificate, when it is not a public one.
    pub ca_pem: Option<String>,
    pub user: String,
    pub groups: Vec<String>,
    pub token: String,
    pub expires_at: Timestamp,
    /// When the token was obtained, to renew it at half its life.
    #[serde(default)]
    pub issued_at: Option<Timestamp>,
    /// Whether the proxy renews this token (IdP logins, after re-checking the user there).
    #[serde(default)]
    pub refreshable: bool,
}

/// Held while a renewal runs; released when dropped.
fn lock_session() -> Result<fs::File, CliError> {
    let dir = home()?;
    let path = dir.join(".session.lock");
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| CliError::Refused(format!("cannot open {}: {e}", path.display())))?;
    file.lock()
        .map_err(|e| CliError::Refused(format!("cannot lock {}: {e}", path.display())))?;
    Ok(file)
}

/// Writes `bytes` to `path` whole, readable by the owner alone, in a folder only the owner
/// may enter. A temporary file of this process's own first: two commands writing at once
/// must not write into one file, and a reader never sees half of it.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let fail = |e: std::io::Error| CliError::Refused(format!("cannot write {}: {e}", path.display()));
    fs::create_dir_all(&dir).map_err(fail)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    fs::rename(&tmp, path).map_err(fail)
}

pub fn home() -> Result<PathBuf, CliError> {
    if let Some(h) = std::env::var_os("JITGATE_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| CliError::Usage("neither JITGATE_HOME nor HOME is set".into()))?;
    Ok(PathBuf::from(home).join(".config").join("jitgate"))
}

impl Session {
    /// The session a login (or a renewal) answer describes.
    pub fn from_login(proxy: &str, ca_pem: Option<String>, resp: &serde_json::Value) -> Result<Session, CliError> {
        Ok(Session {
            proxy: proxy.trim_end_matches('/').to_owned(),
            ca_pem,
            user: resp["user"].as_str().unwrap_or_default().to_owned(),
            groups: serde_json::from_value(resp["groups"].clone()).unwrap_or_default(),
            token: resp["token"].as_str().unwrap_or_default().to_owned(),
            expires_at: resp["expires_at"]
                .as_str()
                .and_then(|s| Timestamp::parse_rfc3339(s).ok())
                .ok_or_else(|| CliError::Refused("the proxy's login answer has no expiry".into()))?,
            issued_at: Some(Timestamp::now()),
            refreshable: resp["refreshable"].as_bool().unwrap_or(false),
        })
    }

    /// Past half its life, a renewable token is renewed before use.
    fn renewal_due(&self, now: Timestamp) -> bool {
        let Some(issued) = self.issued_at else { return false };
        let half = issued.until(self.expires_at) / 2;
        self.refreshable && now >= issued.saturating_add(half) && now < self.expires_at
    }

    pub fn load() -> Result<Session, CliError> {
        let path = home()?.join(SESSION_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CliError::Refused(
                    "not logged in; run `jitgate login --proxy https://HOST:8443` first".into(),
                ))
            }
            Err(e) => return Err(CliError::Refused(format!("cannot read {}: {e}", path.display()))),
        };
        serde_json::from_str(&text).map_err(|e| {
            CliError::Refused(format!(
                "{} is damaged ({e}); run `jitgate login` again",
                path.display()
            ))
        })
    }

    pub fn save(&self) -> Result<PathBuf, CliError> {
        let path = home()?.join(SESSION_FILE);
        let text = serde_json::to_string_pretty(self).expect("session serializes");
        write_private(&path, text.as_bytes())?;
        Ok(path)
    }

    pub fn forget() -> Result<(), CliError> {
        let path = home()?.join(SESSION_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CliError::Refused(format!("cannot remove {}: {e}", path.display()))),
        }
    }
}

/// An HTTPS client that trusts exactly the proxy's CA when one is given. `total` bounds a
/// whole exchange; a stream that lives as long as an SSH session takes none.
pub fn http_client(ca_pem: Option<&str>, total: Option<Duration>) -> Result<reqwest::Client, CliError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("jitgate/", env!("CARGO_PKG_VERSION")));
    if let Some(total) = total {
        builder = builder.timeout(total);
    }
    if let Some(pem) = ca_pem {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| CliError::Usage(format!("the CA certificate is not valid PEM: {e}")))?;
        // Trust exactly the proxy's CA, not every public root besides.
        builder = builder.tls_built_in_root_certs(false).add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| CliError::Refused(format!("cannot set up HTTPS: {e}")))
}

pub struct Api {
    http: reqwest::Client,
    proxy: String,
    token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    reason: String,
}

impl Api {
    pub fn new(proxy: &str, ca_pem: Option<&str>, token: Option<String>) -> Result<Api, CliError> {
        let proxy = proxy.trim_end_matches('/').to_owned();
        if !proxy.starts_with("https://") {
            return Err(CliError::Usage(format!("--proxy {proxy:?} must be an https:// URL")));
        }
        let http = http_client(ca_pem, Some(Duration::from_secs(30)))?;
        Ok(Api { http, proxy, token })
    }

    /// The API with the saved session's token, renewed first when it is past half its life.
    /// Renewals are serialized by a lock file and the session re-read under it, so two
    /// commands started together renew once and neither writes back a revoked token.
    pub async fn from_session() -> Result<(Api, Session), CliError> {
        let s = Session::load()?;
        if !s.renewal_due(Timestamp::now()) {
            let api = Api::new(&s.proxy, s.ca_pem.as_deref(), Some(s.token.clone()))?;
            return Ok((api, s));
        }
        let _lock = lock_session()?;
        let mut s = Session::load()?;
        let api = Api::new(&s.proxy, s.ca_pem.as_deref(), Some(s.token.clone()))?;
        if !s.renewal_due(Timestamp::now()) {
            return Ok((api, s));
        }
        match api
            .post_coded::<serde_json::Value>("/api/v1/login/refresh", serde_json::json!({}))
            .await
        {
            Ok(resp) => {
                let renewed = Session::from_login(&s.proxy, s.ca_pem.clone(), &resp)?;
                renewed.save()?;
                let api = Api::new(&renewed.proxy, renewed.ca_pem.as_deref(), Some(renewed.token.clone()))?;
                // The SSH certificate lives as long as the token: renew it along.
                if let Err(e) = super::ssh::renew_cert(&api).await {
                    eprintln!("jitgate: could not renew the SSH certificate ({e})");
                }
                Ok((api, renewed))
            }
            Err((code, CliError::Refused(why) | CliError::Usage(why))) => {
                // The token still works until it expires; say so and carry on with it.
                eprintln!(
                    "jitgate: could not renew your login ({why}); it ends at {}",
                    s.expires_at
                );
                if code.as_deref() == Some("unauthorized") || code.as_deref() == Some("forbidden") {
                    s.refreshable = false;
                    s.save()?;
                }
                Ok((api, s))
            }
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call_cli(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> Result<T, CliError> {
        self.call_cli(Method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call_cli(Method::DELETE, path, None).await
    }

    /// Revokes this session's token at the proxy. Ok(false) when the proxy already refuses
    /// the token (expired, revoked, user disabled): there is nothing left to revoke.
    pub async fn logout(&self) -> Result<bool, CliError> {
        match self
            .call::<serde_json::Value>(Method::POST, "/api/v1/logout", Some(serde_json::json!({})))
            .await
        {
            Ok(_) => Ok(true),
            Err(Failure {
                status: Some(StatusCode::UNAUTHORIZED),
                ..
            }) => Ok(false),
            Err(f) => Err(f.error),
        }
    }

    /// Like `post`, but a refusal keeps the proxy's error code (device polling needs
    /// `authorization_pending` apart from a real refusal).
    pub async fn post_coded<T: DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, (Option<String>, CliError)> {
        self.call(Method::POST, path, Some(body))
            .await
            .map_err(|f| (f.code, f.error))
    }

    pub fn proxy(&self) -> &str {
        &self.proxy
    }

    async fn call_cli<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, CliError> {
        self.call(method, path, body).await.map_err(|f| f.error)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.proxy);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::local(format!(
                "cannot reach the proxy at {}: {}; is it running, and is the CA right?",
                self.proxy,
                root_cause(&e)
            ))
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::local(format!("reading the proxy's answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| Failure::local(format!("the proxy sent an answer this client does not understand: {e}")));
        }
        let code = serde_json::from_slice::<ErrorBody>(&bytes).ok().map(|b| b.error);
        let reason = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) if status == StatusCode::SERVICE_UNAVAILABLE => {
                format!("{} (try again when the proxy's store is back)", b.reason)
            }
            Ok(b) => {
                tracing::debug!(error = %b.error, "refused");
                b.reason
            }
            Err(_) => format!("the proxy answered {status}"),
        };
        Err(Failure {
            status: Some(status),
            code,
            error: CliError::Refused(reason),
        })
    }
}

/// A failed call, with the HTTP status when the proxy answered at all.
struct Failure {
    status: Option<StatusCode>,
    code: Option<String>,
    error: CliError,
}

impl Failure {
    fn local(why: String) -> Failure {
        Failure {
            status: None,
            code: None,
            error: CliError::Refused(why),
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
