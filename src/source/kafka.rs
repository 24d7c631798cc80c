//! The Kafka source: the events topic's partitions spread over all workers, each worker's
//! partitions read by its own consumer thread and handed to the worker in batches.
//!
//! Partition `p` belongs to worker `p mod workers` (a worker may own none and still takes part).
//! Partitions are assigned, not subscribed: the timely workers are the unit of parallelism,
//! and the consumer group is used only to commit offsets, which the engine does after the sink
//! has committed the rows they cover. A reader knows the high watermarks of its partitions at
//! start and says when it has sent everything below them (caught up); a bounded reader stops
//! there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{Positions, SourceBatch, SourceEvent, WorkerQueue};
use crate::config::KafkaConfig;
use crate::source::file::SourceProgress;

/// Why the Kafka source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("Kafka at {servers}: {message}")]
    Broker { servers: String, message: String },
}

/// The client configuration for `kafka` (SASL when a username is set); secrets are not logged.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    if !kafka.username.is_empty() {
        config
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanisms", "PLAIN")
            .set("sasl.username", &kafka.username)
            .set("sasl.password", kafka.password.expose());
    }
    config
}

/// A consumer that commits nothing by itself.
pub fn consumer(kafka: &KafkaConfig, group_id: &str) -> Result<BaseConsumer, KafkaSourceError> {
    client_config(kafka)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| KafkaSourceError::Broker {
            servers: kafka.bootstrap_servers.clone(),
            message: format!("cannot create a consumer: {e}"),
        })
}

/// Fails fast, naming the address, when no broker of `kafka` answers within `timeout`.
pub fn check_reachable(kafka: &KafkaConfig, timeout: Duration) -> Result<(), KafkaSourceError> {
    let broker = |message: String| KafkaSourceError::Broker {
        servers: kafka.bootstrap_servers.clone(),
        message,
    };
    let probe: BaseConsumer = client_config(kafka)
        .create()
        .map_err(|e| broker(e.to_string()))?;
    probe
        .fetch_metadata(None, timeout)
        .map_err(|e| unreachable(kafka, timeout, e))?;
    Ok(())
}

/// The error for a metadata request that no broker of `kafka` answered within `timeout`.
fn unreachable(
    kafka: &KafkaConfig,
    timeout: Duration,
    error: rdkafka::error::KafkaError,
) -> KafkaSourceError {
    KafkaSourceError::Broker {
        servers: kafka.bootstrap_servers.clone(),
        message: format!(
            "no broker answered within {timeout:?}: {error}\n  hint: check kafka.bootstrap_servers (WRONGBOOK_KAFKA__BOOTSTRAP_SERVERS) and that the broker runs"
        ),
    }
}

/// The partitions of `topic` and their (low, high) watermarks now.
pub fn partitions(
    consumer: &BaseConsumer,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<Vec<(i32, i64, i64)>, KafkaSourceError> {
    let broker = |message: String| KafkaSourceError::Broker {
        servers: kafka.bootstrap_servers.clone(),
        message,
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(15))
        .map_err(|e| {
            broker(format!(
                "cannot read the metadata of topic `{topic}`: {e} (is the broker reachable?)"
            ))
        })?;
    let topic_meta = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| broker(format!("topic `{topic}` does not exist")))?;
    if let Some(e) = topic_meta.error() {
        return Err(broker(format!("topic `{topic}`: {e:?}")));
    }
    let mut partitions: Vec<i32> = topic_meta.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(broker(format!("topic `{topic}` has no partitions")));
    }
    partitions
        .into_iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(15))
                .map_err(|e| broker(format!("watermarks of {topic}/{p}: {e}")))?;
            Ok((p, low, high))
        })
        .collect()
}

/// Where a reader starts its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// The group's committed offsets (earliest where none is committed).
    Committed,
    /// The start of each partition.
    Earliest,
    /// Given offsets per partition (earliest for the others).
    Offsets(HashMap<i32, i64>),
}

