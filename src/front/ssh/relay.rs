//! Moves one session channel's traffic between the client and the target. Each direction
//! runs on its own, so a side that stops reading holds up only the bytes meant for it:
//! russh's channel windows and bounded queues carry that back to the sender. What is held
//! here is bounded too: one message per direction, the recorder's queue, and at most one
//! sftp packet header or request.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use russh::{Channel, ChannelMsg};

use super::cut::{expiry_warning, inside_warning};
use super::record::{Recorder, Terminal};
use super::session::{Open, Shared};
use super::sftp::SftpWatch;
use super::SshFront;
use crate::audit::AuditDraft;
use crate::time::Timestamp;

/// Environment variables a client may pass through: locale and time zone, nothing that
/// changes what a program loads or runs.
pub(super) fn env_allowed(name: &str) -> bool {
    matches!(name, "LANG" | "LANGUAGE" | "TZ" | "COLORTERM") || name.starts_with("LC_") && name.len() <= 32
}

/// sftp is the only subsystem passed on; scp and rsync run as commands.
pub(super) fn subsystem_allowed(name: &str) -> bool {
    name == "sftp"
}

/// A request forwarded to the target, waiting for its answer.
#[derive(Clone, Copy, Debug)]
enum Asked {
    Pty,
    Shell,
    Exec,
    Subsystem,
}

impl Asked {
    fn starts_program(self) -> bool {
        !matches!(self, Asked::Pty)
    }

    fn what(self) -> &'static str {
        match self {
            Asked::Pty => "a terminal",
            Asked::Shell => "a shell",
            Asked::Exec => "the command",
            Asked::Subsystem => "the subsystem",
        }
    }
}

/// Answers every program request on a channel of a refused session with `message` on
/// stderr and exit status 1, so that `ssh`, `scp` and `sftp` all show it and stop.
pub(super) async fn refuse(mut channel: Channel<russh::server::Msg>, message: String) {
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::RequestShell { .. } | ChannelMsg::Exec { .. } | ChannelMsg::RequestSubsystem { .. } => {
                let _ = channel
                    .extended_data_bytes(1, format!("{message}\r\n").into_bytes())
                    .await;
                let _ = channel.exit_status(1).await;
                let _ = channel.eof().await;
                let _ = channel.close().await;
                return;
            }
            ChannelMsg::Close => return,
            _ => {}
        }
    }
}

