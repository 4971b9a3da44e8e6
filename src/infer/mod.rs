//! Inference: everything that touches ONNX Runtime (`ort`) lives in this folder and
//! nowhere else. It owns loading the runtime library, the model and its export-contract
//! check, the execution provider, and the session threads; it hands out a cheap async
//! handle, [`Inference`], that runs batches of preprocessed images and returns
//! [`ModelOutput`]s in input order.
//!
//! It does not form batches (that is `batch`), preprocess images, or interpret the outputs
//! (that is `summary`).
//!
//! Each session lives on its own OS thread (`Session::run` takes `&mut self`); the threads
//! share one bounded job queue, and every job carries a oneshot channel for its reply, so
//! the async side never blocks. Dropping every handle closes the queue and ends the
//! threads; [`Inference::join`] waits for that.

mod contract;
mod gpu;
mod runtime;
mod session;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub mod views;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

pub use self::contract::Violations;
pub use self::gpu::{DRIVER_LIBRARY, GpuWaitError};
pub use self::runtime::{FETCH_SCRIPT, VENDOR_LIBRARY};
use self::session::{Job, SharedJobs, Worker};
use crate::config::{Gpu, GpuWait, InferenceConfig};
use crate::domain::{MODEL_PIXELS, MODEL_SIZE, ModelOutput};
use crate::proto;

/// Why inference could not start. Every variant stops the worker.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "ONNX Runtime library not found (tried {}); run {FETCH_SCRIPT}, or point ORT_DYLIB_PATH \
         or inference.runtime_library at libonnxruntime.so",
        display_paths(tried)
    )]
    RuntimeNotFound { tried: Vec<PathBuf> },
    #[error("cannot load ONNX Runtime from {}", path.display())]
    RuntimeLoad {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    #[error(
        "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
        loaded.display(),
        requested.display()
    )]
    RuntimeMismatch { loaded: PathBuf, requested: PathBuf },
    #[error("cannot create the ONNX Runtime environment")]
    Environment(#[source] ort::Error),
    #[error("inference.sessions is 0; at least one session is needed")]
    NoSessions,
    #[error("inference.views is {0}; it must be 1, 2, 4 or 8")]
    Views(usize),
    #[error("cannot read model {}", path.display())]
    ReadModel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot make session threads on GPU {device_id} wait by `{wait}` (inference.gpu_wait; \
         \"auto\" leaves CUDA's default)"
    )]
    GpuWait {
        device_id: i32,
        wait: &'static str,
        #[source]
        source: GpuWaitError,
    },
    #[error("cannot set the ONNX Runtime session options")]
    SessionOptions(#[source] ort::Error),
    #[error(
        "execution provider `{provider}` was asked for and cannot start (no fallback to the CPU)"
    )]
    Provider {
        provider: &'static str,
        #[source]
        source: ort::Error,
    },
    #[error("cannot load model {} with execution provider `{provider}`", path.display())]
    LoadModel {
        path: PathBuf,
        provider: &'static str,
        #[source]
        source: ort::Error,
    },
    #[error("model {} breaks the export contract: {violations}", path.display())]
    Contract {
        path: PathBuf,
        violations: Violations,
    },
    #[error("cannot start an inference thread")]
    Spawn(#[source] std::io::Error),
    #[error("an inference thread ended while loading the model")]
    ThreadDied,
}

/// Why one batch could not be run. The worker goes on; the batch's items are rejected
/// (except for [`InferError::Stopped`], which means inference is gone).
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("image {index} has {len} values, expected {MODEL_SIZE}x{MODEL_SIZE} = {MODEL_PIXELS}")]
    BadInput { index: usize, len: usize },
    #[error("ONNX Runtime failed to run the batch")]
    Run(#[source] ort::Error),
    #[error("model output `{name}`: {problem}")]
    Output { name: String, problem: String },
    #[error("the inference threads have stopped")]
    Stopped,
}

/// A cheap, cloneable handle to the session threads.
#[derive(Clone, Debug)]
pub struct Inference {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Queues batches for the session threads; bounded (one waiting job per session) so
    /// that callers wait for a free session instead of piling work up here.
    jobs_tx: mpsc::Sender<Job>,
    /// The live session's queue (`inference.live_intra_threads`): one waiting job at most;
    /// a job that finds it full goes to `jobs_tx` instead ([`Inference::infer_live`]).
    live_tx: Option<mpsc::Sender<Job>>,
    /// The session threads, taken by [`Inference::join`].
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Attention gates the model has.
    gates: usize,
}

