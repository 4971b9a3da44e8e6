//! A catalogue as a source: one detection per row, positions in degrees. A catalogue is a
//! CSV file (plain, or astropy's ECSV) or a FITS table (the first table extension), told
//! apart by the file's first bytes. An XML file (a VOTable) is refused with how to convert
//! it: the one Rust VOTable reader, the CDS's `votable` crate (0.7.0), uses a private module
//! of serde 1.0.228 and does not build against later serde releases.
//!
//! Fields (see [`FIELDS`]): `source_id`, `ra`, `dec` are required; `survey`, `tile` (a
//! mosaic hint), `fits_path` (relative paths are relative to the catalogue's folder),
//! `peak_flux`, `integrated_flux`, `local_rms` (Jy), `major`, `minor` (arcsec), `pa`
//! (degrees) and `detected_at` (RFC 3339) are optional. Each field is read from the column
//! `source.columns` names for it, else from the column of its own name, else from the first
//! of its aliases that the catalogue has (the names of PyBDSF, as in LoTSS and VLASS
//! catalogues, and of Selavy, as in ASKAP EMU ones; see [`Field::candidates`] for what a
//! plain CSV file and a table with units each look for). Names are matched without regard to
//! case or surrounding spaces; other columns are ignored.
//!
//! A FITS table declares each column's unit (`TUNITn`), and so does an ECSV file (in its
//! header); values are converted from it (mJy/beam to Jy, degrees to arcsec, ...), and a
//! unit that does not fit the field is refused at start. A plain CSV file declares none, so
//! its values are taken in the units above, and the aliases of fields with units (fluxes,
//! sizes, angles), whose units differ between catalogues, are not looked for in it. An
//! empty cell, a null in a FITS table (NaN, or an integer column's `TNULLn`), or NaN in an
//! optional numeric field means absent. A row that cannot be a
//! detection becomes a rejection naming its line (CSV) or row (FITS) and the field.

mod csv_file;
mod fits_table;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::CATALOG_FIELDS as FIELDS;
use crate::domain::{Detection, Origin, Rejected};
use crate::proto::{self, MosaicHint, RejectReason, source_detection::Pixels};

use super::{Detections, SourceError};

/// A field of a detection that a catalogue column can give (the index of its name in
/// [`FIELDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    SourceId,
    Ra,
    Dec,
    Survey,
    Tile,
    FitsPath,
    PeakFlux,
    IntegratedFlux,
    LocalRms,
    Major,
    Minor,
    Pa,
    DetectedAt,
}

/// What a field's values measure, which decides the units a FITS column may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantity {
    Text,
    /// Right ascension or declination, in degrees.
    Position,
    /// Flux density (or its rms) in Jy, per beam or not.
    Flux,
    /// A source size in arcsec.
    Size,
    /// A position angle in degrees.
    Angle,
}

/// The two kinds of catalogue, which differ in what their column names can be trusted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// radiogate's own schema, without units (a plain CSV file).
    Csv,
    /// A survey's catalogue, whose columns declare their units (a FITS table, ECSV).
    Units,
}

impl Field {
    const ALL: [Field; FIELDS.len()] = [
        Field::SourceId,
        Field::Ra,
        Field::Dec,
        Field::Survey,
        Field::Tile,
        Field::FitsPath,
        Field::PeakFlux,
        Field::IntegratedFlux,
        Field::LocalRms,
        Field::Major,
        Field::Minor,
        Field::Pa,
        Field::DetectedAt,
    ];

