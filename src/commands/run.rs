//! `wrongbook run`: the long-running job. Reads the events topic on all workers, keeps the wide
//! table current, sends dead letters to the alerts topic, commits the group's offsets once the
//! rows they cover are written, logs progress, and on SIGINT/SIGTERM stops reading, flushes the
//! sink, commits and exits 0.
//!
//! While it runs it polls the routing table (changes apply to events from then on, see
//! [`crate::source::routing`]), re-reads each dimension table on its interval (only the
//! difference enters the dataflow, and the affected rows are corrected), serves `/metrics` and
//! evaluates the threshold alerts.
//!
//! Every `checkpoint.interval` the job checkpoints its state and offsets (see
//! [`crate::checkpoint`]); at start it resumes from the newest checkpoint, re-reading only the
//! events after it. Without a checkpoint (or with `--from-scratch`) it rebuilds its state from
//! the start of the topic and, once caught up with what the topic held at start, reconciles
//! the table (rows of records that no longer exist are deleted).

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{load_latest, CheckpointStats};
use crate::commands::job::{prepare, JobError, Prepared};
use crate::commands::replay::cluster_layout;
use crate::config::Config;
use crate::dataflow::route::Routing;
use crate::dataflow::DataflowStats;
use crate::engine::{run_pipeline, CheckpointPlan, Input, KafkaInput, Pipeline, RunSummary};
use crate::ops::http::OpsServer;
use crate::ops::report::{JobCounters, Reporter};
use crate::ops::status::RecordingSink;
use crate::ops::thresholds::ThresholdWatch;
use crate::sink::alerts::KafkaAlerts;
use crate::sink::dead_letters::DeadLetterSink;
use crate::sink::{SinkStats, SinkTarget, WriteOptions};
use crate::source::dims::{DimRefresher, DimStats};
use crate::source::file::SourceProgress;
use crate::source::kafka::{ensure_topic, StartAt};
use crate::source::routing::{history_file, start_history, RoutingWatcher};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Workers; the configuration's `workers` when `None`.
    pub workers: Option<usize>,
    /// Stop once caught up with what the topic held at start (a bounded run).
    pub until_caught_up: bool,
    /// Set to stop (signals set it).
    pub stop: Arc<AtomicBool>,
    /// Log progress this often.
    pub progress_interval: Duration,
    /// Ignore checkpoints: rebuild the state from the start of the topic and reconcile.
    pub from_scratch: bool,
    /// Called with the address `/metrics` is served on, once it is (for tests and launchers).
    pub on_serving: Option<fn(std::net::SocketAddr)>,
}

