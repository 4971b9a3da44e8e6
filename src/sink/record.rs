//! The JSON Lines schema of results: serde types that mirror `proto::Classification` and
//! `proto::Rejection`, so that the JSON written is explicit, documented here, and readable
//! back (by tests, by tools) into the same protobuf values.
//!
//! One object per line; `kind` tells a classification from a rejection. Keys are stable;
//! readers should ignore keys they do not know (fields are only ever added). Binary fields
//! (zstd-compressed maps, original message bytes) are standard base64. Times are RFC 3339.
//! Absent sub-messages are `null`; `stream`, `detected_at`, `classified_at`, `rejected_at`,
//! per-gate `gates` and a rejection's `original` are left out when absent or empty.
//!
//! This module owns the conversion in both directions; writing lines is the sink's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::domain::reason_name;
use crate::proto::{self, Label, RejectReason};

/// One line of a JSON Lines result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "records are built one per write and read back in small files; boxing buys nothing"
)]
pub enum Record {
    Classification(ClassificationRecord),
    Rejection(RejectionRecord),
}

/// A classification: `{"kind": "classification", "source_id": ..., "label": "FRII", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationRecord {
    pub source_id: String,
    pub survey: String,
    /// "FRI" or "FRII".
    pub label: LabelName,
    /// `{"FRI": p, "FRII": p}`.
    pub probabilities: Probabilities,
    /// Probability of the predicted label.
    pub confidence: f32,
    /// Shannon entropy of the two probabilities, in bits (0 certain, 1 undecided).
    pub entropy: f32,
    /// Position of the source in degrees (ICRS), as classified.
    pub ra: f64,
    pub dec: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classified_at: Option<String>,
    pub attention: Option<AttentionRecord>,
    pub model: Option<ModelRecord>,
    pub cutout: Option<CutoutRecord>,
    pub timings_us: Option<TimingsRecord>,
    /// Present when the detection came from a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRecord>,
    /// The extent of the emission the model saw; absent from results written before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emission: Option<EmissionRecord>,
}

/// The emission in the model image (see `Emission` in the proto).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmissionRecord {
    /// Islands of at least 10 touching pixels above 0.
    pub islands: u32,
    /// Pixels in them.
    pub pixels: u32,
    /// Longest distance between two of their pixels, arcsec.
    pub largest_angular_size_arcsec: f32,
    /// An island reaches the model image's edge, or where the cutout ran off its image (the
    /// size is then a lower bound); false in records written before it was recorded.
    #[serde(default)]
    pub truncated: bool,
}

/// The predicted class as results spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelName {
    #[serde(rename = "FRI")]
    Fri,
    #[serde(rename = "FRII")]
    Frii,
    /// Never written for a real classification; kept so that every proto value maps.
    #[serde(rename = "unspecified")]
    Unspecified,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probabilities {
    #[serde(rename = "FRI")]
    pub fri: f32,
    #[serde(rename = "FRII")]
    pub frii: f32,
}

/// Where the model looked (see `AttentionSummary` in the proto for the exact meaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionRecord {
    /// The map is `grid` x `grid`, row-major, row 0 = lowest pixel y.
    pub grid: u32,
    /// Attention of a cell = byte value x `scale`.
    pub scale: f32,
    /// zstd-compressed `grid * grid` bytes, base64.
    pub map_zstd: String,
    /// Up to three local maxima, strongest first.
    pub peaks: Vec<PeakRecord>,
    /// Fraction of the attention on pixels above the clipping threshold.
    pub on_emission_fraction: f32,
    /// Per-gate maps, only when configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeakRecord {
    /// Pixel of the 150x150 model input, 0-based.
    pub x: f32,
    pub y: f32,
    pub ra: f64,
    pub dec: f64,
    /// Share of the combined attention in the peak's cell.
    pub weight: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRecord {
    pub gate: u32,
    pub width: u32,
    pub height: u32,
    pub scale: f32,
    /// zstd-compressed `width * height` bytes, base64.
    pub map_zstd: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub name: String,
    /// Hex sha256 of the ONNX file.
    pub sha256: String,
    /// "cpu", "cuda" or "tensorrt": the provider actually used.
    pub execution_provider: String,
    /// Test-time views averaged (`inference.views`); 1 in results written before it was.
    #[serde(default = "one")]
    pub views: u32,
}

fn one() -> u32 {
    1
}

