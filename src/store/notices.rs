//! The durable queue of notices to Slack and webhooks, the Slack messages that announce
//! requests, and the chat accounts linked to users. A notice is claimed under a lease, so a
//! replica that dies mid-delivery leaves it to another one once the lease runs out.

use async_trait::async_trait;
use sqlx::any::AnyRow;

use super::rows::{get, opt_ts, ts};
use super::sql::{store_error, SqlStore};
use super::StoreError;
use crate::audit::AuditDraft;
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeState {
    Pending,
    Delivered,
    /// Given up: refused for good by the receiver, or not delivered in time.
    Failed,
}

impl NoticeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeState::Pending => "pending",
            NoticeState::Delivered => "delivered",
            NoticeState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(NoticeState::Pending),
            "delivered" => Ok(NoticeState::Delivered),
            "failed" => Ok(NoticeState::Failed),
            other => Err(StoreError::Corrupt(format!("notice state {other:?}"))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Notice {
    pub id: String,
    /// The `[[notify]]` target's name.
    pub target: String,
    /// Notices of one lane are delivered one at a time, in audit order.
    pub lane: String,
    pub event: String,
    pub audit_seq: i64,
    pub request_id: Option<String>,
    /// JSON text: the webhook body, or what a Slack note needs.
    pub payload: String,
    pub state: NoticeState,
    /// Attempts begun, the one under way included.
    pub attempts: u32,
    pub next_at: Timestamp,
    /// The attempt under way, when one is.
    pub claim: Option<String>,
    /// When it was first tried: how long it has been deliverable, for giving up.
    pub first_tried_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub done_at: Option<Timestamp>,
}

/// How one delivery attempt ended.
#[derive(Clone, Debug)]
pub enum Attempt {
    Delivered,
    RetryAt { at: Timestamp, error: String },
    Failed { error: String },
}

#[async_trait]
pub trait Notices {
    /// Resolves after this process commits a change (and so, maybe, audit events).
    async fn committed(&self);
    /// The seq of the last audit event read for notices.
    async fn notice_cursor(&self) -> Result<i64, StoreError>;
    /// Queues `notices` and moves the cursor from `from` to `to`, both or neither; false
    /// when someone else (another replica) moved the cursor first.
    async fn enqueue_notices(&self, from: i64, to: i64, notices: &[Notice]) -> Result<bool, StoreError>;
    /// Claims up to `limit` notices due at `now` until `lease_until`: only the oldest
    /// pending notice of each lane, oldest first.
    async fn claim_notices(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
        skip_targets: &[String],
    ) -> Result<Vec<Notice>, StoreError>;
    /// Records how the attempt `claim` ended, with its audit event if any; false (and
    /// nothing recorded) when that attempt's lease ran out and another took the notice.
    async fn finish_notice(
        &self,
        id: &str,
        claim: &str,
        attempt: Attempt,
        now: Timestamp,
        event: Option<AuditDraft>,
    ) -> Result<bool, StoreError>;
    /// When the next notice could be claimed: the earliest due lane head not under way,
    /// of a target not in `skip_targets`.
    async fn next_notice_at(&self, skip_targets: &[String]) -> Result<Option<Timestamp>, StoreError>;
    /// Deletes finished notices done before `before`, and the message records of requests
    /// that ended before it.
    async fn purge_notices(&self, before: Timestamp) -> Result<(), StoreError>;
    /// A request's notices, oldest first.
    async fn request_notices(&self, request_id: &str) -> Result<Vec<Notice>, StoreError>;

    /// The channel and timestamp of the message announcing a request in `place`.
    async fn slack_message(&self, request_id: &str, place: &str) -> Result<Option<(String, String)>, StoreError>;
    async fn put_slack_message(&self, request_id: &str, place: &str, channel: &str, ts: &str)
        -> Result<(), StoreError>;
    /// Every message announcing a request: (place, channel, ts).
    async fn slack_messages_of(&self, request_id: &str) -> Result<Vec<(String, String, String)>, StoreError>;

    /// Links `link.chat_user` to `link.user`, replacing the user's earlier link on that
    /// provider; `AlreadyExists` when that chat account is another user's.
    async fn link_chat(&self, link: &ChatLink, event: AuditDraft) -> Result<(), StoreError>;
    /// False when the user had no link there.
    async fn unlink_chat(&self, provider: &str, user: &str, event: AuditDraft) -> Result<bool, StoreError>;
    /// The links on `provider`, of one user or of everyone.
    async fn chat_links(&self, provider: &str, user: Option<&str>) -> Result<Vec<ChatLink>, StoreError>;
    /// The user a chat account is linked to.
    async fn chat_link_of(&self, provider: &str, chat_user: &str) -> Result<Option<ChatLink>, StoreError>;
    /// The users linked on `provider` (all, or the one of `chat_user`), with their records
    /// and last logins, in one read.
    async fn linked_users(&self, provider: &str, chat_user: Option<&str>) -> Result<Vec<LinkedUser>, StoreError>;

    /// The last audit seq after `after` of an event older than `before`, if any.
    async fn last_audit_seq_before(&self, after: i64, before: Timestamp) -> Result<Option<i64>, StoreError>;

    /// Notes that `user` logged in (or renewed a login) at `at`.
    async fn record_login(&self, user: &str, at: Timestamp) -> Result<(), StoreError>;
}

/// A linked chat account with the user it belongs to, as they stand now.
#[derive(Clone, Debug)]
pub struct LinkedUser {
    pub link: ChatLink,
    pub user: super::UserRecord,
    pub last_login: Option<Timestamp>,
}

/// A chat account proven to be a user's.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChatLink {
    pub provider: String,
    pub chat_user: String,
    pub user: String,
    pub linked_at: Timestamp,
}

