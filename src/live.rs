//! The registry of open connections, by grant. A front-end registers every long-lived
//! connection before bytes flow and watches the returned handle; expiry (a timer per grant)
//! and revocation (`cut`) end all of a grant's connections through this one mechanism.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::access::Authorized;
use crate::time::Timestamp;

#[derive(Clone, Default)]
pub struct Live {
    grants: Arc<Mutex<Registry>>,
    /// Where cuts are reported, to be recorded (`session.cut`) and announced.
    /// Unbounded, and still bounded by what happens: one report per grant or login cut,
    /// each of which the audit log must show.
    reports: Option<tokio::sync::mpsc::UnboundedSender<CutReport>>,
}

/// The login key of a CLI token (and of the SSH certificate minted with it).
pub fn token_login(jti: &str) -> String {
    format!("token:{jti}")
}

/// The login key of a browser session.
pub fn session_login(id_hash: &str) -> String {
    format!("session:{}", session_ref(id_hash))
}

/// How the audit log names a browser session (`session.ended`), so that every replica can
/// end what it opened: the start of its id's hash, which is of no use to log in with.
pub fn session_ref(id_hash: &str) -> &str {
    id_hash.get(..16).unwrap_or(id_hash)
}

/// The audit events that end or rename a login. Each replica reads them back from the log
/// (`Broker::follow_logins`) to end what that login opened there: made and read here, so
/// the two cannot drift apart.
pub mod login_events {
    use crate::audit::{AuditDraft, AuditEvent};

    /// The actions `read` understands.
    pub const ACTIONS: [&str; 3] = ["logout", "session.ended", "token.replaced"];

    /// A CLI token's logout.
    pub fn logout(user: &str, jti: &str) -> AuditDraft {
        AuditDraft::new("logout", user, "local").details(serde_json::json!({ "jti": jti }))
    }

    /// A browser session's logout (or its replacement by a new login in that browser).
    pub fn session_ended(user: &str, idp: &str, id_hash: &str) -> AuditDraft {
        AuditDraft::new("session.ended", user, idp)
            .details(serde_json::json!({ "by": "logout", "session": super::session_ref(id_hash) }))
    }

    /// A CLI token renewed as another.
    pub fn token_replaced(user: &str, idp: &str, old_jti: &str, new_jti: &str) -> AuditDraft {
        AuditDraft::new("token.replaced", user, idp)
            .details(serde_json::json!({ "jti": old_jti, "replaced_by": new_jti }))
    }

    /// What an event did to a login.
    #[derive(Debug, PartialEq, Eq)]
    pub enum LoginChange {
        Ended(String),
        Renamed { old: String, new: String },
    }

    pub fn read(event: &AuditEvent) -> Option<LoginChange> {
        let details: serde_json::Value = serde_json::from_str(&event.details).ok()?;
        let text = |key: &str| details.get(key).and_then(|v| v.as_str());
        match event.action.as_str() {
            "logout" => Some(LoginChange::Ended(super::token_login(text("jti")?))),
            "session.ended" => Some(LoginChange::Ended(super::session_login(text("session")?))),
            "token.replaced" => Some(LoginChange::Renamed {
                old: super::token_login(text("jti")?),
                new: super::token_login(text("replaced_by")?),
            }),
            _ => None,
        }
    }
}

/// That the open connections of a grant were cut, and why.
#[derive(Clone, Debug)]
pub struct CutReport {
    pub grant_id: String,
    pub connections: usize,
    pub why: String,
    pub at: Timestamp,
    /// Cut because one login ended (a logout), not the grant: the grant goes on.
    pub login_only: bool,
}

