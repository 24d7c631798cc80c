//! An in-memory wide table: the sink for benchmarks and for embedding the engine in tests of
//! other systems. It behaves like a database table keyed by id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{SinkBatch, SinkError, TableWriter};
use crate::dataflow::owner::owner;
use crate::dataflow::wide::WideRow;

/// A wide table in memory, shared by all workers' writers.
#[derive(Clone, Default)]
pub struct MemoryTable {
    rows: Arc<Mutex<BTreeMap<u64, WideRow>>>,
}

impl MemoryTable {
    /// A copy of the table's rows, by id.
    pub fn snapshot(&self) -> BTreeMap<u64, WideRow> {
        self.rows.lock().expect("memory table lock").clone()
    }

    /// Puts `row` into the table as if an earlier run had written it (for tests of reconcile).
    pub fn preload(&self, row: WideRow) {
        self.rows
            .lock()
            .expect("memory table lock")
            .insert(row.id, row);
    }
}

impl TableWriter for MemoryTable {
    fn owned_ids(&mut self, index: usize, peers: usize) -> Result<Vec<u64>, SinkError> {
        let rows = self.rows.lock().expect("memory table lock");
        Ok(rows
            .keys()
            .copied()
            .filter(|id| owner(*id, peers) == index)
            .collect())
    }

    fn write(&mut self, batch: &SinkBatch, _process_time: i64) -> Result<(), SinkError> {
        let mut rows = self.rows.lock().expect("memory table lock");
        for id in &batch.deletes {
            rows.remove(id);
        }
        for row in batch.upserts() {
            rows.insert(row.id, row.clone());
        }
        Ok(())
    }
}
