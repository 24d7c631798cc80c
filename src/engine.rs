//! The engine: runs the dataflow on N timely workers, with source threads feeding the workers
//! (a bounded file or memory input, or the Kafka topic) and one sink thread per worker
//! writing the wide table.
//!
//! This is the plumbing layer (threads, channels, epochs, failure, the end of input); the
//! dataflow itself is built by [`crate::dataflow::build`] and knows nothing of it.
//!
//! Each worker loop: pull the next batch from its source channel (unless it is more than
//! `max_inflight_epochs` ahead of what the probe says is written: that is the back-pressure),
//! advance its inputs to the batch's epoch, ingest each message (parse, route, process) and
//! send the record operations into the dataflow. Bounded sources stamp batches with epochs;
//! for Kafka the epoch is the wall clock divided by `engine.epoch_interval`, the same on every
//! worker, and idle workers advance with it. Kafka offsets are committed once the probe says
//! the epochs that read them are written. When the source has delivered everything it held at
//! start (caught up) and that is written, the sink threads reconcile. At the end of input a
//! worker advances to the final epoch, applies any later dimension snapshot once everything
//! before it is written, closes its inputs and runs until the probe is done.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, TryRecvError};
use rdkafka::consumer::BaseConsumer;

use crate::checkpoint::{self, CheckpointStats, Part, Restored};
use crate::cluster::Layout;
use crate::config::{EngineConfig, KafkaConfig};
use crate::dataflow::ingest::{Ingestor, Outcome, OutcomeCounts, OutcomeTally};
use crate::dataflow::join::{CheckpointHooks, JoinState};
use crate::dataflow::owner::OpsByOwner;
use crate::dataflow::route::{Routing, RoutingHistory};
use crate::dataflow::{build, DataflowHandles, DataflowStats};
use crate::event::ParseBuffers;
use crate::ops::thread_cpu::Role;
use crate::sink::dead_letters::{DeadLetter, DeadLetterSink};
use crate::sink::{SinkChannels, SinkCommand, SinkStats, SinkTarget, SinkThread};
use crate::source::dims::{DimCorrection, DimDiff, DimSnapshot, DimStats};
use crate::source::file::{positions_for, read_bounded, BoundedInput, Dealer, SourceProgress};
use crate::source::kafka::{self, KafkaSourceError, PartitionReader, StartAt};
use crate::source::{
    shared_queue, worker_queue, Positions, SourceBatch, SourceEvent, WorkerInbox, WorkerSource,
};
use crate::spec::Spec;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Failed(String),
    #[error("cannot start the workers: {0}")]
    Start(String),
}

/// A failure anywhere in the process, seen by every worker loop.
#[derive(Default)]
pub struct Failure {
    set: AtomicBool,
    message: Mutex<Option<String>>,
}

impl Failure {
    /// Records the first failure.
    pub fn set(&self, message: impl Into<String>) {
        let mut slot = self.message.lock().expect("failure lock");
        if slot.is_none() {
            *slot = Some(message.into());
        }
        self.set.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }

    pub fn message(&self) -> Option<String> {
        self.message.lock().expect("failure lock").clone()
    }
}

/// A dimension snapshot taken after all events are written (`replay --dims-after`): its
/// difference from the initial snapshot then flows through the maintained join.
pub type LaterDims = Box<dyn FnOnce() -> Result<DimSnapshot, String> + Send>;

/// Where the events come from.
#[derive(Clone)]
pub enum Input {
    /// A file or messages in memory, read to the end.
    Bounded(BoundedInput),
    /// The Kafka topic.
    Kafka(Box<KafkaInput>),
}

/// How to read the Kafka topic.
#[derive(Clone)]
pub struct KafkaInput {
    pub kafka: KafkaConfig,
    pub group_id: String,
    pub start: StartAt,
    /// Stop once caught up with what the topic held at start.
    pub bounded: bool,
    /// Commit offsets to the group once the rows they cover are written.
    pub commit: bool,
    /// Set to stop reading; the job then drains and ends.
    pub stop: Arc<AtomicBool>,
    /// Where and how often to checkpoint; `None` for no checkpoints.
    pub checkpoint: Option<CheckpointPlan>,
    /// The checkpoint to resume from (its offsets are in `start`).
    pub restored: Option<Arc<Restored>>,
    /// Where a bounded read ends, per partition (exclusive); the high watermarks at start
    /// when `None`.
    pub end_offsets: Option<HashMap<i32, i64>>,
    /// Events before these offsets only rebuild state: only the rows of records that later
    /// events touch are written (a replay of a range).
    pub write_from: Option<HashMap<i32, i64>>,
}

/// Checkpoints of a streaming run.
#[derive(Clone)]
pub struct CheckpointPlan {
    pub dir: std::path::PathBuf,
    pub interval: Duration,
    pub stats: Arc<CheckpointStats>,
}

