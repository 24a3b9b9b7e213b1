//! The one form of a request path that policy sees and the upstream receives. Checking one
//! spelling and forwarding another is how path scopes get bypassed (`/d/../admin`,
//! `/%2e%2e/admin`, `//admin`), so the proxy forwards exactly what it checked.
//!
//! RFC 3986 normalization (§6.2.2): percent-escapes of unreserved characters are decoded,
//! the others keep upper-case hex; then empty segments are merged and dot segments removed
//! (§5.2.4), never above the root. What stays ambiguous between servers is refused: an
//! encoded `/` or `\`, a NUL, a broken escape, and `..;`-style segments that some servers
//! read as `..`.

/// Why a path was refused; shown to the client as is.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

pub fn normalize(raw: &str) -> Result<String, BadPath> {
    if in_one_form(raw) {
        return Ok(raw.to_owned());
    }
    normalize_all(raw)
}

/// Whether a path is in its one form already, as most are: printable, no escape, no `\`,
/// no empty segment but a trailing one and none that starts with a dot. Checked in one
/// pass, where the full normalization allocates three times.
fn in_one_form(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut after_slash = false;
    for &b in bytes {
        if !b.is_ascii_graphic() || b == b'%' || b == b'\\' || (after_slash && (b == b'/' || b == b'.')) {
            return false;
        }
        after_slash = b == b'/';
    }
    true
}

fn normalize_all(raw: &str) -> Result<String, BadPath> {
    if !raw.starts_with('/') {
        return Err(BadPath("the path must start with '/'"));
    }
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        // A `;` starts path parameters on some servers (`..;x` is `..` to Tomcat), encoded
        // or not (some decode first); trailing spaces are trimmed by others (`..%20`).
        // Only a segment that starts with a dot can come down to one.
        let bare = if segment.starts_with('.') {
            segment
                .split([';'])
                .next()
                .unwrap_or_default()
                .split("%3B")
                .next()
                .unwrap_or_default()
                .trim_end_matches("%20")
        } else {
            segment
        };
        match (segment, bare) {
            ("", _) | (".", _) => {}
            ("..", _) => {
                out.pop();
            }
            (_, "." | "..") => return Err(BadPath("a dot segment with parameters (like '..;') is ambiguous")),
            _ => out.push(segment),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    // A trailing slash (or a final dot segment) names a directory: keep it.
    let last = decoded.rsplit('/').next().unwrap_or_default();
    if path.is_empty() || decoded.ends_with('/') || matches!(last, "." | "..") {
        path.push('/');
    }
    Ok(path)
}

fn decode_unreserved(raw: &str) -> Result<String, BadPath> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(BadPath("a '%' escape is cut short"))?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .ok_or(BadPath("a '%' escape is not two hex digits"))?;
                match value {
                    b'/' => return Err(BadPath("an encoded '/' (%2F) in the path is refused")),
                    b'\\' => return Err(BadPath("an encoded '\\' (%5C) in the path is refused")),
                    0 => return Err(BadPath("an encoded NUL (%00) in the path is refused")),
                    v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(BadPath("a '\\' in the path is refused")),
            b if b.is_ascii_graphic() => {
                out.push(b as char);
                i += 1;
            }
            _ => return Err(BadPath("the path has characters that must be percent-encoded")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_for_each_path() {
        for (raw, want) in [
            ("/", "/"),
            ("/d/abc", "/d/abc"),
            ("/d/abc/", "/d/abc/"),
            ("//admin", "/admin"),
            ("/d//x", "/d/x"),
            ("/d/../admin", "/admin"),
            ("/d/./x", "/d/x"),
            ("/%2e%2e/admin", "/admin"),
            ("/d/%2E%2E/admin", "/admin"),
            ("/d/.%2e/admin", "/admin"),
            ("/../../../etc/passwd", "/etc/passwd"),
            ("/d/..", "/"),
            ("/d/x/.", "/d/x/"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/%7euser", "/~user"),
            ("/a;b=c", "/a;b=c"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    /// Every path the quick check takes as is, the full normalization gives back unchanged:
    /// all paths of up to six characters over an alphabet of what matters to it.
    #[test]
    fn a_path_taken_as_is_is_its_own_normal_form() {
        const ALPHABET: &[u8] = b"/.a%2e;\\ ";
        let mut taken = 0;
        let mut path = Vec::new();
        for len in 0..=6u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                path.clear();
                for _ in 0..len {
                    path.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                let raw = std::str::from_utf8(&path).unwrap();
                if in_one_form(raw) {
                    taken += 1;
                    assert_eq!(normalize_all(raw).as_deref(), Ok(raw), "{raw:?}");
                }
            }
        }
        // The check takes something: "/", "/a", "/a/", "/a;2"...
        assert!(taken > 1000, "only {taken} paths taken as they are");
        for raw in ["/", "/d/abc", "/d/abc/", "/a;b=c", "/1k"] {
            assert!(in_one_form(raw), "{raw}");
        }
        for raw in [
            "//admin",
            "/d/../admin",
            "/d/./x",
            "/%61dmin",
            "/a\\b",
            "/a b",
            "admin",
            "",
            "/.",
        ] {
            assert!(!in_one_form(raw), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "/d%2F..%2Fadmin",
            "/d%2f../admin",
            "/a%5C..",
            "/a\\..\\admin",
            "/a%00",
            "/a%",
            "/a%2",
            "/a%zz",
            "/a%+1",
            "/d/..;/admin",
            "/d/.;x/admin",
            "/d/..%3B/admin",
            "/d/..%3b/admin",
            "/d/..%20/admin",
            "/d/.%20/admin",
            "admin",
            "*",
        ] {
            assert!(normalize(raw).is_err(), "{raw} passed as {:?}", normalize(raw));
        }
    }
}
