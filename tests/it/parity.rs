//! End to end on real data: the worker over the raw FIRST FITS cutouts of the MiraBest test
//! set gives the same predictions as the model on the `test_batch` images it was trained
//! and evaluated with (the brief asks for at least 155 of 157).

use std::collections::HashMap;
use std::path::Path;

use radiogate::config::InferenceConfig;
use radiogate::infer::Inference;
use radiogate::sink::record::{ClassificationRecord, LabelName, Record};

use crate::common;

#[test]
fn worker_on_raw_fits_matches_model_on_test_batch() {
    let golden = common::mirabest_test_batch();
    assert_eq!(golden.len(), 157);

    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.jsonl");
    let summary = common::run(common::files_config(
        vec![common::shared_data().join("first-cutouts/mirabest-test")],
        &out,
    ));
    assert_eq!(
        (summary.classified, summary.rejected),
        (157, 0),
        "{summary:?}"
    );

    let stems: Vec<&String> = golden.keys().collect();
    let inputs: Vec<Vec<f32>> = stems.iter().map(|s| normalised(&golden[*s])).collect();
    let outputs = reference_outputs(inputs);
    let reference: HashMap<&str, [f32; 2]> = stems
        .iter()
        .map(|s| s.as_str())
        .zip(outputs.iter().map(|o| o.probs))
        .collect();

    let (mut same, mut max_diff, mut truncated) = (0, 0f32, 0);
    for record in common::read(&out) {
        let Record::Classification(c) = record else {
            panic!("unexpected rejection")
        };
        truncated += u64::from(c.emission.expect("the emission").truncated);
        let want = reference[c.source_id.as_str()];
        let want_label = if want[1] > want[0] {
            LabelName::Frii
        } else {
            LabelName::Fri
        };
        same += usize::from(c.label == want_label);
        max_diff = max_diff.max((c.probabilities.frii - want[1]).abs());
    }
    eprintln!("same prediction for {same} of 157; largest P(FRII) difference {max_diff:e}");
    assert!(same >= 155, "only {same} of 157 predictions agree");
    // The run counts the sources cut off at the model image's edge as their records flag
    // them (10 of the 157).
    assert_eq!(summary.truncated, truncated);
    assert!(truncated > 0 && truncated < 157 / 4, "{truncated}");
}

/// The fused form of the shipped model (`models/*-fused.onnx`: upsampling as matrix products,
/// ONNX Runtime's FusedConv; radiogate_model.fuse) through the whole worker over the 157 raw
/// cutouts: the shipped model's labels and its probabilities to float32 rounding.
#[test]
fn the_fused_form_classifies_as_the_model_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cutouts = vec![common::shared_data().join("first-cutouts/mirabest-test")];
    let mut results = Vec::new();
    for (name, model) in [
        ("model", common::model()),
        (
            "fused",
            common::repo().join("models/agcnn-mirabest-confident-fused.onnx"),
        ),
    ] {
        let out = dir.path().join(format!("{name}.jsonl"));
        let mut config = common::files_config(cutouts.clone(), &out);
        config.inference.model = model;
        let summary = common::run(config);
        assert_eq!(
            (summary.classified, summary.rejected),
            (157, 0),
            "{summary:?}"
        );
        results.push(classifications_by_id(common::read(&out)));
    }
    let (model, fused) = (&results[0], &results[1]);
    for (m, f) in model.iter().zip(fused) {
        assert_eq!((&m.source_id, m.label), (&f.source_id, f.label));
        let diff = (m.probabilities.frii - f.probabilities.frii).abs();
        assert!(diff <= 1e-5, "{}: P(FRII) {diff:e} apart", m.source_id);
        let sha = |c: &ClassificationRecord| c.model.as_ref().map(|m| m.sha256.clone());
        assert_ne!(sha(m), sha(f), "the fused form ran");
    }
}

/// A `test_batch` image as the model takes it.
fn normalised(image: &[u8]) -> Vec<f32> {
    image
        .iter()
        .map(|&v| (f32::from(v) / 255.0 - 0.5) / 0.5)
        .collect()
}

/// The shipped model's outputs for model inputs, run directly (no worker), 64 at a time.
fn reference_outputs(inputs: Vec<Vec<f32>>) -> Vec<radiogate::domain::ModelOutput> {
    let (inference, _) = Inference::start(&InferenceConfig {
        model: common::model(),
        model_name: "reference".into(),
        runtime_library: None,
        execution_provider: radiogate::config::ExecutionProvider::Cpu,
        sessions: 1,
        intra_threads: 2,
        live_intra_threads: 0,
        views: 1,
    })
    .expect("the model loads");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    inputs
        .chunks(64)
        .flat_map(|batch| {
            let outputs = runtime.block_on(inference.infer(batch.to_vec()));
            outputs.expect("reference inference")
        })
        .collect()
}

