//! The Kafka sink: an idempotent producer (`enable.idempotence=true`, `acks=all`) writing
//! `Classification`s to the results topic and `Rejection`s to the dead-letter topic, each
//! keyed by source id, and [`Publisher`], which writes `SourceDetection`s for
//! `radiogate publish`.
//!
//! This module owns the producer's settings, encoding and sending, including waiting when
//! librdkafka's local queue is full (which holds the pipeline back). It does not decide what
//! a delivered message acknowledges: every message carries the input's stream position as
//! its delivery opaque, and the producer context it is created with (the acknowledgement
//! path) acts on the delivery report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::config::KafkaSinkConfig;
use crate::proto::{self, StreamPosition};

use super::{SinkCounts, SinkError};

/// The delivery opaque of every message: the input record it was made from, when the input
/// is a stream.
pub type Input = Box<Option<StreamPosition>>;

/// How long a send waits between tries while librdkafka's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Properties the delivery guarantees depend on: set after the user's.
const FORCED: [(&str, &str); 2] = [("enable.idempotence", "true"), ("acks", "all")];

/// A Kafka client error with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("kafka {action}: {source}")]
pub struct KafkaSinkError {
    action: String,
    #[source]
    source: KafkaError,
}

fn kafka_error(action: impl Into<String>) -> impl FnOnce(KafkaError) -> SinkError {
    let action = action.into();
    move |source| SinkError::Kafka(KafkaSinkError { action, source })
}

/// The librdkafka properties of the producer: defaults, then the user's, then [`FORCED`].
pub fn producer_properties(
    brokers: &str,
    user: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = [
        ("bootstrap.servers", brokers),
        ("linger.ms", "5"),
        // A rejection carries its original message, up to an inline cutout (about 360 KB).
        ("message.max.bytes", "4194304"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (key, value) in user {
        if FORCED.iter().any(|(forced, _)| forced == key) {
            tracing::warn!(property = %key, "sink.properties cannot change this property; ignored");
            continue;
        }
        properties.push((key.clone(), value.clone()));
    }
    properties.extend(FORCED.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    properties
}

fn producer<C: ProducerContext<DeliveryOpaque = Input> + 'static>(
    properties: Vec<(String, String)>,
    context: C,
) -> Result<ThreadedProducer<C>, SinkError> {
    let mut client = ClientConfig::new();
    for (key, value) in properties {
        client.set(key, value);
    }
    client
        .create_with_context(context)
        .map_err(kafka_error("cannot create the producer"))
}

/// Sends one message, waiting while the local queue is full (librdkafka expires queued
/// messages after `message.timeout.ms`, so the wait is bounded).
fn send<C: ProducerContext<DeliveryOpaque = Input> + 'static>(
    producer: &ThreadedProducer<C>,
    topic: &str,
    key: &str,
    payload: &[u8],
    input: Option<StreamPosition>,
) -> Result<(), SinkError> {
    let mut record = BaseRecord::with_opaque_to(topic, Box::new(input)).payload(payload);
    if !key.is_empty() {
        record = record.key(key);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                std::thread::sleep(QUEUE_FULL_BACKOFF);
            }
            Err((e, _)) => return Err(kafka_error(format!("cannot send to {topic}"))(e)),
        }
    }
}

/// Writes results and rejections to their topics.
pub struct KafkaSink<C: ProducerContext<DeliveryOpaque = Input> + 'static> {
    producer: ThreadedProducer<C>,
    results_topic: String,
    dead_letter_topic: String,
    counts: SinkCounts,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

impl<C: ProducerContext<DeliveryOpaque = Input> + 'static> std::fmt::Debug for KafkaSink<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("results_topic", &self.results_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl<C: ProducerContext<DeliveryOpaque = Input> + 'static> KafkaSink<C> {
    /// Creates the producer with `context`, which receives every delivery report.
    pub fn create(config: &KafkaSinkConfig, context: C) -> Result<Self, SinkError> {
        Ok(Self {
            producer: producer(
                producer_properties(&config.brokers, &config.properties),
                context,
            )?,
            results_topic: config.results_topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            counts: SinkCounts::default(),
            scratch: Vec::with_capacity(4096),
        })
    }

