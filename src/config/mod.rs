//! Typed configuration. The TOML is deserialized into plain `Raw*` structs that reject
//! unknown fields, then converted into a `Config` whose values cannot be wrong: durations
//! parsed, principals parsed, profiles cross-checked. Every error names its path.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::access::{AccessProfile, HttpScope, KubeScope, Policy, Principal, SshScope};
use crate::time::parse_duration;

/// The configuration `jitgate serve` uses when given no file.
mod apps;
mod auth;
mod kube;
mod ssh;

use apps::{validate_app_scopes, validate_apps, RawApp, RawAppScope};
pub use apps::{AppConfig, UpstreamTls};

use auth::{validate_auth, validate_oidc, RawAuth, RawOidc};
pub use auth::{AuthConfig, OidcConfig};
use kube::{resource_entry_ok, validate_kube, RawKubeSection, KUBE_VERBS};
pub use kube::{KubeCluster, KubeCredential, KubeTls};
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    max_duration: String,
    requesters: Vec<String>,
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default = "one")]
    approvals_required: u32,
    #[serde(default = "yes")]
    require_reason: bool,
    ssh: Option<RawSsh>,
    kube: Option<RawKube>,
    http: Option<RawHttp>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    #[serde(default)]
    host_names: Vec<String>,
    logins: Vec<String>,
    #[serde(default)]
    port_forwarding: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKube {
    clusters: Vec<String>,
    namespaces: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    verbs: Vec<String>,
    resources: Vec<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    apps: Vec<RawAppScope>,
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
        let profiles = validate_profiles(profiles, &apps, &kube, errors);
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
    ServerConfig {
        listen,
        public_url,
        base_domain,
        data_dir: data_dir.unwrap_or_else(|| "jitgate-data".into()),
        certs_dir: certs_dir.unwrap_or_else(|| "certs".into()),
        token_lifetime,
        request_ttl,
    }
}

fn principals(path: &str, list: &[String], errors: &mut Vec<String>) -> Vec<Principal> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| s.parse().map_err(|e| errors.push(format!("{path}[{i}]: {e}"))).ok())
        .collect()
}

/// Profiles that name hosts must name hosts the inventory has. `"*"` is no name: it would
/// quietly undo the profile's label restriction (with neither, every host is in scope).
fn check_host_names(profiles: &[AccessProfile], ssh: &SshConfig, errors: &mut Vec<String>) {
    for (i, p) in profiles.iter().enumerate() {
        for (j, name) in p.ssh.iter().flat_map(|s| s.host_names.iter()).enumerate() {
            if name == "*" {
                errors.push(format!(
                    "profiles[{i}].ssh.host_names[{j}]: \"*\" is not a host name; leave out hosts and host_names for every host"
                ));
            } else if !ssh.hosts.iter().any(|h| h.name == *name) {
                errors.push(format!(
                    "profiles[{i}].ssh.host_names[{j}]: no host {name:?} in [[ssh.hosts]]"
                ));
            }
        }
    }
}

/// A kube scope names clusters that exist, verbs the API server uses, resources in a form
/// that matches something, and no empty name list (which would read as "any").
fn check_kube_scope(
    at: &str,
    clusters: &[String],
    verbs: &[String],
    resources: &[String],
    names: Option<&[String]>,
    known: &[KubeCluster],
    errors: &mut Vec<String>,
) {
    for (j, c) in clusters.iter().enumerate() {
        if c != "*" && !known.iter().any(|k| k.name == *c) {
            errors.push(format!(
                "{at}.kube.clusters[{j}]: no cluster {c:?} in [[kube.clusters]]"
            ));
        }
    }
    for (j, v) in verbs.iter().enumerate() {
        if v != "*" && !KUBE_VERBS.contains(&v.as_str()) {
            errors.push(format!(
                "{at}.kube.verbs[{j}]: {v:?} is not one of {} (exec, attach, port-forward and proxy are create on their subresource)",
                KUBE_VERBS.join(", ")
            ));
        }
    }
    for (j, r) in resources.iter().enumerate() {
        if !resource_entry_ok(r) {
            errors.push(format!(
                "{at}.kube.resources[{j}]: {r:?} must be like \"pods\", \"pods/log\", \"pods/*\", \"deployments.apps\" or \"*\""
            ));
        }
    }
    if names.is_some_and(<[String]>::is_empty) {
        errors.push(format!("{at}.kube.names: is empty; leave it out to allow any name"));
    }
}

