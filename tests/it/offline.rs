//! The offline worker end to end: real FIRST cutouts in, classifications out, bad input
//! rejected with its reason and nothing lost.

use std::collections::BTreeMap;

use radiogate::config::{OutputFormat, SinkConfig, SourceConfig};
use radiogate::domain::Detection;
use radiogate::proto::{self, source_detection::Pixels};
use radiogate::sink::record::{LabelName, Record};

use crate::common::{self, cards_ref, fits_f32, tan_cards};

#[test]
fn classifies_the_bundled_sample_in_input_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.jsonl");
    let summary = common::run(common::files_config(vec![common::sample_dir()], &out));
    assert_eq!((summary.classified, summary.rejected), (20, 0));

    let records = common::read(&out);
    let mut expected: Vec<String> = std::fs::read_dir(common::sample_dir())
        .expect("sample dir")
        .filter_map(|e| {
            e.ok()?
                .path()
                .file_name()?
                .to_str()?
                .strip_suffix(".fits")
                .map(str::to_string)
        })
        .collect();
    expected.sort();
    let ids: Vec<&str> = records
        .iter()
        .map(|r| match r {
            Record::Classification(c) => c.source_id.as_str(),
            Record::Rejection(r) => panic!("unexpected rejection {r:?}"),
        })
        .collect();
    assert_eq!(ids, expected);
    for record in &records {
        let Record::Classification(c) = record else {
            unreachable!()
        };
        let p = &c.probabilities;
        assert!((p.fri + p.frii - 1.0).abs() < 1e-5, "{c:?}");
        let cutout = c.cutout.as_ref().expect("cutout provenance");
        // A 300x300 FIRST cutout is its own window, whole.
        assert_eq!(
            (cutout.x0, cutout.y0, cutout.width, cutout.height),
            (0, 0, 300, 300)
        );
        assert!((cutout.coverage - 1.0).abs() < 1e-6);
        assert!(
            cutout.rms > 0.0
                && (cutout.clip_threshold - 3.0 * cutout.rms).abs() < 1e-6 * cutout.rms.max(1.0)
        );
        let attention = c.attention.as_ref().expect("attention summary");
        assert_eq!(
            attention.grid,
            radiogate::config::Config::default().summary.grid
        );
        assert!(!attention.peaks.is_empty());
        assert!((0.0..=1.0).contains(&attention.on_emission_fraction));
        // MiraBest's sources are extended: an island at least, some tens of arcsec across.
        let emission = c.emission.expect("the emission's extent");
        assert!(
            emission.islands >= 1 && emission.largest_angular_size_arcsec > 20.0,
            "{emission:?}"
        );
        // The source sits at the centre of its cutout: the position echoed is the image centre.
        let (ra, dec) = centre_from_name(&c.source_id);
        assert!(
            (c.ra - ra).abs() < 0.01 && (c.dec - dec).abs() < 0.01,
            "{} at {} {}",
            c.source_id,
            c.ra,
            c.dec
        );
    }
}

/// MiraBest file names carry the position: `CODE_RRR.rrr+DD.ddd_...`.
fn centre_from_name(id: &str) -> (f64, f64) {
    let pos = id.split('_').nth(1).expect("position field");
    let split = pos.find(['+', '-']).expect("sign of Dec");
    (
        pos[..split].parse().expect("ra"),
        pos[split..].parse().expect("dec"),
    )
}

#[test]
fn batch_composition_concurrent_sessions_and_the_live_session_do_not_change_results() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut by_batch = Vec::new();
    // (max_batch, sessions, live session's threads): one batch at a time, then several
    // batches in flight at once (up to two per session), whose results the sink puts back in
    // input order; the first without a live session, the others with one taking batches
    // while nothing queues (the first few of a run).
    for (max_batch, sessions, live) in [(1, 1, 0), (7, 1, 2), (32, 1, 2), (1, 3, 2), (2, 2, 2)] {
        let out = dir
            .path()
            .join(format!("b{max_batch}-s{sessions}-l{live}.jsonl"));
        let mut config = common::files_config(vec![common::sample_dir()], &out);
        config.batch.max_batch = max_batch;
        config.inference.sessions = sessions;
        config.inference.intra_threads = 1;
        config.inference.live_intra_threads = live;
        let summary = common::run(config);
        // Every item ran in a batch, none larger than max_batch.
        assert_eq!(summary.batched_items, 20, "{summary:?}");
        assert!(
            (20usize.div_ceil(max_batch) as u64..=20).contains(&summary.batches),
            "{summary:?}"
        );
        let results: Vec<_> = common::read(&out)
            .into_iter()
            .map(|r| match r {
                Record::Classification(c) => (
                    c.source_id,
                    c.probabilities,
                    c.attention.map(|a| (a.map_zstd, a.scale)),
                ),
                Record::Rejection(r) => panic!("unexpected rejection {r:?}"),
            })
            .collect();
        by_batch.push(results);
    }
    assert_eq!(by_batch[0].len(), 20);
    for other in &by_batch[1..] {
        assert_eq!(&by_batch[0], other);
    }
}

