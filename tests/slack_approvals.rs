//! Approving in Slack, safely: accounts linked by a code the bot sends, button presses that
//! count only for a linked approver the policy allows, and interaction requests that are
//! refused unless Slack signed them just now, once.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::slack::{Posted, Slack};
use common::{eventually, Backend, Proxy, TestDb, User};
use serde_json::Value;

const CHANNEL: &str = "C0DBA";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

const PROFILES: &str = r#"
admins = ["group:security"]

[[profiles]]
name = "db-patch"
max_duration = "2h"
requesters = ["group:dba"]
approvers = ["group:dba-leads"]
approvals_required = 1
approve_in_chat = true
ssh = { hosts = { env = "prod" }, logins = ["postgres"] }
notify = ["dba-approvals"]

[[profiles]]
name = "break-glass"
max_duration = "1h"
requesters = ["group:dba"]
approvers = ["group:dba-leads"]
approvals_required = 2
approve_in_chat = true
ssh = { hosts = { env = "prod" }, logins = ["root"] }
notify = ["dba-approvals"]

[[profiles]]
name = "console-only"
max_duration = "1h"
requesters = ["group:dba"]
approvers = ["group:dba-leads"]
approvals_required = 1
ssh = { hosts = { env = "prod" }, logins = ["readonly"] }
notify = ["dba-approvals"]
"#;

struct Stand {
    slack: Slack,
    proxy: Proxy,
    alice: User,
    bob: User,
    carol: User,
    db: TestDb,
}

impl Stand {
    fn new() -> Stand {
        Stand::on(Backend::Sqlite)
    }

    fn on(backend: Backend) -> Stand {
        let db = TestDb::blocking(backend);
        let slack = Slack::start(
            &[("#dba-approvals", CHANNEL)],
            &[
                ("alice@example.com", "U0ALICE"),
                ("bob@example.com", "U0BOB"),
                ("carol@example.com", "U0CAROL"),
                ("mallory@example.com", "U0MAL"),
            ],
        );
        let dir = db.dir.path();
        std::fs::write(dir.join("slack.token"), &slack.token).unwrap();
        std::fs::write(dir.join("slack.secret"), SIGNING_SECRET).unwrap();
        let config = format!(
            "{PROFILES}\n[slack]\napi_url = \"{}\"\nbot_token_file = \"{d}/slack.token\"\nsigning_secret_file = \"{d}/slack.secret\"\n\n[[notify]]\nname = \"dba-approvals\"\nkind = \"slack\"\nchannel = \"#dba-approvals\"\n\n[notifications]\nmax_backoff = \"2s\"\n",
            slack.api_url,
            d = dir.display()
        );
        let proxy = Proxy::start(dir, &db.url, &config);
        proxy.add_user("alice", &["dba"]);
        proxy.add_user("bob", &["dba-leads"]);
        proxy.add_user("carol", &["dba-leads"]);
        proxy.add_user("sec", &["security"]);
        let alice = proxy.login("alice");
        let bob = proxy.login("bob");
        let carol = proxy.login("carol");
        Stand {
            slack,
            proxy,
            alice,
            bob,
            carol,
            db,
        }
    }

    /// Links `user`'s Slack account as a person would: ask, read the DM, type the code.
    fn link(&self, user: &User, email: &str, slack_id: &str) {
        user.run(&["link", "slack", "--email", email], None).success();
        let code = self.code_sent_to(slack_id);
        let out = user.run(&["link", "slack", "--code", &code], None).success();
        assert!(
            out.stdout.contains(&format!("Linked Slack account {slack_id}")),
            "{}",
            out.stdout
        );
    }

    fn code_sent_to(&self, slack_id: &str) -> String {
        let dm = format!("D{}", &slack_id[1..]);
        let text = self
            .slack
            .top_messages(&dm)
            .pop()
            .expect("a code by direct message")
            .text;
        let at = text.find(": *").expect("the code in bold") + 3;
        text[at..at + 6].to_owned()
    }

