"""Where a model's CPU inference time goes, by operator: ONNX Runtime's own profiler over RUNS
single-image runs of the bundled cutouts' size (one intra-op thread, as a shipped CPU session):

    python3 scripts/bench/ort_profile.py models/agcnn-mirabest-confident.onnx [--runs 200]

prints one JSON line: the share of the summed node time of each operator type (after ONNX
Runtime's graph optimisations, so fused nodes count under their fused name), largest first.
Needs onnxruntime (python/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort


def profile(model: Path, runs: int) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        image = np.random.default_rng(0).uniform(-1, 1, (1, 1, 150, 150)).astype(np.float32)
        for _ in range(runs):
            session.run(None, {"image": image})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    return {op: round(us / total, 3) for op, us in by_op.most_common()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--runs", type=int, default=200)
    a = p.parse_args()
    print(json.dumps({"model": str(a.model), "runs": a.runs, "share_by_op": profile(a.model, a.runs)}))


if __name__ == "__main__":
    main()
