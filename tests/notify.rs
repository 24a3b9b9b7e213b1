//! Notices to Slack (the Web API stand-in) and signed webhooks (a receiver that checks
//! signatures): a request is announced at once and its message follows every change;
//! outages delay notices and lose none; receivers inside the proxy's network are refused.

mod common;

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use common::slack::Slack;
use common::webhook::Receiver;
use common::{eventually, Backend, Proxy, TestDb};
use jitgate::access::{Identity, Policy};
use jitgate::broker::Broker;
use jitgate::config::Config;
use jitgate::live::Live;
use jitgate::notify::{ChatPolicy, Notifier};
use jitgate::store::Store;
use jitgate::time::Timestamp;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "C0DBA";

fn profiles(notify: &[&str]) -> String {
    profiles_with(notify, false)
}

/// With `chat`, approvers may decide from Slack's buttons (which needs a signing secret).
fn profiles_with(notify: &[&str], chat: bool) -> String {
    let names: Vec<String> = notify.iter().map(|n| format!("{n:?}")).collect();
    format!(
        r#"
admins = ["group:security"]

[[profiles]]
name = "db-patch"
description = "Patch the production database"
max_duration = "2h"
requesters = ["group:dba"]
approvers = ["group:dba-leads"]
approvals_required = 1
ssh = {{ hosts = {{ env = "prod", role = "db" }}, logins = ["postgres"] }}
notify = [{}]
approve_in_chat = {chat}
"#,
        names.join(", ")
    )
}

/// The config tables of a Slack target on `slack` and a webhook target on `hook`.
fn targets(dir: &Path, slack: &Slack, channel: &str, hook: &Receiver, extra: &str) -> String {
    std::fs::write(dir.join("slack.token"), &slack.token).unwrap();
    std::fs::write(dir.join("slack.secret"), "signing-secret").unwrap();
    std::fs::write(dir.join("hook.secret"), &hook.secret).unwrap();
    format!(
        r#"
[slack]
api_url = "{api}"
bot_token_file = "{d}/slack.token"
signing_secret_file = "{d}/slack.secret"

[[notify]]
name = "dba-approvals"
kind = "slack"
channel = "{channel}"

[[notify]]
name = "audit-hook"
kind = "webhook"
url = "{url}"
secret_file = "{d}/hook.secret"

[notifications]
max_backoff = "2s"
allow_networks = ["127.0.0.1/32"]
{extra}
"#,
        api = slack.api_url,
        d = dir.display(),
        url = hook.url,
    )
}

fn workspace() -> Slack {
    Slack::start(&[("#dba-approvals", CHANNEL)], &[])
}

/// Starts a proxy with alice (dba) and bob (dba-leads), both logged in.
fn stand(db: &TestDb, config: &str) -> (Proxy, common::User, common::User) {
    let proxy = Proxy::start(db.dir.path(), &db.url, config);
    proxy.add_user("alice", &["dba"]);
    proxy.add_user("bob", &["dba-leads"]);
    let alice = proxy.login("alice");
    let bob = proxy.login("bob");
    (proxy, alice, bob)
}

fn request(alice: &common::User, reason: &str) -> String {
    let r = alice.json(&["request", "db-patch", "--reason", reason, "--for", "1h"]);
    r["id"].as_str().unwrap().to_owned()
}

