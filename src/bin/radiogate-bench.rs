//! `radiogate-bench`: the measuring tools behind `scripts/bench/run.sh` and
//! `scripts/gpu/run.sh`. Not part of the worker; it uses the worker's own library, so the
//! runtime, the session settings and the preprocessing are the ones the worker runs.
//!
//! - `infer`: the limit. Bare inference throughput of a model on ready-made input tensors
//!   (real cutouts, preprocessed once before timing) through `radiogate::infer`, over a
//!   sweep of batch sizes, sessions and intra-op threads. One JSON line per setting.
//! - `memory`: end to end from cutouts already in memory. The worker's pipeline, configured
//!   as `radiogate classify` is (`--config`, then the `RADIOGATE__...` environment), over
//!   detections that carry real FITS cutouts inline (read once, then cycled; no file is opened
//!   while it runs), results to `--out`. What `classify` over files measures, less the
//!   reading of each file.
//! - `topics`: creates (or deletes) the benchmark's own Kafka topics; results topics use
//!   the broker's clock (`message.timestamp.type=LogAppendTime`) for publication times.
//! - `collect`: reads a results topic from its beginning until it holds the expected
//!   number of records (after a warm-up it skips), and reports end-to-end throughput (first
//!   consume to last publication) and latency percentiles (detection time to publication),
//!   with where the time went, as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use prost::Message as _;

use radiogate::config::{
    CutoutConfig, ExecutionProvider, Gpu, GpuWait, InferenceConfig, ProviderKind, Scheduling,
    SourceConfig,
};
use radiogate::cutout::Cutter;
use radiogate::infer::Inference;
use radiogate::sink::kafka::{TopicSpec, create_topics, delete_topics};
use radiogate::source::kafka::TopicReader;
use radiogate::{preprocess, proto, source};

#[derive(Parser)]
#[command(name = "radiogate-bench", about = "radiogate's benchmark tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Infer(InferArgs),
    Memory(MemoryArgs),
    Topics(TopicsArgs),
    Collect(CollectArgs),
}

/// Bare inference throughput over a sweep of settings (one JSON line per setting).
#[derive(clap::Args)]
struct InferArgs {
    #[arg(long, default_value = "models/agcnn-mirabest-confident.onnx")]
    model: PathBuf,
    /// FITS cutouts (files or folders) preprocessed once into the ready-made inputs.
    #[arg(long, required = true)]
    inputs: Vec<PathBuf>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    batch: Vec<usize>,
    /// Sessions (each on its own thread), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    sessions: Vec<usize>,
    /// ONNX Runtime intra-op threads per session, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    threads: Vec<usize>,
    /// Seconds measured per setting (after one warm-up batch per session).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, value_enum, default_value = "cpu")]
    provider: ProviderKind,
    #[arg(long, default_value_t = 0)]
    device_id: i32,
    /// How session threads wait for the GPU (inference.gpu_wait).
    #[arg(long, value_enum, default_value = "blocking")]
    gpu_wait: GpuWait,
    /// TF32 convolutions on the GPU (inference.gpu_tf32).
    #[arg(long)]
    gpu_tf32: bool,
    /// Channels-last CUDA kernels (inference.gpu_nhwc).
    #[arg(long)]
    gpu_nhwc: bool,
    /// The threads' scheduling policy (pipeline.scheduling); `adaptive` is `batch` here, as
    /// in a worker with a backlog.
    #[arg(long, value_enum, default_value = "adaptive")]
    scheduling: Scheduling,
}

/// End to end from cutouts in memory; prints the run's counts and rate as one JSON line.
#[derive(clap::Args)]
struct MemoryArgs {
    /// Configuration file (as `radiogate classify --config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// FITS cutouts (files or folders), read into memory once.
    #[arg(long, required = true)]
    inputs: Vec<PathBuf>,
    /// Detections to run: the cutouts, repeated.
    #[arg(long)]
    items: usize,
    /// Results file (the configured sink format, JSON Lines by default).
    #[arg(long)]
    out: PathBuf,
}

/// Creates or deletes topics (`NAME:PARTITIONS`; a `:logappend` suffix makes the broker
/// stamp each record with its append time).
#[derive(clap::Args)]
struct TopicsArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    delete: bool,
    #[arg(required = true)]
    topics: Vec<String>,
}

