//! A CSV catalogue as a source: one detection per row, positions in degrees.
//!
//! Required columns: `source_id`, `ra`, `dec`. Optional: `survey`, `tile` (a mosaic hint),
//! `fits_path` (relative paths are relative to the catalogue's folder), `peak_flux`,
//! `integrated_flux`, `local_rms` (Jy), `major`, `minor` (arcsec), `pa` (degrees),
//! `detected_at` (RFC 3339). Header names are matched without regard to case or
//! surrounding spaces; other columns are ignored. An empty optional cell means absent.
//! A row that cannot be a detection becomes a rejection naming its line and column.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::domain::{Detection, Origin, Rejected};
use crate::proto::{self, MosaicHint, RejectReason, source_detection::Pixels};

use super::{Detections, SourceError};

/// Column positions found in the header.
#[derive(Debug, Default)]
struct Columns {
    source_id: usize,
    ra: usize,
    dec: usize,
    survey: Option<usize>,
    tile: Option<usize>,
    fits_path: Option<usize>,
    peak_flux: Option<usize>,
    integrated_flux: Option<usize>,
    local_rms: Option<usize>,
    major: Option<usize>,
    minor: Option<usize>,
    pa: Option<usize>,
    detected_at: Option<usize>,
}

impl Columns {
    fn from_header(header: &csv::StringRecord) -> Result<Self, String> {
        let names: Vec<String> = header
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        let find = |name: &str| names.iter().position(|n| n == name);
        let required = |name: &str| {
            find(name).ok_or_else(|| {
                format!(
                    "missing required column {name:?} (header: {})",
                    names.join(",")
                )
            })
        };
        Ok(Self {
            source_id: required("source_id")?,
            ra: required("ra")?,
            dec: required("dec")?,
            survey: find("survey"),
            tile: find("tile"),
            fits_path: find("fits_path"),
            peak_flux: find("peak_flux"),
            integrated_flux: find("integrated_flux"),
            local_rms: find("local_rms"),
            major: find("major"),
            minor: find("minor"),
            pa: find("pa"),
            detected_at: find("detected_at"),
        })
    }
}

/// Reads rows lazily; stops after an I/O error, since the reader cannot resynchronise.
struct CatalogRows {
    reader: csv::Reader<File>,
    columns: Columns,
    /// The catalogue as written, for origins (`path:line`).
    path: String,
    /// Base for relative `fits_path` cells.
    folder: PathBuf,
    survey: String,
    record: csv::StringRecord,
    done: bool,
}

pub(super) fn open(path: &Path, survey: &str) -> Result<Detections, SourceError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => SourceError::Missing {
            path: path.to_path_buf(),
        },
        _ => SourceError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let header_error = |message: String| SourceError::CatalogHeader {
        path: path.to_path_buf(),
        message,
    };
    let header = reader.headers().map_err(|e| header_error(e.to_string()))?;
    let columns = Columns::from_header(header).map_err(header_error)?;
    Ok(Box::new(CatalogRows {
        reader,
        columns,
        path: path.display().to_string(),
        folder: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        survey: survey.to_string(),
        record: csv::StringRecord::new(),
        done: false,
    }))
}

impl Iterator for CatalogRows {
    type Item = Result<Detection, Rejected>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.reader.read_record(&mut self.record) {
            Ok(false) => {
                self.done = true;
                None
            }
            Ok(true) => {
                let line = self.record.position().map_or(0, csv::Position::line);
                let origin = Origin::Input(format!("{}:{line}", self.path));
                Some(self.row(origin))
            }
            Err(err) => {
                let line = err.position().map_or(0, csv::Position::line);
                let origin = Origin::Input(format!("{}:{line}", self.path));
                let reason = match err.kind() {
                    csv::ErrorKind::Io(_) => {
                        self.done = true;
                        RejectReason::Unspecified
                    }
                    _ => RejectReason::Undecodable,
                };
                Some(Err(Rejected {
                    reason,
                    detail: format!("unreadable catalogue row: {err}"),
                    source_id: None,
                    original: None,
                    origin,
                }))
            }
        }
    }
}

