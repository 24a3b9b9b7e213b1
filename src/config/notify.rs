//! Where notices of requests and grants go: `[slack]` (the Slack app the proxy acts as),
//! `[[notify]]` targets (Slack channels and signed webhooks) that profiles name, and
//! `[notifications]` (how deliveries are retried, and which private networks webhooks may
//! reach).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use secrecy::SecretString;
use serde::Deserialize;

use super::duration_field;

/// The events a target can receive, as webhook `type`s and audit actions.
pub const NOTICE_EVENTS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.denied",
    "request.cancelled",
    "request.expired",
    "grant.activated",
    "grant.revoked",
    "grant.expired",
    "session.cut",
];

#[derive(Debug, Default)]
pub struct NotifyConfig {
    pub slack: Option<SlackApp>,
    pub targets: Vec<NotifyTarget>,
    pub delivery: Delivery,
}

impl NotifyConfig {
    pub fn target(&self, name: &str) -> Option<&NotifyTarget> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// The Slack app: one bot token and one signing secret serve every channel, the direct
/// messages to approvers and the buttons' answers.
#[derive(Debug)]
pub struct SlackApp {
    /// The Web API's base, ending in `/`.
    pub api_url: url::Url,
    pub bot_token: Option<SecretString>,
    pub signing_secret: Option<SecretString>,
}

#[derive(Debug)]
pub struct NotifyTarget {
    pub name: String,
    pub kind: TargetKind,
    /// The events sent there; all of `NOTICE_EVENTS` when the config names none.
    pub events: Vec<String>,
    /// Receives the events of every profile, not only of those that name it.
    pub all_profiles: bool,
}

impl NotifyTarget {
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

#[derive(Debug)]
pub enum TargetKind {
    Slack {
        /// A channel id (`C0123…`) or `#name`.
        channel: String,
        bot_token: SecretString,
    },
    Webhook {
        url: url::Url,
        /// The key the Standard Webhooks signature is made with: the bytes of the
        /// `whsec_…` secret's base64.
        key: SecretBytes,
    },
}

/// Key bytes that never reach a log through `Debug`.
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes([REDACTED])")
    }
}

#[derive(Debug, Clone)]
pub struct Delivery {
    /// The longest wait between two attempts; waits double from one second up to this.
    pub max_backoff: Duration,
    /// A notice not delivered by then is given up, with an audit event that says so.
    pub give_up_after: Duration,
    /// For one HTTP attempt, connecting included.
    pub timeout: Duration,
    /// Private, loopback and link-local networks that webhooks may reach anyway; every
    /// other such address is refused (an SSRF guard), whatever a URL's name resolves to.
    pub allow_networks: Vec<ipnet::IpNet>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            max_backoff: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            allow_networks: Vec::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlack {
    api_url: Option<String>,
    bot_token_env: Option<String>,
    bot_token_file: Option<PathBuf>,
    signing_secret_env: Option<String>,
    signing_secret_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    name: String,
    kind: String,
    channel: Option<String>,
    bot_token_env: Option<String>,
    bot_token_file: Option<PathBuf>,
    url: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    events: Option<Vec<String>>,
    #[serde(default)]
    all_profiles: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    max_backoff: Option<String>,
    give_up_after: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    allow_networks: Vec<String>,
}

pub(super) fn validate_notify(
    slack: Option<RawSlack>,
    targets: Vec<RawTarget>,
    delivery: RawDelivery,
    errors: &mut Vec<String>,
) -> NotifyConfig {
    let slack = slack.map(|s| validate_slack(s, errors));
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(targets.len());
    for (i, t) in targets.into_iter().enumerate() {
        let at = format!("notify[{i}]");
        if t.name.is_empty()
            || !t
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(format!("{at}.name: {:?} must be letters, digits, '-' or '_'", t.name));
        }
        if !names.insert(t.name.clone()) {
            errors.push(format!("{at}.name: duplicate target name {:?}", t.name));
        }
        if let Some(target) = validate_target(&at, t, slack.as_ref(), errors) {
            out.push(target);
        }
    }
    NotifyConfig {
        slack,
        targets: out,
        delivery: validate_delivery(delivery, errors),
    }
}

