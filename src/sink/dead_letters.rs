//! Dead letters (SPEC §2, §7): every message that cannot be processed, with its reason, where
//! it came from and its raw bytes, so that nothing bad is silently lost; and notices, the
//! alerts topic's other records (routing and dimension changes, threshold alerts). They go to
//! the alerts topic ([`super::alerts`]), a JSONL file in the same record format, or memory.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::Serialize;
use serde_json::json;

use crate::event::Reason;
use crate::schema::format_timestamp;
use crate::source::SourcePosition;

/// How much of a `message_too_large` message its dead letter keeps. Such a message may be of
/// any length (a file with a corrupt or missing line end can make one line of gigabytes), and
/// the alerts topic takes records of about a megabyte; its source locates the whole message.
pub const TOO_LARGE_RAW_BYTES: usize = 64 * 1024;

/// A message that ended as a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: Reason,
    pub detail: String,
    pub source: SourcePosition,
    /// The message, or for `message_too_large` its first [`TOO_LARGE_RAW_BYTES`] (cut where a
    /// character ends, when it is text).
    pub raw: Vec<u8>,
    /// The message's length, when `raw` holds only its start.
    pub raw_bytes: Option<usize>,
}

impl DeadLetter {
    /// The dead letter of `message`.
    pub fn new(
        reason: Reason,
        detail: String,
        source: SourcePosition,
        message: &[u8],
    ) -> DeadLetter {
        let (raw, raw_bytes) =
            if reason == Reason::MessageTooLarge && message.len() > TOO_LARGE_RAW_BYTES {
                let start = &message[..TOO_LARGE_RAW_BYTES];
                let end = match std::str::from_utf8(start) {
                    // Text cut inside its last character: drop the partial character.
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    _ => start.len(),
                };
                (message[..end].to_vec(), Some(message.len()))
            } else {
                (message.to_vec(), None)
            };
        DeadLetter {
            reason,
            detail,
            source,
            raw,
            raw_bytes,
        }
    }

    /// The alert record (SPEC §7), as one line of JSON: `raw` as text when it is UTF-8, else
    /// base64. Written straight from the letter, without building a JSON tree first: a replay
    /// of a dump with bad messages spent ~2 % of its worker's time building those trees.
    pub fn to_line(&self, at_seconds: i64) -> String {
        let (raw, raw_encoding) = match std::str::from_utf8(&self.raw) {
            Ok(text) => (Cow::Borrowed(text), None),
            Err(_) => (
                Cow::Owned(base64::engine::general_purpose::STANDARD.encode(&self.raw)),
                Some("base64"),
            ),
        };
        let record = DeadLetterRecord {
            at: alert_time(at_seconds),
            detail: &self.detail,
            kind: "dead_letter",
            raw,
            raw_bytes: self.raw_bytes,
            raw_encoding,
            reason: self.reason.as_str(),
            severity: "warning",
            source: self.source.to_json(),
        };
        serde_json::to_string(&record).expect("a dead letter serializes")
    }
}

/// A dead letter's alert record. Its fields are in the order of their names, as a JSON object
/// built with `json!` writes them (the records keep the layout they have always had).
#[derive(Serialize)]
struct DeadLetterRecord<'a> {
    at: String,
    detail: &'a str,
    kind: &'static str,
    raw: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_encoding: Option<&'static str>,
    reason: &'static str,
    severity: &'static str,
    source: serde_json::Value,
}

/// An alert record's `at`: RFC 3339 in UTC.
fn alert_time(at_seconds: i64) -> String {
    format!("{}Z", format_timestamp(at_seconds).replace(' ', "T"))
}

/// The kind of a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// A routing or dimension change (severity `info`).
    Info,
    /// A threshold alert or a failing dependency.
    Alert,
}

/// An alerts-topic record that is not a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// A stable machine-readable name: `routing_changed`, `latency`, ...
    pub reason: &'static str,
    /// What happened, for people.
    pub detail: String,
    /// Figures behind it, for machines.
    pub data: serde_json::Value,
}

impl Notice {
    /// An info record.
    pub fn info(reason: &'static str, detail: String, data: serde_json::Value) -> Notice {
        Notice {
            kind: NoticeKind::Info,
            severity: "info",
            reason,
            detail,
            data,
        }
    }

