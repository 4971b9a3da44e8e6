"""scripts/offset_study.py: the offsets are the distances and directions it says, and the
scoring compares each offset with the centre of the same source."""

from __future__ import annotations

import math
import sys

from .conftest import REPO, load_script

# The study imports its neighbour as a script does (scripts/ on the path).
sys.path.insert(0, str(REPO / "scripts"))
study = load_script("scripts/offset_study.py")


def test_offsets_are_eight_whole_pixel_moves_at_the_distance() -> None:
    for d in (1, 2, 3, 5, 8):
        moves = study.offsets(d)
        assert len(set(moves)) == 8
        for dx, dy in moves:
            assert isinstance(dx, int) and isinstance(dy, int)
            if dx == 0 or dy == 0:
                assert abs(dx) + abs(dy) == d
            else:
                # Whole pixels: round(d / sqrt 2) along each axis, within half a pixel per axis.
                assert abs(dx) == abs(dy) == round(d / math.sqrt(2))
                assert abs(math.hypot(dx, dy) - d) <= math.sqrt(2) / 2, (d, dx, dy)


def test_each_offset_is_scored_against_its_own_centre() -> None:
    def record(label: str, frii: float) -> dict:
        return {"kind": "classification", "label": label, "probabilities": {"FRI": 1 - frii, "FRII": frii}}

    results = {"100_a@0:0": record("FRI", 0.2), "200_b@0:0": record("FRII", 0.9)}
    for dx, dy in study.offsets(1):
        results[f"100_a@{dx}:{dy}"] = record("FRI", 0.3)
        results[f"200_b@{dx}:{dy}"] = record("FRI", 0.4) if (dx, dy) == (1, 0) else record("FRII", 0.9)
    results["200_b@-1:0"] = {"kind": "rejection"}
    centre, one = study.score(results, [1])
    assert (centre["kept"], centre["classified"], centre["accuracy"]) == (2, 2, 1.0)
    assert (one["classified"], one["of"], one["kept"], one["scored"]) == (15, 16, 14, 15)
    assert one["accuracy"] == 14 / 15
    assert abs(one["max_dp"] - 0.5) < 1e-12


def test_unsteady_counts_sources_whose_label_moves_and_their_confidence() -> None:
    def record(label: str, confidence: float) -> dict:
        return {"kind": "classification", "label": label, "confidence": confidence}

    results = {
        "100_a@0:0": record("FRI", 0.55),
        "100_a@1:0": record("FRII", 0.6),
        "100_a@0:1": record("FRII", 0.52),
        "200_b@0:0": record("FRII", 0.9),
        "200_b@1:0": record("FRII", 0.95),
        "200_b@0:1": {"kind": "rejection"},
    }
    assert study.unsteady(results) == {"sources": 1, "of": 2, "largest_confidence": 0.55}
