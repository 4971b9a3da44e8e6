"""Evaluate a shipped ONNX model on the MiraBest test batch, single pass and with rotation TTA.

The numbers in the model cards come from this command, run on the committed ONNX file:

    python -m radiogate_model.evaluate --model ../models/agcnn-mirabest-confident.onnx \
        --subset mirabest_confident --tta 36
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .data import SUBSETS, default_data_dir, load_split, normalise
from .metrics import classification_metrics


def session(model: Path, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def compare(reference: Path, other: Path, subset: str, data_dir: Path) -> dict:
    """How far another form of a model (float16, fused) lies from it on the test batch: labels
    that differ, and the largest differences of the FRII probability and of each attention map."""
    images = normalise(load_split(data_dir, subset, train=False).images)
    full = session(reference)
    names = [o.name for o in full.get_outputs()]
    ref = full.run(names, {"image": images})
    out = session(other).run(names, {"image": images})
    dp = np.abs(out[0][:, 1] - ref[0][:, 1])
    return {
        "model": str(reference),
        "subset": subset,
        "images": len(images),
        "labels_differ": int(np.sum(out[0].argmax(1) != ref[0].argmax(1))),
        "max_prob_diff": float(dp.max()),
        "median_prob_diff": float(np.median(dp)),
        "max_attention_diff": {
            n: float(np.abs(a - b).max()) for n, a, b in zip(names[1:], out[1:], ref[1:], strict=True)
        },
    }


def largest_difference(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> float:
    """The largest difference between two forms of a model's outputs on random images at a few
    batch sizes (ONNX Runtime's CPU provider): 0 when they are the same bit for bit (but for
    the sign of a zero); infinite where a label (the larger probability) differs or a NaN
    stands in either."""
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (a, b)]
    rng = np.random.default_rng(seed)
    largest = 0.0
    for size in (1, 3, 8):
        image = rng.uniform(-1, 1, (size, 1, 150, 150)).astype(np.float32)
        want, got = (s.run(None, {"image": image}) for s in sessions)
        if not np.array_equal(want[0].argmax(axis=1), got[0].argmax(axis=1)):
            return float("inf")
        for x, y in zip(want, got, strict=True):
            diff = np.abs(x.astype(np.float64) - y)
            if np.isnan(diff).any():
                return float("inf")
            largest = max(largest, float(diff.max()))
    return largest


def predict(sess: ort.InferenceSession, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """images float32 [N,1,150,150] normalised -> probs [N,2]."""
    out = [sess.run(["probs"], {"image": images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(out)


def rotated_inputs(images_u8: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate uint8 images (bilinear, empty sky fill) and normalise them as the model expects."""
    import torch

    from .augment import rotate

    x = torch.from_numpy(images_u8.astype(np.float32) / 255.0)[:, None]
    r = rotate(x, degrees).numpy()
    return ((r - 0.5) / 0.5).astype(np.float32)


def evaluate(model: Path, subset: str, data_dir: Path, tta: int) -> dict:
    test = load_split(data_dir, subset, train=False)
    sess = session(model)
    single = predict(sess, normalise(test.images))
    result = {
        "model": str(model),
        "subset": subset,
        "n_test": len(test),
        "single_pass": classification_metrics(test.labels, single),
    }
    if tta > 1:
        probs = np.mean([predict(sess, rotated_inputs(test.images, 360.0 * k / tta)) for k in range(tta)], axis=0)
        result["rotation_tta"] = {"rotations": tta, **classification_metrics(test.labels, probs)}
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--subset", choices=sorted(SUBSETS), required=True)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--tta", type=int, default=36, help="rotations for test-time augmentation (0: off)")
    a = p.parse_args(argv)
    print(json.dumps(evaluate(a.model, a.subset, a.data_dir or default_data_dir(), a.tta), indent=2))


if __name__ == "__main__":
    main()
