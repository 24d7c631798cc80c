//! `wrongbook gen`: synthetic events, dimension rows and routing rows, deterministic from a
//! seed.
//!
//! The events look like production's worst day: skewed users and patterns, out-of-order
//! arrival, fixes before their add, several fixes per record, deletes and re-adds, exact
//! duplicates, and a share of bad messages of every class. The dimensions come as SQL (a load
//! and, optionally, a later change that renames patterns, moves teaching types between
//! chapters and deletes links), and so do the routing rows.

use std::collections::HashMap;
use std::io::Write;

use serde::Serialize;
use serde_json::{json, Value};

use crate::source::dims::{DimSnapshot, PatternRow, TeachingTypePtRow, TeachingTypeRow};
use crate::source::routing::RoutingRow;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Messages to generate (good, bad and duplicates together).
    pub events: usize,
    pub seed: u64,
    /// Share of messages that are bad (dead letters or skipped), 0..1.
    pub bad_share: f64,
    /// Share of messages re-sent as exact duplicates, 0..1.
    pub duplicate_share: f64,
    pub patterns: usize,
    pub chapters: usize,
    pub teaching_types: usize,
    /// Fixes per record: uniform in 0..=max_fixes.
    pub max_fixes: usize,
    /// Share of records that are deleted (0..1).
    pub delete_share: f64,
    /// Event time of the first event, ms.
    pub start_ms: i64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            events: 10_000,
            seed: 1,
            bad_share: 0.02,
            duplicate_share: 0.03,
            patterns: 200,
            chapters: 40,
            teaching_types: 300,
            max_fixes: 3,
            delete_share: 0.1,
            start_ms: 1_700_000_000_000,
        }
    }
}

/// A small deterministic generator (SplitMix64): the same seed gives the same data on every
/// platform and every version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Skewed towards small values: the popular users and patterns.
    pub fn skewed(&mut self, n: usize) -> usize {
        ((self.unit().powi(3)) * n as f64) as usize % n.max(1)
    }
}

/// Generated data: messages in arrival order, and the dimension tables.
pub struct Generated {
    pub messages: Vec<Vec<u8>>,
    pub dims: DimSnapshot,
    /// The dimension tables after the later change (see [`later_dims`]).
    pub dims_changed: DimSnapshot,
}

const SUBJECTS: [&str; 7] = [
    "math",
    "chinese",
    "english",
    "physics",
    "chemistry",
    "biology",
    "art",
];
const FIX_RESULTS: [&str; 8] = [
    "1",
    "0",
    "correct",
    "wrong",
    "right",
    "incorrect",
    "true",
    "false",
];

/// The dimension tables for `opts`.
pub fn dims(opts: &GenOptions) -> DimSnapshot {
    let mut rng = Rng::new(opts.seed.wrapping_add(7));
    let mut snapshot = DimSnapshot::default();
    for p in 0..opts.patterns {
        snapshot.patterns.insert(PatternRow {
            id: pattern_id(p),
            name: (!rng.chance(0.03)).then(|| format!("题型{p}")),
        });
    }
    for t in 0..opts.teaching_types {
        snapshot.teaching_types.insert(TeachingTypeRow {
            id: 5000 + t as i64,
            chapter_id: (!rng.chance(0.05)).then(|| chapter_id(rng.below(opts.chapters.max(1)))),
            name: Some(format!("教学类型{t}")),
            is_delete: Some(i64::from(rng.chance(0.05))),
        });
    }
    let mut link = 1;
    for p in 0..opts.patterns {
        for _ in 0..rng.below(4) + 1 {
            snapshot.teaching_type_pts.insert(TeachingTypePtRow {
                id: link,
                teaching_type_id: Some(5000 + rng.below(opts.teaching_types.max(1)) as i64),
                pt_id: Some(pattern_id(p)),
                order_num: (!rng.chance(0.05)).then(|| rng.below(5) as i64),
                is_delete: Some(i64::from(rng.chance(0.1))),
            });
            link += 1;
        }
    }
    snapshot
}