/// The classifications of a run by source id; a rejection fails the test.
fn classifications_by_id(records: Vec<Record>) -> Vec<ClassificationRecord> {
    let mut found: Vec<_> = records
        .into_iter()
        .map(|record| match record {
            Record::Classification(c) => c,
            Record::Rejection(r) => panic!("unexpected rejection {r:?}"),
        })
        .collect();
    found.sort_by(|a, b| a.source_id.cmp(&b.source_id));
    found
}

/// A plain float32 FITS image as this test needs it: (RA, Dec) of the reference point and
/// the `n` x `n` pixels, read from the file's bytes.
fn plain_image(bytes: &[u8]) -> ((f64, f64), usize, Vec<f32>) {
    let cards: Vec<&[u8]> = bytes.chunks(80).collect();
    let value = |key: &str| {
        cards
            .iter()
            .find(|c| c.starts_with(format!("{key:<8}=").as_bytes()))
            .and_then(|c| std::str::from_utf8(&c[10..]).ok())
            .and_then(|v| v.split('/').next())
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {key}"))
    };
    assert_eq!(value("BITPIX"), "-32");
    assert_eq!(value("CRPIX1"), "150.5");
    let n: usize = value("NAXIS1").parse().expect("NAXIS1");
    let end = cards
        .iter()
        .position(|c| c.starts_with(b"END "))
        .expect("END");
    let data = ((end + 1) * 80).div_ceil(2880) * 2880;
    let pixels = bytes[data..data + 4 * n * n]
        .chunks_exact(4)
        .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let crval = |k: &str| value(k).parse::<f64>().expect(k);
    ((crval("CRVAL1"), crval("CRVAL2")), n, pixels)
}

/// The 157 raw cutouts with every pixel split into 2 x 2: 0.9 arcsec pixels over the same
/// sky. The worker refuses them as they are (the model takes 1.8 arcsec pixels); with
/// `cutout.resample` each window is the original again, to rounding, and so is each
/// classification.
#[test]
fn finer_pixels_are_refused_or_resampled_to_the_originals() {
    let dir = tempfile::tempdir().expect("temp dir");
    let originals = common::shared_data().join("first-cutouts/mirabest-test");
    let fine = dir.path().join("fine");
    std::fs::create_dir(&fine).expect("mkdir");
    for entry in std::fs::read_dir(&originals).expect("cutouts") {
        let path = entry.expect("entry").path();
        let ((ra, dec), n, pixels) = plain_image(&std::fs::read(&path).expect("read"));
        let split: Vec<f32> = (0..4 * n * n)
            .map(|i| pixels[(i / (2 * n) / 2) * n + (i % (2 * n)) / 2])
            .collect();
        let cards: Vec<(&str, String)> = common::tan_cards(2 * n, ra, dec)
            .into_iter()
            .map(|(k, v)| match k {
                "CDELT1" => (k, "-0.00025".to_string()),
                "CDELT2" => (k, "0.00025".to_string()),
                _ => (k, v),
            })
            .collect();
        let name = path.file_name().expect("name");
        std::fs::write(
            fine.join(name),
            common::fits_f32(&common::cards_ref(&cards), &split),
        )
        .expect("write");
    }

    let classify = |inputs: &Path, resample: bool, name: &str| {
        let out = dir.path().join(name);
        let mut config = common::files_config(vec![inputs.to_path_buf()], &out);
        config.cutout.resample = resample;
        let summary = common::run(config);
        (summary, common::read(&out))
    };
    let (summary, records) = classify(&fine, false, "refused.jsonl");
    assert_eq!((summary.classified, summary.rejected), (0, 157));
    assert!(records.iter().all(|r| matches!(
        r,
        Record::Rejection(r) if r.reason == "pixel_scale" && r.detail.starts_with("pixels of 0.9000 x 0.9000 arcsec")
    )));

    let (summary, original) = classify(&originals, false, "original.jsonl");
    assert_eq!(summary.classified, 157);
    let (summary, resampled) = classify(&fine, true, "resampled.jsonl");
    assert_eq!(summary.classified, 157);
    let mut largest: f32 = 0.0;
    for (o, r) in classifications_by_id(original)
        .iter()
        .zip(&classifications_by_id(resampled))
    {
        assert_eq!((&o.source_id, o.label), (&r.source_id, r.label));
        largest = largest.max((o.probabilities.frii - r.probabilities.frii).abs());
        let cutout = r.cutout.as_ref().expect("provenance");
        assert!(cutout.resampled && (cutout.pixel_scale_arcsec - 0.9).abs() < 1e-5);
        assert_eq!((cutout.width, cutout.height), (600, 600), "{cutout:?}");
        assert!(!o.cutout.as_ref().expect("provenance").resampled);
    }
    assert!(largest <= 1e-6, "P(FRII) up to {largest:e} apart");
    eprintln!("resampled finer pixels: P(FRII) at most {largest:e} from the originals'");

    // `radiogate explain` of a resampled result resamples its file again, as the run did,
    // without being told to (its provenance says so).
    let mut config = radiogate::config::Config::default();
    config.inference.model = common::model();
    let done = radiogate::explain::explain(
        &radiogate::explain::Target::Result {
            results: dir.path().join("resampled.jsonl"),
            source_id: "200_143.066+018.072_0.1474_0138.72".into(),
            fits: None,
        },
        &config,
        radiogate::explain::FigureOptions::default(),
        &dir.path().join("explain.png"),
    )
    .expect("explained");
    assert_eq!(done.label, radiogate::proto::Label::Frii);
}

