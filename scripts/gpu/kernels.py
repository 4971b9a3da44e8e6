"""One batch's GPU kernels, from Nsight Compute's CSV of a run's every kernel:

    python3 scripts/gpu/kernels.py KERNELS_CSV --batch N [--variant NAME] [--top K]

KERNELS_CSV is what `ncu --metrics gpu__time_duration.sum --print-units base --csv` wrote (one
row per kernel, in launch order; other lines are skipped). The run repeats one batch's kernels
over and over after its warm-up (cuDNN's algorithm search launches other kernels first), so the
last whole batch is the shortest run of kernels at the end, of at least --min-kernels, that
repeats just before itself; a kernel is its name, grid and block. Prints one JSON line: the
kernels per batch, how many whole batches end the run, the GPU time per image they add up to,
and the TOP kernels by time (name without template arguments, calls, microseconds per batch,
share). Used by scripts/gpu/profile.sh (any Python 3.8+).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict

# Microseconds per unit, by the names ncu gives them.
MICROSECONDS = {
    "nsecond": 1e-3,
    "ns": 1e-3,
    "usecond": 1.0,
    "us": 1.0,
    "msecond": 1e3,
    "ms": 1e3,
    "second": 1e6,
    "s": 1e6,
}


def kernels(lines) -> list[tuple[str, str, str, float]]:
    """(name, grid, block, microseconds) of each kernel, in launch order."""
    rows = csv.reader(line for line in lines if line.startswith('"'))
    header = next(rows, None)
    if header is None:
        return []
    at = {name: i for i, name in enumerate(header)}
    out = []
    for row in rows:
        if row[at["Metric Name"]] != "gpu__time_duration.sum":
            continue
        unit = MICROSECONDS[row[at["Metric Unit"]]]
        value = float(row[at["Metric Value"]].replace(",", ""))
        out.append((row[at["Kernel Name"]], row[at["Grid Size"]], row[at["Block Size"]], value * unit))
    return out


def last_batch(keys: list[tuple], min_kernels: int) -> tuple[int, int]:
    """(kernels per batch, whole batches at the end): the shortest period of at least
    min_kernels with which the sequence ends; (0, 0) when none repeats."""
    n = len(keys)
    for period in range(min_kernels, n // 2 + 1):
        if keys[n - period :] == keys[n - 2 * period : n - period]:
            repeats = 2
            while (repeats + 1) * period <= n and (
                keys[n - (repeats + 1) * period : n - repeats * period] == keys[n - period :]
            ):
                repeats += 1
            return period, repeats
    return 0, 0


def short_name(name: str) -> str:
    """A kernel's name without its return type, template arguments and parameters."""
    name = re.sub(r"^void ", "", name)
    depth, out = 0, []
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip()


def summary(rows: list[tuple[str, str, str, float]], batch: int, top: int, min_kernels: int) -> dict:
    period, repeats = last_batch([r[:3] for r in rows], min_kernels)
    if period == 0:
        raise ValueError(f"no batch of at least {min_kernels} kernels repeats at the end of {len(rows)} kernels")
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, _, _, us in rows[len(rows) - period :]:
        entry = by_name[short_name(name)]
        entry[0] += 1
        entry[1] += us
    total = sum(us for _, us in by_name.values())
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "batch": batch,
        "kernels_timed": len(rows),
        "kernels_per_batch": period,
        "whole_batches_at_end": repeats,
        "gpu_us_per_batch": round(total, 1),
        "gpu_us_per_image": round(total / batch, 2),
        "images_per_s_if_gpu_bound": round(batch / total * 1e6),
        "top": [
            {"kernel": name, "calls": calls, "us_per_batch": round(us, 1), "share": round(us / total, 4)}
            for name, (calls, us) in ranked
        ],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--variant")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--min-kernels", type=int, default=16)
    a = p.parse_args()
    with open(a.csv, errors="replace") as f:
        rows = kernels(f)
    try:
        result = summary(rows, a.batch, a.top, a.min_kernels)
    except ValueError as e:
        print(f"kernels.py: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"variant": a.variant, **result} if a.variant else result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
