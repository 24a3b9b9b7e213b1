//! One SSH session for one target, terminated here: authentication by identity
//! certificate, the decision for host + login, and the connection to the target; `cut`
//! watches its grant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::Certificate;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::relay;
use super::target::{self, Target};
use super::{run_server, SshFront, MAX_CHANNELS};
use crate::access::{Action, Authorized, Identity, Resource};
use crate::audit::AuditDraft;
use crate::ca::ssh::SessionCert;
use crate::config::SshHost;
use crate::live::LiveHandle;
use crate::time::Timestamp;

/// What the relays and the watch share about a session, and what its end event reports.
pub(super) struct Shared {
    pub host: Arc<SshHost>,
    pub user: Mutex<Option<String>>,
    pub login: Mutex<Option<String>>,
    pub grant: Mutex<Option<(String, String)>>,
    pub session_id: String,
    pub started: Timestamp,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Open client channels, and whether each has a terminal (the warning goes there).
    pub channels: Mutex<HashMap<ChannelId, bool>>,
    /// Why the session was ended by the proxy, if it was.
    pub cut: Mutex<Option<String>>,
    /// The writers of this session's terminal recordings; each ends with its file's hash.
    pub recordings: Mutex<Vec<tokio::task::JoinHandle<Result<super::record::Summary, String>>>>,
    /// Cancelled when the session is over, for whichever task outlives it.
    pub done: CancellationToken,
    /// Channels open now, of every kind.
    pub open_channels: std::sync::atomic::AtomicUsize,
    /// Why a request without a text of its own in the protocol was refused (`-R`): the
    /// next program started on a channel shows it on stderr.
    pub notices: Mutex<Vec<String>>,
}

/// Notices kept for a session's next program; later ones are dropped (the audit log has
/// every refusal).
const MAX_NOTICES: usize = 4;

/// One of a session's [`MAX_CHANNELS`] channel slots, given back when dropped.
pub(super) struct ChannelSlot(Arc<Shared>);

impl ChannelSlot {
    pub fn take(shared: &Arc<Shared>) -> Option<ChannelSlot> {
        if shared.open_channels.fetch_add(1, Ordering::AcqRel) >= MAX_CHANNELS {
            shared.open_channels.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ChannelSlot(Arc::clone(shared)))
    }
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.open_channels.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub fn target(&self) -> String {
        let login = self.login.lock().unwrap_or_else(|e| e.into_inner());
        format!("ssh:{}@{}", login.as_deref().unwrap_or("?"), self.host.name)
    }

    pub fn user(&self) -> String {
        self.user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    pub fn grant_id(&self) -> Option<String> {
        self.grant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(g, _)| g.clone())
    }
}

/// The decided session, once the client has authenticated.
enum Admission {
    /// No grant, or the target could not be reached: every channel prints this and ends.
    Refused(String),
    Open(Arc<Open>),
}

pub(super) struct Open {
    pub target: Target,
    pub auth: Authorized,
    pub identity: Identity,
    pub live: LiveHandle,
    pub reverse: Arc<target::Reverse>,
}

struct TargetSession {
    front: Arc<SshFront>,
    shared: Arc<Shared>,
    /// The user the HTTPS upgrade already authenticated, when the session came that way:
    /// the certificate must name the same user.
    bound_user: Option<String>,
    authenticated: Arc<AtomicBool>,
    admission: Option<Admission>,
    /// The session's side of the target's remote forwards, given to the target connection.
    reverse: Arc<target::Reverse>,
    /// The target's key exchange, under way while the client authenticates.
    early: Option<target::Early>,
}

