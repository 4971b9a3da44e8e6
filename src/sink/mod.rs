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
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
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
    /// The Kafka producer could not be created, or a message could not be queued or
    /// delivered in time.
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
    /// Some messages were refused by the broker or expired before delivery.
    #[error("{failed} of {sent} messages to {topic} were not delivered")]
    Undelivered {
        topic: String,
        failed: u64,
        sent: u64,
    },
    /// A file sink was asked for with a configuration that names another kind of sink.
    #[error("the configured sink is not a file")]
    NotAFile,
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
/// per line. ECSV: a header, then a row per classification or rejection. Protobuf: length-delimited `Classification`s to the path and length-delimited
/// `Rejection`s to `<path>.rejections` (configuration refuses protobuf on standard output,
/// which would have nowhere to put rejections).
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
    /// Creates (truncating) the output files that `config` names.
    pub fn create(config: &SinkConfig) -> Result<Self, SinkError> {
        let SinkConfig::File { path, format } = config else {
            return Err(SinkError::NotAFile);
        };
        let mut results = match path {
            Some(path) => Output::create(path)?,
            None => Output::stdout(),
        };
        if *format == OutputFormat::Ecsv {
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
            scratch: Vec::with_capacity(4096),
        })
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

    #[test]
    fn output_folders_are_created_and_an_impossible_path_is_a_create_error() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/out.jsonl");
        let config = SinkConfig::File {
            path: Some(nested.clone()),
            format: OutputFormat::Jsonl,
        };
        FileSink::create(&config).unwrap().finish().unwrap();
        assert!(nested.exists());
        // A folder where a file must be: the path cannot be created.
        let config = SinkConfig::File {
            path: Some(nested.join("out.jsonl")),
            format: OutputFormat::Jsonl,
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
