//! An upgraded stream (exec, attach, port-forward) between kubectl and the API server, held
//! until either side ends it or its grant is cut. The proxy follows the frames the server
//! sends, so that a cut can end the stream as the kubelet ends one, with the reason on an
//! error stream (kubectl prints it and fails) rather than a bare close that kubectl would
//! take for success, or report only as a lost connection:
//! - exec and attach over the WebSocket channel protocols (`v4`/`v5.channel.k8s.io`): a
//!   Status on channel 3, then a close frame;
//! - exec and attach over SPDY/3.1: a data frame on stream 1, which client-go always opens
//!   first as the error stream, then that stream's FIN. It carries a Status for the `v4`
//!   remote-command protocol and plain text for the older ones;
//! - a port-forward (SPDY/3.1, bare or in WebSocket messages): the message on each open
//!   connection's error stream, and an end on its data stream (see `portforward`). For
//!   that alone the client's side is followed too: which stream is which is said there.
//!
//! At a cut nothing more the client sends goes on to the server. The rest of the frame
//! being sent to the client is let through (for at most 100 ms), so the words land between
//! frames; if the server already used the error stream (its own exit
//! Status) or is closing, nothing is added. Only frame headers are parsed, and a
//! port-forward's control frames (see `frames` for why by hand).

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frames::{spdy_data, ws_frame, SpdyEvent, SpdyFrames, WsFrames, WsStep, SPDY_FIN, SPDY_GOAWAY};
use super::portforward::{Forwards, Requests};

/// How the server's side of an upgraded stream is framed, so that last words can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// `v4`/`v5.channel.k8s.io` over WebSocket.
    Channels,
    /// SPDY/3.1; whether the error stream carries a Status (`v4.channel.k8s.io`).
    Spdy { status: bool },
    /// A port-forward: SPDY/3.1 with an error stream per forwarded connection, bare or
    /// `tunneled` in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`).
    PortForward { tunneled: bool },
}

/// How long a cut waits for the frame being sent to end before its last words.
const LAST_WORDS_WAIT: Duration = Duration::from_millis(100);
/// After the client stops sending, how long the server's side may still finish.
const HALF_CLOSED_GRACE: Duration = Duration::from_secs(5);

fn failure_status(message: &str) -> String {
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Expired",
    })
    .to_string()
}

/// What a cut says, framed for the stream; nothing for a port-forward with no connection
/// open.
fn last_frames(framing: Framing, message: &str, forwards: &Mutex<Forwards>) -> Option<Vec<u8>> {
    Some(match framing {
        Framing::Channels => {
            let status = failure_status(message);
            let mut payload = Vec::with_capacity(status.len() + 1);
            payload.push(ERROR_CHANNEL);
            payload.extend_from_slice(status.as_bytes());
            let mut out = Vec::with_capacity(payload.len() + 16);
            ws_frame(&mut out, 0x2, &payload);
            ws_frame(&mut out, 0x8, &1000u16.to_be_bytes());
            out
        }
        Framing::Spdy { status } => {
            let payload = if status {
                failure_status(message)
            } else {
                message.to_owned()
            };
            let mut out = Vec::with_capacity(payload.len() + 16);
            spdy_data(&mut out, ERROR_STREAM, 0, payload.as_bytes());
            spdy_data(&mut out, ERROR_STREAM, SPDY_FIN, &[]);
            out
        }
        Framing::PortForward { tunneled } => {
            let frames = forwards.lock().expect("not poisoned").last_frames(message)?;
            if !tunneled {
                return Some(frames);
            }
            let mut out = Vec::with_capacity(frames.len() + 10);
            ws_frame(&mut out, 0x2, &frames);
            out
        }
    })
}

/// The channel of the exit Status in the WebSocket channel protocols.
const ERROR_CHANNEL: u8 = 3;
/// client-go opens the error stream first, and a client's first SPDY stream is 1.
const ERROR_STREAM: u32 = 1;

/// Where the server-to-client byte stream stands in its frames, whatever the framing.
struct Tracker<'a> {
    framing: Framing,
    /// Channels, or a tunneled port-forward.
    ws: Option<WsFrames>,
    /// SPDY, bare or tunneled.
    spdy: Option<SpdyFrames>,
    /// A port-forward's streams.
    forwards: Option<&'a Mutex<Forwards>>,
    /// The server used the error stream, or is closing: it has said its last word.
    said: bool,
    /// The stream broke the framing rules: add nothing.
    lost: bool,
}

