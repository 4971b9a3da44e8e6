"""How far from the MiraBest centring a catalogue position may be before the shipped model's
answers move, and whether test-time views (`inference.views`) steady them.

MiraBest's cutouts put each source at the centre; a survey's catalogue gives its own position
(a fitted centroid, an island's peak), some pixels away. Each of the 157 MiraBest test
cutouts (FIRST, 1.8 arcsec pixels) is classified from a catalogue (`radiogate classify
--catalog`, the file as `fits_path`) at its centre and at positions `d` pixels away in eight
directions (along the axes, and diagonally at round(d / sqrt 2) pixels along each), so that
the window moves by whole pixels over the same image (beyond its edge the window is blank,
as at a mosaic's edge). Each offset's answers are compared with the centred ones and with the
true classes (the first digit of each file name), for each number of views.

    python3 scripts/offset_study.py                       # d = 1 2 3 5 8, views 1 and 8
    python3 scripts/offset_study.py --distances 2 --views 1 --out out/offsets

Needs the release binary (`cargo build --release`), numpy and astropy (python/requirements.txt).
About 6,400 classifications per number of views: ~30 s with 1 view on two cores, ~4 min with 8.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import warnings
from pathlib import Path

from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS
from pixel_scale_study import CUTOUTS, RADIOGATE, REPO, classify, truth

# The eight directions of an offset: along the axes, then diagonally.
DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]


def offsets(d: int) -> list[tuple[int, int]]:
    """The eight whole-pixel offsets `d` pixels from the centre (diagonals at round(d/sqrt 2)
    along each axis)."""
    diagonal = round(d / math.sqrt(2))
    return [(x * (d if y == 0 else diagonal), y * (d if x == 0 else diagonal)) for x, y in DIRECTIONS]


def catalogue(distances: list[int], dest: Path) -> None:
    """A CSV with each cutout's centre and its offsets; ids are `stem@dx:dy`."""
    rows = ["source_id,ra,dec,fits_path"]
    for path in sorted(CUTOUTS.glob("*.fits")):
        with warnings.catch_warnings():
            # FIRST's headers carry non-ASCII commentary and old WCS keywords.
            warnings.simplefilter("ignore", AstropyWarning)
            header = fits.getheader(path)
            wcs = WCS(header).celestial
        cx, cy = (header["NAXIS1"] - 1) / 2, (header["NAXIS2"] - 1) / 2
        for dx, dy in [(0, 0)] + [o for d in distances for o in offsets(d)]:
            ra, dec = wcs.all_pix2world(cx + dx, cy + dy, 0)
            rows.append(f"{path.stem}@{dx}:{dy},{float(ra):.10f},{float(dec):.10f},{path}")
    dest.write_text("\n".join(rows) + "\n")


def score(results: dict[str, dict], distances: list[int]) -> list[dict]:
    """Per distance: labels kept from the centred answer, accuracy on the confident FRI and
    FRII, and how far P(FRII) moved (median, largest); the centre's own row first."""
    centre = {k.split("@")[0]: r for k, r in results.items() if k.endswith("@0:0")}
    rows = []
    for d in [0, *distances]:
        keys = {"0:0"} if d == 0 else {f"{dx}:{dy}" for dx, dy in offsets(d)}
        picked = [(k.split("@")[0], r) for k, r in results.items() if k.split("@")[1] in keys]
        done = [(stem, r) for stem, r in picked if r["kind"] == "classification"]
        scored = [r["label"] == truth(stem) for stem, r in done if truth(stem)]
        moved = [abs(r["probabilities"]["FRII"] - centre[stem]["probabilities"]["FRII"]) for stem, r in done]
        rows.append(
            {
                "pixels": d,
                "classified": len(done),
                "of": len(picked),
                "kept": sum(r["label"] == centre[stem]["label"] for stem, r in done),
                "accuracy": sum(scored) / max(len(scored), 1),
                "scored": len(scored),
                "median_dp": statistics.median(moved),
                "max_dp": max(moved),
            }
        )
    return rows


def unsteady(results: dict[str, dict]) -> dict:
    """Over every offset: the sources whose label moves somewhere, and the largest centred
    confidence among the labels that move."""
    centre = {k.split("@")[0]: r for k, r in results.items() if k.endswith("@0:0")}
    moved = [
        (stem, centre[stem]["confidence"])
        for stem, r in ((k.split("@")[0], r) for k, r in results.items())
        if r["kind"] == "classification" and r["label"] != centre[stem]["label"]
    ]
    return {
        "sources": len({stem for stem, _ in moved}),
        "of": len(centre),
        "largest_confidence": max((c for _, c in moved), default=float("nan")),
    }


def table(by_views: dict[int, list[dict]]) -> str:
    lines = [
        "| offset | views | labels as at the centre | accuracy (confident FRI and FRII) "
        "| P(FRII) moved: median, largest |",
        "|---|---|---|---|---|",
    ]
    for views, rows in by_views.items():
        for r in rows:
            offset = "centre" if r["pixels"] == 0 else f'{r["pixels"]} px ({1.8 * r["pixels"]:g}")'
            lines.append(
                f"| {offset} | {views} | {r['kept']} of {r['classified']} "
                f"({100 * r['kept'] / r['classified']:.1f}%) | {100 * r['accuracy']:.1f}% of {r['scored']} "
                f"| {r['median_dp']:.3f}, {r['max_dp']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--distances", type=int, nargs="+", default=[1, 2, 3, 5, 8])
    parser.add_argument("--views", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "offsets")
    args = parser.parse_args(argv)
    if not RADIOGATE.exists():
        sys.exit(f"{RADIOGATE} is missing: cargo build --release")
    args.out.mkdir(parents=True, exist_ok=True)
    cat = args.out / "catalogue.csv"
    catalogue(args.distances, cat)
    by_views, notes = {}, []
    for views in args.views:
        results = classify(["--catalog", str(cat)], args.out / f"views{views}.jsonl", {"inference.views": str(views)})
        by_views[views] = score(results, args.distances)
        u = unsteady(results)
        notes.append(
            f"- {views} view{'s' if views > 1 else ''}: {u['sources']} of {u['of']} sources change label "
            f"at some offset; the largest centred confidence of a label that changes is {u['largest_confidence']:.3f}"
        )
    text = table(by_views) + "\n\n" + "\n".join(notes)
    (args.out / "summary.md").write_text(text + "\n")
    (args.out / "summary.json").write_text(json.dumps(by_views, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
