//! kubectl through the proxy: `jitgate kubeconfig` writes the context (server
//! `https://PROXY/k8s/NAME`, the proxy's CA, an exec plugin for the user), and
//! `jitgate kube-credential` is that plugin: it prints an ExecCredential with a short-lived
//! token for the one cluster, reused from `$JITGATE_HOME/kube/` while it has time left.

use std::fs;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::client::{home, write_private, Api, Session};
use super::{CliError, CliResult, Output};
use crate::time::Timestamp;

/// A cached credential is handed out only with at least this much life left, so that a
/// kubectl command started now does not run into its expiry.
const REUSE_MARGIN: Duration = Duration::from_secs(60);
const EXEC_API: &str = "client.authentication.k8s.io/v1";

/// The names kubectl knows the cluster, user and context by.
fn entry_name(cluster: &str) -> String {
    format!("jitgate-{cluster}")
}

/// The server URL for `cluster`, checked against what the proxy serves.
async fn server_for(api: &Api, cluster: &str) -> Result<String, CliError> {
    let listed: Value = api.get("/api/v1/kube/clusters").await?;
    let clusters = listed["clusters"].as_array().cloned().unwrap_or_default();
    clusters
        .iter()
        .find(|c| c["name"] == cluster)
        .and_then(|c| c["server"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            let names: Vec<&str> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
            CliError::Refused(if names.is_empty() {
                "the proxy serves no Kubernetes clusters ([[kube.clusters]] in its config)".into()
            } else {
                format!(
                    "no cluster {cluster:?} behind the proxy (clusters: {})",
                    names.join(", ")
                )
            })
        })
}

pub async fn kubeconfig(cluster: &str, merge: bool, out: Output) -> CliResult {
    let (api, session) = Api::from_session().await?;
    let server = server_for(&api, cluster).await?;
    let name = entry_name(cluster);
    let exe = std::env::current_exe()
        .ok()
        .filter(|p| p.is_absolute())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "jitgate".into());
    if merge {
        return merge_into_kubeconfig(&name, cluster, &server, session.ca_pem.as_deref(), &exe);
    }
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    if matches!(out, Output::Json) {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": name, "cluster": cluster_entry(&server, session.ca_pem.as_deref()) }],
            "users": [{ "name": name, "user": { "exec": exec_entry(&exe, cluster) } }],
            "contexts": [{ "name": name, "context": { "cluster": name, "user": name } }],
            "current-context": name,
        });
        println!("{}", serde_json::to_string_pretty(&config).expect("JSON prints"));
        return Ok(());
    }
    // YAML's double-quoted strings take JSON's escapes, so every value is quoted as JSON.
    let ca = session
        .ca_pem
        .as_deref()
        .map(|pem| format!("\n    certificate-authority-data: {}", quote(&STANDARD.encode(pem))))
        .unwrap_or_default();
    println!(
        "# kubectl through jitgate: save as a file and point KUBECONFIG at it, or run\n\
         # `jitgate kubeconfig --cluster {cluster} --merge` to add it to your kubeconfig.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {n}\n  cluster:\n    server: {server}{ca}\n\
         users:\n\
         - name: {n}\n  user:\n    exec:\n      apiVersion: {api}\n      command: {exe}\n      args: [\"kube-credential\", \"--cluster\", {c}]\n      interactiveMode: Never\n      provideClusterInfo: false\n\
         contexts:\n\
         - name: {n}\n  context:\n    cluster: {n}\n    user: {n}\n\
         current-context: {n}",
        n = quote(&name),
        server = quote(&server),
        api = quote(EXEC_API),
        exe = quote(&exe),
        c = quote(cluster),
    );
    Ok(())
}

fn cluster_entry(server: &str, ca_pem: Option<&str>) -> Value {
    let mut entry = serde_json::json!({ "server": server });
    if let Some(pem) = ca_pem {
        entry["certificate-authority-data"] = STANDARD.encode(pem).into();
    }
    entry
}

fn exec_entry(exe: &str, cluster: &str) -> Value {
    serde_json::json!({
        "apiVersion": EXEC_API,
        "command": exe,
        "args": ["kube-credential", "--cluster", cluster],
        "interactiveMode": "Never",
        "provideClusterInfo": false,
    })
}

