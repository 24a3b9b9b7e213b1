//! kubectl through the proxy against a real kube-apiserver with RBAC (tests/common/kube.rs):
//! the proxy checks each request against the grant's scope and forwards it impersonating the
//! user with the grant's groups, so the cluster's RBAC applies too. A watch ends with its
//! grant; client-sent credentials and impersonation never reach the cluster; bad tokens,
//! paths and bodies are refused before it.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::kube::{cluster, kubectl_path, timed_lines};
use common::{Backend, Proxy, TestDb, User};
use serde_json::Value;

struct Stand {
    _db: TestDb,
    proxy: Proxy,
    /// The namespace the profiles grant, and one they do not.
    ns: String,
    other: String,
}

fn stand() -> Stand {
    let c = cluster();
    // jit:view may read in ns; jit:edit may change things there. Nothing in `other`.
    let ns = c.namespace("payments", &[("jit:view", "test-view"), ("jit:edit", "test-edit")]);
    let other = c.namespace("other", &[("jit:view", "test-view")]);
    let db = TestDb::blocking(Backend::Sqlite);
    let cluster_entry = |name: &str| {
        format!(
            "[[kube.clusters]]\nname = \"{name}\"\nserver = \"{}\"\nca_file = \"{}\"\ntoken_file = \"{}\"\n",
            c.server,
            c.ca_file.display(),
            c.proxy_token_file.display()
        )
    };
    let config = format!(
        r#"
admins = ["group:security"]

{test}
{staging}

[[profiles]]
name = "payments-read"
description = "Read pods and their logs in payments"
max_duration = "2h"
requesters = ["group:devs"]
approvers = ["group:leads"]
approvals_required = 1
kube = {{ clusters = ["test"], namespaces = ["{ns}"], groups = ["jit:view"], verbs = ["get", "list", "watch"], resources = ["pods", "pods/log"] }}

[[profiles]]
name = "payments-quick"
description = "The same, approved by policy"
max_duration = "1h"
requesters = ["group:devs"]
approvals_required = 0
kube = {{ clusters = ["test"], namespaces = ["{ns}"], groups = ["jit:view"], verbs = ["get", "list", "watch"], resources = ["pods", "pods/log"] }}

[[profiles]]
name = "config-writer"
description = "Write configmaps; the cluster's RBAC (view) still says no"
max_duration = "1h"
requesters = ["group:devs"]
approvals_required = 0
kube = {{ clusters = ["test"], namespaces = ["{ns}"], groups = ["jit:view"], verbs = ["create"], resources = ["configmaps"] }}

[[profiles]]
name = "payments-delete"
description = "Delete pods in payments"
max_duration = "1h"
requesters = ["group:leads"]
approvals_required = 0
kube = {{ clusters = ["test"], namespaces = ["{ns}"], groups = ["jit:edit"], verbs = ["delete"], resources = ["pods"] }}
"#,
        test = cluster_entry("test"),
        staging = cluster_entry("staging"),
    );
    let proxy = Proxy::start(db.dir.path(), &db.url, &config);
    Stand {
        _db: db,
        proxy,
        ns,
        other,
    }
}