/// Waits for `expect` records on a results topic and reports throughput and latency.
#[derive(clap::Args)]
struct CollectArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Records to wait for, after the skipped ones.
    #[arg(long)]
    expect: usize,
    /// The first records of the topic that are read but not counted (a warm-up).
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Give up after this many seconds without a new record.
    #[arg(long, default_value_t = 120.0)]
    idle_timeout: f64,
    /// Label copied into the JSON output.
    #[arg(long, default_value = "")]
    label: String,
    /// Also writes each counted record's latency and its parts here, one JSON line each in
    /// the order of detection (`detected_ms`: the send time, ms since the epoch).
    #[arg(long)]
    records: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Infer(args) => infer(&args),
        Command::Memory(args) => memory(&args),
        Command::Topics(args) => topics(&args),
        Command::Collect(args) => collect(&args),
    }
}

/// Cuts and preprocesses every input once: the tensors the sweep reuses.
fn ready_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<Vec<f32>>> {
    let cutter = Cutter::new(&CutoutConfig {
        mosaics: Vec::new(),
        workers: 1,
        ..CutoutConfig::default()
    })?;
    let detections = source::open(&SourceConfig::Files {
        inputs: inputs.to_vec(),
        survey: "FIRST".into(),
    })?;
    let mut images = Vec::new();
    for detection in detections.flatten() {
        let Ok(cutout) = cutter.cut(&detection.message) else {
            continue;
        };
        if let Ok(prepared) = preprocess::prepare(&cutout.pixels) {
            images.push(prepared.input);
        }
    }
    if images.is_empty() {
        bail!("no input could be cut and preprocessed");
    }
    Ok(images)
}

fn memory(args: &MemoryArgs) -> anyhow::Result<()> {
    let config = radiogate::cli::classify_config(&radiogate::cli::ClassifyArgs {
        config: args.config.clone(),
        out: Some(args.out.clone()),
        inputs: args.inputs.clone(),
        ..Default::default()
    })?;
    // The configured files source's detections, each carrying its file's bytes.
    let mut cutouts = Vec::new();
    for item in source::open(&config.source)? {
        let mut detection =
            item.map_err(|r| anyhow::anyhow!("{}: {}", r.origin.input(), r.detail))?;
        source::inline_cutout(&mut detection.message)?;
        cutouts.push(detection);
    }
    if cutouts.is_empty() {
        bail!("no FITS file among the inputs");
    }
    let detections = (0..args.items).map(move |i| {
        let mut detection = cutouts[i % cutouts.len()].clone();
        let id = &mut detection.message.source_id;
        *id = format!("m{:06}_{id}", i / cutouts.len());
        detection.received = Instant::now();
        detection
    });
    let rt = tokio::runtime::Runtime::new()?;
    let summary = rt.block_on(radiogate::pipeline::run_detections(
        config,
        Box::new(detections.map(Ok)),
        radiogate::pipeline::RunOptions::default(),
        std::future::pending(),
    ))?;
    println!(
        "{}",
        serde_json::json!({
            "bench": "memory",
            "items": args.items,
            "classified": summary.classified,
            "rejected": summary.rejected,
            "seconds": summary.elapsed.as_secs_f64(),
            "items_per_s": summary.throughput(),
            "batches": summary.batches,
            "mean_batch": summary.mean_batch(),
        })
    );
    Ok(())
}

