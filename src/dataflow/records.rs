//! Record state (SPEC §4): the current winner per key, not every event.
//!
//! For each wrong record we keep only its latest lifecycle event (add or delete, by
//! (`timestamp`, `eventId`)) and its latest fix (by (`fixTime`, `eventId`)). A record exists
//! iff its lifecycle winner is an add. State is therefore O(records), whatever the history
//! length, and it is exactly what a checkpoint must save. The operator turns record operations
//! into a differential collection `(id, Record)`: when an id's visible record changes it emits
//! `-old` and `+new` at that time.
//!
//! Operations are applied in time order once the input frontier has passed their time, so the
//! state after time `t` is the state of all events up to `t`, whatever order they arrived in
//! (the winners are maxima, so arrival order within a time does not matter either). Duplicates
//! compare equal to the winner and change nothing.
//!
//! Two wrong ids can share a wide-table id (`"7"` and `"007"`, or an xxh3 collision). The table
//! holds one row per id, so the row shown is that of the live record with the least wrong id:
//! deterministic, and independent of arrival order.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use differential_dataflow::{AsCollection, VecCollection};

use crate::dataflow::process::{AddEvent, EventStamp, FixEvent, KeyedOp, RecordOp};

/// A live record: its add and its latest fix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Record {
    pub add: AddEvent,
    pub fix: Option<FixEvent>,
}

/// The lifecycle winner of one wrong id.
// Live records (`Added`) are the common case: boxing them would add a pointer and an
// allocation to nearly every record to save space on the few deleted ones.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Lifecycle {
    Added(AddEvent),
    Deleted(EventStamp),
}

impl Lifecycle {
    fn stamp(&self) -> &EventStamp {
        match self {
            Lifecycle::Added(add) => &add.stamp,
            Lifecycle::Deleted(stamp) => stamp,
        }
    }
}

/// Everything known about one wrong id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WrongRecord {
    wrong_id: String,
    lifecycle: Option<Lifecycle>,
    fix: Option<FixEvent>,
}

impl WrongRecord {
    /// Whether `op` would replace a winner (so the visible record may change).
    fn is_won_by(&self, op: &RecordOp) -> bool {
        match op {
            RecordOp::Add(add) => self
                .lifecycle
                .as_ref()
                .is_none_or(|l| add.stamp > *l.stamp()),
            RecordOp::Delete(del) => self
                .lifecycle
                .as_ref()
                .is_none_or(|l| del.stamp > *l.stamp()),
            RecordOp::Fix(fix) => self
                .fix
                .as_ref()
                .is_none_or(|f| fix.order_key() > f.order_key()),
        }
    }

    fn apply(&mut self, op: RecordOp) {
        if !self.is_won_by(&op) {
            return;
        }
        match op {
            RecordOp::Add(add) => self.lifecycle = Some(Lifecycle::Added(add)),
            RecordOp::Delete(del) => self.lifecycle = Some(Lifecycle::Deleted(del.stamp)),
            RecordOp::Fix(fix) => self.fix = Some(fix),
        }
    }

    fn live_add(&self) -> Option<&AddEvent> {
        match &self.lifecycle {
            Some(Lifecycle::Added(add)) => Some(add),
            _ => None,
        }
    }
}

/// The record state of the ids one worker owns.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RecordStore {
    /// Per wide-table id, its wrong records (almost always exactly one).
    by_id: HashMap<u64, Vec<WrongRecord>>,
}

impl RecordStore {
    /// The visible record of `id`: the live one with the least wrong id.
    fn visible(records: &[WrongRecord]) -> Option<Record> {
        records
            .iter()
            .filter_map(|r| r.live_add().map(|add| (r, add)))
            .min_by(|a, b| a.0.wrong_id.cmp(&b.0.wrong_id))
            .map(|(r, add)| Record {
                add: add.clone(),
                fix: r.fix.clone(),
            })
    }

