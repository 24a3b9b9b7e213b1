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
    let by_cert = format!(
        "[[kube.clusters]]\nname = \"viacert\"\nserver = \"{}\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        c.server,
        c.ca_file.display(),
        c.proxy_cert_file.display(),
        c.proxy_key_file.display()
    );
    let config = format!(
        r#"
admins = ["group:security"]

{test}
{staging}
{by_cert}

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
kube = {{ clusters = ["test", "viacert"], namespaces = ["{ns}"], groups = ["jit:view"], verbs = ["get", "list", "watch"], resources = ["pods", "pods/log"] }}

[[profiles]]
name = "config-writer"
description = "Write configmaps; the cluster's RBAC (view) still says no"
max_duration = "1h"
requesters = ["group:devs"]
approvals_required = 0
kube = {{ clusters = ["test"], namespaces = ["{ns}"], groups = ["jit:view"], verbs = ["create"], resources = ["configmaps"] }}

[[profiles]]
name = "payments-exec"
description = "A shell in payments' pods"
max_duration = "1h"
requesters = ["group:devs"]
approvals_required = 0
kube = {{ clusters = ["test"], namespaces = ["{ns}"], groups = ["jit:edit"], verbs = ["get", "create"], resources = ["pods", "pods/exec", "pods/attach", "pods/portforward"] }}

[[profiles]]
name = "exec-get-only"
description = "get on pods/exec, which is no exec"
max_duration = "1h"
requesters = ["group:devs"]
approvals_required = 0
kube = {{ clusters = ["test"], namespaces = ["{ns}"], groups = ["jit:edit"], verbs = ["get"], resources = ["pods", "pods/exec"] }}

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
        "Error from server (Forbidden): jitgate: no active grant allows access to cluster \"test\". Profiles that would: payments-read, payments-quick, config-writer, payments-exec, exec-get-only.",
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
    // The cluster's list of rules would say more than the grant allows, and not what it does.
    refused(
        &alice.run(&["auth", "can-i", "--list", "-n", ns]),
        "jitgate: `kubectl auth can-i --list` is not answered through the proxy",
    );

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

/// The token kubectl would get for `cluster`, from the real exec plugin.
fn kube_token(user: &User, cluster: &str) -> String {
    let out = user.run(&["kube-credential", "--cluster", cluster], None).success();
    let cred: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(cred["apiVersion"], "client.authentication.k8s.io/v1");
    assert!(cred["status"]["expirationTimestamp"].is_string(), "{cred}");
    cred["status"]["token"].as_str().unwrap().to_owned()
}

fn https(stand: &Stand) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&stand.proxy.ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

fn port(stand: &Stand) -> u16 {
    stand.proxy.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// An HTTP answer as (status, the Status message or the text).
async fn answer(resp: reqwest::Response) -> (u16, String) {
    let code = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or(body);
    (code, message)
}

#[test]
fn client_sent_impersonation_and_credentials_never_reach_the_cluster() {
    let stand = stand();
    let alice = Kubectl::new(&stand, "alice", "devs");
    let grant = alice.request("payments-quick", "30m");
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    let token = kube_token(&alice.user, "test");
    let http = https(&stand);
    let base = format!("{}/k8s/test", stand.proxy.url);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // Who the cluster thinks is asking, with every identity claim a client could add.
        let resp = http
            .post(format!("{base}/apis/authentication.k8s.io/v1/selfsubjectreviews"))
            .bearer_auth(&token)
            .header("Impersonate-User", "test-admin")
            .header("Impersonate-Group", "system:masters")
            .header("impersonate_group", "system:masters")
            .header("Impersonate-Extra-Jitgate-Grant", "grant-forged")
            .header("Impersonate-Uid", "uid-admin")
            .header("X-Remote-User", "test-admin")
            .header("X-Remote-Group", "system:masters")
            .json(&serde_json::json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let review: Value = resp.json().await.unwrap();
        let who = &review["status"]["userInfo"];
        assert_eq!(who["username"], "alice", "{review}");
        let groups: Vec<&str> = who["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| g.as_str())
            .collect();
        assert!(groups.contains(&"jit:view"), "{groups:?}");
        assert!(!groups.contains(&"system:masters"), "{groups:?}");
        assert_eq!(who["extra"]["jitgate-grant"], serde_json::json!([grant_id]), "{review}");

        // The same through a cluster where the proxy signs in with a client certificate.
        let viacert = kube_token(&alice.user, "viacert");
        let resp = http
            .post(format!(
                "{}/k8s/viacert/apis/authentication.k8s.io/v1/selfsubjectreviews",
                stand.proxy.url
            ))
            .bearer_auth(&viacert)
            .header("Impersonate-User", "test-admin")
            .json(&serde_json::json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview" }))
            .send()
            .await
            .unwrap();
        let review: Value = resp.json().await.unwrap();
        assert_eq!(review["status"]["userInfo"]["username"], "alice", "{review}");
        // The grant's first request on each cluster is in the audit log.
        let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
        let firsts: Vec<String> = audit
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["action"] == "kube.first_request")
            .map(|e| e["target"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(firsts, ["test", "viacert"]);

        // An identity claim does not widen the grant either.
        let resp = http
            .get(format!("{base}/api/v1/namespaces/{}/secrets", stand.ns))
            .bearer_auth(&token)
            .header("Impersonate-Group", "system:masters")
            .send()
            .await
            .unwrap();
        let (code, message) = answer(resp).await;
        assert_eq!(code, 403);
        assert!(
            message.starts_with("jitgate: no active grant allows list secrets"),
            "{message}"
        );
    });
}

#[test]
fn missing_foreign_forged_expired_and_logged_out_tokens_are_refused() {
    let stand = stand();
    let alice = Kubectl::new(&stand, "alice", "devs");
    alice.request("payments-quick", "30m");
    let good = kube_token(&alice.user, "test");
    let staging = kube_token(&alice.user, "staging");
    let login = alice.user.token();
    let http = https(&stand);
    let pods = format!("{}/k8s/test/api/v1/namespaces/{}/pods", stand.proxy.url, stand.ns);

    // The same token again from the cache, while it has time left.
    assert_eq!(kube_token(&alice.user, "test"), good);
    let unknown = alice.user.run(&["kube-credential", "--cluster", "nope"], None);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("no cluster \"nope\""), "{}", unknown.stderr);

    // A token with its expiry moved back, signed with the proxy's own key: still expired.
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    let key = std::fs::read(stand.proxy.dir.join("certs/token-signing-key.pem")).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = header["kid"].as_str().map(str::to_owned);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    claims["iat"] = (now - 1200).into();
    claims["exp"] = (now - 300).into();
    let expired = jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(&key).unwrap()).unwrap();
    claims["exp"] = (now + 600).into();
    claims["sub"] = "lee".into();
    let forged = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let get = |token: Option<String>| {
            let mut req = http.get(&pods);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            async move { answer(req.send().await.unwrap()).await }
        };
        assert_eq!(get(Some(good.clone())).await.0, 200);
        // A token for another cluster, even one just used (and so checked) there.
        let staging_pods = format!("{}/k8s/staging/api/v1/namespaces/{}/pods", stand.proxy.url, stand.ns);
        let (code, _) = answer(http.get(&staging_pods).bearer_auth(&staging).send().await.unwrap()).await;
        assert_eq!(code, 403, "staging's own token passes its check; no grant there");
        for (token, says) in [
            (
                None,
                "no proxy token; use the kubeconfig from `jitgate kubeconfig --cluster test`",
            ),
            (Some(staging.clone()), "this token is not for cluster \"test\""),
            (Some(login.clone()), "this token is not for cluster \"test\""),
            (Some(expired), "the token has expired"),
            (Some(forged), "the token's signature is invalid"),
            (Some("garbage".into()), "the token is malformed"),
        ] {
            let (code, message) = get(token).await;
            assert_eq!(code, 401, "{says}: {message}");
            assert!(message.contains(says), "{message}");
        }
        let (code, message) = answer(
            http.get(format!("{}/k8s/nope/api/v1/pods", stand.proxy.url))
                .bearer_auth(&good)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, 404);
        assert_eq!(
            message,
            "jitgate: no cluster \"nope\" here; `jitgate kubeconfig --cluster NAME` names the ones there are"
        );
    });

    // Logging out ends the kubectl credential minted from that login, unused or not.
    let fresh = {
        std::fs::remove_dir_all(alice.user.home.join("kube")).unwrap();
        kube_token(&alice.user, "test")
    };
    alice.user.run(&["logout"], None).success();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (code, message) = answer(http.get(&pods).bearer_auth(&fresh).send().await.unwrap()).await;
        assert_eq!(code, 401);
        assert!(message.contains("logged out"), "{message}");
    });
}

