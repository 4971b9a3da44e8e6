//! The worker against a real Apache Kafka broker (`scripts/kafka/broker.sh start`; address
//! from `RADIOGATE_TEST_KAFKA`, default 127.0.0.1:9092). Every test makes its own topics and
//! consumer groups, so the tests run in any order and side by side.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use prost::Message as _;
use radiogate::config::{
    Config, DeliveryMode, KafkaSinkConfig, KafkaSourceConfig, SinkConfig, SourceConfig,
};
use radiogate::pipeline::{self, RunOptions, RunSummary};
use radiogate::proto::{self, RejectReason, source_detection::Pixels};
use radiogate::sink::kafka::Publisher;
use radiogate::sink::record::{LabelName, Record};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::common::{self, brokers, unique};

const PARTITIONS: i32 = 3;

/// The topics of one test: input, results, dead letters, and the worker's group.
struct Topics {
    input: String,
    results: String,
    dead: String,
    group: String,
}

impl Topics {
    fn create(name: &str) -> Self {
        let topics = Self {
            input: unique(&format!("{name}-in")),
            results: unique(&format!("{name}-results")),
            dead: unique(&format!("{name}-dead")),
            group: unique(&format!("{name}-group")),
        };
        common::create_topics(&[&topics.input, &topics.results, &topics.dead], PARTITIONS);
        topics
    }

    fn config(&self) -> Config {
        let mut config = common::files_config(vec![], std::path::Path::new("unused"));
        config.source = SourceConfig::Kafka(KafkaSourceConfig {
            brokers: brokers(),
            group_id: self.group.clone(),
            topic: self.input.clone(),
            properties: BTreeMap::new(),
        });
        config.sink = SinkConfig::Kafka(KafkaSinkConfig {
            brokers: brokers(),
            results_topic: self.results.clone(),
            dead_letter_topic: self.dead.clone(),
            delivery: DeliveryMode::AtLeastOnce,
            transactional_id: None,
            properties: BTreeMap::new(),
        });
        config.cutout.mosaics = vec![common::sample_dir()];
        config
    }
}

/// A worker running `pipeline::run` on its own thread until [`Worker::stop`].
struct Worker {
    shutdown: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<RunSummary>,
}

impl Worker {
    fn start(config: Config) -> Self {
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let signal = async move {
                let _ = stopped.await;
            };
            runtime
                .block_on(pipeline::run(config, RunOptions::default(), signal))
                .expect("the worker runs cleanly")
        });
        Self { shutdown, thread }
    }

    /// Graceful shutdown: drain, deliver, commit, leave the group.
    fn stop(self) -> RunSummary {
        let _ = self.shutdown.send(());
        self.thread.join().expect("the worker thread")
    }
}

/// Reads every message of some topics from the start, as they arrive.
struct Reader {
    consumer: BaseConsumer,
    messages: Vec<(String, Vec<u8>)>,
}

impl Reader {
    fn new(topics: &[&str]) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .expect("partition");
            }
        }
        consumer.assign(&tpl).expect("assign");
        Self {
            consumer,
            messages: Vec::new(),
        }
    }

    /// Reads until `count` messages in all, or panics after `timeout`.
    fn wait_for(&mut self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.messages.len() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} messages after {timeout:?}",
                self.messages.len()
            );
            if let Some(message) = self.consumer.poll(Duration::from_millis(200)) {
                let message = message.expect("a message");
                self.messages.push((
                    message.topic().to_string(),
                    message.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
    }

    /// Reads whatever else arrives within `quiet`.
    fn drain(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            if let Some(message) = self.consumer.poll(Duration::from_millis(100)) {
                let message = message.expect("a message");
                self.messages.push((
                    message.topic().to_string(),
                    message.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
    }

    fn classifications(&self, topic: &str) -> Vec<proto::Classification> {
        self.of(topic)
            .map(|b| proto::Classification::decode(b).expect("a Classification"))
            .collect()
    }

    fn rejections(&self, topic: &str) -> Vec<proto::Rejection> {
        self.of(topic)
            .map(|b| proto::Rejection::decode(b).expect("a Rejection"))
            .collect()
    }

    fn of<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.messages
            .iter()
            .filter(move |(t, _)| t == topic)
            .map(|(_, b)| b.as_slice())
    }
}

/// Sends raw payloads (poison included) to a topic, keyed, and waits for them.
fn send_raw(topic: &str, messages: &[(String, Vec<u8>)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    for (key, payload) in messages {
        producer
            .send(BaseRecord::to(topic).key(key).payload(payload))
            .map_err(|(e, _)| e)
            .expect("queued");
    }
    producer.flush(Duration::from_secs(30)).expect("delivered");
}

/// The group's committed offset and the end of each partition of `topic`.
fn committed_and_end(group: &str, topic: &str) -> Vec<(Option<i64>, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..PARTITIONS)
        .map(|p| {
            let offset = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(n)) => Some(n),
                _ => None,
            };
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (offset, high)
        })
        .collect()
}

/// The sample's FITS files: (stem, bytes).
fn sample_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(common::sample_dir())
        .expect("samples/first")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "fits"))
        .map(|p| {
            let stem = p
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("UTF-8 name")
                .to_string();
            (stem, std::fs::read(&p).expect("read sample"))
        })
        .collect();
    files.sort();
    files
}

