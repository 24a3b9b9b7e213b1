//! The test IdP harness on its own, without the proxy: the real `oidc-provider` behind
//! `tests/idp/idp.mjs` does the code flow with PKCE, the device flow, key rotation on restart,
//! refuses wrong passwords and foreign redirect URIs, and tampers with ID tokens on request.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::idp::{
    browser, complete_device, idp_login, idp_logout, idp_password, jwt_claims, jwt_header, try_complete_device,
    try_idp_login, TestIdp, CLIENT_ID, CLIENT_SECRET, TAMPER_MODES,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CALLBACK: &str = "https://127.0.0.1:45678/auth/callback";
const SCOPES: &str = "openid email profile groups";

async fn get_json(url: &str) -> Value {
    let resp = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
    resp.json().await.unwrap()
}

async fn discovery(idp: &TestIdp) -> Value {
    get_json(&idp.url("/.well-known/openid-configuration")).await
}

fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::thread_rng().gen::<[u8; 32]>())
}

/// One authorization request as the proxy would make it.
struct AuthRequest {
    url: String,
    redirect_uri: String,
    state: String,
    nonce: String,
    verifier: String,
}

async fn auth_request(idp: &TestIdp, redirect_uri: &str, pkce: bool) -> AuthRequest {
    let (state, nonce, verifier) = (random(), random(), random());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", redirect_uri),
        ("scope", SCOPES),
        ("state", &state),
        ("nonce", &nonce),
    ];
    if pkce {
        params.extend([
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]);
    }
    let endpoint = discovery(idp).await["authorization_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = Url::parse_with_params(&endpoint, &params).unwrap().to_string();
    AuthRequest {
        url,
        redirect_uri: redirect_uri.to_owned(),
        state,
        nonce,
        verifier,
    }
}

/// The query of a callback Location, checked to be for `req`.
fn callback_params(location: &str, req: &AuthRequest) -> Vec<(String, String)> {
    assert!(
        location.starts_with(&format!("{}?", req.redirect_uri)),
        "not the callback: {location}"
    );
    Url::parse(location).unwrap().query_pairs().into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

async fn redeem(idp: &TestIdp, code: &str, req: &AuthRequest) -> reqwest::Response {
    let token_endpoint = discovery(idp).await["token_endpoint"].as_str().unwrap().to_owned();
    reqwest::Client::new()
        .post(token_endpoint)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &req.redirect_uri),
            ("code_verifier", &req.verifier),
        ])
        .send()
        .await
        .unwrap()
}

