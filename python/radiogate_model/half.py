"""A float16 copy of a shipped model, for measuring the GPU's half-precision speed.

The copy keeps the export contract exactly (float32 `image` in, float32 `probs` and
`attention_*` out, same names and shapes); inside, weights and activations are float16.
It is not shipped: its probabilities differ from the float32 model's, and how much is
what `--compare` measures, on the MiraBest test batch with ONNX Runtime's CPU provider:

    python -m radiogate_model.half ../models/agcnn-mirabest-confident.onnx /tmp/fp16.onnx \
        --compare mirabest_confident

scripts/gpu/prepare.sh bundles it so that the GPU benchmark can time it beside float32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx
from onnx import helper
from onnxconverter_common import float16

from .data import SUBSETS, default_data_dir
from .evaluate import compare


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model in float16 with float32 inputs and outputs.

    A graph output that the graph also reads (each attention map gates its features) is
    first made an Identity of an inner tensor: the converter casts outputs back to float32
    and would otherwise leave their readers with a float32 input among float16 ones.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        for i, name in enumerate(node.output):
            if name not in outputs:
                continue
            inner = f"{name}/float16"
            node.output[i] = inner
            for reader in graph.node:
                for j, x in enumerate(reader.input):
                    if x == name:
                        reader.input[j] = inner
            graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}/output"))
    half = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.checker.check_model(half, full_check=True)
    return half


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="the float32 ONNX model")
    p.add_argument("out", type=Path, help="where to write the float16 copy")
    p.add_argument("--compare", choices=sorted(SUBSETS), help="compare the two on this subset's test images")
    p.add_argument("--data-dir", type=Path, default=None)
    a = p.parse_args(argv)
    onnx.save(to_float16(onnx.load(a.model)), a.out)
    if a.compare:
        print(json.dumps(compare(a.model, a.out, a.compare, a.data_dir or default_data_dir()), indent=2))


if __name__ == "__main__":
    main()
