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

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use differential_dataflow::VecCollection;

use crate::dataflow::dims::{DimLookup, PatternLookup};
use crate::dataflow::owner::{by_owner, owner};
use crate::dataflow::process::KeyedOp;
use crate::dataflow::records::{Applied, Place, Record, RecordStore};
use crate::dataflow::wide::{RowUpdate, WideRow};
use crate::dataflow::{DataflowStats, FastMap, FastSet};
use crate::source::dims::LookupRow;
use crate::spec::KeyField;

/// How often a worker reports the size of its record state (bytes, fixes) to the metrics. The
/// store keeps count of both, so a report reads a few numbers, not the records.
const CENSUS_INTERVAL: Duration = Duration::from_secs(1);

/// What a checkpoint keeps of a worker's join state: its records and its replica of the
/// lookups (so that a restart rewrites only rows whose dimensions changed meanwhile).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct JoinSnapshot {
    pub records: RecordStore,
    pub lookups: FastMap<CompactString, Arc<PatternLookup>>,
    pub tables: HashMap<u16, HashMap<String, Vec<Option<String>>>>,
}

impl JoinSnapshot {
    /// Decodes a checkpoint part, also one written before lookup tables existed.
    pub fn decode(bytes: &[u8]) -> Result<JoinSnapshot, postcard::Error> {
        #[derive(Deserialize)]
        struct WithoutTables {
            records: RecordStore,
            lookups: FastMap<CompactString, Arc<PatternLookup>>,
        }
        postcard::from_bytes::<JoinSnapshot>(bytes).or_else(|e| {
            postcard::from_bytes::<WithoutTables>(bytes)
                .map(|old| JoinSnapshot {
                    records: old.records,
                    lookups: old.lookups,
                    tables: HashMap::new(),
                })
                .map_err(|_| e)
        })
    }
}

/// A change to what the join looks up: a pattern's chain lookup, or a row of a lookup table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LookupChange {
    /// Shared: the same lookup goes to every worker and into its map, uncopied.
    Pattern(CompactString, Arc<PatternLookup>),
    Table(u16, LookupRow),
}

/// The lookup tables' shape: per table (by index), the record field it is keyed by and the
/// number of wide-table columns it fills.
pub type LookupShape = Arc<Vec<(KeyField, usize)>>;

/// What the join needs from the spec to build rows.
#[derive(Clone)]
pub struct RowSpec {
    pub fix_result_desc: Arc<HashMap<i64, String>>,
    pub lookups: LookupShape,
}

/// What `record`'s pattern and chapter resolve to among `lookups` (nothing when its pattern
/// is unknown: the left join keeps the row with empty dimension columns).
pub fn lookup_for<'a>(
    lookups: &'a FastMap<CompactString, Arc<PatternLookup>>,
    record: Record<'a>,
) -> DimLookup<'a> {
    record
        .add
        .pattern_id
        .as_ref()
        .and_then(|p| lookups.get(p.as_str()))
        .map(|l| l.resolve(record.add.chapter_id.as_deref()))
        .unwrap_or_default()
}

/// One worker's side of the join.
#[derive(Default)]
pub struct JoinState {
    pub records: RecordStore,
    lookups: FastMap<CompactString, Arc<PatternLookup>>,
    /// pattern → the ids of visible records with that pattern.
    ids_by_pattern: FastMap<CompactString, PatternIds>,
    /// Per lookup table: key → its values.
    tables: HashMap<u16, HashMap<String, Vec<Option<String>>>>,
    /// (lookup table, key) → the ids of visible records with that key.
    ids_by_key: FastMap<(u16, String), FastSet<u64>>,
    shape: LookupShape,
    /// The number of visible records.
    pub live: i64,
    /// Restored from a checkpoint: the table may hold rows the killed run wrote after it.
    restored: bool,
    /// When set, only rows of ids some writing operation touched are emitted (a replay of a
    /// range), and these are the ids.
    written: Option<FastSet<u64>>,
    /// Empty between times; kept so that each time reuses its allocations.
    touched: TouchedIds,
}

