use std::collections::BTreeSet;

use super::*;

/// The series of `name` in the text format: `(labels, value)` per line.
fn series(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match key.split_once('{') {
                Some((metric, labels)) => (metric, labels.trim_end_matches('}')),
                None => (key, ""),
            };
            (metric == name).then(|| (labels.to_string(), value.parse().unwrap()))
        })
        .collect()
}

/// The values a label takes among the series of `name`.
fn label_values(text: &str, name: &str, label: &str) -> BTreeSet<String> {
    let prefix = format!("{label}=\"");
    series(text, name)
        .into_iter()
        .filter_map(|(labels, _)| {
            labels.split(',').find_map(|pair| {
                pair.strip_prefix(&prefix)
                    .map(|v| v.trim_end_matches('"').to_string())
            })
        })
        .collect()
}

fn value(text: &str, name: &str, labels: &str) -> f64 {
    series(text, name)
        .into_iter()
        .find(|(l, _)| l == labels)
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
        .1
}

fn classification(label: Label, detected_ago: Option<Duration>) -> proto::Classification {
    proto::Classification {
        label: label as i32,
        detected_at: detected_ago.map(|ago| (SystemTime::now() - ago).into()),
        timings: Some(proto::StageTimings {
            cutout_us: 2_000,
            preprocess_us: 3_000,
            queue_us: 4_000,
            inference_us: 50_000,
            total_us: 60_000,
        }),
        ..Default::default()
    }
}

fn model() -> proto::ModelInfo {
    proto::ModelInfo {
        name: "agcnn".into(),
        sha256: "0f".repeat(32),
        execution_provider: "CPUExecutionProvider".into(),
        views: 1,
    }
}

