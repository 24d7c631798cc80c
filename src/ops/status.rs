//! The status page's data (`GET /api/status`, `GET /api/dead-letters`): the running job at a
//! glance, built from the same shared counters as `/metrics`, plus the most recent dead
//! letters, which [`RecordingSink`] keeps as they pass on to the alerts topic.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::ops::metrics::HistogramSnapshot;
use crate::ops::report::JobCounters;
use crate::sink::dead_letters::{DeadLetter, DeadLetterSink, Notice};
use crate::source::routing::now_ms;

/// How many recent dead letters are kept for the page.
pub const RECENT_DEAD_LETTERS: usize = 200;
/// Bytes of a dead letter's raw message shown on the page.
const PREVIEW_BYTES: usize = 300;

/// A recent dead letter, safe to show: the raw bytes as escaped text, cut to a preview.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentDeadLetter {
    pub at_ms: i64,
    pub reason: &'static str,
    pub detail: String,
    pub source: Value,
    /// The first bytes of the message, invalid UTF-8 and control characters escaped.
    pub preview: String,
    pub bytes: usize,
}

/// The most recent dead letters, newest last.
#[derive(Debug, Default)]
pub struct RecentDeadLetters {
    letters: Mutex<VecDeque<RecentDeadLetter>>,
}

impl RecentDeadLetters {
    fn push(&self, letter: &DeadLetter) {
        let mut letters = self.letters.lock().expect("recent dead letters lock");
        if letters.len() == RECENT_DEAD_LETTERS {
            letters.pop_front();
        }
        letters.push_back(RecentDeadLetter {
            at_ms: now_ms(),
            reason: letter.reason.as_str(),
            detail: letter.detail.chars().take(500).collect(),
            source: letter.source.to_json(),
            preview: preview(&letter.raw),
            bytes: letter.raw_bytes.unwrap_or(letter.raw.len()),
        });
    }

    /// The newest `limit`, newest first.
    pub fn newest(&self, limit: usize) -> Vec<RecentDeadLetter> {
        let letters = self.letters.lock().expect("recent dead letters lock");
        letters.iter().rev().take(limit).cloned().collect()
    }
}

/// `raw`'s first bytes as text: valid UTF-8 kept, everything else and control characters
/// escaped (`\xNN`, `\n`, `\u{..}`), so a preview is one line of plain text.
pub fn preview(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(PREVIEW_BYTES)];
    let mut out = String::with_capacity(cut.len());
    for chunk in cut.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if raw.len() > cut.len() {
        out.push('…');
    }
    out
}

/// A dead-letter sink that remembers the recent letters for the page and passes everything on.
pub struct RecordingSink {
    pub inner: Arc<dyn DeadLetterSink>,
    pub recent: Arc<RecentDeadLetters>,
}

impl DeadLetterSink for RecordingSink {
    fn send(&self, letter: DeadLetter) -> std::io::Result<()> {
        self.recent.push(&letter);
        self.inner.send(letter)
    }

    fn notice(&self, notice: &Notice) -> std::io::Result<()> {
        self.inner.notice(notice)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One sample of the counters the page shows as rates and charts.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: i64,
    messages: u64,
    accepted: u64,
    rows_written: u64,
    latency: HistogramSnapshot,
}

/// Samples every few seconds over the last minutes: rates per stage and the latency chart.
#[derive(Debug, Default)]
pub struct StatusHistory {
    samples: Mutex<VecDeque<Sample>>,
}

/// Samples kept: 5 minutes at one per 2 s.
const SAMPLES: usize = 150;
/// Time between samples, ms.
pub const SAMPLE_EVERY_MS: i64 = 2_000;

impl StatusHistory {
    /// Takes a sample when the last one is old enough.
    pub fn sample(&self, counters: &JobCounters) {
        let now = now_ms();
        let mut samples = self.samples.lock().expect("status history lock");
        if samples
            .back()
            .is_some_and(|s| now - s.at_ms < SAMPLE_EVERY_MS)
        {
            return;
        }
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Sample {
            at_ms: now,
            messages: counters.source.messages.load(Ordering::Relaxed),
            accepted: counters.dataflow.outcomes().totals().accepted,
            rows_written: counters.sink.rows_upserted.load(Ordering::Relaxed)
                + counters.sink.rows_deleted.load(Ordering::Relaxed),
            latency: counters.dataflow.end_to_end.snapshot(),
        });
    }

    /// Per-second rates over the last ~10 s: (messages, accepted, rows written).
    fn rates(&self) -> (f64, f64, f64) {
        let samples = self.samples.lock().expect("status history lock");
        let (Some(last), Some(first)) = (
            samples.back(),
            samples
                .iter()
                .rev()
                .find(|s| samples.back().is_some_and(|l| l.at_ms - s.at_ms >= 10_000))
                .or(samples.front()),
        ) else {
            return (0.0, 0.0, 0.0);
        };
        let seconds = (last.at_ms - first.at_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            return (0.0, 0.0, 0.0);
        }
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
        (
            rate(last.messages, first.messages),
            rate(last.accepted, first.accepted),
            rate(last.rows_written, first.rows_written),
        )
    }

