"""Tests of scripts/gpu/compare_results.py: a GPU setting's results against the CPU's."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import load_script

compare_results = load_script("scripts/gpu/compare_results.py")


def write(path: Path, probs: dict[str, float], provider: str = "cuda") -> str:
    lines = [{"kind": "rejection", "source_id": "bad"}]
    for source, frii in probs.items():
        lines.append(
            {
                "kind": "classification",
                "source_id": source,
                "label": "FRII" if frii > 0.5 else "FRI",
                "probabilities": {"FRI": 1 - frii, "FRII": frii},
                "model": {"execution_provider": provider},
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def test_same_labels_within_the_bound_pass(tmp_path, capsys):
    want = write(tmp_path / "cpu.jsonl", {"a": 0.2, "b": 0.9}, "cpu")
    got = write(tmp_path / "gpu.jsonl", {"a": 0.2 + 1e-6, "b": 0.9})
    assert compare_results.main([got, want, "--max-diff", "1e-4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == out["answered"] == 2
    assert out["labels_agree"] and out["providers"] == ["cuda"]
    assert abs(out["max_prob_diff"] - 1e-6) < 1e-9


def test_a_flipped_label_or_a_large_difference_fails_the_bound(tmp_path, capsys):
    want = write(tmp_path / "cpu.jsonl", {"a": 0.45, "b": 0.9}, "cpu")
    flipped = write(tmp_path / "flipped.jsonl", {"a": 0.55, "b": 0.9})
    assert compare_results.main([flipped, want, "--max-diff", "1"]) == 1
    assert json.loads(capsys.readouterr().out)["labels_agree"] is False
    far = write(tmp_path / "far.jsonl", {"a": 0.40, "b": 0.9})
    assert compare_results.main([far, want, "--max-diff", "1e-4"]) == 1
    # Without a bound it only reports.
    assert compare_results.main([far, want, "--variant", "fp16"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["variant"] == "fp16"


def test_a_failed_run_answers_nothing(tmp_path, capsys):
    want = write(tmp_path / "cpu.jsonl", {"a": 0.2}, "cpu")
    assert compare_results.main([str(tmp_path / "missing.jsonl"), want, "--max-diff", "1"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["answered"], out["labels_agree"], out["max_prob_diff"]) == (0, False, None)