/// Runs the job until stopped (or caught up, with `until_caught_up`).
pub fn run(config: &Config, opts: &RunOptions) -> Result<RunSummary, JobError> {
    let Prepared {
        spec,
        settings,
        table,
        routing_rows,
        dims,
    } = prepare(config, None)?;
    crate::source::kafka::check_reachable(&config.kafka, Duration::from_secs(10))
        .map_err(|e| JobError::Input(e.to_string()))?;
    // The job's own output topics are created when missing (one partition each).
    for topic in [&config.kafka.alerts_topic, &config.kafka.metrics_topic] {
        if let Err(e) = ensure_topic(&config.kafka, topic, 1) {
            tracing::warn!(topic = %topic, error = %e, "cannot create the topic; it must exist");
        }
    }
    let alerts: Arc<dyn DeadLetterSink> =
        Arc::new(KafkaAlerts::new(&config.kafka).map_err(|e| {
            JobError::Input(format!(
                "cannot create the alerts producer for {}: {e}",
                config.kafka.bootstrap_servers
            ))
        })?);
    let layout = cluster_layout(config, opts.workers)?;
    let checkpoint_dir = config.resolve(&config.checkpoint.dir);
    let routing = Routing::new(
        start_history(
            &history_file(&checkpoint_dir, layout.process, layout.processes),
            routing_rows,
            &spec,
        )
        .map_err(JobError::Input)?,
    );
    let restored = if opts.from_scratch {
        None
    } else {
        load_latest(&checkpoint_dir, &config.kafka.topic)
            .map_err(|e| JobError::Input(e.to_string()))?
            .map(Arc::new)
    };
    let start = match &restored {
        Some(restored) => {
            tracing::info!(
                epoch = restored.epoch,
                partitions = restored.offsets.len(),
                written_by_workers = restored.peers,
                dir = %checkpoint_dir.display(),
                "resuming from a checkpoint"
            );
            StartAt::Offsets(restored.offsets.clone())
        }
        None => {
            tracing::info!("no checkpoint: rebuilding the state from the start of the topic");
            StartAt::Earliest
        }
    };
    let source_progress = Arc::new(SourceProgress::default());
    let dataflow_stats = Arc::new(DataflowStats::default());
    let checkpoint_stats = Arc::new(CheckpointStats::default());
    let sink_stats = Arc::new(SinkStats::default());
    let caught_up = Arc::new(AtomicUsize::new(0));
    let dim_stats = Arc::new(DimStats::default());
    dim_stats.loaded(&dims, &spec.dimensions);
    let workers = layout.workers;
    let counters = JobCounters {
        source: source_progress.clone(),
        sink: sink_stats.clone(),
        dataflow: dataflow_stats.clone(),
        checkpoints: checkpoint_stats.clone(),
        caught_up_workers: caught_up.clone(),
        workers,
        routing: routing.clone(),
        dims: dim_stats.clone(),
        alerts: Arc::default(),
        dead_letters: Arc::default(),
        process: layout.process,
        processes: layout.processes,
        started_ms: crate::source::routing::now_ms(),
    };
    let _server = if config.metrics.listen.is_empty() {
        None
    } else {
        let server = OpsServer::start(
            &layout.listen_address(&config.metrics.listen),
            counters.clone(),
        )
        .map_err(|e| JobError::Input(e.to_string()))?;
        if let Some(on_serving) = opts.on_serving {
            on_serving(server.addr());
        }
        Some(server)
    };
    // The watchers stop with the job: on the stop flag, or when the job ends by itself.
    let watchers_stop = Arc::new(AtomicBool::new(false));
    let routing_watcher = RoutingWatcher {
        settings: settings.clone(),
        table: config.routing.table.clone(),
        interval: config.routing.poll_interval.0,
        spec: spec.clone(),
        routing: routing.clone(),
        history_file: Some(history_file(
            &checkpoint_dir,
            layout.process,
            layout.processes,
        )),
        notices: alerts.clone(),
        stop: watchers_stop.clone(),
    }
    .spawn()
    .map_err(|e| JobError::Input(format!("cannot start the routing watcher: {e}")))?;
    // The dimension inputs are fed by the job's first worker, in process 0.
    let (dim_updates_tx, dim_updates) = crossbeam_channel::unbounded();
    let dim_refresher = (layout.process == 0).then(|| DimRefresher {
        settings: settings.clone(),
        dims: spec.dimensions.clone(),
        snapshot: dims.clone(),
        updates: dim_updates_tx,
        notices: alerts.clone(),
        stop: watchers_stop.clone(),
        stats: dim_stats.clone(),
    });
    let dim_refresher = dim_refresher
        .map(DimRefresher::spawn)
        .transpose()
        .map_err(|e| JobError::Input(format!("cannot start the dimension refresher: {e}")))?;
    let pipeline = Pipeline {
        spec,
        routing,
        engine: config.engine.clone(),
        layout,
        input: Input::Kafka(Box::new(KafkaInput {
            kafka: config.kafka.clone(),
            group_id: config.kafka.group_id.clone(),
            start,
            bounded: opts.until_caught_up,
            commit: true,
            stop: opts.stop.clone(),
            checkpoint: Some(CheckpointPlan {
                dir: checkpoint_dir,
                interval: config.checkpoint.interval.0,
                stats: checkpoint_stats.clone(),
            }),
            restored: restored.clone(),
            end_offsets: None,
            write_from: None,
        })),
        dims,
        dims_after: None,
        dim_updates: Some(dim_updates),
        dim_stats,
        sink: SinkTarget::Database {
            settings,
            table,
            options: WriteOptions::of(&config.sink),
        },
        // A restored state matches the table; a rebuilt one reconciles it once caught up.
        reconcile: restored.is_none(),
        // The status page shows the recent dead letters as they go to the alerts topic.
        dead_letters: Arc::new(RecordingSink {
            inner: alerts.clone(),
            recent: counters.dead_letters.clone(),
        }),
        source_progress: source_progress.clone(),
        sink_stats: sink_stats.clone(),
        dataflow_stats: dataflow_stats.clone(),
        caught_up_workers: caught_up.clone(),
    };
    let watch = ThresholdWatch {
        config: config.metrics.clone(),
        state: counters.alerts.clone(),
        notices: alerts.clone(),
    };
    let reporter = Reporter::start(
        counters,
        &config.kafka,
        opts.progress_interval,
        config.kafka.metrics_interval.0,
        watch,
    )
    .map_err(JobError::Input)?;
    let result = run_pipeline(pipeline);
    watchers_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = routing_watcher.join();
    if let Some(refresher) = dim_refresher {
        let _ = refresher.join();
    }
    if let Err(e) = reporter.stop() {
        tracing::warn!(error = %e, "metrics");
    }
    Ok(result?)
}
