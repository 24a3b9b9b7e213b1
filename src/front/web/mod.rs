//! The browser side of the proxy host: OIDC login (`/auth/*`) and the console pages.
//! Pages are rendered on the server (maud escapes every value); every response carries a
//! strict Content-Security-Policy, and every form a per-session CSRF token.

pub(crate) mod auth;
mod console;
pub mod redirect;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};

use crate::front::api::ApiState;
use crate::identity::session::{same_secret, Session, SESSION_COOKIE};
use crate::time::Timestamp;

pub use auth::PRELOGIN_COOKIE;

/// What the web side needs to know about where it is served.
#[derive(Clone, Debug)]
pub struct Site {
    /// `https://host:port`, no trailing slash: the proxy's own origin.
    pub origin: String,
    pub host: String,
    pub port: u16,
    pub base_domain: String,
    pub local_users: bool,
    /// The Content-Security-Policy of every page; IdP origins are allowed as form targets
    /// because logging out redirects a form post to the IdP.
    pub csp: String,
    form_action: Vec<String>,
}

impl Site {
    pub fn new(public_url: &str, base_domain: &str, local_users: bool, idp_issuers: &[String]) -> Result<Site, String> {
        let url = url::Url::parse(public_url).map_err(|e| format!("public URL {public_url:?}: {e}"))?;
        let host = url.host_str().ok_or("the public URL has no host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let origin = url.origin().ascii_serialization();
        let mut form_action = vec!["'self'".to_owned()];
        for issuer in idp_issuers {
            if let Ok(u) = url::Url::parse(issuer) {
                form_action.push(u.origin().ascii_serialization());
            }
        }
        Ok(Site {
            origin,
            host,
            port,
            base_domain: base_domain.to_owned(),
            local_users,
            csp: csp(&form_action),
            form_action,
        })
    }

    /// Lets forms on the proxy's pages end on these origins too: a login that began on an
    /// app's host goes back there through redirects, and browsers hold those redirects to
    /// `form-action`.
    pub fn allow_form_redirects_to(&mut self, origins: impl IntoIterator<Item = String>) {
        self.form_action.extend(origins);
        self.csp = csp(&self.form_action);
    }
}

fn csp(form_action: &[String]) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
         form-action {}; frame-ancestors 'none'; base-uri 'none'",
        form_action.join(" ")
    )
}

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/auth/login", get(auth::login))
        .route("/auth/callback", get(auth::callback))
        .route("/auth/logout", get(auth::logout_page).post(auth::logout))
        .route("/auth/local", post(auth::local_login))
        .merge(console::routes())
}

/// The session a request's cookie opens, if any.
pub struct MaybeSession(pub Option<Arc<Session>>);

impl FromRequestParts<Arc<ApiState>> for MaybeSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Response> {
        let Some(secret) = session_cookie(&parts.headers) else {
            return Ok(MaybeSession(None));
        };
        match state.sessions.check(secret, Timestamp::now()).await {
            Ok(s) => Ok(MaybeSession(s)),
            Err(e) => {
                tracing::error!(error = %e, "cannot check a session; refusing");
                Err(error_page(
                    &state.site,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Store unavailable",
                    "The proxy cannot reach its store, so it cannot check who you are. Try again shortly.",
                ))
            }
        }
    }
}

/// A logged-in browser; anyone else is sent to log in and brought back.
pub struct WebSession(pub Arc<Session>);

impl FromRequestParts<Arc<ApiState>> for WebSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Response> {
        match MaybeSession::from_request_parts(parts, state).await? {
            MaybeSession(Some(s)) => Ok(WebSession(s)),
            MaybeSession(None) => {
                let here = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let to = format!(
                    "/?rd={}",
                    url::form_urlencoded::byte_serialize(here.as_bytes()).collect::<String>()
                );
                Err(Redirect::to(&to).into_response())
            }
        }
    }
}

/// The session secret from the `Cookie` headers, refusing duplicates.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    one_cookie(headers, SESSION_COOKIE)
}

/// The value of cookie `name` if the `Cookie` headers hold exactly one: a second can be
/// planted by a sibling host, and then neither is taken.
pub fn one_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = cookie_iter(headers, name);
    let one = values.next()?;
    values.next().is_none().then_some(one)
}

/// The `name=value` pairs of the `Cookie` headers, as bytes, untrimmed. Split with
/// `memchr`: an app cookie is a few hundred bytes, read on every request.
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::COOKIE).iter().flat_map(|v| {
        let bytes = v.as_bytes();
        let mut start = 0;
        let mut ends = memchr::memchr_iter(b';', bytes).chain(std::iter::once(bytes.len()));
        std::iter::from_fn(move || {
            let end = ends.next()?;
            let pair = &bytes[start..end];
            start = end + 1;
            Some(pair)
        })
    })
}

/// Every value of cookie `name` across the `Cookie` headers. A second cookie of one name can
/// be planted by a sibling host, so callers take exactly one or refuse.
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    cookie_iter(headers, name).collect()
}

