"""Export an AG-CNN to ONNX under the contract the Rust worker checks at start.

Input `image` float32 [N,1,150,150] in [-1,1]; outputs `probs` [N,2] (0 FRI, 1 FRII) and
`attention_1..k` [N,1,H,W], each gate's normalised map. Opset 17, dynamic batch axis. Each
map's min and max are then rewritten as global max pools (radiogate_model.reductions: the same
outputs, bit for bit, and fast on ONNX Runtime's CUDA provider).

    python -m radiogate_model.export --run runs/mbc-s1 --out models/agcnn.onnx
    python -m radiogate_model.export --random --seed 0 --out stand-in.onnx
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from .model import AGCNN, ExportWrapper, ModelConfig
from .reductions import rewrite_file

OPSET = 17


def export(model: AGCNN, out: Path) -> str:
    """Writes the ONNX file, its reductions rewritten; returns its sha256."""
    export_graph(model, out)
    rewrite_file(out, out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def export_graph(model: AGCNN, out: Path) -> None:
    """Writes the ONNX file as PyTorch exports it."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    model.fold_pooling()
    wrapper = ExportWrapper(model).eval()
    names = [f"attention_{i + 1}" for i in range(model.config.gates)]
    dummy = torch.zeros(2, 1, 150, 150)
    dynamic = {"image": {0: "batch"}, "probs": {0: "batch"}} | {n: {0: "batch"} for n in names}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapper,
        (dummy,),
        str(out),
        input_names=["image"],
        output_names=["probs", *names],
        dynamic_axes=dynamic,
        opset_version=OPSET,
        dynamo=False,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="training run folder (best.pt, training.json)")
    src.add_argument("--random", action="store_true", help="random weights: a stand-in that keeps the contract")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.random:
        torch.manual_seed(a.seed)
        model = AGCNN(ModelConfig())
    else:
        from .train import load_checkpoint

        model = load_checkpoint(a.run)
    print(export(model, a.out))


if __name__ == "__main__":
    main()
