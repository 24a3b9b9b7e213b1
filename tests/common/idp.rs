//! The test OpenID Connect provider: `tests/idp/idp.mjs`, a real node `oidc-provider` 9 with the
//! accounts, client and test-only controls that `tests/idp/README.md` lists, and a browser without
//! a browser that logs a person in through its pages.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{StatusCode, Url};

pub const CLIENT_ID: &str = "jitgate";
pub const CLIENT_SECRET: &str = "jitgate-test-secret";

/// What `TestIdp::tamper` can do to the next ID token (see tests/idp/README.md).
pub const TAMPER_MODES: &[&str] = &[
    "wrong-nonce",
    "wrong-aud",
    "wrong-iss",
    "expired",
    "alg-none",
    "hs256-with-public-key",
    "unknown-kid",
    "bad-signature",
    "no-groups",
];

const START_LIMIT: Duration = Duration::from_secs(30);

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

/// `tests/idp/idp.mjs` running on 127.0.0.1; killed on drop.
pub struct TestIdp {
    /// `http://127.0.0.1:PORT`, exactly as in the discovery document.
    pub issuer: String,
    pub port: u16,
    child: Option<Child>,
    // Held open: the IdP exits when it closes, so it never outlives a test process that dies.
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
}

impl TestIdp {
    /// Starts the IdP on a free port and waits (at most 30 s) until it serves.
    pub fn start() -> TestIdp {
        let dir = tempfile::tempdir().expect("tempdir");
        // A start takes 2-3 s even ten at a time on two cores. Node 20 could hang for ever
        // at a start (a lock in its RSA key generation; idp.mjs now avoids it, see
        // `newRsaKey`). Should a start hang again, its stderr says at which step, and a
        // second try, said out loud, keeps it from failing a run that has nothing wrong
        // with the proxy.
        let started = spawn(dir.path(), 0).or_else(|e| {
            eprintln!("{e}\n(starting the test IdP once more)");
            spawn(dir.path(), 0)
        });
        let (child, stdin, port) = started.unwrap_or_else(|e| panic!("{e}"));
        TestIdp {
            issuer: format!("http://127.0.0.1:{port}"),
            port,
            child: Some(child),
            stdin: Some(stdin),
            dir,
        }
    }

