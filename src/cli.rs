//! The command line: what the user typed, as clap (derive) definitions, and how the
//! `classify` flags merge over a configuration file into a [`Config`].
//!
//! This module owns argument parsing and flag-over-file precedence only. Running a command,
//! logging setup and exit codes belong to `main.rs`; validation of values belongs to
//! [`crate::config`], which every flag goes through so that a bad flag is refused with the
//! same message, naming the flag, as a bad file entry.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, ConfigBuilder, ConfigError};

/// `radiogate`: classify radio galaxies (FRI/FRII) from FITS cutouts with an
/// attention-gated CNN.
#[derive(Debug, Parser)]
#[command(name = "radiogate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Log format on stderr; default: the configuration's `telemetry.json_logs`, else text.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `radiogate=debug,ort=warn` (tracing-subscriber syntax);
    /// default `info`, `warn` with `classify --quiet`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
}

impl GlobalArgs {
    /// The log filter: `--log-level` when given, else `warn` for a quiet command and `info`
    /// for the others.
    pub fn log_filter(&self, quiet: bool) -> &str {
        match &self.log_level {
            Some(level) => level,
            None if quiet => "warn",
            None => "info",
        }
    }

    /// Applies the global flags that the configuration also has (`--log-format`).
    pub fn apply(&self, config: &mut Config) {
        if let Some(format) = self.log_format {
            config.telemetry.json_logs = format == LogFormat::Json;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify FITS files, folders of them, or a catalogue, and exit.
    Classify(ClassifyArgs),
    /// Run the pipeline named by a configuration file until its source ends or a signal.
    Run(RunArgs),
    /// Load and validate a configuration file (with environment overrides), print the
    /// resolved configuration (secret-looking values redacted), and exit.
    CheckConfig(CheckConfigArgs),
    /// Send SourceDetection messages (key: source id) from FITS files or a catalogue to a
    /// Kafka topic: how to feed a test stream.
    Publish(PublishArgs),
    /// Draw a PNG of one source: the cutout, where the model looked (attention heat map),
    /// emission contours, label and confidence.
    Explain(ExplainArgs),
}

/// `radiogate explain`: a FITS cutout (classified now), or `--results` and `--source-id`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// A results file of `radiogate classify` (JSON Lines or protobuf) to take the source's
    /// result from, instead of classifying now.
    #[arg(long, value_name = "FILE", requires = "source_id")]
    pub results: Option<PathBuf>,
    /// The source to explain from --results.
    #[arg(long, value_name = "ID", requires = "results")]
    pub source_id: Option<String>,
    /// PNG file to write.
    #[arg(long, short, value_name = "FILE.png")]
    pub out: PathBuf,
    /// Side of the main panel in pixels.
    #[arg(long, value_name = "PX", default_value_t = 600, value_parser = clap::value_parser!(u32).range(150..=4000))]
    pub size: u32,
    /// Add a panel per attention gate (the gates' own maps).
    #[arg(long)]
    pub gates: bool,
    /// Configuration file (model, mosaics, summary grid), as for `classify`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// ONNX model file.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// The FITS cutout to classify and draw; with --results, the file to cut the source's
    /// pixels from (default: the file its result names).
    #[arg(value_name = "FITS", required_unless_present = "results")]
    pub fits: Option<PathBuf>,
}

/// `radiogate publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: String,
    /// Topic to send the detections to.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// Send each FITS file's bytes in the message (`fits_cutout`) instead of its path.
    #[arg(long, conflicts_with = "catalog")]
    pub inline: bool,
    /// Send at most this many detections per second (default: as fast as possible); each
    /// detection without a `detected_at` is stamped with its send time.
    #[arg(long, value_name = "PER_SECOND", value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Catalogue of positions, CSV, ECSV or a FITS table (fields source_id, ra, dec, ...),
    /// instead of FITS inputs.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "inputs",
        required_unless_present = "inputs"
    )]
    pub catalog: Option<PathBuf>,
    /// The catalogue column that gives a field, when it has neither the field's name nor a
    /// known alias (repeatable; e.g. `--column source_id=Component_id`).
    #[arg(
        long = "column",
        value_name = "FIELD=COLUMN",
        conflicts_with = "inputs",
        value_parser = catalog_column
    )]
    pub columns: Vec<(String, String)>,
    /// FITS files, or folders searched recursively for them.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

