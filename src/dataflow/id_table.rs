//! The record store's map from wide-table id to the index of the id's first record: an
//! open-addressing table whose slot for an id is known before it is read, so that a reader
//! can ask for the slot's cache line ahead of time ([`IdTable::prefetch`]).
//!
//! Records are touched in no order and there are millions of them: with a general hash map
//! each lookup waits for the table's memory first and the record's second, and the wait for
//! the table cannot be started early. Here an id's home slot is a multiply and a shift, so the
//! join asks for the slot of an operation well ahead, then for its record a little later.
//!
//! Ids are never removed (the store keeps every id's state), which keeps linear probing
//! simple: no tombstones.

/// A slot's id when the slot is empty. Wide-table ids are below 2^63 (SPEC §6), so no id is
/// this.
const EMPTY: u64 = u64::MAX;

/// A map from id to a `u32` index, for ids below 2^63.
#[derive(Debug, Clone)]
pub struct IdTable {
    /// A power of two of slots (or none), each an id and its index; `EMPTY` ids are free.
    slots: Vec<(u64, u32)>,
    len: usize,
    /// `64 - log2(slots.len())`: the shift that turns a hash into a slot number.
    shift: u32,
}

impl Default for IdTable {
    fn default() -> IdTable {
        IdTable {
            slots: Vec::new(),
            len: 0,
            shift: 64,
        }
    }
}

/// What [`IdTable::entry`] found for an id.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// The id is there, with this index.
    Present(u32),
    /// The id is not there: [`IdTable::insert`] gives it an index.
    Vacant(Vacant),
}

/// The free slot where an id goes, valid until the table next changes.
#[derive(Debug, PartialEq, Eq)]
pub struct Vacant {
    id: u64,
    at: usize,
}

impl IdTable {
    /// Fibonacci hashing: consecutive ids (the usual numeric wrong ids) land far apart, and
    /// the top bits, which the shift keeps, mix all of the id's bits.
    #[inline]
    fn home(&self, id: u64) -> usize {
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// The number of ids.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of heap the slots take.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<(u64, u32)>()
    }

    /// Asks the processor to load the cache line of `id`'s home slot, for a lookup of `id`
    /// soon after. It nearly always holds the id, or the slot where the id would go.
    #[inline]
    pub fn prefetch(&self, id: u64) {
        if !self.slots.is_empty() {
            crate::dataflow::prefetch_lines(&self.slots[self.home(id)]);
        }
    }

    /// The slot of `id` and its index, or the empty slot where it would go. The table must
    /// have a free slot (it is never full: see [`IdTable::entry`]).
    #[inline]
    fn probe(&self, id: u64) -> (usize, Option<u32>) {
        let mask = self.slots.len() - 1;
        let mut at = self.home(id);
        loop {
            let (slot_id, index) = self.slots[at];
            if slot_id == id {
                return (at, Some(index));
            }
            if slot_id == EMPTY {
                return (at, None);
            }
            at = (at + 1) & mask;
        }
    }

    /// The index of `id`.
    #[inline]
    pub fn get(&self, id: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        self.probe(id).1
    }

    /// The index of `id`, or the slot where it would go (the table grows first if it must,
    /// so that the slot stays valid until [`IdTable::insert`]).
    #[inline]
    pub fn entry(&mut self, id: u64) -> Entry {
        assert!(id != EMPTY, "ids are below 2^63");
        // At most seven eighths full, so that probe runs stay short.
        if (self.len + 1) * 8 > self.slots.len() * 7 {
            self.grow();
        }
        match self.probe(id) {
            (_, Some(index)) => Entry::Present(index),
            (at, None) => Entry::Vacant(Vacant { id, at }),
        }
    }

    /// Gives the id of `vacant` the index `index`.
    #[inline]
    pub fn insert(&mut self, vacant: Vacant, index: u32) {
        let slot = &mut self.slots[vacant.at];
        assert!(
            slot.0 == EMPTY,
            "the table changed between entry() and insert()"
        );
        *slot = (vacant.id, index);
        self.len += 1;
    }

    /// Doubles the slots (at least 16) and places every id again.
    fn grow(&mut self) {
        let slots = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![(EMPTY, 0); slots]);
        self.shift = 64 - slots.trailing_zeros();
        for (id, index) in old.into_iter().filter(|&(id, _)| id != EMPTY) {
            let (at, _) = self.probe(id);
            self.slots[at] = (id, index);
        }
    }

    /// Every id and its index, in slot order (the same for the same ids inserted in the same
    /// order).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.slots.iter().copied().filter(|&(id, _)| id != EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The table against a standard map, on consecutive ids (the usual wrong ids), ids that
    /// share their low or high bits, and ids near 2^63, through many growths.
    #[test]
    fn finds_what_a_map_finds() {
        let mut table = IdTable::default();
        let mut map = HashMap::new();
        let ids = (1_000_000..1_030_000u64)
            .chain((0..3_000u64).map(|i| i << 40))
            .chain((0..3_000u64).map(|i| i * 1024))
            .chain((1..3_000u64).map(|i| (1 << 63) - i))
            .chain(1_000_000..1_010_000);
        for (n, id) in ids.enumerate() {
            let fresh = n as u32;
            match (table.entry(id), map.get(&id)) {
                (Entry::Present(index), Some(&expected)) => assert_eq!(index, expected),
                (Entry::Vacant(vacant), None) => {
                    table.insert(vacant, fresh);
                    map.insert(id, fresh);
                }
                (found, expected) => panic!("id {id}: {found:?}, expected {expected:?}"),
            }
        }
        assert_eq!(table.len(), map.len());
        for (&id, &index) in &map {
            assert_eq!(table.get(id), Some(index), "id {id}");
        }
        for absent in [0, 999_999, 1_030_000, 3 << 40, (1 << 63) - 3_000] {
            assert_eq!(table.get(absent), map.get(&absent).copied(), "id {absent}");
        }
        let mut listed: Vec<_> = table.iter().collect();
        listed.sort_unstable();
        let mut expected: Vec<_> = map.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(listed, expected);
    }

    #[test]
    fn an_empty_table_finds_nothing() {
        let table = IdTable::default();
        assert_eq!(table.get(7), None);
        table.prefetch(7);
        assert!(table.is_empty() && table.iter().next().is_none());
    }
}
