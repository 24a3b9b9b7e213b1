//! The end of an SSH session's grant: the warning before it, and the cut that tells every
//! channel why and closes the connection.

use std::sync::Arc;
use std::time::Duration;

use russh::server::Handle;
use russh::ChannelId;

use super::session::{Open, Shared};
use crate::access::Authorized;
use crate::time::Timestamp;

/// The one-line warning a terminal gets before its grant ends.
pub(super) fn expiry_warning(auth: &Authorized, now: Timestamp) -> String {
    let expires = auth.expires_at();
    format!(
        "\r\njitgate: grant {} expires at {expires} (in {}); request again with: jitgate request {}\r\n",
        auth.grant_id(),
        crate::time::format_duration(now.until(expires).max(Duration::from_secs(1))),
        auth.profile().name,
    )
}

/// Whether a terminal opened now is already inside the warning window, so it is warned
/// at once rather than never.
pub(super) fn inside_warning(auth: &Authorized, warn_before: Duration, now: Timestamp) -> bool {
    !warn_before.is_zero() && now.until(auth.expires_at()) <= warn_before
}

/// How long the cut waits for a polite close before it drops the connection outright.
const CUT_GRACE: Duration = Duration::from_millis(20);

/// Watches the session's grant: warns interactive channels before it expires, and when
/// it ends, tells every channel why and closes the connection.
pub(super) async fn watch(open: Arc<Open>, shared: Arc<Shared>, client: Handle, warn_before: Duration) {
    let expires = open.auth.expires_at();
    let grant = open.auth.grant_id().to_owned();
    let profile = open.auth.profile().name.clone();
    let warn_at = Timestamp::from_millis(expires.as_millis() - warn_before.as_millis() as i64);
    let until_warning = Timestamp::now().until(warn_at);
    if !warn_before.is_zero() && !until_warning.is_zero() {
        tokio::select! {
            _ = shared.done.cancelled() => return,
            _ = open.live.cancelled() => {}
            _ = tokio::time::sleep(until_warning) => {
                let line = expiry_warning(&open.auth, Timestamp::now());
                let ptys: Vec<ChannelId> = shared.channels.lock().unwrap_or_else(|e| e.into_inner())
                    .iter().filter(|(_, pty)| **pty).map(|(id, _)| *id).collect();
                for id in ptys {
                    let _ = tokio::time::timeout(CUT_GRACE, client.extended_data(id, 1, line.clone().into_bytes())).await;
                }
            }
        }
    }
    tokio::select! {
        _ = shared.done.cancelled() => return,
        _ = open.live.cancelled() => {}
    }
    let now = Timestamp::now();
    let (what, line) = if open.live.ended_by_logout() {
        let what = format!("login ended at {now}");
        (
            what.clone(),
            format!(
                "jitgate: your {what} (jitgate logout), and this session with it; log in again with: jitgate login"
            ),
        )
    } else {
        let what = if now >= expires {
            format!("expired at {expires}")
        } else {
            format!("was revoked at {now}")
        };
        let line = format!("jitgate: grant {grant} {what}; request again with: jitgate request {profile}");
        (format!("grant {what}"), line)
    };
    tracing::info!(%grant, session = %shared.session_id, user = %open.identity.user, "cutting SSH session: {what}");
    *shared.cut.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
    let ids: Vec<ChannelId> = shared
        .channels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .copied()
        .collect();
    // Each channel gets the line and is closed, so the client prints it and leaves on its
    // own; OpenSSH may drop output that arrives together with a disconnect.
    let deadline = tokio::time::Instant::now() + CUT_GRACE;
    for id in ids {
        let text = format!("\r\n{line}\r\n").into_bytes();
        let _ = tokio::time::timeout_at(deadline, async {
            let _ = client.extended_data(id, 1, text).await;
            let _ = client.eof(id).await;
            let _ = client.close(id).await;
        })
        .await;
    }
    // Bounded too: a target session whose queue is full (its client writes but does not
    // read) would never take the message, and the cut must not wait on it.
    let _ = tokio::time::timeout_at(
        deadline,
        open.target
            .disconnect(russh::Disconnect::ByApplication, "grant ended", ""),
    )
    .await;
    // A client that does not read (a full window) would hold the polite close up; past
    // the grace, the connection is told why and dropped under it.
    if tokio::time::timeout_at(deadline + CUT_GRACE, shared.done.cancelled())
        .await
        .is_err()
    {
        let _ = tokio::time::timeout(
            Duration::from_millis(5),
            client.disconnect(russh::Disconnect::ByApplication, line, String::new()),
        )
        .await;
        shared.done.cancel();
    }
}