/// The offline mode's verdict on the sample: stem -> (label, P(FRII), RA, Dec of the centre).
fn offline_verdicts() -> BTreeMap<String, (LabelName, f32, f64, f64)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("offline.jsonl");
    common::run(common::files_config(vec![common::sample_dir()], &out));
    common::read(&out)
        .into_iter()
        .map(|r| match r {
            Record::Classification(c) => {
                (c.source_id, (c.label, c.probabilities.frii, c.ra, c.dec))
            }
            Record::Rejection(r) => panic!("offline rejection {r:?}"),
        })
        .collect()
}

fn inline(id: String, bytes: &[u8]) -> proto::SourceDetection {
    proto::SourceDetection {
        source_id: id,
        survey: "FIRST".into(),
        centre_of_cutout: true,
        pixels: Some(Pixels::FitsCutout(bytes.to_vec().into())),
        ..Default::default()
    }
}

fn at(id: String, ra: f64, dec: f64) -> proto::SourceDetection {
    proto::SourceDetection {
        source_id: id,
        survey: "FIRST".into(),
        ra_deg: ra,
        dec_deg: dec,
        ..Default::default()
    }
}

/// `n` detections of the sample's positions (resolved against it as mosaics), ids `prefix-i-stem`.
fn positions(
    prefix: &str,
    n: usize,
    verdicts: &BTreeMap<String, (LabelName, f32, f64, f64)>,
) -> Vec<proto::SourceDetection> {
    let centres: Vec<_> = verdicts.iter().collect();
    (0..n)
        .map(|i| {
            let (stem, (_, _, ra, dec)) = centres[i % centres.len()];
            at(format!("{prefix}-{i}-{stem}"), *ra, *dec)
        })
        .collect()
}

fn publish(topic: &str, detections: &[proto::SourceDetection]) {
    let mut publisher = Publisher::create(&brokers(), topic, false).expect("publisher");
    for d in detections {
        publisher.send(d).expect("queued");
    }
    assert_eq!(
        publisher
            .finish(Duration::from_secs(60))
            .expect("delivered"),
        detections.len() as u64
    );
}

/// The stem at the end of an id `prefix-i-stem`.
fn stem(id: &str) -> &str {
    id.splitn(3, '-').nth(2).expect("id prefix-i-stem")
}

#[test]
fn two_thousand_detections_give_two_thousand_classifications_matching_offline() {
    let started = Instant::now();
    let verdicts = offline_verdicts();
    let files = sample_files();
    let topics = Topics::create("twothousand");
    let mut detections: Vec<proto::SourceDetection> = (0..1000)
        .map(|i| {
            let (stem, bytes) = &files[i % files.len()];
            inline(format!("inline-{i}-{stem}"), bytes)
        })
        .collect();
    detections.extend(positions("pos", 1000, &verdicts));
    publish(&topics.input, &detections);

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let worker = Worker::start(topics.config());
    reader.wait_for(2000, Duration::from_secs(600));
    let summary = worker.stop();
    reader.drain(Duration::from_secs(2));
    assert_eq!(
        (summary.classified, summary.rejected),
        (2000, 0),
        "{summary:?}"
    );
    assert!(reader.rejections(&topics.dead).is_empty());

    let results = reader.classifications(&topics.results);
    assert_eq!(results.len(), 2000, "a graceful run repeats nothing");
    let mut ids = HashMap::new();
    for c in &results {
        *ids.entry(c.source_id.as_str()).or_insert(0) += 1;
        let (label, frii, _, _) = verdicts[stem(&c.source_id)];
        let got = if c.label() == proto::Label::Fri {
            LabelName::Fri
        } else {
            LabelName::Frii
        };
        assert_eq!(got, label, "{} labelled as offline does", c.source_id);
        assert!(
            (c.prob_frii - frii).abs() < 1e-4,
            "{}: {} vs {frii}",
            c.source_id,
            c.prob_frii
        );
        let stream = c.stream.as_ref().expect("stream position");
        assert_eq!(stream.topic, topics.input);
    }
    assert_eq!(ids.len(), 2000, "every source id once");
    for (committed, end) in committed_and_end(&topics.group, &topics.input) {
        assert_eq!(
            committed,
            Some(end),
            "committed to the end of each partition"
        );
    }
    eprintln!(
        "2,000 detections through Kafka in {:.1} s (worker {:.1} s)",
        started.elapsed().as_secs_f64(),
        summary.elapsed.as_secs_f64()
    );
}

