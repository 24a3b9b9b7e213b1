//! The jump listener (`ssh -J USER@PROXY:2222`): it authenticates the client by identity
//! certificate and opens `direct-tcpip` channels to inventory names only. The SSH session
//! the client then runs inside such a channel is terminated here like any other; nothing
//! is ever passed through to a target as raw bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use russh::keys::Certificate;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{relay, run_server, serve_session, SshFront};
use crate::time::Timestamp;

struct JumpSession {
    front: Arc<SshFront>,
    peer: SocketAddr,
    authenticated: Arc<AtomicBool>,
    user: Option<String>,
    /// Held until the client authenticates.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Nested sessions open through this connection.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

/// One of a jump connection's [`super::MAX_CHANNELS`] channel slots, given back when
/// dropped, however the task that holds it ends.
struct JumpSlot(Arc<std::sync::atomic::AtomicUsize>);

impl JumpSlot {
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>) -> Option<JumpSlot> {
        if open.fetch_add(1, Ordering::AcqRel) >= super::MAX_CHANNELS {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(JumpSlot(Arc::clone(open)))
    }
}

impl Drop for JumpSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) async fn serve(
    front: Arc<SshFront>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let names: Vec<&str> = front.jump_names.iter().map(String::as_str).collect();
    let config = match front.server_config(&names) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "cannot serve the SSH jump listener"),
    };
    let authenticated = Arc::new(AtomicBool::new(false));
    let handler = JumpSession {
        front: Arc::clone(&front),
        peer,
        authenticated: Arc::clone(&authenticated),
        user: None,
        slot: Some(slot),
        open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    run_server(
        config,
        tcp,
        handler,
        authenticated,
        front.login_grace,
        CancellationToken::new(),
    )
    .await;
}

impl russh::server::Handler for JumpSession {
    type Error = russh::Error;

    async fn auth_publickey(&mut self, _user: &str, _key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(&mut self, _user: &str, cert: &Certificate) -> Result<Auth, Self::Error> {
        match self.front.identify(cert, Timestamp::now()).await {
            Ok((identity, _)) => {
                tracing::debug!(peer = %self.peer, user = %identity.user, "jump client authenticated");
                self.user = Some(identity.user);
                self.authenticated.store(true, Ordering::Release);
                self.slot = None;
                Ok(Auth::Accept)
            }
            Err(why) => {
                tracing::info!(peer = %self.peer, %why, "SSH identity certificate refused at the jump listener");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Each refusal holds a task until the client closes the channel, so these count
        // against the connection's channel cap like the jumps do.
        let Some(slot) = JumpSlot::take(&self.open) else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        // A shell here would be a standing foothold; say how the listener is meant to be used.
        reply.accept().await;
        let user = self.user.as_deref().unwrap_or("USER");
        let message =
            format!("jitgate: this is a jump listener, not a shell; use: ssh -J {user}@PROXY:PORT LOGIN@HOST");
        tokio::spawn(async move {
            relay::refuse(channel, message).await;
            drop(slot);
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(user) = self.user.clone() else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let Some(host) = self.front.host(host_to_connect).cloned() else {
            tracing::info!(%user, host = %host_to_connect, "jump to a host not in the inventory refused");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let Some(slot) = JumpSlot::take(&self.open) else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        tracing::debug!(%user, host = %host.name, port = port_to_connect, "jump channel opened");
        reply.accept().await;
        let front = Arc::clone(&self.front);
        tokio::spawn(async move {
            serve_session(front, host, channel.into_stream(), Some(user)).await;
            drop(slot);
        });
        Ok(())
    }
}
