//! An upgraded stream (exec, attach, port-forward) between kubectl and the API server, held
//! until either side ends it or its grant is cut. For exec and attach the proxy follows the
//! frames the server sends, so that a cut can end the stream as the kubelet ends one, with
//! the reason on the error stream (kubectl prints it and fails) rather than a bare close
//! that kubectl would take for success:
//! - the WebSocket channel protocols (`v4`/`v5.channel.k8s.io`): a Status on channel 3, then
//!   a close frame;
//! - SPDY/3.1: a data frame on stream 1, which client-go always opens first as the error
//!   stream, then that stream's FIN. It carries a Status for the `v4` remote-command protocol
//!   and plain text for the older ones.
//!
//! At a cut the rest of the frame being sent is let through (for at most 100 ms), so the
//! words land between frames; if the server already used the error stream (its own exit
//! Status) or is closing, nothing is added. Nothing is parsed on the way in; on the way out
//! only frame headers (by hand: no WebSocket or SPDY crate follows a stream it did not open,
//! frame by frame, without taking it over).

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How the server's side of an upgraded stream is framed, so that last words can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// `v4`/`v5.channel.k8s.io` over WebSocket.
    Channels,
    /// SPDY/3.1; whether the error stream carries a Status (`v4.channel.k8s.io`).
    Spdy { status: bool },
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

/// What a cut says, framed for the stream.
fn last_frames(framing: Framing, message: &str) -> Vec<u8> {
    match framing {
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
    }
}

/// The channel of the exit Status in the WebSocket channel protocols.
const ERROR_CHANNEL: u8 = 3;
/// client-go opens the error stream first, and a client's first SPDY stream is 1.
const ERROR_STREAM: u32 = 1;
const SPDY_FIN: u8 = 0x01;
const SPDY_GOAWAY: u16 = 7;

/// An unmasked (server-to-client) WebSocket frame with FIN set.
fn ws_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

fn spdy_data(out: &mut Vec<u8>, stream: u32, flags: u8, payload: &[u8]) {
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.push(flags);
    let len = payload.len().min(0xff_ffff) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&payload[..len as usize]);
}

/// Where the server-to-client byte stream stands in its frames, for either framing.
struct Tracker {
    framing: Framing,
    /// Header bytes of the frame being read, until complete.
    header: Vec<u8>,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
    /// WebSocket: whether the last data frame ended its message (FIN), so a new message may
    /// start here. Control frames do not change it.
    message_done: bool,
    /// WebSocket: the next payload byte is a message's channel.
    channel_next: bool,
    /// The server used the error stream, or is closing: it has said its last word.
    said: bool,
    /// The stream broke the framing rules (a masked server frame): add nothing.
    lost: bool,
}

impl Tracker {
    fn new(framing: Framing) -> Tracker {
        Tracker {
            framing,
            header: Vec::with_capacity(16),
            remaining: 0,
            message_done: true,
            channel_next: false,
            said: false,
            lost: false,
        }
    }

    /// Whether the proxy can still add its frames, now or at a later boundary.
    fn may_speak(&self) -> bool {
        !self.said && !self.lost
    }

    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.remaining == 0 && self.message_done
    }

    /// Follows `data`; with `to_boundary`, stops at the first boundary reached and says how
    /// many bytes it took (the rest must not be sent).
    fn feed(&mut self, data: &[u8], to_boundary: bool) -> usize {
        let mut used = 0;
        while used < data.len() && !self.lost {
            if to_boundary && self.at_boundary() && used > 0 {
                break;
            }
            if self.remaining > 0 {
                let take = (self.remaining.min((data.len() - used) as u64)) as usize;
                if self.channel_next && data[used] == ERROR_CHANNEL {
                    self.said = true;
                }
                self.channel_next = false;
                self.remaining -= take as u64;
                used += take;
                continue;
            }
            self.header.push(data[used]);
            used += 1;
            if let Some(len) = self.header_done() {
                self.remaining = len;
                self.header.clear();
            }
        }
        used
    }

    /// The payload length once the header is whole; notes what the header says.
    fn header_done(&mut self) -> Option<u64> {
        match self.framing {
            Framing::Channels => {
                let h = &self.header;
                if h.len() < 2 {
                    return None;
                }
                if h[1] & 0x80 != 0 {
                    self.lost = true;
                    return None;
                }
                let (need, len) = match h[1] & 0x7f {
                    126 => (4, h.get(2..4).map(|b| u64::from(u16::from_be_bytes([b[0], b[1]])))),
                    127 => (
                        10,
                        h.get(2..10)
                            .map(|b| u64::from_be_bytes(b.try_into().expect("eight bytes"))),
                    ),
                    n => (2, Some(u64::from(n))),
                };
                if h.len() < need {
                    return None;
                }
                let len = len?;
                let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
                match opcode {
                    // A new data message: its first payload byte names the channel.
                    0x1 | 0x2 => {
                        self.message_done = fin;
                        self.channel_next = len > 0;
                    }
                    0x0 => self.message_done = fin,
                    0x8 => self.said = true,
                    _ => {}
                }
                Some(len)
            }
            Framing::Spdy { .. } => {
                let h = &self.header;
                if h.len() < 8 {
                    return None;
                }
                let len = u64::from(u32::from_be_bytes([0, h[5], h[6], h[7]]));
                if h[0] & 0x80 != 0 {
                    if u16::from_be_bytes([h[2], h[3]]) == SPDY_GOAWAY {
                        self.said = true;
                    }
                } else {
                    let stream = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & 0x7fff_ffff;
                    if stream == ERROR_STREAM && (len > 0 || h[4] & SPDY_FIN != 0) {
                        self.said = true;
                    }
                }
                Some(len)
            }
        }
    }
}

