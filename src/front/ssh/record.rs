//! Recordings of terminal sessions as asciicast v2 (one JSON header line, then one
//! `[seconds, "o"|"i"|"r", text]` line per event), written by a task of their own so
//! that the relay only hands over bytes; the file's SHA-256 is computed as it is written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events in flight to the writer. Past this the relay waits for the disk: a recording
/// is never thinned out.
const QUEUE: usize = 64;

enum Event {
    Output(Bytes),
    Input(Bytes),
    Resize(u32, u32),
}

/// What the session-end audit event says about a recording.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The recording's writer has stopped; its error is in the session's end event.
#[derive(Debug)]
pub struct Stopped;

/// The relay's side of a recording.
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    input: bool,
}

pub struct Terminal<'a> {
    pub term: &'a str,
    pub width: u32,
    pub height: u32,
}

impl Recorder {
    /// Opens `dir/{name}.cast` (new, 0600) and starts its writer.
    pub async fn start(
        dir: &Path,
        name: &str,
        terminal: Terminal<'_>,
        title: &str,
        input: bool,
    ) -> std::io::Result<(Recorder, JoinHandle<Result<Summary, String>>)> {
        let path = dir.join(format!("{name}.cast"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await?;
        let header = serde_json::json!({
            "version": 2,
            "width": terminal.width.max(1),
            "height": terminal.height.max(1),
            "timestamp": crate::time::Timestamp::now().as_millis() / 1000,
            "title": title,
            "env": { "TERM": terminal.term },
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(write(path, file, header.to_string(), rx));
        Ok((Recorder { tx, input }, writer))
    }

    /// Each call fails once the writer has stopped (a full disk, say): the caller ends
    /// the terminal rather than let it run unrecorded.
    pub async fn output(&self, data: &Bytes) -> Result<(), Stopped> {
        self.tx.send(Event::Output(data.clone())).await.map_err(|_| Stopped)
    }

    pub async fn input(&self, data: &Bytes) -> Result<(), Stopped> {
        if !self.input {
            return Ok(());
        }
        self.tx.send(Event::Input(data.clone())).await.map_err(|_| Stopped)
    }

    pub async fn resize(&self, width: u32, height: u32) -> Result<(), Stopped> {
        self.tx.send(Event::Resize(width, height)).await.map_err(|_| Stopped)
    }
}

/// Turns a byte stream into text without splitting a UTF-8 character across events: an
/// incomplete sequence at the end waits for the next chunk; invalid bytes become U+FFFD.
#[derive(Default)]
struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    fn text(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).expect("checked valid"));
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        // An incomplete character at the end: keep it for next time.
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }
}

async fn write(
    path: PathBuf,
    file: tokio::fs::File,
    header: String,
    mut rx: mpsc::Receiver<Event>,
) -> Result<Summary, String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, file);
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let started = Instant::now();
    let (mut output, mut input) = (Utf8Carry::default(), Utf8Carry::default());
    let mut line = header;
    line.push('\n');
    loop {
        out.write_all(line.as_bytes()).await.map_err(fail)?;
        hash.update(line.as_bytes());
        bytes += line.len() as u64;
        let Some(event) = rx.recv().await else { break };
        let at = started.elapsed().as_secs_f64();
        let (kind, text) = match event {
            Event::Output(d) => ("o", output.text(&d)),
            Event::Input(d) => ("i", input.text(&d)),
            Event::Resize(w, h) => ("r", format!("{w}x{h}")),
        };
        line = serde_json::to_string(&(at, kind, text)).map_err(|e| e.to_string())?;
        line.push('\n');
    }
    out.flush().await.map_err(fail)?;
    out.into_inner().sync_all().await.map_err(fail)?;
    Ok(Summary {
        file: path.display().to_string(),
        sha256: hex::encode(hash.finalize()),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_come_out_whole() {
        let mut c = Utf8Carry::default();
        let euro = "€".as_bytes();
        assert_eq!(c.text(&[b'a', euro[0]]), "a");
        assert_eq!(c.text(&euro[1..]), "€");
        assert_eq!(c.text(&[0xff, b'b']), "\u{FFFD}b");
        assert_eq!(c.text(b""), "");
    }

    #[tokio::test]
    async fn a_recording_is_asciicast_v2_with_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let t = Terminal {
            term: "xterm",
            width: 80,
            height: 24,
        };
        let (rec, done) = Recorder::start(dir.path(), "s1", t, "alice root@db", false)
            .await
            .unwrap();
        rec.output(&Bytes::from_static(b"hello\r\n")).await.unwrap();
        rec.input(&Bytes::from_static(b"secret")).await.unwrap();
        rec.resize(100, 30).await.unwrap();
        drop(rec);
        let summary = done.await.unwrap().unwrap();
        let text = std::fs::read_to_string(&summary.file).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[0]["width"], 80);
        assert_eq!(lines[1][1], "o");
        assert_eq!(lines[1][2], "hello\r\n");
        // Input is left out unless configured.
        assert_eq!(lines[2][1], "r");
        assert_eq!(lines[2][2], "100x30");
        assert_eq!(lines.len(), 3);
        assert_eq!(summary.sha256, hex::encode(Sha256::digest(text.as_bytes())));
        assert_eq!(summary.bytes, text.len() as u64);
    }
}
