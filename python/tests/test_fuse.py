"""radiogate_model.fuse: convolutions fused with their Relu (and a gate's Add) as ONNX Runtime's
FusedConv, upsamplings as matrix products; the outputs the original's on the CPU, bit for bit or to
float32 rounding."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from radiogate_model.data import load_split, normalise
from radiogate_model.fuse import fuse_convolutions, fuse_file, fused_form, linear_weights, upsample_as_matmuls

from .conftest import REPO, ops

SHIPPED = REPO / "models" / "agcnn-mirabest-confident.onnx"


def outputs(model: onnx.ModelProto, images: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})


@pytest.fixture(scope="module")
def images(data_dir) -> list[np.ndarray]:
    """Real MiraBest test images at two batch sizes, and noise."""
    real = normalise(load_split(data_dir, "mirabest_confident", train=False).images[:19])
    noise = np.random.default_rng(1).uniform(-1, 1, (5, 1, 150, 150)).astype(np.float32)
    return [real, real[:1], noise]


def test_conv_and_relu_fused_keep_every_output_bit_for_bit(images):
    original = onnx.load(SHIPPED)
    model, counts = fuse_convolutions(original, add=False)
    assert counts == Counter(relu=11)
    assert (ops(model)["FusedConv"], ops(model)["Conv"], ops(model)["Relu"], ops(model)["Add"]) == (11, 9, 3, 3)
    for batch in images:
        for a, b in zip(outputs(original, batch), outputs(model, batch), strict=True):
            assert np.array_equal(a, b)


def test_the_gates_sums_fused_stay_within_a_few_ulps(images):
    original = onnx.load(SHIPPED)
    model, counts = fuse_convolutions(original)
    assert counts == Counter(relu=11, add_relu=3)
    assert (ops(model)["FusedConv"], ops(model)["Conv"], ops(model)["Relu"], ops(model)["Add"]) == (14, 6, 0, 0)
    gate_convs = [n for n in model.graph.node if n.op_type == "FusedConv" and len(n.input) == 4]
    assert [n.input[2] for n in gate_convs] == ["", "", ""]  # theta has no bias; Z is the upsampled phi
    assert all(n.domain == "com.microsoft" for n in model.graph.node if n.op_type == "FusedConv")
    for batch in images:
        want, got = outputs(original, batch), outputs(model, batch)
        assert np.array_equal(want[0].argmax(axis=1), got[0].argmax(axis=1))
        for a, b in zip(want, got, strict=True):
            assert np.abs(a - b).max() < 1e-5


@pytest.mark.parametrize(("side", "out"), [(18, 37), (18, 75), (18, 150), (5, 5), (4, 9)])
def test_the_weights_are_onnx_runtimes_linear_resize(side, out):
    """Two matrix products with linear_weights give what a Resize (linear, half_pixel) gives."""
    node = helper.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel"
    )
    graph = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, side, side])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([2, 3, out, out], dtype=np.int64), "sizes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, side, side)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    weights = linear_weights(side, out)
    assert np.allclose(weights.sum(axis=1), 1)
    assert np.abs(weights @ x @ weights.T - want).max() < 1e-6


def test_upsamplings_as_matrix_products_stay_within_float32_rounding(images):
    original = onnx.load(SHIPPED)
    model, replaced = upsample_as_matmuls(original)
    assert replaced == 3
    # The Resizes and the nodes that only computed their sizes are gone.
    assert (ops(model)["Resize"], ops(model)["Slice"], ops(model)["Cast"], ops(model)["MatMul"]) == (0, 0, 0, 6)
    for batch in images:
        want, got = outputs(original, batch), outputs(model, batch)
        assert np.array_equal(want[0].argmax(axis=1), got[0].argmax(axis=1))
        for a, b in zip(want, got, strict=True):
            assert np.abs(a - b).max() < 1e-5


def test_a_fused_form_is_left_as_it_is():
    once, _ = fused_form(onnx.load(SHIPPED))
    twice, counts = fused_form(once)
    assert not +counts
    assert twice.SerializeToString() == once.SerializeToString()


def test_the_file_is_written_only_within_the_tolerance(tmp_path, monkeypatch):
    counts, difference = fuse_file(SHIPPED, tmp_path / "fused.onnx")
    assert counts == Counter(relu=11, add_relu=3, upsample=3)
    assert 0 <= difference < 1e-5
    assert (
        ops(onnx.load(tmp_path / "fused.onnx"))["FusedConv"],
        ops(onnx.load(tmp_path / "fused.onnx"))["Resize"],
    ) == (
        14,
        0,
    )
    monkeypatch.setattr("radiogate_model.fuse.largest_difference", lambda a, b: float("inf"))
    with pytest.raises(RuntimeError, match="differ"):
        fuse_file(SHIPPED, tmp_path / "refused.onnx")
    assert not (tmp_path / "refused.onnx").exists()