/// Adds the cluster, user and context with kubectl's own `config` commands, which know
/// where the kubeconfig is ($KUBECONFIG or ~/.kube/config) and how to merge into it, and
/// makes the context current.
fn merge_into_kubeconfig(name: &str, cluster: &str, server: &str, ca_pem: Option<&str>, exe: &str) -> CliResult {
    let ca_file = match ca_pem {
        Some(pem) => {
            let path = home()?.join("kube").join("proxy-ca.pem");
            write_private(&path, pem.as_bytes())?;
            Some(path)
        }
        None => None,
    };
    let mut set_cluster = vec![
        "config".to_owned(),
        "set-cluster".into(),
        name.into(),
        format!("--server={server}"),
    ];
    if let Some(path) = &ca_file {
        set_cluster.push(format!("--certificate-authority={}", path.display()));
        set_cluster.push("--embed-certs=true".into());
    }
    let steps: Vec<Vec<String>> = vec![
        set_cluster,
        vec![
            "config".into(),
            "set-credentials".into(),
            name.into(),
            format!("--exec-api-version={EXEC_API}"),
            format!("--exec-command={exe}"),
            "--exec-arg=kube-credential".into(),
            "--exec-arg=--cluster".into(),
            format!("--exec-arg={cluster}"),
            "--exec-interactive-mode=Never".into(),
        ],
        vec![
            "config".into(),
            "set-context".into(),
            name.into(),
            format!("--cluster={name}"),
            format!("--user={name}"),
        ],
        vec!["config".into(), "use-context".into(), name.into()],
    ];
    for args in steps {
        let result = std::process::Command::new("kubectl").args(&args).output();
        match result {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(CliError::Refused(format!(
                    "`kubectl {}` failed: {} (kubectl 1.30 or later is needed for --exec-interactive-mode; or print the kubeconfig without --merge)",
                    args[..2].join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                )))
            }
            Err(e) => {
                return Err(CliError::Refused(format!(
                    "cannot run kubectl ({e}); install it, or print the kubeconfig without --merge and save it yourself"
                )))
            }
        }
    }
    eprintln!("jitgate: kubeconfig context {name:?} added and made current; try `kubectl get pods`");
    Ok(())
}

/// What is cached per cluster: the token, its expiry, and which login it came from.
#[derive(Serialize, Deserialize)]
struct Cached {
    token: String,
    expires_at: Timestamp,
    /// SHA-256 of the proxy's URL and the login token it was derived from: a new login,
    /// or a login to another proxy, makes it stale.
    login: String,
}

fn login_key(session: &Session) -> String {
    let mut h = Sha256::new();
    h.update(session.proxy.as_bytes());
    h.update([0]);
    h.update(session.token.as_bytes());
    hex::encode(h.finalize())
}

pub async fn kube_credential(cluster: &str) -> CliResult {
    if cluster.is_empty()
        || !cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CliError::Usage(format!("{cluster:?} is not a cluster name")));
    }
    let session = Session::load()?;
    let now = Timestamp::now();
    let path = home()?.join("kube").join(format!("{cluster}.json"));
    let login = login_key(&session);
    let cached = fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<Cached>(&t).ok())
        .filter(|c| c.login == login && now.saturating_add(REUSE_MARGIN) < c.expires_at);
    let cached = match cached {
        Some(c) => c,
        None => {
            let (api, session) = Api::from_session().await?;
            let resp: Value = api
                .post("/api/v1/kube/token", serde_json::json!({ "cluster": cluster }))
                .await?;
            let token = resp["token"].as_str().unwrap_or_default().to_owned();
            let expires_at = resp["expires_at"]
                .as_str()
                .and_then(|s| Timestamp::parse_rfc3339(s).ok())
                .ok_or_else(|| CliError::Refused("the proxy's answer has no expiry".into()))?;
            let fresh = Cached {
                token,
                expires_at,
                login: login_key(&session),
            };
            let text = serde_json::to_vec(&fresh).expect("a credential serializes");
            // A cache that cannot be written only costs a call next time.
            if let Err(e) = write_private(&path, &text) {
                tracing::debug!(error = %e, "cannot cache the kube credential");
            }
            fresh
        }
    };
    let credential = serde_json::json!({
        "apiVersion": EXEC_API,
        "kind": "ExecCredential",
        "status": {
            "token": cached.token,
            "expirationTimestamp": cached.expires_at.to_rfc3339(),
        }
    });
    println!("{credential}");
    Ok(())
}
