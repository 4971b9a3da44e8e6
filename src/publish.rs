//! `radiogate publish`: feeds a topic with `SourceDetection`s from FITS files or a
//! catalogue, the way users make a test stream and the tests and benchmarks fill theirs.
//!
//! It reuses the offline sources and the Kafka publisher; it is not part of the pipeline.

use std::time::{Duration, Instant, SystemTime};

use crate::config::SourceConfig;
use crate::pipeline::PipelineError;
use crate::sink::kafka::Publisher;
use crate::source;

/// What `radiogate publish` sends.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Kafka bootstrap servers.
    pub brokers: String,
    pub topic: String,
    /// The detections: a files or catalogue source.
    pub source: SourceConfig,
    /// Send FITS files' bytes (`fits_cutout`) instead of their paths.
    pub inline: bool,
    /// Detections per second at most; each one without a detection time gets its send
    /// time (latency benchmarks measure from it). None: as fast as possible.
    pub rate: Option<f64>,
}

/// What `radiogate publish` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishSummary {
    pub sent: u64,
    /// Inputs the source refused (logged), not sent.
    pub skipped: u64,
}

/// Sends the detections of `plan.source` to a topic and waits for their delivery.
pub fn publish(plan: &PublishPlan) -> Result<PublishSummary, PipelineError> {
    let mut publisher = Publisher::create(&plan.brokers, &plan.topic, plan.rate.is_some())?;
    let mut skipped = 0;
    let started = Instant::now();
    let mut paced = 0u32;
    for item in source::open(&plan.source)? {
        let mut message = match item {
            Ok(detection) => detection.message,
            Err(rejected) => {
                tracing::warn!(input = %rejected.origin.input(), reason = rejected.reason_name(), detail = %rejected.detail, "not sent");
                skipped += 1;
                continue;
            }
        };
        if plan.inline {
            source::inline_cutout(&mut message)?;
        }
        if let Some(rate) = plan.rate {
            // The n-th detection leaves n / rate seconds after the first: no drift.
            let due = started + Duration::from_secs_f64(f64::from(paced) / rate);
            paced = paced.saturating_add(1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if message.detected_at.is_none() {
                message.detected_at = Some(SystemTime::now().into());
            }
        }
        publisher.send(&message)?;
    }
    let sent = publisher.finish(Duration::from_secs(60))?;
    Ok(PublishSummary { sent, skipped })
}
