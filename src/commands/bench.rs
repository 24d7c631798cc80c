//! `wrongbook bench`: join throughput on generated data, with no external services.
//!
//! Two measurements on the same generated events:
//!
//! 1. **Stages**, one thread each, one after the other: parse + validate, route + process,
//!    record state, dimension join, wide-row assembly, sink batch building. Each figure is
//!    events (or rows) per second of that stage alone, so the slowest stage is visible.
//! 2. **End to end**: the real engine on N workers reading the events from a file, through the
//!    sink (in memory by default, none, or the database of a config), optionally followed by a
//!    dimension change whose corrections are timed.
//!
//! Memory is reported as the process's peak RSS above what it held before the run (the run
//! comes before the stage measurements, so their data does not count), and as the record
//! state's own estimate of its heap, each per live record.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use serde::Serialize;

use crate::commands::db_limit::{self, DbLimit, DbLimitError};
use crate::commands::gen::{generate_into, routing_rows, GenOptions};
use crate::commands::progress::ProgressDisplay;
use crate::commands::scaling::{self, ScalingFigure};
use crate::config::{Config, EngineConfig};
use crate::dataflow::dims::PatternLookup;
use crate::dataflow::ingest::Ingestor;
use crate::dataflow::join::lookup_for;
use crate::dataflow::owner::OpsByOwner;
use crate::dataflow::process::{process, KeyedOp};
use crate::dataflow::records::RecordStore;
use crate::dataflow::route::Routing;
use crate::dataflow::route::{Route, RouteTable};
use crate::dataflow::wide::WideRow;
use crate::dataflow::DataflowStats;
use crate::engine::{run_pipeline, EngineError, Input, Pipeline, RunSummary};
use crate::event::{parse_envelope, ParseBuffers};
use crate::ops::thread_cpu::CpuSeconds;
use crate::provenance::{BuildInfo, MachineInfo};
use crate::sink::dead_letters::DeadLetterMemory;
use crate::sink::memory::MemoryTable;
use crate::sink::statements::{row_params, upsert_sql};
use crate::sink::{SinkBatch, SinkStats, SinkTarget, WriteOptions};
use crate::source::dims::{DimSnapshot, PatternRow};
use crate::source::file::{BoundedInput, SourceProgress};
use crate::spec::Spec;

/// Where the end-to-end run writes.
#[derive(Debug, Clone)]
pub enum BenchSink {
    /// Nowhere: the dataflow alone.
    None,
    /// An in-memory table.
    Memory,
    /// The wide table of this configuration's database (reconciled, as a replay would).
    Database(Box<Config>),
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub gen: GenOptions,
    pub workers: usize,
    pub sink: BenchSink,
    /// After the events, rename this share of the patterns (the most used first) and time the
    /// corrections.
    pub rename_share: f64,
    pub engine: EngineConfig,
    pub progress: bool,
    /// With a database sink: also measure the database's own limit (see [`db_limit`]).
    pub db_limit: bool,
    /// Then run this many rounds of a one-worker and a `workers`-worker pass without a sink,
    /// and report how throughput scales (see [`scaling`]); 0 for none.
    pub scaling_rounds: usize,
}

/// One stage's throughput.
#[derive(Debug, Clone, Serialize)]
pub struct StageFigure {
    pub stage: &'static str,
    /// Items per second of this stage alone, on one thread.
    pub per_second: f64,
    /// What is counted: events, operations or rows.
    pub unit: &'static str,
}

/// Everything a bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub events: u64,
    pub workers: usize,
    pub sink: String,
    /// The build that ran (version, commit, optimized or not), to compare reports across
    /// commits.
    pub build: BuildInfo,
    /// The machine it ran on (CPU, kernel), to compare reports across machines.
    pub machine: MachineInfo,
    pub cores: usize,
    pub load_average_1m: Option<f64>,
    pub elapsed_seconds: f64,
    pub events_per_second: f64,
    pub events_per_second_per_worker: f64,
    /// CPU time (user + system) of all the engine's threads during the run; a database
    /// server's own CPU is not in it. `None` where /proc is missing.
    pub cpu_seconds: Option<f64>,
    /// Events per CPU-second: throughput per core, which other load on the machine changes
    /// much less than events per wall-clock second.
    pub events_per_cpu_second: Option<f64>,
    /// CPU time of the run's threads by role, from their own clocks (zero where the system
    /// does not tell a thread's CPU time). On one worker the source reader and the sink
    /// threads run on the other cores; with a worker per core their time comes out of the
    /// workers', which is what keeps two workers from twice one worker's throughput.
    pub cpu_seconds_by_thread: CpuSeconds,
    pub live_records: i64,
    pub keys_with_state: u64,
    pub rows_upserted: u64,
    pub rows_deleted: u64,
    pub dead_letters: u64,
    pub peak_rss_bytes: Option<u64>,
    pub rss_bytes_per_live_record: Option<f64>,
    pub state_bytes: u64,
    pub state_bytes_per_live_record: f64,
    pub worker_ingest_seconds: f64,
    pub worker_join_seconds: f64,
    pub sink_write_seconds: f64,
    pub stages: Vec<StageFigure>,
    pub dim_change: Option<DimChangeFigure>,
    pub db_limit: Option<DbLimitFigure>,
    pub scaling: Option<ScalingFigure>,
}

