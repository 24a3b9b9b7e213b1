//! SSH through the proxy with stock OpenSSH: `ssh`, `scp`, `sftp` and `rsync` configured
//! only by what `jitgate ssh-config` prints, a real sshd as the target, and the proxy
//! terminating every session with per-session certificates and cutting it when the grant
//! ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::{eventually, Backend, Proxy, TestDb, User};

const PROFILES: &str = r#"
admins = ["group:security"]

[[profiles]]
name = "db-root"
description = "Root on the production database hosts"
max_duration = "2h"
requesters = ["group:dba"]
approvals_required = 0
ssh = { hosts = { env = "prod", role = "db" }, logins = ["root"] }

[[profiles]]
name = "db-postgres"
max_duration = "2h"
requesters = ["group:dba"]
approvals_required = 0
ssh = { hosts = { env = "prod", role = "db" }, logins = ["postgres"] }

[[profiles]]
name = "db-tunnel"
max_duration = "2h"
requesters = ["group:tunnel"]
approvals_required = 0
ssh = { host_names = ["db-prod-1"], logins = ["root"], port_forwarding = true }
"#;

/// A proxy in front of one real sshd (`db-prod-1`), plus a second inventory entry whose
/// pinned host key is wrong (`db-prod-9`, the same sshd).
struct Stand {
    _db: TestDb,
    sshd: Sshd,
    proxy: Proxy,
}

fn stand() -> Stand {
    stand_with("")
}

/// The same, with more `ssh.…` settings (dotted keys, before any table).
fn stand_with(ssh_settings: &str) -> Stand {
    let db = TestDb::blocking(Backend::Sqlite);
    // The CAs exist before the proxy starts, so the target can trust the target CA first.
    let certs = db.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let cas = jitgate::ca::ssh::ensure(&certs).unwrap();
    let sshd = Sshd::start(&cas.target.public_key().to_openssh().unwrap());
    let host_key = std::fs::read_to_string(sshd.dir.path().join("host_ed25519.pub")).unwrap();
    let wrong = jitgate::ca::ssh::random_ed25519().public_key().to_openssh().unwrap();
    let inventory = format!(
        "{ssh_settings}\n{PROFILES}\n[[ssh.hosts]]\nname = \"db-prod-1\"\naddress = \"127.0.0.1:{port}\"\n\
         labels = {{ env = \"prod\", role = \"db\" }}\nhost_key = \"{key}\"\n\
         [[ssh.hosts]]\nname = \"db-prod-9\"\naddress = \"127.0.0.1:{port}\"\n\
         labels = {{ env = \"prod\", role = \"db\" }}\nhost_key = \"{wrong}\"\n",
        port = sshd.port,
        key = host_key.trim(),
    );
    let proxy = Proxy::start(db.dir.path(), &db.url, &inventory);
    Stand { _db: db, sshd, proxy }
}

/// A user's OpenSSH set-up, exactly as `jitgate ssh-config` prints it.
struct Client {
    user: User,
    config: PathBuf,
}

impl Client {
    fn new(stand: &Stand, name: &str) -> Client {
        Client::in_group(stand, name, "dba")
    }

