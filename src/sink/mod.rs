//! The sink (SPEC §7): wide-row changes become transactions in the wide table.
//!
//! Each worker owns the rows whose id is `≡ worker (mod workers)`, and the join produces each
//! row on its owner. Once the frontier has passed a time, the [`sink_operator`] hands that
//! time's row updates over a bounded channel to the worker's own sink thread, which makes them
//! one batch (an id with a row is an upsert, an id without one is a delete), writes it as one
//! transaction (multi-row statements, or bulk executions on MariaDB) and acknowledges. The
//! operator holds the time's capability until then, so a probe after the sink
//! tells which times are in the database. Blocking I/O never runs on a timely worker thread.
//!
//! Reconcile: when asked, a sink thread first reads the ids the table holds in its share; ids
//! the dataflow writes are crossed off, and what is left when the input is exhausted is
//! deleted. A replay therefore leaves the table exactly equal to the computed result,
//! whatever it held before.

pub mod alerts;
pub mod dead_letters;
pub mod memory;
pub mod mysql;
pub mod sqlite;
pub mod statements;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use timely::scheduling::SyncActivator;

use crate::config::SinkConfig;
use crate::dataflow::wide::{RowUpdate, WideRow};
use crate::db::DbSettings;

/// Why a write failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// Worth retrying (deadlock, lock wait timeout, lost connection, busy database).
    pub transient: bool,
    pub message: String,
}

impl SinkError {
    pub fn permanent(message: impl Into<String>) -> SinkError {
        SinkError {
            transient: false,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError {
            transient: true,
            message: message.into(),
        }
    }
}

/// The consolidated changes of one time on one worker's share of the table: each id's last
/// update, as an upsert or a delete, in the order of the ids.
///
/// The rows stay where the join put them: a row is some 480 bytes, and moving each into a
/// vector of upserts was ~2 % of a worker's time. The batch keeps where its upserts are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkBatch {
    pub epoch: u64,
    /// The row updates as received.
    updates: Vec<RowUpdate>,
    /// Where the upserted rows are in `updates`, in the order of their ids.
    upserts: Vec<u32>,
    /// The ids deleted, in order.
    pub deletes: Vec<u64>,
}

impl SinkBatch {
    /// The batch of one time's row updates: for an id updated more than once, the later
    /// update wins.
    pub fn new(epoch: u64, updates: Vec<RowUpdate>) -> SinkBatch {
        // Each id with the place of its update; for one id, the later place sorts last.
        let mut order: Vec<(u64, u32)> = updates
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, update_index(i)))
            .collect();
        order.sort_unstable();
        let mut upserts = Vec::with_capacity(order.len());
        let mut deletes = Vec::new();
        for (k, &(id, at)) in order.iter().enumerate() {
            if order.get(k + 1).is_some_and(|next| next.0 == id) {
                continue;
            }
            match updates[at as usize].1 {
                Some(_) => upserts.push(at),
                None => deletes.push(id),
            }
        }
        SinkBatch {
            epoch,
            updates,
            upserts,
            deletes,
        }
    }

    /// The batch of one time's row updates for a writer that writes nowhere
    /// ([`TableWriter::writes`]): the upserts and deletes as they came, without the sort by id
    /// that only a table needs. The join emits an id once per time, so the counts are those of
    /// [`SinkBatch::new`].
    pub fn unordered(epoch: u64, updates: Vec<RowUpdate>) -> SinkBatch {
        let mut upserts = Vec::with_capacity(updates.len());
        let mut deletes = Vec::new();
        for (i, (id, row)) in updates.iter().enumerate() {
            match row {
                Some(_) => upserts.push(update_index(i)),
                None => deletes.push(*id),
            }
        }
        SinkBatch {
            epoch,
            updates,
            upserts,
            deletes,
        }
    }

    /// A batch that deletes `ids` (in order) and upserts nothing.
    pub fn deleting(epoch: u64, ids: Vec<u64>) -> SinkBatch {
        SinkBatch {
            epoch,
            deletes: ids,
            ..SinkBatch::default()
        }
    }

    /// The rows to upsert, in the order of their ids.
    pub fn upserts(&self) -> impl ExactSizeIterator<Item = &WideRow> {
        self.upserts
            .iter()
            .map(|&at| match &self.updates[at as usize].1 {
                Some(row) => row,
                None => unreachable!("an upsert has a row"),
            })
    }

    pub fn upsert_count(&self) -> usize {
        self.upserts.len()
    }
}

