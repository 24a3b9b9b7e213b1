//! Typed configuration. The TOML is deserialized into plain `Raw*` structs that reject
//! unknown fields, then converted into a `Config` whose values cannot be wrong: durations
//! parsed, principals parsed, profiles cross-checked. Every error names its path.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::access::{Policy, Principal};
use crate::time::parse_duration;

/// The configuration `jitgate serve` uses when given no file.
mod apps;
mod auth;
mod kube;
mod notify;
mod profiles;
mod ssh;

use apps::{validate_apps, RawApp};
pub use apps::{AppConfig, UpstreamTls};

use auth::{validate_auth, validate_oidc, RawAuth, RawOidc};
pub use auth::{AuthConfig, OidcConfig};
use kube::{validate_kube, RawKubeSection};
pub use kube::{KubeCluster, KubeCredential, KubeTls};
use notify::{validate_notify, RawDelivery, RawSlack, RawTarget};
pub use notify::{webhook_key, Delivery, NotifyConfig, NotifyTarget, SecretBytes, SlackApp, TargetKind, NOTICE_EVENTS};
use profiles::{check_host_names, validate_profiles, RawProfile};
use ssh::{validate_ssh, RawSshSection};
pub use ssh::{HostKeyCheck, SshConfig, SshHost};

pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/jitgate.example.toml");

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub oidc: Vec<OidcConfig>,
    pub ssh: SshConfig,
    pub apps: Vec<AppConfig>,
    pub kube: Vec<KubeCluster>,
    pub notify: NotifyConfig,
    pub policy: Policy,
    /// Where this configuration came from, for messages.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The URL clients use to reach the proxy; tokens name it as their issuer. Defaults to
    /// `https://{listen}` once the listener is bound.
    pub public_url: Option<String>,
    pub base_domain: String,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub token_lifetime: Duration,
    pub request_ttl: Duration,
    /// An HTTPS connection (HTTP/1.1 or HTTP/2) with no request in flight this long is closed.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
}

/// Every problem found in a configuration, each naming its path.
#[derive(Debug)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(f, "{}: {n} error{}", self.source, if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    oidc: Vec<RawOidc>,
    #[serde(default)]
    ssh: RawSshSection,
    #[serde(default)]
    apps: Vec<RawApp>,
    #[serde(default)]
    kube: RawKubeSection,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    profiles: Vec<RawProfile>,
    slack: Option<RawSlack>,
    #[serde(default)]
    notify: Vec<RawTarget>,
    #[serde(default)]
    notifications: RawDelivery,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    public_url: Option<String>,
    base_domain: Option<String>,
    data_dir: Option<PathBuf>,
    certs_dir: Option<PathBuf>,
    token_lifetime: Option<String>,
    request_ttl: Option<String>,
    idle_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