fn non_empty_list(path: &str, list: &[String], errors: &mut Vec<String>) {
    if list.is_empty() {
        errors.push(format!("{path}: must not be empty (use [\"*\"] for any)"));
    }
}

fn validate_profiles(
    raw: Vec<RawProfile>,
    apps: &[AppConfig],
    clusters_config: &[KubeCluster],
    errors: &mut Vec<String>,
) -> Vec<AccessProfile> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let at = format!("profiles[{i}]");
        let RawProfile {
            name,
            description,
            max_duration,
            requesters,
            approvers,
            approvals_required,
            require_reason,
            ssh,
            kube,
            http,
        } = p;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            errors.push(format!("{at}.name: {name:?} must be letters, digits, '-' or '_'"));
        }
        if !seen.insert(name.clone()) {
            errors.push(format!("{at}.name: duplicate profile name {name:?}"));
        }
        let max_duration = parse_duration(&max_duration).unwrap_or_else(|e| {
            errors.push(format!("{at}.max_duration: {e}"));
            Duration::ZERO
        });
        if requesters.is_empty() {
            errors.push(format!(
                "{at}.requesters: is empty, so nobody could ever request {name:?}"
            ));
        }
        let requesters = principals(&format!("{at}.requesters"), &requesters, errors);
        let approvers = principals(&format!("{at}.approvers"), &approvers, errors);
        check_approvers(&at, &requesters, &approvers, approvals_required, errors);
        if ssh.is_none() && kube.is_none() && http.is_none() {
            errors.push(format!("{at}: grants nothing; give it ssh, kube or http"));
        }
        let ssh = ssh.map(|s| {
            non_empty_list(&format!("{at}.ssh.logins"), &s.logins, errors);
            SshScope {
                hosts: s.hosts,
                host_names: s.host_names,
                logins: s.logins,
                port_forwarding: s.port_forwarding,
            }
        });
        let kube = kube.map(|k| {
            let RawKube {
                clusters,
                namespaces,
                groups,
                verbs,
                resources,
                names,
            } = k;
            for (field, list) in [
                ("clusters", &clusters),
                ("namespaces", &namespaces),
                ("verbs", &verbs),
                ("resources", &resources),
            ] {
                non_empty_list(&format!("{at}.kube.{field}"), list, errors);
            }
            check_kube_scope(
                &at,
                &clusters,
                &verbs,
                &resources,
                names.as_deref(),
                clusters_config,
                errors,
            );
            KubeScope {
                clusters,
                namespaces,
                groups,
                verbs,
                resources,
                names: names.unwrap_or_default(),
            }
        });
        let http = http.map(|h| HttpScope {
            apps: validate_app_scopes(&format!("{at}.http.apps"), h.apps, apps, errors),
        });
        out.push(AccessProfile {
            name,
            description,
            max_duration,
            requesters,
            approvers,
            approvals_required,
            require_reason,
            ssh,
            kube,
            http,
        });
    }
    out
}

/// A group may have any number of members, but named users are countable: a profile whose
/// approvers are only users needs at least `approvals_required` of them.
fn check_approvers(
    at: &str,
    requesters: &[Principal],
    approvers: &[Principal],
    required: u32,
    errors: &mut Vec<String>,
) {
    if required == 0 {
        return;
    }
    if approvers.is_empty() {
        errors.push(format!(
            "{at}.approvers: is empty, so approvals_required = {required} can never be met (use approvals_required = 0 to auto-approve)"
        ));
        return;
    }
    let only_users = approvers.iter().all(|p| matches!(p, Principal::User(_)));
    if only_users && (approvers.len() as u64) < u64::from(required) {
        errors.push(format!(
            "{at}.approvals_required: {required} distinct approvers needed but only {} user{} listed",
            approvers.len(),
            if approvers.len() == 1 { " is" } else { "s are" }
        ));
        return;
    }
    // Nobody approves their own request: a requester who is also a listed approver has one
    // approver fewer to draw on.
    for r in requesters {
        let others = approvers.iter().filter(|a| *a != r).count() as u64;
        if only_users && matches!(r, Principal::User(_)) && others < u64::from(required) {
            errors.push(format!(
                "{at}.approvals_required: {required} distinct approvers needed, but a request by {r} can have only {others} (nobody approves their own)"
            ));
        }
    }
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
