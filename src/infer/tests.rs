//! Inference against the real ONNX Runtime library (`scripts/fetch-onnxruntime.sh`) and the
//! real model ([`TEST_MODEL`]).

use serde::Deserialize;

use super::testing::{TEST_MODEL, mirabest_sample, repo_path, test_config};
use super::*;
use crate::config::{ExecutionProvider, Gpu, GpuWait, InferenceConfig};

/// What Python onnxruntime said about the sample (`scripts/infer-golden.py`).
#[derive(Deserialize)]
struct Golden {
    model_sha256: String,
    images: Vec<GoldenImage>,
}

#[derive(Deserialize)]
struct GoldenImage {
    probs: [f32; 2],
    attention: Vec<GoldenMap>,
}

#[derive(Deserialize)]
struct GoldenMap {
    side: usize,
    sum: f64,
    argmax: usize,
    samples: Vec<f32>,
}

fn golden() -> Golden {
    let text = std::fs::read(repo_path("tests/data/infer-golden.json"))
        .expect("tests/data/infer-golden.json");
    serde_json::from_slice(&text).expect("golden file is JSON")
}

fn start(sessions: usize) -> (Inference, proto::ModelInfo) {
    Inference::start(&test_config(sessions)).expect("the test model starts")
}

/// One session of the test model, driven directly (no job queue).
fn worker() -> session::Worker {
    worker_of(&test_config(1))
}

/// One session of `cfg`'s model, driven directly.
fn worker_of(cfg: &InferenceConfig) -> session::Worker {
    let runtime = runtime::runtime(cfg.runtime_library.as_deref()).expect("runtime");
    let model = std::fs::read(&cfg.model).expect("the model file");
    session::Worker::load(runtime, cfg, &model).expect("session")
}

/// The sample's model inputs, in order.
fn sample_inputs() -> Vec<Vec<f32>> {
    mirabest_sample().iter().map(|s| s.input()).collect()
}

fn max_abs_diff(a: &ModelOutput, b: &ModelOutput) -> f32 {
    assert_eq!(a.attention.len(), b.attention.len());
    let probs = a.probs.iter().zip(&b.probs).map(|(x, y)| (x - y).abs());
    let maps = a.attention.iter().zip(&b.attention).flat_map(|(x, y)| {
        assert_eq!(x.side, y.side);
        x.values.iter().zip(&y.values).map(|(u, v)| (u - v).abs())
    });
    probs.chain(maps).fold(0.0, f32::max)
}

#[tokio::test]
async fn reports_the_model_it_loaded() {
    let (inference, info) = start(1);
    assert_eq!(info.name, "agcnn-mirabest-confident");
    assert_eq!(info.execution_provider, "cpu");
    // Hashed by Python's hashlib when the golden file was written.
    let golden = golden();
    assert_eq!(
        info.sha256, golden.model_sha256,
        "{TEST_MODEL} changed: rerun scripts/infer-golden.py"
    );
    assert_eq!(inference.gates(), 3);
}

#[tokio::test]
async fn matches_python_onnxruntime_on_real_images() {
    let golden = golden();
    let sample = mirabest_sample();
    assert_eq!(sample.len(), golden.images.len());
    let (inference, _) = start(1);
    let outputs = inference
        .infer(sample.iter().map(|s| s.input()).collect())
        .await
        .expect("batch runs");

    let mut worst = 0.0f32;
    for (i, (out, want)) in outputs.iter().zip(&golden.images).enumerate() {
        for (p, q) in out.probs.iter().zip(&want.probs) {
            worst = worst.max((p - q).abs());
        }
        assert_eq!(out.attention.len(), want.attention.len());
        for (gate, (map, want)) in out.attention.iter().zip(&want.attention).enumerate() {
            assert_eq!(map.side, want.side, "image {i} gate {gate}");
            let n = map.values.len();
            let sum: f64 = map.values.iter().map(|&v| f64::from(v)).sum();
            assert!(
                (sum - want.sum).abs() <= 1e-6 * want.sum.abs(),
                "image {i} gate {gate}: sum {sum} vs {}",
                want.sum
            );
            let argmax = (0..n).fold(0, |best, j| {
                if map.values[j] > map.values[best] {
                    j
                } else {
                    best
                }
            });
            assert_eq!(argmax, want.argmax, "image {i} gate {gate}");
            let k = want.samples.len();
            for (s, &v) in want.samples.iter().enumerate() {
                worst = worst.max((map.values[s * (n - 1) / (k - 1)] - v).abs());
            }
        }
    }
    assert!(
        worst <= 1e-6,
        "largest difference from Python onnxruntime: {worst}"
    );
}

