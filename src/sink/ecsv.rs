//! Results as a table: ECSV (astropy's Enhanced Character Separated Values, APE 6), which
//! astropy (`Table.read`), TOPCAT and any CSV reader open, with each column's type, unit and
//! meaning in its commented YAML header.
//!
//! One row per input, classified or rejected (`status`), so that the table joins one to one
//! with the catalogue it came from and nothing is left out. The attention is summarised by
//! its share on the emission and its strongest peak; the map itself (and the per-gate maps)
//! are only in JSON Lines and protobuf results, which `radiogate explain` reads. An empty cell
//! is a missing value (astropy reads it as masked).
//!
//! The header is written first and each row as it comes, so a run that stops early leaves a
//! table of the rows written so far.

use serde::{Serialize, Serializer};

use crate::domain::{label_name, reason_name};
use crate::proto;

/// A column of the table: its name, ECSV datatype, unit and description, in order.
struct Column {
    name: &'static str,
    datatype: &'static str,
    unit: Option<&'static str>,
    description: &'static str,
}

const fn column(
    name: &'static str,
    datatype: &'static str,
    unit: Option<&'static str>,
    description: &'static str,
) -> Column {
    Column {
        name,
        datatype,
        unit,
        description,
    }
}

/// The columns, in the order of [`Row`]'s fields (a test checks it).
const COLUMNS: [Column; 28] = [
    column("source_id", "string", None, "Source identifier"),
    column(
        "status",
        "string",
        None,
        "classified, or rejected (see reason and detail)",
    ),
    column("survey", "string", None, "Survey the detection came from"),
    column(
        "ra",
        "float64",
        Some("deg"),
        "Right ascension (ICRS) of the source",
    ),
    column(
        "dec",
        "float64",
        Some("deg"),
        "Declination (ICRS) of the source",
    ),
    column("label", "string", None, "Predicted class: FRI or FRII"),
    column("prob_fri", "float32", None, "Probability of FRI"),
    column("prob_frii", "float32", None, "Probability of FRII"),
    column(
        "confidence",
        "float32",
        None,
        "Probability of the predicted class",
    ),
    column(
        "entropy",
        "float32",
        Some("bit"),
        "Shannon entropy of the two probabilities (0 certain, 1 undecided)",
    ),
    column(
        "attention_on_emission",
        "float32",
        None,
        "Share of the combined attention map on pixels above the clipping threshold",
    ),
    column(
        "attention_peak_ra",
        "float64",
        Some("deg"),
        "Right ascension of the strongest attention peak",
    ),
    column(
        "attention_peak_dec",
        "float64",
        Some("deg"),
        "Declination of the strongest attention peak",
    ),
    column(
        "attention_peak_weight",
        "float32",
        None,
        "Share of the combined attention in the strongest peak's cell",
    ),
    column(
        "islands",
        "uint32",
        None,
        "Islands of emission the model saw (at least 10 touching pixels above 3 sigma)",
    ),
    column(
        "las",
        "float32",
        Some("arcsec"),
        "Largest angular size of those islands (model card: the training images' range)",
    ),
    column(
        "truncated",
        "bool",
        None,
        "An island reaches the model image's edge, or where the cutout ran off its image: the source may go on beyond it, las is a lower bound",
    ),
    column(
        "rms",
        "float32",
        None,
        "Sigma-clipped rms of the cutout window, in the image's units (Jy/beam for FIRST)",
    ),
    column(
        "pixel_scale",
        "float32",
        Some("arcsec"),
        "Size of an image pixel at the source",
    ),
    column(
        "resampled",
        "bool",
        None,
        "The window was resampled to the model's pixel size",
    ),
    column(
        "cutout_file",
        "string",
        None,
        "FITS file the pixels were cut from, or inline",
    ),
    column("model", "string", None, "Model name"),
    column(
        "model_sha256",
        "string",
        None,
        "sha256 of the ONNX model file",
    ),
    column(
        "views",
        "uint32",
        None,
        "Test-time views averaged (symmetries of the image)",
    ),
    column(
        "execution_provider",
        "string",
        None,
        "ONNX Runtime execution provider that ran the model",
    ),
    column(
        "reason",
        "string",
        None,
        "Why the input was rejected (a short name)",
    ),
    column(
        "detail",
        "string",
        None,
        "What was wrong with the rejected input",
    ),
    column(
        "input",
        "string",
        None,
        "Where the rejected input came from: file, catalogue row (path:row) or topic/partition@offset",
    ),
];

