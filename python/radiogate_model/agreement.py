"""How well does a model's attention agree with the radio emission? The paper (Bowles et al.
2021) compared its attention maps with the images by eye; this measures it on the MiraBest
test batch, per class, and writes the tables into the model card.

    python -m radiogate_model.agreement --model ../models/agcnn-mirabest-confident \
        --variants ../runs-agree/mirabest_confident-softmax-s1 ... --update-card

Definitions (the card repeats them):

- Combined map: as the worker builds its attention summary (src/summary.rs): each gate's map
  upsampled bilinearly to 150x150 (PyTorch's align_corners=False), negative or non-finite
  values set to 0, normalised to unit sum (all zero: uniform), then the gates' maps averaged.
- Emission: MiraBest images are already sigma-clipped (every pixel at or below 3 sigma set
  to 0 before min-max scaling to 0..255), so emission is every pixel above 0 in the released
  8-bit image. This is the worker's mask (pixels above its 3-sigma clipping threshold) except
  for clipped emission fainter than 1/255 of the image's peak, which the 8-bit conversion
  truncated to 0: the threshold itself cannot be recovered from the released images.
- Attention on emission: the combined map's sum over emission pixels. Baseline: uniform
  attention, whose fraction is the emission area fraction of the image.
- Attention peaks: the `PEAKS` strongest local maxima (8 neighbours) of the combined map summed
  into `grid` x `grid` cells, at cell centres, as the worker reports them (grid 150: pixels).
- Bright emission (cores, hotspots): pixels that are the maximum of their `BRIGHT_WINDOW` x
  `BRIGHT_WINDOW` neighbourhood (about the 5 arcsec FIRST beam) and at least `BRIGHT_FRACTION`
  of the image's peak. Peak distance: Euclidean distance from a peak to the nearest such pixel.
  Baselines: a uniformly random pixel (the distribution of that distance over every pixel) and
  the image centre, where MiraBest centres its sources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from .data import CLASS_NAMES, default_data_dir, load_split, normalise
from .evaluate import session

IMAGE_SIZE = 150
# FIRST pixels in MiraBest, arcsec.
PIXEL_ARCSEC = 1.8
# As src/summary.rs reports them.
PEAKS = 3
BRIGHT_FRACTION = 0.25
BRIGHT_WINDOW = 5
# The FIRST beam (5.4 arcsec FWHM) in pixels: attention this close to emission counts as near it.
BEAM_PX = 3.0
SECTION = "## Attention and emission"
# The card's section that the agreement section goes before, when present.
BEFORE = "## Departures from the authors' code"


def bilinear_matrix(side: int, out: int) -> np.ndarray:
    """[out, side] weights of a 1-D bilinear resize as F.interpolate(align_corners=False)."""
    scale = side / out
    src = np.maximum((np.arange(out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), side - 1)
    i1 = np.minimum(i0 + 1, side - 1)
    w = src - i0
    m = np.zeros((out, side))
    rows = np.arange(out)
    np.add.at(m, (rows, i0), 1.0 - w)
    np.add.at(m, (rows, i1), w)
    return m


def unit_sum(maps: np.ndarray) -> np.ndarray:
    """Each [H,W] map of [N,H,W] to unit sum; negative or non-finite values count as 0 and a
    map with nothing left becomes uniform."""
    m = np.where(np.isfinite(maps) & (maps > 0), maps, 0.0).astype(np.float64)
    sums = m.sum(axis=(1, 2), keepdims=True)
    uniform = np.full_like(m, 1.0 / (m.shape[1] * m.shape[2]))
    return np.where(sums > 0, m / np.where(sums > 0, sums, 1.0), uniform)


def combine(gate_maps: list[np.ndarray]) -> np.ndarray:
    """Gate maps [N,1,H,W] or [N,H,W] -> the combined map [N,150,150], summing to 1."""
    combined = np.zeros((len(gate_maps[0]), IMAGE_SIZE, IMAGE_SIZE))
    for gate in gate_maps:
        g = np.asarray(gate, dtype=np.float64).reshape(len(gate), gate.shape[-2], gate.shape[-1])
        r = bilinear_matrix(g.shape[1], IMAGE_SIZE)
        c = bilinear_matrix(g.shape[2], IMAGE_SIZE)
        combined += unit_sum(r @ g @ c.T) / len(gate_maps)
    return combined


def area_matrix(side: int, grid: int) -> np.ndarray:
    """[grid, side] share of each pixel's width inside each cell (summary.rs `area_sum`)."""
    edges = np.arange(grid + 1) * side / grid
    lo, hi = edges[:-1, None], edges[1:, None]
    p = np.arange(side)[None, :]
    return np.clip(np.minimum(hi, p + 1.0) - np.maximum(lo, p), 0.0, None)


