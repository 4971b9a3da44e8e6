//! A FITS table catalogue (PyBDSF's, Selavy's, or any binary table with the fields'
//! columns): read a block of rows at a time (through `cutout::table`, where CFITSIO is),
//! so that a catalogue of millions of sources is never held whole. Each column's unit
//! (`TUNITn`) is converted to the field's; integer columns give text fields their decimal
//! digits (PyBDSF's `Source_id`), and read as real numbers when `TSCALn`/`TZEROn` scale
//! them; a null (NaN, or an integer column's `TNULLn`) is an empty cell.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use crate::cutout::table::{Kind, Table, TableError, Values};
use crate::domain::{Detection, Rejected};
use crate::proto::RejectReason;

use super::{Columns, Context, Field, Row};
use crate::source::Detections;

/// Rows read at a time: a few hundred kB for a dozen columns.
const BLOCK: usize = 4096;

/// A field's column: its index in the table, and the factor from its unit to the field's.
#[derive(Debug)]
struct Column {
    index: usize,
    scale: f64,
}

struct FitsRows {
    table: Table,
    /// Each field's column, by `Field as usize`.
    columns: Vec<Option<Column>>,
    context: Context,
    next: usize,
    /// The rows in `block` (each field's values), or why they could not be read.
    span: Range<usize>,
    block: Result<Vec<Option<Values>>, String>,
    /// Rows before this one are read one at a time: a block that failed is retried row by
    /// row, so that one unreadable cell rejects one row.
    single_until: usize,
}

/// Opens the first table extension and checks the fields' columns and units; `gzipped`:
/// the file is gzip data, which may hold something else than FITS.
pub(super) fn open(
    path: &Path,
    context: Context,
    overrides: &BTreeMap<String, String>,
    gzipped: bool,
) -> Result<Detections, String> {
    let table = Table::open(path).map_err(|e| match e {
        TableError::NotFits(_) | TableError::Hdu { index: 0, .. } if gzipped => format!(
            "gzipped, and not a FITS file inside ({e}): only gzipped FITS tables are read; \
             gunzip a CSV or ECSV catalogue first"
        ),
        e => e.to_string(),
    })?;
    let names: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
    let found = Columns::resolve(&names, overrides, super::Format::Units)?;
    let mut columns = Vec::with_capacity(super::FIELDS.len());
    for field in super::Field::ALL {
        let Some(index) = found.get(field) else {
            columns.push(None);
            continue;
        };
        let column = &table.columns[index];
        let problem = |what: String| format!("column {:?} ({}): {what}", column.name, field.name());
        match column.kind {
            Kind::Logical => return Err(problem("logical values, not a field's".into())),
            Kind::Integer | Kind::Real if column.repeat != 1 => {
                return Err(problem(format!("{} values a row, not one", column.repeat)));
            }
            _ => {}
        }
        let scale = super::unit_scale(field.quantity(), &column.unit).map_err(problem)?;
        columns.push(Some(Column { index, scale }));
    }
    Ok(Box::new(FitsRows {
        table,
        columns,
        context,
        next: 0,
        span: 0..0,
        block: Ok(Vec::new()),
        single_until: 0,
    }))
}

impl FitsRows {
    /// Reads the block that starts at row `start` (one row if blocks fail here).
    fn load(&mut self, start: usize) {
        let block = if start < self.single_until { 1 } else { BLOCK };
        self.span = start..(start + block).min(self.table.rows);
        self.block = self
            .columns
            .iter()
            .map(|column| {
                column
                    .as_ref()
                    .map(|column| self.table.read(column.index, &self.span))
                    .transpose()
            })
            .collect();
        if self.block.is_err() && block > 1 {
            self.single_until = self.span.end;
            self.load(start);
        }
    }
}

impl Iterator for FitsRows {
    type Item = Result<Detection, Rejected>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.table.rows {
            return None;
        }
        let at = self.next;
        self.next += 1;
        if !self.span.contains(&at) {
            self.load(at);
        }
        let origin = self.context.origin(at + 1);
        Some(match &self.block {
            Ok(values) => {
                let row = FitsRow {
                    values,
                    columns: &self.columns,
                    at: at - self.span.start,
                };
                self.context.item(&row, origin)
            }
            Err(e) => Err(super::unreadable(
                origin,
                RejectReason::Undecodable,
                e.clone(),
            )),
        })
    }
}

