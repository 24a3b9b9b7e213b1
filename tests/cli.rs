//! The command line on bad paths: each mistake gets one line on stderr, exit 1 when the
//! proxy refused and exit 2 for usage or configuration, and nothing changes.

mod common;

use common::{run, Backend, Proxy, TestDb, WALKTHROUGH_PROFILES};

fn proxy(db: &TestDb) -> Proxy {
    let p = Proxy::start(db.dir.path(), &db.url, WALKTHROUGH_PROFILES);
    p.add_user("alice", &["dba"]);
    p.add_user("bob", &["dba-leads"]);
    p.add_user("sec1", &["security"]);
    p
}

#[test]
fn refused_requests_and_decisions_exit_1_with_the_reason() {
    let db = TestDb::blocking(Backend::Sqlite);
    let p = proxy(&db);
    let alice = p.login("alice");
    let bob = p.login("bob");
    let sec1 = p.login("sec1");

    alice
        .run(&["request", "nope", "--reason", "x", "--for", "1h"], None)
        .fails(1, "no profile named \"nope\"");
    alice
        .run(&["request", "db-patch", "--reason", "x", "--for", "3h"], None)
        .fails(1, "at most 2h");
    alice
        .run(&["request", "db-patch", "--for", "1h"], None)
        .fails(1, "requires a reason (--reason)");
    alice
        .run(&["request", "db-patch", "--reason", "x", "--for", "2x"], None)
        .fails(2, "\"2x\" is not a duration");
    bob.run(&["request", "db-patch", "--reason", "x", "--for", "1h"], None)
        .fails(1, "not among its requesters");
    assert_eq!(
        alice.json(&["requests"]),
        serde_json::json!([]),
        "refusals created nothing"
    );

    // Two approvals needed, from two distinct approvers.
    let bg = alice.json(&["request", "break-glass", "--reason", "INC-9", "--for", "30m"]);
    let id = bg["id"].as_str().unwrap();
    let once = sec1.json(&["approve", id]);
    assert_eq!(once["state"], "pending");
    sec1.run(&["approve", id], None)
        .fails(1, "already approved this request");
    // Not an approver of it: bob cannot even see the request.
    bob.run(&["approve", id], None).fails(1, "that you can see");
    let after = alice.json(&["requests"]);
    assert_eq!(
        after[0]["approvals"].as_array().unwrap().len(),
        1,
        "refused approvals left no trace"
    );

    // Denied and cancelled requests cannot be approved.
    let denied = alice.json(&["request", "db-patch", "--reason", "INC-3", "--for", "1h"]);
    let denied_id = denied["id"].as_str().unwrap();
    let usage = bob.run(&["deny", denied_id], None);
    assert_eq!(usage.code, 2, "clap's usage error: {usage:?}");
    assert!(usage.stderr.contains("--reason <REASON>"), "{}", usage.stderr);
    bob.run(&["deny", denied_id, "--reason", "use the runbook"], None)
        .success();
    bob.run(&["approve", denied_id], None)
        .fails(1, "request is denied, not pending");
    let cancelled = alice.json(&["request", "db-patch", "--reason", "INC-4", "--for", "1h"]);
    let cancelled_id = cancelled["id"].as_str().unwrap();
    bob.run(&["cancel", cancelled_id], None)
        .fails(1, "only the requester can cancel");
    alice.run(&["cancel", cancelled_id], None).success();
    bob.run(&["approve", cancelled_id], None)
        .fails(1, "request is cancelled, not pending");
    alice
        .run(&["revoke", "grant-0000000000000000"], None)
        .fails(1, "no grant \"grant-0000000000000000\"");

    // `request --wait` reports the decision and exits 1 when it is a denial.
    let waiting = std::thread::spawn({
        let home = alice.home.clone();
        move || {
            common::User { home }.run(
                &["request", "db-patch", "--reason", "INC-5", "--for", "1h", "--wait"],
                None,
            )
        }
    });
    let pending = common::eventually(std::time::Duration::from_secs(10), || {
        let list = bob.json(&["requests", "--pending"]);
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == "INC-5")
            .map(|r| r["id"].as_str().unwrap().to_owned())
    })
    .expect("the waiting request shows up");
    bob.run(&["deny", &pending, "--reason", "not today"], None).success();
    let waited = waiting.join().unwrap();
    assert!(waited.stderr.contains("waiting for a decision"), "{}", waited.stderr);
    assert_eq!(waited.code, 1, "{}{}", waited.stdout, waited.stderr);
    assert!(waited.stderr.contains("ended denied: not today"), "{}", waited.stderr);
}

