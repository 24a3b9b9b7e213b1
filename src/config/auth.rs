//! `[auth]` and `[[oidc]]`: how people log in, checked like the rest of the configuration.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::duration_field;

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Whether `jitgate users add` users may log in (with a password).
    pub local_users: bool,
    /// How long a browser session lasts before the user logs in again.
    pub session_lifetime: Duration,
    /// Whether tokens from an IdP login are renewed (by the CLI, before they expire) after
    /// the proxy has re-checked the user at the IdP with its refresh token.
    pub token_refresh: bool,
}

/// One OpenID Connect provider users log in through.
#[derive(Clone)]
pub struct OidcConfig {
    pub name: String,
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: secrecy::SecretString,
    pub scopes: Vec<String>,
    pub groups_claim: String,
    /// Put before every group this provider asserts, so that with several providers none
    /// can claim another's groups (`partner:` makes its "admins" `group:partner:admins`).
    pub groups_prefix: String,
    pub user_claim: String,
    /// Lower-case domains; empty means any domain.
    pub allowed_email_domains: Vec<String>,
}

impl fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcConfig")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    local_users: Option<bool>,
    session_lifetime: Option<String>,
    token_refresh: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    name: String,
    display_name: Option<String>,
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    client_secret_env: Option<String>,
    scopes: Option<Vec<String>>,
    groups_claim: Option<String>,
    #[serde(default)]
    groups_prefix: String,
    user_claim: Option<String>,
    #[serde(default)]
    allowed_email_domains: Vec<String>,
}

pub(super) fn validate_auth(auth: RawAuth, errors: &mut Vec<String>) -> AuthConfig {
    let auth = AuthConfig {
        local_users: auth.local_users.unwrap_or(true),
        session_lifetime: duration_field(
            "auth.session_lifetime",
            auth.session_lifetime.as_deref(),
            Duration::from_secs(12 * 3600),
            errors,
        ),
        token_refresh: auth.token_refresh.unwrap_or(true),
    };
    if auth.session_lifetime > Duration::from_secs(7 * 86_400) {
        errors.push("auth.session_lifetime: longer than 7d; log people in again at least weekly".into());
    }
    auth
}

pub(super) fn validate_oidc(raw: Vec<RawOidc>, errors: &mut Vec<String>) -> Vec<OidcConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, o) in raw.into_iter().enumerate() {
        let at = format!("oidc[{i}]");
        let RawOidc {
            name,
            display_name,
            issuer,
            client_id,
            client_secret,
            client_secret_env,
            scopes,
            groups_claim,
            groups_prefix,
            user_claim,
            allowed_email_domains,
        } = o;
        if let Some(j) = out.iter().position(|p: &OidcConfig| p.groups_prefix == groups_prefix) {
            errors.push(format!(
                "{at}.groups_prefix: {groups_prefix:?} is also oidc[{j}]'s; with several providers give each its own \
                 (e.g. groups_prefix = \"{name}:\"), so none can assert another's groups"
            ));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            errors.push(format!("{at}.name: {name:?} must be letters, digits, '-' or '_'"));
        }
        if !seen.insert(name.clone()) {
            errors.push(format!("{at}.name: duplicate provider name {name:?}"));
        }
        if name == "local" {
            errors.push(format!("{at}.name: \"local\" names local users; pick another name"));
        }
        if let Err(e) = check_issuer(&issuer) {
            errors.push(format!("{at}.issuer: {e}"));
        }
        if client_id.is_empty() {
            errors.push(format!("{at}.client_id: must not be empty"));
        }
        let secret = match (client_secret, client_secret_env) {
            (Some(s), None) => s,
            (None, Some(var)) => std::env::var(&var).unwrap_or_else(|_| {
                errors.push(format!(
                    "{at}.client_secret_env: the environment variable {var} is not set"
                ));
                String::new()
            }),
            (Some(_), Some(_)) => {
                errors.push(format!("{at}: set client_secret or client_secret_env, not both"));
                String::new()
            }
            (None, None) => {
                errors.push(format!(
                    "{at}.client_secret: missing; set client_secret_env = \"VAR\" (or client_secret)"
                ));
                String::new()
            }
        };
        let scopes = scopes.unwrap_or_else(|| ["openid", "email", "profile"].map(String::from).to_vec());
        if !scopes.iter().any(|s| s == "openid") {
            errors.push(format!("{at}.scopes: must include \"openid\""));
        }
        let mut domains = Vec::with_capacity(allowed_email_domains.len());
        for (j, d) in allowed_email_domains.into_iter().enumerate() {
            let d = d.to_ascii_lowercase();
            if d.is_empty() || d.contains(['@', '/', ':', '*', ' ']) {
                errors.push(format!("{at}.allowed_email_domains[{j}]: {d:?} is not a domain"));
            }
            domains.push(d);
        }
        out.push(OidcConfig {
            display_name: display_name.unwrap_or_else(|| name.clone()),
            name,
            issuer,
            client_id,
            client_secret: secret.into(),
            scopes,
            groups_claim: groups_claim.unwrap_or_else(|| "groups".into()),
            groups_prefix,
            user_claim: user_claim.unwrap_or_else(|| "email".into()),
            allowed_email_domains: domains,
        });
    }
    out
}

