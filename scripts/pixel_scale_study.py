"""What the size of an image's pixels does to the shipped model's answers, and what
`cutout.resample` gives back.

The 157 MiraBest test cutouts (FIRST, 1.8 arcsec pixels) are reprojected onto pixels of other
sizes over the same sky (astropy's `reproject_exact`, surface brightness kept, the same TAN
projection and centre), so that only the pixel size changes: the beam and the noise stay
FIRST's. radiogate then classifies each set twice: as it is, with the pixel-size check turned
off (`cutout.pixel_scale_tolerance = 1`: what the worker did before it had the check), and
resampled back to 1.8 arcsec (`cutout.resample = true`). Each is compared with the true
classes (the first digit of each file name) and with the originals' predictions.

    python3 scripts/pixel_scale_study.py                # 1.0, 1.5 and 2.4 arcsec pixels
    python3 scripts/pixel_scale_study.py --sizes 1.2 --out out/pixel-scale

Needs the release binary (`cargo build --release`), numpy, astropy and reproject
(python/requirements.txt). About 0.6 s of reprojection per image and size on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from reproject import reproject_exact

REPO = Path(__file__).resolve().parent.parent
CUTOUTS = REPO.parent / "shared" / "data" / "first-cutouts" / "mirabest-test"
RADIOGATE = REPO / "target" / "release" / "radiogate"
# The field a 300 x 300 FIRST cutout covers (arcsec), which every reprojection keeps.
FIELD_ARCSEC = 300 * 1.8


def reprojected(data: np.ndarray, header: fits.Header, arcsec: float) -> fits.PrimaryHDU:
    """The image on a TAN grid of `arcsec` pixels with the same centre and north up, wide
    enough for the whole field (a pixel more each side)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        source = WCS(header).celestial
    n = int(np.ceil(FIELD_ARCSEC / arcsec)) + 2
    target = WCS(naxis=2)
    target.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    target.wcs.crval = [header["CRVAL1"], header["CRVAL2"]]
    target.wcs.cdelt = [-arcsec / 3600, arcsec / 3600]
    # The reference point at the image centre, 0-based (n - 1) / 2.
    target.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    out, _ = reproject_exact((data, source), target, shape_out=(n, n))
    return fits.PrimaryHDU(out.astype(">f4"), target.to_header())


def write_set(arcsec: float, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(CUTOUTS.glob("*.fits")):
        if (dest / path.name).exists():
            continue
        with fits.open(path) as hdul:
            hdu = reprojected(hdul[0].data, hdul[0].header, arcsec)
        hdu.writeto(dest / path.name)


def classify(inputs: list[str], out: Path, settings: dict[str, str] | None = None) -> dict[str, dict]:
    """`radiogate classify` of `inputs` (its arguments: folders, or `--catalog FILE`) with
    `settings` ("section.key": value) as environment overrides; its results by source id."""
    env = dict(os.environ)
    for key, value in (settings or {}).items():
        env["RADIOGATE__" + key.upper().replace(".", "__")] = value
    subprocess.run(
        [str(RADIOGATE), "classify", "--quiet", "--out", str(out), *inputs],
        env=env,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return {r["source_id"]: r for r in map(json.loads, out.read_text().splitlines())}


def truth(source_id: str) -> str | None:
    """The true class of a confidently classified FRI or FRII (label codes 10x and 20x: the
    MiraBest* test set the shipped model's card scores), else None."""
    if source_id[1] != "0":
        return None
    return {"1": "FRI", "2": "FRII"}.get(source_id[0])


def compare(results: dict[str, dict], reference: dict[str, dict]) -> dict:
    """Accuracy against the true classes (of the confident FRI and FRII), agreement with the
    reference's labels, and how far P(FRII) moved (median, largest), over the classified
    sources."""
    done = {k: r for k, r in results.items() if r["kind"] == "classification"}
    scored = [(r["label"], truth(k)) for k, r in done.items() if truth(k)]
    moved = [abs(r["probabilities"]["FRII"] - reference[k]["probabilities"]["FRII"]) for k, r in done.items()]
    return {
        "classified": len(done),
        "rejected": len(results) - len(done),
        "scored": len(scored),
        "accuracy": sum(label == true for label, true in scored) / max(len(scored), 1),
        "agree": sum(r["label"] == reference[k]["label"] for k, r in done.items()),
        "median_dp": statistics.median(moved) if moved else float("nan"),
        "max_dp": max(moved, default=float("nan")),
    }


def table(rows: list[tuple[str, dict]], n: int) -> str:
    lines = [
        "| pixels | classified | accuracy (confident FRI and FRII) | labels as the originals' "
        "| P(FRII) moved: median, largest |",
        "|---|---|---|---|---|",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['classified']} of {n} | {100 * s['accuracy']:.1f}% of {s['scored']} | "
            f"{s['agree']} of {s['classified']} | {s['median_dp']:.3f}, {s['max_dp']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1.0, 1.5, 2.4])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "pixel-scale")
    args = parser.parse_args(argv)
    if not RADIOGATE.exists():
        sys.exit(f"{RADIOGATE} is missing: cargo build --release")
    args.out.mkdir(parents=True, exist_ok=True)
    original = classify([str(CUTOUTS)], args.out / "original.jsonl")
    rows = [("1.8 arcsec (FIRST's, the originals)", compare(original, original))]
    for arcsec in args.sizes:
        images = args.out / f"{arcsec:g}arcsec"
        write_set(arcsec, images)
        as_is = classify([str(images)], args.out / f"{arcsec:g}-as-is.jsonl", {"cutout.pixel_scale_tolerance": "1"})
        resampled = classify([str(images)], args.out / f"{arcsec:g}-resampled.jsonl", {"cutout.resample": "true"})
        rows.append((f"{arcsec:g} arcsec, taken as they are", compare(as_is, original)))
        rows.append((f"{arcsec:g} arcsec, resampled to 1.8", compare(resampled, original)))
    text = table(rows, len(original))
    (args.out / "summary.md").write_text(text + "\n")
    (args.out / "summary.json").write_text(json.dumps(dict(rows), indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