/// Everything a run needs.
pub struct Pipeline {
    pub spec: Arc<Spec>,
    /// The routing in force, which the routing watcher may change while the job runs.
    pub routing: Arc<Routing>,
    pub engine: EngineConfig,
    /// This process's workers and its place among the job's processes.
    pub layout: Layout,
    pub input: Input,
    pub dims: DimSnapshot,
    pub dims_after: Option<LaterDims>,
    /// Dimension changes found by periodic refreshes while the job runs.
    pub dim_updates: Option<Receiver<DimDiff>>,
    pub dim_stats: Arc<DimStats>,
    pub sink: SinkTarget,
    /// Delete rows of the table that the run does not produce.
    pub reconcile: bool,
    pub dead_letters: Arc<dyn DeadLetterSink>,
    pub source_progress: Arc<SourceProgress>,
    pub sink_stats: Arc<SinkStats>,
    pub dataflow_stats: Arc<DataflowStats>,
    /// Counts workers whose share of what the source held at start is written.
    pub caught_up_workers: Arc<AtomicUsize>,
}

/// How a worker numbers its epochs.
#[derive(Clone, Copy)]
enum EpochClock {
    /// The source stamps each batch (bounded inputs).
    Source,
    /// Wall-clock time divided by the interval, the same on every worker and process.
    Wall(Duration),
}

