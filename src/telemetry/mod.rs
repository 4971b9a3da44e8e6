//! Telemetry: the worker's metrics, its readiness, and the HTTP endpoint that serves them.
//!
//! [`Metrics`] owns every metric name (`radiogate_<thing>_<unit>[_total]`, the contract the
//! alert rules and dashboards are written against) in its own `prometheus::Registry`, so
//! that tests can run several pipelines side by side. Stages do not touch the prometheus
//! types: they call typed hooks (`consumed`, `classified`, `rejected`, `batch`, ...) whose
//! label values come from closed enums, so no label can take unbounded values (no source
//! ids, no free text). The readiness state (model loaded, consumer in its group, not
//! shutting down) lives here too, because `/readyz` and the `radiogate_ready` gauge report it.
//!
//! This module does not decide what is measured where: the pipeline calls the hooks with the
//! stage timings it already takes for each result. [`server`] serves `/metrics`, `/healthz`
//! and `/readyz`.

pub mod server;

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::domain::{label_name, reason_name};
use crate::proto::{self, Label, RejectReason};

/// Every metric name [`Metrics`] registers: the contract with the alert rules and dashboards
/// (`deploy/`). A test checks that each one renders.
pub const METRIC_NAMES: [&str; 14] = [
    "radiogate_detections_consumed_total",
    "radiogate_classifications_total",
    "radiogate_resampled_total",
    "radiogate_rejections_total",
    "radiogate_stage_duration_seconds",
    "radiogate_end_to_end_latency_seconds",
    "radiogate_batch_size_items",
    "radiogate_largest_angular_size_arcsec",
    "radiogate_truncated_sources_total",
    "radiogate_in_flight_items",
    "radiogate_consumer_lag_messages",
    "radiogate_ready",
    "radiogate_model_info",
    "radiogate_build_info",
];

