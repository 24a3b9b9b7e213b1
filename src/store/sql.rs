//! `Store` over sqlx's `Any` driver: one body of SQL for SQLite and PostgreSQL (the DDL and
//! queries are written to run on both, `$N` parameters included), with the few places the
//! two differ (how a write transaction starts, how audit appends serialize) chosen by
//! dialect.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};

use super::rows::*;
use super::{GrantFilter, RequestFilter, SessionLookup, SessionRecord, Store, StoreError, UserRecord};
use crate::access::{AccessRequest, Grant};
use crate::audit::{AuditDraft, AuditEvent, AuditHead, GENESIS};
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

/// Any constant works; it names the lock that orders audit appends across replicas.
const AUDIT_LOCK: i64 = 0x006a_6974_6761_7465;

pub struct SqlStore {
    pub(super) dialect: Dialect,
    /// SQLite allows one writer at a time; a single writer connection queues writes in
    /// process instead of failing them with SQLITE_BUSY. PostgreSQL uses `reader` for all.
    pub(super) writer: AnyPool,
    pub(super) reader: AnyPool,
    /// Signalled after each commit, so readers of the audit log (the notifier) look at once.
    pub(super) committed: tokio::sync::Notify,
}

const REQUEST_COLUMNS: &str = "id, profile, requester, requester_groups, reason, duration_ms, state, created_at, \
     pending_until, approvals, approvals_required, decided_at, decided_by, decision_reason, grant_id, version";
const GRANT_COLUMNS: &str = "id, request_id, profile, holder, groups, reason, state, created_at, expires_at, \
     ended_at, ended_by, end_reason, version";
const AUDIT_COLUMNS: &str = "seq, at, actor, action, target, request_id, grant_id, reason, details, prev_hash, hash";

