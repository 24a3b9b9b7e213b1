//! A real Kubernetes control plane for the tests: etcd and kube-apiserver with RBAC, built
//! from the Kubernetes modules by scripts/test (tests/kube/build.sh) into .cache/kube, real
//! kubectl from the same build, and a stand-in kubelet (tests/kube/cluster/kubelet.go: the
//! kubelet's own streaming code over a make-believe container) that one Node names. Static tokens name an admin (for set-up) and the
//! proxy, whose only power is to impersonate. Both processes end with the test process:
//! they exit when their stdin, a pipe this process holds, closes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const PROXY_TOKEN: &str = "jitgate-proxy-token-for-tests";
/// The one node, whose kubelet is the stand-in (tests/common/kubelet.rs).
pub const NODE: &str = "stand-in-node";
/// What every file holds for `kubectl cp` out of a pod (tests/kube/cluster/kubelet.go).
pub const CP_CONTENT: &[u8] = b"copied out of the stand-in pod through the proxy\n";

pub struct Cluster {
    /// `https://127.0.0.1:PORT`
    pub server: String,
    /// The CA of the API server's self-signed serving certificate.
    pub ca_file: PathBuf,
    /// The proxy's token on the cluster (a file, as `token_file` wants).
    pub proxy_token_file: PathBuf,
    /// A client certificate and key for the proxy (user `jitgate-proxy-cert`), from a CA
    /// the API server trusts for client certificates.
    pub proxy_cert_file: PathBuf,
    pub proxy_key_file: PathBuf,
    /// A kubeconfig for the cluster's admin, for set-up and checks.
    pub admin_kubeconfig: PathBuf,
    pub dir: PathBuf,
    _processes: Vec<(Child, ChildStdin)>,
}

/// Where scripts/test put kube-apiserver, etcd and kubectl.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("JITGATE_TEST_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/kube"));
    assert!(
        dir.join("kube-cluster").is_file(),
        "{} has no kube-cluster: the Kubernetes tests need kube-apiserver, etcd and kubectl built by scripts/test (tests/kube/build.sh .cache/kube)",
        dir.display()
    );
    dir
}