    /// Applies the operations on `id` and reports the change of its visible record as
    /// `(record, diff)` pairs.
    pub fn apply(
        &mut self,
        id: u64,
        ops: impl IntoIterator<Item = RecordOp>,
        changes: &mut Vec<(Record, isize)>,
    ) {
        let records = self.by_id.entry(id).or_default();
        let mut before: Option<Option<Record>> = None;
        for op in ops {
            let index = match records.iter().position(|r| r.wrong_id == op.wrong_id()) {
                Some(index) => index,
                None => {
                    records.push(WrongRecord {
                        wrong_id: op.wrong_id().to_owned(),
                        lifecycle: None,
                        fix: None,
                    });
                    records.len() - 1
                }
            };
            if records[index].is_won_by(&op) {
                if before.is_none() {
                    before = Some(Self::visible(records));
                }
                records[index].apply(op);
            }
        }
        let Some(before) = before else {
            return;
        };
        let after = Self::visible(records);
        if before != after {
            if let Some(old) = before {
                changes.push((old, -1));
            }
            if let Some(new) = after {
                changes.push((new, 1));
            }
        }
    }

    /// The number of ids with state (live, deleted or fix-only).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The record-state operator: record operations, exchanged by id, in; the collection of
/// visible records `(id, Record)` out.
pub fn record_state<'scope>(
    ops: Stream<'scope, u64, Vec<KeyedOp>>,
) -> VecCollection<'scope, u64, (u64, Record), isize> {
    let exchange = Exchange::new(|op: &KeyedOp| op.id);
    ops.unary_frontier(exchange, "RecordState", |_capability, _info| {
        let mut store = RecordStore::default();
        let mut pending: BTreeMap<u64, (Capability<u64>, Vec<KeyedOp>)> = BTreeMap::new();
        let mut changes = Vec::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some(time) = cap.least().copied() else {
                    return;
                };
                let entry = pending.entry(time).or_insert_with(|| {
                    let cap = cap
                        .retain_least(0)
                        .expect("a message with a time has a capability");
                    (cap, Vec::new())
                });
                entry.1.append(data);
            });
            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let (time, (cap, mut ops)) = entry.remove_entry();
                ops.sort_unstable_by_key(|op| op.id);
                let mut session = output.session(&cap);
                let mut ops = ops.into_iter().peekable();
                while let Some(first) = ops.next() {
                    let id = first.id;
                    let mut group = vec![first.op];
                    while let Some(next) = ops.next_if(|op| op.id == id) {
                        group.push(next.op);
                    }
                    changes.clear();
                    store.apply(id, group, &mut changes);
                    for (record, diff) in changes.drain(..) {
                        session.give(((id, record), time, diff));
                    }
                }
            }
        }
    })
    .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::process::DeleteEvent;

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

    fn visible(store: &RecordStore, id: u64) -> Option<Record> {
        RecordStore::visible(store.by_id.get(&id)?)
    }

    #[test]
    fn latest_lifecycle_event_wins_in_any_order() {
        let mut forward = RecordStore::default();
        let mut backward = RecordStore::default();
        let ops = vec![add("1", 10, "u1"), delete("1", 20), add("1", 30, "u3")];
        let mut changes = Vec::new();
        forward.apply(1, ops.clone(), &mut changes);
        backward.apply(1, ops.into_iter().rev(), &mut changes);
        assert_eq!(visible(&forward, 1).unwrap().add.user_id, "u3");
        assert_eq!(visible(&forward, 1), visible(&backward, 1));

        let mut store = RecordStore::default();
        store.apply(1, [add("1", 10, "u1"), delete("1", 20)], &mut changes);
        assert_eq!(visible(&store, 1), None);
        changes.clear();
        store.apply(1, [add("1", 15, "late")], &mut changes);
        assert!(
            changes.is_empty(),
            "an add older than the delete changes nothing"
        );
    }

    #[test]
    fn a_shared_id_shows_the_least_live_wrong_id() {
        let mut store = RecordStore::default();
        let mut changes = Vec::new();
        store.apply(
            7,
            [add("7", 1, "plain"), add("007", 1, "padded")],
            &mut changes,
        );
        assert_eq!(visible(&store, 7).unwrap().add.wrong_id, "007");
        store.apply(7, [delete("007", 2)], &mut changes);
        assert_eq!(visible(&store, 7).unwrap().add.wrong_id, "7");
    }
}