#[tokio::test]
async fn an_image_gives_the_same_outputs_alone_and_in_a_batch_of_32() {
    let sample = mirabest_sample();
    let (inference, _) = start(1);
    let alone = inference
        .infer(vec![sample[3].input()])
        .await
        .expect("batch of one");

    // Place image 3 at position 17 of 32, among the other images (flipped, so that the
    // batch holds 32 different inputs).
    let mut batch: Vec<Vec<f32>> = sample.iter().map(|s| s.input()).collect();
    batch.extend(
        sample
            .iter()
            .map(|s| s.input().into_iter().rev().collect::<Vec<f32>>()),
    );
    batch.swap(3, 17);
    let batched = inference.infer(batch).await.expect("batch of 32");
    assert_eq!(batched.len(), 32);
    let diff = max_abs_diff(&alone[0], &batched[17]);
    assert!(
        diff <= 1e-6,
        "batch composition changed an output by {diff}"
    );
    // And outputs are not all alike: position 17 really is image 3.
    assert!(max_abs_diff(&alone[0], &batched[3]) > 1e-3);
}

/// GPU sessions pad a batch to the next power of two with whatever that size's input
/// buffer held (here: for 5, rows of the batch of 8 before; for 3, zeros): the padding
/// changes no output.
#[test]
fn padded_batches_give_the_same_outputs() {
    let images = sample_inputs();
    let (mut plain, mut padded) = (worker(), worker().padding_batches());
    padded.run(&images[..8]).expect("a batch of 8");
    for n in [5, 3, 1] {
        let batch = &images[8..8 + n];
        let (want, got) = (
            plain.run(batch).expect("unpadded"),
            padded.run(batch).expect("padded"),
        );
        assert_eq!(got.len(), n);
        for (w, g) in want.iter().zip(&got) {
            let diff = max_abs_diff(w, g);
            assert!(
                diff <= 1e-6,
                "padding to {} changed an output by {diff}",
                n.next_power_of_two()
            );
        }
    }
}

/// Each batch size binds its input and outputs once: later batches of that size reuse the
/// same memory, and their outputs are their own (not the previous batch's).
#[test]
fn a_batch_size_reuses_its_input_and_outputs() {
    let images = sample_inputs();
    let mut w = worker();
    let first = w.run(&images[..2]).expect("a batch of 2");
    let addresses = w.output_addresses(2);
    assert_eq!(addresses.len(), 4, "probs and 3 attention maps");
    let second = w.run(&images[8..10]).expect("another batch of 2");
    w.run(&images[..1]).expect("a batch of 1");
    assert_eq!(w.output_addresses(2), addresses);
    assert_eq!(w.bound_sizes(), [1, 2]);
    let fresh = worker()
        .run(&images[8..10])
        .expect("the second batch alone");
    for (a, b) in second.iter().zip(&fresh) {
        assert_eq!(a, b, "a reused binding gives what a fresh session gives");
    }
    assert!(max_abs_diff(&first[0], &second[0]) > 1e-3);
}

/// The bindings kept hold at most twice the rows of the largest: every power of two a GPU
/// session pads to, the sizes a CPU session ran last.
#[test]
fn bindings_hold_at_most_twice_the_largest_batch() {
    let images = sample_inputs();
    let mut cpu = worker();
    for n in [8, 7, 6] {
        cpu.run(&images[..n]).expect("a batch");
    }
    // 6 + 7 + 8 = 21 rows > 2 x 8: the least recently run, 8, goes.
    assert_eq!(cpu.bound_sizes(), [6, 7]);
    cpu.run(&images[..7]).expect("a batch of 7 again");
    assert_eq!(cpu.bound_sizes(), [7, 6]);
    let mut gpu = worker().padding_batches();
    for n in [5, 3, 1, 2, 8] {
        gpu.run(&images[..n]).expect("a padded batch");
    }
    assert_eq!(gpu.bound_sizes(), [8, 2, 1, 4]);
}

