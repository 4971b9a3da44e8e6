#!/usr/bin/env python3
"""Writes the inference test fixtures under tests/data/ (run from anywhere):

- mirabest-sample.u8.zst: 16 MiraBest test_batch images (8 FRI, 8 FRII), uint8 150x150
  row-major, concatenated, zstd-compressed; mirabest-sample.json names them.
- infer-golden.json: what Python onnxruntime says about those images through the model
  (probs and per-gate attention statistics), with the model's sha256 so a test can tell a
  stale golden file from a regression.
- wrong-contract.onnx: a tiny model that breaks the export contract (input `x` of 64x64,
  output `logits`), for the contract test.

    python3 scripts/infer-golden.py [--model models/agcnn-mirabest-confident.onnx] [--mirabest ../shared/data/mirabest]

Needs numpy, onnx, onnxruntime and the zstd command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SIDE = 150
PER_CLASS = 8
SAMPLES = 16


def sample(mirabest: Path) -> tuple[np.ndarray, list[dict]]:
    """The first PER_CLASS FRI (1xx) and FRII (2xx) images of test_batch, in file order."""
    with open(mirabest / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    with open(mirabest / "batches.meta", "rb") as f:
        codes = pickle.load(f, encoding="latin1")["label_names"]
    picked: dict[str, list[int]] = {"FRI": [], "FRII": []}
    for i, label in enumerate(batch["labels"]):
        cls = {"1": "FRI", "2": "FRII"}.get(codes[label][0])
        if cls and len(picked[cls]) < PER_CLASS:
            picked[cls].append(i)
    order = picked["FRI"] + picked["FRII"]
    images = np.asarray(batch["data"], dtype=np.uint8)[order]
    meta = [{"name": Path(str(batch["filenames"][i])).stem, "label": cls} for cls, idx in picked.items() for i in idx]
    return images, meta


def normalise(images: np.ndarray) -> np.ndarray:
    """The training normalisation, in float32 as the worker does it: (u8/255 - 0.5)/0.5."""
    x = images.astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(0.5)) / np.float32(0.5))[:, None, :, :]


def sample_indices(n: int) -> np.ndarray:
    """SAMPLES evenly spaced indices into n values; the Rust test computes the same."""
    return np.arange(SAMPLES) * (n - 1) // (SAMPLES - 1)


def golden(model: Path, images: np.ndarray) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"image": normalise(images)}), strict=True))
    gates = sorted(n for n in names if n.startswith("attention_"))
    per_image = []
    for i in range(len(images)):
        maps = [out[g][i, 0] for g in gates]
        per_image.append(
            {
                "probs": [float(p) for p in out["probs"][i]],
                "attention": [
                    {
                        "side": int(m.shape[0]),
                        "sum": float(m.astype(np.float64).sum()),
                        "argmax": int(np.argmax(m)),
                        # Values at SAMPLES evenly spaced flat indices (row-major).
                        "samples": [float(v) for v in m.reshape(-1)[sample_indices(m.size)]],
                    }
                    for m in maps
                ],
            }
        )
    return {
        "model": model.name,
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "onnxruntime": ort.__version__,
        "images": per_image,
    }


def wrong_contract() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 64, 64])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 64, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "wrong", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "agcnn-mirabest-confident.onnx")
    p.add_argument("--mirabest", type=Path, default=ROOT.parent / "shared" / "data" / "mirabest")
    a = p.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)

    images, meta = sample(a.mirabest)
    raw = DATA / "mirabest-sample.u8"
    raw.write_bytes(images.tobytes())
    subprocess.run(["zstd", "-q", "-f", "-19", "--rm", str(raw)], check=True)
    (DATA / "mirabest-sample.json").write_text(json.dumps({"side": SIDE, "images": meta}, indent=1) + "\n")

    (DATA / "infer-golden.json").write_text(json.dumps(golden(a.model, images), indent=1) + "\n")
    onnx.save(wrong_contract(), DATA / "wrong-contract.onnx")
    for f in sorted(DATA.glob("*")):
        print(f"{f.relative_to(ROOT)}  {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