/// A whole code flow as `login`: the token response and the request it answers.
async fn code_flow(idp: &TestIdp, login: &str) -> (Value, AuthRequest) {
    let req = auth_request(idp, CALLBACK, true).await;
    let client = browser().build().unwrap();
    let location = idp_login(&client, &req.url, login, &idp_password(login)).await;
    let params = callback_params(&location, &req);
    assert_eq!(param(&params, "state"), Some(req.state.as_str()));
    let code = param(&params, "code").unwrap_or_else(|| panic!("no code: {location}"));
    let resp = redeem(idp, code, &req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    (resp.json().await.unwrap(), req)
}

async fn jwks(idp: &TestIdp) -> Value {
    let uri = discovery(idp).await["jwks_uri"].as_str().unwrap().to_owned();
    get_json(&uri).await
}

/// Verifies an RS256 ID token as a careful relying party would, against the IdP's JWKS.
fn verify(token: &str, jwks: &Value, issuer: &str) -> Result<Value, String> {
    let kid = jwt_header(token)["kid"].as_str().unwrap_or_default().to_owned();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("no key {kid:?} in the JWKS"))?;
    let key = DecodingKey::from_rsa_components(key["n"].as_str().unwrap(), key["e"].as_str().unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[CLIENT_ID]);
    v.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn discovery_document_names_every_endpoint_the_proxy_uses() {
    let idp = TestIdp::start();
    assert!(idp.issuer.starts_with("http://127.0.0.1:"));
    let d = discovery(&idp).await;
    assert_eq!(d["issuer"], idp.issuer.as_str());
    for field in [
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "device_authorization_endpoint",
        "end_session_endpoint",
        "revocation_endpoint",
    ] {
        let url = d[field].as_str().unwrap_or_else(|| panic!("no {field}: {d}"));
        assert!(url.starts_with(&idp.issuer), "{field} = {url}");
    }
    let s256 = serde_json::json!("S256");
    assert!(d["code_challenge_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&s256));
    let groups = serde_json::json!("groups");
    assert!(d["scopes_supported"].as_array().unwrap().contains(&groups));
    assert_eq!(get_json(&idp.url("/test/health")).await["ok"], true);
    let cfg = idp.oidc_config("corp");
    assert!(cfg.starts_with("[[oidc]]\nname = \"corp\"\n"), "{cfg}");
    assert!(cfg.contains(&format!("issuer = \"{}\"\n", idp.issuer)), "{cfg}");
}

#[tokio::test]
async fn code_flow_with_pkce_gives_an_id_token_with_email_and_groups_once() {
    let idp = TestIdp::start();
    let req = auth_request(&idp, CALLBACK, true).await;
    let client = browser().build().unwrap();
    let location = idp_login(&client, &req.url, "alice@example.com", "alice-idp-pw").await;
    let params = callback_params(&location, &req);
    assert_eq!(param(&params, "state"), Some(req.state.as_str()));
    assert_eq!(param(&params, "iss"), Some(idp.issuer.as_str()));
    let code = param(&params, "code").unwrap().to_owned();

    let resp = redeem(&idp, &code, &req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(
        tokens["access_token"].is_string() && tokens["refresh_token"].is_string(),
        "{tokens}"
    );
    let id_token = tokens["id_token"].as_str().unwrap();
    let claims = verify(id_token, &jwks(&idp).await, &idp.issuer).expect("a valid ID token");
    assert_eq!(claims, jwt_claims(id_token));
    assert_eq!(claims["sub"], "u-alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice Example");
    assert_eq!(claims["groups"], serde_json::json!(["dba"]));
    assert_eq!(claims["nonce"], req.nonce.as_str());
    assert_eq!(jwt_header(id_token)["alg"], "RS256");

    // A code is good once.
    let again = redeem(&idp, &code, &req).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(again.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // The browser's IdP session signs alice in again without the form.
    let req2 = auth_request(&idp, CALLBACK, true).await;
    let location = try_idp_login(&client, &req2.url, "ignored", "ignored").await.unwrap();
    assert!(param(&callback_params(&location, &req2), "code").is_some());
}

#[tokio::test]
async fn pkce_is_required_and_checked() {
    let idp = TestIdp::start();
    let req = auth_request(&idp, CALLBACK, false).await;
    let location = idp_login(
        &browser().build().unwrap(),
        &req.url,
        "alice@example.com",
        "alice-idp-pw",
    )
    .await;
    let params = callback_params(&location, &req);
    assert_eq!(param(&params, "error"), Some("invalid_request"), "{location}");
    assert!(param(&params, "code").is_none());

    let mut req = auth_request(&idp, CALLBACK, true).await;
    let location = idp_login(
        &browser().build().unwrap(),
        &req.url,
        "alice@example.com",
        "alice-idp-pw",
    )
    .await;
    let code = param(&callback_params(&location, &req), "code").unwrap().to_owned();
    req.verifier = random();
    let resp = redeem(&idp, &code, &req).await;
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_grant");
}

#[tokio::test]
async fn the_accounts_carry_their_claims() {
    let idp = TestIdp::start();
    for (login, email, verified, groups) in [
        ("bob@example.com", "bob@example.com", true, "dba-leads"),
        ("carol@example.com", "carol@example.com", true, "dba-leads"),
        ("sec@example.com", "sec@example.com", true, "security"),
        ("eve@evil.com", "eve@evil.com", true, "dba"),
        ("mallory@example.com", "a@evil.com@example.com", true, "dba"),
        ("unverified@example.com", "unverified@example.com", false, "dba"),
    ] {
        let (tokens, _) = code_flow(&idp, login).await;
        let claims = jwt_claims(tokens["id_token"].as_str().unwrap());
        assert_eq!(claims["email"], email, "{login}");
        assert_eq!(claims["email_verified"], verified, "{login}");
        assert_eq!(claims["groups"], serde_json::json!([groups]), "{login}");
    }
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_on_the_form() {
    let idp = TestIdp::start();
    let req = auth_request(&idp, CALLBACK, true).await;
    let client = browser().build().unwrap();
    let err = try_idp_login(&client, &req.url, "alice@example.com", "bob-idp-pw")
        .await
        .unwrap_err();
    assert!(err.contains("Invalid email or password"), "{err}");
    let err = try_idp_login(&client, &req.url, "nobody@example.com", "nobody-idp-pw")
        .await
        .unwrap_err();
    assert!(err.contains("Invalid email or password"), "{err}");
    // The same request still works with the right password.
    let location = idp_login(&client, &req.url, "alice@example.com", "alice-idp-pw").await;
    assert!(param(&callback_params(&location, &req), "code").is_some());
}

#[tokio::test]
async fn only_loopback_https_callbacks_are_accepted_besides_the_registered_one() {
    let idp = TestIdp::start();
    for ok in [
        "https://127.0.0.1:1234/auth/callback",
        "https://localhost:50000/auth/callback",
    ] {
        let req = auth_request(&idp, ok, true).await;
        let location = idp_login(&browser().build().unwrap(), &req.url, "bob@example.com", "bob-idp-pw").await;
        assert!(param(&callback_params(&location, &req), "code").is_some(), "{ok}");
    }
    for bad in [
        "https://evil.example:1234/auth/callback",
        "http://127.0.0.1:1234/auth/callback",
        "https://127.0.0.1:1234/other",
        "https://127.0.0.1/auth/callback",
    ] {
        let req = auth_request(&idp, bad, true).await;
        let err = try_idp_login(&browser().build().unwrap(), &req.url, "bob@example.com", "bob-idp-pw")
            .await
            .unwrap_err();
        assert!(err.contains("redirect_uri"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn tamper_modes_change_exactly_the_next_id_token() {
    let idp = TestIdp::start();
    let keys = jwks(&idp).await;
    let pem = get_json(&idp.url("/test/health")).await["public_key_pem"]
        .as_str()
        .unwrap()
        .to_owned();
    for &mode in TAMPER_MODES {
        idp.tamper(mode).await;
        let (tokens, req) = code_flow(&idp, "alice@example.com").await;
        // Read after the token exists: one taken before the loop lags the IdP's clock by
        // however long the earlier modes took, and an honest token would look too new.
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let token = tokens["id_token"].as_str().unwrap();
        assert!(tokens["access_token"].is_string(), "{mode}: {tokens}");
        let (header, claims) = (jwt_header(token), jwt_claims(token));
        let verified = verify(token, &keys, &idp.issuer);
        match mode {
            "wrong-nonce" => {
                assert!(verified.is_ok(), "{mode}: {verified:?}");
                assert_ne!(claims["nonce"], req.nonce.as_str());
            }
            "wrong-aud" => assert!(verified.unwrap_err().contains("InvalidAudience"), "{mode}"),
            "wrong-iss" => assert!(verified.unwrap_err().contains("InvalidIssuer"), "{mode}"),
            "expired" => {
                assert!(verified.unwrap_err().contains("ExpiredSignature"), "{mode}");
                assert!(claims["exp"].as_i64().unwrap() <= now - 7200, "{mode}: {claims}");
                assert!(claims["iat"].as_i64().unwrap() <= now - 7200, "{mode}: {claims}");
            }
            "alg-none" => {
                assert_eq!(header["alg"], "none");
                assert!(token.ends_with('.'), "{mode}: {token}");
            }
            "hs256-with-public-key" => {
                assert_eq!(header["alg"], "HS256");
                // What a verifier that lets the token choose the algorithm would accept.
                let mut v = Validation::new(Algorithm::HS256);
                v.set_audience(&[CLIENT_ID]);
                v.set_issuer(&[&idp.issuer]);
                jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(pem.as_bytes()), &v)
                    .expect("HMAC keyed with the public key's PEM");
            }
            "unknown-kid" => assert!(verified.unwrap_err().contains("no key"), "{mode}"),
            "bad-signature" => assert!(verified.unwrap_err().contains("InvalidSignature"), "{mode}"),
            "no-groups" => {
                assert!(verified.is_ok(), "{mode}: {verified:?}");
                assert!(claims.get("groups").is_none(), "{mode}: {claims}");
                assert_eq!(claims["email"], "alice@example.com");
            }
            other => panic!("untested mode {other}"),
        }
        if mode != "wrong-nonce" {
            assert_eq!(claims["nonce"], req.nonce.as_str(), "{mode}");
        }
        // One-shot: the next flow is clean.
        let (tokens, req) = code_flow(&idp, "alice@example.com").await;
        let claims = verify(tokens["id_token"].as_str().unwrap(), &keys, &idp.issuer).expect("clean again");
        assert_eq!(claims["nonce"], req.nonce.as_str());
    }
    let resp = reqwest::Client::new()
        .post(idp.url("/test/tamper"))
        .json(&serde_json::json!({ "mode": "nonsense" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn restart_keeps_the_issuer_and_rotates_the_signing_key() {
    let mut idp = TestIdp::start();
    let (issuer, port) = (idp.issuer.clone(), idp.port);
    let kid_of = |jwks: &Value| jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let before = jwks(&idp).await;
    assert_eq!(before["keys"].as_array().unwrap().len(), 1);
    assert!(before["keys"][0].get("d").is_none(), "the JWKS leaks the private key");

    idp.stop();
    assert!(reqwest::get(idp.url("/test/health")).await.is_err(), "still serving");
    idp.restart();
    assert_eq!((idp.issuer.as_str(), idp.port), (issuer.as_str(), port));
    let after = jwks(&idp).await;
    assert_ne!(kid_of(&before), kid_of(&after));
    assert_ne!(before["keys"][0]["n"], after["keys"][0]["n"]);

    idp.restart();
    assert_ne!(kid_of(&after), kid_of(&jwks(&idp).await));
    let (tokens, _) = code_flow(&idp, "carol@example.com").await;
    assert_eq!(
        jwt_header(tokens["id_token"].as_str().unwrap())["kid"],
        kid_of(&jwks(&idp).await)
    );
}

#[tokio::test]
async fn device_flow_completes_for_the_user_who_logs_in() {
    let idp = TestIdp::start();
    let d = discovery(&idp).await;
    let http = reqwest::Client::new();
    let start: Value = http
        .post(d["device_authorization_endpoint"].as_str().unwrap())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("scope", SCOPES)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(start["verification_uri"], idp.url("/device").as_str(), "{start}");
    let user_code = start["user_code"].as_str().unwrap();
    let device_code = start["device_code"].as_str().unwrap();
    let poll = || async {
        http.post(d["token_endpoint"].as_str().unwrap())
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
            ])
            .send()
            .await
            .unwrap()
    };
    let pending = poll().await;
    assert_eq!(pending.status(), StatusCode::BAD_REQUEST);
    assert_eq!(pending.json::<Value>().await.unwrap()["error"], "authorization_pending");

    let err = try_complete_device(&idp, "WRONG-CODE", "bob@example.com", "bob-idp-pw")
        .await
        .unwrap_err();
    assert!(err.contains("incorrect"), "{err}");
    complete_device(&idp, user_code, "bob@example.com", &idp_password("bob@example.com")).await;

    // The IdP may answer slow_down to a poll that comes too soon after the last.
    let mut tokens = Value::Null;
    for _ in 0..20 {
        let resp = poll().await;
        let status = resp.status();
        tokens = resp.json().await.unwrap();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(tokens["error"], "slow_down", "{tokens}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let claims = verify(tokens["id_token"].as_str().unwrap(), &jwks(&idp).await, &idp.issuer).unwrap();
    assert_eq!(claims["email"], "bob@example.com");
    assert_eq!(claims["groups"], serde_json::json!(["dba-leads"]));
    // A used code cannot be completed again.
    assert!(
        try_complete_device(&idp, user_code, "alice@example.com", "alice-idp-pw")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn rp_initiated_logout_returns_to_the_proxy() {
    let idp = TestIdp::start();
    let client = browser().build().unwrap();
    let req = auth_request(&idp, CALLBACK, true).await;
    idp_login(&client, &req.url, "alice@example.com", "alice-idp-pw").await;
    let end = discovery(&idp).await["end_session_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = Url::parse_with_params(
        &end,
        &[
            ("client_id", CLIENT_ID),
            ("post_logout_redirect_uri", "https://127.0.0.1:45999/logged-out"),
            ("state", "s1"),
        ],
    )
    .unwrap();
    let back = idp_logout(&client, url.as_str()).await.unwrap();
    assert_eq!(back.as_deref(), Some("https://127.0.0.1:45999/logged-out?state=s1"));
    // Signed out: the next authorization asks for the password again.
    let req = auth_request(&idp, CALLBACK, true).await;
    let err = try_idp_login(&client, &req.url, "alice@example.com", "wrong")
        .await
        .unwrap_err();
    assert!(err.contains("Invalid email or password"), "{err}");
}
