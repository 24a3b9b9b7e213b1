//! kubectl through the proxy against a real kube-apiserver with RBAC (tests/common/kube.rs):
//! the proxy checks each request against the grant's scope and forwards it impersonating the
//! user with the grant's groups, so the cluster's RBAC applies too. Watches, followed logs,
//! exec, attach, cp and port-forward (through the API server to the stand-in kubelet) pass,
//! and end with their grant. What is refused before the cluster: tests/kube_refusals.rs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::kube::{bin_dir, cluster, kubectl_path, timed_lines};
use common::kubectl::{epoch, ok, refused, stand, text, Kubectl};
use serde_json::Value;

#[test]
fn kubectl_works_inside_the_grant_and_is_refused_outside_it() {
    let stand = stand();
    let (ns, other) = (&stand.ns, &stand.other);
    let alice = Kubectl::new(&stand, "alice", "devs");
    stand.proxy.add_user("lee", &["leads"]);
    let lee = stand.proxy.login("lee");

    // No grant yet: kubectl's first call (discovery) is refused with the profiles that
    // would open the cluster.
    let out = alice.run(&["get", "pods", "-n", ns]);
    refused(
        &out,
        "Error from server (Forbidden): jitgate: no active grant allows access to cluster \"test\". Profiles that would: payments-read, payments-quick, config-writer, payments-exec, exec-get-only.",
    );
    assert!(
        text(&out.stderr).contains("jitgate request payments-read"),
        "{}",
        text(&out.stderr)
    );

    let req = alice.request("payments-read", "30m");
    assert_eq!(req["state"], "pending", "{req}");
    lee.run(&["approve", req["id"].as_str().unwrap()], None).success();

    let listed = ok(&alice.run(&["get", "pods", "-n", ns, "-o", "name"]));
    // Past discovery, in the API server's own error form, with what was asked.
    refused(
        &alice.run(&["get", "configmaps", "-n", ns]),
        &format!("Error from server (Forbidden): jitgate: no active grant allows list configmaps in namespace \"{ns}\" on cluster \"test\". No profile you may request allows it."),
    );
    assert_eq!(listed.trim(), "pod/web-1");
    assert_eq!(
        ok(&alice.run(&["get", "pod", "web-1", "-n", ns, "-o", "name"])).trim(),
        "pod/web-1"
    );
    let version = ok(&alice.run(&["version", "-o", "json"]));
    assert!(version.contains("\"serverVersion\""), "{version}");

    // Outside the grant's scope: another namespace, another verb, another resource.
    refused(
        &alice.run(&["get", "pods", "-n", other]),
        &format!("jitgate: no active grant allows list pods in namespace \"{other}\""),
    );
    refused(
        &alice.run(&["delete", "pod", "web-1", "-n", ns, "--wait=false"]),
        &format!("jitgate: no active grant allows delete pods \"web-1\" in namespace \"{ns}\""),
    );
    refused(
        &alice.run(&["get", "secrets", "-n", ns]),
        "jitgate: no active grant allows list secrets",
    );
    refused(&alice.run(&["get", "pods", "-A"]), "list pods across the cluster");
    let pods = cluster().admin(&["get", "pods", "-n", ns, "-o", "name"]);
    assert_eq!(
        text(&pods.stdout).trim(),
        "pod/web-1",
        "the refused delete changed nothing"
    );

    // `auth can-i` answers with both the grant's scope and the cluster's RBAC.
    assert_eq!(
        ok(&alice.run(&["auth", "can-i", "list", "pods", "-n", ns])).trim(),
        "yes"
    );
    let no = alice.run(&["auth", "can-i", "delete", "pods", "-n", ns]);
    assert_eq!(no.status.code(), Some(1));
    assert_eq!(
        text(&no.stdout).trim(),
        format!("no - jitgate: no active grant allows delete on kube:test/{ns}/pods")
    );
    let no = alice.run(&["auth", "can-i", "list", "pods", "-n", other]);
    assert!(text(&no.stdout).starts_with("no - jitgate:"), "{}", text(&no.stdout));
    // The cluster's list of rules would say more than the grant allows, and not what it does.
    refused(
        &alice.run(&["auth", "can-i", "--list", "-n", ns]),
        "jitgate: `kubectl auth can-i --list` is not answered through the proxy",
    );

    // A grant that allows what the cluster's RBAC does not: the cluster says no, to alice.
    alice.request("config-writer", "10m");
    refused(
        &alice.run(&["create", "configmap", "x", "-n", ns, "--from-literal=a=b"]),
        "User \"alice\" cannot create resource \"configmaps\"",
    );
    let no = alice.run(&["auth", "can-i", "create", "configmaps", "-n", ns]);
    assert_eq!(
        text(&no.stdout).trim(),
        "no",
        "RBAC's answer comes back: {}",
        text(&no.stderr)
    );

    let audit = stand.proxy.admin(&["audit", "export"], None).success().stdout;
    let actions: Vec<String> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(actions.iter().any(|a| a == "kube.first_request"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "kube.denied"), "{actions:?}");
}

