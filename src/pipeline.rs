//! The pipeline: the only module that knows every stage. It wires them with bounded
//! queues, owns their threads and tasks, and decides the order in which they drain.
//!
//! ```text
//! source ─> cutout + preprocess ─> batch ─> infer ─> summarise ─> sink
//! (thread)   (worker threads)      (task)   (task;    (blocking   (thread: results
//!                                           sessions  threads,    in input order)
//!                                           on their  one batch
//!                                           threads)  each)
//! ```
//!
//! Every queue is bounded by `pipeline.queue_capacity`, so a slow stage holds the ones
//! before it back instead of growing memory. Items carry a sequence number; the sink writes
//! them in input order, which keeps the output of a run independent of how items were
//! grouped into batches or which worker cut them. Rejections take the same path as
//! results, so nothing leaves out of order and nothing is lost.
//!
//! Shutdown is a sequence: the `shutdown` future stops intake at the source; the items
//! already taken flow on (the batcher flushes its partial batch when its input closes);
//! the sink finishes (flush, fsync) when the last item is written. If that takes longer
//! than `pipeline.drain_timeout`, [`run`] returns [`PipelineError::DrainTimeout`].
//!
//! With Kafka on both ends the same stages run between a consumer and a producer, plus the
//! acknowledgement path (`ack`): the source thread registers each offset it takes, delivery
//! reports release them in partition order, and stored offsets are committed every
//! [`COMMIT_INTERVAL`], on revocation and at shutdown (after the producer has flushed). In
//! `exactly_once` the sink sends inside the acknowledgement path's transaction instead, and
//! the source thread commits the transaction, with the offsets, on the same schedule.
//! The producer batches results for up to `linger.ms` while detections queue (a backlog:
//! fewer, larger produce requests), and the sink has it send at once (`Output::idle`)
//! whenever none do (a live stream: no batching delay).
//! Back-pressure: when the first queue stays full for `FULL_QUEUE_WAIT` the source thread
//! pauses its partitions and keeps polling (heartbeats, rebalances), so it never exceeds
//! `max.poll.interval.ms`; it resumes them when there is room. It does not pause at every
//! full queue: librdkafka drops a paused partition's prefetched records. The stream has no
//! end: a Kafka run ends on `shutdown`.

// A `Rejected` (128 bytes) travels by value through the queues beside the larger
// `Detection`; boxing it in the few functions that return it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

use crate::ack::{Ack, AckContext, AckError, Acks};
use crate::batch;
use crate::config::{Config, DeliveryMode, SinkConfig, SourceConfig};
use crate::cutout::{CutoutSetupError, Cutter};
use crate::domain::{
    COMPACT_ARCSEC, Cutout, Detection, EmissionShape, ItemError, ModelOutput, Prepared, Rejected,
    SkyProjection, label_name,
};
use crate::infer::{InferError, Inference, StartError};
use crate::preprocess;
use crate::proto::{self, RejectReason};
use crate::scheduling;
use crate::sink::html::HtmlReport;
use crate::sink::kafka::KafkaSink;
use crate::sink::{FileSink, SinkError};
use crate::source::kafka::KafkaSource;
use crate::source::{self, Detections, SourceError};
use crate::summary;
use crate::telemetry::Metrics;

