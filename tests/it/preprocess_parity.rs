//! Parity with the training data: every raw FIRST cutout of the MiraBest test set, cut by
//! the `Cutter` at its centre and prepared by `preprocess::prepare`, must give the uint8
//! image stored in MiraBest's `test_batch` (at least 155 of 157 identical, every pixel
//! within 1 grey level; the measured result is 157 of 157 identical).
//!

use std::time::{Duration, Instant};

use radiogate::config::CutoutConfig;
use radiogate::cutout::Cutter;
use radiogate::preprocess::emission::measure;
use radiogate::preprocess::prepare;
use radiogate::proto::{SourceDetection, source_detection::Pixels};

use crate::common;

#[test]
fn mirabest_test_batch_is_reproduced_from_the_raw_fits() {
    let shared = common::shared_data();
    let golden = common::mirabest_test_batch();
    assert_eq!(golden.len(), 157);

    let cutter = Cutter::new(&CutoutConfig {
        mosaics: vec![],
        workers: 1,
        ..CutoutConfig::default()
    })
    .expect("no mosaics needed");
    let mut files: Vec<_> = std::fs::read_dir(shared.join("first-cutouts/mirabest-test"))
        .expect("../shared/data/first-cutouts/mirabest-test")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "fits"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 157);

    let (mut identical, mut worst, mut differing_pixels) = (0, 0u8, 0usize);
    let (mut cut_time, mut prep_time) = (Duration::ZERO, Duration::ZERO);
    for path in &files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        let expected = golden
            .get(stem)
            .unwrap_or_else(|| panic!("{stem} is not in test_batch"));
        let det = SourceDetection {
            source_id: stem.to_string(),
            centre_of_cutout: true,
            pixels: Some(Pixels::FitsPath(path.display().to_string())),
            ..Default::default()
        };
        let t = Instant::now();
        let cutout = cutter.cut(&det).unwrap_or_else(|e| panic!("{stem}: {e}"));
        cut_time += t.elapsed();
        assert_eq!(
            (cutout.provenance.x0, cutout.provenance.y0),
            (0, 0),
            "{stem}: the whole file is the window"
        );
        let t = Instant::now();
        let prepared = prepare(&cutout.pixels).unwrap_or_else(|e| panic!("{stem}: {e}"));
        prep_time += t.elapsed();

        let diffs: Vec<u8> = prepared
            .image_u8
            .iter()
            .zip(expected)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        identical += usize::from(max == 0);
        worst = worst.max(max);
        differing_pixels += diffs.iter().filter(|&&d| d > 0).count();
        if max > 0 {
            eprintln!(
                "{stem}: {} pixels differ, by up to {max}",
                diffs.iter().filter(|&&d| d > 0).count()
            );
        }
        // The model input is the same image, normalised to [-1, 1].
        for (&u, &v) in prepared.image_u8.iter().zip(&prepared.input) {
            assert_eq!(v, (f32::from(u) / 255.0 - 0.5) / 0.5);
        }
    }
    let n = files.len() as u32;
    eprintln!(
        "{identical}/{} identical, {differing_pixels} pixels differ, worst {worst} grey levels; \
         mean cut {:?}, mean prepare {:?} (debug build unless --release)",
        files.len(),
        cut_time / n,
        prep_time / n
    );
    assert!(identical >= 155, "only {identical} of 157 images identical");
    assert!(worst <= 1, "a pixel differs by {worst} grey levels");
}

/// The emission's extent (islands, pixels, largest size, truncated), measured by the worker
/// (`preprocess::emission`) and by the Python that measures the training images for the model
/// card (`radiogate_model.morphology`), is the same on every MiraBest test image.
#[test]
fn emission_extent_is_measured_as_python_measures_the_training_images() {
    let golden = common::mirabest_test_batch();
    let mut stems: Vec<&String> = golden.keys().collect();
    stems.sort();
    let dir = tempfile::tempdir().expect("temp dir");
    let images = dir.path().join("images.u8");
    let bytes: Vec<u8> = stems.iter().flat_map(|s| golden[*s].clone()).collect();
    std::fs::write(&images, bytes).expect("write images");
    let output = common::python3(
        &[
            "-m".as_ref(),
            "radiogate_model.morphology".as_ref(),
            "shapes".as_ref(),
            images.as_os_str(),
        ],
        &common::repo().join("python"),
    );
    let python = String::from_utf8(output).expect("UTF-8");
    let lines: Vec<&str> = python.lines().collect();
    assert_eq!(lines.len(), stems.len());
    let mut islands = [0usize; 4];
    let mut truncated = 0;
    for (stem, line) in stems.iter().zip(lines) {
        let fields: Vec<&str> = line.split('\t').collect();
        let rust = measure(&golden[*stem], radiogate::domain::MODEL_SIZE, None);
        assert_eq!(
            (fields[0], fields[1]),
            (
                rust.islands.to_string().as_str(),
                rust.pixels.to_string().as_str()
            ),
            "{stem}"
        );
        let size: f64 = fields[2].parse().expect("a size");
        assert!(
            (size - f64::from(rust.largest_size)).abs() < 1e-4,
            "{stem}: Python {size}, Rust {}",
            rust.largest_size
        );
        assert_eq!(fields[3] == "1", rust.truncated, "{stem}");
        islands[(rust.islands as usize).min(3)] += 1;
        truncated += usize::from(rust.truncated);
    }
    // Every test image has an island (MiraBest's sources are extended and bright), and some
    // reach the edge of the crop.
    assert_eq!(islands[0], 0, "{islands:?}");
    assert!(truncated > 0 && truncated < stems.len() / 4, "{truncated}");
}
