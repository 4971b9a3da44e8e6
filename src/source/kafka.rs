//! The Kafka source: `SourceDetection` messages from a topic, read by a consumer in a
//! group (cooperative-sticky assignment, so a rebalance moves only the partitions it must).
//!
//! Each record becomes a [`Detection`] with [`Origin::Stream`], or a [`Rejected`] that carries
//! the original bytes: undecodable for bytes that are not a `SourceDetection`, invalid for a
//! detection that fails [`super::validate`]. Either way the record flows on and its offset
//! is acknowledged like any other, so bad input never stalls a partition.
//!
//! This module owns the consumer's settings, polling, pausing and decoding. It does not
//! decide when offsets are stored or committed: offsets are never stored automatically
//! (`enable.auto.offset.store=false`, `enable.auto.commit=false`); the acknowledgement path
//! whose context the consumer is created with does that. The consumer is polled from one
//! thread (the pipeline's source thread), which is also where rebalance callbacks run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::KafkaSourceConfig;
use crate::domain::{Detection, Origin, Rejected};
use crate::proto::{self, RejectReason};

/// Properties the acknowledgement path depends on: set after the user's, which cannot
/// override them.
const FORCED: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// How long the consumer may take to reach the brokers at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the Kafka consumer could not start, or must stop.
#[derive(Debug, thiserror::Error)]
#[error("kafka consumer ({brokers}, topic {topic}): {source}")]
pub struct ConsumerError {
    brokers: String,
    topic: String,
    #[source]
    source: KafkaError,
}

/// A consumer in a group, subscribed to the detections topic.
pub struct KafkaSource<C: ConsumerContext + 'static> {
    /// Shared with the acknowledgement path, which stores and commits offsets on it.
    consumer: Arc<BaseConsumer<C>>,
    /// Whether the assigned partitions are paused (downstream is full).
    paused: bool,
    /// An error retrying cannot cure (authentication refused): the worker must stop.
    fatal: Option<KafkaError>,
    brokers: String,
    topic: String,
}

impl<C: ConsumerContext + 'static> std::fmt::Debug for KafkaSource<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

