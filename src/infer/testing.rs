//! Test helpers shared by this crate's unit tests: the one place that names the model the
//! tests run, and the bundled sample of real MiraBest images (`tests/data/`, written by
//! `scripts/infer-golden.py`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ExecutionProvider, InferenceConfig};
use crate::domain::MODEL_SIZE;

/// The model every test runs. When it changes, rerun `scripts/infer-golden.py --model` on
/// it so that the golden outputs follow.
pub(crate) const TEST_MODEL: &str = "models/agcnn-mirabest-confident.onnx";

/// A path relative to the repository root.
pub(crate) fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// CPU inference of [`TEST_MODEL`] with one intra-op thread per session.
pub(crate) fn test_config(sessions: usize) -> InferenceConfig {
    InferenceConfig {
        model: repo_path(TEST_MODEL),
        model_name: "agcnn-mirabest-confident".to_string(),
        runtime_library: None,
        execution_provider: ExecutionProvider::Cpu,
        sessions,
        intra_threads: 1,
        live_intra_threads: 0,
        views: 1,
    }
}

/// One image of the bundled MiraBest sample.
#[derive(Debug, Clone)]
pub(crate) struct SampleImage {
    /// As MiraBest stores it: uint8, row-major, `MODEL_SIZE` x `MODEL_SIZE`.
    pub image_u8: Vec<u8>,
}

impl SampleImage {
    /// The model input: the training normalisation (v / 255 - 0.5) / 0.5 in float32.
    pub fn input(&self) -> Vec<f32> {
        self.image_u8
            .iter()
            .map(|&v| (f32::from(v) / 255.0 - 0.5) / 0.5)
            .collect()
    }
}

#[derive(Deserialize)]
struct SampleIndex {
    side: usize,
    /// One entry per image (names and labels, for people; the tests need only the count).
    images: Vec<serde::de::IgnoredAny>,
}

/// The 16 bundled MiraBest test images (8 FRI, then 8 FRII).
pub(crate) fn mirabest_sample() -> Vec<SampleImage> {
    let index = std::fs::read(repo_path("tests/data/mirabest-sample.json"))
        .expect("tests/data/mirabest-sample.json");
    let index: SampleIndex = serde_json::from_slice(&index).expect("sample index is JSON");
    assert_eq!(index.side, MODEL_SIZE);
    let packed = std::fs::read(repo_path("tests/data/mirabest-sample.u8.zst"))
        .expect("tests/data/mirabest-sample.u8.zst");
    let pixels = zstd::decode_all(packed.as_slice()).expect("sample pixels are zstd");
    assert_eq!(pixels.len(), index.images.len() * MODEL_SIZE * MODEL_SIZE);
    index
        .images
        .into_iter()
        .zip(pixels.chunks_exact(MODEL_SIZE * MODEL_SIZE))
        .map(|(_, image)| SampleImage {
            image_u8: image.to_vec(),
        })
        .collect()
}
