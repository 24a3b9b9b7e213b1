//! The HTTP API against bad input: forged and stale tokens, malformed and oversized bodies,
//! wrong passwords, and a store that goes away. Each gets a specific error and changes
//! nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{password_of, Backend, Proxy, TestDb, WALKTHROUGH_PROFILES};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(proxy: &Proxy) -> Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&proxy.ca).unwrap()).unwrap();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .unwrap();
        Client {
            http,
            base: proxy.url.clone(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.expect("the proxy answers");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, body)
    }

    async fn text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)).bearer_auth(token))
            .await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    async fn login(&self, user: &str, password: &str) -> (StatusCode, Value) {
        let body = json!({ "user": user, "password": password });
        self.send(self.http.post(format!("{}/api/v1/login", self.base)).json(&body))
            .await
    }

    async fn token(&self, user: &str) -> String {
        let (status, body) = self.login(user, &password_of(user)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

fn assert_error(got: (StatusCode, Value), status: StatusCode, error: &str, reason: &str) {
    let (s, body) = got;
    assert_eq!(s, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    let r = body["reason"].as_str().unwrap_or_default();
    assert!(r.contains(reason), "reason {r:?} lacks {reason:?}");
    assert!(!r.contains('\n') && !r.contains("Error {"), "not one clean line: {r:?}");
}

fn start(db: &TestDb) -> Proxy {
    let proxy = Proxy::start(db.dir.path(), &db.url, WALKTHROUGH_PROFILES);
    proxy.add_user("alice", &["dba"]);
    proxy.add_user("bob", &["dba-leads"]);
    proxy
}

fn forge(header: Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

#[tokio::test]
async fn forged_stale_and_revoked_tokens_are_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    let c = Client::new(&proxy);
    let good = c.token("alice").await;
    let (status, me) = c.get("/api/v1/whoami", &good).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"], "alice");

    let (_, jwks) = c.send(c.http.get(format!("{}/.well-known/jwks.json", c.base))).await;
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    let parts: Vec<&str> = good.split('.').collect();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let mut escalated = claims.clone();
    escalated["groups"] = json!(["dba", "security"]);

    let key_pem = std::fs::read(proxy.dir.join("certs/token-signing-key.pem")).unwrap();
    let real_key = EncodingKey::from_ec_pem(&key_pem).unwrap();
    let mut es256 = Header::new(Algorithm::ES256);
    es256.kid = Some(kid.clone());
    let sign = |c: &Value| jsonwebtoken::encode(&es256, c, &real_key).unwrap();
    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.clone());
        // The classic confusion: the public key used as an HMAC secret.
        jsonwebtoken::encode(&h, &escalated, &EncodingKey::from_secret(jwks.to_string().as_bytes())).unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("kubernetes");
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("https://evil.example");

    let cases = [
        (
            forge(json!({"alg": "none", "typ": "JWT"}), &escalated, b""),
            "not signed with ES256",
        ),
        (hs256, "not signed with ES256"),
        (
            forge(json!({"alg": "ES256", "kid": "0011223344556677"}), &escalated, &[0; 64]),
            "unknown signing key",
        ),
        (
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(escalated.to_string()),
                parts[2]
            ),
            "signature is invalid",
        ),
        (sign(&expired), "has expired"),
        (sign(&wrong_aud), "another audience"),
        (sign(&wrong_iss), "another proxy"),
        ("garbage".to_owned(), "malformed"),
    ];
    for (token, reason) in &cases {
        assert_error(
            c.get("/api/v1/whoami", token).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            reason,
        );
        let made = c
            .post(
                "/api/v1/requests",
                token,
                json!({"profile": "db-patch", "reason": "x", "duration": "1h"}),
            )
            .await;
        assert_error(made, StatusCode::UNAUTHORIZED, "unauthorized", reason);
    }
    let no_auth = c.send(c.http.get(format!("{}/api/v1/requests", c.base))).await;
    assert_error(no_auth, StatusCode::UNAUTHORIZED, "unauthorized", "no bearer token");
    let basic = c
        .send(
            c.http
                .get(format!("{}/api/v1/requests", c.base))
                .basic_auth("alice", Some("x")),
        )
        .await;
    assert_error(
        basic,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "must be `Bearer TOKEN`",
    );

    // Logout revokes the token at the proxy, not just on the client.
    let (status, _) = c.post("/api/v1/logout", &good, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        c.get("/api/v1/whoami", &good).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "revoked",
    );

    // None of it changed anything.
    let fresh = c.token("alice").await;
    let (_, list) = c.get("/api/v1/requests", &fresh).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn bad_bodies_get_specific_errors_and_change_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    let c = Client::new(&proxy);
    let alice = c.token("alice").await;
    let url = format!("{}/api/v1/requests", c.base);
    let raw = |body: Vec<u8>, ctype: &str| {
        c.http
            .post(&url)
            .bearer_auth(&alice)
            .header("content-type", ctype.to_owned())
            .body(body)
    };

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str, &str)> = vec![
        (
            raw(b"{\"profile\": ".to_vec(), "application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "EOF",
        ),
        (
            raw(b"[1,2]".to_vec(), "application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "invalid type",
        ),
        (
            raw(vec![b' '; 100_000], "application/json"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "larger than",
        ),
        (
            raw(b"{}".to_vec(), "text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
    ];
    for (req, status, error, reason) in cases {
        assert_error(c.send(req).await, status, error, reason);
    }
    let json_cases = [
        (
            json!({"profile": "db-patch", "duration": "1h"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "requires a reason",
        ),
        (
            json!({"profile": "db-patch", "reason": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "missing field `duration`",
        ),
        (
            json!({"profile": "db-patch", "reason": "x", "duration": "1h", "admin": true}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "unknown field `admin`",
        ),
        (
            json!({"profile": "nope", "reason": "x", "duration": "1h"}),
            StatusCode::NOT_FOUND,
            "not_found",
            "no profile named \"nope\"",
        ),
        (
            json!({"profile": "db-patch", "reason": "x", "duration": "2x"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "\"2x\" is not a duration",
        ),
        (
            json!({"profile": "db-patch", "reason": "x", "duration": "3h"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "3h is longer than profile \"db-patch\" allows (at most 2h)",
        ),
    ];
    for (body, status, error, reason) in json_cases {
        assert_error(c.post("/api/v1/requests", &alice, body).await, status, error, reason);
    }
    let bob = c.token("bob").await;
    let (status, _) = c
        .post(
            "/api/v1/requests",
            &bob,
            json!({"profile": "db-patch", "reason": "x", "duration": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "bob is not a requester of db-patch");
    assert_error(
        c.post("/api/v1/requests/req-nope/approve", &bob, json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "no request \"req-nope\"",
    );
    assert_error(
        c.get("/api/v1/nothing", &alice).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    );
    let (_, list) = c.get("/api/v1/requests", &alice).await;
    assert_eq!(list, json!([]), "no bad request left a trace");

    // Someone else's request is invisible to a bystander, and approving it is refused.
    let (_, req) = c
        .post(
            "/api/v1/requests",
            &alice,
            json!({"profile": "db-patch", "reason": "INC-2", "duration": "1h"}),
        )
        .await;
    let id = req["id"].as_str().unwrap();
    proxy.add_user("eve", &["developers"]);
    let eve = c.token("eve").await;
    assert_error(
        c.get(&format!("/api/v1/requests/{id}"), &eve).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "that you can see",
    );
    assert_error(
        c.post(&format!("/api/v1/requests/{id}/approve"), &eve, json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "",
    );
    let (_, still) = c.get(&format!("/api/v1/requests/{id}"), &alice).await;
    assert_eq!(still["state"], "pending");
    assert_eq!(still["approvals"], json!([]));
    assert_error(
        c.get("/api/v1/audit", &alice).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "only admins",
    );
}

#[tokio::test]
async fn wrong_passwords_are_refused_alike_and_rate_limited() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    let c = Client::new(&proxy);
    let wrong = c.login("alice", "not-her-password").await;
    assert_error(
        wrong,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "wrong user name or password",
    );
    let unknown = c.login("nobody", "whatever-password").await;
    assert_error(
        unknown,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "wrong user name or password",
    );
    proxy.admin(&["users", "disable", "bob"], None).success();
    let disabled = c.login("bob", &password_of("bob")).await;
    assert_error(
        disabled,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "wrong user name or password",
    );

    for _ in 0..4 {
        c.login("alice", "still-wrong-password").await;
    }
    // Five failures for alice: even her right password waits now.
    let limited = c.login("alice", &password_of("alice")).await;
    assert_error(
        limited,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many failed logins",
    );

    let admin_events = proxy.admin(&["audit", "export"], None).success().stdout;
    let failed = admin_events.lines().filter(|l| l.contains("\"login.failed\"")).count();
    assert_eq!(failed, 7, "every failed login is audited");
}

#[tokio::test]
async fn health_metrics_and_jwks() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    let c = Client::new(&proxy);
    let alice = c.token("alice").await;
    c.post(
        "/api/v1/requests",
        &alice,
        json!({"profile": "db-patch", "reason": "x", "duration": "1h"}),
    )
    .await;
    let (status, health) = c.send(c.http.get(format!("{}/healthz", c.base))).await;
    assert_eq!((status, health), (StatusCode::OK, json!({"status": "ok"})));
    let metrics = c.text("/metrics").await;
    for needle in [
        "jitgate_http_requests_total{route=\"/api/v1/requests\",method=\"POST\",status=\"201\"} 1",
        "jitgate_http_request_duration_seconds_bucket{route=\"/api/v1/login\"",
        "jitgate_active_grants",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    // The sweeper publishes the pending count within a second.
    let mut seen = String::new();
    for _ in 0..40 {
        seen = c.text("/metrics").await;
        if seen.contains("jitgate_pending_requests 1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("jitgate_pending_requests never reached 1:\n{seen}");
}

#[tokio::test]
async fn admins_read_the_audit_log_through_the_api() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    proxy.add_user("carol", &["security"]);
    let c = Client::new(&proxy);
    let alice = c.token("alice").await;
    c.post(
        "/api/v1/requests",
        &alice,
        json!({"profile": "db-patch", "reason": "INC-8", "duration": "1h"}),
    )
    .await;
    let carol = c.token("carol").await;
    let (status, events) = c.get("/api/v1/audit", &carol).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let events = events.as_array().unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "user.added",
            "user.added",
            "user.added",
            "login.succeeded",
            "request.created",
            "login.succeeded"
        ]
    );
    let created = &events[4];
    assert_eq!(created["actor"], "alice");
    assert_eq!(created["reason"], "INC-8");
    assert_eq!(created["details"]["duration"], "1h");
    assert_eq!(created["prev_hash"], events[3]["hash"]);

    let (_, page) = c.get("/api/v1/audit?after_seq=2&limit=2", &carol).await;
    let seqs: Vec<i64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4]);
    let (_, future) = c.get("/api/v1/audit?since=2999-01-01T00:00:00Z", &carol).await;
    assert_eq!(future, json!([]));
    let bad = c.get("/api/v1/audit?since=yesterday", &carol).await;
    assert_error(bad, StatusCode::BAD_REQUEST, "invalid_request", "not an RFC 3339 time");
}

#[tokio::test]
async fn disabled_users_lose_their_tokens_at_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    let c = Client::new(&proxy);
    let bob = c.token("bob").await;
    assert_eq!(c.get("/api/v1/whoami", &bob).await.0, StatusCode::OK);
    proxy.admin(&["users", "disable", "bob"], None).success();
    let refused = c.get("/api/v1/requests?pending=true", &bob).await;
    assert_error(
        refused,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "disabled or no longer exists",
    );
}

#[tokio::test]
async fn control_characters_oversized_text_and_bad_queries_are_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    proxy.add_user("eve", &["developers"]);
    let c = Client::new(&proxy);
    let alice = c.token("alice").await;
    let nul = c
        .post(
            "/api/v1/requests",
            &alice,
            json!({"profile": "db-patch", "reason": "INC\u{0}", "duration": "1h"}),
        )
        .await;
    assert_error(
        nul,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "reason: must not contain control characters",
    );
    let long = c
        .post(
            "/api/v1/requests",
            &alice,
            json!({"profile": "db-patch", "reason": "x".repeat(1001), "duration": "1h"}),
        )
        .await;
    assert_error(
        long,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "reason: longer than 1000 characters",
    );
    let query = c.get("/api/v1/requests?pending=1", &alice).await;
    assert_error(query, StatusCode::BAD_REQUEST, "invalid_query", "pending");
    let odd_id = c.get("/api/v1/requests/req%00x", &alice).await;
    assert_error(odd_id, StatusCode::NOT_FOUND, "not_found", "that you can see");
    assert_eq!(c.get("/api/v1/requests", &alice).await.1, json!([]));

    // A profile eve may neither request nor approve does not exist, as far as she can tell.
    let eve = c.token("eve").await;
    let hidden = c
        .post(
            "/api/v1/requests",
            &eve,
            json!({"profile": "db-patch", "reason": "x", "duration": "1h"}),
        )
        .await;
    let missing = c
        .post(
            "/api/v1/requests",
            &eve,
            json!({"profile": "nope", "reason": "x", "duration": "1h"}),
        )
        .await;
    assert_error(
        hidden,
        StatusCode::NOT_FOUND,
        "not_found",
        "no profile named \"db-patch\"",
    );
    assert_error(missing, StatusCode::NOT_FOUND, "not_found", "no profile named \"nope\"");

    // A user name with a NUL byte is a failed login like any other: refused, counted, audited.
    let nul_user = c.login("alice\u{0}", "whatever-password").await;
    assert_error(
        nul_user,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "wrong user name or password",
    );
    let events = proxy.admin(&["audit", "export"], None).success().stdout;
    assert!(events.contains(r#""actor":"alice?""#), "{events}");
}

#[tokio::test]
async fn a_burst_of_concurrent_guesses_gets_no_more_than_the_limit() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = start(&db);
    let c = Arc::new(Client::new(&proxy));
    let guesses: Vec<_> = (0..30)
        .map(|i| {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.login("alice", &format!("guess-number-{i}")).await.0 })
        })
        .collect();
    let mut checked = 0;
    for g in guesses {
        if g.await.unwrap() == StatusCode::UNAUTHORIZED {
            checked += 1;
        }
    }
    assert_eq!(
        checked, 5,
        "only five guesses reach the password check; the rest are rate-limited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connections_keep_serving_and_are_closed_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = Proxy::start_with(db.dir.path(), &db.url, WALKTHROUGH_PROFILES, "idle_timeout = \"3s\"");
    let port = url::Url::parse(&proxy.url).unwrap().port().unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let pause = || tokio::time::sleep(Duration::from_millis(1200));
    let mut conn = tokio::io::BufReader::new(common::tls_connect(&proxy.ca, port, "localhost", b"http/1.1").await);

    // Pauses longer than the half second after which the proxy parks a connection (hands
    // hyper's buffers back) are invisible to the client: the same connection goes on.
    for wait in [false, true] {
        if wait {
            pause().await;
        }
        conn.get_mut().write_all(get("/healthz").as_bytes()).await.unwrap();
        assert_eq!(common::read_answer(&mut conn).await.0, 200);
    }
    // Two requests in one write, after a pause: both answered, in order.
    pause().await;
    let two = get("/healthz") + &get("/no-such-page");
    conn.get_mut().write_all(two.as_bytes()).await.unwrap();
    assert_eq!(common::read_answer(&mut conn).await.0, 200);
    assert_eq!(common::read_answer(&mut conn).await.0, 404);
    // A head sent in pieces, with pauses between them longer than the park delay.
    pause().await;
    for (i, piece) in ["GET /heal", "thz HTTP/1.1\r\nHo", "st: localhost\r\n\r\n"]
        .iter()
        .enumerate()
    {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        conn.get_mut().write_all(piece.as_bytes()).await.unwrap();
    }
    assert_eq!(common::read_answer(&mut conn).await.0, 200);
    // The next head begun at once and then held back past the park delay: it waits
    // without burning the proxy's CPU, and is served when it is whole.
    conn.get_mut().write_all(b"GET /healthz HT").await.unwrap();
    let cpu = proxy.cpu_time();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spent = proxy.cpu_time() - cpu;
    assert!(
        spent < Duration::from_millis(300),
        "the proxy spent {spent:?} of CPU on a waiting head"
    );
    conn.get_mut()
        .write_all(b"TP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(common::read_answer(&mut conn).await.0, 200);
    // Two requests in two TLS records, after a pause.
    pause().await;
    conn.get_mut().write_all(get("/healthz").as_bytes()).await.unwrap();
    conn.get_mut().flush().await.unwrap();
    conn.get_mut().write_all(get("/no-such-page").as_bytes()).await.unwrap();
    assert_eq!(common::read_answer(&mut conn).await.0, 200);
    assert_eq!(common::read_answer(&mut conn).await.0, 404);

    // Then nothing but one byte of a TLS record that never comes whole: that is no
    // request, and the connection is closed once it has been idle for idle_timeout (3 s).
    let answered = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.get_mut().get_mut().0.write_all(&[0x17]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
        .await
        .expect("an idle HTTP/1.1 connection stayed open")
        .unwrap();
    let after = answered.elapsed();
    eprintln!("the idle HTTP/1.1 connection was closed {after:?} after its last answer");
    assert!(rest.is_empty(), "unasked-for bytes: {rest:?}");
    assert!(
        (Duration::from_millis(2900)..Duration::from_secs(4)).contains(&after),
        "closed {after:?} after its last answer"
    );

    // An HTTP/1.0 request after a park gets its answer and then the close it expects.
    let mut http10 = tokio::io::BufReader::new(common::tls_connect(&proxy.ca, port, "localhost", b"http/1.1").await);
    http10.get_mut().write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(common::read_answer(&mut http10).await.0, 200);
    pause().await;
    http10
        .get_mut()
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), http10.read_to_end(&mut answer))
        .await
        .expect("an HTTP/1.0 answer did not end with the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");

    // A client that says nothing at all is let go as soon.
    let mut silent = common::tls_connect(&proxy.ca, port, "localhost", b"http/1.1").await;
    let opened = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(12), silent.read_to_end(&mut rest))
        .await
        .expect("a silent HTTP/1.1 connection stayed open")
        .ok();
    let after = opened.elapsed();
    assert!(after < Duration::from_secs(5), "closed after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_and_busy_ones_kept() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = Proxy::start_with(db.dir.path(), &db.url, WALKTHROUGH_PROFILES, "idle_timeout = \"2s\"");
    proxy.add_user("alice", &["dba"]);
    let port = url::Url::parse(&proxy.url).unwrap().port().unwrap();
    let open = || async {
        let tls = common::tls_connect(&proxy.ca, port, "localhost", b"h2").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (client, connection) = h2::client::handshake(tls).await.unwrap();
        let closed = tokio::spawn(async move {
            let _ = connection.await;
            std::time::Instant::now()
        });
        (client.ready().await.unwrap(), closed)
    };
    let uri = |path: &str| format!("https://localhost:{port}{path}");

    // One request answered, then nothing: closed once the connection has been idle 2 s.
    let (mut idle, closed) = open().await;
    let (resp, _) = idle
        .send_request(http::Request::get(uri("/healthz")).body(()).unwrap(), true)
        .unwrap();
    let mut body = resp.await.unwrap().into_body();
    while body.data().await.is_some() {}
    let answered = std::time::Instant::now();
    let at = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("an idle HTTP/2 connection stayed open")
        .unwrap();
    let after = at - answered;
    eprintln!("the idle connection was closed {after:?} after its last answer");
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(4)).contains(&after),
        "closed {after:?} after its last answer"
    );

    // A client that says nothing at all is let go as soon.
    use tokio::io::AsyncReadExt;
    let mut silent = common::tls_connect(&proxy.ca, port, "localhost", b"h2").await;
    let opened = std::time::Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut sink))
        .await
        .expect("a silent HTTP/2 connection stayed open")
        .ok();
    let after = opened.elapsed();
    assert!(after < Duration::from_secs(4), "closed after {after:?}");

    // HTTP/2 spoken on a connection that agreed on HTTP/1.1 gets no HTTP/2 (and so no way
    // around its limits).
    let h1 = common::tls_connect(&proxy.ca, port, "localhost", b"http/1.1").await;
    let spoken = async {
        let (client, connection) = h2::client::handshake(h1).await?;
        tokio::spawn(connection);
        let mut client = client.ready().await?;
        let (resp, _) = client.send_request(http::Request::get(uri("/healthz")).body(()).unwrap(), true)?;
        resp.await.map(|r| r.status())
    };
    let spoken = tokio::time::timeout(Duration::from_secs(10), spoken)
        .await
        .expect("no answer either way");
    assert!(
        spoken.is_err(),
        "HTTP/2 was served on an HTTP/1.1 connection: {spoken:?}"
    );

    // A request still in flight (its upload unfinished) keeps the connection open past that.
    let (mut busy, mut closed) = open().await;
    let post = http::Request::post(uri("/api/v1/login"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (resp, mut upload) = busy.send_request(post, false).unwrap();
    upload
        .send_data(bytes::Bytes::from_static(br#"{"user":"alice","#), false)
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(3500), &mut closed)
            .await
            .is_err(),
        "a connection with a request in flight was closed"
    );
    // Not even told to go away: it still takes new requests.
    let mut busy = busy.ready().await.unwrap();
    let (health, _) = busy
        .send_request(http::Request::get(uri("/healthz")).body(()).unwrap(), true)
        .unwrap();
    assert_eq!(health.await.unwrap().status(), 200);
    let rest = format!(r#""password":"{}"}}"#, password_of("alice"));
    upload.send_data(bytes::Bytes::from(rest), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the connection stayed open once idle")
        .unwrap();
}
