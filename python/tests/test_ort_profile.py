"""Tests of scripts/bench/ort_profile.py: a model's CPU time by operator, from ONNX Runtime's
profiler."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("ort_profile", ROOT / "scripts" / "bench" / "ort_profile.py")
ort_profile = importlib.util.module_from_spec(spec)
sys.modules["ort_profile"] = ort_profile
spec.loader.exec_module(ort_profile)


def test_the_shares_cover_the_model_and_the_forms_operators() -> None:
    shipped = ort_profile.profile(ROOT / "models" / "agcnn-mirabest-confident.onnx", runs=3)
    fused = ort_profile.profile(ROOT / "models" / "agcnn-mirabest-confident-fused.onnx", runs=3)
    for shares in (shipped, fused):
        assert abs(sum(shares.values()) - 1) < 0.01
        assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert "Resize" in shipped and "Resize" not in fused
    assert {"MatMul", "FusedConv"} <= set(fused)
