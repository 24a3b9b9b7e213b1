//! The proxy's three OpenSSH certificate authorities, generated on first start into
//! `certs/` (ed25519, private keys 0600) and reused later:
//!
//! - the **client CA** signs the short-lived certificate `jitgate login` leaves next to the
//!   user's key: it proves to the proxy who the user is, and grants nothing on any target;
//! - the **target CA** signs the per-session certificates the proxy presents to targets,
//!   which trust it through `TrustedUserCAKeys`;
//! - the **host CA** signs the host certificates the proxy presents for target names, which
//!   clients trust through an `@cert-authority` line in known_hosts.

use std::path::Path;
use std::time::Duration;

use russh::keys::ssh_key::certificate::{Builder, CertType, Certificate};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{LineEnding, PrivateKey, PublicKey};

use super::x509::{err, write_public, write_secret, CertError};
use crate::time::Timestamp;

/// A certificate is valid from a minute before it was made, so a target whose clock runs a
/// little behind still accepts it.
pub const BACKDATE: Duration = Duration::from_secs(60);

pub struct SshCas {
    pub client: PrivateKey,
    pub target: PrivateKey,
    pub host: PrivateKey,
    /// What this start generated, for the start-up message.
    pub generated: Vec<&'static str>,
}

/// Makes sure `dir` holds the three CAs, generating whichever is missing.
pub fn ensure(dir: &Path) -> Result<SshCas, CertError> {
    let mut generated = Vec::new();
    let mut one = |file: &str, label: &'static str| -> Result<PrivateKey, CertError> {
        let path = dir.join(file);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e))?;
            return PrivateKey::from_openssh(&text).map_err(|e| err(&path, format!("not an OpenSSH private key: {e}")));
        }
        let mut key = random_ed25519();
        key.set_comment(format!("jitgate {label}"));
        let text = key.to_openssh(LineEnding::LF).map_err(|e| err(&path, e))?;
        write_secret(&path, &text)?;
        let public = key.public_key().to_openssh().map_err(|e| err(&path, e))?;
        write_public(&dir.join(format!("{file}.pub")), &format!("{public}\n"))?;
        generated.push(label);
        Ok(key)
    };
    let client = one("ssh-client-ca", "SSH client CA")?;
    let target = one("ssh-target-ca", "SSH target CA")?;
    let host = one("ssh-host-ca", "SSH host CA")?;
    Ok(SshCas {
        client,
        target,
        host,
        generated,
    })
}

/// What a per-session certificate for a target carries.
pub struct SessionCert<'a> {
    /// The approved login: the certificate's only principal.
    pub login: &'a str,
    pub user: &'a str,
    pub grant_id: &'a str,
    pub session_id: &'a str,
    /// `min(grant expiry, now + session TTL)`, decided by the caller.
    pub valid_before: Timestamp,
    pub pty: bool,
    pub port_forwarding: bool,
}

fn unix_secs(t: Timestamp) -> u64 {
    u64::try_from(t.as_millis().div_euclid(1000)).unwrap_or(0)
}

fn builder(
    subject: &PublicKey,
    now: Timestamp,
    valid_before: Timestamp,
) -> Result<Builder, russh::keys::ssh_key::Error> {
    let valid_after = Timestamp::from_millis(now.as_millis() - BACKDATE.as_millis() as i64);
    Builder::new(
        random_bytes::<32>(),
        subject.key_data().clone(),
        unix_secs(valid_after),
        unix_secs(valid_before),
    )
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A fresh ed25519 key from the OS's randomness. ssh-key's own generator wants a newer
/// `rand_core` than the rest of the crate uses; a seed sidesteps the mismatch.
pub fn random_ed25519() -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&random_bytes::<32>()))
}

fn serial() -> u64 {
    use rand::RngCore;
    rand::rngs::OsRng.next_u64()
}

/// The certificate `jitgate login` leaves next to the user's key: principal = the user,
/// valid no longer than their token. It grants nothing by itself; the proxy reads who is
/// connecting from it, and decides per session.
pub fn client_cert(
    ca: &PrivateKey,
    subject: &PublicKey,
    user: &str,
    token_jti: &str,
    valid_before: Timestamp,
    now: Timestamp,
) -> Result<Certificate, russh::keys::ssh_key::Error> {
    let mut b = builder(subject, now, valid_before)?;
    // The token's jti rides along, so the SSH side can refuse the certificate of a token
    // that was revoked (logout, renewal) before it expires.
    b.serial(serial())?
        .cert_type(CertType::User)?
        .key_id(format!("{user} jitgate-login jti={token_jti}"))?
        .valid_principal(user)?
        // OpenSSH clients ask for a pty on the proxy's behalf; nothing else is needed.
        .extension("permit-pty", "")?
        .comment(format!("jitgate login {user}"))?;
    b.sign(ca)
}