    fn in_group(stand: &Stand, name: &str, group: &str) -> Client {
        stand.proxy.add_user(name, &[group]);
        let user = stand.proxy.login(name);
        let printed = user.run(&["ssh-config"], None).success().stdout;
        let (known, config): (Vec<&str>, Vec<&str>) = printed.lines().partition(|l| l.starts_with("@cert-authority"));
        assert_eq!(known.len(), 1, "{printed}");
        let known_hosts = user.home.join("known_hosts");
        std::fs::write(&known_hosts, format!("{}\n", known[0])).unwrap();
        let config_path = user.home.join("ssh_config");
        // Only what a user would add: where their known_hosts file is, and no prompts.
        std::fs::write(
            &config_path,
            format!(
                "{}\nHost *\n    UserKnownHostsFile \"{}\"\n    GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n    BatchMode yes\n",
                config.join("\n"),
                known_hosts.display()
            ),
        )
        .unwrap();
        Client {
            user,
            config: config_path,
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("JITGATE_HOME", &self.user.home).stdin(Stdio::null());
        match program {
            "rsync" => {
                c.args(["-e", &format!("ssh -F {}", self.config.display())]);
            }
            _ => {
                c.args(["-F", self.config.to_str().unwrap()]);
            }
        }
        c
    }

    fn ssh(&self, args: &[&str]) -> Output {
        self.command("ssh").args(args).output().unwrap()
    }

    fn request(&self, profile: &str, duration: &str) -> String {
        let out = self
            .user
            .json(&["request", profile, "--reason", "INC-1", "--for", duration]);
        out["grant_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no grant in {out}"))
            .to_owned()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

#[test]
fn without_a_grant_the_session_is_refused_with_the_profiles_that_would_grant_it() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    // The harness's own check that sshd listens is a connection too.
    let before = stand.sshd.log().matches("Connection from").count();
    let out = alice.ssh(&["root@db-prod-1", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("jitgate: no active grant allows root@db-prod-1. Profiles that would: db-root."),
        "{err}"
    );
    assert!(err.contains("jitgate request db-root"), "{err}");
    // Nothing reached the target.
    let log = stand.sshd.log();
    assert!(!log.contains("Accepted certificate"), "{log}");
    // scp and sftp show the same message.
    let scp = alice
        .command("scp")
        .args(["root@db-prod-1:/etc/hostname", "/dev/null"])
        .output()
        .unwrap();
    assert!(!scp.status.success());
    assert!(
        text(&scp.stderr).contains("no active grant allows root@db-prod-1"),
        "{}",
        text(&scp.stderr)
    );
    // Not even a key exchange, checked last so that sshd has had time to log one: the
    // proxy starts it ahead of the login only for a user with a grant on the host.
    let log = stand.sshd.log();
    assert_eq!(log.matches("Connection from").count(), before, "{log}");
}

#[test]
fn commands_run_with_their_exit_codes_and_the_target_sees_a_session_certificate() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    let grant = alice.request("db-root", "1h");

    // The harness's own check that sshd listens is a connection too.
    let before = stand.sshd.log().matches("Connection from").count();
    let out = alice.ssh(&["root@db-prod-1", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    // The session came through the TLS listener's upgrade, its socket taken from hyper
    // and moved to the session's runtime, not left behind hyper and another thread.
    let log = stand.proxy.log();
    assert!(!log.contains("did not come from the TLS listener"), "{log}");
    // The target was reached once for the session: the key exchange begun while the
    // client authenticated is the connection the session logged in on.
    let log = stand.sshd.log();
    assert_eq!(log.matches("Connection from").count(), before + 1, "{log}");

    // A signal ends the remote command as it would directly.
    let out = alice.ssh(&["root@db-prod-1", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));

    let log = stand.sshd.log();
    let accepted = log
        .lines()
        .find(|l| l.contains("Accepted certificate ID"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        accepted.contains(&format!("ID \"alice grant={grant} session=ssh-")),
        "{accepted}"
    );
    assert!(log.contains("Accepted publickey for root from 127.0.0.1"), "{log}");

    // The login the profile does not allow is refused, naming the profile that would.
    let out = alice.ssh(&["postgres@db-prod-1", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no active grant allows postgres@db-prod-1. Profiles that would: db-postgres."),
        "{}",
        text(&out.stderr)
    );
    // The key exchange begun ahead of that login (alice holds a grant on the host) never
    // logged in: only root ever did.
    let log = stand.sshd.log();
    assert!(!log.contains("for postgres"), "{log}");
    assert_eq!(log.matches("Accepted publickey for root").count(), 2, "{log}");

    // The audit log names the session and the command.
    let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
    assert!(audit.contains("\"ssh.session.start\""), "{audit}");
    assert!(audit.contains("echo out; echo err >&2; exit 7"), "{audit}");
    assert!(
        eventually(Duration::from_secs(5), || {
            let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
            audit.contains("\"ssh.session.end\"").then_some(())
        })
        .is_some(),
        "no session end event"
    );
}

#[test]
fn a_target_with_the_wrong_host_key_is_refused() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    alice.request("db-root", "1h");
    let out = alice.ssh(&["root@db-prod-9", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("jitgate: refused to connect to db-prod-9: its host key SHA256:"),
        "{err}"
    );
    assert!(err.contains("is not the one pinned in the inventory"), "{err}");
    assert!(!stand.sshd.log().contains("Accepted certificate"));
}

#[test]
fn scp_sftp_and_rsync_move_files_both_ways_intact() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    alice.request("db-root", "1h");
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("big.bin");
    // 64 MiB of incompressible data.
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    let mut out = std::fs::File::create(&local).unwrap();
    std::io::copy(&mut std::io::Read::take(&mut f, 64 << 20), &mut out).unwrap();
    drop(out);
    let want = sha256(&local);
    let remote = work.path().join("remote.bin");
    let back = work.path().join("back.bin");

    let scp = |args: &[&str]| {
        let out = alice.command("scp").args(args).output().unwrap();
        assert!(out.status.success(), "scp {args:?}: {}", text(&out.stderr));
    };
    scp(&[local.to_str().unwrap(), &format!("root@db-prod-1:{}", remote.display())]);
    assert_eq!(sha256(&remote), want, "upload");
    scp(&[&format!("root@db-prod-1:{}", remote.display()), back.to_str().unwrap()]);
    assert_eq!(sha256(&back), want, "download");

    // sftp: put a file and list it.
    let batch = work.path().join("batch");
    let put = work.path().join("put.txt");
    std::fs::write(&put, "hello sftp\n").unwrap();
    let dest = work.path().join("sftp-dir");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(
        &batch,
        format!(
            "put {} {}/put.txt\nls -1 {}\n",
            put.display(),
            dest.display(),
            dest.display()
        ),
    )
    .unwrap();
    let out = alice
        .command("sftp")
        .args(["-b", batch.to_str().unwrap(), "root@db-prod-1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("put.txt"), "{}", text(&out.stdout));
    assert_eq!(std::fs::read_to_string(dest.join("put.txt")).unwrap(), "hello sftp\n");
    // File operations are in the audit log.
    let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
    let written = format!("\"file\":{{\"op\":\"write\",\"path\":\"{}/put.txt\"}}", dest.display());
    assert!(audit.contains(&written), "{audit}");

    // rsync over the same ssh.
    let synced = work.path().join("synced.bin");
    let out = alice
        .command("rsync")
        .args([local.to_str().unwrap(), &format!("root@db-prod-1:{}", synced.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "rsync: {}", text(&out.stderr));
    assert_eq!(sha256(&synced), want, "rsync");
}

#[test]
fn the_jump_listener_reaches_the_same_hosts_with_ssh_j() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    let jump = format!("alice@{}", stand.proxy.ssh);
    let out = alice.ssh(&["-J", &jump, "root@db-prod-1", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no active grant allows root@db-prod-1"),
        "{}",
        text(&out.stderr)
    );

    alice.request("db-root", "1h");
    let out = alice.ssh(&["-J", &jump, "root@db-prod-1", "echo through the jump"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "through the jump\n");

    // A name outside the inventory is refused at the jump listener.
    let out = alice.ssh(&["-J", &jump, "root@db-prod-7", "true"]);
    assert!(!out.status.success());
    assert!(!stand.sshd.log().contains("db-prod-7"));
}

#[test]
fn an_interactive_shell_gets_a_terminal() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    alice.request("db-root", "1h");
    // `script` gives ssh a terminal of its own, as a person's would be.
    let ssh = format!("ssh -F {} -tt root@db-prod-1", alice.config.display());
    let mut child = Command::new("script")
        .args(["-qec", &ssh, "/dev/null"])
        .env("JITGATE_HOME", &alice.user.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"tty; echo answer=$((6*7)); stty size; exit 3\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let shown = text(&out.stdout);
    assert!(shown.contains("answer=42"), "{shown}");
    assert!(shown.contains("/dev/pts/"), "no terminal on the target: {shown}");
    assert_eq!(out.status.code(), Some(3), "{shown}");

    // Recorded as asciicast v2: output only, its hash in the session's end event.
    let sessions = eventually(Duration::from_secs(5), || {
        let s = stand.proxy.json_admin(&["audit", "sessions"]);
        (s[0]["end"].is_string()).then_some(s)
    })
    .expect("the session ended in the audit log");
    let s = &sessions[0];
    assert_eq!(
        (s["user"].as_str(), s["host"].as_str(), s["login"].as_str()),
        (Some("alice"), Some("db-prod-1"), Some("root"))
    );
    let rec = &s["recordings"][0];
    let file = PathBuf::from(rec["file"].as_str().unwrap_or_else(|| panic!("{s}")));
    assert!(
        file.starts_with(stand.proxy.dir.join("data/recordings")),
        "{}",
        file.display()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(rec["sha256"].as_str().unwrap(), sha256(&file));
    let cast = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = cast.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["version"], 2);
    assert!(lines[0]["width"].as_u64().unwrap() > 0);
    let output: String = lines[1..]
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert!(output.contains("answer=42"), "{output}");
    assert!(
        lines[1..].iter().all(|e| e[1] != "i"),
        "input recorded without record_input"
    );
    // A command run with a terminal is recorded too.
    let out = alice.ssh(&["-tt", "root@db-prod-1", "echo recorded-exec"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sessions = eventually(Duration::from_secs(5), || {
        let s = stand.proxy.json_admin(&["audit", "sessions"]);
        s[1]["end"].is_string().then_some(s)
    })
    .expect("the second session ended");
    let cast = std::fs::read_to_string(sessions[1]["recordings"][0]["file"].as_str().unwrap()).unwrap();
    assert!(cast.contains("recorded-exec"), "{cast}");
    // The table names the recording too.
    let table = stand.proxy.admin(&["audit", "sessions"], None).success().stdout;
    assert!(table.starts_with("USER"), "{table}");
    assert!(table.contains(&file.display().to_string()), "{table}");
}

/// Starts `ssh … sleep 60` and waits until the remote command runs.
fn long_session(alice: &Client, sshd: &Sshd) -> std::process::Child {
    use std::io::BufRead;
    let mut child = alice
        .command("ssh")
        .args(["root@db-prod-1", "echo started; sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(15));
    assert_eq!(
        first.as_deref(),
        Ok("started"),
        "the session did not start: {}",
        sshd.log()
    );
    child
}

/// Waits for `child` to exit; how long after `since` it did (a panic if before), with its
/// output.
fn exit_after(mut child: std::process::Child, since: Instant) -> (Duration, Output) {
    // Polled every millisecond: the measurement must not be coarser than what it checks.
    let limit = Instant::now() + Duration::from_secs(15);
    let ended = loop {
        if child.try_wait().unwrap().is_some() {
            break Instant::now();
        }
        assert!(Instant::now() < limit, "ssh was not cut");
        std::thread::sleep(Duration::from_millis(1));
    };
    let out = child.wait_with_output().unwrap();
    // Timestamps carry milliseconds: allow that much rounding, no more.
    assert!(
        ended + Duration::from_millis(2) >= since,
        "ssh ended {:?} early: {}",
        since - ended,
        text(&out.stderr)
    );
    (ended.saturating_duration_since(since), out)
}

#[test]
fn revoking_the_grant_cuts_the_session_at_once() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    let grant = alice.request("db-root", "1h");
    stand.proxy.add_user("sam", &["security"]);
    let sam = stand.proxy.login("sam");
    let child = long_session(&alice, &stand.sshd);

    sam.run(&["revoke", &grant, "--reason", "done"], None).success();
    let revoked = Instant::now();
    let (took, out) = exit_after(child, revoked);
    let err = text(&out.stderr);
    eprintln!("ssh ended {took:?} after the revocation returned");
    assert!(
        took < Duration::from_millis(100),
        "cut {took:?} after the revocation returned"
    );
    assert!(err.contains(&format!("jitgate: grant {grant} was revoked at")), "{err}");
    assert!(err.contains("request again with: jitgate request db-root"), "{err}");
}

#[test]
fn logging_out_cuts_that_logins_sessions_at_once() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    let grant = alice.request("db-root", "1h");
    let child = long_session(&alice, &stand.sshd);

    alice.user.run(&["logout"], None).success();
    let logged_out = Instant::now();
    let (took, out) = exit_after(child, logged_out);
    let err = text(&out.stderr);
    eprintln!("ssh ended {took:?} after the logout returned");
    assert!(
        took < Duration::from_millis(100),
        "cut {took:?} after the logout returned"
    );
    assert!(err.contains("jitgate: your login ended at"), "{err}");
    assert!(err.contains("log in again with: jitgate login"), "{err}");
    // The grant itself goes on: a new login reaches the host again.
    let again = stand.proxy.login("alice");
    assert_eq!(again.json(&["grants"])[0]["id"], grant.as_str());
    assert_eq!(again.json(&["grants"])[0]["state"], "active");
    let back = alice.ssh(&["root@db-prod-1", "echo back"]);
    assert!(back.status.success(), "{}", text(&back.stderr));
    assert_eq!(text(&back.stdout).trim(), "back");
}

#[test]
fn disabling_the_user_revokes_their_grants_and_cuts_their_sessions() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    let grant = alice.request("db-root", "1h");
    let child = long_session(&alice, &stand.sshd);

    // The admin CLI writes to the store beside the running proxy, as an operator would.
    let out = stand.proxy.admin(&["users", "disable", "alice"], None).success().stdout;
    let disabled = Instant::now();
    assert!(out.contains(&format!("Revoked their active grants ({grant})")), "{out}");
    let (took, out) = exit_after(child, disabled);
    let err = text(&out.stderr);
    eprintln!("ssh ended {took:?} after the user was disabled");
    // The proxy learns of it at its next look at the store, at most a second apart.
    assert!(
        took < Duration::from_millis(1500),
        "cut {took:?} after the user was disabled"
    );
    assert!(err.contains(&format!("jitgate: grant {grant} was revoked at")), "{err}");

    let events = stand.proxy.admin(&["audit", "export"], None).success().stdout;
    let revoked: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["action"] == "grant.revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{events}");
    assert_eq!(revoked[0]["grant_id"], grant.as_str(), "{}", revoked[0]);
    assert_eq!(revoked[0]["reason"], "user disabled", "{}", revoked[0]);
    assert_eq!(revoked[0]["actor"], "admin-cli", "{}", revoked[0]);
    // And the next session does not start: the user is gone, whatever grant they had.
    let again = alice.ssh(&["root@db-prod-1", "true"]);
    assert!(!again.status.success(), "{}", text(&again.stderr));
}

#[test]
fn an_interactive_session_is_warned_then_cut_when_the_grant_expires() {
    use std::io::BufRead;
    let stand = stand_with("ssh.expiry_warning = \"3s\"");
    let alice = Client::new(&stand, "alice");
    let grant = alice.request("db-root", "5s");
    let expires = alice.user.json(&["grants"])[0]["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let expires = jitgate::time::Timestamp::parse_rfc3339(&expires).unwrap();
    // A terminal session, as a person at their keyboard has.
    let ssh = format!(
        "ssh -F {} -tt root@db-prod-1 'echo started; sleep 60'",
        alice.config.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &ssh, "/dev/null"])
        .env("JITGATE_HOME", &alice.user.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.trim().to_owned());
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(15)).as_deref(), Ok("started"));
    let at_expiry = Instant::now() + jitgate::time::Timestamp::now().until(expires);
    let (took, _) = exit_after(child, at_expiry);
    let shown: Vec<String> = rx.try_iter().collect();
    eprintln!("ssh ended {took:?} after the grant's expiry");
    assert!(took < Duration::from_millis(100), "cut {took:?} after the expiry");
    let warned = shown
        .iter()
        .position(|l| l.starts_with(&format!("jitgate: grant {grant} expires at")))
        .unwrap_or_else(|| panic!("no warning in {shown:?}"));
    assert!(
        shown[warned].contains("request again with: jitgate request db-root"),
        "{shown:?}"
    );
    let cut = shown
        .iter()
        .position(|l| l.starts_with(&format!("jitgate: grant {grant} expired at")))
        .unwrap_or_else(|| panic!("no cut line in {shown:?}"));
    assert!(warned < cut);
    // The end event says the session was cut, and why.
    let ended = eventually(Duration::from_secs(5), || {
        let sessions = stand.proxy.json_admin(&["audit", "sessions"]);
        sessions[0]["cut"].as_str().map(str::to_owned)
    });
    assert!(ended.is_some_and(|c| c.starts_with("grant expired at")));
}

#[test]
fn a_transfer_in_full_flow_is_cut_when_the_grant_expires() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    let grant = alice.request("db-root", "4s");
    let expires = alice.user.json(&["grants"])[0]["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let expires = jitgate::time::Timestamp::parse_rfc3339(&expires).unwrap();
    // An upload that never ends: every window along the way is full when the cut comes.
    let child = alice
        .command("ssh")
        .args(["root@db-prod-1", "cat > /dev/null"])
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let at_expiry = Instant::now() + jitgate::time::Timestamp::now().until(expires);
    let (took, out) = exit_after(child, at_expiry);
    eprintln!("the upload ended {took:?} after the grant's expiry");
    assert!(took < Duration::from_millis(100), "cut {took:?} after the expiry");
    let err = text(&out.stderr);
    assert!(err.contains(&format!("jitgate: grant {grant} expired at")), "{err}");
    let moved = eventually(Duration::from_secs(5), || {
        let s = stand.proxy.json_admin(&["audit", "sessions"]);
        s[0]["bytes_up"].as_u64()
    })
    .expect("the session's end is recorded");
    assert!(moved > 1 << 20, "only {moved} bytes moved before the cut");
}

#[test]
fn a_client_that_writes_but_never_reads_is_cut_at_once() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    let grant = alice.request("db-root", "1h");
    // `cat` echoes an endless upload into a pipe nobody reads: every window and queue on
    // both legs fills, the one towards the target included.
    let child = alice
        .command("ssh")
        .args(["root@db-prod-1", "cat"])
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let moving = eventually(Duration::from_secs(10), || {
        let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
        audit.contains("\"ssh.session.start\"").then_some(())
    });
    assert!(moving.is_some(), "the session did not start: {}", stand.sshd.log());
    std::thread::sleep(Duration::from_secs(2));
    stand.proxy.add_user("sam", &["security"]);
    stand.proxy.login("sam").run(&["revoke", &grant], None).success();
    let (took, _) = exit_after(child, Instant::now());
    eprintln!("the jammed session ended {took:?} after the revocation returned");
    assert!(took < Duration::from_millis(100), "cut {took:?} after the revocation");
    let cut = eventually(Duration::from_secs(5), || {
        let sessions = stand.proxy.json_admin(&["audit", "sessions"]);
        sessions[0]["cut"].as_str().map(str::to_owned)
    });
    assert!(cut.is_some_and(|c| c.starts_with("grant was revoked at")));
}

// ---- bad input ----

#[test]
fn an_unknown_host_gets_a_one_line_answer() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    alice.request("db-root", "1h");
    let out = alice.user.run(&["ssh-proxy", "root", "db-prod-7", "22"], None);
    let out = out.fails(1, "no host \"db-prod-7\" in the proxy's SSH inventory");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[test]
fn channel_requests_the_profile_does_not_allow_are_refused() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    alice.request("db-root", "1h");
    // A subsystem other than sftp.
    let out = alice.ssh(&["-s", "root@db-prod-1", "not-sftp"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("subsystem request failed"),
        "{}",
        text(&out.stderr)
    );
    // Port forwarding, local (-W is a direct-tcpip channel) and remote, with a profile
    // that does not allow it.
    let out = alice.ssh(&["-W", "127.0.0.1:22", "root@db-prod-1"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    // Stock ssh shows the proxy's reason after OpenSSH's own.
    assert!(
        err.contains(
            "open failed: administratively prohibited: jitgate: port forwarding is not allowed by grant grant-"
        ),
        "{err}"
    );
    assert!(err.contains("(profile db-root)"), "{err}");
    // A refused -R has no text of its own in the protocol: the session's stderr says why.
    let out = alice.ssh(&["-R", "0:127.0.0.1:22", "root@db-prod-1", "echo ran"]);
    assert_eq!(text(&out.stdout), "ran\n", "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("remote port forwarding failed"), "{err}");
    assert!(
        err.contains("jitgate: port forwarding is not allowed by grant grant-")
            && err.contains("; remote forward localhost:0 refused"),
        "{err}"
    );
    let out = alice.ssh(&[
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "0:127.0.0.1:22",
        "root@db-prod-1",
        "true",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("remote port forwarding failed"), "{err}");
    let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
    assert_eq!(audit.matches("\"ssh.forward.denied\"").count(), 3, "{audit}");
    // A profile that allows forwarding lets -W through to the target's own sshd.
    let tina = Client::in_group(&stand, "tina", "tunnel");
    tina.request("db-tunnel", "1h");
    let out = tina.ssh(&["-W", &format!("127.0.0.1:{}", stand.sshd.port), "root@db-prod-1"]);
    assert!(
        text(&out.stdout).starts_with("SSH-2.0-OpenSSH"),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // And -R: the target listens, and what connects there comes back through the client.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = tina.ssh(&[
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        &format!("127.0.0.1:{port}:127.0.0.1:{}", stand.sshd.port),
        "root@db-prod-1",
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; head -c 7 <&3"),
    ]);
    assert_eq!(text(&out.stdout), "SSH-2.0", "{}", text(&out.stderr));
    // X11 and agent forwarding are never passed on, and the session still works.
    let out = alice.ssh(&[
        "-o",
        "ForwardX11=yes",
        "-o",
        "ForwardAgent=yes",
        "root@db-prod-1",
        "echo ${SSH_AUTH_SOCK:-none} ${DISPLAY:-none}",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "none none\n");
}

#[test]
fn a_client_that_stops_reading_holds_up_only_itself() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    alice.request("db-root", "1h");
    // Output without end into a pipe nobody reads: the windows fill and stay full.
    let stuck = alice
        .command("ssh")
        .args(["root@db-prod-1", "cat /dev/zero"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = stand.proxy.rss_kib();
    let started = Instant::now();
    let out = alice.ssh(&["root@db-prod-1", "echo still here"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "still here\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = stand.proxy.rss_kib();
    eprintln!("proxy RSS with a stalled session: {before} KiB, a second later {after} KiB");
    // Bounded buffers: the stalled session holds a few windows' worth, not the stream.
    assert!(after < 64 * 1024, "proxy RSS {after} KiB");
    assert!(after < before + 8 * 1024, "RSS grew from {before} to {after} KiB");

    // Revoking the grant cuts even the session whose client reads nothing: the proxy drops
    // its socket rather than wait for a polite close that cannot get through.
    let grant = alice.user.json(&["grants"])[0]["id"].as_str().unwrap().to_owned();
    stand.proxy.add_user("sam", &["security"]);
    stand.proxy.login("sam").run(&["revoke", &grant], None).success();
    let (took, _) = exit_after(stuck, Instant::now());
    eprintln!("the stalled session ended {took:?} after the revocation returned");
    assert!(took < Duration::from_millis(100), "cut {took:?} after the revocation");
    // Every session that started has its end in the audit log.
    let balanced = eventually(Duration::from_secs(10), || {
        let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
        let starts = audit.matches("\"ssh.session.start\"").count();
        let ends = audit.matches("\"ssh.session.end\"").count();
        (starts == 2 && ends == 2).then_some(())
    });
    assert!(
        balanced.is_some(),
        "{}",
        stand.proxy.admin(&["audit", "export"], None).stdout
    );
}

#[test]
fn a_client_that_does_not_authenticate_in_time_is_dropped() {
    use std::io::{Read, Write};
    let stand = stand_with("ssh.login_grace = \"2s\"");
    for send in [&b""[..], b"SSH-2.0-slow\r\n"] {
        let mut tcp = std::net::TcpStream::connect(&stand.proxy.ssh).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(send).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(_) => continue,
            }
        };
        assert!(
            closed >= Duration::from_millis(1500) && closed < Duration::from_secs(5),
            "dropped after {closed:?}"
        );
    }
}

/// What the jump listener does with raw bytes: reads until it closes, or times out.
fn closes_after(addr: &str, send: &[u8]) -> bool {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = tcp.write_all(send);
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn malformed_truncated_and_oversized_packets_end_only_their_connection() {
    let stand = stand();
    let alice = Client::new(&stand, "alice");
    alice.request("db-root", "1h");
    let addr = &stand.proxy.ssh;
    // Not SSH at all.
    assert!(closes_after(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    // A packet claiming 4 GiB.
    let mut huge = b"SSH-2.0-test\r\n".to_vec();
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xf0, 0x04, 0x14]);
    huge.extend_from_slice(&[0u8; 64]);
    assert!(closes_after(addr, &huge));
    // A packet whose length is shorter than its own padding.
    let mut short = b"SSH-2.0-test\r\n".to_vec();
    short.extend_from_slice(&[0, 0, 0, 1, 0xff]);
    assert!(closes_after(addr, &short));
    // Truncated: half a packet, then the client goes away.
    {
        use std::io::Write;
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.write_all(b"SSH-2.0-test\r\n\0\0\x01").unwrap();
    }
    // Everyone else is served as before.
    let jump = format!("alice@{addr}");
    let out = alice.ssh(&["-J", &jump, "root@db-prod-1", "echo fine"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "fine\n");
}

/// A russh client that accepts any host key: the test plays a hostile client.
struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Signs nothing: hands the server bytes that are no signature.
struct NoSignature;

impl russh::Signer for NoSignature {
    type Error = russh::SendError;
    async fn auth_sign(
        &mut self,
        _key: &russh::keys::agent::AgentIdentity,
        _hash_alg: Option<russh::keys::HashAlg>,
        _to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, Self::Error> {
        Ok(vec![0u8; 83])
    }
}

/// A stand with alice logged in, and her identity certificate and key, for a russh client
/// that plays `ssh`.
async fn stand_with_alices_keys() -> (Stand, Client, russh::keys::Certificate, russh::keys::PrivateKey) {
    let stand = tokio::task::spawn_blocking(stand).await.unwrap();
    let alice = {
        let stand_ref = &stand;
        tokio::task::block_in_place(|| Client::new(stand_ref, "alice"))
    };
    let home = alice.user.home.clone();
    let cert_text = std::fs::read_to_string(home.join("ssh/id_ed25519-cert.pub")).unwrap();
    let cert = russh::keys::Certificate::from_openssh(cert_text.trim()).unwrap();
    let key =
        russh::keys::PrivateKey::from_openssh(std::fs::read_to_string(home.join("ssh/id_ed25519")).unwrap()).unwrap();
    (stand, alice, cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_without_a_valid_signature_and_too_many_attempts_never_get_in() {
    use russh::client::{self, AuthResult};
    let (stand, _alice, cert, key) = stand_with_alices_keys().await;
    let addr = stand.proxy.ssh.clone();
    let connect = || client::connect(Arc::new(client::Config::default()), addr.clone(), AnyHost);
    let failed = |r: AuthResult| matches!(r, AuthResult::Failure { .. });

    // The real certificate with no valid signature behind it.
    let mut c = connect().await.unwrap();
    let r = c
        .authenticate_certificate_with("alice", cert.clone(), None, &mut NoSignature)
        .await;
    assert!(r.is_err() || failed(r.unwrap()), "an unsigned certificate got in");
    // The certificate's key alone (no certificate) is not an identity here.
    let mut c = connect().await.unwrap();
    let plain = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None);
    assert!(failed(c.authenticate_publickey("alice", plain).await.unwrap()));
    // A certificate from another CA, properly signed.
    let other = jitgate::ca::ssh::random_ed25519();
    let now = jitgate::time::Timestamp::now();
    let forged = jitgate::ca::ssh::client_cert(
        &other,
        key.public_key(),
        "alice",
        "jti-forged",
        now.saturating_add(Duration::from_secs(600)),
        now,
    )
    .unwrap();
    assert!(failed(
        c.authenticate_openssh_cert("alice", Arc::new(key.clone()), forged.clone())
            .await
            .unwrap()
    ));
    // Past the cap on attempts the connection is closed, whatever comes next.
    let mut c = connect().await.unwrap();
    let mut closed = false;
    for _ in 0..12 {
        match c
            .authenticate_openssh_cert("alice", Arc::new(key.clone()), forged.clone())
            .await
        {
            Ok(r) => assert!(failed(r)),
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "twelve failed attempts and still connected");
    // And the genuine certificate still works on a fresh connection.
    let mut c = connect().await.unwrap();
    assert!(matches!(
        c.authenticate_openssh_cert("alice", Arc::new(key), cert).await.unwrap(),
        AuthResult::Success
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jump_listener_caps_the_session_channels_a_connection_holds() {
    use russh::client::{self, AuthResult};
    let (stand, _alice, cert, key) = stand_with_alices_keys().await;
    let mut c = client::connect(Arc::new(client::Config::default()), stand.proxy.ssh.clone(), AnyHost)
        .await
        .unwrap();
    assert!(matches!(
        c.authenticate_openssh_cert("alice", Arc::new(key), cert).await.unwrap(),
        AuthResult::Success
    ));
    // Session channels opened and never used: each would hold a task on the proxy.
    let mut held = Vec::new();
    for n in 0..16 {
        let channel = c.channel_open_session().await;
        held.push(channel.unwrap_or_else(|e| panic!("channel {n} refused: {e}")));
    }
    let over = c.channel_open_session().await;
    assert!(
        matches!(
            over,
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ResourceShortage
            ))
        ),
        "the 17th channel: {:?}",
        over.map(|ch| ch.id())
    );
    // A channel given back makes room for one more; the refusal still says what to do.
    held.pop().unwrap().close().await.unwrap();
    let mut again = None;
    for _ in 0..100 {
        match c.channel_open_session().await {
            Ok(ch) => {
                again = Some(ch);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut again = again.expect("a channel slot was not given back");
    again.exec(true, "id").await.unwrap();
    let mut err = Vec::new();
    while let Some(msg) = again.wait().await {
        if let russh::ChannelMsg::ExtendedData { data, .. } = msg {
            err.extend_from_slice(&data);
        }
    }
    let err = String::from_utf8_lossy(&err);
    assert!(err.contains("this is a jump listener, not a shell"), "{err}");
}
