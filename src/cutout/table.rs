//! FITS tables through CFITSIO, for the catalogue source: the first table extension of a
//! file, its columns (name, how their values read, unit), and blocks of a column's values.
//! It lives here so that `fitsio` stays in this folder (a FITS backend is swapped in one
//! place); it knows nothing of catalogue fields or detections, which are the source's.

use std::ops::Range;
use std::path::Path;

use fitsio::FitsFile;
use fitsio::hdu::{FitsHdu, HduInfo};
use fitsio::tables::ColumnDataType;
use fitsio::threadsafe_fitsfile::ThreadsafeFitsFile;

/// How a column's values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Real,
    /// Logical or bit columns, which no catalogue field takes.
    Logical,
}

/// One column of a table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// How its values read: an integer column scaled by `TSCALn`/`TZEROn` reads as real
    /// numbers (a position stored in micro-degrees), any other as its type says.
    pub kind: Kind,
    /// Values a row (for text, its width).
    pub repeat: usize,
    /// `TUNITn`, empty when the column has none.
    pub unit: String,
    /// The column stores integers (whatever it reads as).
    stored_integer: bool,
    /// `TSCALn` and `TZEROn` (1 and 0 when absent): CFITSIO gives stored * scale + zero.
    scale: f64,
    zero: f64,
    /// `TNULLn` of an integer column: the stored value that means "no value".
    null: Option<i64>,
}

impl Column {
    /// Whether a value read from this column is its `TNULLn` (stored, before scaling).
    fn is_null(&self, value: f64) -> bool {
        // The stored integer is recovered by rounding, so that a scaled value one rounding
        // step away from null * scale + zero still compares equal.
        match self.null {
            Some(null) if self.stored_integer && self.scale != 0.0 => {
                ((value - self.zero) / self.scale).round() == null as f64
            }
            _ => false,
        }
    }
}

/// One block of a column's values; None where a cell holds its column's `TNULLn`. (A real
/// column's nulls are NaN, and so are those of an integer column read as real numbers.)
pub enum Values {
    Text(Vec<String>),
    Integer(Vec<Option<i64>>),
    Real(Vec<f64>),
}

/// Why a file's table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// CFITSIO cannot read the file as FITS (or, gzipped, what it holds).
    #[error("not a readable FITS file: {0}")]
    NotFits(#[source] fitsio::errors::Error),
    #[error("HDU {index} is unreadable: {source}")]
    Hdu {
        index: usize,
        #[source]
        source: fitsio::errors::Error,
    },
    #[error("no table extension (a FITS catalogue is a binary table after the primary HDU)")]
    NoTable,
}

/// The first table extension of a FITS file, open for reading.
pub struct Table {
    /// `ThreadsafeFitsFile` because sources move to a blocking thread; only that thread
    /// reads it.
    file: ThreadsafeFitsFile,
    hdu: FitsHdu,
    pub columns: Vec<Column>,
    pub rows: usize,
}

impl Table {
    /// Opens the file's first table extension and describes its columns; an error says
    /// why there is none to read.
    pub fn open(path: &Path) -> Result<Self, TableError> {
        let mut file = FitsFile::open(path).map_err(TableError::NotFits)?;
        for index in 0..file.num_hdus().map_err(TableError::NotFits)? {
            let hdu = file
                .hdu(index)
                .map_err(|source| TableError::Hdu { index, source })?;
            let HduInfo::TableInfo {
                column_descriptions,
                num_rows,
            } = &hdu.info
            else {
                continue;
            };
            let (descriptions, rows) = (column_descriptions.clone(), *num_rows);
            let columns = descriptions
                .into_iter()
                .enumerate()
                .map(|(at, d)| {
                    let n = at + 1;
                    let scale: f64 = hdu.read_key(&mut file, &format!("TSCAL{n}")).unwrap_or(1.0);
                    let zero: f64 = hdu.read_key(&mut file, &format!("TZERO{n}")).unwrap_or(0.0);
                    let null: Option<i64> = hdu.read_key(&mut file, &format!("TNULL{n}")).ok();
                    let kind = match d.data_type.typ {
                        ColumnDataType::Text | ColumnDataType::String => Kind::Text,
                        ColumnDataType::Float
                        | ColumnDataType::Double
                        | ColumnDataType::UnsignedLongLong => Kind::Real,
                        ColumnDataType::Logical | ColumnDataType::Bit => Kind::Logical,
                        _ if scale != 1.0 || zero != 0.0 => Kind::Real,
                        _ => Kind::Integer,
                    };
                    let stored_integer = !matches!(
                        d.data_type.typ,
                        ColumnDataType::Text
                            | ColumnDataType::String
                            | ColumnDataType::Float
                            | ColumnDataType::Double
                            | ColumnDataType::Logical
                            | ColumnDataType::Bit
                    );
                    Column {
                        kind,
                        repeat: d.data_type.repeat,
                        unit: hdu
                            .read_key(&mut file, &format!("TUNIT{n}"))
                            .unwrap_or_default(),
                        name: d.name,
                        stored_integer,
                        scale,
                        zero,
                        null,
                    }
                })
                .collect();
            return Ok(Self {
                file: file.threadsafe(),
                hdu,
                columns,
                rows,
            });
        }
        Err(TableError::NoTable)
    }