impl SqlStore {
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let path = path.split('?').next().unwrap_or(path);
            if path != ":memory:" {
                if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
                }
            }
            let url = if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            };
            (Dialect::Sqlite, url)
        } else {
            (Dialect::Postgres, url.to_owned())
        };
        let pool = |max| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(5))
        };
        let connect = |p: AnyPoolOptions| {
            let url = url.clone();
            async move { p.connect(&url).await.map_err(store_error) }
        };
        let store = match dialect {
            Dialect::Sqlite => {
                let writer = connect(pool(1)).await?;
                sqlx::query("PRAGMA journal_mode=WAL")
                    .execute(&writer)
                    .await
                    .map_err(store_error)?;
                let reader = connect(pool(4)).await?;
                SqlStore {
                    dialect,
                    writer,
                    reader,
                    committed: tokio::sync::Notify::new(),
                }
            }
            Dialect::Postgres => {
                let p = connect(pool(16)).await?;
                SqlStore {
                    dialect,
                    writer: p.clone(),
                    reader: p,
                    committed: tokio::sync::Notify::new(),
                }
            }
        };
        sqlx::migrate!("src/store/migrations")
            .run(&store.writer)
            .await
            .map_err(|e| StoreError::Database(format!("applying migrations: {e}")))?;
        Ok(store)
    }

    pub(super) async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.dialect {
            // IMMEDIATE takes the write lock up front (waiting on busy_timeout), so a
            // transaction that reads before it writes cannot fail midway because another
            // process wrote in between.
            Dialect::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.writer.begin().await,
        }
        .map_err(store_error)
    }

    /// Commits, then wakes whoever waits for new audit events.
    pub(super) async fn commit(&self, tx: Transaction<'static, Any>) -> Result<(), StoreError> {
        tx.commit().await.map_err(store_error)?;
        self.committed.notify_one();
        Ok(())
    }

    /// Runs an UPDATE of one row and, if it changed a row, records `event` with it; false
    /// when nothing matched (and nothing is recorded).
    async fn change_one<'q>(
        &self,
        update: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
        event: AuditDraft,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = update.execute(&mut *tx).await.map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.seal_events(&mut tx, vec![event]).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    pub(super) async fn seal_events(
        &self,
        tx: &mut Transaction<'static, Any>,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_LOCK)
                .execute(&mut **tx)
                .await
                .map_err(store_error)?;
        }
        let last = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(store_error)?;
        let (mut seq, mut prev) = match last {
            Some(row) => (get::<i64>(&row, "seq")?, get::<String>(&row, "hash")?),
            None => (0, GENESIS.to_owned()),
        };
        let now = Timestamp::now();
        for draft in events {
            seq += 1;
            let e = draft.seal(seq, &prev, now);
            sqlx::query(&format!(
                "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
            ))
            .bind(e.seq)
            .bind(e.time.as_millis())
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.request_id)
            .bind(&e.grant_id)
            .bind(&e.reason)
            .bind(&e.details)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
            prev = e.hash;
        }
        sqlx::query(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .bind(seq)
        .bind(&prev)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn insert_grant(tx: &mut Transaction<'static, Any>, g: &Grant) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO grants ({GRANT_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
        ))
        .bind(&g.id)
        .bind(&g.request_id)
        .bind(&g.profile)
        .bind(&g.user)
        .bind(json(&g.groups))
        .bind(&g.reason)
        .bind(g.state.as_str())
        .bind(g.created_at.as_millis())
        .bind(g.expires_at.as_millis())
        .bind(g.ended_at.map(Timestamp::as_millis))
        .bind(&g.ended_by)
        .bind(&g.end_reason)
        .bind(g.version)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn write_request(tx: &mut Transaction<'static, Any>, r: &AccessRequest) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE requests SET state = $1, approvals = $2, decided_at = $3, decided_by = $4, decision_reason = $5, \
             grant_id = $6, approvals_required = $7, version = version + 1 WHERE id = $8 AND version = $9",
        )
        .bind(r.state.as_str())
        .bind(json(&r.approvals))
        .bind(r.decided_at.map(Timestamp::as_millis))
        .bind(&r.decided_by)
        .bind(&r.decision_reason)
        .bind(&r.grant_id)
        // Raised when the profile was tightened after the request was opened.
        .bind(i64::from(r.approvals_required))
        .bind(&r.id)
        .bind(r.version)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn add_user(&self, u: &UserRecord, event: AuditDraft) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (name, groups, password_hash, disabled, created_at) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(&u.name)
        .bind(json(&u.groups))
        .bind(&u.password_hash)
        .bind(i64::from(u.disabled))
        .bind(u.created_at.as_millis())
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::AlreadyExists(format!("user {:?}", u.name)))
            }
            other => other.map_err(store_error)?,
        };
        self.seal_events(&mut tx, vec![event]).await?;
        self.commit(tx).await
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query("SELECT name, groups, password_hash, disabled, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query("SELECT name, groups, password_hash, disabled, created_at FROM users ORDER BY name")
            .fetch_all(&self.reader)
            .await
            .map_err(store_error)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn set_user_disabled(&self, name: &str, disabled: bool, event: AuditDraft) -> Result<bool, StoreError> {
        let q = sqlx::query("UPDATE users SET disabled = $1 WHERE name = $2")
            .bind(i64::from(disabled))
            .bind(name);
        self.change_one(q, event).await
    }

    async fn upsert_idp_user(
        &self,
        name: &str,
        groups: &[String],
        marker: &str,
        now: Timestamp,
    ) -> Result<UserRecord, StoreError> {
        // Most logins change nothing: answer those from a read, without a write transaction.
        if let Some(found) = self.user(name).await? {
            if found.password_hash != marker || found.groups == groups {
                return Ok(found);
            }
        }
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT name, groups, password_hash, disabled, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        let record = match row.as_ref().map(user_from_row).transpose()? {
            Some(found) if found.password_hash != marker => return Ok(found),
            Some(found) => {
                sqlx::query("UPDATE users SET groups = $1 WHERE name = $2")
                    .bind(json(&groups))
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                UserRecord {
                    groups: groups.to_vec(),
                    ..found
                }
            }
            None => {
                let record = UserRecord {
                    name: name.to_owned(),
                    groups: groups.to_vec(),
                    password_hash: marker.to_owned(),
                    disabled: false,
                    created_at: now,
                };
                let inserted = sqlx::query(
                    "INSERT INTO users (name, groups, password_hash, disabled, created_at) VALUES ($1,$2,$3,$4,$5)",
                )
                .bind(&record.name)
                .bind(json(&record.groups))
                .bind(&record.password_hash)
                .bind(0_i64)
                .bind(now.as_millis())
                .execute(&mut *tx)
                .await;
                match inserted {
                    // A first login racing another (PostgreSQL: the other transaction
                    // committed first): the row is theirs now; answer with it.
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        drop(tx);
                        return self
                            .user(name)
                            .await?
                            .ok_or_else(|| StoreError::Corrupt(format!("user {name:?} vanished during a login")));
                    }
                    other => other.map_err(store_error)?,
                };
                record
            }
        };
        self.commit(tx).await?;
        Ok(record)
    }

    async fn insert_session(
        &self,
        s: &SessionRecord,
        event: AuditDraft,
        spend: Option<(&str, Timestamp)>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some((key, expires_at)) = spend {
            insert_flow(&mut tx, key, "used", expires_at).await?;
        }
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_name, email, groups, idp, created_at, expires_at, ended_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,NULL)",
        )
        .bind(&s.id_hash)
        .bind(&s.user)
        .bind(&s.email)
        .bind(json(&s.groups))
        .bind(&s.idp)
        .bind(s.created_at.as_millis())
        .bind(s.expires_at.as_millis())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        self.seal_events(&mut tx, vec![event]).await?;
        self.commit(tx).await
    }

    async fn session(&self, id_hash: &str) -> Result<Option<SessionLookup>, StoreError> {
        let row = sqlx::query(
            "SELECT s.id_hash, s.user_name, s.email, s.groups, s.idp, s.created_at, s.expires_at, s.ended_at, \
             u.disabled AS disabled FROM sessions s LEFT JOIN users u ON u.name = s.user_name WHERE s.id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(&self.reader)
        .await
        .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        let session = session_from_row(&row)?;
        // No users row at all counts as disabled: the user was removed.
        let disabled: Option<i64> = get(&row, "disabled")?;
        Ok(Some(SessionLookup {
            session,
            user_disabled: disabled.is_none_or(|d| d != 0),
        }))
    }

    async fn end_session(&self, id_hash: &str, at: Timestamp, event: AuditDraft) -> Result<bool, StoreError> {
        let q = sqlx::query("UPDATE sessions SET ended_at = $1 WHERE id_hash = $2 AND ended_at IS NULL")
            .bind(at.as_millis())
            .bind(id_hash);
        self.change_one(q, event).await
    }

    async fn put_flows(&self, flows: &[(&str, &str, Timestamp)]) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for (key, payload, expires_at) in flows {
            insert_flow(&mut tx, key, payload, *expires_at).await?;
        }
        self.commit(tx).await
    }

    async fn take_flow(&self, key: &str, now: Timestamp) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("DELETE FROM login_flows WHERE key = $1 RETURNING payload, expires_at")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        self.commit(tx).await?;
        match row {
            Some(r) if ts(&r, "expires_at")? > now => Ok(Some(get(&r, "payload")?)),
            _ => Ok(None),
        }
    }

    async fn peek_flow(&self, key: &str, now: Timestamp) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT payload FROM login_flows WHERE key = $1 AND expires_at > $2")
            .bind(key)
            .bind(now.as_millis())
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?;
        row.map(|r| get(&r, "payload")).transpose()
    }

    async fn update_flow(&self, key: &str, payload: &str, now: Timestamp) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE login_flows SET payload = $1 WHERE key = $2 AND expires_at > $3")
            .bind(payload)
            .bind(key)
            .bind(now.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        self.commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_logins(&self, now: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for sql in [
            "DELETE FROM login_flows WHERE expires_at <= $1",
            "DELETE FROM sessions WHERE expires_at <= $1",
        ] {
            sqlx::query(sql)
                .bind(now.as_millis())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        self.commit(tx).await
    }

    async fn insert_request(
        &self,
        r: &AccessRequest,
        grant: Option<&Grant>,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(&format!(
            "INSERT INTO requests ({REQUEST_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)"
        ))
        .bind(&r.id)
        .bind(&r.profile)
        .bind(&r.requester.user)
        .bind(json(&r.requester.groups))
        .bind(&r.reason)
        .bind(i64::try_from(r.duration.as_millis()).unwrap_or(i64::MAX))
        .bind(r.state.as_str())
        .bind(r.created_at.as_millis())
        .bind(r.pending_until.as_millis())
        .bind(json(&r.approvals))
        .bind(i64::from(r.approvals_required))
        .bind(r.decided_at.map(Timestamp::as_millis))
        .bind(&r.decided_by)
        .bind(&r.decision_reason)
        .bind(&r.grant_id)
        .bind(r.version)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if let Some(g) = grant {
            Self::insert_grant(&mut tx, g).await?;
        }
        self.seal_events(&mut tx, events).await?;
        self.commit(tx).await
    }

    async fn update_request(
        &self,
        r: &AccessRequest,
        new_grant: Option<&Grant>,
        events: Vec<AuditDraft>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if !Self::write_request(&mut tx, r).await? {
            return Ok(false);
        }
        if let Some(g) = new_grant {
            Self::insert_grant(&mut tx, g).await?;
        }
        self.seal_events(&mut tx, events).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        let row = sqlx::query(&format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?;
        row.as_ref().map(request_from_row).transpose()
    }

    async fn requests(&self, filter: RequestFilter<'_>) -> Result<Vec<AccessRequest>, StoreError> {
        let state = if filter.pending_only {
            "state = 'pending'"
        } else {
            "1 = 1"
        };
        let (who, binds) = visible("requester", filter.requester, filter.also_profiles, 2);
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE {state} AND {who} ORDER BY created_at DESC, id LIMIT $1"
        );
        let mut query = sqlx::query(&sql).bind(i64::from(filter.limit));
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.reader).await.map_err(store_error)?;
        rows.iter().map(request_from_row).collect()
    }

    async fn count_pending(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM requests WHERE state = 'pending'")
            .fetch_one(&self.reader)
            .await
            .map_err(store_error)?;
        Ok(u64::try_from(get::<i64>(&row, "n")?).unwrap_or(0))
    }

    async fn stale_requests(&self, now: Timestamp) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE state = 'pending' AND pending_until <= $1"
        ))
        .bind(now.as_millis())
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter().map(request_from_row).collect()
    }

    async fn update_grant(&self, g: &Grant, r: &AccessRequest, events: Vec<AuditDraft>) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE grants SET state = $1, ended_at = $2, ended_by = $3, end_reason = $4, version = version + 1 \
             WHERE id = $5 AND version = $6",
        )
        .bind(g.state.as_str())
        .bind(g.ended_at.map(Timestamp::as_millis))
        .bind(&g.ended_by)
        .bind(&g.end_reason)
        .bind(&g.id)
        .bind(g.version)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if done.rows_affected() != 1 || !Self::write_request(&mut tx, r).await? {
            return Ok(false);
        }
        self.seal_events(&mut tx, events).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?;
        row.as_ref().map(grant_from_row).transpose()
    }

    async fn grants(&self, filter: GrantFilter<'_>) -> Result<Vec<Grant>, StoreError> {
        let state = if filter.active_only {
            "state = 'active'"
        } else {
            "1 = 1"
        };
        let (who, binds) = visible("holder", filter.holder, filter.also_profiles, 1);
        let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE {state} AND {who} ORDER BY created_at DESC, id");
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.reader).await.map_err(store_error)?;
        rows.iter().map(grant_from_row).collect()
    }

    async fn due_grants(&self, now: Timestamp) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE state = 'active' AND expires_at <= $1"
        ))
        .bind(now.as_millis())
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter().map(grant_from_row).collect()
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT MIN(expires_at) FROM grants WHERE state = 'active') AS g, \
                    (SELECT MIN(pending_until) FROM requests WHERE state = 'pending') AS r",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(store_error)?;
        let g: Option<i64> = get(&row, "g")?;
        let r: Option<i64> = get(&row, "r")?;
        Ok(g.into_iter().chain(r).min().map(Timestamp::from_millis))
    }

    async fn revoke_token(&self, jti: &str, expires_at: Timestamp, event: AuditDraft) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Entries past their token's expiry guard nothing: the token no longer verifies.
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
            .bind(Timestamp::now().as_millis())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        self.seal_events(&mut tx, vec![event]).await?;
        self.commit(tx).await
    }

    async fn token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS hit FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?;
        Ok(row.is_some())
    }

    async fn append_audit(&self, events: Vec<AuditDraft>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.seal_events(&mut tx, events).await?;
        self.commit(tx).await
    }

    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?;
        row.map(|r| {
            Ok(AuditHead {
                seq: get(&r, "seq")?,
                hash: get(&r, "hash")?,
            })
        })
        .transpose()
    }

    async fn audit_events(
        &self,
        after_seq: i64,
        since: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > $1 AND at >= $2 ORDER BY seq LIMIT $3"
        ))
        .bind(after_seq)
        .bind(since.map_or(i64::MIN, Timestamp::as_millis))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn audit_actions(
        &self,
        after_seq: i64,
        upto_seq: i64,
        actions: &[&str],
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        if actions.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<String> = (0..actions.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > $1 AND seq <= $2 AND action IN ({}) ORDER BY seq LIMIT $3",
            wanted.join(",")
        );
        let mut query = sqlx::query(&sql).bind(after_seq).bind(upto_seq).bind(i64::from(limit));
        for a in actions {
            query = query.bind(*a);
        }
        let rows = query.fetch_all(&self.reader).await.map_err(store_error)?;
        rows.iter().map(audit_from_row).collect()
    }
}

