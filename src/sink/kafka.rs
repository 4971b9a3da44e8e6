//! The Kafka sink: an idempotent producer (`enable.idempotence=true`, `acks=all`) writing
//! `Classification`s to the results topic and `Rejection`s to the dead-letter topic, each
//! keyed by source id, and [`Publisher`], which writes `SourceDetection`s for
//! `radiogate publish`. In `exactly_once` the producer is transactional
//! ([`transactional_producer`]) and messages go out inside the acknowledgement path's
//! transaction.
//!
//! This module owns the producer's settings, encoding and sending, including waiting when
//! librdkafka's local queue is full (which holds the pipeline back). It does not decide what
//! a delivered message acknowledges: every message carries the input record it was made
//! from as its delivery opaque, and the acknowledgement path acts on the delivery report or
//! commits the transaction.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::ack::{
    Ack, Acks, DeliveryContext, DeliveryFailures, TransactionSendError, TransactionalProducer,
};
use crate::config::{DeliveryMode, KafkaSinkConfig};
use crate::proto;

use super::{SinkCounts, SinkError};

/// The delivery opaque of every message: the input record it was made from, when the input
/// is a stream.
pub type Input = Box<Option<Ack>>;

/// How long `init_transactions` may take (it waits for the previous instance's open
/// transaction to be aborted).
const INIT_TRANSACTIONS_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a send waits between tries while librdkafka's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// How long a [`Flusher`] waits for the broker to take what was queued.
const SEND_NOW_TIMEOUT: Duration = Duration::from_millis(100);

/// What a record adds to its key and payload, for the producer's size limit (librdkafka
/// counts the record's own fields and headers; the broker, the batch's): a generous bound.
const RECORD_OVERHEAD: usize = 1024;

/// librdkafka's own default `message.max.bytes`.
const LIBRDKAFKA_MAX_MESSAGE_BYTES: usize = 1_000_000;

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