/// The place of a time's row update, as a batch keeps it.
fn update_index(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 row updates in a time")
}

/// Writes a worker's share of the wide table.
pub trait TableWriter: Send {
    /// The ids the table holds whose owner is worker `index` of `peers`.
    fn owned_ids(&mut self, index: usize, peers: usize) -> Result<Vec<u64>, SinkError>;
    /// Writes `batch` in one transaction, stamping rows with `process_time` (seconds, UTC).
    fn write(&mut self, batch: &SinkBatch, process_time: i64) -> Result<(), SinkError>;
    /// Whether rows reach a table; a writer that discards them is given batches not ordered
    /// by id ([`SinkBatch::unordered`]).
    fn writes(&self) -> bool {
        true
    }
}

/// How a database writer shapes its statements (the `[sink]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Rows (or ids) per statement or bulk execution.
    pub batch_rows: usize,
    /// Upserts as bulk executions where the server is MariaDB 10.2.7 or later.
    pub mariadb_bulk: bool,
}

impl WriteOptions {
    pub fn of(config: &SinkConfig) -> WriteOptions {
        WriteOptions {
            batch_rows: config.batch_rows,
            mariadb_bulk: config.mariadb_bulk,
        }
    }
}

/// Where wide rows go.
#[derive(Clone)]
pub enum SinkTarget {
    /// A MySQL/MariaDB or SQLite database.
    Database {
        settings: DbSettings,
        table: statements::WideTable,
        options: WriteOptions,
    },
    /// An in-memory table (benchmarks, tests, embedding).
    Memory(memory::MemoryTable),
    /// Nowhere: the dataflow runs, nothing is written (join benchmarks).
    Discard,
}

impl SinkTarget {
    /// A writer for one worker's share.
    pub fn connect(&self) -> Result<Box<dyn TableWriter>, SinkError> {
        match self {
            SinkTarget::Database {
                settings,
                table,
                options,
            } => match settings.url {
                crate::db::DbUrl::Mysql(_) => Ok(Box::new(mysql::MysqlWriter::connect(
                    settings.clone(),
                    table.clone(),
                    *options,
                )?)),
                crate::db::DbUrl::Sqlite(_) => Ok(Box::new(sqlite::SqliteWriter::open(
                    settings,
                    table.clone(),
                    options.batch_rows,
                )?)),
            },
            SinkTarget::Memory(table) => Ok(Box::new(table.clone())),
            SinkTarget::Discard => Ok(Box::new(DiscardWriter)),
        }
    }
}

struct DiscardWriter;

impl TableWriter for DiscardWriter {
    fn owned_ids(&mut self, _: usize, _: usize) -> Result<Vec<u64>, SinkError> {
        Ok(Vec::new())
    }
    fn write(&mut self, _: &SinkBatch, _: i64) -> Result<(), SinkError> {
        Ok(())
    }
    fn writes(&self) -> bool {
        false
    }
}

/// Counters of what the sinks did, shared by all workers of a process.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub rows_upserted: AtomicU64,
    pub rows_deleted: AtomicU64,
    pub rows_reconciled: AtomicU64,
    pub transactions: AtomicU64,
    pub retries: AtomicU64,
    /// Total time spent in transactions, µs.
    pub write_micros: AtomicU64,
    /// Time per written batch (one transaction, retries included).
    pub batch_seconds: crate::ops::metrics::LatencyHistogram,
    /// The last error a write retried on, until a write succeeds.
    pub last_error: Mutex<Option<String>>,
}