/// The benchmarks' null model (`scripts/bench/null_model.py`) passes the worker's contract
/// check and answers with the real model's shapes: a broken one would waste a GPU session.
#[test]
fn the_benchmarks_null_model_keeps_the_contract() {
    let mut null = worker_of(&InferenceConfig {
        model: repo_path("benches/models/null.onnx"),
        ..test_config(1)
    });
    let images = sample_inputs();
    let (want, got) = (
        worker().run(&images[..2]).expect("the test model"),
        null.run(&images[..2]).expect("the null model"),
    );
    assert_eq!(got.len(), 2);
    for (w, g) in want.iter().zip(&got) {
        let sides = |o: &ModelOutput| o.attention.iter().map(|a| a.side).collect::<Vec<_>>();
        assert_eq!(sides(w), sides(g));
    }
}

/// A batch that fails for its size (a GPU out of memory) runs in halves: the same outputs,
/// in order. A failure that remains for one image is the batch's error.
#[test]
fn a_batch_that_fails_runs_in_halves() {
    let images = sample_inputs();
    let batch = &images[..11];
    let want = worker().run(batch).expect("the whole batch");
    let got = worker()
        .failing_above(3)
        .run_halving(batch)
        .expect("halves of at most 3");
    assert_eq!(got.len(), want.len());
    for (w, g) in want.iter().zip(&got) {
        assert!(max_abs_diff(w, g) <= 1e-6);
    }
    let always = worker().failing_above(0).run_halving(batch);
    assert!(matches!(always, Err(InferError::Run(_))));
}

#[tokio::test]
async fn concurrent_batches_on_two_sessions_keep_their_order() {
    let sample = mirabest_sample();
    let (inference, _) = start(2);
    let reference = inference
        .infer(sample.iter().map(|s| s.input()).collect())
        .await
        .expect("reference batch");

    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let inference = inference.clone();
            let images: Vec<Vec<f32>> = (0..5)
                .map(|k| sample[(t + k) % sample.len()].input())
                .collect();
            tokio::spawn(async move { inference.infer(images).await })
        })
        .collect();
    for (t, task) in tasks.into_iter().enumerate() {
        let outputs = task.await.expect("task ran").expect("batch runs");
        for (k, out) in outputs.iter().enumerate() {
            assert!(
                max_abs_diff(out, &reference[(t + k) % sample.len()]) <= 1e-6,
                "task {t} image {k}"
            );
        }
    }
    assert_eq!(
        tokio::task::spawn_blocking(move || inference.join())
            .await
            .expect("join"),
        0
    );
}

#[tokio::test]
async fn the_live_session_gives_the_same_outputs_and_overflows_to_the_others() {
    let sample = mirabest_sample();
    let config = InferenceConfig {
        live_intra_threads: 2,
        views: 1,
        ..test_config(1)
    };
    let (inference, _) = Inference::start(&config).expect("the test model starts");
    assert!(inference.has_live_session());
    let reference = inference
        .infer(sample.iter().map(|s| s.input()).collect())
        .await
        .expect("reference batch");

    // One at a time: each goes to the free live session (two intra-op threads).
    for (k, image) in sample.iter().enumerate() {
        let out = inference
            .infer_live(vec![image.input()])
            .await
            .expect("live");
        assert_eq!(max_abs_diff(&out[0], &reference[k]), 0.0, "image {k}, live");
    }
    // All at once: the live session holds two jobs at most, the rest go to the other session.
    let tasks: Vec<_> = (0..sample.len())
        .map(|k| {
            let (inference, image) = (inference.clone(), sample[k].input());
            tokio::spawn(async move { inference.infer_live(vec![image]).await })
        })
        .collect();
    for (k, task) in tasks.into_iter().enumerate() {
        let out = task.await.expect("task ran").expect("batch runs");
        assert_eq!(
            max_abs_diff(&out[0], &reference[k]),
            0.0,
            "image {k}, burst"
        );
    }
    assert_eq!(
        tokio::task::spawn_blocking(move || inference.join())
            .await
            .expect("join"),
        0,
        "both session threads end cleanly"
    );
}

