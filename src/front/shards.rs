//! Threads that serve the HTTPS listener's connections, one per core, each a
//! single-threaded runtime that a connection stays on from its handshake to its end.
//!
//! Why not the work-stealing runtime: for small requests it spends a third more CPU per
//! request. Each burst of socket events on one worker wakes another to steal (a futex and
//! an interrupt to the other core), and a request then hops between workers on its way to
//! the upstream and back. `scripts/bench/http`, 1 KiB answers, on 2 cores: 47–51 µs of
//! proxy CPU per request on a two-worker runtime, 35–37 µs on one worker. nginx's workers
//! are built the same way. What stealing buys, a long task not holding up others, matters
//! little here: nothing slow runs inline (password hashing and SQLite go to other threads),
//! and the long, heavy streams (SSH relays) are sent to the work-stealing runtime.
//!
//! One coupling to know: a PostgreSQL connection that a request opens is polled by that
//! request's shard, so a query on it from elsewhere waits for that thread's next poll.

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

/// The work-stealing runtime the shards were started from.
static MAIN: OnceLock<Handle> = OnceLock::new();

/// Runs `task` on the work-stealing runtime: for long-lived streams that move a lot of
/// data with work on both sides (SSH relays, with their crypto each way), which should
/// neither hold up a shard's other connections nor be held to one core.
pub fn spawn_main(task: impl Future<Output = ()> + Send + 'static) {
    match MAIN.get() {
        Some(main) => drop(main.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
}

pub struct Shards {
    handles: Box<[Handle]>,
    next: AtomicUsize,
}

impl Shards {
    /// Starts the shards' threads; they and the connections on them end with `stop`.
    pub fn start(stop: &CancellationToken) -> Result<Shards, String> {
        if let Ok(main) = Handle::try_current() {
            let _ = MAIN.set(main);
        }
        let mut handles = Vec::with_capacity(count());
        // The runtimes are built on their own threads: one dropped on a worker of the main
        // runtime (a thread that failed to start) would panic there.
        let started = stop.child_token();
        for i in 0..count() {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = started.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("jitgate-https-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        // Blocking work (password checks, files) has a pool per shard.
                        .max_blocking_threads(64)
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => return drop(tx.send(Err(e.to_string()))),
                    };
                    let _ = tx.send(Ok(runtime.handle().clone()));
                    CURRENT.with(|c| c.set(i));
                    runtime.block_on(stop.cancelled());
                });
            let handle = spawned
                .map_err(|e| e.to_string())
                .and_then(|_| rx.recv().map_err(|e| e.to_string()).and_then(|r| r));
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    started.cancel();
                    return Err(format!("cannot start an HTTPS thread: {e}"));
                }
            }
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