impl Config {
    /// Reads `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        match path {
            None => Config::parse(EMBEDDED_DEFAULT, "embedded default config"),
            Some(p) => {
                let source = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigErrors {
                    source: source.clone(),
                    errors: vec![format!("cannot read the file: {e}")],
                })?;
                Config::parse(&text, &source)
            }
        }
    }

    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source: source.to_owned(),
            errors,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| fail(vec![toml_error(&e)]))?;
        let mut errors = Vec::new();
        let config = Config::validate(raw, source, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }

    fn validate(raw: RawConfig, source: &str, errors: &mut Vec<String>) -> Config {
        let RawConfig {
            server,
            store,
            auth,
            oidc,
            ssh,
            apps,
            kube,
            admins,
            profiles,
            slack,
            notify,
            notifications,
        } = raw;
        let server = validate_server(server, errors);
        let apps = validate_apps(apps, &server.base_domain, server.public_url.as_deref(), errors);
        let url = store
            .url
            .unwrap_or_else(|| format!("sqlite://{}/jitgate.db", server.data_dir.display()));
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            errors.push(format!(
                "store.url: {url:?} is not a store URL (use \"sqlite://PATH\" or \"postgres://USER@HOST/DB\")"
            ));
        }
        let admins = principals("admins", &admins, errors);
        let kube = validate_kube(kube, errors);
        let notify = validate_notify(slack, notify, notifications, errors);
        let profiles = validate_profiles(profiles, &apps, &kube, &notify, errors);
        let auth = validate_auth(auth, errors);
        let oidc = validate_oidc(oidc, errors);
        let ssh = validate_ssh(ssh, errors);
        check_host_names(&profiles, &ssh, errors);
        if !auth.local_users && oidc.is_empty() {
            errors.push(
                "auth.local_users: is false and no [[oidc]] provider is configured, so nobody could log in".into(),
            );
        }
        Config {
            server,
            store: StoreConfig { url },
            auth,
            oidc,
            ssh,
            apps,
            kube,
            notify,
            policy: Policy::new(profiles, admins),
            source: source.to_owned(),
        }
    }

    /// One line for people: what this configuration sets up.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.policy.profiles().iter().map(|p| p.name.as_str()).collect();
        format!(
            "{}: OK: {} profile{} ({}), listen {}, store {}",
            self.source,
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", "),
            self.server.listen,
            redact_url(&self.store.url),
        )
    }
}

/// Hides a password in a store URL (`user:PASSWORD@` or `?password=`) before it reaches a
/// log or a terminal.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match base[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &base[..scheme + 3], &base[at..]),
            None => base.to_owned(),
        },
        _ => base.to_owned(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn toml_error(e: &toml::de::Error) -> String {
    // toml's own message spans several lines with a source excerpt; keep its first line and
    // say where, so the error stays one line.
    let msg = e.message().lines().next().unwrap_or("invalid TOML").to_owned();
    match e.span() {
        Some(span) => format!("invalid TOML at byte {}: {msg}", span.start),
        None => format!("invalid TOML: {msg}"),
    }
}

pub(super) fn duration_field(path: &str, value: Option<&str>, default: Duration, errors: &mut Vec<String>) -> Duration {
    match value {
        None => default,
        Some(v) => parse_duration(v).unwrap_or_else(|e| {
            errors.push(format!("{path}: {e}"));
            default
        }),
    }
}

fn validate_server(raw: RawServer, errors: &mut Vec<String>) -> ServerConfig {
    let RawServer {
        listen,
        public_url,
        base_domain,
        data_dir,
        certs_dir,
        token_lifetime,
        request_ttl,
        idle_timeout,
    } = raw;
    let listen = listen.as_deref().unwrap_or("127.0.0.1:8443");
    let listen = listen.parse().unwrap_or_else(|_| {
        errors.push(format!(
            "server.listen: {listen:?} is not an address (use 127.0.0.1:8443)"
        ));
        SocketAddr::from(([127, 0, 0, 1], 8443))
    });
    if let Some(url) = &public_url {
        if !url.starts_with("https://") || url.ends_with('/') {
            errors.push(format!(
                "server.public_url: {url:?} must be an https:// URL without a trailing slash"
            ));
        }
    }
    // DNS names are case-blind; hosts are compared in lower case everywhere.
    let base_domain = base_domain.unwrap_or_else(|| "localhost".into()).to_ascii_lowercase();
    if base_domain.is_empty() || base_domain.contains(['/', ':', '*', ' ']) {
        errors.push(format!("server.base_domain: {base_domain:?} is not a DNS name"));
    }
    let token_lifetime = duration_field(
        "server.token_lifetime",
        token_lifetime.as_deref(),
        Duration::from_secs(8 * 3600),
        errors,
    );
    if token_lifetime > Duration::from_secs(7 * 86_400) {
        errors.push("server.token_lifetime: longer than 7d; proxy tokens are meant to be short-lived".into());
    }
    let request_ttl = duration_field(
        "server.request_ttl",
        request_ttl.as_deref(),
        Duration::from_secs(86_400),
        errors,
    );
    // nginx's keep-alive default; browsers and kubectl open a new connection when needed.
    let idle_timeout = duration_field(
        "server.idle_timeout",
        idle_timeout.as_deref(),
        Duration::from_secs(75),
        errors,
    );
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&idle_timeout) {
        errors.push(format!(
            "server.idle_timeout: {} is out of range (1s to 1h)",
            humantime::format_duration(idle_timeout)
        ));
    }
    ServerConfig {
        listen,
        public_url,
        base_domain,
        data_dir: data_dir.unwrap_or_else(|| "jitgate-data".into()),
        certs_dir: certs_dir.unwrap_or_else(|| "certs".into()),
        token_lifetime,
        request_ttl,
        idle_timeout,
    }
}