impl Inference {
    /// Loads the runtime (once per process), reads and hashes the model, and starts
    /// `cfg.sessions` session threads, each with its own session. Returns once every
    /// session has loaded and passed the export-contract check, or with the first error.
    ///
    /// Blocking (it loads the model): call it before the async pipeline starts or from
    /// `spawn_blocking`.
    pub fn start(cfg: &InferenceConfig) -> Result<(Inference, proto::ModelInfo), StartError> {
        if cfg.sessions == 0 {
            return Err(StartError::NoSessions);
        }
        if views::set(cfg.views).is_none() {
            return Err(StartError::Views(cfg.views));
        }
        let runtime = runtime::runtime(cfg.runtime_library.as_deref())?;
        let model: Arc<[u8]> = std::fs::read(&cfg.model)
            .map_err(|source| StartError::ReadModel {
                path: cfg.model.clone(),
                source,
            })?
            .into();
        let info = proto::ModelInfo {
            name: cfg.model_name.clone(),
            sha256: hex::encode(Sha256::digest(&model)),
            execution_provider: cfg.execution_provider.name().to_string(),
            views: cfg.views as u32, // 8 at most (checked above)
        };

        // Before the first session creates the GPU's CUDA context.
        if let Some(gpu) = cfg.execution_provider.gpu() {
            gpu::set_wait(gpu.device_id, gpu.wait).map_err(|source| StartError::GpuWait {
                device_id: gpu.device_id,
                wait: gpu.wait.name(),
                source,
            })?;
        }

        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(cfg.sessions);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(cfg.sessions + 1);
        for index in 0..cfg.sessions {
            let name = format!("radiogate-infer-{index}");
            let spawned = spawn_session(name, runtime, cfg, &model, &jobs_rx, &ready_tx);
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => return Err(stop(jobs_tx, threads, StartError::Spawn(e))),
            }
        }
        let live_tx = if cfg.live_intra_threads > 0 {
            let (live_tx, live_rx) = mpsc::channel::<Job>(1);
            let live_cfg = InferenceConfig {
                intra_threads: cfg.live_intra_threads,
                ..cfg.clone()
            };
            let live_rx = Arc::new(Mutex::new(live_rx));
            let name = "radiogate-infer-live".to_string();
            match spawn_session(name, runtime, &live_cfg, &model, &live_rx, &ready_tx) {
                Ok(thread) => threads.push(thread),
                Err(e) => return Err(stop(jobs_tx, threads, StartError::Spawn(e))),
            }
            Some(live_tx)
        } else {
            None
        };
        drop(ready_tx);

