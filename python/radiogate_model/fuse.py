"""A model's fused form, for ONNX Runtime: each gate's bilinear upsampling as two matrix
products, and each convolution fused with the Relu (and a gate's Add) after it as ONNX
Runtime's own FusedConv operator.

- Resize (linear, `half_pixel`) of [N, C, h, w] to [N, C, H, W] becomes MatMul(MatMul(x, Wx^T))
  with Wy on the left: constant interpolation matrices whose weights are computed in float32
  as ONNX Runtime's Resize computes them. The sums round otherwise: outputs within a few 1e-7.
  ONNX Runtime's CPU Resize is slow (31% of the model's CPU time: scripts/bench/ort_profile.py); on the GPU
  it was 15% of a batch's kernels (H200, TF32; BENCHMARKS.md).
- Conv + Relu becomes FusedConv(activation Relu): the graph ONNX Runtime's CPU provider builds
  for itself (every output the same bit for bit there), and one its CUDA provider, in version
  1.31, does not build: on an H200 each of the 14 convolutions with a Relu ran as three kernels,
  the convolution, cuDNN's bias add and the Relu, together 1.1 of a batch's 5.9 ms.
- Conv + Add + Relu (a gate: theta(x), then + upsampled phi(g), then Relu) becomes FusedConv
  with the Add's other input as `Z`: the 64-channel full-resolution sum is never written and
  read back. The CPU provider adds the products onto `Z`, another order of the same sums.

Every file is checked against the original on random images before it is written (labels,
and `--tolerance`). On the CPU the form costs 27% less CPU an item end to end (BENCHMARKS.md,
"The fused form of the model on the CPU"); on the GPU it is a variant of scripts/gpu/run.sh.
It stays a second form beside the model, not the model: `com.microsoft` operators are ONNX
Runtime's own, which other ONNX readers lack, and its outputs are not the model's bit for bit.
Each shipped model has one, recorded in its card (`--card`: the file, its sha256, and how far it
lies from the model on the test batch):

    python -m radiogate_model.fuse ../models/agcnn-mirabest-confident.onnx \
        ../models/agcnn-mirabest-confident-fused.onnx --card ../models/agcnn-mirabest-confident.card.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .evaluate import compare, largest_difference

DOMAIN = "com.microsoft"


def fuse_convolutions(model: onnx.ModelProto, *, add: bool = True) -> tuple[onnx.ModelProto, Counter]:
    """The model with every Conv whose only reader is a Relu, or an Add whose only reader is a
    Relu (with `add`), replaced by one FusedConv; returns it and how many of each it fused
    ("relu", "add_relu")."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    readers: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    outputs = {o.name for o in graph.output}

    def only_reader(node: onnx.NodeProto, op_type: str) -> onnx.NodeProto | None:
        """The single node that reads `node`'s output, if it is an `op_type` and the output
        is not also a graph output."""
        out = node.output[0]
        found = readers[out]
        return found[0] if len(found) == 1 and found[0].op_type == op_type and out not in outputs else None

    # Each fused node goes where its Relu was: every input it reads (a gate's Z included) is
    # made before that point.
    fused_at: dict[str, onnx.NodeProto] = {}
    removed: set[str] = set()
    counts: Counter = Counter()
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
            continue
        inputs = list(conv.input) + [""] * (3 - len(conv.input))
        relu = only_reader(conv, "Relu")
        absorbed = [conv]
        if relu is not None:
            counts["relu"] += 1
        elif add and (sum_node := only_reader(conv, "Add")) is not None:
            relu = only_reader(sum_node, "Relu")
            others = [name for name in sum_node.input if name != conv.output[0]]
            if relu is None or len(others) != 1:
                continue
            inputs.append(others[0])
            absorbed.append(sum_node)
            counts["add_relu"] += 1
        else:
            continue
        node = helper.make_node(
            "FusedConv", inputs, list(relu.output), name=f"{conv.name}/fused", domain=DOMAIN, activation="Relu"
        )
        node.attribute.extend(conv.attribute)
        fused_at[relu.name or relu.output[0]] = node
        removed.update(n.name or n.output[0] for n in absorbed)
    if not counts:
        return model, counts
    nodes = []
    for node in graph.node:
        key = node.name or node.output[0]
        if key in fused_at:
            nodes.append(fused_at[key])
        elif key not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model, counts