/// `AND column NOT IN ($first, …)` for `count` parameters; nothing when there are none.
fn not_in(column: &str, first: usize, count: usize) -> String {
    if count == 0 {
        return String::new();
    }
    let params: Vec<String> = (first..first + count).map(|i| format!("${i}")).collect();
    format!("AND {column} NOT IN ({})", params.join(", "))
}

fn link_from_row(row: &AnyRow) -> Result<ChatLink, StoreError> {
    Ok(ChatLink {
        provider: get(row, "provider")?,
        chat_user: get(row, "chat_user")?,
        user: get(row, "user_name")?,
        linked_at: ts(row, "linked_at")?,
    })
}

const NOTICE_COLUMNS: &str = "id, target, lane, event, audit_seq, request_id, payload, state, attempts, next_at, \
     claim, first_tried_at, last_error, created_at, done_at";

fn notice_from_row(row: &AnyRow) -> Result<Notice, StoreError> {
    Ok(Notice {
        id: get(row, "id")?,
        target: get(row, "target")?,
        lane: get(row, "lane")?,
        event: get(row, "event")?,
        audit_seq: get(row, "audit_seq")?,
        request_id: get(row, "request_id")?,
        payload: get(row, "payload")?,
        state: NoticeState::parse(&get::<String>(row, "state")?)?,
        attempts: u32::try_from(get::<i64>(row, "attempts")?).unwrap_or(u32::MAX),
        next_at: ts(row, "next_at")?,
        claim: get(row, "claim")?,
        first_tried_at: opt_ts(row, "first_tried_at")?,
        last_error: get(row, "last_error")?,
        created_at: ts(row, "created_at")?,
        done_at: opt_ts(row, "done_at")?,
    })
}

#[async_trait]
impl Notices for SqlStore {
    async fn committed(&self) {
        self.committed.notified().await
    }

    async fn notice_cursor(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT seq FROM notice_cursor WHERE id = 1")
            .fetch_one(&self.reader)
            .await
            .map_err(store_error)?;
        get(&row, "seq")
    }

