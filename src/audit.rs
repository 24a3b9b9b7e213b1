//! The tamper-evident audit log. Each event carries the hash of the one before it, so an
//! edited, deleted, reordered or inserted row breaks the chain at a seq that `verify` names.
//! Events are sealed inside the same store transaction as the state change they record.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::time::Timestamp;

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event before it is placed in the chain.
#[derive(Clone, Debug, Default)]
pub struct AuditDraft {
    pub time: Option<Timestamp>,
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    pub request_id: Option<String>,
    pub grant_id: Option<String>,
    pub reason: Option<String>,
    /// Extra facts, as JSON text (an object). Hashed exactly as stored.
    pub details: String,
}

impl AuditDraft {
    pub fn new(action: &'static str, actor: &str, target: &str) -> Self {
        AuditDraft {
            time: None,
            actor: actor.to_owned(),
            action,
            target: target.to_owned(),
            details: "{}".into(),
            ..AuditDraft::default()
        }
    }

    pub fn request(mut self, id: &str) -> Self {
        self.request_id = Some(id.to_owned());
        self
    }

    pub fn grant(mut self, id: &str) -> Self {
        self.grant_id = Some(id.to_owned());
        self
    }

    pub fn reason(mut self, reason: Option<&str>) -> Self {
        self.reason = reason.filter(|r| !r.is_empty()).map(str::to_owned);
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details.to_string();
        self
    }

