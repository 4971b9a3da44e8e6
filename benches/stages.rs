//! Criterion micro-benchmarks of the per-item CPU stages (`cargo bench --bench stages`):
//! cutting a window from a FITS file, sigma clipping, the whole preprocessing
//! (clipping, thresholding, crop, scaling, normalisation), and the attention summary.
//!
//! Inputs are the bundled real FIRST cutouts (`samples/first`); the attention maps are
//! deterministic stand-ins with the shipped model's shapes (gates of side 37, 75 and 150),
//! so the benchmarks need neither ONNX Runtime nor a model.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use radiogate::config::{CutoutConfig, SourceConfig, SummaryConfig};
use radiogate::cutout::Cutter;
use radiogate::domain::{AttentionMap, Cutout, ModelOutput};
use radiogate::{preprocess, source, summary};

fn cutouts() -> (Cutter, Vec<radiogate::proto::SourceDetection>, Vec<Cutout>) {
    let cutter = Cutter::new(&CutoutConfig {
        mosaics: Vec::new(),
        workers: 1,
        ..CutoutConfig::default()
    })
    .expect("no mosaics to index");
    let detections: Vec<_> = source::open(&SourceConfig::Files {
        inputs: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples/first")],
        survey: "FIRST".into(),
    })
    .expect("samples/first is readable")
    .flatten()
    .map(|d| d.message)
    .collect();
    let cutouts = detections
        .iter()
        .map(|d| cutter.cut(d).expect("the bundled samples cut"))
        .collect();
    (cutter, detections, cutouts)
}

fn model_output(seed: usize) -> ModelOutput {
    let map = |side: usize| AttentionMap {
        side,
        values: (0..side * side)
            .map(|i| {
                let (y, x) = ((i / side) as f32, (i % side) as f32);
                let c = side as f32 / 2.0 + (seed % 7) as f32;
                (-((x - c).powi(2) + (y - c).powi(2)) / (side as f32 * 2.0)).exp()
                    + ((i * 2_654_435_761 + seed) % 1000) as f32 * 1e-5
            })
            .collect(),
    };
    ModelOutput {
        probs: [0.3, 0.7],
        attention: vec![map(37), map(75), map(150)],
    }
}

fn stages(c: &mut Criterion) {
    let (cutter, detections, cutouts) = cutouts();
    let n = cutouts.len();

    let mut i = 0;
    c.bench_function("cut (300x300 from a FITS file)", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(cutter.cut(&detections[i]).expect("cuts"))
        })
    });
    c.bench_function("sigma clipping (300x300)", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(preprocess::sigma_clipped_bounds(&cutouts[i].pixels))
        })
    });
    c.bench_function("prepare (clip, threshold, crop, scale, normalise)", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(preprocess::prepare(&cutouts[i].pixels).expect("prepares"))
        })
    });

    let prepared: Vec<_> = cutouts
        .iter()
        .map(|c| preprocess::prepare(&c.pixels).expect("prepares"))
        .collect();
    c.bench_function("emission shape (islands, largest size; 150x150)", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(preprocess::emission::measure(
                &prepared[i].image_u8,
                radiogate::domain::MODEL_SIZE,
                None,
            ))
        })
    });
    let outputs: Vec<_> = (0..n).map(model_output).collect();
    let cfg = SummaryConfig {
        grid: 30,
        zstd_level: 3,
        per_gate_maps: false,
    };
    c.bench_function("attention summary (3 gates, 30x30 grid)", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(
                summary::attention_summary(
                    &prepared[i],
                    &outputs[i],
                    cutouts[i].sky.as_ref(),
                    &cfg,
                )
                .expect("summarises"),
            )
        })
    });
}

criterion_group!(benches, stages);
criterion_main!(benches);
