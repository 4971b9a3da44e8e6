//! The telemetry endpoint against the real tools: a `radiogate run` worker (Kafka in and out,
//! `[telemetry] listen` on a free port) is scraped every second by a real Prometheus server
//! (Debian's `prometheus`, which `scripts/setup.sh` installs), and PromQL through its HTTP API
//! sees the classifications the worker produced. Also: `/healthz`, `/readyz`, every metric name
//! of the contract in the scrape, and JSON logs without secrets for `run` and `classify`.
//!
//! `RADIOGATE_SCRAPE_OUT=path`: the raw text of the worker's last scrape is written there
//! (to check dashboard queries against).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use radiogate::config::{DEFAULT_SURVEY, SourceConfig};
use radiogate::publish::{PublishPlan, publish};
use radiogate::telemetry::METRIC_NAMES;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::{self, brokers, create_topics, free_port, get, unique};

/// A value of a Kafka property whose key looks secret: it must never reach the logs.
const SECRET: &str = "obs-test-secret-7f3a";

/// One message that is not a `SourceDetection`: a dead letter with reason "undecodable".
fn send_poison(topic: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    producer
        .send(
            BaseRecord::to(topic)
                .key("poison")
                .payload(&b"\xff\xffnot protobuf"[..]),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    producer
        .flush(Duration::from_secs(30))
        .expect("the poison message is delivered");
}

/// Polls `check` every 200 ms until it returns Some, or panics after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A child process killed when dropped (a failed assertion does not leave it running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Prometheus server of its own (storage in `dir`, its own port) scraping `target` every
/// second.
struct Prometheus {
    addr: SocketAddr,
    _process: Running,
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: radiogate\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("an address");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let process = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus on the PATH (scripts/setup.sh installs Debian's package)");
        let prometheus = Self {
            addr,
            _process: Running(process),
        };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            get(addr, "/-/ready").filter(|(status, _)| *status == 200)
        });
        prometheus
    }

    /// The value of an instant query whose result is one sample (None: no sample).
    fn query(&self, promql: &str) -> Option<f64> {
        let (status, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        )?;
        assert_eq!(status, 200, "{promql}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON from the API");
        assert_eq!(json["status"], "success", "{promql}: {body}");
        let result = json["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql}: one series expected: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// Every contract name has its `# TYPE` line in a scrape.
fn missing_names(scrape: &str) -> Vec<&'static str> {
    METRIC_NAMES
        .into_iter()
        .filter(|name| !scrape.contains(&format!("# TYPE {name} ")))
        .collect()
}

/// Checks the log lines of a run with JSON logs: at least one, each a JSON object with a level
/// and a message, except the end-of-run summary line; and `SECRET` nowhere.
fn assert_json_logs(stderr: &str) -> usize {
    assert!(
        !stderr.contains(SECRET),
        "a secret reached the logs:\n{stderr}"
    );
    let mut logged = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("radiogate: ") {
            continue; // the summary printed at the end, not a log record
        }
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(record["level"].is_string(), "{line}");
        assert!(record["fields"]["message"].is_string(), "{line}");
        logged += 1;
    }
    assert!(logged > 0, "no log lines in\n{stderr}");
    logged
}

