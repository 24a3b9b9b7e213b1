//! The web console, as people use it from their browsers: a requester asks for access, an
//! approver decides on the deep link, an admin revokes, and each page follows along without a
//! reload. Beside the story: forged, replayed and cross-site posts, refusals and escaping. Every
//! HTML answer is checked for the strict CSP and for markup that the CSP would block.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::idp::browser;
use common::{password_of, Backend, Proxy, TestDb, WALKTHROUGH_PROFILES};
use reqwest::header::{CONTENT_TYPE, COOKIE, ORIGIN};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// One browser: a cookie jar, no automatic redirects, the proxy's CA.
struct Browser {
    http: reqwest::Client,
    base: String,
}

/// An answer as a test reads it.
#[derive(Debug)]
struct Page {
    status: StatusCode,
    location: Option<String>,
    set_cookie: Vec<String>,
    body: String,
}

impl Browser {
    fn new(proxy: &Proxy) -> Browser {
        Browser {
            http: builder(proxy).build().unwrap(),
            base: proxy.url.clone(),
        }
    }

    /// A browser that sends this `Cookie` header and keeps no cookies of its own.
    fn with_cookie(proxy: &Proxy, cookie: &str) -> Browser {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(COOKIE, cookie.parse().unwrap());
        Browser {
            http: builder(proxy)
                .cookie_store(false)
                .default_headers(headers)
                .build()
                .unwrap(),
            base: proxy.url.clone(),
        }
    }

    async fn get(&self, path: &str) -> Page {
        read(self.http.get(format!("{}{path}", self.base))).await
    }

    /// A form post from one of the proxy's own pages (the browser sends its Origin).
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.post_from(Some(&self.base), path, form).await
    }

    async fn post_from(&self, origin: Option<&str>, path: &str, form: &[(&str, &str)]) -> Page {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(o) = origin {
            req = req.header(ORIGIN, o);
        }
        read(req).await
    }

    async fn login(&self, user: &str, rd: &str) -> Page {
        let p = self
            .post(
                "/auth/local",
                &[("user", user), ("password", &password_of(user)), ("rd", rd)],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "login as {user}: {}", p.body);
        p
    }

    /// This session's CSRF token, as the start page's forms carry it.
    async fn csrf(&self) -> String {
        let home = self.get("/").await;
        assert_eq!(home.status, StatusCode::OK);
        attr_after(&home.body, r#"name="csrf" value=""#).expect("the page has a form with a CSRF token")
    }

    /// What `console.js` polls.
    async fn version(&self) -> String {
        let r = self
            .http
            .get(format!("{}/console/state", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: Value = r.json().await.unwrap();
        v["v"].as_str().expect("a digest").to_owned()
    }

    /// Asks for `profile` through the start page's form; returns the new request's id.
    async fn request(&self, profile: &str, reason: &str, duration: &str) -> String {
        let csrf = self.csrf().await;
        let p = self
            .post(
                "/requests",
                &[
                    ("csrf", &csrf),
                    ("profile", profile),
                    ("reason", reason),
                    ("duration", duration),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        let to = p.location.unwrap();
        let id = to
            .strip_prefix("/requests/")
            .and_then(|rest| rest.split_once('?'))
            .map(|(id, _)| id.to_owned())
            .unwrap_or_else(|| panic!("a new request redirects to its page, not {to:?}"));
        assert!(id.starts_with("req-"), "{id}");
        id
    }
}

fn builder(proxy: &Proxy) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&proxy.ca).unwrap()).unwrap();
    browser().add_root_certificate(ca)
}

async fn read(req: reqwest::RequestBuilder) -> Page {
    let r = req.send().await.expect("the proxy answers");
    let headers = r.headers().clone();
    let page = Page {
        status: r.status(),
        location: headers.get("location").map(|v| v.to_str().unwrap().to_owned()),
        set_cookie: headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect(),
        body: r.text().await.unwrap(),
    };
    let html = headers
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.to_str().unwrap().starts_with("text/html"));
    if html {
        check_html(&headers, &page.body);
    }
    page
}