#[test]
fn a_watch_ends_at_the_grants_expiry_and_a_revoke_ends_another() {
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    let grant = alice.request("payments-quick", "8s");
    let id = grant["grant_id"].as_str().unwrap();
    let grants = alice.user.json(&["grants"]);
    let held = grants.as_array().unwrap().iter().find(|g| g["id"] == id).unwrap();
    let expires = epoch(held["expires_at"].as_str().unwrap());
    ok(&alice.run(&["get", "pods", "-n", ns]));

    let (mut watch, lines, errors) = watching_pods(&alice, ns);
    // The watch stays open until the grant ends, then kubectl says why and exits.
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        assert!(
            SystemTime::now() < expires + Duration::from_secs(10),
            "the watch outlived its grant"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let ended = SystemTime::now();
    let late = ended.duration_since(expires).unwrap_or_default();
    assert!(
        ended >= expires - Duration::from_millis(5),
        "the watch ended before the grant expired"
    );
    std::thread::sleep(Duration::from_millis(50));
    let err: Vec<String> = errors.try_iter().map(|(_, l)| l).collect();
    let out: Vec<String> = lines.try_iter().map(|(_, l)| l).collect();
    // kubectl prints a watch's ERROR event as a row, and ends.
    assert!(
        out.iter().any(|l| l.contains("jitgate: grant")
            && l.contains("ended")
            && l.contains("jitgate request payments-quick")),
        "kubectl says why: {status:?}\nstdout: {out:?}\nstderr: {err:?}"
    );
    // kubectl's own exit is in this measure too.
    assert!(
        late < Duration::from_millis(100),
        "ended {late:?} after the grant expired"
    );
    eprintln!("watch ended {late:?} after expiry");

    // A revoke ends an open watch as quickly.
    let grant = alice.request("payments-quick", "30m");
    let (mut watch, _, _) = watching_pods(&alice, ns);
    let (done, after) = revoke_and_time_exit(&alice, &grant, &mut watch);
    assert!(
        after < Duration::from_millis(100),
        "ended {after:?} after `jitgate revoke` returned ({done:?})"
    );
    refused(
        &alice.run(&["get", "pods", "-n", ns]),
        "no active grant allows list pods",
    );
}

/// Controllers watch in protobuf, not JSON as kubectl does: their client gets the ERROR
/// event in that encoding, and client-go's error says why the watch ended.
#[test]
fn a_protobuf_watch_is_told_why_it_ended() {
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    let grant = alice.request("payments-quick", "30m");
    let (mut watch, lines, errors) = started(
        alice.program(bin_dir().join("watch"), &["--namespace", ns]),
        |line| line == "ADDED web-1",
        "the protobuf watch lists the pod",
    );
    let (done, after) = revoke_and_time_exit(&alice, &grant, &mut watch);
    let status = watch.wait().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let out: Vec<String> = lines.try_iter().map(|(_, l)| l).collect();
    let err: Vec<String> = errors.try_iter().map(|(_, l)| l).collect();
    // Exit status 3: client-go decoded an ERROR event (4 would be a watch closed unexplained).
    assert_eq!(status.code(), Some(3), "stdout: {out:?}\nstderr: {err:?}");
    let said = out.iter().find(|l| l.starts_with("ERROR")).expect("the ERROR event");
    assert!(
        said.starts_with("ERROR Forbidden: jitgate: grant ")
            && said.contains(" ended at ")
            && said.contains("request access again with: jitgate request payments-quick"),
        "{said}"
    );
    assert!(
        after < Duration::from_millis(100),
        "ended {after:?} after `jitgate revoke` returned ({done:?})"
    );
}

type Lines = std::sync::mpsc::Receiver<(Instant, String)>;

/// `kubectl get pods -w` in `ns`, once it has listed the pod: the process and its stdout
/// and stderr lines as they come.
fn watching_pods(k: &Kubectl, ns: &str) -> (std::process::Child, Lines, Lines) {
    started(
        k.command(&["get", "pods", "-n", ns, "-w"]),
        |line| line.starts_with("web-1"),
        "the watch lists the pod",
    )
}

/// `command` started, once a line of its stdout passes `ready` (within 20 s, or the test
/// fails saying `what` did not happen, with its stderr): the process and its stdout and
/// stderr lines as they come.
fn started(mut command: Command, ready: impl Fn(&str) -> bool, what: &str) -> (std::process::Child, Lines, Lines) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let lines = timed_lines(child.stdout.take().unwrap());
    let errors = timed_lines(child.stderr.take().unwrap());
    loop {
        let Ok((_, line)) = lines.recv_timeout(Duration::from_secs(20)) else {
            let err: Vec<String> = errors.try_iter().map(|(_, l)| l).collect();
            panic!("{what}: not within 20 s; stderr: {err:?}");
        };
        if ready(&line) {
            break;
        }
    }
    (child, lines, errors)
}

