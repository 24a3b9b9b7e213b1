//! Following WebSocket and SPDY/3.1 frames in a byte stream the proxy passes on unchanged,
//! one piece at a time, so that it knows where frames begin and end and what a few of them
//! say. By hand: the WebSocket and SPDY crates take a stream over and re-frame it, and the
//! proxy must neither re-frame nor buffer what it passes on.

/// The largest SPDY control frame followed (its payload is kept until it is whole). Stock
/// peers send control frames of a few hundred bytes at most.
const MAX_CONTROL: usize = 64 * 1024;

pub(super) const SPDY_FIN: u8 = 0x01;
pub(super) const SPDY_SYN_STREAM: u16 = 1;
pub(super) const SPDY_SYN_REPLY: u16 = 2;
pub(super) const SPDY_RST_STREAM: u16 = 3;
pub(super) const SPDY_GOAWAY: u16 = 7;
pub(super) const SPDY_HEADERS: u16 = 8;

/// An unmasked (server-to-client) WebSocket frame with FIN set.
pub(super) fn ws_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
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

/// A SPDY data frame.
pub(super) fn spdy_data(out: &mut Vec<u8>, stream: u32, flags: u8, payload: &[u8]) {
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.push(flags);
    let len = payload.len().min(0xff_ffff) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&payload[..len as usize]);
}

/// What the next bytes of a WebSocket stream are.
pub(super) enum WsStep {
    /// This many bytes of a frame header.
    Header(usize),
    /// This many bytes of a data frame's payload; `message_start` when they begin a message.
    /// From a client they are masked with `mask`, turned by `at`.
    Data {
        len: usize,
        message_start: bool,
        mask: Option<([u8; 4], usize)>,
    },
    /// This many bytes of a control frame's payload.
    Control(usize),
    /// The stream broke the framing rules: follow it no further.
    Broken,
}

/// Where one direction of a WebSocket stream stands in its frames.
pub(super) struct WsFrames {
    /// Frames from the client are masked, frames from the server are not (RFC 6455 §5.1).
    from_client: bool,
    /// Header bytes of the frame being read, until complete.
    header: Vec<u8>,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
    /// The current frame is a control frame.
    control: bool,
    /// The current frame's payload starts a message.
    message_start: bool,
    mask: [u8; 4],
    /// Payload bytes of the current frame already passed (the mask turns with them).
    at: usize,
    /// Whether the last data frame ended its message (FIN), so a new message may start
    /// here. Control frames do not change it.
    message_done: bool,
    /// A close frame has been seen.
    pub(super) closing: bool,
}

impl WsFrames {
    pub(super) fn new(from_client: bool) -> WsFrames {
        WsFrames {
            from_client,
            header: Vec::with_capacity(14),
            remaining: 0,
            control: false,
            message_start: false,
            mask: [0; 4],
            at: 0,
            message_done: true,
            closing: false,
        }
    }

