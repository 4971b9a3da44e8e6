//! A CSV catalogue: a header row naming the columns, then a detection per row. A plain CSV
//! file declares no units: values are in the fields' own. An ECSV file (astropy's Enhanced
//! CSV, APE 6: what `Table.write("x.ecsv")` writes) declares each column's unit in its
//! commented YAML header, and values are converted from it as a FITS table's are.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use crate::domain::{Detection, Rejected};
use crate::proto::RejectReason;

use super::{Columns, Context, FIELDS, Field, Row};
use crate::source::Detections;

/// Reads rows lazily; stops after an I/O error, since the reader cannot resynchronise.
struct CsvRows {
    reader: csv::Reader<Lines<File>>,
    columns: Columns,
    /// Each field's factor from its column's unit (1 in a plain CSV file), by `Field as usize`.
    scales: [f64; FIELDS.len()],
    context: Context,
    record: csv::StringRecord,
    done: bool,
}

/// Reads the header and finds the fields' columns; an error is the header's problem.
pub(super) fn open(
    mut file: File,
    context: Context,
    overrides: &BTreeMap<String, String>,
) -> Result<Detections, String> {
    let ecsv = ecsv_header(&mut file)?;
    let mut builder = csv::ReaderBuilder::new();
    builder.flexible(true);
    if let Some(header) = &ecsv {
        builder.comment(Some(b'#')).delimiter(header.delimiter);
    }
    let space_runs = ecsv.as_ref().is_some_and(|header| header.delimiter == b' ');
    let mut reader = builder.from_reader(Lines::new(file, space_runs));
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(str::to_string)
        .collect();
    let format = match ecsv {
        Some(_) => super::Format::Units,
        None => super::Format::Csv,
    };
    let columns = Columns::resolve(&names, overrides, format)?;
    let mut scales = [1.0; FIELDS.len()];
    if let Some(header) = &ecsv {
        for field in Field::ALL {
            if let Some(index) = columns.get(field) {
                let name = &names[index];
                let unit = header.units.get(name).map_or("", String::as_str);
                scales[field as usize] = super::unit_scale(field.quantity(), unit)
                    .map_err(|e| format!("column {name:?} ({}): {e}", field.name()))?;
            }
        }
    }
    Ok(Box::new(CsvRows {
        reader,
        columns,
        scales,
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
                    scales: &self.scales,
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
    scales: &'a [f64; FIELDS.len()],
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
        self.cell(field).map_or(Ok(None), |text| {
            super::parse_number(text, field, self.scales[field as usize])
        })
    }
}

/// The catalogue's lines as the CSV reader is given them: a line's `\r\n` ends as `\n` (the
/// csv crate numbers the lines after a `\r\n` one too few: BurntSushi/rust-csv#395, and
/// rejections name their line), and with `space_runs` (a space-delimited ECSV body) as
/// astropy reads it (Python's csv with `skipinitialspace`, on stripped lines): outside
/// quotes, a run of spaces is one delimiter and spaces at the start or end of a line are
/// none, so that columns aligned by hand or by another writer read right. Quoted text (an
/// empty `""` cell too) is kept, but for a `\r\n` inside quotes, which becomes `\n`.
struct Lines<R> {
    inner: BufReader<R>,
    space_runs: bool,
    line: Vec<u8>,
    out: Vec<u8>,
    at: usize,
    /// Inside a quoted field (which may go on past a line's end).
    quoted: bool,
}

impl<R: Read> Lines<R> {
    fn new(inner: R, space_runs: bool) -> Self {
        Self {
            inner: BufReader::new(inner),
            space_runs,
            line: Vec::new(),
            out: Vec::new(),
            at: 0,
            quoted: false,
        }
    }

    /// The next line of `inner` into `out`; false at the end.
    fn next_line(&mut self) -> std::io::Result<bool> {
        self.line.clear();
        self.out.clear();
        self.at = 0;
        if self.inner.read_until(b'\n', &mut self.line)? == 0 {
            return Ok(false);
        }
        if self.line.ends_with(b"\r\n") {
            self.line.truncate(self.line.len() - 2);
            self.line.push(b'\n');
        }
        let body = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        // Nothing to collapse (the common case: astropy's single spaces) when no two spaces
        // meet and none starts or ends a line outside quotes: the line as it is, its quotes
        // counted for the next.
        let plain = !self.space_runs
            || (!self.quoted
                && body.first() != Some(&b' ')
                && body.last() != Some(&b' ')
                && memchr::memmem::find(body, b"  ").is_none());
        if plain {
            if self.space_runs {
                self.quoted = memchr::memchr_iter(b'"', body).count() % 2 == 1;
            }
            std::mem::swap(&mut self.line, &mut self.out);
            return Ok(true);
        }
        // A space is written only when something other than spaces follows on the line.
        let mut space = false;
        for &b in &self.line {
            if !self.quoted {
                match b {
                    b' ' => {
                        space = !self.out.is_empty();
                        continue;
                    }
                    b'\n' => space = false,
                    _ => {}
                }
            }
            if std::mem::take(&mut space) {
                self.out.push(b' ');
            }
            if b == b'"' {
                self.quoted = !self.quoted;
            }
            self.out.push(b);
        }
        Ok(true)
    }
}

impl<R: Read> Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.out.len() {
            if !self.next_line()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What an ECSV header declares that reading the rows needs.
#[derive(Debug)]
struct EcsvHeader {
    delimiter: u8,
    /// Each column's unit, by name (absent: none given).
    units: BTreeMap<String, String>,
}

/// The ECSV header at the start of `file`, when it starts with one (`# %ECSV`, after a
/// UTF-8 byte order mark if there is one); the file is left at its start (after the mark),
/// where the CSV reader skips the header's comment lines.
fn ecsv_header(file: &mut File) -> Result<Option<EcsvHeader>, String> {
    let mut mark = Vec::with_capacity(3);
    (&mut *file)
        .take(3)
        .read_to_end(&mut mark)
        .map_err(|e| e.to_string())?;
    let start = if mark == b"\xef\xbb\xbf" { 3 } else { 0 };
    file.seek(SeekFrom::Start(start))
        .map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    for line in BufReader::new(&mut *file).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        if lines.is_empty() && !comment.trim_start().starts_with("%ECSV") {
            break;
        }
        lines.push(comment.strip_prefix(' ').unwrap_or(comment).to_string());
    }
    file.seek(SeekFrom::Start(start))
        .map_err(|e| e.to_string())?;
    if lines.is_empty() {
        return Ok(None);
    }
    let yaml = lines[1..].join("\n");
    let bad = |why: String| format!("ECSV header: {why}");
    let docs = yaml_rust2::YamlLoader::load_from_str(&yaml).map_err(|e| bad(e.to_string()))?;
    let doc = docs
        .first()
        .ok_or_else(|| bad("no YAML after the first line".into()))?;
    let delimiter = match doc["delimiter"].as_str() {
        None | Some(" ") => b' ',
        Some(",") => b',',
        Some(other) => return Err(bad(format!("delimiter {other:?}, not a space or a comma"))),
    };
    let columns = doc["datatype"]
        .as_vec()
        .ok_or_else(|| bad("no datatype list".into()))?;
    let mut units = BTreeMap::new();
    for column in columns {
        let name = column["name"]
            .as_str()
            .ok_or_else(|| bad("a datatype entry without a name".into()))?;
        if let Some(unit) = column["unit"].as_str() {
            units.insert(name.to_string(), unit.to_string());
        }
    }
    Ok(Some(EcsvHeader { delimiter, units }))
}