#[test]
fn bad_files_become_rejections_with_reasons_and_good_ones_still_classify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let inputs = dir.path().join("inputs");
    std::fs::create_dir(&inputs).expect("mkdir");
    let good = std::fs::read_dir(common::sample_dir())
        .expect("sample")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "fits"))
        .expect("a sample FITS");
    let good_bytes = std::fs::read(&good).expect("read sample");
    std::fs::write(inputs.join("a_good.fits"), &good_bytes).expect("write");
    std::fs::write(
        inputs.join("b_truncated.fits"),
        &good_bytes[..good_bytes.len() / 2],
    )
    .expect("write");
    std::fs::write(
        inputs.join("c_not_fits.fits"),
        b"this is not a FITS file at all",
    )
    .expect("write");
    let n = 300;
    let cards = tan_cards(n, 150.0, 20.0);
    std::fs::write(
        inputs.join("d_constant.fits"),
        fits_f32(&cards_ref(&cards), &vec![0.001; n * n]),
    )
    .expect("write");
    std::fs::write(
        inputs.join("e_all_nan.fits"),
        fits_f32(&cards_ref(&cards), &vec![f32::NAN; n * n]),
    )
    .expect("write");
    let no_wcs: Vec<_> = cards
        .iter()
        .filter(|(k, _)| !k.starts_with("C"))
        .cloned()
        .collect();
    let noise: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-6)
        .collect();
    std::fs::write(
        inputs.join("f_no_wcs.fits"),
        fits_f32(&cards_ref(&no_wcs), &noise),
    )
    .expect("write");
    // Pixels of 1 arcsec (VLASS's), not the 1.8 of FIRST that the model was trained on.
    let vlass: Vec<_> = cards
        .iter()
        .map(|(k, v)| match *k {
            "CDELT1" => (*k, "-0.000277777777778".to_string()),
            "CDELT2" => (*k, "0.000277777777778".to_string()),
            _ => (*k, v.clone()),
        })
        .collect();
    std::fs::write(
        inputs.join("g_one_arcsec_pixels.fits"),
        fits_f32(&cards_ref(&vlass), &noise),
    )
    .expect("write");

    let out = dir.path().join("out.jsonl");
    let summary = common::run(common::files_config(vec![inputs.clone()], &out));
    assert_eq!(
        (summary.classified, summary.rejected),
        (1, 6),
        "{summary:?}"
    );

    let reasons: BTreeMap<String, String> = common::read(&out)
        .into_iter()
        .filter_map(|r| match r {
            Record::Rejection(r) => Some((r.source_id.expect("id"), r.reason)),
            Record::Classification(_) => None,
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        ("b_truncated", "bad_fits"),
        ("c_not_fits", "bad_fits"),
        ("d_constant", "empty_cutout"),
        ("e_all_nan", "empty_cutout"),
        ("f_no_wcs", "bad_wcs"),
        ("g_one_arcsec_pixels", "pixel_scale"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(reasons, expected);

    // The same run as an ECSV table, as astropy reads it: a row per input, units and types
    // from the header, the rejections' cells that do not apply masked.
    let table_path = dir.path().join("out.ecsv");
    let mut config = common::files_config(vec![inputs], &table_path);
    config.sink = SinkConfig::File {
        path: Some(table_path.clone()),
        format: OutputFormat::Ecsv,
        resume: false,
    };
    let again = common::run(config);
    assert_eq!((again.classified, again.rejected), (1, 6));
    let read = common::python3(
        &[
            "-c".as_ref(),
            ASTROPY_READS_ECSV.as_ref(),
            table_path.as_os_str(),
        ],
        dir.path(),
    );
    let table: serde_json::Value = serde_json::from_slice(&read).expect("JSON");
    assert_eq!(table["units"]["ra"], "deg");
    assert_eq!(table["units"]["entropy"], "bit");
    assert_eq!(table["dtypes"]["prob_frii"], "float32");
    assert_eq!(table["dtypes"]["resampled"], "bool");
    assert_eq!(table["dtypes"]["truncated"], "bool");
    let rows = table["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 7);
    let from_table: BTreeMap<String, String> = rows
        .iter()
        .filter(|r| r["status"] == "rejected")
        .map(|r| {
            assert!(r["label"].is_null() && r["prob_frii"].is_null(), "{r}");
            let id = r["source_id"].as_str().expect("id").to_string();
            (id, r["reason"].as_str().expect("reason").to_string())
        })
        .collect();
    assert_eq!(from_table, expected);
    let Some(Record::Classification(c)) = common::read(&out)
        .into_iter()
        .find(|r| matches!(r, Record::Classification(_)))
    else {
        panic!("a classification")
    };
    let row = rows
        .iter()
        .find(|r| r["status"] == "classified")
        .expect("the classified row");
    assert_eq!(row["source_id"], c.source_id.as_str());
    assert_eq!(row["label"], serde_json::json!(c.label));
    // float32 cells, through Python's float and serde_json's parsing (not correctly
    // rounded in its last bit): the same float32.
    assert_eq!(
        row["prob_frii"].as_f64().map(|p| p as f32),
        Some(c.probabilities.frii)
    );
    assert!(
        (row["ra"].as_f64().expect("ra") - c.ra).abs() < 1e-12,
        "{row}"
    );
    assert_eq!(row["resampled"], false);
    let emission = c.emission.expect("the emission");
    assert_eq!(row["truncated"], emission.truncated);
    assert!(row["reason"].is_null(), "{row}");
    // It holds no maps to draw, and explain says so.
    assert!(matches!(
        radiogate::explain::find_result(&table_path, &c.source_id),
        Err(radiogate::explain::ExplainError::Table(_))
    ));
}

/// Writes the CSV catalogue at argv[1] to argv[2] as an ECSV table with LoTSS's column
/// names and units (astropy's default form: space-delimited, units in the header).
const ASTROPY_WRITES_ECSV: &str = r#"
import sys
import astropy.units as u
from astropy.table import Table
t = Table.read(sys.argv[1], format="ascii.csv")
out = Table()
out["Source_Name"] = t["source_id"]
out["RA"] = t["ra"] * u.deg
out["DEC"] = t["dec"] * u.deg
out["Peak_flux"] = [3.5] * len(t) * u.mJy / u.beam
out.write(sys.argv[2], format="ascii.ecsv")
"#;

/// Reads the ECSV table at argv[1] with astropy and prints its units, datatypes and rows
/// (masked cells as null) as JSON.
const ASTROPY_READS_ECSV: &str = r#"
import json, sys
import numpy as np
from astropy.table import Table
t = Table.read(sys.argv[1], format="ascii.ecsv")
def cell(v):
    if v is np.ma.masked:
        return None
    return v.item() if hasattr(v, "item") else v
print(json.dumps({
    "units": {c: str(t[c].unit) for c in t.colnames if t[c].unit is not None},
    "dtypes": {c: str(t[c].dtype) for c in t.colnames},
    "rows": [{c: cell(r[c]) for c in t.colnames} for r in t],
}))
"#;

#[test]
fn catalogue_positions_resolved_against_mosaics_match_the_files_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files_out = dir.path().join("files.jsonl");
    common::run(common::files_config(vec![common::sample_dir()], &files_out));
    let by_file: BTreeMap<String, (LabelName, f32, f64, f64)> = common::read(&files_out)
        .into_iter()
        .filter_map(|r| match r {
            Record::Classification(c) => {
                Some((c.source_id, (c.label, c.probabilities.frii, c.ra, c.dec)))
            }
            Record::Rejection(_) => None,
        })
        .collect();

    // The catalogue gives each source's position, plus one position no mosaic covers and
    // one impossible declination: as radiogate's CSV, and as a survey's FITS table (VLASS's
    // column names and units).
    let mut rows: Vec<(String, f64, f64)> = by_file
        .iter()
        .map(|(id, (_, _, ra, dec))| (id.clone(), *ra, *dec))
        .collect();
    rows.push(("nowhere".into(), 10.0, -60.0));
    rows.push(("bad_dec".into(), 10.0, 95.0));
    let csv = dir.path().join("catalog.csv");
    let text: String = rows
        .iter()
        .map(|(id, ra, dec)| format!("{id},{ra:.10},{dec:.10}\n"))
        .collect();
    std::fs::write(&csv, format!("source_id,ra,dec\n{text}")).expect("write catalogue");
    let fits = dir.path().join("catalog.fits");
    write_vlass_table(&fits, &rows);
    // And as astropy writes an ECSV table with LoTSS's names and units.
    let ecsv = dir.path().join("catalog.ecsv");
    common::python3(
        &[
            "-c".as_ref(),
            ASTROPY_WRITES_ECSV.as_ref(),
            csv.as_os_str(),
            ecsv.as_os_str(),
        ],
        dir.path(),
    );

    for catalog in [csv, fits, ecsv] {
        let out = dir.path().join("catalog.jsonl");
        let mut config = common::files_config(vec![], &out);
        config.source = SourceConfig::Catalog {
            path: catalog.clone(),
            survey: "FIRST".into(),
            columns: Default::default(),
        };
        config.cutout.mosaics = vec![common::sample_dir()];
        let summary = common::run(config);
        assert_eq!(
            (summary.classified, summary.rejected),
            (20, 2),
            "{}: {summary:?}",
            catalog.display()
        );

        for record in common::read(&out) {
            match record {
                Record::Classification(c) => {
                    let (label, frii, _, _) = by_file[&c.source_id];
                    assert_eq!(c.label, label, "{}", c.source_id);
                    assert!(
                        (c.probabilities.frii - frii).abs() < 1e-6,
                        "{}",
                        c.source_id
                    );
                }
                Record::Rejection(r) => {
                    let expected = match r.source_id.as_deref() {
                        Some("nowhere") => "not_covered",
                        Some("bad_dec") => "invalid_detection",
                        other => panic!("unexpected rejection of {other:?}"),
                    };
                    assert_eq!(r.reason, expected, "{r:?}");
                }
            }
        }
    }
}

/// A FITS table as CIRADA's VLASS component catalogue has it: `Component_name`, `RA` and
/// `DEC` in degrees, `Peak_flux` in mJy/beam, and a `Tile` of the survey's own naming.
fn write_vlass_table(path: &std::path::Path, rows: &[(String, f64, f64)]) {
    use fitsio::tables::{ColumnDataType, ColumnDescription};
    let string = |name: &str| {
        ColumnDescription::new(name)
            .with_type(ColumnDataType::String)
            .that_repeats(40)
            .create()
            .expect("column")
    };
    let double = |name: &str| {
        ColumnDescription::new(name)
            .with_type(ColumnDataType::Double)
            .create()
            .expect("column")
    };
    let columns = [
        string("Component_name"),
        double("RA"),
        double("DEC"),
        double("Peak_flux"),
        string("Tile"),
    ];
    let mut file = fitsio::FitsFile::create(path).open().expect("create");
    let hdu = file.create_table("VLASS", &columns).expect("table");
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let ras: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let decs: Vec<f64> = rows.iter().map(|r| r.2).collect();
    hdu.write_col(&mut file, "Component_name", &names)
        .expect("names");
    hdu.write_col(&mut file, "RA", &ras).expect("ra");
    hdu.write_col(&mut file, "DEC", &decs).expect("dec");
    hdu.write_col(&mut file, "Peak_flux", &vec![3.5; rows.len()])
        .expect("flux");
    hdu.write_col(&mut file, "Tile", &vec!["T10t12".to_string(); rows.len()])
        .expect("tile");
    for (key, unit) in [("TUNIT2", "deg"), ("TUNIT3", "deg"), ("TUNIT4", "mJy/beam")] {
        hdu.write_key(&mut file, key, unit).expect("unit");
    }
}

#[test]
fn protobuf_output_carries_every_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.pb");
    let mut config = common::files_config(vec![common::sample_dir()], &out);
    config.sink = SinkConfig::File {
        path: Some(out.clone()),
        format: OutputFormat::Protobuf,
        resume: false,
    };
    common::run(config);
    let results: Vec<proto::Classification> =
        radiogate::sink::read_length_delimited(&out).expect("read back");
    assert_eq!(results.len(), 20);
    let sizes: Vec<usize> = results.iter().map(prost::Message::encoded_len).collect();
    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    assert!(
        median <= 1536,
        "median encoded Classification is {median} bytes"
    );
    for c in &results {
        let attention = c.attention.as_ref().expect("attention");
        let map = radiogate::summary::decode_map(attention).expect("decodes");
        assert_eq!(map.len(), (attention.grid * attention.grid) as usize);
        let total: f32 = map.iter().sum();
        assert!(
            (total - 1.0).abs() < 0.05,
            "combined attention sums to {total}"
        );
    }
}

/// `pipeline::run_detections` (what `radiogate-bench memory` times: end to end from cutouts
/// already in memory) classifies inline cutouts as the files run does, and a bad one
/// becomes a rejection in its place.
#[test]
fn cutouts_in_memory_classify_as_their_files_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (from_files, from_memory) = (
        dir.path().join("files.jsonl"),
        dir.path().join("memory.jsonl"),
    );
    common::run(common::files_config(
        vec![common::sample_dir()],
        &from_files,
    ));

    // The files source's detections, each carrying its file's bytes, and a bad one.
    let config = common::files_config(vec![common::sample_dir()], &from_memory);
    let mut detections: Vec<Detection> = radiogate::source::open(&config.source)
        .expect("the files source")
        .map(|item| {
            let mut detection = item.expect("a detection");
            radiogate::source::inline_cutout(&mut detection.message).expect("the file reads");
            detection
        })
        .collect();
    let mut bad = detections[0].clone();
    bad.message.source_id = "not-fits".into();
    bad.message.pixels = Some(Pixels::FitsCutout(b"SIMPLE  = F".to_vec().into()));
    detections.insert(3, bad);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let summary = runtime
        .block_on(radiogate::pipeline::run_detections(
            config,
            Box::new(detections.into_iter().map(Ok)),
            Default::default(),
            std::future::pending(),
        ))
        .expect("the run succeeds");
    assert_eq!((summary.classified, summary.rejected), (20, 1));

    let key = |records: Vec<Record>| -> Vec<_> {
        records
            .into_iter()
            .map(|r| match r {
                Record::Classification(c) => Ok((
                    c.source_id,
                    c.label,
                    c.probabilities,
                    c.attention.map(|a| (a.map_zstd, a.scale, a.peaks.len())),
                    c.cutout.map(|c| (c.rms, c.clip_threshold)),
                )),
                Record::Rejection(r) => Err((r.source_id, r.reason)),
            })
            .collect()
    };
    let mut want = key(common::read(&from_files));
    want.insert(3, Err((Some("not-fits".into()), "bad_fits".into())));
    assert_eq!(key(common::read(&from_memory)), want);
}