/// `FIELD=COLUMN` of `--column`: a catalogue field's name and the column that gives it.
fn catalog_column(text: &str) -> Result<(String, String), String> {
    let fields = crate::config::CATALOG_FIELDS;
    match text.split_once('=') {
        Some((field, column)) if fields.contains(&field) && !column.trim().is_empty() => {
            Ok((field.to_string(), column.to_string()))
        }
        Some((field, _)) if !fields.contains(&field) => Err(format!(
            "unknown field {field:?} (fields: {})",
            fields.join(", ")
        )),
        _ => Err(format!("expected FIELD=COLUMN, got {text:?}")),
    }
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "expected a positive number of detections per second, got {text:?}"
        )),
    }
}

/// `radiogate classify`: the offline, one-shot form.
#[derive(Debug, Clone, Default, Args)]
pub struct ClassifyArgs {
    /// Configuration file; flags given here win over it, and it over the defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// ONNX model file (the model name in results becomes its file stem).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Output file; default standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Output format (protobuf needs --out: rejections go to `<out>.rejections`).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Catalogue of sources, CSV, ECSV or a FITS table (fields source_id, ra, dec, ...),
    /// instead of FITS inputs.
    #[arg(long, value_name = "FILE", conflicts_with = "inputs")]
    pub catalog: Option<PathBuf>,
    /// The catalogue column that gives a field, when it has neither the field's name nor a
    /// known alias (repeatable; e.g. `--column source_id=Component_id`).
    #[arg(long = "column", value_name = "FIELD=COLUMN", value_parser = catalog_column)]
    pub columns: Vec<(String, String)>,
    /// Take only every Nth input, starting at the Kth (0-based): N runs with K = 0 .. N-1 (a
    /// batch system's array job) classify the inputs between them, each once.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Folder or file of FITS mosaics to cut from (repeatable); replaces the configured ones.
    #[arg(long, value_name = "DIR")]
    pub mosaics: Vec<PathBuf>,
    /// Largest batch sent to the model.
    #[arg(long, value_name = "N")]
    pub max_batch: Option<i64>,
    /// Keep the results --out already holds (JSON Lines or ECSV, written by a run that
    /// stopped early) and classify only the inputs after them; the inputs must be the same,
    /// in the same order, and so must the model.
    #[arg(long, requires = "out", conflicts_with = "report")]
    pub resume: bool,
    /// No progress bar, and only warnings and errors logged unless --log-level says
    /// otherwise; the one-line summary at the end is still printed.
    #[arg(long, short)]
    pub quiet: bool,
    /// A CSV of true classes (columns `source_id`, `class`: FRI or FRII) to print beside
    /// the predictions at the end (needs --out with JSON Lines).
    #[arg(long, value_name = "FILE.csv", requires = "out")]
    pub truth: Option<PathBuf>,
    /// Also write an HTML report (one self-contained file): a card per source with its
    /// attention overlay, and the rejections.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// FITS files, or folders searched recursively for *.fits, *.fit, *.fits.fz.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

/// Output formats as the command line spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// JSON Lines: one object per classification or rejection.
    Jsonl,
    /// Length-delimited protobuf `radiogate.v1.Classification` messages.
    Protobuf,
    /// A table for astropy or TOPCAT (ECSV): a row per classification or rejection.
    Ecsv,
}

impl FormatArg {
    fn config_name(self) -> &'static str {
        match self {
            FormatArg::Jsonl => "jsonl",
            FormatArg::Protobuf => "protobuf",
            FormatArg::Ecsv => "ecsv",
        }
    }
}

/// `radiogate run`: the long-running form, everything from the configuration.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Configuration file (environment overrides apply on top).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `radiogate check-config`.
#[derive(Debug, Clone, Args)]
pub struct CheckConfigArgs {
    /// Configuration file to check.
    #[arg(value_name = "FILE")]
    pub config: PathBuf,
}

