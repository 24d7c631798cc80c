//! The dataflow graph: record operations and dimension rows in, wide-table writes out.
//!
//! ```text
//! ops (KeyedOp, by id) ─────────────────────────────────► join: record state ──► row updates ──► sink
//!                                                               ▲ (broadcast)
//! patterns, pt links, teaching types (diffs) ──► pattern lookups
//! ```
//!
//! Ingest (parse, route, process) runs before the graph, on the worker that pulled the message;
//! the graph is the same for every worker and every source.

pub mod dims;
pub mod event_type;
pub mod id_table;
pub mod ingest;
pub mod join;
pub mod owner;
pub mod process;
pub mod records;
pub mod route;
pub mod wide;

use std::sync::Arc;

use differential_dataflow::input::{Input as _, InputSession};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::core::input::Handle as InputHandle;
use timely::dataflow::operators::core::{Input as _, Probe as _};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use crate::sink::{sink_operator, SinkChannels};
use crate::source::dims::{
    DimDiff, DimSnapshot, LookupRow, PatternRow, TeachingTypePtRow, TeachingTypeRow,
};
use process::KeyedOp;

/// A hash map for the hot path: foldhash, with a fixed seed so that runs are repeatable. Keys
/// are ids and names of the job's own data, hashed many times per event; SipHash's resistance
/// to chosen keys costs several times more and buys nothing behind a per-worker state.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
/// The set of [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

