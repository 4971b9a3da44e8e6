"""radiogate_model.reductions: each attention map's min and max as global max pools, the
outputs unchanged bit for bit."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from radiogate_model.data import load_split, normalise
from radiogate_model.export import export, export_graph
from radiogate_model.model import AGCNN, ModelConfig
from radiogate_model.reductions import pool_min_max, rewrite_file

from .conftest import REPO, ops


def raw_export(tmp_path, **config) -> onnx.ModelProto:
    torch.manual_seed(0)
    path = tmp_path / "raw.onnx"
    export_graph(AGCNN(ModelConfig(**config)), path)
    return onnx.load(path)


@pytest.mark.parametrize("normalisation", ["range_norm", "std_mean_norm"])
@pytest.mark.parametrize("gates", [2, 3])
def test_the_rewrite_keeps_every_output_bit_for_bit(tmp_path, data_dir, normalisation, gates):
    original = raw_export(tmp_path, gates=gates, normalisation=normalisation)
    assert ops(original)["ReduceMin"] == ops(original)["ReduceMax"] == gates
    model, rewritten = pool_min_max(original)
    assert rewritten == 2 * gates
    assert (ops(model)["ReduceMin"], ops(model)["ReduceMax"], ops(model)["GlobalMaxPool"]) == (0, 0, 2 * gates)
    # On real MiraBest test images and on noise, at several batch sizes.
    images = normalise(load_split(data_dir, "mirabest_confident", train=False).images[:19])
    noise = np.random.default_rng(1).uniform(-1, 1, (5, 1, 150, 150)).astype(np.float32)
    want, got = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (original, model)
    )
    for batch in (images, images[:1], noise):
        for a, b in zip(want.run(None, {"image": batch}), got.run(None, {"image": batch}), strict=True):
            assert np.array_equal(a, b)


def test_other_normalisations_and_rewritten_models_are_left_alone(tmp_path):
    softmax = raw_export(tmp_path, normalisation="softmax")
    assert pool_min_max(softmax)[1] == 0
    once, _ = pool_min_max(raw_export(tmp_path))
    twice, rewritten = pool_min_max(once)
    assert rewritten == 0
    assert twice.SerializeToString() == once.SerializeToString()


def test_export_and_the_shipped_models_take_min_and_max_as_pools(tmp_path):
    torch.manual_seed(0)
    export(AGCNN(ModelConfig()), tmp_path / "m.onnx")
    paths = [tmp_path / "m.onnx", *sorted((REPO / "models").glob("*.onnx"))]
    for path in paths:
        counts = ops(onnx.load(path))
        gates = sum(o.name.startswith("attention_") for o in onnx.load(path).graph.output)
        assert (counts["ReduceMin"], counts["ReduceMax"], counts["GlobalMaxPool"]) == (0, 0, 2 * gates), path


def test_a_rewrite_whose_outputs_differ_is_not_written(tmp_path, monkeypatch):
    src = tmp_path / "raw.onnx"
    onnx.save(raw_export(tmp_path), src)
    monkeypatch.setattr("radiogate_model.reductions.same_outputs", lambda a, b: False)
    with pytest.raises(RuntimeError, match="differ"):
        rewrite_file(src, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