impl EpochClock {
    fn now(self) -> u64 {
        match self {
            EpochClock::Source => 0,
            EpochClock::Wall(interval) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                (now.as_millis() / interval.as_millis().max(1)) as u64
            }
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub outcomes: OutcomeCounts,
    pub messages: u64,
    pub rows_upserted: u64,
    pub rows_deleted: u64,
    pub rows_reconciled: u64,
    pub transactions: u64,
    pub retries: u64,
    /// Time the sink threads spent in transactions, µs (summed over workers).
    pub write_micros: u64,
    /// Dimension rows changed by the later snapshot.
    pub dim_rows_changed: usize,
    /// How the later snapshot's corrections went, when there was one.
    pub dim_change: Option<DimChangeReport>,
    pub workers: usize,
    pub elapsed: Duration,
}

impl RunSummary {
    pub fn events_per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How long the corrections of a dimension change took.
#[derive(Debug, Clone, Copy)]
pub struct DimChangeReport {
    /// Wide rows written (upserted or deleted) after the change.
    pub rows_written: u64,
    /// From applying the change to every correction committed.
    pub elapsed: Duration,
}

/// What one worker reports back.
struct WorkerReport {
    outcomes: OutcomeCounts,
    dim_rows_changed: usize,
    dim_change: Option<DimChangeReport>,
}

/// The source side of a run: each worker's channel, the threads feeding them, and the Kafka
/// consumers that commit each worker's offsets.
struct Sources {
    receivers: Vec<Mutex<Option<WorkerInbox>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    committers: Vec<Option<Arc<BaseConsumer>>>,
    topic: Arc<str>,
    /// Set when the workers are done: helper threads (the lag watcher) end.
    done: Arc<AtomicBool>,
}

fn start_sources(pipeline: &Pipeline) -> Result<Sources, EngineError> {
    let layout = &pipeline.layout;
    let workers = layout.workers;
    let done = Arc::new(AtomicBool::new(false));
    let queue_chunks = pipeline.engine.source_queue_chunks();
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .map_err(|e| EngineError::Start(e.to_string()))
    };
    match &pipeline.input {
        Input::Bounded(input) => {
            // One queue that every worker of this process takes from.
            let (queue, inboxes) = shared_queue(queue_chunks * workers, workers);
            let receivers = inboxes.into_iter().map(|i| Mutex::new(Some(i))).collect();
            let dealer = Dealer::new(
                queue,
                layout.first_worker(),
                layout.peers(),
                pipeline.engine.chunk_messages,
                pipeline.engine.epoch_max_messages,
                positions_for(input),
                pipeline.source_progress.clone(),
            );
            let input = input.clone();
            let stats = pipeline.dataflow_stats.clone();
            let reader = spawn(
                "wrongbook-source".into(),
                Box::new(move || {
                    read_bounded(&input, dealer);
                    stats.thread_cpu.add_this_thread(Role::Source);
                }),
            )?;
            Ok(Sources {
                receivers,
                threads: vec![reader],
                committers: vec![None; workers],
                topic: Arc::from(""),
                done,
            })
        }
        Input::Kafka(input) => {
            let fail = |e: KafkaSourceError| EngineError::Start(e.to_string());
            let topic = input.kafka.topic.clone();
            let probe = kafka::consumer(&input.kafka, &input.group_id).map_err(fail)?;
            let partitions = kafka::partitions(&probe, &input.kafka, &topic).map_err(fail)?;
            tracing::info!(
                topic = %topic,
                partitions = partitions.len(),
                messages = partitions.iter().map(|(_, low, high)| high - low).sum::<i64>(),
                "reading Kafka"
            );
            let topic: Arc<str> = Arc::from(topic);
            let mut threads = Vec::with_capacity(workers);
            let mut committers = Vec::with_capacity(workers);
            let peers = layout.peers();
            // A queue per worker, fed by the reader of that worker's partitions.
            let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
                .map(|_| {
                    let (queue, inbox) = worker_queue(queue_chunks);
                    (queue, Mutex::new(Some(inbox)))
                })
                .unzip();
            for (local, sender) in senders.into_iter().enumerate() {
                let worker = layout.first_worker() + local;
                let consumer =
                    Arc::new(kafka::consumer(&input.kafka, &input.group_id).map_err(fail)?);
                let reader = PartitionReader {
                    topic: topic.clone(),
                    consumer: consumer.clone(),
                    partitions: partitions
                        .iter()
                        .filter(|(p, _, _)| *p as usize % peers == worker)
                        .map(|(p, _, high)| {
                            let end = input.end_offsets.as_ref().and_then(|ends| ends.get(p));
                            (*p, end.copied().unwrap_or(*high))
                        })
                        .collect(),
                    start: input.start.clone(),
                    bounded: input.bounded,
                    chunk_messages: pipeline.engine.chunk_messages,
                    stop: input.stop.clone(),
                    progress: pipeline.source_progress.clone(),
                };
                committers.push(input.commit.then_some(consumer));
                let stats = pipeline.dataflow_stats.clone();
                threads.push(spawn(
                    format!("wrongbook-kafka-{worker}"),
                    Box::new(move || {
                        reader.run(sender);
                        stats.thread_cpu.add_this_thread(Role::Source);
                    }),
                )?);
            }
            let ours: Vec<i32> = partitions
                .iter()
                .map(|(p, _, _)| *p)
                .filter(|p| {
                    (layout.first_worker()..layout.first_worker() + workers)
                        .contains(&(*p as usize % peers))
                })
                .collect();
            let watcher = kafka::consumer(&input.kafka, &input.group_id).map_err(fail)?;
            let (lag_topic, progress, watch_done) = (
                topic.to_string(),
                pipeline.source_progress.clone(),
                done.clone(),
            );
            threads.push(spawn(
                "wrongbook-lag".into(),
                Box::new(move || {
                    kafka::watch_high_watermarks(watcher, lag_topic, ours, progress, watch_done)
                }),
            )?);
            Ok(Sources {
                receivers,
                threads,
                committers,
                topic,
                done,
            })
        }
    }
}

/// Runs the pipeline: a bounded input to its end, Kafka until stopped (or caught up, bounded).
pub fn run_pipeline(pipeline: Pipeline) -> Result<RunSummary, EngineError> {
    let started = Instant::now();
    let layout = pipeline.layout.clone();
    let workers = layout.workers;
    let failure = Arc::new(Failure::default());
    let Sources {
        receivers,
        threads,
        committers,
        topic,
        done,
    } = start_sources(&pipeline)?;
    let epoch_interval = pipeline
        .engine
        .epoch_interval
        .0
        .max(Duration::from_millis(1));
    let clock = match &pipeline.input {
        Input::Bounded(_) => EpochClock::Source,
        Input::Kafka(_) => EpochClock::Wall(epoch_interval),
    };
    let (writer, checkpoints, restored) = match &pipeline.input {
        Input::Kafka(input) => {
            let writer = match &input.checkpoint {
                Some(plan) => Some((
                    checkpoint::Writer::start(
                        plan.dir.clone(),
                        topic.to_string(),
                        layout.process,
                        layout.processes,
                        plan.stats.clone(),
                    )
                    .map_err(|e| EngineError::Start(e.to_string()))?,
                    (plan.interval.as_millis() / epoch_interval.as_millis()).max(1) as u64,
                )),
                None => None,
            };
            let checkpoints = writer.as_ref().map(|(w, every)| (w.parts.clone(), *every));
            (writer.map(|(w, _)| w), checkpoints, input.restored.clone())
        }
        Input::Bounded(_) => (None, None, None),
    };

    let shared = Arc::new(WorkerShared {
        ingestor: Ingestor {
            spec: pipeline.spec.clone(),
            max_message_bytes: pipeline.engine.max_message_bytes,
        },
        routing: pipeline.routing.clone(),
        fix_result_desc: Arc::new(pipeline.spec.fix_result_desc.clone()),
        engine: pipeline.engine.clone(),
        receivers,
        committers: committers.into_iter().map(Mutex::new).collect(),
        topic,
        clock,
        caught_up_workers: pipeline.caught_up_workers.clone(),
        checkpoints,
        restored,
        write_from: match &pipeline.input {
            Input::Kafka(input) => input.write_from.clone(),
            Input::Bounded(_) => None,
        },
        dims: pipeline.dims,
        dims_after: Mutex::new(pipeline.dims_after),
        dim_updates: Mutex::new(pipeline.dim_updates),
        dim_stats: pipeline.dim_stats.clone(),
        sink: pipeline.sink,
        reconcile: pipeline.reconcile,
        dead_letters: pipeline.dead_letters.clone(),
        sink_stats: pipeline.sink_stats.clone(),
        dataflow_stats: pipeline.dataflow_stats.clone(),
        failure: failure.clone(),
        first_worker: layout.first_worker(),
    });

    let guards = start_workers(&layout, shared)?;

    let mut outcomes = OutcomeCounts::default();
    let mut dim_rows_changed = 0;
    let mut dim_change = None;
    let mut first_error = None;
    for result in guards.join() {
        match result {
            Ok(Ok(report)) => {
                outcomes.merge(&report.outcomes);
                dim_rows_changed += report.dim_rows_changed;
                dim_change = dim_change.or(report.dim_change);
            }
            Ok(Err(message)) => {
                first_error.get_or_insert(message);
            }
            Err(panic) => {
                first_error.get_or_insert(format!("a worker panicked: {panic}"));
            }
        }
    }
    // Readers end by themselves once the workers are gone; the lag watcher when told.
    done.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    if let Some(checkpoint::Writer { parts, thread }) = writer {
        // With the workers' senders gone, the writer ends once its queue is written.
        drop(parts);
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e.to_string());
            }
            Err(_) => {
                first_error.get_or_insert("the checkpoint writer panicked".into());
            }
        }
    }
    pipeline
        .dead_letters
        .flush()
        .map_err(|e| EngineError::Failed(format!("writing dead letters: {e}")))?;
    if let Some(message) = failure.message().or(first_error) {
        return Err(EngineError::Failed(message));
    }

    let stats = &pipeline.sink_stats;
    Ok(RunSummary {
        messages: pipeline.source_progress.messages.load(Ordering::Relaxed),
        outcomes,
        rows_upserted: stats.rows_upserted.load(Ordering::Relaxed),
        rows_deleted: stats.rows_deleted.load(Ordering::Relaxed),
        rows_reconciled: stats.rows_reconciled.load(Ordering::Relaxed),
        transactions: stats.transactions.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        write_micros: stats.write_micros.load(Ordering::Relaxed),
        dim_rows_changed,
        dim_change,
        workers,
        elapsed: started.elapsed(),
    })
}

