"""A copy of a model with each convolution fused with the Relu (and a gate's Add) after it, as
ONNX Runtime's own FusedConv operator, for its CUDA provider.

ONNX Runtime makes this fusion itself for its CPU provider, but version 1.31 does not for the
CUDA provider: on an H200 each of the shipped model's 14 convolutions with a Relu ran as
three kernels, the convolution, cuDNN's bias add (`op_generic_tensor_kernel`) and the Relu
(`_UnaryElementWise`), together 1.1 of a batch's 5.9 ms of GPU time (TF32, batch 128;
benches/results/gpu-h200-2026-11-28/profile2), and each gate's theta(x) + upsampled phi(g)
took an Add and a Relu over 64-channel tensors at the gate's full resolution. A FusedConv
(`com.microsoft`) runs a convolution, its bias, an optional tensor `Z` added to it, and the
Relu as one cuDNN call.

- Conv + Relu becomes FusedConv(activation Relu): the graph ONNX Runtime's CPU provider
  builds for itself, so on the CPU every output is the same bit for bit.
- Conv + Add + Relu (a gate: theta(x), then + upsampled phi(g), then Relu) becomes FusedConv
  with the Add's other input as `Z`. The CPU provider then adds the products onto `Z`, a
  different order of the same sums: outputs within a few 1e-7 (checked against `tolerance`
  before a file is written; `--no-add` leaves the gates' Adds alone).

On the CPU the gates' fused sums are what pays: the full-resolution gate no longer writes and
reads back two 64-channel tensors (BENCHMARKS.md: 15% less CPU an item end to end on the 2-core
build machine). It stays a second form beside the model, not the model: `com.microsoft`
operators are ONNX Runtime's own, which other ONNX readers lack, and its outputs are not the
model's bit for bit. Each shipped model has one, recorded in its card (`--card`: the file, its
sha256, and how far it lies from the model on the test batch), and the GPU benchmark times the
MiraBest* model's as its `fused` variant (scripts/gpu/run.sh):

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
from onnx import helper

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


def largest_difference(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> float:
    """The largest difference between two models' outputs on random images at a few batch
    sizes (ONNX Runtime's CPU provider); infinite where a label (the larger probability)
    differs."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (a, b)]
    rng = np.random.default_rng(seed)
    largest = 0.0
    for size in (1, 3, 8):
        image = rng.uniform(-1, 1, (size, 1, 150, 150)).astype(np.float32)
        want, got = (s.run(None, {"image": image}) for s in sessions)
        if not np.array_equal(want[0].argmax(axis=1), got[0].argmax(axis=1)):
            return float("inf")
        for x, y in zip(want, got, strict=True):
            largest = max(largest, float(np.abs(x.astype(np.float64) - y).max()))
    return largest


def fuse_file(src: Path, out: Path, *, add: bool = True, tolerance: float = 1e-5) -> tuple[Counter, float]:
    """Writes the fused copy of the model file src to out, refusing one whose outputs differ
    from the original's by more than `tolerance`; returns the counts and the difference."""
    original = onnx.load(src)
    model, counts = fuse_convolutions(original, add=add)
    difference = largest_difference(original, model)
    if not difference <= tolerance:
        raise RuntimeError(f"{src}: the fused model's outputs differ from the original's by {difference:.3g}")
    onnx.save(model, out)
    return counts, difference


SECTION = "## ONNX Runtime's fused form"


def card_form(model: Path, fused: Path, counts: Counter, subset: str, data_dir: Path) -> dict:
    """The fused form's entry in its model's card: file, sha256, what was fused, and how far
    it lies from the model on the subset's test batch (radiogate_model.evaluate.compare)."""
    from .evaluate import compare

    comparison = compare(model, fused, subset, data_dir)
    del comparison["model"]
    return {
        "file": fused.name,
        "sha256": hashlib.sha256(fused.read_bytes()).hexdigest(),
        "fused": {"conv_relu": counts["relu"], "conv_add_relu": counts["add_relu"]},
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
            "Runtime's FusedConv (`com.microsoft`), for ONNX Runtime only. On the CPU it costs less an image "
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
    p.add_argument("--no-add", action="store_true", help="fuse Conv + Relu only (outputs identical on the CPU)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest output difference allowed")
    p.add_argument("--card", type=Path, help="record the form in this model card (JSON; its .md beside it)")
    p.add_argument("--data-dir", type=Path, default=None)
    a = p.parse_args(argv)
    counts, difference = fuse_file(a.model, a.out, add=not a.no_add, tolerance=a.tolerance)
    digest = hashlib.sha256(a.out.read_bytes()).hexdigest()
    print(
        f"fused {counts['relu']} Conv+Relu and {counts['add_relu']} Conv+Add+Relu; "
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
