"""The null model (scripts/bench/null_model.py, benches/models/null.onnx): the committed file
is what the script writes, and it keeps the export contract the worker checks."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from .conftest import REPO, load_script

null_model = load_script("scripts/bench/null_model.py")


def test_the_committed_model_is_what_the_script_writes() -> None:
    committed = onnx.load(null_model.DEFAULT_OUT)
    assert committed.SerializeToString() == null_model.build().SerializeToString()


def test_it_has_the_real_models_outputs_and_shapes() -> None:
    session = ort.InferenceSession(str(null_model.DEFAULT_OUT), providers=["CPUExecutionProvider"])
    real = ort.InferenceSession(
        str(REPO / "models" / "agcnn-mirabest-confident.onnx"), providers=["CPUExecutionProvider"]
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