    /// Kills the IdP and starts it again on the same port: same issuer, new signing key (and kid),
    /// and all its state (sessions, codes, tokens) gone.
    pub fn restart(&mut self) {
        self.stop();
        let mut start = Instant::now();
        let mut tried_again = false;
        loop {
            match spawn(self.dir.path(), self.port) {
                Ok((child, stdin, port)) => {
                    assert_eq!(port, self.port);
                    self.child = Some(child);
                    self.stdin = Some(stdin);
                    return;
                }
                // The old socket can linger for a moment after the kill.
                Err(e) if e.contains("EADDRINUSE") && start.elapsed() < START_LIMIT => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                // As in `start`, a start that failed otherwise (a hang, or the port still taken
                // after 30 s) is tried once more.
                Err(e) if !tried_again => {
                    eprintln!("{e}\n(starting the test IdP once more)");
                    tried_again = true;
                    start = Instant::now();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Kills the IdP (for IdP-down tests); `restart` brings it back on the same port.
    pub fn stop(&mut self) {
        self.stdin.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `issuer` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// What the IdP wrote to stderr over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("idp.log")).unwrap_or_default()
    }

    /// Makes the next authorization-code token response carry a tampered ID token (one `mode` of
    /// `TAMPER_MODES`); every other token response, and the one after, is left alone.
    pub async fn tamper(&self, mode: &str) {
        let resp = reqwest::Client::new()
            .post(self.url("/test/tamper"))
            .json(&serde_json::json!({ "mode": mode }))
            .send()
            .await
            .expect("POST /test/tamper");
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "tamper {mode:?}: {status} {body}");
    }

    /// Changes an account as the IdP's admin would: its groups, or whether it is disabled
    /// (a disabled account can neither log in nor have its logins refreshed).
    pub async fn change_account(&self, login: &str, change: serde_json::Value) {
        let mut body = change;
        body["login"] = login.into();
        let resp = reqwest::Client::new()
            .post(self.url("/test/account"))
            .json(&body)
            .send()
            .await
            .expect("POST /test/account");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "change {login}: {status} {text}");
    }

    /// The proxy's `[[oidc]]` block for this IdP.
    pub fn oidc_config(&self, name: &str) -> String {
        format!(
            "[[oidc]]\nname = \"{name}\"\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\"]\nallowed_email_domains = [\"example.com\"]\n",
            self.issuer
        )
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `node tests/idp/idp.mjs --port PORT` and waits for its JSON line.
fn spawn(dir: &Path, port: u16) -> Result<(Child, ChildStdin, u16), String> {
    let idp = idp_dir();
    if !idp.join("node_modules/oidc-provider").is_dir() {
        return Err(format!(
            "{} is missing: run scripts/test, which installs it (or `npm ci --prefix tests/idp`)",
            idp.join("node_modules").display()
        ));
    }
    let log_path = dir.join("idp.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open idp.log");
    let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut child = Command::new("node")
        .arg(idp.join("idp.mjs"))
        .args(["--port", &port.to_string(), "--exit-with-stdin"])
        .current_dir(&idp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "node is not installed or not in PATH: the test IdP needs Node.js 20 or later".to_owned()
            }
            _ => format!("start node: {e}"),
        })?;
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps reading after the first line so the IdP never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let fail = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let text = text.get(log_from as usize..).unwrap_or(&text);
        format!("the test IdP (node tests/idp/idp.mjs --port {port}) {why}; its stderr:\n{text}")
    };
    let line = match rx.recv_timeout(START_LIMIT) {
        Ok(line) => line,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            return Err(fail(&mut child, format!("did not start within {START_LIMIT:?}")))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            return Err(fail(&mut child, "exited before it served".to_owned()))
        }
    };
    let ready: serde_json::Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => return Err(fail(&mut child, format!("printed {line:?} ({e})"))),
    };
    match ready["port"].as_u64().and_then(|p| u16::try_from(p).ok()) {
        Some(p) if ready["issuer"] == format!("http://127.0.0.1:{p}") => Ok((child, stdin, p)),
        _ => Err(fail(&mut child, format!("printed {line:?}"))),
    }
}

/// The password of an IdP account: `<localpart>-idp-pw`.
pub fn idp_password(email: &str) -> String {
    format!("{}-idp-pw", email.split('@').next().unwrap_or(email))
}

/// A client that behaves like a browser for `idp_login`: a cookie jar, no automatic redirects.
/// Add the proxy's CA (`add_root_certificate`) before `build()` to fetch the proxy with it too.
pub fn browser() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
}

/// A browser without a browser: starts at `auth_url` (the IdP authorization URL the proxy
/// redirected to), logs in as `login`/`password` on the IdP's form, follows the IdP's redirects
/// and returns the first Location that is not on the IdP (e.g. the proxy's
/// `https://127.0.0.1:P/auth/callback?code=…&state=…&iss=…`) without fetching it. An IdP that
/// redirects away at once (an existing IdP session, or an error such as `error=invalid_request`)
/// returns that Location without a login. `client` needs `redirect(Policy::none())` and
/// `cookie_store(true)` (see `browser()`).
pub async fn idp_login(client: &reqwest::Client, auth_url: &str, login: &str, password: &str) -> String {
    try_idp_login(client, auth_url, login, password)
        .await
        .unwrap_or_else(|e| panic!("idp_login as {login}: {e}"))
}

/// `idp_login` that returns the IdP's refusal (a wrong password, an error page) as `Err`.
pub async fn try_idp_login(
    client: &reqwest::Client,
    auth_url: &str,
    login: &str,
    password: &str,
) -> Result<String, String> {
    let mut walk = Walk::new(client, auth_url)?;
    let mut page = walk.get(auth_url).await?;
    let mut submitted = false;
    loop {
        let html = match page {
            Page::Away(location) => return Ok(location),
            Page::Html(html) => html,
        };
        let form = forms(&html).into_iter().find(|f| f.has("password"));
        match form {
            Some(mut form) if !submitted => {
                form.set("login", login);
                form.set("password", password);
                submitted = true;
                page = walk.submit(&form).await?;
            }
            _ => return Err(format!("the IdP stopped at {}: {}", walk.url, text_of(&html))),
        }
    }
}

