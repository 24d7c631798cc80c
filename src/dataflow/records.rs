//! Record state (SPEC §4): the current winner per key, not every event.
//!
//! For each wrong record we keep only its latest lifecycle event (add or delete, by
//! (`timestamp`, `eventId`)) and its latest fix (by (`fixTime`, `eventId`)). A record exists
//! iff its lifecycle winner is an add. State is therefore O(records), whatever the history
//! length, and it is exactly what a checkpoint must save. The winners are maxima of total
//! orders (exact ties are broken by kind and content, see [`WrongRecord::is_won_by`]), so the
//! order in which operations are applied does not matter, and duplicates compare equal to the
//! winner and change nothing. [`crate::dataflow::join`] owns a store per worker and applies each
//! time's operations in time order.
//!
//! Two wrong ids can share a wide-table id (`"7"` and `"007"`, or an xxh3 collision). The table
//! holds one row per id, so the row shown is that of the live record with the least wrong id:
//! deterministic, and independent of arrival order.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::dataflow::id_table::{Entry, IdTable};
use crate::dataflow::process::{AddEvent, DeleteEvent, EventStamp, FixEvent, RecordOp};
use crate::dataflow::{prefetch_lines, FastMap};
use crate::spec::same_name;

/// A live record: its add and its latest fix, borrowed from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub add: &'a AddEvent,
    pub fix: Option<&'a FixEvent>,
}

/// The lifecycle winner of one wrong id, or, before any add or delete arrived, the wrong id
/// alone.
// Live records (`Added`) are the common case: boxing them would add a pointer and an
// allocation to nearly every record to save space on the few deleted ones.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lifecycle {
    Added(AddEvent),
    Deleted(DeleteEvent),
    /// Only fixes so far (they arrive before their add).
    Pending(CompactString),
}

impl Lifecycle {
    fn wrong_id(&self) -> &str {
        match self {
            Lifecycle::Added(add) => &add.wrong_id,
            Lifecycle::Deleted(delete) => &delete.wrong_id,
            Lifecycle::Pending(wrong_id) => wrong_id,
        }
    }
}

/// The heap a string holds, in bytes: none when it is short enough to live inline.
fn string_heap_bytes(s: &CompactString) -> usize {
    if s.is_heap_allocated() {
        s.capacity()
    } else {
        0
    }
}

/// Everything known about one wrong id. Its wrong id is stored once, in its lifecycle: state
/// is most of the memory, and ids are in every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "StoredRecord", from = "StoredRecord")]
struct WrongRecord {
    lifecycle: Lifecycle,
    fix: Option<FixEvent>,
}

impl WrongRecord {
    /// What a slot holds after its record moved to another store.
    const MOVED: WrongRecord = WrongRecord {
        lifecycle: Lifecycle::Pending(CompactString::const_new("")),
        fix: None,
    };

    fn wrong_id(&self) -> &str {
        self.lifecycle.wrong_id()
    }

    /// Whether `op` would replace a winner (so the visible record may change).
    ///
    /// Lifecycle events are ordered by (`timestamp`, `eventId`) as SPEC §4 says, and that
    /// order is made total so that no tie is left to arrival order: on an exact tie a delete
    /// beats an add, and of two different adds the greater by content wins (`AddEvent`'s
    /// field order). Fixes likewise, by [`FixEvent::order_key`]. An event equal to the
    /// winner (a duplicate) never wins.
    fn is_won_by(&self, op: &RecordOp) -> bool {
        match op {
            RecordOp::Add(add) => match &self.lifecycle {
                Lifecycle::Pending(_) => true,
                Lifecycle::Added(winner) => add > winner,
                Lifecycle::Deleted(winner) => add.stamp > winner.stamp,
            },
            RecordOp::Delete(delete) => match &self.lifecycle {
                Lifecycle::Pending(_) => true,
                Lifecycle::Added(winner) => delete.stamp >= winner.stamp,
                Lifecycle::Deleted(winner) => delete.stamp > winner.stamp,
            },
            RecordOp::Fix { fix, .. } => self
                .fix
                .as_ref()
                .is_none_or(|winner| fix.order_key() > winner.order_key()),
        }
    }

    /// The record of a wrong id whose first operation is `op`.
    fn from_op(op: RecordOp) -> WrongRecord {
        match op {
            RecordOp::Add(add) => WrongRecord {
                lifecycle: Lifecycle::Added(add),
                fix: None,
            },
            RecordOp::Delete(delete) => WrongRecord {
                lifecycle: Lifecycle::Deleted(delete),
                fix: None,
            },
            RecordOp::Fix { wrong_id, fix } => WrongRecord {
                lifecycle: Lifecycle::Pending(wrong_id),
                fix: Some(fix),
            },
        }
    }