async fn insert_flow(
    tx: &mut Transaction<'static, Any>,
    key: &str,
    payload: &str,
    expires_at: Timestamp,
) -> Result<(), StoreError> {
    let inserted = sqlx::query("INSERT INTO login_flows (key, payload, expires_at) VALUES ($1,$2,$3)")
        .bind(key)
        .bind(payload)
        .bind(expires_at.as_millis())
        .execute(&mut **tx)
        .await;
    match inserted {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::AlreadyExists("this one-time value".into()))
        }
        other => other.map(|_| ()).map_err(store_error),
    }
}

pub(super) fn store_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::AlreadyExists(d.message().to_owned()),
        other => StoreError::Database(other.to_string()),
    }
}

/// The WHERE clause of a listing limited to what one person may see: their own rows (by
/// `column`) and every row of the profiles they approve. Parameters are numbered from
/// `first`; returns the clause and the values to bind, in order.
fn visible<'a>(column: &str, who: Option<&'a str>, profiles: &'a [String], first: usize) -> (String, Vec<&'a str>) {
    let Some(who) = who else {
        return ("1 = 1".to_owned(), Vec::new());
    };
    let mut clause = format!("({column} = ${first}");
    let mut binds = vec![who];
    if !profiles.is_empty() {
        let params: Vec<String> = (0..profiles.len()).map(|i| format!("${}", first + 1 + i)).collect();
        clause.push_str(&format!(" OR profile IN ({})", params.join(", ")));
        binds.extend(profiles.iter().map(String::as_str));
    }
    clause.push(')');
    (clause, binds)
}
