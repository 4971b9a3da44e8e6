//! A CSV catalogue: a header row naming the columns, then a detection per row. It declares
//! no units: values are in the fields' own.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;

use crate::domain::{Detection, Rejected};
use crate::proto::RejectReason;

use super::{Columns, Context, Field, Row};
use crate::source::Detections;

/// Reads rows lazily; stops after an I/O error, since the reader cannot resynchronise.
struct CsvRows {
    reader: csv::Reader<File>,
    columns: Columns,
    context: Context,
    record: csv::StringRecord,
    done: bool,
}

/// Reads the header and finds the fields' columns; an error is the header's problem.
pub(super) fn open(
    file: File,
    context: Context,
    overrides: &BTreeMap<String, String>,
) -> Result<Detections, String> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(str::to_string)
        .collect();
    let columns = Columns::resolve(&names, overrides, super::Format::Csv)?;
    Ok(Box::new(CsvRows {
        reader,
        columns,
        context,
        record: csv::StringRecord::new(),
        done: false,
    }))
}

impl Iterator for CsvRows {
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
                let row = CsvRow {
                    record: &self.record,
                    columns: &self.columns,
                };
                Some(self.context.item(&row, self.context.origin(line)))
            }
            Err(err) => {
                let line = err.position().map_or(0, csv::Position::line);
                let reason = match err.kind() {
                    csv::ErrorKind::Io(_) => {
                        self.done = true;
                        RejectReason::Unspecified
                    }
                    _ => RejectReason::Undecodable,
                };
                let origin = self.context.origin(line);
                Some(Err(super::unreadable(origin, reason, err.to_string())))
            }
        }
    }
}

struct CsvRow<'a> {
    record: &'a csv::StringRecord,
    columns: &'a Columns,
}

impl CsvRow<'_> {
    fn cell(&self, field: Field) -> Option<&str> {
        self.columns
            .get(field)
            .and_then(|c| self.record.get(c))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

impl Row for CsvRow<'_> {
    fn text(&self, field: Field) -> Option<Cow<'_, str>> {
        self.cell(field).map(Cow::Borrowed)
    }

    fn number(&self, field: Field) -> Result<Option<f64>, String> {
        self.cell(field)
            .map(|text| super::parse_number(text, field, 1.0))
            .transpose()
    }
}
