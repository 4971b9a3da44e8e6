//! The `radiogate` command: parse the command line, load the configuration, start logging
//! and the telemetry endpoint, run the pipeline, and map the outcome to an exit code:
//! 0 done (for `run`, also a graceful stop by SIGTERM or SIGINT, its normal way to end);
//! 1 failed while running; 2 refused at start (bad configuration, usage, missing input, an
//! output that cannot be created or resumed, or a telemetry address that cannot be bound);
//! 75 (`EX_TEMPFAIL`) a `classify` stopped by SIGTERM or SIGINT before its input ended: what
//! was taken in is written, the rest is not, so run it again with `--resume`; 130 a second
//! signal, which exits at once.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use radiogate::cli::{Cli, Command};
use radiogate::config::Config;
use radiogate::pipeline::{self, PipelineError, RunOptions, RunSummary};
use radiogate::sink::SinkError;
use radiogate::telemetry::Metrics;
use radiogate::telemetry::server::{BindError, Server};
use radiogate::{cli, config, report};
use tracing_subscriber::EnvFilter;

/// The exit status of a `classify` that a signal stopped before its input ended
/// (`EX_TEMPFAIL`, sysexits.h: "try again later"): a batch system must not mark it done.
const EXIT_STOPPED_EARLY: u8 = 75;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Publish(args) = &cli.command {
        return publish(&cli, args);
    }
    if let Command::Explain(args) = &cli.command {
        return explain(&cli, args);
    }
    let truth = match &cli.command {
        Command::Classify(args) => args.truth.clone().zip(args.out.clone()),
        _ => None,
    };
    let (config, progress) = match load(&cli) {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("radiogate: {}", radiogate::error_chain(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    init_logging(&cli, &config);
    let json_logs = config.telemetry.json_logs;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("radiogate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let report = match &cli.command {
        Command::Classify(args) => args.report.clone(),
        _ => None,
    };
    let options = RunOptions {
        progress,
        metrics: Some(metrics.clone()),
        report,
    };
    let listen = config.telemetry.listen;
    let outcome = runtime.block_on(async {
        // Serves /healthz while the model loads, /readyz says when it is ready.
        let endpoint = match listen {
            Some(addr) => Some(Server::start(addr, metrics).await?),
            None => None,
        };
        let outcome = pipeline::run(config, options, shutdown_signal()).await;
        if let Some(endpoint) = endpoint {
            endpoint.stop().await;
        }
        Ok::<_, BindError>(outcome)
    });
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            fail(json_logs, &radiogate::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let classify = matches!(cli.command, Command::Classify(_));
    match outcome {
        Ok(summary) if classify && summary.stopped_early => {
            print_summary(&summary);
            eprintln!(
                "radiogate: stopped before the input ended: the output holds what was taken \
                 in; run the same command again with --resume to classify the rest"
            );
            ExitCode::from(EXIT_STOPPED_EARLY)
        }
        Ok(summary) => {
            print_summary(&summary);
            if let Some((truth, results)) = truth {
                match report::truth_table(&results, &truth) {
                    Ok(table) => print!("{table}"),
                    Err(e) => {
                        fail(json_logs, &radiogate::error_chain(&e));
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            fail(json_logs, &radiogate::error_chain(&e));
            match e {
                PipelineError::Source(_)
                | PipelineError::Mosaics(_)
                | PipelineError::Model(_)
                | PipelineError::Resume(_)
                // Both only arise while the output is opened, before anything runs.
                | PipelineError::Sink(SinkError::Resume { .. } | SinkError::Create { .. }) => {
                    ExitCode::from(2)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// The resolved configuration of the command, and whether to show progress; None when the
/// command is done once the configuration is checked.
fn load(cli: &Cli) -> anyhow::Result<Option<(Config, bool)>> {
    let (mut config, quiet) = match &cli.command {
        Command::Classify(args) => (cli::classify_config(args)?, args.quiet),
        Command::Run(args) => (cli::file_config(&args.config)?, true),
        Command::CheckConfig(args) => {
            let config = config::load(Some(&args.config), std::env::vars()).with_context(|| {
                format!("{} is not a valid configuration", args.config.display())
            })?;
            // Secret-looking property values are redacted by `Debug`.
            println!("{}: ok\n{config:#?}", args.config.display());
            return Ok(None);
        }
        Command::Publish(_) | Command::Explain(_) => return Ok(None),
    };
    cli.global.apply(&mut config);
    Ok(Some((config, !quiet && std::io::stderr().is_terminal())))
}

/// `radiogate publish`: 0 when every detection was delivered, 1 when sending failed, 2
/// when the inputs cannot be read.
fn publish(cli: &Cli, args: &cli::PublishArgs) -> ExitCode {
    init_logging(cli, &Config::default());
    let source = match &args.catalog {
        Some(path) => config::SourceConfig::Catalog {
            path: path.clone(),
            survey: config::DEFAULT_SURVEY.into(),
            columns: args.columns.iter().cloned().collect(),
        },
        None => config::SourceConfig::Files {
            inputs: args.inputs.clone(),
            survey: config::DEFAULT_SURVEY.into(),
        },
    };
    let plan = radiogate::publish::PublishPlan {
        brokers: args.brokers.clone(),
        topic: args.topic.clone(),
        source,
        inline: args.inline,
        rate: args.rate,
    };
    match radiogate::publish::publish(&plan) {
        Ok(summary) => {
            eprintln!(
                "radiogate: {} detections sent to {}, {} inputs skipped",
                summary.sent, args.topic, summary.skipped
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("radiogate: {e}");
            match e {
                PipelineError::Source(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `radiogate explain`: 0 when the picture is written, 1 when it cannot be made, 2 when the
/// configuration is refused.
fn explain(cli: &Cli, args: &cli::ExplainArgs) -> ExitCode {
    let config = match cli::explain_config(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("radiogate: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli, &config);
    let target = match (&args.results, &args.source_id) {
        (Some(results), Some(source_id)) => radiogate::explain::Target::Result {
            results: results.clone(),
            source_id: source_id.clone(),
            fits: args.fits.clone(),
        },
        // clap requires a FITS file without --results, and --source-id with it.
        _ => match &args.fits {
            Some(fits) => radiogate::explain::Target::Fits(fits.clone()),
            None => {
                eprintln!("radiogate: give a FITS file, or --results and --source-id");
                return ExitCode::from(2);
            }
        },
    };
    let options = radiogate::explain::FigureOptions {
        size: args.size,
        gates: args.gates,
    };
    match radiogate::explain::explain(&target, &config, options, &args.out) {
        Ok(done) => {
            eprintln!(
                "radiogate: {} ({} {:.3}) drawn to {} ({}x{})",
                done.source_id,
                radiogate::domain::label_name(done.label),
                done.confidence,
                args.out.display(),
                done.width,
                done.height
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("radiogate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli, config: &Config) {
    let quiet = matches!(&cli.command, Command::Classify(args) if args.quiet);
    let filter = EnvFilter::try_from_env("RADIOGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(cli.global.log_filter(quiet)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.telemetry.json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Says why a started run failed, once: as an error record where logs are JSON (a plain line
/// would break the stream their collector parses), else as a plain line (the text log's
/// ERROR record would only repeat it).
fn fail(json_logs: bool, why: &str) {
    if json_logs {
        tracing::error!(error = %why, "run failed");
    } else {
        eprintln!("radiogate: {why}");
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    first_signal().await;
    tokio::spawn(async {
        first_signal().await;
        eprintln!("radiogate: second signal, exiting now");
        std::process::exit(130);
    });
}

async fn first_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_summary(summary: &RunSummary) {
    let labels: Vec<String> = summary
        .by_label
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let reasons: Vec<String> = summary
        .by_reason
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    eprintln!(
        "radiogate: {}{} classified ({}), {} rejected{} in {:.2} s, {:.1} sources/s{}; model {} ({}){}",
        if summary.resumed > 0 {
            format!(
                "resumed after the {} results already written; ",
                summary.resumed
            )
        } else {
            String::new()
        },
        summary.classified,
        if labels.is_empty() {
            "none".to_string()
        } else {
            labels.join(", ")
        },
        summary.rejected,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        },
        summary.elapsed.as_secs_f64(),
        summary.throughput(),
        summary.mean_batch().map_or(String::new(), |mean| format!(
            "; {} batches of {mean:.1} on average",
            summary.batches
        )),
        summary.model.name,
        summary.model.execution_provider,
        if summary.interrupted {
            "; interrupted, in-flight work drained"
        } else {
            ""
        },
    );
    if summary.compact > 0 {
        eprintln!(
            "radiogate: {} of the {} classified span less than {} arcsec: more compact than the \
             model's training images, their labels say little (the model card's \
             \"Emission extent\")",
            summary.compact,
            summary.classified,
            radiogate::domain::COMPACT_ARCSEC
        );
    }
    if summary.truncated > 0 {
        eprintln!(
            "radiogate: {} of the {} classified reach the edge of the model's {m} x {m} image: \
             the model saw only part of them (emission.truncated)",
            summary.truncated,
            summary.classified,
            m = radiogate::domain::MODEL_SIZE
        );
    }
}
