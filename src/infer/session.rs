//! One ONNX Runtime session and the OS thread it lives on: building the session with the
//! configured execution provider and threading, checking the model against the export
//! contract, and answering batches from the shared job queue until it closes.
//!
//! The async side never runs here; it only queues [`Job`]s and awaits their replies.

use std::sync::{Arc, Mutex};

use ndarray::{ArrayViewD, Axis};
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::builder::SessionBuilder;
use ort::session::{IoBinding, Session, SessionOutputs};
use ort::value::{Outlet, Tensor, TensorElementType, ValueType};
use tokio::sync::{mpsc, oneshot};

use super::contract::{self, ATTENTION_PREFIX, Contract, Declared, PROBS};
use super::runtime::Runtime;
use super::views::{self, View};
use super::{InferError, StartError};
use crate::config::{ExecutionProvider, Gpu, InferenceConfig};
use crate::domain::{AttentionMap, MODEL_PIXELS, MODEL_SIZE, ModelOutput};

/// One batch to run and where its answer goes.
pub(super) struct Job {
    /// Each `MODEL_PIXELS` long (checked before queueing).
    pub images: Vec<Vec<f32>>,
    /// Answers the caller awaiting [`super::Inference::infer`].
    pub reply: oneshot::Sender<Result<Vec<ModelOutput>, InferError>>,
}

/// The job queue's consuming end, shared by every session thread: an idle thread holds
/// the lock while it waits, the others queue for the lock, so each job goes to one thread.
pub(super) type SharedJobs = Arc<Mutex<mpsc::Receiver<Job>>>;

/// A session that passed the contract check, with the buffers it reuses.
pub(super) struct Worker {
    session: Session,
    contract: Contract,
    /// The input tensors and output bindings of the batch sizes run last, most recent first,
    /// each made the first time its size runs and reused after ([`Worker::bind`]): a batch
    /// of a size kept allocates neither its input nor its outputs.
    bound: Vec<Bound>,
    /// Whether batches run padded to a power of two (GPU providers, see [`Worker::run`]).
    pad_batches: bool,
    /// The views each image runs in (`inference.views`), their outputs averaged.
    views: &'static [View],
    /// Tests: batches of more rows than this fail as ONNX Runtime fails when a GPU runs out
    /// of memory.
    #[cfg(test)]
    fail_above: Option<usize>,
}

impl Worker {
    /// Builds a session for the model bytes and checks the export contract.
    pub fn load(
        runtime: &Runtime,
        cfg: &InferenceConfig,
        model: &[u8],
    ) -> Result<Self, StartError> {
        let provider = cfg.execution_provider.name();
        let options = |e: ort::Error<SessionBuilder>| StartError::SessionOptions(e.into());
        let builder = Session::builder(&runtime.environment)
            .map_err(StartError::SessionOptions)?
            .with_intra_threads(cfg.intra_threads)
            .map_err(options)?
            // Spinning threads burn the cores that cutting and preprocessing need (RECIPES:
            // batch-1 throughput 396 -> 762 img/s on 2 shared cores with spinning off).
            .with_intra_op_spinning(false)
            .map_err(options)?
            .with_inter_op_spinning(false)
            .map_err(options)?
            // ONNX Runtime plans and keeps one memory pattern per input shape, and a pipeline
            // runs every batch size up to max_batch: on the CPU each plan stays allocated
            // (peak RSS of `classify`, 2 sessions: 740 -> 433 MB at max_batch 8, 147 -> 109 MB
            // at 1, same speed; BENCHMARKS.md). GPU sessions keep it until measured there.
            .with_memory_pattern(!matches!(cfg.execution_provider, ExecutionProvider::Cpu))
            .map_err(options)?;
        let mut builder = builder
            .with_execution_providers(providers(cfg.execution_provider))
            .map_err(|e| StartError::Provider {
                provider,
                source: e.into(),
            })?;
        let session =
            builder
                .commit_from_memory(model)
                .map_err(|source| StartError::LoadModel {
                    path: cfg.model.clone(),
                    provider,
                    source,
                })?;

        let inputs: Vec<Declared> = session.inputs().iter().map(declared).collect();
        let outputs: Vec<Declared> = session.outputs().iter().map(declared).collect();
        let contract =
            contract::check(&inputs, &outputs).map_err(|violations| StartError::Contract {
                path: cfg.model.clone(),
                violations,
            })?;
        Ok(Self {
            session,
            contract,
            bound: Vec::new(),
            pad_batches: cfg.execution_provider != ExecutionProvider::Cpu,
            views: views::set(cfg.views).ok_or(StartError::Views(cfg.views))?,
            #[cfg(test)]
            fail_above: None,
        })
    }

