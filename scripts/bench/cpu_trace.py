"""Where the machine's CPU went while latency was measured, and what the slowest records met.

    python3 scripts/bench/cpu_trace.py trace TRACE_JSONL NAME=PID [NAME=PID ...]
    python3 scripts/bench/cpu_trace.py attribute TRACE_JSONL RECORDS_JSONL

`trace` samples every 0.1 s, until SIGINT or SIGTERM or until one of the named processes ends,
one JSON line a sample: `t_ms` (ms since the epoch), the machine's busy, steal and iowait
time and each named process's CPU over the interval, all in cores (2.0: two cores the whole
interval), and `other`: busy time outside the named processes; then the disks: `disk_busy`,
the fraction of the interval the busiest disk had requests in flight, `disk_write_mb_s`, and
`io_stall`, the fraction in which some task waited for I/O (the kernel's pressure stall
information; absent where the kernel lacks it). Every 0.5 s it also scans every process and
adds `top`, the three that used the most CPU over that half second, named processes included
(name, pid, cores). Steal is time the hypervisor gave this virtual machine's cores to someone
else: a neighbour this machine cannot see.

`attribute` reads such a trace and `radiogate-bench collect --records` output (`detected_ms`,
`total` ms) and prints one JSON line: the mean of each column over the time the slowest 1% of
records were in flight (from detection to publication) against the rest of the measured
span, and the processes most often on top while the slowest were in flight. It says whether
a latency tail met the worker itself, the broker, another process, the hypervisor (steal)
or a stalled disk (iowait, disk_busy, io_stall).
Linux only; Python 3.10+.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

INTERVAL_S = 0.1
SCAN_EVERY = 5  # samples: the all-process scan twice a second
TICKS = os.sysconf("SC_CLK_TCK")
SLOWEST = 0.01
HAS_PRESSURE = Path("/proc/pressure/io").exists()


def machine() -> tuple[int, int, int, int]:
    """Aggregate CPU ticks from /proc/stat: (busy, idle, iowait, steal); busy counts user,
    nice, system, irq and softirq (guest time is already inside user)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, idle, iowait, steal


