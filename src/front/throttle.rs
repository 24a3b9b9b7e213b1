//! How denials reach the audit log without letting a client flood it: the same denial again
//! within a few seconds is only logged, and one user gets a bounded number of denial events
//! a minute.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

/// The same denial is audited once in this long.
const REPEAT: Duration = Duration::from_secs(10);
const PER_MINUTE: u32 = 60;

pub struct DenialThrottle {
    seen: Cache<String, ()>,
    budget: Cache<String, Arc<AtomicU32>>,
}

impl DenialThrottle {
    pub fn new(entries: u64) -> DenialThrottle {
        DenialThrottle {
            seen: Cache::builder().max_capacity(entries).time_to_live(REPEAT).build(),
            budget: Cache::builder()
                .max_capacity(entries)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// Whether this denial (`what`, which the caller spells) of `user` goes to the audit log.
    pub async fn worth_auditing(&self, user: &str, what: &str) -> bool {
        let key = format!("{user}\0{what}");
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key, ()).await;
        let budget = self
            .budget
            .get_with(user.to_owned(), async { Arc::new(AtomicU32::new(0)) })
            .await;
        let n = budget.fetch_add(1, Ordering::Relaxed);
        if n == PER_MINUTE {
            tracing::warn!(user, "too many denials; not auditing more of this user's for a minute");
        }
        n < PER_MINUTE
    }
}

/// At most `max` bytes of `s`, cut on a character boundary: what a client sends is stored
/// only so far.
pub fn capped(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