    async fn enqueue_notices(&self, from: i64, to: i64, notices: &[Notice]) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let moved = sqlx::query("UPDATE notice_cursor SET seq = $1 WHERE id = 1 AND seq = $2")
            .bind(to)
            .bind(from)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        for n in notices {
            sqlx::query(&format!(
                "INSERT INTO notices ({NOTICE_COLUMNS}, claimed_until) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,0)"
            ))
            .bind(&n.id)
            .bind(&n.target)
            .bind(&n.lane)
            .bind(&n.event)
            .bind(n.audit_seq)
            .bind(&n.request_id)
            .bind(&n.payload)
            .bind(n.state.as_str())
            .bind(i64::from(n.attempts))
            .bind(n.next_at.as_millis())
            .bind(&n.claim)
            .bind(n.first_tried_at.map(Timestamp::as_millis))
            .bind(&n.last_error)
            .bind(n.created_at.as_millis())
            .bind(n.done_at.map(Timestamp::as_millis))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn claim_notices(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
        skip_targets: &[String],
    ) -> Result<Vec<Notice>, StoreError> {
        let sql = format!(
            "SELECT {NOTICE_COLUMNS} FROM notices n \
             WHERE n.state = 'pending' AND n.next_at <= $1 AND n.claimed_until <= $1 {} \
             AND NOT EXISTS (SELECT 1 FROM notices e \
                 WHERE e.lane = n.lane AND e.state = 'pending' AND e.audit_seq < n.audit_seq) \
             ORDER BY n.audit_seq, n.id LIMIT $2",
            not_in("n.target", 3, skip_targets.len())
        );
        let mut query = sqlx::query(&sql).bind(now.as_millis()).bind(i64::from(limit));
        for t in skip_targets {
            query = query.bind(t);
        }
        let rows = query.fetch_all(&self.reader).await.map_err(store_error)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut n = notice_from_row(row)?;
            let claim = crate::identity::token::random_id("claim-");
            // Compare-and-swap: of replicas racing for one notice, one gets it, and only
            // once it is due (another may have just put it back to wait).
            let won = sqlx::query(
                "UPDATE notices SET claimed_until = $1, attempts = attempts + 1, claim = $2, \
                 first_tried_at = COALESCE(first_tried_at, $3) \
                 WHERE id = $4 AND state = 'pending' AND claimed_until <= $3 AND next_at <= $3",
            )
            .bind(lease_until.as_millis())
            .bind(&claim)
            .bind(now.as_millis())
            .bind(&n.id)
            .execute(&self.writer)
            .await
            .map_err(store_error)?;
            if won.rows_affected() == 1 {
                n.attempts += 1;
                n.claim = Some(claim);
                n.first_tried_at.get_or_insert(now);
                claimed.push(n);
            }
        }
        Ok(claimed)
    }

    async fn finish_notice(
        &self,
        id: &str,
        claim: &str,
        attempt: Attempt,
        now: Timestamp,
        event: Option<AuditDraft>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let (state, next_at, error) = match &attempt {
            Attempt::Delivered => (NoticeState::Delivered, None, None),
            Attempt::RetryAt { at, error } => (NoticeState::Pending, Some(*at), Some(error.as_str())),
            Attempt::Failed { error } => (NoticeState::Failed, None, Some(error.as_str())),
        };
        let done_at = (state != NoticeState::Pending).then_some(now.as_millis());
        let done = sqlx::query(
            "UPDATE notices SET state = $1, next_at = COALESCE($2, next_at), last_error = $3, done_at = $4, \
             claimed_until = 0, claim = NULL WHERE id = $5 AND claim = $6",
        )
        .bind(state.as_str())
        .bind(next_at.map(Timestamp::as_millis))
        .bind(error)
        .bind(done_at)
        .bind(id)
        .bind(claim)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(e) = event {
            self.seal_events(&mut tx, vec![e]).await?;
        }
        // Not `self.commit`: the notifier's own audit events need no one woken.
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn next_notice_at(&self, skip_targets: &[String]) -> Result<Option<Timestamp>, StoreError> {
        // Notices behind a lane head wait for it, not for their own time; a head under way
        // is free again when its lease ends (its worker wakes the loop sooner when done).
        let sql = format!(
            "SELECT MIN(CASE WHEN n.claimed_until > n.next_at THEN n.claimed_until ELSE n.next_at END) AS t \
             FROM notices n WHERE n.state = 'pending' {} \
             AND NOT EXISTS (SELECT 1 FROM notices e \
                 WHERE e.lane = n.lane AND e.state = 'pending' AND e.audit_seq < n.audit_seq)",
            not_in("n.target", 1, skip_targets.len())
        );
        let mut query = sqlx::query(&sql);
        for t in skip_targets {
            query = query.bind(t);
        }
        let row = query.fetch_one(&self.reader).await.map_err(store_error)?;
        Ok(get::<Option<i64>>(&row, "t")?.map(Timestamp::from_millis))
    }

    async fn purge_notices(&self, before: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for sql in [
            "DELETE FROM notices WHERE state <> 'pending' AND done_at < $1",
            "DELETE FROM slack_messages WHERE request_id IN (SELECT id FROM requests \
             WHERE state NOT IN ('pending', 'active') AND created_at < $1) \
             AND NOT EXISTS (SELECT 1 FROM notices n \
                 WHERE n.request_id = slack_messages.request_id AND n.state = 'pending')",
        ] {
            sqlx::query(sql)
                .bind(before.as_millis())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn request_notices(&self, request_id: &str) -> Result<Vec<Notice>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {NOTICE_COLUMNS} FROM notices WHERE request_id = $1 ORDER BY audit_seq, id"
        ))
        .bind(request_id)
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter().map(notice_from_row).collect()
    }

