"""scripts/pixel_scale_study.py: the reprojection keeps the field and the surface brightness,
and the scoring counts what it says it counts."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from .conftest import load_script

study = load_script("scripts/pixel_scale_study.py")


def first_like(n: int = 60) -> tuple[np.ndarray, fits.Header]:
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = 150.0, 30.0
    header["CRPIX1"] = header["CRPIX2"] = (n + 1) / 2
    header["CDELT1"], header["CDELT2"] = -0.0005, 0.0005
    y, x = np.mgrid[:n, :n]
    # A smooth blob well inside the image, on a flat floor.
    data = 1e-4 + 1e-2 * np.exp(-((x - n / 2) ** 2 + (y - n / 2) ** 2) / 40.0)
    return data.astype(np.float32), header


def test_the_reprojection_keeps_the_field_the_centre_and_the_brightness(monkeypatch) -> None:
    data, header = first_like()
    monkeypatch.setattr(study, "FIELD_ARCSEC", 60 * 1.8)
    hdu = study.reprojected(data, header, 1.2)
    n = int(np.ceil(60 * 1.8 / 1.2)) + 2
    assert hdu.data.shape == (n, n)
    assert abs(hdu.header["CDELT2"] - 1.2 / 3600) < 1e-15
    assert (hdu.header["CRVAL1"], hdu.header["CRVAL2"]) == (150.0, 30.0)
    inside = hdu.data[2:-2, 2:-2]
    assert np.isfinite(inside).all()
    # Surface brightness kept: the blob's integral over the sky is the same.
    excess = lambda image, pixel: float(np.nansum(image - 1e-4)) * pixel**2  # noqa: E731
    np.testing.assert_allclose(excess(hdu.data, 1.2), excess(data, 1.8), rtol=1e-3)


def test_scores_count_the_confident_classes_and_the_moves() -> None:
    assert study.truth("100_x") == "FRI" and study.truth("201_x") == "FRII"
    assert study.truth("110_x") is None and study.truth("300_x") is None
    record = lambda label, frii: {  # noqa: E731
        "kind": "classification",
        "label": label,
        "probabilities": {"FRI": 1 - frii, "FRII": frii},
    }
    reference = {"100_a": record("FRI", 0.1), "200_b": record("FRII", 0.9), "110_c": record("FRI", 0.2)}
    results = {
        "100_a": record("FRII", 0.6),
        "200_b": record("FRII", 0.8),
        "110_c": {"kind": "rejection"},
    }
    s = study.compare(results, reference)
    assert (s["classified"], s["rejected"], s["scored"], s["agree"]) == (2, 1, 2, 1)
    assert s["accuracy"] == 0.5
    np.testing.assert_allclose((s["median_dp"], s["max_dp"]), (0.3, 0.5))
