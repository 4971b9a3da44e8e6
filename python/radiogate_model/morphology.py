"""The extent of the emission in a model image, measured as the worker measures it
(src/preprocess/emission.rs), and its range over the MiraBest images a model was trained on.

Emission: pixels above 0 in the 8-bit image. Islands: 8-connected groups of them with at
least MIN_ISLAND_PIXELS pixels (about FIRST's beam area) and a peak of at least 5/3 of the
image's faintest emission (which lies just above 3 sigma: about 5 sigma); smaller or fainter
groups are noise. Largest angular size: the longest distance between the centres of two
pixels of the islands. Truncated: an island reaches the image's edge (the source may go on
beyond it; its size is then a lower bound). The worker reports these for every classification
(`emission`), so a survey's source can be set against the training images' range written on the
model card.

    python -m radiogate_model.morphology shapes IMAGES.u8    # islands, pixels, size (px), truncated
    python -m radiogate_model.morphology card --card ../models/agcnn-mirabest-confident.card.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from .data import CLASS_NAMES, SUBSETS, default_data_dir, load_split, normalise

MIN_ISLAND_PIXELS = 10
PIXEL_ARCSEC = 1.8
SIDE = 150
SECTION = "## Emission extent of the training images"
PERCENTILES = (1, 5, 50, 95, 99)


class Shape(NamedTuple):
    islands: int
    pixels: int
    size: float
    """Largest size, in pixels."""
    truncated: bool
    """An island reaches the image's edge."""