/// One row; `None` is an empty cell.
#[derive(Serialize, Default)]
struct Row<'a> {
    source_id: Option<&'a str>,
    status: &'static str,
    survey: Option<&'a str>,
    ra: Option<f64>,
    dec: Option<f64>,
    label: Option<&'static str>,
    prob_fri: Option<f32>,
    prob_frii: Option<f32>,
    confidence: Option<f32>,
    entropy: Option<f32>,
    attention_on_emission: Option<f32>,
    attention_peak_ra: Option<f64>,
    attention_peak_dec: Option<f64>,
    attention_peak_weight: Option<f32>,
    islands: Option<u32>,
    las: Option<f32>,
    #[serde(serialize_with = "python_bool")]
    truncated: Option<bool>,
    rms: Option<f32>,
    pixel_scale: Option<f32>,
    #[serde(serialize_with = "python_bool")]
    resampled: Option<bool>,
    cutout_file: Option<&'a str>,
    model: Option<&'a str>,
    model_sha256: Option<&'a str>,
    views: Option<u32>,
    execution_provider: Option<&'a str>,
    reason: Option<&'static str>,
    detail: Option<&'a str>,
    input: Option<&'a str>,
}

/// ECSV spells booleans as Python does.
fn python_bool<S: Serializer>(value: &Option<bool>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(true) => serializer.serialize_str("True"),
        Some(false) => serializer.serialize_str("False"),
        None => serializer.serialize_none(),
    }
}

/// A YAML single-quoted scalar.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The ECSV header: the YAML block (each line commented) and the row of column names.
pub(super) fn header() -> String {
    let mut out = String::from("# %ECSV 1.0\n# ---\n# delimiter: ','\n# datatype:\n");
    for c in &COLUMNS {
        let unit = c.unit.map_or(String::new(), |u| format!(", unit: {u}"));
        out.push_str(&format!(
            "# - {{name: {}, datatype: {}{unit}, description: {}}}\n",
            c.name,
            c.datatype,
            quoted(c.description)
        ));
    }
    out.push_str(&format!(
        "# meta:\n#   creator: {}\n#   description: {}\n",
        quoted(&format!("radiogate {}", env!("CARGO_PKG_VERSION"))),
        quoted("FRI/FRII classifications and rejections, one row per input"),
    ));
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    out.push_str(&names.join(","));
    out.push('\n');
    out
}

/// Appends a classification's row to `buf`.
pub(super) fn classification(c: &proto::Classification, buf: &mut Vec<u8>) {
    let peak = c.attention.as_ref().and_then(|a| a.peaks.first());
    let model = c.model.as_ref();
    let cutout = c.cutout.as_ref();
    write(
        &Row {
            source_id: Some(&c.source_id),
            status: "classified",
            survey: Some(&c.survey),
            ra: Some(c.ra_deg),
            dec: Some(c.dec_deg),
            label: Some(label_name(c.label())),
            prob_fri: Some(c.prob_fri),
            prob_frii: Some(c.prob_frii),
            confidence: Some(c.confidence),
            entropy: Some(c.entropy_bits),
            attention_on_emission: c.attention.as_ref().map(|a| a.on_emission_fraction),
            attention_peak_ra: peak.map(|p| p.ra_deg),
            attention_peak_dec: peak.map(|p| p.dec_deg),
            attention_peak_weight: peak.map(|p| p.weight),
            islands: c.emission.map(|e| e.islands),
            las: c.emission.map(|e| e.largest_angular_size_arcsec),
            truncated: c.emission.map(|e| e.truncated),
            rms: cutout.map(|p| p.rms),
            pixel_scale: cutout.map(|p| p.pixel_scale_arcsec),
            resampled: cutout.map(|p| p.resampled),
            cutout_file: cutout.map(|p| p.file.as_str()),
            model: model.map(|m| m.name.as_str()),
            model_sha256: model.map(|m| m.sha256.as_str()),
            views: model.map(|m| m.views.max(1)),
            execution_provider: model.map(|m| m.execution_provider.as_str()),
            reason: None,
            detail: None,
            input: None,
        },
        buf,
    );
}