/// Why a run could not start or did not finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("source: {0}")]
    Source(#[from] SourceError),
    #[error("mosaics: {0}")]
    Mosaics(#[from] CutoutSetupError),
    #[error("model: {0}")]
    Model(#[from] StartError),
    #[error("output: {0}")]
    Sink(#[from] SinkError),
    #[error("a pipeline thread failed: {0}")]
    Thread(String),
    #[error("in-flight work was not delivered within the drain timeout ({0:?})")]
    DrainTimeout(Duration),
    #[error("acknowledgement: {0}")]
    Ack(#[from] AckError),
    /// `sink.resume`: the results file is not this input's (or this model's) to continue.
    #[error("cannot resume: {0}")]
    Resume(String),
}

/// What a finished run did: the end-of-run summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub classified: u64,
    /// Classifications by label ("FRI", "FRII").
    pub by_label: BTreeMap<String, u64>,
    pub rejected: u64,
    /// Rejections by reason (`domain::reason_name`).
    pub by_reason: BTreeMap<String, u64>,
    pub elapsed: Duration,
    pub model: proto::ModelInfo,
    /// True when the run ended because `shutdown` fired rather than the input running out.
    pub interrupted: bool,
    /// True when `shutdown` fired before the source's input was all taken in: some inputs
    /// were never read (an offline run to run again with `sink.resume`). A Kafka source's
    /// input has no end, so a stopped worker always says so.
    pub stopped_early: bool,
    /// The batches the model ran, and the items in them: how full the batcher made them.
    pub batches: u64,
    pub batched_items: u64,
    /// Records an earlier run had written to the resumed results file, whose inputs this
    /// run skipped (`sink.resume`); not counted above.
    pub resumed: u64,
    /// Classifications whose emission spans less than `domain::COMPACT_ARCSEC`: sources more
    /// compact than the model's training images, whose labels say little.
    pub compact: u64,
    /// Classifications whose emission reaches the model image's edge (`emission.truncated`):
    /// the model saw only part of the source.
    pub truncated: u64,
}

impl RunSummary {
    /// Detections handled per second over the whole run.
    pub fn throughput(&self) -> f64 {
        (self.classified + self.rejected) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The mean number of items in a batch; None when no batch ran.
    pub fn mean_batch(&self) -> Option<f64> {
        (self.batches > 0).then(|| self.batched_items as f64 / self.batches as f64)
    }
}

/// Options of a run that are about people and the telemetry, not the pipeline.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress bar on standard error (only drawn when it is a terminal).
    pub progress: bool,
    /// Where the run counts (the telemetry endpoint serves them); None: counted unseen.
    pub metrics: Option<Arc<Metrics>>,
    /// Also write the HTML report of the run here (`sink::html`).
    pub report: Option<std::path::PathBuf>,
}

/// How often stored offsets are committed during a Kafka run.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one poll of the Kafka consumer waits for a record.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a poll waits while the partitions are paused (downstream full).
const PAUSED_POLL_TIMEOUT: Duration = Duration::from_millis(10);
/// How long the source thread waits for room in a full queue before it pauses the
/// partitions; it does not poll meanwhile (rebalances wait that long at most).
const FULL_QUEUE_WAIT: Duration = Duration::from_millis(250);
/// Batches the inference task keeps in flight per session: one running and one waiting, so
/// that no session idles between batches (the sink restores input order).
const BATCHES_PER_SESSION: usize = 2;

/// Where detections come from: an iterator that ends, or a Kafka consumer that does not.
enum Intake {
    Items(Detections),
    Kafka(KafkaSource<AckContext>),
}

/// Where results go.
enum Output {
    File(FileSink),
    Kafka(KafkaSink),
}

impl Output {
    /// Writes a classification; `ack`: the stream record it answers. False when it was
    /// dropped instead (`exactly_once`: its partition was revoked or rewound, and the record
    /// is read again).
    fn write_classification(
        &mut self,
        c: &proto::Classification,
        ack: Option<Ack>,
    ) -> Result<bool, SinkError> {
        match self {
            Output::File(sink) => sink.write_classification(c).map(|()| true),
            Output::Kafka(sink) => sink.write_classification(c, ack),
        }
    }

    /// Writes a rejection; `ack`: the stream record it answers. False when it was dropped
    /// instead, as for a classification.
    fn write_rejection(
        &mut self,
        r: &proto::Rejection,
        ack: Option<Ack>,
    ) -> Result<bool, SinkError> {
        match self {
            Output::File(sink) => sink.write_rejection(r).map(|()| true),
            Output::Kafka(sink) => sink.write_rejection(r, ack),
        }
    }

    /// What the results file held before this run, when it resumed one.
    fn resumed(&self) -> Option<&crate::sink::Resumed> {
        match self {
            Output::File(sink) => sink.resumed(),
            Output::Kafka(_) => None,
        }
    }

    /// Nothing queues upstream: sends what was written without waiting for more.
    fn idle(&mut self) {
        if let Output::Kafka(sink) = self {
            sink.send_now();
        }
    }

    /// Makes everything written durable (file) or delivered (Kafka, within `timeout`).
    fn finish(self, timeout: Duration) -> Result<(), SinkError> {
        match self {
            Output::File(sink) => sink.finish().map(|_| ()),
            Output::Kafka(sink) => sink.finish(timeout).map(|_| ()),
        }
    }
}

/// Opens the configured source and sink; with Kafka, also the acknowledgement path that
/// joins them.
fn open_ends(config: &Config) -> Result<(Intake, Output, Option<Acks>), PipelineError> {
    let acks = match (&config.source, &config.sink) {
        (SourceConfig::Kafka(_), SinkConfig::Kafka(sink))
            if sink.delivery == DeliveryMode::ExactlyOnce =>
        {
            Some(Acks::exactly_once(
                crate::sink::kafka::transactional_producer(sink)?,
            ))
        }
        (SourceConfig::Kafka(_), _) => Some(Acks::new()),
        _ => None,
    };
    let intake = match (&config.source, &acks) {
        (SourceConfig::Kafka(kafka), Some(acks)) => {
            let source =
                KafkaSource::open(kafka, acks.consumer_context()).map_err(SourceError::from)?;
            acks.attach(source.consumer());
            Intake::Kafka(source)
        }
        (other, _) => {
            if config.shard.count > 1 {
                tracing::info!(
                    index = config.shard.index,
                    count = config.shard.count,
                    "taking one shard of the input: the items whose place is index modulo count"
                );
            }
            Intake::Items(source::shard(source::open(other)?, config.shard))
        }
    };
    let output = open_output(config, acks.as_ref())?;
    let intake = match (intake, output.resumed()) {
        (Intake::Items(mut detections), Some(resumed)) => {
            skip_resumed(&mut detections, resumed)?;
            Intake::Items(detections)
        }
        (intake, _) => intake,
    };
    Ok((intake, output, acks))
}

/// Skips the inputs whose records a resumed results file holds: as many as it has records,
/// the last of them the same source as its last record (else the input is not the one
/// those results came from, or not in the same order).
fn skip_resumed(
    detections: &mut Detections,
    resumed: &crate::sink::Resumed,
) -> Result<(), PipelineError> {
    let mut last = None;
    for taken in 0..resumed.records {
        match detections.next() {
            Some(item) => last = Some(item),
            None => {
                return Err(PipelineError::Resume(format!(
                    "the results hold {} records, the input only {taken} items: \
                     they are not this input's",
                    resumed.records
                )));
            }
        }
    }
    let source_id = match last {
        Some(Ok(detection)) => Some(detection.message.source_id),
        Some(Err(rejected)) => rejected.source_id,
        None => None,
    }
    .filter(|id| !id.is_empty());
    if source_id != resumed.last_source_id {
        let name = |id: &Option<String>| {
            id.as_deref()
                .map_or("(no source id)".into(), |id| format!("'{id}'"))
        };
        return Err(PipelineError::Resume(format!(
            "the results' record {n} is {}, the input's item {n} is {}: \
             the input is not the one they came from, or not in the same order",
            name(&resumed.last_source_id),
            name(&source_id),
            n = resumed.records,
        )));
    }
    Ok(())
}

/// The records of a resumed results file (0 without one), once the model that wrote them
/// is known to be `model`, with the same test-time views.
fn resumed_records(sink: &Output, model: &proto::ModelInfo) -> Result<u64, PipelineError> {
    let Some(resumed) = sink.resumed() else {
        return Ok(0);
    };
    if let Some((sha256, views)) = &resumed.model {
        if *sha256 != model.sha256 || *views != model.views.max(1) {
            return Err(PipelineError::Resume(format!(
                "the results were written by model {sha256} with {views} view(s), \
                 this run has {} with {}",
                model.sha256,
                model.views.max(1)
            )));
        }
    }
    tracing::info!(
        records = resumed.records,
        cut_bytes = resumed.cut_bytes,
        "resuming a results file: its records' inputs skipped"
    );
    Ok(resumed.records)
}

/// Opens the configured sink (within the acknowledgement path's transactions, when given
/// one that has them).
fn open_output(config: &Config, acks: Option<&Acks>) -> Result<Output, PipelineError> {
    Ok(match &config.sink {
        SinkConfig::Kafka(kafka) => Output::Kafka(KafkaSink::create(kafka, acks)?),
        SinkConfig::File { .. } => Output::File(FileSink::create(&config.sink)?),
    })
}

/// How many detections the source has let into the pipeline (numbered 0 to n - 1), against
/// how many the stages work on at once: beyond that, detections queue.
#[derive(Debug)]
struct Admitted {
    count: AtomicU64,
    /// Outcomes the sink has written, as it last said ([`Backlog::nothing_queued`]).
    written: AtomicU64,
    at_once: u64,
}

impl Admitted {
    /// Cutout workers, plus the batches inference keeps in flight.
    fn new(config: &Config) -> Self {
        let at_once = config.cutout.workers.max(1)
            + BATCHES_PER_SESSION
                * config.inference.sessions.max(1)
                * config.batch.max_batch.max(1);
        Self {
            count: AtomicU64::new(0),
            written: AtomicU64::new(0),
            at_once: u64::try_from(at_once).unwrap_or(u64::MAX),
        }
    }

    fn one(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// True when, with `written` outcomes written, nothing queues: the detections still in
    /// flight are no more than the stages work on at once (a live stream), so their results
    /// are not worth waiting for; a backlog fills the queues far beyond that.
    fn nothing_queued(&self, written: u64) -> bool {
        self.in_flight(written) <= self.at_once
    }

    /// Whether nothing queues as the sink last saw it: a live stream, whose batches may go to
    /// the live session (`inference.live_intra_threads`).
    fn live(&self) -> bool {
        self.nothing_queued(self.written.load(Ordering::Relaxed))
    }

    /// Detections taken in whose outcome is not among the `written`.
    fn in_flight(&self, written: u64) -> u64 {
        self.count.load(Ordering::Relaxed).saturating_sub(written)
    }
}

/// The sink thread's view of the backlog: whether detections queue behind what it has
/// written, and the threads' scheduling policy, which follows it (`pipeline.scheduling`).
struct Backlog {
    admitted: Arc<Admitted>,
    scheduling: Option<scheduling::Adaptive>,
}

impl Backlog {
    /// After `written` outcomes: switches the policy when the backlog crossed a threshold,
    /// and tells whether nothing queues ([`Admitted::nothing_queued`]).
    fn nothing_queued(&mut self, written: u64) -> bool {
        self.admitted.written.store(written, Ordering::Relaxed);
        if let Some(adaptive) = &mut self.scheduling {
            adaptive.observe(self.admitted.in_flight(written));
        }
        self.admitted.nothing_queued(written)
    }
}

/// A detection on its way through the pipeline, numbered in input order.
struct Numbered<T> {
    seq: u64,
    item: T,
}

/// A detection whose cutout is ready for the model.
struct Ready {
    detection: Detection,
    cutout: CutoutInfo,
    prepared: Prepared,
    cutout_us: u32,
    preprocess_us: u32,
    ready_at: Instant,
}

/// What is kept of a cutout once its pixels are prepared.
struct CutoutInfo {
    provenance: proto::CutoutProvenance,
    sky: Arc<dyn SkyProjection>,
    position: (f64, f64),
}

/// A finished item on its way to the sink.
enum Outcome {
    Rejected(Rejected),
    Classified(Box<Classified>),
}

/// A classification built off the sink thread, with what the sink still needs of its item.
struct Classified {
    classification: proto::Classification,
    /// The stream record it answers (acknowledgements).
    ack: Option<Ack>,
    /// When its detection was taken in (end-to-end latency).
    received: Instant,
    /// The model's view of it (the HTML report's thumbnail); its model input was moved out.
    prepared: Prepared,
}

/// What building results needs, shared by the threads that build them off the sink thread
/// (attention summaries cost about as much as preprocessing: one thread cannot keep up
/// with a GPU). `permits` bounds the batches being finished at once.
struct Finish {
    config: Config,
    model: proto::ModelInfo,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Runs the configured source to its end (or until `shutdown` fires) and writes every
/// result and rejection to the configured sink.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    let (intake, sink, acks) = open_ends(&config)?;
    run_with(config, intake, sink, acks, options, shutdown, started).await
}

/// [`run`] over `detections` instead of the configured source (which is not opened): end
/// to end from detections already in memory, as `radiogate-bench memory` measures it.
pub async fn run_detections(
    config: Config,
    detections: Detections,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    let sink = open_output(&config, None)?;
    let intake = Intake::Items(detections);
    run_with(config, intake, sink, None, options, shutdown, started).await
}

/// The run itself, from its opened ends; `started` is when opening them began.
async fn run_with(
    config: Config,
    intake: Intake,
    sink: Output,
    acks: Option<Acks>,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
    started: Instant,
) -> Result<RunSummary, PipelineError> {
    let metrics = options.metrics.clone().unwrap_or_default();
    let batches_before = metrics.batches();
    if let Some(acks) = &acks {
        acks.observe(metrics.clone());
        metrics.expect_consumer_group();
    }
    let report = options
        .report
        .as_deref()
        .map(HtmlReport::create)
        .transpose()?;
    let setup_config = config.clone();
    let (cutter, (inference, model)) = tokio::task::spawn_blocking(move || {
        let cutter = Cutter::new(&setup_config.cutout)?;
        let inference = Inference::start(&setup_config.inference)?;
        Ok::<_, PipelineError>((Arc::new(cutter), inference))
    })
    .await
    .map_err(|e| PipelineError::Thread(e.to_string()))??;
    tracing::info!(
        model = %model.name,
        sha256 = %model.sha256,
        execution_provider = %model.execution_provider,
        mosaics = cutter.mosaic_count(),
        "pipeline started"
    );
    metrics.model_loaded(&model);
    let resumed = resumed_records(&sink, &model)?;

    let capacity = config.pipeline.queue_capacity.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    // Source -> cutout workers: several workers take from one queue.
    let (detections_tx, detections_rx) =
        crossbeam_channel::bounded::<Numbered<Result<Detection, Rejected>>>(capacity);
    // Cutout workers -> batcher.
    let (ready_tx, ready_rx) = mpsc::channel::<Numbered<Ready>>(capacity);
    // Batcher -> inference.
    let (batches_tx, mut batches_rx) =
        mpsc::channel::<Vec<Numbered<Ready>>>(config.inference.sessions.max(1));
    // Workers (rejections) and inference (results) -> sink.
    let (outcomes_tx, outcomes_rx) = mpsc::channel::<Numbered<Outcome>>(capacity);

    let admitted = Arc::new(Admitted::new(&config));
    let backlog = Backlog {
        admitted: admitted.clone(),
        scheduling: scheduling::start(config.pipeline.scheduling, admitted.at_once),
    };
    // Set by the source thread when it took in the whole of a finite input.
    let input_ended = Arc::new(AtomicBool::new(false));
    let source_thread = {
        let (stop, acks, metrics) = (stop.clone(), acks.clone(), metrics.clone());
        let (admitted, input_ended) = (admitted.clone(), input_ended.clone());
        std::thread::Builder::new()
            .name("radiogate-source".into())
            .spawn(move || match intake {
                Intake::Items(detections) => {
                    let mut ended = true;
                    for (seq, item) in (0u64..).zip(detections) {
                        if stop.load(Ordering::Relaxed)
                            || detections_tx.send(Numbered { seq, item }).is_err()
                        {
                            ended = false;
                            break;
                        }
                        admitted.one();
                        metrics.consumed();
                    }
                    input_ended.store(ended, Ordering::Relaxed);
                    None
                }
                Intake::Kafka(source) => {
                    let acks = acks
                        .expect("a Kafka intake is opened together with its acknowledgement path");
                    Some(consume(
                        source,
                        &acks,
                        &detections_tx,
                        &stop,
                        &admitted,
                        &metrics,
                    ))
                }
            })
            .map_err(|e| PipelineError::Thread(e.to_string()))?
    };

    let mut workers = Vec::with_capacity(config.cutout.workers.max(1));
    for index in 0..config.cutout.workers.max(1) {
        let (detections_rx, ready_tx, outcomes_tx, cutter) = (
            detections_rx.clone(),
            ready_tx.clone(),
            outcomes_tx.clone(),
            cutter.clone(),
        );
        let worker = std::thread::Builder::new()
            .name(format!("radiogate-cutout-{index}"))
            .spawn(move || {
                for Numbered { seq, item } in detections_rx {
                    let sent = match item.and_then(|detection| cut_and_prepare(&cutter, detection))
                    {
                        Ok(ready) => ready_tx
                            .blocking_send(Numbered { seq, item: ready })
                            .is_ok(),
                        Err(rejected) => outcomes_tx
                            .blocking_send(Numbered {
                                seq,
                                item: Outcome::Rejected(rejected),
                            })
                            .is_ok(),
                    };
                    if !sent {
                        break;
                    }
                }
            })
            .map_err(|e| PipelineError::Thread(e.to_string()))?;
        workers.push(worker);
    }
    drop((detections_rx, ready_tx));

    let batcher = tokio::spawn(batch::run(ready_rx, batches_tx, config.batch.clone()));

    let infer_task = {
        let outcomes_tx = outcomes_tx.clone();
        let (inference, metrics) = (inference.clone(), metrics.clone());
        let finish = Arc::new(Finish {
            config: config.clone(),
            model: model.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(config.cutout.workers.max(1))),
        });
        let in_flight = BATCHES_PER_SESSION * config.inference.sessions.max(1);
        let admitted = admitted.clone();
        tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            while let Some(batch) = batches_rx.recv().await {
                while running.len() >= in_flight {
                    running.join_next().await;
                }
                metrics.batch(batch.len());
                let (inference, outcomes_tx, finish) =
                    (inference.clone(), outcomes_tx.clone(), finish.clone());
                let live = inference.has_live_session() && admitted.live();
                running.spawn(async move {
                    infer_batch(&inference, batch, live, &outcomes_tx, &finish).await;
                });
            }
            while running.join_next().await.is_some() {}
        })
    };
    drop(outcomes_tx);

    let sink_thread = {
        let (config, metrics) = (config.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("radiogate-sink".into())
            .spawn(move || {
                write_outcomes(
                    outcomes_rx,
                    sink,
                    report,
                    &config,
                    options.progress,
                    backlog,
                    &metrics,
                )
            })
            .map_err(|e| PipelineError::Thread(e.to_string()))?
    };

    // Wait for the sink to finish, or for the shutdown signal.
    let sink_done = tokio::task::spawn_blocking(move || sink_thread.join());
    tokio::pin!(sink_done);
    let mut interrupted = false;
    let joined = tokio::select! {
        joined = &mut sink_done => joined,
        () = shutdown => {
            interrupted = true;
            metrics.shutting_down();
            tracing::info!("shutdown requested: intake stopped, draining in-flight work");
            stop.store(true, Ordering::Relaxed);
            match tokio::time::timeout(config.pipeline.drain_timeout, &mut sink_done).await {
                Ok(joined) => joined,
                Err(_) => return Err(PipelineError::DrainTimeout(config.pipeline.drain_timeout)),
            }
        }
    };
    // The sink is done (a Kafka source only ends on `stop`, e.g. after a sink error).
    stop.store(true, Ordering::Relaxed);
    let (mut summary, sink_result) = joined
        .map_err(|e| PipelineError::Thread(e.to_string()))?
        .map_err(|_| PipelineError::Thread("the sink thread panicked".into()))?;

    // Everything is written; wind the rest down.
    metrics.shutting_down();
    let _ = batcher.await;
    let _ = infer_task.await;
    for worker in workers {
        worker
            .join()
            .map_err(|_| PipelineError::Thread("a cutout worker panicked".into()))?;
    }
    let consumer = source_thread
        .join()
        .map_err(|_| PipelineError::Thread("the source thread panicked".into()))?;
    tokio::task::spawn_blocking(move || inference.join())
        .await
        .map_err(|e| PipelineError::Thread(e.to_string()))?;
    let mut committed = Ok(());
    if let (Some(acks), Some((consumer, consumed))) = (acks, consumer) {
        // Everything written is stored by now (the producer flushed) or in the open
        // transaction: commit it, then leave the group (dropping the consumer closes it).
        let in_flight = acks.in_flight();
        committed = consumed.and_then(|()| {
            if sink_result.is_ok() {
                acks.commit_final().map_err(PipelineError::from)
            } else {
                Ok(())
            }
        });
        tokio::task::spawn_blocking(move || drop(consumer))
            .await
            .map_err(|e| PipelineError::Thread(e.to_string()))?;
        match &committed {
            Ok(()) => tracing::info!(
                unacknowledged = in_flight,
                "offsets committed; left the consumer group"
            ),
            Err(e) => {
                tracing::error!(error = %e, "final commit failed; the next owner repeats the uncommitted records")
            }
        }
    }
    sink_result?;
    committed?;

    summary.elapsed = started.elapsed();
    summary.model = model;
    summary.resumed = resumed;
    summary.interrupted = interrupted;
    // The source thread has been joined: its store is visible.
    summary.stopped_early = interrupted && !input_ended.load(Ordering::Relaxed);
    let batches = metrics.batches();
    (summary.batches, summary.batched_items) = (
        batches.0.saturating_sub(batches_before.0),
        batches.1.saturating_sub(batches_before.1),
    );
    Ok(summary)
}

/// The Kafka source thread: polls, registers each record with the acknowledgement path and
/// passes it on; while the first queue is full it holds the records it has, pauses the
/// partitions and keeps polling; commits periodically. Returns the source (its consumer is
/// still in the group) so that the pipeline commits and closes it after the last delivery,
/// and Err when the acknowledgement path said the worker must stop (fenced).
fn consume(
    mut source: KafkaSource<AckContext>,
    acks: &Acks,
    detections_tx: &crossbeam_channel::Sender<Numbered<Result<Detection, Rejected>>>,
    stop: &AtomicBool,
    admitted: &Admitted,
    metrics: &Metrics,
) -> (KafkaSource<AckContext>, Result<(), PipelineError>) {
    // Records polled but not yet queued. While it is non-empty the partitions are paused on
    // every poll, so at most the records of partitions assigned since the last poll join it.
    let mut held = std::collections::VecDeque::new();
    let mut seq = 0u64;
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        while let Some(item) = held.pop_front() {
            // A full queue is the normal state of a worker with a backlog: wait a moment for
            // room rather than pause at once, since pausing makes librdkafka drop the records
            // it has prefetched (they are fetched again on resume, and the pipeline starves
            // meanwhile). Pause only when downstream stays full (a slow sink).
            match detections_tx.send_timeout(Numbered { seq, item }, FULL_QUEUE_WAIT) {
                Ok(()) => {
                    seq += 1;
                    admitted.one();
                    metrics.consumed();
                }
                Err(crossbeam_channel::SendTimeoutError::Timeout(Numbered { item, .. })) => {
                    held.push_front(item);
                    break;
                }
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                    return (source, Ok(()));
                }
            }
        }
        if held.is_empty() {
            source.resume();
        } else {
            source.pause();
        }
        // While paused, poll briefly: the poll only serves the group; the queue is what to watch.
        let timeout = if held.is_empty() {
            POLL_TIMEOUT
        } else {
            PAUSED_POLL_TIMEOUT
        };
        let polled = source.poll(timeout);
        if let Some(fatal) = source.take_fatal() {
            tracing::error!(error = %fatal, "stopping intake");
            return (source, Err(SourceError::from(fatal).into()));
        }
        if let Err(e) = acks.check_delivered() {
            tracing::error!(error = %e, "stopping intake");
            return (source, Err(e.into()));
        }
        if let Some(mut item) = polled {
            let origin = match &mut item {
                Ok(detection) => &mut detection.origin,
                Err(rejected) => &mut rejected.origin,
            };
            if let crate::domain::Origin::Stream {
                topic,
                partition,
                offset,
                generation,
            } = origin
            {
                match acks.register(topic, *partition, *offset) {
                    Some(g) => *generation = g,
                    None => tracing::debug!(
                        topic,
                        partition,
                        offset,
                        "record of a partition not (or no longer) assigned"
                    ),
                }
            }
            held.push_back(item);
        }
        // After registering: a record polled before the seek was refused registration.
        if let Err(e) = acks.rewind_aborted() {
            tracing::error!(error = %e, "stopping intake");
            return (source, Err(e.into()));
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            if let Err(e) = acks.commit_periodic() {
                tracing::error!(error = %e, "stopping intake");
                return (source, Err(e.into()));
            }
            last_commit = Instant::now();
        }
    }
    (source, Ok(()))
}

