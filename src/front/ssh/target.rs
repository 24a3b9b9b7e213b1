//! The proxy's own connection to a target: the host key verified against the inventory
//! (pinned key or host CA, never trust on first use), then a fresh key pair and a
//! certificate from the target CA for this one session.

use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::HashAlg;
use russh::keys::PublicKeyOrCertificate;
use tokio::sync::oneshot;

use crate::ca::ssh::{random_ed25519, session_cert, SessionCert};
use crate::config::{HostKeyCheck, SshHost};
use crate::time::Timestamp;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type Target = client::Handle<Verifier>;

/// Checks the target's host key during the key exchange, and carries connections for
/// the session's remote forwards (`ssh -R`) back to the client.
pub(super) struct Verifier {
    host: Arc<SshHost>,
    /// What was wrong with the key the target presented, for the error message.
    refused: Arc<std::sync::Mutex<Option<String>>>,
    reverse: Arc<Reverse>,
}

/// The remote forwards a session holds on its target, and the way back to its client.
#[derive(Default)]
pub(super) struct Reverse {
    /// The client's side of the session, once it has authenticated.
    pub client: std::sync::OnceLock<russh::server::Handle>,
    /// `(address, port)` pairs the target listens on for this session.
    pub listening: std::sync::Mutex<std::collections::HashSet<(String, u32)>>,
    pub shared: std::sync::OnceLock<Arc<super::session::Shared>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        match host_key_matches(&self.host, key, Timestamp::now()) {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }

