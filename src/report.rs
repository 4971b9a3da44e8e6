//! Reports for people, built from a finished run's results file: the table of predictions
//! beside known classes that `radiogate classify --truth` prints.
//!
//! It reads results the sink wrote; it never runs or changes the pipeline.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::sink::record::{LabelName, Record};
use crate::sink::{self, SinkError};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("results: {0}")]
    Results(#[from] SinkError),
    #[error("truth table {}: {source}", path.display())]
    Truth {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("truth table {}: {message}", path.display())]
    TruthContent { path: PathBuf, message: String },
}

/// A text table of every result in `results` (JSON Lines) beside its true class from
/// `truth` (CSV with `source_id` and `class` columns), with the accuracy over the sources
/// that have both.
pub fn truth_table(results: &Path, truth: &Path) -> Result<String, ReportError> {
    let classes = read_truth(truth)?;
    let records = sink::read_jsonl(results)?;
    let mut out = String::new();
    let width = records
        .iter()
        .map(|r| source_id(r).len())
        .max()
        .unwrap_or(9)
        .max(9);
    let _ = writeln!(
        out,
        "{:<width$}  {:<5}  {:<9}  {:>7}  {:>10}  ",
        "source_id", "true", "predicted", "P(FRII)", "confidence"
    );
    let (mut known, mut right) = (0usize, 0usize);
    for record in &records {
        let id = source_id(record);
        let truth = classes.get(id).map(String::as_str).unwrap_or("?");
        match record {
            Record::Classification(c) => {
                let predicted = match c.label {
                    LabelName::Fri => "FRI",
                    LabelName::Frii => "FRII",
                    LabelName::Unspecified => "?",
                };
                let mark = match truth {
                    "?" => "",
                    t if t == predicted => {
                        known += 1;
                        right += 1;
                        "ok"
                    }
                    _ => {
                        known += 1;
                        "WRONG"
                    }
                };
                let _ = writeln!(
                    out,
                    "{id:<width$}  {truth:<5}  {predicted:<9}  {:>7.3}  {:>10.3}  {mark}",
                    c.probabilities.frii, c.confidence
                );
            }
            Record::Rejection(r) => {
                let _ = writeln!(
                    out,
                    "{id:<width$}  {truth:<5}  rejected: {} ({})",
                    r.reason, r.detail
                );
            }
        }
    }
    if known > 0 {
        let _ = writeln!(
            out,
            "{right} of {known} correct ({:.1}%)",
            100.0 * right as f64 / known as f64
        );
    }
    Ok(out)
}

fn source_id(record: &Record) -> &str {
    match record {
        Record::Classification(c) => &c.source_id,
        Record::Rejection(r) => r.source_id.as_deref().unwrap_or("-"),
    }
}

/// The classes of a truth table (CSV with `source_id` and `class` columns), by source id;
/// `classify --truth` reads it once before the run too, so that a bad table stops it at start.
pub fn read_truth(path: &Path) -> Result<HashMap<String, String>, ReportError> {
    let csv_error = |source| ReportError::Truth {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_error)?;
    let headers = reader.headers().map_err(csv_error)?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ReportError::TruthContent {
                path: path.to_path_buf(),
                message: format!("no `{name}` column"),
            })
    };
    let (id_col, class_col) = (column("source_id")?, column("class")?);
    let mut classes = HashMap::new();
    for row in reader.records() {
        let row = row.map_err(csv_error)?;
        if let (Some(id), Some(class)) = (row.get(id_col), row.get(class_col)) {
            classes.insert(id.to_string(), class.to_string());
        }
    }
    Ok(classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_right_and_wrong_predictions_and_counts_accuracy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let results = dir.path().join("r.jsonl");
        let line = |id: &str, label: &str, frii: f32| {
            format!(
                r#"{{"kind":"classification","source_id":"{id}","survey":"FIRST","label":"{label}","probabilities":{{"FRI":{},"FRII":{frii}}},"confidence":0.9,"entropy":0.1,"ra":1.0,"dec":2.0,"attention":null,"model":null,"cutout":null,"timings_us":null}}"#,
                1.0 - frii
            )
        };
        let rejection = r#"{"kind":"rejection","source_id":"c","reason":"bad_fits","detail":"truncated","input":"c.fits"}"#;
        std::fs::write(
            &results,
            format!(
                "{}\n{}\n{rejection}\n",
                line("a", "FRI", 0.1),
                line("b", "FRI", 0.2)
            ),
        )
        .expect("write");
        let truth = dir.path().join("t.csv");
        std::fs::write(&truth, "source_id,class\na,FRI\nb,FRII\nc,FRII\n").expect("write");
        let table = truth_table(&results, &truth).expect("table");
        assert!(
            table
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("a ") && l.ends_with("ok")),
            "{table}"
        );
        assert!(
            table.lines().nth(2).is_some_and(|l| l.ends_with("WRONG")),
            "{table}"
        );
        assert!(table.contains("rejected: bad_fits (truncated)"), "{table}");
        assert!(table.contains("1 of 2 correct (50.0%)"), "{table}");
    }
}
