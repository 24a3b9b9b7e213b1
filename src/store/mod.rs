//! Persistence behind one small trait. `SqlStore` implements it for SQLite (the embedded
//! default) and PostgreSQL (several replicas) through sqlx; the same test suite runs on both.
//!
//! Every state change commits together with the audit events that record it, so the log
//! cannot miss a transition. Changes to requests and grants are compare-and-swap on a
//! version column: two approvers racing lose nothing, one of them retries.

mod notices;
mod rows;
mod sql;

use async_trait::async_trait;

use crate::access::{AccessRequest, Grant};
use crate::audit::{AuditDraft, AuditEvent, AuditHead};
use crate::time::Timestamp;

pub use notices::{Attempt, ChatLink, LinkedUser, Notice, NoticeState, Notices};
pub use sql::SqlStore;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("the store returned bad data: {0}")]
    Corrupt(String),
    #[error("store error: {0}")]
    Database(String),
}

#[derive(Clone, Debug)]
pub struct UserRecord {
    pub name: String,
    pub groups: Vec<String>,
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: Timestamp,
}

impl UserRecord {
    /// Where the user logs in: "local" (a password), or the identity provider's name.
    pub fn source(&self) -> &str {
        match self.password_hash.strip_prefix("!idp:") {
            Some(rest) => rest.split(':').next().unwrap_or(rest),
            None => "local",
        }
    }
}

/// A browser session as stored: the secret's hash, never the secret.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub id_hash: String,
    pub user: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// The provider's name, or "local".
    pub idp: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub ended_at: Option<Timestamp>,
}

/// A session as a request sees it: with the user's current standing.
#[derive(Clone, Debug)]
pub struct SessionLookup {
    pub session: SessionRecord,
    /// True when the user was disabled or removed after the session began.
    pub user_disabled: bool,
}

/// Which grants a listing covers: everyone's (`holder: None`), or one holder's together
/// with every grant of `also_profiles` (the profiles a caller approves).
#[derive(Clone, Debug, Default)]
pub struct GrantFilter<'a> {
    pub holder: Option<&'a str>,
    pub also_profiles: &'a [String],
    pub active_only: bool,
}

/// Which requests a listing covers, newest first: everyone's (`requester: None`), or one
/// requester's together with every request of `also_profiles`.
#[derive(Clone, Debug)]
pub struct RequestFilter<'a> {
    pub requester: Option<&'a str>,
    pub also_profiles: &'a [String],
    pub pending_only: bool,
    pub limit: u32,
}

impl Default for RequestFilter<'_> {
    fn default() -> Self {
        RequestFilter {
            requester: None,
            also_profiles: &[],
            pending_only: false,
            limit: 1000,
        }
    }
}