/// The cutout and preprocessing stages for one detection (on a worker thread). A panic in
/// them (a defect, e.g. in a projection library on an odd header) rejects this detection
/// instead of taking the worker, and every detection queued behind it, down.
fn cut_and_prepare(cutter: &Cutter, detection: Detection) -> Result<Ready, Rejected> {
    let origin = detection.origin.clone();
    let source_id = detection.message.source_id.clone();
    catch_panic(|| cut_and_prepare_inner(cutter, detection)).unwrap_or_else(|what| {
        tracing::error!(source_id = %source_id, panic = %what, "cutout stage panicked; detection rejected");
        Err(Rejected {
            reason: RejectReason::InternalError,
            detail: format!("the cutout stage failed on this input: {what}"),
            source_id: Some(source_id).filter(|id| !id.is_empty()),
            original: None,
            origin,
        })
    })
}

/// Runs `f`, turning a panic into its message: a defect met on one item rejects that item
/// instead of ending the stage (and, for a stream, stalling every item behind it).
fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    })
}

fn cut_and_prepare_inner(cutter: &Cutter, detection: Detection) -> Result<Ready, Rejected> {
    let t0 = Instant::now();
    let cutout = match cutter.cut(&detection.message) {
        Ok(cutout) => cutout,
        Err(e) => return Err(reject(&detection, e)),
    };
    let t1 = Instant::now();
    let Cutout {
        pixels,
        provenance,
        sky,
        position,
    } = cutout;
    let prepared = match preprocess::prepare(&pixels) {
        Ok(prepared) => prepared,
        Err(e) => return Err(reject(&detection, e)),
    };
    let t2 = Instant::now();
    Ok(Ready {
        detection,
        cutout: CutoutInfo {
            provenance,
            sky,
            position,
        },
        prepared,
        cutout_us: micros(t1 - t0),
        preprocess_us: micros(t2 - t1),
        ready_at: t2,
    })
}

