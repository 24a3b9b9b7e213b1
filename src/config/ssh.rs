//! `[ssh]` and its inventory, `[[ssh.hosts]]`: the targets the proxy may open SSH
//! connections to, each with the way it verifies that target's host key (pinned, or
//! signed by a host CA: never trust on first use).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use russh::keys::ssh_key::PublicKey;
use serde::Deserialize;

use super::duration_field;

#[derive(Clone, Debug)]
pub struct SshConfig {
    pub listen: SocketAddr,
    /// The longest a per-session certificate lives, whatever the grant's expiry.
    pub session_ttl: Duration,
    /// How long before a grant's expiry an interactive session is warned; zero for never.
    pub expiry_warning: Duration,
    /// Whether terminal recordings keep what the user typed too (passwords included).
    pub record_input: bool,
    /// How long a client may take to authenticate (OpenSSH's LoginGraceTime).
    pub login_grace: Duration,
    pub hosts: Vec<SshHost>,
}

#[derive(Clone, Debug)]
pub struct SshHost {
    pub name: String,
    /// `host:port`, as the proxy dials it.
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub verify: HostKeyCheck,
}

/// How the proxy knows it reached the real target.
#[derive(Clone, Debug)]
pub enum HostKeyCheck {
    /// Exactly this host key.
    Pinned(PublicKey),
    /// A host certificate signed by this CA, naming the host.
    Ca(PublicKey),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSshSection {
    listen: Option<String>,
    session_ttl: Option<String>,
    expiry_warning: Option<String>,
    #[serde(default)]
    record_input: bool,
    login_grace: Option<String>,
    #[serde(default)]
    hosts: Vec<RawHost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    address: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    host_key: Option<String>,
    host_ca: Option<String>,
}

/// A host name as users type it after `ssh`: a DNS-like name.
fn plausible_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !name.starts_with(['-', '.'])
}

