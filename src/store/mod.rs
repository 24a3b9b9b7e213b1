//! Persistence behind one small trait. `SqlStore` implements it for SQLite (the embedded
//! default) and PostgreSQL (several replicas) through sqlx; the same test suite runs on both.
//!
//! Every state change commits together with the audit events that record it, so the log
//! cannot miss a transition. Changes to requests and grants are compare-and-swap on a
//! version column: two approvers racing lose nothing, one of them retries.

mod sql;

use async_trait::async_trait;

use crate::access::{AccessRequest, Grant};
use crate::audit::{AuditDraft, AuditEvent, AuditHead};
use crate::time::Timestamp;

pub use sql::SqlStore;

#[derive(Debug, thiserror::Error)]
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
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn add_user(&self, user: &UserRecord, event: AuditDraft) -> Result<(), StoreError>;
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Returns false when there is no such user.
    async fn set_user_disabled(&self, name: &str, disabled: bool, event: AuditDraft) -> Result<bool, StoreError>;

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
}

/// Opens the store named by `url` and applies the embedded migrations.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(std::sync::Arc::new(SqlStore::open(url).await?))
}