        let mut gates = 0;
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(contract)) => gates = contract.gates,
                Ok(Err(e)) => return Err(stop(jobs_tx, threads, e)),
                Err(_) => return Err(stop(jobs_tx, threads, StartError::ThreadDied)),
            }
        }
        if let Some(gpu) = cfg.execution_provider.gpu() {
            log_gpu(gpu);
        }
        let shared = Shared {
            jobs_tx,
            live_tx,
            threads: Mutex::new(threads),
            gates,
        };
        Ok((
            Inference {
                shared: Arc::new(shared),
            },
            info,
        ))
    }

    /// Runs one batch of model inputs (each `MODEL_SIZE * MODEL_SIZE`, row-major,
    /// normalised to [-1, 1]) and returns one output per image, in order. Waits, without
    /// blocking the runtime, for a free place in the queue and then for the answer.
    /// Results do not depend on how images are grouped into batches.
    pub async fn infer(&self, images: Vec<Vec<f32>>) -> Result<Vec<ModelOutput>, InferError> {
        self.run(images, false).await
    }

    /// As [`Inference::infer`], on the live session (`inference.live_intra_threads`) when
    /// there is one and its queue has room (it runs one batch and holds one more): for a
    /// detection that nothing queues behind, one image on several cores. Otherwise on the
    /// other sessions, as `infer`. The outputs are the same either way: byte-identical over
    /// 2,512 cutouts with 1 and 2 intra-op threads, and pinned by tests.
    pub async fn infer_live(&self, images: Vec<Vec<f32>>) -> Result<Vec<ModelOutput>, InferError> {
        self.run(images, true).await
    }

    /// Whether there is a live session.
    pub fn has_live_session(&self) -> bool {
        self.shared.live_tx.is_some()
    }

    async fn run(&self, images: Vec<Vec<f32>>, live: bool) -> Result<Vec<ModelOutput>, InferError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        if let Some((index, image)) = images
            .iter()
            .enumerate()
            .find(|(_, image)| image.len() != MODEL_PIXELS)
        {
            return Err(InferError::BadInput {
                index,
                len: image.len(),
            });
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let mut job = Job {
            images,
            reply: reply_tx,
        };
        if let (true, Some(live_tx)) = (live, &self.shared.live_tx) {
            match live_tx.try_send(job) {
                Ok(()) => return reply_rx.await.map_err(|_| InferError::Stopped)?,
                Err(mpsc::error::TrySendError::Full(back)) => job = back,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(InferError::Stopped),
            }
        }
        self.shared
            .jobs_tx
            .send(job)
            .await
            .map_err(|_| InferError::Stopped)?;
        reply_rx.await.map_err(|_| InferError::Stopped)?
    }

    /// Number of attention maps in every [`ModelOutput`] (gates 1..=n).
    pub fn gates(&self) -> usize {
        self.shared.gates
    }

    /// Drops this handle and blocks until every session thread has ended, which happens
    /// once every other clone of the handle is dropped too and queued batches are
    /// answered. Returns how many threads ended by panicking (0 normally). Call it from
    /// `spawn_blocking` in async code.
    pub fn join(self) -> usize {
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        drop(self);
        threads
            .into_iter()
            .map(JoinHandle::join)
            .filter(Result::is_err)
            .count()
    }
}

/// Starts one session thread: it loads the model, says on `ready_tx` whether that worked,
/// and then serves jobs until the queue closes.
fn spawn_session(
    name: String,
    runtime: &'static runtime::Runtime,
    cfg: &InferenceConfig,
    model: &Arc<[u8]>,
    jobs_rx: &SharedJobs,
    ready_tx: &std::sync::mpsc::Sender<Result<contract::Contract, StartError>>,
) -> std::io::Result<JoinHandle<()>> {
    let (cfg, model, jobs_rx, ready_tx) = (
        cfg.clone(),
        model.clone(),
        jobs_rx.clone(),
        ready_tx.clone(),
    );
    std::thread::Builder::new().name(name).spawn(move || {
        match Worker::load(runtime, &cfg, &model) {
            Ok(worker) => {
                // start() waits for every thread's answer, so the receiver is still there.
                let _ = ready_tx.send(Ok(worker.contract()));
                // The session holds its own copy of the weights: free ours now.
                drop((ready_tx, model));
                worker.serve(jobs_rx);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        }
    })
}

/// Closes the queue, waits for the threads that did start, and passes `error` on.
fn stop(jobs_tx: mpsc::Sender<Job>, threads: Vec<JoinHandle<()>>, error: StartError) -> StartError {
    drop(jobs_tx);
    for thread in threads {
        let _ = thread.join(); // a panic here changes nothing: we are already failing
    }
    error
}

/// Logs how the GPU sessions run: their arithmetic and layout as configured, and how their
/// threads really wait, as CUDA reports it once the sessions hold the context (ONNX Runtime
/// or a library it loads could have set other flags).
fn log_gpu(gpu: Gpu) {
    let (device_id, asked) = (gpu.device_id, gpu.wait);
    tracing::info!(
        device_id,
        tf32 = gpu.tf32,
        nhwc = gpu.nhwc,
        "GPU sessions started"
    );
    match gpu::wait_in_effect(device_id) {
        Ok(effect) if asked == GpuWait::Auto || effect == asked => tracing::info!(
            device_id,
            gpu_wait = effect.name(),
            "session threads wait for the GPU"
        ),
        Ok(effect) => tracing::warn!(
            device_id,
            asked = asked.name(),
            gpu_wait = effect.name(),
            "session threads do not wait for the GPU as configured (inference.gpu_wait)"
        ),
        Err(e) => tracing::warn!(
            device_id,
            error = %e,
            "cannot read how session threads wait for the GPU"
        ),
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