pub(super) fn principals(path: &str, list: &[String], errors: &mut Vec<String>) -> Vec<Principal> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| s.parse().map_err(|e| errors.push(format!("{path}[{i}]: {e}"))).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::load(None).unwrap();
        assert!(c.policy.profile("db-patch").is_some());
        assert_eq!(c.server.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.store.url, "sqlite://jitgate-data/jitgate.db");
    }

    fn errors_of(text: &str) -> Vec<String> {
        Config::parse(text, "t.toml").unwrap_err().errors
    }

    #[test]
    fn the_idle_timeout_stays_within_reason() {
        let errs = errors_of("[server]\nidle_timeout = \"2h\"\n");
        assert_eq!(errs, ["server.idle_timeout: 2h is out of range (1s to 1h)"]);
        let errs = errors_of("[server]\nidle_timeout = \"soon\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("server.idle_timeout: \"soon\" is not a duration"),
            "{errs:?}"
        );
        let fine = Config::parse("[server]\nidle_timeout = \"30s\"\n", "t.toml").unwrap();
        assert_eq!(fine.server.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn every_error_names_its_path() {
        let errs = errors_of(
            r#"
            admins = ["root"]
            [[profiles]]
            name = "a"
            max_duration = "2h"
            requesters = ["group:x"]
            approvers = ["group:y"]
            http = { apps = ["*"] }
            [[profiles]]
            name = "a"
            max_duration = "2x"
            requesters = []
            approvers = ["user:bob"]
            approvals_required = 2
            http = { apps = [] }
            "#,
        );
        let expected = [
            "admins[0]: \"root\" is not a principal (use \"user:NAME\" or \"group:NAME\")",
            "profiles[1].name: duplicate profile name \"a\"",
            "profiles[1].max_duration: \"2x\" is not a duration (use 30m, 2h, 1d)",
            "profiles[1].requesters: is empty, so nobody could ever request \"a\"",
            "profiles[1].approvals_required: 2 distinct approvers needed but only 1 user is listed",
            "profiles[1].http.apps: must not be empty (use [\"*\"] for any)",
        ];
        for e in expected {
            assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    }

    #[test]
    fn apps_and_their_scopes_are_checked() {
        let errs = errors_of(
            r#"
            [server]
            base_domain = "Example.com"
            public_url = "https://access.example.com"
            [[apps]]
            name = "access"
            upstream = "http://127.0.0.1:1"
            [[apps]]
            name = "grafana"
            upstream = "http://127.0.0.1:3000"
            [[apps]]
            name = "Okta"
            upstream = "https://10.0.0.1/admin"
            host = "okta.evil.com"
            [[apps]]
            name = "vault"
            upstream = "https://10.0.0.2"
            audit_sample = 2.0
            [[apps]]
            name = "grafana"
            upstream = "ftp://x"
            ca_file = "ca.pem"
            [[profiles]]
            name = "a"
            max_duration = "1h"
            requesters = ["group:x"]
            approvals_required = 0
            http = { apps = ["grafana", { name = "kibana" }, { name = "grafana", methods = ["get", "FETCH"], paths = ["/d/../admin", "x"] }, { name = "grafana", paths = [] }] }
            "#,
        );
        let expected = [
            "apps[0].host: \"access.example.com\" is the proxy's own host (server.public_url); give the app a host of its own",
            "profiles[0].http.apps[3].paths: is empty; leave it out to allow any, or list what is allowed",
            "apps[2].name: \"Okta\" must be a DNS label: lower-case letters, digits and '-'",
            "apps[2].host: \"okta.evil.com\" must be one label under server.base_domain (\"example.com\"), e.g. \"Okta.example.com\"",
            "apps[2].upstream: \"https://10.0.0.1/admin\" must be only scheme, host and port (requests keep their own path)",
            "apps[3]: an https:// upstream needs ca_file (the CA that signed its certificate) or pin_sha256",
            "apps[3].audit_sample: 2 must be between 0 (no request lines) and 1 (every one)",
            "apps[4].name: duplicate app name \"grafana\"",
            "apps[4].host: \"grafana.example.com\" is already another app's host",
            "apps[4].upstream: \"ftp://x\" must start with http:// or https://",
            "profiles[0].http.apps[1]: no app \"kibana\" in [[apps]]",
            "profiles[0].http.apps[2].methods: \"FETCH\" is not an HTTP method",
            "profiles[0].http.apps[2].paths: \"/d/../admin\" must be a plain path prefix starting with '/' (no '..', '//', '%', '?' or '#')",
            "profiles[0].http.apps[2].paths: \"x\" must be a plain path prefix starting with '/' (no '..', '//', '%', '?' or '#')",
        ];
        for e in expected {
            assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");

        let ok = Config::parse(
            r#"
            [[apps]]
            name = "grafana"
            upstream = "http://127.0.0.1:3000"
            websocket = false
            [[profiles]]
            name = "look"
            max_duration = "1h"
            requesters = ["group:x"]
            approvals_required = 0
            http = { apps = [{ name = "grafana", methods = ["get", "HEAD"], paths = ["/d/"] }] }
            "#,
            "t.toml",
        )
        .unwrap();
        let app = &ok.apps[0];
        assert_eq!(app.host, "grafana.localhost");
        assert!(app.pass_identity_headers && !app.websocket);
        let scope = &ok.policy.profile("look").unwrap().http.as_ref().unwrap().apps[0];
        assert_eq!(scope.methods, ["GET", "HEAD"]);
        assert!(scope.allows("grafana", "GET", "/d/abc"));
        assert!(!scope.allows("grafana", "POST", "/d/abc"));
        assert!(!scope.allows("grafana", "GET", "/admin"));
        assert!(!scope.allows("other", "GET", "/d/abc"));
    }

    #[test]
    fn requesters_cannot_count_as_their_own_approvers() {
        let errs = errors_of(
            r#"
            [[profiles]]
            name = "a"
            max_duration = "1h"
            requesters = ["user:alice"]
            approvers = ["user:alice", "user:bob"]
            approvals_required = 2
            http = { apps = ["*"] }
            "#,
        );
        assert_eq!(
            errs,
            ["profiles[0].approvals_required: 2 distinct approvers needed, but a request by user:alice can have only 1 (nobody approves their own)"]
        );
    }

    #[test]
    fn unknown_fields_and_bad_toml_are_errors() {
        let errs = errors_of("[server]\nlisten_on = \"x\"\n");
        assert!(errs[0].contains("unknown field `listen_on`"), "{errs:?}");
        let errs = errors_of("[server\n");
        assert!(errs[0].starts_with("invalid TOML at byte"), "{errs:?}");
        let errs = errors_of("[store]\nurl = \"mysql://x\"\n");
        assert!(errs[0].starts_with("store.url:"), "{errs:?}");
    }

    #[test]
    fn store_passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=s3cret"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
    }
}
