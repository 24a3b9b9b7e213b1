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

    /// The audit write for a denial that was worth auditing failed: the next one like it
    /// tries again instead of being skipped as a repeat of one that is not in the log.
    pub async fn not_recorded(&self, user: &str, what: &str) {
        self.seen.invalidate(&format!("{user}\0{what}")).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_repeat_is_skipped_unless_the_first_was_not_recorded() {
        let t = DenialThrottle::new(1000);
        assert!(t.worth_auditing("alice", "GET /a").await);
        assert!(!t.worth_auditing("alice", "GET /a").await);
        assert!(t.worth_auditing("bob", "GET /a").await);
        t.not_recorded("alice", "GET /a").await;
        assert!(t.worth_auditing("alice", "GET /a").await);
        // One user's budget runs out; another's does not.
        let audited = futures_util::future::join_all((0..100).map(|i| {
            let t = &t;
            async move { t.worth_auditing("mallory", &format!("GET /{i}")).await }
        }))
        .await;
        assert_eq!(audited.iter().filter(|a| **a).count(), PER_MINUTE as usize);
        assert!(t.worth_auditing("carol", "GET /a").await);
    }
}