/// Row `at` of a block.
struct FitsRow<'a> {
    values: &'a [Option<Values>],
    columns: &'a [Option<Column>],
    at: usize,
}

impl Row for FitsRow<'_> {
    fn text(&self, field: Field) -> Option<Cow<'_, str>> {
        match self.values[field as usize].as_ref()? {
            Values::Text(v) => Some(v[self.at].trim())
                .filter(|s| !s.is_empty())
                .map(Cow::Borrowed),
            Values::Integer(v) => v[self.at].map(|v| Cow::Owned(v.to_string())),
            Values::Real(v) => Some(v[self.at])
                .filter(|v| !v.is_nan())
                .map(|v| Cow::Owned(v.to_string())),
        }
    }

    fn number(&self, field: Field) -> Result<Option<f64>, String> {
        let (Some(values), Some(column)) = (
            self.values[field as usize].as_ref(),
            self.columns[field as usize].as_ref(),
        ) else {
            return Ok(None);
        };
        let value = match values {
            Values::Text(v) => {
                let text = v[self.at].trim();
                if text.is_empty() {
                    return Ok(None);
                }
                return super::parse_number(text, field, column.scale);
            }
            Values::Integer(v) => match v[self.at] {
                Some(v) => v as f64,
                None => return Ok(None),
            },
            Values::Real(v) if v[self.at].is_nan() => return Ok(None),
            Values::Real(v) => v[self.at],
        };
        if value.is_finite() {
            Ok(Some(value * column.scale))
        } else {
            Err(format!("{} is not finite ({value})", field.name()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::tests::{config, header_error, items_with, messages};
    use crate::cutout::table::{TestColumn as Data, write_table};
    use crate::domain::Origin;
    use crate::proto::RejectReason;

    fn text(values: &[&str]) -> Data {
        Data::Text(values.iter().map(|s| s.to_string()).collect())
    }

    fn table(columns: &[(&str, &str, Data)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cat.fits");
        write_table(&path, columns);
        (dir, path)
    }

    fn close(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|g| (g - want).abs() <= 1e-12 * want.abs())
    }

    #[test]
    fn a_pybdsf_table_in_its_units() {
        // PyBDSF's FITS catalogue: an integer Source_id, fluxes in Jy, sizes in degrees.
        let (_dir, path) = table(&[
            ("Source_id", "", Data::Integer(vec![0, 1, 2])),
            ("RA", "deg", Data::Real(vec![150.25, 151.0, f64::NAN])),
            ("DEC", "deg", Data::Real(vec![2.5, -3.0, 1.0])),
            ("Total_flux", "Jy", Data::Real(vec![0.012, f64::NAN, 1.0])),
            ("Peak_flux", "Jy/beam", Data::Real(vec![0.004, 0.002, 1.0])),
            ("Maj", "deg", Data::Real(vec![0.002, 0.001, 1.0])),
            ("DC_Maj", "deg", Data::Real(vec![0.5, 0.5, 0.5])),
            ("Min", "deg", Data::Real(vec![0.001, 0.001, 1.0])),
            ("PA", "deg", Data::Real(vec![45.0, 90.0, 1.0])),
            ("Isl_rms", "Jy/beam", Data::Real(vec![0.00015, 0.0002, 1.0])),
        ]);
        let got = items_with(&path, &[]);
        assert_eq!(got.len(), 3);
        let m = messages(&got)[0];
        assert_eq!(
            (m.source_id.as_str(), m.ra_deg, m.dec_deg),
            ("0", 150.25, 2.5)
        );
        assert_eq!(m.survey, "FIRST");
        assert_eq!(m.integrated_flux_jy, Some(0.012));
        assert_eq!(m.peak_flux_jy, Some(0.004));
        assert!(close(m.major_axis_arcsec, 7.2), "{:?}", m.major_axis_arcsec);
        assert!(close(m.minor_axis_arcsec, 3.6), "{:?}", m.minor_axis_arcsec);
        assert_eq!(
            (m.position_angle_deg, m.local_rms_jy),
            (Some(45.0), Some(0.00015))
        );
        assert_eq!(
            messages(&got)[1].integrated_flux_jy,
            None,
            "a null is absent"
        );
        let origin = |row: usize| Origin::Input(format!("{}:{row}", path.display()));
        assert_eq!(got[1].as_ref().unwrap().origin, origin(2));
        let r = got[2].as_ref().unwrap_err();
        assert_eq!(
            (r.reason, r.detail.as_str(), r.source_id.as_deref()),
            (RejectReason::InvalidDetection, "ra is empty", Some("2"))
        );
        assert_eq!(r.origin, origin(3));
    }

    /// Integer columns scaled by TSCALn/TZEROn read as the numbers they stand for, and a
    /// cell holding its column's TNULLn is empty (as astropy writes a masked integer).
    #[test]
    fn scaled_integer_columns_and_integer_nulls() {
        let (_dir, path) = table(&[
            ("Source_id", "", Data::Integer(vec![7, 999_999, 9])),
            (
                "RA",
                "deg",
                Data::Integer(vec![114_330_000, 127_079_000, -1]),
            ),
            ("DEC", "deg", Data::Integer(vec![29_992, 46_246, 10_500])),
            ("Peak_flux", "mJy/beam", Data::Integer(vec![-99, 5, 3])),
        ]);
        use crate::cutout::table::write_scaling;
        write_scaling(&path, 1, None, None, Some(999_999));
        write_scaling(&path, 2, Some(1e-6), None, Some(-1));
        write_scaling(&path, 3, Some(1e-3), Some(-0.5), None);
        write_scaling(&path, 4, None, None, Some(-99));
        let got = items_with(&path, &[]);
        assert_eq!(got.len(), 3);
        let first = got[0].as_ref().unwrap();
        let m = &first.message;
        assert_eq!(m.source_id, "7");
        assert!(close(Some(m.ra_deg), 114.33), "{}", m.ra_deg);
        assert!(close(Some(m.dec_deg), 29.492), "{}", m.dec_deg);
        assert_eq!(m.peak_flux_jy, None, "TNULL is an empty cell");
        let second = got[1].as_ref().unwrap_err();
        assert_eq!(
            (second.source_id.as_deref(), second.detail.as_str()),
            (None, "empty source_id"),
            "a masked source_id is no id, not \"999999\""
        );
        let third = got[2].as_ref().unwrap_err();
        assert_eq!(
            (third.source_id.as_deref(), third.detail.as_str()),
            (Some("9"), "ra is empty"),
            "a scaled column's TNULL is empty too"
        );
    }

    #[test]
    fn vlass_and_selavy_tables_in_mjy_and_arcsec() {
        // CIRADA's VLASS component catalogue (and LoTSS's) and Selavy's (ASKAP EMU).
        let (_vlass_dir, vlass) = table(&[
            (
                "Component_name",
                "",
                text(&["VLASS1QLCIR J100000.00+020000.0"]),
            ),
            ("RA", "deg", Data::Real(vec![150.0])),
            ("DEC", "deg", Data::Real(vec![2.0])),
            ("Peak_flux", "mJy/beam", Data::Real(vec![12.5])),
            ("Total_flux", "mJy", Data::Real(vec![20.0])),
            ("Maj", "arcsec", Data::Real(vec![3.1])),
            ("Tile", "", text(&["T10t12"])),
        ]);
        let (_selavy_dir, selavy) = table(&[
            ("island_id", "", text(&["SB9442_island_1"])),
            ("component_name", "", text(&["J100000+020000"])),
            ("ra_deg_cont", "deg", Data::Real(vec![150.0])),
            ("dec_deg_cont", "deg", Data::Real(vec![2.0])),
            ("flux_peak", "mJy/beam", Data::Real(vec![12.5])),
            ("flux_int", "mJy", Data::Real(vec![20.0])),
            ("maj_axis", "arcsec", Data::Real(vec![3.1])),
            ("pos_ang", "deg", Data::Real(vec![-30.0])),
            ("rms_image", "mJy/beam", Data::Real(vec![0.2])),
        ]);
        for (path, id) in [
            (&vlass, "VLASS1QLCIR J100000.00+020000.0"),
            (&selavy, "J100000+020000"),
        ] {
            let got = items_with(path, &[]);
            let m = messages(&got)[0];
            assert_eq!(
                (m.source_id.as_str(), m.ra_deg, m.dec_deg),
                (id, 150.0, 2.0)
            );
            assert!(close(m.peak_flux_jy, 0.0125), "{:?}", m.peak_flux_jy);
            assert!(
                close(m.integrated_flux_jy, 0.02),
                "{:?}",
                m.integrated_flux_jy
            );
            assert_eq!(m.major_axis_arcsec, Some(3.1));
            assert_eq!(m.pixels, None, "a survey's tile name is not a mosaic hint");
        }
        let got = items_with(&vlass, &[("tile", "Tile")]);
        let hint = crate::proto::MosaicHint {
            tile: "T10t12".into(),
        };
        assert_eq!(
            messages(&got)[0].pixels,
            Some(crate::proto::source_detection::Pixels::Mosaic(hint)),
            "named in source.columns, it is"
        );
        let got = items_with(&selavy, &[("source_id", "island_id")]);
        assert_eq!(messages(&got)[0].source_id, "SB9442_island_1");
        assert!(close(messages(&got)[0].local_rms_jy, 0.0002));
        assert_eq!(messages(&got)[0].position_angle_deg, Some(-30.0));
    }

    #[test]
    fn units_that_do_not_fit_and_files_without_a_table_are_refused_at_start() {
        let (_dir, path) = table(&[
            ("source_id", "", text(&["a"])),
            ("RA", "h", Data::Real(vec![10.0])),
            ("DEC", "deg", Data::Real(vec![2.0])),
        ]);
        assert_eq!(
            header_error(&config(&path, &[])),
            "column \"RA\" (ra): unit \"h\", expected degrees"
        );
        let (_dir, path) = table(&[
            ("source_id", "", text(&["a"])),
            ("RA", "", Data::Real(vec![10.0])),
            ("DEC", "", Data::Real(vec![2.0])),
            ("Peak_flux", "K", Data::Real(vec![2.0])),
        ]);
        let message = header_error(&config(&path, &[]));
        assert!(
            message.starts_with("column \"Peak_flux\" (peak_flux): unit \"K\""),
            "{message}"
        );

        let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("samples/first/200_149.170-000.023_0.1392_0107.66.fits");
        let message = header_error(&config(&image, &[]));
        assert!(message.starts_with("no table extension"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken.fits");
        std::fs::write(&broken, b"SIMPLE  = T truncated").unwrap();
        let message = header_error(&config(&broken, &[]));
        assert!(message.starts_with("not a readable FITS file"), "{message}");
    }

    #[test]
    fn long_and_gzipped_tables_are_read_in_blocks_in_order() {
        use std::io::Write;
        let rows = super::BLOCK * 2 + 7;
        let ids: Vec<String> = (0..rows).map(|i| format!("src{i}")).collect();
        let ras: Vec<f64> = (0..rows).map(|i| i as f64 / 100.0).collect();
        let (dir, path) = table(&[
            ("name", "", Data::Text(ids)),
            ("RA", "deg", Data::Real(ras)),
            ("DEC", "deg", Data::Real(vec![-45.0; rows])),
        ]);
        // One name that is not UTF-8, in the second block: that row alone is rejected.
        let bad = super::BLOCK + 3;
        let mut bytes = std::fs::read(&path).unwrap();
        let name = format!("src{bad}");
        let at = bytes
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .unwrap();
        bytes[at + 1] = 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let gzipped = dir.path().join("cat.fits.gz");
        let mut encoder = flate2::write::GzEncoder::new(
            std::fs::File::create(&gzipped).unwrap(),
            flate2::Compression::fast(),
        );
        encoder.write_all(&std::fs::read(&path).unwrap()).unwrap();
        encoder.finish().unwrap();
        for path in [&path, &gzipped] {
            let got = items_with(path, &[]);
            assert_eq!(got.len(), rows);
            for (i, item) in got.iter().enumerate() {
                let origin = Origin::Input(format!("{}:{}", path.display(), i + 1));
                if i == bad {
                    let r = item.as_ref().unwrap_err();
                    assert_eq!((r.reason, &r.origin), (RejectReason::Undecodable, &origin));
                    assert!(
                        r.detail.starts_with("unreadable catalogue row"),
                        "{}",
                        r.detail
                    );
                    continue;
                }
                let det = item.as_ref().unwrap();
                assert_eq!(det.message.source_id, format!("src{i}"));
                assert_eq!(det.message.ra_deg, i as f64 / 100.0);
                assert_eq!(det.origin, origin);
            }
        }
    }
}
