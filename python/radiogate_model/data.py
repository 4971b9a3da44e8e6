"""MiraBest: the CIFAR-style batches, the two binary subsets, the seeded split."""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Label index order of batches.meta.
LABEL_CODES = ("100", "102", "104", "110", "112", "200", "201", "210", "300", "310")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 8))
TEST_BATCH = "test_batch"
CLASS_NAMES = ("FRI", "FRII")

# Subset name -> (FRI codes, FRII codes). Hybrids (3xx) are never used.
SUBSETS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # MiraBest*: confident sources only.
    "mirabest_confident": (frozenset({"100", "102", "104"}), frozenset({"200", "201"})),
    # MiraBest: confident and uncertain.
    "mirabest": (frozenset({"100", "102", "104", "110", "112"}), frozenset({"200", "201", "210"})),
}


def default_data_dir() -> Path:
    env = os.environ.get("MIRABEST_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "mirabest"


@dataclass
class Split:
    """uint8 images [N,150,150], binary labels (0 FRI, 1 FRII), original codes, file names."""

    images: np.ndarray
    labels: np.ndarray
    codes: list[str]
    filenames: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Split:
        return Split(
            self.images[index],
            self.labels[index],
            [self.codes[i] for i in index],
            [self.filenames[i] for i in index],
        )


def binary_label(code: str, subset: str) -> int | None:
    """0 for FRI, 1 for FRII, None when the code is outside the subset."""
    fri, frii = SUBSETS[subset]
    if code in fri:
        return 0
    if code in frii:
        return 1
    return None


def _read_batch(path: Path) -> tuple[np.ndarray, list[int], list[str]]:
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="latin1")
    data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 150, 150)
    names = [Path(str(n)).name for n in batch["filenames"]]
    return data, list(batch["labels"]), names


def load_split(data_dir: Path, subset: str, train: bool) -> Split:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {sorted(SUBSETS)}")
    names = TRAIN_BATCHES if train else (TEST_BATCH,)
    images, labels, codes, files = [], [], [], []
    for name in names:
        data, idx, fnames = _read_batch(data_dir / name)
        for img, i, fname in zip(data, idx, fnames, strict=True):
            code = LABEL_CODES[i]
            label = binary_label(code, subset)
            if label is None:
                continue
            images.append(img)
            labels.append(label)
            codes.append(code)
            files.append(fname)
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64), codes, files)


def train_val_split(train: Split, seed: int, val_fraction: float = 0.2) -> tuple[Split, Split]:
    """A seeded, stratified split of the training batches (the test batch is never touched)."""
    rng = np.random.default_rng(seed)
    val_idx: list[int] = []
    for label in (0, 1):
        idx = np.flatnonzero(train.labels == label)
        rng.shuffle(idx)
        val_idx.extend(idx[: round(len(idx) * val_fraction)].tolist())
    val_mask = np.zeros(len(train), dtype=bool)
    val_mask[val_idx] = True
    return train.take(np.flatnonzero(~val_mask)), train.take(np.flatnonzero(val_mask))


def normalise(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [N,150,150] -> float32 [N,1,150,150] in [-1, 1] (the export contract's input)."""
    x = images_u8.astype(np.float32) / 255.0
    return ((x - 0.5) / 0.5)[:, None, :, :]


def data_checksums(data_dir: Path) -> dict[str, str]:
    out = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        out[name] = hashlib.sha256((data_dir / name).read_bytes()).hexdigest()
    return out
