//! `wrongbook run`: the long-running job. Reads the events topic on all workers, keeps the wide
//! table current, sends dead letters to the alerts topic, commits the group's offsets once the
//! rows they cover are written, logs progress, and on SIGINT/SIGTERM stops reading, flushes the
//! sink, commits and exits 0.
//!
//! At start the job rebuilds its record state from the start of the topic, and once it has
//! caught up with what the topic held at start, it reconciles the table (rows of records that
//! no longer exist are deleted). State checkpoints, which will let a restart resume from the
//! committed offsets instead, are not implemented yet.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::commands::job::{prepare, JobError, Prepared};
use crate::config::Config;
use crate::engine::{run_pipeline, Input, KafkaInput, Pipeline, RunSummary};
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
            start: StartAt::Earliest,
            bounded: opts.until_caught_up,
            commit: true,
            stop: opts.stop.clone(),
        })),
        dims,
        dims_after: None,
        sink: SinkTarget::Database {
            settings,
            table,
            batch_rows: config.sink.batch_rows,
        },
        reconcile: true,
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
