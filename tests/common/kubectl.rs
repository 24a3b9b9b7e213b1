//! The stand of the Kubernetes tests: a proxy in front of the test cluster
//! (tests/common/kube.rs) with a namespace and profiles of its own, and people who use it
//! with kubectl and the kubeconfig `jitgate kubeconfig` printed for them.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use super::kube::{cluster, kubectl_path};
use super::{Backend, Proxy, TestDb, User};
use serde_json::Value;

pub struct Stand {
    _db: TestDb,
    pub proxy: Proxy,
    /// The namespace the profiles grant, and one they do not.
    pub ns: String,
    pub other: String,
    /// Holds the down cluster's port for the stand's life: bound, never listening, so a
    /// connect there is refused and no other test's listener can take the port.
    _closed: tokio::net::TcpSocket,
}

pub fn stand() -> Stand {
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
    // An API server that is down, behind a path prefix: a port bound but not listening.
    let closed_socket = tokio::net::TcpSocket::new_v4().unwrap();
    closed_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = closed_socket.local_addr().unwrap().port();
    let down = format!(
        "[[kube.clusters]]\nname = \"down\"\nserver = \"https://127.0.0.1:{closed}/behind/\"\nca_file = \"{}\"\ntoken_file = \"{}\"\n",
        c.ca_file.display(),
        c.proxy_token_file.display()
    );
    let config = format!(
        r#"
admins = ["group:security"]

{test}
{staging}
{by_cert}
{down}

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
kube = {{ clusters = ["test", "viacert", "down"], namespaces = ["{ns}"], groups = ["jit:view"], verbs = ["get", "list", "watch"], resources = ["pods", "pods/log"] }}

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
        _closed: closed_socket,
    }
}

/// A person with kubectl and the kubeconfig `jitgate kubeconfig` printed for them.
pub struct Kubectl {
    pub user: User,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(stand: &Stand, name: &str, group: &str) -> Kubectl {
        stand.proxy.add_user(name, &[group]);
        Kubectl::for_login(stand.proxy.login(name))
    }

    /// kubectl for a user already logged in.
    pub fn for_login(user: User) -> Kubectl {
        let printed = user.run(&["kubeconfig", "--cluster", "test"], None).success().stdout;
        let kubeconfig = user.home.join("kubeconfig");
        std::fs::write(&kubeconfig, printed).unwrap();
        Kubectl { user, kubeconfig }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.program(kubectl_path(), args)
    }

    /// Another client of the test cluster's binary (`watch`, a client-go watch in protobuf),
    /// run as this person with their kubeconfig, as kubectl is.
    pub fn program(&self, path: PathBuf, args: &[&str]) -> Command {
        let mut c = Command::new(path);
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

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Requests `profile` (approved by policy) and returns the request's JSON.
    pub fn request(&self, profile: &str, duration: &str) -> Value {
        self.user
            .json(&["request", profile, "--reason", "INC-7", "--for", duration])
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[track_caller]
pub fn refused(out: &Output, says: &str) {
    assert!(!out.status.success(), "kubectl succeeded:\n{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains(says), "stderr lacks {says:?}:\n{err}");
}

/// Seconds since the epoch of an RFC 3339 time the CLI printed.
pub fn epoch(rfc3339: &str) -> SystemTime {
    let ms = jitgate::time::Timestamp::parse_rfc3339(rfc3339).unwrap().as_millis();
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// The token kubectl would get for `cluster`, from the real exec plugin.
pub fn kube_token(user: &User, cluster: &str) -> String {
    let out = user.run(&["kube-credential", "--cluster", cluster], None).success();
    let cred: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(cred["apiVersion"], "client.authentication.k8s.io/v1");
    assert!(cred["status"]["expirationTimestamp"].is_string(), "{cred}");
    cred["status"]["token"].as_str().unwrap().to_owned()
}

pub fn https(stand: &Stand) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&stand.proxy.ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

pub fn port(stand: &Stand) -> u16 {
    stand.proxy.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// An HTTP answer as (status, the Status message or the text).
pub async fn answer(resp: reqwest::Response) -> (u16, String) {
    let code = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or(body);
    (code, message)
}