/// One worker's share of the topic.
pub struct PartitionReader {
    pub topic: Arc<str>,
    pub consumer: Arc<BaseConsumer>,
    /// (partition, high watermark at start).
    pub partitions: Vec<(i32, i64)>,
    pub start: StartAt,
    /// Stop at the high watermarks seen at start (a bounded replay) instead of running on.
    pub bounded: bool,
    pub chunk_messages: usize,
    pub stop: Arc<AtomicBool>,
    pub progress: Arc<SourceProgress>,
}

impl PartitionReader {
    /// Assigns the partitions at their start offsets.
    pub fn assign(&self) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for (partition, _) in &self.partitions {
            let offset = match &self.start {
                StartAt::Committed => Offset::Stored,
                StartAt::Earliest => Offset::Beginning,
                StartAt::Offsets(offsets) => offsets
                    .get(partition)
                    .map_or(Offset::Beginning, |o| Offset::Offset(*o)),
            };
            tpl.add_partition_offset(&self.topic, *partition, offset)
                .map_err(|e| e.to_string())?;
        }
        self.consumer.assign(&tpl).map_err(|e| e.to_string())
    }

    /// Reads until stopped (or, bounded, until the start's high watermarks), sending batches
    /// to `worker`. Runs on its own thread.
    pub fn run(self, worker: WorkerQueue) {
        if let Err(e) = self.assign() {
            let _ = worker.send(SourceEvent::Failed(format!(
                "cannot assign partitions of `{}`: {e}",
                self.topic
            )));
            return;
        }
        // Partitions still below their high watermark at start.
        let mut behind: HashMap<i32, i64> = self
            .partitions
            .iter()
            .filter(|(_, high)| *high > 0)
            .map(|(p, high)| (*p, *high))
            .collect();
        if let StartAt::Offsets(starts) = &self.start {
            behind.retain(|p, high| starts.get(p).is_none_or(|start| start < high));
        }
        if !self.partitions.is_empty() && self.start == StartAt::Committed {
            // Partitions whose committed offset is already at the high watermark are caught up.
            if let Ok(committed) = self.consumer.committed(Duration::from_secs(10)) {
                for element in committed.elements() {
                    if let Offset::Offset(o) = element.offset() {
                        self.progress
                            .partitions
                            .lock()
                            .expect("progress lock")
                            .entry(element.partition())
                            .or_default()
                            .next_offset = o;
                        if behind
                            .get(&element.partition())
                            .is_some_and(|high| o >= *high)
                        {
                            behind.remove(&element.partition());
                        }
                    }
                }
            }
        }
        if let StartAt::Offsets(starts) = &self.start {
            let mut progress = self.progress.partitions.lock().expect("progress lock");
            for (partition, _) in &self.partitions {
                progress.entry(*partition).or_default().next_offset =
                    starts.get(partition).copied().unwrap_or(0);
            }
        }
        tracing::debug!(topic = %self.topic, partitions = ?self.partitions, behind = ?behind, "reader starts");
        let mut caught_up_sent = false;
        let new_batch = || {
            SourceBatch::new(
                0,
                Positions::Kafka {
                    topic: self.topic.clone(),
                    partitions: Vec::new(),
                    offsets: Vec::new(),
                    timestamps: Vec::new(),
                },
            )
        };
        let mut batch = new_batch();
        let mut batch_started = Instant::now();
        let mut last_lag_check: Option<Instant> = None;
        loop {
            if last_lag_check.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                last_lag_check = Some(Instant::now());
                self.publish_progress();
            }
            if behind.is_empty() && !caught_up_sent {
                if !batch.is_empty()
                    && worker
                        .send(SourceEvent::Batch(std::mem::replace(
                            &mut batch,
                            new_batch(),
                        )))
                        .is_err()
                {
                    return;
                }
                tracing::debug!(topic = %self.topic, partitions = ?self.partitions, "reader caught up");
                if worker.send(SourceEvent::CaughtUp).is_err() {
                    return;
                }
                caught_up_sent = true;
                if self.bounded {
                    let _ = worker.send(SourceEvent::End { final_epoch: 0 });
                    return;
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                if !batch.is_empty() {
                    let _ = worker.send(SourceEvent::Batch(batch));
                }
                let _ = worker.send(SourceEvent::End { final_epoch: 0 });
                return;
            }
            if self.partitions.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(Ok(message)) => {
                    let partition = message.partition();
                    let offset = message.offset();
                    if self.bounded && behind.get(&partition).is_none_or(|high| offset >= *high) {
                        // Beyond the end of a bounded read: not ours.
                        continue;
                    }
                    let payload = message.payload().unwrap_or(&[]);
                    self.progress
                        .bytes
                        .fetch_add(payload.len() as u64, Ordering::Relaxed);
                    self.progress.messages.fetch_add(1, Ordering::Relaxed);
                    batch.push(payload);
                    if let Positions::Kafka {
                        partitions,
                        offsets,
                        timestamps,
                        ..
                    } = &mut batch.positions
                    {
                        partitions.push(partition);
                        offsets.push(offset);
                        timestamps.push(message.timestamp().to_millis());
                    }
                    if behind
                        .get(&partition)
                        .is_some_and(|high| offset + 1 >= *high)
                    {
                        behind.remove(&partition);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "kafka consumer error; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                None => {}
            }
            let full = batch.len() >= self.chunk_messages;
            let due = !batch.is_empty() && batch_started.elapsed() >= Duration::from_millis(20);
            if full || due {
                if worker
                    .send(SourceEvent::Batch(std::mem::replace(
                        &mut batch,
                        new_batch(),
                    )))
                    .is_err()
                {
                    return;
                }
                batch_started = Instant::now();
            } else if batch.is_empty() {
                batch_started = Instant::now();
            }
        }
    }
}