    /// A connection to one of the session's remote forwards. Anything the session did not
    /// ask for is refused: a target cannot push channels at the proxy on its own.
    #[allow(clippy::too_many_arguments)]
    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let asked = self
            .reverse
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(connected_address.to_owned(), connected_port));
        let (Some(client), Some(shared), true) = (self.reverse.client.get(), self.reverse.shared.get(), asked) else {
            tracing::warn!(host = %self.host.name, connected_address, connected_port, "target opened a forward nobody asked for");
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        // Opening the client's side waits for the client; not in this connection's event
        // loop, which the client's own requests may be waiting on.
        let Some(slot) = super::session::ChannelSlot::take(shared) else {
            reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let (client, shared) = (client.clone(), Arc::clone(shared));
        let (address, originator) = (connected_address.to_owned(), originator_address.to_owned());
        tokio::spawn(async move {
            let back = tokio::time::timeout(
                super::TARGET_CALL_TIMEOUT,
                client.channel_open_forwarded_tcpip(address, connected_port, originator, originator_port),
            )
            .await;
            match back {
                Ok(Ok(back)) => {
                    reply.accept().await;
                    super::relay::bytes(back, channel, shared).await;
                    drop(slot);
                }
                _ => {
                    tracing::info!("the client did not take a remote-forwarded connection");
                    reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }

    // A target opens no channels of its own to the proxy: everything else is refused.
    async fn server_channel_open_session(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse(reply, "session").await
    }

    #[allow(clippy::too_many_arguments)]
    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse(reply, "direct-tcpip").await
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse(reply, "x11").await
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse(reply, "agent").await
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse(reply, "direct-streamlocal").await
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse(reply, "forwarded-streamlocal").await
    }
}

impl Verifier {
    async fn refuse(&self, reply: client::ChannelOpenHandle, kind: &str) -> Result<(), russh::Error> {
        tracing::warn!(host = %self.host.name, kind, "target tried to open a channel to the proxy; refused");
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}

/// Whether `key` is the inventory's idea of this host.
pub(super) fn host_key_matches(host: &SshHost, key: &PublicKeyOrCertificate, now: Timestamp) -> Result<(), String> {
    match (&host.verify, key) {
        (HostKeyCheck::Pinned(pinned), PublicKeyOrCertificate::PublicKey { key, .. }) => {
            if pinned.key_data() == key.key_data() {
                Ok(())
            } else {
                Err(format!(
                    "its host key {} is not the one pinned in the inventory ({})",
                    key.fingerprint(HashAlg::Sha256),
                    pinned.fingerprint(HashAlg::Sha256)
                ))
            }
        }
        (HostKeyCheck::Ca(ca), PublicKeyOrCertificate::Certificate(cert)) => {
            if cert.cert_type() != CertType::Host {
                return Err("it presented a user certificate as its host key".into());
            }
            let secs = u64::try_from(now.as_millis() / 1000).unwrap_or(0);
            cert.validate_at(secs, [&ca.fingerprint(HashAlg::Sha256)])
                .map_err(|e| format!("its host certificate is not valid from the inventory's host CA: {e}"))?;
            let dialled = host.address.rsplit_once(':').map_or(&*host.address, |(h, _)| h);
            let dialled = dialled.trim_start_matches('[').trim_end_matches(']');
            if cert.valid_principals().iter().any(|p| p == &host.name || p == dialled) {
                Ok(())
            } else {
                Err(format!(
                    "its host certificate names {:?}, not {} or {dialled}",
                    cert.valid_principals(),
                    host.name
                ))
            }
        }
        (HostKeyCheck::Pinned(_), PublicKeyOrCertificate::Certificate(_)) => {
            Err("it presented a certificate where the inventory pins a plain key".into())
        }
        (HostKeyCheck::Ca(_), PublicKeyOrCertificate::PublicKey { .. }) => {
            Err("it presented a plain host key where the inventory expects a certificate from its host CA".into())
        }
    }
}

fn client_config(host: &SshHost) -> Arc<client::Config> {
    let mut preferred = super::preferred();
    match &host.verify {
        // Ask for exactly the pinned key's type, so a target with several host keys
        // presents the one the inventory knows.
        HostKeyCheck::Pinned(k) => preferred.key = vec![k.algorithm()].into(),
        HostKeyCheck::Ca(_) => preferred.host_key_certificates = preferred.key.clone(),
    }
    Arc::new(client::Config {
        client_id: russh::SshId::Standard("SSH-2.0-jitgate".into()),
        preferred,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..client::Config::default()
    })
}

/// Opens an authenticated connection to `host` as `cert.login`, with a key that exists
/// only in this process and a certificate that ends at `cert.valid_before`.
pub(super) async fn connect(
    host: Arc<SshHost>,
    ca: &russh::keys::PrivateKey,
    cert: &SessionCert<'_>,
    reverse: Arc<Reverse>,
    kill: tokio_util::sync::CancellationToken,
) -> Result<Target, String> {
    let target = handshake(Arc::clone(&host), reverse, kill).await?;
    login(target, &host, ca, cert).await.map_err(|e| e.why)
}

/// Why a login on a target connection failed.
pub(super) struct LoginFailed {
    pub why: String,
    /// The connection broke under the login (rather than the target refusing it or not
    /// answering in time): a fresh connection may fare better.
    pub dropped: bool,
}

/// Reaches `host` and completes the key exchange, its host key verified: everything up
/// to the login, which needs the session's certificate.
pub(super) async fn handshake(
    host: Arc<SshHost>,
    reverse: Arc<Reverse>,
    kill: tokio_util::sync::CancellationToken,
) -> Result<Target, String> {
    let refused = Arc::new(std::sync::Mutex::new(None));
    let verifier = Verifier {
        host: Arc::clone(&host),
        refused: Arc::clone(&refused),
        reverse,
    };
    let name = &host.name;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&host.address))
        .await
        .map_err(|_| format!("cannot reach {name} at {}: timed out", host.address))?
        .map_err(|e| format!("cannot reach {name} at {}: {e}", host.address))?;
    let _ = tcp.set_nodelay(true);
    // Dies with the session, whatever russh is waiting for.
    let tcp = super::Killable::new(tcp, kill);
    let handshake = client::connect_stream(client_config(&host), tcp, verifier);
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Err(_) => Err(format!("{name} did not complete the SSH handshake in time")),
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => {
            let why = refused.lock().unwrap_or_else(|e| e.into_inner()).take();
            Err(match why {
                Some(why) => format!("refused to connect to {name}: {why}"),
                None => format!("SSH handshake with {name} failed: {e}"),
            })
        }
    }
}

/// Logs in on a target connection as `cert.login`, with a key that exists only in this
/// process and a certificate that ends at `cert.valid_before`.
pub(super) async fn login(
    mut target: Target,
    host: &SshHost,
    ca: &russh::keys::PrivateKey,
    cert: &SessionCert<'_>,
) -> Result<Target, LoginFailed> {
    let name = &host.name;
    let failed = |why: String, dropped: bool| LoginFailed { why, dropped };
    let (key, certificate) = session_credentials(ca, cert).map_err(|why| failed(why, false))?;
    let auth = tokio::time::timeout(
        CONNECT_TIMEOUT,
        target.authenticate_openssh_cert(cert.login, Arc::new(key), certificate),
    )
    .await
    .map_err(|_| failed(format!("{name} did not answer the login in time"), false))?
    .map_err(|e| failed(format!("login to {name} failed: {e}"), true))?;
    match auth {
        AuthResult::Success => Ok(target),
        AuthResult::Failure { .. } => Err(failed(
            format!(
                "{name} refused the session certificate for {}: does its sshd trust the target CA \
             (TrustedUserCAKeys; `jitgate ssh-config --target-ca` prints the line) and have that login?",
                cert.login
            ),
            false,
        )),
    }
}

fn session_credentials(
    ca: &russh::keys::PrivateKey,
    cert: &SessionCert<'_>,
) -> Result<(russh::keys::PrivateKey, russh::keys::Certificate), String> {
    let key = random_ed25519();
    let certificate =
        session_cert(ca, key.public_key(), cert, Timestamp::now()).map_err(|e| format!("cannot certify: {e}"))?;
    Ok((key, certificate))
}

/// The key exchange with the target, begun with the session so that it runs while the
/// client authenticates rather than after. It holds one of the host's few early slots
/// (`SshFront::early_slot`) until the session takes it or [`EARLY_HOLD`] has passed; a
/// connection not taken by then, or whose session is refused or ends, is closed.
pub(super) struct Early {
    want: Option<oneshot::Sender<oneshot::Sender<Result<Target, String>>>>,
    task: tokio::task::JoinHandle<()>,
}

/// How long an early connection waits for its session's login: clients authenticate in
/// milliseconds, and one slower than this gets a fresh connection at its login.
const EARLY_HOLD: Duration = Duration::from_secs(5);

impl Early {
    pub(super) fn start(
        host: Arc<SshHost>,
        reverse: Arc<Reverse>,
        kill: tokio_util::sync::CancellationToken,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Early {
        let (want, asked) = oneshot::channel::<oneshot::Sender<Result<Target, String>>>();
        let task = tokio::spawn(async move {
            let reached = handshake(host, reverse, kill).await;
            if let Ok(Ok(reply)) = tokio::time::timeout(EARLY_HOLD, asked).await {
                let _ = reply.send(reached);
            }
            drop(slot);
        });
        Early { want: Some(want), task }
    }

    /// The connection once its key exchange is over, or why that failed; None when it
    /// waited too long and is gone.
    pub(super) async fn take(mut self) -> Option<Result<Target, String>> {
        let (reply, answer) = oneshot::channel();
        self.want.take()?.send(reply).ok()?;
        answer.await.ok()
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        self.task.abort();
    }
}
