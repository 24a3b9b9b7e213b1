//! A Kubernetes API request's attributes, read the way the API server reads them
//! (`RequestInfoFactory.NewRequestInfo` in k8s.io/apiserver): verb, API group and version,
//! resource and subresource, namespace, name, or a non-resource path. Policy checks these,
//! so where the API server's reading could differ from ours the request is refused rather
//! than guessed at: escapes other than unreserved characters, empty and dot segments, a
//! `watch` parameter whose meaning depends on how the rest of the query parses.

/// What a request asks of the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attrs<'a> {
    Resource(ResourceAttrs<'a>),
    /// `/version`, `/api`, `/openapi/v3`, …: the lower-case method as the verb.
    NonResource {
        path: &'a str,
        verb: &'static str,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceAttrs<'a> {
    pub verb: &'a str,
    /// Empty for the core group (`/api/v1`).
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    /// None for a cluster-scoped request (or a request across all namespaces).
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl ResourceAttrs<'_> {
    /// `pods` or `pods/log`, as RBAC and profiles name it.
    pub fn resource_path(&self) -> std::borrow::Cow<'_, str> {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource).into(),
            None => self.resource.into(),
        }
    }
}

/// Why a request was refused before policy: shown to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub &'static str);

/// The path the API server would see after decoding, or why it is ambiguous. Only escapes
/// of unreserved characters are decoded (the API server decodes all escapes, so `%2F`
/// would add a segment there; `%25` is double encoding); anything else that needs escaping
/// is refused, so the decoded path can be forwarded as it is.
pub fn decode_path(raw: &str) -> Result<std::borrow::Cow<'_, str>, BadRequest> {
    if !raw.starts_with('/') {
        return Err(BadRequest("the path must start with '/'"));
    }
    if raw.len() > MAX_PATH {
        return Err(BadRequest("the path is too long"));
    }
    let decoded: std::borrow::Cow<'_, str> = if raw.contains('%') {
        let bytes = raw.as_bytes();
        let mut out = String::with_capacity(raw.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = bytes.get(i + 1..i + 3).ok_or(BadRequest("a '%' escape is cut short"))?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(BadRequest("a '%' escape is not two hex digits"))?;
                if !unreserved(value) {
                    return Err(BadRequest(
                        "an escaped character other than a letter, digit, '-', '.', '_' or '~' is refused (an encoded '/' or a double-encoded '%' names another object on the API server)",
                    ));
                }
                out.push(value as char);
                i += 3;
            } else {
                out.push(bytes[i] as char);
                i += 1;
            }
        }
        out.into()
    } else {
        raw.into()
    };
    if !decoded.bytes().all(|b| unreserved(b) || b"/:@!$&'()*+,;=".contains(&b)) {
        return Err(BadRequest("the path holds a character that must be escaped"));
    }
    let inner = decoded.trim_start_matches('/').trim_end_matches('/');
    if !inner.is_empty() && inner.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(BadRequest("empty, '.' and '..' path segments are refused"));
    }
    Ok(decoded)
}

const MAX_PATH: usize = 4096;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Reads `path` (already through `decode_path`) with `method` and the raw `query`.
pub fn parse<'a>(method: &str, path: &'a str, query: Option<&str>) -> Result<Attrs<'a>, BadRequest> {
    let method_verb = match method {
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        // The API server gives other methods an empty verb; nothing may be granted for it.
        _ => {
            return Err(BadRequest(
                "the Kubernetes API takes GET, HEAD, POST, PUT, PATCH and DELETE only",
            ))
        }
    };
    let non_resource = || Attrs::NonResource {
        path,
        verb: match method {
            "GET" => "get",
            "HEAD" => "head",
            "POST" => "post",
            "PUT" => "put",
            "PATCH" => "patch",
            _ => "delete",
        },
    };
    let trimmed = path.trim_matches('/');
    let mut parts: Vec<&'a str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return Ok(non_resource());
    }
    let mut group = "";
    if parts[0] == "apis" {
        if parts.len() < 4 {
            return Ok(non_resource());
        }
        group = parts[1];
        parts.drain(..2);
    } else {
        parts.drain(..1);
    }
    let version = parts.remove(0);
    let mut verb = method_verb;
    let mut special = false;
    if parts[0] == "proxy" {
        // The legacy `/api/v1/proxy/…` paths: the API server no longer serves them, and
        // their verb has no place in a grant.
        return Err(BadRequest(
            "the legacy /proxy/ paths are not served; use the proxy subresource (…/pods/NAME/proxy)",
        ));
    }
    if parts[0] == "watch" {
        if parts.len() < 2 {
            return Err(BadRequest("the path names no kind after its verb"));
        }
        verb = parts.remove(0);
        special = true;
    }
    let mut namespace = None;
    if parts[0] == "namespaces" && parts.len() > 1 {
        namespace = Some(parts[1]);
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts.drain(..2);
        }
    }
    let resource = parts[0];
    // A field selector on metadata.name narrows a list to one name for the API server's
    // RBAC; here it does not, so a name-scoped grant allows no list.
    let name = parts.get(1).copied();
    let subresource = if parts.len() >= 3 { Some(parts[2]) } else { None };
    if name.is_none() && verb == "get" {
        verb = if watches(query)? { "watch" } else { "list" };
    }
    if name.is_none() && verb == "delete" {
        verb = "deletecollection";
    }
    // Streams into a pod or through it are `create` whatever the method: a WebSocket
    // upgrade arrives as GET, and the API server checks create for it too.
    if !special && matches!(subresource, Some("exec" | "attach" | "portforward" | "proxy")) {
        verb = "create";
    }
    Ok(Attrs::Resource(ResourceAttrs {
        verb,
        group,
        version,
        resource,
        subresource,
        namespace,
        name,
    }))
}