fn audit(proxy: &Proxy) -> Vec<Value> {
    let out = proxy.admin(&["audit", "export"], None).success().stdout;
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn audited(proxy: &Proxy, action: &str) -> Vec<Value> {
    audit(proxy).into_iter().filter(|e| e["action"] == action).collect()
}

#[test]
fn a_request_is_announced_and_its_message_follows_every_change() {
    let db = TestDb::blocking(Backend::Sqlite);
    let slack = workspace();
    let hook = Receiver::start();
    let config = profiles_with(&["dba-approvals", "audit-hook"], true)
        + &targets(db.dir.path(), &slack, "#dba-approvals", &hook, "");
    let (proxy, alice, bob) = stand(&db, &config);

    let id = request(&alice, "INC-4411 <!channel> & <https://evil.example|docs>");
    let posted = eventually(Duration::from_secs(10), || slack.top_messages(CHANNEL).pop())
        .expect("the request is announced in the channel");
    assert_eq!(posted.buttons(), ["jitgate.approve", "jitgate.deny", "jitgate.open"]);
    let text = posted.all_text();
    for part in [
        "*alice* requests *db-patch* for *1h*",
        "SSH to hosts labelled env=prod, role=db as postgres",
        "*Pending*: 0 of 1 approval",
        &format!("Request `{id}`"),
        // What the requester typed cannot mention the channel or hide a link.
        "INC-4411 &lt;!channel&gt; &amp; &lt;https://evil.example|docs&gt;",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    let buttons = &posted.blocks.as_array().unwrap()[3];
    assert_eq!(buttons["block_id"], format!("jitgate:{id}"));
    assert_eq!(buttons["elements"][0]["value"], id.as_str());
    assert_eq!(
        buttons["elements"][2]["url"],
        format!("{}/requests/{id}", proxy.url).as_str()
    );

    bob.run(&["approve", &id], None).success();
    let approved = eventually(Duration::from_secs(10), || {
        slack
            .top_messages(CHANNEL)
            .pop()
            .filter(|m| m.all_text().contains("*Approved* by bob"))
    })
    .expect("the message shows the approval");
    assert_eq!(
        approved.ts, posted.ts,
        "the same message is updated, not a new one posted"
    );
    assert_eq!(approved.buttons(), ["jitgate.open"], "nothing left to decide");
    let grant = alice.json(&["grants"])[0]["id"].as_str().unwrap().to_owned();
    bob.run(&["revoke", &grant, "--reason", "done early"], None).success();
    eventually(Duration::from_secs(10), || {
        slack
            .top_messages(CHANNEL)
            .pop()
            .filter(|m| m.all_text().contains("*Revoked* by bob"))
    })
    .expect("the message shows the revocation");
    let notes: Vec<String> = eventually(Duration::from_secs(10), || {
        let notes: Vec<String> = slack
            .replies(CHANNEL, &posted.ts)
            .iter()
            .map(|m| m.text.clone())
            .collect();
        (notes.len() == 3).then_some(notes)
    })
    .expect("a note per change in the thread");
    assert!(notes[0].starts_with("Approved by bob (1 of 1)"), "{notes:?}");
    assert!(
        notes[1].starts_with(&format!("Grant `{grant}` active until")),
        "{notes:?}"
    );
    assert_eq!(notes[2], "Grant revoked by bob: done early");
    assert_eq!(slack.top_messages(CHANNEL).len(), 1);

    // The webhook receiver got each change once, signed, in order.
    let types = eventually(Duration::from_secs(10), || {
        let t = hook.types();
        (t.len() == 4).then_some(t)
    })
    .unwrap_or_else(|| panic!("webhooks: {:?} refused: {:?}", hook.types(), hook.refused()));
    assert_eq!(
        types,
        [
            "request.created",
            "request.approved",
            "grant.activated",
            "grant.revoked"
        ]
    );
    assert!(hook.refused().is_empty(), "{:?}", hook.refused());
    let created = &hook.deliveries()[0].body;
    assert_eq!(created["data"]["request"]["id"], id.as_str());
    assert_eq!(created["data"]["request"]["requester"]["user"], "alice");
    assert_eq!(created["data"]["actor"], "alice");
    assert_eq!(
        created["data"]["console_url"],
        format!("{}/requests/{id}", proxy.url).as_str()
    );
    assert_eq!(hook.deliveries()[3].body["data"]["grant_id"], grant.as_str());

    // Each delivery is in the audit log, and the chain still verifies.
    let delivered = eventually(Duration::from_secs(5), || {
        let d = audited(&proxy, "notify.delivered");
        (d.len() == 8).then_some(d)
    })
    .expect("4 Slack and 4 webhook deliveries audited");
    assert!(delivered.iter().all(|e| e["request_id"] == id.as_str()));
    proxy.admin(&["audit", "verify"], None).success();
}

#[test]
fn an_outage_delays_notices_and_loses_none() {
    let db = TestDb::blocking(Backend::Postgres);
    let slack = workspace();
    let hook = Receiver::start();
    let config = profiles(&["dba-approvals", "audit-hook"]) + &targets(db.dir.path(), &slack, CHANNEL, &hook, "");
    let (proxy, alice, bob) = stand(&db, &config);

    // Slack is down for a minute; the webhook receiver for five seconds.
    slack.go_down_for(Duration::from_secs(60));
    hook.go_down_for(Duration::from_secs(5));
    let down_since = std::time::Instant::now();
    let id = request(&alice, "INC-1");
    bob.run(&["approve", &id], None).success();
    assert_eq!(
        alice.json(&["requests"])[0]["state"],
        "active",
        "an outage holds up nothing"
    );

    let types = eventually(Duration::from_secs(30), || {
        let t = hook.types();
        (t.len() == 3).then_some(t)
    })
    .expect("the webhooks arrive once the receiver is back");
    assert_eq!(types, ["request.created", "request.approved", "grant.activated"]);
    // The first was tried while the receiver was down; the others waited their turn.
    let first = &hook.deliveries()[0].id;
    assert!(
        hook.attempts(first) > 1,
        "{first} was tried while the receiver was down"
    );
    assert_eq!(hook.repeats(), 0, "each delivered once, never again after it was taken");

    assert!(slack.top_messages(CHANNEL).is_empty());
    assert!(slack.calls().iter().all(|c| c.outcome == "down"));
    let message = eventually(Duration::from_secs(90), || {
        slack
            .top_messages(CHANNEL)
            .pop()
            .filter(|_| slack.replies(CHANNEL, &slack.top_messages(CHANNEL)[0].ts).len() == 2)
    })
    .expect("the message and its notes arrive once Slack is back");
    assert!(down_since.elapsed() >= Duration::from_secs(60));
    assert!(
        message.all_text().contains("*Approved* by bob"),
        "{}",
        message.all_text()
    );
    assert_eq!(slack.top_messages(CHANNEL).len(), 1, "announced once");
    let notes: Vec<String> = slack
        .replies(CHANNEL, &message.ts)
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(notes[0].starts_with("Approved by bob"), "in order: {notes:?}");
    assert!(notes[1].starts_with("Grant `"), "in order: {notes:?}");
    assert!(audited(&proxy, "notify.failed").is_empty());
}

#[test]
fn slack_errors_are_handled_as_slack_means_them() {
    let db = TestDb::blocking(Backend::Sqlite);
    let slack = workspace();
    let hook = Receiver::start();
    let config = profiles(&["dba-approvals"]) + &targets(db.dir.path(), &slack, "#dba-approvals", &hook, "");
    let (proxy, alice, bob) = stand(&db, &config);

    slack.rate_limit(1, 3);
    request(&alice, "INC-2");
    eventually(Duration::from_secs(15), || slack.top_messages(CHANNEL).pop()).expect("posted after the wait");
    let calls = slack.calls();
    assert_eq!(calls[0].outcome, "ratelimited");
    let waited = calls[1].at.duration_since(calls[0].at).unwrap();
    assert!(
        waited >= Duration::from_secs(3),
        "Retry-After: 3 honoured, waited {waited:?}"
    );
    assert!(!proxy.log().contains(&slack.token), "the bot token is never logged");
    let first = slack.top_messages(CHANNEL).pop().unwrap();
    assert_eq!(
        first.buttons(),
        ["jitgate.open"],
        "no buttons where deciding in Slack is off"
    );

    // Someone deletes the message: the next change announces the request anew.
    slack.delete(CHANNEL, &first.ts);
    let id = alice.json(&["requests"])[0]["id"].as_str().unwrap().to_owned();
    bob.run(&["approve", &id], None).success();
    let again = eventually(Duration::from_secs(10), || slack.top_messages(CHANNEL).pop())
        .unwrap_or_else(|| panic!("not posted again after message_not_found:\n{}", proxy.log()));
    assert!(again.all_text().contains("*Approved* by bob"), "{}", again.all_text());
    assert!(slack
        .calls()
        .iter()
        .any(|c| c.method == "chat.update" && c.outcome == "message_not_found"));
    drop(proxy);

    // A channel the bot cannot post in: given up at once, with the reason in the audit log;
    // the request itself goes on.
    let db = TestDb::blocking(Backend::Sqlite);
    let config = profiles(&["dba-approvals"]) + &targets(db.dir.path(), &slack, "#nowhere", &hook, "");
    let (proxy, alice, bob) = stand(&db, &config);
    let id = request(&alice, "INC-3");
    let failed =
        eventually(Duration::from_secs(10), || audited(&proxy, "notify.failed").pop()).expect("the failure is audited");
    assert_eq!(failed["reason"], "Slack refused chat.postMessage: channel_not_found");
    assert_eq!(failed["request_id"], id.as_str());
    bob.run(&["approve", &id], None).success();
    assert!(proxy.log().contains("channel_not_found"));
    // An approver sees why; the requester (below) only that it failed.
    let shown = bob.json(&["requests", &id]);
    assert_eq!(shown["announced"][0]["place"], "Slack #nowhere");
    assert_eq!(shown["announced"][0]["state"], "failed");
    assert_eq!(
        shown["announced"][0]["error"],
        "Slack refused chat.postMessage: channel_not_found"
    );
    let mine = alice.json(&["requests", &id]);
    assert_eq!(mine["announced"][0]["state"], "failed");
    assert!(mine["announced"][0].get("error").is_none(), "{mine}");
}

#[test]
fn webhooks_never_reach_inside_the_proxy_network() {
    let db = TestDb::blocking(Backend::Sqlite);
    let slack = workspace();
    // 127.0.0.1 is not allowed; 127.0.0.2 is, and redirects to 127.0.0.1.
    let inside = Receiver::start();
    let by_name = Receiver::start();
    let redirecting = Receiver::start_on("127.0.0.2");
    redirecting.redirect_to(&inside.url);
    let secret_file = db.dir.path().join("hook.secret");
    std::fs::write(&secret_file, &inside.secret).unwrap();
    std::fs::write(db.dir.path().join("slack.token"), &slack.token).unwrap();
    let localhost = by_name.url.replace("127.0.0.1", "localhost");
    // The cloud metadata service, as a receiver would be named to reach it.
    let metadata = "https://169.254.169.254/latest/meta-data/".to_owned();
    let hooks = [
        ("by-ip", &inside.url),
        ("by-name", &localhost),
        ("redirect", &redirecting.url),
        ("metadata", &metadata),
    ];
    let mut config = profiles(&["by-ip", "by-name", "redirect", "metadata"]);
    for (name, url) in hooks {
        config += &format!(
            "[[notify]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_file = \"{}\"\n",
            secret_file.display()
        );
    }
    config += "[notifications]\nallow_networks = [\"127.0.0.2\"]\n";
    let (proxy, alice, _bob) = stand(&db, &config);
    request(&alice, "INC-5");

    let failed = eventually(Duration::from_secs(10), || {
        let f = audited(&proxy, "notify.failed");
        (f.len() == 4).then_some(f)
    })
    .expect("all four given up");
    let why = |target: &str| {
        failed
            .iter()
            .find(|e| e["target"] == target)
            .and_then(|e| e["reason"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        why("by-ip"),
        "127.0.0.1 is a private, loopback or link-local address not in notifications.allow_networks"
    );
    assert!(
        why("by-name").starts_with("localhost resolves to ") && why("by-name").contains("127.0.0.1"),
        "{}",
        why("by-name")
    );
    assert_eq!(
        why("redirect"),
        format!(
            "answered 302 Found with a redirect to {}; redirects are not followed",
            inside.url
        )
    );
    assert_eq!(redirecting.all_attempts(), 1);
    assert_eq!(
        inside.all_attempts(),
        0,
        "nothing reached 127.0.0.1 directly or by redirect"
    );
    assert_eq!(by_name.all_attempts(), 0);
    assert_eq!(
        why("metadata"),
        "169.254.169.254 is a private, loopback or link-local address not in notifications.allow_networks"
    );
}

#[test]
fn check_config_names_what_is_wrong_with_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let text = profiles_with(&["nowhere"], true)
        + r##"
[[notify]]
name = "plain"
kind = "webhook"
url = "http://hooks.example.com/x"
secret_env = "JITGATE_TEST_SURELY_UNSET"

[[notify]]
name = "weak"
kind = "webhook"
url = "https://hooks.example.com/x"
secret_file = "/dev/null"

[[notify]]
name = "chat"
kind = "slack"
channel = "#x"

[[notify]]
name = "pager"
kind = "sms"

[notifications]
allow_networks = ["10.0.0.0/33"]
"##;
    std::fs::write(&config, text).unwrap();
    let out = common::run(&["check-config", "--config", config.to_str().unwrap()], &[], None);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for e in [
        "notify[0].url: http://hooks.example.com must be https://",
        "notify[0].secret_env: the environment variable JITGATE_TEST_SURELY_UNSET is not set",
        "notify[1].secret: is empty",
        "notify[2].bot_token_env: missing; set bot_token_env or bot_token_file here or in [slack]",
        "notify[3].kind: \"sms\" is not a target kind (use \"slack\" or \"webhook\")",
        "notifications.allow_networks[0]: \"10.0.0.0/33\" is not a network",
        "profiles[0].notify[0]: no [[notify]] target is named \"nowhere\"",
        "profiles[0].approve_in_chat: needs [slack] with signing_secret_env or signing_secret_file",
    ] {
        assert!(out.stderr.contains(e), "{e:?} not in:\n{}", out.stderr);
    }
}

/// In-process, with the broker and the notifier on one store: connections cut by a
/// revocation, and by an expiry, are recorded as `session.cut` and sent to webhooks.
/// One replica in this process: a broker on `url` with the config `text` and `live`, and its
/// notifier, whose `start` begins it, until `stop` is cancelled.
struct Replica {
    broker: Arc<Broker>,
    store: Arc<dyn Store>,
    policy: Arc<Policy>,
    notifier: Arc<Notifier>,
    stop: CancellationToken,
}

impl Replica {
    async fn new(url: &str, text: &str, live: Live) -> Replica {
        let config = Config::parse(text, "t.toml").unwrap();
        let store = jitgate::store::open(url).await.unwrap();
        let policy = Arc::new(config.policy);
        let chat_policy = ChatPolicy {
            sources: vec!["local".into()],
            fresh_for: Duration::from_secs(3600),
            fresh_for_idp: Duration::from_secs(3600),
        };
        let notifier = Notifier::new(
            Arc::clone(&store),
            Arc::clone(&policy),
            config.notify,
            chat_policy,
            "https://proxy.test",
        )
        .unwrap();
        let broker = Broker::new(Arc::clone(&policy), Arc::clone(&store), live, Duration::from_secs(3600));
        Replica {
            broker: Arc::new(broker),
            store,
            policy,
            notifier: Arc::new(notifier),
            stop: CancellationToken::new(),
        }
    }

    fn start(&self) {
        tokio::spawn(Arc::clone(&self.notifier).run(self.stop.clone()));
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_are_recorded_and_announced() {
    use std::collections::BTreeMap;

    use jitgate::access::{Action, Resource};

    let db = TestDb::new(Backend::Sqlite).await;
    let hook = Receiver::start();
    let secret = db.dir.path().join("hook.secret");
    std::fs::write(&secret, &hook.secret).unwrap();
    let text = format!(
        r#"
[[profiles]]
name = "staging-shell"
max_duration = "1h"
requesters = ["group:dev"]
approvers = ["group:leads"]
approvals_required = 0
ssh = {{ hosts = {{ env = "staging" }}, logins = ["ubuntu"] }}

[[notify]]
name = "siem"
kind = "webhook"
url = "{}"
secret_file = "{}"
all_profiles = true
events = ["grant.revoked", "grant.expired", "session.cut"]

[notifications]
allow_networks = ["127.0.0.1"]
"#,
        hook.url,
        secret.display()
    );
    let (reports, cuts) = tokio::sync::mpsc::unbounded_channel();
    let replica = Replica::new(&db.url, &text, Live::reporting(reports)).await;
    let broker = Arc::clone(&replica.broker);
    tokio::spawn(Arc::clone(&broker).record_cuts(cuts));
    replica.start();

    let dev = Identity::new("dana", ["dev"]);
    let labels = BTreeMap::from([("env".to_owned(), "staging".to_owned())]);
    // Opens `n` connections as an SSH front-end would: authorized, then registered.
    let connect = |n: usize| {
        let broker = Arc::clone(&broker);
        let labels = labels.clone();
        let dev = dev.clone();
        async move {
            let ssh = Resource::Ssh {
                host: "web-stg-1",
                labels: &labels,
                login: "ubuntu",
            };
            let auth = broker
                .authorize(&dev, ssh, Action::SshLogin, Timestamp::now())
                .await
                .unwrap()
                .expect("allowed");
            (0..n).map(|_| broker.live().register(&auth)).collect::<Vec<_>>()
        }
    };

    // Revoked with two connections open.
    let r = broker
        .open_request(
            &dev,
            "staging-shell",
            "deploy".into(),
            Duration::from_secs(600),
            Timestamp::now(),
        )
        .await
        .unwrap();
    let revoked = r.grant_id.unwrap();
    let open = connect(2).await;
    let lead = Identity::new("admin", ["leads"]);
    broker
        .revoke(&lead, &revoked, Some("incident over".into()), Timestamp::now())
        .await
        .unwrap();
    assert!(open.iter().all(|c| c.is_cut()));
    drop(open);

    // Expired with one open: the grant's own timer cuts it.
    let r = broker
        .open_request(
            &dev,
            "staging-shell",
            "deploy".into(),
            Duration::from_secs(2),
            Timestamp::now(),
        )
        .await
        .unwrap();
    let expired = r.grant_id.unwrap();
    let open = connect(1).await;
    tokio::time::timeout(Duration::from_secs(5), open[0].cancelled())
        .await
        .expect("cut at expiry");

    let hook2 = hook.clone();
    let delivered = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(10), || {
            let d = hook2.deliveries();
            (d.iter().filter(|d| d.body["type"] == "session.cut").count() == 2).then_some(d)
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("got {:?}", hook.types()));
    let cut = |grant: &str| {
        delivered
            .iter()
            .find(|d| d.body["type"] == "session.cut" && d.body["data"]["grant_id"] == grant)
            .map(|d| d.body["data"].clone())
            .unwrap_or_else(|| panic!("no session.cut for {grant}"))
    };
    assert_eq!(cut(&revoked)["details"]["connections"], 2);
    assert_eq!(cut(&revoked)["reason"], "revoked");
    assert_eq!(cut(&revoked)["request"]["requester"]["user"], "dana");
    assert_eq!(cut(&expired)["details"]["connections"], 1);
    assert_eq!(cut(&expired)["reason"], "expired");
    assert!(hook.types().contains(&"grant.revoked".to_owned()));
}

/// Two replicas on one PostgreSQL store, both reading the log and delivering: every notice
/// goes out once, and each request's notices reach each place in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_notice_once_and_in_order() {
    let db = TestDb::new(Backend::Postgres).await;
    let slack = workspace();
    let hook = Receiver::start();
    let dir = db.dir.path();
    let text = profiles(&["dba-approvals", "audit-hook"]) + &targets(dir, &slack, CHANNEL, &hook, "");
    let a = Replica::new(&db.url, &text, Live::new()).await;
    let b = Replica::new(&db.url, &text, Live::new()).await;
    a.start();
    b.start();
    let broker = &a.broker;

    let alice = Identity::new("alice", ["dba"]);
    let bob = Identity::new("bob", ["dba-leads"]);
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = broker
            .open_request(
                &alice,
                "db-patch",
                format!("INC-{i}"),
                Duration::from_secs(600),
                Timestamp::now(),
            )
            .await
            .unwrap();
        broker.approve(&bob, &r.id, None, Timestamp::now()).await.unwrap();
        ids.push(r.id);
    }
    let hook2 = hook.clone();
    let all = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(30), || {
            let d = hook2.deliveries();
            (d.len() >= 60).then_some(d)
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("{} of 60 webhooks", hook.deliveries().len()));
    assert_eq!(all.len(), 60);
    assert_eq!(hook.repeats(), 0, "no notice delivered twice");
    for id in &ids {
        let order: Vec<&str> = all
            .iter()
            .filter(|d| d.body["data"]["request"]["id"] == id.as_str())
            .map(|d| d.body["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            order,
            ["request.created", "request.approved", "grant.activated"],
            "{id}"
        );
    }
    let slack2 = slack.clone();
    let messages = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(30), || {
            let top = slack2.top_messages(CHANNEL);
            let done = top.len() == 20 && top.iter().all(|m| slack2.replies(CHANNEL, &m.ts).len() == 2);
            done.then_some(top)
        })
    })
    .await
    .unwrap()
    .expect("one message per request, each with its two notes");
    for m in &messages {
        assert!(m.all_text().contains("*Approved* by bob"), "{}", m.all_text());
        let notes: Vec<String> = slack.replies(CHANNEL, &m.ts).into_iter().map(|r| r.text).collect();
        assert!(
            notes[0].starts_with("Approved by bob") && notes[1].starts_with("Grant `"),
            "{notes:?}"
        );
    }
}

/// A notifier that starts far behind the log (notices were off, or the proxy was down for
/// longer than give_up_after) passes over what is too old to announce, and only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_backlog_is_passed_over_and_nothing_newer() {
    use jitgate::access::AccessRequest;
    use jitgate::audit::AuditDraft;

    let db = TestDb::new(Backend::Sqlite).await;
    let slack = workspace();
    let hook = Receiver::start();
    let text = profiles(&["audit-hook"]) + &targets(db.dir.path(), &slack, CHANNEL, &hook, "give_up_after = \"1h\"");
    let replica = Replica::new(&db.url, &text, Live::new()).await;
    let (store, policy) = (&replica.store, &replica.policy);
    let alice = Identity::new("alice", ["dba"]);

    // A request made two hours ago, with its event as it was sealed then.
    let then = Timestamp::from_millis(Timestamp::now().as_millis() - 2 * 3600 * 1000);
    let old = AccessRequest::open(
        "req-0000000000000001".into(),
        policy.profile("db-patch").unwrap(),
        alice.clone(),
        "old".into(),
        Duration::from_secs(600),
        then,
        Duration::from_secs(24 * 3600),
        || "grant-0000000000000001".into(),
    )
    .unwrap();
    let mut event = AuditDraft::new("request.created", "alice", "db-patch").request(&old.request().id);
    event.time = Some(then);
    store.insert_request(old.request(), None, vec![event]).await.unwrap();
    // And one made now.
    let new = replica
        .broker
        .open_request(
            &alice,
            "db-patch",
            "new".into(),
            Duration::from_secs(600),
            Timestamp::now(),
        )
        .await
        .unwrap();

    replica.start();
    let hook2 = hook.clone();
    let got = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(10), || {
            let d = hook2.deliveries();
            (!d.is_empty()).then_some(d)
        })
    })
    .await
    .unwrap()
    .expect("the new request is announced");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = hook
        .deliveries()
        .iter()
        .map(|d| d.body["data"]["request"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, std::slice::from_ref(&new.id), "only the new one: {got:?}");
}

