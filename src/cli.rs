//! The command line (clap): one subcommand per job a user runs, each with `--help` that
//! explains it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// wrongbook keeps the MySQL wide table `dwd_wrong_record_wide_delta` exactly current from the
/// error-notebook app's business events: parse and validate, route by event type, keep the
/// latest state per wrong record, join the pattern → teaching-type chain as a maintained join,
/// and write batched upserts and deletes. Built on timely and differential dataflow.
#[derive(Debug, Parser)]
#[command(name = "wrongbook", version = wrongbook::provenance::VERSION, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `wrongbook=debug`.
    // Its variable is in `config::COMMAND_LINE_VARS`, which configuration overrides skip.
    #[arg(long, global = true, env = "WRONGBOOK_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchSinkArg {
    Memory,
    None,
    Db,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline on embedded parts (SQLite, generated events); needs nothing
    /// installed.
    ///
    /// Generates events, dimension and routing rows, loads them into an SQLite file, replays
    /// the events into the wide table, applies a dimension change that corrects rows already
    /// written, and prints a summary and sample rows.
    Demo {
        /// Directory for the SQLite file, events and dead letters.
        #[arg(long, default_value = "wrongbook-demo")]
        dir: PathBuf,
        /// Number of events to generate.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Worker threads.
        #[arg(short = 'w', long, default_value_t = 2)]
        workers: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Partitions of the events topic (at least one per 12,000 events: the embedded
        /// broker keeps 5 MiB per partition).
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Create the seed's tables where missing: tower_pattern, tower_teaching_type_pt,
    /// tower_teaching_type, the routing table and the wide table; on MySQL/MariaDB first the
    /// database the url names, when the server has none (utf8mb4). Idempotent.
    InitDb {
        /// Configuration file (TOML; every key can be overridden by WRONGBOOK_SECTION__KEY).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Create this wide table instead of `sink.table` (e.g. a scratch copy).
        #[arg(long)]
        table: Option<String>,
        /// Then run these SQL files (e.g. the dimension and routing rows from `gen --dims-out`).
        #[arg(long, value_name = "FILE.sql")]
        load: Vec<PathBuf>,
    },
    /// Re-process a JSONL dump (--input) or a range of the Kafka topic (--from/--to) into the
    /// wide table.
    ///
    /// Reads the routing table and the dimension snapshots from the database and runs the
    /// dataflow on N workers. With --input, or --from earliest, the wide table ends exactly
    /// equal to what the events compute: rows of records that no longer exist are deleted,
    /// stale rows are overwritten. With --from TIME, events before it are read only to rebuild
    /// state, and only the rows of records that events in [--from, --to) touch are written. A
    /// topic replay uses a consumer group of its own and never moves the live job's offsets.
    /// Bad messages go to a dead-letter file with their reason and raw bytes. Prints outcomes
    /// by type and reason, rows written and events/s; exits 0 when the replay completed.
    ///
    /// Cluster mode: start the same command in every process with -n, -p and -h (see `run`).
    #[command(disable_help_flag = true)]
    Replay {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Configuration file (TOML; every key can be overridden by WRONGBOOK_SECTION__KEY).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The JSONL dump to replay. A regular file is read through a memory map, as long as
        /// it is when the replay starts: it must not be truncated or rewritten meanwhile (the
        /// replay stops with an error naming it, exit status 74).
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        input: Option<PathBuf>,
        /// Replay the topic from here: `earliest`, ms since the epoch, or
        /// YYYY-MM-DDTHH:MM:SSZ (message timestamps).
        #[arg(long)]
        from: Option<String>,
        /// ... up to here (exclusive): `latest` (the end of each partition now), or a time.
        #[arg(long, requires = "from", default_value = "latest")]
        to: String,
        /// Worker threads (default: `workers` from the configuration).
        #[arg(short = 'w', long)]
        workers: Option<usize>,
        /// Dead-letter file (JSONL alert records); default: beside the input, as
        /// NAME.dead-letters.jsonl.
        #[arg(long)]
        dead_letters: Option<PathBuf>,
        /// SQL to run against the dimension tables once the events are written; the changed
        /// dimension rows then correct every affected wide row, as a periodic refresh would.
        #[arg(long, value_name = "FILE.sql")]
        dims_after: Option<PathBuf>,
        /// Write this table instead of `sink.table` (create it with `init-db --table`).
        #[arg(long)]
        table: Option<String>,
        /// Run everything but write nothing to the wide table (outcomes, dead letters and
        /// speed only).
        #[arg(long)]
        dry_run: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Measure join throughput on generated data, with no external services.
    ///
    /// Times each stage alone on one thread (parse, route + process, record state, dimension
    /// join, wide rows, sink batches), then runs the engine end to end on N workers from a
    /// generated file into an in-memory table (or none, or the database of --config), and
    /// reports events/s (per wall-clock second, and per CPU-second of all its threads: the
    /// figure other load on the machine disturbs least), peak RSS and state bytes per live
    /// record. With --rename-share it then renames that share of the patterns and times the
    /// corrections. The report names the build (version, commit, whether optimized: figures of
    /// a debug build say little) and the machine (CPU, kernel) it ran on.
    ///
    /// The generated events are written to a directory under TMPDIR (~280 MB per million
    /// events, twice that with --scaling-rounds), which is removed when the bench ends, fails
    /// or is interrupted (Ctrl-C, SIGTERM). So are the tables it makes with --sink db.
    Bench {
        /// Number of messages.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Worker threads.
        #[arg(short = 'w', long, default_value_t = 1)]
        workers: usize,
        /// Patterns in the dimension tables.
        #[arg(long, default_value_t = 2000)]
        patterns: usize,
        /// Teaching types in the dimension tables.
        #[arg(long, default_value_t = 3000)]
        teaching_types: usize,
        /// Event mix: fixes per record are uniform in 0..=N.
        #[arg(long, default_value_t = 3)]
        max_fixes: usize,
        /// Event mix: share of records deleted.
        #[arg(long, default_value_t = 0.1)]
        delete_share: f64,
        /// Share of bad messages.
        #[arg(long, default_value_t = 0.01)]
        bad_share: f64,
        /// Share of exact duplicates.
        #[arg(long, default_value_t = 0.03)]
        duplicate_share: f64,
        /// Where rows go: memory, none, or db (the database of --config, into a table of its
        /// own: the configured wide table's name with `_bench` appended, created empty before
        /// the run and dropped after it, also when the bench fails or is interrupted).
        #[arg(long, value_enum, default_value_t = BenchSinkArg::Memory)]
        sink: BenchSinkArg,
        /// Configuration for --sink db.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// With --sink db, skip measuring the database's own limit. By default the final rows
        /// are then loaded again into a scratch copy of the table (`<table>_db_limit`, dropped
        /// afterwards) by the `mariadb` command-line client in 1000-row upserts, on one and on
        /// two connections, and the engine's rate is reported as a share of that limit.
        #[arg(long)]
        no_db_limit: bool,
        /// After the events, rename this share of patterns (most used first) and time the
        /// corrections (0 = no change).
        #[arg(long, default_value_t = 0.0)]
        rename_share: f64,
        /// Then measure how throughput scales: run this many rounds of the engine on 1 worker,
        /// on --workers (N, at least 2), and as N independent 1-worker engines at once, each on
        /// the events of one worker's share of the records (what N cores of the machine give
        /// this job with nothing exchanged or shared), without a sink, over the same events,
        /// the first pass taking turns, and report the ratios of the medians and of each round
        /// (0 = skip). Taking turns keeps a drift in the machine's speed from favouring any.
        #[arg(long, default_value_t = 0)]
        scaling_rounds: usize,
        /// Print the report as JSON (for comparing runs across commits).
        #[arg(long)]
        json: bool,
    },
    /// Generate synthetic events (JSONL) and, optionally, dimension and routing rows (SQL).
    ///
    /// Deterministic from --seed: skewed users and patterns, out-of-order arrival, fixes before
    /// their add, several fixes per record, deletes and re-adds, duplicates, and a share of
    /// bad messages of every class.
    Gen {
        /// Number of messages.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Share of bad messages (0..1).
        #[arg(long, default_value_t = 0.02)]
        bad_share: f64,
        /// Share of exact duplicates (0..1).
        #[arg(long, default_value_t = 0.03)]
        duplicate_share: f64,
        /// Number of patterns in the dimension tables.
        #[arg(long, default_value_t = 200)]
        patterns: usize,
        /// Events file; `-` for stdout.
        #[arg(long, short, default_value = "-")]
        out: PathBuf,
        /// Write SQL loading the dimension tables and the routing table here.
        #[arg(long, value_name = "FILE.sql")]
        dims_out: Option<PathBuf>,
        /// Write SQL for a later dimension change here (for `replay --dims-after`).
        #[arg(long, value_name = "FILE.sql")]
        dims_change_out: Option<PathBuf>,
        /// The routing table's name in the SQL.
        #[arg(long, default_value = "flink_routing_config")]
        routing_table: String,
        /// Produce the events to the Kafka topic of --config (`kafka.topic`) instead of a file.
        #[arg(long)]
        to_kafka: bool,
        /// Configuration naming the Kafka cluster and topic, for --to-kafka.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Partitions of the topic when --to-kafka creates it.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Messages per second for --to-kafka (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// The long-running job: keep the wide table current from the Kafka events topic.
    ///
    /// Reads the topic's partitions on all workers, routes and joins as `replay` does, writes
    /// the wide table, sends dead letters to the alerts topic, and commits the consumer group's
    /// offsets only after the rows they cover are committed. Every `checkpoint.interval` it
    /// checkpoints its state and offsets to `checkpoint.dir`; at start it resumes from the
    /// newest checkpoint (any worker count), or without one rebuilds its state from the start
    /// of the topic and, once caught up, deletes rows of records that no longer exist. Logs
    /// progress; on SIGINT or SIGTERM it stops reading, flushes the sink, commits and exits 0.
    ///
    /// Cluster mode (timely's): start one `run` per process, each with -n P, its own -p I and
    /// the same -h HOSTFILE; the topic's partitions are spread over all P×W workers, each worker
    /// writes the rows it owns, and checkpoints (in a directory the processes share) restore
    /// into any layout. `scripts/run-cluster` does this for P processes on one host.
    #[command(disable_help_flag = true)]
    Run {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Configuration file (TOML; every key can be overridden by WRONGBOOK_SECTION__KEY).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Worker threads (default: `workers` from the configuration).
        #[arg(short = 'w', long)]
        workers: Option<usize>,
        /// Stop once everything the topic held at start is written (exit 0).
        #[arg(long)]
        until_caught_up: bool,
        /// Ignore checkpoints: rebuild the state from the start of the topic, then delete the
        /// rows of records that no longer exist.
        #[arg(long)]
        from_scratch: bool,
        /// Seconds between progress lines in the log.
        #[arg(long, default_value_t = 10)]
        progress_seconds: u64,
    },
}

/// Timely's cluster options, for `run` and `replay` (also settable in `[cluster]`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Processes of the job (timely's -n); each runs -w workers.
    #[arg(short = 'n', long)]
    pub processes: Option<usize>,
    /// This process's index, 0-based (timely's -p).
    #[arg(short = 'p', long)]
    pub process: Option<usize>,
    /// File with one host:port per process, in process order, where the processes connect
    /// (timely's -h).
    #[arg(short = 'h', long)]
    pub hostfile: Option<PathBuf>,
    /// Print help (`-h` is the hostfile here).
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}
