"""Tests of the deploy checks in scripts/ (check_metrics_usage, check_deploy_files, deploy_schemas):
that they pass on the repository's files and catch what they exist to catch."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


metrics = load_script("scripts/check_metrics_usage.py")
files = load_script("scripts/check_deploy_files.py")
schemas = load_script("scripts/deploy_schemas.py")

CONTRACT = metrics.load_contract(ROOT / "docs" / "operations.md")


# ---------------------------------------------------------------------------------------
# PromQL scanning
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names", "labels"),
    [
        (
            'sum by (topic) (max by (topic, partition) (radiogate_consumer_lag_messages{job="radiogate"}))',
            {"radiogate_consumer_lag_messages"},
            {(None, "topic"), (None, "partition"), ("radiogate_consumer_lag_messages", "job")},
        ),
        (
            "histogram_quantile(0.95, sum by (stage, le) "
            '(rate(radiogate_stage_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))',
            {"radiogate_stage_duration_seconds_bucket"},
            {(None, "stage"), (None, "le"), ("radiogate_stage_duration_seconds_bucket", "instance")},
        ),
        # Strings, durations, offsets, keywords, Inf/NaN and comments are not metrics.
        (
            'label_replace(up, "dst", "radiogate_fake_total", "src", "(.*)") > bool 0 '
            "and on () rate(radiogate_ready[5m] offset 1h30m) != Inf  # radiogate_comment",
            {"up", "radiogate_ready"},
            set(),
        ),
        ('{__name__="radiogate_ready", instance="w1"}', {"radiogate_ready"}, {("radiogate_ready", "instance")}),
        (
            'label_values(radiogate_build_info{job="radiogate"}, instance)',
            {"radiogate_build_info"},
            {("radiogate_build_info", "job"), ("radiogate_build_info", "instance")},
        ),
        ("a / ignoring (reason) group_left (label) b", {"a", "b"}, {(None, "reason"), (None, "label")}),
    ],
)
def test_promql_usage_finds_metric_and_label_names(expr, names, labels):
    usage = metrics.promql_usage(expr)
    assert usage.metrics == names
    assert usage.labels == labels


def test_unreadable_promql_is_an_error():
    with pytest.raises(metrics.CheckError):
        metrics.promql_usage("sum(radiogate_ready) ? 1")


# ---------------------------------------------------------------------------------------
# Rules and dashboards against the contract
# ---------------------------------------------------------------------------------------


def test_contract_table_has_every_metric_with_its_type_and_labels():
    assert len(CONTRACT) == 14
    assert CONTRACT["radiogate_truncated_sources_total"].kind == "counter"
    assert CONTRACT["radiogate_truncated_sources_total"].labels == set()
    assert CONTRACT["radiogate_largest_angular_size_arcsec"].kind == "histogram"
    assert CONTRACT["radiogate_largest_angular_size_arcsec"].labels == set()
    assert CONTRACT["radiogate_resampled_total"].kind == "counter"
    assert CONTRACT["radiogate_resampled_total"].labels == set()
    assert CONTRACT["radiogate_stage_duration_seconds"].kind == "histogram"
    assert CONTRACT["radiogate_stage_duration_seconds"].labels == {"stage"}
    assert CONTRACT["radiogate_model_info"].labels == {"model", "sha256", "execution_provider", "views"}
    assert CONTRACT["radiogate_detections_consumed_total"].labels == set()
    # "(none): detection time (`detected_at`, ...)" names a field, not a label.
    assert CONTRACT["radiogate_end_to_end_latency_seconds"].labels == set()
    assert CONTRACT["radiogate_consumer_lag_messages"].labels == {"topic", "partition"}


def test_repository_rules_and_dashboards_use_only_contract_metrics(capsys):
    assert metrics.main([]) == 0
    out = capsys.readouterr().out
    for name in ("radiogate_end_to_end_latency_seconds_bucket", "radiogate_batch_size_items_bucket", "up"):
        assert name in out


def dashboard_with(tmp_path: Path, *exprs: str) -> Path:
    path = tmp_path / "d.json"
    targets = [{"refId": chr(65 + i), "expr": e} for i, e in enumerate(exprs)]
    path.write_text(json.dumps({"panels": [{"type": "row", "panels": [{"title": "p", "targets": targets}]}]}))
    return path


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("rate(radiogate_detections_total[5m])", "metric radiogate_detections_total is not in the contract"),
        ("sum by (reasons) (rate(radiogate_rejections_total[5m]))", "label 'reasons'"),
        ('radiogate_ready{stage="cutout"}', "label 'stage' is not a label of radiogate_ready"),
        ("rate(radiogate_rejections_total_bucket[5m])", "radiogate_rejections_total_bucket is not in the contract"),
        ("vector(1)", "no metric name"),
    ],
)
def test_a_dashboard_using_what_the_worker_does_not_export_fails(tmp_path, capsys, expr, message):
    dashboard = dashboard_with(tmp_path, "sum(radiogate_ready)", expr)
    assert metrics.main(["--rules", "--dashboards", str(dashboard)]) == 1
    assert message in capsys.readouterr().err


def test_recording_rules_define_names(tmp_path):
    rules = tmp_path / "r.rules.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [
                            {"record": "job:radiogate_ready:sum", "expr": "sum by (job) (radiogate_ready)"},
                            {"alert": "A", "expr": "job:radiogate_ready:sum == 0"},
                        ],
                    }
                ]
            }
        )
    )
    assert metrics.main(["--rules", str(rules), "--dashboards"]) == 0


# ---------------------------------------------------------------------------------------
# A real scrape (the exposition of a prometheus_client registry shaped like the worker's)
# ---------------------------------------------------------------------------------------


def worker_exposition(skip: str = "", rename_label: tuple[str, str] | None = None) -> str:
    registry = CollectorRegistry()
    for metric in CONTRACT.values():
        if metric.name == skip:
            continue
        labels = sorted(metric.labels)
        if rename_label and rename_label[0] in labels:
            labels = [rename_label[1] if x == rename_label[0] else x for x in labels]
        if metric.kind == "counter":
            c = Counter(metric.name.removesuffix("_total"), "h", labels, registry=registry)
            (c.labels(*["x"] * len(labels)) if labels else c).inc()
        elif metric.kind == "gauge":
            g = Gauge(metric.name, "h", labels, registry=registry)
            (g.labels(*["x"] * len(labels)) if labels else g).set(1)
        else:
            h = Histogram(metric.name, "h", labels, registry=registry, buckets=(1, 2, 4))
            (h.labels(*["x"] * len(labels)) if labels else h).observe(1)
    return generate_latest(registry).decode()


def test_a_scrape_with_every_contract_metric_passes(tmp_path, capsys):
    scrape = tmp_path / "metrics.txt"
    scrape.write_text(worker_exposition())
    assert metrics.main(["--scrape", str(scrape)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skip": "radiogate_rejections_total"}, "radiogate_rejections_total is missing"),
        ({"skip": "radiogate_batch_size_items"}, "radiogate_batch_size_items_bucket, used by the rules"),
        ({"rename_label": ("reason", "cause")}, "radiogate_rejections_total has labels ['cause']"),
    ],
)
def test_a_scrape_that_differs_from_the_contract_fails(tmp_path, capsys, kwargs, message):
    scrape = tmp_path / "metrics.txt"
    scrape.write_text(worker_exposition(**kwargs))
    assert metrics.main(["--scrape", str(scrape)]) == 1
    assert message in capsys.readouterr().err


def test_a_scrape_with_the_wrong_type_fails(tmp_path, capsys):
    text = worker_exposition().replace("# TYPE radiogate_ready gauge", "# TYPE radiogate_ready untyped")
    scrape = tmp_path / "metrics.txt"
    scrape.write_text(text)
    assert metrics.main(["--scrape", str(scrape)]) == 1
    assert "radiogate_ready has type unknown, the contract says gauge" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Compose and manifests
# ---------------------------------------------------------------------------------------


def test_repository_compose_file_checks():
    assert files.check_compose(ROOT / "deploy" / "compose.yaml") == []


def test_compose_with_missing_files_and_short_grace_fails(tmp_path):
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    worker = compose["services"]["radiogate-1"]
    del worker["build"]
    worker["volumes"] = ["./radiogate.toml:/etc/radiogate/radiogate.toml:ro", "./missing:/data"]
    worker["stop_grace_period"] = "30s"
    worker["depends_on"] = ["nowhere"]
    (tmp_path / "radiogate.toml").write_text((ROOT / "deploy" / "k8s" / "base" / "radiogate.toml").read_text())
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump({"services": {"radiogate-1": worker}}))
    problems = "\n".join(files.check_compose(path))
    assert "mounts ./missing" in problems
    assert "depends on nowhere" in problems
    assert "stop_grace_period 30s is not above drain_timeout 30s" in problems
    assert "radiogate.toml, which does not exist" not in problems


def test_compose_build_copying_a_missing_file_fails(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM x AS b\nCOPY --from=b /out /out\nCOPY present missing \\\n  /dst/\n")
    (tmp_path / "present").write_text("")
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump({"services": {"w": {"build": {"context": "."}}}}))
    problems = files.check_compose(path)
    assert problems == [
        f"{path}: service w: {tmp_path / 'Dockerfile'}: copies missing, which does not exist in {tmp_path}"
    ]


def test_repository_dockerfiles_copy_what_the_context_has():
    dockerfiles = sorted((ROOT / "deploy" / "docker").glob("Dockerfile*"))
    assert len(dockerfiles) == 2
    assert files.check_dockerfiles(ROOT, dockerfiles) == []


def test_a_dockerignored_source_is_a_problem(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_text("")
    (tmp_path / ".dockerignore").write_text("# build outputs\ntarget/\n**/*.onnx\n")
    (tmp_path / "Dockerfile").write_text("FROM x\nCOPY models/m.onnx models/\n")
    problems = files.check_dockerfiles(tmp_path, [tmp_path / "Dockerfile"])
    assert problems == [f"{tmp_path / 'Dockerfile'}: copies models/m.onnx, which {tmp_path / '.dockerignore'} excludes"]


def test_build_context_holds_what_the_build_stage_copies(tmp_path):
    dockerfile = ROOT / "deploy" / "docker" / "Dockerfile"
    assert files.build_context(ROOT, dockerfile, tmp_path) == []
    for path in ("Cargo.toml", "Cargo.lock", "build.rs", ".cargo", "src/main.rs", "benches/stages.rs", "assets"):
        assert (tmp_path / path).exists(), path
    # The runtime stage's sources are not the build's.
    assert not (tmp_path / "models").exists()


def test_build_context_refuses_a_copy_that_moves_a_source(tmp_path):
    (tmp_path / "ctx" / "src").mkdir(parents=True)
    (tmp_path / "Dockerfile").write_text("FROM x\nCOPY src code\nFROM y\n")
    problems = files.build_context(tmp_path / "ctx", tmp_path / "Dockerfile", tmp_path / "out")
    assert problems == [f"{tmp_path / 'Dockerfile'}: COPY src code does not keep its path"]


def test_the_kubernetes_rules_are_the_rule_files():
    rules = ROOT / "deploy" / "prometheus" / "radiogate.rules.yml"
    resource = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
    assert files.check_prometheus_rule(rules, resource, write=False) == []


def test_a_prometheus_rule_that_differs_is_a_problem_and_write_mends_it(tmp_path):
    rules = ROOT / "deploy" / "prometheus" / "radiogate.rules.yml"
    resource = tmp_path / "prometheusrule.yaml"
    stale = files.prometheus_rule(rules)
    stale["spec"]["groups"][0]["rules"][0]["for"] = "1m"
    resource.write_text(yaml.safe_dump(stale))
    assert files.check_prometheus_rule(rules, resource, write=False) == [
        f"{resource}: not the groups of {rules}; regenerate it with --write"
    ]
    assert files.check_prometheus_rule(rules, resource, write=True) == []
    assert resource.read_text().startswith("# Generated from deploy/prometheus/radiogate.rules.yml")


def rendered_base() -> list[dict]:
    """The base's Deployment, its ConfigMap and ScaledObject, as kustomize renders them."""
    base = ROOT / "deploy" / "k8s" / "base"
    deployment = yaml.safe_load((base / "deployment.yaml").read_text())
    config_map = {
        "kind": "ConfigMap",
        "metadata": {"name": "radiogate-config"},
        "data": {"radiogate.toml": (base / "radiogate.toml").read_text()},
    }
    scaled = yaml.safe_load((base / "scaledobject.yaml").read_text())
    return [config_map, deployment, scaled]