#[test]
fn prometheus_scrapes_a_running_worker_and_sees_its_classifications() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = unique("obs-prom-in");
    let (results, dead, group) = (
        unique("obs-prom-results"),
        unique("obs-prom-dead"),
        unique("obs-prom-group"),
    );
    create_topics(&[&input, &results, &dead], 2);

    let listen: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"{b}\"\ngroup_id = \"{group}\"\ntopic = \"{input}\"\n\
             properties = {{ \"statistics.interval.ms\" = \"1000\", \"sasl.password\" = \"{SECRET}\" }}\n\
             [sink]\nkind = \"kafka\"\nbrokers = \"{b}\"\nresults_topic = \"{results}\"\ndead_letter_topic = \"{dead}\"\n\
             [cutout]\nmosaics = [\"{m}\"]\n[inference]\nmodel = \"{model}\"\n\
             [telemetry]\nlisten = \"{listen}\"\njson_logs = true\n",
            b = brokers(),
            m = common::sample_dir().display(),
            model = common::model().display(),
        ),
    )
    .expect("write worker.toml");
    let stderr_path = dir.path().join("worker.stderr");
    let worker = Command::new(env!("CARGO_BIN_EXE_radiogate"))
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(common::repo())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("radiogate runs");
    let mut worker = Running(worker);

    wait_for("/healthz", Duration::from_secs(60), || {
        get(listen, "/healthz").filter(|(status, _)| *status == 200)
    });
    wait_for(
        "/readyz: model loaded and the consumer in its group",
        Duration::from_secs(120),
        || get(listen, "/readyz").filter(|(status, _)| *status == 200),
    );

    // Prometheus sees the counters at zero before anything is published, so rate() has an
    // increase to measure.
    let prometheus = Prometheus::start(dir.path(), listen);
    wait_for("the first scrape", Duration::from_secs(60), || {
        prometheus
            .query("sum(radiogate_classifications_total)")
            .filter(|v| *v == 0.0)
    });
    assert_eq!(prometheus.query("up{job=\"radiogate\"}"), Some(1.0));
    assert_eq!(prometheus.query("radiogate_ready"), Some(1.0));

    let sent = publish(&PublishPlan {
        brokers: brokers(),
        topic: input.clone(),
        source: SourceConfig::Files {
            inputs: vec![common::sample_dir()],
            survey: DEFAULT_SURVEY.into(),
        },
        inline: true,
        rate: None,
    })
    .expect("the detections are published");
    let n = sent.sent as f64;
    assert_eq!(sent.sent, 20, "the 20 bundled FIRST cutouts");
    send_poison(&input);

    wait_for(
        "sum(radiogate_classifications_total) == N",
        Duration::from_secs(300),
        || {
            prometheus
                .query("sum(radiogate_classifications_total)")
                .filter(|v| *v == n)
        },
    );
    let rate = prometheus
        .query("sum(rate(radiogate_classifications_total[1m]))")
        .expect("a rate");
    assert!(rate > 0.0, "classification rate {rate}");
    wait_for(
        "the poison message's rejection",
        Duration::from_secs(60),
        || {
            prometheus
                .query("radiogate_rejections_total{reason=\"undecodable\"}")
                .filter(|v| *v == 1.0)
        },
    );
    assert_eq!(
        prometheus.query("sum(radiogate_rejections_total)"),
        Some(1.0)
    );
    assert_eq!(
        prometheus.query("sum(radiogate_detections_consumed_total)"),
        Some(n + 1.0)
    );
    assert_eq!(prometheus.query("radiogate_in_flight_items"), Some(0.0));
    assert_eq!(
        prometheus.query("sum(radiogate_stage_duration_seconds_count{stage=\"inference\"})"),
        Some(n)
    );

    // Every name of the contract, the consumer lag included (it comes with the client's
    // statistics once the offsets are committed).
    let scrape = wait_for(
        "every contract metric in the scrape",
        Duration::from_secs(60),
        || {
            get(listen, "/metrics")
                .map(|(_, body)| body)
                .filter(|body| missing_names(body).is_empty())
        },
    );
    assert!(scrape.contains("radiogate_model_info{execution_provider=\""));
    wait_for(
        "the lag of the drained topic",
        Duration::from_secs(60),
        || {
            prometheus
                .query("sum(radiogate_consumer_lag_messages)")
                .filter(|lag| *lag == 0.0)
        },
    );
    if let Some(path) = std::env::var_os("RADIOGATE_SCRAPE_OUT") {
        let (_, scrape) = get(listen, "/metrics").expect("a last scrape");
        std::fs::write(PathBuf::from(path), scrape).expect("write RADIOGATE_SCRAPE_OUT");
    }

    // SIGTERM: graceful exit; the endpoint goes with the process.
    let status = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = worker.0.wait().expect("reaped");
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    assert!(get(listen, "/healthz").is_none(), "the endpoint stopped");

    let stderr = std::fs::read_to_string(&stderr_path).expect("worker stderr");
    assert_json_logs(&stderr);
    assert!(stderr.contains("readiness changed"), "{stderr}");
}

#[test]
fn classify_serves_metrics_and_logs_json_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    // `classify` with JSON logs at info (not the warnings of --quiet alone), serving on
    // `listen` when given.
    let classify = |out: &std::path::Path, listen: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_radiogate"));
        command
            .args(["--log-format", "json", "--log-level", "info", "classify"])
            .args(["--quiet", "--model"])
            .arg(common::model())
            .arg("--out")
            .arg(out)
            .arg(common::sample_dir())
            .current_dir(common::repo())
            .stdin(Stdio::null());
        match listen {
            Some(listen) => command.env("RADIOGATE__TELEMETRY__LISTEN", listen),
            None => command.env_remove("RADIOGATE__TELEMETRY__LISTEN"),
        };
        let output = command.output().expect("radiogate classify runs");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        stderr
    };
    let out = dir.path().join("out.jsonl");
    let listen = format!("127.0.0.1:{}", free_port());
    let stderr = classify(&out, Some(&listen));
    assert_json_logs(&stderr);
    assert!(
        stderr.contains("telemetry endpoint") && stderr.contains(&listen),
        "the endpoint was served: {stderr}"
    );
    assert_eq!(common::read(&out).len(), 20);

    // Without `listen` nothing is served and nothing is required.
    let stderr = classify(&dir.path().join("out2.jsonl"), None);
    assert!(!stderr.contains("telemetry endpoint"), "{stderr}");
}
