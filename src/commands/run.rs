//! `wrongbook run`: the long-running job. Reads the events topic on all workers, keeps the wide
//! table current, sends dead letters to the alerts topic, commits the group's offsets once the
//! rows they cover are written, logs progress, and on SIGINT/SIGTERM stops reading, flushes the
//! sink, commits and exits 0.
//!
//! Every `checkpoint.interval` the job checkpoints its state and offsets (see
//! [`crate::checkpoint`]); at start it resumes from the newest checkpoint, re-reading only the
//! events after it. Without a checkpoint (or with `--from-scratch`) it rebuilds its state from
//! the start of the topic and, once caught up with what the topic held at start, reconciles
//! the table (rows of records that no longer exist are deleted).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::load_latest;
use crate::commands::job::{prepare, JobError, Prepared};
use crate::config::Config;
use crate::engine::{run_pipeline, CheckpointPlan, Input, KafkaInput, Pipeline, RunSummary};
use crate::sink::alerts::KafkaAlerts;
use crate::sink::{SinkStats, SinkTarget};
use crate::source::file::SourceProgress;
use crate::source::kafka::StartAt;

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
}

/// Runs the job until stopped (or caught up, with `until_caught_up`).
pub fn run(config: &Config, opts: &RunOptions) -> Result<RunSummary, JobError> {
    let Prepared {
        spec,
        settings,
        table,
        routes,
        dims,
    } = prepare(config, None)?;
    let alerts = KafkaAlerts::new(&config.kafka).map_err(|e| {
        JobError::Input(format!(
            "cannot create the alerts producer for {}: {e}",
            config.kafka.bootstrap_servers
        ))
    })?;
    let checkpoint_dir = config.resolve(&config.checkpoint.dir);
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
    let sink_stats = Arc::new(SinkStats::default());
    let caught_up = Arc::new(AtomicUsize::new(0));
    let workers = opts.workers.unwrap_or(config.workers);
    let pipeline = Pipeline {
        spec,
        routes,
        engine: config.engine.clone(),
        workers,
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
                stats: Default::default(),
            }),
            restored: restored.clone(),
            end_offsets: None,
            write_from: None,
        })),
        dims,
        dims_after: None,
        sink: SinkTarget::Database {
            settings,
            table,
            batch_rows: config.sink.batch_rows,
        },
        // A restored state matches the table; a rebuilt one reconciles it once caught up.
        reconcile: restored.is_none(),
        dead_letters: Arc::new(alerts),
        source_progress: source_progress.clone(),
        sink_stats: sink_stats.clone(),
        dataflow_stats: Default::default(),
        caught_up_workers: caught_up.clone(),
    };
    let logger = ProgressLog::start(
        source_progress,
        sink_stats,
        caught_up,
        workers,
        opts.progress_interval,
    );
    let result = run_pipeline(pipeline);
    logger.stop();
    Ok(result?)
}

/// Logs what the job has done every interval.
struct ProgressLog {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ProgressLog {
    fn start(
        source: Arc<SourceProgress>,
        sink: Arc<SinkStats>,
        caught_up: Arc<AtomicUsize>,
        workers: usize,
        interval: Duration,
    ) -> ProgressLog {
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut last = std::time::Instant::now();
                let mut last_events = 0;
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() < interval {
                        continue;
                    }
                    let events = source.messages.load(Ordering::Relaxed);
                    tracing::info!(
                        events,
                        events_per_second =
                            (events - last_events) as f64 / last.elapsed().as_secs_f64(),
                        rows_upserted = sink.rows_upserted.load(Ordering::Relaxed),
                        rows_deleted = sink.rows_deleted.load(Ordering::Relaxed),
                        sink_retries = sink.retries.load(Ordering::Relaxed),
                        caught_up = caught_up.load(Ordering::Relaxed) >= workers,
                        "progress"
                    );
                    last = std::time::Instant::now();
                    last_events = events;
                }
            })
        };
        ProgressLog { done, thread }
    }

    fn stop(self) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