/// A later version of `dims`: some patterns renamed, some teaching types moved to another
/// chapter or deleted, some links deleted or re-ordered.
pub fn later_dims(opts: &GenOptions, dims: &DimSnapshot) -> DimSnapshot {
    let mut rng = Rng::new(opts.seed.wrapping_add(11));
    let mut next = DimSnapshot::default();
    for row in &dims.patterns {
        let mut row = row.clone();
        if rng.chance(0.1) {
            row.name = Some(format!("{}·改", row.name.as_deref().unwrap_or("题型")));
        }
        next.patterns.insert(row);
    }
    for row in &dims.teaching_types {
        let mut row = row.clone();
        if rng.chance(0.1) {
            row.chapter_id = Some(chapter_id(rng.below(opts.chapters.max(1))));
        }
        if rng.chance(0.03) {
            row.is_delete = Some(1);
        }
        next.teaching_types.insert(row);
    }
    for row in &dims.teaching_type_pts {
        let mut row = row.clone();
        if rng.chance(0.05) {
            row.is_delete = Some(1 - row.is_delete.unwrap_or(0));
        }
        if rng.chance(0.05) {
            row.order_num = Some(rng.below(5) as i64);
        }
        next.teaching_type_pts.insert(row);
    }
    next
}

/// For each pattern index, the chapters of the teaching types it links to.
fn pattern_chapters(opts: &GenOptions, dims: &DimSnapshot) -> Vec<Vec<String>> {
    // Each link looks its teaching type up by id: a scan per link made `gen` quadratic in
    // the size of the dimension tables (minutes at 100K patterns).
    let chapter_of: HashMap<i64, &str> = dims
        .teaching_types
        .iter()
        .filter_map(|tt| Some((tt.id, tt.chapter_id.as_deref()?)))
        .collect();
    let mut chapters = vec![Vec::new(); opts.patterns.max(1)];
    for link in &dims.teaching_type_pts {
        let pattern = link
            .pt_id
            .as_deref()
            .and_then(|p| p.strip_prefix("pattern_"))
            .and_then(|p| p.parse::<usize>().ok());
        let chapter = link
            .teaching_type_id
            .and_then(|id| chapter_of.get(&id))
            .map(|c| c.to_string());
        if let (Some(p), Some(chapter)) = (pattern, chapter) {
            if let Some(list) = chapters.get_mut(p) {
                list.push(chapter);
            }
        }
    }
    chapters
}

fn pattern_id(p: usize) -> String {
    format!("pattern_{p}")
}

fn chapter_id(c: usize) -> String {
    format!("chapter_{c:03}")
}

/// Generates everything for `opts`, in memory.
pub fn generate(opts: &GenOptions) -> Generated {
    let mut messages = Vec::with_capacity(opts.events);
    let (dims, dims_changed) = generate_into(opts, |m| messages.push(m));
    Generated {
        messages,
        dims,
        dims_changed,
    }
}

/// Hands out messages in arrival order: keeps the last ones for duplicates, and lets each
/// message move a few places (local disorder) through a small window.
struct Arrivals<F: FnMut(Vec<u8>)> {
    emit: F,
    recent: std::collections::VecDeque<Vec<u8>>,
    window: std::collections::VecDeque<Vec<u8>>,
    shuffle: Rng,
    produced: usize,
}

impl<F: FnMut(Vec<u8>)> Arrivals<F> {
    const RECENT: usize = 50;
    const WINDOW: usize = 8;

    fn push(&mut self, message: Vec<u8>) {
        self.produced += 1;
        if self.recent.len() == Self::RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(message.clone());
        self.window.push_back(message);
        if self.window.len() == Self::WINDOW {
            self.release();
        }
    }

    fn release(&mut self) {
        let j = self.shuffle.below(self.window.len());
        self.window.swap(0, j);
        if let Some(message) = self.window.pop_front() {
            (self.emit)(message);
        }
    }