/// Starts the workers: in cluster mode once every process is connected, or fails after the
/// layout's connect timeout naming the processes it cannot reach.
fn start_workers(
    layout: &Layout,
    shared: Arc<WorkerShared>,
) -> Result<timely::communication::WorkerGuards<Result<WorkerReport, String>>, EngineError> {
    let (started_tx, started) = crossbeam_channel::bounded(1);
    let config = layout.timely_config();
    let starting = std::thread::Builder::new()
        .name("wrongbook-connect".into())
        .spawn(move || {
            let guards = timely::execute(config, move |worker| {
                let result = run_worker(worker, &shared);
                if let Err(message) = &result {
                    shared.failure.set(message.clone());
                }
                shared
                    .dataflow_stats
                    .thread_cpu
                    .add_this_thread(Role::Worker);
                result
            });
            let _ = started_tx.send(guards);
        })
        .map_err(|e| EngineError::Start(e.to_string()))?;
    match started.recv_timeout(layout.connect_timeout) {
        Ok(guards) => {
            let _ = starting.join();
            guards.map_err(|e| {
                EngineError::Start(format!(
                    "{e}{}",
                    if layout.processes > 1 {
                        format!(
                            "\n  hint: is another process already listening on {} (a duplicate --process index)?",
                            layout.addresses[layout.process]
                        )
                    } else {
                        String::new()
                    }
                ))
            })
        }
        Err(_) => {
            let missing = layout.unreachable_peers();
            Err(EngineError::Start(format!(
                "process {} of {} could not connect to every process within {:?}; {}\n  hint: start all {} processes with the same hostfile and --processes {}, each with its own --process index",
                layout.process,
                layout.processes,
                layout.connect_timeout,
                if missing.is_empty() {
                    "every address answers, so a process may have a different --processes or hostfile".to_owned()
                } else {
                    format!("not reachable: {}", missing.join(", "))
                },
                layout.processes,
                layout.processes,
            )))
        }
    }
}

