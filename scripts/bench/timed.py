"""Runs a command; writes its wall time (s), peak RSS (KB) and CPU time (s, user + system) to
TIME_FILE as one line, and with --threads the CPU seconds of its threads by name to a JSON file:

    python3 scripts/bench/timed.py TIME_FILE [--threads THREADS_JSON] COMMAND [ARG ...]

Exits with the command's status. The threads are sampled from /proc/PID/task every 0.2 s
while the command runs (Linux), each thread's last sample counted; a name's trailing digits
and separators are dropped, so that a pool (radiogate-cutout-0, -1, ...) counts as one, and
the kernel cuts names to 15 characters. So it says what the cores did (cutout workers,
session threads, the async runtime's threads) to within the last 0.2 s of each thread (one
that lives less than that may be missed: meant for runs of seconds). Used through
scripts/bench/lib.sh's `timed`; any Python 3.8+, no GNU time needed (a GPU machine may lack it).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

SAMPLE_S = 0.2


def pool_name(comm: str) -> str:
    """A thread's name without the trailing number that tells a pool's threads apart."""
    return re.sub(r"[-_.:#0-9 ]+$", "", comm) or comm


def sample(pid: int, seen: dict[int, tuple[str, int]]) -> None:
    """Adds each thread of `pid` to `seen` as tid -> (name, CPU clock ticks so far)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        # "tid (comm) state ...": comm may hold spaces or parentheses; utime and stime are
        # the 14th and 15th fields.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seen[int(tid)] = (comm, int(fields[11]) + int(fields[12]))


def by_name(seen: dict[int, tuple[str, int]]) -> dict[str, float]:
    """CPU seconds by pool name, largest first."""
    ticks = os.sysconf("SC_CLK_TCK")
    total: dict[str, float] = {}
    for comm, cpu in seen.values():
        name = pool_name(comm)
        total[name] = total.get(name, 0.0) + cpu / ticks
    return {k: round(v, 3) for k, v in sorted(total.items(), key=lambda kv: -kv[1])}


def main(argv: list[str]) -> int:
    time_file, rest = argv[1], argv[2:]
    threads_file = None
    if rest[:1] == ["--threads"]:
        threads_file, rest = rest[1], rest[2:]
    started = time.monotonic()
    child = subprocess.Popen(rest)
    seen: dict[int, tuple[str, int]] = {}
    while True:
        if threads_file:
            sample(child.pid, seen)
        try:
            rc = child.wait(timeout=SAMPLE_S)
            break
        except subprocess.TimeoutExpired:
            pass
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(time_file).write_text(f"{wall:.3f} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime:.3f}\n")
    if threads_file:
        Path(threads_file).write_text(json.dumps(by_name(seen)) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