    fn finish(mut self) {
        while !self.window.is_empty() {
            self.release();
        }
    }
}

/// Generates `opts.events` messages into `emit`, in arrival order, without holding them;
/// returns the dimension tables and their later version.
pub fn generate_into(opts: &GenOptions, emit: impl FnMut(Vec<u8>)) -> (DimSnapshot, DimSnapshot) {
    let dims = dims(opts);
    let dims_changed = later_dims(opts, &dims);
    let chapters_of = pattern_chapters(opts, &dims);
    let mut rng = Rng::new(opts.seed);
    let mut messages = Arrivals {
        emit,
        recent: Default::default(),
        window: Default::default(),
        shuffle: Rng::new(opts.seed.wrapping_add(13)),
        produced: 0,
    };
    let users = (opts.events / 40).max(5);
    let mut event_seq = 0u64;
    let mut record = 0usize;
    let mut next_id = |rng: &mut Rng| {
        event_seq += 1;
        format!("evt-{:x}-{event_seq}", rng.next_u64() & 0xffff)
    };
    while messages.produced < opts.events {
        if rng.chance(opts.bad_share) {
            messages.push(bad_message(&mut rng, opts));
            continue;
        }
        if !messages.recent.is_empty() && rng.chance(opts.duplicate_share) {
            let recent = &messages.recent;
            let again = recent[recent.len() - 1 - rng.below(recent.len())].clone();
            messages.push(again);
            continue;
        }
        // One record's life, its events in time order before arrival shuffling.
        record += 1;
        let base = opts.start_ms + record as i64 * 1_000 + rng.below(1_000) as i64;
        let wrong_id = match rng.below(10) {
            0..=6 => format!("{}", 1_000_000 + record),
            7 => format!("00{}", 1_000_000 + record),
            _ => format!("wr-{:x}", rng.next_u64()),
        };
        let user = format!("user_{}", rng.skewed(users));
        let question = format!("q_{}", rng.below(5_000));
        let mut life: Vec<String> = Vec::new();
        let add_event_id = next_id(&mut rng);
        let explicit_id = rng.chance(0.9);
        let record_id = if explicit_id {
            wrong_id.clone()
        } else {
            add_event_id.clone()
        };
        let add = |rng: &mut Rng, ts: i64, event_id: String| -> String {
            let mut payload = json!({
                "userId": user,
                "questionId": if rng.chance(0.1) { json!(rng.below(100_000)) } else { json!(question) },
            });
            if explicit_id {
                payload["wrongRecordId"] = json!(wrong_id);
            }
            let subject = SUBJECTS[rng.below(SUBJECTS.len())];
            if rng.chance(0.9) {
                payload["subject"] = json!(subject);
            }
            if rng.chance(0.4) {
                payload["subjectName"] = json!(format!("{subject}科"));
            }
            let p = rng.skewed(opts.patterns.max(1));
            if rng.chance(0.92) {
                payload["patternId"] = if rng.chance(0.03) {
                    json!(format!("pattern_missing_{p}"))
                } else {
                    json!(pattern_id(p))
                };
            }
            if rng.chance(0.7) {
                // Mostly a chapter the pattern's teaching types are in, so the chain matches.
                let known = &chapters_of[p.min(chapters_of.len().saturating_sub(1))];
                let chapter = if !known.is_empty() && rng.chance(0.8) {
                    known[rng.below(known.len())].clone()
                } else {
                    chapter_id(rng.below(opts.chapters.max(1)))
                };
                payload["chapterId"] = json!(chapter);
                payload["chapterName"] = json!("章节");
            }
            if rng.chance(0.5) {
                payload["question"] = json!(format!(
                    "题目 {} 的内容 \"引号\" \\ 反斜杠",
                    rng.below(1000)
                ));
            }
            match rng.below(4) {
                0 => {}
                1 => payload["createTime"] = json!(ts - 5_000),
                _ => payload["wrongTime"] = json!((ts - 1_000).to_string()),
            }
            event("wrongbook_add", ts, &event_id, payload)
        };
        life.push(add(&mut rng, base, add_event_id));
        if rng.chance(0.05) {
            // A second add of the same record replaces the first.
            let id = next_id(&mut rng);
            life.push(add(&mut rng, base + 500, id));
        }
        for f in 0..rng.below(opts.max_fixes + 1) {
            let fix_time = base + 10_000 + rng.below(100_000) as i64;
            let mut payload = json!({
                "userId": user,
                "questionId": question,
                "wrongRecordId": record_id,
                "fixTime": if rng.chance(0.2) { json!(fix_time.to_string()) } else { json!(fix_time) },
                "fixResult": FIX_RESULTS[rng.below(FIX_RESULTS.len())],
                "attempts": f + 1,
            });
            if rng.chance(0.7) {
                payload["fixId"] = json!(format!("fix-{record}-{f}"));
            }
            // Some fixes are stamped before their add: event time alone never orders them.
            let ts = if rng.chance(0.1) {
                base - 2_000
            } else {
                fix_time + 50
            };
            life.push(event("wrongbook_fix", ts, &next_id(&mut rng), payload));
        }
        if rng.chance(opts.delete_share) {
            let ts = base + 200_000;
            life.push(event(
                "wrongbook_delete",
                ts,
                &next_id(&mut rng),
                json!({"userId": user, "questionId": question, "wrongRecordId": record_id, "deleteTime": ts}),
            ));
            if rng.chance(0.3) {
                let id = next_id(&mut rng);
                life.push(add(&mut rng, base + 300_000, id));
            }
        }
        if rng.chance(0.15) {
            // Arrival order is not event order.
            let i = rng.below(life.len());
            let j = rng.below(life.len());
            life.swap(i, j);
        }
        for e in life {
            if messages.produced < opts.events {
                messages.push(e.into_bytes());
            }
        }
    }
    messages.finish();
    (dims, dims_changed)
}