    /// Pads batches as on a GPU, whatever the provider (for tests on the CPU).
    #[cfg(test)]
    pub fn padding_batches(mut self) -> Self {
        self.pad_batches = true;
        self
    }

    /// Fails every batch of more than `rows` rows, as a GPU out of memory does (tests).
    #[cfg(test)]
    pub fn failing_above(mut self, rows: usize) -> Self {
        self.fail_above = Some(rows);
        self
    }

    /// Runs the bound batch of `rows` again and returns where each of its outputs lies
    /// (tests: bound outputs are written in place, run after run).
    #[cfg(test)]
    pub fn output_addresses(&mut self, rows: usize) -> Vec<usize> {
        let bound = self
            .bound
            .iter()
            .find(|b| b.rows == rows)
            .expect("that batch size has run");
        let outputs = self.session.run_binding(&bound.binding).expect("run");
        outputs
            .values()
            .map(|v| v.try_extract_tensor::<f32>().expect("f32").1.as_ptr() as usize)
            .collect()
    }

    /// The batch sizes that have bound tensors, most recently run first (tests).
    #[cfg(test)]
    pub fn bound_sizes(&self) -> Vec<usize> {
        self.bound.iter().map(|b| b.rows).collect()
    }

    pub fn contract(&self) -> Contract {
        self.contract
    }

    /// Answers jobs until the queue closes (every [`super::Inference`] handle dropped).
    pub fn serve(mut self, jobs: SharedJobs) {
        loop {
            // A poisoned lock means another session thread panicked while waiting: the
            // receiver itself is intact, so keep serving.
            let job = jobs
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .blocking_recv();
            let Some(job) = job else { return };
            if job.reply.is_closed() {
                continue; // the caller stopped waiting: skip the work
            }
            let result = match self.views {
                [_] => self.run_halving(&job.images),
                views => self.run_views(&job.images, views),
            };
            // An error here only means the caller stopped waiting meanwhile.
            let _ = job.reply.send(result);
        }
    }

    /// Runs a batch in each of `views` and averages each image's outputs. The views run
    /// as batches of the batch's own size, so that `batch.max_batch` still bounds what the
    /// model holds at once (its memory grows with the rows of a run).
    fn run_views(
        &mut self,
        images: &[Vec<f32>],
        views: &[View],
    ) -> Result<Vec<ModelOutput>, InferError> {
        let expanded = views::expand(images, views, MODEL_SIZE);
        let mut outputs = Vec::with_capacity(expanded.len());
        for batch in expanded.chunks(images.len()) {
            outputs.extend(self.run_halving(batch)?);
        }
        Ok(views::combine(outputs, views))
    }

    /// Runs a batch; when ONNX Runtime fails on it (on an H100, a batch too large for the
    /// GPU's free memory did), runs its two halves instead, and theirs, so that a failure
    /// that depends on the batch's size costs time rather than results. The first half is
    /// tried first all the way down: an error that remains for a single image is the
    /// batch's error, after about log2(n) runs.
    pub(super) fn run_halving(
        &mut self,
        images: &[Vec<f32>],
    ) -> Result<Vec<ModelOutput>, InferError> {
        match self.run(images) {
            Err(InferError::Run(e)) if images.len() > 1 => {
                tracing::warn!(error = %e, images = images.len(), "batch failed; running it in halves");
                let (first, second) = images.split_at(images.len() / 2);
                let mut outputs = self.run_halving(first)?;
                outputs.extend(self.run_halving(second)?);
                Ok(outputs)
            }
            result => result,
        }
    }

