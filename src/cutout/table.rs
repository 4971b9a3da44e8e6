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
    pub kind: Kind,
    /// Values a row (for text, its width).
    pub repeat: usize,
    /// `TUNITn`, empty when the column has none.
    pub unit: String,
}

/// One block of a column's values.
pub enum Values {
    Text(Vec<String>),
    Integer(Vec<i64>),
    Real(Vec<f64>),
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
    pub fn open(path: &Path) -> Result<Self, String> {
        let unreadable = |e: fitsio::errors::Error| format!("not a readable FITS file: {e}");
        let mut file = FitsFile::open(path).map_err(unreadable)?;
        for index in 0..file.num_hdus().map_err(unreadable)? {
            let hdu = file
                .hdu(index)
                .map_err(|e| format!("HDU {index} is unreadable: {e}"))?;
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
                .map(|(at, d)| Column {
                    kind: match d.data_type.typ {
                        ColumnDataType::Text | ColumnDataType::String => Kind::Text,
                        ColumnDataType::Float
                        | ColumnDataType::Double
                        | ColumnDataType::UnsignedLongLong => Kind::Real,
                        ColumnDataType::Logical | ColumnDataType::Bit => Kind::Logical,
                        _ => Kind::Integer,
                    },
                    repeat: d.data_type.repeat,
                    unit: hdu
                        .read_key(&mut file, &format!("TUNIT{}", at + 1))
                        .unwrap_or_default(),
                    name: d.name,
                })
                .collect();
            return Ok(Self {
                file: file.threadsafe(),
                hdu,
                columns,
                rows,
            });
        }
        Err("no table extension (a FITS catalogue is a binary table after the primary HDU)".into())
    }

    /// The values of column `column` (an index into `columns`, not logical) in `rows`.
    pub fn read(&self, column: usize, rows: &Range<usize>) -> Result<Values, String> {
        let mut file = self.file.lock().map_err(|e| e.to_string())?;
        let (hdu, file, name) = (&self.hdu, &mut *file, self.columns[column].name.as_str());
        let values = match self.columns[column].kind {
            Kind::Text => hdu.read_col_range(file, name, rows).map(Values::Text),
            Kind::Integer => hdu.read_col_range(file, name, rows).map(Values::Integer),
            Kind::Real => hdu.read_col_range(file, name, rows).map(Values::Real),
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