/// Relays one channel until both sides have closed it.
pub(super) async fn run(
    client: Channel<russh::server::Msg>,
    target: Channel<russh::client::Msg>,
    client_handle: russh::server::Handle,
    open: Arc<Open>,
    shared: Arc<Shared>,
    front: Arc<SshFront>,
) {
    let store = front.broker().store();
    let id = client.id();
    let (mut from_client, to_client) = client.split();
    let (mut from_target, to_target) = target.split();
    let asked: Mutex<VecDeque<Asked>> = Mutex::new(VecDeque::new());
    let ask = |a: Asked| asked.lock().unwrap_or_else(|e| e.into_inner()).push_back(a);
    let host = &shared.host.name;
    // Set once the channel starts a program on a terminal; the other direction reads it.
    let recorder: std::sync::OnceLock<Recorder> = std::sync::OnceLock::new();
    let refuse = |why: String| {
        let to_client = &to_client;
        async move {
            let _ = to_client
                .extended_data_bytes(1, format!("{why}\r\n").into_bytes())
                .await;
            let _ = to_client.exit_status(1).await;
            let _ = to_client.close().await;
        }
    };

    let up = async {
        let mut terminal: Option<(String, u32, u32)> = None;
        let mut sftp: Option<SftpWatch> = None;
        while let Some(msg) = from_client.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    shared.bytes_up.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if let Some(r) = recorder.get() {
                        if r.input(&data).await.is_err() {
                            refuse(RECORDING_STOPPED.into()).await;
                            break;
                        }
                    }
                    if let Some(watch) = sftp.as_mut() {
                        let ops = match watch.feed(&data) {
                            Ok(ops) => ops,
                            Err(why) => {
                                // What cannot be audited does not pass.
                                tracing::warn!(session = %shared.session_id, %why, "sftp stream not auditable; closing it");
                                refuse(format!("jitgate: {why}; the proxy passes only sftp it can audit")).await;
                                break;
                            }
                        };
                        if !ops.is_empty() {
                            let events = ops
                                .into_iter()
                                .map(|op| {
                                    AuditDraft::new("ssh.sftp", &shared.user(), &shared.target())
                                        .grant(open.auth.grant_id())
                                        .details(serde_json::json!({ "session": shared.session_id, "file": op }))
                                })
                                .collect();
                            if let Err(e) = store.append_audit(events).await {
                                // A file operation the audit log cannot show does not happen.
                                refuse(format!("jitgate: cannot record this file operation ({e})")).await;
                                break;
                            }
                        }
                    }
                    to_target.data_bytes(data).await
                }
                ChannelMsg::Eof => to_target.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                    ..
                } => {
                    ask(Asked::Pty);
                    if let Some(pty) = shared.channels.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id) {
                        *pty = true;
                    }
                    terminal = Some((term.clone(), col_width, row_height));
                    to_target
                        .request_pty(
                            true,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await
                }
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } if env_allowed(&variable_name) => to_target.set_env(false, variable_name, variable_value).await,
                ChannelMsg::RequestShell { .. } => {
                    if open.live.is_cut() {
                        break;
                    }
                    if let Err(why) = record(&front, &shared, id, terminal.as_ref(), "shell", &recorder).await {
                        refuse(why).await;
                        break;
                    }
                    ask(Asked::Shell);
                    let sent = to_target.request_shell(true).await;
                    tell_notices(&shared, &to_client).await;
                    if terminal.is_some() && inside_warning(&open.auth, front.expiry_warning, Timestamp::now()) {
                        let line = expiry_warning(&open.auth, Timestamp::now());
                        let _ = to_client.extended_data_bytes(1, line.into_bytes()).await;
                    }
                    sent
                }
                ChannelMsg::Exec { command, .. } => {
                    let text = String::from_utf8_lossy(&command).into_owned();
                    let event = AuditDraft::new("ssh.exec", &shared.user(), &shared.target())
                        .grant(open.auth.grant_id())
                        .details(serde_json::json!({ "session": shared.session_id, "command": text }));
                    if let Err(e) = store.append_audit(vec![event]).await {
                        // A command the audit log cannot show does not run.
                        refuse(format!("jitgate: cannot record this command ({e})")).await;
                        break;
                    }
                    if open.live.is_cut() {
                        break;
                    }
                    if let Err(why) = record(&front, &shared, id, terminal.as_ref(), &text, &recorder).await {
                        refuse(why).await;
                        break;
                    }
                    ask(Asked::Exec);
                    let sent = to_target.exec(true, command).await;
                    tell_notices(&shared, &to_client).await;
                    sent
                }
                ChannelMsg::RequestSubsystem { name, .. } if subsystem_allowed(&name) => {
                    if let Err(why) = record(&front, &shared, id, terminal.as_ref(), &name, &recorder).await {
                        refuse(why).await;
                        break;
                    }
                    sftp = Some(SftpWatch::default());
                    ask(Asked::Subsystem);
                    to_target.request_subsystem(true, name).await
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    if let Some(r) = recorder.get() {
                        if r.resize(col_width, row_height).await.is_err() {
                            refuse(RECORDING_STOPPED.into()).await;
                            break;
                        }
                    }
                    to_target
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                ChannelMsg::Signal { signal } => to_target.signal(signal).await,
                // Refused where they arrived (the handler answered): X11, agent
                // forwarding, unlisted variables and subsystems.
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = to_target.close().await;
    };

    let down = async {
        while let Some(msg) = from_target.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    shared.bytes_down.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if let Some(r) = recorder.get() {
                        if r.output(&data).await.is_err() {
                            refuse(RECORDING_STOPPED.into()).await;
                            break;
                        }
                    }
                    to_client.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    shared.bytes_down.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if let Some(r) = recorder.get() {
                        if r.output(&data).await.is_err() {
                            refuse(RECORDING_STOPPED.into()).await;
                            break;
                        }
                    }
                    to_client.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => to_client.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::ExitStatus { exit_status } => to_client.exit_status(exit_status).await,
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    // The channel's own sender, so it lands after the data before it.
                    let _ = client_handle
                        .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                        .await;
                    Ok(())
                }
                ChannelMsg::Success => {
                    asked.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    Ok(())
                }
                ChannelMsg::Failure => {
                    let what = asked.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    match what {
                        Some(a) if a.starts_program() => {
                            let _ = to_client
                                .extended_data_bytes(
                                    1,
                                    format!("jitgate: {host} refused to start {}\r\n", a.what()).into_bytes(),
                                )
                                .await;
                            let _ = to_client.exit_status(1).await;
                            break;
                        }
                        Some(a) => {
                            to_client
                                .extended_data_bytes(
                                    1,
                                    format!("jitgate: {host} refused {}\r\n", a.what()).into_bytes(),
                                )
                                .await
                        }
                        None => Ok(()),
                    }
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = to_client.close().await;
    };

    // Both directions end with the session, whatever they wait for.
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = shared.done.cancelled() => {}
    }
    // Dropping the recorder ends its file; the session's end event waits for the hash.
    drop(recorder);
    shared.channels.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