    /// Between frames, and not inside a fragmented message.
    pub(super) fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.remaining == 0 && self.message_done
    }

    /// A close frame has been seen whole.
    pub(super) fn closed(&self) -> bool {
        self.closing && self.header.is_empty() && self.remaining == 0
    }

    /// Takes the next piece of `data` (not empty).
    pub(super) fn step(&mut self, data: &[u8]) -> WsStep {
        if self.remaining > 0 {
            let len = self.remaining.min(data.len() as u64) as usize;
            self.remaining -= len as u64;
            if self.control {
                return WsStep::Control(len);
            }
            let step = WsStep::Data {
                len,
                message_start: std::mem::take(&mut self.message_start),
                mask: self.from_client.then_some((self.mask, self.at)),
            };
            self.at += len;
            return step;
        }
        let mut used = 0;
        while used < data.len() {
            self.header.push(data[used]);
            used += 1;
            match self.header_done() {
                Ok(true) => break,
                Ok(false) => {}
                Err(()) => return WsStep::Broken,
            }
        }
        WsStep::Header(used)
    }

    /// Whether the header is whole (and then notes what it says); an error if it breaks the
    /// rules.
    fn header_done(&mut self) -> Result<bool, ()> {
        let h = &self.header;
        if h.len() < 2 {
            return Ok(false);
        }
        // Masked from the wrong side, or with an extension's bits (permessage-deflate would
        // hide the frames inside): not followed.
        if (h[1] & 0x80 != 0) != self.from_client || h[0] & 0x70 != 0 {
            return Err(());
        }
        let (at, len) = match h[1] & 0x7f {
            126 => (4, h.get(2..4).map(|b| u64::from(u16::from_be_bytes([b[0], b[1]])))),
            127 => (
                10,
                h.get(2..10)
                    .map(|b| u64::from_be_bytes(b.try_into().expect("eight bytes"))),
            ),
            n => (2, Some(u64::from(n))),
        };
        let need = if self.from_client { at + 4 } else { at };
        if h.len() < need {
            return Ok(false);
        }
        let len = len.ok_or(())?;
        if self.from_client {
            self.mask.copy_from_slice(&h[at..at + 4]);
        }
        let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
        self.control = opcode & 0x08 != 0;
        match opcode {
            0x1 | 0x2 => {
                self.message_done = fin;
                self.message_start = true;
            }
            0x0 => {
                self.message_done = fin;
                self.message_start = false;
            }
            0x8 => self.closing = true,
            _ => {}
        }
        self.remaining = len;
        self.at = 0;
        self.header.clear();
        Ok(true)
    }
}

/// Unmasks `data` (masked with `mask`, turned by `at`) into `out`.
pub(super) fn unmask(out: &mut Vec<u8>, data: &[u8], (mask, at): ([u8; 4], usize)) {
    out.clear();
    out.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[(at + i) % 4]));
}

/// What a SPDY frame says, once known.
pub(super) enum SpdyEvent<'a> {
    /// A data frame's header.
    Data { stream: u32, flags: u8, len: u32 },
    /// A whole control frame.
    Control { kind: u16, flags: u8, payload: &'a [u8] },
}

/// Where one direction of a SPDY/3.1 stream stands in its frames.
pub(super) struct SpdyFrames {
    header: [u8; 8],
    have: usize,
    /// Payload bytes still to come in the current frame.
    remaining: usize,
    /// The current frame is a control frame: its kind and flags.
    control: Option<(u16, u8)>,
    /// The current control frame's payload so far.
    payload: Vec<u8>,
}

impl SpdyFrames {
    pub(super) fn new() -> SpdyFrames {
        SpdyFrames {
            header: [0; 8],
            have: 0,
            remaining: 0,
            control: None,
            payload: Vec::new(),
        }
    }

    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0 && self.control.is_none()
    }

    /// How many of the next bytes the current part of a frame (header or payload) takes.
    pub(super) fn wanted(&self) -> usize {
        if self.remaining > 0 {
            self.remaining
        } else {
            8 - self.have
        }
    }

    /// How many of the next bytes belong to a data frame's payload, which nothing reads.
    pub(super) fn skippable(&self) -> usize {
        if self.control.is_none() {
            self.remaining
        } else {
            0
        }
    }

    /// Takes the next piece of `data` (not empty): how many bytes it took, and what a frame
    /// said if one became known. An error if the stream breaks the rules.
    pub(super) fn step(&mut self, data: &[u8]) -> Result<(usize, Option<SpdyEvent<'_>>), ()> {
        if self.remaining > 0 {
            let take = self.remaining.min(data.len());
            self.remaining -= take;
            let Some((kind, flags)) = self.control else {
                return Ok((take, None));
            };
            self.payload.extend_from_slice(&data[..take]);
            if self.remaining > 0 {
                return Ok((take, None));
            }
            self.control = None;
            return Ok((
                take,
                Some(SpdyEvent::Control {
                    kind,
                    flags,
                    payload: &self.payload,
                }),
            ));
        }
        let take = (8 - self.have).min(data.len());
        self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
        self.have += take;
        if self.have < 8 {
            return Ok((take, None));
        }
        self.have = 0;
        let h = self.header;
        let len = u32::from_be_bytes([0, h[5], h[6], h[7]]);
        let flags = h[4];
        if h[0] & 0x80 == 0 {
            self.remaining = len as usize;
            let stream = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & 0x7fff_ffff;
            return Ok((take, Some(SpdyEvent::Data { stream, flags, len })));
        }
        if u16::from_be_bytes([h[0], h[1]]) & 0x7fff != 3 || len as usize > MAX_CONTROL {
            return Err(());
        }
        let kind = u16::from_be_bytes([h[2], h[3]]);
        self.payload.clear();
        if len > 0 {
            self.remaining = len as usize;
            self.control = Some((kind, flags));
            return Ok((take, None));
        }
        Ok((
            take,
            Some(SpdyEvent::Control {
                kind,
                flags,
                payload: &[],
            }),
        ))
    }
}

