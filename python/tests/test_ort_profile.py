"""Tests of scripts/bench/ort_profile.py: a model's CPU time by operator, from ONNX Runtime's
profiler."""

from __future__ import annotations

from .conftest import REPO, load_script

ort_profile = load_script("scripts/bench/ort_profile.py")


def test_the_shares_cover_the_model_and_the_forms_operators() -> None:
    shipped = ort_profile.profile(REPO / "models" / "agcnn-mirabest-confident.onnx", runs=3)
    fused = ort_profile.profile(REPO / "models" / "agcnn-mirabest-confident-fused.onnx", runs=3)
    for shares in (shipped, fused):
        assert abs(sum(shares.values()) - 1) < 0.01
        assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert "Resize" in shipped and "Resize" not in fused
    assert {"MatMul", "FusedConv"} <= set(fused)