/// Appends a rejection's row to `buf`.
pub(super) fn rejection(r: &proto::Rejection, buf: &mut Vec<u8>) {
    write(
        &Row {
            source_id: Some(r.source_id.as_str()).filter(|s| !s.is_empty()),
            status: "rejected",
            reason: Some(reason_name(r.reason())),
            detail: Some(&r.detail),
            input: Some(r.input.as_str()).filter(|i| !i.is_empty()),
            ..Row::default()
        },
        buf,
    );
}

/// The whole rows of an ECSV results file (its header, then rows as [`write`] writes them):
/// the header's column names must be these, and every row but an unfinished last one must
/// have every column and a `status`.
pub(super) fn scan(reader: &mut dyn std::io::BufRead) -> Result<super::Scan, String> {
    let mut csv = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .flexible(true)
        .from_reader(reader);
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    let header = csv.byte_headers().map_err(|e| e.to_string())?;
    if header.iter().ne(names.iter().map(|n| n.as_bytes())) {
        return Err(format!(
            "its columns are not those of radiogate's table ({})",
            names.join(",")
        ));
    }
    let column = |name: &str| names.iter().position(|n| *n == name).unwrap_or(0);
    let (status, sha256, views) = (column("status"), column("model_sha256"), column("views"));
    let mut scan = super::Scan {
        kept: csv.position().byte(),
        ..Default::default()
    };
    let mut record = csv::ByteRecord::new();
    let mut unfinished = None;
    while csv
        .read_byte_record(&mut record)
        .map_err(|e| e.to_string())?
    {
        if let Some(line) = unfinished {
            return Err(format!("the row on line {line} is not a whole result row"));
        }
        let cell = |i: usize| std::str::from_utf8(record.get(i).unwrap_or_default()).ok();
        let whole = record.len() == COLUMNS.len()
            && matches!(cell(status), Some("classified" | "rejected"));
        if !whole {
            unfinished = Some(record.position().map_or(0, csv::Position::line));
            continue;
        }
        scan.records += 1;
        scan.kept = csv.position().byte();
        scan.last_source_id = cell(0).filter(|id| !id.is_empty()).map(str::to_string);
        if scan.model.is_none() && cell(status) == Some("classified") {
            let views = cell(views).and_then(|v| v.parse().ok()).unwrap_or(1);
            scan.model = cell(sha256).map(|sha| (sha.to_string(), views));
        }
    }
    Ok(scan)
}