/// The keys of a Kafka source, which a source the command line names (INPUT, `--catalog`)
/// does not take: a configuration file's are dropped (an override's are kept, and refused).
const KAFKA_SOURCE_KEYS: [&str; 4] = [
    "source.brokers",
    "source.group_id",
    "source.topic",
    "source.properties",
];

/// The configuration of `classify`: the `--config` file (or defaults), the process's
/// `RADIOGATE__...` environment overrides, then the flags.
pub fn classify_config(args: &ClassifyArgs) -> Result<Config, ConfigError> {
    classify_config_with_env(args, std::env::vars())
}

/// [`classify_config`] with the environment given (tests).
///
/// INPUTs make the source `files`, `--catalog` makes it `catalog` (either replaces the
/// file's source); with neither, the file's source is used. A run with nothing to classify
/// is refused.
pub fn classify_config_with_env(
    args: &ClassifyArgs,
    env: impl Iterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let builder = match &args.config {
        Some(path) => ConfigBuilder::from_file(path)?,
        None => ConfigBuilder::new(),
    };
    let mut builder = builder.env(env)?;
    if !args.inputs.is_empty() {
        builder
            .set("source.kind", "files", "INPUT")
            .set("source.inputs", path_list(&args.inputs), "INPUT")
            .unset("source.path")
            .unset_from_file("source.columns");
        for field in KAFKA_SOURCE_KEYS {
            builder.unset_from_file(field);
        }
    }
    if let Some(catalog) = &args.catalog {
        builder
            .set("source.kind", "catalog", "--catalog")
            .set("source.path", path_text(catalog), "--catalog")
            .unset("source.inputs");
        for field in KAFKA_SOURCE_KEYS {
            builder.unset_from_file(field);
        }
    }
    // Each --column names one field's column; the configuration's others stay.
    for (field, column) in &args.columns {
        builder.set_entry("source.columns", field, column.as_str(), "--column");
    }
    if !args.mosaics.is_empty() {
        builder.set("cutout.mosaics", path_list(&args.mosaics), "--mosaics");
    }
    if let Some(model) = &args.model {
        builder
            .set("inference.model", path_text(model), "--model")
            .unset("inference.model_name");
    }
    if let Some(out) = &args.out {
        builder.set("sink.path", path_text(out), "--out");
    }
    if let Some(format) = args.format {
        builder.set("sink.format", format.config_name(), "--format");
    }
    if let Some(max_batch) = args.max_batch {
        builder.set("batch.max_batch", max_batch, "--max-batch");
    }
    if args.resume {
        builder.set("sink.resume", true, "--resume");
    }
    if let Some(shard) = &args.shard {
        builder.set("source.shard", shard.as_str(), "--shard");
    }
    let config = builder.build()?;
    if matches!(&config.source, config::SourceConfig::Files { inputs, .. } if inputs.is_empty()) {
        return Err(ConfigError::Usage(
            "nothing to classify: give FITS files or folders, --catalog FILE, \
             or a --config whose [source] names some"
                .into(),
        ));
    }
    let jsonl = matches!(
        &config.sink,
        config::SinkConfig::File {
            format: config::OutputFormat::Jsonl,
            ..
        }
    );
    if args.truth.is_some() && !jsonl {
        return Err(ConfigError::Usage(
            "--truth reads the results back, which it does from JSON Lines only: \
             drop --format or give --format jsonl"
                .into(),
        ));
    }
    if let Some(truth) = &args.truth {
        if matches!(&config.sink, config::SinkConfig::File { path: None, .. }) {
            return Err(ConfigError::Usage(
                "--truth reads the results back from --out, which must be a file, \
                 not standard output"
                    .into(),
            ));
        }
        crate::report::read_truth(truth)
            .map_err(|e| ConfigError::Usage(format!("--truth: {e}")))?;
    }
    if args.report.is_some()
        && matches!(&config.sink, config::SinkConfig::File { resume: true, .. })
    {
        // The `--resume` flag is refused with --report by clap; this is the configuration's
        // or the environment's `sink.resume`.
        return Err(ConfigError::Usage(
            "--report cannot be used with sink.resume (set by the configuration or \
             RADIOGATE__SINK__RESUME): the report would miss the sources of the earlier run"
                .into(),
        ));
    }
    check_outputs(&config, args)?;
    Ok(config)
}