def local_maxima(cells: np.ndarray) -> np.ndarray:
    """(row, col) of the cells above 0 that beat their 8 neighbours, strongest first. As in
    summary.rs, a cell beats an equal neighbour that comes later in row order, so a flat top
    gives one peak."""
    h, w = cells.shape
    padded = np.pad(cells, 1, constant_values=-np.inf)
    keep = cells > 0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            neighbour = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            earlier = dy < 0 or (dy == 0 and dx < 0)
            keep &= cells > neighbour if earlier else cells >= neighbour
    rows, cols = np.nonzero(keep)
    values = cells[rows, cols]
    order = np.lexsort((rows * w + cols, -values))
    return np.stack([rows[order], cols[order]], axis=1)


def attention_peaks(combined: np.ndarray, grid: int = IMAGE_SIZE, k: int = PEAKS) -> np.ndarray:
    """The k strongest peaks of one combined map [150,150] as (y, x) model-input pixels."""
    a = area_matrix(IMAGE_SIZE, grid)
    cells = a @ combined @ a.T
    per_cell = IMAGE_SIZE / grid
    return (local_maxima(cells)[:k] + 0.5) * per_cell - 0.5


def emission_mask(images_u8: np.ndarray) -> np.ndarray:
    return images_u8 > 0


def near_emission(emission: np.ndarray, radius: float = BEAM_PX) -> np.ndarray:
    """Pixels within `radius` pixels (Euclidean) of an emission pixel, for masks [N,H,W]."""
    return np.stack([ndimage.distance_transform_edt(~m) <= radius for m in emission])


def bright_points(image_u8: np.ndarray) -> np.ndarray:
    """(y, x) of the bright local maxima of one image (see the module docs)."""
    img = image_u8.astype(np.float64)
    is_max = img == ndimage.maximum_filter(img, size=BRIGHT_WINDOW, mode="constant", cval=0.0)
    return np.argwhere(is_max & (img > 0) & (img >= BRIGHT_FRACTION * img.max()))