/// A message with its fields in the seed's order (`domain`, `type`, `timestamp`, `eventId`,
/// `payload`), as a producer serializing its `BusinessEvent` class writes them. (A
/// `serde_json::Value` would sort them: `payload` before `type`.)
fn event(event_type: &str, ts: i64, event_id: &str, payload: Value) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct BusinessEvent<'a> {
        domain: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
        timestamp: i64,
        event_id: &'a str,
        payload: Value,
    }
    let event = BusinessEvent {
        domain: "wrongbook",
        event_type,
        timestamp: ts,
        event_id,
        payload,
    };
    serde_json::to_string(&event).expect("an event serializes")
}

/// One bad message, of a class chosen at random.
fn bad_message(rng: &mut Rng, opts: &GenOptions) -> Vec<u8> {
    let ts = opts.start_ms + rng.below(1_000_000) as i64;
    let id = format!("bad-{:x}", rng.next_u64());
    let good_fix = |result: Value| json!({"userId": "u", "questionId": "q", "wrongRecordId": "1", "fixTime": ts, "fixResult": result});
    let text = match rng.below(14) {
        0 => return b"\xff\xfe{\"domain\":\"wrongbook\"}".to_vec(),
        1 => "{\"domain\":\"wrongbook\",\"type\":".to_owned(),
        2 => "[1,2,3]".to_owned(),
        3 => json!({"domain": "wrongbook", "type": "wrongbook_add", "eventId": id, "payload": {}}).to_string(),
        4 => event("wrongbook_add", ts, &id, json!({"userId": "u"})).to_string(),
        5 => event("wrongbook_fix", ts, &id, json!({"userId": "u", "questionId": "q", "wrongRecordId": "1", "fixTime": true, "fixResult": "1"})).to_string(),
        6 => event("wrongbook_unknown", ts, &id, json!({})).to_string(),
        7 => event("wrongbook_review", ts, &id, json!({"userId": "u"})).to_string(),
        8 => event("wrongbook_share", ts, &id, json!({"userId": "u"})).to_string(),
        9 => event("wrongbook_fix", ts, &id, good_fix(json!("maybe"))).to_string(),
        10 => json!({"domain": "other_app", "type": "wrongbook_add", "timestamp": ts, "eventId": id, "payload": {"userId": "u", "questionId": "q"}}).to_string(),
        11 => event("wrongbook_add", ts, &id, json!({"userId": "u".repeat(51), "questionId": "q"})).to_string(),
        12 => format!("{{\"domain\":\"wrongbook\",\"type\":\"wrongbook_add\",\"type\":\"x\",\"timestamp\":{ts},\"eventId\":\"{id}\",\"payload\":{{}}}}"),
        _ => event("wrongbook_add", ts, &id, json!({"userId": "u", "questionId": "q", "createTime": 1.5})).to_string(),
    };
    text.into_bytes()
}

