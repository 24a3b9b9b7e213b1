//! Threads that serve the HTTPS listener's connections, one per core, each a
//! single-threaded runtime that a connection stays on from its handshake to its end.
//!
//! Why not the work-stealing runtime: for small requests it spends a third more CPU per
//! request. Each burst of socket events on one worker wakes another to steal (a futex and
//! an interrupt to the other core), and a request then hops between workers on its way to
//! the upstream and back. `scripts/bench/http`, 1 KiB answers, on 2 cores: 47–51 µs of
//! proxy CPU per request on a two-worker runtime, 35–37 µs on one worker. nginx's workers
//! are built the same way. What stealing buys, a long task not holding up others, matters
//! little here: nothing slow runs inline (password hashing and SQLite go to other threads).

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// How many shards there are: one per core the process may use.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(64))
}

/// The shard this thread serves, 0 elsewhere: for state kept per shard, such as upstream
/// connection pools, so that a request and its upstream connection share a thread.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

pub struct Shards {
    handles: Box<[Handle]>,
    next: AtomicUsize,
}

impl Shards {
    /// Starts the shards' threads; they and the connections on them end with `stop`.
    pub fn start(stop: &CancellationToken) -> Result<Shards, String> {
        let mut handles = Vec::with_capacity(count());
        for i in 0..count() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start an HTTPS thread: {e}"))?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("jitgate-https-{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(i));
                    runtime.block_on(stop.cancelled());
                })
                .map_err(|e| format!("cannot start an HTTPS thread: {e}"))?;
        }
        Ok(Shards {
            handles: handles.into(),
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `task` on the next shard in turn.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }
}