/// A live stream does not wait for the producer's batching: with `linger.ms` far longer
/// than the test allows, each detection that arrives alone is answered at once (the sink
/// sends whenever no detection queues in the worker).
#[test]
fn lone_detections_are_answered_without_waiting_for_the_producers_linger() {
    const LINGER: Duration = Duration::from_secs(120);
    let topics = Topics::create("lone");
    let mut config = topics.config();
    let SinkConfig::Kafka(sink) = &mut config.sink else {
        unreachable!("Topics::config writes to Kafka")
    };
    sink.properties
        .insert("linger.ms".into(), LINGER.as_millis().to_string());
    let verdicts = offline_verdicts();
    let mut reader = Reader::new(&[&topics.results]);
    let worker = Worker::start(config);
    for (i, detection) in positions("lone", 3, &verdicts).into_iter().enumerate() {
        let sent = Instant::now();
        publish(&topics.input, &[detection]);
        // The first one waits for the worker to join its group too.
        reader.wait_for(i + 1, LINGER / 4);
        eprintln!("detection {i} answered in {:?}", sent.elapsed());
    }
    let summary = worker.stop();
    assert_eq!((summary.classified, summary.rejected), (3, 0));
}

#[test]
fn poison_messages_become_dead_letters_and_offsets_reach_the_end() {
    let verdicts = offline_verdicts();
    let files = sample_files();
    let topics = Topics::create("poison");
    let good: Vec<proto::SourceDetection> = files
        .iter()
        .take(10)
        .map(|(stem, bytes)| inline(format!("good-0-{stem}"), bytes))
        .chain(positions("goodpos", 10, &verdicts))
        .collect();
    let wrong_type = proto::Rejection {
        reason: RejectReason::BadFits as i32,
        detail: "x".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let (_, sample) = &files[0];
    let poison: Vec<(String, Vec<u8>, RejectReason)> = vec![
        (
            "not-protobuf".into(),
            b"\xff\xfe this is not protobuf".to_vec(),
            RejectReason::Undecodable,
        ),
        ("wrong-type".into(), wrong_type, RejectReason::Undecodable),
        (
            "nan-ra".into(),
            at("nan-ra".into(), f64::NAN, 10.0).encode_to_vec(),
            RejectReason::InvalidDetection,
        ),
        (
            "dec-100".into(),
            at("dec-100".into(), 10.0, 100.0).encode_to_vec(),
            RejectReason::InvalidDetection,
        ),
        (
            "corrupt-fits".into(),
            inline("corrupt-fits".into(), &sample[..sample.len() / 3]).encode_to_vec(),
            RejectReason::BadFits,
        ),
        (
            "nowhere".into(),
            at("nowhere".into(), 10.0, -60.0).encode_to_vec(),
            RejectReason::NotCovered,
        ),
    ];
    // Poison first, between and after the good ones, on every partition (keys spread them).
    let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, d) in good.iter().enumerate() {
        if i % 4 == 0 && i / 4 < poison.len() {
            let (key, bytes, _) = &poison[i / 4];
            raw.push((key.clone(), bytes.clone()));
        }
        raw.push((d.source_id.clone(), d.encode_to_vec()));
    }
    for (key, bytes, _) in poison.iter().skip(raw.len() - good.len()) {
        raw.push((key.clone(), bytes.clone()));
    }
    send_raw(&topics.input, &raw);

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let worker = Worker::start(topics.config());
    reader.wait_for(good.len() + poison.len(), Duration::from_secs(300));
    let summary = worker.stop();
    reader.drain(Duration::from_secs(2));
    assert_eq!(
        (summary.classified, summary.rejected),
        (20, 6),
        "{summary:?}"
    );
    assert_eq!(reader.classifications(&topics.results).len(), 20);

    let by_key: BTreeMap<String, (RejectReason, proto::Rejection)> = reader
        .rejections(&topics.dead)
        .into_iter()
        .map(|r| {
            // Undecodable messages have no source id: find them by their original bytes.
            let key = poison
                .iter()
                .find(|(_, bytes, _)| *bytes == r.original)
                .map(|(k, _, _)| k.clone());
            let key = if r.source_id.is_empty() {
                key.expect("original bytes kept")
            } else {
                r.source_id.clone()
            };
            (key, (r.reason(), r))
        })
        .collect();
    assert_eq!(
        by_key.len(),
        poison.len(),
        "one dead letter per poison message: {:?}",
        by_key.keys()
    );
    for (key, _, reason) in &poison {
        let (got, rejection) = &by_key[key];
        assert_eq!(got, reason, "{key}: {}", rejection.detail);
        let stream = rejection.stream.as_ref().expect("input position");
        assert_eq!(stream.topic, topics.input);
        assert!(!rejection.original.is_empty(), "{key}: original bytes");
    }
    for (committed, end) in committed_and_end(&topics.group, &topics.input) {
        assert_eq!(
            committed,
            Some(end),
            "committed past every poison message to the end"
        );
    }
}