fn sql_text(value: &Option<String>) -> String {
    match value {
        Some(s) => format!("'{}'", s.replace('\'', "''")),
        None => "NULL".into(),
    }
}

fn sql_int(value: Option<i64>) -> String {
    value.map_or("NULL".into(), |v| v.to_string())
}

/// SQL that replaces the dimension tables' contents with `dims` (MySQL and SQLite alike).
pub fn dims_sql(dims: &DimSnapshot) -> String {
    let mut sql = String::from(
        "DELETE FROM tower_pattern;\nDELETE FROM tower_teaching_type_pt;\nDELETE FROM tower_teaching_type;\n",
    );
    let mut insert = |table: &str, columns: &str, rows: Vec<String>| {
        for chunk in rows.chunks(500) {
            sql.push_str(&format!(
                "INSERT INTO {table} ({columns}) VALUES\n{};\n",
                chunk.join(",\n")
            ));
        }
    };
    insert(
        "tower_pattern",
        "id, name, type, subject, difficulty",
        dims.patterns
            .iter()
            .map(|p| {
                format!(
                    "({}, {}, 1, 'math', 0.500)",
                    sql_text(&Some(p.id.clone())),
                    sql_text(&p.name)
                )
            })
            .collect(),
    );
    insert(
        "tower_teaching_type_pt",
        "id, teaching_type_id, pt_id, order_num, is_delete",
        dims.teaching_type_pts
            .iter()
            .map(|r| {
                format!(
                    "({}, {}, {}, {}, {})",
                    r.id,
                    sql_int(r.teaching_type_id),
                    sql_text(&r.pt_id),
                    sql_int(r.order_num),
                    sql_int(r.is_delete)
                )
            })
            .collect(),
    );
    insert(
        "tower_teaching_type",
        "id, chapter_id, teaching_type_name, is_delete",
        dims.teaching_types
            .iter()
            .map(|r| {
                format!(
                    "({}, {}, {}, {})",
                    r.id,
                    sql_text(&r.chapter_id),
                    sql_text(&r.name),
                    sql_int(r.is_delete)
                )
            })
            .collect(),
    );
    sql
}

/// The generator's routes: the seed's three rows (delete disabled), a newer enabled delete
/// route by our processor name, a disabled type and a type whose processor does not exist.
pub fn routing_rows() -> Vec<RoutingRow> {
    let row = |id, event_type: &str, class: &str, enabled, priority, version: &str| RoutingRow {
        id,
        event_type: event_type.into(),
        processor_class: class.into(),
        enabled,
        hot_deployable: true,
        priority,
        version: Some(version.into()),
    };
    vec![
        row(
            1,
            "wrongbook_add",
            "com.flink.realtime.processor.impl.WrongbookAddProcessor",
            true,
            100,
            "1.0",
        ),
        row(
            2,
            "wrongbook_fix",
            "com.flink.realtime.processor.impl.WrongbookFixProcessor",
            true,
            100,
            "1.0",
        ),
        row(
            3,
            "wrongbook_delete",
            "com.flink.realtime.processor.impl.WrongbookDeleteProcessor",
            false,
            90,
            "1.0",
        ),
        row(4, "wrongbook_delete", "wrongbook_delete", true, 100, "1.1"),
        row(5, "wrongbook_review", "wrongbook_add", false, 100, "1.0"),
        row(
            6,
            "wrongbook_share",
            "com.flink.realtime.processor.impl.WrongbookShareProcessor",
            true,
            100,
            "1.0",
        ),
    ]
}

