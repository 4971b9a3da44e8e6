//! Sources: where detections enter the pipeline. Each source type is a blocking iterator
//! of `Result<Detection, Rejected>` in input order; the pipeline runs it on a blocking
//! thread and feeds a bounded channel, so a source never needs to know about back-pressure.
//!
//! This module owns turning inputs (FITS files and folders, catalogues, files of
//! length-delimited `SourceDetection`s) into validated detections, and the sanity checks
//! every detection passes ([`validate`], which the Kafka source will reuse). It does not
//! read pixels, resolve positions against mosaics, or check that a FITS file is readable:
//! those are the cutout stage's. A bad item becomes a `Rejected` with its reason; only a
//! problem with the input as a whole (a path that does not exist, a catalogue without the
//! required columns) is a [`SourceError`] at start.

mod catalog;
mod detections;
mod files;
pub mod kafka;

use std::path::PathBuf;

use crate::config::{Shard, SourceConfig};
use crate::domain::{Detection, ItemError, Rejected};
use crate::proto::{self, RejectReason, source_detection::Pixels};

pub use files::{fits_files, is_fits_name};

/// The detections of one source, in input order.
pub type Detections = Box<dyn Iterator<Item = Result<Detection, Rejected>> + Send>;

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An input named in the configuration or on the command line does not exist.
    #[error("input {} does not exist", path.display())]
    Missing { path: PathBuf },
    /// An input exists but could not be opened or listed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The catalogue's header is unreadable or lacks a required column.
    #[error("catalogue {}: {message}", path.display())]
    CatalogHeader { path: PathBuf, message: String },
    /// The Kafka consumer could not be created or subscribed.
    #[error(transparent)]
    Kafka(#[from] Box<kafka::ConsumerError>),
    /// A streaming source was opened as an iterator ([`open`]); it has its own type.
    #[error("a Kafka source is not an iterator of detections (see source::kafka)")]
    NotIterable,
}

/// Opens the source that `config` names. Inputs are checked here (existence, folder
/// listings, catalogue header); items are read lazily as the iterator is pulled.
pub fn open(config: &SourceConfig) -> Result<Detections, SourceError> {
    match config {
        SourceConfig::Files { inputs, survey } => files::open(inputs, survey),
        SourceConfig::Catalog {
            path,
            survey,
            columns,
        } => catalog::open(path, survey, columns),
        SourceConfig::DetectionsFile { path } => detections::open(path),
        SourceConfig::Kafka(_) => Err(SourceError::NotIterable),
    }
}

/// The items of `detections` whose place (0-based) is `shard.index` modulo `shard.count`, in
/// their order; every item when the shard is the whole input.
pub fn shard(detections: Detections, shard: Shard) -> Detections {
    if shard.count <= 1 {
        return detections;
    }
    Box::new(
        detections
            .zip(0u64..)
            .filter_map(move |(item, place)| (place % shard.count == shard.index).then_some(item)),
    )
}

/// Makes a detection that names its cutout file carry the file's bytes instead (`fits_path`
/// to `fits_cutout`, the whole file, so its centre is the source's); any other detection is
/// left as it is. For streams of inline cutouts (`radiogate publish --inline`) and runs from
/// cutouts in memory.
pub fn inline_cutout(message: &mut proto::SourceDetection) -> Result<(), SourceError> {
    if let Some(Pixels::FitsPath(path)) = &message.pixels {
        let bytes = std::fs::read(path).map_err(|source| SourceError::Io {
            path: path.into(),
            source,
        })?;
        message.pixels = Some(Pixels::FitsCutout(bytes.into()));
        message.centre_of_cutout = true;
    }
    Ok(())
}