pub fn kubectl_path() -> PathBuf {
    bin_dir().join("kubectl")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The one cluster of this test process, started by the first test that asks.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

fn spawn(bin: &Path, args: &[String], log: &Path, remove_on_exit: Option<&Path>) -> (Child, ChildStdin) {
    let mut command = Command::new(bin);
    if let Some(dir) = remove_on_exit {
        command.env("KUBE_CLUSTER_REMOVE_ON_EXIT", dir);
    }
    let mut child = command
        .args(args)
        .env("KUBE_CLUSTER_EXIT_WITH_STDIN", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(log.with_extension("err")).unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

impl Cluster {
    fn start() -> Cluster {
        let bin = bin_dir();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kube-{}", super::random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let etcd_port = free_port();
        let etcd = spawn(
            &bin.join("etcd"),
            &[
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-url=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-url=http://127.0.0.1:{}", free_port()),
            ],
            &dir.join("etcd.log"),
            // Whoever outlives the other, etcd removes the folder when this process ends.
            Some(&dir),
        );
        // The service account signing key: the API server needs one even if no test uses it.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.join("sa.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("sa.pub"), key.public_key_pem()).unwrap();
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},test-admin,uid-admin,system:masters\n{PROXY_TOKEN},jitgate-proxy,uid-proxy,\n"),
        )
        .unwrap();
        let proxy_token_file = dir.join("proxy.token");
        std::fs::write(&proxy_token_file, format!("{PROXY_TOKEN}\n")).unwrap();
        let (proxy_cert_file, proxy_key_file) = client_ca_and_cert(&dir);
        let port = free_port();
        let api = spawn(
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", dir.join("pki").display()),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", dir.join("sa.pub").display()),
                format!("--service-account-signing-key-file={}", dir.join("sa.key").display()),
                "--service-cluster-ip-range=10.96.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                format!("--token-auth-file={}", dir.join("tokens.csv").display()),
                format!("--client-ca-file={}", dir.join("client-ca.pem").display()),
                // No controller manager runs: pods need no service account to be created.
                "--disable-admission-plugins=ServiceAccount".into(),
                "--v=0".into(),
            ],
            &dir.join("apiserver.log"),
            None,
        );
        let server = format!("https://127.0.0.1:{port}");
        let ca_file = dir.join("pki/apiserver.crt");
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
                ca = ca_file.display()
            ),
        )
        .unwrap();
        let cluster = Cluster {
            server,
            ca_file,
            proxy_token_file,
            proxy_cert_file,
            proxy_key_file,
            admin_kubeconfig,
            dir,
            _processes: vec![etcd, api],
        };
        cluster.wait_ready();
        cluster.apply(PROXY_RBAC);
        let kubelet_port = free_port();
        let kubelet = spawn(
            &bin.join("kubelet"),
            &[format!("--listen=127.0.0.1:{kubelet_port}")],
            &cluster.dir.join("kubelet.log"),
            None,
        );
        let mut cluster = cluster;
        cluster._processes.push(kubelet);
        cluster.add_node(([127, 0, 0, 1], kubelet_port).into());
        cluster
    }

    /// A Node whose kubelet is the stand-in at `kubelet`; every test pod is bound to it. It
    /// declares no `ExtendWebSocketsToKubelet`, as most kubelets, so the API server turns
    /// kubectl's WebSocket streams into SPDY toward it.
    fn add_node(&self, kubelet: std::net::SocketAddr) {
        self.apply(&format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n"));
        let status = serde_json::json!({
            "status": {
                "addresses": [{ "type": "InternalIP", "address": kubelet.ip().to_string() }],
                "daemonEndpoints": { "kubeletEndpoint": { "Port": kubelet.port() } },
            }
        });
        let out = self.admin(&[
            "patch",
            "node",
            NODE,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
        assert!(
            out.status.success(),
            "patch node status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let out = self.admin(&["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok") {
                return;
            }
            if start.elapsed() > Duration::from_secs(90) {
                let log = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let tail = |s: String| {
                    s.lines()
                        .rev()
                        .take(30)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                panic!(
                    "kube-apiserver did not become ready in 90s:\n{}\n--- etcd:\n{}",
                    tail(log("apiserver.err")),
                    tail(log("etcd.err"))
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// kubectl as the cluster's admin.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(kubectl_path())
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// `kubectl apply -f -` as the admin; panics on failure.
    pub fn apply(&self, yaml: &str) {
        use std::io::Write;
        let mut child = Command::new(kubectl_path())
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A namespace of this test's own, with each group bound to a ClusterRole (`test-view`,
    /// `test-edit`) in it, and one pod on the stand-in node, said to be running.
    pub fn namespace(&self, prefix: &str, bindings: &[(&str, &str)]) -> String {
        let ns = format!("{prefix}-{}", super::random_suffix());
        let mut yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: {ns}\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: web\n    image: registry.invalid/web:1\n"
        );
        for (i, (group, role)) in bindings.iter().enumerate() {
            yaml.push_str(&format!(
                "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: jit-{i}\n  namespace: {ns}\nsubjects:\n- kind: Group\n  name: \"{group}\"\n  apiGroup: rbac.authorization.k8s.io\nroleRef:\n  kind: ClusterRole\n  name: {role}\n  apiGroup: rbac.authorization.k8s.io\n"
            ));
        }
        self.apply(&yaml);
        // No kubelet reports on it: say it runs, as kubectl port-forward wants.
        let running = r#"{"status":{"phase":"Running"}}"#;
        let out = self.admin(&[
            "patch",
            "pod",
            "web-1",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            running,
        ]);
        assert!(
            out.status.success(),
            "patch pod status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns
    }
}

/// A CA for client certificates (written to `client-ca.pem`) and a certificate from it for
/// the proxy: CN `jitgate-proxy-cert`, as the API server reads a user from a certificate.
fn client_ca_and_cert(dir: &Path) -> (PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "test client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, "jitgate-proxy-cert");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("client-ca.pem"), ca_cert.pem()).unwrap();
    let (cert_file, key_file) = (dir.join("proxy-client.pem"), dir.join("proxy-client-key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// What the README asks of a cluster admin: the proxy may impersonate, nothing more. And
/// two roles for the jit groups: the built-in view and edit are aggregated by the controller
/// manager, which does not run here.
pub const PROXY_RBAC: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: test-view
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log", "configmaps"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: test-edit
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log", "configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods/exec", "pods/attach", "pods/portforward"]
  verbs: ["get", "create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: jitgate-impersonator
rules:
- apiGroups: [""]
  resources: ["users", "groups"]
  verbs: ["impersonate"]
- apiGroups: ["authentication.k8s.io"]
  resources: ["userextras/jitgate-grant"]
  verbs: ["impersonate"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: jitgate-impersonator
subjects:
- kind: User
  name: jitgate-proxy
  apiGroup: rbac.authorization.k8s.io
- kind: User
  name: jitgate-proxy-cert
  apiGroup: rbac.authorization.k8s.io
roleRef:
  kind: ClusterRole
  name: jitgate-impersonator
  apiGroup: rbac.authorization.k8s.io
"#;

/// Reads a child's output lines as they come, with when each arrived.
pub fn timed_lines(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}
