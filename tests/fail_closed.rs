//! When the store goes away, no new access is given: the API answers 503, the CLI says so in
//! one line, and everything works again once the store is back.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Proxy, TestDb, WALKTHROUGH_PROFILES};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP hop between the proxy and PostgreSQL that the test can cut and restore, as a
/// network partition would.
struct Link {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Link {
    fn new(upstream: SocketAddr) -> Link {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let addr = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .local_addr()
            .unwrap();
        let link = Link {
            rt,
            addr,
            upstream,
            tasks: Arc::default(),
        };
        link.up();
        link
    }

    fn up(&self) {
        let listener = self.rt.block_on(TcpListener::bind(self.addr)).unwrap();
        let (upstream, tasks) = (self.upstream, Arc::clone(&self.tasks));
        let accept = self.rt.spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes the listener and every open connection.
    fn down(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        // Let the aborts land so the port is closed before the test goes on.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_lost_store_refuses_new_access_and_recovers() {
    let db = TestDb::blocking(Backend::Postgres);
    let (head, tail) = db.url.split_once("@127.0.0.1:5432").expect("the test PostgreSQL URL");
    let link = Link::new("127.0.0.1:5432".parse().unwrap());
    let via_link = format!("{head}@{}{tail}", link.addr);
    let proxy = Proxy::start(db.dir.path(), &via_link, WALKTHROUGH_PROFILES);
    proxy.add_user("alice", &["dba"]);
    let alice = proxy.login("alice");
    alice.json(&["profiles"]);

    link.down();
    let refused = alice.run(&["request", "db-patch", "--reason", "INC-7", "--for", "1h"], None);
    refused.fails(
        1,
        "the proxy's store is unavailable; no access is granted until it is back",
    );
    // Even reading needs the token deny-list, so it fails closed too.
    alice.run(&["grants"], None).fails(1, "store is unavailable");
    assert!(
        proxy.log().contains("store unavailable; refusing new decisions"),
        "{}",
        proxy.log()
    );
    // A logout the proxy could not record keeps the session, so it can be tried again.
    alice.run(&["logout"], None).fails(1, "store is unavailable");
    assert!(
        alice.home.join("session.json").exists(),
        "the session was forgotten though the token lives"
    );

    link.up();
    let ok = common::eventually(Duration::from_secs(20), || {
        let r = alice.run(
            &["request", "db-patch", "--reason", "INC-7", "--for", "1h", "-o", "json"],
            None,
        );
        (r.code == 0).then_some(r)
    });
    assert!(
        ok.is_some(),
        "the proxy recovers when the store is back:\n{}",
        proxy.log()
    );
    let requests = alice.json(&["requests"]);
    assert_eq!(
        requests.as_array().unwrap().len(),
        1,
        "the refused request left nothing behind"
    );
    proxy.admin(&["audit", "verify"], None).success();
}