    fn name(self) -> &'static str {
        FIELDS[self as usize]
    }

    fn required(self) -> bool {
        matches!(self, Field::SourceId | Field::Ra | Field::Dec)
    }

    fn quantity(self) -> Quantity {
        match self {
            Field::Ra | Field::Dec => Quantity::Position,
            Field::PeakFlux | Field::IntegratedFlux | Field::LocalRms => Quantity::Flux,
            Field::Major | Field::Minor => Quantity::Size,
            Field::Pa => Quantity::Angle,
            _ => Quantity::Text,
        }
    }

    /// The field's own name, then other catalogues' names for it: PyBDSF's (LoTSS:
    /// `Source_Name`; VLASS: `Component_name`; its sizes are the fitted ones, `Maj`, not
    /// the deconvolved `DC_Maj`) and Selavy's (ASKAP EMU).
    fn names(self) -> &'static [&'static str] {
        match self {
            Field::SourceId => &["source_id", "source_name", "component_name", "name"],
            Field::Ra => &["ra", "ra_deg", "ra_deg_cont", "raj2000"],
            Field::Dec => &["dec", "dec_deg", "dec_deg_cont", "dej2000", "decj2000"],
            Field::PeakFlux => &["peak_flux", "flux_peak"],
            Field::IntegratedFlux => &["integrated_flux", "total_flux", "flux_int"],
            Field::LocalRms => &["local_rms", "isl_rms", "rms_image"],
            Field::Major => &["major", "maj", "maj_axis"],
            Field::Minor => &["minor", "min", "min_axis"],
            Field::Pa => &["pa", "pos_ang"],
            _ => std::slice::from_ref(&FIELDS[self as usize]),
        }
    }

    /// The names a field's column is looked for under, in order, unless `source.columns`
    /// names one: its own, then its aliases. A CSV file declares no units, so the aliases
    /// of fields with units are not looked for in it. In a survey's FITS table a `Tile`
    /// column names the survey's tile, not a mosaic file here, so the mosaic hint is read
    /// only from a column that `source.columns.tile` names.
    fn candidates(self, format: Format) -> &'static [&'static str] {
        let quantity = self.quantity();
        match format {
            Format::Units if self == Field::Tile => &[],
            Format::Csv if !matches!(quantity, Quantity::Text | Quantity::Position) => {
                &self.names()[..1]
            }
            _ => self.names(),
        }
    }
}

/// The factor that converts a column's values from `unit` (a FITS table's `TUNITn`, an ECSV
/// column's `unit`; empty when it has none) to the field's units; an error says why the
/// unit does not fit.
fn unit_scale(quantity: Quantity, unit: &str) -> Result<f64, String> {
    let unit = unit.trim();
    // astropy writes "mJy / beam" where FITS tables have "mJy/beam".
    let lower: String = unit
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let degrees = ["", "deg", "degree", "degrees"];
    let scale = match quantity {
        Quantity::Text => Some(1.0),
        Quantity::Position | Quantity::Angle if degrees.contains(&lower.as_str()) => Some(1.0),
        Quantity::Angle if lower == "rad" => Some(180.0 / std::f64::consts::PI),
        Quantity::Position | Quantity::Angle => None,
        // Radio catalogues write mJy as mJy, MJY or mjy, never meaning megajansky.
        Quantity::Flux => match ["/beam", "/bm", "beam-1"]
            .iter()
            .find_map(|per| lower.strip_suffix(per))
            .unwrap_or(&lower)
            .trim()
        {
            "" | "jy" => Some(1.0),
            "mjy" => Some(1e-3),
            "ujy" | "microjy" | "µjy" => Some(1e-6),
            _ => None,
        },
        Quantity::Size => match lower.as_str() {
            "" | "arcsec" | "asec" | "\"" => Some(1.0),
            "arcmin" | "amin" | "'" => Some(60.0),
            "deg" | "degree" | "degrees" => Some(3600.0),
            _ => None,
        },
    };
    scale.ok_or_else(|| {
        let expected = match quantity {
            Quantity::Position => "degrees",
            Quantity::Flux => "a flux density: Jy, mJy or uJy, per beam or not",
            Quantity::Size => "an angle: arcsec, arcmin or deg",
            Quantity::Angle | Quantity::Text => "an angle: deg or rad",
        };
        format!("unit {unit:?}, expected {expected}")
    })
}

/// Which column each field is read from (its index among the catalogue's columns).
#[derive(Debug)]
struct Columns([Option<usize>; FIELDS.len()]);

