"""Summarise a scripts/bench/run.sh output folder: medians, ratios to the limit, targets.

Usage: python3 scripts/bench/summarise.py OUT_DIR   (prints Markdown, writes summary.json)
"""

import json
import statistics
import sys
from pathlib import Path

MAX_WAIT_MS = 20.0  # batch.max_wait of the shipped configuration (config/radiogate.toml)


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def setting(r: dict) -> str:
    return f"batch {r['batch']}, {r['sessions']} session(s) x {r['intra_threads']} thread(s)"


def by_setting(rows: list[dict]) -> dict[str, list[float]]:
    """Images per second of each re-measured setting, by round."""
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(setting(r), []).append(r["images_per_s"])
    return out


def worker_batch_ms(worker: list[dict], candidates: list[dict], sweep: list[dict], limit_ms: float) -> float:
    """One full batch's inference time at the workers' setting: its re-measured median, else
    its sweep step, else (older runs, whose workers ran the limit's setting) the limit's."""
    if not worker:
        return limit_ms
    want = setting(worker[0])
    for rows in (candidates, sweep):
        mine = [r for r in rows if setting(r) == want]
        if mine:
            return median(mine, "ms_per_batch")
    return limit_ms


def ratios(rows: list[dict], bare: list[dict]) -> tuple[list[float], bool]:
    """Each end-to-end run's throughput over the limit around it: the mean of the limits
    measured just before and just after it, and True. Runs before 2026-11-27 20:10 measured
    the limit once per round, at its start: against that, and False."""
    points = {b["point"]: b["images_per_s"] for b in bare if "point" in b}
    if points and all("after_point" in r for r in rows):
        around = [(points[r["after_point"]] + points[r["after_point"] + 1]) / 2 for r in rows]
        return [r["items_per_s"] / limit for r, limit in zip(rows, around, strict=True)], True
    return [r["items_per_s"] / b["images_per_s"] for r, b in zip(rows, bare, strict=True)], False


def slowest_bursts(records: list[dict], gap_s: float = 1.0) -> list[tuple[float, float, int]]:
    """When the slowest 1% of the measured records (as `collect` ranks them) were sent, in
    seconds into the measured part, grouped into bursts of records sent less than `gap_s`
    apart: (first, last, how many). A few tight bursts point at a stall the records shared (a
    publisher starting, the broker's writeback); a spread, at contention throughout."""
    if not records:
        return []
    t0 = min(r["detected_ms"] for r in records)
    ranked = sorted(records, key=lambda r: r["total"])
    bursts: list[tuple[float, float, int]] = []
    for t in sorted((r["detected_ms"] - t0) / 1e3 for r in ranked[int(0.99 * len(ranked)) :]):
        if bursts and t - bursts[-1][1] < gap_s:
            bursts[-1] = (bursts[-1][0], t, bursts[-1][2] + 1)
        else:
            bursts.append((t, t, 1))
    return bursts