/// Completes a device authorization at the IdP as a person would in a fresh browser: opens the
/// verification page, enters `user_code`, confirms, and logs in as `login`/`password`.
pub async fn complete_device(idp: &TestIdp, user_code: &str, login: &str, password: &str) {
    try_complete_device(idp, user_code, login, password)
        .await
        .unwrap_or_else(|e| panic!("complete_device {user_code} as {login}: {e}"))
}

/// `complete_device` that returns the IdP's refusal (an unknown code, a wrong password) as `Err`.
pub async fn try_complete_device(idp: &TestIdp, user_code: &str, login: &str, password: &str) -> Result<(), String> {
    let client = browser().build().map_err(|e| e.to_string())?;
    let start = idp.url("/device");
    let mut walk = Walk::new(&client, &start)?;
    let mut page = walk.get(&start).await?;
    let (mut code_sent, mut confirmed, mut logged_in) = (false, false, false);
    for _ in 0..10 {
        let html = match page {
            Page::Away(location) => return Err(format!("the IdP sent the browser away to {location}")),
            Page::Html(html) => html,
        };
        if html.contains("id=\"device-success\"") {
            return Ok(());
        }
        let mut forms = forms(&html);
        let stuck = || format!("the IdP stopped at {}: {}", walk.url, text_of(&html));
        if let Some(form) = forms.iter_mut().find(|f| f.has("password")) {
            if logged_in {
                return Err(stuck());
            }
            form.set("login", login);
            form.set("password", password);
            logged_in = true;
            page = walk.submit(form).await?;
        } else if let Some(form) = forms.iter_mut().find(|f| f.has("confirm")) {
            if confirmed {
                return Err(stuck());
            }
            confirmed = true;
            page = walk.submit(form).await?;
        } else if let Some(form) = forms.iter_mut().find(|f| f.has("user_code")) {
            if code_sent {
                return Err(stuck());
            }
            form.set("user_code", user_code);
            code_sent = true;
            page = walk.submit(form).await?;
        } else {
            return Err(stuck());
        }
    }
    Err("the device flow did not finish in 10 pages".to_owned())
}

/// Follows an RP-initiated logout at the IdP (`end_session_url`, as the proxy redirected to it),
/// says yes on its page, and returns the first Location off the IdP (the post-logout redirect),
/// or None when the IdP ends on its own "Signed out" page.
pub async fn idp_logout(client: &reqwest::Client, end_session_url: &str) -> Result<Option<String>, String> {
    let mut walk = Walk::new(client, end_session_url)?;
    let mut page = walk.get(end_session_url).await?;
    let mut confirmed = false;
    loop {
        let html = match page {
            Page::Away(location) => return Ok(Some(location)),
            Page::Html(html) => html,
        };
        match forms(&html).into_iter().find(|f| f.has("xsrf")) {
            Some(mut form) if !confirmed => {
                form.set("logout", "yes");
                confirmed = true;
                page = walk.submit(&form).await?;
            }
            _ if confirmed && html.contains("signed out") => return Ok(None),
            _ => return Err(format!("the IdP stopped at {}: {}", walk.url, text_of(&html))),
        }
    }
}

/// The claims of a JWT (its payload), without verifying anything.
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    jwt_part(jwt, 1)
}

/// The header of a JWT, without verifying anything.
pub fn jwt_header(jwt: &str) -> serde_json::Value {
    jwt_part(jwt, 0)
}

fn jwt_part(jwt: &str, i: usize) -> serde_json::Value {
    let part = jwt.split('.').nth(i).unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("JWT part {i} is not base64url ({e}): {jwt}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT part {i} is not JSON ({e}): {jwt}"))
}