/// Copies both ways until the server's side closes (or the client's, plus a short grace)
/// or `cut` resolves. On a cut, a stream whose framing is known gets the message `last`
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
    let (mut tracker, last) = match last {
        Some((framing, say)) => (Some(Tracker::new(framing)), Some(say)),
        None => (None, None),
    };
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
        tokio::time::sleep(HALF_CLOSED_GRACE).await;
    };
    tokio::pin!(up);
    tokio::pin!(cut);
    // Set by the cut: when the last words must be out, or given up.
    let mut deadline: Option<Instant> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if deadline.is_some() {
            match &tracker {
                Some(t) if t.may_speak() && t.at_boundary() => break,
                Some(t) if t.may_speak() => {}
                _ => return,
            }
        }
        let give_up = deadline.unwrap_or_else(|| Instant::now() + HALF_CLOSED_GRACE);
        let n = tokio::select! {
            _ = &mut up => return,
            _ = &mut cut, if deadline.is_none() => {
                deadline = Some(Instant::now() + LAST_WORDS_WAIT);
                continue;
            }
            _ = tokio::time::sleep_until(give_up), if deadline.is_some() => return,
            read = upstream_read.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = client_write.shutdown().await;
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
        let write = client_write.write_all(&buf[..send]);
        tokio::pin!(write);
        loop {
            let give_up = deadline.unwrap_or_else(|| Instant::now() + HALF_CLOSED_GRACE);
            tokio::select! {
                written = &mut write => {
                    if written.is_err() {
                        return;
                    }
                    break;
                }
                _ = &mut cut, if deadline.is_none() => deadline = Some(Instant::now() + LAST_WORDS_WAIT),
                _ = tokio::time::sleep_until(give_up), if deadline.is_some() => return,
            }
        }
    }
    if let (Some(t), Some(say), Some(until)) = (tracker, last, deadline) {
        let words = last_frames(t.framing, &say());
        let _ = tokio::time::timeout_at(until + LAST_WORDS_WAIT, async {
            let _ = client_write.write_all(&words).await;
            let _ = client_write.shutdown().await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_websocket_frames_across_reads() {
        let mut f = Tracker::new(Framing::Channels);
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
        let mut g = Tracker::new(Framing::Channels);
        g.feed(&[0x82, 0x81, 0, 0, 0, 0, 1], false);
        assert!(!g.may_speak());
    }

    #[test]
    fn after_a_cut_only_the_rest_of_the_frame_goes_on() {
        let mut f = Tracker::new(Framing::Spdy { status: true });
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
        let mut f = Tracker::new(Framing::Spdy { status: true });
        let mut stream = Vec::new();
        spdy_data(&mut stream, 5, 0, &[7; 1000]);
        // A control frame (SYN_REPLY) has the same 24-bit length at the same place.
        stream.extend_from_slice(&[0x80, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 3]);
        for chunk in stream.chunks(3) {
            f.feed(chunk, false);
        }
        assert!(f.at_boundary() && f.may_speak());
        let bytes = last_frames(Framing::Spdy { status: true }, "jitgate: grant g ended");
        assert_eq!(&bytes[..5], &[0, 0, 0, 1, 0]);
        let len = u32::from_be_bytes([0, bytes[5], bytes[6], bytes[7]]) as usize;
        let status: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        assert_eq!(status["message"], "jitgate: grant g ended");
        assert_eq!(&bytes[8 + len..], &[0, 0, 0, 1, SPDY_FIN, 0, 0, 0]);
        // The server wrote its own Status on the error stream: nothing is added.
        f.feed(&bytes, false);
        assert!(!f.may_speak());
        let mut g = Tracker::new(Framing::Spdy { status: false });
        g.feed(&[0x80, 0x03, 0x00, 0x07, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0], false);
        assert!(!g.may_speak(), "after GOAWAY");
    }

    #[test]
    fn last_words_are_a_status_on_channel_3_and_a_close() {
        let bytes = last_frames(Framing::Channels, "jitgate: grant g ended");
        assert_eq!(bytes[0], 0x82);
        let len = bytes[1] as usize;
        assert_eq!(bytes[2], ERROR_CHANNEL);
        let status: serde_json::Value = serde_json::from_slice(&bytes[3..2 + len]).unwrap();
        assert_eq!(status["status"], "Failure");
        assert_eq!(&bytes[2 + len..], &[0x88, 2, 0x03, 0xE8]);
    }
}
