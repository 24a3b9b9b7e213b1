//! What crosses the proxy in headers. Toward the upstream: nothing the client sent may
//! claim an identity or a forwarding path (the `X-Jitgate-*` family in any spelling, and
//! `Forwarded`/`X-Forwarded-*`/`X-Real-IP`), hop-by-hop headers end here (RFC 9110 §7.6.1),
//! and the proxy's own cookies stay with the proxy. Then the proxy adds what it knows.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The cookie that holds an app session on an app's host.
pub const APP_COOKIE: &str = "__Host-jitgate-app";
/// The cookie that ties a sign-in on an app's host to the browser that started it.
pub const STATE_COOKIE: &str = "__Host-jitgate-app-state";

/// Headers the proxy alone sets toward the upstream. Names, not strings: a string is
/// parsed into a name again on every use.
pub const USER: HeaderName = HeaderName::from_static("x-jitgate-user");
pub const EMAIL: HeaderName = HeaderName::from_static("x-jitgate-email");
pub const GROUPS: HeaderName = HeaderName::from_static("x-jitgate-groups");
pub const GRANT: HeaderName = HeaderName::from_static("x-jitgate-grant");
pub const ASSERTION: HeaderName = HeaderName::from_static("x-jitgate-assertion");
pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `_` and `-` are the same to many frameworks (CGI, Django, nginx with
/// `underscores_in_headers`), so both spellings are one header here. Names are lower case
/// already: that is how the `http` crate keeps them.
fn canonical(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str();
    if s.as_bytes().contains(&b'_') {
        std::borrow::Cow::Owned(s.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Whether a client-sent header pretends to be something only the proxy may say.
pub fn is_reserved(name: &HeaderName) -> bool {
    let n = canonical(name);
    n.starts_with("x-jitgate") || n.starts_with("x-forwarded-") || is_client_address(&n) || is_override(&n)
}

/// Headers CDNs and load balancers use to pass the client's address, which frameworks
/// and access lists trust (Spring's and Tomcat's remote-IP filters, Rack, Django
/// middleware): a client must not pick the address an upstream sees.
fn is_client_address(n: &str) -> bool {
    matches!(
        n,
        "forwarded"
            | "x-real-ip"
            | "x-client-ip"
            | "client-ip"
            | "true-client-ip"
            | "x-cluster-client-ip"
            | "cf-connecting-ip"
            | "cf-connecting-ipv6"
            | "fly-client-ip"
            | "x-azure-clientip"
            | "x-envoy-external-address"
            | "x-appengine-user-ip"
            | "fastly-client-ip"
            | "x-original-forwarded-for"
            | "x-originating-ip"
            | "x-remote-ip"
            | "x-remote-addr"
    )
}

/// Headers some frameworks read to replace the request's method or path after the proxy
/// checked them (Symfony, Jersey, ASP.NET, Express's method-override; IIS's URL rewrite):
/// what policy saw must be what the upstream acts on.
fn is_override(n: &str) -> bool {
    matches!(
        n,
        "x-http-method-override" | "x-http-method" | "x-method-override" | "x-original-url" | "x-rewrite-url"
    )
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, with the obsolete `Keep-Alive` and
/// `Proxy-Connection`), and the proxy credentials of either side (RFC 9110 §11.7), which
/// are for the proxy, not the upstream or the client.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Removes hop-by-hop headers, whatever `Connection` names, and the names `also` picks.
/// One pass over the names; the list of what goes is only allocated when something
/// besides `Connection` goes.
fn strip(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    // `Connection` itself is taken last, below, so a message that has only it needs no list.
    let mut connection = false;
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let is_connection = *n == header::CONNECTION;
            connection |= is_connection;
            !is_connection && (is_hop_by_hop(n) || also(n))
        })
        .cloned()
        .collect();
    // Most requests have no `Connection`: each lookup of it hashes.
    if !connection {
        for name in doomed {
            headers.remove(name);
        }
        return;
    }
    doomed.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // Hop-by-hop names (`keep-alive`, `upgrade`) are in the list already.
            .filter(|t| !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h)))
            // Looked up before it is made a name: `close` usually names no header of the
            // message, and making the name would allocate.
            .filter(|t| headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()),
    );
    for name in doomed {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
}

/// Removes hop-by-hop headers: the fixed list and whatever `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, |_| false);
}

/// The request headers the upstream gets, before the proxy adds its own.
pub fn clean_request(headers: &mut HeaderMap) {
    strip(headers, is_reserved);
    strip_own_cookies(headers);
}

/// Made once: building a searcher costs as much as a search through a cookie.
static OWN_COOKIE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"jitgate"));

