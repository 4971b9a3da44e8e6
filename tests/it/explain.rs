//! Explainability end to end: `radiogate explain` on real FIRST cutouts (classified now, or
//! taken from a results file in either format), and the HTML report of `classify --report`
//! opened in a real headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use radiogate::config::{Config, OutputFormat, SinkConfig};
use radiogate::explain::{self, ExplainError, FigureOptions, Target};
use radiogate::pipeline::{RunOptions, RunSummary};
use radiogate::proto;
use radiogate::sink::record::{LabelName, Record};

use crate::common;

const SOURCE: &str = "200_143.066+018.072_0.1474_0138.72";

fn sample(source_id: &str) -> PathBuf {
    common::sample_dir().join(format!("{source_id}.fits"))
}

fn test_config() -> Config {
    let mut config = Config::default();
    config.inference.model = common::model();
    config.inference.model_name = "test-model".into();
    config
}

fn decode_png(path: &Path) -> image::RgbImage {
    let bytes = std::fs::read(path).expect("the PNG was written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .expect("a valid PNG")
        .to_rgb8()
}

fn run_with_report(config: Config, report: &Path) -> RunSummary {
    common::run_with(
        config,
        RunOptions {
            report: Some(report.to_path_buf()),
            ..RunOptions::default()
        },
    )
}

#[test]
fn explain_draws_a_real_first_cutout_as_classify_sees_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("nested/explain.png");
    let done = explain::explain(
        &Target::Fits(sample(SOURCE)),
        &test_config(),
        FigureOptions {
            size: 450,
            gates: false,
        },
        &out,
    )
    .expect("explain");
    let img = decode_png(&out);
    assert_eq!(img.dimensions(), (done.width, done.height));
    assert_eq!(img.width(), 450);
    // Text bands above and below the 450x450 panel, no more than a third of it.
    assert!(img.height() > 450 && img.height() < 600, "{}", img.height());
    // The heat map coloured the panel (pixels that are not grey).
    let coloured = img.pixels().filter(|p| p[0] != p[2]).count();
    assert!(coloured > 10_000, "{coloured} coloured pixels");
    // Emission contours were drawn.
    assert!(
        img.pixels()
            .any(|p| *p == radiogate::render::CONTOUR_COLOUR)
    );

    // The label and confidence are the ones `classify` gives the same file.
    let results = dir.path().join("results.jsonl");
    common::run(common::files_config(vec![sample(SOURCE)], &results));
    let Some(Record::Classification(c)) = common::read(&results).into_iter().next() else {
        panic!("no classification");
    };
    assert_eq!(c.label, LabelName::Frii);
    assert_eq!(done.label, proto::Label::Frii);
    assert_eq!(done.confidence, c.confidence);

    // With gate panels the picture grows by a row and stays as wide.
    let gates = dir.path().join("gates.png");
    let with_gates = explain::explain(
        &Target::Fits(sample(SOURCE)),
        &test_config(),
        FigureOptions {
            size: 450,
            gates: true,
        },
        &gates,
    )
    .expect("explain with gates");
    let img = decode_png(&gates);
    assert_eq!(img.width(), 450);
    assert!(img.height() > done.height + 150, "{}", img.height());
    assert_eq!(img.height(), with_gates.height);
}

