//! The SSH front-end. The proxy terminates every SSH session itself (russh), so that it can
//! decide per session, mint that session's credentials, apply the profile's channel rules
//! and cut the session when its grant ends. Two ways in, one session code path:
//!
//! - `jitgate ssh-proxy` (the ProxyCommand) upgrades an HTTPS request on the TLS listener to
//!   a byte stream that carries the SSH session for the host it names;
//! - `ssh -J USER@PROXY:2222` reaches the jump listener here, whose only job is to open a
//!   `direct-tcpip` channel to an inventory name; the SSH session inside that channel is
//!   terminated here too, never passed through to the target.
//!
//! Either way the client authenticates with the identity certificate `jitgate login` left
//! (signed by the client CA), the session is authorized for host + login, and the proxy
//! opens its own connection to the target with a fresh key and a certificate from the
//! target CA that names only the approved login and ends with the grant.
//!
//! russh advisories checked against the version in Cargo.lock (0.65.1, newer than every
//! fixed version below): GHSA-45x7-px36-x8w8 (Terrapin, CVE-2023-48795; fixed 0.40.2 by
//! strict key exchange, which `preferred()` offers on both sides), GHSA-cqvm-j2r2-hwpg
//! (DH keys not validated; 0.36.2), GHSA-vgvv-x7xg-6cqg (pre-auth allocation from a claimed
//! packet length; 0.44.1), GHSA-h5rc-j5f5-3gcm (window-adjust overflow; 0.54.1),
//! GHSA-f5v4-2wr6-hqmg (keyboard-interactive count; 0.60.1), GHSA-g9f8-wqj9-fjw5 /
//! RUSTSEC-2026-0154 (agent frames; 0.60.3), GHSA-hpv4-5h6f-wqr3, GHSA-76r6-x97p-67vr,
//! GHSA-4r3c-5hpg-58qr and GHSA-g9g7-5cgw-6v28 (login state, banners, allocations before
//! size checks; 0.61.0), GHSA-wwx6-x28x-8259 (decompression bomb; 0.61.1, and compression
//! is off here), GHSA-5xvq-cp9x-6p6r, GHSA-g9hv-x236-4qp3 and GHSA-cqjc-rmpq-xprq (panics on
//! bad curve25519 values and many pty modes; 0.62.4), GHSA-m65r-rprj-r5rg (callbacks for
//! channels never opened; 0.62.5). Besides, only certificates authenticate here and the
//! handler checks each one itself, so a key offered without a signature never gets in.

mod cut;
mod jump;
mod record;
mod relay;
mod session;
mod sftp;
mod target;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{Certificate, Fingerprint, HashAlg, PrivateKey};
use russh::keys::Algorithm;
use russh::server::Config;
use russh::{cipher, compression, kex, mac, MethodKind, MethodSet, Preferred, SshId};
use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access::Identity;
use crate::broker::Broker;
use crate::ca::ssh::{host_cert, random_ed25519, SshCas};
use crate::config::{SshConfig, SshHost};
use crate::time::Timestamp;

pub use session::serve_session;

/// Host certificates the proxy presents are re-made this often; clients only check them
/// against the host CA and the name.
const HOST_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Most authentication attempts per connection; a client with a certificate needs one.
const MAX_AUTH_ATTEMPTS: usize = 6;
/// Most channels one client connection may hold open at once, of every kind.
pub(crate) const MAX_CHANNELS: usize = 16;
/// Most connections the jump listener holds before they authenticate.
const MAX_PRE_AUTH: usize = 256;
/// How long a handler waits for the target to answer before giving up on it.
pub(crate) const TARGET_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How clients name the jump listener: what `-J` takes, the names its host certificate
/// carries, and the known_hosts patterns that match them.
#[derive(Clone, Debug)]
pub struct JumpAddress {
    /// `HOST:PORT` for `ssh -J USER@HOST:PORT`.
    pub address: String,
    pub names: Vec<String>,
    pub known_hosts: Vec<String>,
}

impl JumpAddress {
    pub fn new(listen: std::net::SocketAddr, public_url: &str) -> Self {
        let public_host = url::Url::parse(public_url).ok().and_then(|u| {
            u.host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        });
        let mut names = Vec::new();
        if !listen.ip().is_unspecified() {
            names.push(listen.ip().to_string());
        }
        names.extend(public_host);
        if listen.ip().is_loopback() || listen.ip().is_unspecified() {
            names.push("localhost".into());
        }
        names.dedup();
        let port = listen.port();
        let pattern = |n: &String| {
            let n = if n.contains(':') { format!("[{n}]") } else { n.clone() };
            if port == 22 {
                n
            } else if n.starts_with('[') {
                format!("{n}:{port}")
            } else {
                format!("[{n}]:{port}")
            }
        };
        let known_hosts = names.iter().map(pattern).collect();
        let address = names.first().map_or_else(
            || listen.to_string(),
            |n| {
                if n.contains(':') {
                    format!("[{n}]:{port}")
                } else {
                    format!("{n}:{port}")
                }
            },
        );
        JumpAddress {
            address,
            names,
            known_hosts,
        }
    }
}