#[derive(Default)]
struct Registry {
    open: HashMap<Arc<str>, GrantConnections>,
    /// Grants already cut, and when. A connection authorized just before its grant was cut
    /// may register just after: it must start cut, not open a fresh entry.
    ended: HashMap<Arc<str>, std::time::Instant>,
    /// Connections registered under a login (a browser session, a CLI token), so that
    /// logging out ends them too, not only the requests that follow: by connection number,
    /// each one's login, grant and token, and each login's connection numbers.
    conns: HashMap<u64, LoginConnection>,
    logins: HashMap<Arc<str>, Vec<u64>>,
    /// Logins ended, and when: as for grants, a late registration starts cut.
    ended_logins: HashMap<Arc<str>, std::time::Instant>,
    /// Logins renewed as another (old → new), and when: a late registration under the old
    /// name (a credential derived from it, still cached) counts under the new one.
    renamed: HashMap<Arc<str>, (Arc<str>, std::time::Instant)>,
    next_id: u64,
}

impl Registry {
    /// The name `login` goes by now, following renewals.
    fn current(&self, login: &str) -> Arc<str> {
        let mut name: Arc<str> = login.into();
        // Each renewal is one step; the bound only guards against a cycle.
        for _ in 0..16 {
            match self.renamed.get(&name) {
                Some((next, _)) => name = Arc::clone(next),
                None => break,
            }
        }
        name
    }
}

struct LoginConnection {
    login: Arc<str>,
    grant_id: Arc<str>,
    token: CancellationToken,
}

/// Long enough to cover any gap between a decision and its registration.
const ENDED_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

struct GrantConnections {
    /// Cancelling this cancels every connection's child token.
    cut: CancellationToken,
    open: usize,
    /// Of `open`, those already cut with their login, counted until they go.
    cut_by_login: usize,
    /// Which entry of this grant id: a handle only ever counts against its own.
    generation: u64,
}

/// Held by one open connection. `cancelled()` resolves when its grant is cut; dropping the
/// handle unregisters the connection.
pub struct LiveHandle {
    token: CancellationToken,
    grant_id: Arc<str>,
    registry: Live,
    /// The grant entry it counts in; None for a handle that started cut (counted nowhere).
    generation: Option<u64>,
    /// Its number among the connections registered under a login.
    conn: Option<u64>,
}

impl LiveHandle {
    pub fn grant_id(&self) -> &str {
        &self.grant_id
    }

    pub fn is_cut(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the grant expires or is revoked.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether it was cut because the login that opened it ended (a logout) while its
    /// grant goes on: every cut of a grant is remembered in `ended`.
    pub fn ended_by_logout(&self) -> bool {
        if !self.token.is_cancelled() {
            return false;
        }
        let registry = self.registry.grants.lock().unwrap_or_else(|e| e.into_inner());
        !registry.ended.contains_key(&self.grant_id)
    }
}

impl Drop for LiveHandle {
    fn drop(&mut self) {
        let mut registry = self.registry.grants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = self.conn {
            if let Some(c) = registry.conns.remove(&id) {
                if let Some(ids) = registry.logins.get_mut(&c.login) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        registry.logins.remove(&c.login);
                    }
                }
            }
        }
        let Some(generation) = self.generation else {
            return;
        };
        let cut = self.token.is_cancelled();
        if let Some(entry) = registry
            .open
            .get_mut(&self.grant_id)
            .filter(|e| e.generation == generation)
        {
            entry.open -= 1;
            // Still in its grant's entry, yet cut: its login was.
            if cut {
                entry.cut_by_login = entry.cut_by_login.saturating_sub(1);
            }
            if entry.open == 0 {
                // Stops the grant's expiry timer too: nothing is left to cut.
                let entry = registry.open.remove(&self.grant_id).expect("entry exists");
                entry.cut.cancel();
            }
        }
    }
}

impl Live {
    pub fn new() -> Self {
        Live::default()
    }

    /// A registry that reports each cut of open connections to `reports`.
    pub fn reporting(reports: tokio::sync::mpsc::UnboundedSender<CutReport>) -> Self {
        Live {
            reports: Some(reports),
            ..Live::default()
        }
    }