fn cookie_iter<'a, 'n>(headers: &'a HeaderMap, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    // Split as bytes: another cookie's non-ASCII value (browsers send UTF-8 that a page
    // set) makes the header no `str`, and must not hide the proxy's cookies.
    cookie_pairs(headers).filter_map(move |pair| {
        let eq = memchr::memchr(b'=', pair)?;
        (pair[..eq].trim_ascii() == name.as_bytes())
            .then(|| std::str::from_utf8(trim_quotes(pair[eq + 1..].trim_ascii())).ok())?
    })
}

/// A cookie value without the quotes around it, as bytes: `str`'s trim searches by `char`.
fn trim_quotes(mut v: &[u8]) -> &[u8] {
    while let [b'"', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b'"'] = v {
        v = rest;
    }
    v
}

/// A form's CSRF token must be this session's. Cross-site posts are refused before that
/// by the Origin check, when the browser sends one.
// The error is the page that ends the request; boxing it would buy nothing here.
#[allow(clippy::result_large_err)]
pub fn check_csrf(site: &Site, headers: &HeaderMap, session: &Session, token: &str) -> Result<(), Response> {
    check_origin(site, headers)?;
    if same_secret(token, &session.csrf) {
        Ok(())
    } else {
        Err(error_page(
            site,
            StatusCode::FORBIDDEN,
            "Form expired",
            "This form's security token does not match your session (it is from an old page or another site). \
             Go back, reload the page and try again.",
        ))
    }
}

/// A state-changing post must come from a page of this origin: an `Origin` header naming
/// another origin (or `null`) is refused.
#[allow(clippy::result_large_err)]
pub fn check_origin(site: &Site, headers: &HeaderMap) -> Result<(), Response> {
    match headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("")) {
        None => Ok(()),
        Some(o) if o == site.origin => Ok(()),
        Some(o) => {
            tracing::warn!(origin = %o, "refused a cross-origin form post");
            Err(error_page(
                site,
                StatusCode::FORBIDDEN,
                "Cross-site request refused",
                "This form was posted from another site. Use the console's own pages.",
            ))
        }
    }
}

/// Headers every page carries.
pub fn secure_headers(site: &Site, headers: &mut HeaderMap) {
    let csp = HeaderValue::from_str(&site.csp).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: under it browsers post forms with `Origin: null`, which
    // `check_origin` refuses. Same-origin requests get the referrer, other sites nothing.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
}

/// A full HTML page in the console's layout.
pub fn page(site: &Site, status: StatusCode, title: &str, who: Option<&Session>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · jitgate" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "jitgate" }
                    @if let Some(s) = who {
                        span.who { (s.identity.user) }
                        form.logout method="post" action="/auth/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    let mut response = (status, axum::response::Html(markup.into_string())).into_response();
    secure_headers(site, response.headers_mut());
    response
}

pub fn error_page(site: &Site, status: StatusCode, title: &str, message: &str) -> Response {
    page(
        site,
        status,
        title,
        None,
        html! {
            h1 { (title) }
            p.error { (message) }
            p { a href="/" { "Back to the start page" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn a_session_cookie_is_read_once_and_only_once() {
        assert_eq!(session_cookie(&headers(&["a=1; __Host-jitgate=abc; b=2"])), Some("abc"));
        assert_eq!(session_cookie(&headers(&["a=1"])), None);
        assert_eq!(session_cookie(&headers(&["__Host-jitgate=x; __Host-jitgate=y"])), None);
        // Planted in a second header line: refused all the same.
        assert_eq!(
            session_cookie(&headers(&["__Host-jitgate=x", "__Host-jitgate=y"])),
            None
        );
        assert_eq!(session_cookie(&headers(&["__host-jitgate=x"])), None);
    }

    #[test]
    fn another_cookie_in_utf8_does_not_hide_the_session() {
        let mut h = HeaderMap::new();
        let line = "lang=fran\u{e7}ais; __Host-jitgate=abc; b=\"q\"";
        h.append(header::COOKIE, HeaderValue::from_bytes(line.as_bytes()).unwrap());
        assert!(
            h[header::COOKIE].to_str().is_err(),
            "the test needs a header that is no str"
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        assert_eq!(cookie_values(&h, "b"), ["q"]);
        // A value that is not UTF-8 is no value of ours, and hides nothing else.
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"__Host-jitgate=\xff; x=1").unwrap(),
        );
        assert_eq!(session_cookie(&h), None);
        assert_eq!(cookie_values(&h, "x"), ["1"]);
    }

    #[test]
    fn cookies_split_across_headers_and_a_name_twice_is_none() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1;b=2 ;  c = 3;"));
        h.append(header::COOKIE, HeaderValue::from_static("d=4"));
        let pairs: Vec<&[u8]> = cookie_pairs(&h).collect();
        assert_eq!(pairs, [&b"a=1"[..], b"b=2 ", b"  c = 3", b"", b"d=4"]);
        assert_eq!(one_cookie(&h, "c"), Some("3"));
        assert_eq!(one_cookie(&h, "d"), Some("4"));
        assert_eq!(one_cookie(&h, "e"), None);
        h.append(header::COOKIE, HeaderValue::from_static("a=again"));
        assert_eq!(one_cookie(&h, "a"), None, "a planted second cookie hides both");
        assert_eq!(cookie_values(&h, "a"), ["1", "again"]);
    }
}