/// The engine against the database's own limit, in rows of the final table per second.
#[derive(Debug, Clone, Serialize)]
pub struct DbLimitFigure {
    pub limit: DbLimit,
    /// Rows of the final table per second of the whole run (parse to commit).
    pub engine_rows_per_second: f64,
    /// The engine's figure as a share of the limit on as many connections as it used (one per
    /// worker, two at most).
    pub share_of_limit: f64,
}

/// The corrections of the dimension change.
#[derive(Debug, Clone, Serialize)]
pub struct DimChangeFigure {
    pub patterns_renamed: usize,
    pub rows_corrected: u64,
    pub seconds: f64,
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    DbLimit(#[from] DbLimitError),
}

/// Memory figures from /proc (Linux): (current RSS, peak RSS), bytes.
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// What the bench runs the engine on: its generated events in `input`, with `dims`.
pub struct BenchInput<'a> {
    pub input: &'a Path,
    pub spec: &'a Arc<Spec>,
    pub routing: &'a Arc<Routing>,
    pub dims: &'a DimSnapshot,
    pub engine: &'a EngineConfig,
}

impl BenchInput<'_> {
    /// The engine over the input on `workers` workers of this process, writing to `sink`,
    /// with counters of its own and no later dims.
    pub fn pipeline(&self, workers: usize, sink: SinkTarget) -> Pipeline {
        self.pipeline_over(self.input, workers, sink)
    }

    /// [`BenchInput::pipeline`] over the events at `input` instead.
    pub fn pipeline_over(&self, input: &Path, workers: usize, sink: SinkTarget) -> Pipeline {
        Pipeline {
            spec: self.spec.clone(),
            routing: self.routing.clone(),
            engine: self.engine.clone(),
            layout: crate::cluster::Layout::single(workers),
            input: Input::Bounded(BoundedInput::File(input.to_path_buf())),
            dims: self.dims.clone(),
            dims_after: None,
            dim_updates: None,
            dim_stats: Default::default(),
            sink,
            reconcile: false,
            dead_letters: Arc::new(DeadLetterMemory::default()),
            source_progress: Arc::new(SourceProgress::default()),
            sink_stats: Arc::new(SinkStats::default()),
            dataflow_stats: Arc::new(DataflowStats::default()),
            caught_up_workers: Default::default(),
        }
    }
}

/// Runs the pipelines at the same time (each on threads of its own), and tells the CPU time
/// (user + system, seconds) the process used meanwhile, where /proc can tell.
pub(crate) fn run_measuring_cpu(
    pipelines: Vec<Pipeline>,
) -> (Vec<Result<RunSummary, EngineError>>, Option<f64>) {
    let before = cpu_time();
    let results = match <[Pipeline; 1]>::try_from(pipelines) {
        Ok([pipeline]) => vec![without_panics(|| run_pipeline(pipeline))],
        Err(pipelines) => std::thread::scope(|scope| {
            let runs: Vec<_> = pipelines
                .into_iter()
                .map(|pipeline| scope.spawn(move || without_panics(|| run_pipeline(pipeline))))
                .collect();
            runs.into_iter()
                .map(|run| {
                    run.join()
                        .unwrap_or_else(|panic| Err(pass_panicked(&*panic)))
                })
                .collect()
        }),
    };
    let cpu = cpu_time()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before).as_secs_f64());
    (results, cpu)
}

/// Runs a benchmark pass, a panic in it becoming the pass's error: the bench then reports it
/// and cleans up as after any failed pass, however many passes run at once.
fn without_panics(
    pass: impl FnOnce() -> Result<RunSummary, EngineError>,
) -> Result<RunSummary, EngineError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(pass))
        .unwrap_or_else(|panic| Err(pass_panicked(&*panic)))
}

/// The error of a pass that panicked with `panic`, with its message when it has one.
fn pass_panicked(panic: &(dyn std::any::Any + Send)) -> EngineError {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    EngineError::Failed(match message {
        Some(message) => format!("a benchmark pass panicked: {message}"),
        None => "a benchmark pass panicked".into(),
    })
}

