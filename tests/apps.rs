//! Browser apps behind the proxy: a real TLS listener in front of a small axum upstream that
//! echoes what it received (and serves a WebSocket echo and an endless stream). A browser-like
//! client logs in, is sent to request access, is let in once approved, and is cut when the
//! grant ends. Beside the story: identity headers smuggled in every spelling, cookies carried
//! to another app, SNI and Host that disagree, path tricks against a path scope, request
//! framing and header abuse.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::idp::browser;
use common::upstream::{upstream, upstream_tls, Seen};
use common::{Backend, Proxy, TestDb};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(up: SocketAddr, down_port: u16) -> String {
    format!(
        r#"
admins = ["group:security"]

[[apps]]
name = "echo"
upstream = "http://{up}"

[[apps]]
name = "quiet"
upstream = "http://{up}"
websocket = false
pass_identity_headers = false
audit_sample = 1.0

[[apps]]
name = "down"
upstream = "http://127.0.0.1:{down_port}"
connect_timeout = "2s"

[[profiles]]
name = "echo-admin"
description = "Run the echo console"
max_duration = "1h"
requesters = ["group:ops"]
approvers = ["group:leads"]
approvals_required = 1
http = {{ apps = ["echo", "down"] }}

[[profiles]]
name = "echo-read"
description = "Look at dashboards"
max_duration = "1h"
requesters = ["group:ops", "group:devs"]
approvals_required = 0
http = {{ apps = [{{ name = "echo", methods = ["GET", "HEAD"], paths = ["/d/"] }}] }}

[[profiles]]
name = "quiet"
max_duration = "1h"
requesters = ["group:ops"]
approvals_required = 0
http = {{ apps = ["quiet"] }}
"#
    )
}

struct Stand {
    _db: TestDb,
    proxy: Proxy,
    seen: Seen,
    port: u16,
}

impl Stand {
    async fn start() -> Stand {
        Stand::start_with(|_| String::new()).await
    }

    /// With more `[[apps]]` and `[[profiles]]`, written knowing the test's directory.
    async fn start_with(extra: impl FnOnce(&std::path::Path) -> String) -> Stand {
        let db = TestDb::new(Backend::Sqlite).await;
        let (up, seen) = upstream().await;
        // A port nothing listens on: bound, then closed.
        let down_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!("{}\n{}", config(up, down_port), extra(db.dir.path()));
        let proxy = Proxy::start(db.dir.path(), &db.url, &config);
        let port = url::Url::parse(&proxy.url).unwrap().port().unwrap();
        for (name, groups) in [
            ("alice", &["ops"][..]),
            ("bob", &["leads"]),
            ("carol", &["devs"]),
            ("sam", &["security"]),
        ] {
            proxy.add_user(name, groups);
        }
        Stand {
            _db: db,
            proxy,
            seen,
            port,
        }
    }

    /// Alice, logged in with the CLI, holding an echo-admin grant that Bob approved.
    fn alice_holds_echo_admin(&self) -> common::User {
        let alice = self.proxy.login("alice");
        let req = alice.json(&["request", "echo-admin", "--reason", "INC-9", "--for", "30m"]);
        self.proxy
            .login("bob")
            .run(&["approve", req["id"].as_str().unwrap()], None)
            .success();
        alice
    }

    fn app(&self, name: &str) -> String {
        format!("https://{name}.localhost:{}", self.port)
    }

    fn browser(&self) -> Browser {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.proxy.ca).unwrap()).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let mut b = browser().add_root_certificate(ca).cookie_provider(Arc::clone(&jar));
        for app in ["echo", "quiet", "down", "files", "secure", "nosuch"] {
            b = b.resolve(&format!("{app}.localhost"), addr);
        }
        Browser {
            http: b.build().unwrap(),
            jar,
        }
    }

    /// A browser logged in as `user` that has been through `app`'s login handoff.
    async fn logged_in(&self, user: &str, app: &str) -> Browser {
        let b = self.browser();
        let start = format!("{}/", self.app(app));
        let login = b.follow(&start).await;
        assert_eq!(login.status, StatusCode::OK, "{login:?}");
        assert!(
            login.url.starts_with(&self.proxy.url),
            "sent to the proxy's login: {}",
            login.url
        );
        assert!(login.body.contains("name=\"password\""), "{}", login.body);
        let rd = login.url.split("rd=").nth(1).map(urldecode).unwrap_or_default();
        let posted = b
            .http
            .post(format!("{}/auth/local", self.proxy.url))
            .header("origin", &self.proxy.url)
            .form(&[("user", user), ("password", &common::password_of(user)), ("rd", &rd)])
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), StatusCode::SEE_OTHER);
        let next = posted.headers()["location"].to_str().unwrap().to_owned();
        let landed = b.follow(&absolute(&self.proxy.url, &next)).await;
        assert!(
            landed.url.starts_with(&self.proxy.url) || landed.url.starts_with(&self.app(app)),
            "{landed:?}"
        );
        b
    }
}

fn urldecode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn absolute(base: &str, location: &str) -> String {
    url::Url::parse(base).unwrap().join(location).unwrap().to_string()
}

struct Browser {
    http: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
}

#[derive(Debug)]
struct Landed {
    status: StatusCode,
    url: String,
    body: String,
}

impl Browser {
    /// GETs `url` and follows redirects as a browser would, cookies and all.
    async fn follow(&self, url: &str) -> Landed {
        let mut url = url.to_owned();
        for _ in 0..12 {
            let r = self.http.get(&url).send().await.expect("an answer");
            if r.status().is_redirection() {
                let to = r.headers()["location"].to_str().unwrap().to_owned();
                url = absolute(&url, &to);
                continue;
            }
            return Landed {
                status: r.status(),
                url,
                body: r.text().await.unwrap(),
            };
        }
        panic!("a redirect loop ending at {url}");
    }

