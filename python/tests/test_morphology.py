"""radiogate_model.morphology: islands and largest size as the worker measures them (the Rust
side's tests use the same cases; tests/it/preprocess_parity.rs compares both on MiraBest)."""

import json

import numpy as np
import pytest

from radiogate_model import morphology as mo

from .conftest import REPO


def image(on: list[tuple[int, int]], value: int = 200) -> np.ndarray:
    """`on` at `value`, and one lone pixel at 100 (the faintest emission) in a far corner."""
    img = np.zeros((150, 150), dtype=np.uint8)
    for y, x in on:
        img[y, x] = value
    img[149, 0] = 100
    return img


def block(y: int, x: int, h: int, w: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(y, y + h) for c in range(x, x + w)]


def test_two_lobes_span_corner_to_corner_and_noise_does_not_count() -> None:
    on = block(10, 10, 4, 5) + block(40, 60, 3, 4) + [(0, 149), (140, 1), (141, 2)]
    islands, pixels, size, truncated = mo.measure(image(on))
    assert (islands, pixels, truncated) == (2, 32, False)
    assert size == pytest.approx(np.hypot(32, 53))


def test_diagonal_neighbours_join_and_a_line_is_measured_end_to_end() -> None:
    islands, pixels, size, _ = mo.measure(image([(20 + i, 30 + i) for i in range(10)]))
    assert (islands, pixels) == (1, 10)
    assert size == pytest.approx(9 * np.sqrt(2))


def test_a_faint_island_is_noise() -> None:
    img = image([])
    for y, x in block(10, 10, 4, 5):
        img[y, x] = 150  # 3 x 150 < 5 x 100: below about 5 sigma
    for y, x in block(50, 50, 4, 5):
        img[y, x] = 170
    assert mo.measure(img)[:2] == (1, 20)
    assert mo.measure(np.zeros((150, 150), dtype=np.uint8)) == (0, 0, 0.0, False)


def test_only_a_counted_island_at_an_edge_truncates() -> None:
    for y, x, h, w in [(1, 60, 3, 4), (60, 1, 4, 3), (146, 60, 3, 4), (60, 146, 4, 3)]:
        assert not mo.measure(image(block(y, x, h, w))).truncated
    for y, x, h, w in [(0, 60, 3, 4), (60, 0, 4, 3), (147, 60, 3, 4), (60, 147, 4, 3)]:
        assert mo.measure(image(block(y, x, h, w))).truncated
    # Noise at the edge (an island of 9) does not.
    shape = mo.measure(image(block(60, 60, 3, 4) + block(0, 0, 3, 3)))
    assert (shape.islands, shape.truncated) == (1, False)


def test_the_card_gets_the_training_range(tmp_path, data_dir) -> None:
    card = tmp_path / "m.card.json"
    card.write_text(json.dumps({"subset": "mirabest_confident"}))
    (tmp_path / "m.card.md").write_text("# Model card\n\n## Departures from the authors' code\n\n- x\n")
    model = REPO / "models" / "agcnn-mirabest-confident.onnx"
    entry = mo.card_entry("mirabest_confident", data_dir, card.name, model)
    mo.update_card(card, entry)
    rows = json.loads(card.read_text())["emission_extent"]["rows"]
    assert [(r["images"], r["class"], r["n"]) for r in rows] == [
        ("training batches", "FRI", 348),
        ("training batches", "FRII", 381),
        ("test batch", "FRI", 49),
        ("test batch", "FRII", 55),
    ]
    assert all(r["islands"]["0"] == 0 for r in rows), "every MiraBest image has an island"
    thirds = json.loads(card.read_text())["emission_extent"]["accuracy_by_size"]
    assert sum(t["images"] for t in thirds) == 104
    assert [t["las_arcsec"][1] for t in thirds[:2]] == [t["las_arcsec"][0] for t in thirds[1:]]
    md = (tmp_path / "m.card.md").read_text()
    assert md.index(mo.SECTION) < md.index("## Departures")
    mo.update_card(card, entry)
    assert (tmp_path / "m.card.md").read_text() == md, "written twice, the same"
