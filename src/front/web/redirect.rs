//! Where a login may send the browser afterwards. Only the proxy's own origin and its apps
//! (`https://{app}.{base_domain}` on the proxy's port) qualify; anything else falls back
//! to `/`. The target is re-serialized from its parsed form, so what the browser gets is
//! what was checked.

use super::Site;

/// The safe form of `rd`, or `/`.
pub fn safe_redirect(site: &Site, rd: Option<&str>) -> String {
    rd.and_then(|rd| check(site, rd)).unwrap_or_else(|| "/".to_owned())
}

fn check(site: &Site, rd: &str) -> Option<String> {
    // Browsers read `\` as `/` and drop tabs and newlines inside URLs, so a target with any
    // of them can mean something other than what a parser here sees.
    if rd.is_empty() || rd.len() > 2048 || rd.contains('\\') || rd.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    let base = url::Url::parse(&format!("{}/", site.origin)).ok()?;
    let target = base.join(rd).ok()?;
    if target.scheme() != "https" || !target.username().is_empty() || target.password().is_some() {
        return None;
    }
    let host = target.host_str()?;
    if target.port_or_known_default() != Some(site.port) {
        return None;
    }
    if host == site.host {
        // Same origin: hand back only the path and query, so no host can ride along.
        let mut out = target.path().to_owned();
        if out.starts_with("//") {
            return None;
        }
        if let Some(q) = target.query() {
            out.push('?');
            out.push_str(q);
        }
        return Some(out);
    }
    let app = host.strip_suffix(&site.base_domain)?.strip_suffix('.')?;
    let is_label = !app.is_empty()
        && app.len() <= 63
        && app.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !app.starts_with('-');
    is_label.then(|| target.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site::new("https://jitgate.example.com:8443", "example.com", true, &[]).unwrap()
    }

    #[test]
    fn own_paths_and_apps_pass() {
        let s = site();
        assert_eq!(safe_redirect(&s, Some("/requests/r-1")), "/requests/r-1");
        assert_eq!(safe_redirect(&s, Some("/a?b=c")), "/a?b=c");
        assert_eq!(safe_redirect(&s, Some("https://jitgate.example.com:8443/x")), "/x");
        assert_eq!(
            safe_redirect(&s, Some("https://grafana.example.com:8443/d/1?x=y")),
            "https://grafana.example.com:8443/d/1?x=y"
        );
        assert_eq!(safe_redirect(&s, None), "/");
    }

    #[test]
    fn open_redirects_fall_back_to_the_start_page() {
        let s = site();
        for evil in [
            "//evil.com",
            "///evil.com",
            "https://evil.com",
            "https://evil.com\\@grafana.example.com:8443",
            "/\\evil.com",
            "\\\\evil.com",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,hi",
            "http://grafana.example.com:8443/",
            "https://grafana.example.com/",
            "https://grafana.example.com:9999/",
            "https://evil.com#@grafana.example.com:8443",
            "https://user:pw@grafana.example.com:8443/",
            "https://a.b.example.com:8443/",
            "https://example.com.evil.com:8443/",
            "https://evilexample.com:8443/",
            "/\t/evil.com",
            "/%0a/evil.com",
            " //evil.com",
        ] {
            let got = safe_redirect(&s, Some(evil));
            assert!(
                got == "/" || got.starts_with('/') && !got.starts_with("//"),
                "{evil:?} -> {got:?}"
            );
            assert!(
                !got.contains("evil.com") || got.starts_with('/') && !got.starts_with("//"),
                "{evil:?} -> {got:?}"
            );
        }
        // Percent-encoded slashes stay a path on our own origin.
        assert_eq!(safe_redirect(&s, Some("/%2F%2Fevil.com")), "/%2F%2Fevil.com");
        assert_eq!(safe_redirect(&s, Some("%2F%2Fevil.com")), "/%2F%2Fevil.com");
        assert_eq!(safe_redirect(&s, Some("https:%2F%2Fevil.com")), "/%2F%2Fevil.com");
    }
}