def write_docs(tmp_path: Path, docs: list[dict]) -> Path:
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def test_base_manifests_check(tmp_path):
    assert files.check_manifests([write_docs(tmp_path, rendered_base())]) == []


def test_grace_period_not_above_drain_timeout_fails(tmp_path):
    docs = rendered_base()
    container = docs[1]["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "RADIOGATE__PIPELINE__DRAIN_TIMEOUT", "value": "1m 30s"})
    problems = files.check_manifests([write_docs(tmp_path, docs)])
    assert problems == ["Deployment radiogate: terminationGracePeriodSeconds 60 is not above drain_timeout 90s"]


def test_probe_on_another_port_fails(tmp_path):
    docs = copy.deepcopy(rendered_base())
    container = docs[1]["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "RADIOGATE__TELEMETRY__LISTEN", "value": "0.0.0.0:9100"})
    problems = files.check_manifests([write_docs(tmp_path, docs)])
    assert len(problems) == 2
    assert "livenessProbe asks /healthz on port 9464" in problems[0]


def test_scaler_with_a_short_broker_name_fails(tmp_path):
    docs = copy.deepcopy(rendered_base())
    docs[2]["spec"]["triggers"][0]["metadata"]["bootstrapServers"] = "kafka:9092"
    problems = files.check_manifests([write_docs(tmp_path, docs)])
    assert len(problems) == 2
    assert "is not a full Service name" in problems[0]
    assert "is not the workers' RADIOGATE__SOURCE__BROKERS (kafka.kafka.svc:9092)" in problems[1]


@pytest.mark.parametrize(("text", "expected"), [("30s", 30), ("1m 30s", 90), ("1m30s", 90), ("250ms", 0.25)])
def test_durations(text, expected):
    assert files.seconds(text) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------
# CRD to JSON schema
# ---------------------------------------------------------------------------------------


def test_crd_schema_conversion():
    openapi = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "note": {"type": "string", "nullable": True},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
                    "either": {"allOf": [{"properties": {"a": {"type": "string"}}}]},
                },
            }
        },
    }
    out = schemas.openapi_to_jsonschema(openapi)
    spec = out["properties"]["spec"]
    assert out["additionalProperties"] is False
    assert spec["additionalProperties"] is False
    assert spec["properties"]["port"] == {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    assert spec["properties"]["note"]["type"] == ["string", "null"]
    assert "additionalProperties" not in spec["properties"]["free"]
    assert "additionalProperties" not in spec["properties"]["either"]["allOf"][0]


def test_crd_files_become_one_schema_per_served_version(tmp_path):
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "example.org",
            "names": {"kind": "Widget"},
            "versions": [
                {"name": "v1", "served": True, "schema": {"openAPIV3Schema": {"type": "object", "properties": {}}}},
                {"name": "v0", "served": False, "schema": {"openAPIV3Schema": {"type": "object"}}},
            ],
        },
    }
    source = tmp_path / "crd.yaml"
    source.write_text(yaml.safe_dump(crd))
    assert schemas.crd(tmp_path / "out", [source]) == 1
    assert json.loads((tmp_path / "out" / "example.org" / "widget_v1.json").read_text())["type"] == "object"