/// A request to a sink thread.
pub enum SinkCommand {
    /// Write one time's row updates, as received from the join: the sink thread makes them a
    /// [`SinkBatch`], so that ordering them by id (a sort per time) is not the worker's work.
    Write { epoch: u64, updates: Vec<RowUpdate> },
    /// Everything the input held is written: delete the rows of the share that were in the
    /// table at start and have not been written since (when reconcile is enabled).
    Reconcile,
    /// Stop.
    Finish,
}

/// Where a sink thread's failure is reported to the worker loops.
pub type FailureSlot = Arc<Mutex<Option<String>>>;

/// Runs a worker's sink thread until [`SinkCommand::Finish`] or until the channel closes.
/// With reconcile on, it first reads the ids its share of the table holds.
pub struct SinkThread {
    pub writer: Box<dyn TableWriter>,
    pub commands: Receiver<SinkCommand>,
    pub acks: Sender<u64>,
    pub activator: SyncActivator,
    pub reconcile: bool,
    pub index: usize,
    pub peers: usize,
    pub stats: Arc<SinkStats>,
}

impl SinkThread {
    pub fn run(mut self) -> Result<(), SinkError> {
        let mut leftover: HashSet<u64> = if self.reconcile {
            let (index, peers) = (self.index, self.peers);
            let ids = self.retry("read owned ids", |w| w.owned_ids(index, peers))?;
            ids.into_iter().collect()
        } else {
            HashSet::new()
        };
        while let Ok(command) = self.commands.recv() {
            match command {
                SinkCommand::Write { epoch, updates } => {
                    let batch = if self.writer.writes() {
                        SinkBatch::new(epoch, updates)
                    } else {
                        SinkBatch::unordered(epoch, updates)
                    };
                    // The set empties at the first reconcile and is empty without one: then
                    // there is nothing to remove, and no row's id needs hashing for it.
                    if !leftover.is_empty() {
                        for row in batch.upserts() {
                            leftover.remove(&row.id);
                        }
                        for id in &batch.deletes {
                            leftover.remove(id);
                        }
                    }
                    self.write(&batch)?;
                    self.stats
                        .rows_upserted
                        .fetch_add(batch.upsert_count() as u64, Ordering::Relaxed);
                    self.stats
                        .rows_deleted
                        .fetch_add(batch.deletes.len() as u64, Ordering::Relaxed);
                    // The worker may be gone after a failure elsewhere; then nobody waits.
                    let _ = self.acks.send(batch.epoch);
                    let _ = self.activator.activate();
                }
                SinkCommand::Reconcile => {
                    if !leftover.is_empty() {
                        let mut ids: Vec<u64> = leftover.drain().collect();
                        ids.sort_unstable();
                        let batch = SinkBatch::deleting(u64::MAX, ids);
                        self.write(&batch)?;
                        self.stats
                            .rows_reconciled
                            .fetch_add(batch.deletes.len() as u64, Ordering::Relaxed);
                    }
                    // Reconcile once: rows written from now on are the dataflow's own.
                    leftover = HashSet::new();
                }
                SinkCommand::Finish => break,
            }
        }
        Ok(())
    }

    fn write(&mut self, batch: &SinkBatch) -> Result<(), SinkError> {
        let started = Instant::now();
        let process_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.retry("write batch", |w| w.write(batch, process_time))?;
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        self.stats.batch_seconds.observe(started.elapsed());
        self.stats
            .write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `op` until it succeeds or fails permanently, backing off on transient errors.
    fn retry<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut dyn TableWriter) -> Result<T, SinkError>,
    ) -> Result<T, SinkError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match op(self.writer.as_mut()) {
                Ok(value) => {
                    if backoff > Duration::from_millis(50) {
                        *self.stats.last_error.lock().expect("sink error lock") = None;
                        tracing::info!(
                            worker = self.index,
                            "sink: {what} succeeded after retrying"
                        );
                    }
                    return Ok(value);
                }
                Err(e) if e.transient => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    *self.stats.last_error.lock().expect("sink error lock") =
                        Some(e.message.clone());
                    tracing::warn!(worker = self.index, error = %e.message, retry_in = ?backoff, "sink: {what} failed, retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(SinkError::permanent(format!(
                        "worker {}: {what}: {}",
                        self.index, e.message
                    )))
                }
            }
        }
    }
}

