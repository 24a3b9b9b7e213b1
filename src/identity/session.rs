//! Browser sessions, held on the server behind a `__Host-` cookie. The cookie carries 256
//! random bits; the store keeps only their SHA-256, so a copy of the database opens no
//! session. Logout and `users disable` take effect at the next request on this replica and
//! within `CACHE_TTL` on the others.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::access::Identity;
use crate::audit::AuditDraft;
use crate::store::{SessionRecord, Store, StoreError};
use crate::time::Timestamp;

pub const SESSION_COOKIE: &str = "__Host-jitgate";
/// A checked session is trusted this long without asking the store again.
const CACHE_TTL: Duration = Duration::from_secs(1);
const SECRET_LEN: usize = 43; // 32 bytes in unpadded base64url

/// A live session, as a request sees it.
#[derive(Clone, Debug)]
pub struct Session {
    pub identity: Identity,
    pub email: Option<String>,
    pub idp: String,
    pub id_hash: String,
    /// The anti-CSRF token of this session's forms: derived from the secret, so it is
    /// unguessable without the cookie and needs no storage.
    pub csrf: String,
    pub expires_at: Timestamp,
}

#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn Store>,
    cache: Cache<String, Arc<Session>, crate::FastHash>,
    lifetime: Duration,
    idp_lifetime: Duration,
    /// Where sessions may come from now: "local" when local users are on, and each
    /// configured provider. A session from anywhere else (a provider since removed) is over.
    sources: Arc<Vec<String>>,
}

