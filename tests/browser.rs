//! The console in a real browser: headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `tests/idp/browser.mjs`) against the real proxy and the test IdP.
//! Alice logs in at the IdP and asks for access, Bob opens the request's deep link, logs in
//! and approves, and Alice's open page turns to the active grant by the console's own polling.
//! The browser trusts exactly the proxy's server key (an SPKI pin), nothing else.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::idp::TestIdp;
use common::{random_suffix, Backend, Proxy, TestDb, WALKTHROUGH_PROFILES};
use sha2::{Digest, Sha256};

/// The whole browser run; the script's own watchdog (120 s) fires first.
const BROWSER_LIMIT: Duration = Duration::from_secs(150);

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

/// Chromium, node and playwright-core are part of the test environment: their absence is a
/// failure to set it up, never a reason to skip.
fn require_browser_tools() {
    let chromium = chromium();
    assert!(
        chromium.is_file(),
        "{} is missing: the browser test needs Debian's chromium; run scripts/test, which installs it",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is not runnable ({node:?}): the browser test needs Node.js 20 or later; run scripts/test"
    );
    let playwright = idp_dir().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "{} is missing: run scripts/test, which installs tests/idp's node packages (npm ci)",
        playwright.display()
    );
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in `pem`: what Chromium's
/// `--ignore-certificate-errors-spki-list` takes.
fn spki_pin(pem: &Path) -> String {
    let text = std::fs::read(pem).unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
    let der = rustls_pemfile::certs(&mut text.as_slice())
        .next()
        .unwrap_or_else(|| panic!("no certificate in {}", pem.display()))
        .unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(cert.public_key().raw))
}

/// Runs the browser script; its exit code, stdout and stderr (which name its screenshots).
fn run_browser(proxy: &Proxy, pin: &str, artifacts: &Path) -> (Option<i32>, String, String) {
    run_script("browser.mjs", proxy, pin, artifacts, &[])
}

fn run_script(
    script: &str,
    proxy: &Proxy,
    pin: &str,
    artifacts: &Path,
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    std::fs::create_dir_all(artifacts).unwrap();
    let (out, err) = (artifacts.join("stdout"), artifacts.join("stderr"));
    let mut child = Command::new("node")
        .arg(idp_dir().join(script))
        .envs(env.iter().copied())
        .env("PROXY_URL", &proxy.url)
        .env("SPKI_PIN", pin)
        .env("CHROMIUM", chromium())
        .env("ARTIFACTS_DIR", artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("run node tests/idp/browser.mjs");
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > BROWSER_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (code, read(&out), read(&err))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn two_people_in_real_browsers_request_approve_and_watch_the_grant_go_live() {
    require_browser_tools();
    let idp = TestIdp::start();
    let db = TestDb::blocking(Backend::Sqlite);
    let profiles = format!("{WALKTHROUGH_PROFILES}\n{}", idp.oidc_config("corp"));
    let proxy = Proxy::start(db.dir.path(), &db.url, &profiles);
    let pin = spki_pin(&proxy.dir.join("certs/server.pem"));
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{}", random_suffix()));

    let started = Instant::now();
    let (code, stdout, stderr) = run_browser(&proxy, &pin, &artifacts);
    let took = started.elapsed();
    assert_eq!(
        code,
        Some(0),
        "the browser test failed (exit {code:?}) after {took:?}:\n{stderr}{stdout}\n\
         --- proxy log (tail) ---\n{}\n--- IdP log (tail) ---\n{}",
        tail(&proxy.log(), 30),
        tail(&idp.log(), 30)
    );
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| {
        panic!("the browser script printed no JSON:\n{stdout}{stderr}");
    });
    let seen: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("the browser script's JSON ({e}): {line}"));
    eprintln!("browser run took {took:?}: {seen}");

    let request_id = seen["request_id"].as_str().expect("request_id").to_owned();
    let grant_id = seen["grant_id"].as_str().expect("grant_id").to_owned();
    assert!(request_id.starts_with("req-"), "{seen}");
    assert!(grant_id.starts_with("grant-"), "{seen}");
    assert_eq!(seen["alice"], "alice@example.com", "{seen}");
    assert_eq!(seen["bob"], "bob@example.com", "{seen}");
    assert_eq!(seen["request_state_before"], "pending", "{seen}");
    assert_eq!(seen["bob_landed"], format!("/requests/{request_id}"), "{seen}");
    assert_eq!(seen["approved"], "approved", "{seen}");
    assert_eq!(seen["grant_state_seen"], "active", "{seen}");
    assert_eq!(seen["request_state_after"], "active", "{seen}");
    assert!(seen["live_reloads"].as_u64().unwrap_or(0) >= 1, "{seen}");
    assert!(seen["live_update_ms"].as_u64().is_some_and(|ms| ms <= 10_000), "{seen}");
    assert_eq!(seen["csp_violations"], 0, "{seen}");
    // No console errors at all on the proxy's pages (the IdP's own pages are not ours).
    let ours: Vec<&serde_json::Value> = seen["console_errors"]
        .as_array()
        .expect("console_errors")
        .iter()
        .filter(|e| e["page"].as_str().is_some_and(|p| p.starts_with(&proxy.url)))
        .collect();
    assert!(ours.is_empty(), "console errors on the proxy's pages: {ours:?}");
    assert_eq!(
        seen["session_cookie"],
        serde_json::json!({"name": "__Host-jitgate", "httpOnly": true, "secure": true, "sameSite": "Lax", "path": "/"}),
        "{seen}"
    );
    assert_eq!(seen["tls"], "spki-pin", "{seen}");

    // What the browsers did, as the proxy recorded it: an intact audit chain with alice's
    // request, bob's approval with his reason, and the grant it activated for alice.
    let verify = proxy.admin(&["audit", "verify"], None).success();
    assert!(verify.stdout.starts_with("audit chain OK: "), "{}", verify.stdout);
    let export = proxy.admin(&["audit", "export"], None).success().stdout;
    let events: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line ({e}): {l}")))
        .collect();
    let find = |action: &str| {
        events
            .iter()
            .find(|e| e["action"] == action && e["request_id"] == request_id.as_str())
            .unwrap_or_else(|| panic!("no {action} for {request_id} in the audit log:\n{export}"))
    };
    let created = find("request.created");
    assert_eq!(created["actor"], "alice@example.com", "{created}");
    assert_eq!(created["reason"], "INC-4411 patch", "{created}");
    assert_eq!(created["details"]["profile"], "db-patch", "{created}");
    assert_eq!(created["details"]["duration"], "1h", "{created}");
    let approved = find("request.approved");
    assert_eq!(approved["actor"], "bob@example.com", "{approved}");
    assert_eq!(
        approved["reason"], "INC-4411 checked with the on-call DBA",
        "{approved}"
    );
    let activated = find("grant.activated");
    assert_eq!(activated["grant_id"], grant_id.as_str(), "{activated}");
    assert_eq!(activated["target"], "alice@example.com", "{activated}");
    assert_eq!(
        activated["details"]["approvers"],
        serde_json::json!(["bob@example.com"]),
        "{activated}"
    );
    for who in ["alice@example.com", "bob@example.com"] {
        assert!(
            events
                .iter()
                .any(|e| e["action"] == "session.started" && e["actor"] == who && e["target"] == "corp"),
            "no IdP login of {who} in the audit log:\n{export}"
        );
    }

    // Screenshots are kept only for a failed run.
    let _ = std::fs::remove_dir_all(&artifacts);
}