    /// The latency chart: per sample interval, (time, p50, p99) of the batches committed in it.
    fn latency_chart(&self) -> Vec<Value> {
        let samples = self.samples.lock().expect("status history lock");
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| {
                let window = b.latency.since(&a.latency);
                json!({
                    "at_ms": b.at_ms,
                    "p50": window.quantile(0.5),
                    "p99": window.quantile(0.99),
                })
            })
            .collect()
    }
}

/// What `GET /api/status` returns.
pub fn status_json(counters: &JobCounters, history: &StatusHistory) -> Value {
    let now = now_ms();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let outcomes = counters.dataflow.outcomes();
    let totals = outcomes.totals();
    let (messages_rate, accepted_rate, rows_rate) = history.rates();
    let latency = counters.dataflow.end_to_end.snapshot();
    let batches = counters.sink.batch_seconds.snapshot();
    let partitions: Vec<Value> = counters
        .source
        .partitions
        .lock()
        .expect("progress lock")
        .iter()
        .map(|(p, progress)| {
            json!({ "partition": p, "next_offset": progress.next_offset,
                    "high_watermark": progress.high_watermark, "lag": progress.lag() })
        })
        .collect();
    let routing = counters.routing.current();
    let version = routing.latest();
    let dims: Vec<Value> = counters
        .dims
        .tables
        .lock()
        .expect("dim stats lock")
        .values()
        .map(|status| json!(status))
        .collect();
    let written = load(&counters.checkpoints.last_written_ms);
    json!({
        "at_ms": now,
        "job": {
            "process": counters.process,
            "processes": counters.processes,
            "workers": counters.workers,
            "pid": std::process::id(),
            "started_ms": counters.started_ms,
            "uptime_seconds": (now - counters.started_ms).max(0) as f64 / 1000.0,
            "caught_up": counters.caught_up_workers.load(Ordering::Relaxed) >= counters.workers,
        },
        "pipeline": {
            "source": { "messages": load(&counters.source.messages), "bytes": load(&counters.source.bytes), "per_second": messages_rate },
            "route": { "accepted": totals.accepted, "skipped": totals.skipped_domain + totals.skipped_disabled, "dead_letters": totals.dead_letter_total(), "per_second": accepted_rate },
            "state": { "live_records": counters.dataflow.live_records.load(Ordering::Relaxed), "keys": load(&counters.dataflow.keys), "fixes": load(&counters.dataflow.fixes), "bytes": load(&counters.dataflow.bytes) },
            "dims": { "tables": dims.len(), "last_correction": *counters.dims.last_correction.lock().expect("dim stats lock") },
            "sink": { "rows_written": load(&counters.sink.rows_upserted) + load(&counters.sink.rows_deleted), "per_second": rows_rate },
        },
        "partitions": partitions,
        "latency": {
            "p50": latency.quantile(0.5),
            "p99": latency.quantile(0.99),
            "batches": latency.count,
            "oldest_waiting_seconds": counters.dataflow.pending_age_seconds(now),
            "chart": history.latency_chart(),
        },
        "outcomes": outcomes.by_type,
        "totals": totals,
        "routing": {
            "version": version.version,
            "since_ms": if version.from_ms == i64::MIN { Value::Null } else { json!(version.from_ms) },
            "rows": version.table.rows,
        },
        "dimensions": dims,
        "sink": {
            "rows_upserted": load(&counters.sink.rows_upserted),
            "rows_deleted": load(&counters.sink.rows_deleted),
            "rows_reconciled": load(&counters.sink.rows_reconciled),
            "transactions": load(&counters.sink.transactions),
            "retries": load(&counters.sink.retries),
            "batch_p50": batches.quantile(0.5),
            "batch_p99": batches.quantile(0.99),
            "last_error": *counters.sink.last_error.lock().expect("sink error lock"),
        },
        "checkpoint": {
            "last_epoch": load(&counters.checkpoints.last_epoch),
            "age_seconds": (written > 0).then(|| (now - written as i64).max(0) as f64 / 1000.0),
        },
        "alerts": counters.alerts.active(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_is_one_line_of_escaped_text() {
        assert_eq!(preview(b"ok <b>"), "ok <b>");
        assert_eq!(preview(b"a\nb\x01\xffc"), "a\\nb\\u{1}\\xffc");
        let long = vec![b'x'; 1000];
        assert_eq!(preview(&long).chars().count(), PREVIEW_BYTES + 1);
    }
}