    async fn get_json(&self, url: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut req = self.http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Logs out of the proxy with the console's form, as the button does.
    async fn log_out(&self, proxy: &str) {
        let home = self.follow(&format!("{proxy}/")).await;
        let csrf = Browser::csrf(&home.body);
        self.http
            .post(format!("{proxy}/auth/logout"))
            .header("origin", proxy)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
    }

    /// The CSRF token of a proxy page's form.
    fn csrf(body: &str) -> String {
        let at = body.find("name=\"csrf\" value=\"").expect("a form") + "name=\"csrf\" value=\"".len();
        body[at..].split('"').next().unwrap().to_owned()
    }

    /// The app cookie this browser holds for `origin`.
    fn app_cookie(&self, origin: &str) -> String {
        use reqwest::cookie::CookieStore;
        let header = self
            .jar
            .cookies(&url::Url::parse(origin).unwrap())
            .unwrap_or_else(|| panic!("no cookies for {origin}"));
        header
            .to_str()
            .unwrap()
            .split("; ")
            .find_map(|c| c.strip_prefix("__Host-jitgate-app="))
            .unwrap_or_else(|| panic!("no app cookie for {origin}: {header:?}"))
            .to_owned()
    }
}

/// Every value a header had at the upstream.
fn header_values<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str() == Some(name))
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_requests_access_and_reaches_the_app_as_itself() {
    let stand = Stand::start().await;
    let alice = stand.logged_in("alice", "echo").await;

    // Logged in, no grant: the proxy's page names the profiles and offers the form.
    let page = alice.follow(&format!("{}/d/1?x=y", stand.app("echo"))).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert!(
        page.url.starts_with(&format!("{}/apps/echo?rd=", stand.proxy.url)),
        "{}",
        page.url
    );
    assert!(page.body.contains("No access to echo yet"), "{}", page.body);
    assert!(
        page.body.contains("echo-admin") && page.body.contains("echo-read"),
        "{}",
        page.body
    );
    assert!(page.body.contains("GET, HEAD under /d/"), "{}", page.body);
    assert!(
        !page.body.contains(">quiet<"),
        "only profiles that open echo: {}",
        page.body
    );

    // One step: the form on that page.
    let rd = format!("{}/d/1?x=y", stand.app("echo"));
    let posted = alice
        .http
        .post(format!("{}/requests", stand.proxy.url))
        .header("origin", &stand.proxy.url)
        .form(&[
            ("csrf", Browser::csrf(&page.body).as_str()),
            ("profile", "echo-admin"),
            ("reason", "INC-7: fix the dashboard"),
            ("duration", "30m"),
            ("rd", &rd),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::SEE_OTHER);
    let to = posted.headers()["location"].to_str().unwrap().to_owned();
    let request_id = to
        .strip_prefix("/requests/")
        .and_then(|r| r.split('?').next())
        .unwrap_or_else(|| panic!("{to}"))
        .to_owned();

    // Still pending: the app sends alice back to the request page.
    let waiting = alice.follow(&rd).await;
    assert!(waiting.url.contains("/apps/echo"), "{waiting:?}");

    let bob = stand.proxy.login("bob");
    bob.run(&["approve", &request_id], None).success();
    let grant = stand.proxy.login("alice").json(&["grants"]);
    let grant_id = grant[0]["id"].as_str().unwrap().to_owned();

    // Approved: the app answers, and the upstream learns who calls, whatever the client said.
    alice
        .jar
        .add_cookie_str("theme=dark; Path=/", &url::Url::parse(&rd).unwrap());
    let (status, echo) = alice
        .get_json(
            &rd,
            &[
                ("X-Jitgate-User", "root"),
                ("x_jitgate_user", "root"),
                ("X-JITGATE-GROUPS", "security"),
                ("X-Jitgate-Grant", "g-forged"),
                ("X-Jitgate-Assertion", "forged"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Host", "evil.example"),
                ("Forwarded", "for=6.6.6.6"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["path"], "/d/1");
    assert_eq!(echo["query"], "x=y");
    assert_eq!(header_values(&echo, "x-jitgate-user"), ["alice"], "{echo}");
    assert_eq!(header_values(&echo, "x-jitgate-groups"), ["ops"], "{echo}");
    assert_eq!(header_values(&echo, "x-jitgate-grant"), [grant_id.as_str()], "{echo}");
    assert!(header_values(&echo, "x_jitgate_user").is_empty(), "{echo}");
    assert_eq!(header_values(&echo, "x-forwarded-for"), ["127.0.0.1"], "{echo}");
    assert_eq!(header_values(&echo, "x-forwarded-host"), ["echo.localhost"], "{echo}");
    assert!(header_values(&echo, "forwarded").is_empty(), "{echo}");
    let cookies = header_values(&echo, "cookie").join("; ");
    assert_eq!(cookies, "theme=dark", "the proxy's cookies stay with the proxy");

    // The assertion: ES256, verifiable with the JWKS, for this app, this grant, a minute.
    let assertion = header_values(&echo, "x-jitgate-assertion")[0].to_owned();
    let jwks: Value = alice
        .http
        .get(format!("{}/.well-known/jwks.json", stand.proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    let decoding =
        jsonwebtoken::DecodingKey::from_ec_components(key["x"].as_str().unwrap(), key["y"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[stand.app("echo")]);
    validation.set_issuer(&[stand.proxy.url.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(&assertion, &decoding, &validation)
        .unwrap_or_else(|e| panic!("the assertion does not verify: {e}"))
        .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["grant"], grant_id.as_str());
    assert_eq!(claims["groups"], json!(["ops"]));
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let life = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(life > 0 && life <= 60, "{claims}");
    let mut other_app = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    other_app.set_audience(&[stand.app("quiet")]);
    assert!(jsonwebtoken::decode::<Value>(&assertion, &decoding, &other_app).is_err());

    // The first request of the grant is in the audit log, once.
    let events = stand.proxy.admin(&["audit", "export"], None).success().stdout;
    let first: Vec<&str> = events.lines().filter(|l| l.contains("\"app.first_request\"")).collect();
    assert_eq!(first.len(), 1, "{events}");
    assert!(first[0].contains(&grant_id), "{}", first[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cookie_opens_only_its_own_app() {
    let stand = Stand::start().await;
    stand
        .proxy
        .login("alice")
        .json(&["request", "quiet", "--reason", "x", "--for", "10m"]);
    stand
        .proxy
        .login("alice")
        .json(&["request", "echo-read", "--reason", "x", "--for", "10m"]);
    let alice = stand.logged_in("alice", "echo").await;
    let (status, _) = alice.get_json(&format!("{}/d/ok", stand.app("echo")), &[]).await;
    assert_eq!(status, StatusCode::OK);

    // Echo's cookie, carried by hand to quiet's host: quiet sends the browser to log in.
    let cookie = alice.app_cookie(&stand.app("echo"));
    let bare = stand.browser();
    let r = bare
        .http
        .get(format!("{}/", stand.app("quiet")))
        .header("cookie", format!("__Host-jitgate-app={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let to = r.headers()["location"].to_str().unwrap();
    assert!(
        to.starts_with(&format!("{}/auth/app?app=quiet", stand.proxy.url)),
        "{to}"
    );

    // The same cookie on its own app works; forged or altered ones do not.
    let on_echo = |c: String| {
        let bare = &bare;
        let url = format!("{}/d/ok", stand.app("echo"));
        async move {
            bare.http
                .get(url)
                .header("cookie", format!("__Host-jitgate-app={c}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(on_echo(cookie.clone()).await, StatusCode::OK);
    let mut altered = cookie.clone();
    altered.pop();
    altered.push(if cookie.ends_with('A') { 'B' } else { 'A' });
    for forged in [
        altered,
        "garbage".into(),
        stand.proxy.login("alice").token(),
        String::new(),
    ] {
        assert_eq!(on_echo(forged).await, StatusCode::FOUND);
    }
    // Two app cookies (one planted): neither is trusted.
    let r = bare
        .http
        .get(format!("{}/d/ok", stand.app("echo")))
        .header(
            "cookie",
            format!("__Host-jitgate-app={cookie}; __Host-jitgate-app=planted"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);

    // A used or unknown sign-in code is refused with a line that says what to do.
    let r = bare
        .http
        .get(format!("{}/.jitgate/callback?code=not-a-code", stand.app("echo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("used already or has expired"));

    // A cookie signed with the proxy's own key but past its expiry is refused; the same
    // cookie re-signed to expire later passes, so it is the expiry that refuses it.
    let resign = |exp: i64| {
        use base64::Engine;
        let parts: Vec<&str> = cookie.split('.').collect();
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[0])
                .unwrap(),
        )
        .unwrap();
        let mut claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        claims["exp"] = json!(exp);
        let key = std::fs::read(stand.proxy.dir.join("certs/token-signing-key.pem")).unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = header["kid"].as_str().map(str::to_owned);
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(&key).unwrap()).unwrap()
    };
    let now = chrono::Utc::now().timestamp();
    assert_eq!(on_echo(resign(now + 600)).await, StatusCode::OK);
    assert_eq!(on_echo(resign(now - 5)).await, StatusCode::FOUND);

    // A sign-in code handed to another browser (to sign its user in as alice) is refused
    // there, before the store is even asked.
    let start = alice.http.get(format!("{}/", stand.app("quiet"))).send().await.unwrap();
    assert_eq!(start.status(), StatusCode::FOUND);
    let to_proxy = start.headers()["location"].to_str().unwrap().to_owned();
    assert!(to_proxy.contains("&state="), "{to_proxy}");
    let handoff = alice.http.get(&to_proxy).send().await.unwrap();
    assert_eq!(handoff.status(), StatusCode::SEE_OTHER);
    let callback = handoff.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("{}/.jitgate/callback?code=", stand.app("quiet"))),
        "{callback}"
    );
    let victim = stand.browser();
    let r = victim.http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("set-cookie").is_none());
    // A browser with a state cookie of its own is refused too, and the code is not used
    // up by it: the browser it was made for still signs in with it.
    let planted = format!("__Host-jitgate-app-state={}", "A".repeat(43));
    let r = victim
        .http
        .get(&callback)
        .header("cookie", &planted)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("set-cookie").is_none());
    // In the browser that started it the sign-in completes, once.
    let r = alice.http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let r = alice.http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a code works once");
    // Without the state the app's host gave, the proxy sends the browser to the app to start over.
    let r = alice
        .http
        .get(format!(
            "{}/auth/app?app=quiet&rd={}/x",
            stand.proxy.url,
            stand.app("quiet")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}/x", stand.app("quiet"))
    );

    // Logging out of the proxy ends the app session too.
    alice.log_out(&stand.proxy.url).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(on_echo(cookie).await, StatusCode::FOUND);
}

/// One request over a fresh TLS connection with `sni`, written byte for byte (no client
/// library normalizes the path or the framing); the whole answer as text.
async fn raw(stand: &Stand, sni: &str, request: &str) -> String {
    let mut tls = tls_to(stand, sni, b"http/1.1").await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_and_host_must_name_the_same_app() {
    let stand = Stand::start().await;
    stand
        .proxy
        .login("alice")
        .json(&["request", "quiet", "--reason", "x", "--for", "10m"]);
    let alice = stand.logged_in("alice", "quiet").await;
    let cookie = alice.app_cookie(&stand.app("quiet"));
    let p = stand.port;
    let ask = |host: String| {
        format!("GET /x HTTP/1.1\r\nHost: {host}\r\nCookie: __Host-jitgate-app={cookie}\r\nConnection: close\r\n\r\n")
    };
    // The right pair works.
    let ok = raw(&stand, "quiet.localhost", &ask(format!("quiet.localhost:{p}"))).await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    // A connection opened for echo (or the proxy) is not used for quiet, nor the reverse.
    for (sni, host) in [
        ("echo.localhost", format!("quiet.localhost:{p}")),
        ("localhost", format!("quiet.localhost:{p}")),
        ("quiet.localhost", format!("127.0.0.1:{p}")),
        ("quiet.localhost", format!("localhost:{p}")),
    ] {
        let r = raw(&stand, sni, &ask(host.clone())).await;
        assert_eq!(status_of(&r), 421, "SNI {sni}, Host {host}: {r}");
    }
    // Two Host headers, or a host under the base domain that is no app.
    let two = raw(
        &stand,
        "quiet.localhost",
        &format!(
            "GET / HTTP/1.1\r\nHost: quiet.localhost:{p}\r\nHost: echo.localhost:{p}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status_of(&two), 400, "{two}");
    let nosuch = raw(
        &stand,
        "localhost",
        &format!("GET / HTTP/1.1\r\nHost: nosuch.localhost:{p}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&nosuch), 404, "{nosuch}");
    assert!(nosuch.contains("no app is served"), "{nosuch}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_stay_inside_a_path_scope() {
    let stand = Stand::start().await;
    // carol's only way in: echo-read, GET and HEAD under /d/.
    stand
        .proxy
        .login("carol")
        .json(&["request", "echo-read", "--reason", "x", "--for", "10m"]);
    let carol = stand.logged_in("carol", "echo").await;
    let cookie = carol.app_cookie(&stand.app("echo"));
    // Her landing page, `/`, was denied: the grant has not been used on the app yet.
    let firsts = || {
        let events = stand.proxy.admin(&["audit", "export"], None).success().stdout;
        events.matches("\"app.first_request\"").count()
    };
    assert_eq!(firsts(), 0);
    let p = stand.port;
    let ask = |method: &str, path: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: echo.localhost:{p}\r\nCookie: __Host-jitgate-app={cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    for (method, path, want, upstream_path) in [
        ("GET", "/d/x", 200, Some("/d/x")),
        ("GET", "//d//x", 200, Some("/d/x")),
        ("GET", "/d/./x/../y", 200, Some("/d/y")),
        ("GET", "/d/%78", 200, Some("/d/x")),
        ("HEAD", "/d/x", 200, None),
        ("GET", "/d/../admin", 403, None),
        ("GET", "/d/%2e%2e/admin", 403, None),
        ("GET", "/d/%2E%2E/%2E%2E/admin", 403, None),
        ("GET", "/d/.%2e/admin", 403, None),
        ("GET", "//admin", 403, None),
        ("GET", "/D/x", 403, None),
        ("GET", "/dashboards", 403, None),
        ("GET", "/d", 403, None),
        ("POST", "/d/x", 403, None),
        ("DELETE", "/d/x", 403, None),
        ("GET", "/d/..%2fadmin", 400, None),
        ("GET", "/d/%2Fadmin", 400, None),
        ("GET", "/d/..%5cadmin", 400, None),
        ("GET", "/d/..;/admin", 400, None),
        ("GET", "/d/%zz", 400, None),
    ] {
        let r = raw(&stand, "echo.localhost", &ask(method, path)).await;
        assert_eq!(status_of(&r), want, "{method} {path}: {r}");
        if let Some(up) = upstream_path {
            assert!(
                r.contains(&format!("\"path\":\"{up}\"")),
                "{method} {path} reached the upstream as: {r}"
            );
        }
        if want == 403 {
            assert!(r.contains("no active grant allows"), "{method} {path}: {r}");
            // echo-admin would, but carol may not request it.
            assert!(r.contains("No profile you may request allows it"), "{r}");
        }
    }
    let seen = stand.seen.paths();
    assert!(seen.iter().all(|p| p.starts_with("/d/")), "the upstream saw {seen:?}");
    assert_eq!(firsts(), 1, "the grant's first allowed request is recorded once");
    // Every denial is audited.
    let events = stand.proxy.admin(&["audit", "export"], None).success().stdout;
    // (The landing page after the login, `/`, was denied too.) The five spellings of
    // `/admin` are one path once normalized: the same denial within 10 s is audited once.
    let denied = events
        .lines()
        .filter(|l| l.contains("\"app.denied\"") && !l.contains("\"target\":\"echo GET /\""))
        .count();
    assert_eq!(denied, 6, "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_framing_and_header_abuse_end_at_the_proxy() {
    let stand = Stand::start().await;
    stand
        .proxy
        .login("carol")
        .json(&["request", "echo-read", "--reason", "x", "--for", "10m"]);
    let carol = stand.logged_in("carol", "echo").await;
    let cookie = carol.app_cookie(&stand.app("echo"));
    let p = stand.port;
    let head = format!("Host: echo.localhost:{p}\r\nCookie: __Host-jitgate-app={cookie}\r\n");

    // Content-Length beside Transfer-Encoding: whatever the proxy answers, the request
    // hidden in the body never reaches the upstream as a request of its own.
    let smuggle = format!(
        "GET /d/x HTTP/1.1\r\n{head}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n{head}\r\n"
    );
    let r = raw(&stand, "echo.localhost", &smuggle).await;
    assert!(matches!(status_of(&r), 200 | 400), "{r}");
    assert!(!r.contains("\"path\":\"/admin\""), "{r}");

    // Too many headers, a header too large, a request line too long.
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw(
        &stand,
        "echo.localhost",
        &format!("GET /d/x HTTP/1.1\r\n{head}{many}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&r), 431, "{r}");
    let big = "a".repeat(70 * 1024);
    let r = raw(
        &stand,
        "echo.localhost",
        &format!("GET /d/x HTTP/1.1\r\n{head}X-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&r), 431, "{r}");
    let r = raw(
        &stand,
        "echo.localhost",
        &format!("GET /d/{big} HTTP/1.1\r\n{head}Connection: close\r\n\r\n"),
    )
    .await;
    assert!(matches!(status_of(&r), 414 | 431), "{r}");
    assert!(
        stand.seen.paths().iter().all(|p| p == "/d/x"),
        "{:?}",
        stand.seen.paths()
    );
}

type WebSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` on `app` with this app cookie.
async fn websocket(
    stand: &Stand,
    app: &str,
    path: &str,
    cookie: &str,
) -> Result<WebSocket, tokio_tungstenite::tungstenite::Error> {
    let tls = tls_to(stand, &format!("{app}.localhost"), b"http/1.1").await;
    websocket_on(tls, stand, app, path, cookie).await
}

/// Opens a WebSocket on a connection already open to `app`.
async fn websocket_on(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    stand: &Stand,
    app: &str,
    path: &str,
    cookie: &str,
) -> Result<WebSocket, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let host = format!("{app}.localhost");
    let mut req = format!("wss://{host}:{}{path}", stand.port)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", format!("__Host-jitgate-app={cookie}").parse().unwrap());
    tokio_tungstenite::client_async(req, tls).await.map(|(ws, _)| ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_pass_and_close_when_the_grant_is_revoked() {
    let stand = Stand::start().await;
    let alice_cli = stand.alice_holds_echo_admin();
    let grant = alice_cli.json(&["grants"])[0]["id"].as_str().unwrap().to_owned();
    alice_cli.json(&["request", "quiet", "--reason", "x", "--for", "30m"]);
    let alice = stand.logged_in("alice", "echo").await;
    let cookie = alice.app_cookie(&stand.app("echo"));

    let mut ws = websocket(&stand, "echo", "/ws", &cookie)
        .await
        .expect("the upgrade passes");
    ws.send(tokio_tungstenite::tungstenite::Message::text("hello"))
        .await
        .unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "hello");

    // The same on a keep-alive connection that answered a request and then sat idle long
    // enough for the proxy to park it (hand hyper's buffers back).
    let mut conn = tokio::io::BufReader::new(tls_to(&stand, "echo.localhost", b"http/1.1").await);
    conn.get_mut()
        .write_all(
            format!(
                "GET /first HTTP/1.1\r\nHost: echo.localhost:{}\r\nCookie: __Host-jitgate-app={cookie}\r\n\r\n",
                stand.port
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(common::read_answer(&mut conn).await.0, 200);
    assert!(conn.buffer().is_empty());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut later = websocket_on(conn.into_inner(), &stand, "echo", "/ws", &cookie)
        .await
        .expect("the upgrade passes on a parked connection");
    later
        .send(tokio_tungstenite::tungstenite::Message::text("later"))
        .await
        .unwrap();
    let back = later.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "later");

    // An app with WebSockets off refuses the upgrade.
    let _ = alice.follow(&format!("{}/", stand.app("quiet"))).await;
    let quiet_cookie = alice.app_cookie(&stand.app("quiet"));
    match websocket(&stand, "quiet", "/ws", &quiet_cookie).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("quiet took a WebSocket: {:?}", other.map(|_| ())),
    }

    // A stream asked for with upgrade headers that the upstream answers as a plain stream.
    let mut pseudo = tls_to(&stand, "echo.localhost", b"http/1.1").await;
    pseudo
        .write_all(
            format!(
                "GET /stream HTTP/1.1\r\nHost: echo.localhost:{}\r\nCookie: __Host-jitgate-app={cookie}\r\n\
                 Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                stand.port
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut first = [0u8; 256];
    let n = pseudo.read(&mut first).await.unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );

    // An upstream that answers 101 without the handshake's proof gets no splice.
    match websocket(&stand, "echo", "/ws-liar", &cookie).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 502),
        other => panic!("a fake WebSocket switch passed: {:?}", other.map(|_| ())),
    }
    let log = strip_ansi(&stand.proxy.log());
    assert!(
        log.lines()
            .any(|l| l.contains("no valid Sec-WebSocket-Accept") && l.contains("app=echo")),
        "{log}"
    );

    // Revoked: the open WebSocket closes at once.
    let sam = stand.proxy.login("sam");
    sam.run(&["revoke", &grant, "--reason", "done"], None).success();
    let revoked = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return Instant::now(),
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => return Instant::now(),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the WebSocket was not closed");
    let took = ended.saturating_duration_since(revoked);
    eprintln!("WebSocket closed {took:?} after the revocation returned");
    assert!(
        took < Duration::from_millis(100),
        "closed {took:?} after the revocation"
    );

    // So did the one opened on a parked connection.
    let later_ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match later.next().await {
                None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        later_ended.is_ok(),
        "a WebSocket opened on a parked connection outlived the revocation"
    );

    // The pseudo-upgraded stream ended with the grant too.
    let drained = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = [0u8; 4096];
        loop {
            match pseudo.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "a stream behind upgrade headers outlived the revocation"
    );

    // And the next page load is sent to request access again.
    let again = alice.follow(&format!("{}/d/1", stand.app("echo"))).await;
    assert!(again.url.contains("/apps/echo"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_closes_that_browsers_websockets_and_nothing_else() {
    let stand = Stand::start().await;
    let alice_cli = stand.alice_holds_echo_admin();
    let laptop = stand.logged_in("alice", "echo").await;
    let phone = stand.logged_in("alice", "echo").await;
    let mut on_laptop = websocket(&stand, "echo", "/ws", &laptop.app_cookie(&stand.app("echo")))
        .await
        .expect("the upgrade passes");
    let mut on_phone = websocket(&stand, "echo", "/ws", &phone.app_cookie(&stand.app("echo")))
        .await
        .expect("the upgrade passes");
    // A keep-alive connection whose last request was let in: the proxy remembers with
    // what for a moment, and the logout must end that at once too.
    let laptop_cookie = laptop.app_cookie(&stand.app("echo"));
    let mut kept = tokio::io::BufReader::new(tls_to(&stand, "echo.localhost", b"http/1.1").await);
    let get = format!(
        "GET /d/kept HTTP/1.1\r\nHost: echo.localhost:{}\r\nCookie: __Host-jitgate-app={laptop_cookie}\r\n\r\n",
        stand.port
    );
    kept.get_mut().write_all(get.as_bytes()).await.unwrap();
    assert_eq!(common::read_answer(&mut kept).await.0, 200);
    let let_in = Instant::now();

    laptop.log_out(&stand.proxy.url).await;
    let logged_out = Instant::now();
    kept.get_mut().write_all(get.as_bytes()).await.unwrap();
    let (status, answer) = common::read_answer(&mut kept).await;
    // Within the memo's 250 ms of the request before it on an unloaded machine; the unit
    // test in `apps::memo` covers the memo whatever the timing.
    eprintln!(
        "the kept connection's next request came {:?} after its last, {:?} after the logout",
        let_in.elapsed(),
        logged_out.elapsed()
    );
    assert_eq!(
        status, 302,
        "a logged-out session's cookie on a kept connection: {answer}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match on_laptop.next().await {
                None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => {
                    return Instant::now()
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the laptop's WebSocket outlived its logout");
    let took = ended.saturating_duration_since(logged_out);
    eprintln!("WebSocket closed {took:?} after the logout returned");
    assert!(took < Duration::from_millis(100), "closed {took:?} after the logout");

    // The phone's session, and the grant, go on.
    on_phone
        .send(tokio_tungstenite::tungstenite::Message::text("still here"))
        .await
        .unwrap();
    let back = on_phone.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "still here");
    assert_eq!(alice_cli.json(&["grants"])[0]["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_answer_ends_when_the_grant_expires() {
    let stand = Stand::start().await;
    let alice_cli = stand.proxy.login("alice");
    alice_cli.json(&["request", "quiet", "--reason", "x", "--for", "4s"]);
    let grants = alice_cli.json(&["grants"]);
    let expires =
        chrono::DateTime::parse_from_rfc3339(grants[0]["expires_at"].as_str().unwrap_or_else(|| panic!("{grants}")))
            .unwrap()
            .with_timezone(&chrono::Utc);
    let alice = stand.logged_in("alice", "quiet").await;
    // Three ticks, then silence: the cut must come from the grant's end, not ride on a
    // tick (or on any other wake-up of the connection).
    let resp = alice
        .http
        .get(format!("{}/slow-stream", stand.app("quiet")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp = resp;
    let mut ticks = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the stream stalled")
        {
            Ok(Some(_)) => ticks += 1,
            Err(_) | Ok(None) => break chrono::Utc::now(),
        }
    };
    let late = (ended - expires).num_milliseconds();
    eprintln!("the stream ended {late} ms after the grant's expiry, after {ticks} chunks");
    assert_eq!(ticks, 3, "the stream must have gone silent before the expiry");
    assert!((-2..100).contains(&late), "ended {late} ms after the expiry");
    let again = alice.follow(&format!("{}/stream", stand.app("quiet"))).await;
    assert!(again.url.contains("/apps/quiet"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_waiting_for_its_answer_ends_with_the_grant() {
    let stand = Stand::start().await;
    let alice_cli = stand.alice_holds_echo_admin();
    let grant = alice_cli.json(&["grants"])[0]["id"].as_str().unwrap().to_owned();
    let alice = stand.logged_in("alice", "echo").await;
    // A long poll: the upstream answers only after a minute.
    let poll = alice.http.get(format!("{}/slow", stand.app("echo")));
    // An upload that stops half-way: the upstream waits for the rest before it answers.
    let (more, rest) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    more.send(Ok(bytes::Bytes::from_static(b"first half"))).await.unwrap();
    let upload = alice
        .http
        .post(format!("{}/upload", stand.app("echo")))
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(
            tokio_stream_from(rest).map(|chunk| chunk.map(hyper::body::Frame::data)),
        )));
    // Each answer is timed where it lands, so neither waits on the other's.
    let timed = |answer: reqwest::RequestBuilder| {
        tokio::spawn(async move {
            let resp = answer.send().await;
            (Instant::now(), resp)
        })
    };
    let (poll, upload) = (timed(poll), timed(upload));
    // Both are at the upstream, waiting.
    let seen = common::eventually(Duration::from_secs(5), || {
        let paths = stand.seen.paths();
        (paths.iter().any(|p| p == "/upload") && paths.iter().any(|p| p == "/slow")).then_some(())
    });
    assert!(
        seen.is_some(),
        "not both reached the upstream: {:?}",
        stand.seen.paths()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished() && !upload.is_finished(), "answered before the cut");

    let sam = stand.proxy.login("sam");
    sam.run(&["revoke", &grant, "--reason", "done"], None).success();
    let revoked = Instant::now();
    for (what, answer) in [("long poll", poll), ("upload", upload)] {
        let (at, resp) = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .unwrap_or_else(|_| panic!("the {what} outlived its grant"))
            .unwrap();
        let resp = resp.unwrap();
        let took = at.saturating_duration_since(revoked);
        eprintln!("the {what} was answered {took:?} after the revocation returned");
        assert!(took < Duration::from_millis(100), "{what}: {took:?}");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
        let text = resp.text().await.unwrap();
        assert!(
            text.contains(&format!(
                "grant {grant} ended while the app was answering this request: the app may have acted on it"
            )),
            "{what}: {text}"
        );
    }
    drop(more);
}

/// The receiving end of a channel as a stream, for a request body sent piece by piece.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_the_upstream_cleaned_like_headers() {
    // An https upstream that speaks HTTP/2, where trailers pass as they are sent.
    let (tls_up, _, pin) = upstream_tls().await;
    let stand = Stand::start_with(|_| {
        format!(
            r#"
[[apps]]
name = "secure"
upstream = "https://{tls_up}"
pin_sha256 = "{pin}"

[[profiles]]
name = "secure"
max_duration = "1h"
requesters = ["group:ops"]
approvals_required = 0
http = {{ apps = ["secure"] }}
"#
        )
    })
    .await;
    stand
        .proxy
        .login("alice")
        .json(&["request", "secure", "--reason", "x", "--for", "10m"]);
    let alice = stand.logged_in("alice", "secure").await;
    let cookie = alice.app_cookie(&stand.app("secure"));
    let smuggled = [
        ("x-jitgate-user", "mallory"),
        ("x_jitgate_grant", "grant-forged"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-http-method-override", "DELETE"),
        ("cookie", "__Host-jitgate-app=stolen"),
        ("x-checksum", "kept"),
    ];
    let check = |how: &str, echoed: &Value| {
        assert_eq!(
            echoed["version"], "HTTP/2.0",
            "{how}: the upstream hop is HTTP/2: {echoed}"
        );
        assert_eq!(echoed["body"], "hello", "{how}: {echoed}");
        let trailers: Vec<(&str, &str)> = echoed["trailers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t[0].as_str().unwrap(), t[1].as_str().unwrap()))
            .collect();
        assert_eq!(trailers, [("x-checksum", "kept")], "{how}: {echoed}");
        // The identity the upstream hears is the proxy's, in the headers.
        assert_eq!(header_values(echoed, "x-jitgate-user"), ["alice"], "{how}");
    };

    // HTTP/2 from the client: trailers in a HEADERS frame after the data.
    let tls = tls_to(&stand, "secure.localhost", b"h2").await;
    let (h2c, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let req = http::Request::post(format!("https://secure.localhost:{}/t", stand.port))
        .header("cookie", format!("__Host-jitgate-app={cookie}"))
        .body(())
        .unwrap();
    let mut h2c = h2c.ready().await.unwrap();
    let (resp, mut send) = h2c.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from_static(b"hello"), false).unwrap();
    let mut trailers = http::HeaderMap::new();
    for (k, v) in smuggled {
        trailers.append(http::HeaderName::from_static(k), http::HeaderValue::from_static(v));
    }
    send.send_trailers(trailers).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    check("HTTP/2", &serde_json::from_slice(&h2_body(resp).await).unwrap());

    // HTTP/1.1 from the client: a chunked body whose last chunk carries trailer fields.
    let fields: String = smuggled.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let answer = raw(
        &stand,
        "secure.localhost",
        &format!(
            "POST /t HTTP/1.1\r\nHost: secure.localhost:{}\r\nCookie: __Host-jitgate-app={cookie}\r\n\
             Transfer-Encoding: chunked\r\nTrailer: x-checksum\r\nConnection: close\r\n\r\n\
             5\r\nhello\r\n0\r\n{fields}\r\n",
            stand.port
        ),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let json = answer.split("\r\n\r\n").nth(1).unwrap();
    // The answer may come chunked: the JSON is between the first '{' and the last '}'.
    let json = &json[json.find('{').unwrap()..=json.rfind('}').unwrap()];
    check("HTTP/1.1", &serde_json::from_str(json).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_down_gets_a_page_naming_the_app() {
    let stand = Stand::start().await;
    stand.alice_holds_echo_admin();
    let alice = stand.logged_in("alice", "down").await;
    let page = alice.follow(&format!("{}/status", stand.app("down"))).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{page:?}");
    assert!(page.body.contains("down is unreachable"), "{}", page.body);
    let log = strip_ansi(&stand.proxy.log());
    assert!(
        log.lines()
            .any(|l| l.contains("upstream unreachable") && l.contains("app=down") && l.contains("grant=grant-")),
        "{log}"
    );
}

/// The proxy's log without terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_as_the_upstream_serves_files_through_the_proxy() {
    use sha2::{Digest, Sha256};
    let mut nginx = None;
    let stand = Stand::start_with(|dir| {
        let n = common::nginx::Nginx::start(dir);
        let port = n.port;
        nginx = Some(n);
        format!(
            "[[apps]]\nname = \"files\"\nupstream = \"http://127.0.0.1:{port}\"\n\
             [[profiles]]\nname = \"files-read\"\nmax_duration = \"1h\"\nrequesters = [\"group:ops\"]\n\
             approvals_required = 0\nhttp = {{ apps = [{{ name = \"files\", methods = [\"GET\", \"HEAD\"] }}] }}\n"
        )
    })
    .await;
    let nginx = nginx.unwrap();
    let big: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(nginx.root.join("big.bin"), &big).unwrap();
    stand
        .proxy
        .login("alice")
        .json(&["request", "files-read", "--reason", "x", "--for", "10m"]);
    let b = stand.logged_in("alice", "files").await;
    let files = stand.app("files");

    let page = b.follow(&format!("{files}/")).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert!(page.body.contains("served by nginx"), "{}", page.body);

    // 4 MiB streamed through intact, several times over pooled connections.
    for _ in 0..3 {
        let r = b.http.get(format!("{files}/big.bin")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], big.len().to_string().as_str());
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        let got = r.bytes().await.unwrap();
        assert_eq!(Sha256::digest(&got), Sha256::digest(&big));
        // nginx's own answers pass as they are: a conditional GET, a range, a 404.
        let r = b
            .http
            .get(format!("{files}/big.bin"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    }
    let r = b
        .http
        .get(format!("{files}/big.bin"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &big[10..20]);
    let r = b.http.head(format!("{files}/big.bin")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = b.http.get(format!("{files}/missing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains("nginx"));
    // The grant is read-only: nginx never sees the POST.
    let r = b.http.post(format!("{files}/big.bin")).body("x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // nginx logged nothing wrong beyond the file that is not there.
    let log = nginx.log();
    assert!(
        log.lines()
            .all(|l| !l.contains("[error]") || l.contains("/missing\" failed")),
        "{log}"
    );
}

/// The whole body of an HTTP/2 answer, its flow-control window given back as it comes.
async fn h2_body(resp: http::Response<h2::RecvStream>) -> Vec<u8> {
    let mut body = resp.into_body();
    let mut all = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    all
}

/// A TLS connection to the proxy for `app`'s host, offering `alpn`.
async fn tls_to(
    stand: &Stand,
    server_name: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    common::tls_connect(&stand.proxy.ca, stand.port, server_name, alpn).await
}

/// Requests `path` on quiet every 50 ms while `attack` runs; the slowest answer.
async fn victim_while(stand: &Stand, b: &Browser, attack: impl std::future::Future<Output = ()>) -> Duration {
    let url = format!("{}/v", stand.app("quiet"));
    let victim = async {
        let mut worst = Duration::ZERO;
        for _ in 0..40 {
            let t = Instant::now();
            let r = b.http.get(&url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.unwrap();
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worst
    };
    let (worst, ()) = tokio::join!(victim, attack);
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_and_slowloris_do_not_starve_other_users() {
    let stand = Stand::start().await;
    stand
        .proxy
        .login("alice")
        .json(&["request", "quiet", "--reason", "x", "--for", "10m"]);
    let victim = stand.logged_in("alice", "quiet").await;
    let cookie = victim.app_cookie(&stand.app("quiet"));

    // HTTP/2: open a stream and reset it at once, as fast as the client can.
    let tls = tls_to(&stand, "quiet.localhost", b"h2").await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the proxy speaks HTTP/2"
    );
    let (mut h2c, connection) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(connection);
    // A well-behaved request over HTTP/2 first: it is served like any other.
    let req = http::Request::get(format!("https://quiet.localhost:{}/h2", stand.port))
        .header("cookie", format!("__Host-jitgate-app={cookie}"))
        .body(())
        .unwrap();
    h2c = h2c.ready().await.unwrap();
    let (resp, _) = h2c.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed: Value = serde_json::from_slice(&h2_body(resp).await).unwrap();
    assert_eq!(echoed["path"], "/h2");
    // quiet has pass_identity_headers = false: the upstream hears nothing of who calls.
    for h in [
        "x-jitgate-user",
        "x-jitgate-groups",
        "x-jitgate-grant",
        "x-jitgate-assertion",
    ] {
        assert!(header_values(&echoed, h).is_empty(), "{h} in {echoed}");
    }
    assert_eq!(header_values(&echoed, "x-forwarded-proto"), ["https"]);
    // quiet samples every request line into the audit log.
    let sampled = common::eventually(Duration::from_secs(5), || {
        let events = stand.proxy.admin(&["audit", "export"], None).success().stdout;
        events
            .lines()
            .find(|l| l.contains("\"app.request\"") && l.contains("\"/h2\""))
            .map(str::to_owned)
    });
    assert!(sampled.is_some_and(|l| l.contains("\"method\":\"GET\"")));
    let (resets, ended) = (
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let (r, e) = (Arc::clone(&resets), Arc::clone(&ended));
    let port = stand.port;
    let attack = async move {
        for _ in 0..20_000 {
            let req = http::Request::get(format!("https://quiet.localhost:{port}/reset"))
                .header("cookie", format!("__Host-jitgate-app={cookie}"))
                .body(())
                .unwrap();
            let ready = match h2c.clone().ready().await {
                Ok(c) => c,
                Err(_) => {
                    e.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            };
            h2c = ready;
            match h2c.send_request(req, true) {
                Ok((_resp, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => {
                    e.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    };
    let worst = victim_while(&stand, &victim, attack).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    let sent = resets.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("rapid reset: {sent} resets sent before the proxy ended the connection; the victim's slowest answer took {worst:?}");
    assert!(
        ended.load(std::sync::atomic::Ordering::Relaxed),
        "the proxy took {sent} rapid resets without ending the connection"
    );
    assert!(worst < Duration::from_secs(1), "the victim waited {worst:?}");

    // Slowloris: many connections that never finish their request head, and some that
    // never finish the TLS handshake. Others are served all the while.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut t = tls_to(&stand, "quiet.localhost", b"http/1.1").await;
        t.write_all(format!("GET /slow HTTP/1.1\r\nHost: quiet.localhost:{port}\r\n").as_bytes())
            .await
            .unwrap();
        slow.push(t);
    }
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let started = Instant::now();
    let drip = async {
        // One more header byte per connection every second, for a few seconds.
        for _ in 0..3 {
            for t in slow.iter_mut() {
                let _ = t.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let worst = victim_while(&stand, &victim, drip).await;
    assert!(
        worst < Duration::from_secs(1),
        "the victim waited {worst:?} beside slow clients"
    );
    // The proxy gives a request head 10 s and a TLS handshake 10 s, then hangs up.
    let mut t = slow.pop().unwrap();
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(15), t.read(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "a slow request head was not cut after {:?}",
        started.elapsed()
    );
    let mut s = silent.pop().unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection was kept after {:?}",
        started.elapsed()
    );
    eprintln!("slow clients cut after {:?}", started.elapsed());
}