#[test]
fn shutdown_stops_intake_and_drains_what_was_taken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.jsonl");
    let config = common::files_config(vec![common::sample_dir()], &out);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let summary = runtime
        .block_on(radiogate::pipeline::run(
            config,
            Default::default(),
            std::future::ready(()),
        ))
        .expect("a drained run");
    assert!(summary.interrupted);
    // Whatever was taken in was written, in order, with no gaps.
    let records = common::read(&out);
    assert_eq!(records.len() as u64, summary.classified + summary.rejected);
}

#[test]
fn check_config_prints_the_resolved_configuration_and_refuses_a_bad_field() {
    let run = |env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_radiogate"))
            .args(["check-config", "config/kafka-worker.toml"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(env.iter().copied())
            .output()
            .expect("radiogate runs")
    };
    let ok = run(&[
        ("RADIOGATE__BATCH__MAX_BATCH", "8"),
        (
            "RADIOGATE__SOURCE__PROPERTIES",
            r#"{ "sasl.password" = "hunter2", "fetch.wait.max.ms" = "250" }"#,
        ),
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("config/kafka-worker.toml: ok"),
        "{stdout}"
    );
    // The environment's overrides, the secret redacted.
    assert!(stdout.contains("max_batch: 8"), "{stdout}");
    assert!(stdout.contains(r#""fetch.wait.max.ms": "250""#), "{stdout}");
    assert!(
        stdout.contains("<redacted>") && !stdout.contains("hunter2"),
        "{stdout}"
    );

    let bad = run(&[("RADIOGATE__BATCH__MAX_BATCH", "0")]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("batch.max_batch"), "{stderr}");
}

#[test]
fn quiet_classify_prints_its_summary_and_no_info_logs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_radiogate"))
        .args(["classify", "--quiet", "--model"])
        .arg(common::model())
        .arg("--out")
        .arg(dir.path().join("out.jsonl"))
        .arg(common::sample_dir())
        .current_dir(common::repo())
        .env_remove("RADIOGATE_LOG")
        .output()
        .expect("radiogate runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("radiogate: 20 classified"), "{stderr}");
}

/// A run that fails says why once: a plain line with text logs, one JSON error record with
/// JSON logs (a plain line would break the collector's stream); a configuration file that
/// cannot be read names the OS error once.
#[test]
fn a_failed_run_says_why_once() {
    let classify = |json_logs: &str, args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_radiogate"))
            .arg("classify")
            .args(args)
            .current_dir(common::repo())
            .env_remove("RADIOGATE_LOG")
            .env("RADIOGATE__TELEMETRY__JSON_LOGS", json_logs)
            .output()
            .expect("radiogate runs");
        assert_eq!(output.status.code(), Some(2));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let missing = "no/such/folder";
    let why = format!("input {missing} does not exist");

    let text = classify("false", &[missing]);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&why)).collect();
    assert_eq!(lines, [format!("radiogate: source: {why}")], "{text}");

    let json = classify("true", &[missing]);
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|r: &serde_json::Value| r["level"] == "ERROR")
        .collect();
    assert_eq!(records.len(), 1, "{json}");
    assert_eq!(records[0]["fields"]["error"], format!("source: {why}"));

    let config = classify("false", &["--config", "no/such.toml", missing]);
    assert_eq!(config.matches("os error 2").count(), 1, "{config}");
}

/// A run killed part way, run again with `sink.resume`: the file ends as one uninterrupted
/// run's would, every input once, in order; the wrong input or model is refused.
#[test]
fn a_resumed_run_finishes_what_a_killed_one_began() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = dir.path().join("full.jsonl");
    common::run(common::files_config(vec![common::sample_dir()], &full));
    let without_times = |records: Vec<Record>| -> Vec<String> {
        records
            .into_iter()
            .map(|record| {
                let mut value = serde_json::to_value(record).expect("JSON");
                let object = value.as_object_mut().expect("an object");
                object.remove("classified_at");
                object.remove("timings_us");
                value.to_string()
            })
            .collect()
    };
    let expected = without_times(common::read(&full));
    assert_eq!(expected.len(), 20);

    // Killed after 7 whole records and half of the 8th.
    let text = std::fs::read_to_string(&full).expect("results");
    let cut: usize = text
        .split_inclusive('\n')
        .take(7)
        .map(str::len)
        .sum::<usize>()
        + text
            .split_inclusive('\n')
            .nth(7)
            .expect("an 8th record")
            .len()
            / 2;
    let part = dir.path().join("part.jsonl");
    std::fs::write(&part, &text[..cut]).expect("write");

    let resume = |inputs: Vec<std::path::PathBuf>, model: Option<&str>| {
        let mut config = common::files_config(inputs, &part);
        config.sink = SinkConfig::File {
            path: Some(part.clone()),
            format: OutputFormat::Jsonl,
            resume: true,
        };
        if let Some(model) = model {
            config.inference.model = common::repo().join(model);
        }
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(radiogate::pipeline::run(
                config,
                Default::default(),
                std::future::pending(),
            ))
    };
    // Another model's results are not continued, nor another input's.
    let other_model = resume(
        vec![common::sample_dir()],
        Some("models/agcnn-mirabest.onnx"),
    );
    assert!(
        matches!(other_model, Err(radiogate::pipeline::PipelineError::Resume(ref m)) if m.contains("model")),
        "{other_model:?}"
    );
    let mut files: Vec<_> = std::fs::read_dir(common::sample_dir())
        .expect("sample")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "fits"))
        .collect();
    files.sort();
    files.reverse();
    let reordered = resume(files, None);
    assert!(
        matches!(reordered, Err(radiogate::pipeline::PipelineError::Resume(ref m)) if m.contains("order")),
        "{reordered:?}"
    );

    let summary = resume(vec![common::sample_dir()], None).expect("the resumed run");
    assert_eq!((summary.resumed, summary.classified), (7, 13));
    assert_eq!(without_times(common::read(&part)), expected);

    // Resuming a finished file classifies nothing more.
    let summary = resume(vec![common::sample_dir()], None).expect("a finished file");
    assert_eq!((summary.resumed, summary.classified), (20, 0));
    assert_eq!(common::read(&part).len(), 20);
}