#[test]
fn explain_from_results_recuts_the_pixels_and_draws_the_same_picture() {
    let dir = tempfile::tempdir().expect("temp dir");
    let jsonl = dir.path().join("results.jsonl");
    let pb = dir.path().join("results.pb");
    common::run(common::files_config(vec![common::sample_dir()], &jsonl));
    let mut protobuf = common::files_config(vec![common::sample_dir()], &pb);
    protobuf.sink = SinkConfig::File {
        path: Some(pb.clone()),
        format: OutputFormat::Protobuf,
        resume: false,
    };
    common::run(protobuf);

    let options = FigureOptions::default();
    let draw = |target: Target, name: &str| {
        let out = dir.path().join(name);
        explain::explain(&target, &test_config(), options, &out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::read(out).expect("PNG")
    };
    let from_jsonl = draw(
        Target::Result {
            results: jsonl.clone(),
            source_id: SOURCE.into(),
            fits: None,
        },
        "jsonl.png",
    );
    let from_pb = draw(
        Target::Result {
            results: pb.clone(),
            source_id: SOURCE.into(),
            fits: None,
        },
        "pb.png",
    );
    let from_fits = draw(Target::Fits(sample(SOURCE)), "fits.png");
    assert_eq!(decode_png(&dir.path().join("jsonl.png")).width(), 600);
    assert!(
        from_jsonl == from_pb,
        "JSON Lines and protobuf results draw the same"
    );
    assert!(
        from_jsonl == from_fits,
        "a result read back draws what classifying the file now draws"
    );

    // A source that is not there, or was rejected, is an error that says so.
    let missing = explain::explain(
        &Target::Result {
            results: jsonl.clone(),
            source_id: "nope".into(),
            fits: None,
        },
        &test_config(),
        options,
        &dir.path().join("missing.png"),
    );
    assert!(
        matches!(&missing, Err(ExplainError::NotFound { source_id, rejection: None, .. }) if source_id == "nope"),
        "{missing:?}"
    );
    assert!(!dir.path().join("missing.png").exists());
}

#[test]
fn explain_command_line_from_a_results_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let results = dir.path().join("results.jsonl");
    common::run(common::files_config(vec![sample(SOURCE)], &results));
    let out = dir.path().join("cli.png");
    let output = Command::new(env!("CARGO_BIN_EXE_radiogate"))
        .current_dir(common::repo())
        .args(["explain", "--size", "300", "--gates", "--results"])
        .arg(&results)
        .args(["--source-id", SOURCE, "--out"])
        .arg(&out)
        .output()
        .expect("radiogate runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Gate maps are not in classify's default results: no gate row, just the main panel.
    let img = decode_png(&out);
    assert_eq!(img.width(), 300);
    assert!(img.height() < 300 + 150, "{}", img.height());

    // `classify --report` writes the report beside the results.
    let report = dir.path().join("report.html");
    let output = Command::new(env!("CARGO_BIN_EXE_radiogate"))
        .current_dir(common::repo())
        .args(["classify", "--quiet", "--model"])
        .arg(common::model())
        .arg("--out")
        .arg(dir.path().join("again.jsonl"))
        .arg("--report")
        .arg(&report)
        .arg(sample(SOURCE))
        .output()
        .expect("radiogate runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let html = std::fs::read_to_string(&report).expect("report written");
    assert_eq!(html.matches("<figure class=\"card\"").count(), 1);

    // Without a FITS file or --results, clap refuses (exit 2).
    let refused = Command::new(env!("CARGO_BIN_EXE_radiogate"))
        .args(["explain", "--out"])
        .arg(dir.path().join("x.png"))
        .output()
        .expect("radiogate runs");
    assert_eq!(refused.status.code(), Some(2));
}

/// A MiraBest test source (FRII at 0.99, 170 arcsec) whose emission reaches the edge of the
/// model's image.
const CUT_OFF: &str = "200_138.991+041.484_0.1510_0015.63.fits";

/// The bundled sample, a source cut off at the model image's edge and one truncated FITS
/// file: 21 sources, 1 rejection.
fn classify_with_report(dir: &Path) -> (PathBuf, Vec<Record>) {
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).expect("inputs");
    for entry in std::fs::read_dir(common::sample_dir()).expect("sample") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "fits") {
            std::fs::copy(&path, inputs.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let mirabest = common::shared_data().join("first-cutouts/mirabest-test");
    std::fs::copy(mirabest.join(CUT_OFF), inputs.join(CUT_OFF)).expect("copy");
    let bytes = std::fs::read(sample(SOURCE)).expect("sample");
    std::fs::write(inputs.join("zz_truncated <b>.fits"), &bytes[..4000]).expect("bad file");
    let results = dir.join("results.jsonl");
    let report = dir.join("report.html");
    let summary = run_with_report(common::files_config(vec![inputs], &results), &report);
    assert_eq!((summary.classified, summary.rejected), (21, 1));
    assert_eq!(summary.truncated, 1);
    (report, common::read(&results))
}

#[test]
fn report_has_a_card_per_source_and_lists_rejections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (report, records) = classify_with_report(dir.path());
    let html = std::fs::read_to_string(&report).expect("report");
    let mut cards = 0;
    for record in &records {
        match record {
            Record::Classification(c) => {
                cards += 1;
                assert!(
                    html.contains(&format!("data-id=\"{}\"", c.source_id)),
                    "{}",
                    c.source_id
                );
            }
            Record::Rejection(r) => {
                assert_eq!(r.reason, "bad_fits");
                assert!(
                    html.contains("<td>zz_truncated &lt;b&gt;</td><td>bad_fits</td>"),
                    "the rejection row, escaped"
                );
            }
        }
    }
    assert_eq!(cards, 21);
    assert_eq!(html.matches("<figure class=\"card\"").count(), cards);
    assert_eq!(html.matches("data:image/png;base64,").count(), cards);
    assert!(html.contains("<h2>Rejections (1)</h2>"));
    // Bounded: small thumbnails, the whole page well under 20 KB a source.
    let size = std::fs::metadata(&report).expect("report").len();
    assert!(size < 20_000 * 22, "{size} bytes");
}

/// What headless Chromium made of a page: the DOM after its scripts ran, and the console
/// lines it logged (messages and uncaught exceptions).
fn chromium_dom(page: &Path, fragment: &str, profile: &Path) -> (String, Vec<String>) {
    let url = format!("file://{}{fragment}", page.display());
    let output = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium is installed (scripts/setup.sh installs the Debian package)");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let console = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        console,
    )
}