impl CatalogRows {
    #[allow(
        clippy::result_large_err,
        reason = "Result<Detection, Rejected> is the source item type the pipeline consumes"
    )]
    fn row(&self, origin: Origin) -> Result<Detection, Rejected> {
        let source_id = self.cell(Some(self.columns.source_id)).map(str::to_string);
        let reject = |detail: String| Rejected {
            reason: RejectReason::InvalidDetection,
            detail,
            source_id: source_id.clone(),
            original: None,
            origin: origin.clone(),
        };
        let message = self
            .parse(source_id.clone().unwrap_or_default())
            .map_err(reject)?;
        super::validate(&message).map_err(|e| reject(e.detail))?;
        Ok(Detection {
            message,
            origin,
            received: Instant::now(),
        })
    }

    /// A trimmed cell; None when the column is absent, the row short, or the cell empty.
    fn cell(&self, column: Option<usize>) -> Option<&str> {
        column
            .and_then(|c| self.record.get(c))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    fn number(&self, column: Option<usize>, name: &str) -> Result<Option<f64>, String> {
        let Some(text) = self.cell(column) else {
            return Ok(None);
        };
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            Ok(v) => Err(format!("{name} is not finite ({v})")),
            Err(_) => Err(format!("{name} is not a number: {text:?}")),
        }
    }

    fn required_number(&self, column: usize, name: &str) -> Result<f64, String> {
        self.number(Some(column), name)?
            .ok_or_else(|| format!("{name} is empty"))
    }

    fn parse(&self, source_id: String) -> Result<proto::SourceDetection, String> {
        let c = &self.columns;
        let detected_at = match self.cell(c.detected_at) {
            None => None,
            Some(text) => Some(
                text.parse::<prost_types::Timestamp>()
                    .map_err(|e| format!("detected_at is not an RFC 3339 time ({e}): {text:?}"))?,
            ),
        };
        let pixels = match (self.cell(c.tile), self.cell(c.fits_path)) {
            (Some(_), Some(_)) => return Err("give tile or fits_path, not both".into()),
            (Some(tile), None) => Some(Pixels::Mosaic(MosaicHint {
                tile: tile.to_string(),
            })),
            (None, Some(path)) => {
                let resolved = self.folder.join(path);
                let text = resolved.to_str().ok_or_else(|| {
                    format!(
                        "fits_path is not valid UTF-8 under {}",
                        self.folder.display()
                    )
                })?;
                Some(Pixels::FitsPath(text.to_string()))
            }
            (None, None) => None,
        };
        Ok(proto::SourceDetection {
            source_id,
            survey: self.cell(c.survey).unwrap_or(&self.survey).to_string(),
            ra_deg: self.required_number(c.ra, "ra")?,
            dec_deg: self.required_number(c.dec, "dec")?,
            detected_at,
            peak_flux_jy: self.number(c.peak_flux, "peak_flux")?,
            integrated_flux_jy: self.number(c.integrated_flux, "integrated_flux")?,
            local_rms_jy: self.number(c.local_rms, "local_rms")?,
            major_axis_arcsec: self.number(c.major, "major")?,
            minor_axis_arcsec: self.number(c.minor, "minor")?,
            position_angle_deg: self.number(c.pa, "pa")?,
            centre_of_cutout: false,
            pixels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceConfig;

    fn write_catalog(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cat.csv");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn items(path: &Path) -> Vec<Result<Detection, Rejected>> {
        let config = SourceConfig::Catalog {
            path: path.to_path_buf(),
            survey: "FIRST".into(),
        };
        super::super::open(&config).unwrap().collect()
    }

    fn rejection(item: &Result<Detection, Rejected>) -> &Rejected {
        item.as_ref().expect_err("expected a rejection")
    }

    #[test]
    fn rows_become_detections_with_every_optional_field() {
        let (_dir, path) = write_catalog(
            "Source_ID, RA ,dec,survey,tile,fits_path,peak_flux,integrated_flux,local_rms,major,minor,pa,detected_at,extra\n\
             J0737+2929,114.330,29.492,VLASS,T12,,0.0341,0.05,0.00015,12.5,4,33,2024-05-01T12:00:00Z,x\n\
             J0828+4544,127.079,45.746,,,cut/j.fits,,,,,,,,\n",
        );
        let got = items(&path);
        assert_eq!(got.len(), 2);
        let first = got[0].as_ref().unwrap();
        let m = &first.message;
        assert_eq!(
            (m.source_id.as_str(), m.survey.as_str()),
            ("J0737+2929", "VLASS")
        );
        assert_eq!((m.ra_deg, m.dec_deg), (114.330, 29.492));
        assert_eq!(
            m.pixels,
            Some(Pixels::Mosaic(MosaicHint { tile: "T12".into() }))
        );
        assert_eq!(m.peak_flux_jy, Some(0.0341));
        assert_eq!(m.integrated_flux_jy, Some(0.05));
        assert_eq!(m.local_rms_jy, Some(0.00015));
        assert_eq!(
            (m.major_axis_arcsec, m.minor_axis_arcsec),
            (Some(12.5), Some(4.0))
        );
        assert_eq!(m.position_angle_deg, Some(33.0));
        assert_eq!(
            m.detected_at,
            Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 0
            })
        );
        assert!(!m.centre_of_cutout);
        assert_eq!(first.origin, Origin::Input(format!("{}:2", path.display())));

        let second = &got[1].as_ref().unwrap().message;
        assert_eq!(
            second.survey, "FIRST",
            "the configured survey fills an empty cell"
        );
        let expected = path.parent().unwrap().join("cut/j.fits");
        assert_eq!(
            second.pixels,
            Some(Pixels::FitsPath(expected.to_str().unwrap().into()))
        );
        assert_eq!(second.peak_flux_jy, None);
        assert_eq!(second.detected_at, None);
    }

    #[test]
    fn bad_rows_are_rejected_and_reading_goes_on() {
        let (_dir, path) = write_catalog(
            "source_id,ra,dec,peak_flux,detected_at\n\
             ok1,10,20,,\n\
             nan,NaN,20,,\n\
             text,ten,20,,\n\
             south,10,-90.5,,\n\
             wrap,360,0,,\n\
             ,10,20,,\n\
             flux,10,20,lots,\n\
             when,10,20,,yesterday\n\
             short,10\n\
             ok2,359.9,-89,1e-3,2024-01-01T00:00:00+02:00\n",
        );
        let got = items(&path);
        assert_eq!(got.len(), 10);
        let expect = [
            (1, "nan", "ra is not finite"),
            (2, "text", "ra is not a number: \"ten\""),
            (3, "south", "dec -90.5 outside [-90, 90]"),
            (4, "wrap", "ra 360 outside [0, 360)"),
            (5, "", "empty source_id"),
            (6, "flux", "peak_flux is not a number: \"lots\""),
            (7, "when", "detected_at is not an RFC 3339 time"),
            (8, "short", "dec is empty"),
        ];
        for (index, id, detail) in expect {
            let r = rejection(&got[index]);
            assert_eq!(r.reason, RejectReason::InvalidDetection, "{r:?}");
            assert!(
                r.detail.starts_with(detail),
                "row {index}: {} !~ {detail}",
                r.detail
            );
            assert_eq!(r.source_id.as_deref(), Some(id).filter(|s| !s.is_empty()));
            assert_eq!(
                r.origin,
                Origin::Input(format!("{}:{}", path.display(), index + 2))
            );
        }
        assert_eq!(got[0].as_ref().unwrap().message.source_id, "ok1");
        let last = &got[9].as_ref().unwrap().message;
        assert_eq!(
            last.detected_at,
            Some(prost_types::Timestamp {
                seconds: 1_704_060_000,
                nanos: 0
            })
        );
    }

    #[test]
    fn tile_and_fits_path_together_are_refused() {
        let (_dir, path) = write_catalog("source_id,ra,dec,tile,fits_path\nboth,1,2,T,f.fits\n");
        let got = items(&path);
        assert_eq!(
            rejection(&got[0]).detail,
            "give tile or fits_path, not both"
        );
    }

    #[test]
    fn invalid_utf8_rows_are_rejected_as_undecodable() {
        let (_dir, path) = write_catalog("");
        std::fs::write(&path, b"source_id,ra,dec\nbad\xff,1,2\nok,1,2\n").unwrap();
        let got = items(&path);
        assert_eq!(got.len(), 2);
        assert_eq!(rejection(&got[0]).reason, RejectReason::Undecodable);
        assert_eq!(got[1].as_ref().unwrap().message.source_id, "ok");
    }

    #[test]
    fn a_header_without_required_columns_is_a_startup_error() {
        let (_dir, path) = write_catalog("name,ra,dec\nx,1,2\n");
        let config = SourceConfig::Catalog {
            path,
            survey: "FIRST".into(),
        };
        match super::super::open(&config) {
            Err(SourceError::CatalogHeader { message, .. }) => {
                assert!(message.contains("\"source_id\""), "{message}")
            }
            Err(other) => panic!("expected CatalogHeader, got {other}"),
            Ok(_) => panic!("expected CatalogHeader, got a source"),
        }
        let config = SourceConfig::Catalog {
            path: "/no/such/cat.csv".into(),
            survey: "FIRST".into(),
        };
        assert!(matches!(
            super::super::open(&config),
            Err(SourceError::Missing { .. })
        ));
    }

    #[test]
    fn a_catalogue_of_the_real_cutouts() {
        // Positions from the MiraBest file names, pixels from the files themselves.
        let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/first-cutouts/mirabest-test");
        let mut text = String::from("source_id,ra,dec,fits_path\n");
        let mut count = 0;
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            let position = stem.split('_').nth(1).unwrap();
            let split = position.find(['+', '-']).unwrap();
            let (ra, dec) = position.split_at(split);
            text.push_str(&format!("{stem},{ra},{dec},{}\n", path.display()));
            count += 1;
        }
        let (_dir, path) = write_catalog(&text);
        let got = items(&path);
        assert_eq!(got.len(), count);
        for item in &got {
            let det = item.as_ref().unwrap();
            let Some(Pixels::FitsPath(p)) = &det.message.pixels else {
                panic!("no fits_path")
            };
            assert!(Path::new(p).is_file(), "absolute fits_path kept: {p}");
        }
    }
}