/// Three runs, each with its shard (`source.shard` K/3), classify the bundled sample between
/// them: every source once, each run's in input order.
#[test]
fn shards_split_the_input_between_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = |records: Vec<Record>| -> Vec<String> {
        records
            .into_iter()
            .map(|r| match r {
                Record::Classification(c) => c.source_id,
                Record::Rejection(r) => panic!("unexpected rejection {r:?}"),
            })
            .collect()
    };
    let whole = dir.path().join("whole.jsonl");
    common::run(common::files_config(vec![common::sample_dir()], &whole));
    let whole = ids(common::read(&whole));
    let mut together = Vec::new();
    for index in 0..3 {
        let out = dir.path().join(format!("shard-{index}.jsonl"));
        let mut config = common::files_config(vec![common::sample_dir()], &out);
        config.shard = radiogate::config::Shard { index, count: 3 };
        let summary = common::run(config);
        let shard = ids(common::read(&out));
        assert_eq!(summary.classified as usize, shard.len());
        let expected: Vec<String> = whole
            .iter()
            .skip(index as usize)
            .step_by(3)
            .cloned()
            .collect();
        assert_eq!(shard, expected, "shard {index}/3");
        together.extend(shard);
    }
    together.sort();
    assert_eq!(together, whole, "every source once");

    // A task of the array stopped after 2 of its sources, run again with resume (the
    // documented batch-system recipe): its shard's file ends whole.
    let out = dir.path().join("shard-1.jsonl");
    let text = std::fs::read_to_string(&out).expect("shard 1");
    let two: usize = text.split_inclusive('\n').take(2).map(str::len).sum();
    std::fs::write(&out, &text[..two]).expect("cut");
    let mut config = common::files_config(vec![common::sample_dir()], &out);
    config.shard = radiogate::config::Shard { index: 1, count: 3 };
    config.sink = SinkConfig::File {
        path: Some(out.clone()),
        format: OutputFormat::Jsonl,
        resume: true,
    };
    let summary = common::run(config);
    assert_eq!((summary.resumed, summary.classified), (2, 5));
    let expected: Vec<String> = whole.iter().skip(1).step_by(3).cloned().collect();
    assert_eq!(ids(common::read(&out)), expected);
}

