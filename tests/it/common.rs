//! Helpers shared by the integration tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use radiogate::config::{Config, OutputFormat, SinkConfig, SourceConfig};
use radiogate::pipeline::{self, RunOptions, RunSummary};
use radiogate::sink::kafka::{self, TopicSpec};
use radiogate::sink::record::Record;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The data folder of `../shared` (CI lays it beside the repository too).
pub fn shared_data() -> PathBuf {
    repo().join("../shared/data")
}

/// The MiraBest `test_batch` images (150x150 uint8, row-major) by file stem. The batch is a
/// pickle of numpy arrays, so `scripts/mirabest_golden.py` dumps it to plain files first.
pub fn mirabest_test_batch() -> HashMap<String, Vec<u8>> {
    const PIXELS: usize = radiogate::domain::MODEL_SIZE * radiogate::domain::MODEL_SIZE;
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Command::new("python3")
        .arg(repo().join("scripts/mirabest_golden.py"))
        .arg(dir.path())
        .arg("--batch")
        .arg(shared_data().join("mirabest/test_batch"))
        .status()
        .expect("python3 with numpy reads the MiraBest pickle");
    assert!(
        status.success(),
        "scripts/mirabest_golden.py failed: {status}"
    );
    let index = std::fs::read_to_string(dir.path().join("index.tsv")).expect("index.tsv");
    let images = std::fs::read(dir.path().join("images.u8")).expect("images.u8");
    let stems: Vec<&str> = index.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(images.len(), stems.len() * PIXELS, "images.u8 size");
    stems
        .iter()
        .zip(images.chunks_exact(PIXELS))
        .map(|(s, image)| (s.to_string(), image.to_vec()))
        .collect()
}

/// Runs python3 with `args` in `dir` (python3 with the packages of
/// python/requirements.txt), requires it to succeed, and returns what it printed.
pub fn python3(args: &[&std::ffi::OsStr], dir: &Path) -> Vec<u8> {
    let output = Command::new("python3")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python3 {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The model the tests classify with: the shipped default.
pub fn model() -> PathBuf {
    repo().join("models/agcnn-mirabest-confident.onnx")
}

pub fn sample_dir() -> PathBuf {
    repo().join("samples/first")
}

/// A configuration that classifies `inputs` into `out` (JSON Lines) with the test model.
pub fn files_config(inputs: Vec<PathBuf>, out: &Path) -> Config {
    let mut config = Config {
        source: SourceConfig::Files {
            inputs,
            survey: "FIRST".into(),
        },
        sink: SinkConfig::File {
            path: Some(out.to_path_buf()),
            format: OutputFormat::Jsonl,
            resume: false,
        },
        ..Config::default()
    };
    config.inference.model = model();
    config.inference.model_name = "test-model".into();
    config
}

/// Runs the pipeline to the end of its input.
pub fn run(config: Config) -> RunSummary {
    run_with(config, RunOptions::default())
}

/// Runs the pipeline to the end of its input with `options`.
pub fn run_with(config: Config, options: RunOptions) -> RunSummary {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime
        .block_on(pipeline::run(config, options, std::future::pending()))
        .expect("the run succeeds")
}

pub fn read(out: &Path) -> Vec<Record> {
    radiogate::sink::read_jsonl(out).expect("the output reads back")
}

/// A minimal FITS file: a primary header with `cards` (keyword, value as written) and
/// big-endian float32 pixels, each part padded to 2880-byte blocks.
pub fn fits_f32(cards: &[(&str, &str)], pixels: &[f32]) -> Vec<u8> {
    let mut header = String::new();
    for (key, value) in cards {
        header.push_str(&format!("{key:<8}= {value:>20}{:50}", ""));
    }
    header.push_str(&format!("{:<80}", "END"));
    let mut bytes = header.into_bytes();
    bytes.resize(bytes.len().div_ceil(2880) * 2880, b' ');
    for p in pixels {
        bytes.extend_from_slice(&p.to_be_bytes());
    }
    bytes.resize(bytes.len().div_ceil(2880) * 2880, 0);
    bytes
}

/// Header cards of a `n` x `n` float32 image with a FIRST-like TAN WCS centred on (ra, dec).
pub fn tan_cards(n: usize, ra: f64, dec: f64) -> Vec<(&'static str, String)> {
    let crpix = format!("{:.1}", n as f64 / 2.0 + 0.5);
    vec![
        ("SIMPLE", "T".into()),
        ("BITPIX", "-32".into()),
        ("NAXIS", "2".into()),
        ("NAXIS1", n.to_string()),
        ("NAXIS2", n.to_string()),
        ("CTYPE1", "'RA---TAN'".into()),
        ("CTYPE2", "'DEC--TAN'".into()),
        ("CRVAL1", format!("{ra:.6}")),
        ("CRVAL2", format!("{dec:.6}")),
        ("CRPIX1", crpix.clone()),
        ("CRPIX2", crpix),
        ("CDELT1", "-0.0005".into()),
        ("CDELT2", "0.0005".into()),
    ]
}

pub fn cards_ref<'a>(cards: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    cards.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The test broker (`scripts/kafka/broker.sh start`): `RADIOGATE_TEST_KAFKA`, default
/// 127.0.0.1:9092.
pub fn brokers() -> String {
    std::env::var("RADIOGATE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test (or earlier run) uses: topics and groups of one test.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Creates topics with `partitions` partitions each on the test broker.
pub fn create_topics(names: &[&str], partitions: i32) {
    let specs: Vec<TopicSpec> = names
        .iter()
        .map(|name| TopicSpec {
            name: name.to_string(),
            partitions,
            broker_timestamps: false,
        })
        .collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(kafka::create_topics(&brokers(), &specs))
        .expect("topics created (is the broker running? scripts/kafka/broker.sh start)");
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One HTTP GET; None when nothing answers yet.
pub fn get(addr: SocketAddr, path_and_query: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8(response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