fn infer(args: &InferArgs) -> anyhow::Result<()> {
    radiogate::scheduling::set_process_policy(args.scheduling != Scheduling::Normal)
        .context("cannot set the scheduling policy")?;
    let images = ready_inputs(&args.inputs)?;
    let rt = tokio::runtime::Runtime::new()?;
    for &sessions in &args.sessions {
        for &threads in &args.threads {
            let cfg = InferenceConfig {
                model: args.model.clone(),
                model_name: "bench".into(),
                runtime_library: None,
                execution_provider: ExecutionProvider::new(
                    args.provider,
                    Gpu {
                        device_id: args.device_id,
                        wait: args.gpu_wait,
                        tf32: args.gpu_tf32,
                        nhwc: args.gpu_nhwc,
                    },
                ),
                sessions,
                intra_threads: threads,
                live_intra_threads: 0,
                views: 1,
            };
            // A setting that fails (a GPU out of memory, say) is reported and the sweep
            // goes on with the next one.
            let failed = |batch: Option<usize>, e: anyhow::Error| {
                println!(
                    "{}",
                    serde_json::json!({
                        "bench": "infer", "batch": batch, "sessions": sessions,
                        "intra_threads": threads, "error": format!("{e:#}"),
                    })
                );
            };
            let (inference, info) = match Inference::start(&cfg)
                .with_context(|| format!("starting inference ({sessions} sessions)"))
            {
                Ok(started) => started,
                Err(e) => {
                    failed(None, e);
                    continue;
                }
            };
            for &batch in &args.batch {
                let point = rt.block_on(sweep_point(
                    &inference,
                    &images,
                    batch,
                    sessions,
                    args.seconds,
                ));
                let (done, elapsed) = match point {
                    Ok(point) => point,
                    Err(e) => {
                        failed(Some(batch), e);
                        continue;
                    }
                };
                let rate = done as f64 / elapsed.as_secs_f64();
                let mut record = serde_json::json!({
                    "bench": "infer",
                    "provider": info.execution_provider,
                    "batch": batch,
                    "sessions": sessions,
                    "intra_threads": threads,
                    "images": done,
                    "seconds": elapsed.as_secs_f64(),
                    "images_per_s": rate,
                    "ms_per_batch": 1e3 * elapsed.as_secs_f64() * sessions as f64
                        / (done as f64 / batch as f64),
                });
                if let Some(gpu) = cfg.execution_provider.gpu() {
                    record["model"] = args.model.display().to_string().into();
                    record["gpu_tf32"] = gpu.tf32.into();
                    record["gpu_nhwc"] = gpu.nhwc.into();
                }
                println!("{record}");
            }
            inference.join();
        }
    }
    Ok(())
}

