//! `jitgate login` through the identity provider, by way of the proxy: the CLI never talks
//! to the IdP and never sees its client secret.
//!
//! Loopback (the default): the CLI listens on 127.0.0.1 at a random port and sends the
//! browser to the proxy's `/auth/login` with that redirect, a PKCE challenge and a state of
//! its own. After the IdP login the proxy redirects the browser to the listener with a
//! one-time code, which the CLI exchanges, with its PKCE verifier, for a proxy token.
//!
//! Device (`--device`): the proxy starts the IdP's device grant; the CLI prints the code
//! and polls the proxy until the user has finished on any browser.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::client::Api;
use super::CliError;
use crate::identity::session::same_secret;

/// How long the CLI waits for the browser to come back.
const LOOPBACK_WAIT: Duration = Duration::from_secs(300);

fn random_b64(n: usize) -> String {
    use rand::RngCore;
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
}

struct Waiting {
    state: String,
    done: Mutex<Option<oneshot::Sender<String>>>,
}

async fn callback(State(w): State<Arc<Waiting>>, Query(q): Query<Callback>) -> impl IntoResponse {
    let page = |title: &str, text: &str| {
        Html(format!(
            "<!doctype html><meta charset=utf-8><title>jitgate</title><h1>{title}</h1><p>{text}</p>"
        ))
    };
    match (q.code, q.state) {
        (Some(code), Some(state)) if same_secret(&state, &w.state) => {
            if let Some(tx) = w.done.lock().expect("not poisoned").take() {
                let _ = tx.send(code);
            }
            (
                axum::http::StatusCode::OK,
                page("Logged in", "You can close this tab and go back to the terminal."),
            )
        }
        _ => (
            axum::http::StatusCode::BAD_REQUEST,
            page(
                "Login failed",
                "This answer does not belong to the login this terminal started.",
            ),
        ),
    }
}

/// Refuses early, with the way that works, when the proxy cannot log anyone in through an
/// IdP (or not through the one named), instead of sending the user to an error page.
async fn check_provider(api: &Api, idp: Option<&str>) -> Result<(), CliError> {
    let offered: Value = api.get("/api/v1/login/providers").await?;
    let names: Vec<&str> = offered["oidc"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    match idp {
        _ if names.is_empty() => Err(CliError::Refused(
            "this proxy has no identity provider configured; log in as a local user with --user NAME".into(),
        )),
        Some(name) if !names.contains(&name) => Err(CliError::Refused(format!(
            "this proxy has no identity provider named {name:?}; it has: {}",
            names.join(", ")
        ))),
        None if names.len() > 1 => Err(CliError::Usage(format!(
            "this proxy has several identity providers; pick one with --idp ({})",
            names.join(", ")
        ))),
        _ => Ok(()),
    }
}

pub async fn loopback(api: &Api, idp: Option<&str>, open_browser: bool) -> Result<Value, CliError> {
    check_provider(api, idp).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::Refused(format!("cannot listen on 127.0.0.1 for the login to come back: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| CliError::Refused(e.to_string()))?
        .port();
    let verifier = random_b64(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_b64(16);
    let mut url = url::Url::parse(&format!("{}/auth/login", api.proxy()))
        .map_err(|e| CliError::Usage(format!("--proxy: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(idp) = idp {
            q.append_pair("idp", idp);
        }
        q.append_pair("cli_redirect", &format!("http://127.0.0.1:{port}/callback"))
            .append_pair("cli_challenge", &challenge)
            .append_pair("cli_state", &state);
    }
    eprintln!("To log in, open this URL in a browser:\n  {url}");
    if open_browser {
        try_open(url.as_str());
    }
    eprintln!("Waiting for the login to finish (Ctrl-C to give up)...");

    let (tx, rx) = oneshot::channel();
    let waiting = Arc::new(Waiting {
        state,
        done: Mutex::new(Some(tx)),
    });
    let app = Router::new().route("/callback", get(callback)).with_state(waiting);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let code = tokio::time::timeout(LOOPBACK_WAIT, rx).await;
    // Give the browser its "logged in" page before the listener goes away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.abort();
    let code = match code {
        Ok(Ok(code)) => code,
        _ => {
            return Err(CliError::Refused(
                "the browser did not come back within 5 minutes; run `jitgate login` again".into(),
            ))
        }
    };
    api.post(
        "/api/v1/login/exchange",
        json!({ "code": code, "code_verifier": verifier }),
    )
    .await
}

/// Best effort: the URL is printed either way.
fn try_open(url: &str) {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

pub async fn device(api: &Api, idp: Option<&str>) -> Result<Value, CliError> {
    check_provider(api, idp).await?;
    let start: Value = api.post("/api/v1/login/device", json!({ "idp": idp })).await?;
    let handle = start["handle"].as_str().unwrap_or_default().to_owned();
    eprintln!(
        "To log in, open {} and enter the code {}",
        start["verification_uri"].as_str().unwrap_or("?"),
        start["user_code"].as_str().unwrap_or("?")
    );
    if let Some(complete) = start["verification_uri_complete"].as_str() {
        eprintln!("  (or open {complete})");
    }
    eprintln!("Waiting for the login to finish (Ctrl-C to give up)...");
    let mut interval = Duration::from_secs(start["interval_secs"].as_u64().unwrap_or(5).clamp(1, 60));
    let deadline = Instant::now() + Duration::from_secs(start["expires_in_secs"].as_u64().unwrap_or(600));
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() > deadline {
            return Err(CliError::Refused(
                "the device code expired before the login finished; run `jitgate login --device` again".into(),
            ));
        }
        match api
            .post_coded::<Value>("/api/v1/login/device/poll", json!({ "handle": handle }))
            .await
        {
            Ok(v) => return Ok(v),
            Err((Some(code), _)) if code == "authorization_pending" => {}
            Err((Some(code), _)) if code == "slow_down" => interval += Duration::from_secs(5),
            Err((_, e)) => return Err(e),
        }
    }
}