def _resize_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each Resize node's input and output shapes, by its output's name, from one run of the
    model on a blank image (the sizes a Resize gets are computed in the graph, so shape
    inference does not know them)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    resizes = [n for n in probe.graph.node if n.op_type == "Resize"]
    if not resizes:
        return {}
    names = list(dict.fromkeys(name for n in resizes for name in (n.input[0], n.output[0])))
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    image = probe.graph.input[0]
    shape = [d.dim_value or 1 for d in image.type.tensor_type.shape.dim]
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(names, session.run(names, {image.name: np.zeros(shape, np.float32)}), strict=True))
    return {n.output[0]: (values[n.input[0]].shape, values[n.output[0]].shape) for n in resizes}


def linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: ONNX Resize's linear interpolation along one axis (`half_pixel`) as a
    matrix: row i weighs the two source pixels around (i + 0.5) / (n_out / n_in) - 0.5, clamped
    to the edges (PyTorch's `align_corners=False`), in float32 as ONNX Runtime computes it."""
    f32 = np.float32
    scale = f32(n_out) / f32(n_in)
    weights = np.zeros((n_out, n_in), dtype=f32)
    for i in range(n_out):
        src = min(max((f32(i) + f32(0.5)) / scale - f32(0.5), f32(0)), f32(n_in - 1))
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        frac = f32(src - f32(lo))
        weights[i, lo] += f32(1) - frac
        weights[i, hi] += frac
    return weights


def upsample_as_matmuls(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with every bilinear upsampling of the last two axes (Resize, `linear`,
    `half_pixel`, batch and channels kept) taken as two matrix products, along x then along y;
    returns it and how many it replaced. The nodes that only computed their sizes go too."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    shapes = _resize_shapes(model)
    nodes, replaced = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape_in, shape_out = shapes.get(node.output[0], ((), ())) if node.op_type == "Resize" else ((), ())
        if not (
            node.op_type == "Resize"
            and attrs.get("mode") == b"linear"
            and attrs.get("coordinate_transformation_mode") == b"half_pixel"
            and not attrs.get("antialias", 0)
            and len(shape_in) == len(shape_out) == 4
            and shape_in[:2] == shape_out[:2]
            and all(o >= i for i, o in zip(shape_in[2:], shape_out[2:], strict=True))
        ):
            nodes.append(node)
            continue
        (h, w), (out_h, out_w) = shape_in[2:], shape_out[2:]
        rows, cols = f"{node.name}/rows", f"{node.name}/cols"
        graph.initializer.append(numpy_helper.from_array(linear_weights(h, out_h), rows))
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(linear_weights(w, out_w).T), cols))
        along_x = f"{node.name}/along_x"
        nodes.append(helper.make_node("MatMul", [node.input[0], cols], [along_x], name=along_x))
        nodes.append(helper.make_node("MatMul", [rows, along_x], [node.output[0]], name=f"{node.name}/along_y"))
        replaced += 1
    # Drop what nothing reads any more (the Shape, Slice and Concat nodes of the sizes).
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for n in nodes for name in n.input} | outputs
        kept = [n for n in nodes if any(o in read for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input} | outputs
    kept_init = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)
    return model, replaced


def fused_form(model: onnx.ModelProto, *, add: bool = True, upsample: bool = True) -> tuple[onnx.ModelProto, Counter]:
    """The model's fused form: the upsamplings as matrix products (with `upsample`), then the
    convolutions fused ([`fuse_convolutions`]); returns it and the counts ("relu",
    "add_relu", "upsample")."""
    counts: Counter = Counter()
    if upsample:
        model, counts["upsample"] = upsample_as_matmuls(model)
    model, fused = fuse_convolutions(model, add=add)
    return model, counts + fused


def fuse_file(
    src: Path, out: Path, *, add: bool = True, upsample: bool = True, tolerance: float = 1e-5
) -> tuple[Counter, float]:
    """Writes the fused form of the model file src to out, refusing one whose outputs differ
    from the original's by more than `tolerance`; returns the counts and the difference."""
    original = onnx.load(src)
    model, counts = fused_form(original, add=add, upsample=upsample)
    difference = largest_difference(original, model)
    if not difference <= tolerance:
        raise RuntimeError(f"{src}: the fused model's outputs differ from the original's by {difference:.3g}")
    onnx.save(model, out)
    return counts, difference