impl JoinState {
    /// The state as a checkpoint part (postcard bytes).
    pub fn snapshot(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            records: &'a RecordStore,
            lookups: &'a FastMap<CompactString, Arc<PatternLookup>>,
            tables: &'a HashMap<u16, HashMap<String, Vec<Option<String>>>>,
        }
        postcard::to_stdvec(&Borrowed {
            records: &self.records,
            lookups: &self.lookups,
            tables: &self.tables,
        })
        .expect("record state serializes")
    }

    /// Restores the ids of worker `index` of `peers` from the parts of a checkpoint, whatever
    /// worker count wrote them.
    pub fn restore(parts: Vec<JoinSnapshot>, index: usize, peers: usize) -> JoinState {
        let mut state = JoinState {
            restored: true,
            ..JoinState::default()
        };
        for part in parts {
            state
                .records
                .absorb(part.records, |id| owner(id, peers) == index);
            if state.lookups.is_empty() {
                state.lookups = part.lookups;
            }
            if state.tables.is_empty() {
                state.tables = part.tables;
            }
        }
        let visible: Vec<(u64, Option<CompactString>)> = state
            .records
            .visible_records()
            .map(|(id, record)| (id, record.add.pattern_id.clone()))
            .collect();
        state.live = visible.len() as i64;
        for (id, pattern) in visible {
            state.index(Some(pattern), id, true);
        }
        state
    }

    fn lookup_of<'a>(&'a self, record: Record<'a>) -> DimLookup<'a> {
        lookup_for(&self.lookups, record)
    }

    /// Sets the lookup tables' shape and indexes the visible records by their keys.
    pub fn with_shape(mut self, shape: LookupShape) -> JoinState {
        self.shape = shape;
        if !self.shape.is_empty() {
            let keyed: Vec<(u64, Vec<Option<String>>)> = self
                .records
                .visible_records()
                .map(|(id, record)| (id, self.keys_of(record)))
                .collect();
            for (id, keys) in keyed {
                self.index_keys(&keys, id, true);
            }
        }
        self
    }

    /// A record's key in each lookup table.
    fn keys_of(&self, record: Record<'_>) -> Vec<Option<String>> {
        self.shape
            .iter()
            .map(|(field, _)| field.of(record.add).map(str::to_owned))
            .collect()
    }

    fn index_keys(&mut self, keys: &[Option<String>], id: u64, add: bool) {
        for (table, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            let entry = (table as u16, key.clone());
            if add {
                self.ids_by_key.entry(entry).or_default().insert(id);
            } else if let Some(ids) = self.ids_by_key.get_mut(&entry) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.ids_by_key.remove(&entry);
                }
            }
        }
    }

    /// The values a record's keys find in the lookup tables, flattened in column order (NULLs
    /// where nothing matches).
    fn extra_values(&self, record: Record<'_>) -> Vec<Option<String>> {
        let mut values = Vec::new();
        for (table, (field, width)) in self.shape.iter().enumerate() {
            let found = field
                .of(record.add)
                .and_then(|key| self.tables.get(&(table as u16))?.get(key));
            match found {
                Some(row) => values.extend(row.iter().cloned()),
                None => values.extend(std::iter::repeat_n(None, *width)),
            }
        }
        values
    }

    fn index(&mut self, pattern: Option<Option<CompactString>>, id: u64, add: bool) {
        let Some(Some(pattern)) = pattern else {
            return;
        };
        if add {
            self.ids_by_pattern.entry(pattern).or_default().ids.push(id);
        } else if let Some(ids) = self.ids_by_pattern.get_mut(&pattern) {
            ids.stale += 1;
            if ids.stale == ids.ids.len() {
                self.ids_by_pattern.remove(&pattern);
            } else if ids.stale > ids.ids.len() / 2 {
                let records = &self.records;
                ids.compact(|id| {
                    records
                        .visible(id)
                        .is_some_and(|r| r.add.pattern_id.as_ref() == Some(&pattern))
                });
            }
        }
    }

    /// Emits only the rows of ids that operations with `write` touch (from now on).
    pub fn write_only_touched(&mut self) {
        self.written = Some(FastSet::default());
    }

    /// Applies one time's record operations and lookup changes; returns the rows of the ids
    /// whose row may have changed, each once, in the order they were first touched.
    pub fn advance(
        &mut self,
        containers: impl IntoIterator<Item = Vec<KeyedOp>>,
        changes: Vec<(LookupChange, isize)>,
        fix_result_desc: &HashMap<i64, String>,
    ) -> Vec<RowUpdate> {
        // Each id once, with its first entry: an id whose record appears and disappears within
        // one time had no row and gets none.
        let mut touched = std::mem::take(&mut self.touched);
        let mut lookup_changes = Vec::new();
        let mut table_changes = Vec::new();
        for (change, diff) in changes {
            match change {
                LookupChange::Pattern(pattern, lookup) => {
                    lookup_changes.push((pattern, lookup, diff))
                }
                LookupChange::Table(table, row) => {
                    table_changes.push(((table, row.key), row.values, diff))
                }
            }
        }
        let keyed = !self.shape.is_empty();

        // Operations apply one at a time in arrival order: the winners are maxima, so order
        // does not matter, and rows are emitted once per touched id below.
        // Container by container: a flattened iterator moved each operation once more.
        for ops in containers {
            let mut ops = ops.into_iter();
            while let Some(op) = ops.next() {
                // Two steps ahead: the id's slot in the map, then, once that has arrived, its
                // record.
                let rest = ops.as_slice();
                if let Some(far) = rest.get(2 * PREFETCH_DISTANCE) {
                    self.records.prefetch_slot(far.id);
                }
                if let Some(ahead) = rest.get(PREFETCH_DISTANCE) {
                    self.records.prefetch(ahead.id);
                }
                let id = op.id;
                let keys_before = keyed
                    .then(|| self.records.visible(id).map(|r| self.keys_of(r)))
                    .flatten();
                let applied = self.records.apply(id, op.op);
                if let (true, Some(written)) = (op.write, self.written.as_mut()) {
                    written.insert(id);
                }
                if let Applied::Changed {
                    before,
                    after,
                    place,
                } = applied
                {
                    // An id that was and stays invisible has no row, unless this state was
                    // restored: then the run that checkpointed it may have written one for
                    // events after the checkpoint (an add whose delete it never got to), which
                    // these events undo.
                    if before.is_some() || after.is_some() || self.restored {
                        touched.push(Touched {
                            id,
                            place,
                            had_row: before.is_some() || self.restored,
                        });
                    }
                    self.live += i64::from(after.is_some()) - i64::from(before.is_some());
                    if before != after {
                        self.index(before, id, false);
                        self.index(after, id, true);
                    }
                    if keyed {
                        let keys_after = self.records.visible(id).map(|r| self.keys_of(r));
                        if keys_before != keys_after {
                            if let Some(keys) = keys_before {
                                self.index_keys(&keys, id, false);
                            }
                            if let Some(keys) = keys_after {
                                self.index_keys(&keys, id, true);
                            }
                        }
                    }
                }
            }
        }

        // Lookup-table rows.
        let tables = &self.tables;
        for ((table, key), _, new) in settle(table_changes, |(table, key)| {
            tables.get(table).and_then(|t| t.get(key)).cloned()
        }) {
            let entries = self.tables.entry(table).or_default();
            match new {
                Some(values) => entries.insert(key.clone(), values),
                None => entries.remove(&key),
            };
            if let Some(ids) = self.ids_by_key.get(&(table, key)) {
                // The index holds ids of visible records, which all have a place.
                for &id in ids {
                    if let Some(place) = self.records.place(id) {
                        touched.push(Touched {
                            id,
                            place,
                            had_row: true,
                        });
                    }
                }
            }
        }

        let lookups = &self.lookups;
        for (pattern, old, new) in settle(lookup_changes, |p| lookups.get(p).cloned()) {
            match &new {
                Some(lookup) => self.lookups.insert(pattern.clone(), lookup.clone()),
                None => self.lookups.remove(&pattern),
            };
            if let Some(ids) = self.ids_by_pattern.get(pattern.as_str()) {
                let none = PatternLookup::default();
                let (old, new) = (
                    old.as_deref().unwrap_or(&none),
                    new.as_deref().unwrap_or(&none),
                );
                for &id in &ids.ids {
                    // The list may still name an id whose record left the pattern, and name an
                    // id twice (`touched` keeps the second out).
                    let Some((place, record)) = self.records.place(id).and_then(|place| {
                        let record = self.records.visible_at(id, place)?;
                        let has_pattern =
                            record.add.pattern_id.as_deref() == Some(pattern.as_str());
                        has_pattern.then_some((place, record))
                    }) else {
                        continue;
                    };
                    let chapter = record.add.chapter_id.as_deref();
                    if old.resolve(chapter) != new.resolve(chapter) {
                        touched.push(Touched {
                            id,
                            place,
                            had_row: true,
                        });
                    }
                }
            }
        }

        if let Some(written) = &self.written {
            touched.first.retain(|t| written.contains(&t.id));
        }
        // Sized once: rows are large, and growing the vector would copy them again and again.
        // A plain loop: a row built in a closure and returned through an `Option` was copied
        // twice more on its way into the vector.
        let mut rows = Vec::with_capacity(touched.first.len());
        for (i, &Touched { id, place, had_row }) in touched.first.iter().enumerate() {
            // Ids come with their place: neither the prefetch nor the read waits for the id map.
            if let Some(ahead) = touched.first.get(i + PREFETCH_DISTANCE) {
                self.records.prefetch_at(ahead.place);
            }
            match self.records.visible_at(id, place) {
                Some(record) => {
                    let mut row =
                        WideRow::assemble(id, record, &self.lookup_of(record), fix_result_desc);
                    if keyed {
                        row.extra = self.extra_values(record);
                    }
                    rows.push((id, Some(row)));
                }
                None if had_row => rows.push((id, None)),
                None => {}
            }
        }
        touched.clear();
        self.touched = touched;
        rows
    }
}

