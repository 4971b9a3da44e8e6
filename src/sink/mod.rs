//! Sinks: where results leave the worker. [`FileSink`] writes classifications and
//! rejections to a file or to standard output, as JSON Lines (schema in [`record`]), as
//! length-delimited protobuf, or as an ECSV table (`ecsv`).
//!
//! This module owns the output formats and the durability of a file (flush and fsync on
//! [`FileSink::finish`]). It does not decide what a result contains (the summary stage
//! builds `proto::Classification`s; the pipeline builds `proto::Rejection`s), nor when to
//! acknowledge input: the pipeline does that once a write here has returned.

mod ecsv;
pub mod html;
pub mod kafka;
pub mod record;

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::config::{OutputFormat, SinkConfig};
use crate::proto;
use record::Record;

/// Why a sink could not write or a result file could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {target}: {source}")]
    Write {
        /// The file, or "standard output".
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: not a result record: {source}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// The Kafka producer could not be created, a message could not be queued, or the last
    /// ones were not all delivered in time.
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSinkError),
    /// A thread of the sink could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A message could not be sent in the open transaction (`exactly_once`).
    #[error("kafka transaction: {0}")]
    Transaction(String),
    /// Some messages were refused by the broker or expired before delivery (their input,
    /// from a stream, stays uncommitted and is read again after a restart).
    #[error("{failed} of {sent} messages to {topic} were not delivered (the first: {first})")]
    Undelivered {
        topic: String,
        failed: u64,
        sent: u64,
        first: String,
    },
    /// A file sink was asked for with a configuration that names another kind of sink.
    #[error("the configured sink is not a file")]
    NotAFile,
    /// `sink.resume`: the file is not results this run can continue.
    #[error("cannot resume {}: {reason}", path.display())]
    Resume { path: PathBuf, reason: String },
    #[error("{}: message {index} does not decode: {source}", path.display())]
    BadMessage {
        path: PathBuf,
        index: usize,
        #[source]
        source: prost::DecodeError,
    },
}

/// Records written so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    pub classifications: u64,
    pub rejections: u64,
}

/// What a results file held when a run resumed it (`sink.resume`): whole records in input
/// order, which the run skips in its input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resumed {
    /// Whole records kept.
    pub records: u64,
    /// The source id of the last record kept (None: a rejection that has none).
    pub last_source_id: Option<String>,
    /// The model (sha256, test-time views) of the first classification kept.
    pub model: Option<(String, u32)>,
    /// Bytes of an unfinished last record that were cut off.
    pub cut_bytes: u64,
}

/// What reading a results file back for [`Resumed`] found in its whole lines.
#[derive(Debug, Default)]
struct Scan {
    records: u64,
    /// Bytes of the whole records (and the header before them).
    kept: u64,
    last_source_id: Option<String>,
    model: Option<(String, u32)>,
}

/// A buffered output and the name it is reported by.
struct Output {
    writer: BufWriter<Box<dyn Write + Send>>,
    /// The file to fsync on finish; None for standard output.
    file: Option<File>,
    target: String,
}

impl Output {
    fn stdout() -> Self {
        Self {
            writer: BufWriter::new(Box::new(std::io::stdout())),
            file: None,
            target: "standard output".into(),
        }
    }

    fn create(path: &Path) -> Result<Self, SinkError> {
        let create_error = |source| SinkError::Create {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(create_error)?;
        }
        let file = File::create(path).map_err(create_error)?;
        // A second handle on the same open file, kept to fsync after the buffer is flushed.
        let sync_handle = file.try_clone().map_err(create_error)?;
        Ok(Self {
            writer: BufWriter::new(Box::new(file)),
            file: Some(sync_handle),
            target: path.display().to_string(),
        })
    }