#[test]
fn ambiguous_paths_mismatched_namespaces_and_oversized_bodies_are_refused() {
    let stand = stand();
    let ns = stand.ns.clone();
    let alice = Kubectl::new(&stand, "alice", "devs");
    alice.request("payments-quick", "30m");
    alice.request("config-writer", "30m");
    let token = kube_token(&alice.user, "test");
    let port = port(&stand);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ca = stand.proxy.ca.clone();
        let raw = |line: String, extra: &str, body: &[u8]| {
            let mut request = format!(
                "{line} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n{extra}\r\n"
            )
            .into_bytes();
            request.extend_from_slice(body);
            let ca = ca.clone();
            async move { common::raw_https(&ca, port, "127.0.0.1", &request).await }
        };
        let status = |response: &str| -> u16 { response.split_whitespace().nth(1).unwrap().parse().unwrap() };
        // The allowed spelling passes, each ambiguous one is refused before the cluster.
        let fine = raw(format!("GET /k8s/test/api/v1/namespaces/{ns}/pods"), "", b"").await;
        assert_eq!(status(&fine), 200, "{fine}");
        for (path, says) in [
            (format!("/k8s/test/api/v1/namespaces/{ns}%2F..%2Fkube-system/pods"), "an escaped character"),
            (format!("/k8s/test/api/v1/namespaces/{ns}%252Fx/pods"), "an escaped character"),
            (format!("/k8s/test/api/v1/namespaces/{ns}/../kube-system/pods"), "'..' path segments"),
            (format!("/k8s/test/api/v1/namespaces/{ns}//pods"), "empty"),
            (format!("/k8s/test/api/v1/namespaces/{ns}/pods?watch="), "empty watch parameter"),
            (format!("/k8s/test/api/v1/namespaces/{ns}/pods?watch=false&watch=true"), "given twice"),
            (format!("/k8s/test/api/v1/proxy/namespaces/{ns}/pods/web-1"), "legacy /proxy/ paths"),
        ] {
            let got = raw(format!("GET {path}"), "", b"").await;
            assert_eq!(status(&got), 400, "{path}: {got}");
            assert!(got.contains(says), "{path}: {got}");
            assert!(got.contains("\"kind\":\"Status\""), "{got}");
        }
        // A body that names another namespace than the path the grant was checked on.
        let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"kube-system"},"data":{"a":"b"}}"#;
        let got = raw(
            format!("POST /k8s/test/api/v1/namespaces/{ns}/configmaps"),
            &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", cm.len()),
            cm.as_bytes(),
        )
        .await;
        assert_eq!(status(&got), 400, "{got}");
        assert!(got.contains("is not the request's namespace"), "{got}");
        // Larger than the API server would take: refused by its declared length at once.
        let got = raw(
            format!("POST /k8s/test/api/v1/namespaces/{ns}/configmaps"),
            "Content-Type: application/json\r\nContent-Length: 4194304\r\n",
            b"",
        )
        .await;
        assert_eq!(status(&got), 413, "{got}");
        // And when the size is not declared, by what arrives.
        let big = vec![b' '; 4 << 20];
        let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
        chunked.extend_from_slice(&big);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let got = raw(
            format!("POST /k8s/test/api/v1/namespaces/{ns}/configmaps"),
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            &chunked,
        )
        .await;
        assert_eq!(status(&got), 413, "{got}");
        // Paths beside the API are not served through the proxy.
        let got = raw("GET /k8s/test/metrics".into(), "", b"").await;
        assert_eq!(status(&got), 403, "{got}");
    });
    let cms = cluster().admin(&["get", "configmaps", "-n", "kube-system", "-o", "name"]);
    assert!(
        !text(&cms.stdout).contains("configmap/x"),
        "nothing was created elsewhere"
    );
}