/// A file the run reads or writes, and what it is to the run (for messages).
struct Role<'a> {
    path: &'a Path,
    what: String,
}

/// Refuses a run that would write over what it reads, or write two outputs to one file:
/// an output (`--out`, its protobuf `<out>.rejections`, `--report`) that is the catalogue,
/// an input file or a FITS-named file below an input folder, or the `--truth` table, or
/// that is another output. Files that exist are compared by identity (device and inode, so that
/// links and other spellings of a path are seen through); outputs that do not exist yet can
/// only be each other, and are compared by their canonical folder and name.
fn check_outputs(config: &Config, args: &ClassifyArgs) -> Result<(), ConfigError> {
    let mut outputs = Vec::new();
    if let config::SinkConfig::File {
        path: Some(path),
        format,
        ..
    } = &config.sink
    {
        outputs.push((
            path.clone(),
            format!("the output {} (--out)", path.display()),
        ));
        if *format == config::OutputFormat::Protobuf {
            let rejections = crate::sink::rejections_path(path);
            let what = format!("the rejections file {}", rejections.display());
            outputs.push((rejections, what));
        }
    }
    if let Some(report) = &args.report {
        outputs.push((
            report.clone(),
            format!("the report {} (--report)", report.display()),
        ));
    }
    if outputs.is_empty() {
        return Ok(());
    }
    let keys: Vec<FileKey> = outputs.iter().map(|(path, _)| FileKey::of(path)).collect();
    for (at, key) in keys.iter().enumerate() {
        if let Some(other) = keys[..at].iter().position(|k| k == key) {
            return Err(ConfigError::Usage(format!(
                "{} and {} are the same file: give each output a file of its own",
                outputs[other].1, outputs[at].1
            )));
        }
    }
    // An output that does not exist yet is none of the files the run reads.
    if !keys.iter().any(FileKey::exists) {
        return Ok(());
    }
    let mut inputs: Vec<Role<'_>> = Vec::new();
    let mut folders: &[PathBuf] = &[];
    match &config.source {
        config::SourceConfig::Catalog { path, .. } => inputs.push(Role {
            path,
            what: format!("the catalogue {}", path.display()),
        }),
        config::SourceConfig::DetectionsFile { path } => inputs.push(Role {
            path,
            what: format!("the detections file {}", path.display()),
        }),
        config::SourceConfig::Files { inputs: given, .. } => {
            for path in given {
                inputs.push(Role {
                    path,
                    what: format!("the input {}", path.display()),
                });
            }
            folders = given;
        }
        config::SourceConfig::Kafka(_) => {}
    }
    if let Some(truth) = &args.truth {
        inputs.push(Role {
            path: truth,
            what: format!("the truth table {} (--truth)", truth.display()),
        });
    }
    for input in &inputs {
        let key = FileKey::of(input.path);
        if !key.exists() {
            continue;
        }
        if let Some(at) = keys.iter().position(|k| *k == key) {
            return Err(overwrites(&outputs[at].1, &input.what));
        }
    }
    // A FITS-named output below an input folder (followed through links) is one of the
    // files the source lists there; no need to list them.
    for (path, what) in &outputs {
        let named_fits = path
            .file_name()
            .is_some_and(|name| crate::source::is_fits_name(&name.to_string_lossy()));
        let Ok(output) = std::fs::canonicalize(path) else {
            continue; // not there yet: not listed either
        };
        let inside = folders.iter().filter(|f| f.is_dir()).any(|folder| {
            std::fs::canonicalize(folder).is_ok_and(|folder| output.starts_with(folder))
        });
        if named_fits && inside {
            let input = format!("the input {} (in an input folder)", output.display());
            return Err(overwrites(what, &input));
        }
    }
    Ok(())
}

fn overwrites(output: &str, input: &str) -> ConfigError {
    ConfigError::Usage(format!(
        "{output} is {input}: writing it would destroy what the run reads; \
         give the output another file"
    ))
}

/// What makes two paths the same file.
#[derive(Debug, PartialEq, Eq)]
enum FileKey {
    /// An existing file: its device and inode (its canonical path off Unix).
    #[cfg(unix)]
    Inode(u64, u64),
    #[cfg(not(unix))]
    Canonical(PathBuf),
    /// A file not there yet: its folder's canonical path and its name (else the path as
    /// given, made absolute).
    Planned(PathBuf),
}