def disks() -> tuple[int, int, int]:
    """(ms the busiest whole disk had I/O in flight, sectors written by all of them, µs some
    task waited for I/O) so far; whole disks are those in /sys/block but loop, ram and zram
    devices. The last is 0 without /proc/pressure/io."""
    whole = {d for d in os.listdir("/sys/block") if not d.startswith(("loop", "ram", "zram"))}
    busy, written = 0, 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 13 and fields[2] in whole:
            busy, written = max(busy, int(fields[12])), written + int(fields[9])
    try:
        some = Path("/proc/pressure/io").read_text().split("\n", 1)[0]
        stalled = int(some.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        stalled = 0
    return busy, written, stalled


def process_ticks(pid: int | str) -> tuple[str, int, str] | None:
    """A process's name, CPU ticks (user + system, its threads included) and state ("Z":
    ended, not yet reaped), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ...": comm may hold spaces or parentheses; utime and stime are the
    # 14th and 15th fields.
    fields = stat[stat.rindex(")") + 2 :].split()
    return stat[stat.index("(") + 1 : stat.rindex(")")], int(fields[11]) + int(fields[12]), fields[0]


def all_processes() -> dict[int, tuple[str, int, str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (ticks := process_ticks(entry)) is not None:
            found[int(entry)] = ticks
    return found


def trace(out: Path, named: dict[str, int]) -> None:
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    previous_machine, previous_disks = machine(), disks()
    previous = {name: process_ticks(pid) for name, pid in named.items()}
    previous_all = all_processes()
    previous_t = previous_all_t = time.monotonic()
    with out.open("w") as f:
        for n in itertools.count(1):
            time.sleep(INTERVAL_S)
            now = time.monotonic()
            ticks_to_cores = 1.0 / (TICKS * (now - previous_t))
            current_machine = machine()
            busy, _, iowait, steal = (c - p for c, p in zip(current_machine, previous_machine, strict=True))
            row: dict[str, object] = {
                "t_ms": round(time.time() * 1e3, 1),
                "busy": round(busy * ticks_to_cores, 3),
                "steal": round(steal * ticks_to_cores, 3),
                "iowait": round(iowait * ticks_to_cores, 3),
            }
            current = {name: process_ticks(pid) for name, pid in named.items()}
            listed = 0
            for name in named:
                before, after = previous[name], current[name]
                used = after[1] - before[1] if before and after else 0
                listed += used
                row[name] = round(used * ticks_to_cores, 3)
            row["other"] = round(max(0, busy - listed) * ticks_to_cores, 3)
            current_disks = disks()
            disk_ms, sectors, stalled_us = (c - p for c, p in zip(current_disks, previous_disks, strict=True))
            row["disk_busy"] = round(disk_ms / 1e3 / (now - previous_t), 3)
            row["disk_write_mb_s"] = round(sectors * 512 / 1e6 / (now - previous_t), 3)
            if HAS_PRESSURE:
                row["io_stall"] = round(stalled_us / 1e6 / (now - previous_t), 3)
            if n % SCAN_EVERY == 0:
                current_all = all_processes()
                scale = 1.0 / (TICKS * (now - previous_all_t))
                used_by = [
                    (after[1] - previous_all[pid][1], after[0], pid)
                    for pid, after in current_all.items()
                    if pid in previous_all and after[1] > previous_all[pid][1]
                ]
                row["top"] = [
                    {"name": name, "pid": pid, "cores": round(used * scale, 3)}
                    for used, name, pid in sorted(used_by, reverse=True)[:3]
                ]
                previous_all, previous_all_t = current_all, now
            f.write(json.dumps(row) + "\n")
            f.flush()
            previous_machine, previous_disks = current_machine, current_disks
            previous, previous_t = current, now
            if stop or any(c is None or c[2] in "ZX" for c in current.values()):
                return


def attribute(trace_rows: list[dict], records: list[dict]) -> dict:
    """The trace's columns while the slowest records were in flight against the rest of the
    records' span; raises ValueError without records or samples."""
    if not records or not trace_rows:
        raise ValueError("no records or no samples")
    in_flight = [(r["detected_ms"], r["detected_ms"] + r["total"]) for r in records]
    by_total = sorted(range(len(records)), key=lambda i: records[i]["total"])
    slow = [in_flight[i] for i in by_total[-max(1, round(SLOWEST * len(records))) :]]
    start, end = min(s for s, _ in in_flight), max(e for _, e in in_flight)
    # A sample covers the INTERVAL_S before its time stamp.
    spans = [(row["t_ms"] - INTERVAL_S * 1e3, row["t_ms"], row) for row in trace_rows]
    spans = [s for s in spans if s[1] > start and s[0] < end]
    during = [row for a, b, row in spans if any(a < e and b > s for s, e in slow)]
    rest = [row for a, b, row in spans if not any(a < e and b > s for s, e in slow)]
    columns = [k for k in trace_rows[0] if k not in ("t_ms", "top")]

    def means(rows: list[dict]) -> dict:
        return {k: round(sum(r.get(k, 0.0) for r in rows) / len(rows), 3) if rows else None for k in columns}

    tops: Counter[str] = Counter(t["name"] for row in during for t in row.get("top", [])[:1])
    return {
        "slowest": len(slow),
        "slowest_from_s": round((min(s for s, _ in slow) - start) / 1e3, 2),
        "slowest_to_s": round((max(e for _, e in slow) - start) / 1e3, 2),
        "samples": {"slowest_in_flight": len(during), "rest": len(rest)},
        "while_slowest_in_flight": means(during),
        "otherwise": means(rest),
        "top_while_slowest_in_flight": dict(tops.most_common(3)),
    }


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[1] == "trace":
        trace(Path(argv[2]), {name: int(pid) for name, pid in (a.split("=", 1) for a in argv[3:])})
        return 0
    if len(argv) == 4 and argv[1] == "attribute":
        print(json.dumps(attribute(read_jsonl(argv[2]), read_jsonl(argv[3]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
