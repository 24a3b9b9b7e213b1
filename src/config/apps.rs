//! `[[apps]]`: browser apps (admin consoles) the proxy puts behind grants, each reached at
//! its own host under `server.base_domain` and forwarded to one upstream.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration_field;
use crate::access::AppScope;

#[derive(Clone, Debug)]
pub struct AppConfig {
    pub name: String,
    /// `scheme://host:port` of the upstream, without a path.
    pub upstream: url::Url,
    /// The host browsers use, lower case, without the port: `{name}.{base_domain}` unless set.
    pub host: String,
    /// Whether the upstream is told who is calling (`X-Jitgate-*` and the assertion).
    pub pass_identity_headers: bool,
    pub websocket: bool,
    /// How the proxy checks an `https://` upstream's certificate.
    pub tls: UpstreamTls,
    pub connect_timeout: Duration,
    /// From the request sent to the first byte of the upstream's answer.
    pub response_timeout: Duration,
    /// The share of allowed requests whose request line goes to the audit log (0 to 1).
    pub audit_sample: f64,
}

#[derive(Clone, Debug)]
pub enum UpstreamTls {
    /// A plain `http://` upstream.
    None,
    /// Certificates chaining to the CAs in this PEM file.
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 (hex, of its DER).
    Pinned([u8; 32]),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    name: String,
    upstream: String,
    host: Option<String>,
    #[serde(default = "yes")]
    pass_identity_headers: bool,
    #[serde(default = "yes")]
    websocket: bool,
    ca_file: Option<PathBuf>,
    pin_sha256: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    #[serde(default)]
    audit_sample: f64,
}

fn yes() -> bool {
    true
}

/// A profile's `http.apps` entry: a name, or a name with just-enough scope.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawAppScope {
    Name(String),
    Scoped(RawScoped),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScoped {
    name: String,
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(super) fn validate_apps(
    raw: Vec<RawApp>,
    base_domain: &str,
    public_url: Option<&str>,
    errors: &mut Vec<String>,
) -> Vec<AppConfig> {
    // The proxy's own host serves the console and the logins; no app may take it.
    let own_host = public_url
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    let mut names = HashSet::new();
    let mut hosts = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, a) in raw.into_iter().enumerate() {
        let at = format!("apps[{i}]");
        if !dns_label(&a.name) {
            errors.push(format!(
                "{at}.name: {:?} must be a DNS label: lower-case letters, digits and '-'",
                a.name
            ));
        }
        if !names.insert(a.name.clone()) {
            errors.push(format!("{at}.name: duplicate app name {:?}", a.name));
        }
        let host = a
            .host
            .clone()
            .unwrap_or_else(|| format!("{}.{base_domain}", a.name))
            .to_ascii_lowercase();
        // The proxy's certificate covers `*.{base_domain}`, and logins return only there.
        match host.strip_suffix(base_domain).and_then(|l| l.strip_suffix('.')) {
            Some(label) if dns_label(label) => {}
            _ => errors.push(format!(
                "{at}.host: {host:?} must be one label under server.base_domain ({base_domain:?}), e.g. \"{}.{base_domain}\"",
                a.name
            )),
        }
        if own_host.as_deref() == Some(host.as_str()) {
            errors.push(format!(
                "{at}.host: {host:?} is the proxy's own host (server.public_url); give the app a host of its own"
            ));
        }
        if !hosts.insert(host.clone()) {
            errors.push(format!("{at}.host: {host:?} is already another app's host"));
        }
        let upstream = match url::Url::parse(&a.upstream) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                errors.push(format!(
                    "{at}.upstream: {:?} must start with http:// or https://",
                    a.upstream
                ));
                None
            }
            Ok(u) if u.host_str().is_none() || !u.username().is_empty() || u.password().is_some() => {
                errors.push(format!("{at}.upstream: {:?} needs a host and no user info", a.upstream));
                None
            }
            Ok(u) if u.path() != "/" || u.query().is_some() || u.fragment().is_some() => {
                errors.push(format!(
                    "{at}.upstream: {:?} must be only scheme, host and port (requests keep their own path)",
                    a.upstream
                ));
                None
            }
            Ok(u) => Some(u),
            Err(e) => {
                errors.push(format!("{at}.upstream: {:?} is not a URL: {e}", a.upstream));
                None
            }
        };
        let https = upstream.as_ref().is_some_and(|u| u.scheme() == "https");
        let tls = match (&a.ca_file, &a.pin_sha256) {
            (Some(_), Some(_)) => {
                errors.push(format!("{at}: give ca_file or pin_sha256, not both"));
                UpstreamTls::None
            }
            (Some(f), None) => UpstreamTls::CaFile(f.clone()),
            (None, Some(pin)) => {
                let hex_pin: String = pin.chars().filter(|c| *c != ':').collect();
                match hex::decode(&hex_pin).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                    Some(p) => UpstreamTls::Pinned(p),
                    None => {
                        errors.push(format!(
                            "{at}.pin_sha256: must be the certificate's SHA-256 in hex (64 digits, ':' allowed)"
                        ));
                        UpstreamTls::None
                    }
                }
            }
            (None, None) => UpstreamTls::None,
        };
        if upstream.is_some() {
            match (&tls, https) {
                (UpstreamTls::None, true) => errors.push(format!(
                    "{at}: an https:// upstream needs ca_file (the CA that signed its certificate) or pin_sha256"
                )),
                (UpstreamTls::CaFile(_) | UpstreamTls::Pinned(_), false) => errors.push(format!(
                    "{at}: ca_file and pin_sha256 are for https:// upstreams; {:?} is plain http",
                    a.upstream
                )),
                _ => {}
            }
        }
        let connect_timeout = duration_field(
            &format!("{at}.connect_timeout"),
            a.connect_timeout.as_deref(),
            Duration::from_secs(5),
            errors,
        );
        let response_timeout = duration_field(
            &format!("{at}.response_timeout"),
            a.response_timeout.as_deref(),
            Duration::from_secs(60),
            errors,
        );
        if !(0.0..=1.0).contains(&a.audit_sample) {
            errors.push(format!(
                "{at}.audit_sample: {} must be between 0 (no request lines) and 1 (every one)",
                a.audit_sample
            ));
        }
        if let Some(upstream) = upstream {
            out.push(AppConfig {
                audit_sample: a.audit_sample,
                name: a.name,
                upstream,
                host,
                pass_identity_headers: a.pass_identity_headers,
                websocket: a.websocket,
                tls,
                connect_timeout,
                response_timeout,
            });
        }
    }
    out
}

