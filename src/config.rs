//! Configuration: what the user wrote (TOML plus `RADIOGATE__...` environment overrides),
//! validated into the resolved [`Config`] that is the only configuration the rest of the
//! code sees. Unknown keys and invalid values are refused at start, naming the field.
//!
//! The resolved types below are the contract with the stages; the raw (serde) layer and
//! its validation live further down this file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[source]`: where detections come from.
    pub source: SourceConfig,
    /// `[source] shard`: which share of a finite source this run takes.
    pub shard: Shard,
    /// `[cutout]`: mosaics and cutting threads.
    pub cutout: CutoutConfig,
    /// `[batch]`: the dynamic batcher.
    pub batch: BatchConfig,
    /// `[inference]`: the model and ONNX Runtime.
    pub inference: InferenceConfig,
    /// `[summary]`: the attention summary in results.
    pub summary: SummaryConfig,
    /// `[sink]`: where results go.
    pub sink: SinkConfig,
    /// `[pipeline]`: queues and shutdown.
    pub pipeline: PipelineConfig,
    /// `[telemetry]`: metrics endpoint and log format.
    pub telemetry: TelemetryConfig,
}

/// Where detections come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// FITS files and folders of them: source id = file stem, position = image centre.
    /// `survey` names the survey in every detection (default "FIRST").
    Files {
        inputs: Vec<PathBuf>,
        survey: String,
    },
    /// A catalogue, CSV, ECSV or a FITS table (fields source_id, ra, dec, optional survey,
    /// fits_path/tile, fluxes and sizes), positions resolved against the mosaics. `survey`
    /// is used for rows without one; `columns` names the column of a field (by its name
    /// in `CATALOG_FIELDS`) whose column has neither the field's name nor a known
    /// alias.
    Catalog {
        path: PathBuf,
        survey: String,
        columns: BTreeMap<String, String>,
    },
    /// A file of `SourceDetection` messages, length-delimited protobuf.
    DetectionsFile { path: PathBuf },
    /// `SourceDetection` messages from a Kafka topic, in a consumer group.
    Kafka(KafkaSourceConfig),
}

/// Which share of a finite source a run takes (`[source] shard = "K/N"`): the items whose
/// place in the input (0-based) is K modulo N, so that N runs (the tasks of a batch system's
/// array job, say) classify an input between them, each item once. The whole input: 0/1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

/// A Kafka consumer in a group (`[source]` with `kind = "kafka"`). Its `Debug` output
/// hides secret properties.
#[derive(Clone, PartialEq)]
pub struct KafkaSourceConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// The consumer group shared by every copy of the worker.
    pub group_id: String,
    /// The topic of `SourceDetection` messages.
    pub topic: String,
    /// Extra librdkafka consumer properties (TLS, SASL, timeouts), applied after radiogate's
    /// defaults; the ones radiogate sets itself (`SOURCE_RESERVED`) are refused.
    pub properties: BTreeMap<String, String>,
}

/// When an input record counts as handled (`sink.delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// Offsets are committed after their results are delivered: nothing is lost; a crash
    /// can repeat results of items delivered since the last commit.
    #[default]
    AtLeastOnce,
    /// Results, rejections and the consumed offsets in one producer transaction: a
    /// `read_committed` reader sees each input's outcome exactly once, across crashes,
    /// restarts and rebalances.
    ExactlyOnce,
}

/// An idempotent Kafka producer (`[sink]` with `kind = "kafka"`). Its `Debug` output hides
/// secret properties.
#[derive(Clone, PartialEq)]
pub struct KafkaSinkConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic of `Classification` messages (key: source id).
    pub results_topic: String,
    /// Topic of `Rejection` messages (key: source id when known).
    pub dead_letter_topic: String,
    pub delivery: DeliveryMode,
    /// `transactional.id` of the producer in `exactly_once` mode: stable for one instance
    /// across restarts (so a restarted instance fences its previous self at once), unique
    /// among the instances running at the same time. None: `radiogate-<hostname>`.
    pub transactional_id: Option<String>,
    /// Extra librdkafka producer properties (TLS, SASL, linger), applied after radiogate's
    /// defaults; the ones radiogate sets itself (`SINK_RESERVED`) are refused.
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSourceConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topic", &self.topic)
            .field("properties", &redacted(&self.properties))
            .finish()
    }
}

impl std::fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("results_topic", &self.results_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("delivery", &self.delivery)
            .field("transactional_id", &self.transactional_id)
            .field("properties", &redacted(&self.properties))
            .finish()
    }
}

/// librdkafka properties with the values of secrets (passwords, keys, JAAS and OAuth
/// settings) replaced, for `Debug` output and logs.
pub fn redacted(properties: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    const SECRET_MARKERS: [&str; 5] = ["password", "secret", "jaas", "key", "token"];
    properties
        .iter()
        .map(|(k, v)| {
            let secret = SECRET_MARKERS
                .iter()
                .any(|m| k.to_ascii_lowercase().contains(m));
            (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
        })
        .collect()
}

/// Where the pixels come from when a detection carries none.
#[derive(Debug, Clone, PartialEq)]
pub struct CutoutConfig {
    /// Folders (searched recursively) and files of FITS mosaics indexed at start.
    pub mosaics: Vec<PathBuf>,
    /// Threads cutting and preprocessing in parallel (inference does not use them).
    pub workers: usize,
    /// The size of the pixels the model was trained on (arcsec): FIRST's 1.8 for the shipped
    /// models. A cutout's pixels must be this size at the source...
    pub pixel_scale_arcsec: f64,
    /// ...within this fraction, along each axis; otherwise the window is resampled to that
    /// size (`resample`) or the detection rejected (`pixel_scale`): the model would see
    /// every source at the wrong size.
    pub pixel_scale_tolerance: f64,
    /// Resample windows of other pixel sizes (within a factor 8) instead of rejecting them.
    pub resample: bool,
}

impl Default for CutoutConfig {
    fn default() -> Self {
        Self {
            mosaics: Vec::new(),
            workers: 2,
            pixel_scale_arcsec: 1.8,
            pixel_scale_tolerance: 0.02,
            resample: false,
        }
    }
}

/// The dynamic batcher.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Largest batch sent to the model.
    pub max_batch: usize,
    /// Longest time the first item of a batch waits for more.
    pub max_wait: Duration,
}

/// The ONNX Runtime execution provider (`inference.execution_provider`, and the `gpu_*`
/// settings of a GPU one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    /// CUDA.
    Cuda(Gpu),
    /// TensorRT (nodes it cannot take run on CUDA).
    TensorRt(Gpu),
}

/// Which GPU a GPU provider runs on, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    /// `inference.device_id`.
    pub device_id: i32,
    /// `inference.gpu_wait`.
    pub wait: GpuWait,
    /// `inference.gpu_tf32`: TF32 tensor-core convolutions (faster on Ampere and later;
    /// probabilities move by ~1e-4 against float32). Off by default: the GPU's results are
    /// the CPU's.
    pub tf32: bool,
    /// `inference.gpu_nhwc`: ONNX Runtime's channels-last CUDA kernels where it has them.
    pub nhwc: bool,
}

impl Gpu {
    /// GPU `device_id` with the defaults: blocking wait, float32 arithmetic, NCHW.
    pub fn on(device_id: i32) -> Self {
        Gpu {
            device_id,
            wait: GpuWait::default(),
            tf32: false,
            nhwc: false,
        }
    }
}

/// How a session thread waits for the GPU to finish a batch (`inference.gpu_wait`): the
/// scheduling flag of the device's primary CUDA context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GpuWait {
    /// Leave the flag to CUDA, whose heuristic spins whenever the process has fewer CUDA
    /// contexts than the machine has cores: every waiting session thread holds a core.
    Auto,
    /// Spin on the CPU (lowest wake-up latency, one core per waiting thread).
    Spin,
    /// Spin, yielding the core to other threads between polls.
    Yield,
    /// Sleep until the GPU signals completion: the cores stay free for cutting and
    /// preprocessing.
    #[default]
    Blocking,
}

impl GpuWait {
    /// The name used in the configuration and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            GpuWait::Auto => "auto",
            GpuWait::Spin => "spin",
            GpuWait::Yield => "yield",
            GpuWait::Blocking => "blocking",
        }
    }
}

impl ExecutionProvider {
    /// The provider `kind`; a GPU one on `gpu`.
    pub fn new(kind: ProviderKind, gpu: Gpu) -> Self {
        match kind {
            ProviderKind::Cpu => ExecutionProvider::Cpu,
            ProviderKind::Cuda => ExecutionProvider::Cuda(gpu),
            ProviderKind::TensorRt => ExecutionProvider::TensorRt(gpu),
        }
    }

    /// The provider's name as reported in results, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda(_) => "cuda",
            ExecutionProvider::TensorRt(_) => "tensorrt",
        }
    }

    /// The GPU and how it runs; None on the CPU.
    pub fn gpu(&self) -> Option<Gpu> {
        match *self {
            ExecutionProvider::Cpu => None,
            ExecutionProvider::Cuda(gpu) | ExecutionProvider::TensorRt(gpu) => Some(gpu),
        }
    }
}

/// The model and how ONNX Runtime runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceConfig {
    /// The ONNX model file (export contract: input `image`, outputs `probs`, `attention_1..3`).
    pub model: PathBuf,
    /// The model's name in results; defaults to the file stem.
    pub model_name: String,
    /// The ONNX Runtime shared library (`libonnxruntime.so`); None: `ORT_DYLIB_PATH` or the
    /// copy that `scripts/fetch-onnxruntime.sh` puts under `vendor/onnxruntime/`.
    pub runtime_library: Option<PathBuf>,
    pub execution_provider: ExecutionProvider,
    /// Sessions, each on its own OS thread.
    pub sessions: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Intra-op threads of one more session that takes batches while no detections queue (a
    /// live stream): one image on several cores finishes sooner. 0: no such session. CPU
    /// only; by default `sessions x intra_threads` when that is more than 1.
    pub live_intra_threads: usize,
    /// Test-time views averaged per image: 1 (the image alone), 2 (and its mirror), 4 (its
    /// quarter turns) or 8 (both); see `infer::views`.
    pub views: usize,
}