impl Sessions {
    /// Where logins may come from: "local" when local users are on, and each IdP's name.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// `idp_lifetime` caps sessions from an identity provider: the IdP is asked about the
    /// user again at the next login, so a user disabled there keeps a browser session no
    /// longer than a CLI token.
    pub fn new(store: Arc<dyn Store>, lifetime: Duration, idp_lifetime: Duration, sources: Vec<String>) -> Sessions {
        Sessions {
            store,
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build_with_hasher(crate::FastHash::default()),
            lifetime,
            idp_lifetime: idp_lifetime.min(lifetime),
            sources: Arc::new(sources),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Starts a session and returns the cookie secret with it. `spend` is a one-time key
    /// (a login's state) stored in the same transaction: if it was spent before, no session
    /// starts and the error is `AlreadyExists`.
    pub async fn start(
        &self,
        identity: &Identity,
        email: Option<&str>,
        idp: &str,
        now: Timestamp,
        details: serde_json::Value,
        spend: Option<(&str, Timestamp)>,
    ) -> Result<(String, Session), StoreError> {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let secret = URL_SAFE_NO_PAD.encode(bytes);
        let id_hash = hash(&secret);
        let lifetime = if idp == "local" {
            self.lifetime
        } else {
            self.idp_lifetime
        };
        let record = SessionRecord {
            id_hash: id_hash.clone(),
            user: identity.user.clone(),
            email: email.map(str::to_owned),
            groups: identity.groups.clone(),
            idp: idp.to_owned(),
            created_at: now,
            expires_at: now.saturating_add(lifetime),
            ended_at: None,
        };
        let event = AuditDraft::new("session.started", &identity.user, idp).details(details);
        self.store.insert_session(&record, event, spend).await?;
        let session = Session {
            identity: identity.clone(),
            email: record.email,
            idp: record.idp,
            csrf: csrf_of(&secret),
            id_hash,
            expires_at: record.expires_at,
        };
        Ok((secret, session))
    }

    /// The live session a cookie value opens, if any: None for anything malformed, unknown,
    /// ended, expired, or whose user has been disabled. Errors only when the store cannot
    /// answer (the caller fails closed).
    pub async fn check(&self, secret: &str, now: Timestamp) -> Result<Option<Arc<Session>>, StoreError> {
        if secret.len() != SECRET_LEN
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Ok(None);
        }
        self.lookup(&hash(secret), &csrf_of(secret), now).await
    }

    /// The live session with this id hash, for an app's cookie, which names the session
    /// without holding its secret. Its `csrf` is empty: app hosts post no console forms.
    pub async fn check_hash(&self, id_hash: &str, now: Timestamp) -> Result<Option<Arc<Session>>, StoreError> {
        if id_hash.len() != 64 || !id_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        self.lookup(id_hash, "", now).await
    }

    async fn lookup(&self, id_hash: &str, csrf: &str, now: Timestamp) -> Result<Option<Arc<Session>>, StoreError> {
        // An app's cookie asks with no csrf, and takes whatever was cached.
        let wanted = |s: &Session| s.csrf == csrf || csrf.is_empty();
        if let Some(s) = self.cache.get(id_hash).await {
            if wanted(&s) {
                return Ok((s.expires_at > now).then_some(s));
            }
        }
        // Read once for all the requests that come with this session while it is not
        // cached: a browser's or a load's many connections would otherwise each ask the
        // store, every `CACHE_TTL`. Misses are not cached. The store's path is boxed: the
        // cache's hit is the hot one, and a future is as large as its largest branch.
        let read = self
            .cache
            .try_get_with_by_ref(id_hash, Box::pin(self.read(id_hash, csrf, now)))
            .await;
        match read {
            Ok(s) if wanted(&s) => Ok((s.expires_at > now).then_some(s)),
            // Read for an app's cookie, without the csrf this request needs: read for it.
            Ok(_) => match Box::pin(self.read(id_hash, csrf, now)).await {
                Ok(s) => {
                    Box::pin(self.cache.insert(id_hash.to_owned(), Arc::clone(&s))).await;
                    Ok(Some(s))
                }
                Err(Miss::Gone) => Ok(None),
                Err(Miss::Store(e)) => Err(e),
            },
            Err(e) => match &*e {
                Miss::Gone => Ok(None),
                Miss::Store(e) => Err(e.clone()),
            },
        }
    }

    /// The live session with this id hash, from the store.
    async fn read(&self, id_hash: &str, csrf: &str, now: Timestamp) -> Result<Arc<Session>, Miss> {
        let found = self
            .store
            .session(id_hash)
            .await
            .map_err(Miss::Store)?
            .ok_or(Miss::Gone)?;
        let r = found.session;
        if r.ended_at.is_some() || r.expires_at <= now || found.user_disabled || !self.sources.contains(&r.idp) {
            return Err(Miss::Gone);
        }
        Ok(Arc::new(Session {
            identity: Identity {
                user: r.user,
                groups: r.groups,
            },
            email: r.email,
            idp: r.idp,
            csrf: csrf.to_owned(),
            id_hash: id_hash.to_owned(),
            expires_at: r.expires_at,
        }))
    }

    /// Ends a session; false when it had already ended.
    pub async fn end(&self, session: &Session, now: Timestamp) -> Result<bool, StoreError> {
        self.cache.invalidate(&session.id_hash).await;
        let event = crate::live::login_events::session_ended(&session.identity.user, &session.idp, &session.id_hash);
        let ended = self.store.end_session(&session.id_hash, now, event).await?;
        self.cache.invalidate(&session.id_hash).await;
        Ok(ended)
    }

    /// The `Set-Cookie` value that installs `session`.
    pub fn cookie(&self, secret: &str, session: &Session) -> String {
        let max_age = Timestamp::now().until(session.expires_at).as_secs();
        format!("{SESSION_COOKIE}={secret}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
    }
}

/// Why the store gave no live session: none (unknown, ended, expired, disabled), or it
/// could not answer.
enum Miss {
    Gone,
    Store(StoreError),
}

/// The `Set-Cookie` value that removes a cookie set with these attributes.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn csrf_of(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"jitgate csrf\0");
    h.update(secret.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Compares secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn racing_lookups_read_once_and_an_apps_read_lends_no_csrf() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let user = crate::store::UserRecord {
            name: "alice".into(),
            groups: vec![],
            password_hash: String::new(),
            disabled: false,
            created_at: Timestamp::now(),
        };
        store
            .add_user(&user, AuditDraft::new("user.added", "test", "alice"))
            .await
            .unwrap();
        let hour = Duration::from_secs(3600);
        let sessions = Sessions::new(store, hour, hour, vec!["local".into()]);
        let alice = Identity {
            user: "alice".into(),
            groups: vec![],
        };
        let now = Timestamp::now();
        let (secret, started) = sessions
            .start(&alice, None, "local", now, serde_json::json!({}), None)
            .await
            .unwrap();
        // Not cached yet: one read answers all of them, so they hold the same session.
        let all = futures_util::future::join_all((0..16).map(|_| sessions.check(&secret, now))).await;
        let first = all[0].as_ref().unwrap().clone().expect("the session is live");
        for s in &all {
            assert!(
                Arc::ptr_eq(s.as_ref().unwrap().as_ref().unwrap(), &first),
                "one read for all"
            );
        }
        assert_eq!(first.csrf, started.csrf);
        // An app's read, cached first, has no csrf to give the console.
        sessions.cache.invalidate(&started.id_hash).await;
        let app = sessions.check_hash(&started.id_hash, now).await.unwrap().unwrap();
        assert_eq!(app.csrf, "");
        let console = sessions.check(&secret, now).await.unwrap().unwrap();
        assert_eq!(console.csrf, started.csrf);
        // Unknown and ended sessions are none, and stay none.
        assert!(sessions.check_hash(&"0".repeat(64), now).await.unwrap().is_none());
        assert!(sessions.end(&console, now).await.unwrap());
        for _ in 0..2 {
            assert!(sessions.check(&secret, now).await.unwrap().is_none());
            assert!(sessions.check_hash(&started.id_hash, now).await.unwrap().is_none());
        }
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_compare_exactly() {
        let (a, b) = (csrf_of("one"), csrf_of("two"));
        assert_ne!(a, b);
        assert!(same_secret(&a, &csrf_of("one")));
        assert!(!same_secret(&a, &b));
        assert!(!same_secret(&a, &a[..10]));
    }
}