/// Runs one batch through the model (`live`: preferring the live session, as while nothing
/// queues) and passes each item on, its result built on a blocking thread. A failed batch
/// rejects its items (with the reason) rather than losing them.
async fn infer_batch(
    inference: &Inference,
    mut batch: Vec<Numbered<Ready>>,
    live: bool,
    outcomes_tx: &mpsc::Sender<Numbered<Outcome>>,
    finish: &Arc<Finish>,
) {
    let started = Instant::now();
    // The model input is not needed after inference: move it out instead of copying 90 KB
    // per item on the hot path.
    let images = batch
        .iter_mut()
        .map(|n| std::mem::take(&mut n.item.prepared.input))
        .collect();
    let result = if live {
        inference.infer_live(images).await
    } else {
        inference.infer(images).await
    };
    let inference_us = micros(started.elapsed());
    match result {
        Ok(outputs) => {
            let Ok(permit) = finish.permits.clone().acquire_owned().await else {
                return; // never closed
            };
            let (finish, outcomes_tx) = (finish.clone(), outcomes_tx.clone());
            tokio::task::spawn_blocking(move || {
                let mut outputs = outputs.into_iter();
                for Numbered { seq, item } in batch {
                    let queue_us = micros(started.saturating_duration_since(item.ready_at));
                    let (config, model) = (&finish.config, &finish.model);
                    // Every item gets an outcome, so that none is missing from the sequence.
                    let built = match outputs.next() {
                        Some(output) => catch_panic(|| {
                            classification(&item, &output, config, model, queue_us, inference_us)
                        })
                        .unwrap_or_else(|what| {
                            tracing::error!(source_id = %item.detection.message.source_id, panic = %what,
                                "building the result panicked; detection rejected");
                            Err(ItemError::new(
                                RejectReason::InternalError,
                                format!("building the result failed: {what}"),
                            ))
                        }),
                        None => Err(ItemError::new(
                            RejectReason::InferenceFailed,
                            "the model returned fewer outputs than the batch had images",
                        )),
                    };
                    let outcome = match built {
                        Ok(classification) => Outcome::Classified(Box::new(Classified {
                            classification,
                            ack: Ack::of(&item.detection.origin),
                            received: item.detection.received,
                            prepared: item.prepared,
                        })),
                        Err(e) => Outcome::Rejected(reject(&item.detection, e)),
                    };
                    if outcomes_tx
                        .blocking_send(Numbered { seq, item: outcome })
                        .is_err()
                    {
                        return;
                    }
                }
                drop(permit);
            });
        }
        Err(e) => {
            tracing::error!(error = %e, items = batch.len(), "inference failed; rejecting the batch");
            for Numbered { seq, item } in batch {
                let rejected = reject(&item.detection, inference_error(&e));
                if outcomes_tx
                    .send(Numbered {
                        seq,
                        item: Outcome::Rejected(rejected),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn inference_error(e: &InferError) -> ItemError {
    ItemError::new(RejectReason::InferenceFailed, e.to_string())
}

/// The sink thread: restores input order, writes, counts, shows progress.
fn write_outcomes(
    mut outcomes_rx: mpsc::Receiver<Numbered<Outcome>>,
    mut sink: Output,
    mut report: Option<HtmlReport>,
    config: &Config,
    progress: bool,
    mut backlog: Backlog,
    metrics: &Metrics,
) -> (RunSummary, Result<(), SinkError>) {
    let mut summary = RunSummary::default();
    let progress = progress_bar(progress);
    // Items that arrived before an earlier one; bounded by the items in flight, which the
    // bounded queues upstream bound.
    let mut waiting: HashMap<u64, Numbered<Outcome>> = HashMap::new();
    let mut next = 0u64;
    let result = (|| {
        let mut unsent = false;
        while let Some(outcome) = outcomes_rx.blocking_recv() {
            waiting.insert(outcome.seq, outcome);
            while let Some(Numbered { item, .. }) = waiting.remove(&next) {
                next += 1;
                write_outcome(item, &mut sink, report.as_mut(), &mut summary, metrics)?;
                progress.inc(1);
                unsent = true;
            }
            if backlog.nothing_queued(next) && unsent {
                sink.idle();
                unsent = false;
            }
        }
        // Every sequence number arrives unless a stage died; never drop what did arrive.
        if !waiting.is_empty() {
            tracing::error!(
                missing_from = next,
                held = waiting.len(),
                "results missing from the sequence"
            );
            let mut rest: Vec<_> = waiting.drain().collect();
            rest.sort_by_key(|(seq, _)| *seq);
            for (_, Numbered { item, .. }) in rest {
                write_outcome(item, &mut sink, report.as_mut(), &mut summary, metrics)?;
            }
        }
        progress.finish_and_clear();
        sink.finish(config.pipeline.drain_timeout)?;
        match report.take() {
            Some(report) => report.finish().map(|_| ()),
            None => Ok(()),
        }
    })();
    (summary, result)
}

fn write_outcome(
    outcome: Outcome,
    sink: &mut Output,
    report: Option<&mut HtmlReport>,
    summary: &mut RunSummary,
    metrics: &Metrics,
) -> Result<(), SinkError> {
    match outcome {
        Outcome::Classified(classified) => {
            let Classified {
                classification: c,
                ack,
                received,
                prepared,
            } = *classified;
            let started = Instant::now();
            if !sink.write_classification(&c, ack)? {
                return Ok(()); // read again: counted then
            }
            metrics.classified(&c, started.elapsed(), received);
            *summary
                .by_label
                .entry(label_name(c.label()).to_string())
                .or_default() += 1;
            summary.classified += 1;
            if let Some(e) = c.emission {
                summary.compact += u64::from(e.largest_angular_size_arcsec < COMPACT_ARCSEC);
                summary.truncated += u64::from(e.truncated);
            }
            match report {
                Some(report) => report.add_classification(&c, &prepared),
                None => Ok(()),
            }
        }
        Outcome::Rejected(rejected) => {
            let r = rejection(&rejected);
            if !sink.write_rejection(&r, Ack::of(&rejected.origin))? {
                return Ok(()); // read again: counted then
            }
            metrics.rejected(rejected.reason);
            *summary
                .by_reason
                .entry(rejected.reason_name().to_string())
                .or_default() += 1;
            summary.rejected += 1;
            match report {
                Some(report) => report.add_rejection(&r),
                None => Ok(()),
            }
        }
    }
}

fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} sources  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The published result of one classified detection.
fn classification(
    ready: &Ready,
    output: &ModelOutput,
    config: &Config,
    model: &proto::ModelInfo,
    queue_us: u32,
    inference_us: u32,
) -> Result<proto::Classification, ItemError> {
    let (label, confidence, entropy_bits) = summary::verdict(output.probs);
    if label == proto::Label::Unspecified {
        return Err(ItemError::new(
            RejectReason::InferenceFailed,
            "the model returned non-finite probabilities",
        ));
    }
    let attention = summary::attention_summary(
        &ready.prepared,
        output,
        ready.cutout.sky.as_ref(),
        &config.summary,
    )
    .map_err(|e| {
        ItemError::new(
            RejectReason::InferenceFailed,
            format!("attention summary: {e}"),
        )
    })?;
    let message = &ready.detection.message;
    let mut cutout = ready.cutout.provenance.clone();
    cutout.rms = ready.prepared.rms;
    cutout.clip_threshold = ready.prepared.threshold;
    Ok(proto::Classification {
        source_id: message.source_id.clone(),
        survey: message.survey.clone(),
        ra_deg: ready.cutout.position.0,
        dec_deg: ready.cutout.position.1,
        detected_at: message.detected_at,
        label: label as i32,
        prob_fri: output.probs[0],
        prob_frii: output.probs[1],
        confidence,
        entropy_bits,
        model: Some(model.clone()),
        attention: Some(attention),
        cutout: Some(cutout),
        timings: Some(proto::StageTimings {
            cutout_us: ready.cutout_us,
            preprocess_us: ready.preprocess_us,
            queue_us,
            inference_us,
            total_us: micros(ready.detection.received.elapsed()),
        }),
        classified_at: Some(SystemTime::now().into()),
        stream: ready.detection.origin.stream_position(),
        emission: Some(emission(&ready.prepared.shape, config)),
    })
}

/// The emission of a model image as results give it, its size in arcsec.
fn emission(shape: &EmissionShape, config: &Config) -> proto::Emission {
    proto::Emission {
        islands: shape.islands,
        pixels: shape.pixels,
        largest_angular_size_arcsec: (f64::from(shape.largest_size)
            * config.cutout.pixel_scale_arcsec) as f32,
        truncated: shape.truncated,
    }
}

/// A detection that failed after decoding. From a stream, the dead letter carries the
/// message re-encoded: the same fields as the original bytes (protobuf encoding is not
/// unique, so not necessarily the same bytes).
fn reject(detection: &Detection, error: ItemError) -> Rejected {
    use prost::Message as _;
    let original = detection
        .origin
        .stream_position()
        .map(|_| bytes::Bytes::from(detection.message.encode_to_vec()));
    Rejected {
        reason: error.reason,
        detail: error.detail,
        source_id: Some(detection.message.source_id.clone()).filter(|id| !id.is_empty()),
        original,
        origin: detection.origin.clone(),
    }
}

/// The published record of one rejected detection.
pub fn rejection(rejected: &Rejected) -> proto::Rejection {
    proto::Rejection {
        reason: rejected.reason as i32,
        detail: rejected.detail.clone(),
        source_id: rejected.source_id.clone().unwrap_or_default(),
        original: rejected
            .original
            .clone()
            .map(|b| b.to_vec())
            .unwrap_or_default(),
        stream: rejected.origin.stream_position(),
        input: rejected.origin.input(),
        rejected_at: Some(SystemTime::now().into()),
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