/// Drops the proxy's cookies from `Cookie`, keeping the app's own in their order.
fn strip_own_cookies(headers: &mut HeaderMap) {
    let own = |name: &[u8]| name == APP_COOKIE.as_bytes() || name.starts_with(b"__Host-jitgate");
    if !headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| OWN_COOKIE.find(v.as_bytes()).is_some())
    {
        return;
    }
    // Bytes, not `str`: an app's cookie may carry UTF-8 (a browser sends what a page set),
    // and it must reach the app as it came. Built straight into one buffer: a browser's
    // only cookie on an app host is often the proxy's, and then nothing is allocated.
    let mut kept = Vec::new();
    for pair in crate::front::web::cookie_pairs(headers)
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| !own(pair[..memchr::memchr(b'=', pair).unwrap_or(pair.len())].trim_ascii()))
    {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// The response headers the client gets: hop-by-hop headers end here, and an upstream may
/// not set or clear the proxy's cookie.
pub fn clean_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    // Browsers trim the name, so it is compared trimmed; unreadable values go too.
    let own = |v: &HeaderValue| {
        v.to_str().map_or(true, |t| {
            let name = t.split('=').next().unwrap_or_default().trim();
            name.starts_with("__Host-jitgate")
        })
    };
    if !headers.get_all(header::SET_COOKIE).iter().any(own) {
        return;
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !own(v))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for c in cookies {
        headers.append(header::SET_COOKIE, c);
    }
}

/// Whether the request asks to become a WebSocket (HTTP/1.1 `Upgrade: websocket`).
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    // `Connection` is only read when `Upgrade` names a WebSocket: most requests have
    // neither, and each lookup hashes.
    let named = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    named(header::UPGRADE, "websocket") && named(header::CONNECTION, "upgrade")
}

/// The peer's address as `X-Forwarded-For` says it. An IPv4 address is written digit by
/// digit: `Display` goes through the formatter's padding and costs more than the rest of
/// the headers together (about 1,300 instructions a request).
pub fn forwarded_for(ip: std::net::IpAddr) -> Option<HeaderValue> {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            HeaderValue::from_bytes(&buf[..n]).ok()
        }
        std::net::IpAddr::V6(_) => HeaderValue::try_from(ip.to_string()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_writes_addresses_as_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.9.99.100",
            "255.255.255.255",
            "1.20.203.4",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(forwarded_for(ip).unwrap(), ip.to_string().as_str(), "{ip}");
        }
        for n in (0..=u32::MAX).step_by(9_973_451) {
            let ip = std::net::IpAddr::V4(n.into());
            assert_eq!(forwarded_for(ip).unwrap(), ip.to_string().as_str());
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn identity_and_forwarding_claims_go_in_every_spelling() {
        let mut h = map(&[
            ("X-Jitgate-User", "root"),
            ("x-jitgate-user", "root2"),
            ("X_Jitgate_User", "root3"),
            ("x-JITGATE-groups", "admins"),
            ("X-Jitgate-Assertion", "forged"),
            ("x_forwarded_for", "10.0.0.1"),
            ("X-Forwarded-Host", "evil"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("CF-Connecting-IP", "1.2.3.4"),
            ("Fastly-Client-IP", "1.2.3.4"),
            ("X-Cluster-Client-IP", "1.2.3.4"),
            ("Client-IP", "1.2.3.4"),
            ("X_Original_Forwarded_For", "1.2.3.4"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X_Original_URL", "/admin"),
            ("Connection", "keep-alive, X-Custom-Hop"),
            ("Connection", "Close"),
            ("X-Custom-Hop", "1"),
            ("close", "named by Connection"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Accept", "text/html"),
            ("Cookie", "a=1; __Host-jitgate-app=secret; __Host-jitgate=s2; b=2"),
            ("Cookie", "__Host-jitgate-app=again"),
        ]);
        clean_request(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept", "cookie"], "{h:?}");
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn an_apps_cookie_in_utf8_reaches_it_as_it_came() {
        let mut h = HeaderMap::new();
        let line = "lang=fran\u{e7}ais; __Host-jitgate-app=secret; b=2";
        h.append(header::COOKIE, HeaderValue::from_bytes(line.as_bytes()).unwrap());
        clean_request(&mut h);
        assert_eq!(h[header::COOKIE].as_bytes(), "lang=fran\u{e7}ais; b=2".as_bytes());
    }

    #[test]
    fn an_upstream_cannot_touch_the_proxy_cookie() {
        let mut h = map(&[
            ("Set-Cookie", "__Host-jitgate-app=x; Path=/"),
            ("Set-Cookie", "__Host-jitgate-app =x; Path=/"),
            ("Set-Cookie", "__Host-jitgate-app-state=x; Path=/"),
            ("Set-Cookie", "grafana_session=y; Path=/"),
            ("Connection", "close"),
            ("Transfer-Encoding", "chunked"),
        ]);
        clean_response(&mut h);
        let cookies: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["grafana_session=y; Path=/"]);
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
    }
}

/// One `X-Jitgate-Groups` entry: a `,` inside a group name would split it into two groups
/// for the upstream, so `%`, `,` and anything not printable are percent-encoded.
pub fn group_item(group: &str) -> String {
    let mut out = String::with_capacity(group.len());
    for b in group.bytes() {
        if b == b'%' || b == b',' || !(0x21..0x7f).contains(&b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

#[cfg(test)]
mod group_tests {
    #[test]
    fn a_comma_in_a_group_cannot_make_two() {
        assert_eq!(super::group_item("oidc:x,admins"), "oidc:x%2Cadmins");
        assert_eq!(super::group_item("dba leads\n"), "dba%20leads%0A");
        assert_eq!(super::group_item("ops"), "ops");
    }
}