/// Serves one SSH session for `host` on `stream` until it ends, then records its end.
pub async fn serve_session<S>(front: Arc<SshFront>, host: Arc<SshHost>, stream: S, bound_user: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = match front.server_config(&[&host.name]) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "cannot serve an SSH session"),
    };
    let shared = Arc::new(Shared {
        host,
        user: Mutex::new(None),
        login: Mutex::new(None),
        grant: Mutex::new(None),
        session_id: crate::identity::token::random_id("ssh-"),
        started: Timestamp::now(),
        bytes_up: AtomicU64::new(0),
        bytes_down: AtomicU64::new(0),
        channels: Mutex::new(HashMap::new()),
        cut: Mutex::new(None),
        recordings: Mutex::new(Vec::new()),
        done: CancellationToken::new(),
        open_channels: std::sync::atomic::AtomicUsize::new(0),
        notices: Mutex::new(Vec::new()),
    });
    let authenticated = Arc::new(AtomicBool::new(false));
    let reverse = Arc::new(target::Reverse::default());
    let _ = reverse.shared.set(Arc::clone(&shared));
    // Only for a user already authenticated by the way in (the HTTPS token or the jump
    // listener) who holds a grant on this host for some login: no one else makes the
    // proxy reach a target. The login itself is decided at authentication, as before.
    let early = bound_user
        .as_deref()
        .filter(|user| front.broker().ssh_host_granted(user, &shared.host, Timestamp::now()))
        .and_then(|_| front.early_slot(&shared.host.name))
        .map(|slot| {
            tracing::debug!(host = %shared.host.name, session = %shared.session_id,
                "reaching the target while the client authenticates");
            target::Early::start(
                Arc::clone(&shared.host),
                Arc::clone(&reverse),
                shared.done.clone(),
                slot,
            )
        });
    let handler = TargetSession {
        front: Arc::clone(&front),
        shared: Arc::clone(&shared),
        bound_user,
        authenticated: Arc::clone(&authenticated),
        admission: None,
        reverse,
        early,
    };
    run_server(
        config,
        stream,
        handler,
        authenticated,
        front.login_grace,
        shared.done.clone(),
    )
    .await;
    shared.done.cancel();
    let grant = shared.grant_id();
    if let Some(grant) = grant {
        let cut = shared.cut.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let writers: Vec<_> = std::mem::take(&mut *shared.recordings.lock().unwrap_or_else(|e| e.into_inner()));
        let mut recordings = Vec::new();
        for writer in writers {
            // A relay still draining its last bytes finishes within moments.
            recordings.push(match tokio::time::timeout(Duration::from_secs(10), writer).await {
                Ok(Ok(Ok(summary))) => serde_json::json!(summary),
                Ok(Ok(Err(why))) => serde_json::json!({ "error": why }),
                Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                Err(_) => serde_json::json!({ "error": "the recording did not finish in time" }),
            });
        }
        let event = AuditDraft::new("ssh.session.end", &shared.user(), &shared.target())
            .grant(&grant)
            .details(serde_json::json!({
                "session": shared.session_id,
                "started_at": shared.started,
                "bytes_up": shared.bytes_up.load(Ordering::Relaxed),
                "bytes_down": shared.bytes_down.load(Ordering::Relaxed),
                "cut": cut,
                "recordings": recordings,
            }));
        if let Err(e) = crate::store::append_audit_patiently(front.broker().store().as_ref(), vec![event]).await {
            tracing::error!(error = %e, session = %shared.session_id, "cannot record the end of an SSH session");
        }
    }
}

/// A login name as sshd would take it: no empty, huge or control-laden names reach policy
/// or a certificate.
fn plausible_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= 64
        && login
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'$'))
        && !login.starts_with('-')
}