    /// Registers a connection under the grant that authorized it. The connection is cut at
    /// the grant's expiry even if nobody calls `cut`. Must be called inside a Tokio runtime.
    pub fn register(&self, auth: &Authorized) -> LiveHandle {
        self.register_at(auth, Timestamp::now())
    }

    /// Registers a connection as `register` does, also under the login that opened it
    /// (`session_login`, `token_login`): `cut_login` ends it when that login ends.
    pub fn register_for(&self, auth: &Authorized, login: &str) -> LiveHandle {
        self.register_with(auth, Some(login), Timestamp::now())
    }

    fn register_at(&self, auth: &Authorized, now: Timestamp) -> LiveHandle {
        self.register_with(auth, None, now)
    }

    fn register_with(&self, auth: &Authorized, login: Option<&str>, now: Timestamp) -> LiveHandle {
        let grant_id: Arc<str> = auth.grant_id().into();
        let mut registry = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let login = login.map(|l| registry.current(l));
        if registry.ended.contains_key(&grant_id)
            || login.as_ref().is_some_and(|l| registry.ended_logins.contains_key(l))
        {
            let token = CancellationToken::new();
            token.cancel();
            return LiveHandle {
                token,
                grant_id,
                registry: self.clone(),
                generation: None,
                conn: None,
            };
        }
        registry.next_id += 1;
        let next = registry.next_id;
        let entry = registry.open.entry(Arc::clone(&grant_id)).or_insert_with(|| {
            let cut = CancellationToken::new();
            spawn_expiry_timer(
                self.clone(),
                cut.clone(),
                now.until(auth.expires_at()),
                Arc::clone(&grant_id),
            );
            GrantConnections {
                cut,
                open: 0,
                cut_by_login: 0,
                generation: next,
            }
        });
        entry.open += 1;
        let generation = entry.generation;
        let token = entry.cut.child_token();
        let conn = login.map(|l| {
            registry.conns.insert(
                next,
                LoginConnection {
                    login: Arc::clone(&l),
                    grant_id: Arc::clone(&grant_id),
                    token: token.clone(),
                },
            );
            registry.logins.entry(l).or_default().push(next);
            next
        });
        drop(registry);
        LiveHandle {
            token,
            grant_id,
            registry: self.clone(),
            generation: Some(generation),
            conn,
        }
    }