/// An unresolved source (a Gaussian of FIRST's beam) is measured as compact: its emission
/// spans less than `COMPACT_ARCSEC`, one island, and the run counts it.
#[test]
fn a_compact_source_is_measured_and_counted_as_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let n = 300;
    // FIRST's 5.4 arcsec beam in 1.8 arcsec pixels: sigma 1.27 pixels; peak 1000 times the
    // noise, so the noise is below the 8 bits' first step.
    let sigma = 5.4 / 1.8 / 2.3548;
    let pixels: Vec<f32> = (0..n * n)
        .map(|i| {
            let (y, x) = ((i / n) as f64 - 149.5, (i % n) as f64 - 149.5);
            let noise = ((i * 7919) % 1000) as f64 * 2e-7 - 1e-4;
            (0.1 * (-(x * x + y * y) / (2.0 * sigma * sigma)).exp() + noise) as f32
        })
        .collect();
    // 1.8 arcsec pixels (CDELT 0.0005 degrees).
    let cards = common::tan_cards(n, 150.0, 20.0);
    let file = dir.path().join("compact.fits");
    std::fs::write(&file, fits_f32(&cards_ref(&cards), &pixels)).expect("write");
    let out = dir.path().join("out.jsonl");
    let summary = common::run(common::files_config(vec![file], &out));
    assert_eq!((summary.classified, summary.compact), (1, 1), "{summary:?}");
    let Some(Record::Classification(c)) = common::read(&out).into_iter().next() else {
        panic!("a classification")
    };
    let emission = c.emission.expect("its extent");
    // What the model says of a source it was never trained on (`--nocapture` shows it):
    // a label, with a confidence that does not warn of it.
    eprintln!(
        "compact source: {:?} at {:.3}, {emission:?}",
        c.label, c.confidence
    );
    assert_eq!(emission.islands, 1, "{emission:?}");
    assert!(
        emission.largest_angular_size_arcsec > 5.0
            && emission.largest_angular_size_arcsec < radiogate::domain::COMPACT_ARCSEC,
        "{emission:?}"
    );
}

