//! Which SPDY streams of a port-forward carry what, so that a cut can say why on each
//! forwarded connection. kubectl opens two streams per connection it forwards: an error
//! stream and a data stream, named only by a `streamtype` header in the compressed header
//! block of the stream's SYN_STREAM. The proxy inflates the client's header blocks (one
//! zlib stream per direction, primed with the SPDY/3 dictionary) to learn which is which,
//! and follows the server's replies and closes. At a cut each connection gets the message
//! on its error stream and an end on its data stream: client-go then logs
//! `"An error occurred forwarding" err="<message>"` and closes the connection itself.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use flate2::{Decompress, FlushDecompress};

use super::frames::{
    control_stream, spdy_data, unmask, SpdyEvent, SpdyFrames, WsFrames, WsStep, SPDY_FIN, SPDY_HEADERS,
    SPDY_RST_STREAM, SPDY_SYN_REPLY, SPDY_SYN_STREAM,
};

/// The most streams followed at once; a client that keeps more open than this (kubectl
/// keeps two per forwarded connection) is not followed, and a cut just closes.
const MAX_STREAMS: usize = 4096;
/// The largest header block inflated. kubectl's are under 100 bytes.
const MAX_HEADER_BLOCK: usize = 16 * 1024;

/// The zlib dictionary of SPDY/3 header blocks (draft-mbelshe-httpbis-spdy-00 §2.6.10.1):
/// these names, each after its length as four bytes, then the common values.
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const NAMES: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const VALUES: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
        "charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for name in NAMES {
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
    }
    d.extend_from_slice(VALUES.as_bytes());
    d
});

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

#[derive(Debug)]
struct Opened {
    kind: Kind,
    /// The server answered it (SYN_REPLY): client-go drops data on a stream before that.
    replied: bool,
}

/// The forwarded connections' streams that are open on the server's side.
#[derive(Default)]
pub(super) struct Forwards {
    streams: HashMap<u32, Opened>,
    /// Something could not be followed: a cut adds nothing.
    lost: bool,
}

impl Forwards {
    /// Whether a forwarded connection is open, with an error stream to speak on.
    pub(super) fn open(&self) -> bool {
        !self.lost && self.streams.values().any(|s| s.replied && s.kind == Kind::Error)
    }

    /// What a cut says: the message and an end on each open error stream, an end on each
    /// open data stream (so client-go stops waiting for data and reads the error stream).
    /// Nothing when no connection is open or the streams were not followed.
    pub(super) fn last_frames(&self, message: &str) -> Option<Vec<u8>> {
        if !self.open() {
            return None;
        }
        let mut out = Vec::new();
        let mut ids: Vec<_> = self.streams.iter().filter(|(_, s)| s.replied).collect();
        ids.sort_by_key(|(id, _)| **id);
        for (&id, s) in ids {
            if s.kind == Kind::Error {
                spdy_data(&mut out, id, 0, message.as_bytes());
            }
            spdy_data(&mut out, id, SPDY_FIN, &[]);
        }
        Some(out)
    }