#[test]
fn every_contract_name_renders_with_its_type() {
    let m = Metrics::new();
    m.model_loaded(&model());
    m.consumer_stats(&ConsumerStats {
        member: true,
        lags: vec![("detections".into(), 0, 5)],
    });
    let text = m.render().unwrap();
    let types = [
        ("radiogate_detections_consumed_total", "counter"),
        ("radiogate_classifications_total", "counter"),
        ("radiogate_resampled_total", "counter"),
        ("radiogate_rejections_total", "counter"),
        ("radiogate_stage_duration_seconds", "histogram"),
        ("radiogate_end_to_end_latency_seconds", "histogram"),
        ("radiogate_batch_size_items", "histogram"),
        ("radiogate_largest_angular_size_arcsec", "histogram"),
        ("radiogate_truncated_sources_total", "counter"),
        ("radiogate_in_flight_items", "gauge"),
        ("radiogate_consumer_lag_messages", "gauge"),
        ("radiogate_ready", "gauge"),
        ("radiogate_model_info", "gauge"),
        ("radiogate_build_info", "gauge"),
    ];
    assert_eq!(
        types.map(|(name, _)| name),
        METRIC_NAMES,
        "the list matches the contract"
    );
    for (name, kind) in types {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} ({kind}) missing from\n{text}"
        );
    }
    for name in METRIC_NAMES {
        let unit_ok = [
            "_total",
            "_seconds",
            "_items",
            "_messages",
            "_arcsec",
            "_info",
            "_ready",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix));
        assert!(name.starts_with("radiogate_") && unit_ok, "{name}");
    }
    assert_eq!(
        value(
            &text,
            "radiogate_build_info",
            &format!(
                "git_commit=\"{}\",version=\"{}\"",
                env!("RADIOGATE_GIT_COMMIT"),
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
}

#[test]
fn label_values_are_the_closed_sets_from_the_start() {
    let m = Metrics::new();
    let text = m.render().unwrap();
    assert_eq!(
        label_values(&text, "radiogate_classifications_total", "label"),
        BTreeSet::from(["FRI".to_string(), "FRII".to_string()])
    );
    let reasons: BTreeSet<String> = [
        "undecodable",
        "invalid_detection",
        "not_covered",
        "bad_fits",
        "bad_wcs",
        "empty_cutout",
        "inference_failed",
        "internal_error",
        "pixel_scale",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        label_values(&text, "radiogate_rejections_total", "reason"),
        reasons,
        "the names results carry (domain::reason_name)"
    );
    assert_eq!(
        label_values(&text, "radiogate_stage_duration_seconds_count", "stage"),
        Stage::ALL.map(|s| s.name().to_string()).into()
    );
    // Counting moves the values, never the label sets.
    for _ in 0..3 {
        m.consumed();
        m.rejected(RejectReason::BadFits);
    }
    let text = m.render().unwrap();
    assert_eq!(
        label_values(&text, "radiogate_rejections_total", "reason"),
        reasons
    );
    assert_eq!(
        value(&text, "radiogate_rejections_total", "reason=\"bad_fits\""),
        3.0
    );
    assert_eq!(value(&text, "radiogate_detections_consumed_total", ""), 3.0);
    assert_eq!(value(&text, "radiogate_in_flight_items", ""), 0.0);
}

#[test]
fn a_resampled_window_is_counted() {
    let m = Metrics::new();
    m.consumed();
    let mut c = classification(Label::Fri, None);
    c.cutout = Some(proto::CutoutProvenance {
        resampled: true,
        ..Default::default()
    });
    m.classified(&c, Duration::from_millis(1), Instant::now());
    let text = m.render().unwrap();
    assert_eq!(value(&text, "radiogate_resampled_total", ""), 1.0);
}

#[test]
fn the_emissions_extent_is_observed() {
    let m = Metrics::new();
    for (las, truncated) in [(12.0, false), (90.0, true)] {
        m.consumed();
        let mut c = classification(Label::Frii, None);
        c.emission = Some(proto::Emission {
            islands: 1,
            pixels: 40,
            largest_angular_size_arcsec: las,
            truncated,
        });
        m.classified(&c, Duration::from_millis(1), Instant::now());
    }
    // Without an extent (results of an older worker), nothing is observed.
    m.consumed();
    m.classified(
        &classification(Label::Fri, None),
        Duration::ZERO,
        Instant::now(),
    );
    let text = m.render().unwrap();
    let name = "radiogate_largest_angular_size_arcsec";
    assert_eq!(value(&text, &format!("{name}_count"), ""), 2.0);
    assert_eq!(value(&text, &format!("{name}_bucket"), "le=\"15\""), 1.0);
    assert_eq!(value(&text, &format!("{name}_sum"), ""), 102.0);
    assert_eq!(value(&text, "radiogate_truncated_sources_total", ""), 1.0);
}

#[test]
fn a_classification_counts_its_label_stages_and_latency() {
    let m = Metrics::new();
    m.consumed();
    m.consumed();
    m.classified(
        &classification(Label::Frii, Some(Duration::from_secs(30))),
        Duration::from_millis(1),
        Instant::now(),
    );
    let text = m.render().unwrap();
    assert_eq!(
        value(&text, "radiogate_classifications_total", "label=\"FRII\""),
        1.0
    );
    assert_eq!(
        value(&text, "radiogate_classifications_total", "label=\"FRI\""),
        0.0
    );
    assert_eq!(value(&text, "radiogate_resampled_total", ""), 0.0);
    assert_eq!(value(&text, "radiogate_in_flight_items", ""), 1.0);
    let stage_sum = |stage: &str| {
        value(
            &text,
            "radiogate_stage_duration_seconds_sum",
            &format!("stage=\"{stage}\""),
        )
    };
    assert!((stage_sum("inference") - 0.05).abs() < 1e-9);
    assert!((stage_sum("queue_wait") - 0.004).abs() < 1e-9);
    assert!((stage_sum("publish") - 0.001).abs() < 1e-9);
    // From detected_at, 30 s ago, not from when the pipeline took it.
    let latency = value(&text, "radiogate_end_to_end_latency_seconds_sum", "");
    assert!((30.0..31.0).contains(&latency), "{latency}");
}

#[test]
fn without_detected_at_the_latency_starts_when_consumed() {
    let m = Metrics::new();
    let received = Instant::now() - Duration::from_millis(200);
    m.classified(&classification(Label::Fri, None), Duration::ZERO, received);
    let text = m.render().unwrap();
    let latency = value(&text, "radiogate_end_to_end_latency_seconds_sum", "");
    assert!((0.2..5.0).contains(&latency), "{latency}");
}

#[test]
fn batch_sizes_use_the_contract_buckets() {
    let m = Metrics::new();
    m.batch(3);
    m.batch(64);
    let text = m.render().unwrap();
    let bounds: Vec<String> = series(&text, "radiogate_batch_size_items_bucket")
        .into_iter()
        .map(|(labels, _)| labels)
        .collect();
    let expected: Vec<String> = [
        "1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "+Inf",
    ]
    .iter()
    .map(|b| format!("le=\"{b}\""))
    .collect();
    assert_eq!(bounds, expected);
    assert_eq!(
        value(&text, "radiogate_batch_size_items_bucket", "le=\"2\""),
        0.0
    );
    assert_eq!(
        value(&text, "radiogate_batch_size_items_bucket", "le=\"4\""),
        1.0
    );
    assert_eq!(
        value(&text, "radiogate_batch_size_items_bucket", "le=\"64\""),
        2.0
    );
}

#[test]
fn consumer_lag_follows_the_assignment() {
    let m = Metrics::new();
    m.consumer_stats(&ConsumerStats {
        member: true,
        lags: vec![("detections".into(), 0, 7), ("detections".into(), 1, 0)],
    });
    let text = m.render().unwrap();
    assert_eq!(
        value(
            &text,
            "radiogate_consumer_lag_messages",
            "partition=\"0\",topic=\"detections\""
        ),
        7.0
    );
    // Partition 0 revoked: its series goes, partition 1's stays.
    m.consumer_stats(&ConsumerStats {
        member: true,
        lags: vec![("detections".into(), 1, 2)],
    });
    let text = m.render().unwrap();
    assert_eq!(
        label_values(&text, "radiogate_consumer_lag_messages", "partition"),
        BTreeSet::from(["1".to_string()])
    );
    assert_eq!(
        value(
            &text,
            "radiogate_consumer_lag_messages",
            "partition=\"1\",topic=\"detections\""
        ),
        2.0
    );
}

#[test]
fn the_ready_gauge_follows_readiness() {
    let m = Metrics::new();
    let ready = |m: &Metrics| value(&m.render().unwrap(), "radiogate_ready", "");
    assert_eq!(ready(&m), 0.0);
    m.model_loaded(&model());
    assert!(m.is_ready(), "offline: the model is enough");
    assert_eq!(ready(&m), 1.0);

    let m = Metrics::new();
    m.expect_consumer_group();
    m.model_loaded(&model());
    assert!(!m.is_ready());
    m.consumer_stats(&ConsumerStats {
        member: true,
        lags: vec![],
    });
    assert!(m.is_ready());
    assert_eq!(ready(&m), 1.0);
    m.shutting_down();
    assert!(!m.is_ready());
    assert_eq!(ready(&m), 0.0);
}

#[test]
fn registries_are_independent() {
    let (a, b) = (Metrics::new(), Metrics::new());
    a.consumed();
    assert_eq!(
        value(
            &a.render().unwrap(),
            "radiogate_detections_consumed_total",
            ""
        ),
        1.0
    );
    assert_eq!(
        value(
            &b.render().unwrap(),
            "radiogate_detections_consumed_total",
            ""
        ),
        0.0
    );
}