impl Columns {
    /// Finds each field's column among `names`: the one `overrides` names for it, else the
    /// first of [`Field::candidates`] there is. An error names what is missing or unknown.
    fn resolve(
        names: &[String],
        overrides: &BTreeMap<String, String>,
        format: Format,
    ) -> Result<Self, String> {
        let names: Vec<String> = names.iter().map(|n| n.trim().to_lowercase()).collect();
        let find = |name: &str| {
            let name = name.trim().to_lowercase();
            names.iter().position(|n| *n == name)
        };
        if let Some(unknown) = overrides.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "source.columns.{unknown}: unknown field (fields: {})",
                FIELDS.join(", ")
            ));
        }
        let mut columns = [None; FIELDS.len()];
        for field in Field::ALL {
            let column = match overrides.get(field.name()) {
                Some(name) => Some(find(name).ok_or_else(|| {
                    format!(
                        "source.columns.{} names column {name:?}, which the catalogue lacks \
                         (columns: {})",
                        field.name(),
                        names.join(",")
                    )
                })?),
                None => field.candidates(format).iter().find_map(|name| find(name)),
            };
            if column.is_none() && field.required() {
                return Err(format!(
                    "missing required column {:?} (or one of {:?}, or name it in \
                     source.columns.{}; header: {})",
                    field.name(),
                    &field.names()[1..],
                    field.name(),
                    names.join(",")
                ));
            }
            columns[field as usize] = column;
        }
        Ok(Self(columns))
    }

    fn get(&self, field: Field) -> Option<usize> {
        self.0[field as usize]
    }
}

/// One row of a catalogue, as the fields read it.
trait Row {
    /// The field's cell as text, trimmed; None when the field has no column, or the cell
    /// is empty or null.
    fn text(&self, field: Field) -> Option<Cow<'_, str>>;
    /// The field's cell as a number in the field's units; None when it is empty or null.
    fn number(&self, field: Field) -> Result<Option<f64>, String>;
}

/// Parses text as a field's number (times `scale`, the unit's factor). NaN, which astropy
/// writes for an unmasked missing value, is an absent optional field, as in a FITS table;
/// a position must be a number.
fn parse_number(text: &str, field: Field, scale: f64) -> Result<Option<f64>, String> {
    let name = field.name();
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v * scale)),
        Ok(v) if v.is_nan() && !field.required() => Ok(None),
        Ok(v) => Err(format!("{name} is not finite ({v})")),
        Err(_) => Err(format!("{name} is not a number: {text:?}")),
    }
}

/// What every row of one catalogue shares.
struct Context {
    /// The catalogue as written, for origins (`path:line` or `path:row`).
    path: String,
    /// Base for relative `fits_path` cells.
    folder: PathBuf,
    /// The survey of rows that name none.
    survey: String,
}

impl Context {
    fn origin(&self, at: impl std::fmt::Display) -> Origin {
        Origin::Input(format!("{}:{at}", self.path))
    }

    /// A row as a detection, or the rejection that says why it cannot be one.
    #[allow(
        clippy::result_large_err,
        reason = "Result<Detection, Rejected> is the source item type the pipeline consumes"
    )]
    fn item(&self, row: &impl Row, origin: Origin) -> Result<Detection, Rejected> {
        let source_id = row.text(Field::SourceId).map(Cow::into_owned);
        let reject = |detail: String| Rejected {
            reason: RejectReason::InvalidDetection,
            detail,
            source_id: source_id.clone(),
            original: None,
            origin: origin.clone(),
        };
        let message = self
            .detection(row, source_id.clone().unwrap_or_default())
            .map_err(reject)?;
        super::validate(&message).map_err(|e| reject(e.detail))?;
        Ok(Detection {
            message,
            origin,
            received: Instant::now(),
        })
    }

    fn detection(
        &self,
        row: &impl Row,
        source_id: String,
    ) -> Result<proto::SourceDetection, String> {
        let required = |field: Field| {
            row.number(field)?
                .ok_or_else(|| format!("{} is empty", field.name()))
        };
        let detected_at = match row.text(Field::DetectedAt) {
            None => None,
            Some(text) => Some(
                text.parse::<prost_types::Timestamp>()
                    .map_err(|e| format!("detected_at is not an RFC 3339 time ({e}): {text:?}"))?,
            ),
        };
        let pixels = match (row.text(Field::Tile), row.text(Field::FitsPath)) {
            (Some(_), Some(_)) => return Err("give tile or fits_path, not both".into()),
            (Some(tile), None) => Some(Pixels::Mosaic(MosaicHint {
                tile: tile.into_owned(),
            })),
            (None, Some(path)) => {
                let resolved = self.folder.join(path.as_ref());
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
            survey: row
                .text(Field::Survey)
                .map_or_else(|| self.survey.clone(), Cow::into_owned),
            ra_deg: required(Field::Ra)?,
            dec_deg: required(Field::Dec)?,
            detected_at,
            peak_flux_jy: row.number(Field::PeakFlux)?,
            integrated_flux_jy: row.number(Field::IntegratedFlux)?,
            local_rms_jy: row.number(Field::LocalRms)?,
            major_axis_arcsec: row.number(Field::Major)?,
            minor_axis_arcsec: row.number(Field::Minor)?,
            position_angle_deg: row.number(Field::Pa)?,
            centre_of_cutout: false,
            pixels,
        })
    }
}