    /// Cuts every open connection that `login` opened (its grants go on for its other
    /// logins); returns how many. Reported per grant, as login cuts.
    pub fn cut_login(&self, login: &str, why: &str) -> usize {
        let mut by_grant: HashMap<Arc<str>, usize> = HashMap::new();
        let tokens = {
            let mut registry = self.grants.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            registry
                .ended_logins
                .retain(|_, at| now.duration_since(*at) < ENDED_MEMORY);
            registry.ended_logins.insert(login.into(), now);
            let ids = registry.logins.remove(login).unwrap_or_default();
            let mut tokens = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(c) = registry.conns.remove(&id) else { continue };
                if c.token.is_cancelled() {
                    continue;
                }
                if let Some(entry) = registry.open.get_mut(&c.grant_id) {
                    entry.cut_by_login += 1;
                }
                *by_grant.entry(c.grant_id).or_default() += 1;
                tokens.push(c.token);
            }
            tokens
        };
        // Cancelled outside the lock: waking a connection may run its code.
        for t in &tokens {
            t.cancel();
        }
        for (grant_id, connections) in by_grant {
            tracing::info!(grant_id = &*grant_id, connections, why, "cut connections of a login");
            self.report(&grant_id, connections, why, true);
        }
        tokens.len()
    }

    /// The login `old` goes on as `new` (a renewed token): its connections are cut when
    /// `new` ends.
    pub fn rekey_login(&self, old: &str, new: &str) {
        let mut registry = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let new: Arc<str> = new.into();
        let now = std::time::Instant::now();
        registry
            .renamed
            .retain(|_, (_, at)| now.duration_since(*at) < ENDED_MEMORY);
        registry.renamed.insert(old.into(), (Arc::clone(&new), now));
        let Some(ids) = registry.logins.remove(old) else {
            return;
        };
        for id in &ids {
            if let Some(c) = registry.conns.get_mut(id) {
                c.login = Arc::clone(&new);
            }
        }
        registry.logins.entry(new).or_default().extend(ids);
    }

    fn report(&self, grant_id: &str, connections: usize, why: &str, login_only: bool) {
        if let Some(reports) = self.reports.as_ref().filter(|_| connections > 0) {
            let report = CutReport {
                grant_id: grant_id.to_owned(),
                connections,
                why: why.to_owned(),
                at: Timestamp::now(),
                login_only,
            };
            // The cut itself has happened; its record must not be lost to a store that is
            // behind (a mass revocation), so the queue does not turn reports away.
            if reports.send(report).is_err() {
                tracing::warn!(grant_id, "cut not recorded: the recorder has stopped");
            }
        }
    }

    /// Cuts every open connection of a grant; returns how many there were.
    pub fn cut(&self, grant_id: &str, why: &str) -> usize {
        let entry = {
            let mut registry = self.grants.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            registry.ended.retain(|_, at| now.duration_since(*at) < ENDED_MEMORY);
            registry.ended.insert(grant_id.into(), now);
            registry.open.remove(grant_id)
        };
        match entry {
            Some(e) => {
                e.cut.cancel();
                // Those its logins already cut were reported then.
                let open = e.open - e.cut_by_login;
                tracing::info!(grant_id, connections = open, why, "cut connections of grant");
                self.report(grant_id, open, why, false);
                open
            }
            None => 0,
        }
    }

    /// Cuts the connections of every grant that `keep` rejects; returns how many grants.
    /// This is how a replica learns of grants ended elsewhere: its next look at the store
    /// no longer lists them as active.
    pub fn cut_unless(&self, keep: impl Fn(&str) -> bool, why: &str) -> usize {
        let ended: Vec<Arc<str>> = {
            let registry = self.grants.lock().unwrap_or_else(|e| e.into_inner());
            registry.open.keys().filter(|id| !keep(id)).cloned().collect()
        };
        ended.iter().filter(|id| self.cut(id, why) > 0).count()
    }

    /// How many connections are open under a grant.
    pub fn open_connections(&self, grant_id: &str) -> usize {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .get(grant_id)
            .map_or(0, |e| e.open)
    }
}