    /// Runs one batch; images must each be `MODEL_PIXELS` long.
    ///
    /// On a GPU the batch runs padded to the next power of two (the rows past the batch's
    /// own images hold earlier images or zeros, and their outputs are dropped; every image
    /// is computed on its own, so this changes no result). cuDNN picks its convolution
    /// algorithms by benchmarking each new input shape, and a pipeline's partial batches
    /// would otherwise bring a new shape, with its search and its memory, almost every run:
    /// on an H100, end-to-end batches took ~5 times their time in the bare sweep and the
    /// GPU ran out of memory (31,804 of 60,000 items rejected); padded, none was.
    pub(super) fn run(&mut self, images: &[Vec<f32>]) -> Result<Vec<ModelOutput>, InferError> {
        let n = images.len();
        let rows = if self.pad_batches {
            n.next_power_of_two()
        } else {
            n
        };
        #[cfg(test)]
        if self.fail_above.is_some_and(|limit| rows > limit) {
            return Err(InferError::Run(ort::Error::new(format!(
                "test: {rows} rows do not fit"
            ))));
        }
        self.bind(rows)?;
        let bound = &mut self.bound[0];
        let (_, flat) = bound.input.extract_tensor_mut();
        for (slot, image) in flat.chunks_exact_mut(MODEL_PIXELS).zip(images) {
            slot.copy_from_slice(image);
        }
        // Bound again for every batch: binding is what hands the new images to ONNX Runtime
        // (a GPU provider copies them to the device then; the CPU uses the tensor in place).
        bound
            .binding
            .bind_input(contract::INPUT, &bound.input)
            .map_err(InferError::Run)?;
        let outputs = self
            .session
            .run_binding(&bound.binding)
            .map_err(InferError::Run)?;
        split(&outputs, rows, n, self.contract.gates)
    }

    /// Puts the binding for batches of `rows` first, made if there is none. The bindings
    /// kept, most recently used first, hold at most twice the rows of the largest of them:
    /// a GPU session's powers of two all stay (1 + 2 + ... + n < 2n), while a CPU session
    /// that runs every size up to `max_batch` keeps the ones it ran last rather than a
    /// binding for each (up to 1 + 2 + ... + max_batch rows of ~210 KB).
    fn bind(&mut self, rows: usize) -> Result<(), InferError> {
        if let Some(at) = self.bound.iter().position(|b| b.rows == rows) {
            self.bound[..=at].rotate_right(1);
            return Ok(());
        }
        let bound = Bound::new(&self.session, rows, self.contract.gates)?;
        self.bound.insert(0, bound);
        let largest = self.bound.iter().map(|b| b.rows).max().unwrap_or(rows);
        let mut total: usize = self.bound.iter().map(|b| b.rows).sum();
        // The new binding (first) is never dropped: its rows alone are within the limit.
        while total > 2 * largest {
            let Some(dropped) = self.bound.pop() else {
                break;
            };
            total -= dropped.rows;
        }
        Ok(())
    }
}

/// A batch size's input tensor and its binding, whose outputs ONNX Runtime allocates on
/// the first run and writes in place on every run after.
///
/// Both live in the session's CPU memory, whatever the provider: a GPU provider copies the
/// input to the device when it is bound and the outputs back before the run returns, each a
/// blocking copy. Page-locked (pinned) host memory would make those copies faster, but
/// ONNX Runtime copies to and from it asynchronously, and when those copies are ordered
/// before the next use of the buffer cannot be checked without a GPU: not done yet.
struct Bound {
    rows: usize,
    /// `[rows, 1, 150, 150]`; rows past a batch's own images hold earlier images or zeros.
    input: Tensor<f32>,
    binding: IoBinding,
}

impl Bound {
    fn new(session: &Session, rows: usize, gates: usize) -> Result<Self, InferError> {
        let memory = session.allocator();
        let mut input = Tensor::<f32>::new(memory, [rows, 1, MODEL_SIZE, MODEL_SIZE])
            .map_err(InferError::Run)?;
        // ONNX Runtime leaves a new tensor uninitialised.
        input.extract_tensor_mut().1.fill(0.0);
        let mut binding = session.create_binding().map_err(InferError::Run)?;
        let outputs = memory.memory_info();
        binding
            .bind_output_to_device(PROBS, outputs)
            .map_err(InferError::Run)?;
        for gate in 1..=gates {
            binding
                .bind_output_to_device(format!("{ATTENTION_PREFIX}{gate}"), outputs)
                .map_err(InferError::Run)?;
        }
        Ok(Self {
            rows,
            input,
            binding,
        })
    }
}