    fn request(&self, profile: &str) -> String {
        let r = self
            .alice
            .json(&["request", profile, "--reason", "INC-7", "--for", "30m"]);
        r["id"].as_str().unwrap().to_owned()
    }

    /// The channel's message announcing `id`.
    fn message(&self, id: &str) -> Posted {
        eventually(Duration::from_secs(10), || {
            self.slack
                .top_messages(CHANNEL)
                .into_iter()
                .find(|m| m.all_text().contains(&format!("Request `{id}`")))
        })
        .unwrap_or_else(|| panic!("{id} is announced"))
    }

    fn state(&self, id: &str) -> String {
        let list = self.alice.json(&["requests"]);
        let r = list.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap();
        r["state"].as_str().unwrap().to_owned()
    }

    /// Posts to the interactivity endpoint as Slack would, signed at `timestamp`.
    fn post(&self, body: &str, headers: &[(String, String)]) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.proxy.ca).unwrap()).unwrap();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut req = http
                .post(format!("{}/integrations/slack/interactions", self.proxy.url))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_owned());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
    }

    /// A press of `action` on `message` by the Slack user `who`, signed now.
    fn press(&self, message: &Posted, who: &str, action: &str) -> (u16, Value) {
        let body = Slack::press(message, who, action);
        self.post(&body, &Slack::sign(SIGNING_SECRET, now(), &body))
    }

    /// The private answer `who` was shown last, waiting for it to arrive.
    fn told(&self, who: &str, count: usize) -> String {
        eventually(Duration::from_secs(5), || {
            let seen = self.slack.ephemerals(who);
            (seen.len() >= count).then(|| seen[count - 1].clone())
        })
        .unwrap_or_else(|| panic!("{who} was told nothing (#{count})"))
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn linking_proves_both_ends_and_can_be_undone() {
    let s = Stand::on(Backend::Postgres);
    // A wrong code links nothing, and five end the attempt.
    s.bob
        .run(&["link", "slack", "--email", "bob@example.com"], None)
        .success();
    let code = s.code_sent_to("U0BOB");
    let wrong = if code == "000000" { "000001" } else { "000000" };
    s.bob
        .run(&["link", "slack", "--code", wrong], None)
        .fails(1, "wrong code; 4 tries left");
    s.bob.run(&["link", "slack", "--code", &code], None).success();
    assert_eq!(s.bob.json(&["links"])[0]["chat_user"], "U0BOB");

    // Naming someone else's account sends them the code, which the asker never sees.
    s.carol.run(&["link", "slack", "--slack-user", "U0BOB"], None).success();
    for left in (1..=4).rev() {
        s.carol.run(&["link", "slack", "--code", wrong], None).fails(
            1,
            &format!("wrong code; {left} {} left", if left == 1 { "try" } else { "tries" }),
        );
    }
    s.carol
        .run(&["link", "slack", "--code", wrong], None)
        .fails(1, "wrong code too many times");
    s.carol
        .run(&["link", "slack", "--code", &code], None)
        .fails(1, "no Slack link is waiting");
    assert_eq!(s.carol.json(&["links"]), serde_json::json!([]));
    s.carol
        .run(&["link", "slack", "--email", "nobody@example.com"], None)
        .fails(1, "no account in the Slack workspace has the email nobody@example.com");
    s.carol
        .run(&["link", "slack"], None)
        .fails(1, "your user name is not an email address");

    // Admins see everyone's links; others only their own.
    s.carol.run(&["links", "--all"], None).fails(1, "only admins");
    let admin = s.proxy.login("sec");
    let all = admin.json(&["links", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(all[0]["user"], "bob");

    s.bob.run(&["unlink", "slack"], None).success();
    assert_eq!(admin.json(&["links", "--all"]), serde_json::json!([]));
    s.bob
        .run(&["unlink", "slack"], None)
        .fails(1, "you have no Slack account linked");
    let story: Vec<String> = s
        .proxy
        .admin(&["audit", "export"], None)
        .success()
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .filter(|a| a.starts_with("chat."))
        .collect();
    assert_eq!(
        story,
        ["chat.link_started", "chat.linked", "chat.link_started", "chat.unlinked"]
    );
}

#[test]
fn a_linked_approver_approves_in_slack() {
    let s = Stand::new();
    s.link(&s.bob, "bob@example.com", "U0BOB");
    let id = s.request("db-patch");
    let message = s.message(&id);
    // Bob is asked directly too, with the same buttons.
    let dm = eventually(Duration::from_secs(10), || {
        s.slack
            .top_messages("D0BOB")
            .into_iter()
            .find(|m| m.all_text().contains(&id))
    })
    .expect("bob gets a direct message");
    assert_eq!(dm.buttons(), ["jitgate.approve", "jitgate.deny", "jitgate.open"]);

    assert_eq!(s.press(&message, "U0BOB", "jitgate.approve").0, 200);
    assert_eq!(s.state(&id), "active");
    assert!(s
        .told("U0BOB", 1)
        .starts_with(&format!("You approved {id}: alice now holds db-patch")));
    let updated = eventually(Duration::from_secs(10), || {
        s.slack
            .top_messages(CHANNEL)
            .into_iter()
            .find(|m| m.ts == message.ts && m.all_text().contains("*Approved* by bob"))
    })
    .expect("the channel's message shows the approval");
    assert_eq!(updated.buttons(), ["jitgate.open"]);
    eventually(Duration::from_secs(10), || {
        s.slack
            .top_messages("D0BOB")
            .into_iter()
            .find(|m| m.ts == dm.ts && m.all_text().contains("*Approved* by bob"))
    })
    .expect("and so does bob's direct message");
    let detail = eventually(Duration::from_secs(10), || {
        let out = s.alice.run(&["requests", &id], None).success().stdout;
        (out.matches(": delivered (").count() == 2).then_some(out)
    })
    .unwrap_or_else(|| panic!("{}", s.alice.run(&["requests", &id], None).stdout));
    assert!(
        detail.contains("announced: Slack #dba-approvals: delivered (grant.activated)"),
        "{detail}"
    );
    // The requester sees that an approver was asked; an approver sees who.
    assert!(
        detail.contains("announced: an approver (Slack direct message): delivered (grant.activated)"),
        "{detail}"
    );
    let full = s.bob.run(&["requests", &id], None).success().stdout;
    assert!(
        full.contains("announced: bob (Slack direct message): delivered (grant.activated)"),
        "{full}"
    );
    // The console link is a button too: Slack reports its press, which decides nothing.
    assert_eq!(s.press(&updated, "U0BOB", "jitgate.open").0, 200);
    let export = s.proxy.admin(&["audit", "export"], None).success().stdout;
    let approved: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["action"] == "request.approved" || e["action"] == "chat.action")
        .collect();
    assert_eq!(approved[0]["action"], "request.approved");
    assert_eq!(approved[0]["actor"], "bob");
    assert_eq!(approved[1]["details"]["slack_user"], "U0BOB");
    assert_eq!(approved[1]["details"]["result"], "decided");
}

#[test]
fn presses_that_may_not_decide_are_refused_privately() {
    let s = Stand::new();
    s.link(&s.bob, "bob@example.com", "U0BOB");
    s.link(&s.alice, "alice@example.com", "U0ALICE");
    let id = s.request("db-patch");
    let message = s.message(&id);

    s.press(&message, "U0MAL", "jitgate.approve");
    assert!(s
        .told("U0MAL", 1)
        .starts_with("your Slack account is not linked to a jitgate user"));
    s.press(&message, "U0ALICE", "jitgate.approve");
    assert!(s
        .told("U0ALICE", 1)
        .starts_with("you cannot approve or deny your own request"));
    assert!(
        s.told("U0ALICE", 1).contains(&format!("/requests/{id}")),
        "with the console link"
    );
    assert_eq!(s.state(&id), "pending");

    // Two approvals needed: the same approver's second press does not count twice.
    let glass = s.request("break-glass");
    let glass_message = s.message(&glass);
    s.press(&glass_message, "U0BOB", "jitgate.approve");
    assert!(s.told("U0BOB", 1).contains("needs 1 more approval"));
    s.press(&glass_message, "U0BOB", "jitgate.approve");
    assert!(s.told("U0BOB", 2).starts_with("you have already approved this request"));
    assert_eq!(s.state(&glass), "pending");

    // A profile without approve_in_chat is decided elsewhere.
    let console = s.request("console-only");
    let console_message = s.message(&console);
    assert_eq!(console_message.buttons(), ["jitgate.open"]);
    let stale = Slack::press_stale(&console_message, "U0BOB", "jitgate.approve");
    s.post(&stale, &Slack::sign(SIGNING_SECRET, now(), &stale));
    assert!(s.told("U0BOB", 3).contains("approve_in_chat is off"));
    assert_eq!(s.state(&console), "pending");

    // A button of one request's message made to name another request decides neither.
    let forged = Slack::press(&message, "U0BOB", "jitgate.approve").replace(&id, &console);
    s.post(&forged, &Slack::sign(SIGNING_SECRET, now(), &forged));
    assert!(s
        .told("U0BOB", 4)
        .starts_with(&format!("this button does not belong to request {console}")));
    let unknown = Slack::press(&message, "U0BOB", "jitgate.deny").replace(&id, "req-00000000deadbeef");
    s.post(&unknown, &Slack::sign(SIGNING_SECRET, now(), &unknown));
    assert!(s
        .told("U0BOB", 5)
        .contains("does not belong to request req-00000000deadbeef"));
    assert_eq!(s.state(&id), "pending");
    assert_eq!(s.state(&console), "pending");

    // Bob denies from Slack: the requester sees who and where.
    s.press(&message, "U0BOB", "jitgate.deny");
    assert_eq!(s.told("U0BOB", 6), format!("You denied {id}."));
    assert_eq!(s.state(&id), "denied");
    let r = s.alice.json(&["requests"]);
    let r = r
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(r["decision_reason"], "denied in Slack by bob");
    let _ = &s.carol;
}

#[test]
fn interaction_requests_not_from_slack_change_nothing() {
    let s = Stand::new();
    s.link(&s.bob, "bob@example.com", "U0BOB");
    let id = s.request("db-patch");
    let message = s.message(&id);
    let body = Slack::press(&message, "U0BOB", "jitgate.approve");

    let unauthorized = |(status, answer): (u16, Value), says: &str| {
        assert_eq!(status, 401, "{answer}");
        assert_eq!(answer["reason"], says);
    };
    let forged = Slack::sign("not-the-secret", now(), &body);
    unauthorized(s.post(&body, &forged), "bad X-Slack-Signature");
    unauthorized(s.post(&body, &[]), "no X-Slack-Request-Timestamp");
    let stale = Slack::sign(SIGNING_SECRET, now() - 6 * 60, &body);
    unauthorized(
        s.post(&body, &stale),
        "X-Slack-Request-Timestamp is more than 5 minutes away",
    );
    let tampered = body.replace("U0BOB", "U0MAL");
    unauthorized(
        s.post(&tampered, &Slack::sign(SIGNING_SECRET, now(), &body)),
        "bad X-Slack-Signature",
    );
    assert_eq!(s.state(&id), "pending");

    // Accepted once; the very same request again is a replay.
    let signed = Slack::sign(SIGNING_SECRET, now(), &body);
    assert_eq!(s.post(&body, &signed).0, 200);
    assert_eq!(s.state(&id), "active");
    unauthorized(s.post(&body, &signed), "this payload was taken before");
    let shouted: Vec<(String, String)> = signed
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if k == "x-slack-signature" {
                    format!("v0={}", v[3..].to_uppercase())
                } else {
                    v.clone()
                },
            )
        })
        .collect();
    unauthorized(s.post(&body, &shouted), "this payload was taken before");

    let bad = |body: &str, says: &str| {
        let (status, answer) = s.post(body, &Slack::sign(SIGNING_SECRET, now(), body));
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["reason"], says, "{body}");
    };
    bad("", "no payload field in the form body");
    bad("payload=%7Bnot-json", "the payload is not JSON");
    bad(
        "payload=%7B%22type%22%3A%22view_submission%22%7D",
        "only block_actions payloads are taken",
    );
    bad(
        "payload=%7B%22type%22%3A%22block_actions%22%2C%22actions%22%3A%5B%5D%7D",
        "a button press carries exactly one action",
    );
    let without_user = Slack::press(&message, "U0BOB", "jitgate.deny").replace("%22user%22", "%22nobody%22");
    bad(&without_user, "the payload has no user.id");
    let huge = format!("{body}&padding={}", "x".repeat(100 * 1024));
    let (status, _) = s.post(&huge, &Slack::sign(SIGNING_SECRET, now(), &huge));
    assert_eq!(status, 413);
}