/// Revokes `grant` as its holder, then times `child`'s exit: how long `jitgate revoke`
/// took, and how long after it returned the child exited.
fn revoke_and_time_exit(k: &Kubectl, grant: &Value, child: &mut std::process::Child) -> (Duration, Duration) {
    let revoked_at = Instant::now();
    k.user
        .run(&["revoke", grant["grant_id"].as_str().unwrap()], None)
        .success();
    let done = revoked_at.elapsed();
    (done, time_to_exit(child, "the revoke"))
}

/// How long `kubectl` takes to exit from now, watched every 2 ms; at most 10 s (`after` names
/// what it should exit after).
fn time_to_exit(kubectl: &mut std::process::Child, after: &str) -> Duration {
    let start = Instant::now();
    while kubectl.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "kubectl outlived {after}");
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

#[test]
fn logging_out_ends_that_logins_watches_and_not_another_logins() {
    let stand = stand();
    let ns = &stand.ns;
    let laptop = Kubectl::new(&stand, "alice", "devs");
    laptop.request("payments-quick", "30m");
    // Alice logged in a second time elsewhere, with a kubectl of its own.
    let desktop = Kubectl::for_login(stand.proxy.login_at("alice", "home-alice-desktop"));
    let (mut on_laptop, laptop_lines, _) = watching_pods(&laptop, ns);
    let (mut on_desktop, _, _) = watching_pods(&desktop, ns);

    laptop.user.run(&["logout"], None).success();
    let after = time_to_exit(&mut on_laptop, "the logout");
    eprintln!("the watch ended {after:?} after `jitgate logout` returned");
    assert!(after < Duration::from_millis(100), "ended {after:?} after the logout");
    std::thread::sleep(Duration::from_millis(50));
    let out: Vec<String> = laptop_lines.try_iter().map(|(_, l)| l).collect();
    assert!(
        out.iter().any(|l| l.contains("jitgate: you logged out of the proxy")),
        "kubectl says why: {out:?}"
    );
    // The other login's watch goes on, and its kubectl still works.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        on_desktop.try_wait().unwrap().is_none(),
        "the other login's watch ended too"
    );
    ok(&desktop.run(&["get", "pods", "-n", ns]));
    on_desktop.kill().unwrap();
    let _ = on_desktop.wait();
}

