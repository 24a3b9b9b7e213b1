//! The SSH side of the client: a key of its own under `$JITGATE_HOME/ssh/`, the short-lived
//! certificate the proxy signs for it at login, and `jitgate ssh-config`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use russh::keys::ssh_key::{LineEnding, PrivateKey};
use serde_json::{json, Value};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

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
    let mut key = crate::ca::ssh::random_ed25519();
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
    // The key without the proxy's comment, which the line's own comment replaces.
    let key = |field: &str| {
        c[field]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    if target_ca {
        // One line for the file sshd's TrustedUserCAKeys names.
        println!("{} jitgate target CA", key("target_ca"));
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
    // The absolute path, so the block works whatever PATH ssh runs with.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "jitgate".into());
    let jump = &c["jump"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let jump_names = strings(&jump["names"]);
    let mut patterns: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    patterns.extend(strings(&jump["known_hosts"]));
    println!("# ~/.ssh/config: reach these hosts through jitgate");
    println!("Host {}", hosts.join(" "));
    println!("    ProxyCommand \"{exe}\" ssh-proxy %r %h %p");
    println!("    IdentityFile \"{}\"", f.key.display());
    println!("    CertificateFile \"{}\"", f.cert.display());
    println!("    IdentitiesOnly yes");
    if !jump_names.is_empty() {
        println!();
        println!(
            "# or through the jump listener: ssh -J USER@{} LOGIN@HOST",
            jump["address"].as_str().unwrap_or_default()
        );
        println!("Host {}", jump_names.join(" "));
        println!("    IdentityFile \"{}\"", f.key.display());
        println!("    CertificateFile \"{}\"", f.cert.display());
    }
    println!();
    println!("# ~/.ssh/known_hosts: the proxy answers for these hosts with certificates from its host CA");
    println!(
        "@cert-authority {} {} jitgate host CA",
        patterns.join(","),
        key("host_ca")
    );
    Ok(())
}

/// Big enough for a few SSH packets per system call.
const COPY_BUFFER: usize = 256 * 1024;

type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// Standard input and output for the relay. ssh hands a ProxyCommand pipes; read and
/// written non-blocking through the reactor they cost one system call per chunk, where
/// tokio's general stdio would hand every chunk to a blocking thread.
fn stdio() -> (Reader, Writer) {
    use std::os::fd::AsFd;
    let stdin: Reader = match std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(tokio::net::unix::pipe::Receiver::from_owned_fd)
    {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdin()),
    };
    let stdout: Writer = match std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(tokio::net::unix::pipe::Sender::from_owned_fd)
    {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdout()),
    };
    (stdin, stdout)
}

/// `jitgate ssh-proxy LOGIN HOST PORT`, the ProxyCommand: opens an HTTPS connection to
/// the proxy, upgrades it to carry one SSH session for HOST, and pipes stdio through it.
/// The proxy terminates that session itself; LOGIN and PORT are only checked here.
pub async fn ssh_proxy(login: &str, host: &str, port: u16) -> CliResult {
    let (api, session) = Api::from_session().await?;
    if port != 22 {
        eprintln!("jitgate: note: the proxy connects {host} on the port its inventory names; port {port} is ignored");
    }
    // The target login travels inside the SSH session, where the proxy decides on it.
    let _ = login;
    let http = super::client::http_client(session.ca_pem.as_deref(), None)?;
    let mut url = reqwest::Url::parse(api.proxy())
        .map_err(|e| CliError::Refused(format!("the saved proxy URL is not valid: {e}")))?;
    url.set_path("/ssh/connect");
    url.query_pairs_mut().append_pair("host", host);
    let resp = http
        .get(url)
        .bearer_auth(&session.token)
        .header(reqwest::header::CONNECTION, "Upgrade")
        .header(reqwest::header::UPGRADE, "jitgate-ssh")
        .send()
        .await
        .map_err(|e| CliError::Refused(format!("cannot reach the proxy at {}: {e}", api.proxy())))?;
    if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        let reason = body["reason"].as_str().unwrap_or("no reason given");
        return Err(CliError::Refused(format!(
            "the proxy refused the SSH connection ({status}): {reason}"
        )));
    }
    let upgraded = resp
        .upgrade()
        .await
        .map_err(|e| CliError::Refused(format!("the proxy did not switch to SSH: {e}")))?;
    let (from_proxy, mut to_proxy) = tokio::io::split(upgraded);
    let (stdin, mut stdout) = stdio();
    let up = async {
        let mut stdin = tokio::io::BufReader::with_capacity(COPY_BUFFER, stdin);
        let _ = tokio::io::copy_buf(&mut stdin, &mut to_proxy).await;
        let _ = to_proxy.shutdown().await;
    };
    let down = async {
        let mut from_proxy = tokio::io::BufReader::with_capacity(COPY_BUFFER, from_proxy);
        let copied = tokio::io::copy_buf(&mut from_proxy, &mut stdout).await;
        let _ = stdout.flush().await;
        copied
    };
    // ssh closes our stdin only when it is done; the proxy closing the stream ends the
    // session either way, so that direction decides when this process exits.
    tokio::pin!(down);
    let copied = tokio::select! {
        copied = &mut down => copied,
        _ = up => match tokio::time::timeout(Duration::from_secs(5), &mut down).await {
            Ok(copied) => copied,
            Err(_) => Ok(0),
        },
    };
    copied
        .map(|_| ())
        .map_err(|e| CliError::Refused(format!("the SSH stream broke: {e}")))
}