/// The values of `attribute` on every card of a dumped DOM, in document order.
fn card_attributes(dom: &str, attribute: &str) -> Vec<String> {
    dom.split("<figure class=\"card\"")
        .skip(1)
        .map(|card| {
            let tag = &card[..card.find('>').expect("tag end")];
            let key = format!(" {attribute}=\"");
            match tag.find(&key) {
                Some(at) => {
                    let value = &tag[at + key.len()..];
                    value[..value.find('"').expect("quote")].to_string()
                }
                None => String::new(),
            }
        })
        .collect()
}

#[test]
fn report_renders_in_headless_chromium_without_console_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (report, records) = classify_with_report(dir.path());
    let sources = records
        .iter()
        .filter(|r| matches!(r, Record::Classification(_)))
        .count();

    let (dom, console) = chromium_dom(&report, "", &dir.path().join("profile-1"));
    assert!(console.is_empty(), "console output: {console:#?}");
    assert!(
        dom.contains("<body data-js=\"ready\">"),
        "the page's script ran to its end"
    );
    assert_eq!(card_attributes(&dom, "data-id").len(), sources);
    assert!(dom.contains(&format!("{sources} of {sources} sources shown")));
    assert!(!dom.contains(" hidden"), "nothing filtered by default");

    // The controls work: FRII only, most confident first, none under 40 arcsec, none cut
    // off at the image's edge (state from the URL fragment).
    let (dom, console) = chromium_dom(
        &report,
        "#label=FRII&min=0.8&las=40&whole=1&sort=confidence-desc",
        &dir.path().join("profile-2"),
    );
    assert!(console.is_empty(), "console output: {console:#?}");
    let labels = card_attributes(&dom, "data-label");
    let confidence: Vec<f32> = card_attributes(&dom, "data-confidence")
        .iter()
        .map(|c| c.parse().expect("number"))
        .collect();
    assert_eq!(labels.len(), sources);
    assert!(
        confidence.windows(2).all(|w| w[0] >= w[1]),
        "{confidence:?}"
    );
    let las: Vec<f32> = card_attributes(&dom, "data-las")
        .iter()
        .map(|l| l.parse().expect("number"))
        .collect();
    let cut_off: Vec<bool> = card_attributes(&dom, "data-truncated")
        .iter()
        .map(|t| t == "true")
        .collect();
    let shown: Vec<usize> = (0..sources)
        .filter(|&i| !hidden_attr_present(&dom, i))
        .collect();
    let passes = |i: usize| labels[i] == "FRII" && confidence[i] >= 0.8;
    let expected: Vec<usize> = (0..sources)
        .filter(|&i| passes(i) && las[i] >= 40.0 && !cut_off[i])
        .collect();
    assert!(
        (0..sources).any(|i| passes(i) && las[i] < 40.0),
        "the size floor must hide a source here for the test to mean anything"
    );
    assert!(
        (0..sources).any(|i| passes(i) && las[i] >= 40.0 && cut_off[i]),
        "so must the whole-sources filter"
    );
    assert!(!expected.is_empty());
    assert_eq!(shown, expected);
    assert!(dom.contains(&format!("{} of {sources} sources shown", expected.len())));
}