impl TargetSession {
    /// Decides the session and, when allowed, opens the target connection.
    async fn admit(&mut self, identity: Identity, login: &str, jti: &str) -> Admission {
        // Taken first: whatever is decided below, an early connection not used is dropped.
        let early = self.early.take();
        let host = Arc::clone(&self.shared.host);
        let broker = self.front.broker();
        let now = Timestamp::now();
        let resource = Resource::Ssh {
            host: &host.name,
            labels: &host.labels,
            login,
        };
        let auth = match broker.authorize(&identity, resource, Action::SshLogin, now).await {
            Err(e) => {
                tracing::error!(error = %e, "cannot decide an SSH session");
                return Admission::Refused(format!(
                    "jitgate: cannot decide {login}@{} right now ({e}); try again shortly",
                    host.name
                ));
            }
            Ok(Err(denied)) => return Admission::Refused(refusal(login, &host.name, &denied.requestable)),
            Ok(Ok(auth)) => auth,
        };
        // Under the login too: `jitgate logout` ends the session, not only the next one.
        // Registered before the target is reached, so a login that just ended opens nothing.
        let live = broker.live().register_for(&auth, &crate::live::token_login(jti));
        if live.is_cut() {
            return Admission::Refused(if live.ended_by_logout() {
                "jitgate: your login has ended; log in again with: jitgate login".to_owned()
            } else {
                format!("jitgate: grant {} has just ended; request again", auth.grant_id())
            });
        }
        let scope = auth.profile().ssh.as_ref();
        let session_end = std::cmp::min(auth.expires_at(), now.saturating_add(self.front.session_ttl));
        let cert = SessionCert {
            login,
            user: &identity.user,
            grant_id: auth.grant_id(),
            session_id: &self.shared.session_id,
            valid_before: session_end,
            pty: true,
            port_forwarding: scope.is_some_and(|s| s.port_forwarding),
        };
        *self.shared.grant.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((auth.grant_id().to_owned(), auth.profile().name.clone()));
        let reverse = Arc::clone(&self.reverse);
        let ca = &self.front.cas.target;
        let connect = || {
            target::connect(
                Arc::clone(&host),
                ca,
                &cert,
                Arc::clone(&reverse),
                self.shared.done.clone(),
            )
        };
        let reached = match early {
            Some(early) => match early.take().await {
                Some(Ok(t)) if !t.is_closed() => match target::login(t, &host, ca, &cert).await {
                    Ok(t) => Ok(t),
                    // The target dropped the connection under the login: once more from
                    // the start. A refusal or a silent target is said as it is.
                    Err(e) if e.dropped => connect().await,
                    Err(e) => Err(e.why),
                },
                // The key exchange itself failed (unreachable, wrong host key): a second
                // try would fail the same way, only later.
                Some(Err(why)) => Err(why),
                // Held too long for a slow client, or closed by the target meanwhile.
                _ => connect().await,
            },
            None => connect().await,
        };
        let target = match reached {
            Ok(t) => t,
            Err(why) => {
                tracing::warn!(user = %identity.user, host = %host.name, %why, "cannot open SSH target");
                let event = AuditDraft::new(
                    "ssh.session.failed",
                    &identity.user,
                    &format!("ssh:{login}@{}", host.name),
                )
                .grant(auth.grant_id())
                .reason(Some(&why));
                let _ = broker.store().append_audit(vec![event]).await;
                *self.shared.grant.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return Admission::Refused(format!("jitgate: {why}"));
            }
        };
        let event = AuditDraft::new(
            "ssh.session.start",
            &identity.user,
            &format!("ssh:{login}@{}", host.name),
        )
        .grant(auth.grant_id())
        .details(serde_json::json!({
            "session": self.shared.session_id,
            "certificate_valid_before": session_end,
        }));
        if let Err(e) = broker.store().append_audit(vec![event]).await {
            // Nothing is opened that the audit log does not show.
            *self.shared.grant.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Admission::Refused(format!("jitgate: cannot record this session ({e}); try again shortly"));
        }
        tracing::info!(user = %identity.user, %login, host = %host.name, grant = auth.grant_id(),
            session = %self.shared.session_id, "SSH session opened");
        Admission::Open(Arc::new(Open {
            target,
            auth,
            identity,
            live,
            reverse,
        }))
    }
}

fn forwarding_refused(open: &Open) -> String {
    format!(
        "jitgate: port forwarding is not allowed by grant {} (profile {})",
        open.auth.grant_id(),
        open.auth.profile().name
    )
}

