//! First-start generation of the dev CA, the TLS server certificate and the token-signing
//! key into `certs/`. Later starts reuse what is there. Private keys are written 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};

pub struct Certs {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub token_key_pem: String,
    pub token_key_public_raw: Vec<u8>,
    /// SHA-256 of the CA certificate's DER, as colon-separated hex.
    pub ca_fingerprint: String,
    /// What this start generated, for the start-up message.
    pub generated: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct CertError {
    path: String,
    why: String,
}

pub(super) fn err(path: &Path, why: impl ToString) -> CertError {
    CertError {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Makes sure `dir` holds a CA, a server certificate for localhost, 127.0.0.1 and
/// `*.{base_domain}`, and a token-signing key, generating whatever is missing.
pub fn ensure(dir: &Path, base_domain: &str) -> Result<Certs, CertError> {
    ensure_with(dir, base_domain, &[])
}

/// Same, with the server certificate naming `app_hosts` too. Some clients refuse a
/// wildcard right under a single-label name (`*.localhost`), so each app is named
/// explicitly; the certificate is made again when the names it should hold change.
pub fn ensure_with(dir: &Path, base_domain: &str, app_hosts: &[String]) -> Result<Certs, CertError> {
    fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| err(dir, e))?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let server_cert = dir.join("server.pem");
    let server_key = dir.join("server-key.pem");
    let token_key = dir.join("token-signing-key.pem");
    let mut generated = Vec::new();

    let new_ca = !ca_cert.exists() || !ca_key.exists();
    if new_ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| err(&ca_key, e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(CA_CN);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(|e| err(&ca_cert, e))?;
        write_secret(&ca_key, &key.serialize_pem())?;
        write_public(&ca_cert, &cert.pem())?;
        generated.push("CA");
    }
    let ca_pem = fs::read_to_string(&ca_cert).map_err(|e| err(&ca_cert, e))?;

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        base_domain.to_owned(),
        format!("*.{base_domain}"),
    ];
    for host in app_hosts {
        if !names.contains(host) {
            names.push(host.clone());
        }
    }
    let names_file = dir.join("server-names.txt");
    let wanted = names.join("\n") + "\n";
    let names_changed = fs::read_to_string(&names_file).map_or(true, |had| had != wanted);
    // Only a certificate this proxy made is made again for new names: one an operator put
    // in place stays, with a warning about the names it lacks.
    let ours = !server_cert.exists() || names_file.exists() || made_here(&server_cert);
    if names_changed && !ours && !new_ca {
        tracing::warn!(
            cert = %server_cert.display(),
            names = ?names,
            "the server certificate was not made by jitgate; it is kept, so make sure it names these hosts"
        );
    }
    if new_ca || (names_changed && ours) || !server_cert.exists() || !server_key.exists() {
        let ca_key_pem = fs::read_to_string(&ca_key).map_err(|e| err(&ca_key, e))?;
        let ca_keypair = KeyPair::from_pem(&ca_key_pem).map_err(|e| err(&ca_key, e))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_keypair).map_err(|e| err(&ca_cert, e))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| err(&server_key, e))?;
        let mut params = CertificateParams::new(names).map_err(|e| err(&server_cert, e))?;
        params.distinguished_name = name(SERVER_CN);
        let cert = params.signed_by(&key, &issuer).map_err(|e| err(&server_cert, e))?;
        write_secret(&server_key, &key.serialize_pem())?;
        write_public(&server_cert, &cert.pem())?;
        write_public(&names_file, &wanted)?;
        generated.push("server certificate");
    }

    if !token_key.exists() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| err(&token_key, e))?;
        write_secret(&token_key, &key.serialize_pem())?;
        generated.push("token-signing key");
    }
    let token_key_pem = fs::read_to_string(&token_key).map_err(|e| err(&token_key, e))?;
    let token_pair = KeyPair::from_pem(&token_key_pem).map_err(|e| err(&token_key, e))?;

    Ok(Certs {
        dir: dir.to_owned(),
        ca_fingerprint: fingerprint(&ca_pem).map_err(|e| err(&ca_cert, e))?,
        ca_cert,
        server_cert,
        server_key,
        token_key_public_raw: token_pair.public_key_raw().to_vec(),
        token_key_pem,
        generated,
    })
}

