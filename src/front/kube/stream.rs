//! An upgraded stream (exec, attach, port-forward) between kubectl and the API server, held
//! until either side ends it or its grant is cut. The proxy follows the frames the server
//! sends, so that a cut can end the stream as the kubelet ends one, with the reason on the
//! error stream (kubectl prints it and fails) rather than a bare close that kubectl would
//! take for success:
//! - the WebSocket channel protocols (`v4`/`v5.channel.k8s.io`): a Status on channel 3, then
//!   a close frame;
//! - SPDY/3.1: a data frame on stream 1, which client-go always opens first as the error
//!   stream, then that stream's FIN. The error stream carries a Status for the `v4`
//!   remote-command protocol and plain text otherwise (older protocols, port-forward).
//!
//! Nothing is parsed on the way in; on the way out only frame headers are read (by hand: no
//! WebSocket or SPDY crate reads a stream it did not open, frame by frame, without taking it
//! over).

use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How the server's side of an upgraded stream is framed, so that last words can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// `v4`/`v5.channel.k8s.io` over WebSocket.
    Channels,
    /// SPDY/3.1; whether the error stream carries a Status (`v4.channel.k8s.io`).
    Spdy { status: bool },
}

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
        Framing::Channels => channel_frames(message),
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

/// client-go opens the error stream first, and a client's first SPDY stream is 1.
const ERROR_STREAM: u32 = 1;
const SPDY_FIN: u8 = 0x01;

fn spdy_data(out: &mut Vec<u8>, stream: u32, flags: u8, payload: &[u8]) {
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.push(flags);
    let len = payload.len().min(0xff_ffff) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&payload[..len as usize]);
}

/// A binary frame on channel 3 with a Failure Status, then a normal close.
fn channel_frames(message: &str) -> Vec<u8> {
    let status = failure_status(message);
    let mut payload = Vec::with_capacity(status.len() + 1);
    payload.push(3u8);
    payload.extend_from_slice(status.as_bytes());
    let mut out = Vec::with_capacity(payload.len() + 16);
    frame(&mut out, 0x2, &payload);
    frame(&mut out, 0x8, &1000u16.to_be_bytes());
    out
}

/// An unmasked (server-to-client) frame with FIN set.
fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
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

/// Where the server-to-client byte stream stands in its frames.
#[derive(Default)]
struct Frames {
    /// Header bytes of the frame being read, until complete.
    header: Vec<u8>,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
    /// Whether the last complete data frame ended its message (FIN), so a new message may
    /// start here. Control frames do not change it.
    message_done: bool,
    /// The stream broke the framing rules (a masked server frame): no last words then.
    lost: bool,
    /// Bytes fed here are being written to the client: a cut now would leave part of them
    /// unsent, so no frame may follow.
    in_flight: bool,
}

impl Frames {
    fn new() -> Frames {
        Frames {
            message_done: true,
            ..Frames::default()
        }
    }

    fn at_message_boundary(&self) -> bool {
        !self.lost && !self.in_flight && self.header.is_empty() && self.remaining == 0 && self.message_done
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.remaining > 0 {
                let take = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= take as u64;
                data = &data[take..];
                continue;
            }
            self.header.push(data[0]);
            data = &data[1..];
            if let Some((len, fin, control)) = self.parse_header() {
                if !control {
                    self.message_done = fin;
                }
                self.remaining = len;
                self.header.clear();
            }
        }
    }

    /// The payload length, FIN and whether it is a control frame, once the header is whole.
    fn parse_header(&mut self) -> Option<(u64, bool, bool)> {
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
        Some((len?, h[0] & 0x80 != 0, h[0] & 0x08 != 0))
    }
}

/// After the client stops sending, how long the server's side may still finish.
const HALF_CLOSED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the server-to-client SPDY stream stands: 8-byte frame headers (data and control
/// frames alike end their header with a 24-bit length), then that many bytes.
#[derive(Default)]
struct SpdyFrames {
    header: Vec<u8>,
    remaining: u32,
    in_flight: bool,
}

impl SpdyFrames {
    fn at_frame_boundary(&self) -> bool {
        !self.in_flight && self.header.is_empty() && self.remaining == 0
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = (self.remaining as usize).min(data.len());
                self.remaining -= take as u32;
                data = &data[take..];
                continue;
            }
            self.header.push(data[0]);
            data = &data[1..];
            if self.header.len() == 8 {
                let h = &self.header;
                self.remaining = u32::from_be_bytes([0, h[5], h[6], h[7]]);
                self.header.clear();
            }
        }
    }
}

/// Follows the server's frames for one framing.
enum Tracker {
    Channels(Frames),
    Spdy(SpdyFrames),
}