/// The worker side of a sink thread: where batches go and acknowledgements come from.
pub struct SinkChannels {
    pub commands: Sender<SinkCommand>,
    pub acks: Receiver<u64>,
    /// Filled by the operator when it is built: hand it to the sink thread.
    pub activator: Rc<RefCell<Option<SyncActivator>>>,
    pub failure: FailureSlot,
}

/// Row updates waiting for their time to complete (the containers as received), with the
/// capability that holds the time.
type PendingTimes = BTreeMap<u64, (Capability<u64>, Vec<Vec<RowUpdate>>)>;

/// The sink operator: takes each completed time's row updates (already on the worker that owns
/// their ids), hands them to the sink thread, and holds the time until they are acknowledged.
pub fn sink_operator<'scope>(
    updates: Stream<'scope, u64, Vec<RowUpdate>>,
    channels: SinkChannels,
) -> Stream<'scope, u64, Vec<()>> {
    let scope = updates.scope();
    updates.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "WideTableSink",
        move |_capability, info| {
            *channels.activator.borrow_mut() =
                Some(scope.worker().sync_activator_for(info.address.to_vec()));
            let mut pending: PendingTimes = BTreeMap::new();
            let mut unsent: VecDeque<(Capability<u64>, Vec<RowUpdate>)> = VecDeque::new();
            let mut unacked: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            move |(input, frontier), output| {
                // The output carries no data: the held capabilities are the progress signal.
                let _ = output;
                input.for_each(|cap, data| {
                    let Some(time) = cap.least().copied() else {
                        return;
                    };
                    pending
                        .entry(time)
                        .or_insert_with(|| {
                            let cap = cap
                                .retain_least(0)
                                .expect("a message with a time has a capability");
                            (cap, Vec::new())
                        })
                        .1
                        .push(std::mem::take(data));
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (cap, mut containers) = entry.remove();
                    // A time's rows come from one join step, so usually in one container, which
                    // is then used as it is rather than copied.
                    let updates = if containers.len() == 1 {
                        containers.pop().unwrap_or_default()
                    } else {
                        containers.into_iter().flatten().collect()
                    };
                    // Every update is an upsert or a delete: a time with updates writes.
                    if !updates.is_empty() {
                        unsent.push_back((cap, updates));
                    }
                }
                while let Some((cap, updates)) = unsent.pop_front() {
                    let epoch = *cap.time();
                    match channels
                        .commands
                        .try_send(SinkCommand::Write { epoch, updates })
                    {
                        Ok(()) => {
                            unacked.insert(epoch, cap);
                        }
                        Err(TrySendError::Full(SinkCommand::Write { updates, .. })) => {
                            // Re-activated by the sink thread's next acknowledgement.
                            unsent.push_front((cap, updates));
                            break;
                        }
                        Err(_) => {
                            let mut failure = channels.failure.lock().expect("failure slot");
                            failure.get_or_insert_with(|| "the sink thread stopped".into());
                            break;
                        }
                    }
                }
                for epoch in channels.acks.try_iter() {
                    unacked.remove(&epoch);
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, user: &str) -> WideRow {
        WideRow {
            id,
            wrong_id: id.to_string().into(),
            user_id: user.into(),
            subject: None,
            subject_name: None,
            question_id: "q".into(),
            question: None,
            pattern_id: None,
            pattern_name: None,
            teach_type_id: None,
            teach_type_name: None,
            collect_time: 1,
            fix_id: None,
            fix_time: None,
            fix_result: None,
            fix_result_desc: None,
            event_id: "e".into(),
            event_type: "t".into(),
            extra: Vec::new(),
        }
    }

    #[test]
    fn a_batch_holds_each_ids_last_update() {
        let batch = SinkBatch::new(
            3,
            vec![
                (4, Some(row(4, "y"))),
                (2, Some(row(2, "first"))),
                (1, None),
                (2, Some(row(2, "second"))),
                (3, Some(row(3, "x"))),
                (3, None),
            ],
        );
        assert_eq!(batch.epoch, 3);
        assert_eq!(
            batch.upserts().collect::<Vec<_>>(),
            vec![&row(2, "second"), &row(4, "y")]
        );
        assert_eq!(batch.upsert_count(), 2);
        assert_eq!(batch.deletes, vec![1, 3]);
    }

    #[test]
    fn an_unordered_batch_counts_what_an_ordered_one_does_for_ids_once_per_time() {
        let updates = vec![
            (9, Some(row(9, "a"))),
            (2, None),
            (5, Some(row(5, "b"))),
            (1, Some(row(1, "c"))),
            (7, None),
        ];
        let ordered = SinkBatch::new(1, updates.clone());
        let unordered = SinkBatch::unordered(1, updates);
        assert_eq!(unordered.upsert_count(), ordered.upsert_count());
        let mut upserted: Vec<&WideRow> = unordered.upserts().collect();
        upserted.sort_by_key(|row| row.id);
        assert_eq!(upserted, ordered.upserts().collect::<Vec<_>>());
        let mut deleted = unordered.deletes.clone();
        deleted.sort_unstable();
        assert_eq!(deleted, ordered.deletes);
    }

    #[test]
    fn a_failing_write_is_retried_until_it_passes_and_permanent_errors_stop() {
        struct Flaky {
            failures_left: usize,
            permanent: bool,
            written: Vec<u64>,
        }
        impl TableWriter for Flaky {
            fn owned_ids(&mut self, _: usize, _: usize) -> Result<Vec<u64>, SinkError> {
                Ok(vec![7, 8])
            }
            fn write(&mut self, batch: &SinkBatch, _: i64) -> Result<(), SinkError> {
                if self.failures_left > 0 {
                    self.failures_left -= 1;
                    return Err(SinkError {
                        transient: !self.permanent,
                        message: "deadlock".into(),
                    });
                }
                self.written.extend(batch.upserts().map(|r| r.id));
                self.written.extend(&batch.deletes);
                Ok(())
            }
        }
        let run = |permanent: bool| {
            let (command_tx, command_rx) = crossbeam_channel::unbounded();
            let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
            let stats = Arc::new(SinkStats::default());
            let worker = timely::execute_directly(|worker| worker.sync_activator_for(vec![0]));
            let thread = SinkThread {
                writer: Box::new(Flaky {
                    failures_left: 2,
                    permanent,
                    written: Vec::new(),
                }),
                commands: command_rx,
                acks: ack_tx,
                activator: worker,
                reconcile: true,
                index: 0,
                peers: 1,
                stats: stats.clone(),
            };
            command_tx
                .send(SinkCommand::Write {
                    epoch: 4,
                    updates: vec![(7, Some(row(7, "u")))],
                })
                .unwrap();
            command_tx.send(SinkCommand::Reconcile).unwrap();
            command_tx.send(SinkCommand::Finish).unwrap();
            let result = thread.run();
            (result, ack_rx.try_iter().collect::<Vec<_>>(), stats)
        };
        let (result, acks, stats) = run(false);
        assert!(result.is_ok());
        assert_eq!(acks, vec![4]);
        assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
        assert_eq!(
            stats.rows_reconciled.load(Ordering::Relaxed),
            1,
            "id 8 was not written"
        );
        let (result, acks, _) = run(true);
        assert!(result.unwrap_err().message.contains("deadlock"));
        assert!(acks.is_empty());
    }
}