#[tokio::test]
async fn join_returns_once_every_handle_is_gone() {
    let (inference, _) = start(2);
    let other = inference.clone();
    let joined = std::thread::spawn(move || inference.join());
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!joined.is_finished(), "a clone is still alive");
    assert_eq!(other.infer(Vec::new()).await.expect("empty batch").len(), 0);
    drop(other);
    assert_eq!(joined.join().expect("join thread"), 0);
}

#[tokio::test]
async fn wrong_input_sizes_are_refused_before_the_model_runs() {
    let (inference, _) = start(1);
    let images = vec![vec![0.0; MODEL_PIXELS], vec![0.0; 100]];
    match inference.infer(images).await {
        Err(InferError::BadInput { index: 1, len: 100 }) => {}
        other => panic!("expected BadInput for image 1, got {other:?}"),
    }
}

#[test]
fn a_model_that_breaks_the_contract_is_refused_at_start() {
    let cfg = InferenceConfig {
        model: repo_path("tests/data/wrong-contract.onnx"),
        ..test_config(1)
    };
    let err = Inference::start(&cfg).expect_err("wrong model");
    assert!(matches!(err, StartError::Contract { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("wrong-contract.onnx breaks the export contract"),
        "{msg}"
    );
    assert!(
        msg.contains("expected exactly one input `image`, found [`x`]"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected output `logits`") && msg.contains("no `probs` output"),
        "{msg}"
    );
}

#[test]
fn a_missing_model_is_refused_at_start() {
    let cfg = InferenceConfig {
        model: repo_path("models/no-such-model.onnx"),
        ..test_config(1)
    };
    let err = Inference::start(&cfg).expect_err("missing model");
    assert!(matches!(err, StartError::ReadModel { .. }), "{err}");
    assert!(err.to_string().contains("no-such-model.onnx"));
}

#[test]
fn zero_sessions_is_refused() {
    let err = Inference::start(&test_config(0)).expect_err("no sessions");
    assert!(matches!(err, StartError::NoSessions), "{err}");
}

/// The CPU-only runtime has neither provider: asking for one must stop the worker.
/// (`auto` leaves the CUDA driver alone, so the provider is what fails.)
#[test]
fn an_unavailable_gpu_provider_is_an_error_not_a_cpu_fallback() {
    let gpu = Gpu {
        wait: GpuWait::Auto,
        ..Gpu::on(0)
    };
    for provider in [
        ExecutionProvider::Cuda(gpu),
        ExecutionProvider::TensorRt(gpu),
    ] {
        let cfg = InferenceConfig {
            execution_provider: provider,
            ..test_config(1)
        };
        let err = Inference::start(&cfg).expect_err("no GPU provider in the CPU runtime");
        let msg = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(
            matches!(err, StartError::Provider { .. }),
            "{provider:?}: {msg}"
        );
        assert!(msg.contains(provider.name()), "{msg}");
    }
}

/// Every other wait sets the context's flag through the CUDA driver before any session
/// starts: without the driver, that is the startup error, and it names the setting.
#[test]
fn a_gpu_wait_that_cannot_be_set_stops_the_start() {
    let cfg = InferenceConfig {
        execution_provider: ExecutionProvider::Cuda(Gpu::on(0)),
        ..test_config(1)
    };
    let err = Inference::start(&cfg).expect_err("no CUDA provider in the CPU runtime");
    // SAFETY: only probes whether this machine has the driver.
    if unsafe { libloading::Library::new(DRIVER_LIBRARY) }.is_ok() {
        // A GPU machine: the flag is set, and the CPU-only runtime's provider fails.
        assert!(matches!(err, StartError::Provider { .. }), "{err}");
        return;
    }
    assert!(
        matches!(
            &err,
            StartError::GpuWait {
                source: GpuWaitError::Load { .. },
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("inference.gpu_wait") && msg.contains("`blocking`"),
        "{msg}"
    );
}

#[test]
fn a_second_runtime_library_in_the_same_process_is_refused() {
    runtime::runtime(None).expect("the vendored runtime loads");
    let other = repo_path("vendor/onnxruntime/libonnxruntime_providers_shared.so");
    let cfg = InferenceConfig {
        runtime_library: Some(other),
        ..test_config(1)
    };
    let err = Inference::start(&cfg).expect_err("another library");
    assert!(matches!(err, StartError::RuntimeMismatch { .. }), "{err}");
}
