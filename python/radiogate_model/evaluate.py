"""Evaluate a shipped ONNX model on the MiraBest test batch, single pass and with rotation TTA.

The numbers in the model cards come from this command, run on the committed ONNX file:

    python -m radiogate_model.evaluate --model ../models/agcnn-mirabest-confident.onnx \
        --subset mirabest_confident --tta 36

`--views 8` also scores the worker's test-time views (`[inference] views`: mirrors and quarter
turns, which move whole pixels), whose numbers README and docs/operations.md report.
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


def square_views(images: np.ndarray, count: int) -> list[np.ndarray]:
    """The views of `inference.views` (src/infer/views.rs) of images [N,1,H,W]: the images;
    and their mirrors (2); their quarter turns (4); or both (8)."""
    turns = {1: [0], 2: [0], 4: [0, 1, 2, 3], 8: [0, 1, 2, 3]}[count]
    mirrors = [False, True] if count in (2, 8) else [False]
    out = []
    for mirrored in mirrors:
        for k in turns:
            v = np.rot90(images, k, axes=(2, 3))
            out.append(np.ascontiguousarray(v[..., ::-1] if mirrored else v))
    return out


def evaluate(model: Path, subset: str, data_dir: Path, tta: int, views: int = 1) -> dict:
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
    if views > 1:
        images = normalise(test.images)
        probs = np.mean([predict(sess, v) for v in square_views(images, views)], axis=0)
        result["square_views"] = {"views": views, **classification_metrics(test.labels, probs)}
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--subset", choices=sorted(SUBSETS), required=True)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--tta", type=int, default=36, help="rotations for test-time augmentation (0: off)")
    p.add_argument(
        "--views",
        type=int,
        choices=[1, 2, 4, 8],
        default=1,
        help="also score the views of the worker's inference.views (mirrors and quarter turns)",
    )
    a = p.parse_args(argv)
    print(json.dumps(evaluate(a.model, a.subset, a.data_dir or default_data_dir(), a.tta, a.views), indent=2))


if __name__ == "__main__":
    main()