/// What every worker of the process shares.
struct WorkerShared {
    ingestor: Ingestor,
    routing: Arc<Routing>,
    fix_result_desc: Arc<std::collections::HashMap<i64, String>>,
    engine: EngineConfig,
    receivers: Vec<Mutex<Option<WorkerInbox>>>,
    committers: Vec<Mutex<Option<Arc<BaseConsumer>>>>,
    topic: Arc<str>,
    clock: EpochClock,
    caught_up_workers: Arc<AtomicUsize>,
    /// Offsets before which events only rebuild state (a replay of a range).
    write_from: Option<HashMap<i32, i64>>,
    /// Where finished checkpoint parts go, and how many epochs apart checkpoints are.
    checkpoints: Option<(crossbeam_channel::Sender<Part>, u64)>,
    restored: Option<Arc<Restored>>,
    /// The dimension tables at start, which the first process's workers feed a share each.
    dims: DimSnapshot,
    dims_after: Mutex<Option<LaterDims>>,
    /// Taken by worker 0, which feeds the dimension inputs' later changes.
    dim_updates: Mutex<Option<Receiver<DimDiff>>>,
    dim_stats: Arc<DimStats>,
    sink: SinkTarget,
    reconcile: bool,
    dead_letters: Arc<dyn DeadLetterSink>,
    sink_stats: Arc<SinkStats>,
    dataflow_stats: Arc<DataflowStats>,
    failure: Arc<Failure>,
    /// The global index of this process's first worker.
    first_worker: usize,
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    shared: &WorkerShared,
) -> Result<WorkerReport, String> {
    let index = worker.index();
    let peers = worker.peers();
    let local = index - shared.first_worker;
    let source = shared.receivers[local]
        .lock()
        .expect("receiver lock")
        .take()
        .expect("each worker takes its own receiver once")
        .open();

    let (command_tx, command_rx) = bounded(shared.engine.max_inflight_epochs as usize + 2);
    let (ack_tx, ack_rx) = unbounded();
    let activator = Default::default();
    let sink_failure = Arc::new(Mutex::new(None));
    let restored = match &shared.restored {
        Some(restored) => Some(JoinState::restore(restored.snapshots()?, index, peers)),
        None => None,
    };
    let snapshots: std::rc::Rc<std::cell::RefCell<BTreeMap<u64, Arc<Vec<u8>>>>> =
        Default::default();
    let hooks = shared
        .checkpoints
        .as_ref()
        .map(|(_, every)| CheckpointHooks {
            every: *every,
            snapshots: snapshots.clone(),
        });
    let shape = Arc::new(
        shared
            .ingestor
            .spec
            .dimensions
            .lookups
            .iter()
            .map(|l| (l.key, l.columns.len()))
            .collect(),
    );
    let DataflowHandles { ops, dims, probe } = build(
        worker,
        crate::dataflow::join::RowSpec {
            fix_result_desc: shared.fix_result_desc.clone(),
            lookups: shape,
        },
        shared.dataflow_stats.clone(),
        restored,
        hooks,
        shared.write_from.is_some(),
        SinkChannels {
            commands: command_tx.clone(),
            acks: ack_rx,
            activator: std::rc::Rc::clone(&activator),
            failure: sink_failure.clone(),
        },
    );
    let writer = shared
        .sink
        .connect()
        .map_err(|e| format!("worker {index}: sink: {e}"))?;
    let sink_thread = SinkThread {
        writer,
        commands: command_rx,
        acks: ack_tx,
        activator: activator
            .borrow_mut()
            .take()
            .expect("the sink operator registers its activator when built"),
        reconcile: shared.reconcile,
        index,
        peers,
        stats: shared.sink_stats.clone(),
    };
    let failure = shared.failure.clone();
    let stats = shared.dataflow_stats.clone();
    let sink_handle = std::thread::Builder::new()
        .name(format!("wrongbook-sink-{index}"))
        .spawn(move || {
            let result = sink_thread.run();
            if let Err(e) = &result {
                failure.set(e.to_string());
            }
            stats.thread_cpu.add_this_thread(Role::Sink);
            result
        })
        .map_err(|e| format!("worker {index}: cannot start the sink thread: {e}"))?;

    let committer = shared.committers[local]
        .lock()
        .expect("committer lock")
        .take();
    let dim_updates = if index == 0 {
        shared.dim_updates.lock().expect("dim updates lock").take()
    } else {
        None
    };
    let mut state = WorkerLoop {
        index,
        shared,
        routes: shared.routing.current(),
        dim_updates,
        corrections: Vec::new(),
        ingested_at: BTreeMap::new(),
        outcomes_published: Instant::now(),
        outcomes_unpublished: false,
        ops: Some(ops),
        dims: Some(dims),
        outcomes: OutcomeTally::default(),
        parse_buffers: ParseBuffers::default(),
        dim_rows_changed: 0,
        dim_change: None,
        commands: command_tx,
        committer,
        uncommitted: BTreeMap::new(),
        snapshots,
        checkpoint_offsets: BTreeMap::new(),
        checkpointed_offsets: shared
            .restored
            .as_ref()
            .map(|r| {
                r.offsets
                    .iter()
                    .filter(|(p, _)| **p as usize % peers == index)
                    .map(|(p, o)| (*p, *o))
                    .collect()
            })
            .unwrap_or_default(),
        peers,
    };
    // The first process's workers feed the dimension snapshot, a share each. Only one
    // process's: another process may have read the tables at another moment, and worker 0
    // feeds later changes as differences from its own process's snapshot.
    if shared.first_worker == 0 {
        state
            .dims
            .as_mut()
            .expect("dims are open at start")
            .load_share(&shared.dims, local, shared.receivers.len());
    }
    let result = state.drive(worker, &source, &probe, &sink_failure);
    // Whatever happened, let the sink thread finish.
    let _ = state.commands.send(SinkCommand::Finish);
    if result.is_ok() {
        state.write_checkpoints(&probe);
    }
    state.publish_outcomes();
    state.set_pending(None);
    let WorkerLoop {
        outcomes,
        dim_rows_changed,
        dim_change,
        commands,
        ..
    } = state;
    drop(commands);
    let sink_result = sink_handle
        .join()
        .map_err(|_| format!("worker {index}: the sink thread panicked"))?;
    result?;
    sink_result.map_err(|e| e.to_string())?;
    Ok(WorkerReport {
        outcomes: outcomes.counts(),
        dim_rows_changed,
        dim_change,
    })
}

type OpsInput = timely::dataflow::InputHandle<
    u64,
    timely::container::CapacityContainerBuilder<Vec<crate::dataflow::process::KeyedOp>>,
>;