/// Sanity checks on a detection, whatever its transport: a non-empty source id; finite
/// coordinates with RA in [0, 360] and Dec in [-90, 90] unless `centre_of_cutout` (which
/// then needs a cutout, inline or by path); non-empty pixel references.
pub fn validate(det: &proto::SourceDetection) -> Result<(), ItemError> {
    let invalid = |detail: String| Err(ItemError::new(RejectReason::InvalidDetection, detail));
    if det.source_id.trim().is_empty() {
        return invalid("empty source_id".into());
    }
    if det.centre_of_cutout {
        if !matches!(
            det.pixels,
            Some(Pixels::FitsCutout(_) | Pixels::FitsPath(_))
        ) {
            return invalid("centre_of_cutout needs a cutout: fits_cutout or fits_path".into());
        }
    } else {
        check_position(det.ra_deg, det.dec_deg).or_else(invalid)?;
    }
    match &det.pixels {
        Some(Pixels::FitsPath(path)) if path.is_empty() => invalid("empty fits_path".into()),
        Some(Pixels::FitsCutout(bytes)) if bytes.is_empty() => invalid("empty fits_cutout".into()),
        Some(Pixels::Mosaic(hint)) if hint.tile.is_empty() => invalid("empty mosaic tile".into()),
        _ => Ok(()),
    }
}

/// RA in [0, 360] (360 is the same meridian as 0; the cutter wraps it) and Dec in
/// [-90, 90], both finite; the error says which and why.
fn check_position(ra: f64, dec: f64) -> Result<(), String> {
    if !ra.is_finite() {
        return Err(format!("ra is not finite ({ra})"));
    }
    if !dec.is_finite() {
        return Err(format!("dec is not finite ({dec})"));
    }
    if !(0.0..=360.0).contains(&ra) {
        return Err(format!("ra {ra} outside [0, 360]"));
    }
    if !(-90.0..=90.0).contains(&dec) {
        return Err(format!("dec {dec} outside [-90, 90]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MosaicHint;

    fn at(ra: f64, dec: f64) -> proto::SourceDetection {
        proto::SourceDetection {
            source_id: "J1".into(),
            ra_deg: ra,
            dec_deg: dec,
            ..Default::default()
        }
    }

    fn refused(det: &proto::SourceDetection) -> String {
        let err = validate(det).expect_err("should be refused");
        assert_eq!(err.reason, RejectReason::InvalidDetection);
        err.detail
    }

    #[test]
    fn positions_on_the_sky_pass() {
        for (ra, dec) in [
            (0.0, 0.0),
            (359.999, 90.0),
            (360.0, 0.0),
            (180.0, -90.0),
            (114.33, 29.492),
        ] {
            validate(&at(ra, dec)).unwrap();
        }
    }

    #[test]
    fn impossible_positions_are_refused() {
        assert!(refused(&at(f64::NAN, 0.0)).contains("ra is not finite"));
        assert!(refused(&at(10.0, f64::INFINITY)).contains("dec is not finite"));
        assert!(refused(&at(360.001, 0.0)).contains("ra 360.001 outside [0, 360]"));
        assert!(refused(&at(-0.5, 0.0)).contains("outside [0, 360]"));
        assert!(refused(&at(10.0, 90.5)).contains("dec 90.5 outside [-90, 90]"));
    }

    #[test]
    fn identity_is_required() {
        let mut det = at(1.0, 1.0);
        det.source_id = "  ".into();
        assert_eq!(refused(&det), "empty source_id");
    }

    #[test]
    fn centre_of_cutout_ignores_coordinates_but_needs_a_cutout() {
        let mut det = at(f64::NAN, 1000.0);
        det.centre_of_cutout = true;
        assert!(refused(&det).contains("needs a cutout"));
        det.pixels = Some(Pixels::FitsPath("x.fits".into()));
        validate(&det).unwrap();
        det.pixels = Some(Pixels::FitsPath(String::new()));
        assert_eq!(refused(&det), "empty fits_path");
    }

    #[test]
    fn empty_pixel_references_are_refused() {
        let mut det = at(1.0, 1.0);
        det.pixels = Some(Pixels::Mosaic(MosaicHint {
            tile: String::new(),
        }));
        assert_eq!(refused(&det), "empty mosaic tile");
        det.pixels = Some(Pixels::FitsCutout(Default::default()));
        assert_eq!(refused(&det), "empty fits_cutout");
        det.pixels = Some(Pixels::Mosaic(MosaicHint { tile: "T1".into() }));
        validate(&det).unwrap();
    }
}