/// How many records ahead of the one being read the join asks for: enough for the loads to
/// overlap, few enough that what arrives is still cached when its turn comes.
const PREFETCH_DISTANCE: usize = 8;

/// An id whose row may have changed this time.
#[derive(Debug, Clone, Copy)]
struct Touched {
    id: u64,
    /// Where its records are.
    place: Place,
    /// Whether it had a row before this time.
    had_row: bool,
}

/// The ids whose row may have changed in one time, each with its first entry: only the first
/// says whether the id had a row before the time (a record may appear and go within it). A
/// set of the ids seen keeps the others out as they come, which costs less than sorting every
/// entry by id and dropping repeats (~2 % of a worker's instructions); the sink orders the
/// rows by id anyway.
#[derive(Debug, Default)]
struct TouchedIds {
    first: Vec<Touched>,
    seen: FastSet<u64>,
}

impl TouchedIds {
    /// Adds `entry` unless its id has one.
    fn push(&mut self, entry: Touched) {
        if self.seen.insert(entry.id) {
            self.first.push(entry);
        }
    }

    /// Empties it, keeping its allocations unless a large time (a dimension change that
    /// touched many rows) grew them past what an ordinary time needs.
    fn clear(&mut self) {
        const KEPT_ENTRIES: usize = 1 << 16;
        if self.first.capacity() > KEPT_ENTRIES {
            *self = TouchedIds::default();
        } else {
            self.first.clear();
            self.seen.clear();
        }
    }
}