/// Keeps `2 * sessions` batches in flight for `seconds`; returns images done and the time.
async fn sweep_point(
    inference: &Inference,
    images: &[Vec<f32>],
    batch: usize,
    sessions: usize,
    seconds: f64,
) -> anyhow::Result<(usize, Duration)> {
    let make = |k: usize| -> Vec<Vec<f32>> {
        (0..batch)
            .map(|i| images[(k * batch + i) % images.len()].clone())
            .collect()
    };
    // Warm-up: one batch per session (first runs allocate and tune).
    let warm: Vec<_> = (0..sessions)
        .map(|k| {
            let (inference, b) = (inference.clone(), make(k));
            tokio::spawn(async move { inference.infer(b).await })
        })
        .collect();
    for w in warm {
        w.await??;
    }
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    // Two callers per session: while a session runs one batch the next one waits in the
    // queue, as in the pipeline, so a session never idles between batches.
    let tasks: Vec<_> = (0..2 * sessions)
        .map(|k| {
            let inference = inference.clone();
            let mut batches: Vec<_> = (0..4).map(|j| make(k * 4 + j)).collect();
            tokio::spawn(async move {
                let mut done = 0usize;
                let mut j = 0;
                while start.elapsed() < limit {
                    // The clone stands for the copy the pipeline moves into each job.
                    let b = batches[j % batches.len()].clone();
                    j += 1;
                    done += inference.infer(b).await?.len();
                }
                batches.clear();
                Ok::<_, radiogate::infer::InferError>(done)
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    Ok((done, start.elapsed()))
}

fn topics(args: &TopicsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    if args.delete {
        let names: Vec<&str> = args
            .topics
            .iter()
            .map(|t| t.split(':').next().unwrap_or(t))
            .collect();
        for failure in rt.block_on(delete_topics(&args.brokers, &names))? {
            eprintln!("delete {failure}");
        }
        return Ok(());
    }
    let mut specs = Vec::new();
    for spec in &args.topics {
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or(spec);
        let partitions: i32 = match parts.next() {
            Some(p) => p.parse().with_context(|| format!("partitions in {spec}"))?,
            None => 1,
        };
        specs.push(TopicSpec {
            name: name.to_string(),
            partitions,
            broker_timestamps: parts.next() == Some("logappend"),
        });
    }
    rt.block_on(create_topics(&args.brokers, &specs))?;
    Ok(())
}

fn millis(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 * 1e3 + f64::from(t.nanos) / 1e6
}

/// One result's latency (ms) and its parts; the parts are 0 where the result lacks timings.
#[derive(Debug, Default, serde::Serialize)]
struct Latency {
    /// When the detection was sent (ms since the epoch).
    detected_ms: f64,
    total: f64,
    to_worker: f64,
    in_worker: f64,
    /// Of `in_worker`: from ready for the model until its batch went to inference, and from
    /// then until the batch's outputs came back (the wait for a free session included).
    queue: f64,
    inference: f64,
    to_topic: f64,
}

fn collect(args: &CollectArgs) -> anyhow::Result<()> {
    let reader = TopicReader::open(
        &args.brokers,
        &args.topic,
        &format!("radiogate-bench-collect-{}", args.topic),
    )?;

    let (mut first_received, mut last_published) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut latencies = Vec::with_capacity(args.expect);
    let (mut records, mut undecodable, mut without_detected_at) = (0usize, 0usize, 0usize);
    let mut skipped = 0usize;
    let mut last_new = Instant::now();
    let idle = Duration::from_secs_f64(args.idle_timeout);
    while records < args.expect {
        if last_new.elapsed() > idle {
            bail!(
                "only {records} of {} records on {} after {idle:?} without a new one",
                args.expect,
                args.topic
            );
        }
        let Some(record) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let (timestamp, payload) = record?;
        last_new = Instant::now();
        if skipped < args.skip {
            skipped += 1;
            continue;
        }
        records += 1;
        let Some(published) = timestamp.map(|ms| ms as f64) else {
            bail!("record without a timestamp");
        };
        last_published = last_published.max(published);
        let Ok(c) = proto::Classification::decode(payload.as_slice()) else {
            undecodable += 1;
            continue;
        };
        if let (Some(classified), Some(timings)) = (&c.classified_at, &c.timings) {
            first_received =
                first_received.min(millis(classified) - f64::from(timings.total_us) / 1e3);
        }
        match (&c.detected_at, &c.classified_at, &c.timings) {
            (Some(detected), Some(classified), Some(timings)) => {
                let (detected, classified) = (millis(detected), millis(classified));
                let in_worker = f64::from(timings.total_us) / 1e3;
                latencies.push(Latency {
                    detected_ms: detected,
                    total: published - detected,
                    to_worker: classified - in_worker - detected,
                    in_worker,
                    queue: f64::from(timings.queue_us) / 1e3,
                    inference: f64::from(timings.inference_us) / 1e3,
                    to_topic: published - classified,
                });
            }
            (Some(detected), _, _) => latencies.push(Latency {
                detected_ms: millis(detected),
                total: published - millis(detected),
                ..Latency::default()
            }),
            (None, _, _) => without_detected_at += 1,
        }
    }
    if let Some(path) = &args.records {
        latencies.sort_by(|a, b| a.detected_ms.total_cmp(&b.detected_ms));
        let mut lines = String::new();
        for latency in &latencies {
            lines += &serde_json::to_string(latency)?;
            lines.push('\n');
        }
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    latencies.sort_by(|a, b| a.total.total_cmp(&b.total));
    let pct = |q: f64| -> Option<f64> {
        (!latencies.is_empty()).then(|| {
            let rank = (q * latencies.len() as f64).ceil() as usize;
            latencies[rank.clamp(1, latencies.len()) - 1].total
        })
    };
    // Where the slowest 1% spent their time, against the middle 10%: before the worker took
    // the detection in (publisher, broker, consumer), in the worker, and from the worker's
    // result to its broker append (producer, broker). The mean of a part over a rank range.
    let part = |f: fn(&Latency) -> f64, from: f64, to: f64| -> Option<f64> {
        let n = latencies.len() as f64;
        let picked = &latencies[(from * n) as usize..(to * n).ceil() as usize];
        (!picked.is_empty()).then(|| picked.iter().map(f).sum::<f64>() / picked.len() as f64)
    };
    let parts = |from: f64, to: f64| {
        serde_json::json!({
            "to_worker": part(|l| l.to_worker, from, to),
            "in_worker": part(|l| l.in_worker, from, to),
            "queue": part(|l| l.queue, from, to),
            "inference": part(|l| l.inference, from, to),
            "to_topic": part(|l| l.to_topic, from, to),
        })
    };
    let span_s = (last_published - first_received) / 1e3;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({
            "bench": "collect",
            "label": args.label,
            "topic": args.topic,
            "records": records,
            "skipped": skipped,
            "undecodable": undecodable,
            "span_s": span_s,
            "items_per_s": records as f64 / span_s,
            "latency_ms": {
                "n": latencies.len(),
                "without_detected_at": without_detected_at,
                "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0),
            },
            "latency_parts_ms": {
                "middle": parts(0.45, 0.55),
                "slowest_1pct": parts(0.99, 1.0),
            },
            "collected_at_ms": now_ms,
        })
    );
    Ok(())
}