    /// The heap its lifecycle's strings hold, in bytes.
    fn lifecycle_heap_bytes(&self) -> usize {
        match &self.lifecycle {
            Lifecycle::Added(add) => {
                string_heap_bytes(&add.stamp.event_id)
                    + string_heap_bytes(&add.wrong_id)
                    + string_heap_bytes(&add.user_id)
                    + string_heap_bytes(&add.question_id)
                    + [
                        &add.subject,
                        &add.subject_name,
                        &add.pattern_id,
                        &add.chapter_id,
                        &add.question,
                    ]
                    .into_iter()
                    .map(|s| s.as_ref().map_or(0, string_heap_bytes))
                    .sum::<usize>()
            }
            Lifecycle::Deleted(delete) => {
                string_heap_bytes(&delete.stamp.event_id) + string_heap_bytes(&delete.wrong_id)
            }
            Lifecycle::Pending(wrong_id) => string_heap_bytes(wrong_id),
        }
    }

    /// The heap its fix's strings hold, in bytes.
    fn fix_heap_bytes(&self) -> usize {
        self.fix.as_ref().map_or(0, |fix| {
            string_heap_bytes(&fix.stamp.event_id) + string_heap_bytes(&fix.fix_id)
        })
    }

    fn heap_bytes(&self) -> usize {
        self.lifecycle_heap_bytes() + self.fix_heap_bytes()
    }

    /// Makes `op` its winner (the caller has checked [`WrongRecord::is_won_by`]).
    fn apply(&mut self, op: RecordOp) {
        match op {
            RecordOp::Add(add) => self.lifecycle = Lifecycle::Added(add),
            RecordOp::Delete(del) => self.lifecycle = Lifecycle::Deleted(del),
            RecordOp::Fix { fix, .. } => self.fix = Some(fix),
        }
    }

    fn live_add(&self) -> Option<&AddEvent> {
        match &self.lifecycle {
            Lifecycle::Added(add) => Some(add),
            _ => None,
        }
    }
}

/// A [`WrongRecord`] as checkpoints store it (the layout checkpoints have always had): the
/// wrong id first, a delete as its stamp, and a fix with the wrong id in it.
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    wrong_id: CompactString,
    lifecycle: Option<StoredLifecycle>,
    fix: Option<StoredFix>,
}

#[derive(Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
enum StoredLifecycle {
    Added(AddEvent),
    Deleted(EventStamp),
}

#[derive(Serialize, Deserialize)]
struct StoredFix {
    fix_time_ms: i64,
    stamp: EventStamp,
    event_type: crate::dataflow::event_type::EventType,
    wrong_id: CompactString,
    fix_id: CompactString,
    fix_result: i64,
}

impl From<WrongRecord> for StoredRecord {
    fn from(record: WrongRecord) -> StoredRecord {
        let wrong_id: CompactString = record.wrong_id().into();
        StoredRecord {
            fix: record.fix.map(|fix| StoredFix {
                fix_time_ms: fix.fix_time_ms,
                stamp: fix.stamp,
                event_type: fix.event_type,
                wrong_id: wrong_id.clone(),
                fix_id: fix.fix_id,
                fix_result: fix.fix_result,
            }),
            lifecycle: match record.lifecycle {
                Lifecycle::Added(add) => Some(StoredLifecycle::Added(add)),
                Lifecycle::Deleted(delete) => Some(StoredLifecycle::Deleted(delete.stamp)),
                Lifecycle::Pending(_) => None,
            },
            wrong_id,
        }
    }
}

impl From<StoredRecord> for WrongRecord {
    fn from(stored: StoredRecord) -> WrongRecord {
        WrongRecord {
            fix: stored.fix.map(|fix| FixEvent {
                fix_time_ms: fix.fix_time_ms,
                stamp: fix.stamp,
                event_type: fix.event_type,
                fix_id: fix.fix_id,
                fix_result: fix.fix_result,
            }),
            lifecycle: match stored.lifecycle {
                Some(StoredLifecycle::Added(add)) => Lifecycle::Added(add),
                Some(StoredLifecycle::Deleted(stamp)) => Lifecycle::Deleted(DeleteEvent {
                    stamp,
                    wrong_id: stored.wrong_id,
                }),
                None => Lifecycle::Pending(stored.wrong_id),
            },
        }
    }
}