/// Sets a topic's `max.message.bytes`: the broker refuses larger records.
fn set_max_message_bytes(topic: &str, bytes: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let limit = bytes.to_string();
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", &limit);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(admin.alter_configs(&[change], &options))
        .expect("alter configs");
    for result in results {
        result.expect("topic config changed");
    }
    // The brokers apply the change from the metadata log; give them a moment.
    std::thread::sleep(Duration::from_secs(2));
}

#[test]
fn a_rejection_the_broker_refuses_stops_the_worker_and_its_restart_delivers_it() {
    let verdicts = offline_verdicts();
    let files = sample_files();
    let topics = Topics::create("refused");
    // The dead letter of a truncated inline cutout carries its ~120 KB original.
    set_max_message_bytes(&topics.dead, 50_000);
    let (_, sample) = &files[0];
    let truncated = inline("truncated".into(), &sample[..sample.len() / 3]);
    // One key, so one partition in this order: the refused record between good ones.
    let raw: Vec<(String, Vec<u8>)> = positions("before", 5, &verdicts)
        .iter()
        .chain([&truncated])
        .chain(positions("after", 5, &verdicts).iter())
        .map(|d| ("one-key".to_string(), d.encode_to_vec()))
        .collect();
    send_raw(&topics.input, &raw);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = worker_config(dir.path(), "w", &topics, DeliveryMode::AtLeastOnce, "");

    let mut first = spawn_worker(&config);
    let deadline = Instant::now() + Duration::from_secs(120);
    let exit = loop {
        if let Some(status) = first.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker goes on after a result was refused"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !exit.success(),
        "an undelivered result is an error exit: {exit:?}"
    );
    for (committed, end) in committed_and_end(&topics.group, &topics.input) {
        if end > 0 {
            assert!(
                committed.is_none_or(|c| c <= 5),
                "nothing committed past the refused record (offset 5): {committed:?}"
            );
        }
    }

    set_max_message_bytes(&topics.dead, 4 << 20);
    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let second = spawn_worker(&config);
    let deadline = Instant::now() + Duration::from_secs(300);
    while reader.rejections(&topics.dead).is_empty()
        || distinct_ids(&reader, &topics.results).len() < 10
    {
        assert!(
            Instant::now() < deadline,
            "the restart redoes the refused record"
        );
        reader.drain(Duration::from_millis(500));
    }
    let exit = terminate(second);
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    reader.drain(Duration::from_secs(2));
    let rejections = reader.rejections(&topics.dead);
    assert_eq!(rejections.len(), 1, "one dead letter");
    assert_eq!(rejections[0].source_id, "truncated");
    assert_eq!(rejections[0].reason(), RejectReason::BadFits);
    assert_eq!(rejections[0].original, truncated.encode_to_vec());
    for (committed, end) in committed_and_end(&topics.group, &topics.input) {
        if end > 0 {
            assert_eq!(
                committed,
                Some(end),
                "committed to the end after the restart"
            );
        }
    }
}

