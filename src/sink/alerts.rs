//! The alerts topic (SPEC §7): dead letters, info records and threshold alerts as JSON
//! records produced to Kafka. Delivery is retried by the producer; a record that still cannot
//! be delivered is counted and logged, and flushing reports it: nothing is dropped silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::dead_letters::{now_seconds, DeadLetter, DeadLetterSink, Notice};
use crate::config::KafkaConfig;
use crate::source::kafka::client_config;

/// Counts records the broker never acknowledged.
#[derive(Clone, Default)]
pub struct DeliveryCounter {
    pub delivered: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "an alert record could not be delivered");
            }
        }
    }
}

/// A producer that retries for as long as it takes (bounded by `delivery.timeout.ms`).
pub fn producer(
    kafka: &KafkaConfig,
    counter: DeliveryCounter,
) -> Result<ThreadedProducer<DeliveryCounter>, KafkaError> {
    client_config(kafka)
        .set("linger.ms", "20")
        .set("enable.idempotence", "false")
        .set("message.send.max.retries", "1000000")
        .set("delivery.timeout.ms", "600000")
        .create_with_context(counter)
}

/// Sends `payload` to `topic`, waiting while the producer's queue is full.
pub fn send_blocking(
    producer: &ThreadedProducer<DeliveryCounter>,
    topic: &str,
    payload: &[u8],
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::<(), [u8]>::to(topic).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Dead letters produced to the alerts topic.
pub struct KafkaAlerts {
    producer: ThreadedProducer<DeliveryCounter>,
    counter: DeliveryCounter,
    topic: String,
}

impl KafkaAlerts {
    pub fn new(kafka: &KafkaConfig) -> Result<KafkaAlerts, KafkaError> {
        let counter = DeliveryCounter::default();
        Ok(KafkaAlerts {
            producer: producer(kafka, counter.clone())?,
            counter,
            topic: kafka.alerts_topic.clone(),
        })
    }
}

impl DeadLetterSink for KafkaAlerts {
    fn send(&self, letter: DeadLetter) -> std::io::Result<()> {
        let record = letter.to_line(now_seconds());
        send_blocking(&self.producer, &self.topic, record.as_bytes()).map_err(std::io::Error::other)
    }

    fn notice(&self, notice: &Notice) -> std::io::Result<()> {
        let record = notice.to_json(now_seconds()).to_string();
        send_blocking(&self.producer, &self.topic, record.as_bytes()).map_err(std::io::Error::other)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(std::io::Error::other)?;
        match self.counter.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(std::io::Error::other(format!(
                "{n} alert records could not be delivered to `{}`",
                self.topic
            ))),
        }
    }
}