    /// Opens `path` to write after the whole records it holds, which `scan` finds in its
    /// whole lines; the rest (an unfinished record) is cut off. None when there is nothing
    /// to resume: no file, or an empty one.
    fn resume(
        path: &Path,
        scan: impl FnOnce(&mut dyn BufRead) -> Result<Scan, String>,
    ) -> Result<Option<(Self, Resumed)>, SinkError> {
        let io_error = |source: std::io::Error| SinkError::Resume {
            path: path.to_path_buf(),
            reason: source.to_string(),
        };
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        let len = file.metadata().map_err(io_error)?.len();
        if len == 0 {
            return Ok(None);
        }
        let whole_lines = end_of_last_line(&mut file, len).map_err(io_error)?;
        file.rewind().map_err(io_error)?;
        let mut reader = BufReader::with_capacity(1 << 20, (&file).take(whole_lines));
        let scan = scan(&mut reader).map_err(|reason| SinkError::Resume {
            path: path.to_path_buf(),
            reason,
        })?;
        file.set_len(scan.kept).map_err(io_error)?;
        file.seek(SeekFrom::End(0)).map_err(io_error)?;
        let sync_handle = file.try_clone().map_err(io_error)?;
        let output = Self {
            writer: BufWriter::new(Box::new(file)),
            file: Some(sync_handle),
            target: path.display().to_string(),
        };
        let resumed = Resumed {
            records: scan.records,
            last_source_id: scan.last_source_id,
            model: scan.model,
            cut_bytes: len - scan.kept,
        };
        Ok(Some((output, resumed)))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.writer
            .write_all(bytes)
            .map_err(|source| self.error(source))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.writer.flush().map_err(|source| self.error(source))
    }

    fn finish(mut self) -> Result<(), SinkError> {
        self.flush()?;
        if let Some(file) = &self.file {
            file.sync_all().map_err(|source| self.error(source))?;
        }
        Ok(())
    }

    fn error(&self, source: std::io::Error) -> SinkError {
        SinkError::Write {
            target: self.target.clone(),
            source,
        }
    }
}

/// Writes results to a file or standard output.
///
/// JSON Lines: classifications and rejections interleaved in the order written, one object
/// per line. ECSV: a header, then a row per classification or rejection. Protobuf:
/// length-delimited `Classification`s to the path and length-delimited `Rejection`s to
/// `<path>.rejections` (configuration refuses protobuf on standard output, which would have
/// nowhere to put rejections).
///
/// Writes are buffered: call [`FileSink::flush`] to push them out (e.g. on a timer in a
/// long run) and [`FileSink::finish`] at the end, which also fsyncs files.
pub struct FileSink {
    format: OutputFormat,
    /// Classifications, and in JSON Lines rejections too.
    results: Output,
    /// Protobuf rejections.
    rejections: Option<Output>,
    counts: SinkCounts,
    /// What the file held before this run, when it resumed one.
    resumed: Option<Resumed>,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("format", &self.format)
            .field("target", &self.results.target)
            .field("counts", &self.counts)
            .finish()
    }
}

/// The protobuf rejections file beside `path`: `<path>.rejections`.
pub fn rejections_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".rejections");
    PathBuf::from(name)
}

impl FileSink {
    /// Creates (truncating) the output files that `config` names; with `resume`, keeps the
    /// whole records the file holds instead and writes after them.
    pub fn create(config: &SinkConfig) -> Result<Self, SinkError> {
        let SinkConfig::File {
            path,
            format,
            resume,
        } = config
        else {
            return Err(SinkError::NotAFile);
        };
        let resumed = match (path, resume) {
            (Some(path), true) => Output::resume(path, |reader| match format {
                OutputFormat::Jsonl => scan_jsonl(reader),
                OutputFormat::Ecsv => ecsv::scan(reader),
                // The configuration refuses it: its rejections are in a file of their own.
                OutputFormat::Protobuf => Err("protobuf results cannot be resumed".into()),
            })?,
            _ => None,
        };
        let (mut results, resumed) = match (resumed, path) {
            (Some((output, resumed)), _) => (output, Some(resumed)),
            (None, Some(path)) => (Output::create(path)?, None),
            (None, None) => (Output::stdout(), None),
        };
        if *format == OutputFormat::Ecsv && resumed.is_none() {
            results.write(ecsv::header().as_bytes())?;
        }
        let rejections = match (format, path) {
            (OutputFormat::Protobuf, Some(path)) => Some(Output::create(&rejections_path(path))?),
            _ => None,
        };
        Ok(Self {
            format: *format,
            results,
            rejections,
            counts: SinkCounts::default(),
            resumed,
            scratch: Vec::with_capacity(4096),
        })
    }

