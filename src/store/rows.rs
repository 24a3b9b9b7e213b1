//! Rows to values: how each stored row becomes the type the rest of the proxy uses. Times are
//! integer milliseconds, lists JSON text; a value that does not parse is `Corrupt`, never a
//! silent default.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use super::{SessionRecord, StoreError, UserRecord};
use crate::access::{AccessRequest, Approval, Grant, GrantState, Identity, RequestState};
use crate::audit::AuditEvent;
use crate::time::Timestamp;

pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("lists serialize")
}

pub(super) fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(col)
        .map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T, StoreError> {
    let text: String = get(row, col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
}

pub(super) fn ts(row: &AnyRow, col: &str) -> Result<Timestamp, StoreError> {
    get::<i64>(row, col).map(Timestamp::from_millis)
}

pub(super) fn opt_ts(row: &AnyRow, col: &str) -> Result<Option<Timestamp>, StoreError> {
    Ok(get::<Option<i64>>(row, col)?.map(Timestamp::from_millis))
}

pub(super) fn user_from_row(row: &AnyRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        name: get(row, "name")?,
        groups: from_json(row, "groups")?,
        password_hash: get(row, "password_hash")?,
        disabled: get::<i64>(row, "disabled")? != 0,
        created_at: ts(row, "created_at")?,
    })
}

pub(super) fn request_from_row(row: &AnyRow) -> Result<AccessRequest, StoreError> {
    let state: String = get(row, "state")?;
    let approvals: Vec<Approval> = from_json(row, "approvals")?;
    Ok(AccessRequest {
        id: get(row, "id")?,
        profile: get(row, "profile")?,
        requester: Identity {
            user: get(row, "requester")?,
            groups: from_json(row, "requester_groups")?,
        },
        reason: get(row, "reason")?,
        duration: Duration::from_millis(u64::try_from(get::<i64>(row, "duration_ms")?).unwrap_or(0)),
        state: RequestState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("request state {state:?}")))?,
        created_at: ts(row, "created_at")?,
        pending_until: ts(row, "pending_until")?,
        approvals,
        approvals_required: u32::try_from(get::<i64>(row, "approvals_required")?).unwrap_or(u32::MAX),
        decided_at: opt_ts(row, "decided_at")?,
        decided_by: get(row, "decided_by")?,
        decision_reason: get(row, "decision_reason")?,
        grant_id: get(row, "grant_id")?,
        version: get(row, "version")?,
    })
}

pub(super) fn grant_from_row(row: &AnyRow) -> Result<Grant, StoreError> {
    let state: String = get(row, "state")?;
    Ok(Grant {
        id: get(row, "id")?,
        request_id: get(row, "request_id")?,
        profile: get(row, "profile")?,
        user: get(row, "holder")?,
        groups: from_json(row, "groups")?,
        reason: get(row, "reason")?,
        state: GrantState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("grant state {state:?}")))?,
        created_at: ts(row, "created_at")?,
        expires_at: ts(row, "expires_at")?,
        ended_at: opt_ts(row, "ended_at")?,
        ended_by: get(row, "ended_by")?,
        end_reason: get(row, "end_reason")?,
        version: get(row, "version")?,
    })
}

pub(super) fn audit_from_row(row: &AnyRow) -> Result<AuditEvent, StoreError> {
    let seq: i64 = get(row, "seq")?;
    // A row edited into something unreadable is tampering too: name it as verify would.
    let named = |e: StoreError| StoreError::Corrupt(format!("audit chain broken at seq {seq}: {e}"));
    let event = || -> Result<AuditEvent, StoreError> {
        Ok(AuditEvent {
            seq,
            time: ts(row, "at")?,
            actor: get(row, "actor")?,
            action: get(row, "action")?,
            target: get(row, "target")?,
            request_id: get(row, "request_id")?,
            grant_id: get(row, "grant_id")?,
            reason: get(row, "reason")?,
            details: get(row, "details")?,
            prev_hash: get(row, "prev_hash")?,
            hash: get(row, "hash")?,
        })
    };
    event().map_err(named)
}

pub(super) fn session_from_row(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        id_hash: get(row, "id_hash")?,
        user: get(row, "user_name")?,
        email: get(row, "email")?,
        groups: from_json(row, "groups")?,
        idp: get(row, "idp")?,
        created_at: ts(row, "created_at")?,
        expires_at: ts(row, "expires_at")?,
        ended_at: opt_ts(row, "ended_at")?,
    })
}
