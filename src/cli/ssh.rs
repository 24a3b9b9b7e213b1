//! The SSH side of the client: a key of its own under `$JITGATE_HOME/ssh/`, the short-lived
//! certificate the proxy signs for it at login, and `jitgate ssh-config`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde_json::{json, Value};
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use super::client::{home, Api};
use super::{CliError, CliResult, Output};

const KEY_FILE: &str = "id_ed25519";

pub struct SshFiles {
    pub key: PathBuf,
    pub cert: PathBuf,
}

pub fn files() -> Result<SshFiles, CliError> {
    let dir = home()?.join("ssh");
    Ok(SshFiles {
        key: dir.join(KEY_FILE),
        cert: dir.join(format!("{KEY_FILE}-cert.pub")),
    })
}

fn write(path: &PathBuf, text: &str, mode: u32) -> Result<(), CliError> {
    let fail = |e: std::io::Error| CliError::Refused(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    // A fresh file, so `mode` applies: a leftover one would keep its own permissions.
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    fs::rename(&tmp, path).map_err(fail)
}

/// The client's SSH key, made on first use. It never leaves this machine; only its
/// public half goes to the proxy to be certified.
fn ensure_key(f: &SshFiles) -> Result<PrivateKey, CliError> {
    match fs::read_to_string(&f.key) {
        Ok(text) => {
            return PrivateKey::from_openssh(&text)
                .map_err(|e| CliError::Refused(format!("{} is not an OpenSSH private key: {e}", f.key.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Unreadable is not absent: a key that is there is never replaced.
        Err(e) => return Err(CliError::Refused(format!("cannot read {}: {e}", f.key.display()))),
    }
    let dir = f.key.parent().expect("the key lives in a directory");
    fs::create_dir_all(dir).map_err(|e| CliError::Refused(format!("cannot create {}: {e}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| CliError::Refused(format!("cannot protect {}: {e}", dir.display())))?;
    let mut key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .map_err(|e| CliError::Refused(format!("cannot make an SSH key: {e}")))?;
    key.set_comment("jitgate");
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| CliError::Refused(e.to_string()))?;
    write(&f.key, &text, 0o600)?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| CliError::Refused(e.to_string()))?;
    write(&f.key.with_extension("pub"), &format!("{public}\n"), 0o644)?;
    Ok(key)
}

/// Has the proxy certify this client's key for as long as the current token lives.
pub async fn renew_cert(api: &Api) -> Result<(SshFiles, String), CliError> {
    let f = files()?;
    let key = ensure_key(&f)?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| CliError::Refused(e.to_string()))?;
    let resp: Value = api.post("/api/v1/ssh/cert", json!({ "public_key": public })).await?;
    let cert = resp["certificate"]
        .as_str()
        .ok_or_else(|| CliError::Refused("the proxy's answer has no certificate".into()))?;
    write(&f.cert, &format!("{cert}\n"), 0o644)?;
    let until = resp["valid_before"].as_str().unwrap_or("?").to_owned();
    Ok((f, until))
}

/// Removes the SSH certificate at logout; the key stays for the next login.
pub fn forget_cert() -> Result<(), CliError> {
    let f = files()?;
    match fs::remove_file(&f.cert) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::Refused(format!("cannot remove {}: {e}", f.cert.display()))),
    }
}

/// `jitgate ssh-config`: the `~/.ssh/config` block and known_hosts line for the proxy's
/// inventory, or with `--target-ca` the line a target's sshd trusts.
pub async fn ssh_config(target_ca: bool, out: Output) -> CliResult {
    let (api, _) = Api::from_session().await?;
    let c: Value = api.get("/api/v1/ssh/config").await?;
    if matches!(out, Output::Json) {
        super::table::json(&c);
        return Ok(());
    }
    let text = |field: &str| c[field].as_str().unwrap_or_default().to_owned();
    if target_ca {
        // One line for the file sshd's TrustedUserCAKeys names.
        println!("{} jitgate target CA", text("target_ca"));
        return Ok(());
    }
    let hosts: Vec<&str> = c["hosts"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
        .unwrap_or_default();
    if hosts.is_empty() {
        return Err(CliError::Refused(
            "the proxy's inventory has no SSH hosts yet ([[ssh.hosts]] in its config)".into(),
        ));
    }
    let f = files()?;
    eprintln!("jitgate: note: this version has no SSH relay yet (`jitgate ssh-proxy`); the block is ready for it");
    println!("# ~/.ssh/config: reach these hosts through jitgate");
    println!("Host {}", hosts.join(" "));
    println!("    ProxyCommand jitgate ssh-proxy %r %h %p");
    println!("    IdentityFile \"{}\"", f.key.display());
    println!("    CertificateFile \"{}\"", f.cert.display());
    println!("    IdentitiesOnly yes");
    println!();
    println!("# ~/.ssh/known_hosts: the proxy answers for these hosts with certificates from its host CA");
    println!(
        "@cert-authority {} {} jitgate host CA",
        hosts.join(","),
        text("host_ca")
    );
    Ok(())
}
