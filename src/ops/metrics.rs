//! Prometheus metrics (SPEC §8): the job's counters, gauges and latency histograms, read from
//! the shared stats at each scrape and encoded by `prometheus-client` in the Prometheus text
//! format. The names are documented in the README and used by `config/alerts.rules.yml` and
//! `config/grafana-dashboard.json`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::ops::report::JobCounters;
use crate::source::routing::now_ms;

/// Upper bounds of the latency buckets, seconds.
const BOUNDS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];

/// A latency histogram shared by the threads that observe it and the scrapes that read it.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last slot is above every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// The largest observation since [`LatencyHistogram::take_max`] was last called, µs.
    max_micros: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    /// (upper bound, observations at or below it), cumulative, ending with +Inf.
    pub cumulative: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = BOUNDS.partition_point(|bound| *bound < seconds);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.max_micros
            .fetch_max(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The largest observation since the last call (for the threshold alerts, which are its
    /// only reader).
    pub fn take_max(&self) -> Duration {
        Duration::from_micros(self.max_micros.swap(0, Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.buckets)
            .map(|(bound, n)| {
                total += n.load(Ordering::Relaxed);
                (bound, total)
            })
            .collect();
        HistogramSnapshot {
            count: total,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            cumulative,
        }
    }
}

impl HistogramSnapshot {
    /// The upper bound of the bucket holding quantile `q` (0..=1); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.cumulative
            .iter()
            .find(|(_, n)| *n >= rank)
            .map(|(bound, _)| {
                if bound.is_finite() {
                    *bound
                } else {
                    BOUNDS[BOUNDS.len() - 1]
                }
            })
    }

    /// What was observed since `earlier`.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            count: self.count - earlier.count.min(self.count),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
            cumulative: self
                .cumulative
                .iter()
                .enumerate()
                .map(|(i, (bound, n))| {
                    let before = earlier.cumulative.get(i).map_or(0, |(_, m)| *m);
                    (*bound, n.saturating_sub(before))
                })
                .collect(),
        }
    }
}

/// A registry holding the job's metrics.
pub fn registry(counters: JobCounters) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(JobCollector(counters)));
    registry
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug)]
struct JobCollector(JobCounters);

type Labels = Vec<(&'static str, String)>;

/// A metric with labels: one descriptor, then one sample per label set.
struct Family<'a>(prometheus_client::encoding::MetricEncoder<'a>);

fn family<'a>(
    encoder: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    kind: MetricType,
) -> Result<Family<'a>, std::fmt::Error> {
    Ok(Family(encoder.encode_descriptor(name, help, None, kind)?))
}