#[test]
fn login_mistakes_and_missing_sessions() {
    let db = TestDb::blocking(Backend::Sqlite);
    let p = proxy(&db);
    let home = db.dir.path().join("home-x");
    let env = [("JITGATE_HOME", home.to_str().unwrap())];
    let ca = p.ca.to_str().unwrap();
    run(
        &[
            "login",
            "--proxy",
            &p.url,
            "--user",
            "alice",
            "--password-stdin",
            "--ca-cert",
            ca,
        ],
        &env,
        Some("wrong-password"),
    )
    .fails(1, "wrong user name or password");
    run(&["profiles"], &env, None).fails(1, "not logged in; run `jitgate login");
    run(&["login", "--user", "alice", "--password-stdin"], &env, Some("x")).fails(2, "--proxy is required");
    run(
        &["login", "--proxy", &p.url, "--user", "alice", "--password-stdin"],
        &env,
        Some(&common::password_of("alice")),
    )
    .fails(1, "cannot reach the proxy");
    let alice = p.login("alice");
    alice.run(&["logout"], None).success();
    alice.run(&["status"], None).fails(1, "not logged in");
    let alice = p.login("alice");
    let token = alice.token();
    alice.run(&["logout"], None).success();
    // The old token is dead at the proxy even if someone kept a copy.
    let stolen = db.dir.path().join("home-stolen");
    std::fs::create_dir_all(&stolen).unwrap();
    let session = serde_json::json!({
        "proxy": p.url, "ca_pem": std::fs::read_to_string(&p.ca).unwrap(), "user": "alice",
        "groups": ["dba"], "token": token, "expires_at": "2099-01-01T00:00:00Z"
    });
    std::fs::write(stolen.join("session.json"), session.to_string()).unwrap();
    run(&["profiles"], &[("JITGATE_HOME", stolen.to_str().unwrap())], None).fails(1, "token was revoked");
}

#[test]
fn server_side_commands_on_bad_input() {
    let db = TestDb::blocking(Backend::Sqlite);
    let p = proxy(&db);
    p.admin(&["users", "add", "alice", "--password-stdin"], Some("another-password"))
        .fails(1, "already exists");
    p.admin(&["users", "add", "carol", "--password-stdin"], Some("short"))
        .fails(2, "at least 8 characters");
    p.admin(
        &["users", "add", "bad name", "--password-stdin"],
        Some("long-enough-password"),
    )
    .fails(2, "user name");
    p.admin(&["users", "disable", "nobody"], None)
        .fails(1, "no user named \"nobody\"");
    let listed = p.admin(&["users", "list"], None).success().stdout;
    assert!(listed.contains("alice") && !listed.contains("carol"), "{listed}");
    p.admin(&["audit", "export", "--since", "yesterday"], None)
        .fails(2, "not an RFC 3339 time");
    p.admin(&["audit", "evidence", "grant-nope"], None)
        .fails(1, "no grant \"grant-nope\" in the audit log");

    let bad = db.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[profiles]]\nname = \"x\"\nmax_duration = \"2x\"\nrequesters = []\nhttp = { apps = [\"a\"] }\n",
    )
    .unwrap();
    let r = run(&["check-config", "--config", bad.to_str().unwrap()], &[], None);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("profiles[0].max_duration: \"2x\" is not a duration (use 30m, 2h, 1d)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("profiles[0].requesters: is empty"), "{}", r.stderr);
    let r = run(&["users", "list", "--config", bad.to_str().unwrap()], &[], None);
    assert_eq!(r.code, 2, "a corrupt config stops server-side commands too: {r:?}");
    let good = run(&["check-config", "--config", "config/jitgate.example.toml"], &[], None).success();
    assert!(
        good.stdout
            .contains("OK: 4 profiles (db-patch, staging-shell, payments-read, break-glass)"),
        "{}",
        good.stdout
    );

    let unreachable = db.dir.path().join("unreachable.toml");
    std::fs::write(
        &unreachable,
        "[store]\nurl = \"postgres://jitgate:secret@127.0.0.1:1/jitgate\"\n",
    )
    .unwrap();
    let r = run(&["users", "list", "--config", unreachable.to_str().unwrap()], &[], None)
        .fails(1, "cannot open the store postgres://jitgate:***@127.0.0.1:1/jitgate");
    assert!(!r.stderr.contains("secret"), "the password leaked: {}", r.stderr);
    run(&["serve", "--config", unreachable.to_str().unwrap()], &[], None).fails(1, "the store is unavailable");
}