    async fn slack_message(&self, request_id: &str, place: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT channel, ts FROM slack_messages WHERE request_id = $1 AND place = $2")
            .bind(request_id)
            .bind(place)
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?;
        row.map(|r| Ok((get(&r, "channel")?, get(&r, "ts")?))).transpose()
    }

    async fn put_slack_message(
        &self,
        request_id: &str,
        place: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO slack_messages (request_id, place, channel, ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (request_id, place) DO UPDATE SET channel = excluded.channel, ts = excluded.ts",
        )
        .bind(request_id)
        .bind(place)
        .bind(channel)
        .bind(ts)
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn slack_messages_of(&self, request_id: &str) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query("SELECT place, channel, ts FROM slack_messages WHERE request_id = $1 ORDER BY place")
            .bind(request_id)
            .fetch_all(&self.reader)
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|r| Ok((get(r, "place")?, get(r, "channel")?, get(r, "ts")?)))
            .collect()
    }

    async fn link_chat(&self, link: &ChatLink, event: AuditDraft) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let taken = sqlx::query("SELECT user_name FROM chat_links WHERE provider = $1 AND chat_user = $2")
            .bind(&link.provider)
            .bind(&link.chat_user)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if let Some(row) = taken {
            let owner: String = get(&row, "user_name")?;
            if owner != link.user {
                return Err(StoreError::AlreadyExists(format!(
                    "a link of that {} account (to another user)",
                    link.provider
                )));
            }
        }
        sqlx::query("DELETE FROM chat_links WHERE provider = $1 AND (user_name = $2 OR chat_user = $3)")
            .bind(&link.provider)
            .bind(&link.user)
            .bind(&link.chat_user)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query("INSERT INTO chat_links (provider, chat_user, user_name, linked_at) VALUES ($1, $2, $3, $4)")
            .bind(&link.provider)
            .bind(&link.chat_user)
            .bind(&link.user)
            .bind(link.linked_at.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        self.seal_events(&mut tx, vec![event]).await?;
        self.commit(tx).await
    }

    async fn unlink_chat(&self, provider: &str, user: &str, event: AuditDraft) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM chat_links WHERE provider = $1 AND user_name = $2")
            .bind(provider)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.seal_events(&mut tx, vec![event]).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn chat_links(&self, provider: &str, user: Option<&str>) -> Result<Vec<ChatLink>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, chat_user, user_name, linked_at FROM chat_links \
             WHERE provider = $1 AND ($2 = '' OR user_name = $2) ORDER BY user_name",
        )
        .bind(provider)
        .bind(user.unwrap_or(""))
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter().map(link_from_row).collect()
    }

    async fn chat_link_of(&self, provider: &str, chat_user: &str) -> Result<Option<ChatLink>, StoreError> {
        let row = sqlx::query(
            "SELECT provider, chat_user, user_name, linked_at FROM chat_links WHERE provider = $1 AND chat_user = $2",
        )
        .bind(provider)
        .bind(chat_user)
        .fetch_optional(&self.reader)
        .await
        .map_err(store_error)?;
        row.as_ref().map(link_from_row).transpose()
    }

    async fn linked_users(&self, provider: &str, chat_user: Option<&str>) -> Result<Vec<LinkedUser>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.provider, l.chat_user, l.user_name, l.linked_at, \
             u.name, u.groups, u.password_hash, u.disabled, u.created_at, g.at AS last_login \
             FROM chat_links l JOIN users u ON u.name = l.user_name \
             LEFT JOIN user_logins g ON g.name = l.user_name \
             WHERE l.provider = $1 AND ($2 = '' OR l.chat_user = $2) ORDER BY l.user_name",
        )
        .bind(provider)
        .bind(chat_user.unwrap_or(""))
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                Ok(LinkedUser {
                    link: link_from_row(r)?,
                    user: super::rows::user_from_row(r)?,
                    last_login: opt_ts(r, "last_login")?,
                })
            })
            .collect()
    }

    async fn record_login(&self, user: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO user_logins (name, at) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET at = excluded.at",
        )
        .bind(user)
        .bind(at.as_millis())
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn last_audit_seq_before(&self, after: i64, before: Timestamp) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MAX(seq) AS seq FROM audit_events WHERE seq > $1 AND at < $2")
            .bind(after)
            .bind(before.as_millis())
            .fetch_one(&self.reader)
            .await
            .map_err(store_error)?;
        get(&row, "seq")
    }
}