impl Family<'_> {
    fn counter(&mut self, labels: Labels, value: impl EncodeCounterValue) -> std::fmt::Result {
        self.0
            .encode_family(&labels)?
            .encode_counter(&value, None::<&Exemplar<Labels, f64>>)
    }

    fn gauge(&mut self, labels: Labels, value: impl EncodeGaugeValue) -> std::fmt::Result {
        self.0.encode_family(&labels)?.encode_gauge(&value)
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    family(encoder, name, help, MetricType::Counter)?.counter(Vec::new(), value)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> std::fmt::Result {
    family(encoder, name, help, MetricType::Gauge)?.gauge(Vec::new(), value)
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    snapshot: &HistogramSnapshot,
) -> std::fmt::Result {
    // prometheus-client wants per-bucket counts and accumulates them itself.
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = snapshot
        .cumulative
        .iter()
        .map(|(bound, n)| {
            let own = n - previous;
            previous = *n;
            (*bound, own)
        })
        .collect();
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<Labels>(
            snapshot.sum_seconds,
            snapshot.count,
            &buckets,
            None::<&HashMap<usize, Exemplar<Labels, f64>>>,
        )
}

impl Collector for JobCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let c = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        let outcomes = c.dataflow.outcomes();
        let mut events = family(
            &mut e,
            "wrongbook_events",
            "Events ingested, by event type and outcome (accepted, skipped_domain, skipped_disabled, dead_letter).",
            MetricType::Counter,
        )?;
        for (event_type, counts) in &outcomes.by_type {
            for (outcome, n) in [
                ("accepted", counts.accepted),
                ("skipped_domain", counts.skipped_domain),
                ("skipped_disabled", counts.skipped_disabled),
                ("dead_letter", counts.dead_letter_total()),
            ] {
                events.counter(
                    vec![
                        ("event_type", event_type.clone()),
                        ("outcome", outcome.into()),
                    ],
                    n,
                )?;
            }
        }
        let mut dead = family(
            &mut e,
            "wrongbook_dead_letters",
            "Dead letters, by event type and reason.",
            MetricType::Counter,
        )?;
        for (event_type, counts) in &outcomes.by_type {
            for (reason, n) in &counts.dead_letters {
                dead.counter(
                    vec![
                        ("event_type", event_type.clone()),
                        ("reason", (*reason).into()),
                    ],
                    *n,
                )?;
            }
        }
        counter(
            &mut e,
            "wrongbook_source_messages",
            "Messages read from the source.",
            load(&c.source.messages),
        )?;
        counter(
            &mut e,
            "wrongbook_source_bytes",
            "Bytes of messages read from the source.",
            load(&c.source.bytes),
        )?;
        let partitions = c.source.partitions.lock().expect("progress lock").clone();
        let mut lag = family(
            &mut e,
            "wrongbook_consumer_lag",
            "Messages in the partition not read yet (high watermark minus position).",
            MetricType::Gauge,
        )?;
        for (partition, progress) in &partitions {
            lag.gauge(vec![("partition", partition.to_string())], progress.lag())?;
        }
        let mut position = family(
            &mut e,
            "wrongbook_consumer_position",
            "The next offset the job reads, per partition.",
            MetricType::Gauge,
        )?;
        for (partition, progress) in &partitions {
            position.gauge(
                vec![("partition", partition.to_string())],
                progress.next_offset,
            )?;
        }

        counter(
            &mut e,
            "wrongbook_rows_upserted",
            "Wide-table rows upserted.",
            load(&c.sink.rows_upserted),
        )?;
        counter(
            &mut e,
            "wrongbook_rows_deleted",
            "Wide-table rows deleted.",
            load(&c.sink.rows_deleted),
        )?;
        counter(
            &mut e,
            "wrongbook_rows_reconciled",
            "Stale wide-table rows deleted when the job caught up after a rebuild.",
            load(&c.sink.rows_reconciled),
        )?;
        counter(
            &mut e,
            "wrongbook_sink_transactions",
            "Sink transactions committed.",
            load(&c.sink.transactions),
        )?;
        counter(
            &mut e,
            "wrongbook_sink_retries",
            "Sink writes retried after a transient error.",
            load(&c.sink.retries),
        )?;
        histogram(
            &mut e,
            "wrongbook_sink_batch_seconds",
            "Time to write one batch (one transaction, retries included).",
            &c.sink.batch_seconds.snapshot(),
        )?;
        histogram(
            &mut e,
            "wrongbook_end_to_end_latency_seconds",
            "From a batch of events being ingested to its rows being committed.",
            &c.dataflow.end_to_end.snapshot(),
        )?;
        gauge(
            &mut e,
            "wrongbook_pending_age_seconds",
            "How long the oldest ingested batch whose rows are not committed yet has waited.",
            c.dataflow.pending_age_seconds(now_ms()),
        )?;

        gauge(
            &mut e,
            "wrongbook_state_records",
            "Live records (rows of the wide table) in the job's state.",
            c.dataflow.live_records.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "wrongbook_state_keys",
            "Record ids with any state (live, deleted or fix-only).",
            load(&c.dataflow.keys),
        )?;
        gauge(
            &mut e,
            "wrongbook_state_fixes",
            "Record ids whose state holds a fix.",
            load(&c.dataflow.fixes),
        )?;
        gauge(
            &mut e,
            "wrongbook_state_bytes",
            "Estimated heap bytes of the record state.",
            load(&c.dataflow.bytes),
        )?;
        let dims = c.dims.tables.lock().expect("dim stats lock").clone();
        let mut dim_rows = family(
            &mut e,
            "wrongbook_dim_rows",
            "Rows of each dimension table in the job's snapshot.",
            MetricType::Gauge,
        )?;
        for status in dims.values() {
            dim_rows.gauge(vec![("table", status.table.clone())], status.rows)?;
        }
        let mut dim_refresh = family(
            &mut e,
            "wrongbook_dim_last_refresh_timestamp_seconds",
            "When each dimension table was last read successfully.",
            MetricType::Gauge,
        )?;
        for status in dims.values() {
            dim_refresh.gauge(
                vec![("table", status.table.clone())],
                status.last_refresh_ms as f64 / 1000.0,
            )?;
        }
        let mut dim_failures = family(
            &mut e,
            "wrongbook_dim_refresh_failures",
            "Dimension refreshes that failed (the last good snapshot stayed in force).",
            MetricType::Counter,
        )?;
        for status in dims.values() {
            dim_failures.counter(vec![("table", status.table.clone())], status.failures)?;
        }
        let correction = c
            .dims
            .last_correction
            .lock()
            .expect("dim stats lock")
            .clone();
        gauge(
            &mut e,
            "wrongbook_dim_last_correction_seconds",
            "How long the corrections of the last dimension change took to commit.",
            correction.as_ref().map_or(0.0, |c| c.seconds),
        )?;
        gauge(
            &mut e,
            "wrongbook_dim_last_correction_rows",
            "Wide rows the last dimension change corrected.",
            correction.as_ref().map_or(0, |c| c.wide_rows),
        )?;

        gauge(
            &mut e,
            "wrongbook_routing_version",
            "The routing table version in force (1 at the job's first start, +1 per applied change).",
            c.routing.version(),
        )?;
        let written = load(&c.checkpoints.last_written_ms);
        gauge(
            &mut e,
            "wrongbook_checkpoint_age_seconds",
            "Seconds since the last complete checkpoint (absent before the first).",
            if written > 0 {
                (now_ms() - written as i64).max(0) as f64 / 1000.0
            } else {
                f64::NAN
            },
        )?;
        gauge(
            &mut e,
            "wrongbook_checkpoint_last_epoch",
            "The epoch of the last complete checkpoint.",
            load(&c.checkpoints.last_epoch),
        )?;
        gauge(
            &mut e,
            "wrongbook_caught_up",
            "1 once every worker has caught up with what the topic held at start.",
            u64::from(c.caught_up_workers.load(Ordering::Relaxed) >= c.workers),
        )?;
        gauge(
            &mut e,
            "wrongbook_workers",
            "Worker threads of this process.",
            c.workers,
        )?;
        let active = c.alerts.active();
        let mut alerts = family(
            &mut e,
            "wrongbook_alert_active",
            "1 while a threshold alert is active.",
            MetricType::Gauge,
        )?;
        for rule in crate::ops::thresholds::RULES {
            alerts.gauge(
                vec![
                    ("alert", rule.into()),
                    ("severity", crate::ops::thresholds::severity(rule).into()),
                ],
                u64::from(active.iter().any(|a| a.rule == rule)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_and_finds_quantiles() {
        let h = LatencyHistogram::default();
        for ms in [1, 2, 3, 40, 2_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.cumulative[0], (0.005, 3));
        assert_eq!(s.cumulative.last(), Some(&(f64::INFINITY, 5)));
        assert_eq!(s.quantile(0.5), Some(0.005));
        assert_eq!(s.quantile(0.99), Some(2.5));
        assert!((s.sum_seconds - 2.046).abs() < 1e-9);
        let later = {
            h.observe(Duration::from_secs(100));
            h.snapshot()
        };
        assert_eq!(later.since(&s).count, 1);
        assert_eq!(later.since(&s).quantile(1.0), Some(120.0));
    }
}