/// CPU time this process has used (user + system), from /proc (Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces: the
    // 12th and 13th of them are utime and stime.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let user: u64 = fields.nth(11)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    // In clock ticks of 1/100 s (Linux's USER_HZ, fixed for the /proc interface).
    Some(Duration::from_millis((user + system) * 10))
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The dims with the first `share` of patterns (the generator's most used) renamed.
fn renamed(dims: &DimSnapshot, share: f64) -> (DimSnapshot, usize) {
    let mut patterns: Vec<PatternRow> = dims.patterns.iter().cloned().collect();
    patterns.sort_by_key(|p| {
        p.id.strip_prefix("pattern_")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    let count = ((patterns.len() as f64) * share).ceil() as usize;
    for p in patterns.iter_mut().take(count) {
        p.name = Some(format!("{}·renamed", p.name.as_deref().unwrap_or("")));
    }
    let mut next = dims.clone();
    next.patterns = patterns.into_iter().collect();
    (next, count)
}

/// Runs the bench.
pub fn bench(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let scratch = ScratchDir::create()?;
    let dir = scratch.path();
    let input = dir.join("bench-events.jsonl");
    eprintln!("generating {} events…", opts.gen.events);
    let mut out = super::gen::BlockWriter::new(
        std::fs::File::create(&input)
            .map_err(|e| BenchError::Io(format!("{}: {e}", input.display())))?,
    );
    let mut sample = Vec::new();
    let mut write_error = None;
    let (dims, _) = generate_into(&opts.gen, |message| {
        if sample.len() < 200_000 {
            sample.push(message.clone());
        }
        if write_error.is_none() {
            if let Err(e) = out.write_all(&message).and_then(|_| out.write_all(b"\n")) {
                write_error = Some(e);
            }
        }
    });
    if let Some(e) = write_error.or_else(|| out.flush().err()) {
        return Err(BenchError::Io(format!("{}: {e}", input.display())));
    }
    drop(out);

    let spec = Spec::builtin();
    let routes = RouteTable::build(routing_rows(), &spec);
    let mut written_table = None;
    let (sink, sink_name) = match &opts.sink {
        BenchSink::None => (SinkTarget::Discard, "none".to_owned()),
        BenchSink::Memory => (
            SinkTarget::Memory(MemoryTable::default()),
            "memory".to_owned(),
        ),
        BenchSink::Database(config) => {
            let settings = config.database();
            let target = format!("{} table {}", settings.target(), bench_table(config).name);
            written_table = Some(BenchTable::create(config)?);
            (
                SinkTarget::Database {
                    settings,
                    table: bench_table(config),
                    options: WriteOptions::of(&config.sink),
                },
                target,
            )
        }
    };
    let (later, renamed_count) = if opts.rename_share > 0.0 {
        let (later, count) = renamed(&dims, opts.rename_share);
        (Some(later), count)
    } else {
        (None, 0)
    };
    let baseline = rss();
    let spec = Arc::new(spec);
    let routing = Routing::fixed(routes);
    let bench_input = BenchInput {
        input: &input,
        spec: &spec,
        routing: &routing,
        dims: &dims,
        engine: &opts.engine,
    };
    let mut pipeline = bench_input.pipeline(opts.workers, sink);
    pipeline.dims_after = later.map(|d| Box::new(move || Ok(d)) as crate::engine::LaterDims);
    pipeline.reconcile = matches!(opts.sink, BenchSink::Database(_));
    let sink_stats = pipeline.sink_stats.clone();
    let dataflow_stats = pipeline.dataflow_stats.clone();
    eprintln!(
        "running the engine on {} worker(s), sink: {sink_name}…",
        opts.workers
    );
    let progress = opts
        .progress
        .then(|| ProgressDisplay::start(pipeline.source_progress.clone(), sink_stats.clone()));
    let (results, cpu) = run_measuring_cpu(vec![pipeline]);
    if let Some(progress) = progress {
        progress.finish();
    }
    let summary = results
        .into_iter()
        .next()
        .expect("one result per pipeline")?;
    // Peak memory is read before the passes and stage measurements that follow, which hold
    // data of their own.
    let after = rss();
    let limit = match &opts.sink {
        BenchSink::Database(config) => {
            let settings = config.database();
            let table = bench_table(config);
            let measured = (opts.db_limit && matches!(settings.url, crate::db::DbUrl::Mysql(_)))
                .then(|| {
                    eprintln!("measuring the database's own limit with the same rows (mariadb client, 1000-row upserts, 1 and 2 connections)…");
                    db_limit::measure(&settings, &table, dir)
                })
                .transpose();
            let dropped = written_table.take().map_or(Ok(()), BenchTable::drop_now);
            let measured = measured?;
            dropped?;
            measured
        }
        _ => None,
    };
    let scaling = match opts.scaling_rounds {
        0 => None,
        rounds => {
            eprintln!(
                "measuring scaling: {rounds} round(s) of a 1-worker pass, a {n}-worker pass and \
                 {n} independent 1-worker engines on a part each, no sink…",
                n = opts.workers
            );
            Some(scaling::measure(&bench_input, opts.workers, rounds)?)
        }
    };
    drop(scratch);
    eprintln!("measuring stages on {} events…", sample.len());
    let stages = measure_stages(&sample, &dims);
    drop(sample);

    use std::sync::atomic::Ordering::Relaxed;
    let live = dataflow_stats.live_records.load(Relaxed);
    let state_bytes = dataflow_stats.bytes.load(Relaxed);
    let peak = match (baseline, after) {
        (Some((before, _)), Some((_, peak))) => Some(peak.saturating_sub(before)),
        _ => None,
    };
    let seconds = summary.elapsed.as_secs_f64();
    Ok(BenchReport {
        events: summary.messages,
        workers: opts.workers,
        sink: sink_name,
        build: BuildInfo::current(),
        machine: MachineInfo::current(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average_1m: load_average(),
        elapsed_seconds: seconds,
        events_per_second: summary.events_per_second(),
        events_per_second_per_worker: summary.events_per_second() / opts.workers as f64,
        cpu_seconds: cpu,
        events_per_cpu_second: cpu
            .filter(|c| *c > 0.0)
            .map(|c| summary.messages as f64 / c),
        cpu_seconds_by_thread: dataflow_stats.thread_cpu.seconds(),
        live_records: live,
        keys_with_state: dataflow_stats.keys.load(Relaxed),
        rows_upserted: summary.rows_upserted,
        rows_deleted: summary.rows_deleted,
        dead_letters: summary.outcomes.totals().dead_letter_total(),
        peak_rss_bytes: peak,
        rss_bytes_per_live_record: peak.map(|p| p as f64 / live.max(1) as f64),
        state_bytes,
        state_bytes_per_live_record: state_bytes as f64 / live.max(1) as f64,
        worker_ingest_seconds: Duration::from_nanos(dataflow_stats.ingest_nanos.load(Relaxed))
            .as_secs_f64(),
        worker_join_seconds: Duration::from_nanos(dataflow_stats.join_nanos.load(Relaxed))
            .as_secs_f64(),
        sink_write_seconds: Duration::from_micros(summary.write_micros).as_secs_f64(),
        stages,
        db_limit: limit.map(|limit| {
            let engine = live as f64 / seconds.max(1e-9);
            let reference = if opts.workers > 1 {
                limit.two_connections
            } else {
                limit.one_connection
            };
            DbLimitFigure {
                engine_rows_per_second: engine,
                share_of_limit: engine / reference.max(1e-9),
                limit,
            }
        }),
        dim_change: summary.dim_change.map(|c| DimChangeFigure {
            patterns_renamed: renamed_count,
            rows_corrected: c.rows_written,
            seconds: c.elapsed.as_secs_f64(),
        }),
        scaling,
    })
}

/// The table a bench writes: the configuration's wide table name with `_bench` appended, so
/// that a bench never touches the job's own rows. Created empty before the run, dropped after.
fn bench_table(config: &Config) -> crate::sink::statements::WideTable {
    crate::sink::statements::WideTable::plain(format!("{}_bench", config.sink.table))
}

/// The bench's own table ([`bench_table`]) once created empty: dropped by
/// [`BenchTable::drop_now`] when the bench is done with it, or when this is dropped, so that a
/// bench that fails on the way leaves no table behind in the user's database either.
struct BenchTable {
    settings: crate::db::DbSettings,
    name: String,
    /// Whether the table is still there to drop.
    created: bool,
    /// Dropped after the table, so that an interrupt until then drops it too.
    _on_interrupt: DropOnInterrupt,
}

impl BenchTable {
    fn create(config: &Config) -> Result<BenchTable, BenchError> {
        let settings = config.database();
        let name = bench_table(config).name;
        let on_interrupt = DropOnInterrupt::register(&settings, &name);
        let mut db = settings.connect()?;
        db.execute_script(&format!(
            "DROP TABLE IF EXISTS {name};\n{}",
            crate::schema::wide_table_ddl(db.dialect(), &name)
        ))?;
        Ok(BenchTable {
            settings,
            name,
            created: true,
            _on_interrupt: on_interrupt,
        })
    }

    fn drop_table(&mut self) -> Result<(), crate::db::DbError> {
        self.created = false;
        drop_table(&self.settings, &self.name)
    }

    /// Drops the table, telling whether that worked.
    fn drop_now(mut self) -> Result<(), crate::db::DbError> {
        self.drop_table()
    }
}

impl Drop for BenchTable {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = self.drop_table() {
                tracing::warn!(table = %self.name, error = %e, "cannot drop the bench's table");
            }
        }
    }
}

/// The bench's directory of temporary files: the generated events, the scaling passes' parts
/// and the database limit's statement files, hundreds of megabytes for a million events. It is
/// removed when dropped, so a bench that fails on the way leaves nothing behind; an interrupted
/// bench removes it too ([`clean_up_on_interrupt`]).
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// The path of this process's scratch directory, under the system's temporary directory
    /// (`TMPDIR`).
    fn path_of_this_process() -> PathBuf {
        std::env::temp_dir().join(format!("wrongbook-bench-{}", std::process::id()))
    }

    fn create() -> Result<ScratchDir, BenchError> {
        let path = ScratchDir::path_of_this_process();
        std::fs::create_dir_all(&path)
            .map_err(|e| BenchError::Io(format!("{}: {e}", path.display())))?;
        Ok(ScratchDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove the bench's temporary files");
            }
        }
    }
}