/// The record state of the ids one worker owns.
///
/// Records live in a [`Slab`] and the map holds only an id's index there: one allocation per
/// few thousand records instead of one per record, and 16 bytes of map slot per id (an
/// [`IdTable`], whose slots the join can prefetch). An id
/// almost always has exactly one wrong record; the few with more (`"7"` and `"007"`) keep the
/// others' indexes in `more`.
#[derive(Debug, Default, Clone)]
pub struct RecordStore {
    /// Per wide-table id, the index of its first wrong record.
    by_id: IdTable,
    /// Per id with several wrong records, the indexes of all but the first.
    more: FastMap<u64, Vec<u32>>,
    records: Slab,
}

/// Records in chunks of [`Slab::CHUNK`] that never move once allocated: an index stays valid,
/// and growing never copies what is stored (one vector would copy every record, and for a
/// moment hold twice their memory, each time it doubled).
///
/// It keeps count, as records come and change, of the heap their strings hold and of the
/// records with a fix: the census of state (every few seconds, and at the end of input) then
/// reads two numbers instead of walking every record, which held up its worker ~45 ns per
/// record: 16 ms at the end of a 1M-event replay, and at 2M records some 90 ms every five
/// seconds.
#[derive(Debug, Default, Clone)]
struct Slab {
    chunks: Vec<Vec<WrongRecord>>,
    /// Heap held by the records' strings, in bytes.
    string_bytes: usize,
    /// Records with a fix.
    fixes: usize,
}

impl Slab {
    const CHUNK: usize = 4096;

    fn push(&mut self, record: WrongRecord) -> u32 {
        self.string_bytes += record.heap_bytes();
        self.fixes += usize::from(record.fix.is_some());
        if self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.len() == Self::CHUNK)
        {
            self.chunks.push(Vec::with_capacity(Self::CHUNK));
        }
        let full_chunks = self.chunks.len() - 1;
        let chunk = self
            .chunks
            .last_mut()
            .expect("a chunk with room was just ensured");
        chunk.push(record);
        let index = full_chunks * Self::CHUNK + chunk.len() - 1;
        u32::try_from(index).expect("fewer than 4G wrong records per worker")
    }

    fn get(&self, index: u32) -> &WrongRecord {
        let index = index as usize;
        &self.chunks[index / Self::CHUNK][index % Self::CHUNK]
    }

    fn get_mut(&mut self, index: u32) -> &mut WrongRecord {
        let index = index as usize;
        &mut self.chunks[index / Self::CHUNK][index % Self::CHUNK]
    }

    /// Makes `op` the winner of the record at `index` (see [`WrongRecord::apply`]).
    fn apply(&mut self, index: u32, op: RecordOp) {
        let record = self.get_mut(index);
        // An operation replaces the lifecycle or the fix: only that part's strings change.
        let part_bytes = match &op {
            RecordOp::Fix { .. } => WrongRecord::fix_heap_bytes,
            RecordOp::Add(_) | RecordOp::Delete(_) => WrongRecord::lifecycle_heap_bytes,
        };
        let (bytes_before, had_fix) = (part_bytes(record), record.fix.is_some());
        record.apply(op);
        let (bytes_after, has_fix) = (part_bytes(record), record.fix.is_some());
        self.string_bytes = self.string_bytes + bytes_after - bytes_before;
        self.fixes = self.fixes + usize::from(has_fix) - usize::from(had_fix);
    }

    /// Takes the record at `index` out, leaving [`WrongRecord::MOVED`].
    fn take(&mut self, index: u32) -> WrongRecord {
        let record = std::mem::replace(self.get_mut(index), WrongRecord::MOVED);
        self.string_bytes -= record.heap_bytes();
        self.fixes -= usize::from(record.fix.is_some());
        record
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &WrongRecord> {
        self.chunks.iter().flatten()
    }

    /// The chunks and the records' strings.
    fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Vec<WrongRecord>>()
            + self.chunks.len() * Self::CHUNK * std::mem::size_of::<WrongRecord>()
            + self.string_bytes
    }
}

/// Where an id's records are in a [`RecordStore`]: found by one lookup, it reads the id again
/// without another ([`RecordStore::visible_at`]). It stays valid for the store's life, because
/// records never move and ids are never dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place(std::num::NonZeroU32);

impl Place {
    /// The place of the id whose first record is at `index` (stored plus one, so that an
    /// `Option<Place>` takes four bytes).
    fn of(index: u32) -> Place {
        let stored = std::num::NonZeroU32::new(index.wrapping_add(1));
        Place(stored.expect("fewer than 4G wrong records per worker"))
    }

    fn index(self) -> u32 {
        self.0.get() - 1
    }
}