/// The execution providers to register, each failing loudly: a provider that was asked
/// for and cannot start is a startup error, never a silent fallback to the CPU.
fn providers(provider: ExecutionProvider) -> Vec<ExecutionProviderDispatch> {
    match provider {
        ExecutionProvider::Cpu => Vec::new(),
        ExecutionProvider::Cuda(gpu) => vec![cuda(gpu)],
        // TensorRT leaves the nodes it cannot take to CUDA, as ONNX Runtime recommends.
        ExecutionProvider::TensorRt(gpu) => vec![
            ep::TensorRT::default()
                .with_device_id(gpu.device_id)
                .build()
                .error_on_failure(),
            cuda(gpu),
        ],
    }
}

/// The CUDA provider: full float32 arithmetic unless `gpu.tf32` (TF32 convolutions moved
/// probabilities by up to 1.3e-4 against the CPU on the bundled cutouts), channels-last
/// kernels when `gpu.nhwc`, and a memory arena that grows by what is asked for rather than
/// by powers of two (several sessions share one GPU).
fn cuda(gpu: Gpu) -> ExecutionProviderDispatch {
    ep::CUDA::default()
        .with_device_id(gpu.device_id)
        .with_tf32(gpu.tf32)
        .with_prefer_nhwc(gpu.nhwc)
        .with_arena_extend_strategy(ep::ArenaExtendStrategy::SameAsRequested)
        .build()
        .error_on_failure()
}

fn declared(outlet: &Outlet) -> Declared {
    let (not_float, dims) = match outlet.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => (None, shape.to_vec()),
        ValueType::Tensor { ty, shape, .. } => (Some(format!("a {ty} tensor")), shape.to_vec()),
        other => (Some(format!("a {other}")), Vec::new()),
    };
    Declared {
        name: outlet.name().to_string(),
        not_float,
        dims,
    }
}

/// Splits the outputs of a batch of `rows` into one [`ModelOutput`] for each of its first
/// `n` images, checking the shapes the contract could only declare (batch size, square
/// maps).
fn split(
    outputs: &SessionOutputs<'_>,
    rows: usize,
    n: usize,
    gates: usize,
) -> Result<Vec<ModelOutput>, InferError> {
    let probs = extract(outputs, PROBS)?;
    if probs.shape() != [rows, 2] {
        return Err(bad_shape(PROBS, probs.shape(), &format!("[{rows}, 2]")));
    }
    let mut maps = Vec::with_capacity(gates);
    for gate in 1..=gates {
        let name = format!("{ATTENTION_PREFIX}{gate}");
        let map = extract(outputs, &name)?;
        match *map.shape() {
            [m, 1, h, w] if m == rows && h == w && h > 0 => maps.push(map),
            _ => return Err(bad_shape(&name, map.shape(), &format!("[{rows}, 1, H, H]"))),
        }
    }
    Ok((0..n)
        .map(|i| ModelOutput {
            probs: [probs[[i, 0]], probs[[i, 1]]],
            attention: maps
                .iter()
                .map(|map| {
                    let image = map.index_axis(Axis(0), i);
                    AttentionMap {
                        side: map.shape()[2],
                        // A standard-layout output copies as one slice (ndarray's general
                        // iterator over a dynamic-rank view costs ~0.5% of a worker's CPU).
                        values: image
                            .as_slice()
                            .map_or_else(|| image.iter().copied().collect(), <[f32]>::to_vec),
                    }
                })
                .collect(),
        })
        .collect())
}

fn extract<'a>(
    outputs: &'a SessionOutputs<'_>,
    name: &str,
) -> Result<ArrayViewD<'a, f32>, InferError> {
    let value = outputs.get(name).ok_or_else(|| InferError::Output {
        name: name.to_string(),
        problem: "missing from the model's results".to_string(),
    })?;
    value.try_extract_array::<f32>().map_err(InferError::Run)
}

fn bad_shape(name: &str, shape: &[usize], expected: &str) -> InferError {
    InferError::Output {
        name: name.to_string(),
        problem: format!("shape {shape:?}, expected {expected}"),
    }
}
