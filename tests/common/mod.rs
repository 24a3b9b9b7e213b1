//! Shared harness for the black-box tests: fresh stores on SQLite and PostgreSQL, the real
//! `jitgate` binary serving on a free port, and the CLI run as a user would run it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod idp;
pub mod kube;
pub mod kubectl;
pub mod nginx;
pub mod slack;
pub mod sshd;
pub mod upstream;
pub mod webhook;

pub const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

/// The PostgreSQL server `scripts/test` starts; its URL names a database we may create in.
pub fn postgres_admin_url() -> String {
    std::env::var("JITGATE_TEST_POSTGRES").expect(
        "JITGATE_TEST_POSTGRES is not set: run the tests with scripts/test, which installs and starts PostgreSQL",
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A store of its own for one test: a SQLite file in a temporary directory, or a new
/// PostgreSQL database that is dropped at the end.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}/jitgate.db", dir.path().display());
                TestDb {
                    url,
                    dir,
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("jitgate_t_{}", random_suffix());
                admin(&format!("CREATE DATABASE {name}")).await;
                let url = replace_db(&postgres_admin_url(), &name);
                TestDb {
                    url,
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// Same, for tests that are not async.
    pub fn blocking(backend: Backend) -> TestDb {
        tokio::runtime::Runtime::new().unwrap().block_on(TestDb::new(backend))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Best effort on a runtime of our own: the test's runtime may be gone already.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            })
            .join();
        }
    }
}

async fn admin(sql: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sql)
        .execute(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn replace_db(url: &str, db: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/{db}")
}

pub fn random_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}

/// `jitgate serve` running on a free port with its own config, certs and data.
pub struct Proxy {
    child: Child,
    pub url: String,
    /// The SSH jump listener, `127.0.0.1:PORT`.
    pub ssh: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ca: PathBuf,
}

pub const WALKTHROUGH_PROFILES: &str = r#"
admins = ["group:security"]

[[profiles]]
name = "db-patch"
description = "Patch the production database"
max_duration = "2h"
requesters = ["group:dba"]
approvers = ["group:dba-leads"]
approvals_required = 1
ssh = { hosts = { env = "prod", role = "db" }, logins = ["postgres"] }

[[profiles]]
name = "staging-shell"
max_duration = "4h"
requesters = ["group:dba"]
approvers = ["group:dba-leads"]
approvals_required = 0
ssh = { hosts = { env = "staging" }, logins = ["ubuntu"] }

[[profiles]]
name = "break-glass"
max_duration = "1h"
requesters = ["group:dba"]
approvers = ["group:security"]
approvals_required = 2
ssh = { hosts = { env = "prod" }, logins = ["root"] }
"#;

impl Proxy {
    /// Starts the proxy on `store_url` with `profiles` (TOML: admins and [[profiles]]).
    pub fn start(dir: &Path, store_url: &str, profiles: &str) -> Proxy {
        Proxy::start_with(dir, store_url, profiles, "")
    }

    /// Same, with more lines for the `[server]` table (e.g. `token_lifetime = "8s"`).
    pub fn start_with(dir: &Path, store_url: &str, profiles: &str, server: &str) -> Proxy {
        let config = dir.join("jitgate.toml");
        let text = format!(
            "ssh.listen = \"127.0.0.1:0\"\n{profiles}\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{d}/data\"\ncerts_dir = \"{d}/certs\"\nrequest_ttl = \"1h\"\n{server}\n\n[store]\nurl = \"{store_url}\"\n",
            d = dir.display()
        );
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(dir.join("serve.log")).unwrap()))
            .spawn()
            .expect("start jitgate serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut url = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let word = |rest: &str| rest.split_whitespace().next().unwrap_or_default().to_owned();
                if let Some(rest) = line.strip_prefix("jitgate listening on ") {
                    url = Some(word(rest));
                } else if let Some(rest) = line.trim_start().strip_prefix("ssh:") {
                    if let Some(url) = url.take() {
                        let _ = tx.send((url, word(rest)));
                    }
                }
            }
        });
        let (url, ssh) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(found) => found,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
                panic!("jitgate serve did not start:\n{log}");
            }
        };
        Proxy {
            child,
            url,
            ssh,
            dir: dir.to_owned(),
            config,
            ca: dir.join("certs/ca.pem"),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// The proxy's resident memory now, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The CPU time the proxy has used so far (user and system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // The command name may hold spaces; the fields after it do not.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on every Linux the tests run on.
        Duration::from_millis(ticks * 10)
    }

    /// Runs a server-side command (`users`, `audit`) against this proxy's config.
    pub fn admin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut full: Vec<&str> = args.to_vec();
        full.push("--config");
        let config = self.config.to_str().unwrap().to_owned();
        full.push(&config);
        run(&full, &[], stdin)
    }

    /// A server-side command with `-o json`, parsed.
    pub fn json_admin(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let out = self.admin(&full, None).success().stdout;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    pub fn add_user(&self, name: &str, groups: &[&str]) {
        let mut args = vec!["users", "add", name, "--password-stdin"];
        for g in groups {
            args.push("--group");
            args.push(g);
        }
        self.admin(&args, Some(&password_of(name))).success();
    }

    /// Logs `name` in with a `JITGATE_HOME` of their own and returns it.
    pub fn login(&self, name: &str) -> User {
        self.login_at(name, &format!("home-{name}"))
    }

    /// Logs `name` in once more, as from another machine: a login of its own in `home`.
    pub fn login_at(&self, name: &str, home: &str) -> User {
        let home = self.dir.join(home);
        let user = User { home };
        user.run(
            &[
                "login",
                "--proxy",
                &self.url,
                "--user",
                name,
                "--password-stdin",
                "--ca-cert",
                self.ca.to_str().unwrap(),
            ],
            Some(&password_of(name)),
        )
        .success();
        user
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn password_of(name: &str) -> String {
    format!("{name}-correct-horse")
}

/// A person at their terminal: the CLI with their own `JITGATE_HOME`.
pub struct User {
    pub home: PathBuf,
}

impl User {
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        run(args, &[("JITGATE_HOME", self.home.to_str().unwrap())], stdin)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let r = self.run(&full, None).success();
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{}", r.stdout))
    }

    pub fn token(&self) -> String {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.home.join("session.json")).unwrap()).unwrap();
        s["token"].as_str().unwrap().to_owned()
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: String,
}

