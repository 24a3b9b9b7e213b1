//! `jitgate serve` with no config on a fresh directory: the README's first command.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `jitgate serve` in `dir` with no config and returns the banner it prints.
fn serve_once(dir: &std::path::Path) -> Vec<String> {
    if std::net::TcpListener::bind("127.0.0.1:8443").is_err() {
        panic!("127.0.0.1:8443 is in use; the embedded default listens there, so stop whatever holds it");
    }
    if std::net::TcpListener::bind("127.0.0.1:2222").is_err() {
        panic!("127.0.0.1:2222 is in use; the embedded default's SSH listener is there, so stop whatever holds it");
    }
    let mut child = Command::new(common::BIN)
        .arg("serve")
        .current_dir(dir)
        .env_remove("JITGATE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let last = line.trim_start().starts_with("then log in:");
            lines.push(line);
            if last {
                break;
            }
        }
        let _ = tx.send(lines);
    });
    let banner = rx.recv_timeout(Duration::from_secs(30));
    // The banner comes once the listener is bound: HTTPS with the generated CA must work now.
    let health = healthz(&dir.join("certs/ca.pem"));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(health, "{\"status\":\"ok\"}");
    banner.expect("serve printed its banner")
}

fn healthz(ca: &std::path::Path) -> String {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .unwrap();
        let resp = client
            .get("https://127.0.0.1:8443/healthz")
            .send()
            .await
            .expect("HTTPS to the embedded default");
        resp.text().await.unwrap()
    })
}

#[test]
fn first_start_generates_keys_and_later_starts_reuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve_once(dir.path());
    assert_eq!(
        first[0],
        "jitgate listening on https://127.0.0.1:8443  (config: embedded default config)"
    );
    assert_eq!(first[1], "  store:   sqlite://jitgate-data/jitgate.db");
    assert_eq!(
        first[2],
        "  ssh:     127.0.0.1:2222  (ssh -J USER@127.0.0.1:2222 LOGIN@HOST, or the ProxyCommand `jitgate ssh-config` prints)"
    );
    assert_eq!(
        first[3],
        "  app:     https://grafana.localhost:8443 -> http://127.0.0.1:3000"
    );
    assert_eq!(
        first[4],
        "  kube:    https://127.0.0.1:8443/k8s/prod -> https://127.0.0.1:6443  (jitgate kubeconfig --cluster prod)"
    );
    assert!(first[5].starts_with("  CA:      certs/ca.pem  SHA-256 "), "{first:?}");
    assert_eq!(
        first[6],
        "  generated on this start into certs: CA, server certificate, token-signing key, SSH client CA, SSH target CA, SSH host CA"
    );
    assert!(
        first.iter().any(|l| l.contains("jitgate users add alice")),
        "says how to create the first user: {first:?}"
    );
    for secret in [
        "ca-key.pem",
        "server-key.pem",
        "token-signing-key.pem",
        "ssh-client-ca",
        "ssh-target-ca",
        "ssh-host-ca",
    ] {
        let mode = std::fs::metadata(dir.path().join("certs").join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    assert!(dir.path().join("jitgate-data/jitgate.db").exists());

    let second = serve_once(dir.path());
    assert_eq!(second[5], first[5], "the same CA and fingerprint");
    assert!(
        !second.iter().any(|l| l.contains("generated")),
        "nothing regenerated: {second:?}"
    );
}