/// The one message a session without a grant gets.
fn refusal(login: &str, host: &str, requestable: &[String]) -> String {
    if requestable.is_empty() {
        format!("jitgate: no active grant allows {login}@{host}, and no profile you may request would; ask an admin")
    } else {
        let first = &requestable[0];
        format!(
            "jitgate: no active grant allows {login}@{host}. Profiles that would: {}. \
             Request one with: jitgate request {first} --reason \"...\"",
            requestable.join(", ")
        )
    }
}

impl russh::server::Handler for TargetSession {
    type Error = russh::Error;

    async fn auth_publickey(&mut self, _user: &str, _key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        // Only the identity certificate from `jitgate login` says who someone is.
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(&mut self, login: &str, cert: &Certificate) -> Result<Auth, Self::Error> {
        if self.admission.is_some() {
            return Ok(Auth::reject());
        }
        let (identity, jti) = match self.front.identify(cert, Timestamp::now()).await {
            Ok(found) => found,
            Err(why) => {
                tracing::info!(host = %self.shared.host.name, %login, %why, "SSH identity certificate refused");
                return Ok(Auth::reject());
            }
        };
        if self.bound_user.as_ref().is_some_and(|u| *u != identity.user) {
            tracing::info!(cert_user = %identity.user, "SSH certificate and HTTPS token name different users");
            return Ok(Auth::reject());
        }
        if !plausible_login(login) {
            return Ok(Auth::reject());
        }
        *self.shared.user.lock().unwrap_or_else(|e| e.into_inner()) = Some(identity.user.clone());
        *self.shared.login.lock().unwrap_or_else(|e| e.into_inner()) = Some(login.to_owned());
        // Authenticated now; reaching the target may take a while, and must not count
        // against the time to authenticate.
        self.authenticated.store(true, Ordering::Release);
        let admission = self.admit(identity, login, &jti).await;
        self.admission = Some(admission);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(Admission::Open(open)) = &self.admission {
            let _ = open.reverse.client.set(session.handle());
            tokio::spawn(super::cut::watch(
                Arc::clone(open),
                Arc::clone(&self.shared),
                session.handle(),
                self.front.expiry_warning,
            ));
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(slot) = ChannelSlot::take(&self.shared) else {
            reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        if let Some(Admission::Open(open)) = &self.admission {
            if open.live.is_cut() {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
        }
        match &self.admission {
            None => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await
            }
            Some(Admission::Refused(message)) => {
                reply.accept().await;
                let message = message.clone();
                tokio::spawn(async move {
                    relay::refuse(channel, message).await;
                    drop(slot);
                });
            }
            Some(Admission::Open(open)) => {
                match tokio::time::timeout(super::TARGET_CALL_TIMEOUT, open.target.channel_open_session()).await {
                    Ok(Ok(to_target)) => {
                        self.shared
                            .channels
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(channel.id(), false);
                        reply.accept().await;
                        let relay = relay::run(
                            channel,
                            to_target,
                            session.handle(),
                            Arc::clone(open),
                            Arc::clone(&self.shared),
                            Arc::clone(&self.front),
                        );
                        tokio::spawn(async move {
                            relay.await;
                            drop(slot);
                        });
                    }
                    failed => {
                        let why = failed.map_or_else(
                            |_| "timed out".to_owned(),
                            |e| e.err().map(|e| e.to_string()).unwrap_or_default(),
                        );
                        tracing::warn!(error = %why, host = %self.shared.host.name, "target refused a session channel");
                        reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                    }
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if relay::env_allowed(name) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if relay::subsystem_allowed(name) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    /// `ssh -L` and `-W`: a TCP connection from the target onwards, only where the grant's
    /// profile allows port forwarding.
    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(Admission::Open(open)) = &self.admission else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let Some(slot) = ChannelSlot::take(&self.shared).filter(|_| !open.live.is_cut()) else {
            reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let allowed = open.auth.profile().ssh.as_ref().is_some_and(|s| s.port_forwarding);
        let target = format!("{host_to_connect}:{port_to_connect}");
        let event = AuditDraft::new(
            if allowed { "ssh.forward" } else { "ssh.forward.denied" },
            &open.identity.user,
            &self.shared.target(),
        )
        .grant(open.auth.grant_id())
        .details(serde_json::json!({ "session": self.shared.session_id, "to": target }));
        if !allowed {
            // Refused either way; a record that cannot be written is at least in the log.
            if let Err(e) = self.front.broker().store().append_audit(vec![event]).await {
                tracing::error!(error = %e, session = %self.shared.session_id, to = %target, "cannot record a refused forward");
            }
            // OpenSSH prints a refused channel's description after its reason:
            // "open failed: administratively prohibited: jitgate: …".
            reply
                .reject(russh::ChannelOpenFailure::Other {
                    code: 1,
                    reason: forwarding_refused(open),
                })
                .await;
            return Ok(());
        }
        if let Err(e) = self.front.broker().store().append_audit(vec![event]).await {
            session.debug(true, &format!("jitgate: cannot record this forward ({e})"), "")?;
            reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let onward = open.target.channel_open_direct_tcpip(
            host_to_connect,
            port_to_connect,
            originator_address,
            originator_port,
        );
        match tokio::time::timeout(super::TARGET_CALL_TIMEOUT, onward).await {
            Ok(Ok(onward)) => {
                reply.accept().await;
                let shared = Arc::clone(&self.shared);
                tokio::spawn(async move {
                    relay::bytes(channel, onward, shared).await;
                    drop(slot);
                });
            }
            _ => {
                tracing::info!(%target, "target refused a forward, or did not answer");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    /// `ssh -R`: the target listens for this session, where the profile allows port
    /// forwarding; connections to it come back through the client's channels.
    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(Admission::Open(open)) = &self.admission else {
            return Ok(false);
        };
        let allowed = open.auth.profile().ssh.as_ref().is_some_and(|s| s.port_forwarding);
        let event = AuditDraft::new(
            if allowed {
                "ssh.forward.remote"
            } else {
                "ssh.forward.denied"
            },
            &open.identity.user,
            &self.shared.target(),
        )
        .grant(open.auth.grant_id())
        .details(serde_json::json!({
            "session": self.shared.session_id,
            "remote_listen": format!("{address}:{port}"),
        }));
        if let Err(e) = self.front.broker().store().append_audit(vec![event]).await {
            tracing::error!(error = %e, "cannot record a remote forward");
            return Ok(false);
        }
        if !allowed {
            // A refused global request carries no text; ssh only warns that the forward
            // failed. The reason goes to the session's stderr when its program starts.
            let why = forwarding_refused(open);
            session.debug(true, &why, "")?;
            // The address is the client's own text: shown short and printable, and only a
            // few notices are kept for a client that asks again and again.
            let shown: String = address.chars().filter(|c| !c.is_control()).take(64).collect();
            let line = format!("{why}; remote forward {shown}:{port} refused\r\n");
            let mut notices = self.shared.notices.lock().unwrap_or_else(|e| e.into_inner());
            if notices.len() < MAX_NOTICES && !notices.contains(&line) {
                notices.push(line);
            }
            return Ok(false);
        }
        match tokio::time::timeout(super::TARGET_CALL_TIMEOUT, open.target.tcpip_forward(address, *port))
            .await
            .unwrap_or(Err(russh::Error::ConnectionTimeout))
        {
            Ok(bound) => {
                let bound = if *port == 0 { bound } else { *port };
                open.reverse
                    .listening
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((address.to_owned(), bound));
                *port = bound;
                Ok(true)
            }
            Err(e) => {
                tracing::info!(error = %e, "the target refused a remote forward");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(Admission::Open(open)) = &self.admission else {
            return Ok(false);
        };
        let held = open
            .reverse
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(address.to_owned(), port));
        let cancelled = tokio::time::timeout(
            super::TARGET_CALL_TIMEOUT,
            open.target.cancel_tcpip_forward(address, port),
        );
        Ok(held && matches!(cancelled.await, Ok(Ok(()))))
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.shared
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&channel);
        Ok(())
    }
}