#[test]
fn a_rejection_too_large_for_the_producer_goes_out_without_its_original() {
    let verdicts = offline_verdicts();
    let files = sample_files();
    let topics = Topics::create("slim");
    let (_, sample) = &files[0];
    let truncated = inline("truncated".into(), &sample[..sample.len() / 3]);
    let mut detections = positions("good", 2, &verdicts);
    detections.insert(1, truncated);
    publish(&topics.input, &detections);
    let mut config = topics.config();
    let SinkConfig::Kafka(sink) = &mut config.sink else {
        unreachable!("a Kafka sink")
    };
    sink.properties
        .insert("message.max.bytes".into(), "100000".into());

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let worker = Worker::start(config);
    reader.wait_for(3, Duration::from_secs(300));
    let summary = worker.stop();
    assert_eq!(
        (summary.classified, summary.rejected),
        (2, 1),
        "{summary:?}"
    );
    let rejections = reader.rejections(&topics.dead);
    let r = &rejections[0];
    assert_eq!(
        (r.source_id.as_str(), r.reason()),
        ("truncated", RejectReason::BadFits)
    );
    assert!(r.original.is_empty(), "the original is left out");
    assert!(
        r.detail.contains("the original message (") && r.detail.contains("100000"),
        "{}",
        r.detail
    );
    assert_eq!(
        r.stream.as_ref().map(|s| s.topic.as_str()),
        Some(topics.input.as_str())
    );
    for (committed, end) in committed_and_end(&topics.group, &topics.input) {
        if end > 0 {
            assert_eq!(committed, Some(end), "every record committed");
        }
    }
}

#[test]
fn graceful_stop_and_restart_repeats_nothing() {
    let verdicts = offline_verdicts();
    let topics = Topics::create("restart");
    let detections = positions("pos", 400, &verdicts);
    publish(&topics.input, &detections);

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let mut config = topics.config();
    // Small queues and batches, so that the stop lands mid-stream with work in flight.
    config.pipeline.queue_capacity = 16;
    config.batch.max_batch = 8;
    let first = Worker::start(config.clone());
    reader.wait_for(100, Duration::from_secs(300));
    let first = first.stop();
    assert!(first.interrupted);
    assert!(first.classified < 400, "stopped mid-stream: {first:?}");

    let second = Worker::start(config);
    reader.wait_for(400, Duration::from_secs(300));
    let second = second.stop();
    reader.drain(Duration::from_secs(3));
    let results = reader.classifications(&topics.results);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for c in &results {
        *count.entry(c.source_id.as_str()).or_default() += 1;
    }
    assert_eq!(count.len(), 400, "every source id");
    let repeated: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "no duplicates after a graceful stop: {repeated:?}"
    );
    assert_eq!(
        first.classified + second.classified,
        400,
        "{first:?} {second:?}"
    );
}

/// Distinct source ids among the classifications read so far.
fn distinct_ids(reader: &Reader, topic: &str) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for c in reader.classifications(topic) {
        *count.entry(c.source_id).or_default() += 1;
    }
    count
}

/// The real `radiogate run` binary on a configuration file, from the repository root.
fn spawn_worker(config: &std::path::Path) -> std::process::Child {
    spawn_worker_with(config, &[])
}

fn spawn_worker_with(config: &std::path::Path, env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_radiogate"))
        .args(["--log-level", "warn", "run", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .current_dir(common::repo())
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("radiogate runs")
}

/// Sends `signal` (e.g. "-TERM") to a worker process.
fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal}");
}

/// SIGTERM, then the exit status: the graceful path of the real binary (drain, commit,
/// leave the group, exit 0).
fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    signal(&child, "-TERM");
    child.wait().expect("reaped")
}