/// A host certificate for `names`: what the proxy presents when a client asks for that
/// host, so that `@cert-authority` in the client's known_hosts accepts it with no prompt.
pub fn host_cert(
    ca: &PrivateKey,
    host_key: &PublicKey,
    names: &[&str],
    valid_before: Timestamp,
    now: Timestamp,
) -> Result<Certificate, russh::keys::ssh_key::Error> {
    let mut b = builder(host_key, now, valid_before)?;
    b.serial(serial())?
        .cert_type(CertType::Host)?
        .key_id(format!("jitgate host {}", names.join(",")))?;
    for name in names {
        b.valid_principal(*name)?;
    }
    b.sign(ca)
}

/// A per-session certificate for one target: the approved login as its only principal,
/// the grant and session in its key id, and only the extensions the profile allows. Agent
/// and X11 forwarding are never granted, and there are no critical options to widen it.
pub fn session_cert(
    ca: &PrivateKey,
    subject: &PublicKey,
    s: &SessionCert<'_>,
    now: Timestamp,
) -> Result<Certificate, russh::keys::ssh_key::Error> {
    let mut b = builder(subject, now, s.valid_before)?;
    b.serial(serial())?
        .cert_type(CertType::User)?
        .key_id(format!("{} grant={} session={}", s.user, s.grant_id, s.session_id))?
        .valid_principal(s.login)?;
    if s.pty {
        b.extension("permit-pty", "")?;
    }
    if s.port_forwarding {
        b.extension("permit-port-forwarding", "")?;
    }
    b.sign(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        random_ed25519()
    }

    #[test]
    fn first_start_generates_later_starts_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path()).unwrap();
        assert_eq!(first.generated, ["SSH client CA", "SSH target CA", "SSH host CA"]);
        let again = ensure(dir.path()).unwrap();
        assert!(again.generated.is_empty());
        assert_eq!(first.target.public_key(), again.target.public_key());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ssh-target-ca"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let public = std::fs::read_to_string(dir.path().join("ssh-target-ca.pub")).unwrap();
        assert_eq!(
            PublicKey::from_openssh(public.trim()).unwrap().key_data(),
            first.target.public_key().key_data()
        );
    }

    #[test]
    fn session_certificates_carry_exactly_the_grant() {
        let (ca, subject) = (key(), key());
        let now = Timestamp::from_millis(1_700_000_000_000);
        let until = Timestamp::from_millis(1_700_000_600_000);
        let s = SessionCert {
            login: "postgres",
            user: "alice",
            grant_id: "grant-1",
            session_id: "s-1",
            valid_before: until,
            pty: true,
            port_forwarding: false,
        };
        let cert = session_cert(&ca, subject.public_key(), &s, now).unwrap();
        assert_eq!(cert.valid_principals(), ["postgres"]);
        assert_eq!(cert.key_id(), "alice grant=grant-1 session=s-1");
        assert_eq!(cert.valid_after(), 1_700_000_000 - 60);
        assert_eq!(cert.valid_before(), 1_700_000_600);
        assert_eq!(cert.cert_type(), CertType::User);
        assert!(cert.critical_options().is_empty());
        let ext: Vec<&String> = cert.extensions().keys().collect();
        assert_eq!(ext, ["permit-pty"]);
        // Signed by the CA, over exactly this key.
        let fp = ca.public_key().fingerprint(Default::default());
        cert.validate_at(1_700_000_100, [&fp]).unwrap();
        assert_eq!(cert.public_key(), subject.public_key().key_data());
        assert!(cert.validate_at(1_700_000_601, [&fp]).is_err(), "expired");
        let other = key().public_key().fingerprint(Default::default());
        assert!(cert.validate_at(1_700_000_100, [&other]).is_err(), "another CA");

        let fwd = SessionCert {
            port_forwarding: true,
            pty: false,
            ..s
        };
        let cert = session_cert(&ca, subject.public_key(), &fwd, now).unwrap();
        let ext: Vec<&String> = cert.extensions().keys().collect();
        assert_eq!(ext, ["permit-port-forwarding"]);
    }

    #[test]
    fn host_certificates_name_exactly_the_host() {
        let (ca, host) = (key(), key());
        let now = Timestamp::from_millis(1_700_000_000_000);
        let cert = host_cert(
            &ca,
            host.public_key(),
            &["db-prod-1"],
            Timestamp::from_millis(1_700_000_600_000),
            now,
        )
        .unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.valid_principals(), ["db-prod-1"]);
        assert!(cert.extensions().is_empty() && cert.critical_options().is_empty());
        let fp = ca.public_key().fingerprint(Default::default());
        cert.validate_at(1_700_000_100, [&fp]).unwrap();
    }

    #[test]
    fn an_expiry_before_now_is_refused() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let past = Timestamp::from_millis(1_600_000_000_000);
        assert!(client_cert(&key(), key().public_key(), "alice", "jti-1", past, now).is_err());
    }
}
