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
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::common;

const PARTITIONS: i32 = 3;

fn brokers() -> String {
    std::env::var("RADIOGATE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

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
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .expect("admin client");
        let new = [&topics.input, &topics.results, &topics.dead]
            .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let created = runtime
            .block_on(admin.create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            ))
            .expect("the broker answers (is it running? scripts/kafka/broker.sh start)");
        for result in created {
            result.expect("topic created");
        }
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
        pixels: Some(Pixels::FitsCutout(bytes.to_vec())),
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
    let mut publisher = Publisher::create(&brokers(), topic).expect("publisher");
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
    std::process::Command::new(env!("CARGO_BIN_EXE_radiogate"))
        .args(["--log-level", "warn", "run", "--config"])
        .arg(config)
        .current_dir(common::repo())
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("radiogate runs")
}

#[test]
fn kill_9_mid_stream_then_restart_loses_nothing() {
    let verdicts = offline_verdicts();
    let topics = Topics::create("kill");
    let n = 600;
    publish(&topics.input, &positions("pos", n, &verdicts));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("worker.toml");
    let toml = format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{b}\"\ngroup_id = \"{g}\"\ntopic = \"{i}\"\n\
         properties = {{ \"session.timeout.ms\" = \"6000\" }}\n\
         [sink]\nkind = \"kafka\"\nbrokers = \"{b}\"\nresults_topic = \"{r}\"\ndead_letter_topic = \"{d}\"\n\
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
    std::fs::write(&config, toml).expect("write config");

    let mut reader = Reader::new(&[&topics.results, &topics.dead]);
    // The killed member holds its partitions until its session times out: keep that short.
    let mut first = spawn_worker(&config);
    reader.wait_for(150, Duration::from_secs(300));
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let before = distinct_ids(&reader, &topics.results).len();
    assert!(before < n, "killed mid-stream ({before} of {n} done)");

    let mut second = spawn_worker(&config);
    // Each round waits for as many messages as ids are missing (duplicates make another round).
    loop {
        let missing = n - distinct_ids(&reader, &topics.results).len();
        if missing == 0 {
            break;
        }
        reader.wait_for(reader.messages.len() + missing, Duration::from_secs(300));
    }
    // SIGTERM: the graceful path of the real binary (drain, commit, leave, exit 0).
    let status = std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = second.wait().expect("reaped");
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    reader.drain(Duration::from_secs(2));

    let ids = distinct_ids(&reader, &topics.results);
    assert_eq!(ids.len(), n, "every source id at least once");
    assert!(reader.rejections(&topics.dead).is_empty());
    let repeated: usize = ids.values().map(|c| c - 1).sum();
    eprintln!(
        "kill -9 at {before} of {n}: {repeated} results repeated after the restart (at least once)"
    );
    for (committed, end) in committed_and_end(&topics.group, &topics.input) {
        assert_eq!(
            committed,
            Some(end),
            "committed to the end after the graceful stop"
        );
    }
}