/// Buckets of the per-stage durations: 100 µs to 10 s.
const STAGE_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of the end-to-end latency: 5 ms to 10 min (detections may wait in the topic).
const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Buckets of the emission's largest angular size (arcsec): the MiraBest training images'
/// 1st percentile is 14-23 arcsec, their median about 90 (model cards).
const LAS_BUCKETS: [f64; 12] = [
    10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0,
];
/// Buckets of the batch sizes (items).
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The timed stages of one item: the `stage` label of `radiogate_stage_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Cutout,
    Preprocess,
    /// From ready for the model to the start of its batch's inference.
    QueueWait,
    Inference,
    /// Handing the result to the sink (written to the file; queued in the Kafka producer).
    Publish,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Cutout,
        Stage::Preprocess,
        Stage::QueueWait,
        Stage::Inference,
        Stage::Publish,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Cutout => "cutout",
            Stage::Preprocess => "preprocess",
            Stage::QueueWait => "queue_wait",
            Stage::Inference => "inference",
            Stage::Publish => "publish",
        }
    }
}

/// Every rejection reason a result can carry (not `Unspecified`).
fn reasons() -> impl Iterator<Item = RejectReason> {
    (1..)
        .map_while(|code| RejectReason::try_from(code).ok())
        .filter(|r| *r != RejectReason::Unspecified)
}

/// The consumer's consumer-group state, from the Kafka client's statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerStats {
    /// Whether the consumer is a member of its group (joined, or has an assignment).
    pub member: bool,
    /// Messages behind the end of each assigned partition (topic, partition, lag); only the
    /// partitions whose lag is known.
    pub lags: Vec<(String, i32, i64)>,
}

/// What `/readyz` depends on.
#[derive(Debug, Default)]
struct Readiness {
    model_loaded: bool,
    /// Kafka mode: readiness waits for the consumer to join its group.
    needs_group: bool,
    group_member: bool,
    shutting_down: bool,
}

impl Readiness {
    fn ready(&self) -> bool {
        self.model_loaded && (!self.needs_group || self.group_member) && !self.shutting_down
    }
}

/// The worker's metrics and readiness, shared (`Arc<Metrics>`) by the pipeline's stages and
/// the HTTP endpoint.
pub struct Metrics {
    registry: Registry,
    detections_consumed: IntCounter,
    classifications: IntCounterVec,
    resampled: IntCounter,
    rejections: IntCounterVec,
    stage_duration: HistogramVec,
    end_to_end_latency: Histogram,
    batch_size: Histogram,
    largest_angular_size: Histogram,
    truncated: IntCounter,
    in_flight: IntGauge,
    consumer_lag: IntGaugeVec,
    /// The (topic, partition) series of `consumer_lag` now exported, so that those of
    /// partitions no longer assigned are removed.
    lag_series: Mutex<BTreeSet<(String, i32)>>,
    ready: IntGauge,
    model_info: IntGaugeVec,
    /// Guards readiness and the `ready` gauge together, so they never disagree.
    readiness: Mutex<Readiness>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("readiness", &*self.readiness())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered in a fresh registry, with every label value of the bounded
    /// sets at zero (so rates exist from the first scrape), and the build info set.
    pub fn new() -> Self {
        Self::build().expect(
            "metric names and label sets are fixed and unique: `every_contract_name_renders` tests it",
        )
    }

    fn build() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| IntCounter::with_opts(Opts::new(name, help));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let histogram_opts = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help).buckets(buckets.to_vec())
        };

        let metrics = Self {
            detections_consumed: counter(
                "radiogate_detections_consumed_total",
                "Detections taken into the pipeline.",
            )?,
            classifications: counter_vec(
                "radiogate_classifications_total",
                "Classifications published, by label.",
                &["label"],
            )?,
            resampled: counter(
                "radiogate_resampled_total",
                "Classifications whose window was resampled to the model's pixel size (cutout.resample).",
            )?,
            rejections: counter_vec(
                "radiogate_rejections_total",
                "Rejections published (dead letters), by reason.",
                &["reason"],
            )?,
            stage_duration: HistogramVec::new(
                histogram_opts(
                    "radiogate_stage_duration_seconds",
                    "Time of one item in each stage.",
                    &STAGE_BUCKETS,
                ),
                &["stage"],
            )?,
            end_to_end_latency: Histogram::with_opts(histogram_opts(
                "radiogate_end_to_end_latency_seconds",
                "From the detection's time (detected_at, else when it was consumed) to the publication of its classification.",
                &LATENCY_BUCKETS,
            ))?,
            batch_size: Histogram::with_opts(histogram_opts(
                "radiogate_batch_size_items",
                "Items per inference batch.",
                &BATCH_BUCKETS,
            ))?,
            largest_angular_size: Histogram::with_opts(histogram_opts(
                "radiogate_largest_angular_size_arcsec",
                "Largest angular size of the emission the model saw, per classification (Classification.emission): set against the training images' range on the model card.",
                &LAS_BUCKETS,
            ))?,
            truncated: counter(
                "radiogate_truncated_sources_total",
                "Classifications whose emission reaches the edge of the model's image (Classification.emission.truncated): the model saw only part of the source.",
            )?,
            in_flight: IntGauge::with_opts(Opts::new(
                "radiogate_in_flight_items",
                "Detections taken in and not yet published.",
            ))?,
            consumer_lag: gauge_vec(
                "radiogate_consumer_lag_messages",
                "Messages behind the end of each assigned partition (librdkafka consumer_lag).",
                &["topic", "partition"],
            )?,
            lag_series: Mutex::default(),
            ready: IntGauge::with_opts(Opts::new(
                "radiogate_ready",
                "1 when the worker is ready (model loaded, consumer in its group, not shutting down).",
            ))?,
            model_info: gauge_vec(
                "radiogate_model_info",
                "The model in use (always 1).",
                &["model", "sha256", "execution_provider", "views"],
            )?,
            readiness: Mutex::default(),
            registry,
        };
        let build_info = gauge_vec(
            "radiogate_build_info",
            "The build of this worker (always 1).",
            &["version", "git_commit"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("RADIOGATE_GIT_COMMIT")])
            .set(1);
        let r = &metrics.registry;
        r.register(Box::new(metrics.detections_consumed.clone()))?;
        r.register(Box::new(metrics.classifications.clone()))?;
        r.register(Box::new(metrics.resampled.clone()))?;
        r.register(Box::new(metrics.rejections.clone()))?;
        r.register(Box::new(metrics.stage_duration.clone()))?;
        r.register(Box::new(metrics.end_to_end_latency.clone()))?;
        r.register(Box::new(metrics.batch_size.clone()))?;
        r.register(Box::new(metrics.largest_angular_size.clone()))?;
        r.register(Box::new(metrics.truncated.clone()))?;
        r.register(Box::new(metrics.in_flight.clone()))?;
        r.register(Box::new(metrics.consumer_lag.clone()))?;
        r.register(Box::new(metrics.ready.clone()))?;
        r.register(Box::new(metrics.model_info.clone()))?;
        r.register(Box::new(build_info))?;
        for label in [Label::Fri, Label::Frii] {
            metrics
                .classifications
                .with_label_values(&[label_name(label)]);
        }
        for reason in reasons() {
            metrics.rejections.with_label_values(&[reason_name(reason)]);
        }
        for stage in Stage::ALL {
            metrics.stage_duration.with_label_values(&[stage.name()]);
        }
        Ok(metrics)
    }

    /// The registry, in the Prometheus text format.
    pub fn render(&self) -> prometheus::Result<String> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }

    /// A detection entered the pipeline.
    pub fn consumed(&self) {
        self.detections_consumed.inc();
        self.in_flight.inc();
    }

    /// A classification was handed to the sink, which took `publish`. `received`: when the
    /// pipeline took its detection in (the latency's start when it has no `detected_at`).
    pub fn classified(&self, c: &proto::Classification, publish: Duration, received: Instant) {
        self.classifications
            .with_label_values(&[label_name(c.label())])
            .inc();
        if c.cutout.as_ref().is_some_and(|p| p.resampled) {
            self.resampled.inc();
        }
        if let Some(emission) = &c.emission {
            self.largest_angular_size
                .observe(f64::from(emission.largest_angular_size_arcsec));
            if emission.truncated {
                self.truncated.inc();
            }
        }
        self.in_flight.dec();
        if let Some(t) = &c.timings {
            let micros = [
                (Stage::Cutout, t.cutout_us),
                (Stage::Preprocess, t.preprocess_us),
                (Stage::QueueWait, t.queue_us),
                (Stage::Inference, t.inference_us),
            ];
            for (stage, us) in micros {
                self.stage(stage, Duration::from_micros(u64::from(us)));
            }
        }
        self.stage(Stage::Publish, publish);
        let detected = c
            .detected_at
            .and_then(|ts| SystemTime::try_from(ts).ok())
            .map(|at| SystemTime::now().duration_since(at).unwrap_or_default());
        let latency = detected.unwrap_or_else(|| received.elapsed());
        self.end_to_end_latency.observe(latency.as_secs_f64());
    }

    /// A rejection was handed to the sink.
    pub fn rejected(&self, reason: RejectReason) {
        self.rejections
            .with_label_values(&[reason_name(reason)])
            .inc();
        self.in_flight.dec();
    }

    /// One item spent `duration` in `stage`.
    pub fn stage(&self, stage: Stage, duration: Duration) {
        self.stage_duration
            .with_label_values(&[stage.name()])
            .observe(duration.as_secs_f64());
    }

    /// An inference batch of `items` started.
    pub fn batch(&self, items: usize) {
        self.batch_size.observe(items as f64);
    }

    /// The batches counted so far, and the items in them.
    pub fn batches(&self) -> (u64, u64) {
        (
            self.batch_size.get_sample_count(),
            self.batch_size.get_sample_sum() as u64,
        )
    }

    /// The model is loaded: its info series, and one condition of readiness.
    pub fn model_loaded(&self, model: &proto::ModelInfo) {
        self.model_info.reset();
        self.model_info
            .with_label_values(&[
                model.name.as_str(),
                model.sha256.as_str(),
                model.execution_provider.as_str(),
                &model.views.to_string(),
            ])
            .set(1);
        self.update_readiness(|r| r.model_loaded = true);
    }

    /// The worker consumes from a consumer group: not ready until it is a member.
    pub fn expect_consumer_group(&self) {
        self.update_readiness(|r| r.needs_group = true);
    }

    /// The consumer was assigned partitions: it is in its group.
    pub fn joined_group(&self) {
        self.update_readiness(|r| r.group_member = true);
    }

    /// The Kafka client's periodic statistics: group membership and lag per partition.
    pub fn consumer_stats(&self, stats: &ConsumerStats) {
        let current: BTreeSet<(String, i32)> = stats
            .lags
            .iter()
            .map(|(topic, partition, _)| (topic.clone(), *partition))
            .collect();
        {
            let mut exported = self
                .lag_series
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (topic, partition) in exported.difference(&current) {
                let partition = partition.to_string();
                // Absent already is fine: the series is gone either way.
                let _ = self
                    .consumer_lag
                    .remove_label_values(&[topic.as_str(), partition.as_str()]);
            }
            for (topic, partition, lag) in &stats.lags {
                let partition = partition.to_string();
                self.consumer_lag
                    .with_label_values(&[topic.as_str(), partition.as_str()])
                    .set(*lag);
            }
            *exported = current;
        }
        self.update_readiness(|r| r.group_member = stats.member);
    }

    /// The worker is stopping (intake stopped, draining): no longer ready.
    pub fn shutting_down(&self) {
        self.update_readiness(|r| r.shutting_down = true);
    }

    /// Whether `/readyz` says ready.
    pub fn is_ready(&self) -> bool {
        self.readiness().ready()
    }

    fn update_readiness(&self, change: impl FnOnce(&mut Readiness)) {
        let mut readiness = self.readiness();
        let was = readiness.ready();
        change(&mut readiness);
        let now = readiness.ready();
        self.ready.set(i64::from(now));
        if now != was {
            tracing::info!(ready = now, "readiness changed");
        }
    }

    /// Readiness stays whole across a panic elsewhere (each change is one assignment).
    fn readiness(&self) -> MutexGuard<'_, Readiness> {
        self.readiness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
