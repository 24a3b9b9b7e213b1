//! Webhook deliveries signed per the Standard Webhooks scheme, through an HTTP client that
//! cannot be pointed at the proxy's own network: every address a URL resolves to is checked
//! (the SSRF guard), redirects are not followed, and no environment proxy is used (it would
//! resolve names where the guard cannot see).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SendError;
use crate::time::Timestamp;

/// `webhook-signature`: `v1,` and the base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Why the guard refused an address.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// Whether `ip` may be reached: a public address, or one in `allow`.
pub fn permitted(ip: IpAddr, allow: &[ipnet::IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    allow.iter().any(|net| net.contains(&ip)) || is_public(ip)
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => public_v4(a),
        IpAddr::V6(a) => public_v6(a),
    }
}

fn public_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    !(a.is_unspecified()
        || o0 == 0
        || a.is_loopback()
        || a.is_private()
        // Link-local: where cloud metadata services answer (169.254.169.254).
        || a.is_link_local()
        || (o0 == 100 && (o1 & 0xc0) == 64) // shared address space, 100.64.0.0/10
        || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments
        || a.is_documentation()
        || (o0 == 198 && (o1 & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || a.is_multicast()
        || o0 >= 240) // reserved, and broadcast
}

fn public_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // Well-known NAT64, IPv4-translated and 6to4 addresses carry an IPv4 address that the
    // guard must judge instead.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return public_v4(embedded(s[6], s[7]));
    }
    if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return public_v4(embedded(s[1], s[2]));
    }
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] == 0x64 && s[1] == 0xff9b) // local-use NAT64 (64:ff9b:1::/48): any IPv4 inside
        || (s[0] == 0x2001 && s[1] == 0) // Teredo: tunnels to an IPv4 address
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local, deprecated
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] & 0xfff0) == 0x3ff0 // documentation, 3fff::/20
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // benchmarking
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only
        || s[..6] == [0; 6]) // IPv4-compatible, deprecated
}

/// Resolves names, then keeps only the addresses the guard permits. Connections go to the
/// addresses checked here, so a name that resolves differently a moment later (DNS
/// rebinding) gains nothing.
struct GuardedResolver {
    allow: Arc<Vec<ipnet::IpNet>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = Arc::clone(&self.allow);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found.iter().copied().filter(|a| permitted(a.ip(), &allow)).collect();
            if kept.is_empty() {
                let addrs: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                return Err(Box::new(Refused(format!(
                    "{host} resolves to {}, a private, loopback or link-local address not in notifications.allow_networks",
                    addrs.join(", ")
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub struct Webhooks {
    http: reqwest::Client,
    allow: Arc<Vec<ipnet::IpNet>>,
}

impl Webhooks {
    pub fn new(allow: &[ipnet::IpNet], timeout: Duration) -> Result<Webhooks, String> {
        let allow = Arc::new(allow.to_vec());
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                allow: Arc::clone(&allow),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("jitgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the webhook client: {e}"))?;
        Ok(Webhooks { http, allow })
    }

    /// Sends one signed delivery. `id` is the same on every attempt; the timestamp is the
    /// attempt's, as the scheme asks.
    pub async fn send(&self, url: &url::Url, key: &[u8], id: &str, body: &str) -> Result<(), SendError> {
        // Names are checked by the resolver; an address in the URL is never resolved.
        if let Some(ip) = literal_ip(url) {
            if !permitted(ip, &self.allow) {
                return Err(SendError::permanent(format!(
                    "{ip} is a private, loopback or link-local address not in notifications.allow_networks"
                )));
            }
        }
        let timestamp = Timestamp::now().as_millis() / 1000;
        let response = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature(key, id, timestamp, body.as_bytes()))
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| match guard_refusal(&e) {
                Some(refused) => SendError::permanent(refused.to_string()),
                // Without the URL: its path or query may hold a token, and this text is
                // logged, audited and shown with the request.
                None => {
                    let e = e.without_url();
                    SendError::transient(format!("cannot reach {}: {}", host_of(url), chain(&e)), None)
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = super::retry_after(response.headers());
        if status.is_redirection() {
            let to = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            return Err(SendError::permanent(format!(
                "answered {status} with a redirect to {to}; redirects are not followed"
            )));
        }
        // Worth another try: the receiver is busy, down or asks for time. Any other 4xx
        // says this delivery will never be taken.
        let again = status.is_server_error() || matches!(status.as_u16(), 408 | 409 | 425 | 429);
        let msg = format!("{} answered {status}", host_of(url));
        if again {
            Err(SendError::transient(msg, retry_after))
        } else {
            Err(SendError::permanent(msg))
        }
    }
}

fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}

fn host_of(url: &url::Url) -> String {
    url.host_str().unwrap_or("the receiver").to_owned()
}

fn guard_refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// An error and its causes on one line: reqwest's own message rarely says what failed.
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body.as_bytes()),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_guard_refuses_inner_networks_unless_allowed() {
        let none: Vec<ipnet::IpNet> = Vec::new();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "::ffff:0:a9fe:a9fe",
            "2002:7f00:1::",
            "fec0::1",
            "3fff::1",
            "2001:2::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!permitted(refused.parse().unwrap(), &none), "{refused} passed");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(permitted(public.parse().unwrap(), &none), "{public} refused");
        }
        let allow: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        assert!(permitted("127.0.0.1".parse().unwrap(), &allow));
        assert!(permitted("::ffff:127.0.0.1".parse().unwrap(), &allow));
        assert!(permitted("fd00::1".parse().unwrap(), &allow));
        assert!(!permitted("169.254.169.254".parse().unwrap(), &allow));
    }
}
