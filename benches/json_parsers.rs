//! The engine's JSON scanner against the SIMD JSON parsers the speed issue names (`sonic-rs`,
//! `simd-json`), on the same generated messages (~275 bytes each), doing the engine's job as far
//! as each parser can: validate the whole message and get the envelope and the payload's fields.
//!
//! - `wrongbook/typed`: the engine's parse (UTF-8, strict JSON, envelope fields, the payload's
//!   fields checked against their type's schema), as ingest runs it;
//! - `wrongbook/envelope`: the same without schemas (payload entries kept unchecked);
//! - `sonic_rs/typed` and `simd_json/typed`: serde into borrowed structs holding every payload
//!   field of every type (each optional, so less is checked than the engine checks);
//! - `sonic_rs/value`: a document tree, no field read;
//! - `simd_json/borrowed_value`: a tree borrowing from a mutable copy of the message (simd-json
//!   parses in place), the copy included.
//!
//! Not built by default: `cargo bench --features compare-parsers --bench json_parsers`. The SIMD
//! parsers choose their instructions when compiled; add `RUSTFLAGS="-C target-cpu=native"` to
//! give them the machine's. Figures are in BENCHMARKS.md.

use std::borrow::Cow;
use std::fmt;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use wrongbook::commands::gen::{generate, GenOptions};
use wrongbook::event::{parse_envelope, ParseBuffers};
use wrongbook::spec::Spec;

/// An envelope with borrowed text, as serde reads it.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Envelope<'a> {
    #[serde(borrow)]
    domain: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    event_type: Cow<'a, str>,
    timestamp: i64,
    #[serde(borrow, rename = "eventId")]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    payload: Payload<'a>,
}

/// Every payload field of the generated event types.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Payload<'a> {
    #[serde(borrow)]
    wrong_record_id: Option<IdOrText<'a>>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    question_id: Option<IdOrText<'a>>,
    #[serde(borrow)]
    pattern_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow)]
    subject_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    chapter_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    chapter_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    question: Option<Cow<'a, str>>,
    #[serde(borrow)]
    answer: Option<Cow<'a, str>>,
    #[serde(borrow)]
    wrong_time: Option<IdOrText<'a>>,
    #[serde(borrow)]
    create_time: Option<IdOrText<'a>>,
    #[serde(borrow)]
    fix_result: Option<Cow<'a, str>>,
    #[serde(borrow)]
    fix_time: Option<IdOrText<'a>>,
    #[serde(borrow)]
    fix_id: Option<Cow<'a, str>>,
    attempts: Option<i64>,
}

/// A field the spec lets be a number or a string of digits.
#[allow(dead_code)]
enum IdOrText<'a> {
    Number(i64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for IdOrText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdOrTextVisitor;
        impl<'de> Visitor<'de> for IdOrTextVisitor {
            type Value = IdOrText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IdOrText::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(IdOrText::Number)
                    .map_err(|_| E::custom("out of range"))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(IdOrText::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IdOrText::Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_any(IdOrTextVisitor)
    }
}

fn bench_parsers(c: &mut Criterion) {
    let messages = generate(&GenOptions {
        events: 10_000,
        ..GenOptions::default()
    })
    .messages;
    let spec = Spec::builtin();
    let mut group = c.benchmark_group("json_parsers");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("wrongbook/typed", |b| {
        let mut buffers = ParseBuffers::default();
        b.iter(|| {
            let mut typed = 0;
            for message in &messages {
                let schema_of = |_: &str, event_type: &str| spec.event_types.get(event_type);
                let Ok(mut envelope) =
                    buffers.parse_envelope(message.as_slice(), 1 << 20, schema_of)
                else {
                    continue;
                };
                let Some(schema) = spec.event_types.get(envelope.event_type.as_ref()) else {
                    continue;
                };
                if let Ok(fields) = envelope.payload.validate(schema) {
                    typed += 1;
                    buffers.keep_fields(fields);
                }
            }
            typed
        })
    });
    group.bench_function("wrongbook/envelope", |b| {
        b.iter(|| {
            messages
                .iter()
                .filter(|m| parse_envelope(m, 1 << 20).is_ok())
                .count()
        })
    });
    group.bench_function("sonic_rs/typed", |b| {
        b.iter(|| {
            messages
                .iter()
                .filter(|m| sonic_rs::from_slice::<Envelope>(m).is_ok())
                .count()
        })
    });
    group.bench_function("sonic_rs/value", |b| {
        b.iter(|| {
            messages
                .iter()
                .filter(|m| sonic_rs::from_slice::<sonic_rs::Value>(m).is_ok())
                .count()
        })
    });
    group.bench_function("simd_json/typed", |b| {
        let mut copy = Vec::new();
        let mut buffers = simd_json::Buffers::default();
        b.iter(|| {
            let mut typed = 0;
            for message in &messages {
                copy.clear();
                copy.extend_from_slice(message);
                let parsed: Result<Envelope, _> =
                    simd_json::serde::from_slice_with_buffers(&mut copy, &mut buffers);
                typed += usize::from(parsed.is_ok());
            }
            typed
        })
    });
    group.bench_function("simd_json/borrowed_value", |b| {
        let mut copy = Vec::new();
        let mut buffers = simd_json::Buffers::default();
        b.iter(|| {
            let mut parsed = 0;
            for message in &messages {
                copy.clear();
                copy.extend_from_slice(message);
                let value = simd_json::to_borrowed_value_with_buffers(&mut copy, &mut buffers);
                parsed += usize::from(value.is_ok());
            }
            parsed
        })
    });
    group.finish();
}

criterion_group!(benches, bench_parsers);
criterion_main!(benches);