#[test]
fn presses_count_only_for_users_seen_lately() {
    let s = Stand::new();
    s.link(&s.bob, "bob@example.com", "U0BOB");
    let id = s.request("db-patch");
    let message = s.message(&id);
    // Bob last logged in long ago (as far as the proxy knows).
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&s.db.url).await.unwrap();
        let done = sqlx::query("UPDATE user_logins SET at = 0 WHERE name = 'bob'")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    });
    s.press(&message, "U0BOB", "jitgate.approve");
    assert!(
        s.told("U0BOB", 1)
            .starts_with("bob has not logged in to jitgate within 12h"),
        "{}",
        s.told("U0BOB", 1)
    );
    assert_eq!(s.state(&id), "pending");
    // Logging in again is enough.
    s.proxy.login("bob");
    s.press(&message, "U0BOB", "jitgate.approve");
    assert!(s.told("U0BOB", 2).starts_with(&format!("You approved {id}")));
    assert_eq!(s.state(&id), "active");
}

#[test]
fn the_console_links_a_slack_account_too() {
    let s = Stand::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&s.proxy.ca).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = s.proxy.url.clone();
    let get = |path: &str| {
        rt.block_on(async {
            http.get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    // A form post from the console's own page; a redirect is followed, as a browser does.
    let post = |path: &str, form: Vec<(&str, String)>| {
        let req = http.post(format!("{base}{path}")).header("origin", &base).form(&form);
        let resp = rt.block_on(req.send()).unwrap();
        let status = resp.status();
        match resp.headers().get("location").and_then(|l| l.to_str().ok()) {
            Some(to) if status.is_redirection() && path != "/auth/local" => get(to),
            _ => rt.block_on(resp.text()).unwrap(),
        }
    };
    post(
        "/auth/local",
        vec![
            ("user", "bob".into()),
            ("password", common::password_of("bob")),
            ("rd", "/".into()),
        ],
    );
    assert!(
        get("/").contains(r#"href="/slack""#),
        "the start page points to the Slack page"
    );
    let page = get("/slack");
    assert!(page.contains("Not linked"), "{page}");
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the form")
        .to_owned();
    let sent = post(
        "/slack/start",
        vec![("csrf", csrf.clone()), ("email", "bob@example.com".into())],
    );
    assert!(sent.contains("A code is on its way"), "{sent}");
    let code = s.code_sent_to("U0BOB");
    let wrong = post("/slack/confirm", vec![("csrf", csrf.clone()), ("code", "x".into())]);
    assert!(wrong.contains("wrong code; 4 tries left"), "{wrong}");
    let forged = post(
        "/slack/confirm",
        vec![("csrf", "forged".into()), ("code", code.clone())],
    );
    assert!(!forged.contains("is linked"), "a forged form links nothing: {forged}");
    let linked = post("/slack/confirm", vec![("csrf", csrf.clone()), ("code", code)]);
    assert!(linked.contains("Your Slack account is linked"), "{linked}");
    assert!(linked.contains("Linked to Slack member <code>U0BOB</code>"), "{linked}");
    assert_eq!(s.bob.json(&["links"])[0]["chat_user"], "U0BOB");
    let unlinked = post("/slack/unlink", vec![("csrf", csrf)]);
    assert!(unlinked.contains("Your Slack account is unlinked"), "{unlinked}");
    assert_eq!(s.bob.json(&["links"]), serde_json::json!([]));
}
