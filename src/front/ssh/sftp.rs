//! Reads the client's side of an sftp channel as it passes, to put file operations in the
//! audit log. Packets are decoded with russh-sftp; only the length-prefixed framing is
//! done here, so that WRITE payloads (most of the bytes) are skipped without being
//! buffered.

use bytes::Bytes;
use russh_sftp::protocol::{OpenFlags, Packet};
use serde_json::{json, Value};

/// OpenSSH's own limit on an sftp message; anything longer is not sftp we can follow.
const MAX_PACKET: usize = 256 * 1024;

const OPEN: u8 = 3;
const SETSTAT: u8 = 9;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const FSETSTAT: u8 = 10;
const SYMLINK: u8 = 20;
const EXTENDED: u8 = 200;

#[derive(Default)]
pub struct SftpWatch {
    /// A packet (length and body) being gathered.
    buf: Vec<u8>,
    /// Bytes still to pass of a packet we do not read.
    skip: usize,
}

impl SftpWatch {
    /// Feeds bytes the client sent; returns the file operations they completed, or why
    /// the stream cannot be followed (the caller then stops it: what is not audited does
    /// not pass).
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Vec<Value>, String> {
        let mut ops = Vec::new();
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let want = if self.buf.len() < 5 { 5 } else { 4 + self.length() };
            let n = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() < want {
                continue;
            }
            if want == 5 {
                let len = self.length();
                if len == 0 || len > MAX_PACKET {
                    return Err(format!("an sftp packet of {len} bytes"));
                }
                if !matches!(
                    self.buf[4],
                    OPEN | SETSTAT | FSETSTAT | REMOVE | MKDIR | RMDIR | RENAME | SYMLINK | EXTENDED
                ) {
                    self.skip = len - 1;
                    self.buf.clear();
                } else if len < 5 {
                    // Every request carries an id; shorter is not a request (and would read
                    // as a header again).
                    return Err(format!("an sftp request of type {} with {len} bytes", self.buf[4]));
                }
                continue;
            }
            let kind = self.buf[4];
            let mut body = Bytes::copy_from_slice(&self.buf[4..]);
            self.buf.clear();
            let packet = Packet::try_from(&mut body)
                .map_err(|e| format!("an sftp request of type {kind} that does not parse ({e})"))?;
            ops.extend(describe(packet));
        }
        Ok(ops)
    }

    fn length(&self) -> usize {
        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
    }
}

fn describe(p: Packet) -> Option<Value> {
    Some(match p {
        Packet::Open(o) => {
            let writes = o
                .pflags
                .intersects(OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE);
            json!({ "op": if writes { "write" } else { "read" }, "path": o.filename })
        }
        Packet::SetStat(s) => json!({ "op": "setstat", "path": s.path }),
        Packet::Remove(r) => json!({ "op": "remove", "path": r.filename }),
        Packet::MkDir(m) => json!({ "op": "mkdir", "path": m.path }),
        Packet::RmDir(r) => json!({ "op": "rmdir", "path": r.path }),
        Packet::Rename(r) => json!({ "op": "rename", "path": r.oldpath, "to": r.newpath }),
        Packet::Symlink(s) => json!({ "op": "symlink", "path": s.linkpath, "to": s.targetpath }),
        // By handle: the path was logged when it was opened.
        Packet::FSetStat(_) => json!({ "op": "fsetstat" }),
        Packet::Extended(e) => extended(&e.request, &e.data),
        _ => return None,
    })
}

/// OpenSSH's extensions: `posix-rename@openssh.com` (what its sftp's rename sends),
/// `hardlink@openssh.com` and `lsetstat@openssh.com` name paths; others are logged by name.
fn extended(request: &str, data: &[u8]) -> Value {
    let mut rest = data;
    let mut string = || -> Option<String> {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let s = rest.get(4..4usize.checked_add(len)?)?;
        rest = &rest[4 + len..];
        Some(String::from_utf8_lossy(s).into_owned())
    };
    match request {
        "posix-rename@openssh.com" | "hardlink@openssh.com" => {
            let op = if request.starts_with("posix") {
                "rename"
            } else {
                "hardlink"
            };
            match (string(), string()) {
                (Some(from), Some(to)) => json!({ "op": op, "path": from, "to": to }),
                _ => json!({ "op": op, "malformed": true }),
            }
        }
        "lsetstat@openssh.com" => json!({ "op": "setstat", "path": string() }),
        other => json!({ "op": "extended", "request": other }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(body);
        p
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn operations_are_found_however_the_bytes_are_split() {
        let mut stream = Vec::new();
        // init (version 3), then open for write, a large write, remove and rename.
        stream.extend(packet(1, &3u32.to_be_bytes()));
        let mut open = 7u32.to_be_bytes().to_vec();
        open.extend(string("/tmp/a.txt"));
        open.extend(0x1au32.to_be_bytes()); // WRITE | CREATE | TRUNCATE
        open.extend(0u32.to_be_bytes()); // no attributes
        stream.extend(packet(OPEN, &open));
        let mut write = 8u32.to_be_bytes().to_vec();
        write.extend(string("h"));
        write.extend(0u64.to_be_bytes());
        write.extend((100_000u32).to_be_bytes());
        write.extend(vec![b'x'; 100_000]);
        stream.extend(packet(6, &write));
        let mut remove = 9u32.to_be_bytes().to_vec();
        remove.extend(string("/tmp/b"));
        stream.extend(packet(REMOVE, &remove));
        let mut rename = 10u32.to_be_bytes().to_vec();
        rename.extend(string("/tmp/c"));
        rename.extend(string("/tmp/d"));
        stream.extend(packet(RENAME, &rename));

        let want = vec![
            json!({ "op": "write", "path": "/tmp/a.txt" }),
            json!({ "op": "remove", "path": "/tmp/b" }),
            json!({ "op": "rename", "path": "/tmp/c", "to": "/tmp/d" }),
        ];
        for chunk in [1, 3, 7, 4096, stream.len()] {
            let mut w = SftpWatch::default();
            let got: Vec<Value> = stream.chunks(chunk).flat_map(|c| w.feed(c).unwrap()).collect();
            assert_eq!(got, want, "chunks of {chunk}");
            assert!(w.buf.capacity() < 1024, "a write payload was buffered");
        }
    }

    #[test]
    fn a_stream_that_is_not_sftp_is_refused() {
        let mut w = SftpWatch::default();
        assert_eq!(
            w.feed(&[0xff, 0xff, 0xff, 0xff, 3, 0, 0]).unwrap_err(),
            "an sftp packet of 4294967295 bytes"
        );
        // A watched request that does not parse is refused too, not skipped.
        let mut w = SftpWatch::default();
        let err = w.feed(&packet(REMOVE, b"xxxxx")).unwrap_err();
        assert!(
            err.starts_with("an sftp request of type 13 that does not parse"),
            "{err}"
        );
        let err = SftpWatch::default().feed(&packet(REMOVE, b"")).unwrap_err();
        assert_eq!(err, "an sftp request of type 13 with 1 bytes");
    }

    #[test]
    fn openssh_renames_through_its_extension_and_are_seen() {
        let mut body = 11u32.to_be_bytes().to_vec();
        body.extend(string("posix-rename@openssh.com"));
        body.extend(string("/tmp/old"));
        body.extend(string("/tmp/new"));
        let ops = SftpWatch::default().feed(&packet(EXTENDED, &body)).unwrap();
        assert_eq!(
            ops,
            vec![json!({ "op": "rename", "path": "/tmp/old", "to": "/tmp/new" })]
        );
    }
}