impl FileKey {
    fn of(path: &Path) -> Self {
        if let Ok(meta) = std::fs::metadata(path) {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                return FileKey::Inode(meta.dev(), meta.ino());
            }
            #[cfg(not(unix))]
            {
                let _ = meta;
                if let Ok(canonical) = std::fs::canonicalize(path) {
                    return FileKey::Canonical(canonical);
                }
            }
        }
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let planned = match (absolute.parent(), absolute.file_name()) {
            (Some(parent), Some(name)) => std::fs::canonicalize(parent)
                .map(|folder| folder.join(name))
                .unwrap_or(absolute.clone()),
            _ => absolute.clone(),
        };
        FileKey::Planned(planned)
    }

    fn exists(&self) -> bool {
        !matches!(self, FileKey::Planned(_))
    }
}

/// The configuration of `explain`: the `--config` file (or defaults), the environment, then
/// `--model`.
pub fn explain_config(args: &ExplainArgs) -> Result<Config, ConfigError> {
    let builder = match &args.config {
        Some(path) => ConfigBuilder::from_file(path)?,
        None => ConfigBuilder::new(),
    };
    let mut builder = builder.env(std::env::vars())?;
    if let Some(model) = &args.model {
        builder
            .set("inference.model", path_text(model), "--model")
            .unset("inference.model_name");
    }
    builder.build()
}

/// The configuration of `run` and `check-config`: the file plus the process's overrides.
pub fn file_config(path: &Path) -> Result<Config, ConfigError> {
    config::load(Some(path), std::env::vars())
}