#[test]
fn a_followed_log_ends_at_expiry_and_exec_is_create_and_ends_with_a_revoke() {
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    // Logs come from the stand-in kubelet through the real API server and the proxy.
    let grant = alice.request("payments-quick", "6s");
    let id = grant["grant_id"].as_str().unwrap().to_owned();
    let grants = alice.user.json(&["grants"]);
    let held = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id.as_str())
        .unwrap();
    let expires = epoch(held["expires_at"].as_str().unwrap());
    let log = ok(&alice.run(&["logs", "web-1", "-n", ns]));
    assert!(log.starts_with(&format!("log of {ns}/web-1/web: line 1\n")), "{log}");

    let mut follow = alice
        .command(&["logs", "-f", "web-1", "-n", ns])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = timed_lines(follow.stdout.take().unwrap());
    let (_, first) = lines.recv_timeout(Duration::from_secs(20)).expect("the log streams");
    assert!(first.contains("line 1"), "{first}");
    while follow.try_wait().unwrap().is_none() {
        assert!(
            SystemTime::now() < expires + Duration::from_secs(10),
            "the log outlived its grant"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let late = SystemTime::now().duration_since(expires).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(50));
    let out: Vec<String> = lines.try_iter().map(|(_, l)| l).collect();
    let last = out.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(&format!("jitgate: grant {id} ended at ")) && last.contains("jitgate request payments-quick"),
        "the log's last line says why: {out:?}"
    );
    assert!(
        out.iter().filter(|l| l.starts_with("line ")).count() > 10,
        "it streamed: {out:?}"
    );
    assert!(
        late < Duration::from_millis(100),
        "ended {late:?} after the grant expired"
    );
    eprintln!("log -f ended {late:?} after expiry");

    // get on pods/exec is not exec: the stream needs create.
    alice.request("exec-get-only", "30m");
    refused(
        &alice.run(&["exec", "web-1", "-n", ns, "--", "sh"]),
        &format!("jitgate: no active grant allows create pods/exec \"web-1\" in namespace \"{ns}\""),
    );

    let grant = alice.request("payments-exec", "30m");
    let mut shell = alice
        .command(&["exec", "-i", "web-1", "-n", ns, "--", "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    let lines = timed_lines(shell.stdout.take().unwrap());
    let errors = timed_lines(shell.stderr.take().unwrap());
    let next = |lines: &std::sync::mpsc::Receiver<(Instant, String)>| {
        lines
            .recv_timeout(Duration::from_secs(20))
            .map(|(_, l)| l)
            .unwrap_or_else(|_| panic!("no output; stderr: {:?}", errors.try_iter().collect::<Vec<_>>()))
    };
    assert_eq!(next(&lines), "stand-in shell ready");
    use std::io::Write;
    stdin.write_all(b"hello through the proxy\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(next(&lines), "hello through the proxy");

    let id = grant["grant_id"].as_str().unwrap();
    revoked_mid_stream(&alice, id, &mut shell, &errors, Duration::from_millis(100));
    drop(stdin);

    // With a new grant, exec runs to its own end with its exit status.
    alice.request("payments-exec", "30m");
    let mut shell = alice
        .command(&["exec", "-i", "web-1", "-n", ns, "--", "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    shell.stdin.take().unwrap().write_all(b"one\nexit\n").unwrap();
    let out = shell.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "stand-in shell ready\none\n");
}

#[test]
fn kubeconfig_merge_adds_the_context_with_kubectl_and_keeps_the_others() {
    let stand = stand();
    let alice = Kubectl::new(&stand, "alice", "devs");
    let merged = alice.user.home.join("merged-kubeconfig");
    std::fs::write(
        &merged,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: elsewhere\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: elsewhere\n  context:\n    cluster: elsewhere\n    user: \"\"\ncurrent-context: elsewhere\nusers: []\n",
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        common::kube::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("JITGATE_HOME", alice.user.home.to_str().unwrap()),
        ("KUBECONFIG", merged.to_str().unwrap()),
        ("PATH", path.as_str()),
    ];
    let run = common::run(&["kubeconfig", "--cluster", "test", "--merge"], &env, None).success();
    assert!(
        run.stderr.contains("context \"jitgate-test\" added and made current"),
        "{}",
        run.stderr
    );
    let kubectl = |args: &[&str]| {
        Command::new(kubectl_path())
            .args(args)
            .env("KUBECONFIG", &merged)
            .env("JITGATE_HOME", &alice.user.home)
            .env("HOME", &alice.user.home)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert_eq!(ok(&kubectl(&["config", "current-context"])).trim(), "jitgate-test");
    let contexts = ok(&kubectl(&["config", "get-contexts", "-o", "name"]));
    assert!(
        contexts.contains("elsewhere") && contexts.contains("jitgate-test"),
        "{contexts}"
    );
    alice.request("payments-quick", "10m");
    assert_eq!(
        ok(&kubectl(&["get", "pods", "-n", &stand.ns, "-o", "name"])).trim(),
        "pod/web-1"
    );
    // kubectl missing: a one-line error that says what to do instead.
    let env = [
        ("JITGATE_HOME", alice.user.home.to_str().unwrap()),
        ("KUBECONFIG", merged.to_str().unwrap()),
        ("PATH", "/nonexistent"),
    ];
    common::run(&["kubeconfig", "--cluster", "test", "--merge"], &env, None).fails(1, "cannot run kubectl");
    let unknown = alice.user.run(&["kubeconfig", "--cluster", "nope"], None);
    unknown.fails(
        1,
        "no cluster \"nope\" behind the proxy (clusters: down, staging, test, viacert)",
    );
}

#[test]
fn attach_and_cp_pass_through_as_create_on_their_subresources() {
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    alice.request("exec-get-only", "30m");
    refused(
        &alice.run(&["attach", "web-1", "-n", ns, "-q"]),
        &format!("jitgate: no active grant allows create pods/attach \"web-1\" in namespace \"{ns}\""),
    );
    alice.request("payments-exec", "30m");

    // kubectl cp runs `tar cf - PATH` through exec and unpacks what comes back.
    let dest = alice.user.home.join("motd");
    let from = format!("{ns}/web-1:/etc/motd");
    ok(&alice.run(&["cp", &from, dest.to_str().unwrap()]));
    assert_eq!(std::fs::read(&dest).unwrap(), common::kube::CP_CONTENT);

    let mut attached = alice
        .command(&["attach", "-i", "-q", "web-1", "-n", ns])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    attached.stdin.take().unwrap().write_all(b"hi\nexit\n").unwrap();
    let out = attached.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "attached to the stand-in container\nhi\n");
}

/// A TCP echo server on 127.0.0.1, standing for a port in the pod (the stand-in kubelet
/// forwards a pod's port N to 127.0.0.1:N).
fn echo_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let mut writer = conn;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    port
}

#[test]
fn port_forward_and_spdy_streams_pass_and_end_with_their_grant() {
    use std::io::Write;
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    alice.request("exec-get-only", "30m");
    let remote = echo_server();
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ports = format!("{local}:{remote}");
    refused(
        &alice.run(&["port-forward", "web-1", "-n", ns, &ports]),
        &format!("jitgate: no active grant allows create pods/portforward \"web-1\" in namespace \"{ns}\""),
    );
    // Through kubectl's default transport (SPDY tunneled in WebSocket messages), then bare
    // SPDY, as kubectl before 1.31 or with the WebSocket transport turned off.
    for websockets in ["true", "false"] {
        let grant = alice.request("payments-exec", "30m");
        let id = grant["grant_id"].as_str().unwrap();
        forward_until_revoked(&alice, ns, remote, websockets, id);
    }

    // exec over SPDY end to end (as kubectl before WebSockets, or with them turned off): the
    // cut names the grant on the error stream there too.
    let grant = alice.request("payments-exec", "30m");
    let mut shell = alice
        .command(&["exec", "-i", "web-1", "-n", ns, "--", "sh"])
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    let lines = timed_lines(shell.stdout.take().unwrap());
    let errors = timed_lines(shell.stderr.take().unwrap());
    stdin.write_all(b"over spdy\n").unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (_, l) = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{seen:?} {:?}", errors.try_iter().collect::<Vec<_>>()));
        seen.push(l);
    }
    assert_eq!(seen, ["stand-in shell ready", "over spdy"]);
    let id = grant["grant_id"].as_str().unwrap();
    revoked_mid_stream(&alice, id, &mut shell, &errors, Duration::from_millis(100));
    drop(stdin);
}

/// Forwards a local port to `remote` on web-1 with kubectl (its WebSocket transport on or
/// off), checks a connection through it, revokes the grant `id`, and checks how it ends: the
/// open connection closes within 100 ms of the revoke, and kubectl says why for it.
fn forward_until_revoked(alice: &Kubectl, ns: &str, remote: u16, websockets: &str, id: &str) {
    use std::io::{BufRead, Read, Write};
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ports = format!("{local}:{remote}");
    let mut forward = alice
        .command(&["port-forward", "web-1", "-n", ns, &ports])
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = timed_lines(forward.stdout.take().unwrap());
    let errors = timed_lines(forward.stderr.take().unwrap());
    let (_, first) = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("port-forward starts");
    assert!(
        first.starts_with(&format!("Forwarding from 127.0.0.1:{local} -> {remote}")),
        "{first}"
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(b"ping through the proxy\n").unwrap();
    let mut echoed = String::new();
    std::io::BufReader::new(conn.try_clone().unwrap())
        .read_line(&mut echoed)
        .unwrap();
    assert_eq!(echoed, "ping through the proxy\n", "websockets={websockets}");

    alice.user.run(&["revoke", id], None).success();
    let revoked = Instant::now();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    let closed = revoked.elapsed();
    assert!(
        closed < Duration::from_millis(100),
        "websockets={websockets}: the forwarded connection stayed open {closed:?}"
    );
    let start = Instant::now();
    while forward.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ended = forward.try_wait().unwrap();
    let _ = forward.kill();
    // Everything kubectl wrote: the reader ends with its stderr.
    let said: Vec<String> = errors.iter().map(|(_, l)| l).collect();
    let status = ended.unwrap_or_else(|| panic!("websockets={websockets}: kubectl went on: {said:?}"));
    assert!(!status.success(), "websockets={websockets}: {said:?}");
    // client-go logs the error stream's words for the connection, then kubectl ends.
    let why = format!("jitgate: grant {id} ended at ");
    assert!(
        said.iter()
            .any(|l| l.contains("An error occurred forwarding") && l.contains(&why)),
        "websockets={websockets}: {said:?}"
    );
    assert!(
        said.iter().any(|l| l.contains("lost connection to pod")),
        "websockets={websockets}: {said:?}"
    );
}

/// Revokes the grant `id` while `kubectl` streams, and checks how it ends: within `within`
/// of `jitgate revoke` returning, failing, and saying why on stderr (`errors`).
fn revoked_mid_stream(
    alice: &Kubectl,
    id: &str,
    kubectl: &mut std::process::Child,
    errors: &std::sync::mpsc::Receiver<(Instant, String)>,
    within: Duration,
) {
    alice.user.run(&["revoke", id], None).success();
    let start = Instant::now();
    while kubectl.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the stream outlived the revoke"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let after = start.elapsed();
    let status = kubectl.wait().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let said: Vec<String> = errors.try_iter().map(|(_, l)| l).collect();
    assert!(!status.success(), "the cut stream fails: {status:?} {said:?}");
    assert!(
        said.iter()
            .any(|l| l.contains(&format!("jitgate: grant {id} ended at"))),
        "kubectl says why: {said:?}"
    );
    assert!(after < within, "ended {after:?} after `jitgate revoke` returned");
}

#[test]
fn a_cut_in_the_middle_of_busy_output_still_names_the_grant() {
    let stand = stand();
    let ns = &stand.ns;
    let alice = Kubectl::new(&stand, "alice", "devs");
    // Over WebSocket (kubectl's default) and over SPDY, while the server sends without
    // pause: the cut waits for the frame in flight, then says why.
    for websockets in ["true", "false"] {
        let grant = alice.request("payments-exec", "30m");
        let id = grant["grant_id"].as_str().unwrap().to_owned();
        let mut busy = alice
            .command(&["exec", "web-1", "-n", ns, "--", "yes"])
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = timed_lines(busy.stdout.take().unwrap());
        let errors = timed_lines(busy.stderr.take().unwrap());
        for _ in 0..200 {
            lines.recv_timeout(Duration::from_secs(20)).expect("busy output");
        }
        eprintln!("exec with KUBECTL_REMOTE_COMMAND_WEBSOCKETS={websockets}");
        revoked_mid_stream(&alice, &id, &mut busy, &errors, Duration::from_millis(200));
    }
}