/// The ids of the visible records with one pattern: a list that grows as records take the
/// pattern, and counts those that leave it instead of searching for them. An add appends to
/// the end of a short list (a hash set would touch a random cache line per add); a reader
/// checks each id's record, and the list is compacted once half of it is stale.
#[derive(Debug, Default)]
struct PatternIds {
    ids: Vec<u64>,
    /// How many entries of `ids` no longer count: each removal, whichever entry it voids.
    stale: usize,
}

impl PatternIds {
    /// Keeps each id whose record still has the pattern, once.
    fn compact(&mut self, has_pattern: impl Fn(u64) -> bool) {
        self.ids.sort_unstable();
        self.ids.dedup();
        self.ids.retain(|&id| has_pattern(id));
        self.stale = 0;
    }
}

/// Folds the changes of one time to keyed lookups into each key's value before and after,
/// keeping the keys whose value changed. Retractions go first, so a (-old, +new) pair leaves
/// the new value in place.
fn settle<K: Ord, V: PartialEq + Clone>(
    mut changes: Vec<(K, V, isize)>,
    current: impl Fn(&K) -> Option<V>,
) -> Vec<(K, Option<V>, Option<V>)> {
    changes.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
    let mut settled = Vec::new();
    let mut changes = changes.into_iter().peekable();
    while let Some((key, value, diff)) = changes.next() {
        let old = current(&key);
        let mut new = old.clone();
        let same_key = std::iter::from_fn(|| {
            changes
                .next_if(|(k, _, _)| *k == key)
                .map(|(_, v, d)| (v, d))
        });
        for (value, diff) in std::iter::once((value, diff)).chain(same_key) {
            if diff > 0 {
                new = Some(value);
            } else if new.as_ref() == Some(&value) {
                new = None;
            }
        }
        if old != new {
            settled.push((key, old, new));
        }
    }
    settled
}

