//! Logging in through a real OpenID Connect provider (node `oidc-provider`): the browser
//! code flow with PKCE, the CLI's loopback and device logins, and every way a login can be
//! forged, replayed or misdirected.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::idp::{browser, complete_device, idp_login, idp_password, TestIdp};
use common::{Backend, Proxy, TestDb, User, BIN, WALKTHROUGH_PROFILES};
use reqwest::StatusCode;

fn session_file(user: &User) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(user.home.join("session.json")).unwrap()).unwrap()
}

fn proxy_with(idp: &TestIdp, db: &TestDb, extra: &str) -> Proxy {
    let profiles = format!("{WALKTHROUGH_PROFILES}\n{extra}\n{}", idp.oidc_config("corp"));
    Proxy::start(db.dir.path(), &db.url, &profiles)
}

fn browser_for(proxy: &Proxy) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&proxy.ca).unwrap()).unwrap();
    browser().add_root_certificate(ca).build().unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in a {} answer", r.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Starts a login at the proxy and returns the IdP URL it sends the browser to.
async fn start(b: &reqwest::Client, proxy: &Proxy, query: &str) -> String {
    let r = b.get(format!("{}/auth/login?{query}", proxy.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", r.text().await.unwrap());
    let pre = set_cookies(&r);
    assert!(
        pre.iter().any(|c| c.starts_with("__Host-jitgate-login=")
            && c.contains("Secure")
            && c.contains("HttpOnly")
            && c.contains("Path=/")),
        "{pre:?}"
    );
    location(&r)
}

/// A whole browser login as `email`; returns the proxy's answer to the callback.
async fn browser_login(b: &reqwest::Client, proxy: &Proxy, email: &str, rd: &str) -> reqwest::Response {
    let at_idp = start(b, proxy, &format!("idp=corp&rd={}", urlencode(rd))).await;
    let callback = idp_login(b, &at_idp, email, &idp_password(email)).await;
    assert!(
        callback.starts_with(&format!("{}/auth/callback?", proxy.url)),
        "{callback}"
    );
    b.get(&callback).send().await.unwrap()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Who the browser's session belongs to, if it has one: the logout page names them.
async fn session_user(b: &reqwest::Client, proxy: &Proxy) -> Option<String> {
    let r = b.get(format!("{}/auth/logout", proxy.url)).send().await.unwrap();
    if r.status() == StatusCode::SEE_OTHER {
        return None;
    }
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.unwrap();
    let user = body.split("End your session as ").nth(1)?.split('?').next()?.to_owned();
    Some(user)
}

async fn csrf_of(b: &reqwest::Client, proxy: &Proxy) -> String {
    let body = b
        .get(format!("{}/auth/logout", proxy.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned()
}

fn session_cookie(r: &reqwest::Response) -> Option<String> {
    set_cookies(r)
        .into_iter()
        .find(|c| c.starts_with("__Host-jitgate=") && !c.starts_with("__Host-jitgate=;"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_logs_in_at_the_idp_and_out_again() {
    let idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = proxy_with(&idp, &db, "");
    let b = browser_for(&proxy);
    assert_eq!(session_user(&b, &proxy).await, None);

    let r = browser_login(&b, &proxy, "alice@example.com", "/requests/req-1").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/requests/req-1");
    let cookie = session_cookie(&r).expect("a session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    assert_eq!(session_user(&b, &proxy).await.as_deref(), Some("alice@example.com"));

    // The login is in the audit log with the IdP's subject and groups.
    let audit = proxy.admin(&["audit", "export"], None).success().stdout;
    let started = audit
        .lines()
        .find(|l| l.contains("\"session.started\""))
        .expect("session.started");
    for part in [
        "\"actor\":\"alice@example.com\"",
        "\"target\":\"corp\"",
        "\"subject\":\"u-alice\"",
        "\"groups\":[\"dba\"]",
    ] {
        assert!(started.contains(part), "{part} not in {started}");
    }

    // Logout ends the session on the server, clears the cookie and goes to the IdP.
    let stolen = cookie.split(';').next().unwrap().to_owned();
    let csrf = csrf_of(&b, &proxy).await;
    let r = b
        .post(format!("{}/auth/logout", proxy.url))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = location(&r);
    assert!(to.starts_with(&idp.url("/session/end")), "{to}");
    assert!(to.contains("post_logout_redirect_uri="), "{to}");
    assert!(set_cookies(&r)
        .iter()
        .any(|c| c.starts_with("__Host-jitgate=;") && c.contains("Max-Age=0")));
    assert_eq!(session_user(&b, &proxy).await, None);

    // The old cookie, replayed from elsewhere, opens nothing.
    let replay = browser_for(&proxy);
    let r = replay
        .get(format!("{}/auth/logout", proxy.url))
        .header("cookie", &stolen)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "a logged-out cookie still works");
}

#[tokio::test(flavor = "multi_thread")]
async fn idp_groups_drive_policy_and_the_cli_logs_in_through_loopback_and_device() {
    let idp = TestIdp::start();
    // On PostgreSQL: the other tests here run on SQLite.
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = proxy_with(&idp, &db, "");

    // Alice (group dba at the IdP) logs in from the CLI through her browser.
    let alice = User {
        home: proxy.dir.join("home-alice"),
    };
    let out = cli_loopback_login(&proxy, &alice, "alice@example.com").await;
    assert!(out.contains("as alice@example.com (groups: dba)"), "{out}");
    let r = alice
        .run(
            &["request", "db-patch", "--reason", "INC-4411", "--for", "1h", "-o", "id"],
            None,
        )
        .success();
    let req = r.stdout.trim().to_owned();
    assert!(req.starts_with("req-"), "{req}");

    // Bob (dba-leads) logs in with the device grant and approves.
    let bob = User {
        home: proxy.dir.join("home-bob"),
    };
    let out = cli_device_login(&proxy, &idp, &bob, "bob@example.com").await;
    assert!(out.contains("as bob@example.com (groups: dba-leads)"), "{out}");
    bob.run(&["approve", &req], None).success();
    let grants = alice.json(&["grants"]);
    assert_eq!(grants[0]["profile"], "db-patch", "{grants}");
    assert_eq!(grants[0]["state"], "active", "{grants}");

    // Whoami names where the identity came from.
    let me = alice.json(&["status"]);
    assert_eq!(me["identity"]["user"], "alice@example.com", "{me}");

    // An admin disabling the IdP user stops the token at once.
    proxy.admin(&["users", "disable", "alice@example.com"], None).success();
    alice.run(&["grants"], None).fails(1, "disabled");
}

/// The link of the page that asks whether a CLI login is the browser user's own.
async fn continue_link(r: reqwest::Response) -> String {
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.unwrap();
    assert!(body.contains("Log in the jitgate CLI?"), "{body}");
    let href = body
        .split("id=\"continue\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no continue link: {body}"));
    href.replace("&amp;", "&")
}

/// `jitgate login` through the IdP, running, with its output piped.
fn spawn_login(proxy: &Proxy, user: &User, how: &str) -> std::process::Child {
    let ca = proxy.ca.to_str().unwrap();
    Command::new(BIN)
        .args(["login", "--proxy", &proxy.url, "--ca-cert", ca, how])
        .env("JITGATE_HOME", &user.home)
        .env_remove("JITGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `jitgate login` without --user and plays the browser for it.
async fn cli_loopback_login(proxy: &Proxy, user: &User, email: &str) -> String {
    let mut child = spawn_login(proxy, user, "--no-browser");
    let url = first_line_after(child.stderr.take().unwrap(), "open this URL in a browser:", true);
    assert!(url.starts_with(&format!("{}/auth/login?", proxy.url)), "{url}");
    assert!(url.contains("cli_redirect=http%3A%2F%2F127.0.0.1%3A"), "{url}");
    let b = browser_for(proxy);
    let r = b.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let callback = idp_login(&b, &location(&r), email, &idp_password(email)).await;
    let r = b.get(&callback).send().await.unwrap();
    assert!(
        session_cookie(&r).is_none(),
        "a CLI login must not start a browser session"
    );
    let back = continue_link(r).await;
    assert!(
        back.starts_with("http://127.0.0.1:") && back.contains("code="),
        "{back}"
    );
    let r = b.get(&back).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    finish(child)
}

async fn cli_device_login(proxy: &Proxy, idp: &TestIdp, user: &User, email: &str) -> String {
    let mut child = spawn_login(proxy, user, "--device");
    let line = first_line_after(child.stderr.take().unwrap(), "enter the code ", false);
    let code = line.rsplit("enter the code ").next().unwrap().trim().to_owned();
    complete_device(idp, &code, email, &idp_password(email)).await;
    finish(child)
}

/// Reads stderr until a line containing `marker`; returns that line, or the next one when
/// `next` is set. The rest of stderr is drained in the background.
fn first_line_after(stderr: std::process::ChildStderr, marker: &str, next: bool) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = marker.to_owned();
    std::thread::spawn(move || {
        let marker = wanted;
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        let mut seen = Vec::new();
        while let Some(l) = lines.next() {
            if l.contains(&marker) {
                let found = if next { lines.next().unwrap_or_default() } else { l };
                let _ = tx.send(Ok(found.trim().to_owned()));
                lines.for_each(drop);
                return;
            }
            seen.push(l);
        }
        let _ = tx.send(Err(seen.join("\n")));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(line)) => line,
        other => panic!("the CLI never printed {marker:?}: {other:?}"),
    }
}

fn finish(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "jitgate login failed: {stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_replayed_and_crossed_callbacks_start_no_session() {
    let idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = proxy_with(&idp, &db, "");
    let cb = |q: &str| format!("{}/auth/callback?{q}", proxy.url);

    // No pre-login cookie at all.
    let b = browser_for(&proxy);
    let r = b.get(cb("state=x&code=y")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("did not start a login"));

    // Missing and forged state, with a real pre-login cookie.
    start(&b, &proxy, "idp=corp").await;
    let r = b.get(cb("code=y")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("has no state"));
    start(&b, &proxy, "idp=corp").await;
    let r = b.get(cb("state=forged&code=y")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("state does not match"));

    // A state from another browser's login: Mallory lures Alice's browser to the callback
    // of a login Mallory started (login CSRF). Alice's cookie names another state.
    let alice = browser_for(&proxy);
    let mallory = browser_for(&proxy);
    start(&alice, &proxy, "idp=corp").await;
    let at_idp = start(&mallory, &proxy, "idp=corp").await;
    let mallorys = idp_login(
        &mallory,
        &at_idp,
        "carol@example.com",
        &idp_password("carol@example.com"),
    )
    .await;
    let r = alice.get(&mallorys).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(session_cookie(&r).is_none());
    assert_eq!(session_user(&alice, &proxy).await, None);

    // A replayed callback: the same code and state with the same pre-login cookie.
    let b = browser_for(&proxy);
    let r = b
        .get(format!("{}/auth/login?idp=corp", proxy.url))
        .send()
        .await
        .unwrap();
    let pre = set_cookies(&r)[0].split(';').next().unwrap().to_owned();
    let callback = idp_login(
        &b,
        &location(&r),
        "alice@example.com",
        &idp_password("alice@example.com"),
    )
    .await;
    let first = b.get(&callback).send().await.unwrap();
    assert!(session_cookie(&first).is_some());
    let again = browser_for(&proxy);
    let r = again.get(&callback).header("cookie", &pre).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(session_cookie(&r).is_none());
    assert!(r.text().await.unwrap().contains("already completed once"));

    // A tampered pre-login cookie.
    let mut forged = pre.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let r = browser_for(&proxy)
        .get(&callback)
        .header("cookie", &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("invalid or expired"));

    // Another issuer named in the answer (RFC 9207 mix-up).
    let b = browser_for(&proxy);
    let at_idp = start(&b, &proxy, "idp=corp").await;
    let callback = idp_login(&b, &at_idp, "alice@example.com", &idp_password("alice@example.com")).await;
    let mixed = callback.replace(&urlencode(&idp.issuer), &urlencode("https://evil.example"));
    assert_ne!(mixed, callback, "the IdP names itself in the callback");
    let r = b.get(&mixed).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("another identity provider"));

    // No issuer at all, from an IdP that always names itself.
    let b = browser_for(&proxy);
    let at_idp = start(&b, &proxy, "idp=corp").await;
    let callback = idp_login(&b, &at_idp, "alice@example.com", &idp_password("alice@example.com")).await;
    let mut url = url::Url::parse(&callback).unwrap();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "iss")
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(kept);
    let r = b.get(url.as_str()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("does not name its identity provider"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_id_tokens_are_refused() {
    let idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = proxy_with(&idp, &db, "");
    for (mode, says) in [
        ("wrong-nonce", "nonce"),
        ("wrong-aud", "audience"),
        ("wrong-iss", "issuer"),
        ("expired", "expired"),
        ("alg-none", "ID token"),
        ("hs256-with-public-key", "algorithm"),
        ("unknown-kid", "a key the IdP does not publish"),
        ("bad-signature", "ID token"),
    ] {
        let b = browser_for(&proxy);
        let at_idp = start(&b, &proxy, "idp=corp").await;
        let callback = idp_login(&b, &at_idp, "alice@example.com", &idp_password("alice@example.com")).await;
        idp.tamper(mode).await;
        let r = b.get(&callback).send().await.unwrap();
        let status = r.status();
        let cookie = session_cookie(&r);
        let body = r.text().await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{mode}: {body}");
        assert!(cookie.is_none(), "{mode}: a session was started");
        assert!(body.to_lowercase().contains(&says.to_lowercase()), "{mode}: {body}");
        assert!(body.contains("No session was started"), "{mode}: {body}");
    }
    // The IdP still works for an honest login afterwards.
    let b = browser_for(&proxy);
    let r = browser_login(&b, &proxy, "alice@example.com", "/").await;
    assert!(session_cookie(&r).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn disallowed_addresses_cannot_log_in() {
    let idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = proxy_with(&idp, &db, "");
    for (email, says) in [
        ("eve@evil.com", "the domain evil.com may not log in"),
        ("mallory@example.com", "is not a plain email address"),
        ("unverified@example.com", "has not verified"),
    ] {
        let b = browser_for(&proxy);
        let r = browser_login(&b, &proxy, email, "/").await;
        let status = r.status();
        let cookie = session_cookie(&r);
        let body = r.text().await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{email}: {body}");
        assert!(cookie.is_none(), "{email}");
        assert!(body.contains(says), "{email}: {body}");
    }
    // A user name is bound to the subject that first logged in with it: another person the
    // IdP later gives the same (verified) address to is not that user.
    let b = browser_for(&proxy);
    assert!(session_cookie(&browser_login(&b, &proxy, "alice@example.com", "/").await).is_some());
    let b = browser_for(&proxy);
    let r = browser_login(&b, &proxy, "alice.twin@example.com", "/").await;
    let status = r.status();
    let cookie = session_cookie(&r);
    let body = r.text().await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(cookie.is_none());
    assert!(body.contains("belongs to another account"), "{body}");
    let audit = proxy.admin(&["audit", "export"], None).success().stdout;
    assert_eq!(audit.matches("\"login.failed\"").count(), 4, "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_from_a_prefixed_idp_carry_its_prefix() {
    let idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let config = format!(
        "{WALKTHROUGH_PROFILES}\n{}groups_prefix = \"corp:\"\n",
        idp.oidc_config("corp")
    );
    let proxy = Proxy::start(db.dir.path(), &db.url, &config);
    let alice = User {
        home: proxy.dir.join("home-alice"),
    };
    let out = cli_loopback_login(&proxy, &alice, "alice@example.com").await;
    assert!(out.contains("(groups: corp:dba)"), "{out}");
    // group:dba is not corp:dba: the profiles for dba are not hers to request.
    alice
        .run(&["request", "db-patch", "--reason", "x", "--for", "1h"], None)
        .fails(1, "db-patch");
}

#[tokio::test(flavor = "multi_thread")]
async fn renewals_stop_after_the_session_lifetime() {
    let idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let profiles = format!(
        "{WALKTHROUGH_PROFILES}\n[auth]\nsession_lifetime = \"8s\"\n{}",
        idp.oidc_config("corp")
    );
    let proxy = Proxy::start_with(db.dir.path(), &db.url, &profiles, "token_lifetime = \"6s\"");
    let alice = User {
        home: proxy.dir.join("home-alice"),
    };
    cli_loopback_login(&proxy, &alice, "alice@example.com").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let r = alice.run(&["grants"], None).success();
    assert!(!r.stderr.contains("could not renew"), "{}", r.stderr);
    assert!(session_file(&alice)["refreshable"] == true);
    tokio::time::sleep(Duration::from_millis(4700)).await;
    let r = alice.run(&["grants"], None).success();
    assert!(r.stderr.contains("older than [auth] session_lifetime"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn device_logins_are_rate_limited_per_source() {
    let db = TestDb::new(Backend::Sqlite).await;
    // Nothing listens on the discard port: every start fails at the IdP, and still counts.
    let config = format!(
        "{WALKTHROUGH_PROFILES}\n[[oidc]]\nname = \"corp\"\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"
    );
    let proxy = Proxy::start(db.dir.path(), &db.url, &config);
    let b = browser_for(&proxy);
    let mut statuses = Vec::new();
    for _ in 0..21 {
        let r = b
            .post(format!("{}/api/v1/login/device", proxy.url))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    assert!(
        statuses[..20].iter().all(|s| *s == StatusCode::BAD_GATEWAY),
        "{statuses:?}"
    );
    assert_eq!(statuses[20], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_idp_down_gives_a_clear_page_and_a_rotated_key_still_works() {
    let mut idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = proxy_with(&idp, &db, "");
    let b = browser_for(&proxy);
    let r = browser_login(&b, &proxy, "alice@example.com", "/").await;
    assert!(session_cookie(&r).is_some());

    // Restarted with a new signing key: the unknown kid refreshes the JWKS.
    idp.restart();
    let b = browser_for(&proxy);
    let r = browser_login(&b, &proxy, "bob@example.com", "/").await;
    assert!(session_cookie(&r).is_some(), "{}", r.text().await.unwrap());
    assert!(proxy.log().contains("refreshed the IdP's signing keys"));

    // Down while the user is at its login page: the code cannot be redeemed; a clear page
    // and no session.
    let b = browser_for(&proxy);
    let at_idp = start(&b, &proxy, "idp=corp").await;
    let callback = idp_login(&b, &at_idp, "alice@example.com", &idp_password("alice@example.com")).await;
    idp.stop();
    let r = b.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(session_cookie(&r).is_none());
    let body = r.text().await.unwrap();
    assert!(
        body.contains("Identity provider unavailable") && body.contains("No session was started"),
        "{body}"
    );

    // Down before the proxy ever reached it: the login cannot even start.
    let db2 = TestDb::new(Backend::Sqlite).await;
    let cold = proxy_with(&idp, &db2, "");
    let b = browser_for(&cold);
    let r = b.get(format!("{}/auth/login?idp=corp", cold.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(set_cookies(&r).is_empty());
    let body = r.text().await.unwrap();
    assert!(
        body.contains("Identity provider unavailable") && body.contains("No session was started"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn open_redirects_and_bad_session_cookies_are_refused() {
    let idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = proxy_with(&idp, &db, "[auth]\nsession_lifetime = \"3s\"\n");
    for evil in [
        "//evil.com",
        "https://evil.com\\@localhost",
        "/\\evil.com",
        "javascript:alert(1)",
        "%2F%2Fevil.com",
    ] {
        let b = browser_for(&proxy);
        let r = browser_login(&b, &proxy, "alice@example.com", evil).await;
        let to = location(&r);
        assert!(
            to.starts_with('/') && !to.starts_with("//") && !to.contains('\\'),
            "{evil:?} -> {to:?}"
        );
    }

    let b = browser_for(&proxy);
    let r = browser_login(&b, &proxy, "alice@example.com", "/").await;
    let cookie = session_cookie(&r).unwrap();
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("__Host-jitgate=")
        .to_owned();
    let probe = |v: String| {
        let proxy = &proxy;
        async move {
            browser_for(proxy)
                .get(format!("{}/auth/logout", proxy.url))
                .header("cookie", format!("__Host-jitgate={v}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(probe(value.clone()).await, StatusCode::OK);
    let mut tampered = value.clone();
    let c = tampered.pop().unwrap();
    tampered.push(if c == 'x' { 'y' } else { 'x' });
    assert_eq!(probe(tampered).await, StatusCode::SEE_OTHER);
    assert_eq!(probe("A".repeat(43)).await, StatusCode::SEE_OTHER);
    assert_eq!(probe("not a session".into()).await, StatusCode::SEE_OTHER);
    // Expired: the session lifetime here is 3 s.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(probe(value).await, StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cli_code_works_once_and_only_with_its_verifier() {
    use base64::Engine;
    use sha2::Digest;
    let idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = proxy_with(&idp, &db, "");
    let verifier = "a".repeat(43);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let b = browser_for(&proxy);

    // Not a loopback redirect: refused before anything else.
    let r = b
        .get(format!(
            "{}/auth/login?idp=corp&cli_redirect={}&cli_challenge={challenge}&cli_state=s",
            proxy.url,
            urlencode("http://evil.com:80/cb")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let code = |b: reqwest::Client| {
        let proxy = &proxy;
        let challenge = challenge.clone();
        async move {
            let at_idp = start(
                &b,
                proxy,
                &format!(
                    "idp=corp&cli_redirect={}&cli_challenge={challenge}&cli_state=st",
                    urlencode("http://127.0.0.1:9/cb")
                ),
            )
            .await;
            let callback = idp_login(&b, &at_idp, "alice@example.com", &idp_password("alice@example.com")).await;
            let back = continue_link(b.get(&callback).send().await.unwrap()).await;
            let url = url::Url::parse(&back).unwrap();
            assert_eq!(url.query_pairs().find(|(k, _)| k == "state").unwrap().1, "st");
            url.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
        }
    };
    let exchange = |code: String, verifier: String| {
        let proxy = &proxy;
        async move {
            browser_for(proxy)
                .post(format!("{}/api/v1/login/exchange", proxy.url))
                .json(&serde_json::json!({ "code": code, "code_verifier": verifier }))
                .send()
                .await
                .unwrap()
        }
    };
    // Wrong verifier: refused, and the code is spent.
    let c = code(browser_for(&proxy)).await;
    assert_eq!(
        exchange(c.clone(), "b".repeat(43)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(exchange(c, verifier.clone()).await.status(), StatusCode::UNAUTHORIZED);
    // Right verifier: a token, once.
    let c = code(browser_for(&proxy)).await;
    let r = exchange(c.clone(), verifier.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["user"], "alice@example.com");
    assert_eq!(body["groups"], serde_json::json!(["dba"]));
    let r = exchange(c, verifier).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("unknown, used or expired"));
}

#[test]
fn the_cli_says_how_to_log_in_when_no_idp_fits() {
    let db = TestDb::blocking(Backend::Sqlite);
    let plain = Proxy::start(db.dir.path(), &db.url, WALKTHROUGH_PROFILES);
    let user = User {
        home: plain.dir.join("home-x"),
    };
    let ca = plain.ca.to_str().unwrap().to_owned();
    user.run(
        &["login", "--proxy", &plain.url, "--ca-cert", &ca, "--no-browser"],
        None,
    )
    .fails(
        1,
        "no identity provider configured; log in as a local user with --user NAME",
    );
    // clap's own usage error (several lines, exit 2).
    let r = user.run(
        &["login", "--proxy", &plain.url, "--ca-cert", &ca, "--password-stdin"],
        None,
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--user"), "{r:?}");
    drop(plain);

    // Nothing listens on the discard port: the listing needs no IdP, only its name.
    let db = TestDb::blocking(Backend::Sqlite);
    let config = format!(
        "{WALKTHROUGH_PROFILES}\n[[oidc]]\nname = \"corp\"\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"
    );
    let proxy = Proxy::start(db.dir.path(), &db.url, &config);
    let ca = proxy.ca.to_str().unwrap().to_owned();
    user.run(
        &["login", "--proxy", &proxy.url, "--ca-cert", &ca, "--idp", "other"],
        None,
    )
    .fails(1, "no identity provider named \"other\"; it has: corp");
    // The IdP is down: the device login says so at once.
    user.run(&["login", "--proxy", &proxy.url, "--ca-cert", &ca, "--device"], None)
        .fails(1, "the identity provider corp is unreachable");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idp_login_is_renewed_after_a_recheck_at_the_idp() {
    let idp = TestIdp::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let profiles = format!("{WALKTHROUGH_PROFILES}\n{}", idp.oidc_config("corp"));
    // Tokens live 8 s here; the CLI renews them once past half their life.
    let proxy = Proxy::start_with(db.dir.path(), &db.url, &profiles, "token_lifetime = \"8s\"");
    let alice = User {
        home: proxy.dir.join("home-alice"),
    };
    cli_loopback_login(&proxy, &alice, "alice@example.com").await;
    let first = session_file(&alice);
    assert_eq!(first["refreshable"], true, "{first}");
    let first_token = first["token"].as_str().unwrap().to_owned();

    // Before half-life: nothing is renewed.
    alice.run(&["grants"], None).success();
    assert_eq!(session_file(&alice)["token"], first_token.as_str());

    // The IdP's admin puts Alice in another group; past half-life the next command renews
    // her token after asking the IdP, and the new group takes effect.
    idp.change_account(
        "alice@example.com",
        serde_json::json!({ "groups": ["dba", "security"] }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let me = alice.json(&["status"]);
    assert_eq!(me["identity"]["groups"], serde_json::json!(["dba", "security"]), "{me}");
    let second = session_file(&alice);
    let second_token = second["token"].as_str().unwrap().to_owned();
    assert_ne!(second_token, first_token);
    // The old token was replaced: it no longer works anywhere.
    let r = browser_for(&proxy)
        .get(format!("{}/api/v1/whoami", proxy.url))
        .bearer_auth(&first_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let audit = proxy.admin(&["audit", "export"], None).success().stdout;
    assert!(
        audit.contains("\"login.refreshed\"") && audit.contains("\"token.replaced\""),
        "{audit}"
    );

    // Disabled at the IdP: the renewal is refused; the token works until it ends, and then
    // Alice must log in again.
    idp.change_account("alice@example.com", serde_json::json!({ "disabled": true }))
        .await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let r = alice.run(&["grants"], None).success();
    assert!(r.stderr.contains("could not renew your login"), "{}", r.stderr);
    assert_eq!(session_file(&alice)["refreshable"], false);
    assert!(proxy
        .admin(&["audit", "export"], None)
        .success()
        .stdout
        .contains("\"login.refresh_failed\""));
    // Once the last token's own expiry has passed (it is whole seconds), it is over.
    let ends = jitgate::time::Timestamp::parse_rfc3339(session_file(&alice)["expires_at"].as_str().unwrap()).unwrap();
    let left = jitgate::time::Timestamp::now().until(ends);
    tokio::time::sleep(left + Duration::from_millis(1100)).await;
    alice.run(&["grants"], None).fails(1, "expired");
}
