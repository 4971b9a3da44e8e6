"""One offline run's record, from the results `radiogate classify --format jsonl` wrote:

    python3 scripts/bench/offline_record.py RESULTS WALL_S PEAK_RSS_KB CPU_S [KEY=VALUE ...]

prints one JSON line: the KEY=VALUE pairs first (a VALUE that reads as JSON, a number say, is
kept as such), then items and rejections, throughput over the run's span (first intake to
last result, from `classified_at` and `timings_us.total`) and over its wall time, peak RSS,
CPU per item and cores busy, the execution providers the results name, and the mean time per
item of each stage. Used by scripts/bench/run.sh and scripts/gpu/run.sh (any Python 3.8+).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

STAGES = ("cutout", "preprocess", "queue", "inference", "total")


def value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def record(path: str, wall: float, peak_kb: int, cpu_s: float) -> dict:
    stages = dict.fromkeys(STAGES, 0)
    first, last, n, rejected, providers = float("inf"), float("-inf"), 0, 0, set()
    with open(path) as results:
        for line in results:
            rec = json.loads(line)
            n += 1
            if rec["kind"] != "classification":
                rejected += 1
                continue
            providers.add(rec["model"]["execution_provider"])
            for k in stages:
                stages[k] += rec["timings_us"][k]
            t = datetime.fromisoformat(rec["classified_at"].replace("Z", "+00:00")).timestamp()
            first = min(first, t - rec["timings_us"]["total"] / 1e6)
            last = max(last, t)
    return {
        "items": n,
        "rejected": rejected,
        "providers": sorted(providers),
        "wall_s": wall,
        "items_per_s_wall": n / wall,
        "span_s": last - first,
        "items_per_s": n / (last - first),
        "peak_rss_mb": peak_kb / 1024,
        "cpu_s": cpu_s,
        "cpu_ms_per_item": 1e3 * cpu_s / n,
        "cores_busy": cpu_s / wall,
        "mean_stage_us": {k: v / max(n - rejected, 1) for k, v in stages.items()},
    }


def main(argv: list[str]) -> None:
    path, wall, peak_kb, cpu_s, *pairs = argv[1:]
    extra = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        extra[key] = value(text)
    print(json.dumps({**extra, **record(path, float(wall), int(peak_kb), float(cpu_s))}))


if __name__ == "__main__":
    main(sys.argv)