/// Every page carries the strict CSP, and has nothing in it that the CSP would block: no
/// inline script, no inline style, no event-handler attribute.
fn check_html(headers: &reqwest::header::HeaderMap, body: &str) {
    let csp = headers
        .get("content-security-policy")
        .expect("every page has a CSP")
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("style-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    // Under `Referrer-Policy: no-referrer` a browser posts forms with `Origin: null`, which the
    // proxy refuses as cross-site: a page with a form must let its own origin be named.
    if body.contains("<form") {
        let policy = headers.get("referrer-policy").map(|v| v.to_str().unwrap());
        assert_eq!(policy, Some("same-origin"), "{body}");
    }
    let lower = body.to_ascii_lowercase();
    assert_eq!(
        lower.matches("<script").count(),
        1,
        "one script, the console's:\n{body}"
    );
    assert!(
        lower.contains(r#"<script src="/static/console.js" defer></script>"#),
        "{body}"
    );
    for inline in [
        "<style",
        " style=",
        " onclick=",
        " onload=",
        " onsubmit=",
        "javascript:",
    ] {
        assert!(!lower.contains(inline), "{inline:?} in\n{body}");
    }
}

/// The value of the first attribute that follows `marker` (which ends with the opening quote).
fn attr_after(body: &str, marker: &str) -> Option<String> {
    let rest = &body[body.find(marker)? + marker.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// The text that follows `marker`, up to the next tag.
fn text_after(body: &str, marker: &str) -> Option<String> {
    let rest = &body[body.find(marker)? + marker.len()..];
    Some(rest[..rest.find('<')?].to_owned())
}

fn session_cookie(p: &Page) -> String {
    p.set_cookie
        .iter()
        .find_map(|c| c.strip_prefix("__Host-jitgate="))
        .and_then(|c| c.split(';').next())
        .expect("the login sets the session cookie")
        .to_owned()
}

fn start(db: &TestDb) -> Proxy {
    Proxy::start(db.dir.path(), &db.url, WALKTHROUGH_PROFILES)
}

/// The JSON API's view of a request, as `name` (with a token of their own).
async fn api_request(proxy: &Proxy, name: &str, id: &str) -> Value {
    let http = builder(proxy).build().unwrap();
    let login: Value = http
        .post(format!("{}/api/v1/login", proxy.url))
        .json(&json!({ "user": name, "password": password_of(name) }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().expect("a token");
    let r = http
        .get(format!("{}/api/v1/requests/{id}", proxy.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

fn audit(proxy: &Proxy) -> Vec<Value> {
    let out = proxy.admin(&["audit", "export"], None).success().stdout;
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn a_request_is_asked_approved_and_revoked_from_the_console() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    proxy.add_user("alice", &["dba"]);
    proxy.add_user("bob", &["dba-leads"]);
    proxy.add_user("sec", &["security"]);

    // Alice is not logged in: the start page is the login page, with the local-user form.
    let alice = Browser::new(&proxy);
    let login = alice.get("/").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains(r#"action="/auth/local""#), "{}", login.body);
    assert!(!login.body.contains("Who you are"));
    assert_eq!(alice.login("alice", "/").await.location.as_deref(), Some("/"));

    let home = alice.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    for shown in [
        "Who you are",
        "alice",
        "dba",
        "a local password",
        r#"<option value="db-patch""#,
    ] {
        assert!(home.body.contains(shown), "{shown:?} in\n{}", home.body);
    }
    assert!(home.body.contains("<dt>Admin</dt><dd>no</dd>"), "{}", home.body);
    assert!(
        !home.body.contains("Waiting for your decision"),
        "alice approves nothing"
    );
    let before = alice.version().await;
    assert_eq!(alice.version().await, before, "nothing changed, nor does the digest");

    let id = alice
        .request("db-patch", "INC-4411 vacuum the orders table", "1h")
        .await;
    let mine = alice.get(&format!("/requests/{id}?done=requested")).await;
    assert_eq!(mine.status, StatusCode::OK);
    assert!(mine.body.contains("Request sent."), "{}", mine.body);
    assert!(mine.body.contains(r#"<span class="state pending">pending</span>"#));
    assert!(mine.body.contains("Cancel this request"));
    assert!(!mine.body.contains("/approve"), "a requester gets no approve button");
    assert!(mine.body.contains(r#"data-poll="/console/state""#));
    let asked = alice.version().await;
    assert_ne!(asked, before);

    // Bob approves: the request waits for him on his start page and on its deep link.
    let bob = Browser::new(&proxy);
    bob.login("bob", &format!("/requests/{id}")).await;
    let home = bob.get("/").await;
    assert!(home.body.contains("Waiting for your decision"), "{}", home.body);
    assert!(home.body.contains(&format!(r#"action="/requests/{id}/approve""#)));
    assert!(home.body.contains("INC-4411 vacuum the orders table"));
    let deep = bob.get(&format!("/requests/{id}")).await;
    assert_eq!(deep.status, StatusCode::OK);
    for shown in [
        "alice",
        "Patch the production database",
        "as postgres",
        "INC-4411",
        "0 of 1",
    ] {
        assert!(deep.body.contains(shown), "{shown:?} in\n{}", deep.body);
    }
    assert!(deep.body.contains(&format!(r#"formaction="/requests/{id}/deny""#)));
    let csrf = bob.csrf().await;
    let back = format!("/requests/{id}");
    let approved = bob
        .post(
            &format!("/requests/{id}/approve"),
            &[("csrf", &csrf), ("reason", "looks right"), ("back", &back)],
        )
        .await;
    assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
    assert_eq!(
        approved.location.as_deref(),
        Some(format!("/requests/{id}?done=approved").as_str())
    );
    let after = bob.get(&format!("/requests/{id}?done=approved")).await;
    assert!(after.body.contains("Your approval is recorded."));
    assert!(
        after.body.contains(r#"<span class="state active">active</span>"#),
        "{}",
        after.body
    );
    assert!(after.body.contains("looks right"));

    // Alice's page would reload by itself: the digest moved, and it now shows the grant.
    let granted = alice.version().await;
    assert_ne!(granted, asked);
    let mine = alice.get(&format!("/requests/{id}")).await;
    let grant = text_after(
        &mine.body,
        "<dt>Grant</dt><dd id=\"grant\" data-grant-state=\"active\"><code>",
    )
    .expect("the request page names its grant");
    assert!(grant.starts_with("grant-"), "{grant}");
    let home = alice.get("/").await;
    assert!(
        home.body.contains("Your grants") && home.body.contains(&grant),
        "{}",
        home.body
    );
    let expires = attr_after(&home.body, r#"<span class="left" data-expires=""#).expect("a countdown");
    assert!(expires.ends_with('Z') && expires.contains('T'), "RFC 3339: {expires}");
    let left = text_after(&home.body, &format!(r#"data-expires="{expires}">"#)).unwrap();
    assert!(
        left.starts_with("59m ") && left.ends_with("s left"),
        "an hour's grant just began: {left:?}"
    );

    // The admin sees every active grant and revokes Alice's.
    let sec = Browser::new(&proxy);
    sec.login("sec", "/").await;
    let home = sec.get("/").await;
    assert!(home.body.contains("All active grants"), "{}", home.body);
    assert!(home.body.contains("<dt>Admin</dt><dd>yes</dd>"));
    assert!(
        home.body.contains(&format!(r#"action="/grants/{grant}/revoke""#)),
        "{}",
        home.body
    );
    let csrf = sec.csrf().await;
    let revoked = sec
        .post(
            &format!("/grants/{grant}/revoke"),
            &[("csrf", &csrf), ("reason", "INC-4411 closed"), ("back", "/")],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER, "{}", revoked.body);
    assert_eq!(revoked.location.as_deref(), Some("/?done=revoked"));
    assert!(sec.get("/?done=revoked").await.body.contains("Grant revoked"));

    assert_ne!(alice.version().await, granted);
    let mine = alice.get(&format!("/requests/{id}")).await;
    assert!(
        mine.body.contains(r#"<span class="state revoked">revoked</span>"#),
        "{}",
        mine.body
    );
    assert!(mine.body.contains("ended by sec") && mine.body.contains("INC-4411 closed"));
    assert!(!alice
        .get("/")
        .await
        .body
        .contains(&format!(r#"action="/grants/{grant}/revoke""#)));

    // The audit log says who approved and who revoked.
    let events = audit(&proxy);
    let find = |action: &str| {
        events
            .iter()
            .find(|e| e["action"] == action && e["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {action} for {id} in {events:#?}"))
    };
    assert_eq!(find("request.created")["actor"], "alice");
    assert_eq!(find("request.approved")["actor"], "bob");
    assert_eq!(find("request.approved")["reason"], "looks right");
    assert_eq!(find("grant.revoked")["actor"], "sec");
    assert_eq!(find("grant.revoked")["grant_id"], grant.as_str());
    assert_eq!(find("grant.revoked")["reason"], "INC-4411 closed");
}

#[tokio::test]
async fn forged_cross_site_and_refused_posts_change_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    proxy.add_user("alice", &["dba"]);
    proxy.add_user("bob", &["dba-leads"]);
    proxy.add_user("carol", &["dba", "dba-leads"]);
    proxy.add_user("dave", &["ops"]);

    let alice = Browser::new(&proxy);
    alice.login("alice", "/").await;
    let id = alice
        .request("db-patch", "<script>alert(1)</script> INC-1", "30m")
        .await;
    let alice_csrf = alice.csrf().await;

    // What people write is shown as text, never as markup.
    let bob = Browser::new(&proxy);
    bob.login("bob", "/").await;
    for page in [bob.get("/").await, bob.get(&format!("/requests/{id}")).await] {
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt; INC-1"),
            "{}",
            page.body
        );
        assert!(!page.body.contains("<script>alert(1)"));
    }

    let approve = format!("/requests/{id}/approve");
    let csrf = bob.csrf().await;
    let wrong = "A".repeat(43);
    let refused = [
        ("no token", None, vec![("reason", "ok")]),
        ("a wrong token", None, vec![("csrf", wrong.as_str()), ("reason", "ok")]),
        (
            "another session's token",
            None,
            vec![("csrf", alice_csrf.as_str()), ("reason", "ok")],
        ),
        (
            "another site's page",
            Some("https://evil.example"),
            vec![("csrf", csrf.as_str())],
        ),
        ("an opaque origin", Some("null"), vec![("csrf", csrf.as_str())]),
    ];
    for (what, origin, form) in refused {
        let p = bob.post_from(Some(origin.unwrap_or(&proxy.url)), &approve, &form).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{what}: {}", p.body);
        assert_eq!(api_request(&proxy, "bob", &id).await["state"], "pending", "{what}");
    }

    // Denying takes a reason; the page comes back saying so, and nothing is decided.
    let deny = format!("/requests/{id}/deny");
    let p = bob
        .post(&deny, &[("csrf", &csrf), ("reason", "  "), ("back", "/")])
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(p.body.contains("A reason is required to deny"), "{}", p.body);
    assert!(
        p.body.contains("Waiting for your decision"),
        "the start page again:\n{}",
        p.body
    );
    assert_eq!(api_request(&proxy, "bob", &id).await["state"], "pending");

    // Nobody approves their own request, even an approver of the profile.
    let carol = Browser::new(&proxy);
    carol.login("carol", "/").await;
    let own = carol.request("db-patch", "INC-2", "1h").await;
    let home = carol.get("/").await;
    assert!(
        home.body.contains(&format!(r#"action="/requests/{id}/approve""#)),
        "alice's is hers to decide"
    );
    assert!(
        !home.body.contains(&format!(r#"action="/requests/{own}/approve""#)),
        "not her own"
    );
    let carol_csrf = carol.csrf().await;
    let back = format!("/requests/{own}");
    let p = carol
        .post(
            &format!("/requests/{own}/approve"),
            &[("csrf", &carol_csrf), ("back", &back)],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    assert!(
        p.body.contains("You cannot approve or deny your own request."),
        "{}",
        p.body
    );
    assert!(
        p.body.contains(&format!("Request <code>{own}</code>")),
        "the request page again"
    );
    assert_eq!(api_request(&proxy, "carol", &own).await["state"], "pending");

    // Unknown and invisible requests are the same 404: the console does not confirm ids.
    assert_eq!(bob.get("/requests/req-nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(bob.get("/requests/..%2F..%2Fetc").await.status, StatusCode::NOT_FOUND);
    let p = bob.post("/requests/req-nope/approve", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND, "{}", p.body);
    let p = bob.post("/grants/grant-nope/revoke", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND, "{}", p.body);
    let dave = Browser::new(&proxy);
    dave.login("dave", "/").await;
    let unseen = dave.get(&format!("/requests/{id}")).await;
    assert_eq!(unseen.status, StatusCode::NOT_FOUND);
    assert_eq!(unseen.body, dave.get("/requests/req-nope").await.body);
    let p = dave.post(&approve, &[("csrf", &dave.csrf().await)]).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);

    // Bad request forms come back filled in, with the reason.
    let p = alice
        .post(
            "/requests",
            &[
                ("csrf", &alice_csrf),
                ("profile", "db-patch"),
                ("reason", "INC-3"),
                ("duration", "3h"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(p.body.contains("longer than profile"), "{}", p.body);
    assert!(
        p.body.contains(r#"value="INC-3""#) && p.body.contains(r#"value="3h""#),
        "{}",
        p.body
    );
    let p = alice
        .post(
            "/requests",
            &[
                ("csrf", &alice_csrf),
                ("profile", "db-patch"),
                ("reason", "x"),
                ("duration", "soon"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("is not a duration"), "{}", p.body);

    // A real decision still works, and a decided request cannot be decided again.
    let p = bob
        .post(&deny, &[("csrf", &csrf), ("reason", "use the runbook"), ("back", "/")])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location.as_deref(), Some("/?done=denied"));
    let p = bob
        .post(&approve, &[("csrf", &csrf), ("back", &format!("/requests/{id}"))])
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(p.body.contains("not pending"), "{}", p.body);
    let request = api_request(&proxy, "alice", &id).await;
    assert_eq!(request["state"], "denied");
    assert_eq!(request["decided_by"], "bob");
    assert_eq!(request["approvals"], json!([]));
}

#[tokio::test]
async fn missing_forged_and_replayed_sessions_are_logged_out() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    proxy.add_user("alice", &["dba"]);

    // Not logged in: deep links go to the login page and come back after it.
    let anon = Browser::new(&proxy);
    let p = anon.get("/requests/req-abc").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location.as_deref(), Some("/?rd=%2Frequests%2Freq-abc"));
    let login = anon.get("/?rd=%2Frequests%2Freq-abc").await;
    assert!(
        login
            .body
            .contains(r#"<input type="hidden" name="rd" value="/requests/req-abc">"#),
        "{}",
        login.body
    );
    let p = anon
        .post(
            "/requests/req-abc/approve",
            &[("csrf", "x"), ("back", "/requests/req-abc")],
        )
        .await;
    assert_eq!(p.location.as_deref(), Some("/?rd=%2Frequests%2Freq-abc"), "{}", p.body);
    assert_eq!(anon.version().await, "logged-out");
    // Somewhere else is not a place the login page sends anyone.
    let evil = anon.get("/?rd=https%3A%2F%2Fevil.example%2F").await;
    assert!(evil.body.contains(r#"name="rd" value="/">"#), "{}", evil.body);

    let signed_in = anon.login("alice", "/requests/req-abc").await;
    assert_eq!(signed_in.location.as_deref(), Some("/requests/req-abc"));
    assert_eq!(anon.get("/requests/req-abc").await.status, StatusCode::NOT_FOUND);
    assert_ne!(anon.version().await, "logged-out");

    // A cookie the proxy never issued opens nothing.
    let forged = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    assert_eq!(forged.len(), 43);
    let mallory = Browser::with_cookie(&proxy, &format!("__Host-jitgate={forged}"));
    let p = mallory.get("/").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.body.contains(r#"action="/auth/local""#) && !p.body.contains("Who you are"),
        "{}",
        p.body
    );
    assert_eq!(mallory.get("/requests/req-abc").await.status, StatusCode::SEE_OTHER);
    assert_eq!(mallory.version().await, "logged-out");

    // A cookie replayed after its session logged out opens nothing either.
    let alice = Browser::new(&proxy);
    let cookie = session_cookie(&alice.login("alice", "/").await);
    let csrf = alice.csrf().await;
    let replay = Browser::with_cookie(&proxy, &format!("__Host-jitgate={cookie}"));
    assert!(
        replay.get("/").await.body.contains("Who you are"),
        "the cookie works while logged in"
    );
    let out = alice.post("/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER, "{}", out.body);
    let p = replay.get("/").await;
    assert!(
        p.body.contains(r#"action="/auth/local""#) && !p.body.contains("Who you are"),
        "{}",
        p.body
    );
    let p = replay
        .post(
            "/requests",
            &[
                ("csrf", &csrf),
                ("profile", "db-patch"),
                ("reason", "x"),
                ("duration", "1h"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location.as_deref(), Some("/?rd=%2F"));
    let events = audit(&proxy);
    assert!(
        !events.iter().any(|e| e["action"] == "request.created"),
        "nothing was asked: {events:#?}"
    );
}

#[tokio::test]
async fn the_login_page_offers_each_identity_provider_and_carries_the_way_back() {
    let db = TestDb::new(Backend::Sqlite).await;
    // Nothing listens at these issuers: the login page only names the providers.
    let providers = "[auth]\nlocal_users = false\n\
        [[oidc]]\nname = \"corp\"\ndisplay_name = \"Corp <SSO>\"\nissuer = \"http://127.0.0.1:9/corp\"\nclient_id = \"jitgate\"\nclient_secret = \"s\"\n\
        [[oidc]]\nname = \"partners\"\ngroups_prefix = \"partners:\"\nissuer = \"http://127.0.0.1:9/partners\"\nclient_id = \"jitgate\"\nclient_secret = \"s\"\n";
    let proxy = Proxy::start(db.dir.path(), &db.url, &format!("{WALKTHROUGH_PROFILES}\n{providers}"));
    let anon = Browser::new(&proxy);
    let to = anon.get("/requests/req-abc?x=1&y=2").await.location.unwrap();
    assert_eq!(to, "/?rd=%2Frequests%2Freq-abc%3Fx%3D1%26y%3D2");
    let login = anon.get(&to).await;
    assert_eq!(login.status, StatusCode::OK);
    let corp = r#"<a class="button" href="/auth/login?idp=corp&amp;rd=%2Frequests%2Freq-abc%3Fx%3D1%26y%3D2">"#;
    assert!(
        login.body.contains(&format!("{corp}Log in with Corp &lt;SSO&gt;</a>")),
        "{}",
        login.body
    );
    assert!(
        login.body.contains(r#"href="/auth/login?idp=partners&amp;rd="#),
        "{}",
        login.body
    );
    assert!(login.body.contains(">Log in with partners</a>"));
    assert!(
        !login.body.contains("/auth/local"),
        "local users are off: no password form"
    );
}

#[tokio::test]
async fn the_console_assets_are_served_fresh_with_their_types() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    let http = builder(&proxy).build().unwrap();
    for (path, kind, has) in [
        ("/static/console.js", "text/javascript", "data-expires"),
        ("/static/console.css", "text/css", "font"),
    ] {
        let r = http.get(format!("{}{path}", proxy.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers()[CONTENT_TYPE].to_str().unwrap().starts_with(kind), "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert!(r.text().await.unwrap().contains(has), "{path}");
    }
    // The login page links exactly these, and nothing outside the proxy.
    let home = Browser::new(&proxy).get("/").await;
    assert!(home
        .body
        .contains(r#"<link rel="stylesheet" href="/static/console.css">"#));
    assert!(
        !home.body.contains("http://") && !home.body.contains("https://"),
        "{}",
        home.body
    );
}