#[test]
fn a_browser_app_opens_only_after_approval_and_closes_at_the_grants_expiry() {
    require_browser_tools();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (up, _seen) = rt.block_on(common::upstream::upstream());
    let db = TestDb::blocking(Backend::Sqlite);
    let config = format!(
        "admins = [\"group:security\"]\n\
         [[apps]]\nname = \"echo\"\nupstream = \"http://{up}\"\n\
         [[profiles]]\nname = \"echo-admin\"\nmax_duration = \"1h\"\nrequesters = [\"group:ops\"]\n\
         approvers = [\"group:leads\"]\napprovals_required = 1\nhttp = {{ apps = [\"echo\"] }}\n"
    );
    let proxy = Proxy::start(db.dir.path(), &db.url, &config);
    for (name, group) in [("alice", "ops"), ("bob", "leads"), ("sam", "security")] {
        proxy.add_user(name, &[group]);
    }
    let port = url::Url::parse(&proxy.url).unwrap().port().unwrap();
    let app = format!("https://echo.localhost:{port}");
    let pin = spki_pin(&proxy.dir.join("certs/server.pem"));
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("apps-browser-{}", random_suffix()));
    let (alice_pw, bob_pw) = (common::password_of("alice"), common::password_of("bob"));
    let started = Instant::now();
    let (code, stdout, stderr) = run_script(
        "apps.mjs",
        &proxy,
        &pin,
        &artifacts,
        &[
            ("APP_URL", &app),
            ("ALICE_PASSWORD", &alice_pw),
            ("BOB_PASSWORD", &bob_pw),
            ("DURATION", "20s"),
        ],
    );
    let took = started.elapsed();
    assert_eq!(
        code,
        Some(0),
        "the apps browser test failed (exit {code:?}) after {took:?}:\n{stderr}{stdout}\n--- proxy log (tail) ---\n{}",
        tail(&proxy.log(), 30)
    );
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("a JSON line");
    let seen: serde_json::Value = serde_json::from_str(line).unwrap();
    eprintln!("apps browser run took {took:?}: {seen}");
    assert_eq!(seen["approved"], "approved", "{seen}");
    assert_eq!(seen["after_expiry"], "/apps/echo", "{seen}");
    assert_eq!(seen["proxy_cookie_on_app"], false, "{seen}");
    assert_eq!(
        seen["app_cookie"],
        serde_json::json!({"httpOnly": true, "secure": true, "sameSite": "Lax", "path": "/"}),
        "{seen}"
    );

    // The WebSocket closed when the grant expired: not before, and promptly after (the
    // browser's own event loop is in this measure too).
    let grants = proxy.login("sam").json(&["grants", "--all"]);
    let grant = grants
        .as_array()
        .and_then(|a| a.iter().find(|g| g["profile"] == "echo-admin"))
        .unwrap_or_else(|| panic!("no echo-admin grant in {grants}"));
    let expires = chrono::DateTime::parse_from_rfc3339(grant["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let closed = seen["ws_closed_at_ms"].as_i64().expect("ws_closed_at_ms");
    eprintln!(
        "the app's WebSocket closed {} ms after the grant's expiry",
        closed - expires
    );
    assert!(
        (-5..1000).contains(&(closed - expires)),
        "closed {} ms after the expiry",
        closed - expires
    );
    let _ = std::fs::remove_dir_all(&artifacts);
}

#[test]
fn the_spki_pin_is_the_server_keys() {
    // The pin covers exactly the key's SubjectPublicKeyInfo, which is what Chromium hashes.
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pem = dir.path().join("server.pem");
    std::fs::write(&pem, cert.pem()).unwrap();
    let spki = rustls_pemfile::public_keys(&mut key.public_key_pem().as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki.as_ref()));
    assert_eq!(spki_pin(&pem), expected);
}