fn spawn_expiry_timer(live: Live, cut: CancellationToken, after: std::time::Duration, grant_id: Arc<str>) {
    tokio::spawn(async move {
        tokio::select! {
            _ = cut.cancelled() => {}
            _ = tokio::time::sleep(after) => {
                tracing::info!(grant_id = &*grant_id, "grant reached its expiry; cutting its connections");
                live.cut(&grant_id, "expired");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn logged(draft: crate::audit::AuditDraft) -> crate::audit::AuditEvent {
        crate::audit::AuditEvent {
            seq: 1,
            time: Timestamp::now(),
            actor: draft.actor,
            action: draft.action.to_owned(),
            target: draft.target,
            request_id: None,
            grant_id: None,
            reason: None,
            details: draft.details.to_string(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn login_events_read_back_as_the_logins_they_name() {
        use login_events::{read, LoginChange};
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(
            read(&logged(login_events::logout("dana", "j1"))),
            Some(LoginChange::Ended(token_login("j1")))
        );
        let ended = logged(login_events::session_ended("dana", "corp", hash));
        assert!(
            !ended.details.contains(hash),
            "the log names the session, not its id's hash"
        );
        assert_eq!(read(&ended), Some(LoginChange::Ended(session_login(hash))));
        assert_eq!(
            read(&logged(login_events::token_replaced("dana", "corp", "j1", "j2"))),
            Some(LoginChange::Renamed {
                old: token_login("j1"),
                new: token_login("j2")
            })
        );
        let mut renamed_to_nothing = logged(login_events::token_replaced("dana", "corp", "j1", "j2"));
        renamed_to_nothing.details = r#"{"jti":"j1"}"#.into();
        assert_eq!(
            read(&renamed_to_nothing),
            None,
            "a renewal of old records names no new token"
        );
        let mut other = logged(login_events::logout("dana", "j1"));
        other.action = "grant.revoked".into();
        assert_eq!(read(&other), None);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_are_cut_at_expiry() {
        let live = Live::new();
        let now = Timestamp::now();
        let auth = Authorized::for_test("g1", now.saturating_add(Duration::from_secs(2)));
        let a = live.register_at(&auth, now);
        let b = live.register_at(&auth, now);
        assert_eq!(live.open_connections("g1"), 2);
        tokio::time::sleep(Duration::from_millis(1999)).await;
        assert!(!a.is_cut() && !b.is_cut(), "cut before expiry");
        tokio::time::sleep(Duration::from_millis(2)).await;
        tokio::time::timeout(Duration::from_millis(1), a.cancelled())
            .await
            .expect("a is cut at expiry");
        assert!(b.is_cut());
    }

    #[tokio::test(start_paused = true)]
    async fn revocation_cuts_only_that_grant() {
        let live = Live::new();
        let now = Timestamp::now();
        let hour = now.saturating_add(Duration::from_secs(3600));
        let g1 = live.register_at(&Authorized::for_test("g1", hour), now);
        let g2 = live.register_at(&Authorized::for_test("g2", hour), now);
        assert_eq!(live.cut("g1", "revoked"), 1);
        assert!(g1.is_cut());
        assert!(!g2.is_cut());
        assert_eq!(live.cut("g1", "again"), 0);
        assert_eq!(live.open_connections("g2"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn grants_no_longer_active_are_cut() {
        let live = Live::new();
        let now = Timestamp::now();
        let hour = now.saturating_add(Duration::from_secs(3600));
        let kept = live.register_at(&Authorized::for_test("g1", hour), now);
        let ended = live.register_at(&Authorized::for_test("g2", hour), now);
        assert_eq!(live.cut_unless(|id| id == "g1", "ended elsewhere"), 1);
        assert!(!kept.is_cut());
        assert!(ended.is_cut());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_registering_after_the_cut_starts_cut() {
        let live = Live::new();
        let now = Timestamp::now();
        let auth = Authorized::for_test("g1", now.saturating_add(Duration::from_secs(3600)));
        assert_eq!(live.cut("g1", "revoked before anyone connected"), 0);
        let late = live.register_at(&auth, now);
        assert!(late.is_cut());
        assert_eq!(live.open_connections("g1"), 0);
        drop(late);
        let other = live.register_at(
            &Authorized::for_test("g2", now.saturating_add(Duration::from_secs(60))),
            now,
        );
        assert!(!other.is_cut());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_handles_unregisters() {
        let live = Live::new();
        let now = Timestamp::now();
        let auth = Authorized::for_test("g1", now.saturating_add(Duration::from_secs(60)));
        let a = live.register_at(&auth, now);
        let b = live.register_at(&auth, now);
        drop(a);
        assert_eq!(live.open_connections("g1"), 1);
        drop(b);
        assert_eq!(live.open_connections("g1"), 0);
        // A new connection after all closed gets a fresh, uncut token.
        let c = live.register_at(&auth, now);
        assert!(!c.is_cut());
    }

    #[tokio::test(start_paused = true)]
    async fn an_already_expired_grant_is_cut_at_once() {
        let live = Live::new();
        let now = Timestamp::now();
        let auth = Authorized::for_test("g1", now);
        let a = live.register_at(&auth, now);
        tokio::time::timeout(Duration::from_millis(1), a.cancelled())
            .await
            .expect("cut at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_logout_cuts_that_logins_connections_only() {
        let live = Live::new();
        let now = Timestamp::now();
        let auth = Authorized::for_test("g1", now.saturating_add(Duration::from_secs(3600)));
        let laptop = live.register_with(&auth, Some("session:a"), now);
        let phone = live.register_with(&auth, Some("session:b"), now);
        let plain = live.register_at(&auth, now);
        assert_eq!(live.cut_login("session:a", "logged out"), 1);
        assert!(laptop.is_cut());
        assert!(
            !phone.is_cut() && !plain.is_cut(),
            "the grant goes on for its other logins"
        );
        assert_eq!(live.open_connections("g1"), 3, "counted until the connection goes");
        drop(laptop);
        assert_eq!(live.open_connections("g1"), 2);
        // A connection of the ended login that registers late starts cut, uncounted.
        let late = live.register_with(&auth, Some("session:a"), now);
        assert!(late.is_cut());
        assert_eq!(live.open_connections("g1"), 2);
        drop(late);
        assert_eq!(live.open_connections("g1"), 2);
        assert_eq!(live.cut_login("session:a", "again"), 0);
        drop((phone, plain));
        assert_eq!(live.open_connections("g1"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_registration_under_a_renewed_login_ends_with_the_new_one() {
        let live = Live::new();
        let now = Timestamp::now();
        let auth = Authorized::for_test("g1", now.saturating_add(Duration::from_secs(3600)));
        live.rekey_login("token:a", "token:b");
        live.rekey_login("token:b", "token:c");
        // A credential of the first login, still cached somewhere, opens a stream.
        let late = live.register_with(&auth, Some("token:a"), now);
        assert!(!late.is_cut());
        assert_eq!(live.cut_login("token:c", "logged out"), 1);
        assert!(late.is_cut() && late.ended_by_logout());
        // And once the last name has ended, the first one registers cut.
        assert!(live.register_with(&auth, Some("token:a"), now).is_cut());
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_login_keeps_its_connections_and_cuts_are_reported_once() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let live = Live::reporting(tx);
        let now = Timestamp::now();
        let auth = Authorized::for_test("g1", now.saturating_add(Duration::from_secs(3600)));
        let ssh = live.register_with(&auth, Some("token:old"), now);
        let other = live.register_at(&auth, now);
        live.rekey_login("token:old", "token:new");
        assert_eq!(
            live.cut_login("token:old", "logged out"),
            0,
            "the old name ends nothing"
        );
        assert!(!ssh.is_cut());
        assert_eq!(live.cut_login("token:new", "logged out"), 1);
        assert!(ssh.is_cut() && ssh.ended_by_logout());
        let first = rx.recv().await.unwrap();
        assert_eq!((first.connections, first.login_only), (1, true));
        // The grant's own cut later counts only what its logins had not cut already.
        assert_eq!(live.cut("g1", "revoked"), 1);
        assert!(!ssh.ended_by_logout(), "cut with its grant now");
        let second = rx.recv().await.unwrap();
        assert_eq!((second.connections, second.login_only), (1, false));
        drop((ssh, other));
        assert_eq!(live.open_connections("g1"), 0);
    }

    #[tokio::test]
    async fn a_mass_revocation_loses_no_cut_report() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let live = Live::reporting(tx);
        let now = Timestamp::now();
        let held: Vec<_> = (0..6)
            .map(|i| {
                let auth = Authorized::for_test(&format!("g{i}"), now.saturating_add(Duration::from_secs(3600)));
                live.register_at(&auth, now)
            })
            .collect();
        for i in 0..6 {
            assert_eq!(live.cut(&format!("g{i}"), "revoked"), 1);
        }
        assert!(held.iter().all(LiveHandle::is_cut));
        let mut reported = Vec::new();
        for _ in 0..6 {
            let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            reported.push(r.grant_id);
        }
        reported.sort();
        assert_eq!(reported, ["g0", "g1", "g2", "g3", "g4", "g5"]);
    }
}
