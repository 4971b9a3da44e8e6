"""Tests of scripts/bench/cpu_trace.py: the trace of a named process's CPU, and what the
slowest records of a latency run met."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import load_script

cpu_trace = load_script("scripts/bench/cpu_trace.py")

# Waits 0.5 s (for the tracer to start), spins one core for 1.5 s of CPU, then exits.
SPIN = """
import time
time.sleep(0.5)
end = time.process_time() + 1.5
while time.process_time() < end:
    pass
"""


def test_a_busy_process_is_traced_until_it_ends(tmp_path: Path) -> None:
    out = tmp_path / "trace.jsonl"
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    tracer = subprocess.run(
        [sys.executable, str(cpu_trace.__file__), "trace", str(out), f"spin={child.pid}"], timeout=60
    )
    child.wait()
    assert tracer.returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 10
    assert all(
        set(r) >= {"t_ms", "busy", "steal", "iowait", "spin", "other", "disk_busy", "disk_write_mb_s"} for r in rows
    )
    assert all(0.0 <= r["disk_busy"] <= 1.05 and r["disk_write_mb_s"] >= 0.0 for r in rows)
    # It used a core while it ran: ~1.5 core seconds in all (ticks are 10 ms: some slack).
    used = sum(r["spin"] * (r["t_ms"] - p["t_ms"]) / 1e3 for p, r in itertools.pairwise(rows))
    assert 1.2 < used < 1.8, used
    assert all(0.0 <= r["spin"] <= r["busy"] + 0.2 for r in rows)
    # The all-process scans name it among the processes on top while it spun.
    tops = [t for r in rows for t in r.get("top", [])]
    assert any(t["pid"] == child.pid for t in tops)


def records_and_trace() -> tuple[list[dict], list[dict]]:
    # 200 records, one every 50 ms from t = 1,000,000 ms, 20 ms each; records 100 and 101
    # (5.0 and 5.05 s in) took 400 ms. The trace: a sample every 100 ms over 12 s, the
    # worker at 1 core and nothing else, but for the 4.9-5.6 s that a neighbour stole 1.5.
    records = [{"detected_ms": 1e6 + 50 * i, "total": 400.0 if i in (100, 101) else 20.0} for i in range(200)]
    trace = []
    for k in range(1, 121):
        t = 1e6 + 100 * k
        stolen = 4900 < t - 1e6 <= 5600
        trace.append(
            {
                "t_ms": t,
                "busy": 0.5 if stolen else 1.0,
                "steal": 1.5 if stolen else 0.0,
                "iowait": 0.0,
                "worker": 0.5 if stolen else 1.0,
                "other": 0.0,
                "top": [{"name": "radiogate", "pid": 7, "cores": 1.0}],
            }
        )
    return records, trace


def test_the_slowest_records_are_attributed_to_what_ran_while_they_were_in_flight() -> None:
    records, trace = records_and_trace()
    a = cpu_trace.attribute(trace, records)
    assert a["slowest"] == 2
    assert (a["slowest_from_s"], a["slowest_to_s"]) == (5.0, 5.45)
    # In flight 5.0-5.45 s: the samples stamped 5.1 ... 5.5 s (each covers the 0.1 s before it).
    assert a["samples"] == {"slowest_in_flight": 5, "rest": 95}
    assert a["while_slowest_in_flight"] == {"busy": 0.5, "steal": 1.5, "iowait": 0.0, "worker": 0.5, "other": 0.0}
    during_rest = a["otherwise"]
    assert during_rest["steal"] == pytest.approx(2 * 1.5 / 95, abs=1e-3)  # 5.6 s and 5.0 s
    assert a["top_while_slowest_in_flight"] == {"radiogate": 5}


def test_attribution_needs_records_and_samples() -> None:
    records, trace = records_and_trace()
    with pytest.raises(ValueError):
        cpu_trace.attribute([], records)
    with pytest.raises(ValueError):
        cpu_trace.attribute(trace, [])
