"""Writes the null model: the export contract of the AG-CNN with almost no arithmetic.

    python3 scripts/bench/null_model.py [OUT]     # default benches/models/null.onnx

`radiogate classify` with it measures the host's own cost per item (reading, cutting,
preprocessing, the attention summary, writing results) with inference all but free: the
ceiling that a faster accelerator cannot lift. Its outputs have the real model's names and
shapes (probs [N,2]; attention_1..3 [N,1,37,37], [N,1,75,75], [N,1,150,150], values in 0..1
as after range_norm), made from the input by pooling, so the summaries see images of the
same size and much the same structure. Its labels mean nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "benches" / "models" / "null.onnx"
# attention_k's side and the pooling that makes it from the 150x150 input.
GATES = ((1, 37, 4), (2, 75, 2), (3, 150, 1))


def build() -> onnx.ModelProto:
    batch = "N"
    nodes = [
        # Model inputs are (u8 / 255 - 0.5) / 0.5, in -1..1: maps in 0..1 as (x + 1) / 2.
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])),
        helper.make_node("Constant", [], ["half"], value=helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])),
        helper.make_node("Add", ["image", "one"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "half"], ["unit"]),
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMax", ["image"], ["max"], axes=[2, 3], keepdims=0),
        helper.make_node("Concat", ["mean", "max"], ["scores"], axis=1),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=1),
    ]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 2])]
    for gate, side, pool in GATES:
        name = f"attention_{gate}"
        if pool == 1:
            nodes.append(helper.make_node("Identity", ["unit"], [name]))
        else:
            nodes.append(
                helper.make_node("AveragePool", ["unit"], [name], kernel_shape=[pool, pool], strides=[pool, pool])
            )
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 1, side, side]))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, 150, 150])
    graph = helper.make_graph(nodes, "radiogate-null", [image], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="radiogate-null")
    model.ir_version = 8  # what ONNX Runtime 1.31 and the exporter's models use
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(), out)
    print(out)


if __name__ == "__main__":
    main(sys.argv)