/// A row that could not be read at all.
fn unreadable(origin: Origin, reason: RejectReason, detail: String) -> Rejected {
    Rejected {
        reason,
        detail: format!("unreadable catalogue row: {detail}"),
        source_id: None,
        original: None,
        origin,
    }
}

/// Opens a catalogue: a FITS table when the file starts as a FITS file (or a gzipped one)
/// does, CSV otherwise. The header (and the units) are checked here.
pub(super) fn open(
    path: &Path,
    survey: &str,
    overrides: &BTreeMap<String, String>,
) -> Result<Detections, SourceError> {
    let io_error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => SourceError::Missing {
            path: path.to_path_buf(),
        },
        _ => SourceError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let mut file = File::open(path).map_err(io_error)?;
    let mut start = Vec::with_capacity(9);
    (&mut file)
        .take(9)
        .read_to_end(&mut start)
        .and_then(|_| file.rewind())
        .map_err(io_error)?;
    let context = Context {
        path: path.display().to_string(),
        folder: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        survey: survey.to_string(),
    };
    let header_error = |message: String| SourceError::CatalogHeader {
        path: path.to_path_buf(),
        message,
    };
    let gzipped = start.starts_with(&[0x1f, 0x8b]);
    if start == b"SIMPLE  =" || gzipped {
        drop(file);
        fits_table::open(path, context, overrides, gzipped).map_err(header_error)
    } else if start
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(&start)
        .starts_with(b"<")
    {
        Err(header_error(
            "an XML file (a VOTable?): catalogues are CSV, ECSV or FITS tables; convert it with \
             astropy (Table.read(\"x.xml\").write(\"x.fits\")) or STILTS (stilts tcopy x.xml x.fits)"
                .into(),
        ))
    } else {
        csv_file::open(file, context, overrides).map_err(header_error)
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
        items_with(path, &[])
    }

    /// The items of a catalogue read with `source.columns` set to `columns`.
    pub(super) fn items_with(
        path: &Path,
        columns: &[(&str, &str)],
    ) -> Vec<Result<Detection, Rejected>> {
        super::super::open(&config(path, columns))
            .unwrap()
            .collect()
    }

    pub(super) fn config(path: &Path, columns: &[(&str, &str)]) -> SourceConfig {
        SourceConfig::Catalog {
            path: path.to_path_buf(),
            survey: "FIRST".into(),
            columns: columns
                .iter()
                .map(|(f, c)| (f.to_string(), c.to_string()))
                .collect(),
        }
    }

    /// The message of every row that became a detection.
    pub(super) fn messages(items: &[Result<Detection, Rejected>]) -> Vec<&proto::SourceDetection> {
        items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|d| &d.message)
            .collect()
    }

    /// The start-up error of a catalogue's header.
    pub(super) fn header_error(config: &SourceConfig) -> String {
        match super::super::open(config) {
            Err(SourceError::CatalogHeader { message, .. }) => message,
            Err(other) => panic!("expected CatalogHeader, got {other}"),
            Ok(_) => panic!("expected CatalogHeader, got a source"),
        }
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
             wrap,360.5,0,,\n\
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
            (4, "wrap", "ra 360.5 outside [0, 360"),
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

    /// astropy writes an unmasked missing value as `nan`: an optional field is then absent,
    /// as a FITS table's NaN is, while a position must still be a number.
    #[test]
    fn nan_is_an_absent_optional_field_and_a_bad_position() {
        let (_dir, path) = write_catalog(
            "source_id,ra,dec,local_rms,peak_flux,major\n\
             a,1,2,nan,NaN,inf\n\
             b,1,2,nan,NaN,\n\
             c,nan,2,,,\n",
        );
        let got = items(&path);
        assert_eq!(
            rejection(&got[0]).detail,
            "major is not finite (inf)",
            "infinity is not absent"
        );
        let b = &got[1].as_ref().unwrap().message;
        assert_eq!((b.local_rms_jy, b.peak_flux_jy), (None, None));
        assert_eq!(rejection(&got[2]).detail, "ra is not finite (NaN)");
        let (_dir, path) =
            write_catalog(&ECSV.replace("ILTJ2 11.0 -21.0 \"\" 0.25", "ILTJ2 11.0 -21.0 nan 0.25"));
        let got = items(&path);
        assert_eq!(messages(&got).len(), 2, "{got:?}");
        assert_eq!(messages(&got)[1].peak_flux_jy, None);
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
    fn a_votable_is_refused_with_how_to_convert_it() {
        let (_dir, path) = write_catalog(
            "<?xml version=\"1.0\"?>\n<VOTABLE version=\"1.4\"><RESOURCE/></VOTABLE>\n",
        );
        let error = header_error(&config(&path, &[]));
        assert!(
            error.contains("VOTable") && error.contains("stilts tcopy"),
            "{error}"
        );
    }

    #[test]
    fn a_header_without_required_columns_is_a_startup_error() {
        let (_dir, path) = write_catalog("object,ra,dec\nx,1,2\n");
        let message = header_error(&config(&path, &[]));
        assert!(
            message.starts_with("missing required column \"source_id\""),
            "{message}"
        );
        assert!(message.contains("source.columns.source_id"), "{message}");
        let message = header_error(&config(&path, &[("source_id", "Name")]));
        assert!(
            message.starts_with("source.columns.source_id names column \"Name\""),
            "{message}"
        );
        let message = header_error(&config(&path, &[("flux", "ra")]));
        assert!(
            message.starts_with("source.columns.flux: unknown field"),
            "{message}"
        );
        assert!(matches!(
            super::super::open(&config(Path::new("/no/such/cat.csv"), &[])),
            Err(SourceError::Missing { .. })
        ));
    }

    #[test]
    fn csv_takes_other_catalogues_names_except_where_units_differ() {
        // PyBDSF's names, as its CSV output has them: Maj is in degrees there, fluxes in
        // Jy, other catalogues' in mJy and arcsec. A CSV says no units, so those aliases
        // are not read; a column named for the field is.
        let (_dir, path) = write_catalog(
            "Source_Name,RA,DEC,Total_flux,Maj,local_rms\nJ1,10.5,-20.25,0.005,0.001,0.0002\n",
        );
        let got = items(&path);
        let m = messages(&got)[0];
        assert_eq!(
            (m.source_id.as_str(), m.ra_deg, m.dec_deg),
            ("J1", 10.5, -20.25)
        );
        assert_eq!((m.integrated_flux_jy, m.major_axis_arcsec), (None, None));
        assert_eq!(m.local_rms_jy, Some(0.0002));

        let got = items_with(
            &path,
            &[("integrated_flux", "total_flux"), ("source_id", "DEC")],
        );
        let m = messages(&got)[0];
        assert_eq!(m.integrated_flux_jy, Some(0.005), "named: read in Jy");
        assert_eq!(m.source_id, "-20.25", "an override wins over the aliases");

        for (header, id) in [
            ("component_name,ra_deg_cont,dec_deg_cont", "J2"),
            ("name,RAJ2000,DEJ2000", "J2"),
        ] {
            let (_dir, path) = write_catalog(&format!("{header}\n{id},1,2\n"));
            let got = items(&path);
            let m = messages(&got)[0];
            assert_eq!(
                (m.source_id.as_str(), m.ra_deg, m.dec_deg),
                (id, 1.0, 2.0),
                "{header}"
            );
        }
    }

    /// An ECSV catalogue as astropy writes one (`Table.write("x.ecsv")`): space-delimited,
    /// PyBDSF's names, units in the header, a masked cell as "".
    const ECSV: &str = "# %ECSV 1.0\n\
        # ---\n\
        # datatype:\n\
        # - {name: Source_Name, datatype: string}\n\
        # - {name: RA, unit: deg, datatype: float64}\n\
        # - {name: DEC, unit: deg, datatype: float64}\n\
        # - {name: Peak_flux, unit: mJy / beam, datatype: float64, description: peak of the\n\
        #     source's flux density}\n\
        # - {name: Maj, unit: arcmin, datatype: float64}\n\
        # meta: !!omap\n\
        # - {comments: [LoTSS-like]}\n\
        # schema: astropy-2.0\n\
        Source_Name RA DEC Peak_flux Maj\n\
        \"ILTJ1 A\" 10.5 -20.25 3.5 0.5\n\
        ILTJ2 11.0 -21.0 \"\" 0.25\n";

    #[test]
    fn ecsv_is_read_with_its_units_and_other_catalogues_names() {
        let (_dir, path) = write_catalog(ECSV);
        let got = items(&path);
        let m = messages(&got);
        assert_eq!(m.len(), 2, "{got:?}");
        assert_eq!(
            (m[0].source_id.as_str(), m[0].ra_deg, m[0].dec_deg),
            ("ILTJ1 A", 10.5, -20.25)
        );
        assert!(
            (m[0].peak_flux_jy.unwrap() - 3.5e-3).abs() < 1e-15,
            "mJy/beam to Jy"
        );
        assert_eq!(m[0].major_axis_arcsec, Some(30.0), "arcmin to arcsec");
        assert_eq!(m[1].peak_flux_jy, None, "a masked cell is absent");
        // A unit that does not fit its field is refused at start, naming the column.
        let (_dir, path) = write_catalog(&ECSV.replace("unit: arcmin", "unit: pix"));
        let err = header_error(&config(&path, &[]));
        assert!(err.contains("\"Maj\"") && err.contains("pix"), "{err}");
        // Broken YAML is the header's problem too.
        let (_dir, path) = write_catalog(&ECSV.replace("# datatype:", "# datatype: [oops"));
        assert!(header_error(&config(&path, &[])).contains("ECSV header"));
    }

    /// Windows line ends: each rejection still names its own line (the csv crate counts one
    /// line too few after a `\r\n`), and no cell keeps the `\r`.
    #[test]
    fn crlf_lines_keep_their_numbers() {
        let (_dir, path) =
            write_catalog("source_id,ra,dec\r\na,1,2\r\nb,x,2\r\nc,y,2\r\nd,3,4\r\n");
        let got = items(&path);
        let lines: Vec<String> = got
            .iter()
            .filter_map(|item| match item {
                Err(r) => Some(format!("{:?}", r.origin)),
                Ok(_) => None,
            })
            .collect();
        assert!(
            lines.len() == 2 && lines[0].ends_with(":3\")") && lines[1].ends_with(":4\")"),
            "{lines:?}"
        );
        let m = messages(&got);
        assert_eq!((m[1].source_id.as_str(), m[1].dec_deg), ("d", 4.0));
    }

    /// Columns aligned with runs of spaces (by hand, or by another writer) read as astropy
    /// reads them: a run is one delimiter, spaces at a line's ends are none, quoted text and
    /// a quoted empty cell are kept, and rejections keep their line numbers.
    #[test]
    fn an_aligned_ecsv_reads_as_astropy_reads_it() {
        let aligned = ECSV.replace(
            "Source_Name RA DEC Peak_flux Maj\n\
             \"ILTJ1 A\" 10.5 -20.25 3.5 0.5\n\
             ILTJ2 11.0 -21.0 \"\" 0.25\n",
            "  Source_Name   RA     DEC      Peak_flux  Maj\n\
             \"ILTJ1  A\"     10.5   -20.25   3.5        0.5  \n\
             ILTJ2         11.0   -21.0    \"\"         0.25\r\n\
             ILTJ3         x      -22.0    1.0        0.25\r\n",
        );
        assert_ne!(aligned, ECSV, "the rows were replaced");
        let (_dir, path) = write_catalog(&aligned);
        let got = items(&path);
        let m = messages(&got);
        assert_eq!(m.len(), 2, "{got:?}");
        assert_eq!(
            (m[0].source_id.as_str(), m[0].ra_deg, m[0].dec_deg),
            ("ILTJ1  A", 10.5, -20.25)
        );
        assert_eq!(m[0].major_axis_arcsec, Some(30.0));
        assert_eq!(
            (m[1].source_id.as_str(), m[1].peak_flux_jy),
            ("ILTJ2", None)
        );
        let rejected: Vec<_> = got.iter().filter_map(|item| item.as_ref().err()).collect();
        assert_eq!(rejected.len(), 1, "{got:?}");
        assert!(
            matches!(&rejected[0].origin, Origin::Input(at) if at.ends_with(":16")),
            "{:?}",
            rejected[0].origin
        );
    }

    /// A byte order mark before `# %ECSV` (a file saved by some Windows editors) is not part
    /// of the header, nor of a plain CSV file's first column name.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let (_dir, path) = write_catalog(&format!("\u{feff}{ECSV}"));
        let got = items(&path);
        assert_eq!(messages(&got).len(), 2, "{got:?}");
        assert_eq!(
            messages(&got)[0].major_axis_arcsec,
            Some(30.0),
            "units read"
        );
        let (_dir, path) = write_catalog("\u{feff}source_id,ra,dec\na,1,2\n");
        assert_eq!(messages(&items(&path))[0].source_id, "a");
    }

    #[test]
    fn a_gzipped_file_that_is_not_fits_is_refused_saying_what_is_read() {
        use std::io::Write;
        let (dir, _) = write_catalog("");
        let path = dir.path().join("cat.csv.gz");
        let mut encoder = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        encoder.write_all(b"source_id,ra,dec\na,1,2\n").unwrap();
        encoder.finish().unwrap();
        let message = header_error(&config(&path, &[]));
        assert!(
            message.contains("only gzipped FITS tables are read"),
            "{message}"
        );
    }

    #[test]
    fn units_convert_or_are_refused() {
        let cases = [
            (Quantity::Flux, "mJy/beam", Some(1e-3)),
            (Quantity::Flux, "mJy / beam", Some(1e-3)),
            (Quantity::Flux, "MJY/BEAM", Some(1e-3)),
            (Quantity::Flux, "Jy", Some(1.0)),
            (Quantity::Flux, "uJy beam-1", Some(1e-6)),
            (Quantity::Flux, "", Some(1.0)),
            (Quantity::Flux, "K", None),
            (Quantity::Size, "arcsec", Some(1.0)),
            (Quantity::Size, "arcmin", Some(60.0)),
            (Quantity::Size, "deg", Some(3600.0)),
            (Quantity::Size, "pix", None),
            (Quantity::Position, "deg", Some(1.0)),
            (Quantity::Position, "DEGREES", Some(1.0)),
            (Quantity::Position, "h", None),
            (Quantity::Position, "hms", None),
            (Quantity::Angle, "rad", Some(180.0 / std::f64::consts::PI)),
            (Quantity::Text, "anything", Some(1.0)),
        ];
        for (quantity, unit, want) in cases {
            let got = unit_scale(quantity, unit);
            assert_eq!(
                got.as_ref().ok().copied(),
                want,
                "{quantity:?} {unit:?}: {got:?}"
            );
        }
        let err = unit_scale(Quantity::Position, "hourangle").unwrap_err();
        assert_eq!(err, "unit \"hourangle\", expected degrees");
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