/// `radiogate classify` run as a command from the repository, its environment cleared of
/// overrides that would change the run.
fn classify_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_radiogate"));
    command
        .arg("classify")
        .current_dir(common::repo())
        .env_remove("RADIOGATE_LOG");
    for (name, _) in std::env::vars() {
        if name.starts_with(radiogate::config::ENV_PREFIX) {
            command.env_remove(name);
        }
    }
    command
}

/// An output that is the catalogue would be truncated before it is read (and then read
/// back as its own input): refused at start, naming both, the catalogue left as it was.
#[test]
fn an_output_that_is_the_catalogue_is_refused_and_the_catalogue_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let catalogue = dir.path().join("big.csv");
    let text = "source_id,ra,dec\na,114.33,29.49\n";
    std::fs::write(&catalogue, text).expect("write");
    for format in ["jsonl", "ecsv"] {
        let output = classify_command()
            .arg("--catalog")
            .arg(&catalogue)
            .args(["--format", format, "--out"])
            .arg(&catalogue)
            .output()
            .expect("radiogate runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let named = catalogue.display().to_string();
        assert!(
            stderr.contains(&format!(
                "the output {named} (--out) is the catalogue {named}"
            )),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(&catalogue).expect("catalogue"),
            text
        );
    }
}

/// `--resume` over a file that is not of the format asked for, and an output that cannot be
/// created, are refused at start (2), not failures of a run (1).
#[test]
fn outputs_that_cannot_be_resumed_or_created_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let jsonl = dir.path().join("results.jsonl");
    common::run(common::files_config(
        vec![common::sample_dir().join("100_125.339+025.318_0.2676_0038.05.fits")],
        &jsonl,
    ));
    let output = classify_command()
        .args(["--quiet", "--resume", "--format", "ecsv", "--out"])
        .arg(&jsonl)
        .arg(common::sample_dir())
        .output()
        .expect("radiogate runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot resume"), "{stderr}");

    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, b"").expect("write");
    let output = classify_command()
        .args(["--quiet", "--out"])
        .arg(blocked.join("results.jsonl"))
        .arg(common::sample_dir())
        .output()
        .expect("radiogate runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot create"), "{stderr}");
}