fn validate_slack(s: RawSlack, errors: &mut Vec<String>) -> SlackApp {
    let api_url = s.api_url.as_deref().unwrap_or("https://slack.com/api/");
    let api_url = match url::Url::parse(api_url) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback_host(&u)) => {
            let mut u = u;
            if !u.path().ends_with('/') {
                let path = format!("{}/", u.path());
                u.set_path(&path);
            }
            u
        }
        _ => {
            errors.push(format!(
                "slack.api_url: {api_url:?} must be an https:// URL (http:// only on a loopback address)"
            ));
            url::Url::parse("https://slack.com/api/").expect("a valid URL")
        }
    };
    // Both are optional here: targets may bring their own token, and only approving in
    // chat needs the signing secret (the profiles that ask for it are checked for it).
    let optional = |field: &str, env: Option<String>, file: Option<PathBuf>, errors: &mut Vec<String>| {
        if env.is_none() && file.is_none() {
            None
        } else {
            secret("slack", field, env, file, errors)
        }
    };
    SlackApp {
        api_url,
        bot_token: optional("bot_token", s.bot_token_env, s.bot_token_file, errors),
        signing_secret: optional("signing_secret", s.signing_secret_env, s.signing_secret_file, errors),
    }
}

fn validate_target(at: &str, t: RawTarget, slack: Option<&SlackApp>, errors: &mut Vec<String>) -> Option<NotifyTarget> {
    let RawTarget {
        name,
        kind,
        channel,
        bot_token_env,
        bot_token_file,
        url,
        secret_env,
        secret_file,
        events,
        all_profiles,
    } = t;
    let events = match events {
        None => NOTICE_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
        Some(list) => {
            for (j, e) in list.iter().enumerate() {
                if !NOTICE_EVENTS.contains(&e.as_str()) {
                    errors.push(format!(
                        "{at}.events[{j}]: {e:?} is not an event (use one of {})",
                        NOTICE_EVENTS.join(", ")
                    ));
                }
            }
            if list.is_empty() {
                errors.push(format!("{at}.events: is empty, so nothing would be sent"));
            }
            list
        }
    };
    let misplaced = |fields: &[(&str, bool)], errors: &mut Vec<String>| {
        for (field, set) in fields {
            if *set {
                errors.push(format!("{at}.{field}: is not a setting of a {kind} target"));
            }
        }
    };
    let kind = match kind.as_str() {
        "slack" => {
            misplaced(
                &[
                    ("url", url.is_some()),
                    ("secret_env", secret_env.is_some()),
                    ("secret_file", secret_file.is_some()),
                ],
                errors,
            );
            let channel = channel.unwrap_or_default();
            if channel.is_empty() || channel.contains(char::is_whitespace) {
                errors.push(format!(
                    "{at}.channel: {channel:?} must be a channel id (C0123…) or \"#name\""
                ));
            }
            let own = if bot_token_env.is_some() || bot_token_file.is_some() {
                secret(at, "bot_token", bot_token_env, bot_token_file, errors)
            } else {
                None
            };
            let bot_token = match own.or_else(|| slack.and_then(|s| s.bot_token.clone())) {
                Some(t) => t,
                None => {
                    errors.push(format!(
                        "{at}.bot_token_env: missing; set bot_token_env or bot_token_file here or in [slack]"
                    ));
                    return None;
                }
            };
            TargetKind::Slack { channel, bot_token }
        }
        "webhook" => {
            misplaced(
                &[
                    ("channel", channel.is_some()),
                    ("bot_token_env", bot_token_env.is_some()),
                    ("bot_token_file", bot_token_file.is_some()),
                ],
                errors,
            );
            let url = match url.as_deref().map(url::Url::parse) {
                Some(Ok(u)) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback_host(&u)) => Some(u),
                Some(Ok(u)) if u.scheme() == "http" => {
                    // Only the origin: the rest of a webhook URL often carries a token.
                    errors.push(format!(
                        "{at}.url: {} must be https:// (signed bodies still carry who asked for what; http:// only on a loopback address)",
                        u.origin().ascii_serialization()
                    ));
                    None
                }
                Some(_) => {
                    errors.push(format!("{at}.url: is not an https:// URL"));
                    None
                }
                None => {
                    errors.push(format!("{at}.url: missing"));
                    None
                }
            };
            let key = secret(at, "secret", secret_env, secret_file, errors).and_then(|secret| {
                webhook_key(secrecy::ExposeSecret::expose_secret(&secret))
                    .map_err(|e| errors.push(format!("{at}.secret: {e}")))
                    .ok()
            });
            let (Some(url), Some(key)) = (url, key) else {
                return None;
            };
            TargetKind::Webhook {
                url,
                key: SecretBytes(key),
            }
        }
        other => {
            errors.push(format!(
                "{at}.kind: {other:?} is not a target kind (use \"slack\" or \"webhook\")"
            ));
            return None;
        }
    };
    Some(NotifyTarget {
        name,
        kind,
        events,
        all_profiles,
    })
}

