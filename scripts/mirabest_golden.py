#!/usr/bin/env python3
"""Dumps a MiraBest CIFAR-style batch as plain files that Rust tests can read.

    python3 scripts/mirabest_golden.py OUT_DIR [--batch ../shared/data/mirabest/test_batch]

Writes OUT_DIR/index.tsv (one line per image: the file stem as in the FITS cutouts, e.g.
100_114.330+029.492_0.1105_0034.32, a tab, and the label) and OUT_DIR/images.u8 (the
150x150 uint8 images, row-major, concatenated in index order). The pickle holds numpy
arrays, which is why this step is Python (numpy only).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path, PurePosixPath

import numpy as np

DEFAULT_BATCH = Path(__file__).resolve().parent.parent.parent / "shared/data/mirabest/test_batch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write index.tsv and images.u8 into")
    parser.add_argument("--batch", type=Path, default=DEFAULT_BATCH, help="MiraBest batch pickle")
    args = parser.parse_args()

    with args.batch.open("rb") as f:
        batch = pickle.load(f, encoding="latin1")
    images = [np.asarray(a, dtype=np.uint8) for a in batch["data"]]
    stems = [PurePosixPath(str(name)).stem for name in batch["filenames"]]
    labels = [int(label) for label in batch["labels"]]
    if not (len(images) == len(stems) == len(labels)):
        raise SystemExit(f"inconsistent batch: {len(images)} images, {len(stems)} names, {len(labels)} labels")
    for stem, image in zip(stems, images, strict=True):
        if image.shape != (150, 150):
            raise SystemExit(f"{stem}: image shape {image.shape}, expected (150, 150)")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.tsv").write_text("".join(f"{s}\t{lab}\n" for s, lab in zip(stems, labels, strict=True)))
    (args.out / "images.u8").write_bytes(b"".join(np.ascontiguousarray(i).tobytes() for i in images))
    print(f"wrote {len(images)} images to {args.out}")


if __name__ == "__main__":
    main()