impl Tracker {
    fn new(framing: Framing) -> Tracker {
        match framing {
            Framing::Channels => Tracker::Channels(Frames::new()),
            Framing::Spdy { .. } => Tracker::Spdy(SpdyFrames::default()),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        match self {
            Tracker::Channels(f) => f.feed(data),
            Tracker::Spdy(f) => f.feed(data),
        }
    }

    fn set_in_flight(&mut self, on: bool) {
        match self {
            Tracker::Channels(f) => f.in_flight = on,
            Tracker::Spdy(f) => f.in_flight = on,
        }
    }

    /// Whether a frame of the proxy's own may be written now.
    fn may_add(&self) -> bool {
        match self {
            Tracker::Channels(f) => f.at_message_boundary(),
            Tracker::Spdy(f) => f.at_frame_boundary(),
        }
    }
}

/// Copies both ways until the server's side closes (or the client's, plus a short grace)
/// or `cut` resolves; on a cut, a stream whose framing is known gets the message `last`
/// makes when the server's side is between frames and nothing is half written.
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
    let mut tracker = last.as_ref().map(|(framing, _)| Tracker::new(*framing));
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
        tokio::time::sleep(HALF_CLOSED_GRACE).await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match upstream_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(t) = tracker.as_mut() {
                t.feed(&buf[..n]);
                t.set_in_flight(true);
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            if let Some(t) = tracker.as_mut() {
                t.set_in_flight(false);
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::select! {
        _ = up => return,
        _ = down => return,
        _ = cut => {}
    }
    if let Some((framing, last)) = last.filter(|_| tracker.as_ref().is_some_and(Tracker::may_add)) {
        // Bounded: a client that does not read its last words does not hold the task.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), async {
            let _ = client_write.write_all(&last_frames(framing, &last())).await;
            let _ = client_write.shutdown().await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_frames_across_reads() {
        let mut f = Frames::new();
        let mut stream = Vec::new();
        frame(&mut stream, 0x2, &[1; 10]);
        frame(&mut stream, 0x2, &[1; 300]);
        frame(&mut stream, 0x2, &[1; 70_000]);
        for chunk in stream.chunks(7) {
            f.feed(chunk);
        }
        assert!(f.at_message_boundary());
        // A fragmented message: not a boundary until its last fragment.
        f.feed(&[0x02, 3, 1, 2, 3]);
        assert!(!f.at_message_boundary());
        f.feed(&[0x89, 0]); // a ping in between
        assert!(!f.at_message_boundary());
        f.feed(&[0x80, 1]);
        assert!(!f.at_message_boundary(), "payload still to come");
        f.feed(&[9]);
        assert!(f.at_message_boundary());
        // Bytes still being written: not a boundary for a new frame.
        f.in_flight = true;
        assert!(!f.at_message_boundary());
        f.in_flight = false;
        // A masked frame from the server breaks the rules: never inject after it.
        f.feed(&[0x82, 0x81, 0, 0, 0, 0, 1]);
        assert!(!f.at_message_boundary());
    }

    #[test]
    fn last_words_are_a_status_on_channel_3_and_a_close() {
        let bytes = last_frames(Framing::Channels, "jitgate: grant g ended");
        assert_eq!(bytes[0], 0x82);
        let len = bytes[1] as usize;
        assert_eq!(bytes[2], 3);
        let status: serde_json::Value = serde_json::from_slice(&bytes[3..2 + len]).unwrap();
        assert_eq!(status["status"], "Failure");
        assert_eq!(&bytes[2 + len..], &[0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn spdy_frames_are_followed_and_last_words_go_on_stream_1() {
        let mut f = SpdyFrames::default();
        let mut stream = Vec::new();
        spdy_data(&mut stream, 5, 0, &[7; 1000]);
        // A control frame (SYN_REPLY) has the same 24-bit length at the same place.
        stream.extend_from_slice(&[0x80, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 3]);
        for chunk in stream.chunks(3) {
            f.feed(chunk);
        }
        assert!(f.at_frame_boundary());
        f.feed(&[0, 0, 0, 5, 0, 0, 0, 9, 1, 2]);
        assert!(!f.at_frame_boundary());
        let bytes = last_frames(Framing::Spdy { status: true }, "jitgate: grant g ended");
        assert_eq!(&bytes[..5], &[0, 0, 0, 1, 0]);
        let len = u32::from_be_bytes([0, bytes[5], bytes[6], bytes[7]]) as usize;
        let status: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        assert_eq!(status["message"], "jitgate: grant g ended");
        assert_eq!(&bytes[8 + len..], &[0, 0, 0, 1, SPDY_FIN, 0, 0, 0]);
        let plain = last_frames(Framing::Spdy { status: false }, "bye");
        assert_eq!(&plain[8..11], b"bye");
    }
}