/// What the attention summary in each result holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryConfig {
    /// Side of the combined attention map in results (cells over the 150x150 input).
    pub grid: u32,
    /// zstd level for the attention maps.
    pub zstd_level: i32,
    /// Include each gate's map at full resolution.
    pub per_gate_maps: bool,
}

/// How a file sink encodes results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// One JSON object per line (classifications and rejections, told apart by `kind`).
    Jsonl,
    /// Length-delimited protobuf `Classification`s, rejections in a sibling file.
    Protobuf,
    /// A table (astropy's ECSV): a row per classification or rejection, the attention
    /// summarised by its share on the emission and its strongest peak.
    Ecsv,
}

/// Where results go.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    /// A file, or standard output when `path` is None.
    File {
        path: Option<PathBuf>,
        format: OutputFormat,
        /// Keep the records the file already holds and continue after them (a run that
        /// stopped early, run again over the same input); JSON Lines or ECSV only.
        resume: bool,
    },
    /// Kafka topics: results and dead letters.
    Kafka(KafkaSinkConfig),
}

/// Queues between stages, the shutdown deadline and how the worker's threads are scheduled.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Capacity of every queue between stages (items).
    pub queue_capacity: usize,
    /// How long shutdown waits for in-flight work to be delivered.
    pub drain_timeout: Duration,
    /// The Linux scheduling policy of the process's threads.
    pub scheduling: Scheduling,
}

/// The Linux scheduling policy of the worker's threads (`pipeline.scheduling`; the module
/// `scheduling` says what the policies trade); elsewhere the operating system's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scheduling {
    /// `batch` while detections queue (a backlog), `normal` while they do not (a live
    /// stream).
    #[default]
    Adaptive,
    /// `SCHED_BATCH` throughout: a thread that wakes does not preempt a running one
    /// (inference), which keeps its time slices and caches.
    Batch,
    /// `SCHED_OTHER` throughout, the kernel's default: a thread that wakes may preempt a
    /// running one at once.
    Normal,
}

/// Metrics endpoint and log format.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Address of the HTTP endpoint for /metrics, /healthz, /readyz; None: off.
    pub listen: Option<SocketAddr>,
    /// Log as JSON lines instead of text.
    pub json_logs: bool,
}

impl Default for Config {
    /// Every default, as an empty configuration file gives them (source: no input files).
    fn default() -> Self {
        ConfigBuilder::new()
            .build()
            .expect("the built-in defaults are valid: `defaults_are_valid` tests it")
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration text is not TOML.
    #[error("{origin} is not valid TOML: {source}")]
    Syntax {
        /// The file, or "configuration text" for a string.
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    /// A `RADIOGATE__...` variable whose name is not `RADIOGATE__SECTION__KEY`.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// One or more fields have unknown names or invalid values.
    #[error("{}", join_field_errors(.0))]
    Invalid(Vec<FieldError>),
    /// The command line asks for something the configuration cannot express.
    #[error("{0}")]
    Usage(String),
}

impl ConfigError {
    /// The field errors, when this is an [`ConfigError::Invalid`].
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid(errors) => errors,
            _ => &[],
        }
    }
}

/// One refused field: `section.key`, what is wrong, and which override set it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `batch.max_batch`.
    pub field: String,
    pub message: String,
    /// The environment variable or command-line flag that set the value; None: the file
    /// or the default.
    pub set_by: Option<String>,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)?;
        if let Some(origin) = &self.set_by {
            write!(f, " (set by {origin})")?;
        }
        Ok(())
    }
}

fn join_field_errors(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

// ---------------------------------------------------------------------------------------
// Layering: file, then environment, then command line
// ---------------------------------------------------------------------------------------

/// Prefix of environment overrides: `RADIOGATE__SECTION__KEY=value`.
pub const ENV_PREFIX: &str = "RADIOGATE__";

/// Loads a configuration file (None: defaults only), applies the `RADIOGATE__SECTION__KEY`
/// variables found in `env` on top, and validates the result.
///
/// An override's value is read as a TOML value when it is one (`64`, `true`, `["a", "b"]`,
/// `"quoted"`) and as a plain string otherwise (`20ms`, `models/x.onnx`); a value that parses
/// as a number or boolean where the field wants a string is taken as the string it was.
pub fn load(
    path: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let builder = match path {
        Some(path) => ConfigBuilder::from_file(path)?,
        None => ConfigBuilder::new(),
    };
    builder.env(env)?.build()
}

/// A configuration being assembled from layers, later ones winning: built-in defaults, a
/// file, environment overrides, command-line overrides. [`ConfigBuilder::build`] validates.
///
/// Overrides act on the TOML document before it is deserialised, so a value from any layer
/// goes through the same checks and its errors name the field and the layer that set it.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    /// The merged document so far.
    table: toml::Table,
    /// `section.key` -> the variable or flag that last set it (for error messages).
    set_by: BTreeMap<String, String>,
    /// `section.key` -> the raw text of an environment override that was read as a
    /// non-string TOML value, kept to retry as a string if the field wants one.
    env_text: BTreeMap<String, String>,
}

impl ConfigBuilder {
    /// Defaults only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from a TOML file. Relative paths inside it are kept as written (relative to
    /// the working directory when used).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Starts from TOML text (tests, embedded configurations).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, "configuration text")
    }

    fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let table = toml::from_str::<toml::Table>(text).map_err(|source| ConfigError::Syntax {
            origin: origin.to_string(),
            source,
        })?;
        Ok(Self {
            table,
            ..Self::default()
        })
    }

    /// Applies every `RADIOGATE__SECTION__KEY` variable of `env`; other variables are ignored.
    pub fn env(mut self, env: impl Iterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut vars: Vec<(String, String)> = env
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        // Deterministic order whatever the environment's.
        vars.sort();
        for (var, text) in vars {
            let rest = &var[ENV_PREFIX.len()..];
            let parts: Vec<&str> = rest.split("__").collect();
            let [section, key] = parts.as_slice() else {
                return Err(ConfigError::Env {
                    var,
                    message: "expected RADIOGATE__SECTION__KEY (two names after the prefix, \
                              separated by a double underscore)"
                        .into(),
                });
            };
            if section.is_empty() || key.is_empty() {
                return Err(ConfigError::Env {
                    var,
                    message: "empty section or key name".into(),
                });
            }
            let field = format!("{}.{}", section.to_lowercase(), key.to_lowercase());
            let value = env_value(&text);
            if !value.is_str() {
                self.env_text.insert(field.clone(), text.clone());
            } else {
                self.env_text.remove(&field);
            }
            self.set(&field, value, &var);
        }
        Ok(self)
    }

    /// Sets `field` (`section.key`) to `value`; `origin` names the flag or variable in errors.
    pub fn set(&mut self, field: &str, value: impl Into<toml::Value>, origin: &str) -> &mut Self {
        let (section, key) = field.split_once('.').unwrap_or((field, ""));
        let entry = self
            .table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        if let toml::Value::Table(section_table) = entry {
            section_table.insert(key.to_string(), value.into());
        }
        self.set_by.insert(field.to_string(), origin.to_string());
        self
    }

    /// Sets `key` of the table `field` (`section.key`, e.g. `source.columns`), keeping the
    /// table's other keys; errors about it name `origin`.
    pub fn set_entry(
        &mut self,
        field: &str,
        key: &str,
        value: impl Into<toml::Value>,
        origin: &str,
    ) -> &mut Self {
        let (section, name) = field.split_once('.').unwrap_or((field, ""));
        let mut table = match self.table.get(section).and_then(|s| s.get(name)) {
            Some(toml::Value::Table(table)) => table.clone(),
            _ => toml::Table::new(),
        };
        table.insert(key.to_string(), value.into());
        let whole_origin = self.set_by.get(field).cloned();
        self.set(field, table, origin);
        // The table's other keys keep the origin they had.
        match whole_origin {
            Some(earlier) => self.set_by.insert(field.to_string(), earlier),
            None => self.set_by.remove(field),
        };
        self.set_by
            .insert(format!("{field}.{key}"), origin.to_string());
        self
    }

    /// Removes `field` unless an override (a variable or a flag) set it: what the file says
    /// of a kind of source the command line has replaced.
    pub fn unset_from_file(&mut self, field: &str) -> &mut Self {
        if !self.set_by.contains_key(field) {
            self.unset(field);
        }
        self
    }

    /// Removes `field` (`section.key`) so that its default applies (e.g. a file's
    /// `source.path` when the command line switches the source to files).
    pub fn unset(&mut self, field: &str) -> &mut Self {
        if let Some((section, key)) = field.split_once('.') {
            if let Some(toml::Value::Table(section_table)) = self.table.get_mut(section) {
                section_table.remove(key);
            }
        }
        self.set_by.remove(field);
        self.env_text.remove(field);
        self
    }

    /// Deserialises and validates the merged document.
    pub fn build(mut self) -> Result<Config, ConfigError> {
        // Each retry turns one environment value back into a string: bounded by their number.
        loop {
            let value = toml::Value::Table(self.table.clone());
            match serde_path_to_error::deserialize::<_, RawConfig>(value) {
                Ok(raw) => return raw.resolve().map_err(|errors| self.invalid(errors)),
                Err(err) => {
                    let field = err.path().to_string();
                    if let Some(text) = self.env_text.remove(&field) {
                        let origin = self.set_by.get(&field).cloned().unwrap_or_default();
                        self.set(&field, toml::Value::String(text), &origin);
                        continue;
                    }
                    let error = serde_field_error(&field, &err.into_inner().to_string());
                    return Err(self.invalid(vec![error]));
                }
            }
        }
    }

    fn invalid(&self, mut errors: Vec<FieldError>) -> ConfigError {
        for error in &mut errors {
            error.set_by = self.origin_of(&error.field);
        }
        ConfigError::Invalid(errors)
    }

    /// The override that set `field` or a table or array it is in (an element of an array
    /// that a variable set), or for a whole unknown section the one that created it.
    fn origin_of(&self, field: &str) -> Option<String> {
        let mut at = field;
        loop {
            if let Some(origin) = self.set_by.get(at) {
                return Some(origin.clone());
            }
            match at.rfind(['.', '[']) {
                Some(end) if end > 0 => at = &at[..end],
                _ => break,
            }
        }
        let prefix = format!("{field}.");
        self.set_by
            .iter()
            .find(|(key, _)| key.starts_with(&prefix))
            .map(|(_, origin)| origin.clone())
    }
}