/// What applying an operation did to an id's visible record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The operation did not win: the visible record is as it was.
    Unchanged,
    /// The operation won. `before` and `after` are the pattern of the record visible before
    /// and after it (`None` when none was or is); the visible record now is
    /// [`RecordStore::visible_at`] `place`.
    Changed {
        before: Option<Option<CompactString>>,
        after: Option<Option<CompactString>>,
        place: Place,
    },
}

impl RecordStore {
    /// Starts loading the first record of `id` (and its place in the map) into the cache, for
    /// a lookup of it soon after. Records are many and touched in no order: without this, each
    /// lookup waits for memory in turn.
    #[inline]
    pub fn prefetch(&self, id: u64) {
        if let Some(place) = self.place(id) {
            self.prefetch_at(place);
        }
    }

    /// Starts loading the id map's slot of `id` into the cache, for a
    /// [`RecordStore::prefetch`] of it soon after, which then need not wait for the map.
    #[inline]
    pub fn prefetch_slot(&self, id: u64) {
        self.by_id.prefetch(id);
    }

    /// [`RecordStore::prefetch`] of the id at `place`: without the map's lookup, which waits for
    /// memory of its own.
    #[inline]
    pub fn prefetch_at(&self, place: Place) {
        prefetch_lines(self.records.get(place.index()));
    }

    /// Where the records of `id` are, when it has any.
    #[inline]
    pub fn place(&self, id: u64) -> Option<Place> {
        self.by_id.get(id).map(Place::of)
    }

    /// The visible record of `id`: the live one with the least wrong id.
    pub fn visible(&self, id: u64) -> Option<Record<'_>> {
        self.visible_at(id, self.place(id)?)
    }

    /// The visible record of `id`, whose records are at `place` (from [`RecordStore::place`] or
    /// [`Applied::Changed`] for the same id).
    pub fn visible_at(&self, id: u64, place: Place) -> Option<Record<'_>> {
        self.visible_from(id, place.index())
    }

    /// The wrong records of `id`, whose first is at `first`.
    fn records_of(&self, id: u64, first: u32) -> impl Iterator<Item = &WrongRecord> {
        let more = if self.more.is_empty() {
            None
        } else {
            self.more.get(&id)
        };
        std::iter::once(first)
            .chain(more.into_iter().flatten().copied())
            .map(|index| self.records.get(index))
    }

    /// The visible record of `id`, whose first wrong record is at `first`. Inlined for an id
    /// with one wrong record, nearly every id (as a call, its two or three uses per operation
    /// cost ~40 instructions each); an id with several is a call.
    #[inline(always)]
    fn visible_from(&self, id: u64, first: u32) -> Option<Record<'_>> {
        if self.more.is_empty() || !self.more.contains_key(&id) {
            let record = self.records.get(first);
            return record.live_add().map(|add| Record {
                add,
                fix: record.fix.as_ref(),
            });
        }
        self.visible_among_several(id, first)
    }

    /// [`RecordStore::visible_from`] of an id with several wrong records.
    #[inline(never)]
    fn visible_among_several(&self, id: u64, first: u32) -> Option<Record<'_>> {
        self.records_of(id, first)
            .filter_map(|r| r.live_add().map(|add| (r, add)))
            .min_by(|a, b| a.0.wrong_id().cmp(b.0.wrong_id()))
            .map(|(r, add)| Record {
                add,
                fix: r.fix.as_ref(),
            })
    }

    /// Adds `record` as a wrong record of `id` (its first or a further one); returns its index.
    fn push(&mut self, id: u64, record: WrongRecord) -> u32 {
        let index = self.records.push(record);
        match self.by_id.entry(id) {
            Entry::Vacant(vacant) => self.by_id.insert(vacant, index),
            Entry::Present(_) => self.more.entry(id).or_default().push(index),
        }
        index
    }

    /// Applies an operation on `id`. Operations may come in any order: the winners are maxima.
    pub fn apply(&mut self, id: u64, op: RecordOp) -> Applied {
        let wrong_id = op.wrong_id();
        // One lookup finds the id or places its new record (what `push` does, without looking
        // the id up a second time on the hot path).
        let (first, index) = match self.by_id.entry(id) {
            Entry::Vacant(vacant) => {
                // A new id: any operation wins over nothing, so its record is the operation's
                // (built once, in its slot), and nothing was visible before.
                let index = self.records.push(WrongRecord::from_op(op));
                self.by_id.insert(vacant, index);
                let after = self
                    .visible_from(id, index)
                    .map(|r| r.add.pattern_id.clone());
                return Applied::Changed {
                    before: None,
                    after,
                    place: Place::of(index),
                };
            }
            Entry::Present(first) => {
                // Compared inline: as a call to `memcmp`, once per operation, it cost more.
                if same_name(
                    self.records.get(first).wrong_id().as_bytes(),
                    wrong_id.as_bytes(),
                ) {
                    (first, first)
                } else {
                    // Another wrong id of the same id: rare.
                    let known = self.more.get(&id).and_then(|more| {
                        more.iter()
                            .copied()
                            .find(|&index| self.records.get(index).wrong_id() == wrong_id)
                    });
                    let index = known.unwrap_or_else(|| {
                        let pending = WrongRecord {
                            lifecycle: Lifecycle::Pending(wrong_id.into()),
                            fix: None,
                        };
                        self.push(id, pending)
                    });
                    (first, index)
                }
            }
        };
        if !self.records.get(index).is_won_by(&op) {
            return Applied::Unchanged;
        }
        let before = self
            .visible_from(id, first)
            .map(|r| r.add.pattern_id.clone());
        self.records.apply(index, op);
        let after = self
            .visible_from(id, first)
            .map(|r| r.add.pattern_id.clone());
        Applied::Changed {
            before,
            after,
            place: Place::of(first),
        }
    }

    /// Moves into this store the ids of `other` that `keep` accepts (restoring a checkpoint
    /// taken with another worker count).
    pub fn absorb(&mut self, mut other: RecordStore, keep: impl Fn(u64) -> bool) {
        let by_id = std::mem::take(&mut other.by_id);
        for (id, first) in by_id.iter().filter(|&(id, _)| keep(id)) {
            let more = other.more.remove(&id).unwrap_or_default();
            for index in std::iter::once(first).chain(more) {
                let record = other.records.take(index);
                self.push(id, record);
            }
        }
    }

    /// Every visible record, by id, in no particular order.
    pub fn visible_records(&self) -> impl Iterator<Item = (u64, Record<'_>)> {
        self.by_id
            .iter()
            .filter_map(|(id, first)| Some((id, self.visible_from(id, first)?)))
    }

    /// The number of wrong records that hold a fix.
    pub fn fixes(&self) -> usize {
        self.records.fixes
    }

    /// An estimate of the heap the store holds, in bytes: table slots, records and strings
    /// (short strings live inline; only longer ones hold heap).
    pub fn heap_bytes(&self) -> usize {
        let more: usize = self
            .more
            .values()
            .map(|indexes| std::mem::size_of::<(u64, Vec<u32>)>() + 4 * indexes.capacity())
            .sum();
        self.by_id.heap_bytes() + more + self.records.heap_bytes()
    }

    /// The number of ids with state (live, deleted or fix-only).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Checkpoints hold a store as they always have: a map from id to the sequence of its wrong