/// Whether `path` holds a server certificate issued by jitgate's own CA: its issuer name
/// (in the DER, as the CA's common name) is the one `ensure` gives the CA.
fn made_here(path: &Path) -> bool {
    let Ok(pem) = fs::read(path) else { return false };
    let Some(Ok(der)) = rustls_pemfile::certs(&mut pem.as_slice()).next() else {
        return false;
    };
    der.as_ref().windows(CA_CN.len()).any(|w| w == CA_CN.as_bytes())
}

const CA_CN: &str = "jitgate dev CA";
const SERVER_CN: &str = "jitgate proxy";

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// SHA-256 of the first certificate in `pem`, as colon-separated upper-case hex.
pub fn fingerprint(pem: &str) -> Result<String, String> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or("no certificate in the file")?
        .map_err(|e| e.to_string())?;
    let hash = Sha256::digest(&der);
    Ok(hash.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

pub(super) fn write_secret(path: &Path, contents: &str) -> Result<(), CertError> {
    write_mode(path, contents, 0o600)
}

pub(super) fn write_public(path: &Path, contents: &str) -> Result<(), CertError> {
    write_mode(path, contents, 0o644)
}

fn write_mode(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| err(path, e))?;
    f.write_all(contents.as_bytes()).map_err(|e| err(path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_hosts_are_named_and_an_operators_certificate_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_with(dir.path(), "localhost", &["grafana.localhost".into()]).unwrap();
        let pem = fs::read_to_string(&first.server_cert).unwrap();
        assert!(made_here(&first.server_cert));
        // The same names again: nothing is made anew.
        ensure_with(dir.path(), "localhost", &["grafana.localhost".into()]).unwrap();
        assert_eq!(fs::read_to_string(&first.server_cert).unwrap(), pem);
        // A new app: the certificate is made again, naming it.
        let again = ensure_with(dir.path(), "localhost", &["okta.localhost".into()]).unwrap();
        assert!(again.generated.contains(&"server certificate"));
        assert_ne!(fs::read_to_string(&first.server_cert).unwrap(), pem);

        // An operator's own certificate (and no names file of ours) stays as it is.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let own = CertificateParams::new(vec!["proxy.corp.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        fs::write(&first.server_cert, own.pem()).unwrap();
        fs::write(&first.server_key, key.serialize_pem()).unwrap();
        fs::remove_file(dir.path().join("server-names.txt")).unwrap();
        assert!(!made_here(&first.server_cert));
        ensure_with(dir.path(), "localhost", &["vault.localhost".into()]).unwrap();
        assert_eq!(fs::read_to_string(&first.server_cert).unwrap(), own.pem());
    }

    #[test]
    fn first_start_generates_and_later_starts_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let first = ensure(&certs, "localhost").unwrap();
        assert_eq!(first.generated, vec!["CA", "server certificate", "token-signing key"]);
        for secret in ["ca-key.pem", "server-key.pem", "token-signing-key.pem"] {
            let mode = fs::metadata(certs.join(secret)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{secret}");
        }
        let again = ensure(&certs, "localhost").unwrap();
        assert!(again.generated.is_empty());
        assert_eq!(again.ca_fingerprint, first.ca_fingerprint);
        assert_eq!(again.token_key_public_raw, first.token_key_public_raw);

        fs::remove_file(certs.join("server.pem")).unwrap();
        let renewed = ensure(&certs, "localhost").unwrap();
        assert_eq!(renewed.generated, vec!["server certificate"]);
        assert_eq!(renewed.ca_fingerprint, first.ca_fingerprint, "the CA survives");
    }
}