/// Asks the processor to load the cache lines of `value` (a no-op where that cannot be asked):
/// the join's state is large and read in no order, so it asks for what it reads next.
#[inline]
pub(crate) fn prefetch_lines<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = value as *const T as *const i8;
        for offset in (0..std::mem::size_of::<T>()).step_by(64) {
            // SSE (baseline on x86-64); a prefetch never faults, and the address is in bounds.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// What the workers did and what their state holds, summed over the workers of a process.
#[derive(Debug, Default)]
pub struct DataflowStats {
    /// Time spent ingesting (parse, validate, route, process), ns.
    pub ingest_nanos: std::sync::atomic::AtomicU64,
    /// Ids with a visible record (rows of the wide table).
    pub live_records: std::sync::atomic::AtomicI64,
    /// Ids with any state: live, deleted (kept to order late events) or fix-only.
    pub keys: std::sync::atomic::AtomicU64,
    /// Estimated heap bytes of record state (measured every few seconds and at the end).
    pub bytes: std::sync::atomic::AtomicU64,
    /// Ids whose state holds a fix (measured with `bytes`).
    pub fixes: std::sync::atomic::AtomicU64,
    /// Time spent applying operations and lookup changes and building rows, ns.
    pub join_nanos: std::sync::atomic::AtomicU64,
    /// CPU time of the run's ended threads, by role.
    pub thread_cpu: crate::ops::thread_cpu::ThreadCpu,
    /// Ingest → committed, per epoch.
    pub end_to_end: crate::ops::metrics::LatencyHistogram,
    /// Per worker, when the oldest batch ingested but not yet committed was ingested (ms since
    /// the epoch); absent when everything ingested is committed.
    pub pending_since_ms: std::sync::Mutex<std::collections::BTreeMap<usize, i64>>,
    /// Per worker, its outcome tally, published every few hundred ms and at the end.
    pub outcomes: std::sync::Mutex<std::collections::BTreeMap<usize, ingest::OutcomeCounts>>,
}

impl DataflowStats {
    /// The outcome tally of all workers.
    pub fn outcomes(&self) -> ingest::OutcomeCounts {
        let mut all = ingest::OutcomeCounts::default();
        for counts in self.outcomes.lock().expect("outcomes lock").values() {
            all.merge(counts);
        }
        all
    }

    /// How long the oldest uncommitted batch has waited, in seconds (0 when none waits).
    pub fn pending_age_seconds(&self, now_ms: i64) -> f64 {
        self.pending_since_ms
            .lock()
            .expect("pending lock")
            .values()
            .min()
            .map_or(0.0, |since| (now_ms - since).max(0) as f64 / 1000.0)
    }
}

/// The inputs of one worker's dataflow and the probe that says what has been written.
pub struct DataflowHandles {
    pub ops: InputHandle<u64, CapacityContainerBuilder<Vec<KeyedOp>>>,
    pub dims: DimInputs,
    /// Passed a time once every worker's sink has committed all of that time's rows.
    pub probe: ProbeHandle<u64>,
}

/// The dimension inputs: rows enter and leave as differences.
pub struct DimInputs {
    pub patterns: InputSession<u64, PatternRow, isize>,
    pub teaching_type_pts: InputSession<u64, TeachingTypePtRow, isize>,
    pub teaching_types: InputSession<u64, TeachingTypeRow, isize>,
    /// Rows of the lookup tables, by table index.
    pub lookup_rows: InputSession<u64, (u16, LookupRow), isize>,
}

impl DimInputs {
    /// Feeds share `share` of `shares` of a full snapshot (as additions) at the current time:
    /// every `shares`-th row of each table, from the `share`-th on. The workers of one process
    /// each feed a share of the snapshot they all hold, so that the rows are cloned and sent
    /// on in parallel; differential routes each row to its key's worker either way.
    pub fn load_share(&mut self, snapshot: &DimSnapshot, share: usize, shares: usize) {
        // Rows are picked by their place in the snapshot, before they are cloned.
        for row in share_of(snapshot.patterns.iter(), share, shares) {
            self.patterns.update(row.clone(), 1);
        }
        for row in share_of(snapshot.teaching_type_pts.iter(), share, shares) {
            self.teaching_type_pts.update(row.clone(), 1);
        }
        for row in share_of(snapshot.teaching_types.iter(), share, shares) {
            self.teaching_types.update(row.clone(), 1);
        }
        let lookup_rows = (snapshot.lookups.iter())
            .flat_map(|(table, rows)| rows.iter().map(move |row| (*table, row)));
        for (table, row) in share_of(lookup_rows, share, shares) {
            self.lookup_rows.update((table, row.clone()), 1);
        }
    }

    /// Feeds a difference at the current time.
    pub fn apply(&mut self, diff: &DimDiff) {
        for (row, d) in &diff.patterns {
            self.patterns.update(row.clone(), *d);
        }
        for (row, d) in &diff.teaching_type_pts {
            self.teaching_type_pts.update(row.clone(), *d);
        }
        for (row, d) in &diff.teaching_types {
            self.teaching_types.update(row.clone(), *d);
        }
        for (row, d) in &diff.lookups {
            self.lookup_rows.update(row.clone(), *d);
        }
    }

    pub fn advance_to(&mut self, epoch: u64) {
        self.patterns.advance_to(epoch);
        self.teaching_type_pts.advance_to(epoch);
        self.teaching_types.advance_to(epoch);
        self.lookup_rows.advance_to(epoch);
        self.flush();
    }

    pub fn flush(&mut self) {
        self.patterns.flush();
        self.teaching_type_pts.flush();
        self.teaching_types.flush();
        self.lookup_rows.flush();
    }

    pub fn epoch(&self) -> u64 {
        *self.patterns.time()
    }
}

/// Every `shares`-th item of `items`, from the `share`-th on.
fn share_of<T>(
    items: impl Iterator<Item = T>,
    share: usize,
    shares: usize,
) -> impl Iterator<Item = T> {
    items.skip(share).step_by(shares.max(1))
}

/// Builds the dataflow on `worker`.
pub fn build(
    worker: &mut Worker,
    rows: join::RowSpec,
    stats: Arc<DataflowStats>,
    restored: Option<join::JoinState>,
    checkpoints: Option<join::CheckpointHooks>,
    write_only_touched: bool,
    sink: SinkChannels,
) -> DataflowHandles {
    worker.dataflow::<u64, _, _>(|scope| {
        let (ops_input, ops) = scope.new_input::<Vec<KeyedOp>>();
        let (patterns, pattern_rows) = scope.new_collection();
        let (teaching_type_pts, pt_rows) = scope.new_collection();
        let (teaching_types, tt_rows) = scope.new_collection();
        let (lookup_rows, table_rows) = scope.new_collection::<(u16, LookupRow), isize>();

        let lookups = dims::pattern_lookups(pattern_rows, pt_rows, tt_rows)
            .map(|(pattern, lookup)| join::LookupChange::Pattern(pattern, lookup))
            .concat(table_rows.map(|(table, row)| join::LookupChange::Table(table, row)));
        let updates = join::join_records_with_dims(
            ops,
            lookups,
            rows,
            stats,
            restored,
            checkpoints,
            write_only_touched,
        );
        let probe = ProbeHandle::new();
        sink_operator(updates, sink).probe_with(&probe);

        DataflowHandles {
            ops: ops_input,
            dims: DimInputs {
                patterns,
                teaching_type_pts,
                teaching_types,
                lookup_rows,
            },
            probe,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use differential_dataflow::VecCollection;
    use timely::dataflow::operators::Inspect as _;

    use super::*;
    use crate::commands::gen::{dims, GenOptions};

    /// Each row of the snapshot, as its table and text, with its multiplicity.
    type Rows = BTreeMap<String, isize>;

    fn rows_of(snapshot: &DimSnapshot) -> Rows {
        let text = |table: &str, row: &dyn std::fmt::Debug| format!("{table} {row:?}");
        let mut rows = Rows::new();
        rows.extend(snapshot.patterns.iter().map(|r| (text("p", r), 1)));
        rows.extend(
            snapshot
                .teaching_type_pts
                .iter()
                .map(|r| (text("pt", r), 1)),
        );
        rows.extend(snapshot.teaching_types.iter().map(|r| (text("tt", r), 1)));
        for (table, lookup_rows) in &snapshot.lookups {
            rows.extend(lookup_rows.iter().map(|r| (text("l", &(table, r)), 1)));
        }
        rows
    }

    #[test]
    fn workers_feeding_a_share_each_load_every_row_of_the_snapshot_once() {
        let mut snapshot = dims(&GenOptions {
            patterns: 50,
            teaching_types: 40,
            ..GenOptions::default()
        });
        let lookup_row = |k: usize| LookupRow {
            key: format!("k{k}"),
            values: vec![Some(format!("v{k}"))],
        };
        snapshot.lookups.insert(0, (0..7).map(lookup_row).collect());
        snapshot
            .lookups
            .insert(3, (7..10).map(lookup_row).collect());
        let expected = rows_of(&snapshot);
        for workers in [1, 2, 3] {
            let seen = Arc::new(Mutex::new(Rows::new()));
            let (snapshot, sink) = (snapshot.clone(), seen.clone());
            timely::execute(timely::Config::process(workers), move |worker| {
                let sink = sink.clone();
                let mut inputs = worker.dataflow::<u64, _, _>(|scope| {
                    fn record<'s, D: differential_dataflow::Data>(
                        rows: VecCollection<'s, u64, D, isize>,
                        table: &'static str,
                        sink: Arc<Mutex<Rows>>,
                    ) {
                        rows.inner.inspect(move |(row, _, diff)| {
                            let text = format!("{table} {row:?}");
                            *sink.lock().unwrap().entry(text).or_default() += diff;
                        });
                    }
                    let (patterns, p) = scope.new_collection();
                    let (teaching_type_pts, pt) = scope.new_collection();
                    let (teaching_types, tt) = scope.new_collection();
                    let (lookup_rows, l) = scope.new_collection();
                    record(p, "p", sink.clone());
                    record(pt, "pt", sink.clone());
                    record(tt, "tt", sink.clone());
                    record(l, "l", sink.clone());
                    DimInputs {
                        patterns,
                        teaching_type_pts,
                        teaching_types,
                        lookup_rows,
                    }
                });
                inputs.load_share(&snapshot, worker.index(), worker.peers());
            })
            .expect("timely starts");
            let mut seen = std::mem::take(&mut *seen.lock().unwrap());
            seen.retain(|_, diff| *diff != 0);
            assert_eq!(seen, expected, "{workers} workers");
        }
    }
}