// ---------------------------------------------------------------------------------------------
// Walking the IdP's pages

enum Page {
    /// A redirect off the IdP, not followed.
    Away(String),
    /// A 2xx HTML page on the IdP.
    Html(String),
}

struct Walk<'a> {
    client: &'a reqwest::Client,
    origin: reqwest::Url,
    url: Url,
}

impl<'a> Walk<'a> {
    fn new(client: &'a reqwest::Client, start: &str) -> Result<Walk<'a>, String> {
        let url = Url::parse(start).map_err(|e| format!("bad URL {start:?}: {e}"))?;
        Ok(Walk {
            client,
            origin: url.clone(),
            url,
        })
    }

    async fn get(&mut self, url: &str) -> Result<Page, String> {
        self.url = Url::parse(url).map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let resp = self.client.get(self.url.clone()).send().await;
        self.follow(resp).await
    }

    async fn submit(&mut self, form: &Form) -> Result<Page, String> {
        let action = self
            .url
            .join(&form.action)
            .map_err(|e| format!("bad form action {:?}: {e}", form.action))?;
        self.url = action;
        let resp = self.client.post(self.url.clone()).form(&form.fields).send().await;
        self.follow(resp).await
    }

    /// Follows redirects on the IdP up to a page, or up to the first redirect away from it.
    async fn follow(&mut self, resp: reqwest::Result<reqwest::Response>) -> Result<Page, String> {
        let mut resp = resp.map_err(|e| format!("{}: {e}", self.url))?;
        for _ in 0..20 {
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| format!("{status} without a Location at {}", self.url))?;
                let next = self
                    .url
                    .join(location)
                    .map_err(|e| format!("bad Location {location:?}: {e}"))?;
                if next.origin() != self.origin.origin() {
                    return Ok(Page::Away(next.to_string()));
                }
                self.url = next;
                resp = self
                    .client
                    .get(self.url.clone())
                    .send()
                    .await
                    .map_err(|e| format!("{}: {e}", self.url))?;
                continue;
            }
            let body = resp.text().await.map_err(|e| format!("{}: {e}", self.url))?;
            if status == StatusCode::UNAUTHORIZED {
                return Err(format!("the IdP refused the login: {}", text_of(&body)));
            }
            if !status.is_success() {
                return Err(format!("{status} at {}: {}", self.url, text_of(&body)));
            }
            return Ok(Page::Html(body));
        }
        Err(format!("more than 20 redirects, the last to {}", self.url))
    }
}

/// A form on a page, as a browser would submit it (inputs only: buttons are added by `set`).
#[derive(Debug)]
struct Form {
    action: String,
    fields: Vec<(String, String)>,
}

impl Form {
    fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|(n, _)| n == name)
    }

    fn set(&mut self, name: &str, value: &str) {
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some(field) => field.1 = value.to_owned(),
            None => self.fields.push((name.to_owned(), value.to_owned())),
        }
    }
}

/// The forms of a page, with the inputs a browser would send (buttons are added by `set`).
fn forms(html: &str) -> Vec<Form> {
    let doc = scraper::Html::parse_document(html);
    let form_sel = scraper::Selector::parse("form").expect("selector");
    let input_sel = scraper::Selector::parse("input[name]").expect("selector");
    doc.select(&form_sel)
        .map(|form| Form {
            action: form.value().attr("action").unwrap_or_default().to_owned(),
            fields: form
                .select(&input_sel)
                .filter(|i| {
                    let kind = i.value().attr("type").unwrap_or_default().to_ascii_lowercase();
                    !matches!(kind.as_str(), "submit" | "button" | "image" | "reset")
                })
                .map(|i| {
                    let v = i.value();
                    (
                        v.attr("name").unwrap_or_default().to_owned(),
                        v.attr("value").unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        })
        .collect()
}

/// A page's text, briefly, for error messages.
fn text_of(html: &str) -> String {
    let doc = scraper::Html::parse_document(html);
    let text = doc.root_element().text().collect::<Vec<_>>().join(" ");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}