def main(out: Path) -> None:
    start = lines(out / "machine-start.json")[0]
    end = lines(out / "machine-end.json")
    sweep = lines(out / "sweep.jsonl")
    bare = lines(out / "bare.jsonl")  # per point (before 20:10 on 2026-11-27: per round), the faster candidate
    candidates = lines(out / "bare-candidates.jsonl")  # runs before 2026-11-27 18:00 lack it
    offline = lines(out / "offline.jsonl")
    streaming = lines(out / "streaming.jsonl")
    refs = lines(out / "streaming-refs.jsonl")  # runs before 2026-11-27 lack it
    latency = lines(out / "latency.jsonl")
    # Runs before 2026-11-27 18:00 lack it: their workers ran the limit's setting.
    worker = lines(out / "worker-setting.json")
    long = lines(out / "long.jsonl")
    host = lines(out / "host.jsonl")  # runs before 2026-11-28 lack it

    limit = median(bare, "images_per_s")
    batch_ms = median(bare, "ms_per_batch")
    best = max(sweep, key=lambda r: r["images_per_s"]) if sweep else bare[0]
    s = {
        "machine": {"start": start, "end": end[0] if end else None},
        "rounds": len(offline),
        "best_setting": {k: best[k] for k in ("batch", "sessions", "intra_threads")},
        "bare_by_setting": by_setting(candidates),
        "worker_setting": worker[0] if worker else None,
        "bare_images_per_s": limit,
        "bare_ms_per_full_batch": batch_ms,
        "offline_items_per_s": median(offline, "items_per_s"),
        "offline_items_per_s_wall": median(offline, "items_per_s_wall"),
        "offline_items": offline[0]["items"],
        "offline_rejected": max(r["rejected"] for r in offline),
        "offline_peak_rss_mb": max(r["peak_rss_mb"] for r in offline),
        "streaming_items_per_s": median(streaming, "items_per_s"),
        "streaming_peak_rss_mb": max(r["peak_rss_mb"] for r in streaming),
    }
    # Per round, against the limit around each run (or, in older runs, measured at the round's
    # start); the ratio is then the median of the rounds' (older runs: median over median).
    for name, rows in (("offline", offline), ("streaming", streaming), ("streaming_refs", refs)):
        if not rows:
            continue
        by_round, bracketed = ratios(rows, bare)
        s[f"{name}_ratio_by_round"] = by_round
        s[f"{name}_ratio"] = statistics.median(by_round) if bracketed else median(rows, "items_per_s") / limit
        s["limit_around_each_run"] = bracketed
    if host:
        # The host's own cost (the null model): everything of an item but the model's
        # arithmetic, and how fast the pipeline would run if inference were free.
        s["host"] = {
            "items_per_s": median(host, "items_per_s"),
            "cpu_ms_per_item": median(host, "cpu_ms_per_item"),
            "cores_busy": statistics.median(r["cpu_s"] / r["wall_s"] for r in host),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in host),
            "rejected": max(r["rejected"] for r in host),
        }
    if refs:
        s["streaming_refs_items_per_s"] = median(refs, "items_per_s")
        s["streaming_refs_peak_rss_mb"] = max(r["peak_rss_mb"] for r in refs)
    # Where the cores went (rows of runs made before run.sh recorded CPU time lack it).
    # Bare inference keeps every core busy: its CPU per image is cores / images per second.
    cpu = {"bare_ms_per_image": 1e3 * start["cpus"] / limit}
    if all("cpu_s" in r for r in offline):
        cpu["offline_ms_per_item"] = median(offline, "cpu_ms_per_item")
        cpu["offline_cores_busy"] = statistics.median(r["cpu_s"] / r["wall_s"] for r in offline)
    for name, rows in (("streaming", streaming), ("streaming_refs", refs)):
        if rows and all("cpu_s" in r for r in rows):
            cpu[f"{name}_worker_ms_per_item"] = statistics.median(1e3 * r["cpu_s"] / r["records"] for r in rows)
            cpu[f"{name}_broker_ms_per_item"] = statistics.median(1e3 * r["broker_cpu_s"] / r["records"] for r in rows)
    s["cpu"] = cpu
    if latency:
        lat = latency[0]
        s["latency"] = {
            "rate_per_s": lat["rate"],
            "items": lat["latency_ms"]["n"],
            "p50_ms": lat["latency_ms"]["p50"],
            "p99_ms": lat["latency_ms"]["p99"],
            "max_ms": lat["latency_ms"]["max"],
            "peak_rss_mb": lat["peak_rss_mb"],
            "warm_up_items": lat.get("skipped"),  # absent before 2026-11-27 20:00 (32, unpaced)
            "parts_ms": lat.get("latency_parts_ms"),
            "target_p99_ms": MAX_WAIT_MS + 3 * worker_batch_ms(worker, candidates, sweep, batch_ms),
            # Runs before 2026-11-27 23:08 lack the records.
            "slowest_1pct_bursts_s": slowest_bursts(lines(out / "latency-records.jsonl")),
            # Runs before 2026-11-29 lack the CPU trace (scripts/bench/cpu_trace.py).
            "slowest_1pct_met": next(iter(lines(out / "latency-cpu-attribution.json")), None),
        }
    if long:
        rss = []
        rss_file = out / "long-rss.txt"
        if rss_file.exists():
            for line in rss_file.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2:
                    rss.append(float(parts[1]))
        q = len(rss)
        s["long"] = {
            "items": long[0]["records"],
            "items_per_s": long[0]["items_per_s"],
            "peak_rss_mb": long[0]["peak_rss_mb"],
            "rss_mb_at_10_50_90_100_pct": [rss[min(q - 1, int(f * q))] for f in (0.1, 0.5, 0.9, 1.0)] if q else None,
        }
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")

    def ok(cond: bool) -> str:
        return "met" if cond else "NOT met"

    print(f"# radiogate benchmark, {start['when']}, commit {start['commit']}\n")
    print(f"- machine: {start['cpus']} x {start['cpu']}")
    if "model" in start:
        print(f"- model: `{start['model']}`")
    if start.get("broker_log_fs"):  # runs before 2026-11-29 lack it (their broker: on disk)
        print(f"- the broker's log: on {start['broker_log_fs']}")
    print(f"- load at start: `{start['uptime']}`")
    if end:
        print(f"- load at end: `{end[0]['uptime']}`")
    print(f"- rounds: {s['rounds']} (medians below); items per round: {s['offline_items']}")
    ws = s["worker_setting"]
    if ws:
        origin = "the shipped configuration" if ws["from"] == "shipped" else "the sweep's best"
        print(
            f"- workers: {origin}, batch {ws['batch']}, {ws['sessions']} session(s) x "
            f"{ws['intra_threads']} intra-op thread(s)"
        )
    else:
        print("- workers: the limit's setting")
    print()
    print("| measure | value | ratio to the limit | target |")
    print("|---|---|---|---|")
    bs = s["best_setting"]
    if s["bare_by_setting"] and s["limit_around_each_run"]:
        what = "before and after every run the faster of " + " and ".join(s["bare_by_setting"])
    elif s["bare_by_setting"]:
        what = "per round the faster of " + " and ".join(s["bare_by_setting"])
    else:
        what = f"batch {bs['batch']}, {bs['sessions']} session(s), {bs['intra_threads']} thread(s)"
    print(f"| bare inference ({what}) | {limit:.1f} images/s ({batch_ms:.1f} ms per batch) | 1 | |")
    print(
        f"| offline `classify` | {s['offline_items_per_s']:.1f} items/s "
        f"({s['offline_items_per_s_wall']:.1f} with start-up) | {s['offline_ratio']:.3f} "
        f"| >= 0.90: {ok(s['offline_ratio'] >= 0.9)} |"
    )
    print(
        f"| streaming `run` | {s['streaming_items_per_s']:.1f} items/s | "
        f"{s['streaming_ratio']:.3f} | >= 0.85: {ok(s['streaming_ratio'] >= 0.85)} |"
    )
    if refs:
        print(
            f"| streaming `run`, cutouts by reference | {s['streaming_refs_items_per_s']:.1f} items/s | "
            f"{s['streaming_refs_ratio']:.3f} | >= 0.85: {ok(s['streaming_refs_ratio'] >= 0.85)} |"
        )
    peaks = [s["offline_peak_rss_mb"], s["streaming_peak_rss_mb"]] + ([s["streaming_refs_peak_rss_mb"]] if refs else [])
    label = "offline / streaming" + (" / by reference" if refs else "")
    print(f"| peak RSS ({label}) | {' / '.join(f'{p:.0f}' for p in peaks)} MB | | <= 300 MB: {ok(max(peaks) <= 300)} |")
    if "latency" in s:
        lat = s["latency"]
        warm = f" after {lat['warm_up_items']} paced warm-up" if lat["warm_up_items"] is not None else ""
        print(
            f"| latency at {lat['rate_per_s']}/s ({lat['items']} detections{warm}) | "
            f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms | | "
            f"p99 <= {lat['target_p99_ms']:.0f} ms: {ok(lat['p99_ms'] <= lat['target_p99_ms'])} |"
        )
    if "host" in s:
        h = s["host"]
        print(
            f"| the host's own cost: offline `classify`, null model | {h['items_per_s']:.0f} items/s, "
            f"{h['cpu_ms_per_item']:.3f} ms CPU per item ({h['cores_busy']:.2f} cores busy), peak RSS "
            f"{h['peak_rss_mb']:.0f} MB | | |"
        )
    if "long" in s:
        lg = s["long"]
        print(
            f"| long run ({lg['items']} detections) | {lg['items_per_s']:.1f} items/s, peak RSS "
            f"{lg['peak_rss_mb']:.0f} MB, RSS at 10/50/90/100%: {lg['rss_mb_at_10_50_90_100_pct']} | | |"
        )
    c = s["cpu"]
    print(f"\nCPU time per item (user + system, medians): bare inference {c['bare_ms_per_image']:.2f} ms", end="")
    if "offline_ms_per_item" in c:
        print(
            f"; offline {c['offline_ms_per_item']:.2f} ms "
            f"({c['offline_cores_busy']:.2f} of {start['cpus']} cores busy, start-up included)",
            end="",
        )
    if "host" in s:
        print(f"; the host's own cost (null model) {s['host']['cpu_ms_per_item']:.2f} ms", end="")
    for name, what in (("streaming", "streaming"), ("streaming_refs", "by reference")):
        if f"{name}_worker_ms_per_item" in c:
            print(
                f"; {what} {c[f'{name}_worker_ms_per_item']:.2f} ms in the worker "
                f"+ {c[f'{name}_broker_ms_per_item']:.2f} ms in the broker on the same cores",
                end="",
            )
    print(".")
    parts = s.get("latency", {}).get("parts_ms")
    if parts:
        print("\nWhere the latency went (ms; mean of the middle 10% of records / of the slowest 1%):", end=" ")
        names = ("to_worker", "in_worker", "queue", "inference", "to_topic")
        print(", ".join(f"{n} {parts['middle'][n]:.1f} / {parts['slowest_1pct'][n]:.1f}" for n in names) + ".")
        print(
            "(to_worker: send to intake, through the broker; in_worker: intake to result, "
            "of which queue and inference; to_topic: result to its broker append.)"
        )
    bursts = s.get("latency", {}).get("slowest_1pct_bursts_s")
    if bursts:
        spans = [(f"{a:.1f}", f"{b:.1f}", n) for a, b, n in bursts]
        listed = ", ".join((a if a == b else f"{a}-{b}") + f" ({n})" for a, b, n in spans)
        print(f"When the slowest 1% were sent (s into the measured part; records within 1 s grouped): {listed}.")
    met = s.get("latency", {}).get("slowest_1pct_met")
    if met:
        during, rest = met["while_slowest_in_flight"], met["otherwise"]
        print(
            "While the slowest 1% were in flight (the rest of the measured part; in cores, the disks' "
            "in fractions of the time and MB/s): "
            + ", ".join(f"{k} {during[k]} ({rest[k]})" for k in during)
            + f"; most often on top then: {met['top_while_slowest_in_flight']} (scripts/bench/cpu_trace.py)."
        )
    if s["bare_by_setting"]:
        print()
        for name, rates in s["bare_by_setting"].items():
            print(f"Bare inference in turn, {name}: {', '.join(f'{v:.1f}' for v in rates)} images/s")
    print()
    for name, what in (("offline", "Offline"), ("streaming", "Streaming"), ("streaming_refs", "By reference")):
        if f"{name}_ratio_by_round" in s:
            listed = ", ".join(f"{r:.3f}" for r in s[f"{name}_ratio_by_round"])
            print(f"{what} ratio per round: {listed}")
    print()
    print("Sweep (images/s):\n")
    print("| batch | sessions | intra threads | images/s |")
    print("|---|---|---|---|")
    for r in sweep:
        print(f"| {r['batch']} | {r['sessions']} | {r['intra_threads']} | {r['images_per_s']:.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