/// Where the pixels came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CutoutRecord {
    /// The FITS file, or "inline".
    pub file: String,
    /// 0-based pixel window in that file.
    pub x0: i64,
    pub y0: i64,
    pub width: u32,
    pub height: u32,
    /// Fraction of the window on finite image pixels.
    pub coverage: f32,
    /// Sigma-clipped rms (image units) and the clipping threshold.
    pub rms: f32,
    pub clip_threshold: f32,
    pub projection: String,
    /// Size of one image pixel at the source (arcsec); 0 in results written before it was
    /// recorded.
    #[serde(default)]
    pub pixel_scale_arcsec: f32,
    /// The window was resampled to the model's pixel size.
    #[serde(default)]
    pub resampled: bool,
}

/// Microseconds per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimingsRecord {
    pub cutout: u32,
    pub preprocess: u32,
    pub queue: u32,
    pub inference: u32,
    pub total: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A rejection: `{"kind": "rejection", "source_id": ..., "reason": "bad_fits", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionRecord {
    /// None when the input could not be decoded far enough to know it.
    pub source_id: Option<String>,
    /// Short snake-case name (`domain::reason_name`), e.g. "invalid_detection".
    pub reason: String,
    pub detail: String,
    /// The file or catalogue row (`path:row`) it came from; empty for stream input.
    pub input: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_at: Option<String>,
    /// The original message bytes (stream input), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
}

/// Why a JSON record does not convert back to protobuf.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{field}: not base64: {source}")]
    Base64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("{field}: not an RFC 3339 time: {text:?}")]
    Time { field: &'static str, text: String },
    #[error("reason: unknown rejection reason {0:?}")]
    Reason(String),
}

// ---------------------------------------------------------------------------------------
// proto -> record
// ---------------------------------------------------------------------------------------

impl From<&proto::Classification> for Record {
    fn from(c: &proto::Classification) -> Self {
        Record::Classification(ClassificationRecord::from(c))
    }
}

impl From<&proto::Rejection> for Record {
    fn from(r: &proto::Rejection) -> Self {
        Record::Rejection(RejectionRecord::from(r))
    }
}

impl From<&proto::Classification> for ClassificationRecord {
    fn from(c: &proto::Classification) -> Self {
        Self {
            source_id: c.source_id.clone(),
            survey: c.survey.clone(),
            label: match c.label() {
                Label::Fri => LabelName::Fri,
                Label::Frii => LabelName::Frii,
                Label::Unspecified => LabelName::Unspecified,
            },
            probabilities: Probabilities {
                fri: c.prob_fri,
                frii: c.prob_frii,
            },
            confidence: c.confidence,
            entropy: c.entropy_bits,
            ra: c.ra_deg,
            dec: c.dec_deg,
            detected_at: c.detected_at.map(|t| t.to_string()),
            classified_at: c.classified_at.map(|t| t.to_string()),
            attention: c.attention.as_ref().map(|a| AttentionRecord {
                grid: a.grid,
                scale: a.scale,
                map_zstd: BASE64.encode(&a.map_zstd),
                peaks: a
                    .peaks
                    .iter()
                    .map(|p| PeakRecord {
                        x: p.x,
                        y: p.y,
                        ra: p.ra_deg,
                        dec: p.dec_deg,
                        weight: p.weight,
                    })
                    .collect(),
                on_emission_fraction: a.on_emission_fraction,
                gates: a
                    .gates
                    .iter()
                    .map(|g| GateRecord {
                        gate: g.gate,
                        width: g.width,
                        height: g.height,
                        scale: g.scale,
                        map_zstd: BASE64.encode(&g.map_zstd),
                    })
                    .collect(),
            }),
            model: c.model.as_ref().map(|m| ModelRecord {
                name: m.name.clone(),
                sha256: m.sha256.clone(),
                execution_provider: m.execution_provider.clone(),
                // 0: written before the field was.
                views: m.views.max(1),
            }),
            cutout: c.cutout.as_ref().map(|p| CutoutRecord {
                file: p.file.clone(),
                x0: p.x0,
                y0: p.y0,
                width: p.width,
                height: p.height,
                coverage: p.coverage,
                rms: p.rms,
                clip_threshold: p.clip_threshold,
                projection: p.projection.clone(),
                pixel_scale_arcsec: p.pixel_scale_arcsec,
                resampled: p.resampled,
            }),
            timings_us: c.timings.map(|t| TimingsRecord {
                cutout: t.cutout_us,
                preprocess: t.preprocess_us,
                queue: t.queue_us,
                inference: t.inference_us,
                total: t.total_us,
            }),
            stream: c.stream.as_ref().map(StreamRecord::from),
            emission: c.emission.map(|e| EmissionRecord {
                islands: e.islands,
                pixels: e.pixels,
                largest_angular_size_arcsec: e.largest_angular_size_arcsec,
                truncated: e.truncated,
            }),
        }
    }
}

impl From<&proto::StreamPosition> for StreamRecord {
    fn from(s: &proto::StreamPosition) -> Self {
        Self {
            topic: s.topic.clone(),
            partition: s.partition,
            offset: s.offset,
        }
    }
}

impl From<StreamRecord> for proto::StreamPosition {
    fn from(s: StreamRecord) -> Self {
        Self {
            topic: s.topic,
            partition: s.partition,
            offset: s.offset,
        }
    }
}

impl From<&proto::Rejection> for RejectionRecord {
    fn from(r: &proto::Rejection) -> Self {
        Self {
            source_id: Some(r.source_id.clone()).filter(|s| !s.is_empty()),
            reason: reason_name(r.reason()).to_string(),
            detail: r.detail.clone(),
            input: r.input.clone(),
            stream: r.stream.as_ref().map(StreamRecord::from),
            rejected_at: r.rejected_at.map(|t| t.to_string()),
            original: Some(&r.original)
                .filter(|o| !o.is_empty())
                .map(|o| BASE64.encode(o)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// record -> proto
// ---------------------------------------------------------------------------------------

fn base64(field: &'static str, text: &str) -> Result<Vec<u8>, RecordError> {
    BASE64
        .decode(text)
        .map_err(|source| RecordError::Base64 { field, source })
}

fn time(
    field: &'static str,
    text: Option<String>,
) -> Result<Option<prost_types::Timestamp>, RecordError> {
    text.map(|text| text.parse().map_err(|_| RecordError::Time { field, text }))
        .transpose()
}

/// The rejection reason whose short name is `name` (inverse of `domain::reason_name`).
pub fn reason_from_name(name: &str) -> Option<RejectReason> {
    (0..)
        .map_while(|code| RejectReason::try_from(code).ok())
        .find(|r| reason_name(*r) == name)
}

impl TryFrom<ClassificationRecord> for proto::Classification {
    type Error = RecordError;

    fn try_from(r: ClassificationRecord) -> Result<Self, RecordError> {
        let attention = match r.attention {
            None => None,
            Some(a) => Some(proto::AttentionSummary {
                grid: a.grid,
                map_zstd: base64("attention.map_zstd", &a.map_zstd)?,
                scale: a.scale,
                peaks: a
                    .peaks
                    .into_iter()
                    .map(|p| proto::AttentionPeak {
                        x: p.x,
                        y: p.y,
                        ra_deg: p.ra,
                        dec_deg: p.dec,
                        weight: p.weight,
                    })
                    .collect(),
                on_emission_fraction: a.on_emission_fraction,
                gates: a
                    .gates
                    .into_iter()
                    .map(|g| {
                        Ok(proto::GateMap {
                            gate: g.gate,
                            width: g.width,
                            height: g.height,
                            map_zstd: base64("attention.gates.map_zstd", &g.map_zstd)?,
                            scale: g.scale,
                        })
                    })
                    .collect::<Result<_, RecordError>>()?,
            }),
        };
        let label = match r.label {
            LabelName::Fri => Label::Fri,
            LabelName::Frii => Label::Frii,
            LabelName::Unspecified => Label::Unspecified,
        };
        Ok(proto::Classification {
            source_id: r.source_id,
            survey: r.survey,
            ra_deg: r.ra,
            dec_deg: r.dec,
            detected_at: time("detected_at", r.detected_at)?,
            label: label.into(),
            prob_fri: r.probabilities.fri,
            prob_frii: r.probabilities.frii,
            confidence: r.confidence,
            entropy_bits: r.entropy,
            model: r.model.map(|m| proto::ModelInfo {
                name: m.name,
                sha256: m.sha256,
                execution_provider: m.execution_provider,
                views: m.views,
            }),
            attention,
            cutout: r.cutout.map(|c| proto::CutoutProvenance {
                file: c.file,
                x0: c.x0,
                y0: c.y0,
                width: c.width,
                height: c.height,
                coverage: c.coverage,
                rms: c.rms,
                clip_threshold: c.clip_threshold,
                projection: c.projection,
                pixel_scale_arcsec: c.pixel_scale_arcsec,
                resampled: c.resampled,
            }),
            timings: r.timings_us.map(|t| proto::StageTimings {
                cutout_us: t.cutout,
                preprocess_us: t.preprocess,
                queue_us: t.queue,
                inference_us: t.inference,
                total_us: t.total,
            }),
            classified_at: time("classified_at", r.classified_at)?,
            stream: r.stream.map(Into::into),
            emission: r.emission.map(|e| proto::Emission {
                islands: e.islands,
                pixels: e.pixels,
                largest_angular_size_arcsec: e.largest_angular_size_arcsec,
                truncated: e.truncated,
            }),
        })
    }
}

impl TryFrom<RejectionRecord> for proto::Rejection {
    type Error = RecordError;

    fn try_from(r: RejectionRecord) -> Result<Self, RecordError> {
        let reason = reason_from_name(&r.reason).ok_or(RecordError::Reason(r.reason))?;
        Ok(proto::Rejection {
            reason: reason.into(),
            detail: r.detail,
            source_id: r.source_id.unwrap_or_default(),
            original: r
                .original
                .map(|o| base64("original", &o))
                .transpose()?
                .unwrap_or_default(),
            stream: r.stream.map(Into::into),
            input: r.input,
            rejected_at: time("rejected_at", r.rejected_at)?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A classification with every field set to a distinct, non-default value.
    pub(crate) fn full_classification() -> proto::Classification {
        proto::Classification {
            source_id: "100_114.330+029.492_0.1105_0034.32".into(),
            survey: "FIRST".into(),
            ra_deg: 114.330_001,
            dec_deg: 29.492_002,
            detected_at: Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 0,
            }),
            label: Label::Frii.into(),
            prob_fri: 0.0312,
            prob_frii: 0.9688,
            confidence: 0.9688,
            entropy_bits: 0.2006,
            model: Some(proto::ModelInfo {
                name: "agcnn-mirabest-confident".into(),
                sha256: "ab".repeat(32),
                execution_provider: "cpu".into(),
                views: 1,
            }),
            attention: Some(proto::AttentionSummary {
                grid: 50,
                map_zstd: vec![0x28, 0xb5, 0x2f, 0xfd, 0, 1, 2, 255],
                scale: 1.5e-4,
                peaks: vec![
                    proto::AttentionPeak {
                        x: 74.5,
                        y: 70.0,
                        ra_deg: 114.33,
                        dec_deg: 29.49,
                        weight: 0.031,
                    },
                    proto::AttentionPeak {
                        x: 30.0,
                        y: 101.5,
                        ra_deg: 114.35,
                        dec_deg: 29.51,
                        weight: 0.012,
                    },
                ],
                on_emission_fraction: 0.83,
                gates: vec![proto::GateMap {
                    gate: 1,
                    width: 75,
                    height: 75,
                    map_zstd: vec![9, 8, 7],
                    scale: 0.25,
                }],
            }),
            cutout: Some(proto::CutoutProvenance {
                file: "/data/first/x.fits".into(),
                x0: -3,
                y0: 12,
                width: 300,
                height: 300,
                coverage: 0.98,
                rms: 1.4e-4,
                clip_threshold: 4.2e-4,
                projection: "TAN".into(),
                pixel_scale_arcsec: 1.8,
                resampled: false,
            }),
            timings: Some(proto::StageTimings {
                cutout_us: 25,
                preprocess_us: 310,
                queue_us: 20_000,
                inference_us: 4_100,
                total_us: 24_500,
            }),
            classified_at: Some(prost_types::Timestamp {
                seconds: 1_714_564_801,
                nanos: 250_000_000,
            }),
            stream: Some(proto::StreamPosition {
                topic: "detections".into(),
                partition: 3,
                offset: 42,
            }),
            emission: Some(proto::Emission {
                islands: 2,
                pixels: 311,
                largest_angular_size_arcsec: 97.2,
                truncated: true,
            }),
        }
    }

    pub(crate) fn full_rejection() -> proto::Rejection {
        proto::Rejection {
            reason: RejectReason::Undecodable.into(),
            detail: "not a SourceDetection: buffer underflow".into(),
            source_id: "J0737".into(),
            original: vec![0x0a, 0xc8, 0x01, 0x41],
            stream: Some(proto::StreamPosition {
                topic: "detections".into(),
                partition: 0,
                offset: 7,
            }),
            input: "detections/0@7".into(),
            rejected_at: Some(prost_types::Timestamp {
                seconds: 1_714_564_802,
                nanos: 1,
            }),
        }
    }

    fn json(record: &Record) -> serde_json::Value {
        serde_json::to_value(record).unwrap()
    }

    #[test]
    fn classification_json_has_the_documented_keys() {
        let value = json(&Record::from(&full_classification()));
        assert_eq!(value["kind"], "classification");
        assert_eq!(value["label"], "FRII");
        assert_eq!(value["probabilities"]["FRI"], serde_json::json!(0.0312f32));
        assert_eq!(value["probabilities"]["FRII"], serde_json::json!(0.9688f32));
        assert_eq!(value["entropy"], serde_json::json!(0.2006f32));
        assert_eq!(value["attention"]["grid"], 50);
        assert_eq!(value["attention"]["map_zstd"], "KLUv/QABAv8=");
        assert_eq!(value["attention"]["peaks"][0]["x"], 74.5);
        assert_eq!(value["model"]["execution_provider"], "cpu");
        assert_eq!(value["cutout"]["x0"], -3);
        assert_eq!(value["timings_us"]["inference"], 4100);
        assert_eq!(value["stream"]["offset"], 42);
        assert_eq!(value["detected_at"], "2024-05-01T12:00:00Z");
        assert_eq!(value["classified_at"], "2024-05-01T12:00:01.250Z");
        for key in [
            "source_id",
            "survey",
            "confidence",
            "ra",
            "dec",
            "attention",
            "model",
            "cutout",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn absent_parts_are_null_or_left_out() {
        let c = proto::Classification {
            source_id: "s".into(),
            label: Label::Fri.into(),
            ..Default::default()
        };
        let value = json(&Record::from(&c));
        assert_eq!(value["label"], "FRI");
        assert!(
            value["attention"].is_null() && value["model"].is_null() && value["cutout"].is_null()
        );
        for key in ["stream", "detected_at", "classified_at"] {
            assert!(value.get(key).is_none(), "{key} should be left out");
        }
        let r = proto::Rejection {
            reason: RejectReason::NotCovered.into(),
            ..Default::default()
        };
        let value = json(&Record::from(&r));
        assert_eq!(value["kind"], "rejection");
        assert_eq!(value["reason"], "not_covered");
        assert!(value["source_id"].is_null());
        assert!(value.get("original").is_none() && value.get("stream").is_none());
    }

    #[test]
    fn classification_round_trips_through_json() {
        let original = full_classification();
        let text = serde_json::to_string(&Record::from(&original)).unwrap();
        let Record::Classification(back) = serde_json::from_str(&text).unwrap() else {
            panic!("not a classification: {text}")
        };
        assert_eq!(proto::Classification::try_from(back).unwrap(), original);
    }

    #[test]
    fn rejection_round_trips_through_json() {
        let original = full_rejection();
        let text = serde_json::to_string(&Record::from(&original)).unwrap();
        assert!(text.contains(r#""reason":"undecodable""#), "{text}");
        let Record::Rejection(back) = serde_json::from_str(&text).unwrap() else {
            panic!("not a rejection: {text}")
        };
        assert_eq!(proto::Rejection::try_from(back).unwrap(), original);
    }

    #[test]
    fn every_reason_name_maps_back() {
        for code in 0..8 {
            let reason = RejectReason::try_from(code).unwrap();
            assert_eq!(reason_from_name(reason_name(reason)), Some(reason));
        }
        assert_eq!(reason_from_name("bogus"), None);
    }

    #[test]
    fn unknown_keys_are_ignored_and_bad_values_named() {
        let line = r#"{"kind":"rejection","source_id":"a","reason":"bad_wcs","detail":"d","input":"i","new_key":1}"#;
        let Record::Rejection(r) = serde_json::from_str(line).unwrap() else {
            panic!()
        };
        assert_eq!(
            proto::Rejection::try_from(r).unwrap().reason(),
            RejectReason::BadWcs
        );

        let line = r#"{"kind":"rejection","source_id":null,"reason":"sad","detail":"","input":""}"#;
        let Record::Rejection(r) = serde_json::from_str(line).unwrap() else {
            panic!()
        };
        assert!(matches!(
            proto::Rejection::try_from(r),
            Err(RecordError::Reason(_))
        ));
    }
}
