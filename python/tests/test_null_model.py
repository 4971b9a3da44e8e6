"""The null model (scripts/bench/null_model.py, benches/models/null.onnx): the committed file
is what the script writes, and it keeps the export contract the worker checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("null_model", ROOT / "scripts" / "bench" / "null_model.py")
null_model = importlib.util.module_from_spec(spec)
sys.modules["null_model"] = null_model
spec.loader.exec_module(null_model)


def test_the_committed_model_is_what_the_script_writes() -> None:
    committed = onnx.load(null_model.DEFAULT_OUT)
    assert committed.SerializeToString() == null_model.build().SerializeToString()


def test_it_has_the_real_models_outputs_and_shapes() -> None:
    session = ort.InferenceSession(str(null_model.DEFAULT_OUT), providers=["CPUExecutionProvider"])
    real = ort.InferenceSession(
        str(ROOT / "models" / "agcnn-mirabest-confident.onnx"), providers=["CPUExecutionProvider"]
    )
    image = np.random.default_rng(0).uniform(-1, 1, (3, 1, 150, 150)).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    assert names == [o.name for o in real.get_outputs()]
    ours = session.run(None, {"image": image})
    assert [o.shape for o in ours] == [o.shape for o in real.run(None, {"image": image})]
    probs, *maps = ours
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    for attention in maps:
        assert attention.min() >= 0.0 and attention.max() <= 1.0
    np.testing.assert_allclose(maps[-1][:, 0], (image[:, 0] + 1) / 2, rtol=1e-6)