    /// What the file held before this run, when it resumed one that had written something.
    pub fn resumed(&self) -> Option<&Resumed> {
        self.resumed.as_ref()
    }

    /// Writes one classification.
    pub fn write_classification(&mut self, c: &proto::Classification) -> Result<(), SinkError> {
        self.scratch.clear();
        match self.format {
            OutputFormat::Jsonl => json_line(&Record::from(c), &mut self.scratch),
            OutputFormat::Ecsv => ecsv::classification(c, &mut self.scratch),
            OutputFormat::Protobuf => c
                .encode_length_delimited(&mut self.scratch)
                .expect("encoding into a Vec cannot run out of room: Vec grows as prost writes"),
        }
        self.results.write(&self.scratch)?;
        self.counts.classifications += 1;
        Ok(())
    }

    /// Writes one rejection.
    pub fn write_rejection(&mut self, r: &proto::Rejection) -> Result<(), SinkError> {
        self.scratch.clear();
        let output = match (&self.format, self.rejections.as_mut()) {
            (OutputFormat::Protobuf, Some(output)) => {
                r.encode_length_delimited(&mut self.scratch).expect(
                    "encoding into a Vec cannot run out of room: Vec grows as prost writes",
                );
                output
            }
            (OutputFormat::Ecsv, _) => {
                ecsv::rejection(r, &mut self.scratch);
                &mut self.results
            }
            _ => {
                json_line(&Record::from(r), &mut self.scratch);
                &mut self.results
            }
        };
        output.write(&self.scratch)?;
        self.counts.rejections += 1;
        Ok(())
    }

    /// Pushes buffered records to the file or terminal (no fsync).
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.results.flush()?;
        if let Some(rejections) = &mut self.rejections {
            rejections.flush()?;
        }
        Ok(())
    }

    /// Records written so far.
    pub fn counts(&self) -> SinkCounts {
        self.counts
    }

    /// Flushes, fsyncs files, and returns what was written.
    pub fn finish(self) -> Result<SinkCounts, SinkError> {
        self.results.finish()?;
        if let Some(rejections) = self.rejections {
            rejections.finish()?;
        }
        Ok(self.counts)
    }
}