/// Bad entries of an input folder do not stop the run: a dangling link named like FITS and
/// a name that is not UTF-8 are rejections in their place, a dangling link of another name
/// is skipped, and the good files are classified.
#[cfg(unix)]
#[test]
fn bad_entries_of_an_input_folder_are_rejected_and_the_rest_classified() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let inputs = dir.path().join("inputs");
    std::fs::create_dir(&inputs).expect("mkdir");
    let good = common::sample_dir().join("100_125.339+025.318_0.2676_0038.05.fits");
    std::fs::copy(&good, inputs.join("a.fits")).expect("copy");
    std::fs::copy(&good, inputs.join("d.fits")).expect("copy");
    std::os::unix::fs::symlink(inputs.join("gone.fits"), inputs.join("b.fits")).expect("link");
    std::os::unix::fs::symlink(inputs.join("gone.txt"), inputs.join("notes.txt")).expect("link");
    let odd = inputs.join(std::ffi::OsStr::from_bytes(b"c-\xff.fits"));
    std::fs::copy(&good, &odd).expect("copy");

    let out = dir.path().join("out.jsonl");
    let summary = common::run(common::files_config(vec![inputs.clone()], &out));
    assert_eq!(
        (summary.classified, summary.rejected),
        (2, 2),
        "{summary:?}"
    );
    let got: Vec<(String, Option<String>)> = common::read(&out)
        .into_iter()
        .map(|r| match r {
            Record::Classification(c) => (c.source_id, None),
            Record::Rejection(r) => (r.source_id.unwrap_or_default(), Some(r.reason)),
        })
        .collect();
    let want = [
        ("a", None),
        ("b", Some("bad_fits")),
        ("c-\u{fffd}", Some("invalid_detection")),
        ("d", None),
    ]
    .map(|(id, reason)| (id.to_string(), reason.map(str::to_string)));
    assert_eq!(got, want);
}