/// The librdkafka properties of the producer: defaults, then the user's, then `FORCED`.
pub fn producer_properties(
    brokers: &str,
    user: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = [
        ("bootstrap.servers", brokers),
        // Batching while a backlog waits (fewer, larger produce requests: a third of the
        // broker's CPU per result at 5 ms); a live stream does not wait for it, the pipeline
        // sends at once whenever no detection queues (`KafkaSink::send_now`).
        ("linger.ms", "50"),
        // A rejection carries its original message, up to an inline cutout (about 360 KB).
        ("message.max.bytes", "4194304"),
        // The local queue is part of the pipeline's bounded memory: when the results topic is
        // slow or unavailable, a full queue holds the sink back, then the whole pipeline,
        // and the consumer pauses (librdkafka's defaults, 100,000 messages and 1 GB, would
        // absorb minutes of input first).
        ("queue.buffering.max.messages", "10000"),
        ("queue.buffering.max.kbytes", "65536"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // The configuration refuses the properties radiogate sets (`sink.properties`); FORCED
    // wins over any that reach here by another way.
    properties.extend(user.iter().map(|(k, v)| (k.clone(), v.clone())));
    properties.extend(FORCED.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    properties
}

/// The `message.max.bytes` that `properties` give the producer (the last value wins).
fn max_message_bytes(properties: &[(String, String)]) -> usize {
    properties
        .iter()
        .rev()
        .find(|(key, _)| key == "message.max.bytes")
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(LIBRDKAFKA_MAX_MESSAGE_BYTES)
}

/// The transactional producer of an `exactly_once` sink, its transactions initialised (which
/// fences, and aborts the open transaction of, an earlier instance with the same id).
pub fn transactional_producer(
    config: &KafkaSinkConfig,
) -> Result<TransactionalProducer, SinkError> {
    let id = config
        .transactional_id
        .clone()
        .unwrap_or_else(default_transactional_id);
    let mut properties = producer_properties(&config.brokers, &config.properties);
    properties.push(("transactional.id".into(), id.clone()));
    let producer = producer(properties, DeliveryContext::without_acks())?;
    producer
        .init_transactions(INIT_TRANSACTIONS_TIMEOUT)
        .map_err(kafka_error(format!(
            "cannot initialise transactions (transactional.id {id})"
        )))?;
    tracing::info!(transactional_id = %id, "transactional producer ready");
    Ok(producer)
}

/// `radiogate-<hostname>`: stable across restarts of one instance (a pod's name, a host's).
fn default_transactional_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("radiogate-{host}")
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

/// `message` encoded into `scratch` (emptied first, its capacity reused).
fn encode(scratch: &mut Vec<u8>, message: &impl Message) {
    scratch.clear();
    message
        .encode(scratch)
        .expect("encoding into a Vec cannot run out of room: Vec grows as prost writes");
}

/// Sends one message, waiting while the local queue is full (librdkafka expires queued
/// messages after `message.timeout.ms`, so the wait is bounded).
fn send<C: ProducerContext<DeliveryOpaque = Input> + 'static>(
    producer: &ThreadedProducer<C>,
    topic: &str,
    key: &str,
    payload: &[u8],
    input: Option<Ack>,
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

/// How a sink's messages go out.
enum Producing {
    /// `at_least_once`: straight to the producer; delivery reports acknowledge, and count
    /// what was not delivered.
    Direct(
        Arc<ThreadedProducer<DeliveryContext>>,
        Flusher,
        Arc<DeliveryFailures>,
    ),
    /// `exactly_once`: inside the acknowledgement path's transaction.
    Transactional(Acks),
}

/// Has a producer send what it holds at once, on a thread of its own so that the caller
/// never waits for the broker.
///
/// librdkafka ignores `linger.ms` only while a flush waits (`rd_kafka_flush`, up to
/// [`SEND_NOW_TIMEOUT`] for the broker to take what was queued), and everything queued
/// meanwhile goes out at once too. rdkafka's own `Producer::flush` will not do: it calls
/// librdkafka with no wait (so the broker threads may not see the flush before it ends and
/// keep lingering), then polls for delivery reports that the producer's own thread takes,
/// waiting out its timeout.
struct Flusher {
    /// One pending request at most: a flush that starts after a message was queued sends
    /// it. None once dropped (which ends the thread).
    wake: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(producer: Arc<ThreadedProducer<DeliveryContext>>) -> Result<Self, SinkError> {
        let (wake, requests) = crossbeam_channel::bounded::<()>(1);
        let timeout_ms = i32::try_from(SEND_NOW_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        let thread = std::thread::Builder::new()
            .name("radiogate-flush".into())
            .spawn(move || {
                // Ends when the sink, and with it the sender, is dropped.
                for () in requests {
                    // SAFETY: the handle is the live producer's (this thread holds it), which
                    // `rd_kafka_flush` may use from any thread. Delivery reports are events
                    // here (rdkafka's producers enable them), so the call only waits for the
                    // producer's own thread to serve them; it runs no callback.
                    let err = unsafe {
                        rdkafka::bindings::rd_kafka_flush(
                            producer.client().native_ptr(),
                            timeout_ms,
                        )
                    };
                    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                        tracing::debug!(
                            error = %RDKafkaErrorCode::from(err),
                            "results not all delivered yet; delivery goes on"
                        );
                    }
                }
            })
            .map_err(|source| SinkError::Thread {
                name: "radiogate-flush",
                source,
            })?;
        Ok(Self {
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    fn request(&self) {
        // Full: a flush is already pending, and it will send what is queued now.
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }

    /// Closes the requests and waits for the thread (at most a flush under way), so that it
    /// no longer holds the producer.
    fn stop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes results and rejections to their topics.
pub struct KafkaSink {
    producing: Producing,
    results_topic: String,
    dead_letter_topic: String,
    /// The producer's `message.max.bytes`: a larger message is refused before it is queued.
    max_message_bytes: usize,
    counts: SinkCounts,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("results_topic", &self.results_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field(
                "transactional",
                &matches!(self.producing, Producing::Transactional(_)),
            )
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A sink for `config`. `acks`: the acknowledgement path of a Kafka input (None for
    /// other input); in `exactly_once` it must be transactional and owns the producer.
    pub fn create(config: &KafkaSinkConfig, acks: Option<&Acks>) -> Result<Self, SinkError> {
        let properties = producer_properties(&config.brokers, &config.properties);
        let producing = match (config.delivery, acks) {
            (DeliveryMode::ExactlyOnce, Some(acks)) if acks.is_transactional() => {
                Producing::Transactional(acks.clone())
            }
            (DeliveryMode::ExactlyOnce, _) => {
                return Err(SinkError::Transaction(
                    "exactly_once needs a Kafka source and its transactional acknowledgement path"
                        .into(),
                ));
            }
            (DeliveryMode::AtLeastOnce, acks) => {
                let context =
                    acks.map_or_else(DeliveryContext::without_acks, Acks::delivery_context);
                let failures = context.failures();
                let producer = Arc::new(producer(properties.clone(), context)?);
                Producing::Direct(producer.clone(), Flusher::start(producer)?, failures)
            }
        };
        Ok(Self {
            producing,
            results_topic: config.results_topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            max_message_bytes: max_message_bytes(&properties),
            counts: SinkCounts::default(),
            scratch: Vec::with_capacity(4096),
        })
    }

    /// Queues one classification (key: source id). `ack`: the input record it answers.
    /// False when the transaction dropped it (see `send`).
    pub fn write_classification(
        &mut self,
        c: &proto::Classification,
        ack: Option<Ack>,
    ) -> Result<bool, SinkError> {
        encode(&mut self.scratch, c);
        let sent = self.send(Topic::Results, &c.source_id, ack)?;
        self.counts.classifications += u64::from(sent);
        Ok(sent)
    }

    /// Queues one rejection (key: source id, when known). `ack`: the input record it answers.
    /// False when the transaction dropped it (see `send`).
    pub fn write_rejection(
        &mut self,
        r: &proto::Rejection,
        ack: Option<Ack>,
    ) -> Result<bool, SinkError> {
        encode(&mut self.scratch, r);
        if self.scratch.len() + r.source_id.len() + RECORD_OVERHEAD > self.max_message_bytes {
            // The producer would refuse the message, and the worker would stop on this
            // record at every restart: publish the rejection without the original, which
            // stays on the input topic at the position the rejection names.
            let slim = proto::Rejection {
                detail: format!(
                    "{}; the original message ({} bytes) is left out: with it the rejection \
                     is larger than the sink's message.max.bytes ({})",
                    r.detail,
                    r.original.len(),
                    self.max_message_bytes
                ),
                original: Vec::new(),
                ..r.clone()
            };
            encode(&mut self.scratch, &slim);
        }
        let sent = self.send(Topic::DeadLetter, &r.source_id, ack)?;
        self.counts.rejections += u64::from(sent);
        Ok(sent)
    }

    /// Sends the encoded message in `scratch`. False when the transaction dropped it (its
    /// partition was revoked or rewound: the record is read again).
    fn send(&self, topic: Topic, key: &str, ack: Option<Ack>) -> Result<bool, SinkError> {
        let topic = match topic {
            Topic::Results => self.results_topic.as_str(),
            Topic::DeadLetter => self.dead_letter_topic.as_str(),
        };
        match &self.producing {
            Producing::Direct(producer, ..) => {
                // A message that was not delivered holds its partition's committed offset
                // back for good: stop, so that a restart reads it again.
                self.check_delivered()?;
                send(producer, topic, key, &self.scratch, ack).map(|()| true)
            }
            Producing::Transactional(acks) => acks
                .send_in_transaction(ack.as_ref(), |producer| {
                    send(producer, topic, key, &self.scratch, ack.clone())
                })
                .map_err(|e| match e {
                    TransactionSendError::Send(e) => e,
                    other => SinkError::Transaction(other.to_string()),
                }),
        }
    }

    /// `at_least_once`: has the producer send every queued message now instead of after
    /// `linger.ms` (`Flusher`); returns at once. `exactly_once`: nothing; results become
    /// visible when the transaction commits.
    pub fn send_now(&self) {
        if let Producing::Direct(_, flusher, _) = &self.producing {
            flusher.request();
        }
    }

    /// Messages queued so far, by kind.
    pub fn counts(&self) -> SinkCounts {
        self.counts
    }

    /// `at_least_once`: waits up to `timeout` for every queued message's delivery report;
    /// Err when any message was not delivered. `exactly_once`: nothing; the final commit
    /// of the transaction delivers them.
    pub fn finish(mut self, timeout: Duration) -> Result<SinkCounts, SinkError> {
        if let Producing::Direct(producer, flusher, _) = &mut self.producing {
            flusher.stop();
            producer
                .flush(timeout)
                .map_err(kafka_error("delivering the last results"))?;
        }
        self.check_delivered()?;
        Ok(self.counts)
    }

    /// `at_least_once`: Err when the producer reported a message it could not deliver.
    fn check_delivered(&self) -> Result<(), SinkError> {
        let Producing::Direct(_, _, failures) = &self.producing else {
            return Ok(());
        };
        match failures.get() {
            None => Ok(()),
            Some((failed, first)) => Err(SinkError::Undelivered {
                topic: format!("{} and {}", self.results_topic, self.dead_letter_topic),
                failed,
                sent: self.counts.classifications + self.counts.rejections,
                first: first.to_string(),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Topic {
    Results,
    DeadLetter,
}

/// Sends `SourceDetection`s to a topic (`radiogate publish`): keyed by source id, through an
/// idempotent producer.
pub struct Publisher {
    producer: ThreadedProducer<DeliveryContext>,
    /// Delivery failures, counted by the producer's delivery reports.
    failures: Arc<DeliveryFailures>,
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
    /// A producer to `topic` on `brokers`; `paced`: each detection leaves at once instead
    /// of waiting up to `linger.ms` for others (a paced stream stands for live detections,
    /// whose latency is measured from their send time).
    pub fn create(brokers: &str, topic: &str, paced: bool) -> Result<Self, SinkError> {
        let mut extra = std::collections::BTreeMap::new();
        if paced {
            extra.insert("linger.ms".to_string(), "0".to_string());
        }
        let context = DeliveryContext::without_acks();
        let failures = context.failures();
        let producer = producer(producer_properties(brokers, &extra), context)?;
        Ok(Self {
            producer,
            failures,
            topic: topic.to_string(),
            sent: 0,
            scratch: Vec::with_capacity(4096),
        })
    }

    /// Queues one detection.
    pub fn send(&mut self, detection: &proto::SourceDetection) -> Result<(), SinkError> {
        encode(&mut self.scratch, detection);
        send(
            &self.producer,
            &self.topic,
            &detection.source_id,
            &self.scratch,
            None,
        )?;
        self.sent += 1;
        Ok(())
    }

    /// Waits up to `timeout` for every detection to be delivered; returns how many were.
    pub fn finish(self, timeout: Duration) -> Result<u64, SinkError> {
        self.producer
            .flush(timeout)
            .map_err(kafka_error("delivering the detections"))?;
        if let Some((failed, first)) = self.failures.get() {
            return Err(SinkError::Undelivered {
                topic: self.topic,
                failed,
                sent: self.sent,
                first: first.to_string(),
            });
        }
        Ok(self.sent)
    }
}

/// A topic for [`create_topics`]: its name, partitions, and whether the broker stamps its
/// records with its own clock (`message.timestamp.type=LogAppendTime`, for publication times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub broker_timestamps: bool,
}

/// Creates topics (replication 1: test and benchmark brokers), taking messages up to an
/// inline rejection's size. Fails on the first topic that could not be created.
pub async fn create_topics(brokers: &str, topics: &[TopicSpec]) -> Result<(), SinkError> {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1))
                .set("max.message.bytes", "4194304");
            if t.broker_timestamps {
                topic.set("message.timestamp.type", "LogAppendTime")
            } else {
                topic
            }
        })
        .collect();
    let results = admin(brokers)?
        .create_topics(&new, &admin_options())
        .await
        .map_err(kafka_error("creating topics"))?;
    for result in results {
        if let Err((name, code)) = result {
            return Err(kafka_error(format!("creating topic {name}"))(
                KafkaError::AdminOp(code),
            ));
        }
    }
    Ok(())
}

/// Deletes topics; returns the ones that could not be deleted, with why.
pub async fn delete_topics(brokers: &str, names: &[&str]) -> Result<Vec<String>, SinkError> {
    let results = admin(brokers)?
        .delete_topics(names, &admin_options())
        .await
        .map_err(kafka_error("deleting topics"))?;
    Ok(results
        .into_iter()
        .filter_map(|r| r.err().map(|(name, code)| format!("{name}: {code}")))
        .collect())
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>, SinkError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(kafka_error("cannot create the admin client"))
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
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