/// A person with kubectl and the kubeconfig `jitgate kubeconfig` printed for them.
struct Kubectl {
    user: User,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(stand: &Stand, name: &str, group: &str) -> Kubectl {
        stand.proxy.add_user(name, &[group]);
        let user = stand.proxy.login(name);
        let printed = user.run(&["kubeconfig", "--cluster", "test"], None).success().stdout;
        let kubeconfig = user.home.join("kubeconfig");
        std::fs::write(&kubeconfig, printed).unwrap();
        Kubectl { user, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kubectl_path());
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("JITGATE_HOME", &self.user.home)
            // kubectl caches discovery under $HOME: each person has their own.
            .env("HOME", &self.user.home)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Requests `profile` (approved by policy) and returns the request's JSON.
    fn request(&self, profile: &str, duration: &str) -> Value {
        self.user
            .json(&["request", profile, "--reason", "INC-7", "--for", duration])
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[track_caller]
fn refused(out: &Output, says: &str) {
    assert!(!out.status.success(), "kubectl succeeded:\n{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains(says), "stderr lacks {says:?}:\n{err}");
}

#[test]
fn kubectl_works_inside_the_grant_and_is_refused_outside_it() {
    let stand = stand();
    let (ns, other) = (&stand.ns, &stand.other);
    let alice = Kubectl::new(&stand, "alice", "devs");
    stand.proxy.add_user("lee", &["leads"]);
    let lee = stand.proxy.login("lee");

    // No grant yet: kubectl's first call (discovery) is refused with the profiles that
    // would open the cluster.
    let out = alice.run(&["get", "pods", "-n", ns]);
    refused(
        &out,
        "Error from server (Forbidden): jitgate: no active grant allows access to cluster \"test\". Profiles that would: payments-read, payments-quick, config-writer.",
    );
    assert!(
        text(&out.stderr).contains("jitgate request payments-read"),
        "{}",
        text(&out.stderr)
    );

    let req = alice.request("payments-read", "30m");
    assert_eq!(req["state"], "pending", "{req}");
    lee.run(&["approve", req["id"].as_str().unwrap()], None).success();

    let listed = ok(&alice.run(&["get", "pods", "-n", ns, "-o", "name"]));
    // Past discovery, in the API server's own error form, with what was asked.
    refused(
        &alice.run(&["get", "configmaps", "-n", ns]),
        &format!("Error from server (Forbidden): jitgate: no active grant allows list configmaps in namespace \"{ns}\" on cluster \"test\". No profile you may request allows it."),
    );
    assert_eq!(listed.trim(), "pod/web-1");
    assert_eq!(
        ok(&alice.run(&["get", "pod", "web-1", "-n", ns, "-o", "name"])).trim(),
        "pod/web-1"
    );
    let version = ok(&alice.run(&["version", "-o", "json"]));
    assert!(version.contains("\"serverVersion\""), "{version}");

    // Outside the grant's scope: another namespace, another verb, another resource.
    refused(
        &alice.run(&["get", "pods", "-n", other]),
        &format!("jitgate: no active grant allows list pods in namespace \"{other}\""),
    );
    refused(
        &alice.run(&["delete", "pod", "web-1", "-n", ns, "--wait=false"]),
        &format!("jitgate: no active grant allows delete pods \"web-1\" in namespace \"{ns}\""),
    );
    refused(
        &alice.run(&["get", "secrets", "-n", ns]),
        "jitgate: no active grant allows list secrets",
    );
    refused(&alice.run(&["get", "pods", "-A"]), "list pods across the cluster");
    let pods = cluster().admin(&["get", "pods", "-n", ns, "-o", "name"]);
    assert_eq!(
        text(&pods.stdout).trim(),
        "pod/web-1",
        "the refused delete changed nothing"
    );

    // `auth can-i` answers with both the grant's scope and the cluster's RBAC.
    assert_eq!(
        ok(&alice.run(&["auth", "can-i", "list", "pods", "-n", ns])).trim(),
        "yes"
    );
    let no = alice.run(&["auth", "can-i", "delete", "pods", "-n", ns]);
    assert_eq!(no.status.code(), Some(1));
    assert_eq!(
        text(&no.stdout).trim(),
        format!("no - jitgate: no active grant allows delete on kube:test/{ns}/pods")
    );
    let no = alice.run(&["auth", "can-i", "list", "pods", "-n", other]);
    assert!(text(&no.stdout).starts_with("no - jitgate:"), "{}", text(&no.stdout));

    // A grant that allows what the cluster's RBAC does not: the cluster says no, to alice.
    alice.request("config-writer", "10m");
    refused(
        &alice.run(&["create", "configmap", "x", "-n", ns, "--from-literal=a=b"]),
        "User \"alice\" cannot create resource \"configmaps\"",
    );
    let no = alice.run(&["auth", "can-i", "create", "configmaps", "-n", ns]);
    assert_eq!(
        text(&no.stdout).trim(),
        "no",
        "RBAC's answer comes back: {}",
        text(&no.stderr)
    );

    let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
    let actions: Vec<String> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(actions.iter().any(|a| a == "kube.first_request"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "kube.denied"), "{actions:?}");
}

/// Seconds since the epoch of an RFC 3339 time the CLI printed.
fn epoch(rfc3339: &str) -> SystemTime {
    let ms = jitgate::time::Timestamp::parse_rfc3339(rfc3339).unwrap().as_millis();
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
}

#[test]
fn a_watch_ends_at_the_grants_expiry_and_a_revoke_ends_another() {
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    let grant = alice.request("payments-quick", "8s");
    let id = grant["grant_id"].as_str().unwrap();
    let grants = alice.user.json(&["grants"]);
    let held = grants.as_array().unwrap().iter().find(|g| g["id"] == id).unwrap();
    let expires = epoch(held["expires_at"].as_str().unwrap());
    ok(&alice.run(&["get", "pods", "-n", ns]));

    let mut watch = alice
        .command(&["get", "pods", "-n", ns, "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = timed_lines(watch.stdout.take().unwrap());
    let errors = timed_lines(watch.stderr.take().unwrap());
    let listed = |lines: &std::sync::mpsc::Receiver<(Instant, String)>| loop {
        let (_, line) = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the watch lists the pod");
        if line.starts_with("web-1") {
            break;
        }
    };
    listed(&lines);
    // The watch stays open until the grant ends, then kubectl says why and exits.
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        assert!(
            SystemTime::now() < expires + Duration::from_secs(10),
            "the watch outlived its grant"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let ended = SystemTime::now();
    let late = ended.duration_since(expires).unwrap_or_default();
    assert!(
        ended >= expires - Duration::from_millis(5),
        "the watch ended before the grant expired"
    );
    std::thread::sleep(Duration::from_millis(50));
    let err: Vec<String> = errors.try_iter().map(|(_, l)| l).collect();
    let out: Vec<String> = lines.try_iter().map(|(_, l)| l).collect();
    // kubectl prints a watch's ERROR event as a row, and ends.
    assert!(
        out.iter().any(|l| l.contains("jitgate: grant")
            && l.contains("ended")
            && l.contains("jitgate request payments-quick")),
        "kubectl says why: {status:?}\nstdout: {out:?}\nstderr: {err:?}"
    );
    // kubectl's own exit is in this measure too.
    assert!(
        late < Duration::from_millis(100),
        "ended {late:?} after the grant expired"
    );
    eprintln!("watch ended {late:?} after expiry");

    // A revoke ends an open watch as quickly.
    let grant = alice.request("payments-quick", "30m");
    let mut watch = alice
        .command(&["get", "pods", "-n", ns, "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = timed_lines(watch.stdout.take().unwrap());
    listed(&lines);
    let revoked_at = Instant::now();
    alice
        .user
        .run(&["revoke", grant["grant_id"].as_str().unwrap()], None)
        .success();
    let done = revoked_at.elapsed();
    let start = Instant::now();
    while watch.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the watch outlived the revoke"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let after = start.elapsed();
    assert!(
        after < Duration::from_millis(100),
        "ended {after:?} after `jitgate revoke` returned ({done:?})"
    );
    refused(
        &alice.run(&["get", "pods", "-n", ns]),
        "no active grant allows list pods",
    );
}