SECTION = "## ONNX Runtime's fused form"


def card_form(model: Path, fused: Path, counts: Counter, subset: str, data_dir: Path) -> dict:
    """The fused form's entry in its model's card: file, sha256, what was fused, and how far
    it lies from the model on the subset's test batch (radiogate_model.evaluate.compare)."""
    comparison = compare(model, fused, subset, data_dir)
    del comparison["model"]
    return {
        "file": fused.name,
        "sha256": hashlib.sha256(fused.read_bytes()).hexdigest(),
        "fused": {
            "conv_relu": counts["relu"],
            "conv_add_relu": counts["add_relu"],
            "upsample_matmul": counts["upsample"],
        },
        "test_batch": comparison,
        "reproduce": f"cd python && python -m radiogate_model.fuse ../models/{model.name} ../models/{fused.name} "
        f"--card ../models/{model.stem}.card.json",
    }


def render_section(form: dict) -> str:
    t = form["test_batch"]
    attention = max(t["max_attention_diff"].values(), default=0.0)
    if t["max_prob_diff"] == attention == 0 and t["labels_differ"] == 0:
        outputs = (
            f"on the {t['images']} test images its outputs are this model's bit for bit (the fused sums may "
            "round otherwise elsewhere, in float32's last bits)"
        )
    else:
        outputs = (
            f"its outputs are this model's to float32 rounding, not bit for bit: on the {t['images']} test "
            f"images {t['labels_differ']} labels differ, the FRII probability lies within "
            f"{t['max_prob_diff']:.1e} and the attention maps within {attention:.1e}"
        )
    return "\n".join(
        [
            SECTION,
            "",
            f"`models/{form['file']}`, sha256 `{form['sha256']}`: this model with {form['fused']['conv_relu']} "
            f"Conv + Relu and {form['fused']['conv_add_relu']} Conv + Add + Relu (the gates' sums) as ONNX "
            f"Runtime's FusedConv (`com.microsoft`), and the gates' {form['fused']['upsample_matmul']} bilinear "
            "upsamplings as two matrix products each, for ONNX Runtime only. On the CPU it costs less an image "
            f"(BENCHMARKS.md); {outputs}. Every number on this card is the model's; choose the form with "
            "`inference.model`.",
            "",
            f"Reproduce: `{form['reproduce']}`.",
            "",
        ]
    )


def update_card(card_path: Path, form: dict) -> None:
    """Writes the form into the card JSON (`forms.fused`, other keys untouched) and its section
    into the card Markdown."""
    from .agreement import BEFORE, with_section

    card = json.loads(card_path.read_text())
    card.setdefault("forms", {})["fused"] = form
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    md_path = card_path.with_name(card_path.name.removesuffix(".json") + ".md")
    md_path.write_text(with_section(md_path.read_text(), render_section(form), heading=SECTION, before=BEFORE))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--no-add", action="store_true", help="leave the gates' Adds alone")
    p.add_argument("--no-upsample", action="store_true", help="leave the upsamplings as Resize")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest output difference allowed")
    p.add_argument("--card", type=Path, help="record the form in this model card (JSON; its .md beside it)")
    p.add_argument("--data-dir", type=Path, default=None)
    a = p.parse_args(argv)
    counts, difference = fuse_file(a.model, a.out, add=not a.no_add, upsample=not a.no_upsample, tolerance=a.tolerance)
    digest = hashlib.sha256(a.out.read_bytes()).hexdigest()
    print(
        f"{counts['upsample']} upsamplings as matrix products; fused {counts['relu']} Conv+Relu and "
        f"{counts['add_relu']} Conv+Add+Relu; "
        f"largest output difference on the CPU {difference:.3g}; sha256 {digest}"
    )
    if a.card:
        from .data import default_data_dir

        subset = json.loads(a.card.read_text())["subset"]
        form = card_form(a.model, a.out, counts, subset, a.data_dir or default_data_dir())
        update_card(a.card, form)
        print(render_section(form))


if __name__ == "__main__":
    main()
