//! The running job's periodic report: a progress line in the log every progress interval, and
//! every metrics interval a JSON snapshot of the job's counters to the metrics topic (SPEC §7)
//! and an evaluation of the threshold alerts (SPEC §8); a last snapshot when the job stops.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{Producer, ThreadedProducer};
use serde::Serialize;

use crate::checkpoint::CheckpointStats;
use crate::config::KafkaConfig;
use crate::dataflow::route::Routing;
use crate::dataflow::DataflowStats;
use crate::ops::status::RecentDeadLetters;
use crate::ops::thresholds::{AlertState, Observation, ThresholdWatch};
use crate::sink::alerts::{producer, send_blocking, DeliveryCounter};
use crate::sink::SinkStats;
use crate::source::dims::DimStats;
use crate::source::file::SourceProgress;

/// Everything the job publishes about itself, for reports, metrics and the status page.
#[derive(Clone, Debug)]
pub struct JobCounters {
    pub source: Arc<SourceProgress>,
    pub sink: Arc<SinkStats>,
    pub dataflow: Arc<DataflowStats>,
    pub checkpoints: Arc<CheckpointStats>,
    pub caught_up_workers: Arc<AtomicUsize>,
    pub workers: usize,
    pub routing: Arc<Routing>,
    pub dims: Arc<DimStats>,
    pub alerts: Arc<AlertState>,
    pub dead_letters: Arc<RecentDeadLetters>,
    /// Which process of the job this is (0-based), of how many.
    pub process: usize,
    pub processes: usize,
    /// When the job started, ms since the epoch.
    pub started_ms: i64,
}

/// One snapshot, as produced to the metrics topic.
#[derive(Debug, Serialize)]
pub struct MetricsSnapshot {
    pub kind: &'static str,
    pub at_ms: u128,
    pub events: u64,
    pub events_per_second: f64,
    pub rows_upserted: u64,
    pub rows_deleted: u64,
    pub rows_reconciled: u64,
    pub sink_transactions: u64,
    pub sink_retries: u64,
    pub live_records: i64,
    pub keys_with_state: u64,
    pub caught_up: bool,
    pub last_checkpoint_epoch: u64,
    pub checkpoint_age_seconds: Option<f64>,
    pub routing_version: u64,
    pub active_alerts: Vec<&'static str>,
}

impl JobCounters {
    fn snapshot(&self, events_per_second: f64) -> MetricsSnapshot {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let written = self.checkpoints.last_written_ms.load(Ordering::Relaxed);
        MetricsSnapshot {
            kind: "metrics",
            at_ms: now,
            events: self.source.messages.load(Ordering::Relaxed),
            events_per_second,
            rows_upserted: self.sink.rows_upserted.load(Ordering::Relaxed),
            rows_deleted: self.sink.rows_deleted.load(Ordering::Relaxed),
            rows_reconciled: self.sink.rows_reconciled.load(Ordering::Relaxed),
            sink_transactions: self.sink.transactions.load(Ordering::Relaxed),
            sink_retries: self.sink.retries.load(Ordering::Relaxed),
            live_records: self.dataflow.live_records.load(Ordering::Relaxed),
            keys_with_state: self.dataflow.keys.load(Ordering::Relaxed),
            caught_up: self.caught_up_workers.load(Ordering::Relaxed) >= self.workers,
            last_checkpoint_epoch: self.checkpoints.last_epoch.load(Ordering::Relaxed),
            checkpoint_age_seconds: (written > 0)
                .then(|| (now.saturating_sub(u128::from(written))) as f64 / 1000.0),
            routing_version: self.routing.version(),
            active_alerts: self.alerts.active().iter().map(|a| a.rule).collect(),
        }
    }
}

/// Reports on a thread of its own until stopped.
pub struct Reporter {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Reporter {
    /// Starts reporting; snapshots go to `kafka.metrics_topic`, alerts through `watch`.
    pub fn start(
        counters: JobCounters,
        kafka: &KafkaConfig,
        progress_interval: Duration,
        metrics_interval: Duration,
        watch: ThresholdWatch,
    ) -> Result<Reporter, String> {
        let delivery = DeliveryCounter::default();
        let metrics: ThreadedProducer<DeliveryCounter> = producer(kafka, delivery.clone())
            .map_err(|e| format!("cannot create the metrics producer: {e}"))?;
        let topic = kafka.metrics_topic.clone();
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let (mut last_log, mut last_metrics) = (started, started);
                let mut last_events = 0;
                let mut last_totals = counters.dataflow.outcomes().totals();
                let rate = |since: Instant, last: u64| {
                    let events = counters.source.messages.load(Ordering::Relaxed);
                    (events - last) as f64 / since.elapsed().as_secs_f64().max(1e-3)
                };
                let send = |snapshot: &MetricsSnapshot| {
                    let payload = serde_json::to_vec(snapshot).expect("snapshots serialize");
                    if let Err(e) = send_blocking(&metrics, &topic, &payload) {
                        tracing::warn!(error = %e, "cannot produce a metrics snapshot");
                    }
                };
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last_log.elapsed() >= progress_interval {
                        let s = counters.snapshot(rate(last_log, last_events));
                        tracing::info!(
                            events = s.events,
                            events_per_second = s.events_per_second.round(),
                            rows_upserted = s.rows_upserted,
                            rows_deleted = s.rows_deleted,
                            sink_retries = s.sink_retries,
                            live_records = s.live_records,
                            caught_up = s.caught_up,
                            last_checkpoint_epoch = s.last_checkpoint_epoch,
                            "progress"
                        );
                        last_log = Instant::now();
                        last_events = s.events;
                    }
                    if last_metrics.elapsed() >= metrics_interval {
                        send(&counters.snapshot(rate(started, 0)));
                        last_metrics = Instant::now();
                        let totals = counters.dataflow.outcomes().totals();
                        let pending = counters
                            .dataflow
                            .pending_age_seconds(crate::source::routing::now_ms());
                        watch.evaluate(&Observation {
                            latency: counters
                                .dataflow
                                .end_to_end
                                .take_max()
                                .max(Duration::from_secs_f64(pending)),
                            events: totals.total().saturating_sub(last_totals.total()),
                            dead_letters: totals
                                .dead_letter_total()
                                .saturating_sub(last_totals.dead_letter_total()),
                            state_bytes: counters.dataflow.bytes.load(Ordering::Relaxed),
                        });
                        last_totals = totals;
                    }
                }
                send(&counters.snapshot(rate(started, 0)));
                metrics
                    .flush(Duration::from_secs(30))
                    .map_err(|e| format!("flushing metrics to `{topic}`: {e}"))?;
                match delivery.failed.load(Ordering::Relaxed) {
                    0 => Ok(()),
                    n => Err(format!(
                        "{n} metrics snapshots could not be delivered to `{topic}`"
                    )),
                }
            })
        };
        Ok(Reporter { done, thread })
    }

    /// Sends the last snapshot and stops.
    pub fn stop(self) -> Result<(), String> {
        self.done.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the reporter panicked".to_owned())?
    }
}