/// Everything the SSH sessions share, built once at start.
pub struct SshFront {
    broker: Arc<Broker>,
    cas: Arc<SshCas>,
    client_ca: Fingerprint,
    hosts: HashMap<String, Arc<SshHost>>,
    /// The key behind every host certificate the proxy presents; made fresh at each start
    /// because clients trust the host CA, never this key.
    host_key: PrivateKey,
    session_ttl: Duration,
    expiry_warning: Duration,
    /// Where terminal sessions are recorded (`data_dir/recordings`).
    recordings: std::path::PathBuf,
    record_input: bool,
    /// A client that has not authenticated by then is dropped (`ssh.login_grace`).
    login_grace: Duration,
    /// Where logins come from that are still configured ("local" and IdP names): an
    /// identity certificate from a source since removed no longer works.
    sources: Vec<String>,
    /// The names the jump listener answers to, for its host certificate.
    jump_names: Vec<String>,
    /// Slots for connections still authenticating, so a flood of silent clients cannot
    /// hold every file descriptor.
    pre_auth: Arc<tokio::sync::Semaphore>,
    /// Per host, slots for key exchanges begun before the client has authenticated (see
    /// `target::Early`): each holds one of the target sshd's unauthenticated connections
    /// (its `MaxStartups`, 10 before it starts dropping), so only a few at once.
    early: HashMap<String, Arc<tokio::sync::Semaphore>>,
}

/// Key exchanges a host may have under way ahead of their sessions' logins.
const EARLY_PER_HOST: usize = 4;

impl SshFront {
    pub fn new(
        broker: Arc<Broker>,
        cas: Arc<SshCas>,
        config: &SshConfig,
        recordings: std::path::PathBuf,
        sources: Vec<String>,
        jump_names: Vec<String>,
    ) -> Self {
        let client_ca = cas.client.public_key().fingerprint(HashAlg::Sha256);
        SshFront {
            broker,
            cas,
            client_ca,
            hosts: config
                .hosts
                .iter()
                .map(|h| (h.name.clone(), Arc::new(h.clone())))
                .collect(),
            host_key: random_ed25519(),
            session_ttl: config.session_ttl,
            expiry_warning: config.expiry_warning,
            recordings,
            record_input: config.record_input,
            login_grace: config.login_grace,
            sources,
            jump_names,
            pre_auth: Arc::new(tokio::sync::Semaphore::new(MAX_PRE_AUTH)),
            early: config
                .hosts
                .iter()
                .map(|h| (h.name.clone(), Arc::new(tokio::sync::Semaphore::new(EARLY_PER_HOST))))
                .collect(),
        }
    }

    pub fn host(&self, name: &str) -> Option<&Arc<SshHost>> {
        self.hosts.get(name)
    }

    /// One of `host`'s slots for a key exchange ahead of the login, if one is free.
    fn early_slot(&self, host: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(self.early.get(host)?).try_acquire_owned().ok()
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The server side's configuration, presenting a host certificate for `names`.
    fn server_config(&self, names: &[&str]) -> Result<Arc<Config>, String> {
        let now = Timestamp::now();
        let mut certificates = Vec::new();
        if !names.is_empty() {
            certificates.push(
                host_cert(
                    &self.cas.host,
                    self.host_key.public_key(),
                    names,
                    now.saturating_add(HOST_CERT_LIFETIME),
                    now,
                )
                .map_err(|e| format!("cannot make a host certificate: {e}"))?,
            );
        }
        Ok(Arc::new(Config {
            server_id: SshId::Standard("SSH-2.0-jitgate".into()),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            // A rejection costs the client a little; OpenSSH's first "none" probe costs it
            // nothing, or every session would start a second late.
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![self.host_key.clone()],
            certificates,
            preferred: preferred(),
            max_auth_attempts: MAX_AUTH_ATTEMPTS,
            // An idle interactive session is fine; a dead peer is found by keepalives.
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            nodelay: true,
            ..Config::default()
        }))
    }

    /// Who an identity certificate says is connecting, if it still speaks for them: signed
    /// by the client CA, a user certificate within its validity, naming one user, from a
    /// login whose token was not revoked, for a user who exists and is not disabled. With
    /// them, the login's token id: sessions end when that login does.
    pub(crate) async fn identify(&self, cert: &Certificate, now: Timestamp) -> Result<(Identity, String), String> {
        use russh::keys::ssh_key::certificate::CertType;
        if cert.cert_type() != CertType::User {
            return Err("not a user certificate".into());
        }
        let secs = u64::try_from(now.as_millis() / 1000).unwrap_or(0);
        cert.validate_at(secs, [&self.client_ca])
            .map_err(|e| format!("the certificate is not valid now or not from the client CA: {e}"))?;
        let [user] = cert.valid_principals() else {
            return Err("an identity certificate names exactly one user".into());
        };
        let jti = cert
            .key_id()
            .split(' ')
            .find_map(|w| w.strip_prefix("jti="))
            .filter(|j| !j.is_empty())
            .ok_or("the certificate names no login (jti)")?;
        let store = self.broker.store();
        if store.token_revoked(jti).await.map_err(|e| e.to_string())? {
            return Err("the login behind this certificate has ended; run `jitgate login`".into());
        }
        let record = store
            .user(user)
            .await
            .map_err(|e| e.to_string())?
            .filter(|u| !u.disabled)
            .ok_or("the user is disabled or no longer exists")?;
        if !self.sources.iter().any(|s| s == record.source()) {
            return Err(format!("logins from {} are no longer accepted here", record.source()));
        }
        Ok((Identity::new(record.name, record.groups), jti.to_owned()))
    }

    /// Serves the jump listener until `shutdown`.
    pub async fn serve_jump(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "SSH accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = Arc::clone(&self.pre_auth).try_acquire_owned() else {
                tracing::warn!(%peer, "too many SSH connections authenticating at once; dropping one");
                continue;
            };
            let front = Arc::clone(&self);
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                jump::serve(front, tcp, peer, slot).await;
            });
        }
    }
}