/// Shows the session's pending notices on this channel's stderr, once.
async fn tell_notices(shared: &Shared, to_client: &russh::ChannelWriteHalf<russh::server::Msg>) {
    let notices = std::mem::take(&mut *shared.notices.lock().unwrap_or_else(|e| e.into_inner()));
    for line in notices {
        let _ = to_client.extended_data_bytes(1, line.into_bytes()).await;
    }
}

const RECORDING_STOPPED: &str =
    "jitgate: the recording of this terminal failed; the proxy does not keep unrecorded terminals open";

/// Starts recording a channel that runs `what` on a terminal; no terminal, no recording.
async fn record(
    front: &SshFront,
    shared: &Shared,
    id: russh::ChannelId,
    terminal: Option<&(String, u32, u32)>,
    what: &str,
    recorder: &std::sync::OnceLock<Recorder>,
) -> Result<(), String> {
    let Some((term, width, height)) = terminal else {
        return Ok(());
    };
    if recorder.get().is_some() {
        return Ok(());
    }
    let title = format!("{} {} ({what})", shared.user(), shared.target());
    let name = format!("{}-{id}", shared.session_id);
    let t = Terminal {
        term,
        width: *width,
        height: *height,
    };
    let (rec, done) = Recorder::start(&front.recordings, &name, t, &title, front.record_input)
        .await
        .map_err(|e| {
            format!("jitgate: cannot record this session ({e}); the proxy does not open unrecorded terminals")
        })?;
    let _ = recorder.set(rec);
    shared.recordings.lock().unwrap_or_else(|e| e.into_inner()).push(done);
    Ok(())
}

/// Relays a forwarded TCP connection's bytes both ways until either side ends.
pub(super) async fn bytes(
    client: Channel<russh::server::Msg>,
    target: Channel<russh::client::Msg>,
    shared: Arc<Shared>,
) {
    // Counted as they are read, not from what the copy returns: a forward that ends in an
    // error or is cut still adds what it moved to the session's totals.
    let up = Arc::clone(&shared);
    let mut client = tokio_util::io::InspectReader::new(client.into_stream(), move |b: &[u8]| {
        up.bytes_up.fetch_add(b.len() as u64, Ordering::Relaxed);
    });
    let down = Arc::clone(&shared);
    let mut target = tokio_util::io::InspectReader::new(target.into_stream(), move |b: &[u8]| {
        down.bytes_down.fetch_add(b.len() as u64, Ordering::Relaxed);
    });
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut target) => {}
        _ = shared.done.cancelled() => {}
    }
}
