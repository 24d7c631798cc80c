//! Criterion benches of the hot paths, on generated data:
//!
//! - `ingest`: the envelope alone, JSON validation alone, and parse + validate + route +
//!   process one message;
//! - `join/records`: record-state update and row assembly for a batch of operations;
//! - `join/dim_change`: a pattern lookup change correcting the rows that use it;
//! - `dims/initial_load` and `dims/load_then_change`: the differential dimension chain;
//! - `sink/batch`: building a sink batch and its statement parameters.
//!
//! Run with `cargo bench --bench hot_paths`; figures and conditions are in BENCHMARKS.md.

use std::collections::HashMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use differential_dataflow::input::Input;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;

use wrongbook::commands::gen::{generate, routing_rows, GenOptions};
use wrongbook::dataflow::dims::{pattern_lookups, PatternLookup};
use wrongbook::dataflow::ingest::{Ingestor, Outcome};
use wrongbook::dataflow::join::{JoinState, LookupChange};
use wrongbook::dataflow::owner::OpsByOwner;
use wrongbook::dataflow::process::KeyedOp;
use wrongbook::dataflow::route::RouteTable;
use wrongbook::dataflow::wide::WideRow;
use wrongbook::event::{parse_envelope, ParseBuffers};
use wrongbook::schema::Dialect;
use wrongbook::sink::statements::{row_params, upsert_sql, WideTable};
use wrongbook::sink::SinkBatch;
use wrongbook::source::dims::{DimDiff, DimSnapshot};
use wrongbook::spec::Spec;

fn ingestor() -> (Ingestor, RouteTable) {
    let spec = Spec::builtin();
    let routes = RouteTable::build(routing_rows(), &spec);
    let ingestor = Ingestor {
        spec: Arc::new(spec),
        max_message_bytes: 1 << 20,
    };
    (ingestor, routes)
}

fn ops(messages: &[Vec<u8>]) -> Vec<KeyedOp> {
    let (ingestor, routes) = ingestor();
    let mut buffers = ParseBuffers::default();
    let mut ops = OpsByOwner::new(1, messages.len());
    for message in messages {
        ingestor.ingest(message.as_slice(), &routes, &mut buffers, &mut ops);
    }
    ops.into_iter().collect()
}

fn bench_ingest(c: &mut Criterion) {
    let generated = generate(&GenOptions {
        events: 10_000,
        ..GenOptions::default()
    });
    let (ingestor, routes) = ingestor();
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(generated.messages.len() as u64));
    group.bench_function("parse_envelope", |b| {
        b.iter(|| {
            generated
                .messages
                .iter()
                .filter(|m| parse_envelope(m, 1 << 20).is_ok())
                .count()
        })
    });
    group.bench_function("validate_json_only", |b| {
        b.iter(|| {
            generated
                .messages
                .iter()
                .filter(|m| std::str::from_utf8(m).is_ok_and(wrongbook::json::is_valid))
                .count()
        })
    });
    group.bench_function("parse_validate_route_process", |b| {
        b.iter(|| {
            let mut accepted = 0;
            let mut buffers = ParseBuffers::default();
            let mut ops = OpsByOwner::new(1, generated.messages.len());
            for message in &generated.messages {
                if matches!(
                    ingestor
                        .ingest(message.as_slice(), &routes, &mut buffers, &mut ops)
                        .1,
                    Outcome::Accepted
                ) {
                    accepted += 1;
                }
            }
            accepted
        })
    });
    group.finish();
}