    /// Places the draft after `prev` in the chain.
    pub fn seal(self, seq: i64, prev_hash: &str, now: Timestamp) -> AuditEvent {
        let AuditDraft {
            time,
            actor,
            action,
            target,
            request_id,
            grant_id,
            reason,
            details,
        } = self;
        let mut event = AuditEvent {
            seq,
            time: time.unwrap_or(now),
            actor,
            action: action.to_owned(),
            target,
            request_id,
            grant_id,
            reason,
            details,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        event.hash = event.compute_hash();
        event
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub time: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub grant_id: Option<String>,
    pub reason: Option<String>,
    /// JSON text of an object.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEvent {
    /// SHA-256 over a canonical encoding: a JSON array of every field but the hash, in a
    /// fixed order, with time as integer milliseconds. A JSON array leaves no ambiguity
    /// about where one field ends and the next begins.
    pub fn compute_hash(&self) -> String {
        let canonical = serde_json::json!([
            self.seq,
            self.time.as_millis(),
            self.actor,
            self.action,
            self.target,
            self.request_id,
            self.grant_id,
            self.reason,
            self.details,
            self.prev_hash,
        ]);
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// The event as one JSON object for export, with `details` as JSON rather than text.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("audit events serialize");
        let details = serde_json::from_str(&self.details).unwrap_or(serde_json::Value::String(self.details.clone()));
        v["details"] = details;
        v
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {why}")]
pub struct ChainBroken {
    pub seq: i64,
    pub why: String,
}

/// Walks the chain from the first event, in seq order as stored. Returns how many events
/// it checked.
pub fn verify<'a>(events: impl IntoIterator<Item = &'a AuditEvent>) -> Result<u64, ChainBroken> {
    let mut prev_hash = GENESIS.to_owned();
    let mut count = 0;
    for (expected, e) in (1..).zip(events) {
        if e.seq != expected {
            let why = format!("expected seq {expected} next (a row was deleted, inserted or reordered)");
            return Err(ChainBroken { seq: e.seq, why });
        }
        if e.prev_hash != prev_hash {
            return Err(ChainBroken {
                seq: e.seq,
                why: "prev_hash does not match the event before it".into(),
            });
        }
        if e.compute_hash() != e.hash {
            return Err(ChainBroken {
                seq: e.seq,
                why: "its content does not match its hash (the row was edited)".into(),
            });
        }
        prev_hash.clone_from(&e.hash);
        count += 1;
    }
    Ok(count)
}

/// The newest event's seq and hash, recorded apart from the events themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

impl AuditHead {
    /// `SEQ:HASH`, as `audit verify` prints it.
    pub fn parse(text: &str) -> Result<AuditHead, String> {
        let (seq, hash) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not SEQ:HASH"))?;
        let seq: i64 = seq
            .parse()
            .ok()
            .filter(|s| *s >= 1)
            .ok_or_else(|| format!("{seq:?} is not an event's seq (a number from 1)"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{hash:?} is not a SHA-256 hash (64 hex digits)"));
        }
        Ok(AuditHead {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// That a verified chain still holds `head`, a head saved outside the database earlier:
/// what its recorded head cannot show, a log cut back and its head rewritten to match.
pub fn holds_head(events: &[AuditEvent], head: &AuditHead) -> Result<(), ChainBroken> {
    // A verified chain's seqs run 1, 2, 3…: the event is found by its place.
    let found = usize::try_from(head.seq - 1).ok().and_then(|i| events.get(i));
    match found {
        Some(e) if e.hash == head.hash => Ok(()),
        Some(e) => Err(ChainBroken {
            seq: e.seq,
            why: "its hash is not the one saved with --expect-head (the log was rewritten from here)".into(),
        }),
        None => Err(ChainBroken {
            seq: head.seq,
            why: format!(
                "the log ends at seq {} but a head saved earlier is at seq {} (events were cut off the end)",
                events.last().map_or(0, |e| e.seq),
                head.seq
            ),
        }),
    }
}

/// `verify`, and then that the chain reaches the recorded head: events cut off the end of
/// the log leave the head pointing past the last one.
pub fn verify_to_head(events: &[AuditEvent], head: Option<&AuditHead>) -> Result<u64, ChainBroken> {
    let count = verify(events)?;
    match (events.last(), head) {
        (None, None) => Ok(count),
        (Some(last), Some(h)) if last.seq == h.seq && last.hash == h.hash => Ok(count),
        (Some(last), Some(h)) if h.seq > last.seq => Err(ChainBroken {
            seq: last.seq + 1,
            why: format!(
                "the log ends at seq {} but its head records seq {} (events were cut off the end)",
                last.seq, h.seq
            ),
        }),
        (None, Some(h)) => Err(ChainBroken {
            seq: 1,
            why: format!(
                "the log is empty but its head records seq {} (events were deleted)",
                h.seq
            ),
        }),
        (Some(last), Some(_)) => Err(ChainBroken {
            seq: last.seq,
            why: "it does not match the recorded head of the log".into(),
        }),
        (Some(_), None) => Err(ChainBroken {
            seq: 1,
            why: "the record of the log's head is missing".into(),
        }),
    }
}

/// The story of one grant, told from the chain: who asked, why, for how long, who approved
/// and when, every access decision, and how it ended.
pub fn evidence(events: &[AuditEvent], grant_id: &str) -> Option<String> {
    let request_id = events
        .iter()
        .find(|e| e.grant_id.as_deref() == Some(grant_id))
        .and_then(|e| e.request_id.clone());
    let story: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.grant_id.as_deref() == Some(grant_id) || (request_id.is_some() && e.request_id == request_id))
        .collect();
    if story.is_empty() {
        return None;
    }
    let mut out = format!("Evidence for grant {grant_id}");
    if let Some(r) = &request_id {
        out.push_str(&format!(" (request {r})"));
    }
    out.push('\n');
    let mut ended = None;
    for e in &story {
        let details: serde_json::Value = serde_json::from_str(&e.details).unwrap_or_default();
        let d = |k: &str| details.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
        let reason = e
            .reason
            .as_deref()
            .map(|r| format!(" — reason: {r:?}"))
            .unwrap_or_default();
        let line = match e.action.as_str() {
            "request.created" => format!(
                "{} asked for profile {} for {}{reason}",
                e.actor,
                d("profile"),
                d("duration")
            ),
            "request.approved" => format!(
                "{} approved ({} of {}){reason}",
                e.actor, details["approvals"], details["required"]
            ),
            "request.denied" => format!("{} denied the request{reason}", e.actor),
            "request.cancelled" => format!("{} cancelled the request", e.actor),
            "request.expired" => "the request expired with no decision".to_owned(),
            "grant.activated" => format!(
                "grant activated for {} by {}, valid until {}",
                e.target,
                e.actor,
                d("expires_at")
            ),
            "access.allowed" => format!("{} was allowed {}", e.actor, e.target),
            "access.denied" => format!("{} was denied {}{reason}", e.actor, e.target),
            "grant.revoked" => {
                ended = Some(format!("revoked by {} at {}{reason}", e.actor, e.time));
                format!("{} revoked the grant{reason}", e.actor)
            }
            "grant.expired" => {
                ended = Some(format!("expired at {}", e.time));
                "the grant expired".to_owned()
            }
            "ssh.session.start" => format!("{} opened SSH session {} to {}", e.actor, d("session"), e.target),
            "ssh.session.end" => {
                let cut = details["cut"]
                    .as_str()
                    .map(|c| format!(", cut: {c}"))
                    .unwrap_or_default();
                format!("SSH session {} to {} ended{cut}", d("session"), e.target)
            }
            "ssh.exec" => format!("{} ran {:?} on {}", e.actor, d("command"), e.target),
            other => format!("{other} by {} on {}{reason}", e.actor, e.target),
        };
        out.push_str(&format!("  #{:<5} {}  {line}\n", e.seq, e.time));
    }
    out.push_str(&match ended {
        Some(how) => format!("Access ended: {how}.\n"),
        None => "Access has not ended: the grant is still active.\n".to_owned(),
    });
    Some(out)
}

/// SSH sessions as the audit log records them, oldest first: who, where, under which
/// grant, from when to when, how many bytes each way, and the recordings with their hashes.
/// A session with no end event yet is still open (or the proxy stopped under it).
pub fn ssh_sessions(events: &[AuditEvent]) -> Vec<serde_json::Value> {
    use serde_json::{json, Value};
    let mut sessions: Vec<Value> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for e in events {
        let details: Value = serde_json::from_str(&e.details).unwrap_or_default();
        let Some(id) = details["session"].as_str() else {
            continue;
        };
        match e.action.as_str() {
            "ssh.session.start" => {
                let (login, host) = e
                    .target
                    .strip_prefix("ssh:")
                    .and_then(|t| t.split_once('@'))
                    .unwrap_or(("?", &e.target));
                index.insert(id.to_owned(), sessions.len());
                sessions.push(json!({
                    "session": id,
                    "user": e.actor,
                    "host": host,
                    "login": login,
                    "grant": e.grant_id,
                    "start": e.time,
                    "end": null,
                    "bytes_up": null,
                    "bytes_down": null,
                    "cut": null,
                    "recordings": [],
                }));
            }
            "ssh.session.end" => {
                if let Some(s) = index.get(id).and_then(|&i| sessions.get_mut(i)) {
                    s["end"] = json!(e.time);
                    s["bytes_up"] = details["bytes_up"].clone();
                    s["bytes_down"] = details["bytes_down"].clone();
                    s["cut"] = details["cut"].clone();
                    s["recordings"] = details["recordings"].clone();
                }
            }
            _ => {}
        }
    }
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let e = AuditDraft::new("request.created", "alice", "db-patch")
                    .request("r1")
                    .seal(seq, &prev, Timestamp::from_millis(seq * 1000));
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    #[test]
    fn cutting_the_end_off_is_caught_by_the_head() {
        let events = chain(5);
        let head = AuditHead {
            seq: 5,
            hash: events[4].hash.clone(),
        };
        assert_eq!(verify_to_head(&events, Some(&head)), Ok(5));
        assert_eq!(verify_to_head(&events[..3], Some(&head)).unwrap_err().seq, 4);
        assert_eq!(verify_to_head(&[], Some(&head)).unwrap_err().seq, 1);
        assert_eq!(verify_to_head(&events, None).unwrap_err().seq, 1);
        let stale = AuditHead {
            seq: 5,
            hash: GENESIS.into(),
        };
        assert_eq!(verify_to_head(&events, Some(&stale)).unwrap_err().seq, 5);
        assert_eq!(verify_to_head(&[], None), Ok(0));
    }

    #[test]
    fn a_saved_head_catches_a_chain_rebuilt_or_cut_back_to_look_whole() {
        let events = chain(5);
        let saved = AuditHead::parse(&format!("3:{}", events[2].hash.to_ascii_uppercase())).unwrap();
        assert_eq!(holds_head(&events, &saved), Ok(()));
        // Cut back below the saved head, with the recorded head rewritten: verify passes.
        let head = AuditHead {
            seq: 2,
            hash: events[1].hash.clone(),
        };
        assert_eq!(verify_to_head(&events[..2], Some(&head)), Ok(2));
        assert_eq!(holds_head(&events[..2], &saved).unwrap_err().seq, 3);
        // Rebuilt from an edited event on, every hash recomputed: verify passes again.
        let mut prev = events[1].hash.clone();
        let rebuilt: Vec<AuditEvent> = events[..2]
            .iter()
            .cloned()
            .chain((3..=5).map(|seq| {
                let e = AuditDraft::new("request.created", "mallory", "db-patch")
                    .request("r1")
                    .seal(seq, &prev, Timestamp::from_millis(seq * 1000));
                prev.clone_from(&e.hash);
                e
            }))
            .collect();
        assert_eq!(verify(&rebuilt), Ok(5));
        assert_eq!(holds_head(&rebuilt, &saved).unwrap_err().seq, 3);
        for bad in ["3", "0:ab", "-1:ab", "x:ab", "3:abc", "99999999999999999999:ab"] {
            assert!(AuditHead::parse(bad).is_err(), "{bad}");
        }
        let short_hash = format!("3:{}", &events[2].hash[..63]);
        assert!(AuditHead::parse(&short_hash).is_err());
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
        assert_eq!(verify(&[]), Ok(0));
    }

    #[test]
    fn edits_deletions_reorders_and_inserts_are_named() {
        let mut edited = chain(5);
        edited[2].actor = "mallory".into();
        assert_eq!(verify(&edited).unwrap_err().seq, 3);

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(verify(&deleted).unwrap_err().seq, 3);

        let mut reordered = chain(5);
        reordered.swap(1, 2);
        assert_eq!(verify(&reordered).unwrap_err().seq, 3);

        // An inserted row that renumbers what follows still breaks the chain where it sits.
        let mut inserted = chain(5);
        let forged =
            AuditDraft::new("grant.revoked", "mallory", "x").seal(3, &inserted[1].hash, Timestamp::from_millis(1));
        inserted.insert(2, forged);
        for (i, e) in inserted.iter_mut().enumerate().skip(3) {
            e.seq = i as i64 + 1;
        }
        assert_eq!(verify(&inserted).unwrap_err().seq, 4);
    }
}