impl PartitionReader {
    /// Publishes where each partition is read to (the consumer's position: no broker round
    /// trip; [`watch_high_watermarks`] fetches the other end).
    fn publish_progress(&self) {
        let positions: HashMap<i32, i64> = match self.consumer.position() {
            Ok(list) => list
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect(),
            Err(_) => HashMap::new(),
        };
        let mut partitions = self.progress.partitions.lock().expect("progress lock");
        for (partition, _) in &self.partitions {
            let entry = partitions.entry(*partition).or_default();
            if let Some(next) = positions.get(partition) {
                entry.next_offset = *next;
            }
        }
    }
}

/// Fetches the high watermarks of `partitions` every second with a consumer of its own (so the
/// readers never wait on it), for the consumer-lag figures, until `done` is set.
pub fn watch_high_watermarks(
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    progress: Arc<SourceProgress>,
    done: Arc<AtomicBool>,
) {
    let mut next = Instant::now();
    while !done.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next = Instant::now() + Duration::from_secs(1);
        for partition in &partitions {
            if let Ok((_, high)) =
                consumer.fetch_watermarks(&topic, *partition, Duration::from_secs(5))
            {
                progress
                    .partitions
                    .lock()
                    .expect("progress lock")
                    .entry(*partition)
                    .or_default()
                    .high_watermark = high;
            }
        }
    }
}

/// Commits the next offsets to read, per partition, for the group (asynchronously).
pub fn commit(
    consumer: &BaseConsumer,
    topic: &str,
    next_offsets: &HashMap<i32, i64>,
) -> Result<(), String> {
    if next_offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in next_offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
    }
    consumer
        .commit(&tpl, CommitMode::Async)
        .map_err(|e| e.to_string())
}

/// Creates `topic` with `partitions` partitions unless it exists.
pub fn ensure_topic(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaSourceError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let broker = |message: String| KafkaSourceError::Broker {
        servers: kafka.bootstrap_servers.clone(),
        message,
    };
    // Already there: nothing to do (and brokers without the admin API are fine). No answer
    // at all is no broker: say so now, rather than after the admin request's own timeout.
    if let Ok(probe) = consumer(kafka, "wrongbook-topic-check") {
        let timeout = Duration::from_secs(10);
        let metadata = probe
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| unreachable(kafka, timeout, e))?;
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if exists {
            return Ok(());
        }
    }
    let admin: AdminClient<DefaultClientContext> = client_config(kafka)
        .create()
        .map_err(|e| broker(format!("cannot create an admin client: {e}")))?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures_executor::block_on(admin.create_topics([&new_topic], &options))
        .map_err(|e| broker(format!("cannot create topic `{topic}`: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(broker(format!("cannot create topic `{name}`: {code}")))
            }
        }
    }
    Ok(())
}