    /// Follows a frame from the server.
    pub(super) fn server_sent(&mut self, event: &SpdyEvent<'_>) {
        match *event {
            SpdyEvent::Data { stream, flags, .. } if flags & SPDY_FIN != 0 => {
                self.streams.remove(&stream);
            }
            SpdyEvent::Control { kind, flags, payload } => {
                let Some(id) = control_stream(payload) else {
                    return;
                };
                match kind {
                    SPDY_RST_STREAM => {
                        self.streams.remove(&id);
                    }
                    SPDY_SYN_REPLY | SPDY_HEADERS if flags & SPDY_FIN != 0 => {
                        self.streams.remove(&id);
                    }
                    SPDY_SYN_REPLY => {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.replied = true;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// Follows the client's side of a port-forward: its SYN_STREAMs (which stream is which) and
/// resets.
pub(super) struct Requests<'a> {
    forwards: &'a Mutex<Forwards>,
    ws: Option<WsFrames>,
    spdy: SpdyFrames,
    inflate: Decompress,
    unmasked: Vec<u8>,
    block: Vec<u8>,
    done: bool,
}

impl<'a> Requests<'a> {
    /// `tunneled` when the SPDY stream goes in WebSocket binary messages (kubectl since
    /// 1.31), else bare.
    pub(super) fn new(forwards: &'a Mutex<Forwards>, tunneled: bool) -> Requests<'a> {
        Requests {
            forwards,
            ws: tunneled.then(|| WsFrames::new(true)),
            spdy: SpdyFrames::new(),
            inflate: Decompress::new(true),
            unmasked: Vec::new(),
            block: Vec::new(),
            done: false,
        }
    }

    /// Whether the client sent a whole WebSocket close frame.
    pub(super) fn closed(&self) -> bool {
        self.ws.as_ref().is_some_and(WsFrames::closed)
    }

    /// Follows the next bytes the client sent.
    pub(super) fn feed(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        if self.follow(data).is_err() {
            self.done = true;
            let mut f = self.forwards.lock().expect("not poisoned");
            f.lost = true;
            f.streams.clear();
        }
    }

    fn follow(&mut self, data: &[u8]) -> Result<(), ()> {
        let mut used = 0;
        while used < data.len() {
            let rest = &data[used..];
            let Some(ws) = self.ws.as_mut() else {
                used += self.spdy_piece(rest)?;
                continue;
            };
            match ws.step(rest) {
                WsStep::Header(n) | WsStep::Control(n) => used += n,
                WsStep::Broken => return Err(()),
                WsStep::Data { len, mask, .. } => {
                    let (mask, at) = mask.ok_or(())?;
                    let payload = &rest[..len];
                    let mut off = 0;
                    while off < len {
                        // Data frames' payloads are not read, so not unmasked.
                        let skip = self.spdy.skippable().min(len - off);
                        if skip > 0 {
                            self.spdy.step(&payload[off..off + skip])?;
                            off += skip;
                            continue;
                        }
                        // Only the frame part due next, so no byte is unmasked twice.
                        let part = self.spdy.wanted().min(len - off);
                        let mut unmasked = std::mem::take(&mut self.unmasked);
                        unmask(&mut unmasked, &payload[off..off + part], (mask, at + off));
                        let took = self.spdy_piece(&unmasked);
                        self.unmasked = unmasked;
                        off += took?;
                    }
                    used += len;
                }
            }
        }
        Ok(())
    }

    /// Follows SPDY bytes up to the end of the frame part they begin: how many it took.
    fn spdy_piece(&mut self, data: &[u8]) -> Result<usize, ()> {
        let (n, event) = self.spdy.step(data)?;
        let Some(SpdyEvent::Control {
            kind,
            flags: _,
            payload,
        }) = event
        else {
            return Ok(n);
        };
        let id = control_stream(payload);
        // Every header block goes through the one zlib stream, in order.
        let block = match kind {
            SPDY_SYN_STREAM => payload.get(10..),
            SPDY_SYN_REPLY | SPDY_HEADERS => payload.get(4..),
            SPDY_RST_STREAM => {
                let id = id.ok_or(())?;
                self.forwards.lock().expect("not poisoned").streams.remove(&id);
                return Ok(n);
            }
            _ => return Ok(n),
        };
        let (id, block) = id.zip(block).ok_or(())?;
        inflate(&mut self.inflate, block, &mut self.block)?;
        if kind != SPDY_SYN_STREAM {
            return Ok(n);
        }
        let kind = match stream_type(&self.block)? {
            Some(b"error") => Kind::Error,
            Some(b"data") => Kind::Data,
            _ => return Ok(n),
        };
        let mut f = self.forwards.lock().expect("not poisoned");
        if f.streams.len() >= MAX_STREAMS {
            return Err(());
        }
        f.streams.insert(id, Opened { kind, replied: false });
        Ok(n)
    }
}

/// Inflates one header block into `out`.
fn inflate(z: &mut Decompress, mut block: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    out.clear();
    loop {
        out.reserve(1024);
        let (read, wrote) = (z.total_in(), z.total_out());
        // The first block asks for the dictionary (its zlib header names it).
        let primed = match z.decompress_vec(block, out, FlushDecompress::Sync) {
            Ok(_) => false,
            Err(e) => {
                e.needs_dictionary().ok_or(())?;
                z.set_dictionary(&DICTIONARY).map_err(|_| ())?;
                true
            }
        };
        block = &block[(z.total_in() - read) as usize..];
        if out.len() > MAX_HEADER_BLOCK {
            return Err(());
        }
        let full = out.len() == out.capacity();
        if block.is_empty() && !full {
            return Ok(());
        }
        if !primed && !full && z.total_in() == read && z.total_out() == wrote {
            return Err(());
        }
    }
}

/// The `streamtype` header's value in an inflated SPDY/3 header block.
fn stream_type(block: &[u8]) -> Result<Option<&[u8]>, ()> {
    fn take<'b>(b: &mut &'b [u8]) -> Result<&'b [u8], ()> {
        let len = b.get(..4).ok_or(())?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let v = b.get(4..4 + len).ok_or(())?;
        *b = &b[4 + len..];
        Ok(v)
    }
    let mut b = block;
    let count = b.get(..4).ok_or(())?;
    let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]);
    b = &b[4..];
    let mut found = None;
    for _ in 0..count {
        let name = take(&mut b)?;
        let value = take(&mut b)?;
        if name.eq_ignore_ascii_case(b"streamtype") {
            found = Some(value);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A client's side: header blocks compressed as Go's spdystream does (one zlib stream,
    /// the SPDY/3 dictionary, a sync flush after each block).
    struct Client {
        z: Compress,
    }

    impl Client {
        fn new() -> Client {
            let mut z = Compress::new(Compression::best(), true);
            let id = z.set_dictionary(&DICTIONARY).unwrap();
            assert_eq!(id, 0xe3c6_a7c2, "the SPDY/3 dictionary's id, as Go's streams name it");
            Client { z }
        }

        fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut block = (headers.len() as u32).to_be_bytes().to_vec();
            for (name, value) in headers {
                for s in [name, value] {
                    block.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    block.extend_from_slice(s.as_bytes());
                }
            }
            let mut packed = Vec::with_capacity(block.len() + 64);
            self.z.compress_vec(&block, &mut packed, FlushCompress::Sync).unwrap();
            let mut payload = id.to_be_bytes().to_vec();
            payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            payload.extend_from_slice(&packed);
            control(SPDY_SYN_STREAM, 0, &payload)
        }
    }

    fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80, 3];
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(payload);
        out
    }

    fn masked(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![0x82];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn forward(client: &mut Client, error: u32, data: u32) -> Vec<u8> {
        let port = [("port", "8080"), ("requestid", "0")];
        let mut out = client.syn_stream(error, &[("streamtype", "error"), port[0], port[1]]);
        out.extend(client.syn_stream(data, &[("streamtype", "data"), port[0], port[1]]));
        out
    }

    fn replies(forwards: &Mutex<Forwards>, ids: &[u32]) {
        let mut f = forwards.lock().unwrap();
        for id in ids {
            let payload = id.to_be_bytes();
            f.server_sent(&SpdyEvent::Control {
                kind: SPDY_SYN_REPLY,
                flags: 0,
                payload: &payload,
            });
        }
    }

    fn open_streams(forwards: &Mutex<Forwards>) -> Vec<(u32, Kind, bool)> {
        let f = forwards.lock().unwrap();
        assert!(!f.lost, "the streams were followed");
        let mut open: Vec<_> = f.streams.iter().map(|(id, s)| (*id, s.kind, s.replied)).collect();
        open.sort_unstable_by_key(|o| o.0);
        open
    }

    #[test]
    fn a_cut_speaks_on_each_open_connection_of_a_tunneled_forward() {
        // Messages small and large (a 16-bit length, the mask after it).
        for message in [77, 300] {
            let forwards = Mutex::new(Forwards::default());
            let mut requests = Requests::new(&forwards, true);
            let mut client = Client::new();
            // Two connections whose streams interleave, with data in between, in WebSocket
            // messages that split SPDY frames anywhere, fed in odd pieces.
            let mut spdy = forward(&mut client, 1, 5);
            spdy.extend(forward(&mut client, 3, 7));
            spdy_data(&mut spdy, 5, 0, &[0xab; 3000]);
            spdy.extend(client.syn_stream(9, &[("streamtype", "something-else")]));
            let mut wire = Vec::new();
            for (i, part) in spdy.chunks(message).enumerate() {
                wire.extend(masked(part, [i as u8, 0x5a, 0xff, 3]));
            }
            for piece in wire.chunks(13) {
                requests.feed(piece);
            }
            assert_eq!(
                open_streams(&forwards),
                [
                    (1, Kind::Error, false),
                    (3, Kind::Error, false),
                    (5, Kind::Data, false),
                    (7, Kind::Data, false)
                ]
            );
            assert!(!forwards.lock().unwrap().open(), "nothing replied yet");
            replies(&forwards, &[1, 3, 5, 7]);
            // The server ends the second connection.
            forwards.lock().unwrap().server_sent(&SpdyEvent::Data {
                stream: 3,
                flags: SPDY_FIN,
                len: 0,
            });
            forwards.lock().unwrap().server_sent(&SpdyEvent::Control {
                kind: SPDY_RST_STREAM,
                flags: 0,
                payload: &[0, 0, 0, 7, 0, 0, 0, 5],
            });
            let words = forwards.lock().unwrap().last_frames("jitgate: cut").unwrap();
            let mut expected = Vec::new();
            spdy_data(&mut expected, 1, 0, b"jitgate: cut");
            spdy_data(&mut expected, 1, SPDY_FIN, &[]);
            spdy_data(&mut expected, 5, SPDY_FIN, &[]);
            assert_eq!(words, expected);

            // The client resets the first one too: nothing is left to speak on.
            requests.feed(&masked(
                &control(SPDY_RST_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 5]),
                [1, 2, 3, 4],
            ));
            assert_eq!(open_streams(&forwards), [(5, Kind::Data, true)]);
            assert!(!forwards.lock().unwrap().open());
            assert_eq!(forwards.lock().unwrap().last_frames("x"), None);
            assert!(!requests.closed());
            requests.feed(&[0x88, 0x82, 1, 2, 3, 4]);
            assert!(!requests.closed(), "the close frame's code is still to come");
            requests.feed(&[0x03 ^ 1, 0xe8 ^ 2]);
            assert!(requests.closed());
        }
    }

    /// Feeds `bytes` in pieces that end at `cuts`.
    fn in_pieces(requests: &mut Requests<'_>, bytes: &[u8], mut cuts: Vec<usize>) {
        cuts.sort_unstable();
        let mut at = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            let cut = cut.min(bytes.len()).max(at);
            requests.feed(&bytes[at..cut]);
            at = cut;
        }
    }

    proptest::proptest! {
        /// Whatever a client sends, in whatever pieces, the follower neither panics nor
        /// holds more than its cap.
        #[test]
        fn any_client_bytes_are_followed_safely(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(0usize..4096, 0..16),
            tunneled in proptest::prelude::any::<bool>(),
        ) {
            let forwards = Mutex::new(Forwards::default());
            in_pieces(&mut Requests::new(&forwards, tunneled), &bytes, cuts);
            proptest::prop_assert!(forwards.lock().unwrap().streams.len() <= MAX_STREAMS);
        }

        /// A stream kubectl could send is followed the same whatever its pieces.
        #[test]
        fn a_forward_is_followed_the_same_in_any_pieces(
            cuts in proptest::collection::vec(0usize..2000, 0..24),
        ) {
            let mut client = Client::new();
            let mut spdy = forward(&mut client, 1, 3);
            spdy_data(&mut spdy, 3, 0, &[1; 500]);
            spdy.extend(forward(&mut client, 5, 7));
            let mut wire = Vec::new();
            for (i, part) in spdy.chunks(61).enumerate() {
                wire.extend(masked(part, [i as u8, 7, 0x80, 1]));
            }
            let forwards = Mutex::new(Forwards::default());
            in_pieces(&mut Requests::new(&forwards, true), &wire, cuts);
            let open: Vec<_> = open_streams(&forwards).into_iter().map(|(id, kind, _)| (id, kind)).collect();
            proptest::prop_assert_eq!(
                open,
                [(1, Kind::Error), (3, Kind::Data), (5, Kind::Error), (7, Kind::Data)]
            );
        }
    }

    #[test]
    fn too_many_streams_are_not_followed() {
        let forwards = Mutex::new(Forwards::default());
        let mut requests = Requests::new(&forwards, false);
        let mut client = Client::new();
        for id in 0..MAX_STREAMS as u32 / 2 {
            requests.feed(&forward(&mut client, 4 * id + 1, 4 * id + 3));
        }
        assert_eq!(open_streams(&forwards).len(), MAX_STREAMS);
        requests.feed(&forward(&mut client, 1_000_001, 1_000_003));
        assert!(forwards.lock().unwrap().lost);
        assert!(forwards.lock().unwrap().streams.is_empty());
    }

    #[test]
    fn a_bare_forward_is_followed_and_a_broken_one_is_given_up() {
        let forwards = Mutex::new(Forwards::default());
        let mut requests = Requests::new(&forwards, false);
        let mut client = Client::new();
        for piece in forward(&mut client, 1, 3).chunks(5) {
            requests.feed(piece);
        }
        replies(&forwards, &[1, 3]);
        assert!(forwards.lock().unwrap().open());
        assert_eq!(open_streams(&forwards), [(1, Kind::Error, true), (3, Kind::Data, true)]);
        // A header block that does not inflate in the stream's context: the streams are
        // no longer known, and a cut adds nothing.
        let mut other = Client::new();
        requests.feed(&other.syn_stream(5, &[("streamtype", "error")]));
        assert!(!forwards.lock().unwrap().open());
        assert_eq!(forwards.lock().unwrap().last_frames("x"), None);
    }

    #[test]
    fn header_blocks_are_read_with_care() {
        let mut client = Client::new();
        let syn = client.syn_stream(1, &[("Port", "80"), ("StreamType", "error")]);
        let mut z = Decompress::new(true);
        let mut out = Vec::new();
        inflate(&mut z, &syn[18..], &mut out).unwrap();
        assert_eq!(stream_type(&out), Ok(Some(&b"error"[..])));
        // Counts and lengths that run past the block.
        assert!(stream_type(&[0, 0, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 0]).is_err());
        assert!(stream_type(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(stream_type(&[0, 0]).is_err());
        // A block that inflates beyond the limit.
        let mut big = Client::new();
        let value = "v".repeat(MAX_HEADER_BLOCK + 1);
        let syn = big.syn_stream(1, &[("streamtype", &value)]);
        assert!(inflate(&mut Decompress::new(true), &syn[18..], &mut out).is_err());
        // Bytes that are no zlib stream at all.
        assert!(inflate(&mut Decompress::new(true), &[0xff; 40], &mut out).is_err());
    }
}