impl<'a> Tracker<'a> {
    fn new(framing: Framing, forwards: Option<&'a Mutex<Forwards>>) -> Tracker<'a> {
        let (ws, spdy) = match framing {
            Framing::Channels => (true, false),
            Framing::Spdy { .. } => (false, true),
            Framing::PortForward { tunneled } => (tunneled, true),
        };
        Tracker {
            framing,
            ws: ws.then(|| WsFrames::new(false)),
            spdy: spdy.then(SpdyFrames::new),
            forwards,
            said: false,
            lost: false,
        }
    }

    /// Whether the proxy can still add its frames, now or at a later boundary.
    fn may_speak(&self) -> bool {
        !self.said && !self.lost && self.forwards.is_none_or(|f| f.lock().expect("not poisoned").open())
    }

    fn at_boundary(&self) -> bool {
        self.ws.as_ref().is_none_or(WsFrames::at_boundary) && self.spdy.as_ref().is_none_or(SpdyFrames::at_boundary)
    }

    /// Follows `data`; with `to_boundary`, stops at the first boundary reached and says how
    /// many bytes it took (the rest must not be sent).
    /// Once the stream cannot be followed, everything passes.
    fn feed(&mut self, data: &[u8], to_boundary: bool) -> usize {
        let mut used = 0;
        while used < data.len() {
            if self.lost {
                return data.len();
            }
            if to_boundary && self.at_boundary() && used > 0 {
                break;
            }
            let rest = &data[used..];
            let Some(ws) = self.ws.as_mut() else {
                used += self.spdy_piece(rest);
                continue;
            };
            match ws.step(rest) {
                WsStep::Header(n) => {
                    self.said |= ws.closing;
                    used += n;
                }
                WsStep::Control(n) => used += n,
                WsStep::Broken => self.lost = true,
                WsStep::Data { len, message_start, .. } => {
                    let payload = &rest[..len];
                    if self.framing == Framing::Channels {
                        self.said |= message_start && payload[0] == ERROR_CHANNEL;
                    } else {
                        let mut off = 0;
                        while off < len && !self.lost {
                            off += self.spdy_piece(&payload[off..]);
                        }
                    }
                    used += len;
                }
            }
        }
        used
    }

    /// Follows SPDY bytes up to the end of the frame part they begin: how many it took.
    fn spdy_piece(&mut self, data: &[u8]) -> usize {
        let Some(spdy) = self.spdy.as_mut() else {
            self.lost = true;
            return data.len();
        };
        let (n, event) = match spdy.step(data) {
            Ok(step) => step,
            Err(()) => {
                self.lost = true;
                return data.len();
            }
        };
        match (&event, self.forwards) {
            (Some(SpdyEvent::Control { kind, .. }), _) if *kind == SPDY_GOAWAY => self.said = true,
            (Some(e), Some(forwards)) => forwards.lock().expect("not poisoned").server_sent(e),
            (Some(SpdyEvent::Data { stream, flags, len }), None) => {
                self.said |= *stream == ERROR_STREAM && (*len > 0 || flags & SPDY_FIN != 0);
            }
            _ => {}
        }
        n
    }
}

/// Copies both ways until the server's side closes (or the client's, plus a short grace)
/// or `cut` resolves; from the cut on, nothing the client sends goes on. On a cut, a stream whose framing is known gets the message `last`
/// makes, after the frame being sent and before the next.
pub(super) async fn splice<C, U>(
    client: C,
    upstream: U,
    last: Option<(Framing, impl FnOnce() -> String)>,
    cut: impl Future<Output = ()>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let forwards = Mutex::new(Forwards::default());
    let (mut tracker, mut requests, last) = match last {
        Some((framing, say)) => {
            let (forwards, requests) = match framing {
                Framing::PortForward { tunneled } => (Some(&forwards), Some(Requests::new(&forwards, tunneled))),
                _ => (None, None),
            };
            (Some(Tracker::new(framing, forwards)), requests, Some(say))
        }
        None => (None, None, None),
    };
    // Cancelled by the cut: from then on nothing the client sends goes on, and a write to
    // the server under way is dropped (the stream is ending; a server that does not read
    // must not hold the client's close back).
    let stopped = CancellationToken::new();
    // Ends when the client stops sending.
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let closing = requests.as_mut().is_some_and(|r| {
                r.feed(&buf[..n]);
                r.closed()
            });
            if !stopped.is_cancelled() {
                // Flushed, as TLS may hold a written record back until the next write.
                let sent = async {
                    upstream_write.write_all(&buf[..n]).await?;
                    upstream_write.flush().await
                };
                let sent = tokio::select! {
                    sent = sent => sent.is_ok(),
                    _ = stopped.cancelled() => true,
                };
                if !sent {
                    break;
                }
            }
            // After its close frame a client sends nothing more.
            if closing {
                break;
            }
        }
        tokio::select! {
            _ = upstream_write.shutdown() => {}
            _ = stopped.cancelled() => {}
        }
    };
    tokio::pin!(up);
    tokio::pin!(cut);
    // Set by the cut: when the last words must be out, or given up.
    let mut deadline: Option<Instant> = None;
    // Set when the client stopped sending: when the server's side must have finished.
    let mut half_closed: Option<Instant> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if deadline.is_some() {
            match &tracker {
                Some(t) if t.may_speak() && t.at_boundary() => break,
                Some(t) if t.may_speak() => {}
                _ => return,
            }
        }
        let until = deadline.into_iter().chain(half_closed).min();
        let n = tokio::select! {
            _ = &mut up, if half_closed.is_none() => {
                half_closed = Some(Instant::now() + HALF_CLOSED_GRACE);
                continue;
            }
            _ = &mut cut, if deadline.is_none() => {
                stopped.cancel();
                deadline = Some(Instant::now() + LAST_WORDS_WAIT);
                continue;
            }
            _ = tokio::time::sleep_until(until.unwrap_or_else(Instant::now)), if until.is_some() => return,
            read = upstream_read.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    // Bounded: a client that does not read must not hold the task.
                    let _ = tokio::time::timeout(HALF_CLOSED_GRACE, client_write.shutdown()).await;
                    return;
                }
                Ok(n) => n,
            },
        };
        // After a cut only the rest of the frame being sent goes on.
        let send = match tracker.as_mut() {
            Some(t) => t.feed(&buf[..n], deadline.is_some()),
            None => n,
        };
        // A write in progress is not dropped half-way (the next frame would land inside
        // this one); a cut only bounds how long it may take.
        let write = async {
            client_write.write_all(&buf[..send]).await?;
            client_write.flush().await
        };
        tokio::pin!(write);
        loop {
            let until = deadline.into_iter().chain(half_closed).min();
            tokio::select! {
                written = &mut write => {
                    if written.is_err() {
                        return;
                    }
                    break;
                }
                _ = &mut up, if half_closed.is_none() => {
                    half_closed = Some(Instant::now() + HALF_CLOSED_GRACE);
                }
                _ = &mut cut, if deadline.is_none() => {
                    stopped.cancel();
                    deadline = Some(Instant::now() + LAST_WORDS_WAIT);
                }
                _ = tokio::time::sleep_until(until.unwrap_or_else(Instant::now)), if until.is_some() => return,
            }
        }
    }
    let (Some(t), Some(say), Some(until)) = (tracker, last, deadline) else {
        return;
    };
    let Some(words) = last_frames(t.framing, &say(), &forwards) else {
        return;
    };
    let _ = tokio::time::timeout_at(until + LAST_WORDS_WAIT, async {
        if client_write.write_all(&words).await.is_err() || client_write.flush().await.is_err() {
            return;
        }
        if let Framing::PortForward { tunneled } = t.framing {
            // client-go logs each connection's error and then closes: wait for that, as
            // closing first could end kubectl before it logs.
            if half_closed.is_none() {
                (&mut up).await;
            }
            if tunneled {
                let mut close = Vec::with_capacity(4);
                ws_frame(&mut close, 0x8, &1000u16.to_be_bytes());
                let _ = client_write.write_all(&close).await;
            }
        }
        let _ = client_write.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_websocket_frames_across_reads() {
        let mut f = Tracker::new(Framing::Channels, None);
        let mut stream = Vec::new();
        ws_frame(&mut stream, 0x2, &[1; 10]);
        ws_frame(&mut stream, 0x2, &[1; 300]);
        ws_frame(&mut stream, 0x2, &[1; 70_000]);
        for chunk in stream.chunks(7) {
            f.feed(chunk, false);
        }
        assert!(f.at_boundary() && f.may_speak());
        // A fragmented message: not a boundary until its last fragment.
        f.feed(&[0x02, 3, 1, 2, 3], false);
        assert!(!f.at_boundary());
        f.feed(&[0x89, 0], false); // a ping in between
        assert!(!f.at_boundary());
        f.feed(&[0x80, 1], false);
        assert!(!f.at_boundary(), "payload still to come");
        f.feed(&[9], false);
        assert!(f.at_boundary() && f.may_speak());
        // The server's own exit Status on channel 3: the proxy adds nothing after it.
        f.feed(&[0x82, 3, ERROR_CHANNEL, b'{', b'}'], false);
        assert!(!f.may_speak());
        // A masked frame from the server breaks the rules.
        let mut g = Tracker::new(Framing::Channels, None);
        g.feed(&[0x82, 0x81, 0, 0, 0, 0, 1], false);
        assert!(!g.may_speak());
    }

    #[test]
    fn after_a_cut_only_the_rest_of_the_frame_goes_on() {
        let mut f = Tracker::new(Framing::Spdy { status: true }, None);
        let mut stream = Vec::new();
        spdy_data(&mut stream, 5, 0, &[7; 20]);
        spdy_data(&mut stream, 5, 0, &[8; 20]);
        f.feed(&stream[..12], false);
        assert!(!f.at_boundary());
        let sent = f.feed(&stream[12..], true);
        assert_eq!(sent, 28 - 12, "up to the end of the first frame");
        assert!(f.at_boundary() && f.may_speak());
    }

    #[test]
    fn spdy_frames_are_followed_and_last_words_go_on_stream_1() {
        let mut f = Tracker::new(Framing::Spdy { status: true }, None);
        let mut stream = Vec::new();
        spdy_data(&mut stream, 5, 0, &[7; 1000]);
        // A control frame (SYN_REPLY) has the same 24-bit length at the same place.
        stream.extend_from_slice(&[0x80, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 3]);
        for chunk in stream.chunks(3) {
            f.feed(chunk, false);
        }
        assert!(f.at_boundary() && f.may_speak());
        let bytes = last_frames(
            Framing::Spdy { status: true },
            "jitgate: grant g ended",
            &Mutex::default(),
        )
        .unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 1, 0]);
        let len = u32::from_be_bytes([0, bytes[5], bytes[6], bytes[7]]) as usize;
        let status: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        assert_eq!(status["message"], "jitgate: grant g ended");
        assert_eq!(&bytes[8 + len..], &[0, 0, 0, 1, SPDY_FIN, 0, 0, 0]);
        // The server wrote its own Status on the error stream: nothing is added.
        f.feed(&bytes, false);
        assert!(!f.may_speak());
        let mut g = Tracker::new(Framing::Spdy { status: false }, None);
        g.feed(&[0x80, 0x03, 0x00, 0x07, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0], false);
        assert!(!g.may_speak(), "after GOAWAY");
    }

    /// A valid SPDY stream from a server, built from `spec` (control or data, a kind, a
    /// length), and where each of its frames ends.
    fn spdy_stream(spec: &[(bool, u8, u16)]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        for &(control, kind, len) in spec {
            if control {
                // SYN_REPLY, RST_STREAM, PING, WINDOW_UPDATE: a stream id, then anything.
                let kind = [2u16, 3, 6, 9][usize::from(kind) % 4];
                let mut payload = vec![kind as u8; 4 + usize::from(len) % 64];
                payload[..4].copy_from_slice(&3u32.to_be_bytes());
                out.extend_from_slice(&[0x80, 3]);
                out.extend_from_slice(&kind.to_be_bytes());
                out.push(0);
                out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(&payload);
            } else {
                spdy_data(&mut out, 3 + 2 * u32::from(kind), 0, &vec![kind; usize::from(len)]);
            }
            ends.push(out.len());
        }
        (out, ends)
    }

    /// `inner` in WebSocket frames of the given sizes (a size's low bit: the frame ends its
    /// message; pings in between), and the places where both framings are between frames.
    fn in_messages(inner: &[u8], inner_ends: &[usize], sizes: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let mut wire = Vec::new();
        let mut ends = Vec::new();
        let (mut at, mut started, mut i) = (0, false, 0);
        while at < inner.len() {
            let size = sizes[i % sizes.len()];
            i += 1;
            let take = (size / 2 + 1).min(inner.len() - at);
            let fin = size % 2 == 1 || at + take == inner.len();
            let opcode = if started { 0x0 } else { 0x2 };
            let mut frame = Vec::new();
            ws_frame(&mut frame, opcode, &inner[at..at + take]);
            if !fin {
                frame[0] &= 0x7f;
            }
            wire.extend_from_slice(&frame);
            at += take;
            started = !fin;
            if fin && inner_ends.contains(&at) {
                ends.push(wire.len());
            }
            if size.is_multiple_of(3) {
                ws_frame(&mut wire, 0x9, b"ping");
                if !started && inner_ends.contains(&at) {
                    ends.push(wire.len());
                }
            }
        }
        (wire, ends)
    }

    proptest::proptest! {
        /// On a valid stream split anywhere, a cut lets through exactly the rest of the frame
        /// being sent, to the first place where every framing is between frames.
        #[test]
        fn a_cut_stops_exactly_at_the_next_boundary(
            spec in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), 0u8..8, 0u16..3000), 1..12),
            sizes in proptest::collection::vec(0usize..5000, 1..8),
            framing in 0u8..4,
            split in 0.0f64..1.0,
        ) {
            let (spdy, spdy_ends) = spdy_stream(&spec);
            let (framing, (wire, ends)) = match framing {
                0 => (Framing::Spdy { status: true }, (spdy.clone(), spdy_ends.clone())),
                1 => (Framing::PortForward { tunneled: false }, (spdy.clone(), spdy_ends.clone())),
                2 => (Framing::PortForward { tunneled: true }, in_messages(&spdy, &spdy_ends, &sizes)),
                // The channel protocols: every message ends at a boundary.
                _ => (Framing::Channels, in_messages(&spdy, &[spdy.len()], &sizes)),
            };
            let ends = if framing == Framing::Channels {
                let (_, e) = in_messages(&spdy, &(1..=spdy.len()).collect::<Vec<_>>(), &sizes);
                e
            } else {
                ends
            };
            let k = 1 + ((wire.len() - 1) as f64 * split) as usize;
            let forwards = Mutex::new(Forwards::default());
            let port_forward = matches!(framing, Framing::PortForward { .. });
            let mut t = Tracker::new(framing, port_forward.then_some(&forwards));
            proptest::prop_assert_eq!(t.feed(&wire[..k], false), k);
            let sent = t.feed(&wire[k..], true);
            let expected = ends.iter().copied().find(|&e| e > k).unwrap_or(wire.len()) - k;
            proptest::prop_assert_eq!(sent, expected);
            proptest::prop_assert!(!t.lost);
        }

        /// Whatever the server sends, every byte passes until a cut, and after one the
        /// stream goes on to a boundary or its end: never stuck, never past what was given.
        #[test]
        fn any_server_bytes_pass(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..4096),
            framing in 0u8..5,
        ) {
            let framing = match framing {
                0 => Framing::Channels,
                1 => Framing::Spdy { status: true },
                2 => Framing::Spdy { status: false },
                3 => Framing::PortForward { tunneled: true },
                _ => Framing::PortForward { tunneled: false },
            };
            let forwards = Mutex::new(Forwards::default());
            let port_forward = matches!(framing, Framing::PortForward { .. });
            let mut t = Tracker::new(framing, port_forward.then_some(&forwards));
            let half = bytes.len() / 2;
            proptest::prop_assert_eq!(t.feed(&bytes[..half], false), half);
            let rest = &bytes[half..];
            let sent = t.feed(rest, true);
            proptest::prop_assert!(sent >= 1 && sent <= rest.len());
            proptest::prop_assert!(sent == rest.len() || t.at_boundary());
        }
    }

    #[tokio::test]
    async fn after_a_cut_the_client_is_not_heard_and_the_words_arrive() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (proxy_client, mut kubectl) = tokio::io::duplex(64 * 1024);
        let (proxy_upstream, mut server) = tokio::io::duplex(64 * 1024);
        let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<()>();
        let spliced = tokio::spawn(splice(
            proxy_client,
            proxy_upstream,
            Some((Framing::Channels, || "jitgate: grant g ended".to_owned())),
            async {
                let _ = cut_rx.await;
            },
        ));
        kubectl.write_all(b"stdin before").await.unwrap();
        let mut got = [0u8; 12];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"stdin before");
        // The cut comes while a frame is half sent: the stream waits for its end.
        let mut frame = Vec::new();
        ws_frame(&mut frame, 0x2, b"\x01stdout");
        server.write_all(&frame[..4]).await.unwrap();
        let mut seen = vec![0u8; 4];
        kubectl.read_exact(&mut seen).await.unwrap();
        cut_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        kubectl.write_all(b"stdin after").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        server.write_all(&frame[4..]).await.unwrap();
        let mut seen = vec![0u8; frame.len() - 4];
        kubectl.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, frame[4..]);
        let mut words = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), kubectl.read_to_end(&mut words))
            .await
            .expect("the client's side closes")
            .unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), server.read_to_end(&mut rest))
            .await
            .expect("the server's side closes")
            .unwrap();
        assert!(rest.is_empty(), "after the cut the server heard {rest:?}");
        assert_eq!(
            words,
            last_frames(Framing::Channels, "jitgate: grant g ended", &Mutex::default()).unwrap()
        );
        spliced.await.unwrap();
    }

    #[test]
    fn a_stream_that_cannot_be_followed_passes_whole() {
        let mut f = Tracker::new(Framing::PortForward { tunneled: true }, None);
        // A masked frame from the server, then more.
        let stream = [0x82, 0x81, 0, 0, 0, 0, 1, 0x82, 1, 9];
        assert_eq!(f.feed(&stream, true), stream.len());
        assert!(!f.may_speak());
        assert_eq!(f.feed(&[1, 2, 3], true), 3);
        let mut g = Tracker::new(Framing::Spdy { status: true }, None);
        // SPDY/2.
        assert_eq!(g.feed(&[0x80, 2, 0, 4, 0, 0, 0, 0, 7, 7], false), 10);
        assert!(!g.may_speak());
    }

    #[test]
    fn a_tunneled_forward_is_at_a_boundary_only_where_both_framings_are() {
        let forwards = Mutex::new(Forwards::default());
        let mut t = Tracker::new(Framing::PortForward { tunneled: true }, Some(&forwards));
        let mut spdy = Vec::new();
        spdy_data(&mut spdy, 2, 0, &[5; 40]);
        // One SPDY frame in two WebSocket messages, then a RST_STREAM in a third.
        let mut stream = Vec::new();
        ws_frame(&mut stream, 0x2, &spdy[..20]);
        let first = stream.len();
        ws_frame(&mut stream, 0x2, &spdy[20..]);
        let second = stream.len();
        ws_frame(&mut stream, 0x2, &[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 5]);
        assert_eq!(t.feed(&stream[..first], false), first);
        assert!(!t.at_boundary(), "the message ended inside a SPDY frame");
        // After a cut, the stream goes on to the end of the SPDY frame and stops there.
        assert_eq!(t.feed(&stream[first..], true), second - first);
        assert!(t.at_boundary());
        t.feed(&stream[second..], false);
        assert!(t.at_boundary() && !t.lost && !t.said);
    }

    #[test]
    fn last_words_are_a_status_on_channel_3_and_a_close() {
        let bytes = last_frames(Framing::Channels, "jitgate: grant g ended", &Mutex::default()).unwrap();
        assert_eq!(bytes[0], 0x82);
        let len = bytes[1] as usize;
        assert_eq!(bytes[2], ERROR_CHANNEL);
        let status: serde_json::Value = serde_json::from_slice(&bytes[3..2 + len]).unwrap();
        assert_eq!(status["status"], "Failure");
        assert_eq!(&bytes[2 + len..], &[0x88, 2, 0x03, 0xE8]);
    }
}
