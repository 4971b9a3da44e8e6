"""Tests of scripts/bench/timed.py: a command's wall time, peak RSS and CPU, and its threads'
CPU by pool name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMED = ROOT / "scripts" / "bench" / "timed.py"

# Two threads named like a pool (busy-0, busy-1) that each spin for 0.6 s of CPU, then exit 3.
CHILD = """
import sys, threading, time
def spin(i):
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
        comm.write(f"busy-{i}")
    end = time.thread_time() + 0.6
    while time.thread_time() < end:
        pass
threads = [threading.Thread(target=spin, args=(i,)) for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
time.sleep(0.3)
sys.exit(3)
"""


def test_the_command_is_timed_and_its_threads_counted_by_pool(tmp_path: Path) -> None:
    time_file, threads_file = tmp_path / "time", tmp_path / "threads.json"
    rc = subprocess.call(
        [sys.executable, str(TIMED), str(time_file), "--threads", str(threads_file), sys.executable, "-c", CHILD]
    )
    assert rc == 3
    wall, peak_kb, cpu_s = time_file.read_text().split()
    assert float(wall) >= 0.6 and int(peak_kb) > 0 and float(cpu_s) >= 1.1
    threads = json.loads(threads_file.read_text())
    # Both threads under one name, each counted once (its last sample): about 1.2 s in all.
    assert 1.0 <= threads["busy"] <= float(cpu_s) + 0.05
    assert next(iter(threads)) == "busy"  # largest first


def test_without_threads_only_the_time_file_is_written(tmp_path: Path) -> None:
    rc = subprocess.call([sys.executable, str(TIMED), str(tmp_path / "time"), "true"])
    assert rc == 0
    assert len((tmp_path / "time").read_text().split()) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["time"]