/// records, written straight from the slab and read straight into one.
impl Serialize for RecordStore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        struct Ids<'a>(&'a RecordStore);
        impl Serialize for Ids<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let store = self.0;
                // The length first: formats like postcard need it.
                let mut map = serializer.serialize_map(Some(store.by_id.len()))?;
                for (id, first) in store.by_id.iter() {
                    map.serialize_entry(&id, &RecordsOf(store, id, first))?;
                }
                map.end()
            }
        }
        #[derive(Clone, Copy)]
        struct RecordsOf<'a>(&'a RecordStore, u64, u32);
        impl Serialize for RecordsOf<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let RecordsOf(store, id, first) = *self;
                let more = store.more.get(&id).map_or(0, Vec::len);
                let mut seq = serializer.serialize_seq(Some(1 + more))?;
                for record in store.records_of(id, first) {
                    seq.serialize_element(record)?;
                }
                seq.end()
            }
        }

        let mut state = serializer.serialize_struct("RecordStore", 1)?;
        state.serialize_field("by_id", &Ids(self))?;
        state.end()
    }
}

impl<'de> Deserialize<'de> for RecordStore {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Reads the id map entry by entry into a store, so that a restore never holds the
        /// records twice.
        struct Ids(RecordStore);
        impl<'de> Deserialize<'de> for Ids {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visit;
                impl<'de> serde::de::Visitor<'de> for Visit {
                    type Value = Ids;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a map from id to wrong records")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Ids, A::Error> {
                        let mut store = RecordStore::default();
                        while let Some((id, records)) = map.next_entry::<u64, Vec<WrongRecord>>()? {
                            for record in records {
                                store.push(id, record);
                            }
                        }
                        Ok(Ids(store))
                    }
                }
                deserializer.deserialize_map(Visit)
            }
        }
        #[derive(Deserialize)]
        #[serde(rename = "RecordStore")]
        struct Stored {
            by_id: Ids,
        }
        Ok(Stored::deserialize(deserializer)?.by_id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(timestamp: i64, event_id: &str) -> EventStamp {
        EventStamp {
            timestamp,
            event_id: event_id.into(),
        }
    }

    fn add(wrong_id: &str, ts: i64, user: &str) -> RecordOp {
        RecordOp::Add(AddEvent {
            stamp: stamp(ts, &format!("a{ts}")),
            event_type: "wrongbook_add".into(),
            wrong_id: wrong_id.into(),
            user_id: user.into(),
            question_id: "q".into(),
            subject: None,
            subject_name: None,
            pattern_id: None,
            chapter_id: None,
            question: None,
            collect_time: ts,
        })
    }

    fn delete(wrong_id: &str, ts: i64) -> RecordOp {
        RecordOp::Delete(DeleteEvent {
            stamp: stamp(ts, &format!("d{ts}")),
            wrong_id: wrong_id.into(),
        })
    }

    fn fix(wrong_id: &str, fix_time_ms: i64) -> RecordOp {
        RecordOp::Fix {
            wrong_id: wrong_id.into(),
            fix: FixEvent {
                fix_time_ms,
                stamp: stamp(fix_time_ms, &format!("f{fix_time_ms}")),
                event_type: "wrongbook_fix".into(),
                fix_id: "fx".into(),
                fix_result: 1,
            },
        }
    }

    /// Applies `ops` on `id` one after the other.
    fn apply_all(store: &mut RecordStore, id: u64, ops: impl IntoIterator<Item = RecordOp>) {
        for op in ops {
            store.apply(id, op);
        }
    }

    /// Each id's wrong records, in the order they came.
    fn groups(store: &RecordStore) -> std::collections::BTreeMap<u64, Vec<WrongRecord>> {
        store
            .by_id
            .iter()
            .map(|(id, first)| (id, store.records_of(id, first).cloned().collect()))
            .collect()
    }

    fn user(store: &RecordStore, id: u64) -> Option<String> {
        store.visible(id).map(|r| r.add.user_id.to_string())
    }

    #[test]
    fn latest_lifecycle_event_wins_in_any_order() {
        let mut forward = RecordStore::default();
        let mut backward = RecordStore::default();
        let ops = vec![add("1", 10, "u1"), delete("1", 20), add("1", 30, "u3")];
        apply_all(&mut forward, 1, ops.clone());
        apply_all(&mut backward, 1, ops.into_iter().rev());
        assert_eq!(user(&forward, 1).as_deref(), Some("u3"));
        assert_eq!(user(&forward, 1), user(&backward, 1));

        let mut store = RecordStore::default();
        apply_all(&mut store, 1, [add("1", 10, "u1"), delete("1", 20)]);
        assert_eq!(user(&store, 1), None);
        assert_eq!(
            store.apply(1, add("1", 15, "late")),
            Applied::Unchanged,
            "an add older than the delete changes nothing"
        );
    }

    /// Every order of `ops`, applied to a fresh store: what each leaves visible on id 1.
    fn outcomes_of_every_order(ops: &[RecordOp]) -> Vec<Option<(String, Option<i64>)>> {
        fn permute(ops: &mut Vec<RecordOp>, k: usize, out: &mut Vec<Vec<RecordOp>>) {
            if k == ops.len() {
                out.push(ops.clone());
            }
            for i in k..ops.len() {
                ops.swap(k, i);
                permute(ops, k + 1, out);
                ops.swap(k, i);
            }
        }
        let mut orders = Vec::new();
        permute(&mut ops.to_vec(), 0, &mut orders);
        orders
            .into_iter()
            .map(|order| {
                let mut store = RecordStore::default();
                apply_all(&mut store, 1, order);
                store
                    .visible(1)
                    .map(|r| (r.add.user_id.to_string(), r.fix.map(|f| f.fix_result)))
            })
            .collect()
    }

    /// SPEC §4: results depend only on the set of events, even when two lifecycle events (or
    /// two fixes) share their timestamp and event id.
    #[test]
    fn exact_ties_are_decided_the_same_in_any_order() {
        let tied_add = |user: &str| {
            let RecordOp::Add(mut add) = add("1", 10, user) else {
                unreachable!()
            };
            add.stamp = stamp(10, "e");
            RecordOp::Add(add)
        };
        let tied_delete = RecordOp::Delete(DeleteEvent {
            stamp: stamp(10, "e"),
            wrong_id: "1".into(),
        });
        let tied_fix = |result: i64| {
            let RecordOp::Fix { wrong_id, mut fix } = fix("1", 20) else {
                unreachable!()
            };
            fix.stamp.event_id = "e".into();
            fix.fix_result = result;
            RecordOp::Fix { wrong_id, fix }
        };

        let add_and_delete = outcomes_of_every_order(&[tied_add("u1"), tied_delete.clone()]);
        assert!(
            add_and_delete.iter().all(Option::is_none),
            "a delete beats an add with the same stamp: {add_and_delete:?}"
        );

        let two_adds = outcomes_of_every_order(&[tied_add("u1"), tied_add("u2"), tied_add("u1")]);
        assert!(
            two_adds.iter().all(|o| o == &Some(("u2".into(), None))),
            "the greater add wins whatever the order: {two_adds:?}"
        );

        let two_fixes = outcomes_of_every_order(&[tied_add("u1"), tied_fix(0), tied_fix(1)]);
        assert!(
            two_fixes.iter().all(|o| o == &Some(("u1".into(), Some(1)))),
            "the greater fix wins whatever the order: {two_fixes:?}"
        );
    }

    #[test]
    fn checkpoints_keep_their_layout_and_round_trip() {
        let mut store = RecordStore::default();
        apply_all(
            &mut store,
            7,
            [
                add("7", 1, "plain"),
                add("007", 1, "padded"),
                delete("007", 2),
            ],
        );
        apply_all(&mut store, 8, [add("8", 5, "u8"), fix("8", 6)]);
        store.apply(10, fix("10", 4));
        let bytes = postcard::to_stdvec(&store).unwrap();
        let back: RecordStore = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(groups(&back), groups(&store));
        assert_eq!(
            groups(&back)[&7][1].wrong_id(),
            "007",
            "a delete keeps its wrong id"
        );
        assert_eq!(
            groups(&back)[&10][0].wrong_id(),
            "10",
            "so does a fix alone"
        );
        assert!(back.visible(10).is_none());
        assert_eq!(back.visible(8).unwrap().fix.unwrap().fix_time_ms, 6);

        // The layout checkpoints were written in before records stopped copying their id.
        #[derive(Serialize)]
        #[allow(dead_code, clippy::large_enum_variant)]
        enum OldLifecycle {
            Added(AddEvent),
            Deleted(EventStamp),
        }
        #[derive(Serialize)]
        struct OldFix {
            fix_time_ms: i64,
            stamp: EventStamp,
            event_type: String,
            wrong_id: String,
            fix_id: String,
            fix_result: i64,
        }
        #[derive(Serialize)]
        struct OldRecord {
            wrong_id: String,
            lifecycle: Option<OldLifecycle>,
            fix: Option<OldFix>,
        }
        let old: std::collections::HashMap<u64, Vec<OldRecord>> = [(
            9,
            vec![OldRecord {
                wrong_id: "9".into(),
                lifecycle: Some(OldLifecycle::Deleted(stamp(3, "d3"))),
                fix: Some(OldFix {
                    fix_time_ms: 7,
                    stamp: stamp(7, "f7"),
                    event_type: "wrongbook_fix".into(),
                    wrong_id: "9".into(),
                    fix_id: "fx9".into(),
                    fix_result: 2,
                }),
            }],
        )]
        .into_iter()
        .collect();
        let restored: RecordStore =
            postcard::from_bytes(&postcard::to_stdvec(&old).unwrap()).unwrap();
        assert_eq!(groups(&restored)[&9][0].wrong_id(), "9");
        assert_eq!(groups(&restored)[&9][0].fix.as_ref().unwrap().fix_id, "fx9");
        assert!(restored.visible(9).is_none());
    }

    /// Restoring into another worker count splits a store with `absorb`: every record of
    /// every id lands in exactly one part, across the slab's chunks.
    #[test]
    fn a_store_split_by_absorb_keeps_every_record() {
        let mut whole = RecordStore::default();
        for id in 0..10_000u64 {
            let wrong_id = id.to_string();
            apply_all(&mut whole, id, [add(&wrong_id, 1, "u"), fix(&wrong_id, 2)]);
        }
        apply_all(&mut whole, 7, [add("007", 1, "padded")]);
        let bytes = postcard::to_stdvec(&whole).unwrap();
        let mut parts = [RecordStore::default(), RecordStore::default()];
        for (index, part) in parts.iter_mut().enumerate() {
            let restored: RecordStore = postcard::from_bytes(&bytes).unwrap();
            part.absorb(restored, |id| id % 2 == index as u64);
        }
        assert_eq!(parts[0].len() + parts[1].len(), whole.len());
        assert_eq!(parts[0].fixes() + parts[1].fixes(), whole.fixes());
        let mut joined = groups(&parts[0]);
        joined.extend(groups(&parts[1]));
        assert_eq!(joined, groups(&whole));
        assert_eq!(parts[1].visible(7).unwrap().add.wrong_id, "007");
        assert_eq!(parts[0].visible(9_998).unwrap().fix.unwrap().fix_time_ms, 2);
    }

    /// The census counts kept as records come and change agree with a walk over every
    /// record, through adds, deletes and fixes of long and short strings, ids with several
    /// wrong ids, a checkpoint's round trip and a split.
    #[test]
    fn the_kept_string_bytes_and_fixes_match_a_walk_over_the_records() {
        let walked = |store: &RecordStore| {
            let records = || store.records.iter();
            (
                records().map(WrongRecord::heap_bytes).sum::<usize>(),
                records().filter(|r| r.fix.is_some()).count(),
            )
        };
        let kept = |store: &RecordStore| (store.records.string_bytes, store.fixes());
        let long = |n: u64| format!("{n:0>40}");
        let mut store = RecordStore::default();
        let mut rng = crate::commands::gen::Rng::new(11);
        let mut next = |n: u64| rng.below(n as usize) as u64;
        for step in 0..20_000i64 {
            let id = next(500);
            // Some ids have a second wrong id, some wrong ids are long enough for the heap.
            let wrong_id = match next(10) {
                0 => format!("0{id}"),
                1 => long(id),
                _ => id.to_string(),
            };
            let mut op = match next(3) {
                0 => add(
                    &wrong_id,
                    step,
                    if next(2) == 0 {
                        "u"
                    } else {
                        "a user id long enough for the heap"
                    },
                ),
                1 => delete(&wrong_id, step),
                _ => fix(&wrong_id, step),
            };
            if let RecordOp::Add(add) = &mut op {
                add.question = (next(2) == 0).then(|| long(step as u64).into());
            }
            if let RecordOp::Fix { fix, .. } = &mut op {
                fix.fix_id = if next(2) == 0 {
                    long(7).into()
                } else {
                    "fx".into()
                };
            }
            store.apply(id, op);
        }
        assert!(
            kept(&store).0 > 0 && kept(&store).1 > 0,
            "the test reaches the heap and fixes"
        );
        assert_eq!(kept(&store), walked(&store));

        let bytes = postcard::to_stdvec(&store).unwrap();
        let restored: RecordStore = postcard::from_bytes(&bytes).unwrap();
        // Read back, strings hold no more heap than their text needs.
        assert_eq!(kept(&restored), walked(&restored));
        let mut parts = [RecordStore::default(), RecordStore::default()];
        for (index, part) in parts.iter_mut().enumerate() {
            let from: RecordStore = postcard::from_bytes(&bytes).unwrap();
            part.absorb(from, |id| id % 2 == index as u64);
            assert_eq!(kept(part), walked(part));
        }
        assert_eq!(
            (
                kept(&parts[0]).0 + kept(&parts[1]).0,
                parts[0].fixes() + parts[1].fixes()
            ),
            kept(&restored)
        );
    }

    #[test]
    fn a_shared_id_shows_the_least_live_wrong_id() {
        let mut store = RecordStore::default();
        apply_all(
            &mut store,
            7,
            [add("7", 1, "plain"), add("007", 1, "padded")],
        );
        assert_eq!(store.visible(7).unwrap().add.wrong_id, "007");
        assert_eq!(groups(&store)[&7].len(), 2);
        store.apply(7, delete("007", 2));
        assert_eq!(store.visible(7).unwrap().add.wrong_id, "7");
    }

    /// The join reads rows through the place an operation returned: it must show what a
    /// lookup of the id shows, for ids with one wrong record and with several, as ids are
    /// added around them (records in later chunks, the map growing).
    #[test]
    fn a_place_reads_what_a_lookup_reads() {
        let mut store = RecordStore::default();
        let mut places = Vec::new();
        for round in 0..3 {
            for n in 0..5_000u64 {
                let id = n * 3 + round;
                let ops = match n % 4 {
                    0 => vec![add(&id.to_string(), 1, "u")],
                    1 => vec![add(&id.to_string(), 1, "u"), delete(&id.to_string(), 2)],
                    2 => vec![fix(&id.to_string(), 5)],
                    _ => vec![add(&id.to_string(), 3, "u"), add(&format!("0{id}"), 3, "u")],
                };
                for op in ops {
                    if let Applied::Changed { place, .. } = store.apply(id, op) {
                        places.push((id, place));
                    }
                }
            }
        }
        for (id, place) in places {
            assert_eq!(Some(place), store.place(id), "id {id}");
            assert_eq!(store.visible_at(id, place), store.visible(id), "id {id}");
        }
        assert!(store.visible(9).is_some_and(|r| r.add.wrong_id == "09"));
    }
}