fn bench_join(c: &mut Criterion) {
    let generated = generate(&GenOptions {
        events: 20_000,
        ..GenOptions::default()
    });
    let ops = ops(&generated.messages);
    let desc: HashMap<i64, String> = Spec::builtin().fix_result_desc;
    let mut group = c.benchmark_group("join");
    group.throughput(Throughput::Elements(ops.len() as u64));
    group.bench_function("records", |b| {
        b.iter_batched(
            || (JoinState::default(), ops.clone()),
            |(mut state, ops)| state.advance([ops], Vec::new(), &desc).len(),
            BatchSize::LargeInput,
        )
    });
    // One pattern's lookup changes: every row using it is corrected.
    let mut loaded = JoinState::default();
    let lookup = |name: &str| {
        std::sync::Arc::new(PatternLookup {
            name: Some(name.into()),
            overall: Some((1, Some("tt".into()))),
            by_chapter: Vec::new(),
        })
    };
    loaded.advance(
        [ops.clone()],
        vec![(LookupChange::Pattern("pattern_0".into(), lookup("a")), 1)],
        &desc,
    );
    group.throughput(Throughput::Elements(1));
    group.bench_function("dim_change", |b| {
        let mut flip = false;
        b.iter(|| {
            let (old, new) = if flip { ("b", "a") } else { ("a", "b") };
            flip = !flip;
            loaded
                .advance(
                    Vec::new(),
                    vec![
                        (LookupChange::Pattern("pattern_0".into(), lookup(old)), -1),
                        (LookupChange::Pattern("pattern_0".into(), lookup(new)), 1),
                    ],
                    &desc,
                )
                .len()
        })
    });
    group.finish();
}

/// Runs the dimension chain over `diffs`, one epoch each, to completion.
fn run_dims(diffs: Vec<DimDiff>) {
    timely::execute_directly(move |worker| {
        let probe = ProbeHandle::new();
        let (mut p, mut pt, mut tt) = worker.dataflow::<u64, _, _>(|scope| {
            let (p_in, p) = scope.new_collection();
            let (pt_in, pt) = scope.new_collection();
            let (tt_in, tt) = scope.new_collection();
            pattern_lookups(p, pt, tt).inner.probe_with(&probe);
            (p_in, pt_in, tt_in)
        });
        for (epoch, diff) in (1..).zip(diffs) {
            diff.patterns.into_iter().for_each(|(r, d)| p.update(r, d));
            diff.teaching_type_pts
                .into_iter()
                .for_each(|(r, d)| pt.update(r, d));
            diff.teaching_types
                .into_iter()
                .for_each(|(r, d)| tt.update(r, d));
            p.advance_to(epoch);
            pt.advance_to(epoch);
            tt.advance_to(epoch);
            p.flush();
            pt.flush();
            tt.flush();
            worker.step_while(|| probe.less_than(&epoch));
        }
    })
}

fn bench_dims(c: &mut Criterion) {
    let generated = generate(&GenOptions {
        events: 10,
        patterns: 5_000,
        teaching_types: 8_000,
        ..GenOptions::default()
    });
    let load = DimSnapshot::default().diff(&generated.dims);
    let change = generated.dims.diff(&generated.dims_changed);
    let mut group = c.benchmark_group("dims");
    group.sample_size(10);
    group.bench_function("initial_load", |b| b.iter(|| run_dims(vec![load.clone()])));
    group.bench_function("load_then_change", |b| {
        b.iter(|| run_dims(vec![load.clone(), change.clone()]))
    });
    group.finish();
}

fn bench_sink(c: &mut Criterion) {
    let generated = generate(&GenOptions {
        events: 20_000,
        ..GenOptions::default()
    });
    let desc = Spec::builtin().fix_result_desc;
    let updates = JoinState::default().advance([ops(&generated.messages)], Vec::new(), &desc);
    let mut group = c.benchmark_group("sink");
    group.throughput(Throughput::Elements(updates.len() as u64));
    group.bench_function("batch_and_params", |b| {
        b.iter_batched(
            || updates.clone(),
            |updates| {
                let batch = SinkBatch::new(1, updates);
                let upserts: Vec<&WideRow> = batch.upserts().collect();
                let mut params = 0;
                for rows in upserts.chunks(1000) {
                    let sql = upsert_sql(
                        Dialect::Mysql,
                        &WideTable::plain("dwd_wrong_record_wide_delta"),
                        rows.len(),
                    );
                    params += sql.len();
                    for row in rows {
                        params += row_params(row, 1_700_000_000).count();
                    }
                }
                params
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_ingest, bench_join, bench_dims, bench_sink);
criterion_main!(benches);