/// Whether a list's query asks to watch. Keys and values are decoded as Go decodes them
/// (`wat%63h=tr%75e` is `watch=true` there); what Go would skip (a `;`, a broken escape)
/// is refused, since skipping it here could read the query differently.
fn watches(query: Option<&str>) -> Result<bool, BadRequest> {
    let mut watch: Option<bool> = None;
    for pair in query.unwrap_or_default().split('&') {
        if pair.contains(';') {
            return Err(BadRequest("a ';' in the query is refused"));
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if query_decode(key)? != "watch" {
            continue;
        }
        // The API server reads `watch=` as false when the rest of the query parses and as
        // true when it does not; `false` and `0` are false either way.
        let this = match query_decode(value)?.to_ascii_lowercase().as_str() {
            "false" | "0" => false,
            "" => {
                return Err(BadRequest(
                    "an empty watch parameter is ambiguous; send watch=true or watch=false",
                ))
            }
            _ => true,
        };
        if watch.is_some_and(|w| w != this) {
            return Err(BadRequest("the watch parameter is given twice with different values"));
        }
        watch = Some(this);
    }
    Ok(watch.unwrap_or(false))
}

fn query_decode(s: &str) -> Result<String, BadRequest> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
                    .ok_or(BadRequest("a '%' escape in the query is broken"))?;
                out.push(value);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res<'a>(method: &str, path: &'a str, query: Option<&str>) -> ResourceAttrs<'a> {
        match parse(method, path, query).unwrap() {
            Attrs::Resource(r) => r,
            other => panic!("{path}: expected a resource request, got {other:?}"),
        }
    }

    #[test]
    fn reads_resource_requests_as_the_api_server_does() {
        let r = res("GET", "/api/v1/namespaces/payments/pods", None);
        assert_eq!(
            (
                r.verb,
                r.group,
                r.version,
                r.resource,
                r.namespace,
                r.name,
                r.subresource
            ),
            ("list", "", "v1", "pods", Some("payments"), None, None)
        );
        let r = res(
            "GET",
            "/api/v1/namespaces/payments/pods",
            Some("watch=true&resourceVersion=1"),
        );
        assert_eq!(r.verb, "watch");
        let r = res("GET", "/api/v1/namespaces/payments/pods", Some("watch=1"));
        assert_eq!(r.verb, "watch");
        let r = res("GET", "/api/v1/namespaces/payments/pods", Some("watch=false"));
        assert_eq!(r.verb, "list");
        let r = res("GET", "/api/v1/namespaces/payments/pods/web-1/log", Some("follow=true"));
        assert_eq!(
            (r.verb, r.resource, r.name, r.subresource),
            ("get", "pods", Some("web-1"), Some("log"))
        );
        assert_eq!(r.resource_path(), "pods/log");
        let r = res("GET", "/apis/apps/v1/namespaces/payments/deployments/api", None);
        assert_eq!(
            (r.verb, r.group, r.resource, r.name),
            ("get", "apps", "deployments", Some("api"))
        );
        let r = res("DELETE", "/api/v1/namespaces/payments/pods", None);
        assert_eq!(r.verb, "deletecollection");
        let r = res("DELETE", "/api/v1/namespaces/payments/pods/web-1", None);
        assert_eq!(r.verb, "delete");
        let r = res("POST", "/api/v1/namespaces/payments/pods", None);
        assert_eq!((r.verb, r.name), ("create", None));
        let r = res("PATCH", "/apis/apps/v1/namespaces/payments/deployments/api/scale", None);
        assert_eq!((r.verb, r.resource_path().as_ref()), ("patch", "deployments/scale"));
        let r = res("PUT", "/api/v1/namespaces/payments/pods/web-1/status", None);
        assert_eq!((r.verb, r.subresource), ("update", Some("status")));
    }

    #[test]
    fn cluster_scoped_and_namespace_objects() {
        let r = res("GET", "/api/v1/nodes", None);
        assert_eq!((r.verb, r.resource, r.namespace), ("list", "nodes", None));
        let r = res("GET", "/api/v1/pods", None);
        assert_eq!((r.verb, r.resource, r.namespace), ("list", "pods", None));
        let r = res("GET", "/api/v1/namespaces", None);
        assert_eq!((r.verb, r.resource, r.namespace), ("list", "namespaces", None));
        // A namespace object lies in itself, as for the API server.
        let r = res("GET", "/api/v1/namespaces/payments", None);
        assert_eq!(
            (r.verb, r.resource, r.namespace, r.name),
            ("get", "namespaces", Some("payments"), Some("payments"))
        );
        let r = res("PUT", "/api/v1/namespaces/payments/finalize", None);
        assert_eq!(
            (r.resource, r.name, r.subresource),
            ("namespaces", Some("payments"), Some("finalize"))
        );
    }

    #[test]
    fn streams_into_pods_are_create_whatever_the_method() {
        for method in ["GET", "POST"] {
            for sub in ["exec", "attach", "portforward"] {
                let path = format!("/api/v1/namespaces/payments/pods/web-1/{sub}");
                let r = res(method, &path, Some("command=sh"));
                assert_eq!((r.verb, r.subresource), ("create", Some(sub)), "{method} {sub}");
            }
        }
        let r = res("GET", "/api/v1/namespaces/payments/pods/web-1/proxy/metrics", None);
        assert_eq!((r.verb, r.subresource), ("create", Some("proxy")));
        assert!(parse("GET", "/api/v1/proxy/namespaces/payments/pods/web-1", None).is_err());
        let r = res("GET", "/api/v1/watch/namespaces/payments/pods", None);
        assert_eq!((r.verb, r.resource, r.namespace), ("watch", "pods", Some("payments")));
    }

    #[test]
    fn discovery_and_other_paths_are_not_resources() {
        for path in [
            "/",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/openapi/v3/apis/apps/v1",
            "/healthz",
        ] {
            assert!(
                matches!(parse("GET", path, None), Ok(Attrs::NonResource { verb: "get", .. })),
                "{path}"
            );
        }
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        assert!(parse("OPTIONS", "/api/v1/pods", None).is_err());
        assert!(parse("GET", "/api/v1/namespaces/p/pods", Some("watch=")).is_err());
        assert!(parse("GET", "/api/v1/namespaces/p/pods", Some("watch=true&watch=false")).is_err());
        assert!(parse("GET", "/api/v1/namespaces/p/pods", Some("watch=true;x=1")).is_err());
        assert!(parse("GET", "/api/v1/namespaces/p/pods", Some("watch=%zz")).is_err());
        assert!(parse("GET", "/api/v1/watch", None).is_err());
        // Spelled as Go decodes it, still a watch.
        let r = res("GET", "/api/v1/namespaces/p/pods", Some("wat%63h=tr%75e"));
        assert_eq!(r.verb, "watch");
        for raw in [
            "/api/v1/namespaces/a%2Fb/pods",
            "/api/v1/namespaces/pay%252Fments/pods",
            "/api/v1/namespaces//pods",
            "/api/v1/namespaces/payments/../kube-system/pods",
            "/api/v1/namespaces/./pods",
            "/api/v1/namespaces/%zz/pods",
            "/api/v1/namespaces/pay%2",
            "/api/v1/namespaces/pay ments/pods",
            "/api/v1/namespaces/pay\u{e9}/pods",
            "api/v1/pods",
        ] {
            assert!(decode_path(raw).is_err(), "{raw}");
        }
        assert_eq!(
            decode_path("/api/v1/namespaces/pay%6Dents/pods").unwrap(),
            "/api/v1/namespaces/payments/pods"
        );
        assert_eq!(decode_path("/api/v1/pods/").unwrap(), "/api/v1/pods/");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn word() -> impl Strategy<Value = String> {
            "[a-z][a-z0-9-]{0,10}"
        }

        /// A request as kubectl would build it, with what the API server reads from it.
        fn request() -> impl Strategy<
            Value = (
                String,
                String,
                Option<String>,
                String,
                Option<String>,
                Option<String>,
                &'static str,
            ),
        > {
            (
                prop_oneof![Just(String::new()), "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}"],
                "v[1-9](beta[1-9])?",
                proptest::option::of(word()),
                // Words the API server reads as something else in that place.
                word().prop_filter("a plain resource", |r| {
                    !matches!(r.as_str(), "namespaces" | "watch" | "proxy" | "status" | "finalize")
                }),
                proptest::option::of(word()),
                proptest::option::of(prop_oneof![
                    Just("log".to_owned()),
                    Just("status".to_owned()),
                    Just("scale".to_owned())
                ]),
                prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("PATCH"), Just("DELETE")],
            )
        }

        proptest! {
            #[test]
            fn reads_back_what_kubectl_encodes((group, version, ns, resource, name, sub, method) in request(), watch in any::<bool>()) {
                let mut path = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
                if let Some(ns) = &ns {
                    path.push_str(&format!("/namespaces/{ns}"));
                }
                path.push('/');
                path.push_str(&resource);
                let sub = sub.filter(|_| name.is_some());
                if let Some(name) = &name {
                    path.push('/');
                    path.push_str(name);
                    if let Some(sub) = &sub {
                        path.push('/');
                        path.push_str(sub);
                    }
                }
                let query = watch.then_some("watch=true");
                let decoded = decode_path(&path).unwrap();
                prop_assert_eq!(&decoded, &path);
                let Attrs::Resource(r) = parse(method, &decoded, query).unwrap() else {
                    return Err(TestCaseError::fail("not a resource request"));
                };
                let want_verb = match (method, name.is_some()) {
                    ("GET", false) if watch => "watch",
                    ("GET", false) => "list",
                    ("GET", true) => "get",
                    ("POST", _) => "create",
                    ("PUT", _) => "update",
                    ("PATCH", _) => "patch",
                    ("DELETE", false) => "deletecollection",
                    _ => "delete",
                };
                prop_assert_eq!(r.verb, want_verb);
                prop_assert_eq!(r.group, group.as_str());
                prop_assert_eq!(r.version, version.as_str());
                prop_assert_eq!(r.namespace, ns.as_deref());
                prop_assert_eq!(r.resource, resource.as_str());
                prop_assert_eq!(r.name, name.as_deref());
                prop_assert_eq!(r.subresource, sub.as_deref());
            }

            /// Whatever arrives, the parser answers without panicking, and a path it accepts
            /// is one the API server reads the same way: no escapes left, no empty or dot
            /// segments, and decoding it again changes nothing.
            #[test]
            fn any_input_is_read_or_refused_and_accepted_paths_are_plain(raw in "/[ -~]{0,80}", method in "[A-Z]{1,7}", query in proptest::option::of("[ -~]{0,40}")) {
                if let Ok(decoded) = decode_path(&raw) {
                    prop_assert!(!decoded.contains('%'));
                    let inner = decoded.trim_matches('/');
                    prop_assert!(inner.is_empty() || inner.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                    prop_assert_eq!(decode_path(&decoded).unwrap(), decoded.clone());
                    let first = parse(&method, &decoded, query.as_deref());
                    prop_assert_eq!(first, parse(&method, &decoded, query.as_deref()));
                }
            }

            /// Spelling a watch parameter in escapes never hides it.
            #[test]
            fn an_escaped_watch_is_still_a_watch(mask in proptest::collection::vec(any::<bool>(), 9)) {
                let escaped: String = "watch=true"
                    .chars()
                    .zip(mask.iter().chain(std::iter::repeat(&false)))
                    .map(|(c, &e)| if e && c != '=' { format!("%{:02X}", c as u8) } else { c.to_string() })
                    .collect();
                let Attrs::Resource(r) = parse("GET", "/api/v1/namespaces/p/pods", Some(&escaped)).unwrap() else {
                    return Err(TestCaseError::fail("not a resource request"));
                };
                prop_assert_eq!(r.verb, "watch");
            }
        }
    }
}