/// A webhook receiver that hangs takes at most its share of the delivery slots: Slack
/// notices go out meanwhile, long before the first hung attempt could even time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_hold_up_other_targets() {
    let db = TestDb::new(Backend::Sqlite).await;
    let slack = workspace();
    let hook = Receiver::start();
    hook.hang(Duration::from_secs(60));
    let text = profiles(&["dba-approvals", "audit-hook"])
        + &targets(db.dir.path(), &slack, CHANNEL, &hook, "timeout = \"20s\"");
    let replica = Replica::new(&db.url, &text, Live::new()).await;
    let broker = &replica.broker;
    replica.start();

    let alice = Identity::new("alice", ["dba"]);
    let started = std::time::Instant::now();
    for i in 0..30 {
        broker
            .open_request(
                &alice,
                "db-patch",
                format!("INC-{i}"),
                Duration::from_secs(600),
                Timestamp::now(),
            )
            .await
            .unwrap();
    }
    let slack2 = slack.clone();
    tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(15), || {
            (slack2.top_messages(CHANNEL).len() == 30).then_some(())
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("{} of 30 announced in Slack", slack.top_messages(CHANNEL).len()));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "all 30 in Slack before any hung webhook attempt timed out"
    );
    assert!(hook.deliveries().is_empty(), "the receiver still hangs");
}