/// The epoch a checkpoint taken at the end of input is labelled with: every worker's join
/// takes it once its inputs are closed, so all parts agree on it.
pub const FINAL_EPOCH: u64 = u64::MAX - 1;

/// How the join takes checkpoint snapshots: at every epoch `≡ every - 1 (mod every)`, the
/// state after all times up to it, and at the end of input ([`FINAL_EPOCH`]), handed to the
/// worker loop to write once the epoch is written.
pub struct CheckpointHooks {
    pub every: u64,
    pub snapshots: Rc<RefCell<BTreeMap<u64, Arc<Vec<u8>>>>>,
}

/// A worker's join state, freed on a thread of its own when the dataflow ends: freeing millions
/// of records is a noticeable share of a bounded run (a replay), and nothing waits for it.
struct FreedElsewhere(Option<JoinState>);

impl std::ops::Deref for FreedElsewhere {
    type Target = JoinState;
    fn deref(&self) -> &JoinState {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for FreedElsewhere {
    fn deref_mut(&mut self) -> &mut JoinState {
        self.0.as_mut().expect("present until dropped")
    }
}

/// The name of the thread that frees a run's join state after it ends.
pub const FREEING_THREAD: &str = "wrongbook-free";

impl Drop for FreedElsewhere {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            // Should the thread not start, the closure, and the state with it, is dropped here.
            let _ = std::thread::Builder::new()
                .name(FREEING_THREAD.into())
                .spawn(move || {
                    run_only_on_idle_cores();
                    drop(state)
                });
        }
    }
}

/// Puts the calling thread in the scheduler's idle class (Linux's `SCHED_IDLE`): it runs only
/// on a core no other thread wants. Freeing a worker's state is work nothing waits for, yet
/// it starts as that worker's dataflow ends, while the other workers and the sink threads are
/// still finishing theirs; with a worker on every core it would take turns with them and
/// delay the run's end by several milliseconds. Returns whether the class was set (not where
/// the system has no such class).
fn run_only_on_idle_cores() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 names the calling thread, and `param` outlives the call.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Per time not yet complete: its capability, the containers of record operations received
/// (kept whole, not copied op by op), and its lookup changes.
type PendingTimes = BTreeMap<
    u64,
    (
        Capability<u64>,
        Vec<Vec<KeyedOp>>,
        Vec<(LookupChange, isize)>,
    ),
>;