def nearest_distance(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Distance in pixels from each (y, x) of `points` to the nearest of `targets`."""
    d = np.hypot(points[:, None, 0] - targets[None, :, 0], points[:, None, 1] - targets[None, :, 1])
    return d.min(axis=1)


def stats(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return {"n": len(v), "median": float(q50), "q25": float(q25), "q75": float(q75), "mean": float(v.mean())}


def attention_maps(model: Path, images_u8: np.ndarray, batch: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """probs [N,2] and each gate's attention map [N,1,H,W] of an ONNX model."""
    sess = session(model, threads=1)
    names = ["probs"] + [o.name for o in sess.get_outputs() if o.name.startswith("attention_")]
    x = normalise(images_u8)
    outs = [sess.run(names, {"image": x[i : i + batch]}) for i in range(0, len(x), batch)]
    merged = [np.concatenate([o[j] for o in outs]) for j in range(len(names))]
    return merged[0], merged[1:]


def emission_shares(combined: np.ndarray, emission: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the combined map's share on emission pixels, and the share uniform attention
    would put there (the emission's area fraction). Their ratio is the enrichment."""
    return (combined * emission).sum(axis=(1, 2)), emission.mean(axis=(1, 2))


def agreement(images_u8: np.ndarray, labels: np.ndarray, gate_maps: list[np.ndarray], grid: int) -> dict:
    """Per-class agreement tables (classes with images only) for one model's attention maps
    over these images."""
    combined = combine(gate_maps)
    emission = emission_mask(images_u8)
    on_emission, area = emission_shares(combined, emission)
    near = near_emission(emission)
    on_near = (combined * near).sum(axis=(1, 2))
    near_area = near.mean(axis=(1, 2))
    centre = np.array([[(IMAGE_SIZE - 1) / 2, (IMAGE_SIZE - 1) / 2]])
    per_image = []
    for img, comb, mask in zip(images_u8, combined, emission, strict=True):
        bright = bright_points(img)
        if len(bright) == 0:
            raise ValueError("an image without emission has no distances to measure")
        peaks = attention_peaks(comb, grid)
        is_bright = np.zeros(img.shape, dtype=bool)
        is_bright[bright[:, 0], bright[:, 1]] = True
        # Distance of every pixel to the nearest bright pixel: the random-pixel baseline.
        field = ndimage.distance_transform_edt(~is_bright)
        per_image.append(
            {
                "peaks": nearest_distance(peaks, bright),
                "random": field.ravel(),
                "centre": nearest_distance(centre, bright),
                "peaks_on_emission": mask[
                    np.clip(np.rint(peaks[:, 0]).astype(int), 0, IMAGE_SIZE - 1),
                    np.clip(np.rint(peaks[:, 1]).astype(int), 0, IMAGE_SIZE - 1),
                ],
                "bright": len(bright),
            }
        )
    classes = {}
    for label, name in enumerate(CLASS_NAMES):
        idx = np.flatnonzero(labels == label)
        if len(idx) == 0:
            continue
        rows = [per_image[i] for i in idx]
        classes[name] = {
            "images": len(idx),
            "on_emission": stats(on_emission[idx]),
            "uniform_baseline": stats(area[idx]),
            "enrichment": stats(on_emission[idx] / area[idx]),
            "near_emission": stats(on_near[idx]),
            "near_uniform_baseline": stats(near_area[idx]),
            "bright_points_per_image": stats([r["bright"] for r in rows]),
            "peak_distance_px": stats(np.concatenate([r["peaks"] for r in rows])),
            "strongest_peak_distance_px": stats([r["peaks"][0] for r in rows]),
            "peaks_on_emission": float(np.mean(np.concatenate([r["peaks_on_emission"] for r in rows]))),
            "random_pixel_distance_px": stats(np.concatenate([r["random"] for r in rows])),
            "centre_distance_px": stats(np.concatenate([r["centre"] for r in rows])),
        }
    return classes


def onnx_of_run(run: Path) -> Path:
    """A training run's ONNX file, exported (as card.py does) when missing or stale."""
    onnx_path = run / "model.onnx"
    if not onnx_path.exists() or onnx_path.stat().st_mtime < (run / "best.pt").stat().st_mtime:
        from .export import export
        from .train import load_checkpoint

        export(load_checkpoint(run), onnx_path)
    return onnx_path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def measure(onnx_path: Path, images_u8: np.ndarray, labels: np.ndarray, grid: int) -> dict:
    probs, gate_maps = attention_maps(onnx_path, images_u8)
    return {
        "sha256": _sha256(onnx_path),
        "test_accuracy": float((probs.argmax(1) == labels).mean()),
        "classes": agreement(images_u8, labels, gate_maps, grid),
    }


# What a variant shares with the shipped model: everything but normalisation, epochs and seed.
RECIPE_TRAIN = (
    "subset",
    "batch_size",
    "lr",
    "weight_decay",
    "head_lr_mult",
    "warmup_epochs",
    "hflip",
    "precise_bn_images",
)
RECIPE_MODEL = ("gates", "aggregation", "dropout")


def recipe_differences(card: dict, training: dict) -> str:
    """How a training run's recipe differs from the shipped model's ('' when it does not)."""
    pairs = [(k, card["training"]["config"].get(k), training["train"].get(k)) for k in RECIPE_TRAIN]
    pairs += [(k, card["architecture"].get(k), training["model"].get(k)) for k in RECIPE_MODEL]
    return ", ".join(f"{k} {ours!r} vs shipped {theirs!r}" for k, theirs, ours in pairs if ours != theirs)


def build(model_stem: Path, variants: list[Path], data_dir: Path, grid: int) -> dict:
    card = json.loads(model_stem.with_suffix(".card.json").read_text())
    subset = card["subset"]
    test = load_split(data_dir, subset, train=False)
    shipped_file = model_stem.parent / card["file"]
    rows = [
        {
            "model": card["name"],
            "normalisation": card["architecture"]["normalisation"],
            "training": f"shipped (seed {card['training']['shipped_seed']}, "
            f"{card['training']['config']['epochs']} epochs)",
            **measure(shipped_file, test.images, test.labels, grid),
        }
    ]
    for run in variants:
        training = json.loads((run / "training.json").read_text())
        differs = recipe_differences(card, training)
        if differs:
            raise SystemExit(f"{run} was not trained with the shipped recipe ({differs}): retrain it")
        rows.append(
            {
                "model": run.name,
                "normalisation": training["model"]["normalisation"],
                "training": f"variant (seed {training['train']['seed']}, {training['train']['epochs']} epochs)",
                **measure(onnx_of_run(run), test.images, test.labels, grid),
            }
        )
    return describe(f"official test_batch, {subset} ({len(test)} images)", grid, rows)


def describe(test_set: str, grid: int, rows: list[dict]) -> dict:
    """The card's `attention_agreement`: the settings, their definitions and the models' rows."""
    return {
        "test_set": test_set,
        "pixel_arcsec": PIXEL_ARCSEC,
        "grid": grid,
        "peaks_per_image": PEAKS,
        "bright_fraction": BRIGHT_FRACTION,
        "bright_window": BRIGHT_WINDOW,
        "beam_px": BEAM_PX,
        "definitions": {
            "combined_map": "each gate's map upsampled bilinearly to 150x150 (align_corners=False), negative "
            "values set to 0, normalised to unit sum, then averaged over the gates, as the worker's "
            "attention summary (src/summary.rs)",
            "emission": "pixels above 0 in the released 8-bit image: MiraBest set every pixel at or below "
            "3 sigma (sigma-clipped rms) to 0 before scaling, so this is the worker's clipping mask less "
            "the clipped emission fainter than 1/255 of the image's peak, which 8 bits truncated to 0",
            "on_emission": "share of the combined map on emission pixels; uniform baseline = emission area fraction; "
            "enrichment = the share over that baseline, per image (1: no better than uniform)",
            "near_emission": f"share of the combined map within {BEAM_PX:g} pixels (the 5.4 arcsec FIRST beam) "
            "of an emission pixel, since the coarsest gate's cells are 4 pixels wide; uniform baseline = that "
            "area's fraction",
            "peaks": f"the {PEAKS} strongest local maxima (8 neighbours) of the combined map on a {grid}x{grid} "
            "grid, as the worker reports its peaks with summary.grid = "
            f"{grid} (its default of 30 puts them at the centres of 5-pixel cells)",
            "bright_emission": f"pixels that are the maximum of their {BRIGHT_WINDOW}x{BRIGHT_WINDOW} "
            f"neighbourhood and at least {BRIGHT_FRACTION:g} of the image's peak (cores, hotspots)",
            "baselines": "random pixel: distance from every pixel of the image to the nearest bright "
            "pixel; centre: from the image centre (74.5, 74.5), where MiraBest centres its sources",
        },
        "models": rows,
        "reproduce": "scripts/attention-agreement.sh",
    }


def _q(s: dict, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    return f"{fmt.format(s['median'] * scale)} [{fmt.format(s['q25'] * scale)}, {fmt.format(s['q75'] * scale)}]"


def _px(s: dict) -> str:
    return f"{_q(s, '{:.1f}')} px = {_q(s, '{:.1f}', PIXEL_ARCSEC)}″"


def render_section(result: dict) -> str:
    d = result["definitions"]
    lines = [
        SECTION,
        "",
        f"Does the attention fall on the radio emission? Measured on the {result['test_set']}; medians with "
        "the interquartile range in brackets."
        + (
            " The shipped model is compared with single-seed variants trained with the other attention "
            "normalisations (the shipped recipe otherwise, with the epochs shown)."
            if len(result["models"]) > 1
            else ""
        ),
        "",
        f"- Combined map: {d['combined_map']}.",
        f"- Emission: {d['emission']}.",
        f"- Attention on emission: {d['on_emission']}.",
        f"- Attention near emission: {d['near_emission']}.",
        f"- Peaks: {d['peaks']}. Bright emission: {d['bright_emission']}. Pixels are {result['pixel_arcsec']} arcsec.",
        f"- Distance baselines: {d['baselines']}.",
        "",
        "| model | normalisation | training | test accuracy | class | images | attention on emission "
        "| uniform attention (emission area) | enrichment | attention near emission | uniform attention (near area) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        for name, c in m["classes"].items():
            lines.append(
                f"| {m['model']} | {m['normalisation']} | {m['training']} | {100 * m['test_accuracy']:.1f}% "
                f"| {name} | {c['images']} | {_q(c['on_emission'], '{:.3f}')} "
                f"| {_q(c['uniform_baseline'], '{:.3f}')} | {_q(c['enrichment'], '{:.1f}')} "
                f"| {_q(c['near_emission'], '{:.3f}')} "
                f"| {_q(c['near_uniform_baseline'], '{:.3f}')} |"
            )
    lines += [
        "",
        "| model | class | all peaks to bright emission | strongest peak | peaks on emission "
        "| random pixel (baseline) | image centre (baseline) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        for name, c in m["classes"].items():
            lines.append(
                f"| {m['model']} | {name} | {_px(c['peak_distance_px'])} | {_px(c['strongest_peak_distance_px'])} "
                f"| {100 * c['peaks_on_emission']:.0f}% | {_px(c['random_pixel_distance_px'])} "
                f"| {_px(c['centre_distance_px'])} |"
            )
    lines += ["", f"Reproduce: `{result['reproduce']}`.", ""]
    return "\n".join(lines)


def with_section(markdown: str, section: str, heading: str = SECTION, before: str = BEFORE) -> str:
    """The card's Markdown with the section under `heading` (the agreement's by default)
    replaced, or inserted before the heading `before` (appended when that is absent).
    Applying it twice changes nothing more."""
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(markdown):
        return pattern.sub(lambda _: section + "\n", markdown, count=1)
    at = markdown.find(f"\n{before}\n")
    if at < 0:
        return markdown.rstrip("\n") + "\n\n" + section
    return markdown[: at + 1] + section + "\n" + markdown[at + 1 :]


def update_card(model_stem: Path, result: dict) -> None:
    """Writes `attention_agreement` into the card JSON (other keys untouched, in their order)
    and the section into the card Markdown."""
    json_path = model_stem.with_suffix(".card.json")
    card = json.loads(json_path.read_text())
    card["attention_agreement"] = result
    json_path.write_text(json.dumps(card, indent=2) + "\n")
    md_path = model_stem.with_suffix(".card.md")
    md_path.write_text(with_section(md_path.read_text(), render_section(result)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model stem, e.g. ../models/agcnn-mirabest")
    p.add_argument("--variants", type=Path, nargs="*", default=[], help="training runs with other settings")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--grid", type=int, default=IMAGE_SIZE, help="peak grid (the worker's summary.grid)")
    p.add_argument("--update-card", action="store_true", help="write the tables into the model card")
    a = p.parse_args(argv)
    if not 1 <= a.grid <= IMAGE_SIZE:
        p.error(f"--grid must be 1 to {IMAGE_SIZE}")
    result = build(a.model, a.variants, a.data_dir or default_data_dir(), a.grid)
    if a.update_card:
        update_card(a.model, result)
    print(render_section(result))


if __name__ == "__main__":
    main()
