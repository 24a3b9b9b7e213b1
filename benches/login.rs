//! What a browser login costs the proxy itself.
//!
//! - **Session-cookie check**: reading `__Host-jitgate` from the request's headers and finding
//!   its live session (goal: p50 under 20 µs). Sessions are cached for a second, so most checks
//!   are hits and one a second per session goes to the store; both show in the percentiles.
//! - **Callback**: the whole `/auth/callback` handler, in process (no TLS): the pre-login
//!   cookie, the state spent in the store, the code redeemed at an IdP, the ID token verified,
//!   the user recorded and the session started (goal: its own work under 2 ms p50). The IdP is
//!   an in-process stand-in on loopback that answers the token request with an RS256 token
//!   (as most IdPs sign) made beforehand, so its round trip is as short as one can be; it is
//!   measured alone in the same run and subtracted. One durable store write is measured too:
//!   the callback commits its session before it answers, so that write is its floor.
//!
//! `cargo bench --bench login` (SQLite in a temporary directory, as the embedded default).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jitgate::broker::Broker;
use jitgate::config::Config;
use jitgate::front::api::{router, ApiState, LoginLimiter};
use jitgate::front::tls::PeerAddr;
use jitgate::front::web::{session_cookie, Site};
use jitgate::identity::oidc::Providers;
use jitgate::identity::session::Sessions;
use jitgate::identity::TokenIssuer;
use jitgate::live::Live;
use jitgate::time::Timestamp;
use tower::ServiceExt;

const SESSION_CHECKS: usize = 200_000;
const CALLBACKS: usize = 400;
/// `cargo test --all-targets` runs this too (without `--bench`): then a few rounds only, to
/// prove it still works, and no numbers worth reading.
const SMOKE_CHECKS: usize = 1_000;
const SMOKE_CALLBACKS: usize = 5;
const PROXY: &str = "https://127.0.0.1:8443";

type Codes = Arc<Mutex<HashMap<String, String>>>;

struct StandIn {
    issuer: String,
    key: jsonwebtoken::EncodingKey,
    kid: String,
    codes: Codes,
}

impl StandIn {
    /// An ID token for `nonce`, signed now, redeemable once with the returned code.
    fn prepare(&self, nonce: &str) -> String {
        let now = Timestamp::now().as_millis() / 1000;
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": "u-alice", "aud": "jitgate", "iat": now, "exp": now + 600,
            "nonce": nonce, "email": "alice@example.com", "email_verified": true, "groups": ["dba"],
        });
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&h, &claims, &self.key).unwrap();
        let code = format!("code-{}", rand_hex());
        self.codes.lock().unwrap().insert(code.clone(), token);
        code
    }
}

fn rand_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Discovery, JWKS and a token endpoint: what the proxy asks of a real IdP.
async fn start_stand_in() -> StandIn {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    // RS256, as most IdPs sign (Okta, Entra ID, Google, Keycloak's default).
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let kid = "bench-key".to_owned();
    let jwks = serde_json::json!({ "keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
    }]});
    let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
    let discovery = serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let codes: Codes = Arc::default();
    async fn token(
        State(codes): State<Codes>,
        Form(f): Form<HashMap<String, String>>,
    ) -> (StatusCode, Json<serde_json::Value>) {
        let code = f.get("code").cloned().unwrap_or_default();
        match codes.lock().unwrap().remove(&code) {
            Some(id_token) => (
                StatusCode::OK,
                Json(serde_json::json!({
                    "access_token": "at", "token_type": "Bearer", "expires_in": 3600, "id_token": id_token,
                })),
            ),
            None => (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": "invalid_grant" })),
            ),
        }
    }
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { Json(discovery) }),
        )
        .route("/jwks", get(move || async move { Json(jwks) }))
        .route("/token", post(token))
        .with_state(Arc::clone(&codes));
    tokio::spawn(async move { axum::serve(listener, app).await });
    StandIn {
        issuer,
        key: jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        kid,
        codes,
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn request(uri: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(uri).body(Body::empty()).unwrap();
    r.extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([127, 0, 0, 1], 40000))));
    if let Some(c) = cookie {
        r.headers_mut()
            .insert(header::COOKIE, HeaderValue::from_str(c).unwrap());
    }
    r
}

fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (checks_n, callbacks_n) = if measuring {
        (SESSION_CHECKS, CALLBACKS)
    } else {
        (SMOKE_CHECKS, SMOKE_CALLBACKS)
    };
    let dir = tempfile::tempdir().unwrap();
    let idp = start_stand_in().await;
    let config = Config::parse(
        &format!(
            "[[oidc]]\nname = \"bench\"\nissuer = \"{}\"\nclient_id = \"jitgate\"\nclient_secret = \"s\"\n\
             [[profiles]]\nname = \"p\"\nmax_duration = \"1h\"\nrequesters = [\"group:dba\"]\napprovals_required = 0\n\
             http = {{ apps = [\"*\"] }}\n",
            idp.issuer
        ),
        "bench",
    )
    .unwrap();
    let store = jitgate::store::open(&format!("sqlite://{}/bench.db", dir.path().display()))
        .await
        .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let tokens = TokenIssuer::new(
        &key.serialize_pem(),
        key.public_key_raw(),
        PROXY.into(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let sessions = Sessions::new(
        Arc::clone(&store),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        vec!["bench".into()],
    );
    let oidc = config.oidc.clone();
    let broker = Arc::new(Broker::new(
        Arc::new(config.policy),
        Arc::clone(&store),
        Live::new(),
        Duration::from_secs(3600),
    ));
    let cas = Arc::new(jitgate::ca::ssh::ensure(dir.path()).unwrap());
    let jump = jitgate::front::ssh::JumpAddress::new("127.0.0.1:2222".parse().unwrap(), PROXY);
    let front = Arc::new(jitgate::front::ssh::SshFront::new(
        Arc::clone(&broker),
        Arc::clone(&cas),
        &config.ssh,
        dir.path().join("recordings"),
        vec!["bench".into()],
        jump.names.clone(),
    ));
    let state = Arc::new(ApiState {
        chat: None,
        notify_places: Default::default(),
        broker,
        tokens: Arc::new(tokens),
        limiter: LoginLimiter::new(5, 20, Duration::from_secs(300)),
        metrics: jitgate::server::metrics_handle(),
        sessions: sessions.clone(),
        idps: Arc::new(Providers::new(&oidc, &format!("{PROXY}/auth/callback")).unwrap()),
        token_refresh: true,
        ssh: jitgate::front::api::ssh::SshState {
            cas,
            hosts: Vec::new(),
            front,
            jump,
        },
        site: Site::new(PROXY, "localhost", true, std::slice::from_ref(&idp.issuer)).unwrap(),
        apps: Vec::new(),
        kube_clusters: Vec::new(),
    });
    let app = router(state);

    // One login, untimed beyond what it reports: a whole flow through the handlers.
    let login = |app: Router| async move {
        let r = app.oneshot(request("/auth/login?idp=bench&rd=/", None)).await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let to = r.headers()[header::LOCATION].to_str().unwrap().to_owned();
        let pre = r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        (query_param(&to, "state"), query_param(&to, "nonce"), pre)
    };

    let mut callbacks = Vec::with_capacity(callbacks_n);
    let mut secret = String::new();
    for i in 0..callbacks_n + 20 {
        let (st, nonce, pre) = login(app.clone()).await;
        let code = idp.prepare(&nonce);
        let uri = format!("/auth/callback?state={st}&code={code}");
        let started = Instant::now();
        let r = app.clone().oneshot(request(&uri, Some(&pre))).await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "the callback failed");
        let cookie = r
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .find(|c| c.starts_with("__Host-jitgate=") && !c.starts_with("__Host-jitgate=;"))
            .expect("a session cookie")
            .to_owned();
        secret = cookie
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("__Host-jitgate=")
            .to_owned();
        // The first logins discover the IdP and warm the pools.
        if i >= 20 {
            callbacks.push(took);
        }
    }

    // The stand-in's round trip alone, through a pooled client like the proxy's.
    let http = reqwest::Client::new();
    let mut round_trips = Vec::with_capacity(callbacks_n);
    for _ in 0..callbacks_n {
        let code = idp.prepare("n");
        let started = Instant::now();
        let r = http
            .post(format!("{}/token", idp.issuer))
            .basic_auth("jitgate", Some("s"))
            .form(&[("grant_type", "authorization_code"), ("code", code.as_str())])
            .send()
            .await
            .unwrap();
        let _ = r.bytes().await.unwrap();
        round_trips.push(started.elapsed());
    }

    // One durable write on this disk (SQLite, WAL, synchronous=FULL): the floor under a
    // callback, which must commit its session before it answers.
    let mut writes = Vec::with_capacity(callbacks_n);
    for i in 0..callbacks_n {
        let key = format!("bench:{i}");
        let started = Instant::now();
        store
            .put_flow(&key, "x", Timestamp::now().saturating_add(Duration::from_secs(60)))
            .await
            .unwrap();
        writes.push(started.elapsed());
    }

    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
    headers.insert(
        header::COOKIE,
        HeaderValue::from_str(&format!("theme=dark; __Host-jitgate={secret}; other=1")).unwrap(),
    );
    let mut checks = Vec::with_capacity(checks_n);
    for _ in 0..checks_n {
        let started = Instant::now();
        let s = sessions
            .check(session_cookie(&headers).unwrap(), Timestamp::now())
            .await
            .unwrap();
        checks.push(started.elapsed());
        assert!(s.is_some());
    }

    if !measuring {
        println!("login bench: smoke run passed (numbers come from `cargo bench --bench login`)");
        return;
    }
    let (c50, c99) = percentiles(checks);
    let (cb50, cb99) = percentiles(callbacks);
    let (rt50, rt99) = percentiles(round_trips);
    println!(
        "session-cookie check ({SESSION_CHECKS} checks): p50 {}, p99 {}   (goal: p50 < 20 µs)",
        micros(c50),
        micros(c99)
    );
    println!(
        "callback, whole handler ({CALLBACKS} logins): p50 {}, p99 {}",
        micros(cb50),
        micros(cb99)
    );
    println!(
        "  of which the stand-in IdP's token round trip: p50 {}, p99 {}",
        micros(rt50),
        micros(rt99)
    );
    let (w50, w99) = percentiles(writes);
    println!(
        "  the callback's own work: p50 ≈ {}   (goal: < 2 ms)",
        micros(cb50.saturating_sub(rt50))
    );
    println!(
        "  of which one durable store write (its floor on this disk): p50 {}, p99 {}",
        micros(w50),
        micros(w99)
    );
}