/// Peak resident memory of a process so far (kB), from /proc.
fn peak_rss_kb(child: &std::process::Child) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A worker configuration file for the real binary: Kafka on both ends, small queues and
/// batches (so that stops land with work in flight), a short session timeout (so that a
/// killed member's partitions move on quickly).
fn worker_config(
    dir: &std::path::Path,
    name: &str,
    topics: &Topics,
    mode: DeliveryMode,
    transactional_id: &str,
) -> std::path::PathBuf {
    let delivery = match mode {
        DeliveryMode::AtLeastOnce => "delivery = \"at_least_once\"\n".to_string(),
        DeliveryMode::ExactlyOnce => {
            format!("delivery = \"exactly_once\"\ntransactional_id = \"{transactional_id}\"\n")
        }
    };
    let toml = format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{b}\"\ngroup_id = \"{g}\"\ntopic = \"{i}\"\n\
         properties = {{ \"session.timeout.ms\" = \"6000\" }}\n\
         [sink]\nkind = \"kafka\"\nbrokers = \"{b}\"\nresults_topic = \"{r}\"\ndead_letter_topic = \"{d}\"\n\
         {delivery}\
         [cutout]\nmosaics = [\"{m}\"]\n[inference]\nmodel = \"{model}\"\n\
         [pipeline]\nqueue_capacity = 32\n[batch]\nmax_batch = 8\n",
        b = brokers(),
        g = topics.group,
        i = topics.input,
        r = topics.results,
        d = topics.dead,
        m = common::sample_dir().display(),
        model = common::model().display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Reads until every one of `n` source ids has a classification (duplicates make another
/// round of waiting).
fn wait_for_every_id(reader: &mut Reader, topic: &str, n: usize, timeout: Duration) {
    loop {
        let missing = n - distinct_ids(reader, topic).len();
        if missing == 0 {
            return;
        }
        reader.wait_for(reader.messages.len() + missing, timeout);
    }
}

/// What the results say after a disturbed run: every id at least once; in `exactly_once`
/// (whose reader is `read_committed`) exactly once. Returns the number of repeats.
fn check_delivery(reader: &Reader, topics: &Topics, n: usize, mode: DeliveryMode) -> usize {
    let ids = distinct_ids(reader, &topics.results);
    assert_eq!(ids.len(), n, "every source id at least once");
    assert!(reader.rejections(&topics.dead).is_empty());
    let repeated: usize = ids.values().map(|c| c - 1).sum();
    if mode == DeliveryMode::ExactlyOnce {
        let twice: Vec<_> = ids.iter().filter(|(_, c)| **c > 1).take(5).collect();
        assert_eq!(repeated, 0, "exactly once: repeated ids, e.g. {twice:?}");
    }
    for (committed, end) in committed_and_end(&topics.group, &topics.input) {
        assert_eq!(
            committed,
            Some(end),
            "committed to the end of each partition after the graceful stop"
        );
    }
    repeated
}

/// `kill -9` of the worker in the middle of a 5,000-detection stream, then a restart.
fn kill_9_mid_stream_then_restart(mode: DeliveryMode, name: &str) {
    let verdicts = offline_verdicts();
    let topics = Topics::create(name);
    let n = 5000;
    publish(&topics.input, &positions("pos", n, &verdicts));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = worker_config(dir.path(), "worker", &topics, mode, &unique("txn"));

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let mut first = spawn_worker(&config);
    reader.wait_for(1500, Duration::from_secs(600));
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    reader.drain(Duration::from_secs(1));
    let before = distinct_ids(&reader, &topics.results).len();
    assert!(before < n, "killed mid-stream ({before} of {n} done)");

    // The same configuration: in exactly_once the same transactional.id, which aborts the
    // killed instance's open transaction at once.
    let second = spawn_worker(&config);
    wait_for_every_id(&mut reader, &topics.results, n, Duration::from_secs(600));
    let exit = terminate(second);
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    reader.drain(Duration::from_secs(2));
    let repeated = check_delivery(&reader, &topics, n, mode);
    eprintln!(
        "{mode:?}: kill -9 at {before} of {n}: {repeated} results repeated after the restart"
    );
}

#[test]
fn kill_9_mid_stream_then_restart_loses_nothing() {
    kill_9_mid_stream_then_restart(DeliveryMode::AtLeastOnce, "kill-alo");
}

#[test]
fn kill_9_mid_stream_then_restart_in_exactly_once_repeats_nothing() {
    kill_9_mid_stream_then_restart(DeliveryMode::ExactlyOnce, "kill-eos");
}

/// Two workers in one group; one of them stopped (SIGTERM, or SIGKILL with `kill`) in the
/// middle of the stream; the other finishes it.
fn two_workers_one_stopped(mode: DeliveryMode, kill: bool, name: &str) {
    let verdicts = offline_verdicts();
    let topics = Topics::create(name);
    let n = 2000;
    publish(&topics.input, &positions("pos", n, &verdicts));
    let dir = tempfile::tempdir().expect("temp dir");
    let a = worker_config(dir.path(), "a", &topics, mode, &unique("txn-a"));
    let b = worker_config(dir.path(), "b", &topics, mode, &unique("txn-b"));

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let mut first = spawn_worker(&a);
    let second = spawn_worker(&b);
    reader.wait_for(n / 4, Duration::from_secs(600));
    if kill {
        first.kill().expect("SIGKILL");
        first.wait().expect("reaped");
    } else {
        let exit = terminate(first);
        assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    }
    let at = distinct_ids(&reader, &topics.results).len();
    assert!(at < n, "stopped mid-stream ({at} of {n} done)");
    wait_for_every_id(&mut reader, &topics.results, n, Duration::from_secs(600));
    let exit = terminate(second);
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    reader.drain(Duration::from_secs(2));
    let repeated = check_delivery(&reader, &topics, n, mode);
    eprintln!(
        "{mode:?}: one of two workers {} at {at} of {n}: {repeated} repeated",
        if kill { "killed" } else { "stopped" }
    );
}

#[test]
fn two_workers_one_stopped_gracefully_lose_nothing() {
    two_workers_one_stopped(DeliveryMode::AtLeastOnce, false, "two-term-alo");
}

#[test]
fn two_workers_one_killed_lose_nothing() {
    two_workers_one_stopped(DeliveryMode::AtLeastOnce, true, "two-kill-alo");
}

#[test]
fn two_workers_one_stopped_gracefully_in_exactly_once_repeat_nothing() {
    two_workers_one_stopped(DeliveryMode::ExactlyOnce, false, "two-term-eos");
}

#[test]
fn two_workers_one_killed_in_exactly_once_repeat_nothing() {
    two_workers_one_stopped(DeliveryMode::ExactlyOnce, true, "two-kill-eos");
}

#[test]
fn a_zombie_is_fenced_by_its_successor_and_nothing_repeats() {
    let verdicts = offline_verdicts();
    let topics = Topics::create("zombie");
    let n = 1500;
    publish(&topics.input, &positions("pos", n, &verdicts));
    let dir = tempfile::tempdir().expect("temp dir");
    // Both instances claim one transactional.id: the second fences the first.
    let txn = unique("txn");
    let config = worker_config(dir.path(), "w", &topics, DeliveryMode::ExactlyOnce, &txn);

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let mut zombie = spawn_worker(&config);
    reader.wait_for(200, Duration::from_secs(600));
    let successor = spawn_worker(&config);
    let deadline = Instant::now() + Duration::from_secs(120);
    let zombie_exit = loop {
        if let Some(status) = zombie.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the fenced instance did not stop"
        );
        reader.drain(Duration::from_millis(200));
    };
    assert!(
        !zombie_exit.success(),
        "a fenced worker exits with an error: {zombie_exit:?}"
    );
    wait_for_every_id(&mut reader, &topics.results, n, Duration::from_secs(600));
    let exit = terminate(successor);
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    reader.drain(Duration::from_secs(2));
    check_delivery(&reader, &topics, n, DeliveryMode::ExactlyOnce);
}

#[test]
fn a_throttled_results_topic_pauses_the_worker_without_loss_or_growth() {
    let files = sample_files();
    let topics = Topics::create("throttle");
    // Inline cutouts (about 360 KB each): reading them all in would take 360 MB, and keeping
    // what flows after the throttle more than 300 MB.
    let n = 1000;
    let detections: Vec<_> = (0..n)
        .map(|i| {
            let (stem, bytes) = &files[i % files.len()];
            inline(format!("inline-{i}-{stem}"), bytes)
        })
        .collect();
    publish(&topics.input, &detections);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = worker_config(dir.path(), "w", &topics, DeliveryMode::AtLeastOnce, "");
    // The broker throttles this producer to about one result a second; its local queue is
    // kept small, so the pipeline behind it fills and the consumer must pause.
    let client_id = unique("throttled");
    set_producer_quota(&client_id, Some(1024));
    // Batches of one (the shipped setting): ONNX Runtime's CPU arena grows in doubling steps,
    // which at batches of 8 (~200 MB of intermediate tensors a session) moved the peak by
    // 31-145 MB between runs of the same work (BENCHMARKS.md, "Memory"), as much as what this
    // test looks for.
    let toml = std::fs::read_to_string(&config)
        .expect("config")
        .replace(
            "dead_letter_topic",
            &format!(
                "properties = {{ \"client.id\" = \"{client_id}\", \"queue.buffering.max.messages\" = \"20\" }}\ndead_letter_topic"
            ),
        )
        .replace("max_batch = 8", "max_batch = 1");
    // Its metrics say how many detections it took in.
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .expect("an address");
    let toml = format!("{toml}[telemetry]\nlisten = \"{metrics}\"\n");
    std::fs::write(&config, toml).expect("write config");

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let worker = spawn_worker(&config);
    reader.drain(Duration::from_secs(30));
    let during = reader.messages.len();
    let rss_throttled = peak_rss_kb(&worker);
    assert!(
        during < n / 2,
        "throttled: {during} of {n} delivered in 30 s"
    );
    let (_, scrape) = common::get(metrics, "/metrics").expect("the worker serves /metrics");
    let consumed = scrape
        .lines()
        .find_map(|l| l.strip_prefix("radiogate_detections_consumed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("radiogate_detections_consumed_total") as usize;
    // Taken in = delivered + what the bounded queues hold (about 150 items with these
    // settings): the consumer paused instead of reading the 500 records in.
    assert!(
        consumed <= during + 200,
        "paused: {consumed} consumed while {during} were delivered"
    );
    set_producer_quota(&client_id, None);
    wait_for_every_id(&mut reader, &topics.results, n, Duration::from_secs(600));
    let rss_end = peak_rss_kb(&worker);
    let exit = terminate(worker);
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    reader.drain(Duration::from_secs(2));
    check_delivery(&reader, &topics, n, DeliveryMode::AtLeastOnce);
    eprintln!(
        "throttled: {during} of {n} delivered, {consumed} consumed in 30 s; peak RSS {} MB throttled, {} MB at the end",
        rss_throttled / 1024,
        rss_end / 1024
    );
    // Flat: the records that flowed after the throttle (over 300 MB of cutouts) grew nothing.
    // The allowance is for what moves the peak between runs without growing with the records:
    // allocator arenas and ONNX Runtime's buffers (7-23 MB seen, 2026-11-28). (The absolute
    // memory targets are the benchmarks': BENCHMARKS.md.)
    assert!(
        rss_end <= rss_throttled + 128 * 1024,
        "memory grew after the throttle: {} MB -> {} MB",
        rss_throttled / 1024,
        rss_end / 1024
    );
}

/// Sets (or with None removes) a broker-side produce quota for a client id, with the
/// broker's own tool.
fn set_producer_quota(client_id: &str, bytes_per_second: Option<u64>) {
    let change = match bytes_per_second {
        Some(rate) => vec![
            "--add-config".to_string(),
            format!("producer_byte_rate={rate}"),
        ],
        None => vec![
            "--delete-config".to_string(),
            "producer_byte_rate".to_string(),
        ],
    };
    let output = std::process::Command::new("java")
        .arg("-cp")
        .arg(common::repo().join("vendor/kafka/lib/*"))
        .args([
            "kafka.admin.ConfigCommand",
            "--bootstrap-server",
            &brokers(),
            "--alter",
        ])
        .args(["--entity-type", "clients", "--entity-name", client_id])
        .args(change)
        .output()
        .expect("java runs the broker's ConfigCommand");
    assert!(
        output.status.success(),
        "quota not set: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The SASL/SCRAM listener of the test broker (`scripts/kafka/broker.sh`: the PLAINTEXT port + 2).
fn sasl_brokers() -> String {
    std::env::var("RADIOGATE_TEST_KAFKA_SASL").unwrap_or_else(|_| "127.0.0.1:9094".into())
}

#[test]
fn sasl_scram_logs_in_with_the_right_secret_and_is_refused_with_the_wrong_one() {
    let verdicts = offline_verdicts();
    let topics = Topics::create("sasl");
    let n = 20;
    publish(&topics.input, &positions("pos", n, &verdicts));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = worker_config(dir.path(), "w", &topics, DeliveryMode::AtLeastOnce, "");
    // The same worker over SCRAM-SHA-512, its secret read from the environment.
    let security = "\"security.protocol\" = \"SASL_PLAINTEXT\", \"sasl.mechanism\" = \"SCRAM-SHA-512\", \
                    \"sasl.username\" = \"radiogate\", \"sasl.password\" = { env = \"RADIOGATE_TEST_SCRAM\" }";
    let toml = std::fs::read_to_string(&config)
        .expect("config")
        .replace(
            &format!("brokers = \"{}\"", brokers()),
            &format!("brokers = \"{}\"", sasl_brokers()),
        )
        .replace(
            "properties = { \"session.timeout.ms\" = \"6000\" }",
            &format!("properties = {{ {security} }}"),
        )
        .replace(
            "dead_letter_topic",
            &format!("properties = {{ {security} }}\ndead_letter_topic"),
        );
    std::fs::write(&config, toml).expect("write config");
    let secret =
        std::env::var("KAFKA_SCRAM_PASSWORD").unwrap_or_else(|_| "radiogate-test-secret".into());

    // The wrong secret: refused at start with the reason, never the secret.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_radiogate"))
        .args(["--log-level", "error", "run", "--config"])
        .arg(&config)
        .env("RADIOGATE_TEST_SCRAM", "not-the-secret")
        .current_dir(common::repo())
        .output()
        .expect("radiogate runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("Authentication"),
        "a clear reason: {stderr}"
    );
    assert!(
        !stderr.contains("not-the-secret"),
        "no secret in errors: {stderr}"
    );

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    let worker = spawn_worker_with(&config, &[("RADIOGATE_TEST_SCRAM", &secret)]);
    wait_for_every_id(&mut reader, &topics.results, n, Duration::from_secs(300));
    let exit = terminate(worker);
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
}