/// Whether the `index`-th card of a dumped DOM carries the boolean `hidden` attribute.
fn hidden_attr_present(dom: &str, index: usize) -> bool {
    let card = dom
        .split("<figure class=\"card\"")
        .nth(index + 1)
        .expect("card");
    card[..card.find('>').expect("tag end")]
        .split_whitespace()
        .any(|a| a == "hidden" || a.starts_with("hidden="))
}

#[test]
fn explain_a_catalogue_result_cuts_the_same_window_from_its_mosaic() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The source's position from its own file, then a catalogue position 10 pixels
    // (FIRST: 1.8 arcsec) further north, so that the window is not the file's own.
    let files_out = dir.path().join("files.jsonl");
    common::run(common::files_config(vec![sample(SOURCE)], &files_out));
    let Some(Record::Classification(c)) = common::read(&files_out).into_iter().next() else {
        panic!("no classification");
    };
    let catalog = dir.path().join("catalog.csv");
    std::fs::write(
        &catalog,
        format!("source_id,ra,dec\nJ1,{:.10},{:.10}\n", c.ra, c.dec + 0.005),
    )
    .expect("catalogue");
    let results = dir.path().join("catalog.jsonl");
    let mut config = common::files_config(vec![], &results);
    config.source = radiogate::config::SourceConfig::Catalog {
        path: catalog,
        survey: "FIRST".into(),
        columns: Default::default(),
    };
    config.cutout.mosaics = vec![common::sample_dir()];
    common::run(config);
    let records = common::read(&results);
    let Some(Record::Classification(c)) = records.first() else {
        panic!("no classification: {records:?}");
    };
    let window = c.cutout.as_ref().expect("provenance");
    assert_eq!(window.file, sample(SOURCE).display().to_string());
    assert_ne!(window.y0, 0, "a window of its own");

    let target = Target::Result {
        results: results.clone(),
        source_id: "J1".into(),
        fits: None,
    };
    let out = dir.path().join("j1.png");
    explain::explain(&target, &test_config(), FigureOptions::default(), &out)
        .expect("explain re-cuts the mosaic");
    assert_eq!(decode_png(&out).width(), 600);

    // A result whose window does not match what its file gives is refused, not drawn.
    let Record::Classification(mut moved) = records[0].clone() else {
        unreachable!()
    };
    if let Some(cutout) = moved.cutout.as_mut() {
        cutout.y0 += 3;
    }
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(
        &tampered,
        serde_json::to_string(&Record::Classification(moved)).expect("json") + "\n",
    )
    .expect("write");
    let refused = explain::explain(
        &Target::Result {
            results: tampered,
            source_id: "J1".into(),
            fits: None,
        },
        &test_config(),
        FigureOptions::default(),
        &dir.path().join("tampered.png"),
    );
    assert!(
        matches!(refused, Err(ExplainError::Window { .. })),
        "{refused:?}"
    );
}