/// `inference.views = 8`: the worker over the 157 raw cutouts gives the labels of the model
/// averaged over the square's eight symmetries of the `test_batch` images, made here
/// independently (transposes and flips rather than the worker's turns), and scores what
/// the documentation says it scores (99 of the 104 confident sources, 95.2%).
#[test]
fn eight_views_average_the_model_over_the_squares_symmetries() {
    const SIDE: usize = radiogate::domain::MODEL_SIZE;
    let golden = common::mirabest_test_batch();
    let stems: Vec<&String> = golden.keys().collect();
    let symmetric = |image: &[f32], transpose: bool, flip_x: bool, flip_y: bool| -> Vec<f32> {
        let mut out = Vec::with_capacity(image.len());
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (x, y) = (
                    if flip_x { SIDE - 1 - x } else { x },
                    if flip_y { SIDE - 1 - y } else { y },
                );
                let (x, y) = if transpose { (y, x) } else { (x, y) };
                out.push(image[y * SIDE + x]);
            }
        }
        out
    };
    let mut inputs = Vec::new();
    for stem in &stems {
        let image = normalised(&golden[*stem]);
        for t in [false, true] {
            for fx in [false, true] {
                for fy in [false, true] {
                    inputs.push(symmetric(&image, t, fx, fy));
                }
            }
        }
    }
    let outputs = reference_outputs(inputs);
    let reference: HashMap<&str, f64> = stems
        .iter()
        .zip(outputs.chunks(8))
        .map(|(s, views)| {
            let frii = views.iter().map(|o| f64::from(o.probs[1])).sum::<f64>() / 8.0;
            (s.as_str(), frii)
        })
        .collect();

    // What the documentation reports: the confident FRI (10x) and FRII (20x) sources.
    let truth = |stem: &str| match stem.as_bytes() {
        [b'1', b'0', ..] => Some(LabelName::Fri),
        [b'2', b'0', ..] => Some(LabelName::Frii),
        _ => None,
    };
    let label = |frii: f64| {
        if frii > 0.5 {
            LabelName::Frii
        } else {
            LabelName::Fri
        }
    };
    let scored: Vec<bool> = reference
        .iter()
        .filter_map(|(stem, &frii)| truth(stem).map(|t| t == label(frii)))
        .collect();
    let correct = scored.iter().filter(|&&c| c).count();
    assert_eq!(
        (correct, scored.len()),
        (99, 104),
        "eight views on test_batch"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("views.jsonl");
    let mut config = common::files_config(
        vec![common::shared_data().join("first-cutouts/mirabest-test")],
        &out,
    );
    config.inference.views = 8;
    let summary = common::run(config);
    assert_eq!((summary.classified, summary.rejected), (157, 0));
    let (mut same, mut max_diff, mut worker_correct) = (0, 0f64, 0);
    for c in classifications_by_id(common::read(&out)) {
        assert_eq!(c.model.as_ref().map(|m| m.views), Some(8));
        let want = reference[c.source_id.as_str()];
        same += usize::from(c.label == label(want));
        max_diff = max_diff.max((f64::from(c.probabilities.frii) - want).abs());
        worker_correct += usize::from(truth(&c.source_id) == Some(c.label));
    }
    eprintln!(
        "eight views: same label for {same} of 157, largest P(FRII) difference {max_diff:e}; \
         the worker {worker_correct} of 104 confident correct"
    );
    assert!(same >= 155, "only {same} of 157 agree");
}