/// SQL that replaces the routing table's rows with [`routing_rows`].
pub fn routing_sql(table: &str) -> String {
    let values: Vec<String> = routing_rows()
        .iter()
        .map(|r| {
            format!(
                "({}, {}, {}, {}, {}, {}, {})",
                r.id,
                sql_text(&Some(r.event_type.clone())),
                sql_text(&Some(r.processor_class.clone())),
                i64::from(r.enabled),
                i64::from(r.hot_deployable),
                r.priority,
                sql_text(&r.version)
            )
        })
        .collect();
    format!(
        "DELETE FROM {table};\nINSERT INTO {table} (id, event_type, processor_class, enabled, hot_deployable, priority, version) VALUES\n{};\n",
        values.join(",\n")
    )
}

/// The blocks an event file is written in ([`BlockWriter`]).
pub const EVENT_FILE_BLOCK: usize = 2 << 20;

/// Writes a file in whole blocks of [`EVENT_FILE_BLOCK`] bytes, each at an offset that is a
/// multiple of it (the file starts empty), and what is left when flushed.
///
/// The page cache keeps a file's bytes in folios no larger than the writes that put them there
/// (on file systems with large folios, such as ext4 on Linux 6.x), and `replay` and `bench` map
/// their input. Mapping 277 MB (1M events) took 4,230 page faults and 16–20 ms when the file
/// was written 8 KiB at a time, and 137 faults and ~1 ms when it was written in 2 MiB blocks;
/// giving the pages back behind the reader costs less in large folios too.
pub struct BlockWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> BlockWriter<W> {
    pub fn new(inner: W) -> BlockWriter<W> {
        BlockWriter {
            inner,
            buffer: Vec::with_capacity(EVENT_FILE_BLOCK * 2),
        }
    }
}

impl<W: Write> Write for BlockWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= EVENT_FILE_BLOCK {
            let whole = self.buffer.len() / EVENT_FILE_BLOCK * EVENT_FILE_BLOCK;
            self.inner.write_all(&self.buffer[..whole])?;
            self.buffer.drain(..whole);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        self.inner.flush()
    }
}