    /// The alert record (SPEC §7).
    pub fn to_json(&self, at_seconds: i64) -> serde_json::Value {
        json!({
            "kind": match self.kind {
                NoticeKind::Info => "info",
                NoticeKind::Alert => "alert",
            },
            "severity": self.severity,
            "reason": self.reason,
            "detail": self.detail,
            "at": alert_time(at_seconds),
            "source": null,
            "data": self.data,
        })
    }
}

/// Where dead letters and notices go.
pub trait DeadLetterSink: Send + Sync {
    fn send(&self, letter: DeadLetter) -> std::io::Result<()>;
    fn notice(&self, notice: &Notice) -> std::io::Result<()>;
    fn flush(&self) -> std::io::Result<()>;
}

/// Dead letters appended to a JSONL file, one alert record per line.
pub struct DeadLetterFile {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl DeadLetterFile {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<DeadLetterFile> {
        let file = File::create(path)?;
        Ok(DeadLetterFile {
            path: path.to_owned(),
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The time now, in whole seconds since the epoch: an alert record's `at`.
pub(super) fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl DeadLetterFile {
    fn write_line(&self, line: String) -> std::io::Result<()> {
        let mut out = self.out.lock().expect("dead-letter file lock");
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")
    }
}

impl DeadLetterSink for DeadLetterFile {
    fn send(&self, letter: DeadLetter) -> std::io::Result<()> {
        self.write_line(letter.to_line(now_seconds()))
    }

    fn notice(&self, notice: &Notice) -> std::io::Result<()> {
        self.write_line(notice.to_json(now_seconds()).to_string())
    }

    fn flush(&self) -> std::io::Result<()> {
        self.out.lock().expect("dead-letter file lock").flush()
    }
}

/// Dead letters and notices kept in memory.
#[derive(Default)]
pub struct DeadLetterMemory {
    letters: Mutex<Vec<DeadLetter>>,
    notices: Mutex<Vec<Notice>>,
}

impl DeadLetterMemory {
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters.lock().expect("dead-letter lock").clone()
    }

    pub fn notices(&self) -> Vec<Notice> {
        self.notices.lock().expect("notice lock").clone()
    }
}

impl DeadLetterSink for DeadLetterMemory {
    fn send(&self, letter: DeadLetter) -> std::io::Result<()> {
        self.letters.lock().expect("dead-letter lock").push(letter);
        Ok(())
    }

    fn notice(&self, notice: &Notice) -> std::io::Result<()> {
        self.notices
            .lock()
            .expect("notice lock")
            .push(notice.clone());
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(reason: Reason, message: &[u8]) -> DeadLetter {
        DeadLetter::new(reason, String::new(), SourcePosition::Index(7), message)
    }

    #[test]
    fn a_too_large_message_keeps_its_start_and_length_in_its_dead_letter() {
        let long = "题".repeat(TOO_LARGE_RAW_BYTES);
        let cut = letter(Reason::MessageTooLarge, long.as_bytes());
        // Cut where the last whole character ends, so the start stays text.
        assert_eq!(cut.raw.len(), TOO_LARGE_RAW_BYTES / 3 * 3);
        assert_eq!(cut.raw_bytes, Some(long.len()));
        let record: serde_json::Value = serde_json::from_str(&cut.to_line(0)).unwrap();
        assert_eq!(record["raw_bytes"], long.len());
        assert!(record.get("raw_encoding").is_none());
        assert!(long.starts_with(record["raw"].as_str().unwrap()));
        // Bytes that are not text are cut at the limit.
        let binary = vec![0xff; TOO_LARGE_RAW_BYTES + 1];
        let cut = letter(Reason::MessageTooLarge, &binary);
        assert_eq!(cut.raw.len(), TOO_LARGE_RAW_BYTES);
        assert_eq!(cut.raw_bytes, Some(binary.len()));
    }

    #[test]
    fn other_dead_letters_keep_the_whole_message() {
        let long = "x".repeat(TOO_LARGE_RAW_BYTES * 2);
        let whole = letter(Reason::InvalidField, long.as_bytes());
        assert_eq!(whole.raw, long.as_bytes());
        assert_eq!(whole.raw_bytes, None);
        assert!(!whole.to_line(0).contains("raw_bytes"));
        let short = letter(Reason::MessageTooLarge, b"{}");
        assert_eq!((short.raw.as_slice(), short.raw_bytes), (&b"{}"[..], None));
    }
}