/// An issuer is an https URL without query or fragment; plain http only on the loopback
/// interface, where a test or a sidecar IdP runs.
fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = url::Url::parse(issuer).map_err(|e| format!("{issuer:?} is not a URL ({e})"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{issuer:?} must not have a query or fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!("{issuer:?} must be an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn errors_of(text: &str) -> Vec<String> {
        Config::parse(text, "t.toml").unwrap_err().errors
    }

    #[test]
    fn oidc_providers_are_checked() {
        let errs = errors_of(
            r#"
            [auth]
            local_users = false
            [[oidc]]
            name = "corp"
            issuer = "http://idp.example.com"
            client_id = "jitgate"
            scopes = ["email"]
            allowed_email_domains = ["a@example.com"]
            [[oidc]]
            name = "corp"
            issuer = "https://idp.example.com"
            client_id = ""
            client_secret = "s"
            client_secret_env = "X"
            groups_prefix = "partner:"
            [[oidc]]
            name = "local"
            groups_prefix = "partner:"
            issuer = "https://idp.example.com?x=1"
            client_id = "c"
            client_secret_env = "JITGATE_TEST_SURELY_UNSET"
            "#,
        );
        let expected = [
            "oidc[0].issuer: \"http://idp.example.com\" must be an https:// URL",
            "oidc[0].client_secret: missing; set client_secret_env = \"VAR\" (or client_secret)",
            "oidc[0].scopes: must include \"openid\"",
            "oidc[0].allowed_email_domains[0]: \"a@example.com\" is not a domain",
            "oidc[1].name: duplicate provider name \"corp\"",
            "oidc[1].client_id: must not be empty",
            "oidc[1]: set client_secret or client_secret_env, not both",
            "oidc[2].name: \"local\" names local users; pick another name",
            "oidc[2].groups_prefix: \"partner:\" is also oidc[1]'s; with several providers give each its own (e.g. groups_prefix = \"local:\"), so none can assert another's groups",
            "oidc[2].issuer: \"https://idp.example.com?x=1\" must not have a query or fragment",
            "oidc[2].client_secret_env: the environment variable JITGATE_TEST_SURELY_UNSET is not set",
        ];
        for e in expected {
            assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");

        let errs = errors_of("[auth]\nlocal_users = false\n");
        assert_eq!(
            errs,
            ["auth.local_users: is false and no [[oidc]] provider is configured, so nobody could log in"]
        );

        // Plain http is fine on the loopback interface (a test or sidecar IdP).
        let c = Config::parse(
            "[[oidc]]\nname = \"t\"\nissuer = \"http://127.0.0.1:9400\"\nclient_id = \"c\"\nclient_secret = \"hunter2\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.oidc[0].groups_claim, "groups");
        assert_eq!(c.oidc[0].user_claim, "email");
        assert_eq!(c.oidc[0].scopes, ["openid", "email", "profile"]);
        assert!(c.auth.local_users);
        // The secret never reaches a log through Debug.
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
