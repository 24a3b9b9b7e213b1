//! Opens many idle SSH sessions through the proxy's jump listener and holds them, so that a
//! benchmark can read what they cost the proxy. Each session is what `ssh -J` makes: an
//! outer connection to the jump listener, a `direct-tcpip` channel to the host, an SSH
//! session inside it running `sleep`, all authenticated with the identity certificate that
//! `jitgate login` left.
//!
//!   cargo run --release --example ssh_idle -- JUMP_ADDR HOST LOGIN COUNT [JITGATE_HOME]
//!
//! Prints `open N` as sessions come up, `ready N` when all are open, then holds them until
//! its standard input closes.

use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::{Certificate, PrivateKey};

struct AnyHost;

impl client::Handler for AnyHost {
    type Error = russh::Error;
    // The benchmark measures the proxy, not host-key checks; the tests check those.
    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

struct Held {
    _outer: client::Handle<AnyHost>,
    _inner: client::Handle<AnyHost>,
    _channel: russh::Channel<client::Msg>,
}

async fn open(
    jump: &str,
    host: &str,
    login: &str,
    user: &str,
    key: &Arc<PrivateKey>,
    cert: &Certificate,
) -> Result<Held, String> {
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        ..client::Config::default()
    });
    let mut outer = client::connect(Arc::clone(&config), jump, AnyHost)
        .await
        .map_err(|e| format!("connect {jump}: {e}"))?;
    let ok = outer
        .authenticate_openssh_cert(user, Arc::clone(key), cert.clone())
        .await
        .map_err(|e| e.to_string())?;
    if !matches!(ok, AuthResult::Success) {
        return Err("the jump listener refused the certificate".into());
    }
    let tunnel = outer
        .channel_open_direct_tcpip(host, 22, "127.0.0.1", 0)
        .await
        .map_err(|e| format!("direct-tcpip to {host}: {e}"))?;
    let mut inner = client::connect_stream(config, tunnel.into_stream(), AnyHost)
        .await
        .map_err(|e| format!("inner handshake: {e}"))?;
    let ok = inner
        .authenticate_openssh_cert(login, Arc::clone(key), cert.clone())
        .await
        .map_err(|e| e.to_string())?;
    if !matches!(ok, AuthResult::Success) {
        return Err("the proxy refused the inner session".into());
    }
    let channel = inner.channel_open_session().await.map_err(|e| e.to_string())?;
    channel.exec(true, "sleep 3600").await.map_err(|e| e.to_string())?;
    Ok(Held {
        _outer: outer,
        _inner: inner,
        _channel: channel,
    })
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [jump, host, login, count, rest @ ..] = &args[..] else {
        return Err("usage: ssh_idle JUMP_ADDR HOST LOGIN COUNT [JITGATE_HOME]".into());
    };
    let count: usize = count.parse().map_err(|_| "COUNT is a number")?;
    let home = rest
        .first()
        .cloned()
        .or_else(|| std::env::var("JITGATE_HOME").ok())
        .ok_or("JITGATE_HOME is not set")?;
    let read = |f: &str| std::fs::read_to_string(format!("{home}/ssh/{f}")).map_err(|e| format!("{home}/ssh/{f}: {e}"));
    let key = Arc::new(PrivateKey::from_openssh(read("id_ed25519")?).map_err(|e| e.to_string())?);
    let cert = Certificate::from_openssh(read("id_ed25519-cert.pub")?.trim()).map_err(|e| e.to_string())?;
    let user = cert
        .valid_principals()
        .first()
        .cloned()
        .ok_or("the certificate names no user")?;
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut tries = 0;
        loop {
            match open(jump, host, login, &user, &key, &cert).await {
                Ok(h) => {
                    held.push(h);
                    break;
                }
                // sshd throttles bursts of new connections (MaxStartups): back off and retry.
                Err(e) if tries < 5 => {
                    tries += 1;
                    eprintln!("session {i}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(e) => return Err(format!("session {i}: {e}")),
            }
        }
        if (i + 1) % 100 == 0 {
            println!("open {}", i + 1);
        }
    }
    println!("ready {}", held.len());
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    Ok(())
}
