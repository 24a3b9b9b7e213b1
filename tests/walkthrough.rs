//! The README's walk-through, as users run it: the real binary serving, the CLI with each
//! person's own JITGATE_HOME, on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::{eventually, Backend, Proxy, TestDb, WALKTHROUGH_PROFILES};
use serde_json::Value;

fn walkthrough(backend: Backend) {
    let db = TestDb::blocking(backend);
    let proxy = Proxy::start(db.dir.path(), &db.url, WALKTHROUGH_PROFILES);
    proxy.add_user("alice", &["dba"]);
    proxy.add_user("bob", &["dba-leads"]);
    let alice = proxy.login("alice");
    let bob = proxy.login("bob");

    // Alice asks; she cannot approve her own request; Bob can.
    let req = alice.json(&["request", "db-patch", "--reason", "INC-1", "--for", "3s"]);
    assert_eq!(req["state"], "pending");
    let id = req["id"].as_str().unwrap().to_owned();
    alice
        .run(&["approve", &id], None)
        .fails(1, "cannot approve or deny your own request");
    let approved = bob.json(&["approve", &id, "--reason", "checked INC-1"]);
    assert_eq!(approved["state"], "active");
    let grant_id = approved["grant_id"].as_str().unwrap().to_owned();

    let grants = alice.json(&["grants"]);
    assert_eq!(grants[0]["id"], grant_id.as_str());
    assert_eq!(grants[0]["state"], "active");
    assert_eq!(grants[0]["user"], "alice");
    let expires_at = grants[0]["expires_at"].as_str().unwrap().to_owned();

    // The grant ends on time, by itself, and says so.
    let expired = grant_reaches(&alice, &grant_id, "expired", Duration::from_secs(8)).expect("the grant expires");
    let lag = ms(&expired["ended_at"]) - ms(&Value::String(expires_at));
    assert!((0..=1500).contains(&lag), "expired {lag} ms after expires_at");
    assert_eq!(alice.json(&["grants"]), Value::Array(vec![]), "no active grants left");
    let req = alice.json(&["requests"]);
    assert_eq!(req[0]["state"], "expired");

    // A policy-approved grant, revoked by an approver.
    let auto = alice.json(&["request", "staging-shell", "--reason", "deploy check", "--for", "1h"]);
    assert_eq!(auto["state"], "active");
    let auto_grant = auto["grant_id"].as_str().unwrap().to_owned();
    let revoked = bob.json(&["revoke", &auto_grant, "--reason", "done early"]);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["ended_by"], "bob");
    bob.run(&["revoke", &auto_grant], None)
        .fails(1, "grant is revoked, not active");

    // The audit log proves it all, and tells the story of one grant.
    let verify = proxy.admin(&["audit", "verify"], None).success();
    assert!(verify.stdout.starts_with("audit chain OK: "), "{}", verify.stdout);
    let story = proxy.admin(&["audit", "evidence", &grant_id], None).success().stdout;
    for line in [
        "alice asked for profile db-patch for 3s — reason: \"INC-1\"",
        "bob approved (1 of 1) — reason: \"checked INC-1\"",
        "grant activated for alice by bob",
        "Access ended: expired at",
    ] {
        assert!(story.contains(line), "evidence lacks {line:?}:\n{story}");
    }
    let export = proxy.admin(&["audit", "export"], None).success().stdout;
    let actions: Vec<String> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for action in [
        "login.succeeded",
        "request.created",
        "request.approved",
        "grant.activated",
        "grant.expired",
        "grant.revoked",
    ] {
        assert!(actions.iter().any(|a| a == action), "no {action} in {actions:?}");
    }

    // verify prints the head, to be kept outside the database.
    let verify = proxy.admin(&["audit", "verify"], None).success().stdout;
    let saved = verify.trim().rsplit_once("; head ").expect(&verify).1.to_owned();
    let last: i64 = saved.split_once(':').unwrap().0.parse().unwrap();
    assert_eq!(last, export.lines().count() as i64, "{verify}");
    proxy
        .admin(&["audit", "verify", "--expect-head", &saved], None)
        .success();
    proxy
        .admin(&["audit", "verify", "--expect-head", "7:abc"], None)
        .fails(2, "--expect-head: \"abc\" is not a SHA-256 hash");

    // Cutting the newest event off the end is caught by the recorded head.
    sql(&db.url, "DELETE FROM audit_events WHERE seq = $1", last);
    proxy.admin(&["audit", "verify"], None).fails(
        1,
        &format!("audit chain broken at seq {last}: the log ends at seq {}", last - 1),
    );
    // Whoever can write the database can rewrite that head to match; the head saved
    // elsewhere still catches the cut.
    sql(
        &db.url,
        "UPDATE audit_head SET seq = $1, hash = (SELECT hash FROM audit_events WHERE seq = $1) WHERE id = 1",
        last - 1,
    );
    proxy.admin(&["audit", "verify"], None).success();
    proxy.admin(&["audit", "verify", "--expect-head", &saved], None).fails(
        1,
        &format!(
            "audit chain broken at seq {last}: the log ends at seq {} but a head saved earlier is at seq {last}",
            last - 1
        ),
    );

    // One edited row breaks the chain, and verify names it.
    sql(&db.url, "UPDATE audit_events SET actor = 'mallory' WHERE seq = $1", 5);
    proxy
        .admin(&["audit", "verify"], None)
        .fails(1, "audit chain broken at seq 5");
    proxy
        .admin(&["audit", "evidence", &grant_id], None)
        .fails(1, "the evidence cannot be trusted");
}

/// Waits until `user` sees grant `id` in `state`, and returns it.
fn grant_reaches(user: &common::User, id: &str, state: &str, limit: Duration) -> Option<Value> {
    eventually(limit, || {
        let all = user.json(&["grants", "--all"]);
        let g = all.as_array()?.iter().find(|g| g["id"] == id)?.clone();
        (g["state"] == state).then_some(g)
    })
}

fn ms(v: &Value) -> i64 {
    jitgate::time::Timestamp::parse_rfc3339(v.as_str().expect("a time"))
        .unwrap()
        .as_millis()
}

fn sql(url: &str, statement: &str, seq: i64) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url).await.unwrap();
        let done = sqlx::query(statement).bind(seq).execute(&pool).await.unwrap();
        assert_eq!(done.rows_affected(), 1);
    });
}

#[test]
fn walkthrough_on_sqlite() {
    walkthrough(Backend::Sqlite);
}

#[test]
fn walkthrough_on_postgres() {
    walkthrough(Backend::Postgres);
}

#[test]
fn grants_that_expire_while_the_proxy_is_down_end_at_the_next_start() {
    let db = TestDb::blocking(Backend::Sqlite);
    let proxy = Proxy::start(db.dir.path(), &db.url, WALKTHROUGH_PROFILES);
    proxy.add_user("alice", &["dba"]);
    let alice = proxy.login("alice");
    let grant = alice.json(&["request", "staging-shell", "--reason", "restart test", "--for", "2s"]);
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    proxy.stop();
    std::thread::sleep(Duration::from_millis(2500));

    let proxy = Proxy::start(db.dir.path(), &db.url, WALKTHROUGH_PROFILES);
    let alice = proxy.login("alice");
    let ended = grant_reaches(&alice, &grant_id, "expired", Duration::from_secs(3));
    assert!(
        ended.is_some(),
        "the grant was not expired after the restart:\n{}",
        proxy.log()
    );
    let story = proxy.admin(&["audit", "evidence", &grant_id], None).success().stdout;
    assert!(story.contains("Access ended: expired at"), "{story}");
}