/// An environment value as TOML when it is a single TOML value, else as a string.
fn env_value(text: &str) -> toml::Value {
    let document = format!("v = {text}");
    match toml::from_str::<toml::Table>(&document) {
        Ok(mut table) if table.len() == 1 => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_string())),
        _ => toml::Value::String(text.to_string()),
    }
}

/// Turns serde's error at `path` into a field error. serde_path_to_error's path already ends
/// with an unknown key's name; toml's own "in `section`" context lines are dropped since the
/// path says it.
fn serde_field_error(path: &str, message: &str) -> FieldError {
    let field = if path == "." {
        "(top level)".to_string()
    } else {
        path.to_string()
    };
    let first_line = message.lines().next().unwrap_or_default();
    let message = match first_line.strip_prefix("unknown field `") {
        Some(rest) => {
            let expected = rest.split_once('`').map(|(_, e)| e).unwrap_or_default();
            format!("unknown key ({})", expected.trim_start_matches(", "))
        }
        None => readable_types(first_line),
    };
    FieldError {
        field,
        message,
        set_by: None,
    }
}

/// serde names Rust types ("expected i64", "expected struct RawBatch"); say TOML's.
fn readable_types(message: &str) -> String {
    let message = message.replace("expected i64", "expected an integer");
    match message.find("expected struct Raw") {
        Some(at) => format!("{}expected a table", &message[..at]),
        None => message,
    }
}

// ---------------------------------------------------------------------------------------
// The raw layer: what the TOML may say, with every default
// ---------------------------------------------------------------------------------------

/// The names of a catalogue's fields, as `source.columns` takes them.
pub const CATALOG_FIELDS: [&str; 13] = [
    "source_id",
    "ra",
    "dec",
    "survey",
    "tile",
    "fits_path",
    "peak_flux",
    "integrated_flux",
    "local_rms",
    "major",
    "minor",
    "pa",
    "detected_at",
];

/// The numbers of test-time views `inference.views` can name (`infer::views` has a set of
/// views for each).
pub const VIEW_COUNTS: [usize; 4] = [1, 2, 4, 8];

/// The model used when the configuration names none.
pub const DEFAULT_MODEL: &str = "models/agcnn-mirabest-confident.onnx";
/// The survey named in detections from files and catalogue rows that give none.
pub const DEFAULT_SURVEY: &str = "FIRST";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    source: RawSource,
    cutout: RawCutout,
    batch: RawBatch,
    inference: RawInference,
    summary: RawSummary,
    sink: RawSink,
    pipeline: RawPipeline,
    telemetry: RawTelemetry,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawSourceKind {
    #[default]
    Files,
    Catalog,
    Detections,
    Kafka,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSource {
    kind: RawSourceKind,
    inputs: Vec<PathBuf>,
    path: Option<PathBuf>,
    survey: Option<String>,
    brokers: Option<String>,
    group_id: Option<String>,
    topic: Option<String>,
    properties: BTreeMap<String, RawProperty>,
    columns: BTreeMap<String, String>,
    shard: Option<String>,
}

/// A librdkafka property's value: the text itself (a number or a boolean as its text:
/// `"linger.ms" = 5`), or where to read a secret from, so that passwords need not be
/// written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawProperty {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    /// `{ env = "VAR" }`: the value of an environment variable.
    Env {
        env: String,
    },
    /// `{ file = "/run/secrets/x" }`: a file's contents, without the trailing newline.
    File {
        file: PathBuf,
    },
}

/// librdkafka's default `max.poll.interval.ms`.
const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// librdkafka properties of the consumer that radiogate sets itself, and why; refused in
/// `source.properties`.
const SOURCE_RESERVED: [(&str, &str); 6] = [
    ("bootstrap.servers", "set by source.brokers"),
    ("group.id", "set by source.group_id"),
    (
        "enable.auto.commit",
        "radiogate commits an offset only after its result is delivered",
    ),
    (
        "enable.auto.offset.store",
        "radiogate commits an offset only after its result is delivered",
    ),
    (
        "partition.assignment.strategy",
        "radiogate's rebalances are cooperative (cooperative-sticky)",
    ),
    (
        "auto.offset.reset",
        "a new group reads from the earliest offset, so that no detection is skipped",
    ),
];

/// librdkafka properties of the producer that radiogate sets itself, and why; refused in
/// `sink.properties`.
const SINK_RESERVED: [(&str, &str); 4] = [
    ("bootstrap.servers", "set by sink.brokers"),
    ("transactional.id", "set by sink.transactional_id"),
    (
        "enable.idempotence",
        "the delivery guarantees need enable.idempotence = true",
    ),
    ("acks", "the delivery guarantees need acks = all"),
];

/// Resolves `properties` (`section.properties`), reading secrets from the environment and
/// from files; a missing one is an error naming the property, never its value, and so is
/// one of `reserved` (which radiogate sets itself).
fn resolve_properties(
    check: &mut Checker,
    section: &str,
    properties: BTreeMap<String, RawProperty>,
    reserved: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut resolved = BTreeMap::new();
    for (key, value) in properties {
        let field = format!("{section}.properties.\"{key}\"");
        if let Some((_, why)) = reserved.iter().find(|(name, _)| *name == key) {
            check.fail(&field, format!("cannot be set here: {why}"));
            continue;
        }
        let value = match value {
            RawProperty::Text(text) => Some(text),
            RawProperty::Integer(number) => Some(number.to_string()),
            RawProperty::Float(number) => Some(number.to_string()),
            RawProperty::Bool(flag) => Some(flag.to_string()),
            RawProperty::Env { env } => match std::env::var(&env) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => {
                    check.fail(&field, format!("environment variable {env} is not set"));
                    None
                }
            },
            RawProperty::File { file } => match std::fs::read_to_string(&file) {
                Ok(v) => Some(v.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) => {
                    check.fail(&field, format!("cannot read {}: {e}", file.display()));
                    None
                }
            },
        };
        if let Some(value) = value {
            resolved.insert(key, value);
        }
    }
    resolved
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCutout {
    mosaics: Vec<PathBuf>,
    workers: i64,
    pixel_scale_arcsec: f64,
    pixel_scale_tolerance: f64,
    resample: bool,
}

