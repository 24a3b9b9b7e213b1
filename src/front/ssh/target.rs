//! The proxy's own connection to a target: the host key verified against the inventory
//! (pinned key or host CA, never trust on first use), then a fresh key pair and a
//! certificate from the target CA for this one session.

use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::HashAlg;
use russh::keys::PublicKeyOrCertificate;

use crate::ca::ssh::{random_ed25519, session_cert, SessionCert};
use crate::config::{HostKeyCheck, SshHost};
use crate::time::Timestamp;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type Target = client::Handle<Verifier>;

/// Checks the target's host key during the key exchange.
pub(super) struct Verifier {
    host: Arc<SshHost>,
    /// What was wrong with the key the target presented, for the error message.
    refused: Arc<std::sync::Mutex<Option<String>>>,
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
) -> Result<Target, String> {
    let refused = Arc::new(std::sync::Mutex::new(None));
    let verifier = Verifier {
        host: Arc::clone(&host),
        refused: Arc::clone(&refused),
    };
    let name = &host.name;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&host.address))
        .await
        .map_err(|_| format!("cannot reach {name} at {}: timed out", host.address))?
        .map_err(|e| format!("cannot reach {name} at {}: {e}", host.address))?;
    let _ = tcp.set_nodelay(true);
    let handshake = client::connect_stream(client_config(&host), tcp, verifier);
    let mut target = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Err(_) => return Err(format!("{name} did not complete the SSH handshake in time")),
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let why = refused.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Err(match why {
                Some(why) => format!("refused to connect to {name}: {why}"),
                None => format!("SSH handshake with {name} failed: {e}"),
            });
        }
    };
    let (key, certificate) = session_credentials(ca, cert)?;
    let auth = tokio::time::timeout(
        CONNECT_TIMEOUT,
        target.authenticate_openssh_cert(cert.login, Arc::new(key), certificate),
    )
    .await
    .map_err(|_| format!("{name} did not answer the login in time"))?
    .map_err(|e| format!("login to {name} failed: {e}"))?;
    match auth {
        AuthResult::Success => Ok(target),
        AuthResult::Failure { .. } => Err(format!(
            "{name} refused the session certificate for {}: does its sshd trust the target CA \
             (TrustedUserCAKeys; `jitgate ssh-config --target-ca` prints the line) and have that login?",
            cert.login
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