/// One worker's loop state.
struct WorkerLoop<'a> {
    index: usize,
    shared: &'a WorkerShared,
    /// The routing history this worker ingests with; replaced when a new version is published.
    routes: Arc<RoutingHistory>,
    /// Dimension changes from the periodic refresh (worker 0 only).
    dim_updates: Option<Receiver<DimDiff>>,
    /// Applied dimension changes whose corrections are not committed yet: (epoch applied at,
    /// when, wide rows written before, dimension rows changed).
    corrections: Vec<(u64, Instant, u64, usize)>,
    /// When each epoch not yet written was first ingested into (for end-to-end latency).
    ingested_at: BTreeMap<u64, (Instant, i64)>,
    outcomes_published: Instant,
    /// Whether the tally changed since it was last published.
    outcomes_unpublished: bool,
    ops: Option<OpsInput>,
    dims: Option<crate::dataflow::DimInputs>,
    outcomes: OutcomeTally,
    /// The vectors parsing reuses from one message to the next.
    parse_buffers: ParseBuffers,
    dim_rows_changed: usize,
    dim_change: Option<DimChangeReport>,
    commands: crossbeam_channel::Sender<SinkCommand>,
    /// The Kafka consumer that commits this worker's offsets.
    committer: Option<Arc<BaseConsumer>>,
    /// Per epoch, the next offset of each partition read in it: committed once written.
    uncommitted: BTreeMap<u64, HashMap<i32, i64>>,
    /// Checkpoint snapshots the join took, by epoch, waiting for the epoch to be written.
    snapshots: std::rc::Rc<std::cell::RefCell<BTreeMap<u64, Arc<Vec<u8>>>>>,
    /// Per epoch, the next offsets read in it, until a checkpoint covers it.
    checkpoint_offsets: BTreeMap<u64, HashMap<i32, i64>>,
    /// The next offsets as of the last checkpoint written.
    checkpointed_offsets: HashMap<i32, i64>,
    peers: usize,
}

