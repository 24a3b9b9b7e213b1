//! What the last allowed request on a connection was let in with. A browser sends its
//! next request on the same connection with the same cookie: for a moment, that request
//! may take the same session and the same access without looking either up again (three
//! shared-cache lookups, the largest part of the proxy's own work on a small request).
//!
//! Nothing here lets in what the shared caches would refuse, beyond `MEMO_TTL`:
//! - a cut grant (revoked, withdrawn, or its session logged out, which cuts its grants'
//!   registrations) and an expired one are seen at once: the access is checked as it is in
//!   the shared cache, on every request;
//! - an ended session is seen at its expiry, or within `MEMO_TTL` of when the shared
//!   session cache would see it (a user disabled, a logout taken by another replica);
//! - the memo only ever lets in: a request its access does not allow takes the full path.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::Access;
use crate::identity::session::Session;
use crate::time::Timestamp;

/// How long a connection's memo stands in for the shared caches. Measured on the
/// monotonic clock, as the caches' own times are: a wall clock set back does not stretch it.
const MEMO_TTL: Duration = Duration::from_millis(250);

/// One connection's memo: empty until an app request on it is allowed.
#[derive(Default)]
pub struct ConnMemo(Mutex<Option<Box<Memo>>>);

struct Memo {
    /// The app's name, compared by pointer: each app has its own.
    app: Arc<str>,
    /// The app cookie's exact value; a copy, as keeping the request's bytes would keep
    /// hyper's read buffer from being reused.
    cookie: Box<str>,
    sid: Arc<str>,
    session: Arc<Session>,
    /// The shared cache's access, not a hold on it: once the cache lets it go, so does an
    /// idle connection (an HTTP/2 one may sit for minutes), and its grants' registrations
    /// with `live` end.
    access: Weak<Access>,
    until: Instant,
}

/// What a remembered request was let in with.
pub(super) struct Recalled {
    pub(super) sid: Arc<str>,
    pub(super) session: Arc<Session>,
    pub(super) access: Arc<Access>,
}

impl ConnMemo {
    /// The session and access of the last allowed request, if it came with this cookie
    /// for this app not long ago and its access still stands.
    pub(super) fn recall(&self, app: &Arc<str>, cookie: &str, now: Timestamp) -> Option<Recalled> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let m = slot.as_deref()?;
        if Instant::now() >= m.until || now >= m.session.expires_at {
            // Of no more use: what it holds goes now, not with the connection.
            slot.take();
            return None;
        }
        if !Arc::ptr_eq(&m.app, app) || *m.cookie != *cookie {
            return None;
        }
        let access = m.access.upgrade().filter(|a| a.fresh(now))?;
        Some(Recalled {
            sid: Arc::clone(&m.sid),
            session: Arc::clone(&m.session),
            access,
        })
    }

    /// Remembers what an allowed request was let in with.
    pub(super) fn remember(
        &self,
        app: &Arc<str>,
        cookie: &str,
        sid: &Arc<str>,
        session: &Arc<Session>,
        access: &Arc<Access>,
    ) {
        let memo = Box::new(Memo {
            app: Arc::clone(app),
            cookie: cookie.into(),
            sid: Arc::clone(sid),
            session: Arc::clone(session),
            access: Arc::downgrade(access),
            until: Instant::now() + MEMO_TTL,
        });
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(memo);
    }

    /// Drops what is remembered, for a connection about to sit idle.
    pub fn forget(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Authorized, Identity};
    use crate::front::apps::Held;
    use crate::live::Live;
    use std::sync::atomic::AtomicBool;

    fn session(expires_at: Timestamp) -> Arc<Session> {
        Arc::new(Session {
            identity: Identity::new("alice", ["dev"]),
            email: None,
            idp: "local".into(),
            id_hash: "a".repeat(64),
            csrf: String::new(),
            expires_at,
        })
    }

    fn access(live: &Live, grant: &str, expires_at: Timestamp) -> Arc<Access> {
        let auth = Authorized::for_test(grant, expires_at);
        Arc::new(Access {
            grants: vec![Held {
                live: live.register_for(&auth, "session:x"),
                auth,
                identity: Mutex::new(None),
                first_recorded: AtomicBool::new(false),
            }],
        })
    }

    // Paused: the memo's time is tokio's clock, moved on by hand; `live` runs on it too.
    #[tokio::test(start_paused = true)]
    async fn a_memo_stands_for_its_app_cookie_and_access_only_while_all_hold() {
        let live = Live::new();
        let now = Timestamp::now();
        let hour = now.saturating_add(Duration::from_secs(3600));
        let (app, other_app): (Arc<str>, Arc<str>) = ("echo".into(), "echo".into());
        let sid: Arc<str> = "s".into();
        let memo = ConnMemo::default();
        assert!(memo.recall(&app, "c1", now).is_none(), "nothing remembered yet");

        let granted = access(&live, "g1", hour);
        memo.remember(&app, "c1", &sid, &session(hour), &granted);
        let hit = memo.recall(&app, "c1", now).expect("the same cookie, app and moment");
        assert!(Arc::ptr_eq(&hit.access, &granted) && hit.sid == sid);
        assert!(memo.recall(&app, "c2", now).is_none(), "another cookie");
        assert!(memo.recall(&app, "c1x", now).is_none(), "a longer cookie");
        assert!(
            memo.recall(&other_app, "c1", now).is_none(),
            "another app, even of the same name"
        );
        tokio::time::advance(MEMO_TTL).await;
        assert!(memo.recall(&app, "c1", now).is_none(), "past its time");

        // A cut grant is seen at once, well within the memo's time.
        memo.remember(&app, "c1", &sid, &session(hour), &granted);
        live.cut("g1", "revoked");
        assert!(memo.recall(&app, "c1", now).is_none(), "a revoked grant");

        // A session that ends before the memo's time ends it.
        let soon = now.saturating_add(Duration::from_millis(100));
        let g3 = access(&live, "g3", hour);
        memo.remember(&app, "c1", &sid, &session(soon), &g3);
        assert!(memo.recall(&app, "c1", now).is_some());
        assert!(memo.recall(&app, "c1", soon).is_none(), "an expired session");

        // So does a grant's expiry.
        let g4 = access(&live, "g4", soon);
        memo.remember(&app, "c1", &sid, &session(hour), &g4);
        assert!(memo.recall(&app, "c1", now).is_some());
        assert!(memo.recall(&app, "c1", soon).is_none(), "an expired grant");

        // An access the shared cache has let go of is not kept alive by the memo.
        memo.remember(&app, "c1", &sid, &session(hour), &access(&live, "g5", hour));
        assert!(memo.recall(&app, "c1", now).is_none(), "let go of");
        assert_eq!(live.open_connections("g5"), 0, "its registration ended");

        let g6 = access(&live, "g6", hour);
        memo.remember(&app, "c1", &sid, &session(hour), &g6);
        memo.forget();
        assert!(memo.recall(&app, "c1", now).is_none(), "forgotten");

        // Last, as `live` then registers anything of that session cut: a logout, which
        // cuts what its session opened, is seen at once too.
        let g7 = access(&live, "g7", hour);
        memo.remember(&app, "c1", &sid, &session(hour), &g7);
        assert!(memo.recall(&app, "c1", now).is_some());
        live.cut_login("session:x", "logged out");
        assert!(memo.recall(&app, "c1", now).is_none(), "a logged-out session");
    }
}