/// A profile's `http.apps`, checked against the configured apps.
pub(super) fn validate_app_scopes(
    at: &str,
    raw: Vec<RawAppScope>,
    apps: &[AppConfig],
    errors: &mut Vec<String>,
) -> Vec<AppScope> {
    if raw.is_empty() {
        errors.push(format!("{at}: must not be empty (use [\"*\"] for any)"));
    }
    raw.into_iter()
        .enumerate()
        .map(|(j, r)| {
            let at = format!("{at}[{j}]");
            let scope = match r {
                RawAppScope::Name(name) => AppScope::unrestricted(&name),
                RawAppScope::Scoped(RawScoped { name, methods, paths }) => {
                    // An empty list would read as "any": say so instead.
                    for (field, list) in [("methods", &methods), ("paths", &paths)] {
                        if list.as_ref().is_some_and(Vec::is_empty) {
                            errors.push(format!(
                                "{at}.{field}: is empty; leave it out to allow any, or list what is allowed"
                            ));
                        }
                    }
                    let (methods, paths) = (methods.unwrap_or_default(), paths.unwrap_or_default());
                    let methods: Vec<String> = methods.iter().map(|m| m.to_ascii_uppercase()).collect();
                    for m in &methods {
                        if !METHODS.contains(&m.as_str()) {
                            errors.push(format!("{at}.methods: {m:?} is not an HTTP method"));
                        }
                    }
                    for p in &paths {
                        if !p.starts_with('/') || p.contains(['?', '#', '%', '\\']) || p.split('/').any(|s| s == "." || s == "..") || p.contains("//") {
                            errors.push(format!(
                                "{at}.paths: {p:?} must be a plain path prefix starting with '/' (no '..', '//', '%', '?' or '#')"
                            ));
                        }
                    }
                    AppScope { name, methods, paths }
                }
            };
            if scope.name != "*" && !apps.iter().any(|a| a.name == scope.name) {
                errors.push(format!("{at}: no app {:?} in [[apps]]", scope.name));
            }
            scope
        })
        .collect()
}