/// Runs a russh server session on `stream` until it ends or `kill` is cancelled. A client
/// that has not authenticated within `grace` (even one that never sends its version line)
/// is dropped. Killing works on the socket itself: russh stops reading its
/// command queue while a channel waits for window space, so a polite disconnect alone
/// could never reach a client that stopped reading.
async fn run_server<H, S>(
    config: Arc<Config>,
    stream: S,
    handler: H,
    authenticated: Arc<std::sync::atomic::AtomicBool>,
    grace: Duration,
    kill: CancellationToken,
) where
    H: russh::server::Handler + Send + 'static,
    H::Error: std::fmt::Display,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watchdog = {
        let kill = kill.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if !authenticated.load(std::sync::atomic::Ordering::Acquire) {
                tracing::info!("SSH client did not authenticate in time; dropping it");
                kill.cancel();
            }
        })
    };
    let stream = Killable::new(stream, kill.clone());
    tokio::select! {
        ended = async {
            let running = russh::server::run_stream(config, stream, handler).await?;
            running.await
        } => if let Err(e) = ended {
            tracing::debug!(error = %e, "SSH session ended with an error");
        },
        _ = kill.cancelled() => {}
    }
    watchdog.abort();
}

/// A byte stream that fails every read and write once its token is cancelled, so the
/// task that owns it ends and the socket closes, whatever state the protocol is in. The
/// hot path is one atomic load; the wake-up is registered only when the stream would wait.
pub(crate) struct Killable<S> {
    inner: S,
    kill: CancellationToken,
    killed: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl<S> Killable<S> {
    pub(crate) fn new(inner: S, kill: CancellationToken) -> Self {
        Killable {
            inner,
            killed: Box::pin(kill.clone().cancelled_owned()),
            kill,
        }
    }

    /// After the inner stream said Pending: also wake this task when the token is cancelled.
    fn pending_unless_killed<T>(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<T>> {
        match self.killed.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(killed())),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

fn killed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the proxy ended this connection")
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.kill.is_cancelled() {
            return std::task::Poll::Ready(Err(killed()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            std::task::Poll::Pending => self.pending_unless_killed(cx),
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.kill.is_cancelled() {
            return std::task::Poll::Ready(Err(killed()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            std::task::Poll::Pending => self.pending_unless_killed(cx),
            ready => ready,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.kill.is_cancelled() {
            return std::task::Poll::Ready(Err(killed()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_flush(cx) {
            std::task::Poll::Pending => self.pending_unless_killed(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Modern algorithms only, the same on both sides of the proxy: hybrid post-quantum or
/// curve25519 key exchange, ed25519 or ECDSA keys, AEAD ciphers. The strict-kex markers
/// turn on the Terrapin countermeasure with every peer that supports it.
pub(crate) fn preferred() -> Preferred {
    Preferred {
        kex: std::borrow::Cow::Borrowed(&[
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        key: std::borrow::Cow::Borrowed(&[
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: russh::keys::EcdsaCurve::NistP256,
            },
            Algorithm::Ecdsa {
                curve: russh::keys::EcdsaCurve::NistP384,
            },
            Algorithm::Ecdsa {
                curve: russh::keys::EcdsaCurve::NistP521,
            },
        ]),
        // AES-GCM first: with AES instructions (nearly every server CPU) it is much the
        // cheaper per byte; a relay whose client hop uses chacha20-poly1305 spends about half
        // again the CPU (scripts/bench/ssh). It decides the proxy's own hop to a target; on
        // the client's hop the client's order decides, as in any SSH server.
        cipher: std::borrow::Cow::Borrowed(&[cipher::AES_256_GCM, cipher::AES_128_GCM, cipher::CHACHA20_POLY1305]),
        // Unused with AEAD ciphers, but the negotiation needs a list.
        mac: std::borrow::Cow::Borrowed(&[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM]),
        // Compression costs CPU on the hot path and invites decompression bombs.
        compression: std::borrow::Cow::Borrowed(&[compression::NONE]),
        host_key_certificates: std::borrow::Cow::Borrowed(&[]),
    }
}