impl<W: Write> Drop for BlockWriter<W> {
    /// Writes what is left, as `BufWriter` does; call `flush` to see its errors.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Writes messages as JSONL.
pub fn write_jsonl(out: &mut impl Write, messages: &[Vec<u8>]) -> std::io::Result<()> {
    for message in messages {
        out.write_all(message)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A producer for the events topic.
fn event_producer(
    kafka: &crate::config::KafkaConfig,
    counter: &crate::sink::alerts::DeliveryCounter,
) -> Result<rdkafka::producer::ThreadedProducer<crate::sink::alerts::DeliveryCounter>, String> {
    // Keyless events spread evenly over the partitions instead of filling one at a time.
    crate::source::kafka::client_config(kafka)
        .set("linger.ms", "20")
        .set("sticky.partitioning.linger.ms", "0")
        .set("message.send.max.retries", "1000000")
        .create_with_context(counter.clone())
        .map_err(|e| e.to_string())
}

/// Produces `messages` to the events topic and waits until the broker has them all.
pub fn produce_messages(
    kafka: &crate::config::KafkaConfig,
    messages: &[Vec<u8>],
) -> Result<(), String> {
    use crate::sink::alerts::{send_blocking, DeliveryCounter};
    use rdkafka::producer::Producer;
    use std::sync::atomic::Ordering;

    let counter = DeliveryCounter::default();
    let producer = event_producer(kafka, &counter)?;
    for message in messages {
        send_blocking(&producer, &kafka.topic, message)
            .map_err(|e| format!("producing to `{}`: {e}", kafka.topic))?;
    }
    producer
        .flush(std::time::Duration::from_secs(120))
        .map_err(|e| format!("flushing to `{}`: {e}", kafka.topic))?;
    match counter.failed.load(Ordering::Relaxed) {
        0 => Ok(()),
        n => Err(format!(
            "{n} messages were not delivered to `{}`",
            kafka.topic
        )),
    }
}

/// Generates `opts.events` messages straight into the existing Kafka topic `kafka.topic`, at
/// `rate` messages per second or as fast as possible; returns the number delivered and the
/// dimension tables.
pub fn produce_to_kafka(
    kafka: &crate::config::KafkaConfig,
    opts: &GenOptions,
    rate: Option<u64>,
) -> Result<(u64, DimSnapshot, DimSnapshot), String> {
    use crate::sink::alerts::{send_blocking, DeliveryCounter};
    use rdkafka::producer::Producer;
    use std::sync::atomic::Ordering;

    let counter = DeliveryCounter::default();
    let producer = event_producer(kafka, &counter)?;
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let mut error = None;
    let dims = generate_into(opts, |message| {
        if error.is_some() {
            return;
        }
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        match send_blocking(&producer, &kafka.topic, &message) {
            Ok(()) => sent += 1,
            Err(e) => error = Some(e.to_string()),
        }
    });
    if let Some(e) = error {
        return Err(format!("producing to `{}`: {e}", kafka.topic));
    }
    producer
        .flush(std::time::Duration::from_secs(120))
        .map_err(|e| format!("flushing to `{}`: {e}", kafka.topic))?;
    let failed = counter.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!(
            "{failed} messages could not be delivered to `{}`",
            kafka.topic
        ));
    }
    Ok((counter.delivered.load(Ordering::Relaxed), dims.0, dims.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_data() {
        let opts = GenOptions {
            events: 2_000,
            ..GenOptions::default()
        };
        let a = generate(&opts);
        let b = generate(&opts);
        assert_eq!(a.messages, b.messages);
        assert_eq!(a.dims, b.dims);
        assert_eq!(a.messages.len(), 2_000);
        let c = generate(&GenOptions { seed: 2, ..opts });
        assert_ne!(a.messages, c.messages);
        assert!(!a.dims.diff(&a.dims_changed).is_empty());
        assert!(a.messages.iter().all(|m| !m.contains(&b'\n')));
    }

    /// Records the writes that reach it.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for &mut Writes {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_event_file_is_written_in_whole_blocks_then_its_tail() {
        // Messages of every length around the block's, which end inside it, on its edge and
        // past the next one.
        let messages: Vec<Vec<u8>> = [
            100,
            EVENT_FILE_BLOCK - 101,
            EVENT_FILE_BLOCK,
            3,
            2 * EVENT_FILE_BLOCK + 7,
            EVENT_FILE_BLOCK / 2,
        ]
        .iter()
        .enumerate()
        .map(|(i, &len)| vec![b'a' + i as u8; len])
        .collect();
        let mut writes = Writes::default();
        let mut expected = Vec::new();
        {
            let mut out = BlockWriter::new(&mut writes);
            for message in &messages {
                out.write_all(message).unwrap();
                expected.extend_from_slice(message);
            }
            out.flush().unwrap();
        }
        let (tail, blocks) = writes.0.split_last().expect("writes");
        assert!(blocks
            .iter()
            .all(|write| !write.is_empty() && write.len() % EVENT_FILE_BLOCK == 0));
        assert!(tail.len() < EVENT_FILE_BLOCK);
        assert_eq!(writes.0.concat(), expected);
        // Dropped without a flush, the tail is still written.
        let mut writes = Writes::default();
        BlockWriter::new(&mut writes).write_all(b"tail").unwrap();
        assert_eq!(writes.0.concat(), b"tail");
    }
}