fn drop_table(settings: &crate::db::DbSettings, name: &str) -> Result<(), crate::db::DbError> {
    settings
        .connect()?
        .execute_script(&format!("DROP TABLE IF EXISTS {name}"))
}

/// The tables a bench has made in the user's database and not dropped yet, which an interrupt
/// drops ([`clean_up_on_interrupt`]).
static TABLES_TO_DROP: Mutex<Vec<(crate::db::DbSettings, String)>> = Mutex::new(Vec::new());

/// How long an interrupted bench waits for each of its tables to be dropped before it exits
/// anyway, naming the table left behind.
const DROP_ON_INTERRUPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps a table among those an interrupt drops ([`TABLES_TO_DROP`]) while it lives: made
/// before the table is created and dropped after the table is, so that there is no moment
/// when the table exists and an interrupt would leave it.
pub(crate) struct DropOnInterrupt {
    name: String,
}

impl DropOnInterrupt {
    pub(crate) fn register(settings: &crate::db::DbSettings, name: &str) -> DropOnInterrupt {
        tables_to_drop().push((settings.clone(), name.to_owned()));
        DropOnInterrupt {
            name: name.to_owned(),
        }
    }
}

impl Drop for DropOnInterrupt {
    fn drop(&mut self) {
        tables_to_drop().retain(|(_, name)| *name != self.name);
    }
}