impl Default for RawCutout {
    fn default() -> Self {
        let d = CutoutConfig::default();
        Self {
            mosaics: d.mosaics,
            workers: d.workers as i64,
            pixel_scale_arcsec: d.pixel_scale_arcsec,
            pixel_scale_tolerance: d.pixel_scale_tolerance,
            resample: d.resample,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBatch {
    max_batch: i64,
    max_wait: String,
}

impl Default for RawBatch {
    fn default() -> Self {
        Self {
            max_batch: 1,
            max_wait: "20ms".into(),
        }
    }
}

/// The execution provider by name (`inference.execution_provider`; also a command-line
/// value of `radiogate-bench`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Cpu,
    Cuda,
    #[value(name = "tensorrt")]
    TensorRt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawInference {
    model: PathBuf,
    model_name: Option<String>,
    runtime_library: Option<PathBuf>,
    execution_provider: ProviderKind,
    device_id: Option<i64>,
    gpu_wait: Option<GpuWait>,
    gpu_tf32: Option<bool>,
    gpu_nhwc: Option<bool>,
    sessions: i64,
    intra_threads: i64,
    live_intra_threads: Option<i64>,
    views: i64,
}

impl Default for RawInference {
    fn default() -> Self {
        Self {
            model: PathBuf::from(DEFAULT_MODEL),
            model_name: None,
            runtime_library: None,
            execution_provider: ProviderKind::Cpu,
            device_id: None,
            gpu_wait: None,
            gpu_tf32: None,
            gpu_nhwc: None,
            sessions: 2,
            intra_threads: 1,
            live_intra_threads: None,
            views: 1,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSummary {
    grid: i64,
    zstd_level: i64,
    per_gate_maps: bool,
}

impl Default for RawSummary {
    fn default() -> Self {
        Self {
            grid: 30,
            zstd_level: 3,
            per_gate_maps: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawSinkKind {
    #[default]
    File,
    Kafka,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawDelivery {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawFormat {
    #[default]
    Jsonl,
    Protobuf,
    Ecsv,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSink {
    kind: RawSinkKind,
    path: Option<PathBuf>,
    format: Option<RawFormat>,
    resume: bool,
    brokers: Option<String>,
    results_topic: Option<String>,
    dead_letter_topic: Option<String>,
    delivery: Option<RawDelivery>,
    transactional_id: Option<String>,
    properties: BTreeMap<String, RawProperty>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPipeline {
    queue_capacity: i64,
    drain_timeout: String,
    scheduling: Scheduling,
}

impl Default for RawPipeline {
    fn default() -> Self {
        Self {
            queue_capacity: 64,
            drain_timeout: "30s".into(),
            scheduling: Scheduling::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTelemetry {
    listen: Option<String>,
    json_logs: bool,
}

// ---------------------------------------------------------------------------------------
// Validation: raw -> resolved
// ---------------------------------------------------------------------------------------

/// Collects every field error instead of stopping at the first.
#[derive(Default)]
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_string(),
            message: message.into(),
            set_by: None,
        });
    }

    /// Records `why` against each of `fields` that was given (a value for another mode).
    fn unused<const N: usize>(&mut self, fields: [(&str, bool); N], why: &str) {
        for (field, given) in fields {
            if given {
                self.fail(field, why);
            }
        }
    }

    /// `value` within `lo..=hi`, as usize; on failure records the error and returns `lo`.
    fn range(&mut self, field: &str, value: i64, lo: i64, hi: i64) -> usize {
        if (lo..=hi).contains(&value) {
            usize::try_from(value).unwrap_or_default()
        } else {
            self.fail(field, format!("must be between {lo} and {hi}, got {value}"));
            usize::try_from(lo).unwrap_or_default()
        }
    }

    /// A number from `lo` to `hi`.
    fn number(&mut self, field: &str, value: f64, lo: f64, hi: f64) -> f64 {
        if (lo..=hi).contains(&value) {
            value
        } else {
            self.fail(field, format!("must be from {lo} to {hi}, got {value}"));
            lo
        }
    }

    /// A humantime duration (`20ms`, `1m 30s`) no longer than `max`.
    fn duration(&mut self, field: &str, text: &str, max: Duration) -> Duration {
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d <= max => d,
            Ok(_) => {
                self.fail(
                    field,
                    format!(
                        "must be at most {}, got {text:?}",
                        humantime::format_duration(max)
                    ),
                );
                Duration::ZERO
            }
            Err(e) => {
                self.fail(
                    field,
                    format!("not a duration like \"20ms\" or \"30s\" ({e}), got {text:?}"),
                );
                Duration::ZERO
            }
        }
    }
}

/// The largest `batch.max_batch` on a GPU: GPU sessions pad a batch to the next power of
/// two, and on an H100 a batch of 2,048 failed in the CUDA Resize kernel (its 32-bit element
/// count overflows for the 64-channel 150x150 gate tensor from ~1,490 images).
const MAX_GPU_BATCH: usize = 1024;

impl RawConfig {
    fn resolve(self) -> Result<Config, Vec<FieldError>> {
        let mut check = Checker::default();
        let shard = self.source.shard(&mut check);
        let config = Config {
            source: self.source.resolve(&mut check),
            shard,
            cutout: CutoutConfig {
                mosaics: self.cutout.mosaics,
                workers: check.range("cutout.workers", self.cutout.workers, 1, 256),
                pixel_scale_arcsec: check.number(
                    "cutout.pixel_scale_arcsec",
                    self.cutout.pixel_scale_arcsec,
                    0.001,
                    3600.0,
                ),
                pixel_scale_tolerance: check.number(
                    "cutout.pixel_scale_tolerance",
                    self.cutout.pixel_scale_tolerance,
                    0.0,
                    1.0,
                ),
                resample: self.cutout.resample,
            },
            batch: BatchConfig {
                max_batch: check.range("batch.max_batch", self.batch.max_batch, 1, 4096),
                max_wait: check.duration(
                    "batch.max_wait",
                    &self.batch.max_wait,
                    Duration::from_secs(60),
                ),
            },
            inference: self.inference.resolve(&mut check),
            summary: self.summary.resolve(&mut check),
            sink: self.sink.resolve(&mut check),
            pipeline: PipelineConfig {
                queue_capacity: check.range(
                    "pipeline.queue_capacity",
                    self.pipeline.queue_capacity,
                    1,
                    1 << 20,
                ),
                drain_timeout: check.duration(
                    "pipeline.drain_timeout",
                    &self.pipeline.drain_timeout,
                    Duration::from_secs(3600),
                ),
                scheduling: self.pipeline.scheduling,
            },
            telemetry: self.telemetry.resolve(&mut check),
        };
        if config.inference.execution_provider != ExecutionProvider::Cpu
            && config.batch.max_batch > MAX_GPU_BATCH
        {
            check.fail(
                "batch.max_batch",
                format!(
                    "at most {MAX_GPU_BATCH} with a GPU provider, got {} (batches run padded to a power of two, and from ~1,490 images the CUDA Resize of the AG-CNN's gates overflows; BENCHMARKS.md)",
                    config.batch.max_batch
                ),
            );
        }
        if matches!(config.source, SourceConfig::Kafka(_))
            && !matches!(config.sink, SinkConfig::Kafka(_))
        {
            check.fail(
                "sink.kind",
                "must be \"kafka\" when source.kind = \"kafka\" (offsets are acknowledged by delivery reports)",
            );
        }
        if let SourceConfig::Kafka(source) = &config.source {
            // The consumer is not polled while the worker drains (it has stopped fetching):
            // a drain longer than this gets it expelled from its group, and the records it
            // finishes are then committed by no one.
            let max_poll = source
                .properties
                .get("max.poll.interval.ms")
                .and_then(|ms| ms.trim().parse().ok())
                .map_or(DEFAULT_MAX_POLL_INTERVAL, Duration::from_millis);
            if config.pipeline.drain_timeout >= max_poll {
                check.fail(
                    "pipeline.drain_timeout",
                    format!(
                        "must be shorter than the consumer's max.poll.interval.ms ({} s) with a Kafka source: the consumer is not polled while the worker drains",
                        max_poll.as_secs_f64()
                    ),
                );
            }
        }
        if let SinkConfig::Kafka(sink) = &config.sink
            && sink.delivery == DeliveryMode::ExactlyOnce
            && !matches!(config.source, SourceConfig::Kafka(_))
        {
            check.fail(
                "sink.delivery",
                "\"exactly_once\" needs source.kind = \"kafka\" (the consumed offsets commit with the results)",
            );
        }
        if check.errors.is_empty() {
            Ok(config)
        } else {
            Err(check.errors)
        }
    }
}

impl RawSource {
    fn resolve(self, check: &mut Checker) -> SourceConfig {
        let kind = match self.kind {
            RawSourceKind::Files => "files",
            RawSourceKind::Catalog => "catalog",
            RawSourceKind::Detections => "detections",
            RawSourceKind::Kafka => "kafka",
        };
        if self.kind != RawSourceKind::Catalog {
            check.unused(
                [("source.columns", !self.columns.is_empty())],
                &format!("only used when source.kind = \"catalog\", not \"{kind}\""),
            );
        }
        if self.kind == RawSourceKind::Kafka {
            return self.resolve_kafka(check);
        }
        check.unused(
            [
                ("source.brokers", self.brokers.is_some()),
                ("source.group_id", self.group_id.is_some()),
                ("source.topic", self.topic.is_some()),
                ("source.properties", !self.properties.is_empty()),
            ],
            &format!("only used when source.kind = \"kafka\", not \"{kind}\""),
        );
        let survey_given = self.survey.is_some();
        let survey = match self.survey {
            Some(s) if s.trim().is_empty() => {
                check.fail("source.survey", "must not be empty");
                String::new()
            }
            Some(s) => s,
            None => DEFAULT_SURVEY.to_string(),
        };
        if self.kind == RawSourceKind::Files {
            if self.path.is_some() {
                check.fail(
                    "source.path",
                    "not used when source.kind = \"files\" (list files and folders in source.inputs)",
                );
            }
            return SourceConfig::Files {
                inputs: self.inputs,
                survey,
            };
        }
        if !self.inputs.is_empty() {
            check.fail(
                "source.inputs",
                format!("only used when source.kind = \"files\", not \"{kind}\" (use source.path)"),
            );
        }
        let path = match self.path {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => {
                check.fail(
                    "source.path",
                    format!("required when source.kind = \"{kind}\""),
                );
                PathBuf::new()
            }
        };
        match self.kind {
            RawSourceKind::Catalog => {
                for (field, column) in &self.columns {
                    let key = format!("source.columns.{field}");
                    if !CATALOG_FIELDS.contains(&field.as_str()) {
                        check.fail(
                            &key,
                            format!("unknown field (fields: {})", CATALOG_FIELDS.join(", ")),
                        );
                    } else if column.trim().is_empty() {
                        check.fail(&key, "must name a column");
                    }
                }
                SourceConfig::Catalog {
                    path,
                    survey,
                    columns: self.columns,
                }
            }
            _ => {
                if survey_given {
                    check.fail(
                        "source.survey",
                        "not used when source.kind = \"detections\" (each message names its survey)",
                    );
                }
                SourceConfig::DetectionsFile { path }
            }
        }
    }
}

impl RawSource {
    /// `shard = "K/N"`, 0 <= K < N; not for a Kafka source, whose consumer group shares the
    /// topic's partitions among workers.
    fn shard(&self, check: &mut Checker) -> Shard {
        let Some(text) = &self.shard else {
            return Shard::default();
        };
        if self.kind == RawSourceKind::Kafka {
            check.fail(
                "source.shard",
                "not used when source.kind = \"kafka\": the consumer group shares the topic's \
                 partitions among the workers",
            );
            return Shard::default();
        }
        let parsed = text.split_once('/').and_then(|(k, n)| {
            Some((k.trim().parse::<u64>().ok()?, n.trim().parse::<u64>().ok()?))
        });
        match parsed {
            Some((index, count)) if index < count => Shard { index, count },
            _ => {
                check.fail(
                    "source.shard",
                    format!("must be \"K/N\" with 0 <= K < N (e.g. \"0/8\"), got {text:?}"),
                );
                Shard::default()
            }
        }
    }

    fn resolve_kafka(self, check: &mut Checker) -> SourceConfig {
        check.unused(
            [
                ("source.inputs", !self.inputs.is_empty()),
                ("source.path", self.path.is_some()),
                ("source.survey", self.survey.is_some()),
            ],
            "not used when source.kind = \"kafka\"",
        );
        SourceConfig::Kafka(KafkaSourceConfig {
            brokers: required(check, "source.brokers", self.brokers, "kafka"),
            group_id: required(check, "source.group_id", self.group_id, "kafka"),
            topic: required(check, "source.topic", self.topic, "kafka"),
            properties: resolve_properties(check, "source", self.properties, &SOURCE_RESERVED),
        })
    }
}

/// A non-blank string required in a mode (`kind`); on failure records the error.
fn required(check: &mut Checker, field: &str, value: Option<String>, kind: &str) -> String {
    match value {
        Some(v) if !v.trim().is_empty() => v,
        Some(_) => {
            check.fail(field, "must not be empty");
            String::new()
        }
        None => {
            check.fail(
                field,
                format!("required when {} = \"{kind}\"", kind_field(field)),
            );
            String::new()
        }
    }
}

/// `source.kind` for a `source.*` field, `sink.kind` for a `sink.*` one.
fn kind_field(field: &str) -> String {
    format!("{}.kind", field.split('.').next().unwrap_or_default())
}

impl RawInference {
    fn resolve(self, check: &mut Checker) -> InferenceConfig {
        if self.model.as_os_str().is_empty() {
            check.fail("inference.model", "must not be empty");
        }
        let model_name = match self.model_name {
            Some(name) if name.trim().is_empty() => {
                check.fail(
                    "inference.model_name",
                    "must not be empty (omit it to use the file stem)",
                );
                name
            }
            Some(name) => name,
            None => self
                .model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let runtime_library = self.runtime_library.filter(|p| !p.as_os_str().is_empty());
        let device_id = match self.device_id {
            Some(id) if !(0..=i64::from(i32::MAX)).contains(&id) => {
                check.fail(
                    "inference.device_id",
                    format!("must be 0 or more, got {id}"),
                );
                0
            }
            Some(id) => i32::try_from(id).unwrap_or_default(),
            None => 0,
        };
        let gpu = Gpu {
            device_id,
            wait: self.gpu_wait.unwrap_or_default(),
            tf32: self.gpu_tf32.unwrap_or(false),
            nhwc: self.gpu_nhwc.unwrap_or(false),
        };
        if self.execution_provider == ProviderKind::Cpu {
            check.unused(
                [
                    ("inference.device_id", self.device_id.is_some()),
                    ("inference.gpu_wait", self.gpu_wait.is_some()),
                    ("inference.gpu_tf32", self.gpu_tf32.is_some()),
                    ("inference.gpu_nhwc", self.gpu_nhwc.is_some()),
                ],
                "only used with execution_provider \"cuda\" or \"tensorrt\"",
            );
        } else {
            check.unused(
                [(
                    "inference.live_intra_threads",
                    self.live_intra_threads.is_some_and(|n| n != 0),
                )],
                "only used with execution_provider \"cpu\"",
            );
        }
        let execution_provider = ExecutionProvider::new(self.execution_provider, gpu);
        InferenceConfig {
            model: self.model,
            model_name,
            runtime_library,
            execution_provider,
            sessions: check.range("inference.sessions", self.sessions, 1, 64),
            intra_threads: check.range("inference.intra_threads", self.intra_threads, 1, 1024),
            live_intra_threads: match self.live_intra_threads {
                _ if self.execution_provider != ProviderKind::Cpu => 0,
                Some(n) => check.range("inference.live_intra_threads", n, 0, 1024),
                // As many cores as the sessions use together; none when that is one.
                None => usize::try_from(self.sessions.saturating_mul(self.intra_threads))
                    .ok()
                    .filter(|&n| n > 1)
                    .unwrap_or(0),
            },
            views: match usize::try_from(self.views) {
                Ok(n) if VIEW_COUNTS.contains(&n) => n,
                _ => {
                    check.fail(
                        "inference.views",
                        format!("must be 1, 2, 4 or 8, got {}", self.views),
                    );
                    1
                }
            },
        }
    }
}

impl RawSummary {
    fn resolve(self, check: &mut Checker) -> SummaryConfig {
        let grid = check.range(
            "summary.grid",
            self.grid,
            1,
            crate::domain::MODEL_SIZE as i64,
        );
        let levels = zstd::compression_level_range();
        let (lo, hi) = (i64::from(*levels.start()), i64::from(*levels.end()));
        let zstd_level = if (lo..=hi).contains(&self.zstd_level) {
            i32::try_from(self.zstd_level).unwrap_or_default()
        } else {
            check.fail(
                "summary.zstd_level",
                format!("must be between {lo} and {hi}, got {}", self.zstd_level),
            );
            0
        };
        SummaryConfig {
            grid: u32::try_from(grid).unwrap_or_default(),
            zstd_level,
            per_gate_maps: self.per_gate_maps,
        }
    }
}

impl RawSink {
    fn resolve(self, check: &mut Checker) -> SinkConfig {
        if let RawSinkKind::Kafka = self.kind {
            return self.resolve_kafka(check);
        }
        check.unused(
            [
                ("sink.brokers", self.brokers.is_some()),
                ("sink.results_topic", self.results_topic.is_some()),
                ("sink.dead_letter_topic", self.dead_letter_topic.is_some()),
                ("sink.delivery", self.delivery.is_some()),
                ("sink.transactional_id", self.transactional_id.is_some()),
                ("sink.properties", !self.properties.is_empty()),
            ],
            "only used when sink.kind = \"kafka\", not \"file\"",
        );
        let path = match self.path {
            Some(p) if p.as_os_str() == "-" => None,
            Some(p) if p.as_os_str().is_empty() => {
                check.fail(
                    "sink.path",
                    "must not be empty (omit it or use \"-\" for standard output)",
                );
                None
            }
            other => other,
        };
        let format = match self.format.unwrap_or_default() {
            RawFormat::Jsonl => OutputFormat::Jsonl,
            RawFormat::Protobuf => OutputFormat::Protobuf,
            RawFormat::Ecsv => OutputFormat::Ecsv,
        };
        if format == OutputFormat::Protobuf && path.is_none() {
            check.fail(
                "sink.path",
                "protobuf output needs a file (rejections go to <path>.rejections), not standard output",
            );
        }
        if self.resume && path.is_none() {
            check.fail(
                "sink.resume",
                "needs sink.path: there is nothing to resume on standard output",
            );
        } else if self.resume && format == OutputFormat::Protobuf {
            check.fail(
                "sink.resume",
                "needs sink.format \"jsonl\" or \"ecsv\": protobuf keeps rejections in a file of their own, \
                 so its records are not one sequence in input order",
            );
        }
        SinkConfig::File {
            path,
            format,
            resume: self.resume,
        }
    }

    fn resolve_kafka(self, check: &mut Checker) -> SinkConfig {
        check.unused(
            [
                ("sink.path", self.path.is_some()),
                ("sink.format", self.format.is_some()),
                ("sink.resume", self.resume),
            ],
            "not used when sink.kind = \"kafka\" (messages are protobuf)",
        );
        let delivery = match self.delivery.unwrap_or_default() {
            RawDelivery::AtLeastOnce => DeliveryMode::AtLeastOnce,
            RawDelivery::ExactlyOnce => DeliveryMode::ExactlyOnce,
        };
        let transactional_id = match (delivery, self.transactional_id) {
            (DeliveryMode::AtLeastOnce, Some(_)) => {
                check.fail(
                    "sink.transactional_id",
                    "only used when sink.delivery = \"exactly_once\"",
                );
                None
            }
            (_, Some(id)) if id.trim().is_empty() => {
                check.fail(
                    "sink.transactional_id",
                    "must not be empty (omit it for the default)",
                );
                None
            }
            (_, id) => id,
        };
        let results_topic = required(check, "sink.results_topic", self.results_topic, "kafka");
        let dead_letter_topic = required(
            check,
            "sink.dead_letter_topic",
            self.dead_letter_topic,
            "kafka",
        );
        if !results_topic.is_empty() && results_topic == dead_letter_topic {
            check.fail(
                "sink.dead_letter_topic",
                "must differ from sink.results_topic",
            );
        }
        SinkConfig::Kafka(KafkaSinkConfig {
            brokers: required(check, "sink.brokers", self.brokers, "kafka"),
            results_topic,
            dead_letter_topic,
            delivery,
            transactional_id,
            properties: resolve_properties(check, "sink", self.properties, &SINK_RESERVED),
        })
    }
}

impl RawTelemetry {
    fn resolve(self, check: &mut Checker) -> TelemetryConfig {
        let listen = match self.listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    check.fail(
                        "telemetry.listen",
                        format!("not an address like \"127.0.0.1:9100\", got {text:?}"),
                    );
                    None
                }
            },
        };
        TelemetryConfig {
            listen,
            json_logs: self.json_logs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> std::iter::Empty<(String, String)> {
        std::iter::empty()
    }

    fn env(vars: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        ConfigBuilder::from_toml(text)?.build()
    }

    fn config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    /// The single field error of `result`, as text.
    fn field_error(result: Result<Config, ConfigError>) -> String {
        let err = result.expect_err("configuration should be refused");
        assert_eq!(err.field_errors().len(), 1, "{err}");
        err.to_string()
    }

    #[test]
    fn defaults_are_valid() {
        let config = from_toml("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(
            config.source,
            SourceConfig::Files {
                inputs: vec![],
                survey: "FIRST".into()
            }
        );
        assert_eq!(config.batch.max_batch, 1);
        assert_eq!(config.batch.max_wait, Duration::from_millis(20));
        assert_eq!(config.inference.model, PathBuf::from(DEFAULT_MODEL));
        assert_eq!(config.inference.model_name, "agcnn-mirabest-confident");
        assert_eq!(config.inference.execution_provider, ExecutionProvider::Cpu);
        assert_eq!(config.inference.runtime_library, None);
        assert_eq!(config.inference.sessions, 2);
        assert_eq!(config.inference.intra_threads, 1);
        assert_eq!(
            config.inference.live_intra_threads, 2,
            "as many as the sessions use together"
        );
        assert_eq!(
            config.summary,
            SummaryConfig {
                grid: 30,
                zstd_level: 3,
                per_gate_maps: false
            }
        );
        assert_eq!(config.cutout, CutoutConfig::default());
        assert_eq!(
            (
                config.cutout.workers,
                config.cutout.pixel_scale_arcsec,
                config.cutout.pixel_scale_tolerance
            ),
            (2, 1.8, 0.02)
        );
        assert_eq!(
            config.sink,
            SinkConfig::File {
                path: None,
                format: OutputFormat::Jsonl,
                resume: false,
            }
        );
        assert_eq!(config.pipeline.queue_capacity, 64);
        assert_eq!(config.pipeline.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.pipeline.scheduling, Scheduling::Adaptive);
        assert_eq!(
            config.telemetry,
            TelemetryConfig {
                listen: None,
                json_logs: false
            }
        );
    }

    #[test]
    fn every_example_config_loads() {
        let mut seen = 0;
        for entry in std::fs::read_dir(config_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(Some(&path), no_env()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(
            seen >= 2,
            "expected the example configs in config/, found {seen}"
        );
    }

    #[test]
    fn documented_example_states_the_defaults() {
        let documented = load(Some(&config_dir().join("radiogate.toml")), no_env()).unwrap();
        assert_eq!(documented, Config::default());
    }

    #[test]
    fn offline_sample_classifies_the_bundled_sample() {
        let config = load(Some(&config_dir().join("offline-sample.toml")), no_env()).unwrap();
        assert_eq!(
            config.source,
            SourceConfig::Files {
                inputs: vec!["samples/first".into()],
                survey: "FIRST".into()
            }
        );
        assert_eq!(config.inference.model, PathBuf::from(DEFAULT_MODEL));
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let msg = field_error(from_toml("[batch]\nmax_batchh = 3\n"));
        assert!(msg.starts_with("batch.max_batchh: unknown key"), "{msg}");
        assert!(msg.contains("max_batch"), "lists the known keys: {msg}");

        let msg = field_error(from_toml("[batchh]\nmax_batch = 3\n"));
        assert!(msg.starts_with("batchh: unknown key"), "{msg}");

        let msg = field_error(from_toml("batch = 3\n"));
        assert_eq!(msg, "batch: invalid type: integer `3`, expected a table");
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let msg = field_error(from_toml("[batch]\nmax_batch = 0\n"));
        assert_eq!(msg, "batch.max_batch: must be between 1 and 4096, got 0");

        let msg = field_error(from_toml("[batch]\nmax_batch = \"lots\"\n"));
        assert_eq!(
            msg,
            "batch.max_batch: invalid type: string \"lots\", expected an integer"
        );

        let msg = field_error(from_toml("[batch]\nmax_wait = \"20 parsecs\"\n"));
        assert!(msg.starts_with("batch.max_wait: not a duration"), "{msg}");

        let msg = field_error(from_toml("[inference]\nintra_threads = 0\n"));
        assert!(
            msg.starts_with("inference.intra_threads: must be between 1"),
            "{msg}"
        );

        let msg = field_error(from_toml("[inference]\nexecution_provider = \"tpu\"\n"));
        assert!(
            msg.starts_with("inference.execution_provider: unknown variant `tpu`"),
            "{msg}"
        );

        let msg = field_error(from_toml("[pipeline]\nscheduling = \"fifo\"\n"));
        assert!(
            msg.starts_with("pipeline.scheduling: unknown variant `fifo`"),
            "{msg}"
        );
        let config = from_toml("[pipeline]\nscheduling = \"normal\"\n").unwrap();
        assert_eq!(config.pipeline.scheduling, Scheduling::Normal);

        for setting in ["gpu_wait = \"spin\"", "gpu_tf32 = true", "gpu_nhwc = false"] {
            let msg = field_error(from_toml(&format!("[inference]\n{setting}\n")));
            let field = setting.split(' ').next().expect("a key");
            assert!(
                msg.starts_with(&format!("inference.{field}: only used with")),
                "{msg}"
            );
        }
        let msg = field_error(from_toml("[inference]\ndevice_id = 1\n"));
        assert!(
            msg.starts_with("inference.device_id: only used with"),
            "{msg}"
        );
        let msg = field_error(from_toml(
            "[inference]\nexecution_provider = \"cuda\"\nlive_intra_threads = 4\n",
        ));
        assert!(
            msg.starts_with(
                "inference.live_intra_threads: only used with execution_provider \"cpu\""
            ),
            "{msg}"
        );
        let msg = field_error(from_toml("[inference]\nlive_intra_threads = -1\n"));
        assert!(
            msg.starts_with("inference.live_intra_threads: must be between 0"),
            "{msg}"
        );
        let live = |text: &str| from_toml(text).unwrap().inference.live_intra_threads;
        assert_eq!(live("[inference]\nlive_intra_threads = 0\n"), 0, "off");
        assert_eq!(live("[inference]\nsessions = 1\n"), 0, "one core: none");
        assert_eq!(live("[inference]\nsessions = 3\nintra_threads = 2\n"), 6);
        assert_eq!(
            live("[inference]\nexecution_provider = \"cuda\"\n"),
            0,
            "GPU: none"
        );

        let msg = field_error(from_toml("[telemetry]\nlisten = \"localhost\"\n"));
        assert!(msg.starts_with("telemetry.listen:"), "{msg}");

        for (text, field) in [
            (
                "pixel_scale_arcsec = 0",
                "cutout.pixel_scale_arcsec: must be from 0.001",
            ),
            (
                "pixel_scale_arcsec = nan",
                "cutout.pixel_scale_arcsec: must be from",
            ),
            (
                "pixel_scale_tolerance = 1.5",
                "cutout.pixel_scale_tolerance: must be from 0 to 1",
            ),
            (
                "pixel_scale_tolerance = -0.1",
                "cutout.pixel_scale_tolerance: must be from",
            ),
        ] {
            let msg = field_error(from_toml(&format!("[cutout]\n{text}\n")));
            assert!(msg.starts_with(field), "{text}: {msg}");
        }
        let cutout = from_toml(
            "[cutout]\npixel_scale_arcsec = 1\npixel_scale_tolerance = 0.1\nresample = true\n",
        )
        .unwrap()
        .cutout;
        assert_eq!(
            (
                cutout.pixel_scale_arcsec,
                cutout.pixel_scale_tolerance,
                cutout.resample
            ),
            (1.0, 0.1, true)
        );

        let msg = field_error(from_toml("[summary]\ngrid = 151\n"));
        assert!(
            msg.starts_with("summary.grid: must be between 1 and 150"),
            "{msg}"
        );

        let msg = field_error(from_toml("[sink]\nformat = \"protobuf\"\n"));
        assert!(
            msg.starts_with("sink.path: protobuf output needs a file"),
            "{msg}"
        );
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let err = from_toml("[batch]\nmax_batch = 0\n[cutout]\nworkers = 0\n").unwrap_err();
        let fields: Vec<&str> = err
            .field_errors()
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        assert_eq!(fields, ["cutout.workers", "batch.max_batch"]);
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "[batch\nmax_batch = 1\n").unwrap();
        let err = load(Some(&path), no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        assert!(err.to_string().contains("broken.toml"), "{err}");

        let err = load(Some(&dir.path().join("absent.toml")), no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    #[test]
    fn views_are_one_of_the_sets_there_are() {
        assert_eq!(Config::default().inference.views, 1);
        for n in [1, 2, 4, 8] {
            let config = from_toml(&format!("[inference]\nviews = {n}\n")).unwrap();
            assert_eq!(config.inference.views, n);
        }
        for n in [0, 3, 16, -1] {
            let msg = field_error(from_toml(&format!("[inference]\nviews = {n}\n")));
            assert_eq!(
                msg,
                format!("inference.views: must be 1, 2, 4 or 8, got {n}")
            );
        }
    }

    #[test]
    fn catalogue_columns_name_known_fields_of_a_catalogue() {
        let config = from_toml(
            "[source]\nkind = \"catalog\"\npath = \"c.fits\"\ncolumns = { source_id = \"Component_id\" }\n",
        )
        .unwrap();
        let SourceConfig::Catalog { columns, .. } = config.source else {
            panic!("{:?}", config.source)
        };
        assert_eq!(columns["source_id"], "Component_id");
        let msg = field_error(from_toml(
            "[source]\nkind = \"catalog\"\npath = \"c.fits\"\ncolumns = { flux = \"F\" }\n",
        ));
        assert!(
            msg.starts_with("source.columns.flux: unknown field (fields: source_id, ra, dec"),
            "{msg}"
        );
        let msg = field_error(from_toml(
            "[source]\nkind = \"catalog\"\npath = \"c.fits\"\ncolumns = { ra = \" \" }\n",
        ));
        assert_eq!(msg, "source.columns.ra: must name a column");
        let msg = field_error(from_toml(
            "[source]\ninputs = [\"x\"]\ncolumns = { ra = \"RA\" }\n",
        ));
        assert!(
            msg.starts_with("source.columns: only used when source.kind = \"catalog\""),
            "{msg}"
        );
    }

    #[test]
    fn modes_require_their_values() {
        let msg = field_error(from_toml("[source]\nkind = \"catalog\"\n"));
        assert_eq!(msg, "source.path: required when source.kind = \"catalog\"");

        let msg = field_error(from_toml("[source]\npath = \"x.csv\"\n"));
        assert!(
            msg.starts_with("source.path: not used when source.kind = \"files\""),
            "{msg}"
        );

        let config =
            from_toml("[source]\nkind = \"catalog\"\npath = \"c.csv\"\nsurvey = \"VLASS\"\n")
                .unwrap();
        assert_eq!(
            config.source,
            SourceConfig::Catalog {
                path: "c.csv".into(),
                survey: "VLASS".into(),
                columns: BTreeMap::new(),
            }
        );
        let msg = field_error(from_toml(
            "[source]\nkind = \"detections\"\npath = \"d.pb\"\nsurvey = \"X\"\n",
        ));
        assert!(msg.starts_with("source.survey: not used"), "{msg}");
        let config = from_toml("[source]\nkind = \"detections\"\npath = \"d.pb\"\n").unwrap();
        assert_eq!(
            config.source,
            SourceConfig::DetectionsFile {
                path: "d.pb".into()
            }
        );
    }

    #[test]
    fn gpu_providers_carry_their_device() {
        let config =
            from_toml("[inference]\nexecution_provider = \"tensorrt\"\ndevice_id = 1\n").unwrap();
        assert_eq!(
            config.inference.execution_provider,
            ExecutionProvider::TensorRt(Gpu::on(1))
        );
        let config = from_toml(
            "[inference]\nexecution_provider = \"cuda\"\ngpu_wait = \"spin\"\ngpu_tf32 = true\ngpu_nhwc = true\n",
        )
        .unwrap();
        assert_eq!(
            config.inference.execution_provider,
            ExecutionProvider::Cuda(Gpu {
                device_id: 0,
                wait: GpuWait::Spin,
                tf32: true,
                nhwc: true,
            })
        );
        let msg = field_error(from_toml(
            "[inference]\nexecution_provider = \"cuda\"\ngpu_wait = \"busy\"\n",
        ));
        assert!(
            msg.starts_with("inference.gpu_wait: unknown variant `busy`"),
            "{msg}"
        );
        // Batches above 1024 fail on a GPU; the CPU takes up to 4096.
        let gpu = "[inference]\nexecution_provider = \"cuda\"\n[batch]\nmax_batch = ";
        assert!(from_toml(&format!("{gpu}1024\n")).is_ok());
        let msg = field_error(from_toml(&format!("{gpu}1025\n")));
        assert!(
            msg.starts_with("batch.max_batch: at most 1024 with a GPU"),
            "{msg}"
        );
        assert!(from_toml("[batch]\nmax_batch = 4096\n").is_ok());
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[batch]\nmax_batch = 8\nmax_wait = \"5ms\"\n").unwrap();
        let config = load(
            Some(&path),
            env(&[
                ("RADIOGATE__BATCH__MAX_BATCH", "64"),
                ("RADIOGATE__INFERENCE__MODEL", "models/agcnn-mirabest.onnx"),
                ("RADIOGATE__CUTOUT__MOSAICS", r#"["/a", "/b"]"#),
                ("RADIOGATE__TELEMETRY__LISTEN", "127.0.0.1:9100"),
                ("RADIOGATE__TELEMETRY__JSON_LOGS", "true"),
                ("RADIOGATE_UNRELATED", "ignored"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.batch.max_batch, 64);
        assert_eq!(
            config.batch.max_wait,
            Duration::from_millis(5),
            "file value kept"
        );
        assert_eq!(
            config.inference.model,
            PathBuf::from("models/agcnn-mirabest.onnx")
        );
        assert_eq!(config.inference.model_name, "agcnn-mirabest");
        assert_eq!(
            config.cutout.mosaics,
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(
            config.telemetry.listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert!(config.telemetry.json_logs);
    }

    #[test]
    fn environment_string_fields_take_numbers_as_text() {
        let config = load(None, env(&[("RADIOGATE__INFERENCE__MODEL_NAME", "2024")])).unwrap();
        assert_eq!(config.inference.model_name, "2024");
        let config = load(None, env(&[("RADIOGATE__SOURCE__SURVEY", "true")])).unwrap();
        assert_eq!(
            config.source,
            SourceConfig::Files {
                inputs: vec![],
                survey: "true".into()
            }
        );
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let err = load(None, env(&[("RADIOGATE__BATCH__MAX_BATCH", "0")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "batch.max_batch: must be between 1 and 4096, got 0 (set by RADIOGATE__BATCH__MAX_BATCH)"
        );
        let err = load(None, env(&[("RADIOGATE__BATCH__MAX_BATCHH", "3")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("batch.max_batchh: unknown key"), "{msg}");
        assert!(
            msg.ends_with("(set by RADIOGATE__BATCH__MAX_BATCHH)"),
            "{msg}"
        );
        let err = load(None, env(&[("RADIOGATE__NOPE__KEY", "3")])).unwrap_err();
        assert!(
            err.to_string().ends_with("(set by RADIOGATE__NOPE__KEY)"),
            "{err}"
        );
        let err = load(None, env(&[("RADIOGATE__BATCH", "3")])).unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err:?}");
        // An element of an array, or a key of a table, that a variable set names it too.
        let err = load(None, env(&[("RADIOGATE__CUTOUT__MOSAICS", r#"["a", 1]"#)])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("cutout.mosaics[1]: ")
                && msg.ends_with("(set by RADIOGATE__CUTOUT__MOSAICS)"),
            "{msg}"
        );
        let err = load(
            None,
            env(&[
                ("RADIOGATE__SOURCE__COLUMNS", r#"{ flux = "F" }"#),
                ("RADIOGATE__SOURCE__KIND", "catalog"),
                ("RADIOGATE__SOURCE__PATH", "c.csv"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("(set by RADIOGATE__SOURCE__COLUMNS)"),
            "{err}"
        );
    }

    #[test]
    fn kafka_property_values_may_be_numbers_and_booleans() {
        let toml = "[source]\nkind = \"kafka\"\nbrokers = \"b\"\ngroup_id = \"g\"\ntopic = \"in\"\n\
             properties = { \"fetch.wait.max.ms\" = 10, \"check.crcs\" = true }\n\
             [sink]\nkind = \"kafka\"\nbrokers = \"b\"\nresults_topic = \"out\"\ndead_letter_topic = \"dead\"\n\
             properties = { \"linger.ms\" = 5, \"batch.num.messages\" = 1e4 }\n";
        let config = from_toml(toml).unwrap();
        let SourceConfig::Kafka(source) = &config.source else {
            panic!("{:?}", config.source)
        };
        assert_eq!(source.properties["fetch.wait.max.ms"], "10");
        assert_eq!(source.properties["check.crcs"], "true");
        let SinkConfig::Kafka(sink) = &config.sink else {
            panic!("{:?}", config.sink)
        };
        assert_eq!(sink.properties["linger.ms"], "5");
        assert_eq!(sink.properties["batch.num.messages"], "10000");
    }

    #[test]
    fn overrides_can_switch_modes() {
        let mut builder =
            ConfigBuilder::from_toml("[source]\nkind = \"catalog\"\npath = \"c.csv\"\n").unwrap();
        builder
            .set("source.kind", "files", "INPUT")
            .set("source.inputs", vec!["a.fits".to_string()], "INPUT")
            .unset("source.path");
        let config = builder.build().unwrap();
        assert_eq!(
            config.source,
            SourceConfig::Files {
                inputs: vec!["a.fits".into()],
                survey: "FIRST".into()
            }
        );
    }

    #[test]
    fn kafka_source_and_sink_resolve() {
        let config = from_toml(
            "[source]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ngroup_id = \"g\"\ntopic = \"in\"\n\
             properties = { \"session.timeout.ms\" = \"6000\" }\n\
             [sink]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\nresults_topic = \"out\"\n\
             dead_letter_topic = \"dead\"\n",
        )
        .unwrap();
        assert_eq!(
            config.source,
            SourceConfig::Kafka(KafkaSourceConfig {
                brokers: "127.0.0.1:9092".into(),
                group_id: "g".into(),
                topic: "in".into(),
                properties: BTreeMap::from([("session.timeout.ms".into(), "6000".into())]),
            })
        );
        assert_eq!(
            config.sink,
            SinkConfig::Kafka(KafkaSinkConfig {
                brokers: "127.0.0.1:9092".into(),
                results_topic: "out".into(),
                dead_letter_topic: "dead".into(),
                delivery: DeliveryMode::AtLeastOnce,
                transactional_id: None,
                properties: BTreeMap::new(),
            })
        );
    }

    #[test]
    fn exactly_once_needs_a_kafka_source_and_takes_a_transactional_id() {
        let source =
            "[source]\nkind = \"kafka\"\nbrokers = \"b\"\ngroup_id = \"g\"\ntopic = \"in\"\n";
        let sink = "[sink]\nkind = \"kafka\"\nbrokers = \"b\"\nresults_topic = \"out\"\ndead_letter_topic = \"dead\"\n";
        let config = from_toml(&format!(
            "{source}{sink}delivery = \"exactly_once\"\ntransactional_id = \"worker-0\"\n"
        ))
        .unwrap();
        let SinkConfig::Kafka(kafka) = config.sink else {
            panic!("a kafka sink")
        };
        assert_eq!(kafka.delivery, DeliveryMode::ExactlyOnce);
        assert_eq!(kafka.transactional_id.as_deref(), Some("worker-0"));

        let msg = field_error(from_toml(&format!("{sink}delivery = \"exactly_once\"\n")));
        assert!(
            msg.starts_with("sink.delivery: \"exactly_once\" needs source.kind = \"kafka\""),
            "{msg}"
        );
        let msg = field_error(from_toml(&format!(
            "{source}{sink}transactional_id = \"worker-0\"\n"
        )));
        assert_eq!(
            msg,
            "sink.transactional_id: only used when sink.delivery = \"exactly_once\""
        );
    }

    #[test]
    fn secrets_come_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("password");
        std::fs::write(&secret_file, "from-a-file\n").unwrap();
        // A variable name no other test or CI sets; set once, read here only.
        let var = "RADIOGATE_TEST_SECRET_5D1E";
        // SAFETY: no other thread reads or writes this variable.
        unsafe { std::env::set_var(var, "from-the-env") };
        let toml = format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"b\"\ngroup_id = \"g\"\ntopic = \"in\"\n\
             properties = {{ \"sasl.username\" = \"u\", \"sasl.password\" = {{ env = \"{var}\" }} }}\n\
             [sink]\nkind = \"kafka\"\nbrokers = \"b\"\nresults_topic = \"out\"\ndead_letter_topic = \"dead\"\n\
             properties = {{ \"sasl.password\" = {{ file = \"{}\" }} }}\n",
            secret_file.display()
        );
        let config = from_toml(&toml).unwrap();
        let (SourceConfig::Kafka(source), SinkConfig::Kafka(sink)) = (config.source, config.sink)
        else {
            panic!("kafka on both ends")
        };
        assert_eq!(source.properties["sasl.password"], "from-the-env");
        assert_eq!(source.properties["sasl.username"], "u");
        assert_eq!(sink.properties["sasl.password"], "from-a-file");

        let missing = toml
            .replace(var, "RADIOGATE_TEST_SECRET_UNSET_5D1E")
            .replace(&secret_file.display().to_string(), "/nonexistent/secret");
        let err = from_toml(&missing).unwrap_err().to_string();
        assert!(
            err.contains("source.properties.\"sasl.password\": environment variable RADIOGATE_TEST_SECRET_UNSET_5D1E is not set"),
            "{err}"
        );
        assert!(
            err.contains("sink.properties.\"sasl.password\": cannot read /nonexistent/secret"),
            "{err}"
        );
        assert!(!err.contains("from-the-env") && !err.contains("from-a-file"));
    }

    #[test]
    fn a_kafka_worker_drains_within_the_poll_interval() {
        let kafka = "[source]\nkind = \"kafka\"\nbrokers = \"b\"\ngroup_id = \"g\"\ntopic = \"in\"\n\
             [sink]\nkind = \"kafka\"\nbrokers = \"b\"\nresults_topic = \"out\"\ndead_letter_topic = \"dead\"\n";
        let msg = field_error(from_toml(&format!(
            "{kafka}[pipeline]\ndrain_timeout = \"10m\"\n"
        )));
        assert!(
            msg.starts_with("pipeline.drain_timeout: must be shorter than the consumer's max.poll.interval.ms (300 s)"),
            "{msg}"
        );
        let longer_poll = kafka.replace(
            "topic = \"in\"\n",
            "topic = \"in\"\nproperties = { \"max.poll.interval.ms\" = \"900000\" }\n",
        );
        assert!(
            from_toml(&format!(
                "{longer_poll}[pipeline]\ndrain_timeout = \"10m\"\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn properties_radiogate_sets_are_refused_by_name() {
        let toml = "[source]\nkind = \"kafka\"\nbrokers = \"b\"\ngroup_id = \"g\"\ntopic = \"in\"\n\
             properties = { \"auto.offset.reset\" = \"latest\", \"group.id\" = \"other\", \"fetch.wait.max.ms\" = \"10\" }\n\
             [sink]\nkind = \"kafka\"\nbrokers = \"b\"\nresults_topic = \"out\"\ndead_letter_topic = \"dead\"\n\
             properties = { \"acks\" = \"1\" }\n";
        let err = from_toml(toml).unwrap_err().to_string();
        for field in [
            "source.properties.\"auto.offset.reset\": cannot be set here",
            "source.properties.\"group.id\": cannot be set here: set by source.group_id",
            "sink.properties.\"acks\": cannot be set here",
        ] {
            assert!(err.contains(field), "{field} in {err}");
        }
        assert!(!err.contains("fetch.wait.max.ms"), "{err}");
    }

    #[test]
    fn kafka_settings_are_checked_by_name() {
        let sink = "[sink]\nkind = \"kafka\"\nbrokers = \"b\"\nresults_topic = \"out\"\ndead_letter_topic = \"dead\"\n";
        let msg = field_error(from_toml(&format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"b\"\ntopic = \"in\"\n{sink}"
        )));
        assert_eq!(
            msg,
            "source.group_id: required when source.kind = \"kafka\""
        );
        let msg = field_error(from_toml(&format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"b\"\ngroup_id = \" \"\ntopic = \"in\"\n{sink}"
        )));
        assert_eq!(msg, "source.group_id: must not be empty");
        let msg = field_error(from_toml("[source]\ntopic = \"in\"\n"));
        assert_eq!(
            msg,
            "source.topic: only used when source.kind = \"kafka\", not \"files\""
        );
        let msg = field_error(from_toml(
            "[source]\nkind = \"kafka\"\nbrokers = \"b\"\ngroup_id = \"g\"\ntopic = \"in\"\n",
        ));
        assert!(
            msg.starts_with("sink.kind: must be \"kafka\" when source.kind = \"kafka\""),
            "{msg}"
        );
        let msg = field_error(from_toml(&format!("{sink}delivery = \"sometimes\"\n")));
        assert!(
            msg.starts_with("sink.delivery: unknown variant `sometimes`"),
            "{msg}"
        );
        let msg = field_error(from_toml(&format!("{sink}format = \"jsonl\"\n")));
        assert!(
            msg.starts_with("sink.format: not used when sink.kind = \"kafka\""),
            "{msg}"
        );
        let msg = field_error(from_toml(
            "[sink]\nkind = \"kafka\"\nbrokers = \"b\"\nresults_topic = \"t\"\ndead_letter_topic = \"t\"\n",
        ));
        assert_eq!(
            msg,
            "sink.dead_letter_topic: must differ from sink.results_topic"
        );
        let msg = field_error(from_toml("[sink]\nresults_topic = \"out\"\n"));
        assert_eq!(
            msg,
            "sink.results_topic: only used when sink.kind = \"kafka\", not \"file\""
        );
    }

    #[test]
    fn a_kafka_sink_takes_results_of_an_offline_source() {
        let config = from_toml(
            "[sink]\nkind = \"kafka\"\nbrokers = \"b\"\nresults_topic = \"out\"\ndead_letter_topic = \"dead\"\n",
        )
        .unwrap();
        assert!(matches!(config.source, SourceConfig::Files { .. }));
        assert!(matches!(config.sink, SinkConfig::Kafka(_)));
    }

    #[test]
    fn stdout_can_be_named_explicitly() {
        let config = from_toml("[sink]\npath = \"-\"\n").unwrap();
        assert_eq!(
            config.sink,
            SinkConfig::File {
                path: None,
                format: OutputFormat::Jsonl,
                resume: false,
            }
        );
        let config = from_toml("[sink]\npath = \"out.pb\"\nformat = \"protobuf\"\n").unwrap();
        assert_eq!(
            config.sink,
            SinkConfig::File {
                path: Some("out.pb".into()),
                format: OutputFormat::Protobuf,
                resume: false,
            }
        );
        // A table can go to standard output: its rejections are rows of it.
        let config = from_toml("[sink]\npath = \"-\"\nformat = \"ecsv\"\n").unwrap();
        assert_eq!(
            config.sink,
            SinkConfig::File {
                path: None,
                format: OutputFormat::Ecsv,
                resume: false,
            }
        );
    }

    #[test]
    fn a_shard_is_k_of_n_and_not_for_kafka() {
        let config = from_toml("[source]\ninputs = [\"a\"]\nshard = \"2/8\"\n").unwrap();
        assert_eq!(config.shard, Shard { index: 2, count: 8 });
        assert_eq!(Config::default().shard, Shard { index: 0, count: 1 });
        for bad in ["8/8", "1/0", "x", "3", "-1/4"] {
            let err = from_toml(&format!("[source]\ninputs = [\"a\"]\nshard = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("source.shard") && err.contains("K/N"),
                "{bad}: {err}"
            );
        }
        let err = from_toml(
            "[source]\nkind = \"kafka\"\nbrokers = \"b:9092\"\ngroup_id = \"g\"\ntopic = \"t\"\n\
             shard = \"0/2\"\n[sink]\nkind = \"kafka\"\nbrokers = \"b:9092\"\n\
             results_topic = \"r\"\ndead_letter_topic = \"d\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("source.shard") && err.contains("consumer group"),
            "{err}"
        );
    }

    #[test]
    fn resume_needs_a_file_of_one_sequence() {
        let config =
            from_toml("[sink]\npath = \"r.ecsv\"\nformat = \"ecsv\"\nresume = true\n").unwrap();
        assert!(matches!(config.sink, SinkConfig::File { resume: true, .. }));
        for (toml, why) in [
            ("[sink]\nresume = true\n", "needs sink.path"),
            (
                "[sink]\npath = \"r.pb\"\nformat = \"protobuf\"\nresume = true\n",
                "protobuf keeps rejections",
            ),
            (
                "[sink]\nkind = \"kafka\"\nresume = true\nbrokers = \"b:9092\"\n\
                 results_topic = \"r\"\ndead_letter_topic = \"d\"\n",
                "not used when sink.kind",
            ),
        ] {
            let err = from_toml(toml).unwrap_err().to_string();
            assert!(err.contains("sink.resume") && err.contains(why), "{err}");
        }
    }

    #[test]
    fn kafka_secrets_never_show_in_debug_output() {
        let properties = BTreeMap::from([
            ("sasl.password".to_string(), "hunter2".to_string()),
            ("ssl.key.password".to_string(), "s3cret-key".to_string()),
            ("sasl.username".to_string(), "radiogate".to_string()),
        ]);
        let source = KafkaSourceConfig {
            brokers: "b:9092".into(),
            group_id: "g".into(),
            topic: "t".into(),
            properties: properties.clone(),
        };
        let sink = KafkaSinkConfig {
            brokers: "b:9092".into(),
            results_topic: "r".into(),
            dead_letter_topic: "d".into(),
            delivery: DeliveryMode::AtLeastOnce,
            transactional_id: None,
            properties,
        };
        for text in [format!("{source:?}"), format!("{sink:?}")] {
            assert!(
                !text.contains("hunter2") && !text.contains("s3cret-key"),
                "{text}"
            );
            assert!(
                text.contains("radiogate") && text.contains("<redacted>"),
                "{text}"
            );
        }
    }
}