/// Paths go into the TOML document as strings; a non-UTF-8 path is carried lossily
/// (TOML has no other way to hold it).
fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn path_list(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| path_text(p)).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::CommandFactory;

    use super::*;
    use crate::config::{OutputFormat, SinkConfig, SourceConfig};

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn classify_args(args: &[&str]) -> ClassifyArgs {
        let mut full = vec!["radiogate", "classify"];
        full.extend_from_slice(args);
        match parse(&full).command {
            Command::Classify(a) => a,
            other => panic!("expected classify, got {other:?}"),
        }
    }

    fn no_env() -> std::iter::Empty<(String, String)> {
        std::iter::empty()
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn classify_flags_parse() {
        let cli = parse(&[
            "radiogate",
            "--log-format",
            "json",
            "classify",
            "--model",
            "m.onnx",
            "--out",
            "o.pb",
            "--format",
            "protobuf",
            "--mosaics",
            "/a",
            "--mosaics",
            "/b",
            "--max-batch",
            "8",
            "--quiet",
            "x.fits",
            "dir",
        ]);
        assert_eq!(cli.global.log_format, Some(LogFormat::Json));
        assert_eq!(cli.global.log_level, None);
        assert_eq!(cli.global.log_filter(true), "warn");
        assert_eq!(cli.global.log_filter(false), "info");
        let Command::Classify(args) = cli.command else {
            panic!("not classify")
        };
        assert_eq!(args.inputs, [PathBuf::from("x.fits"), PathBuf::from("dir")]);
        assert_eq!(args.mosaics, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(args.format, Some(FormatArg::Protobuf));
        assert_eq!(args.max_batch, Some(8));
        assert!(args.quiet);
    }

    #[test]
    fn other_subcommands_parse() {
        let cli = parse(&[
            "radiogate",
            "run",
            "--config",
            "c.toml",
            "--log-level",
            "debug",
        ]);
        assert_eq!(cli.global.log_level.as_deref(), Some("debug"));
        assert_eq!(cli.global.log_filter(true), "debug");
        assert!(
            matches!(cli.command, Command::Run(RunArgs { config }) if config == Path::new("c.toml"))
        );
        let cli = parse(&["radiogate", "check-config", "c.toml"]);
        assert!(
            matches!(cli.command, Command::CheckConfig(CheckConfigArgs { config }) if config == Path::new("c.toml"))
        );
        assert!(
            Cli::try_parse_from(["radiogate", "run"]).is_err(),
            "run needs --config"
        );
        assert!(Cli::try_parse_from(["radiogate", "classify", "--format", "xml"]).is_err());
    }

    #[test]
    fn inputs_and_catalog_are_exclusive() {
        let err = Cli::try_parse_from(["radiogate", "classify", "--catalog", "c.csv", "x.fits"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn flags_make_the_configuration() {
        let args = classify_args(&[
            "--model",
            "models/agcnn-mirabest.onnx",
            "--out",
            "out.pb",
            "--format",
            "protobuf",
            "--max-batch",
            "7",
            "a.fits",
        ]);
        let config = classify_config_with_env(&args, no_env()).unwrap();
        assert_eq!(
            config.source,
            SourceConfig::Files {
                inputs: vec!["a.fits".into()],
                survey: "FIRST".into()
            }
        );
        assert_eq!(
            config.inference.model,
            PathBuf::from("models/agcnn-mirabest.onnx")
        );
        assert_eq!(config.inference.model_name, "agcnn-mirabest");
        assert_eq!(
            config.sink,
            SinkConfig::File {
                path: Some("out.pb".into()),
                format: OutputFormat::Protobuf,
                resume: false,
            }
        );
        assert_eq!(config.batch.max_batch, 7);
    }

    #[test]
    fn flags_win_over_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[source]\nkind = \"catalog\"\npath = \"old.csv\"\nsurvey = \"VLASS\"\n\
             [inference]\nmodel = \"old.onnx\"\nmodel_name = \"old\"\n\
             [batch]\nmax_batch = 4\nmax_wait = \"7ms\"\n",
        )
        .unwrap();
        let config_arg = path.to_str().unwrap();
        let env = [("RADIOGATE__BATCH__MAX_BATCH".to_string(), "16".to_string())];

        let args = classify_args(&["--config", config_arg, "--model", "new.onnx", "x.fits"]);
        let config = classify_config_with_env(&args, env.clone().into_iter()).unwrap();
        assert_eq!(
            config.source,
            SourceConfig::Files {
                inputs: vec!["x.fits".into()],
                survey: "VLASS".into()
            }
        );
        assert_eq!(
            config.inference.model_name, "new",
            "a new model gets its own name"
        );
        assert_eq!(config.batch.max_batch, 16, "environment over file");
        assert_eq!(
            config.batch.max_wait,
            Duration::from_millis(7),
            "file over default"
        );

        let args = classify_args(&["--config", config_arg, "--max-batch", "2"]);
        let config = classify_config_with_env(&args, env.into_iter()).unwrap();
        assert_eq!(config.batch.max_batch, 2, "flag over environment");
        assert_eq!(
            config.source,
            SourceConfig::Catalog {
                path: "old.csv".into(),
                survey: "VLASS".into(),
                columns: Default::default(),
            },
            "no INPUT: the file's source"
        );
    }

    #[test]
    fn catalog_and_mosaics_flags() {
        let args = classify_args(&["--catalog", "c.csv", "--mosaics", "/m1", "--mosaics", "/m2"]);
        let config = classify_config_with_env(&args, no_env()).unwrap();
        assert_eq!(
            config.source,
            SourceConfig::Catalog {
                path: "c.csv".into(),
                survey: "FIRST".into(),
                columns: Default::default(),
            }
        );
        assert_eq!(
            config.cutout.mosaics,
            [PathBuf::from("/m1"), PathBuf::from("/m2")]
        );

        let args = classify_args(&[
            "--catalog",
            "c.fits",
            "--column",
            "source_id=Component_id",
            "--column",
            "tile=Tile",
        ]);
        let config = classify_config_with_env(&args, no_env()).unwrap();
        let SourceConfig::Catalog { columns, .. } = config.source else {
            panic!("{:?}", config.source)
        };
        let expected = [("source_id", "Component_id"), ("tile", "Tile")]
            .map(|(f, c)| (f.to_string(), c.to_string()));
        assert_eq!(columns, expected.into());
        for bad in ["flux=F", "ra", "ra="] {
            let parsed =
                Cli::try_parse_from(["radiogate", "classify", "--catalog", "c", "--column", bad]);
            assert!(parsed.is_err(), "{bad}");
        }
        let args = classify_args(&["--column", "ra=RA", "x.fits"]);
        let err = classify_config_with_env(&args, no_env()).unwrap_err();
        assert!(
            err.to_string()
                .contains("source.columns: only used when source.kind = \"catalog\""),
            "{err}"
        );
        let err = Cli::try_parse_from([
            "radiogate",
            "publish",
            "--brokers",
            "b",
            "--topic",
            "t",
            "--column",
            "ra=RA",
            "x.fits",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }

    /// A source named on the command line replaces the file's, keys of its kind included;
    /// `--column` adds to the file's columns.
    #[test]
    fn the_command_line_source_replaces_the_files_and_columns_merge() {
        let dir = tempfile::tempdir().unwrap();
        let kafka = dir.path().join("kafka.toml");
        std::fs::write(
            &kafka,
            "[source]\nkind = \"kafka\"\nbrokers = \"b:9092\"\ngroup_id = \"g\"\ntopic = \"t\"\n\
             properties = { \"fetch.wait.max.ms\" = \"10\" }\n",
        )
        .unwrap();
        let kafka = kafka.to_str().unwrap();
        for source in [&["--catalog", "c.csv"][..], &["x.fits"][..]] {
            let mut args = vec!["--config", kafka];
            args.extend_from_slice(source);
            let config = classify_config_with_env(&classify_args(&args), no_env())
                .unwrap_or_else(|e| panic!("{source:?}: {e}"));
            assert!(!matches!(config.source, SourceConfig::Kafka(_)));
        }
        // A variable's Kafka key was typed by the user: kept, and refused.
        let env = [("RADIOGATE__SOURCE__TOPIC".to_string(), "t".to_string())];
        let args = classify_args(&["--config", kafka, "--catalog", "c.csv"]);
        let err = classify_config_with_env(&args, env.into_iter()).unwrap_err();
        assert!(err.to_string().contains("source.topic"), "{err}");

        let catalog = dir.path().join("catalog.toml");
        std::fs::write(
            &catalog,
            "[source]\nkind = \"catalog\"\npath = \"c.csv\"\ncolumns = { source_id = \"Name\", ra = \"RA_x\" }\n",
        )
        .unwrap();
        let args = classify_args(&[
            "--config",
            catalog.to_str().unwrap(),
            "--column",
            "ra=RA_y",
            "--column",
            "dec=DEC_y",
        ]);
        let config = classify_config_with_env(&args, no_env()).unwrap();
        let SourceConfig::Catalog { columns, .. } = config.source else {
            panic!("{:?}", config.source)
        };
        let expected = [("dec", "DEC_y"), ("ra", "RA_y"), ("source_id", "Name")]
            .map(|(f, c)| (f.to_string(), c.to_string()));
        assert_eq!(columns, expected.into());
        // The file's columns do not follow a switch to files.
        let args = classify_args(&["--config", catalog.to_str().unwrap(), "x.fits"]);
        assert!(classify_config_with_env(&args, no_env()).is_ok());
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        let args = classify_args(&["--max-batch", "0", "a.fits"]);
        let err = classify_config_with_env(&args, no_env()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "batch.max_batch: must be between 1 and 4096, got 0 (set by --max-batch)"
        );
        let args = classify_args(&["--format", "protobuf", "a.fits"]);
        let err = classify_config_with_env(&args, no_env()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("sink.path: protobuf output needs a file"),
            "{err}"
        );
    }

    #[test]
    fn nothing_to_classify_is_refused() {
        let err = classify_config_with_env(&classify_args(&[]), no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::Usage(_)), "{err:?}");
    }

    #[test]
    fn truth_is_refused_with_results_it_cannot_read_back() {
        let args = classify_args(&[
            "--out", "r.ecsv", "--truth", "t.csv", "--format", "ecsv", "x.fits",
        ]);
        let err = classify_config_with_env(&args, no_env()).unwrap_err();
        assert!(err.to_string().contains("--truth"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let truth = dir.path().join("t.csv");
        std::fs::write(&truth, "source_id,class\na,FRI\n").unwrap();
        let truth = truth.to_str().unwrap();
        let args = classify_args(&["--out", "r.jsonl", "--truth", truth, "x.fits"]);
        assert!(classify_config_with_env(&args, no_env()).is_ok());
    }

    fn usage_error(args: &[&str], env: &[(&str, &str)]) -> String {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match classify_config_with_env(&classify_args(args), env.into_iter()) {
            Err(ConfigError::Usage(message)) => message,
            other => panic!("expected a usage error for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn an_output_that_is_an_input_or_another_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        std::fs::write(at("big.csv"), "source_id,ra,dec\na,1,2\n").unwrap();
        std::fs::create_dir(at("cutouts")).unwrap();
        std::fs::write(at("cutouts/x.fits"), b"").unwrap();
        std::fs::write(at("t.csv"), "source_id,class\na,FRI\n").unwrap();

        let message = usage_error(&["--catalog", &at("big.csv"), "--out", &at("big.csv")], &[]);
        assert!(
            message.contains(&format!("the output {} (--out)", at("big.csv")))
                && message.contains(&format!("the catalogue {}", at("big.csv"))),
            "{message}"
        );
        // Another spelling of the same file is the same file.
        let other_spelling = format!("{}/./../big.csv", at("cutouts"));
        let message = usage_error(
            &["--catalog", &at("big.csv"), "--out", &other_spelling],
            &[],
        );
        assert!(message.contains("the catalogue"), "{message}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(at("cutouts/x.fits"), at("link.fits")).unwrap();
            let message = usage_error(&["--out", &at("link.fits"), &at("cutouts")], &[]);
            assert!(message.contains("(in an input folder)"), "{message}");
        }
        let message = usage_error(
            &["--out", &at("cutouts/x.fits"), &at("cutouts/x.fits")],
            &[],
        );
        assert!(message.contains("the input"), "{message}");
        let message = usage_error(
            &[
                "--out",
                &at("t.csv"),
                "--truth",
                &at("t.csv"),
                &at("cutouts"),
            ],
            &[],
        );
        assert!(message.contains("the truth table"), "{message}");
        // Two outputs, neither there yet.
        let message = usage_error(
            &[
                "--out",
                &at("r.html"),
                "--report",
                &at("r.html"),
                &at("cutouts"),
            ],
            &[],
        );
        assert!(
            message.contains("(--out) and the report") && message.contains("same file"),
            "{message}"
        );
        let message = usage_error(
            &[
                "--format",
                "protobuf",
                "--out",
                &at("r.pb"),
                "--report",
                &at("r.pb.rejections"),
                &at("cutouts"),
            ],
            &[],
        );
        assert!(message.contains("the rejections file"), "{message}");
        // Distinct files are fine, existing or not.
        let args = classify_args(&["--catalog", &at("big.csv"), "--out", &at("t.csv")]);
        assert!(classify_config_with_env(&args, no_env()).is_ok());
    }

    #[test]
    fn resume_with_a_report_and_truth_without_a_file_are_refused_at_start() {
        let message = usage_error(
            &["--out", "r.jsonl", "--report", "r.html", "x.fits"],
            &[("RADIOGATE__SINK__RESUME", "true")],
        );
        assert!(message.contains("sink.resume"), "{message}");
        let message = usage_error(&["--out", "-", "--truth", "t.csv", "x.fits"], &[]);
        assert!(message.contains("not standard output"), "{message}");
        let message = usage_error(
            &["--out", "r.jsonl", "--truth", "no/such/truth.csv", "x.fits"],
            &[],
        );
        assert!(
            message.starts_with("--truth: truth table no/such/truth.csv"),
            "{message}"
        );
    }

    #[test]
    fn log_format_flag_wins_over_the_configuration() {
        let mut config = Config::default();
        config.telemetry.json_logs = true;
        let cli = parse(&[
            "radiogate",
            "check-config",
            "c.toml",
            "--log-format",
            "text",
        ]);
        cli.global.apply(&mut config);
        assert!(!config.telemetry.json_logs);
        let cli = parse(&["radiogate", "check-config", "c.toml"]);
        config.telemetry.json_logs = true;
        cli.global.apply(&mut config);
        assert!(
            config.telemetry.json_logs,
            "no flag: the configuration's choice"
        );
    }
}