    /// The values of column `column` (an index into `columns`, not logical) in `rows`.
    pub fn read(&self, column: usize, rows: &Range<usize>) -> Result<Values, String> {
        let mut file = self.file.lock().map_err(|e| e.to_string())?;
        let column = &self.columns[column];
        let (hdu, file, name) = (&self.hdu, &mut *file, column.name.as_str());
        // CFITSIO applies TSCALn/TZEROn; nulls are found here (fitsio reads without a null
        // value, which turns CFITSIO's null check off).
        let values = match column.kind {
            Kind::Text => hdu.read_col_range(file, name, rows).map(Values::Text),
            Kind::Integer => hdu.read_col_range(file, name, rows).map(|v: Vec<i64>| {
                Values::Integer(
                    v.into_iter()
                        .map(|v| Some(v).filter(|v| Some(*v) != column.null))
                        .collect(),
                )
            }),
            Kind::Real => hdu.read_col_range(file, name, rows).map(|mut v: Vec<f64>| {
                for value in &mut v {
                    if column.is_null(*value) {
                        *value = f64::NAN;
                    }
                }
                Values::Real(v)
            }),
            Kind::Logical => return Err(format!("column {name:?} holds logical values")),
        };
        values.map_err(|e| e.to_string())
    }
}

/// A column of a test table.
#[cfg(test)]
pub(crate) enum TestColumn {
    Text(Vec<String>),
    Integer(Vec<i32>),
    Real(Vec<f64>),
}

/// Writes a FITS file whose first extension is a binary table of `columns` (name, `TUNITn`
/// or "" for none, values).
#[cfg(test)]
pub(crate) fn write_table(path: &Path, columns: &[(&str, &str, TestColumn)]) {
    use fitsio::tables::ColumnDescription;
    let descriptions: Vec<_> = columns
        .iter()
        .map(|(name, _, data)| {
            let mut d = ColumnDescription::new(*name);
            match data {
                TestColumn::Text(v) => d
                    .with_type(ColumnDataType::String)
                    .that_repeats(v.iter().map(String::len).max().unwrap_or(1).max(1)),
                TestColumn::Integer(_) => d.with_type(ColumnDataType::Int),
                TestColumn::Real(_) => d.with_type(ColumnDataType::Double),
            };
            d.create().unwrap()
        })
        .collect();
    let mut file = FitsFile::create(path).open().unwrap();
    let hdu = file.create_table("CATALOG", &descriptions).unwrap();
    for (index, (name, unit, data)) in columns.iter().enumerate() {
        match data {
            TestColumn::Text(v) => hdu.write_col(&mut file, *name, v),
            TestColumn::Integer(v) => hdu.write_col(&mut file, *name, v),
            TestColumn::Real(v) => hdu.write_col(&mut file, *name, v),
        }
        .unwrap();
        if !unit.is_empty() {
            hdu.write_key(&mut file, &format!("TUNIT{}", index + 1), *unit)
                .unwrap();
        }
    }
}

/// Adds `TSCALn`, `TZEROn` and `TNULLn` (those given) to column `n` (1-based) of a table
/// [`write_table`] wrote: its stored values stay, and now read scaled, or as nulls.
#[cfg(test)]
pub(crate) fn write_scaling(
    path: &Path,
    n: usize,
    scale: Option<f64>,
    zero: Option<f64>,
    null: Option<i64>,
) {
    let mut file = FitsFile::edit(path).unwrap();
    let hdu = file.hdu(1).unwrap();
    if let Some(scale) = scale {
        hdu.write_key(&mut file, &format!("TSCAL{n}"), scale)
            .unwrap();
    }
    if let Some(zero) = zero {
        hdu.write_key(&mut file, &format!("TZERO{n}"), zero)
            .unwrap();
    }
    if let Some(null) = null {
        hdu.write_key(&mut file, &format!("TNULL{n}"), null)
            .unwrap();
    }
}