/// A batch system's SIGTERM before the input ends: `classify` drains what it took in and
/// exits 75 (EX_TEMPFAIL), not 0, so the task is not marked done; run again with --resume,
/// it finishes the file and exits 0. `radiogate run` (the long-running worker, whose normal
/// stop is SIGTERM) exits 0.
#[cfg(unix)]
#[test]
fn a_signal_before_the_input_ends_exits_75_and_resume_finishes() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 200 inputs: links to the sample's 20 files, so that the run outlasts the signal.
    let inputs = dir.path().join("inputs");
    std::fs::create_dir(&inputs).expect("mkdir");
    let sample: Vec<_> = std::fs::read_dir(common::sample_dir())
        .expect("sample")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "fits"))
        .collect();
    for copy in 0..10 {
        for (at, file) in sample.iter().enumerate() {
            let link = inputs.join(format!("s{copy:02}-{at:02}.fits"));
            std::os::unix::fs::symlink(file, link).expect("link");
        }
    }
    let total = 10 * sample.len();
    let out = dir.path().join("out.jsonl");
    let records = |out: &std::path::Path| {
        std::fs::read_to_string(out)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let stop_part_way = |child: std::process::Child, out: &std::path::Path| {
        let started = std::time::Instant::now();
        // The signal handler is in place once results are written.
        while records(out) == 0 && started.elapsed() < std::time::Duration::from_secs(120) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        child.wait_with_output().expect("radiogate exits")
    };

    let mut command = classify_command();
    command
        .args(["--quiet", "--model"])
        .arg(common::model())
        .arg("--out")
        .arg(&out)
        .arg(&inputs)
        .stderr(std::process::Stdio::piped());
    let output = stop_part_way(command.spawn().expect("radiogate starts"), &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let written = records(&out);
    assert!(written > 0 && written < total, "{written} of {total}");

    let output = command
        .arg("--resume")
        .output()
        .expect("radiogate runs again");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(records(&out), total);

    let config = dir.path().join("worker.toml");
    let worker_out = dir.path().join("worker.jsonl");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"files\"\ninputs = [{:?}]\n[inference]\nmodel = {:?}\n\
             [sink]\npath = {:?}\n",
            inputs.display().to_string(),
            common::model().display().to_string(),
            worker_out.display().to_string()
        ),
    )
    .expect("write");
    let worker = std::process::Command::new(env!("CARGO_BIN_EXE_radiogate"))
        .args(["run", "--log-level", "warn", "--config"])
        .arg(&config)
        .current_dir(common::repo())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("radiogate run starts");
    let output = stop_part_way(worker, &worker_out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(records(&worker_out) < total, "stopped part way");
}