    /// Queues one classification (key: source id).
    pub fn write_classification(&mut self, c: &proto::Classification) -> Result<(), SinkError> {
        self.scratch.clear();
        c.encode(&mut self.scratch)
            .expect("encoding into a Vec cannot run out of room: Vec grows as prost writes");
        send(
            &self.producer,
            &self.results_topic,
            &c.source_id,
            &self.scratch,
            c.stream.clone(),
        )?;
        self.counts.classifications += 1;
        Ok(())
    }

    /// Queues one rejection (key: source id, when known).
    pub fn write_rejection(&mut self, r: &proto::Rejection) -> Result<(), SinkError> {
        self.scratch.clear();
        r.encode(&mut self.scratch)
            .expect("encoding into a Vec cannot run out of room: Vec grows as prost writes");
        send(
            &self.producer,
            &self.dead_letter_topic,
            &r.source_id,
            &self.scratch,
            r.stream.clone(),
        )?;
        self.counts.rejections += 1;
        Ok(())
    }

    /// Messages queued so far, by kind.
    pub fn counts(&self) -> SinkCounts {
        self.counts
    }

    /// Waits up to `timeout` for every queued message's delivery report.
    pub fn finish(self, timeout: Duration) -> Result<SinkCounts, SinkError> {
        self.producer
            .flush(timeout)
            .map_err(kafka_error("delivering the last results"))?;
        Ok(self.counts)
    }
}

/// The publisher's producer context: counts detections the broker did not take.
#[derive(Debug, Clone, Default)]
struct CountFailures {
    failed: Arc<AtomicU64>,
}

impl ClientContext for CountFailures {}

impl ProducerContext for CountFailures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "detection not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends `SourceDetection`s to a topic (`radiogate publish`): keyed by source id, through an
/// idempotent producer.
pub struct Publisher {
    producer: ThreadedProducer<CountFailures>,
    /// Delivery failures, counted by the producer's delivery reports.
    failed: Arc<AtomicU64>,
    topic: String,
    sent: u64,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A producer to `topic` on `brokers`.
    pub fn create(brokers: &str, topic: &str) -> Result<Self, SinkError> {
        let properties = producer_properties(brokers, &Default::default());
        let mut client = ClientConfig::new();
        for (key, value) in properties {
            client.set(key, value);
        }
        let context = CountFailures::default();
        let failed = context.failed.clone();
        let producer = client
            .create_with_context(context)
            .map_err(kafka_error("cannot create the producer"))?;
        Ok(Self {
            producer,
            failed,
            topic: topic.to_string(),
            sent: 0,
            scratch: Vec::with_capacity(4096),
        })
    }

    /// Queues one detection.
    pub fn send(&mut self, detection: &proto::SourceDetection) -> Result<(), SinkError> {
        self.scratch.clear();
        detection
            .encode(&mut self.scratch)
            .expect("encoding into a Vec cannot run out of room: Vec grows as prost writes");
        let mut record = BaseRecord::to(&self.topic)
            .payload(&self.scratch[..])
            .key(&detection.source_id);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(QUEUE_FULL_BACKOFF);
                }
                Err((e, _)) => {
                    return Err(kafka_error(format!("cannot send to {}", self.topic))(e));
                }
            }
        }
        self.sent += 1;
        Ok(())
    }

    /// Waits up to `timeout` for every detection to be delivered; returns how many were.
    pub fn finish(self, timeout: Duration) -> Result<u64, SinkError> {
        self.producer
            .flush(timeout)
            .map_err(kafka_error("delivering the detections"))?;
        let failed = self.failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(SinkError::Undelivered {
                topic: self.topic,
                failed,
                sent: self.sent,
            });
        }
        Ok(self.sent)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn idempotence_and_acks_cannot_be_overridden() {
        let user = BTreeMap::from([
            ("acks".to_string(), "1".to_string()),
            ("enable.idempotence".to_string(), "false".to_string()),
            ("linger.ms".to_string(), "50".to_string()),
        ]);
        let properties = producer_properties("b:9092", &user);
        let last = |key: &str| {
            properties
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(last("acks"), Some("all"));
        assert_eq!(last("enable.idempotence"), Some("true"));
        assert_eq!(last("linger.ms"), Some("50"));
        assert_eq!(last("bootstrap.servers"), Some("b:9092"));
    }
}