/// The stream a SPDY control frame is about (the first word of SYN_STREAM, SYN_REPLY,
/// RST_STREAM and HEADERS).
pub(super) fn control_stream(payload: &[u8]) -> Option<u32> {
    let id = payload.get(..4)?;
    Some(u32::from_be_bytes([id[0], id[1], id[2], id[3]]) & 0x7fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked_frame(opcode: u8, fin: bool, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        assert!(payload.len() < 126);
        out.push(0x80 | payload.len() as u8);
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// The payload bytes of data frames, unmasked, as `step` hands them out.
    fn payload_of(frames: &mut WsFrames, stream: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        for piece in stream.chunks(chunk) {
            let mut used = 0;
            while used < piece.len() {
                match frames.step(&piece[used..]) {
                    WsStep::Header(n) | WsStep::Control(n) => used += n,
                    WsStep::Data { len, mask, .. } => {
                        let data = &piece[used..used + len];
                        match mask {
                            Some(m) => {
                                unmask(&mut scratch, data, m);
                                out.extend_from_slice(&scratch);
                            }
                            None => out.extend_from_slice(data),
                        }
                        used += len;
                    }
                    WsStep::Broken => panic!("broken"),
                }
            }
        }
        out
    }

    #[test]
    fn masked_client_frames_unmask_across_any_split() {
        let mut stream = masked_frame(0x2, false, [1, 2, 3, 4], b"hello, ");
        stream.extend(masked_frame(0x9, true, [9, 9, 9, 9], b"ping"));
        stream.extend(masked_frame(0x0, true, [0xaa, 0x55, 0, 0xff], b"world"));
        for chunk in [1, 2, 3, 5, 64] {
            let mut f = WsFrames::new(true);
            assert_eq!(payload_of(&mut f, &stream, chunk), b"hello, world");
            assert!(f.at_boundary());
        }
        // An unmasked frame from a client breaks the rules, as a masked one from a server.
        let mut f = WsFrames::new(true);
        assert!(matches!(f.step(&[0x82, 0x01, 0]), WsStep::Broken));
        let mut g = WsFrames::new(false);
        assert!(matches!(g.step(&[0x82, 0x81, 0, 0, 0, 0, 1]), WsStep::Broken));
    }

    #[test]
    fn spdy_frames_say_what_they_are_across_any_split() {
        let mut stream = Vec::new();
        spdy_data(&mut stream, 5, SPDY_FIN, &[7; 300]);
        // RST_STREAM for stream 9.
        stream.extend_from_slice(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 5]);
        for chunk in [1, 3, 8, 1000] {
            let mut f = SpdyFrames::new();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                let mut used = 0;
                while used < piece.len() {
                    let (n, event) = f.step(&piece[used..]).unwrap();
                    match event {
                        Some(SpdyEvent::Data { stream, flags, len }) => {
                            seen.push(format!("data {stream} {flags} {len}"))
                        }
                        Some(SpdyEvent::Control { kind, payload, .. }) => {
                            seen.push(format!("control {kind} {:?}", control_stream(payload)))
                        }
                        None => {}
                    }
                    used += n;
                }
            }
            assert_eq!(seen, ["data 5 1 300", "control 3 Some(9)"], "chunks of {chunk}");
            assert!(f.at_boundary());
        }
        // Another SPDY version, or a control frame too large to follow, breaks the stream.
        assert!(SpdyFrames::new().step(&[0x80, 2, 0, 1, 0, 0, 0, 0]).is_err());
        assert!(SpdyFrames::new().step(&[0x80, 3, 0, 1, 0, 0xff, 0, 0]).is_err());
    }
}
