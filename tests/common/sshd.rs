//! A real OpenSSH sshd for the tests, and ssh-keygen.

use std::process::Command;

/// `ssh-keygen` with `args`; its stdout, or a panic naming what it said.
pub fn keygen(args: &[&str]) -> String {
    let out = Command::new("ssh-keygen")
        .args(args)
        .output()
        .expect("ssh-keygen is not installed: run scripts/test, which installs openssh-client");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real sshd of the test's own (never the system's service), trusting `ca` for user
/// certificates, on a free loopback port.
pub struct Sshd {
    child: std::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Sshd {
    pub fn start(ca_public: &str) -> Sshd {
        Sshd::start_with(ca_public, |_| String::new())
    }

    /// `extra` sees the test directory (with `host_ed25519[.pub]` in it) and returns more
    /// config lines.
    pub fn start_with(ca_public: &str, extra: impl FnOnce(&std::path::Path) -> String) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // sshd wants its privilege-separation directory; creating it is harmless.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (the tests run as root)");
        keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            d.join("host_ed25519").to_str().unwrap(),
        ]);
        std::fs::write(d.join("ca.pub"), format!("{ca_public}\n")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
             AuthorizedKeysFile none\nTrustedUserCAKeys {d}/ca.pub\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n{extra}",
            d = d.display(),
            extra = extra(d)
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args([
                "-D",
                "-f",
                d.join("sshd_config").to_str().unwrap(),
                "-E",
                d.join("sshd.log").to_str().unwrap(),
            ])
            .spawn()
            .expect("sshd is not installed: run scripts/test, which installs openssh-server");
        let up = super::eventually(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "sshd did not start");
        Sshd { child, port, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// `ssh -i key` with `cert` as `login`, running `true`; whether it got in.
    pub fn login(&self, key: &std::path::Path, cert: &std::path::Path, login: &str) -> bool {
        Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-i",
                key.to_str().unwrap(),
                "-o",
                &format!("CertificateFile={}", cert.display()),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-p",
                &self.port.to_string(),
                &format!("{login}@127.0.0.1"),
                "true",
            ])
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