def measure(image: np.ndarray) -> Shape:
    """The counted islands of one 8-bit image, their pixels, largest size and whether they
    reach its edge."""
    labels, n = ndimage.label(image > 0, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return Shape(0, 0, 0.0, False)
    sizes = np.bincount(labels.ravel())
    peaks = np.zeros(n + 1, dtype=np.int64)
    np.maximum.at(peaks, labels.ravel(), image.ravel().astype(np.int64))
    faintest = int(image[image > 0].min())
    counted = (sizes >= MIN_ISLAND_PIXELS) & (3 * peaks >= 5 * faintest)
    counted[0] = False
    kept = np.flatnonzero(counted)
    mask = np.isin(labels, kept)
    truncated = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    points = np.argwhere(mask).astype(float)
    if len(points) < 2:
        return Shape(len(kept), len(points), 0.0, truncated)
    # All on one line, the hull cannot be made: every point is then a candidate.
    with contextlib.suppress(QhullError):
        points = points[ConvexHull(points).vertices]
    return Shape(len(kept), int(sizes[kept].sum()), float(pdist(points).max()), truncated)


def distribution(images: np.ndarray) -> dict:
    """Percentiles of the largest angular size (arcsec), the shares of 1, 2 and 3+ islands and
    the share truncated."""
    shapes = [measure(i) for i in images]
    islands = np.array([s.islands for s in shapes])
    las = np.array([s.size for s in shapes]) * PIXEL_ARCSEC
    return {
        "n": len(images),
        "las_arcsec": {str(p): round(float(np.percentile(las, p)), 1) for p in PERCENTILES},
        "islands": {
            "1": round(float(np.mean(islands == 1)), 3),
            "2": round(float(np.mean(islands == 2)), 3),
            "3+": round(float(np.mean(islands >= 3)), 3),
            "0": round(float(np.mean(islands == 0)), 3),
        },
        "truncated": round(float(np.mean([s.truncated for s in shapes])), 3),
    }


def accuracy_by_extent(model: Path, subset: str, data_dir: Path) -> tuple[list[dict], dict]:
    """The model's single-pass test accuracy in the thirds of the test batch by largest angular
    size (smallest first), and on the truncated test images against the others."""
    from .evaluate import session

    test = load_split(data_dir, subset, train=False)
    probs = session(model).run(["probs"], {"image": normalise(test.images)})[0]
    correct = probs.argmax(1) == test.labels
    shapes = [measure(i) for i in test.images]
    las = np.array([s.size for s in shapes]) * PIXEL_ARCSEC
    edges = np.quantile(las, [1 / 3, 2 / 3])
    third = np.digitize(las, edges)
    bounds = [float(las.min()), *map(float, edges), float(las.max())]

    def scores(selected: np.ndarray) -> dict:
        return {
            "images": int(selected.sum()),
            "accuracy": round(float(correct[selected].mean()), 3) if selected.any() else None,
            "mean_confidence": round(float(probs.max(1)[selected].mean()), 3) if selected.any() else None,
        }

    thirds = [{"las_arcsec": [round(bounds[t], 1), round(bounds[t + 1], 1)], **scores(third == t)} for t in range(3)]
    truncated = np.array([s.truncated for s in shapes])
    return thirds, {"truncated": scores(truncated), "whole": scores(~truncated)}


def card_entry(subset: str, data_dir: Path, card: str, model: Path) -> dict:
    rows = []
    for name, train in (("training batches", True), ("test batch", False)):
        split = load_split(data_dir, subset, train=train)
        for label, cls in enumerate(CLASS_NAMES):
            rows.append({"images": name, "class": cls, **distribution(split.images[split.labels == label])})
    thirds, by_edge = accuracy_by_extent(model, subset, data_dir)
    return {
        "rows": rows,
        "accuracy_by_size": thirds,
        "accuracy_by_edge": by_edge,
        "min_island_pixels": MIN_ISLAND_PIXELS,
        "pixel_arcsec": PIXEL_ARCSEC,
        "reproduce": f"cd python && python -m radiogate_model.morphology card --card ../models/{card}",
    }


def render_section(entry: dict) -> str:
    head = "| images | class | n | LAS 1% | 5% | median | 95% | 99% | islands: 1 / 2 / 3+ | truncated |"
    lines = [
        SECTION,
        "",
        "How large is the emission the model learnt from? Each image measured as the worker measures a "
        "source's `emission` (src/preprocess/emission.rs): islands of at least "
        f"{entry['min_island_pixels']} touching pixels above 0 in the 8-bit image (about FIRST's beam area) "
        "whose peak is at least 5/3 of the image's faintest emission (about 5 sigma; smaller or fainter groups "
        "are noise above 3 sigma), and the largest angular size (LAS) between the centres of two of their "
        f"pixels, at {entry['pixel_arcsec']} arcsec a pixel. Truncated: an island reaches the edge of the "
        f"{SIDE} x {SIDE} image (the source may go on beyond it, and its LAS is a lower bound).",
        "",
        head,
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in entry["rows"]:
        las = r["las_arcsec"]
        isl = r["islands"]
        sizes = " | ".join(f"{las[str(p)]}″" for p in PERCENTILES)
        shares = f"{isl['1']:.0%} / {isl['2']:.0%} / {isl['3+']:.0%}"
        lines.append(f"| {r['images']} | {r['class']} | {r['n']} | {sizes} | {shares} | {r['truncated']:.0%} |")
    lines += [
        "",
        "The shipped model's single-pass test accuracy in thirds of the test batch by LAS:",
        "",
        "| LAS | images | accuracy | mean confidence |",
        "|---|---|---|---|",
    ]
    for t in entry["accuracy_by_size"]:
        low, high = t["las_arcsec"]
        lines.append(f"| {low}-{high}″ | {t['images']} | {t['accuracy']:.1%} | {t['mean_confidence']:.3f} |")
    edge = entry["accuracy_by_edge"]
    cut, whole = edge["truncated"], edge["whole"]
    if cut["images"]:
        lines += [
            "",
            f"Truncated test images: {cut['images']}, accuracy {cut['accuracy']:.1%} (mean confidence "
            f"{cut['mean_confidence']:.3f}); the other {whole['images']}: {whole['accuracy']:.1%} "
            f"({whole['mean_confidence']:.3f}); with {cut['images']} images one error is "
            f"{100 / cut['images']:.0f} points of accuracy, so this is a hint, not a measurement. Results flag such "
            "sources (`emission.truncated`, ECSV `truncated`): the model saw only part of them (its image is "
            f"{SIDE} x {SIDE} pixels, {SIDE * PIXEL_ARCSEC / 60:.1f} arcmin at FIRST's pixels).",
        ]
    training = [r for r in entry["rows"] if r["images"] == "training batches"]
    floor = min(r["las_arcsec"]["1"] for r in training)
    lines += [
        "",
        "Within the training range the largest third is the hardest (with a third of the test batch "
        "in each row, one image is 2-3 points of accuracy). Below the range no test image says how the "
        f"model does: a source whose LAS is under about {floor}″ (the training images' 1st percentile) "
        "is more compact than nearly anything the model learnt from, and its label should not be "
        "trusted. Filter on `emission.largest_angular_size_arcsec` (JSON Lines) or `las` (ECSV).",
        "",
        f"Reproduce: `{entry['reproduce']}`.",
        "",
    ]
    return "\n".join(lines)


def update_card(card_path: Path, entry: dict) -> None:
    """Writes the entry into the card JSON (`emission_extent`) and its section into the card
    Markdown (before the departures from the authors' code)."""
    from .agreement import BEFORE, with_section

    card = json.loads(card_path.read_text())
    card["emission_extent"] = entry
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    md_path = card_path.with_name(card_path.name.removesuffix(".json") + ".md")
    md_path.write_text(with_section(md_path.read_text(), render_section(entry), heading=SECTION, before=BEFORE))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    shapes = sub.add_parser("shapes", help="islands, pixels and largest size (px) of each image of a .u8 file")
    shapes.add_argument("images", type=Path, help="150x150 uint8 images, row-major, concatenated")
    card = sub.add_parser("card", help="the training images' range, written into a model card")
    card.add_argument("--card", type=Path, required=True, help="model card JSON (its .md beside it)")
    card.add_argument("--data-dir", type=Path, default=None)
    a = p.parse_args(argv)
    if a.command == "shapes":
        images = np.fromfile(a.images, dtype=np.uint8).reshape(-1, SIDE, SIDE)
        for image in images:
            shape = measure(image)
            print(f"{shape.islands}\t{shape.pixels}\t{shape.size:.6f}\t{int(shape.truncated)}")
        return
    subset = json.loads(a.card.read_text())["subset"]
    if subset not in SUBSETS:
        raise SystemExit(f"unknown subset {subset!r} in {a.card}")
    model = a.card.parent / json.loads(a.card.read_text())["file"]
    entry = card_entry(subset, a.data_dir or default_data_dir(), a.card.name, model)
    update_card(a.card, entry)
    print(render_section(entry))


if __name__ == "__main__":
    main()