/// The librdkafka properties of the consumer: defaults, then the user's, then `FORCED`.
pub fn consumer_properties(config: &KafkaSourceConfig) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = [
        ("bootstrap.servers", config.brokers.as_str()),
        ("group.id", config.group_id.as_str()),
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "false"),
        // An inline 300x300 float32 cutout is about 360 KB: fetch up to 8 MB (~22 of them) a
        // request, also from one partition (librdkafka's 1 MB per partition means a request
        // for every two or three; BENCHMARKS.md: 11-19% less broker CPU per item).
        ("fetch.max.bytes", "8388608"),
        ("max.partition.fetch.bytes", "8388608"),
        ("queued.max.messages.kbytes", "16384"),
        // When that prefetch queue is full, librdkafka waits this long before it fetches
        // again (default 1000 ms): 16 MB of inline cutouts is ~0.15 s of work on 2 cores, so
        // the default starves the pipeline (BENCHMARKS.md: 181 -> 268 items/s).
        ("fetch.queue.backoff.ms", "20"),
        // Consumer lag and group state for the metrics (the context's `stats` callback).
        ("statistics.interval.ms", "5000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // The configuration refuses the properties radiogate sets (`source.properties`); FORCED
    // wins over any that reach here by another way.
    properties.extend(
        config
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    properties.extend(FORCED.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    properties
}

impl<C: ConsumerContext + 'static> KafkaSource<C> {
    /// Creates the consumer with `context` (which receives its rebalances), checks that the
    /// brokers answer with these settings (a refused login or unreachable brokers stop the
    /// start with the reason), and subscribes.
    pub fn open(config: &KafkaSourceConfig, context: C) -> Result<Self, Box<ConsumerError>> {
        let error = |source| {
            Box::new(ConsumerError {
                brokers: config.brokers.clone(),
                topic: config.topic.clone(),
                source,
            })
        };
        let mut client = ClientConfig::new();
        for (key, value) in consumer_properties(config) {
            client.set(key, value);
        }
        let consumer: BaseConsumer<C> = client.create_with_context(context).map_err(error)?;
        if let Err(e) = consumer.fetch_metadata(Some(&config.topic), CONNECT_TIMEOUT) {
            // librdkafka posts the cause (e.g. a refused login) as an error event on the
            // consumer's queue; the metadata error only says the transport failed.
            let cause = (0..20)
                .find_map(|_| match consumer.poll(Duration::from_millis(50)) {
                    Some(Err(e))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) =>
                    {
                        Some(e)
                    }
                    _ => None,
                })
                .unwrap_or(e);
            return Err(error(cause));
        }
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(error)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            paused: false,
            fatal: None,
            brokers: config.brokers.clone(),
            topic: config.topic.clone(),
        })
    }

    /// An error that retrying cannot cure, seen by [`KafkaSource::poll`]: the worker must
    /// stop.
    pub fn take_fatal(&mut self) -> Option<Box<ConsumerError>> {
        self.fatal.take().map(|source| {
            Box::new(ConsumerError {
                brokers: self.brokers.clone(),
                topic: self.topic.clone(),
                source,
            })
        })
    }

    /// The consumer, for the acknowledgement path.
    pub fn consumer(&self) -> &Arc<BaseConsumer<C>> {
        &self.consumer
    }

    /// Waits up to `timeout` for the next record. None when none came (or the poll served
    /// only rebalances and errors, which are logged: librdkafka retries on its own).
    pub fn poll(&mut self, timeout: Duration) -> Option<Result<Detection, Rejected>> {
        match self.consumer.poll(timeout)? {
            Ok(message) => {
                let origin = Origin::Stream {
                    topic: message.topic().to_string(),
                    partition: message.partition(),
                    offset: message.offset(),
                    generation: 0,
                };
                Some(decode(message.payload(), origin))
            }
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
                    self.fatal = Some(e);
                }
                None
            }
        }
    }

    /// Stops fetching from every assigned partition, while polls go on serving the group
    /// (heartbeats, rebalances). Called on every poll while downstream is full, so that
    /// partitions assigned in the meantime are paused too.
    pub fn pause(&mut self) {
        match self.consumer.assignment() {
            Ok(assigned) => match self.consumer.pause(&assigned) {
                Ok(()) => {
                    if !self.paused {
                        tracing::debug!(
                            partitions = assigned.count(),
                            "downstream full: partitions paused"
                        );
                    }
                    self.paused = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot pause partitions"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot read the assignment to pause it"),
        }
    }

    /// Fetches again after [`KafkaSource::pause`]; librdkafka resumes each partition from
    /// the record after the last one returned.
    pub fn resume(&mut self) {
        if !self.paused {
            return;
        }
        match self
            .consumer
            .assignment()
            .and_then(|assigned| self.consumer.resume(&assigned))
        {
            Ok(()) => {
                tracing::debug!("room downstream: partitions resumed");
                self.paused = false;
            }
            Err(e) => tracing::warn!(error = %e, "cannot resume partitions"),
        }
    }

    /// Whether the assigned partitions are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

/// One record read by a [`TopicReader`]: its timestamp in ms since the epoch (the broker's
/// append time or the producer's create time; None when it has none) and its payload.
pub type TopicRecord = (Option<i64>, Vec<u8>);

/// Reads every partition of a topic from its beginning, outside any group's progress
/// (benchmarks and tools read results topics with it): each record's timestamp and payload.
pub struct TopicReader {
    consumer: BaseConsumer,
    brokers: String,
    topic: String,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TopicReader {
    /// Assigns every partition of `topic` from its first record.
    pub fn open(brokers: &str, topic: &str, group_id: &str) -> Result<Self, Box<ConsumerError>> {
        let error = |source| {
            Box::new(ConsumerError {
                brokers: brokers.to_string(),
                topic: topic.to_string(),
                source,
            })
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "52428800")
            .create()
            .map_err(error)?;
        // A topic created a moment ago may not be in the broker's metadata yet: ask again
        // until it has partitions or CONNECT_TIMEOUT has passed.
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let partitions = loop {
            let metadata = consumer
                .fetch_metadata(Some(topic), CONNECT_TIMEOUT)
                .map_err(error)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions())
                .map(|p| p.id())
                .collect();
            if !partitions.is_empty() {
                break partitions;
            }
            if Instant::now() >= deadline {
                return Err(error(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(error)?;
        }
        consumer.assign(&assignment).map_err(error)?;
        Ok(Self {
            consumer,
            brokers: brokers.to_string(),
            topic: topic.to_string(),
        })
    }

    /// The next record within `timeout`.
    pub fn poll(&self, timeout: Duration) -> Option<Result<TopicRecord, Box<ConsumerError>>> {
        Some(match self.consumer.poll(timeout)? {
            Ok(message) => Ok((
                message.timestamp().to_millis(),
                message.payload().unwrap_or_default().to_vec(),
            )),
            Err(source) => Err(Box::new(ConsumerError {
                brokers: self.brokers.clone(),
                topic: self.topic.clone(),
                source,
            })),
        })
    }
}

/// One record's payload as a detection, or its rejection with the original bytes.
#[allow(
    clippy::result_large_err,
    reason = "a Rejected travels by value through the pipeline beside the larger Detection"
)]
pub fn decode(payload: Option<&[u8]>, origin: Origin) -> Result<Detection, Rejected> {
    let bytes = payload.unwrap_or_default();
    let rejected = |reason, detail: String, source_id: Option<String>| Rejected {
        reason,
        detail,
        source_id,
        original: Some(Bytes::copy_from_slice(bytes)),
        origin: origin.clone(),
    };
    if bytes.is_empty() {
        return Err(rejected(
            RejectReason::Undecodable,
            "empty message".into(),
            None,
        ));
    }
    let message = match proto::SourceDetection::decode(bytes) {
        Ok(message) => message,
        Err(e) => {
            return Err(rejected(
                RejectReason::Undecodable,
                format!("not a SourceDetection: {e}"),
                None,
            ));
        }
    };
    if let Err(e) = super::validate(&message) {
        let source_id = Some(message.source_id).filter(|s| !s.trim().is_empty());
        return Err(rejected(e.reason, e.detail, source_id));
    }
    Ok(Detection {
        message,
        origin,
        received: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn origin() -> Origin {
        Origin::Stream {
            topic: "detections".into(),
            partition: 2,
            offset: 41,
            generation: 0,
        }
    }

    fn at(ra: f64, dec: f64) -> proto::SourceDetection {
        proto::SourceDetection {
            source_id: "J1".into(),
            ra_deg: ra,
            dec_deg: dec,
            ..Default::default()
        }
    }

    #[test]
    fn a_detection_decodes_with_its_stream_position() {
        let bytes = at(114.33, 29.49).encode_to_vec();
        let detection = decode(Some(&bytes), origin()).unwrap();
        assert_eq!(detection.message, at(114.33, 29.49));
        assert_eq!(detection.origin, origin());
    }

    #[test]
    fn bytes_that_are_not_a_detection_are_rejected_with_them() {
        let bytes = b"\xff\xff\xff not protobuf".to_vec();
        let rejected = decode(Some(&bytes), origin()).unwrap_err();
        assert_eq!(rejected.reason, RejectReason::Undecodable);
        assert_eq!(rejected.original.as_deref(), Some(bytes.as_slice()));
        assert_eq!(rejected.origin, origin());
        assert_eq!(rejected.source_id, None);

        let rejected = decode(None, origin()).unwrap_err();
        assert_eq!(rejected.reason, RejectReason::Undecodable);
        assert_eq!(rejected.detail, "empty message");
    }

    #[test]
    fn invalid_detections_are_rejected_with_their_identity() {
        let bytes = at(f64::NAN, 10.0).encode_to_vec();
        let rejected = decode(Some(&bytes), origin()).unwrap_err();
        assert_eq!(rejected.reason, RejectReason::InvalidDetection);
        assert_eq!(rejected.source_id.as_deref(), Some("J1"));
        assert_eq!(rejected.original.as_deref(), Some(bytes.as_slice()));
        let bytes = at(10.0, 91.0).encode_to_vec();
        assert_eq!(
            decode(Some(&bytes), origin()).unwrap_err().reason,
            RejectReason::InvalidDetection
        );
    }

    #[test]
    fn the_acknowledgement_settings_cannot_be_overridden() {
        let config = KafkaSourceConfig {
            brokers: "b:9092".into(),
            group_id: "g".into(),
            topic: "t".into(),
            properties: BTreeMap::from([
                ("enable.auto.commit".to_string(), "true".to_string()),
                ("session.timeout.ms".to_string(), "6000".to_string()),
                (
                    "max.partition.fetch.bytes".to_string(),
                    "1048576".to_string(),
                ),
            ]),
        };
        let properties = consumer_properties(&config);
        let last = |key: &str| {
            properties
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(last("enable.auto.commit"), Some("false"));
        assert_eq!(last("enable.auto.offset.store"), Some("false"));
        assert_eq!(last("session.timeout.ms"), Some("6000"));
        // A default radiogate sets, which the user's value overrides.
        assert_eq!(last("max.partition.fetch.bytes"), Some("1048576"));
        assert_eq!(
            last("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(last("group.id"), Some("g"));
    }
}
