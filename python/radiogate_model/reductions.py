"""Each attention map's min and max as global max pools, which ONNX Runtime's CUDA provider
runs fast.

Each gate normalises its map by the map's own min and max, which PyTorch exports as
ReduceMin and ReduceMax over axis 1 of the map flattened to [N, H*W]. ONNX Runtime's CUDA
provider hands those to cuDNN's general reduction (`reduce_tensor_kernel_free`), which took 44%
of a batch's GPU time on an H200 (six calls, 5.7 of 12.8 ms at batch 128, float32;
scripts/gpu/profile.sh, BENCHMARKS.md). This pass takes each from the map before it is
flattened instead: the max as a GlobalMaxPool, the min as the negated GlobalMaxPool of the
negated map. Max and negation are exact, so every output is the same bit for bit (checked on
random images with ONNX Runtime's CPU provider before a file is written). `export` applies it
to every exported model; for a file exported before:

    python -m radiogate_model.reductions ../models/agcnn-mirabest-confident.onnx OUT.onnx
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .evaluate import largest_difference

FLAT_SHAPE = "radiogate/reductions/flat_shape"


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each tensor's shape as far as shape inference knows it (None: not static)."""
    graph = shape_inference.infer_shapes(model).graph
    return {
        value.name: [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        for value in [*graph.value_info, *graph.input, *graph.output]
    }


def pool_min_max(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with every min or max over a flattened one-channel map [N,1,H,W] taken as a
    global max pool of the map; returns it and how many reductions it rewrote."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    shapes = _shapes(model)
    producer = {out: node for node in graph.node for out in node.output}
    nodes, rewritten = [], 0
    for node in graph.node:
        if node.op_type not in ("ReduceMin", "ReduceMax"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        source = producer.get(node.input[0])
        grid = source.input[0] if source is not None and source.op_type == "Reshape" else None
        shape = shapes.get(grid, []) if grid else []
        # [N,1,H,W] flattened to [N,H*W], reduced over axis 1 keeping it: the map's own min or max.
        flat = len(shapes.get(node.input[0], [])) == 2 and len(shape) == 4 and shape[1] == 1
        if not (flat and list(attrs.get("axes", [])) == [1] and attrs.get("keepdims", 1)):
            nodes.append(node)
            continue
        name = node.name
        if node.op_type == "ReduceMax":
            nodes.append(helper.make_node("GlobalMaxPool", [grid], [f"{name}/map"], name=f"{name}/map"))
        else:
            nodes += [
                helper.make_node("Neg", [grid], [f"{name}/negated"], name=f"{name}/negated"),
                helper.make_node("GlobalMaxPool", [f"{name}/negated"], [f"{name}/max"], name=f"{name}/max"),
                helper.make_node("Neg", [f"{name}/max"], [f"{name}/map"], name=f"{name}/map"),
            ]
        # [N,1,1,1] back to the [N,1] that the flattened map's reduction gave.
        nodes.append(helper.make_node("Reshape", [f"{name}/map", FLAT_SHAPE], [node.output[0]], name=f"{name}/flat"))
        rewritten += 1
    if rewritten:
        if FLAT_SHAPE not in {init.name for init in graph.initializer}:
            graph.initializer.append(numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), FLAT_SHAPE))
        del graph.node[:]
        graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model, rewritten


def same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> bool:
    """Whether two models give bit-identical outputs on random images (CPU provider)."""
    return largest_difference(a, b, seed) == 0.0


def rewrite_file(src: Path, out: Path) -> int:
    """Rewrites the model file src into out (the same path allowed), refusing to write one
    whose outputs differ; returns how many reductions it rewrote."""
    original = onnx.load(src)
    model, rewritten = pool_min_max(original)
    if not same_outputs(original, model):
        raise RuntimeError(f"{src}: the rewritten model's outputs differ from the original's")
    onnx.save(model, out)
    return rewritten


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("out", type=Path)
    a = p.parse_args(argv)
    rewritten = rewrite_file(a.model, a.out)
    digest = hashlib.sha256(a.out.read_bytes()).hexdigest()
    print(f"{rewritten} reductions rewritten; outputs identical; sha256 {digest}")


if __name__ == "__main__":
    main()