#[async_trait]
pub trait Store: Notices + Send + Sync + 'static {
    /// Cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn add_user(&self, user: &UserRecord, event: AuditDraft) -> Result<(), StoreError>;
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Returns false when there is no such user.
    async fn set_user_disabled(&self, name: &str, disabled: bool, event: AuditDraft) -> Result<bool, StoreError>;

    /// Records a login from an identity provider: creates the user on first login (with
    /// `marker` in place of a password hash, so no password ever works) or updates its
    /// groups. Returns the record as it now stands; a local user of the same name is left
    /// untouched and returned as found, for the caller to refuse.
    async fn upsert_idp_user(
        &self,
        name: &str,
        groups: &[String],
        marker: &str,
        now: Timestamp,
    ) -> Result<UserRecord, StoreError>;

    /// Starts a session; with `spend`, also stores that one-time key in the same
    /// transaction (`AlreadyExists` if it was spent before, and then no session starts).
    async fn insert_session(
        &self,
        session: &SessionRecord,
        event: AuditDraft,
        spend: Option<(&str, Timestamp)>,
    ) -> Result<(), StoreError>;
    async fn session(&self, id_hash: &str) -> Result<Option<SessionLookup>, StoreError>;
    /// Ends a session; false when it had already ended or never existed.
    async fn end_session(&self, id_hash: &str, at: Timestamp, event: AuditDraft) -> Result<bool, StoreError>;

    /// Stores a one-time value of a login flow; `AlreadyExists` if `key` is taken, which is
    /// how a state or a code is made usable once.
    async fn put_flow(&self, key: &str, payload: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        self.put_flows(&[(key, payload, expires_at)]).await
    }
    /// Stores several one-time values at once: all of them, or none if any key is taken.
    async fn put_flows(&self, flows: &[(&str, &str, Timestamp)]) -> Result<(), StoreError>;
    /// Removes and returns an unexpired value: each value is handed out at most once.
    async fn take_flow(&self, key: &str, now: Timestamp) -> Result<Option<String>, StoreError>;
    /// Reads a value without taking it (device logins being polled).
    async fn peek_flow(&self, key: &str, now: Timestamp) -> Result<Option<String>, StoreError>;
    /// Replaces the value of an existing, unexpired flow; false when there is none.
    async fn update_flow(&self, key: &str, payload: &str, now: Timestamp) -> Result<bool, StoreError>;
    /// Deletes flows and sessions past their expiry.
    async fn purge_logins(&self, now: Timestamp) -> Result<(), StoreError>;

    async fn insert_request(
        &self,
        request: &AccessRequest,
        grant: Option<&Grant>,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError>;
    /// Writes `request` (and inserts `new_grant`) if the stored version is still
    /// `request.version`; returns false when another writer got there first.
    async fn update_request(
        &self,
        request: &AccessRequest,
        new_grant: Option<&Grant>,
        events: Vec<AuditDraft>,
    ) -> Result<bool, StoreError>;
    async fn request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError>;
    async fn requests(&self, filter: RequestFilter<'_>) -> Result<Vec<AccessRequest>, StoreError>;
    async fn count_pending(&self) -> Result<u64, StoreError>;
    /// Pending requests whose time to live has run out.
    async fn stale_requests(&self, now: Timestamp) -> Result<Vec<AccessRequest>, StoreError>;

    /// Writes `grant` and its request if both stored versions are unchanged.
    async fn update_grant(
        &self,
        grant: &Grant,
        request: &AccessRequest,
        events: Vec<AuditDraft>,
    ) -> Result<bool, StoreError>;
    async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;
    /// Newest first.
    async fn grants(&self, filter: GrantFilter<'_>) -> Result<Vec<Grant>, StoreError>;
    /// Active grants whose expiry has passed.
    async fn due_grants(&self, now: Timestamp) -> Result<Vec<Grant>, StoreError>;
    /// The next moment something is due: an active grant's expiry or a pending request's end.
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError>;

    async fn revoke_token(&self, jti: &str, expires_at: Timestamp, event: AuditDraft) -> Result<(), StoreError>;
    async fn token_revoked(&self, jti: &str) -> Result<bool, StoreError>;

    async fn append_audit(&self, events: Vec<AuditDraft>) -> Result<(), StoreError>;
    /// Where the chain ends, as recorded with the last append; None before the first event.
    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError>;
    /// In seq order, from `after_seq` (exclusive), at or after `since`, at most `limit`.
    async fn audit_events(
        &self,
        after_seq: i64,
        since: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;
    /// The events with one of `actions`, in seq order, after `after_seq` and up to `upto_seq`
    /// (both as seqs), at most `limit`.
    async fn audit_actions(
        &self,
        after_seq: i64,
        upto_seq: i64,
        actions: &[&str],
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;
}

/// Appends events that prove access ended (a session's end, a cut), where a passing store
/// failure (a busy database, a dropped connection) gets a few more tries before the error
/// is returned. For work that is not waiting on it: the tries take up to 1.5 s. A commit
/// whose answer was lost is written again: twice is better than never for such a record.
pub async fn append_audit_patiently(store: &dyn Store, events: Vec<AuditDraft>) -> Result<(), StoreError> {
    let mut wait = std::time::Duration::from_millis(100);
    let mut tries = 1;
    loop {
        match store.append_audit(events.clone()).await {
            Err(e) if tries < 5 => {
                tracing::warn!(error = %e, events = events.len(), "cannot append to the audit log yet; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            done => return done,
        }
    }
}

/// Opens the store named by `url` and applies the embedded migrations.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(std::sync::Arc::new(SqlStore::open(url).await?))
}