/// The length of `file` up to its last newline (0 when it has none).
fn end_of_last_line(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The whole records of a JSON Lines results file: every non-blank line a record (told by
/// its start, as [`json_line`] writes it), the first classification's model and the last
/// record's source id read from their JSON.
fn scan_jsonl(reader: &mut dyn BufRead) -> Result<Scan, String> {
    let mut scan = Scan::default();
    let (mut line, mut last) = (Vec::new(), Vec::new());
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        number += 1;
        scan.kept += n as u64;
        if line.trim_ascii().is_empty() {
            continue;
        }
        if !line.starts_with(b"{\"kind\":\"") {
            return Err(format!("line {number} is not a result record"));
        }
        scan.records += 1;
        if scan.model.is_none() && line.starts_with(b"{\"kind\":\"classification\"") {
            if let Ok(Record::Classification(c)) = serde_json::from_slice(&line) {
                scan.model = c.model.map(|m| (m.sha256, m.views));
            }
        }
        std::mem::swap(&mut line, &mut last);
    }
    if scan.records > 0 {
        scan.last_source_id = match serde_json::from_slice(&last) {
            Ok(Record::Classification(c)) => Some(c.source_id),
            Ok(Record::Rejection(r)) => r.source_id,
            Err(e) => return Err(format!("its last record does not read back: {e}")),
        };
    }
    Ok(scan)
}

/// Appends `record` as one JSON line.
fn json_line(record: &Record, buf: &mut Vec<u8>) {
    serde_json::to_writer(&mut *buf, record)
        .expect("a Record serialises infallibly: string keys only, and Vec<u8> writes cannot fail");
    buf.push(b'\n');
}

/// Reads a JSON Lines result file back (blank lines skipped).
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>, SinkError> {
    let read_error = |source| SinkError::Read {
        path: path.to_path_buf(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(read_error)?);
    let mut records = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(read_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|source| SinkError::BadLine {
            path: path.to_path_buf(),
            line: index + 1,
            source,
        })?;
        records.push(record);
    }
    Ok(records)
}

/// Reads a file of length-delimited protobuf messages back (results or rejections).
pub fn read_length_delimited<M: Message + Default>(path: &Path) -> Result<Vec<M>, SinkError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| SinkError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let mut buf = bytes.as_slice();
    let mut messages = Vec::new();
    while !buf.is_empty() {
        let message =
            M::decode_length_delimited(&mut buf).map_err(|source| SinkError::BadMessage {
                path: path.to_path_buf(),
                index: messages.len() + 1,
                source,
            })?;
        messages.push(message);
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::record::tests::{full_classification, full_rejection};
    use super::*;
    use crate::proto::Label;

    fn sink_at(dir: &Path, name: &str, format: OutputFormat) -> (FileSink, PathBuf) {
        let path = dir.join(name);
        let sink = FileSink::create(&SinkConfig::File {
            path: Some(path.clone()),
            format,
            resume: false,
        })
        .unwrap();
        (sink, path)
    }

    /// Three classifications and two rejections, interleaved.
    fn write_some(sink: &mut FileSink) -> (Vec<proto::Classification>, Vec<proto::Rejection>) {
        let mut classifications = Vec::new();
        let mut rejections = Vec::new();
        for i in 0..3 {
            let mut c = full_classification();
            c.source_id = format!("src-{i}");
            if i == 1 {
                c.label = Label::Fri.into();
                c.stream = None;
            }
            sink.write_classification(&c).unwrap();
            classifications.push(c);
            if i < 2 {
                let mut r = full_rejection();
                r.source_id = format!("bad-{i}");
                sink.write_rejection(&r).unwrap();
                rejections.push(r);
            }
        }
        (classifications, rejections)
    }

    #[test]
    fn jsonl_round_trips_in_write_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, path) = sink_at(dir.path(), "out.jsonl", OutputFormat::Jsonl);
        let (classifications, rejections) = write_some(&mut sink);
        assert_eq!(
            sink.finish().unwrap(),
            SinkCounts {
                classifications: 3,
                rejections: 2
            }
        );

        let records = read_jsonl(&path).unwrap();
        let kinds: Vec<&str> = records
            .iter()
            .map(|r| match r {
                Record::Classification(_) => "c",
                Record::Rejection(_) => "r",
            })
            .collect();
        assert_eq!(kinds, ["c", "r", "c", "r", "c"]);
        let mut back_c = Vec::new();
        let mut back_r = Vec::new();
        for record in records {
            match record {
                Record::Classification(c) => {
                    back_c.push(proto::Classification::try_from(c).unwrap())
                }
                Record::Rejection(r) => back_r.push(proto::Rejection::try_from(r).unwrap()),
            }
        }
        assert_eq!(back_c, classifications);
        assert_eq!(back_r, rejections);
        assert!(
            !rejections_path(&path).exists(),
            "JSON Lines keeps rejections inline"
        );
    }

    #[test]
    fn jsonl_lines_are_standalone_objects_that_jq_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, path) = sink_at(dir.path(), "out.jsonl", OutputFormat::Jsonl);
        write_some(&mut sink);
        sink.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 5);
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(value.is_object() && value["kind"].is_string(), "{line}");
        }
        // jq itself, where installed (it is on the development machines).
        let jq = Command::new("jq")
            .args(["-r", r#"select(.kind == "classification") | "\(.source_id) \(.label) \(.probabilities.FRII)""#])
            .arg(&path)
            .stdout(Stdio::piped())
            .output();
        match jq {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let printed = String::from_utf8(out.stdout).unwrap();
                assert_eq!(
                    printed,
                    "src-0 FRII 0.9688\nsrc-1 FRI 0.9688\nsrc-2 FRII 0.9688\n"
                );
            }
            Err(e) => eprintln!("jq not run ({e}); lines checked with serde_json only"),
        }
    }

    #[test]
    fn protobuf_round_trips_with_rejections_beside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, path) = sink_at(dir.path(), "out.pb", OutputFormat::Protobuf);
        let (classifications, rejections) = write_some(&mut sink);
        sink.finish().unwrap();
        let back: Vec<proto::Classification> = read_length_delimited(&path).unwrap();
        assert_eq!(back, classifications);
        let rejections_file = dir.path().join("out.pb.rejections");
        let back: Vec<proto::Rejection> = read_length_delimited(&rejections_file).unwrap();
        assert_eq!(back, rejections);
    }

    #[test]
    fn a_sink_without_records_leaves_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, path) = sink_at(dir.path(), "empty.pb", OutputFormat::Protobuf);
        assert_eq!(sink.finish().unwrap(), SinkCounts::default());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert!(
            read_length_delimited::<proto::Rejection>(&rejections_path(&path))
                .unwrap()
                .is_empty()
        );
    }

    fn resume_at(path: &Path, format: OutputFormat) -> Result<FileSink, SinkError> {
        FileSink::create(&SinkConfig::File {
            path: Some(path.to_path_buf()),
            format,
            resume: true,
        })
    }

    #[test]
    fn resuming_keeps_whole_records_and_cuts_an_unfinished_one() {
        for (format, name) in [
            (OutputFormat::Jsonl, "out.jsonl"),
            (OutputFormat::Ecsv, "out.ecsv"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut sink, path) = sink_at(dir.path(), name, format);
            write_some(&mut sink);
            sink.finish().unwrap();
            let whole = std::fs::read(&path).unwrap();
            let unfinished = b"{\"kind\":\"classification\",\"sou";
            let mut killed = whole.clone();
            killed.extend_from_slice(unfinished);
            std::fs::write(&path, &killed).unwrap();

            let mut sink = resume_at(&path, format).unwrap();
            let resumed = sink.resumed().unwrap().clone();
            assert_eq!(resumed.records, 5, "{name}");
            assert_eq!(resumed.last_source_id.as_deref(), Some("src-2"), "{name}");
            let sha = full_classification().model.unwrap().sha256;
            assert_eq!(resumed.model, Some((sha, 1)), "{name}");
            assert_eq!(resumed.cut_bytes, unfinished.len() as u64, "{name}");
            let mut c = full_classification();
            c.source_id = "src-3".into();
            sink.write_classification(&c).unwrap();
            sink.finish().unwrap();
            let mut after = std::fs::read(&path).unwrap();
            assert_eq!(&after[..whole.len()], &whole[..], "{name}: kept as it was");
            after.drain(..whole.len());
            let mut one = Vec::new();
            match format {
                OutputFormat::Ecsv => ecsv::classification(&c, &mut one),
                _ => json_line(&Record::from(&c), &mut one),
            }
            assert_eq!(
                after, one,
                "{name}: the new record after them, no second header"
            );
        }
    }

    #[test]
    fn resuming_nothing_starts_afresh_and_resuming_something_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.ecsv");
        let sink = resume_at(&path, OutputFormat::Ecsv).unwrap();
        assert!(sink.resumed().is_none());
        sink.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), ecsv::header());

        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "{\"kind\":\"rejection\"}\nsome notes\n").unwrap();
        let err = resume_at(&path, OutputFormat::Jsonl).unwrap_err();
        assert!(
            err.to_string().contains("line 2 is not a result record"),
            "{err}"
        );
        let err = resume_at(&path, OutputFormat::Ecsv).unwrap_err();
        assert!(err.to_string().contains("columns"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"kind\":\"rejection\"}\nsome notes\n",
            "a file that is not results is left alone"
        );
    }

    #[test]
    fn output_folders_are_created_and_an_impossible_path_is_a_create_error() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/out.jsonl");
        let config = SinkConfig::File {
            path: Some(nested.clone()),
            format: OutputFormat::Jsonl,
            resume: false,
        };
        FileSink::create(&config).unwrap().finish().unwrap();
        assert!(nested.exists());
        // A folder where a file must be: the path cannot be created.
        let config = SinkConfig::File {
            path: Some(nested.join("out.jsonl")),
            format: OutputFormat::Jsonl,
            resume: false,
        };
        assert!(matches!(
            FileSink::create(&config),
            Err(SinkError::Create { .. })
        ));
    }

    #[test]
    fn reading_back_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "{\"kind\":\"rejection\",\"source_id\":null,\"reason\":\"bad_fits\",\"detail\":\"\",\"input\":\"\"}\n\nnot json\n").unwrap();
        match read_jsonl(&path) {
            Err(SinkError::BadLine { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected BadLine, got {other:?}"),
        }
    }
}