fn write(row: &Row, buf: &mut Vec<u8>) {
    let start = buf.len();
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .buffer_capacity(1024)
        .from_writer(&mut *buf);
    writer
        .serialize(row)
        .and_then(|()| writer.flush().map_err(csv::Error::from))
        .expect("a row of strings and numbers serialises into a Vec, which cannot fail");
    drop(writer);
    // A line that starts with '#' (after blanks) is a comment to ECSV readers: a source id
    // like that is quoted. Unquoted, it holds no comma, so the first comma ends it.
    let row = &buf[start..];
    if row.iter().find(|b| !matches!(b, b' ' | b'\t')) == Some(&b'#') {
        let end = start + row.iter().position(|&b| b == b',').unwrap_or(row.len());
        buf.insert(end, b'"');
        buf.insert(start, b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classification_message() -> proto::Classification {
        proto::Classification {
            source_id: "J1, \"odd\" name".into(),
            survey: "FIRST".into(),
            ra_deg: 150.125,
            dec_deg: -2.5,
            label: proto::Label::Frii as i32,
            prob_fri: 0.25,
            prob_frii: 0.75,
            confidence: 0.75,
            entropy_bits: 0.811_278_1,
            attention: Some(proto::AttentionSummary {
                on_emission_fraction: 0.5,
                peaks: vec![proto::AttentionPeak {
                    ra_deg: 150.126,
                    dec_deg: -2.501,
                    weight: 0.125,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            model: Some(proto::ModelInfo {
                name: "agcnn".into(),
                sha256: "ab".into(),
                execution_provider: "cpu".into(),
                views: 8,
            }),
            emission: Some(proto::Emission {
                islands: 2,
                pixels: 300,
                largest_angular_size_arcsec: 97.5,
                truncated: true,
            }),
            cutout: Some(proto::CutoutProvenance {
                file: "a.fits".into(),
                rms: 1.5e-4,
                pixel_scale_arcsec: 1.8,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn columns_follow_the_rows_fields() {
        let mut buf = Vec::new();
        let mut writer = csv::Writer::from_writer(&mut buf);
        writer.serialize(Row::default()).unwrap();
        drop(writer);
        let text = String::from_utf8(buf).unwrap();
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(text.lines().next().unwrap(), names.join(","));
        assert!(header().ends_with(&format!("\n{}\n", names.join(","))));
    }

    #[test]
    fn rows_quote_what_needs_it_and_leave_missing_values_empty() {
        let mut buf = Vec::new();
        classification(&classification_message(), &mut buf);
        let row = String::from_utf8(buf).unwrap();
        assert_eq!(
            row,
            "\"J1, \"\"odd\"\" name\",classified,FIRST,150.125,-2.5,FRII,0.25,0.75,0.75,\
             0.8112781,0.5,150.126,-2.501,0.125,2,97.5,True,0.00015,1.8,False,a.fits,agcnn,ab,8,cpu,,,\n"
        );

        let mut buf = Vec::new();
        rejection(
            &proto::Rejection {
                reason: proto::RejectReason::NotCovered as i32,
                detail: "no mosaic covers it".into(),
                input: "detections/3@42".into(),
                ..Default::default()
            },
            &mut buf,
        );
        let row = String::from_utf8(buf).unwrap();
        assert_eq!(
            row,
            ",rejected,,,,,,,,,,,,,,,,,,,,,,,,not_covered,no mosaic covers it,detections/3@42\n"
        );
    }

    #[test]
    fn an_id_that_would_start_a_comment_is_quoted() {
        let mut buf = Vec::new();
        rejection(
            &proto::Rejection {
                source_id: "#7".into(),
                reason: proto::RejectReason::BadFits as i32,
                detail: "x".into(),
                ..Default::default()
            },
            &mut buf,
        );
        assert!(
            buf.starts_with(b"\"#7\",rejected,"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        let mut file = header().into_bytes();
        file.extend_from_slice(&buf);
        let scan = scan(&mut file.as_slice()).unwrap();
        assert_eq!(scan.records, 1);
        assert_eq!(scan.last_source_id.as_deref(), Some("#7"));
    }

    #[test]
    fn the_header_is_ecsv_with_every_column_described() {
        let header = header();
        assert!(header.starts_with("# %ECSV 1.0\n# ---\n"));
        assert_eq!(header.matches("# - {name: ").count(), COLUMNS.len());
        assert!(header.contains("# - {name: ra, datatype: float64, unit: deg, description: "));
        // Every header line but the column names is a comment.
        let lines: Vec<&str> = header.lines().collect();
        assert!(lines[..lines.len() - 1].iter().all(|l| l.starts_with('#')));
    }
}
