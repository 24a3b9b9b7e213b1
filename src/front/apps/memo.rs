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
//!   session cache would see it;
//! - the memo only ever lets in: a request its access does not allow takes the full path.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Access;
use crate::identity::session::Session;
use crate::time::Timestamp;

/// How long a connection's memo stands in for the shared caches.
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
    access: Arc<Access>,
    until: Timestamp,
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
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let m = slot.as_deref()?;
        (Arc::ptr_eq(&m.app, app) && now < m.until && *m.cookie == *cookie && m.access.fresh(now)).then(|| Recalled {
            sid: Arc::clone(&m.sid),
            session: Arc::clone(&m.session),
            access: Arc::clone(&m.access),
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
        now: Timestamp,
    ) {
        let until = now.saturating_add(MEMO_TTL).min(session.expires_at);
        let memo = Box::new(Memo {
            app: Arc::clone(app),
            cookie: cookie.into(),
            sid: Arc::clone(sid),
            session: Arc::clone(session),
            access: Arc::clone(access),
            until,
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

    // A runtime for `live`, which watches grants' expiries on it.
    #[tokio::test]
    async fn a_memo_stands_for_its_app_cookie_and_access_only_while_all_hold() {
        let live = Live::new();
        let now = Timestamp::now();
        let hour = now.saturating_add(Duration::from_secs(3600));
        let (app, other_app): (Arc<str>, Arc<str>) = ("echo".into(), "echo".into());
        let sid: Arc<str> = "s".into();
        let memo = ConnMemo::default();
        assert!(memo.recall(&app, "c1", now).is_none(), "nothing remembered yet");

        let granted = access(&live, "g1", hour);
        memo.remember(&app, "c1", &sid, &session(hour), &granted, now);
        let hit = memo.recall(&app, "c1", now).expect("the same cookie, app and moment");
        assert!(Arc::ptr_eq(&hit.access, &granted) && hit.sid == sid);
        assert!(memo.recall(&app, "c2", now).is_none(), "another cookie");
        assert!(memo.recall(&app, "c1x", now).is_none(), "a longer cookie");
        assert!(
            memo.recall(&other_app, "c1", now).is_none(),
            "another app of the same name"
        );
        let later = now.saturating_add(MEMO_TTL);
        assert!(memo.recall(&app, "c1", later).is_none(), "past its time");

        // A cut grant is seen at once, well within the memo's time.
        live.cut("g1", "revoked");
        assert!(memo.recall(&app, "c1", now).is_none(), "a revoked grant");

        // A session that ends before the memo's time ends it.
        let soon = now.saturating_add(Duration::from_millis(100));
        memo.remember(&app, "c1", &sid, &session(soon), &access(&live, "g2", hour), now);
        assert!(memo.recall(&app, "c1", now).is_some());
        assert!(memo.recall(&app, "c1", soon).is_none(), "an expired session");

        // So does a grant's expiry.
        memo.remember(&app, "c1", &sid, &session(hour), &access(&live, "g3", soon), now);
        assert!(memo.recall(&app, "c1", now).is_some());
        assert!(memo.recall(&app, "c1", soon).is_none(), "an expired grant");

        memo.remember(&app, "c1", &sid, &session(hour), &access(&live, "g4", hour), now);
        memo.forget();
        assert!(memo.recall(&app, "c1", now).is_none(), "forgotten");
    }
}