/// The join operator: record operations (exchanged to the worker owning their id) and pattern
/// lookups (broadcast to every worker) in; each completed time's row updates out, on the
/// worker that owns the rows.
pub fn join_records_with_dims<'scope>(
    ops: Stream<'scope, u64, Vec<KeyedOp>>,
    lookups: VecCollection<'scope, u64, LookupChange, isize>,
    rows: RowSpec,
    stats: Arc<DataflowStats>,
    restored: Option<JoinState>,
    checkpoints: Option<CheckpointHooks>,
    write_only_touched: bool,
) -> Stream<'scope, u64, Vec<RowUpdate>> {
    let lookups = lookups.inner.broadcast();
    ops.binary_frontier(
        lookups,
        by_owner(),
        Pipeline,
        "RecordsJoinDims",
        move |_capability, _info| {
            let RowSpec {
                fix_result_desc,
                lookups: shape,
            } = rows;
            let mut state = FreedElsewhere(Some(restored.unwrap_or_default().with_shape(shape)));
            if write_only_touched {
                state.write_only_touched();
            }
            let mut pending: PendingTimes = BTreeMap::new();
            let mut next_boundary: Option<u64> = None;
            let mut last_snapshot: Option<Arc<Vec<u8>>> = None;
            // Snapshots every checkpoint boundary below `limit`: all times up to each are
            // processed and none after.
            let mut take_snapshots =
                move |state: &JoinState, dirty: &mut bool, next: &mut Option<u64>, limit: u64| {
                    let Some(hooks) = &checkpoints else {
                        return;
                    };
                    let every = hooks.every.max(1);
                    let boundary = next.get_or_insert_with(|| {
                        (limit / every)
                            .saturating_mul(every)
                            .saturating_add(every - 1)
                    });
                    // Boundaries crossed with nothing processed between them hold the same state:
                    // only the last one below `limit` is taken (the clock may jump far ahead).
                    if *boundary < limit && limit - *boundary > every {
                        *boundary += (limit - 1 - *boundary) / every * every;
                    }
                    while *boundary < limit {
                        let bytes = match &last_snapshot {
                            Some(bytes) if !*dirty => bytes.clone(),
                            _ => Arc::new(state.snapshot()),
                        };
                        *dirty = false;
                        last_snapshot = Some(bytes.clone());
                        hooks.snapshots.borrow_mut().insert(*boundary, bytes);
                        *boundary = boundary.saturating_add(every);
                    }
                };
            let mut dirty = true;
            let mut reported_keys = 0u64;
            let (mut reported_bytes, mut reported_fixes) = (0u64, 0u64);
            let mut last_census: Option<Instant> = None;
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
                    entry.1.push(std::mem::take(data));
                });
                lookups.for_each(|cap, data| {
                    for (change, time, diff) in data.drain(..) {
                        pending
                            .entry(time)
                            .or_insert_with(|| (cap.delayed(&time, 0), Vec::new(), Vec::new()))
                            .2
                            .push((change, diff));
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    let time = *entry.key();
                    if ops_frontier.less_equal(&time) || lookups_frontier.less_equal(&time) {
                        break;
                    }
                    take_snapshots(&state, &mut dirty, &mut next_boundary, time);
                    let (cap, time_ops, time_lookups) = entry.remove();
                    dirty = true;
                    let started = Instant::now();
                    let live_before = state.live;
                    let mut updates = state.advance(time_ops, time_lookups, &fix_result_desc);
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
                        output.session(&cap).give_container(&mut updates);
                    }
                }
                let frontier = ops_frontier
                    .frontier()
                    .first()
                    .into_iter()
                    .chain(lookups_frontier.frontier().first())
                    .min()
                    .copied();
                match frontier {
                    Some(frontier) => {
                        take_snapshots(&state, &mut dirty, &mut next_boundary, frontier)
                    }
                    None if !final_report => {
                        // The end of input: one last snapshot, under a label all workers share.
                        next_boundary = Some(FINAL_EPOCH);
                        take_snapshots(&state, &mut dirty, &mut next_boundary, FINAL_EPOCH + 1);
                    }
                    None => {}
                }
                let ended = ops_frontier.is_empty() && lookups_frontier.is_empty();
                if (ended && !final_report)
                    || last_census.is_none_or(|at| at.elapsed() >= CENSUS_INTERVAL)
                {
                    final_report |= ended;
                    last_census = Some(Instant::now());
                    let (bytes, fixes) = (
                        state.records.heap_bytes() as u64,
                        state.records.fixes() as u64,
                    );
                    stats
                        .bytes
                        .fetch_add(bytes.wrapping_sub(reported_bytes), Ordering::Relaxed);
                    stats
                        .fixes
                        .fetch_add(fixes.wrapping_sub(reported_fixes), Ordering::Relaxed);
                    (reported_bytes, reported_fixes) = (bytes, fixes);
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::process::{AddEvent, DeleteEvent, EventStamp, RecordOp};

    fn ops(id: u64) -> Vec<KeyedOp> {
        let stamp = |ts: i64| EventStamp {
            timestamp: ts,
            event_id: format!("e{ts}").into(),
        };
        vec![
            KeyedOp {
                id,
                write: true,
                op: RecordOp::Add(AddEvent {
                    stamp: stamp(1),
                    event_type: "wrongbook_add".into(),
                    wrong_id: id.to_string().into(),
                    user_id: "u".into(),
                    question_id: "q".into(),
                    subject: None,
                    subject_name: None,
                    pattern_id: Some("p".into()),
                    chapter_id: None,
                    question: None,
                    collect_time: 1,
                }),
            },
            KeyedOp {
                id,
                write: true,
                op: RecordOp::Delete(DeleteEvent {
                    stamp: stamp(2),
                    wrong_id: id.to_string().into(),
                }),
            },
        ]
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_freeing_thread_runs_only_on_idle_cores() {
        let policy = std::thread::spawn(|| {
            assert!(run_only_on_idle_cores(), "setting SCHED_IDLE failed");
            // SAFETY: pid 0 names the calling thread.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // Only that thread: the caller's class is unchanged.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    #[test]
    fn a_restored_state_deletes_rows_a_killed_run_may_have_left() {
        let desc = HashMap::new();
        // Fresh: an add and its delete in one time leave no row and write nothing.
        assert!(JoinState::default()
            .advance([ops(7)], Vec::new(), &desc)
            .is_empty());
        // Restored: the run that was killed may have written the add's row; delete it.
        let snapshot: JoinSnapshot =
            postcard::from_bytes(&JoinState::default().snapshot()).unwrap();
        let mut restored = JoinState::restore(vec![snapshot], 0, 1);
        assert_eq!(
            restored.advance([ops(7)], Vec::new(), &desc),
            vec![(7, None)]
        );
    }

    #[test]
    fn restore_keeps_each_workers_ids_and_the_lookups() {
        let desc = HashMap::new();
        let mut state = JoinState::default();
        let mut all_ops = ops(1);
        all_ops.truncate(1);
        let mut more = ops(2);
        more.truncate(1);
        all_ops.extend(more);
        let lookup = PatternLookup {
            name: Some("n".into()),
            ..PatternLookup::default()
        };
        state.advance(
            [all_ops],
            vec![(LookupChange::Pattern("p".into(), lookup.clone().into()), 1)],
            &desc,
        );
        let part = || postcard::from_bytes::<JoinSnapshot>(&state.snapshot()).unwrap();
        let worker0 = JoinState::restore(vec![part()], 0, 2);
        let worker1 = JoinState::restore(vec![part()], 1, 2);
        assert!(worker0.records.visible(2).is_some() && worker0.records.visible(1).is_none());
        assert!(worker1.records.visible(1).is_some() && worker1.records.visible(2).is_none());
        assert_eq!(worker1.lookups.get("p").map(|l| &**l), Some(&lookup));
        assert_eq!((worker0.live, worker1.live), (1, 1));
    }

    fn add(id: u64, timestamp: i64, pattern: Option<&str>) -> KeyedOp {
        let mut op = ops(id).remove(0);
        if let RecordOp::Add(add) = &mut op.op {
            add.stamp.timestamp = timestamp;
            add.pattern_id = pattern.map(Into::into);
        }
        op
    }

    fn delete(id: u64, timestamp: i64) -> KeyedOp {
        let mut op = ops(id).remove(1);
        if let RecordOp::Delete(delete) = &mut op.op {
            delete.stamp.timestamp = timestamp;
        }
        op
    }

    #[test]
    fn a_pattern_change_touches_exactly_the_records_that_have_the_pattern() {
        // Records join, leave and rejoin pattern `p` (by a new add, a delete, another pattern)
        // over many times; after each, renaming `p` must rewrite exactly the records that have
        // it then, each once, however stale the pattern's id list has become.
        let desc = HashMap::new();
        let mut state = JoinState::default();
        let mut model: BTreeMap<u64, Option<&str>> = BTreeMap::new();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for round in 1..=60i64 {
            let mut ops = Vec::new();
            for step in 0..8 {
                let id = next(12);
                let timestamp = round * 100 + step;
                match next(4) {
                    0 => {
                        ops.push(delete(id, timestamp));
                        model.insert(id, None);
                    }
                    kind => {
                        let pattern = [None, Some("p"), Some("q")][kind as usize - 1];
                        ops.push(add(id, timestamp, pattern));
                        model.insert(id, Some(pattern.unwrap_or("-")));
                    }
                }
            }
            state.advance([ops], Vec::new(), &desc);
            let rename = PatternLookup {
                name: Some(format!("name {round}")),
                ..PatternLookup::default()
            };
            let rows = state.advance(
                Vec::new(),
                vec![(LookupChange::Pattern("p".into(), rename.into()), 1)],
                &desc,
            );
            let mut rewritten: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
            rewritten.sort_unstable();
            let with_p: Vec<u64> = model
                .iter()
                .filter(|(_, pattern)| **pattern == Some("p"))
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(rewritten, with_p, "round {round}");
        }
    }
}