fn tables_to_drop() -> std::sync::MutexGuard<'static, Vec<(crate::db::DbSettings, String)>> {
    // A panic elsewhere while the list was held leaves it as it was: still the list to drop.
    TABLES_TO_DROP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes SIGINT and SIGTERM clean up after the bench before the process exits (with status
/// 128 + the signal's number, as the shell reports a process the signal killed): a benchmark
/// stopped with Ctrl-C must not leave hundreds of megabytes in `TMPDIR`, nor its tables
/// (`<table>_bench`, `<table>_db_limit`) in the user's database. For the binary's `bench`
/// command; the handlers stay for the life of the process.
pub fn clean_up_on_interrupt() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("wrongbook-bench-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let dir = ScratchDir::path_of_this_process();
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => eprintln!(
                        "\ninterrupted: removed the bench's temporary files in {}",
                        dir.display()
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        eprintln!("\ninterrupted")
                    }
                    Err(e) => eprintln!(
                        "\ninterrupted: cannot remove the bench's temporary files in {}: {e}",
                        dir.display()
                    ),
                }
                // The list stays locked until the process exits: a table the bench is
                // dropping itself meanwhile is dropped by one or the other.
                let tables = tables_to_drop();
                for (settings, name) in tables.iter() {
                    match drop_table_within(settings, name, DROP_ON_INTERRUPT_TIMEOUT) {
                        Ok(()) => eprintln!("interrupted: dropped the bench's table {name}"),
                        Err(e) => eprintln!(
                            "interrupted: cannot drop the bench's table {name} ({e}); drop it with DROP TABLE {name}"
                        ),
                    }
                }
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// Drops table `name`, or fails after `timeout` (a server that does not answer, or a lock the
/// drop waits for).
fn drop_table_within(
    settings: &crate::db::DbSettings,
    name: &str,
    timeout: Duration,
) -> Result<(), String> {
    let (done, result) = crossbeam_channel::bounded(1);
    let (settings, table) = (settings.clone(), name.to_owned());
    std::thread::Builder::new()
        .name("wrongbook-bench-drop".into())
        .spawn(move || {
            let _ = done.send(drop_table(&settings, &table));
        })
        .map_err(|e| e.to_string())?;
    match result.recv_timeout(timeout) {
        Ok(dropped) => dropped.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

fn rate(items: usize, elapsed: Duration) -> f64 {
    items as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Times each stage alone on `messages`.
fn measure_stages(messages: &[Vec<u8>], dims: &DimSnapshot) -> Vec<StageFigure> {
    let spec = Spec::builtin();
    let routes = RouteTable::build(routing_rows(), &spec);
    let max = EngineConfig::default().max_message_bytes;

    // Parse + validate: the envelope, then the payload against its type's schema.
    let started = Instant::now();
    let mut parsed = Vec::with_capacity(messages.len());
    for message in messages {
        let Ok(mut envelope) = parse_envelope(message, max) else {
            continue;
        };
        if let Some(Route::Process(route)) = routes.route(&envelope.event_type) {
            if let Ok(fields) = envelope.payload.validate(&route.schema) {
                parsed.push((envelope, fields));
            }
        }
    }
    let parse = rate(messages.len(), started.elapsed());

    // Route + process: routing lookup and the processor, on parsed events.
    let started = Instant::now();
    let mut ops = OpsByOwner::new(1, parsed.len());
    for (envelope, fields) in &parsed {
        if let Some(Route::Process(route)) = routes.route(&envelope.event_type) {
            let _dead_letter = process(route, envelope, fields, &spec, &mut ops);
        }
    }
    let route_process = rate(parsed.len(), started.elapsed());
    drop(parsed);
    let ops: Vec<KeyedOp> = ops.into_iter().collect();

    // Record state: apply every operation.
    let mut store = RecordStore::default();
    let count = ops.len();
    let started = Instant::now();
    for op in ops {
        store.apply(op.id, op.op);
    }
    let state = rate(count, started.elapsed());

    // The dimension join: resolve each live record's lookup.
    let lookups = pattern_lookups_of(dims);
    let records: Vec<_> = store.visible_records().collect();
    let started = Instant::now();
    let mut matched = 0usize;
    for (_, record) in &records {
        matched += usize::from(lookup_for(&lookups, *record).teach_type.is_some());
    }
    let join = rate(records.len(), started.elapsed());
    std::hint::black_box(matched);

    // Wide rows: assemble each live record's row.
    let desc = spec.fix_result_desc.clone();
    let started = Instant::now();
    let rows: Vec<_> = records
        .iter()
        .map(|(id, record)| {
            let lookup = lookup_for(&lookups, *record);
            (*id, Some(WideRow::assemble(*id, *record, &lookup, &desc)))
        })
        .collect();
    let wide = rate(rows.len(), started.elapsed());

    // Sink: batch building and statement parameters (no database).
    let row_count = rows.len();
    let started = Instant::now();
    let batch = SinkBatch::new(1, rows);
    let upserts: Vec<&WideRow> = batch.upserts().collect();
    let mut params = 0usize;
    for chunk in upserts.chunks(1000) {
        params += upsert_sql(
            crate::schema::Dialect::Mysql,
            &crate::sink::statements::WideTable::plain("t"),
            chunk.len(),
        )
        .len();
        for row in chunk {
            params += row_params(row, 0).count();
        }
    }
    std::hint::black_box(params);
    let sink = rate(row_count, started.elapsed());

    let ingestor = Ingestor {
        spec: Arc::new(spec),
        max_message_bytes: max,
    };
    let started = Instant::now();
    let mut buffers = ParseBuffers::default();
    let mut accepted = OpsByOwner::new(1, messages.len());
    for message in messages {
        ingestor.ingest(message.as_slice(), &routes, &mut buffers, &mut accepted);
    }
    let ingest = rate(messages.len(), started.elapsed());
    std::hint::black_box(accepted);

    vec![
        StageFigure {
            stage: "parse + validate",
            per_second: parse,
            unit: "events",
        },
        StageFigure {
            stage: "route + process",
            per_second: route_process,
            unit: "events",
        },
        StageFigure {
            stage: "ingest (all of the above)",
            per_second: ingest,
            unit: "events",
        },
        StageFigure {
            stage: "record state",
            per_second: state,
            unit: "operations",
        },
        StageFigure {
            stage: "dimension join",
            per_second: join,
            unit: "rows",
        },
        StageFigure {
            stage: "wide rows",
            per_second: wide,
            unit: "rows",
        },
        StageFigure {
            stage: "sink batch + params",
            per_second: sink,
            unit: "rows",
        },
    ]
}

/// The pattern lookups of `dims`, computed by the dataflow's own dimension chain.
pub fn pattern_lookups_of(
    dims: &DimSnapshot,
) -> crate::dataflow::FastMap<CompactString, Arc<PatternLookup>> {
    use differential_dataflow::input::Input;
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::dataflow::operators::probe::Handle;
    use timely::dataflow::operators::{Inspect, Probe};

    let dims = dims.clone();
    timely::execute_directly(move |worker| {
        let found = Rc::new(RefCell::new(crate::dataflow::FastMap::default()));
        let probe = Handle::new();
        let sink = found.clone();
        let (mut p, mut pt, mut tt) = worker.dataflow::<u64, _, _>(|scope| {
            let (p_in, p) = scope.new_collection();
            let (pt_in, pt) = scope.new_collection();
            let (tt_in, tt) = scope.new_collection();
            crate::dataflow::dims::pattern_lookups(p, pt, tt)
                .inner
                .inspect(
                    move |((pattern, lookup), _, diff): &(
                        (CompactString, Arc<PatternLookup>),
                        u64,
                        isize,
                    )| {
                        if *diff > 0 {
                            sink.borrow_mut().insert(pattern.clone(), lookup.clone());
                        }
                    },
                )
                .probe_with(&probe);
            (p_in, pt_in, tt_in)
        });
        dims.patterns.iter().for_each(|r| p.insert(r.clone()));
        dims.teaching_type_pts
            .iter()
            .for_each(|r| pt.insert(r.clone()));
        dims.teaching_types
            .iter()
            .for_each(|r| tt.insert(r.clone()));
        drop((p, pt, tt));
        worker.step_while(|| !probe.done());
        found.take()
    })
}

/// The report as a table.
pub fn format_report(r: &BenchReport) -> String {
    let mut out = String::new();
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    out.push_str(&format!(
        "wrongbook bench: {} events, {} worker(s), sink {}, {} cores, load {}\n",
        r.events,
        r.workers,
        r.sink,
        r.cores,
        r.load_average_1m.map_or("?".into(), |l| format!("{l:.2}"))
    ));
    out.push_str(&format!(
        "wrongbook {} ({}), {} build, on {}\n",
        r.build.version,
        r.build.commit,
        match r.build.optimized {
            true => "optimized",
            false => "unoptimized",
        },
        r.machine.describe()
    ));
    if !r.build.optimized {
        out.push_str(
            "warning: an unoptimized (debug) build runs many times slower than a release build; \
             build with `cargo build --release` for figures that say something about the engine\n",
        );
    }
    out.push('\n');
    out.push_str("stage (one thread each)          throughput\n");
    for s in &r.stages {
        out.push_str(&format!(
            "  {:<30} {:>12.0} {}/s\n",
            s.stage, s.per_second, s.unit
        ));
    }
    out.push_str(&format!(
        "\nend to end                        {:>12.0} events/s ({:.0} per worker) in {:.2}s\n",
        r.events_per_second, r.events_per_second_per_worker, r.elapsed_seconds
    ));
    if let (Some(cpu), Some(per_cpu)) = (r.cpu_seconds, r.events_per_cpu_second) {
        out.push_str(&format!(
            "  CPU {cpu:.2}s over all threads = {per_cpu:.0} events per CPU-second\n"
        ));
    }
    let by_thread = &r.cpu_seconds_by_thread;
    out.push_str(&format!(
        "  CPU by thread: workers {:.2}s, source reader {:.2}s, sink threads {:.2}s\n",
        by_thread.workers, by_thread.source, by_thread.sinks
    ));
    out.push_str(&format!(
        "  worker time: ingest {:.2}s, join {:.2}s; sink writes {:.2}s\n",
        r.worker_ingest_seconds, r.worker_join_seconds, r.sink_write_seconds
    ));
    out.push_str(&format!(
        "  live records {}, keys with state {}, rows upserted {}, deleted {}, dead letters {}\n",
        r.live_records, r.keys_with_state, r.rows_upserted, r.rows_deleted, r.dead_letters
    ));
    if let Some(peak) = r.peak_rss_bytes {
        out.push_str(&format!(
            "  peak RSS above baseline {:.0} MiB = {:.0} bytes per live record\n",
            mb(peak),
            r.rss_bytes_per_live_record.unwrap_or(0.0)
        ));
    }
    out.push_str(&format!(
        "  record state (estimated heap) {:.0} MiB = {:.0} bytes per live record\n",
        mb(r.state_bytes),
        r.state_bytes_per_live_record
    ));
    if let Some(d) = &r.db_limit {
        out.push_str(&format!(
            "\ndatabase limit ({} client, 1000-row upserts of the {} final rows):\n  \
             one connection {:>10.0} rows/s\n  two connections {:>9.0} rows/s\n  \
             engine, end to end {:>7.0} rows/s = {:.0} % of the limit on {} connection(s)\n",
            d.limit.client,
            d.limit.rows,
            d.limit.one_connection,
            d.limit.two_connections,
            d.engine_rows_per_second,
            d.share_of_limit * 100.0,
            r.workers.min(2)
        ));
    }
    if let Some(c) = &r.dim_change {
        out.push_str(&format!(
            "\ndimension change: {} patterns renamed, {} rows corrected in {:.3}s\n",
            c.patterns_renamed, c.rows_corrected, c.seconds
        ));
    }
    if let Some(s) = &r.scaling {
        out.push_str(&format_scaling(s));
    }
    out
}

fn format_scaling(s: &ScalingFigure) -> String {
    let range = |rates: Vec<f64>| {
        let low = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let high = rates.iter().copied().fold(0.0, f64::max);
        format!("{low:.0}–{high:.0}")
    };
    let rate = |workers: usize, copies: usize| {
        range(
            s.passes
                .iter()
                .filter(|p| p.workers == workers && p.copies == copies)
                .map(|p| p.events_per_second)
                .collect(),
        )
    };
    let listed = |ratios: &[f64]| {
        let ratios: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        ratios.join(", ")
    };
    let mut out = format!(
        "\nscaling, no sink, {} rounds, the passes taking turns at going first:\n  \
         1 worker  median {:>10.0} events/s ({})\n  \
         {} workers median {:>10.0} events/s ({})\n  \
         ratio of the medians {:.2}; per round {} (median {:.2})\n  \
         {} independent 1-worker engines at once, each on one worker's share of the records, \
         median {:.0} events/s ({}): over 1 worker per round {} (median {:.2}), what {} cores \
         give this job with nothing exchanged or shared; {} workers reach {} of it per round \
         (median {:.2})\n  \
         helper threads' share of a 1-worker pass's CPU {:.1} %",
        s.rounds,
        s.one_worker_median,
        rate(1, 1),
        s.workers,
        s.workers_median,
        rate(s.workers, 1),
        s.ratio_of_medians,
        listed(&s.round_ratios),
        s.median_round_ratio,
        s.workers,
        s.independent_median,
        rate(1, s.workers),
        listed(&s.independent_round_ratios),
        s.median_independent_round_ratio,
        s.workers,
        s.workers,
        listed(&s.workers_of_independent_round_ratios),
        s.median_workers_of_independent,
        s.one_worker_helper_share * 100.0,
    );
    if let Some(busy) = s.workers_cores_busy {
        out.push_str(&format!(
            "; {}-worker passes kept their cores {:.1} % busy",
            s.workers,
            busy * 100.0
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_config(dir: &Path) -> Config {
        let text = format!(
            "[mysql]\nurl = \"sqlite://{}\"\n",
            dir.join("bench.db").display()
        );
        Config::parse(&text, "bench.toml", dir.to_path_buf(), []).unwrap()
    }

    fn tables(config: &Config) -> Vec<String> {
        let rows = config
            .database()
            .connect()
            .unwrap()
            .query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        rows.rows
            .into_iter()
            .filter_map(|row| row.into_iter().next()?.into_text())
            .collect()
    }

    #[test]
    fn a_pass_that_panics_fails_with_the_panics_message() {
        let message = |result: Result<RunSummary, EngineError>| match result {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a panicking pass succeeded"),
        };
        let text = message(without_panics(|| panic!("the join lost its state")));
        assert!(
            text.contains("a benchmark pass panicked: the join lost its state"),
            "{text}"
        );
        let id = 7;
        let text = message(without_panics(|| panic!("record {id} twice")));
        assert!(
            text.contains("a benchmark pass panicked: record 7 twice"),
            "{text}"
        );
        let text = message(without_panics(|| std::panic::panic_any(42)));
        assert!(text.ends_with("a benchmark pass panicked"), "{text}");
    }

    #[test]
    fn the_bench_table_is_gone_whether_the_bench_finishes_or_fails() {
        let dir = tempfile::tempdir().unwrap();
        let config = sqlite_config(dir.path());
        let name = bench_table(&config).name;

        let finished = BenchTable::create(&config).unwrap();
        assert_eq!(tables(&config), vec![name.clone()]);
        finished.drop_now().unwrap();
        assert_eq!(tables(&config), Vec::<String>::new());

        // A bench that fails between creating its table and dropping it drops the guard.
        let failed = BenchTable::create(&config).unwrap();
        assert_eq!(tables(&config), vec![name]);
        drop(failed);
        assert_eq!(tables(&config), Vec::<String>::new());
    }
}