impl Run {
    pub fn success(self) -> Run {
        assert_eq!(
            self.code, 0,
            "`jitgate {}` failed:\n{}{}",
            self.args, self.stdout, self.stderr
        );
        self
    }

    /// Exit `code` with exactly one line on stderr that contains `says`.
    pub fn fails(self, code: i32, says: &str) -> Run {
        assert_eq!(
            self.code, code,
            "`jitgate {}` exit code:\n{}{}",
            self.args, self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(says),
            "`jitgate {}` stderr lacks {says:?}:\n{}",
            self.args,
            self.stderr
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "not one line:\n{}",
            self.stderr
        );
        self
    }
}

pub fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_remove("JITGATE_CONFIG").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run jitgate");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        args: args.join(" "),
    }
}

/// Polls `f` until it returns Some or `limit` passes.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TLS connection to the proxy on 127.0.0.1:`port` with `server_name` as SNI and one
/// ALPN protocol, trusting only the proxy's CA.
pub async fn tls_connect(
    ca: &Path,
    port: u16,
    server_name: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Reads one HTTP/1.1 answer whose body has a `content-length`: its status and body.
pub async fn read_answer(conn: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> (u16, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {line:?}"));
    let mut length = 0;
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        assert!(!line.is_empty(), "the connection closed inside an answer's head");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// One HTTP/1.1 request written byte for byte (no client library normalizes its path or
/// framing) over a fresh TLS connection; the whole answer as text.
pub async fn raw_https(ca: &Path, port: u16, server_name: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(ca, port, server_name, b"http/1.1").await;
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
