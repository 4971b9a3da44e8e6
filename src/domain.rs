//! Domain types shared by every stage: what flows between them. Stages import these,
//! never each other.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ndarray::Array2;

use crate::proto;

/// Side of the square region cut around a source (pixels): the region the MiraBest
/// preprocessing computes its statistics over.
pub const CUTOUT_SIZE: usize = 300;
/// Side of the model input (pixels): the central crop of the cutout.
pub const MODEL_SIZE: usize = 150;
/// Pixels of one model input (`MODEL_SIZE` x `MODEL_SIZE`).
pub const MODEL_PIXELS: usize = MODEL_SIZE * MODEL_SIZE;
/// A source whose emission spans less than this (arcsec) is more compact than nearly every
/// image the shipped models were trained on: about the 1st percentile of the MiraBest
/// training images' largest angular size (13.6-31.9 arcsec by model and class, model cards).
/// The same bound is in the dashboard's and the alert rules' queries (`deploy/`).
pub const COMPACT_ARCSEC: f32 = 20.0;

/// Where a detection came from, so that its result or rejection can say so and,
/// for streams, so that its offset can be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file, a folder entry or a catalogue row (`path` or `path:row`).
    Input(String),
    /// A Kafka record.
    Stream {
        topic: String,
        partition: i32,
        offset: i64,
        /// The assignment of the partition the record was read in (see `ack`): 0 until the
        /// acknowledgement path registers it.
        generation: u64,
    },
}

impl Origin {
    /// The stream position for protobuf results, when there is one.
    pub fn stream_position(&self) -> Option<proto::StreamPosition> {
        match self {
            Origin::Input(_) => None,
            Origin::Stream {
                topic,
                partition,
                offset,
                ..
            } => Some(proto::StreamPosition {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            }),
        }
    }

    /// The input description for results that came from a file or catalogue.
    pub fn input(&self) -> String {
        match self {
            Origin::Input(s) => s.clone(),
            Origin::Stream {
                topic,
                partition,
                offset,
                ..
            } => format!("{topic}/{partition}@{offset}"),
        }
    }
}

/// A decoded, validated detection entering the pipeline.
#[derive(Debug, Clone)]
pub struct Detection {
    pub message: proto::SourceDetection,
    pub origin: Origin,
    /// When the pipeline took it in (for stage timings).
    pub received: Instant,
}

/// Why a detection produced no classification. Becomes a `proto::Rejection`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub reason: proto::RejectReason,
    pub detail: String,
    pub source_id: Option<String>,
    /// The original message bytes when the detection came from a stream.
    pub original: Option<Bytes>,
    pub origin: Origin,
}

impl Rejected {
    /// The label value for metrics and summaries: a short, bounded name.
    pub fn reason_name(&self) -> &'static str {
        reason_name(self.reason)
    }
}

/// The name of a label: "FRI", "FRII" (metric labels, summaries, pictures).
pub fn label_name(label: proto::Label) -> &'static str {
    match label {
        proto::Label::Fri => "FRI",
        proto::Label::Frii => "FRII",
        proto::Label::Unspecified => "unspecified",
    }
}

/// A model's name, and its test-time views when there were more than one (pictures,
/// reports).
pub fn model_label(model: &proto::ModelInfo) -> String {
    match model.views {
        0 | 1 => model.name.clone(),
        views => format!("{} ({views} views)", model.name),
    }
}

/// Short, bounded names of rejection reasons (metric labels, summaries, JSON).
pub fn reason_name(reason: proto::RejectReason) -> &'static str {
    use proto::RejectReason as R;
    match reason {
        R::Unspecified => "unspecified",
        R::Undecodable => "undecodable",
        R::InvalidDetection => "invalid_detection",
        R::NotCovered => "not_covered",
        R::BadFits => "bad_fits",
        R::BadWcs => "bad_wcs",
        R::EmptyCutout => "empty_cutout",
        R::InferenceFailed => "inference_failed",
        R::InternalError => "internal_error",
        R::PixelScale => "pixel_scale",
    }
}

/// Why a stage could not handle one item: the reason code and a human-readable detail.
/// Stages return this; the pipeline attaches identity and origin to make a `Rejected`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason_name(*.reason))]
pub struct ItemError {
    pub reason: proto::RejectReason,
    pub detail: String,
}

impl ItemError {
    pub fn new(reason: proto::RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Maps a pixel of a cutout window to the sky.
pub trait SkyProjection: Send + Sync + std::fmt::Debug {
    /// `(x, y)`: 0-based pixel within the cutout window (x along a row, y = row index,
    /// row 0 = lowest FITS y). Returns (RA, Dec) in degrees, or None off the projection.
    fn pixel_to_sky(&self, x: f64, y: f64) -> Option<(f64, f64)>;
}

/// The pixels around one source, as read from a FITS image.
#[derive(Debug, Clone)]
pub struct Cutout {
    /// `CUTOUT_SIZE` x `CUTOUT_SIZE`, row-major, `[y, x]`, row 0 = lowest FITS y,
    /// physical units (BSCALE/BZERO applied); NaN where blank or off the image.
    pub pixels: Array2<f32>,
    pub provenance: proto::CutoutProvenance,
    pub sky: Arc<dyn SkyProjection>,
    /// The source's (RA, Dec) in degrees: the detection's, or the image centre's when the
    /// detection asked for `centre_of_cutout`.
    pub position: (f64, f64),
}

/// A cutout made ready for the model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `MODEL_SIZE` x `MODEL_SIZE` model input, row-major, normalised to [-1, 1].
    pub input: Vec<f32>,
    /// The same image as MiraBest stores it (uint8), row-major.
    pub image_u8: Vec<u8>,
    /// Which input pixels are emission: above the clipping threshold.
    pub emission: Vec<bool>,
    /// Sigma-clipped std of the cutout and the threshold (3 std) below which pixels were zeroed.
    pub rms: f32,
    pub threshold: f32,
    /// The extent of the emission in `image_u8` (`preprocess::emission`).
    pub shape: EmissionShape,
}

/// The emission of a model image: its islands (touching emission pixels, at least
/// `preprocess::emission::MIN_ISLAND_PIXELS` of them) and their largest size.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EmissionShape {
    /// Islands counted.
    pub islands: u32,
    /// Pixels in them.
    pub pixels: u32,
    /// Longest distance between two of their pixels' centres, in model pixels (0 without
    /// an island).
    pub largest_size: f32,
    /// A counted island reaches the image's edge, or blank pixels where the window ran off
    /// its image: the source may go on beyond what the model saw, and `largest_size` is then
    /// a lower bound.
    pub truncated: bool,
}

/// What the model said about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOutput {
    /// P(FRI), P(FRII).
    pub probs: [f32; 2],
    /// Attention maps of gates 1..n, each square at the gate's own resolution, row-major.
    pub attention: Vec<AttentionMap>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMap {
    pub side: usize,
    pub values: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_is_labelled_with_its_views_when_it_had_several() {
        let model = |views| proto::ModelInfo {
            name: "agcnn".into(),
            views,
            ..Default::default()
        };
        assert_eq!(model_label(&model(1)), "agcnn");
        assert_eq!(model_label(&model(0)), "agcnn", "written before views were");
        assert_eq!(model_label(&model(8)), "agcnn (8 views)");
    }
}
