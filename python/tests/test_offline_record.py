"""Tests of scripts/bench/offline_record.py: one offline run's record from its results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import load_script

offline_record = load_script("scripts/bench/offline_record.py")


def result(at: str, total_us: int, provider: str = "cpu") -> dict:
    timings = {"cutout": 100, "preprocess": 400, "queue": 50, "inference": 9000, "total": total_us}
    return {"kind": "classification", "classified_at": at, "timings_us": timings,
            "model": {"execution_provider": provider}}  # fmt: skip


def test_a_record_counts_the_span_from_first_intake_to_last_result(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results.jsonl"
    rows = [
        # Taken in 1 s before its result at 10 s; the last result at 12 s: a 3 s span.
        result("2026-11-28T00:00:10.000000000Z", 1_000_000),
        result("2026-11-28T00:00:12.000000000Z", 500_000, provider="cuda"),
        {"kind": "rejection", "reason": "empty_cutout"},
    ]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    offline_record.main(
        ["offline_record.py", str(results), "4.0", "2048", "6.0", "bench=host", "round=2", "what=gpu_wait auto"]
    )
    rec = json.loads(capsys.readouterr().out)
    assert list(rec)[:3] == ["bench", "round", "what"]
    assert (rec["bench"], rec["round"], rec["what"]) == ("host", 2, "gpu_wait auto")
    assert (rec["items"], rec["rejected"]) == (3, 1)
    assert rec["span_s"] == pytest.approx(3.0)
    assert rec["items_per_s"] == pytest.approx(1.0)
    assert rec["items_per_s_wall"] == pytest.approx(0.75)
    assert (rec["peak_rss_mb"], rec["cpu_ms_per_item"], rec["cores_busy"]) == pytest.approx((2.0, 2000.0, 1.5))
    assert rec["providers"] == ["cpu", "cuda"]
    assert rec["mean_stage_us"]["total"] == pytest.approx(750_000)
    assert rec["mean_stage_us"]["inference"] == pytest.approx(9000)
