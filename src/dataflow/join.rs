//! The maintained join of record state with the dimension chain: record operations and pattern
//! lookups in, the row of every id whose row changed out, once per time.
//!
//! Records are many and dimensions are few, so records never move: each worker keeps the
//! records of the ids it owns ([`RecordStore`]) together with a replica of every pattern's
//! [`PatternLookup`] (broadcast from [`crate::dataflow::dims`]) and an index from pattern to the
//! ids that use it. Once both inputs have passed a time, the worker applies that time's record
//! operations and lookup changes, and emits the current row of exactly the ids whose row may
//! have changed: ids whose visible record changed, and ids whose pattern lookup resolves
//! differently for their chapter. A dimension change therefore corrects every affected row,
//! and only those.
//!
//! This is a broadcast (replicated) hash join kept incrementally. State is O(records) with one
//! copy of each record, no arrangement of records and no exchange of records; the output needs
//! no retractions because the sink writes rows by id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use differential_dataflow::VecCollection;

use crate::dataflow::dims::{DimLookup, PatternLookup};
use crate::dataflow::process::KeyedOp;
use crate::dataflow::records::{Applied, Record, RecordStore};
use crate::dataflow::wide::{RowUpdate, WideRow};
use crate::dataflow::DataflowStats;

/// One worker's side of the join.
#[derive(Default)]
pub struct JoinState {
    pub records: RecordStore,
    lookups: HashMap<String, PatternLookup>,
    /// pattern → the ids of visible records with that pattern.
    ids_by_pattern: HashMap<String, HashSet<u64>>,
    /// The number of visible records.
    pub live: i64,
}

impl JoinState {
    fn lookup_of<'a>(&'a self, record: Record<'a>) -> DimLookup<'a> {
        record
            .add
            .pattern_id
            .as_ref()
            .and_then(|p| self.lookups.get(p))
            .map(|l| l.resolve(record.add.chapter_id.as_deref()))
            .unwrap_or_default()
    }

    fn index(&mut self, pattern: Option<Option<String>>, id: u64, add: bool) {
        let Some(Some(pattern)) = pattern else {
            return;
        };
        if add {
            self.ids_by_pattern.entry(pattern).or_default().insert(id);
        } else if let Some(ids) = self.ids_by_pattern.get_mut(&pattern) {
            ids.remove(&id);
            if ids.is_empty() {
                self.ids_by_pattern.remove(&pattern);
            }
        }
    }

    /// Applies one time's record operations and lookup changes; returns the rows of the ids
    /// whose row may have changed, sorted by id.
    pub fn advance(
        &mut self,
        mut ops: Vec<KeyedOp>,
        mut lookup_changes: Vec<(String, PatternLookup, isize)>,
        fix_result_desc: &HashMap<i64, String>,
    ) -> Vec<RowUpdate> {
        let mut touched: Vec<u64> = Vec::new();

        ops.sort_by_key(|op| op.id);
        let mut ops = ops.into_iter().peekable();
        while let Some(first) = ops.next() {
            let id = first.id;
            let group = std::iter::once(first.op).chain(std::iter::from_fn(|| {
                ops.next_if(|op| op.id == id).map(|op| op.op)
            }));
            if let Applied::Changed { before } = self.records.apply(id, group) {
                let after = self.records.visible(id).map(|r| r.add.pattern_id.clone());
                if before.is_some() || after.is_some() {
                    touched.push(id);
                }
                self.live += i64::from(after.is_some()) - i64::from(before.is_some());
                if before != after {
                    self.index(before, id, false);
                    self.index(after, id, true);
                }
            }
        }

        // Negative changes first, so a (-old, +new) pair leaves the new lookup in place.
        lookup_changes.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
        let mut changes = lookup_changes.into_iter().peekable();
        while let Some((pattern, lookup, diff)) = changes.next() {
            let old = self.lookups.get(&pattern).cloned();
            let mut new = old.clone();
            for (lookup, diff) in std::iter::once((lookup, diff)).chain(std::iter::from_fn(|| {
                changes
                    .next_if(|(p, _, _)| *p == pattern)
                    .map(|(_, l, d)| (l, d))
            })) {
                if diff > 0 {
                    new = Some(lookup);
                } else if new.as_ref() == Some(&lookup) {
                    new = None;
                }
            }
            if old == new {
                continue;
            }
            match &new {
                Some(lookup) => self.lookups.insert(pattern.clone(), lookup.clone()),
                None => self.lookups.remove(&pattern),
            };
            if let Some(ids) = self.ids_by_pattern.get(&pattern) {
                let none = PatternLookup::default();
                let (old, new) = (old.as_ref().unwrap_or(&none), new.as_ref().unwrap_or(&none));
                for &id in ids {
                    let chapter = self
                        .records
                        .visible(id)
                        .and_then(|r| r.add.chapter_id.as_deref());
                    if old.resolve(chapter) != new.resolve(chapter) {
                        touched.push(id);
                    }
                }
            }
        }

        touched.sort_unstable();
        touched.dedup();
        touched
            .into_iter()
            .map(|id| {
                let row = self.records.visible(id).map(|record| {
                    WideRow::assemble(id, record, &self.lookup_of(record), fix_result_desc)
                });
                (id, row)
            })
            .collect()
    }
}