fn validate_delivery(d: RawDelivery, errors: &mut Vec<String>) -> Delivery {
    let base = Delivery::default();
    let max_backoff = duration_field(
        "notifications.max_backoff",
        d.max_backoff.as_deref(),
        base.max_backoff,
        errors,
    );
    let give_up_after = duration_field(
        "notifications.give_up_after",
        d.give_up_after.as_deref(),
        base.give_up_after,
        errors,
    );
    let timeout = duration_field("notifications.timeout", d.timeout.as_deref(), base.timeout, errors);
    if max_backoff < Duration::from_secs(1) {
        errors.push("notifications.max_backoff: must be at least 1s".into());
    }
    if give_up_after < Duration::from_secs(60) {
        errors.push("notifications.give_up_after: must be at least 1m".into());
    }
    // A delivery may take a few calls (a Slack update and its note) within the lease a
    // replica holds on it (two minutes).
    if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(30) {
        errors.push("notifications.timeout: must be between 1s and 30s".into());
    }
    let mut allow_networks = Vec::with_capacity(d.allow_networks.len());
    for (i, n) in d.allow_networks.iter().enumerate() {
        // A bare address allows that one address.
        let parsed = n
            .parse::<ipnet::IpNet>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => allow_networks.push(net.trunc()),
            Err(_) => errors.push(format!(
                "notifications.allow_networks[{i}]: {n:?} is not a network (use \"10.0.0.0/8\" or an address)"
            )),
        }
    }
    Delivery {
        max_backoff,
        give_up_after,
        timeout,
        allow_networks,
    }
}

/// A secret from an environment variable or a file (its trimmed contents); None (with an
/// error) when neither or both are given or the source is empty.
fn secret(
    at: &str,
    field: &str,
    env: Option<String>,
    file: Option<PathBuf>,
    errors: &mut Vec<String>,
) -> Option<SecretString> {
    let value = match (env, file) {
        (Some(var), None) => match std::env::var(&var) {
            Ok(v) => v,
            Err(_) => {
                errors.push(format!("{at}.{field}_env: the environment variable {var} is not set"));
                return None;
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{at}.{field}_file: cannot read {}: {e}", path.display()));
                return None;
            }
        },
        (Some(_), Some(_)) => {
            errors.push(format!("{at}: set {field}_env or {field}_file, not both"));
            return None;
        }
        (None, None) => {
            errors.push(format!(
                "{at}.{field}_env: missing; set {field}_env = \"VAR\" (or {field}_file)"
            ));
            return None;
        }
    };
    let value = value.trim();
    if value.is_empty() {
        errors.push(format!("{at}.{field}: is empty"));
        return None;
    }
    Some(value.to_owned().into())
}

/// The Standard Webhooks secret format: `whsec_` and the base64 of 24 to 64 random bytes.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    let Some(b64) = secret.strip_prefix("whsec_") else {
        return Err("must start with \"whsec_\" (make one with: echo whsec_$(openssl rand -base64 32))".into());
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the part after \"whsec_\" is not base64".to_owned())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "holds {} bytes; use 24 to 64 random bytes (echo whsec_$(openssl rand -base64 32))",
            key.len()
        ));
    }
    Ok(key)
}

fn is_loopback_host(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_secrets_follow_the_standard_format() {
        let ok = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
        assert_eq!(webhook_key(&ok).unwrap(), vec![7u8; 32]);
        assert!(webhook_key("hunter2").unwrap_err().contains("whsec_"));
        assert!(webhook_key("whsec_!!").unwrap_err().contains("base64"));
        let short = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7u8; 8]));
        assert!(webhook_key(&short).unwrap_err().contains("8 bytes"));
    }
}