pub(super) fn validate_ssh(raw: RawSshSection, errors: &mut Vec<String>) -> SshConfig {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:2222");
    let listen = listen.parse().unwrap_or_else(|_| {
        errors.push(format!("ssh.listen: {listen:?} is not an address (use 127.0.0.1:2222)"));
        SocketAddr::from(([127, 0, 0, 1], 2222))
    });
    let session_ttl = duration_field(
        "ssh.session_ttl",
        raw.session_ttl.as_deref(),
        Duration::from_secs(8 * 3600),
        errors,
    );
    let expiry_warning = duration_field(
        "ssh.expiry_warning",
        raw.expiry_warning.as_deref(),
        Duration::from_secs(5 * 60),
        errors,
    );
    let login_grace = duration_field(
        "ssh.login_grace",
        raw.login_grace.as_deref(),
        Duration::from_secs(30),
        errors,
    );
    if login_grace.is_zero() {
        errors.push("ssh.login_grace: must be longer than 0s".into());
    }
    let mut seen = HashSet::new();
    let mut hosts = Vec::with_capacity(raw.hosts.len());
    for (i, h) in raw.hosts.into_iter().enumerate() {
        let at = format!("ssh.hosts[{i}]");
        let RawHost {
            name,
            address,
            labels,
            host_key,
            host_ca,
        } = h;
        if !plausible_name(&name) {
            errors.push(format!(
                "{at}.name: {name:?} is not a host name (letters, digits, '-', '.', '_')"
            ));
        }
        if !seen.insert(name.clone()) {
            errors.push(format!("{at}.name: duplicate host {name:?}"));
        }
        // HOST, HOST:PORT, or [V6]:PORT; a bare IPv6 address would read as HOST:PORT.
        let host_ok = |h: &str| {
            !h.is_empty() && (h.starts_with('[') && h.ends_with(']') || !h.contains([':', '/', ' ', '[', ']']))
        };
        let address = match address.rsplit_once(':') {
            Some((host, port)) if host_ok(host) && port.parse::<u16>().is_ok_and(|p| p > 0) => address,
            None if host_ok(&address) => format!("{address}:22"),
            _ => {
                errors.push(format!("{at}.address: {address:?} is not HOST or HOST:PORT"));
                address
            }
        };
        let key = |field: &str, text: &str, errors: &mut Vec<String>| match PublicKey::from_openssh(text.trim()) {
            Ok(k) => Some(k),
            Err(e) => {
                errors.push(format!(
                    "{at}.{field}: not an OpenSSH public key line (\"ssh-ed25519 AAAA…\"): {e}"
                ));
                None
            }
        };
        let verify = match (host_key, host_ca) {
            (Some(k), None) => key("host_key", &k, errors).map(HostKeyCheck::Pinned),
            (None, Some(c)) => key("host_ca", &c, errors).map(HostKeyCheck::Ca),
            (Some(_), Some(_)) => {
                errors.push(format!("{at}: set host_key or host_ca, not both"));
                None
            }
            (None, None) => {
                errors.push(format!(
                    "{at}: needs host_key (the target's public host key) or host_ca; the proxy never trusts a host key on first use"
                ));
                None
            }
        };
        if let Some(verify) = verify {
            hosts.push(SshHost {
                name,
                address,
                labels,
                verify,
            });
        }
    }
    SshConfig {
        listen,
        session_ttl,
        expiry_warning,
        record_input: raw.record_input,
        login_grace,
        hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHlQGJBmpb5NLlP9uADEd0lSIrwZuI7G9bxNWuYZLp5l";

    #[test]
    fn hosts_are_checked() {
        let text = format!(
            r#"
            [ssh]
            session_ttl = "1x"
            [[ssh.hosts]]
            name = "db-prod-1"
            address = "10.0.0.5"
            labels = {{ env = "prod", role = "db" }}
            host_key = "{KEY}"
            [[ssh.hosts]]
            name = "db-prod-1"
            address = "10.0.0.6:99999"
            host_key = "ssh-ed25519 nonsense"
            [[ssh.hosts]]
            name = "-bad name"
            address = "h:22"
            [[ssh.hosts]]
            name = "both"
            address = "h:22"
            host_key = "{KEY}"
            host_ca = "{KEY}"
            "#
        );
        let errs = Config::parse(&text, "t.toml").unwrap_err().errors;
        let expected = [
            "ssh.session_ttl: \"1x\" is not a duration (use 30m, 2h, 1d)",
            "ssh.hosts[1].name: duplicate host \"db-prod-1\"",
            "ssh.hosts[1].address: \"10.0.0.6:99999\" is not HOST or HOST:PORT",
            "ssh.hosts[2].name: \"-bad name\" is not a host name (letters, digits, '-', '.', '_')",
            "ssh.hosts[2]: needs host_key (the target's public host key) or host_ca; the proxy never trusts a host key on first use",
            "ssh.hosts[3]: set host_key or host_ca, not both",
        ];
        for e in expected {
            assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
        }
        assert!(
            errs.iter()
                .any(|x| x.starts_with("ssh.hosts[1].host_key: not an OpenSSH public key line")),
            "{errs:#?}"
        );
        assert_eq!(errs.len(), expected.len() + 1, "{errs:#?}");

        // A profile naming a host the inventory lacks.
        let named = format!(
            "[[profiles]]\nname = \"p\"\nmax_duration = \"1h\"\nrequesters = [\"group:dba\"]\napprovals_required = 0\n\
             ssh = {{ host_names = [\"db-prod-1\", \"db-prod-9\"], logins = [\"postgres\"] }}\n\
             [[ssh.hosts]]\nname = \"db-prod-1\"\naddress = \"10.0.0.5\"\nhost_key = \"{KEY}\"\n"
        );
        let errs = Config::parse(&named, "t.toml").unwrap_err().errors;
        assert_eq!(
            errs,
            ["profiles[0].ssh.host_names[1]: no host \"db-prod-9\" in [[ssh.hosts]]"]
        );
        let star = named.replace("\"db-prod-9\"", "\"*\"");
        let errs = Config::parse(&star, "t.toml").unwrap_err().errors;
        assert_eq!(
            errs,
            ["profiles[0].ssh.host_names[1]: \"*\" is not a host name; leave out hosts and host_names for every host"]
        );
        // Addresses: a bare IPv6 address is not HOST:PORT; a bracketed one with a port is.
        for (address, ok) in [
            ("::1", false),
            ("[::1]:22", true),
            ("a b:22", false),
            ("db.example.com", true),
        ] {
            let text = format!("[[ssh.hosts]]\nname = \"h\"\naddress = \"{address}\"\nhost_key = \"{KEY}\"\n");
            assert_eq!(Config::parse(&text, "t.toml").is_ok(), ok, "{address}");
        }

        let ok = format!("[[ssh.hosts]]\nname = \"db-prod-1\"\naddress = \"10.0.0.5\"\nhost_key = \"{KEY}\"\n");
        let c = Config::parse(&ok, "t.toml").unwrap();
        assert_eq!(c.ssh.hosts[0].address, "10.0.0.5:22");
        assert_eq!(c.ssh.listen, "127.0.0.1:2222".parse().unwrap());
    }
}