/// Ops and lookup changes waiting for their time to complete, with the time's capability.
type PendingTimes = BTreeMap<
    u64,
    (
        Capability<u64>,
        Vec<KeyedOp>,
        Vec<(String, PatternLookup, isize)>,
    ),
>;

/// The join operator: record operations (exchanged to the worker owning their id) and pattern
/// lookups (broadcast to every worker) in; each completed time's row updates out, on the
/// worker that owns the rows.
pub fn join_records_with_dims<'scope>(
    ops: Stream<'scope, u64, Vec<KeyedOp>>,
    lookups: VecCollection<'scope, u64, (String, PatternLookup), isize>,
    fix_result_desc: Arc<HashMap<i64, String>>,
    stats: Arc<DataflowStats>,
) -> Stream<'scope, u64, Vec<RowUpdate>> {
    let lookups = lookups.inner.broadcast();
    ops.binary_frontier(
        lookups,
        Exchange::new(|op: &KeyedOp| op.id),
        Pipeline,
        "RecordsJoinDims",
        move |_capability, _info| {
            let mut state = JoinState::default();
            let mut pending: PendingTimes = BTreeMap::new();
            let mut reported_keys = 0u64;
            let mut final_report = false;
            move |(ops, ops_frontier), (lookups, lookups_frontier), output| {
                ops.for_each(|cap, data| {
                    let Some(time) = cap.least().copied() else {
                        return;
                    };
                    let entry = pending.entry(time).or_insert_with(|| {
                        let cap = cap
                            .retain_least(0)
                            .expect("a message with a time has a capability");
                        (cap, Vec::new(), Vec::new())
                    });
                    entry.1.append(data);
                });
                lookups.for_each(|cap, data| {
                    for ((pattern, lookup), time, diff) in data.drain(..) {
                        pending
                            .entry(time)
                            .or_insert_with(|| (cap.delayed(&time, 0), Vec::new(), Vec::new()))
                            .2
                            .push((pattern, lookup, diff));
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    let time = *entry.key();
                    if ops_frontier.less_equal(&time) || lookups_frontier.less_equal(&time) {
                        break;
                    }
                    let (cap, time_ops, time_lookups) = entry.remove();
                    let started = Instant::now();
                    let live_before = state.live;
                    let updates = state.advance(time_ops, time_lookups, &fix_result_desc);
                    stats
                        .join_nanos
                        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    stats
                        .live_records
                        .fetch_add(state.live - live_before, Ordering::Relaxed);
                    let keys = state.records.len() as u64;
                    stats
                        .keys
                        .fetch_add(keys.wrapping_sub(reported_keys), Ordering::Relaxed);
                    reported_keys = keys;
                    if !updates.is_empty() {
                        output.session(&cap).give_iterator(updates.into_iter());
                    }
                }
                if !final_report && ops_frontier.is_empty() && lookups_frontier.is_empty() {
                    final_report = true;
                    stats
                        .bytes
                        .fetch_add(state.records.heap_bytes() as u64, Ordering::Relaxed);
                }
            }
        },
    )
}
