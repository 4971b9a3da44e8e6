"""Tests of scripts/bench/summarise.py: each end-to-end run's ratio is to the limit measured
around it, and the folders of older runs (one limit per round) still summarise as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import load_script

summarise = load_script("scripts/bench/summarise.py")

SETTING = {"batch": 1, "sessions": 2, "intra_threads": 1}


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def e2e(rate: float, r: int, **extra) -> dict:
    return {"round": r, "items_per_s": rate, "items_per_s_wall": rate, "items": 100, "rejected": 0,
            "peak_rss_mb": 100.0, **extra}  # fmt: skip


def run_folder(tmp_path: Path, bare: list[dict], runs: dict[str, list[dict]]) -> dict:
    write(
        tmp_path / "machine-start.json",
        [{"cpus": 2, "cpu": "test", "when": "now", "uptime": "load average: 1", "commit": "x"}],
    )
    write(tmp_path / "sweep.jsonl", [{**SETTING, "images_per_s": 200.0, "ms_per_batch": 10.0}])
    write(tmp_path / "bare.jsonl", bare)
    for name, rows in runs.items():
        write(tmp_path / f"{name}.jsonl", rows)
    summarise.main(tmp_path)
    return json.loads((tmp_path / "summary.json").read_text())


def test_each_run_is_divided_by_the_mean_of_the_limits_around_it(tmp_path: Path) -> None:
    # The load drifts: the limit falls from 200 to 100 over the run.
    limits = [200.0, 190.0, 180.0, 170.0, 160.0, 150.0, 140.0]
    bare = [{**SETTING, "round": 1 + p // 3, "point": p, "images_per_s": v, "ms_per_batch": 10.0}
            for p, v in enumerate(limits)]  # fmt: skip
    runs = {
        "offline": [e2e(0.9 * 195, 1, after_point=0), e2e(0.9 * 165, 2, after_point=3)],
        "streaming": [e2e(0.8 * 185, 1, after_point=1), e2e(0.8 * 155, 2, after_point=4)],
        "streaming-refs": [e2e(0.85 * 175, 1, after_point=2), e2e(0.85 * 145, 2, after_point=5)],
    }
    s = run_folder(tmp_path, bare, runs)
    assert s["limit_around_each_run"]
    assert s["offline_ratio_by_round"] == pytest.approx([0.9, 0.9])
    assert s["streaming_ratio_by_round"] == pytest.approx([0.8, 0.8])
    assert s["streaming_refs_ratio_by_round"] == pytest.approx([0.85, 0.85])
    assert (s["offline_ratio"], s["streaming_ratio"], s["streaming_refs_ratio"]) == pytest.approx((0.9, 0.8, 0.85))
    assert s["rounds"] == 2


def test_older_runs_keep_one_limit_per_round(tmp_path: Path) -> None:
    bare = [{**SETTING, "images_per_s": v, "ms_per_batch": 10.0} for v in (200.0, 100.0)]
    runs = {"offline": [e2e(180.0, 1), e2e(100.0, 2)], "streaming": [e2e(160.0, 1), e2e(80.0, 2)]}
    s = run_folder(tmp_path, bare, runs)
    assert not s["limit_around_each_run"]
    assert s["offline_ratio_by_round"] == pytest.approx([0.9, 1.0])
    # Median throughput over median limit, as those runs were summarised.
    assert s["offline_ratio"] == pytest.approx(140.0 / 150.0)
    assert s["streaming_ratio"] == pytest.approx(120.0 / 150.0)


def test_the_slowest_records_are_grouped_by_when_they_were_sent() -> None:
    # 200 records sent 10 ms apart, 10 ms each; the two slowest (1%) sent 0.5 s apart, at 1.0 s
    # and 1.5 s; a third, slow but outside the 1%, at 1.9 s.
    records = [{"detected_ms": 1e6 + 10.0 * i, "total": 10.0} for i in range(200)]
    records[100]["total"], records[150]["total"], records[190]["total"] = 90.0, 80.0, 70.0
    assert summarise.slowest_bursts(records) == [(1.0, 1.5, 2)]
    assert summarise.slowest_bursts(records, gap_s=0.4) == [(1.0, 1.0, 1), (1.5, 1.5, 1)]
    assert summarise.slowest_bursts([]) == []


def test_the_host_cost_is_the_median_of_the_null_model_rounds(tmp_path: Path) -> None:
    bare = [{**SETTING, "images_per_s": 200.0, "ms_per_batch": 10.0}]
    host = [e2e(rate, r, cpu_s=cpu, wall_s=2.0, cpu_ms_per_item=cpu * 10) for r, rate, cpu in
            ((1, 2500.0, 3.4), (2, 2700.0, 3.0), (3, 2600.0, 3.2))]  # fmt: skip
    runs = {"offline": [e2e(180.0, 1)], "streaming": [e2e(160.0, 1)], "host": host}
    s = run_folder(tmp_path, bare, runs)
    assert s["host"]["items_per_s"] == 2600.0
    assert s["host"]["cpu_ms_per_item"] == pytest.approx(32.0)
    assert s["host"]["cores_busy"] == pytest.approx(1.6)
    # Older runs have no host rounds, and their summary has no host entry.
    (tmp_path / "host.jsonl").unlink()
    assert "host" not in run_folder(tmp_path, bare, {k: v for k, v in runs.items() if k != "host"})


def test_the_latency_says_what_its_slowest_records_met(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bare = [{**SETTING, "images_per_s": 200.0, "ms_per_batch": 10.0}]
    runs = {
        "offline": [e2e(180.0, 1)],
        "streaming": [e2e(160.0, 1)],
        "latency": [
            {"rate": 80.0, "peak_rss_mb": 150.0, "latency_ms": {"n": 800, "p50": 15.0, "p99": 300.0, "max": 600.0}}
        ],
    }
    met = {
        "slowest": 8,
        "slowest_from_s": 12.5,
        "slowest_to_s": 13.5,
        "samples": {"slowest_in_flight": 10, "rest": 190},
        "while_slowest_in_flight": {"busy": 0.4, "iowait": 1.9, "worker": 0.0, "disk_busy": 1.0},
        "otherwise": {"busy": 1.2, "iowait": 0.0, "worker": 1.0, "disk_busy": 0.03},
        "top_while_slowest_in_flight": {"radiogate": 2},
    }
    write(tmp_path / "latency-cpu-attribution.json", [met])
    s = run_folder(tmp_path, bare, runs)
    assert s["latency"]["p99_ms"] == 300.0
    assert s["latency"]["slowest_1pct_met"] == met
    printed = capsys.readouterr().out
    assert "While the slowest 1% were in flight" in printed
    assert "iowait 1.9 (0.0)" in printed and "disk_busy 1.0 (0.03)" in printed
    # Runs before the trace have none, and say nothing of it.
    (tmp_path / "latency-cpu-attribution.json").unlink()
    assert run_folder(tmp_path, bare, runs)["latency"]["slowest_1pct_met"] is None
    assert "While the slowest 1%" not in capsys.readouterr().out


def test_the_summary_names_the_file_system_of_the_brokers_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bare = [{**SETTING, "images_per_s": 200.0, "ms_per_batch": 10.0}]
    runs = {"offline": [e2e(180.0, 1)], "streaming": [e2e(160.0, 1)]}
    run_folder(tmp_path, bare, runs)
    assert "the broker's log" not in capsys.readouterr().out  # runs before 2026-11-29
    write(
        tmp_path / "machine-start.json",
        [{"cpus": 2, "cpu": "test", "when": "now", "uptime": "1", "commit": "x", "broker_log_fs": "tmpfs"}],
    )
    summarise.main(tmp_path)
    assert "- the broker's log: on tmpfs" in capsys.readouterr().out
