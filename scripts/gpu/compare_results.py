"""Two runs' results on the same cutouts compared (a GPU setting's against the CPU's):

    python3 scripts/gpu/compare_results.py GOT WANT [--max-diff D] [--variant NAME]

prints one JSON line: the variant (when named), how many classified items WANT holds and GOT
answers (a GOT that is missing, from a run that failed, answers none), whether GOT has the
same items with the same labels, the largest probability difference (null unless the items
are the same), and the execution providers GOT's results name. With --max-diff it exits 1
unless the labels agree and every probability lies within D. Used by scripts/gpu/run.sh
(any Python 3.8+).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CLASSES = ("FRI", "FRII")


def classified(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {r["source_id"]: r for r in records if r["kind"] == "classification"}


def compare(got_path: str, want_path: str) -> dict:
    got, want = classified(got_path), classified(want_path)
    same_items = bool(want) and sorted(got) == sorted(want)
    diff = None
    if same_items:
        diff = max(abs(got[k]["probabilities"][c] - want[k]["probabilities"][c]) for k in want for c in CLASSES)
    return {
        "items": len(want),
        "answered": len(got),
        "labels_agree": same_items and all(got[k]["label"] == want[k]["label"] for k in want),
        "max_prob_diff": diff,
        "providers": sorted({r["model"]["execution_provider"] for r in got.values()}),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("got")
    p.add_argument("want")
    p.add_argument("--max-diff", type=float)
    p.add_argument("--variant")
    a = p.parse_args(argv)
    result = compare(a.got, a.want)
    print(json.dumps({"variant": a.variant, **result} if a.variant else result))
    if a.max_diff is None:
        return 0
    return 0 if result["labels_agree"] and result["max_prob_diff"] < a.max_diff else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