#[test]
fn a_followed_log_ends_at_expiry_and_exec_is_create_and_ends_with_a_revoke() {
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    // Logs come from the stand-in kubelet through the real API server and the proxy.
    let grant = alice.request("payments-quick", "6s");
    let id = grant["grant_id"].as_str().unwrap().to_owned();
    let grants = alice.user.json(&["grants"]);
    let held = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id.as_str())
        .unwrap();
    let expires = epoch(held["expires_at"].as_str().unwrap());
    let log = ok(&alice.run(&["logs", "web-1", "-n", ns]));
    assert!(log.starts_with(&format!("log of {ns}/web-1/web: line 1\n")), "{log}");

    let mut follow = alice
        .command(&["logs", "-f", "web-1", "-n", ns])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = timed_lines(follow.stdout.take().unwrap());
    let (_, first) = lines.recv_timeout(Duration::from_secs(20)).expect("the log streams");
    assert!(first.contains("line 1"), "{first}");
    while follow.try_wait().unwrap().is_none() {
        assert!(
            SystemTime::now() < expires + Duration::from_secs(10),
            "the log outlived its grant"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let late = SystemTime::now().duration_since(expires).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(50));
    let out: Vec<String> = lines.try_iter().map(|(_, l)| l).collect();
    let last = out.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(&format!("jitgate: grant {id} ended at ")) && last.contains("jitgate request payments-quick"),
        "the log's last line says why: {out:?}"
    );
    assert!(
        out.iter().filter(|l| l.starts_with("line ")).count() > 10,
        "it streamed: {out:?}"
    );
    assert!(
        late < Duration::from_millis(100),
        "ended {late:?} after the grant expired"
    );
    eprintln!("log -f ended {late:?} after expiry");

    // get on pods/exec is not exec: the stream needs create.
    alice.request("exec-get-only", "30m");
    refused(
        &alice.run(&["exec", "web-1", "-n", ns, "--", "sh"]),
        &format!("jitgate: no active grant allows create pods/exec \"web-1\" in namespace \"{ns}\""),
    );

    let grant = alice.request("payments-exec", "30m");
    let mut shell = alice
        .command(&["exec", "-i", "web-1", "-n", ns, "--", "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    let lines = timed_lines(shell.stdout.take().unwrap());
    let errors = timed_lines(shell.stderr.take().unwrap());
    let next = |lines: &std::sync::mpsc::Receiver<(Instant, String)>| {
        lines
            .recv_timeout(Duration::from_secs(20))
            .map(|(_, l)| l)
            .unwrap_or_else(|_| panic!("no output; stderr: {:?}", errors.try_iter().collect::<Vec<_>>()))
    };
    assert_eq!(next(&lines), "stand-in shell ready");
    use std::io::Write;
    stdin.write_all(b"hello through the proxy\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(next(&lines), "hello through the proxy");

    let revoked = Instant::now();
    alice
        .user
        .run(&["revoke", grant["grant_id"].as_str().unwrap()], None)
        .success();
    let returned = revoked.elapsed();
    let start = Instant::now();
    while shell.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the shell outlived the revoke"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let after = start.elapsed();
    let status = shell.wait().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let said: Vec<String> = errors.try_iter().map(|(_, l)| l).collect();
    assert!(!status.success(), "the cut exec fails: {status:?} {said:?}");
    assert!(
        said.iter().any(|l| l.contains(&format!(
            "jitgate: grant {} ended at",
            grant["grant_id"].as_str().unwrap()
        ))),
        "kubectl says why: {said:?}"
    );
    assert!(
        after < Duration::from_millis(100),
        "ended {after:?} after `jitgate revoke` returned ({returned:?})"
    );
    drop(stdin);

    // With a new grant, exec runs to its own end with its exit status.
    alice.request("payments-exec", "30m");
    let mut shell = alice
        .command(&["exec", "-i", "web-1", "-n", ns, "--", "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    shell.stdin.take().unwrap().write_all(b"one\nexit\n").unwrap();
    let out = shell.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "stand-in shell ready\none\n");
}

#[test]
fn kubeconfig_merge_adds_the_context_with_kubectl_and_keeps_the_others() {
    let stand = stand();
    let alice = Kubectl::new(&stand, "alice", "devs");
    let merged = alice.user.home.join("merged-kubeconfig");
    std::fs::write(
        &merged,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: elsewhere\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: elsewhere\n  context:\n    cluster: elsewhere\n    user: \"\"\ncurrent-context: elsewhere\nusers: []\n",
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        common::kube::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("JITGATE_HOME", alice.user.home.to_str().unwrap()),
        ("KUBECONFIG", merged.to_str().unwrap()),
        ("PATH", path.as_str()),
    ];
    let run = common::run(&["kubeconfig", "--cluster", "test", "--merge"], &env, None).success();
    assert!(
        run.stderr.contains("context \"jitgate-test\" added and made current"),
        "{}",
        run.stderr
    );
    let kubectl = |args: &[&str]| {
        Command::new(kubectl_path())
            .args(args)
            .env("KUBECONFIG", &merged)
            .env("JITGATE_HOME", &alice.user.home)
            .env("HOME", &alice.user.home)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert_eq!(ok(&kubectl(&["config", "current-context"])).trim(), "jitgate-test");
    let contexts = ok(&kubectl(&["config", "get-contexts", "-o", "name"]));
    assert!(
        contexts.contains("elsewhere") && contexts.contains("jitgate-test"),
        "{contexts}"
    );
    alice.request("payments-quick", "10m");
    assert_eq!(
        ok(&kubectl(&["get", "pods", "-n", &stand.ns, "-o", "name"])).trim(),
        "pod/web-1"
    );
    // kubectl missing: a one-line error that says what to do instead.
    let env = [
        ("JITGATE_HOME", alice.user.home.to_str().unwrap()),
        ("KUBECONFIG", merged.to_str().unwrap()),
        ("PATH", "/nonexistent"),
    ];
    common::run(&["kubeconfig", "--cluster", "test", "--merge"], &env, None).fails(1, "cannot run kubectl");
    let unknown = alice.user.run(&["kubeconfig", "--cluster", "nope"], None);
    unknown.fails(
        1,
        "no cluster \"nope\" behind the proxy (clusters: staging, test, viacert)",
    );
}

#[test]
fn attach_and_cp_pass_through_as_create_on_their_subresources() {
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    alice.request("exec-get-only", "30m");
    refused(
        &alice.run(&["attach", "web-1", "-n", ns, "-q"]),
        &format!("jitgate: no active grant allows create pods/attach \"web-1\" in namespace \"{ns}\""),
    );
    alice.request("payments-exec", "30m");

    // kubectl cp runs `tar cf - PATH` through exec and unpacks what comes back.
    let dest = alice.user.home.join("motd");
    let from = format!("{ns}/web-1:/etc/motd");
    ok(&alice.run(&["cp", &from, dest.to_str().unwrap()]));
    assert_eq!(std::fs::read(&dest).unwrap(), common::kube::CP_CONTENT);

    let mut attached = alice
        .command(&["attach", "-i", "-q", "web-1", "-n", ns])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    attached.stdin.take().unwrap().write_all(b"hi\nexit\n").unwrap();
    let out = attached.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "attached to the stand-in container\nhi\n");
}

/// A TCP echo server on 127.0.0.1, standing for a port in the pod (the stand-in kubelet
/// forwards a pod's port N to 127.0.0.1:N).
fn echo_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let mut writer = conn;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    port
}

#[test]
fn port_forward_and_spdy_streams_pass_and_end_with_their_grant() {
    use std::io::{BufRead, Read, Write};
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    alice.request("exec-get-only", "30m");
    let remote = echo_server();
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ports = format!("{local}:{remote}");
    refused(
        &alice.run(&["port-forward", "web-1", "-n", ns, &ports]),
        &format!("jitgate: no active grant allows create pods/portforward \"web-1\" in namespace \"{ns}\""),
    );
    let grant = alice.request("payments-exec", "30m");

    let mut forward = alice
        .command(&["port-forward", "web-1", "-n", ns, &ports])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = timed_lines(forward.stdout.take().unwrap());
    let errors = timed_lines(forward.stderr.take().unwrap());
    let (_, first) = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("port-forward starts");
    assert!(
        first.starts_with(&format!("Forwarding from 127.0.0.1:{local} -> {remote}")),
        "{first}"
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(b"ping through the proxy\n").unwrap();
    let mut echoed = String::new();
    std::io::BufReader::new(conn.try_clone().unwrap())
        .read_line(&mut echoed)
        .unwrap();
    assert_eq!(echoed, "ping through the proxy\n");

    // A revoke ends the forward: the open connection closes and kubectl says so.
    alice
        .user
        .run(&["revoke", grant["grant_id"].as_str().unwrap()], None)
        .success();
    let revoked = Instant::now();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    let closed = revoked.elapsed();
    assert!(
        closed < Duration::from_secs(2),
        "the forwarded connection stayed open {closed:?}"
    );
    let start = Instant::now();
    while forward.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = forward.kill();
    let said: Vec<String> = errors.try_iter().map(|(_, l)| l).collect();
    assert!(
        said.iter()
            .any(|l| l.contains("lost connection to pod") || l.contains("jitgate: grant")),
        "{said:?}"
    );

    // exec over SPDY end to end (as kubectl before WebSockets, or with them turned off): the
    // cut names the grant on the error stream there too.
    let grant = alice.request("payments-exec", "30m");
    let mut shell = alice
        .command(&["exec", "-i", "web-1", "-n", ns, "--", "sh"])
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    let lines = timed_lines(shell.stdout.take().unwrap());
    let errors = timed_lines(shell.stderr.take().unwrap());
    stdin.write_all(b"over spdy\n").unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (_, l) = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{seen:?} {:?}", errors.try_iter().collect::<Vec<_>>()));
        seen.push(l);
    }
    assert_eq!(seen, ["stand-in shell ready", "over spdy"]);
    alice
        .user
        .run(&["revoke", grant["grant_id"].as_str().unwrap()], None)
        .success();
    let start = Instant::now();
    while shell.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the SPDY exec outlived the revoke"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let after = start.elapsed();
    let status = shell.wait().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let said: Vec<String> = errors.try_iter().map(|(_, l)| l).collect();
    assert!(!status.success(), "the cut SPDY exec fails: {status:?} {said:?}");
    assert!(
        said.iter().any(|l| l.contains(&format!(
            "jitgate: grant {} ended at",
            grant["grant_id"].as_str().unwrap()
        ))),
        "kubectl says why: {said:?}"
    );
    assert!(
        after < Duration::from_millis(100),
        "ended {after:?} after `jitgate revoke` returned"
    );
    drop(stdin);
}
