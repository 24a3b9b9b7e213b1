//! Sampled request lines on their way to the audit log: a bounded queue and one writer, so
//! that a slow store costs dropped samples, never memory or tasks without end, and never
//! the requests they describe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::audit::AuditDraft;
use crate::store::Store;
use crate::time::Timestamp;

/// Samples waiting for the writer; beyond this they are dropped and counted.
const QUEUE: usize = 4096;
/// Samples written in one append: a burst costs few transactions, and none holds the
/// store's writer long from the audit writes that requests wait on.
const BATCH: usize = 32;

pub(super) struct Samples {
    queue: mpsc::Sender<AuditDraft>,
    dropped: Arc<AtomicU64>,
}

impl Samples {
    /// Starts the writer; it ends when the last sender goes, after writing what is queued.
    pub(super) fn start(store: Arc<dyn Store>) -> Samples {
        let (queue, mut rx) = mpsc::channel::<AuditDraft>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = Arc::clone(&dropped);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let n = batch.len();
                if let Err(e) = store.append_audit(std::mem::take(&mut batch)).await {
                    tracing::warn!(error = %e, samples = n, "cannot record sampled app requests");
                }
                let gone = lost.swap(0, Ordering::Relaxed);
                if gone > 0 {
                    tracing::warn!(
                        dropped = gone,
                        "sampled app requests dropped: the audit log fell behind (lower audit_sample?)"
                    );
                }
            }
        });
        Samples { queue, dropped }
    }

    /// Queues one sample without waiting, stamped now (it may be written a little later);
    /// a full queue drops it. The first drop since the writer last reported is logged at
    /// once, so a store that hangs is not silent about it.
    pub(super) fn record(&self, mut event: AuditDraft) {
        event.time.get_or_insert_with(Timestamp::now);
        if self.queue.try_send(event).is_err() && self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("sampled app requests are being dropped: the audit log is behind (lower audit_sample?)");
        }
    }
}