impl WorkerLoop<'_> {
    fn check_failures(&self, sink_failure: &Arc<Mutex<Option<String>>>) -> Result<(), String> {
        if self.shared.failure.is_set() {
            return Err(self.shared.failure.message().unwrap_or_default());
        }
        if let Some(message) = sink_failure.lock().expect("sink failure lock").take() {
            return Err(format!("worker {}: {message}", self.index));
        }
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.ops.as_ref().map_or(0, |ops| *ops.time())
    }

    fn drive(
        &mut self,
        worker: &mut timely::worker::Worker,
        source: &WorkerSource,
        probe: &timely::dataflow::ProbeHandle<u64>,
        sink_failure: &Arc<Mutex<Option<String>>>,
    ) -> Result<(), String> {
        let max_ahead = self.shared.engine.max_inflight_epochs;
        let clock = self.shared.clock;
        let mut final_epoch: Option<u64> = None;
        // The epoch by which everything the source held at start is ingested.
        let mut caught_up_at: Option<u64> = None;
        let mut reconciled = false;
        // When a later dimension snapshot was applied: the time, and the rows written before.
        let mut change_started: Option<(Instant, u64)> = None;
        loop {
            self.check_failures(sink_failure)?;
            self.commit_written(probe);
            self.write_checkpoints(probe);
            self.observe_written(probe);
            if self.outcomes_unpublished
                && self.outcomes_published.elapsed() >= Duration::from_millis(250)
            {
                self.publish_outcomes();
            }
            if final_epoch.is_none() {
                self.apply_dim_updates();
            }
            if let Some(epoch) = caught_up_at.filter(|_| !reconciled) {
                if !probe.less_than(&(epoch + 1)) {
                    reconciled = true;
                    if self.shared.reconcile {
                        let _ = self.commands.send(SinkCommand::Reconcile);
                    }
                    self.shared.caught_up_workers.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(worker = self.index, epoch, "caught up");
                }
            }
            let mut idle = true;
            match final_epoch {
                None => {
                    if let EpochClock::Wall(_) = clock {
                        self.advance_to(clock.now());
                    }
                    let epoch = self.epoch();
                    let caught_up = !probe.less_than(&epoch.saturating_sub(max_ahead));
                    if caught_up {
                        match source.try_recv() {
                            Ok(SourceEvent::Batch(batch)) => {
                                idle = false;
                                self.take(batch)?;
                            }
                            Ok(SourceEvent::FileChunk(chunk)) => {
                                idle = false;
                                self.take(chunk.split())?;
                            }
                            Ok(SourceEvent::CaughtUp) => {
                                caught_up_at = Some(self.epoch());
                            }
                            Ok(SourceEvent::End { final_epoch: end }) => {
                                idle = false;
                                let end = end.max(self.epoch() + 1);
                                self.advance_to(end);
                                self.ops = None;
                                final_epoch = Some(end);
                                // A bounded input is caught up at its end.
                                caught_up_at.get_or_insert(end);
                            }
                            Ok(SourceEvent::Failed(message)) => return Err(message),
                            Err(TryRecvError::Empty) => {}
                            Err(TryRecvError::Disconnected) => {
                                return Err("the source stopped without an end".into())
                            }
                        }
                    }
                }
                Some(end) => {
                    if self.dims.is_some() {
                        let later = if self.index == 0 {
                            self.shared.dims_after.lock().expect("dims lock").take()
                        } else {
                            None
                        };
                        if let Some(later) = later {
                            // Correct rows that are already written: wait for them first.
                            while probe.less_than(&end) {
                                self.check_failures(sink_failure)?;
                                worker.step_or_park(Some(Duration::from_millis(1)));
                            }
                            // Stale rows go before the corrections are timed.
                            if !reconciled {
                                reconciled = true;
                                if self.shared.reconcile {
                                    let _ = self.commands.send(SinkCommand::Reconcile);
                                }
                                self.shared.caught_up_workers.fetch_add(1, Ordering::SeqCst);
                            }
                            let next = later()?;
                            let diff = self.shared.dims.diff(&next);
                            self.dim_rows_changed = diff.len();
                            tracing::info!(
                                rows = diff.len(),
                                "applying the later dimension snapshot"
                            );
                            change_started = Some((Instant::now(), self.rows_written()));
                            let dims = self.dims.as_mut().expect("checked above");
                            dims.apply(&diff);
                            dims.advance_to(end + 1);
                        }
                        self.dims = None;
                        idle = false;
                    }
                    if probe.done() {
                        if !reconciled && self.shared.reconcile {
                            let _ = self.commands.send(SinkCommand::Reconcile);
                        }
                        if !reconciled {
                            self.shared.caught_up_workers.fetch_add(1, Ordering::SeqCst);
                        }
                        self.commit_written(probe);
                        if let Some((started, rows_before)) = change_started {
                            self.dim_change = Some(DimChangeReport {
                                rows_written: self.rows_written() - rows_before,
                                elapsed: started.elapsed(),
                            });
                        }
                        return Ok(());
                    }
                }
            }
            if idle {
                worker.step_or_park(Some(Duration::from_millis(1)));
            } else {
                worker.step();
            }
        }
    }

    /// Hands the checkpoint parts of every written epoch to the checkpoint writer.
    fn write_checkpoints(&mut self, probe: &timely::dataflow::ProbeHandle<u64>) {
        let Some((parts, _)) = &self.shared.checkpoints else {
            return;
        };
        loop {
            let ready = {
                let mut snapshots = self.snapshots.borrow_mut();
                match snapshots.first_entry() {
                    Some(entry) if !probe.less_than(&(entry.key() + 1)) => {
                        Some(entry.remove_entry())
                    }
                    _ => None,
                }
            };
            let Some((epoch, state)) = ready else {
                return;
            };
            while let Some(entry) = self.checkpoint_offsets.first_entry() {
                if *entry.key() > epoch {
                    break;
                }
                for (partition, next) in entry.remove() {
                    let slot = self.checkpointed_offsets.entry(partition).or_insert(next);
                    *slot = (*slot).max(next);
                }
            }
            let _ = parts.send(Part {
                epoch,
                worker: self.index,
                peers: self.peers,
                offsets: self.checkpointed_offsets.clone(),
                state,
            });
        }
    }

    /// Commits the Kafka offsets of every epoch the probe says is written.
    fn commit_written(&mut self, probe: &timely::dataflow::ProbeHandle<u64>) {
        let Some(consumer) = &self.committer else {
            return;
        };
        let mut next_offsets: HashMap<i32, i64> = HashMap::new();
        while let Some(entry) = self.uncommitted.first_entry() {
            if probe.less_than(&(entry.key() + 1)) {
                break;
            }
            for (partition, offset) in entry.remove() {
                let next = next_offsets.entry(partition).or_insert(offset);
                *next = (*next).max(offset);
            }
        }
        if let Err(e) = kafka::commit(consumer, &self.shared.topic, &next_offsets) {
            tracing::warn!(worker = self.index, error = %e, "committing Kafka offsets failed; the next commit covers them");
        }
    }

    fn advance_to(&mut self, epoch: u64) {
        if let Some(ops) = self.ops.as_mut() {
            if epoch > *ops.time() {
                ops.advance_to(epoch);
            }
        }
        if let Some(dims) = self.dims.as_mut() {
            if epoch > dims.epoch() {
                dims.advance_to(epoch);
            }
        }
    }

    fn rows_written(&self) -> u64 {
        let stats = &self.shared.sink_stats;
        stats.rows_upserted.load(Ordering::Relaxed) + stats.rows_deleted.load(Ordering::Relaxed)
    }

    /// Ingests a batch at its epoch, or on a wall clock at the clock's.
    fn take(&mut self, mut batch: SourceBatch) -> Result<(), String> {
        if let EpochClock::Wall(_) = self.shared.clock {
            batch.epoch = self.epoch().max(self.shared.clock.now());
        }
        self.advance_to(batch.epoch);
        self.ingest(&batch)
    }

    fn ingest(&mut self, batch: &SourceBatch) -> Result<(), String> {
        let started = Instant::now();
        if self.routes.latest().version != self.shared.routing.version() {
            self.routes = self.shared.routing.current();
        }
        if !self.ingested_at.contains_key(&batch.epoch) {
            let now = crate::source::routing::now_ms();
            if self.ingested_at.is_empty() {
                self.set_pending(Some(now));
            }
            self.ingested_at.insert(batch.epoch, (started, now));
        }
        let ops = self
            .ops
            .as_mut()
            .expect("ingest happens before the end of input");
        // The batch's operations go into the dataflow as one container per owning worker: a few
        // large containers cost timely less than many of its default size (about thirty
        // operations), and a container with one owner is moved to it whole, not copied.
        let mut accepted = OpsByOwner::new(self.peers, batch.len());
        for (i, message) in batch.messages() {
            // In a replay of a range, events before it only rebuild state: they are not
            // counted, dead-lettered or written.
            let in_range = match (&self.shared.write_from, &batch.positions) {
                (
                    Some(write_from),
                    Positions::Kafka {
                        partitions,
                        offsets,
                        ..
                    },
                ) => write_from
                    .get(&partitions[i])
                    .is_none_or(|from| offsets[i] >= *from),
                _ => true,
            };
            let routes = self.routes.at(batch.timestamp(i));
            let (label, outcome) = self.shared.ingestor.ingest(
                message,
                routes,
                &mut self.parse_buffers,
                &mut accepted,
            );
            if in_range {
                self.outcomes.record(&label, &outcome);
            }
            match outcome {
                Outcome::Accepted if !in_range => {
                    accepted.last_mut().expect("an accepted operation").write = false
                }
                Outcome::Accepted => {}
                Outcome::Skipped(_) => {}
                Outcome::DeadLetter(_) if !in_range => {}
                Outcome::DeadLetter(rejection) => self
                    .shared
                    .dead_letters
                    .send(DeadLetter::new(
                        rejection.reason,
                        rejection.detail,
                        batch.position(i),
                        message.bytes(),
                    ))
                    .map_err(|e| format!("writing a dead letter: {e}"))?,
            }
        }
        for owned in accepted.non_empty() {
            ops.send_batch(owned);
        }
        if let Positions::Kafka {
            partitions,
            offsets,
            ..
        } = &batch.positions
        {
            let mut next: HashMap<i32, i64> = HashMap::new();
            for (partition, offset) in partitions.iter().zip(offsets) {
                let slot = next.entry(*partition).or_insert(offset + 1);
                *slot = (*slot).max(offset + 1);
            }
            if self.shared.checkpoints.is_some() {
                let epoch_offsets = self.checkpoint_offsets.entry(batch.epoch).or_default();
                for (partition, offset) in &next {
                    let slot = epoch_offsets.entry(*partition).or_insert(*offset);
                    *slot = (*slot).max(*offset);
                }
            }
            let epoch_offsets = self.uncommitted.entry(batch.epoch).or_default();
            for (partition, offset) in next {
                let slot = epoch_offsets.entry(partition).or_insert(offset);
                *slot = (*slot).max(offset);
            }
        }
        self.shared
            .dataflow_stats
            .ingest_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.outcomes_unpublished = true;
        Ok(())
    }

    /// Shares this worker's outcome tally with metrics and reports.
    fn publish_outcomes(&mut self) {
        self.outcomes_published = Instant::now();
        self.outcomes_unpublished = false;
        self.shared
            .dataflow_stats
            .outcomes
            .lock()
            .expect("outcomes lock")
            .insert(self.index, self.outcomes.counts());
    }

    /// Records when this worker's oldest uncommitted batch was ingested (`None`: none is).
    fn set_pending(&self, since_ms: Option<i64>) {
        let mut pending = self
            .shared
            .dataflow_stats
            .pending_since_ms
            .lock()
            .expect("pending lock");
        match since_ms {
            Some(ms) => pending.insert(self.index, ms),
            None => pending.remove(&self.index),
        };
    }

    /// Observes the end-to-end latency of every epoch now written, and the corrections of
    /// dimension changes now committed.
    fn observe_written(&mut self, probe: &timely::dataflow::ProbeHandle<u64>) {
        let mut changed = false;
        while let Some(entry) = self.ingested_at.first_entry() {
            if probe.less_than(&(entry.key() + 1)) {
                break;
            }
            let (at, _) = entry.remove();
            self.shared.dataflow_stats.end_to_end.observe(at.elapsed());
            changed = true;
        }
        if changed {
            self.set_pending(self.ingested_at.values().next().map(|(_, ms)| *ms));
        }
        while let Some(&(epoch, at, rows_before, dim_rows)) = self.corrections.first() {
            if probe.less_than(&(epoch + 1)) {
                break;
            }
            self.corrections.remove(0);
            let correction = DimCorrection {
                dim_rows,
                wide_rows: self.rows_written() - rows_before,
                seconds: at.elapsed().as_secs_f64(),
                at_ms: crate::source::routing::now_ms(),
            };
            tracing::info!(
                dim_rows,
                wide_rows = correction.wide_rows,
                seconds = correction.seconds,
                "dimension change corrected: every affected wide row is committed"
            );
            *self
                .shared
                .dim_stats
                .last_correction
                .lock()
                .expect("dim stats lock") = Some(correction);
        }
    }

    /// Feeds dimension changes from the periodic refresh into the dataflow (worker 0).
    fn apply_dim_updates(&mut self) {
        let rows_before = self.rows_written();
        let (Some(updates), Some(dims)) = (&self.dim_updates, self.dims.as_mut()) else {
            return;
        };
        while let Ok(diff) = updates.try_recv() {
            let epoch = dims.epoch();
            dims.apply(&diff);
            dims.flush();
            self.corrections
                .push((epoch, Instant::now(), rows_before, diff.len()));
        }
    }
}
