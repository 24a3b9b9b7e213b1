//! The proxy's OpenSSH certificate authorities, checked with OpenSSH's own tools: the
//! identity certificate `jitgate login` leaves, the `ssh-config` lines, and per-session
//! certificates that a real sshd accepts through `TrustedUserCAKeys`.

mod common;

use std::process::Command;

use common::sshd::{keygen, Sshd};
use common::{Backend, Proxy, TestDb, WALKTHROUGH_PROFILES};

const HOST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHlQGJBmpb5NLlP9uADEd0lSIrwZuI7G9bxNWuYZLp5l";

fn inventory() -> String {
    format!(
        "{WALKTHROUGH_PROFILES}\n[[ssh.hosts]]\nname = \"db-prod-1\"\naddress = \"127.0.0.1:22\"\nlabels = {{ env = \"prod\", role = \"db\" }}\nhost_key = \"{HOST_KEY}\"\n\
         [[ssh.hosts]]\nname = \"db-prod-2\"\naddress = \"127.0.0.1:22\"\nlabels = {{ env = \"prod\", role = \"db\" }}\nhost_key = \"{HOST_KEY}\"\n"
    )
}

/// The SHA256 fingerprint of a public key file, as ssh-keygen prints it.
fn fingerprint(public: &std::path::Path) -> String {
    keygen(&["-l", "-f", public.to_str().unwrap()])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
fn login_leaves_an_identity_certificate_that_openssh_reads_as_intended() {
    let db = TestDb::blocking(Backend::Sqlite);
    let proxy = Proxy::start(db.dir.path(), &db.url, &inventory());
    proxy.add_user("alice", &["dba"]);
    let alice = proxy.login("alice");

    let key = alice.home.join("ssh/id_ed25519");
    let cert = alice.home.join("ssh/id_ed25519-cert.pub");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let shown = keygen(&["-L", "-f", cert.to_str().unwrap()]);
    assert!(
        shown.contains("ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{shown}"
    );
    let ca = fingerprint(&proxy.dir.join("certs/ssh-client-ca.pub"));
    assert!(shown.contains(&format!("Signing CA: ED25519 {ca}")), "{shown}");
    assert!(
        shown.contains(&format!(
            "Public key: ED25519-CERT {}",
            fingerprint(&key.with_extension("pub"))
        )),
        "{shown}"
    );
    let principals: Vec<&str> = shown
        .split("Principals:")
        .nth(1)
        .unwrap()
        .split("Critical Options:")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(principals, ["alice"], "{shown}");
    assert!(shown.contains("Critical Options: (none)"), "{shown}");
    // Valid no longer than the token: its end is the token's expiry (UTC here).
    let token_end = alice.json(&["status"])["identity"]["token_expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let valid = shown
        .lines()
        .find(|l| l.trim_start().starts_with("Valid:"))
        .unwrap()
        .to_owned();
    let to = valid.rsplit(" to ").next().unwrap().trim().to_owned();
    assert_eq!(
        to,
        token_end.trim_end_matches(".000Z").trim_end_matches('Z'),
        "{valid} vs {token_end}"
    );

    // ssh-config: the block for the inventory and the host CA for known_hosts.
    let config = alice.run(&["ssh-config"], None).success().stdout;
    assert!(config.contains("Host db-prod-1 db-prod-2\n"), "{config}");
    assert!(
        config.contains(&format!("    ProxyCommand \"{}\" ssh-proxy %r %h %p\n", common::BIN)),
        "{config}"
    );
    assert!(
        config.contains(&format!("    CertificateFile \"{}\"\n", cert.display())),
        "{config}"
    );
    assert!(
        config.contains(&format!("    IdentityFile \"{}\"\n", key.display())),
        "{config}"
    );
    let bare = |file: &str| {
        let text = std::fs::read_to_string(proxy.dir.join("certs").join(file)).unwrap();
        text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    };
    // The inventory's names, then the jump listener's as `[host]:port`.
    let port = proxy.ssh.rsplit_once(':').unwrap().1;
    assert!(
        config.contains(&format!(
            "@cert-authority db-prod-1,db-prod-2,[127.0.0.1]:{port},[localhost]:{port} {} jitgate host CA\n",
            bare("ssh-host-ca.pub")
        )),
        "{config}"
    );
    let target = alice.run(&["ssh-config", "--target-ca"], None).success().stdout;
    assert_eq!(
        target.trim(),
        format!("{} jitgate target CA", bare("ssh-target-ca.pub"))
    );

    // Logout takes the certificate along with the token; the key stays for the next login.
    alice.run(&["logout"], None).success();
    assert!(!cert.exists() && key.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_keys_and_missing_inventory_get_one_line_answers() {
    let db = TestDb::new(Backend::Sqlite).await;
    let proxy = Proxy::start(db.dir.path(), &db.url, WALKTHROUGH_PROFILES);
    proxy.add_user("alice", &["dba"]);
    let alice = proxy.login("alice");
    alice
        .run(&["ssh-config"], None)
        .fails(1, "the proxy's inventory has no SSH hosts yet");

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&proxy.ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let post = |token: Option<String>, key: String| {
        let mut r = client
            .post(format!("{}/api/v1/ssh/cert", proxy.url))
            .json(&serde_json::json!({ "public_key": key }));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, body) = post(None, HOST_KEY.into()).await;
    assert_eq!(status, 401, "{body}");
    let token = alice.token();
    let (status, body) = post(Some(token.clone()), "ssh-ed25519 not-base64!".into()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an OpenSSH public key line"), "{body}");
    let (status, body) = post(Some(token.clone()), "A".repeat(20_000)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(Some(token.clone()), HOST_KEY.into()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ssh-ed25519-cert-v01@openssh.com"), "{body}");

    // The SSH upgrade: a token, an upgrade request and a host name, each or a JSON reason.
    let connect = |query: &'static str, token: Option<String>, upgrade: bool| {
        let mut r = client.get(format!("{}/ssh/connect{query}", proxy.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if upgrade {
            r = r.header("connection", "Upgrade").header("upgrade", "jitgate-ssh");
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            (status, body["reason"].as_str().unwrap_or_default().to_owned())
        }
    };
    let (status, why) = connect("?host=db-prod-1", None, true).await;
    assert_eq!(status, 401, "{why}");
    let (status, why) = connect("?host=db-prod-1", Some(token.clone()), false).await;
    assert_eq!(status, 400);
    assert!(why.contains("Upgrade: jitgate-ssh"), "{why}");
    let (status, why) = connect("", Some(token.clone()), true).await;
    assert_eq!(
        (status, why.as_str()),
        (400, "/ssh/connect needs ?host=NAME, an inventory name")
    );
    let (status, why) = connect("?host=db-prod-9", Some(token), true).await;
    assert_eq!(
        (status, why.as_str()),
        (404, "no host \"db-prod-9\" in the proxy's SSH inventory")
    );
}

#[test]
fn a_config_with_a_bad_inventory_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[[ssh.hosts]]\nname = \"db\"\naddress = \"10.0.0.1\"\n").unwrap();
    let r = common::run(&["check-config", "--config", config.to_str().unwrap()], &[], None);
    assert_eq!(r.code, 2, "{r:?}");
    // check-config lists every error under a heading line.
    assert!(
        r.stderr.contains(
            "  ssh.hosts[0]: needs host_key (the target's public host key) or host_ca; the proxy never trusts a host key on first use"
        ),
        "{r:?}"
    );
}

/// The per-session key pair the proxy would hold in memory, written out (0600) for `ssh`.
fn session_key(dir: &std::path::Path) -> (russh::keys::ssh_key::PrivateKey, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let key = jitgate::ca::ssh::random_ed25519();
    let path = dir.join("session");
    std::fs::write(
        &path,
        key.to_openssh(russh::keys::ssh_key::LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (key, path)
}

#[test]
fn a_real_sshd_accepts_a_session_certificate_for_its_login_only_and_not_after_it_ends() {
    use jitgate::ca::ssh::{session_cert, SessionCert};
    use jitgate::time::Timestamp;

    let certs = tempfile::tempdir().unwrap();
    let cas = jitgate::ca::ssh::ensure(certs.path()).unwrap();
    let sshd = Sshd::start(&cas.target.public_key().to_openssh().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let (key, key_path) = session_key(dir.path());
    let cert_path = dir.path().join("session-cert.pub");
    let write = |login: &str, now: Timestamp, valid_before: Timestamp| {
        let s = SessionCert {
            login,
            user: "alice",
            grant_id: "grant-1",
            session_id: "s-1",
            valid_before,
            pty: true,
            port_forwarding: false,
        };
        let cert = session_cert(&cas.target, key.public_key(), &s, now).unwrap();
        std::fs::write(&cert_path, format!("{}\n", cert.to_openssh().unwrap())).unwrap();
    };
    let now = Timestamp::now();
    let later = Timestamp::from_millis(now.as_millis() + 600_000);

    // The approved login gets in (root: the one user every test machine has).
    write("root", now, later);
    assert!(sshd.login(&key_path, &cert_path, "root"), "{}", sshd.log());
    assert!(
        sshd.log()
            .contains("Accepted certificate ID \"alice grant=grant-1 session=s-1\""),
        "{}",
        sshd.log()
    );

    // A certificate for another login does not open this one.
    write("postgres", now, later);
    assert!(!sshd.login(&key_path, &cert_path, "root"));
    assert!(sshd.log().contains("not a listed principal"), "{}", sshd.log());

    // Once the grant's end has passed, the certificate opens nothing.
    let an_hour_ago = Timestamp::from_millis(now.as_millis() - 3_600_000);
    write(
        "root",
        an_hour_ago,
        Timestamp::from_millis(an_hour_ago.as_millis() + 1_000),
    );
    assert!(!sshd.login(&key_path, &cert_path, "root"));
    assert!(sshd.log().contains("expired"), "{}", sshd.log());

    // Signed by another CA: refused too.
    let other = jitgate::ca::ssh::ensure(tempfile::tempdir().unwrap().path()).unwrap();
    let s = SessionCert {
        login: "root",
        user: "mallory",
        grant_id: "grant-x",
        session_id: "s-x",
        valid_before: later,
        pty: true,
        port_forwarding: false,
    };
    let forged = session_cert(&other.target, key.public_key(), &s, now).unwrap();
    std::fs::write(&cert_path, format!("{}\n", forged.to_openssh().unwrap())).unwrap();
    assert!(!sshd.login(&key_path, &cert_path, "root"));
}

#[test]
fn stock_ssh_trusts_a_host_certificate_through_the_printed_known_hosts_line() {
    use jitgate::ca::ssh::{host_cert, session_cert, SessionCert};
    use jitgate::time::Timestamp;
    use russh::keys::ssh_key::PublicKey;

    let certs = tempfile::tempdir().unwrap();
    let cas = jitgate::ca::ssh::ensure(certs.path()).unwrap();
    let now = Timestamp::now();
    let later = Timestamp::from_millis(now.as_millis() + 600_000);
    // The host presents a certificate for "db-prod-1" from the proxy's host CA.
    let sshd = Sshd::start_with(&cas.target.public_key().to_openssh().unwrap(), |d| {
        let host = std::fs::read_to_string(d.join("host_ed25519.pub")).unwrap();
        let host = PublicKey::from_openssh(host.trim()).unwrap();
        let cert = host_cert(&cas.host, &host, &["db-prod-1"], later, now).unwrap();
        std::fs::write(
            d.join("host_ed25519-cert.pub"),
            format!("{}\n", cert.to_openssh().unwrap()),
        )
        .unwrap();
        format!("HostCertificate {}/host_ed25519-cert.pub\n", d.display())
    });

    let dir = tempfile::tempdir().unwrap();
    let (key, key_path) = session_key(dir.path());
    let cert_path = dir.path().join("session-cert.pub");
    let s = SessionCert {
        login: "root",
        user: "alice",
        grant_id: "grant-1",
        session_id: "s-1",
        valid_before: later,
        pty: false,
        port_forwarding: false,
    };
    let cert = session_cert(&cas.target, key.public_key(), &s, now).unwrap();
    std::fs::write(&cert_path, format!("{}\n", cert.to_openssh().unwrap())).unwrap();

    // The known_hosts line exactly as `jitgate ssh-config` prints it.
    let known = dir.path().join("known_hosts");
    let host_ca = cas.host.public_key().to_openssh().unwrap();
    std::fs::write(
        &known,
        format!("@cert-authority db-prod-1,db-prod-2 {host_ca} jitgate host CA\n"),
    )
    .unwrap();
    let ssh = |alias: &str, known: &std::path::Path| {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i", key_path.to_str().unwrap()])
            .args(["-o", &format!("CertificateFile={}", cert_path.display())])
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .args(["-o", &format!("UserKnownHostsFile={}", known.display())])
            .args(["-o", &format!("HostKeyAlias={alias}"), "-o", "LogLevel=ERROR"])
            .args(["-p", &sshd.port.to_string(), "root@127.0.0.1", "true"])
            .output()
            .unwrap()
    };
    let ok = ssh("db-prod-1", &known);
    assert!(
        ok.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        sshd.log()
    );
    // For a name the certificate does not carry, strict checking refuses the host.
    let other = ssh("db-prod-2", &known);
    assert!(!other.status.success());
    // And without the @cert-authority line nothing is trusted.
    let empty = dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    assert!(!ssh("db-prod-1", &empty).status.success());
}
