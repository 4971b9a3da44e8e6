"""The attention-to-emission agreement: synthetic images where the answer is known, the card
update, and the shipped cards' numbers against a fresh computation."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radiogate_model import agreement as ag
from radiogate_model.agreement import IMAGE_SIZE
from radiogate_model.data import load_split

from .conftest import REPO

N = ag.IMAGE_SIZE


def _blob(cy: float, cx: float, sigma: float, peak: float) -> np.ndarray:
    y, x = np.mgrid[0:N, 0:N]
    return peak * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


def _image(*blobs: tuple[float, float, float, float]) -> np.ndarray:
    """A MiraBest-like uint8 image: blobs clipped where faint (zero sky), peak 255."""
    img = sum(_blob(*b) for b in blobs)
    img = np.where(img > 0.02 * img.max(), img, 0.0)
    return (255 * img / img.max()).astype(np.uint8)


@pytest.mark.parametrize("side", [37, 75, 150])
def test_upsampling_matches_pytorch(side):
    g = np.random.default_rng(side).random((2, side, side))
    r = ag.bilinear_matrix(side, N)
    ours = r @ g @ r.T
    theirs = F.interpolate(torch.from_numpy(g)[:, None], size=(N, N), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ours, theirs[:, 0].numpy(), atol=1e-12)


@pytest.mark.parametrize("grid", [1, 7, 30, 50, 150])
def test_cells_split_pixels_by_area(grid):
    a = ag.area_matrix(N, grid)
    np.testing.assert_allclose(a.sum(axis=0), 1.0)
    np.testing.assert_allclose(a.sum(axis=1), N / grid)


def test_attention_all_on_the_blob_gives_fraction_one():
    img = _image((60, 90, 4, 1.0))
    emission = img > 0
    # Gate 3 (full resolution) attends only to the blob; the coarse gates too, through
    # maps that are zero away from it after upsampling (negative values count as none).
    gate = np.where(emission, 1.0, -0.5)[None, None]
    result = ag.agreement(img[None], np.array([0]), [gate], grid=N)
    fri = result["FRI"]
    assert fri["on_emission"]["median"] == pytest.approx(1.0, abs=1e-12)
    assert fri["near_emission"]["median"] == pytest.approx(1.0, abs=1e-12)
    assert fri["uniform_baseline"]["median"] == pytest.approx(emission.mean())
    assert fri["enrichment"]["median"] == pytest.approx(1 / emission.mean())


def test_uniform_attention_gives_the_area_fraction():
    images = np.stack([_image((50, 50, 3, 1.0)), _image((75, 75, 8, 1.0), (75, 120, 2, 0.8))])
    labels = np.array([0, 1])
    # A constant map, and one with no attention at all (which counts as uniform), per gate.
    gates = [np.full((2, 1, 37, 37), 0.3, np.float32), np.zeros((2, 1, 75, 75), np.float32)]
    result = ag.agreement(images, labels, gates, grid=30)
    for label, name in enumerate(("FRI", "FRII")):
        area = (images[label] > 0).mean()
        assert result[name]["on_emission"]["median"] == pytest.approx(area, rel=1e-9)
        assert result[name]["enrichment"]["median"] == pytest.approx(1.0, rel=1e-9)
        assert result[name]["near_emission"]["median"] == pytest.approx(
            result[name]["near_uniform_baseline"]["median"], rel=1e-9
        )


def test_gates_are_averaged_after_normalising_each():
    img = _image((40, 40, 3, 1.0))
    emission = img > 0
    on_blob = np.where(emission, 5.0, 0.0)[None, None]
    uniform = np.full((1, 1, 75, 75), 0.01)
    result = ag.agreement(img[None], np.array([1]), [on_blob, uniform], grid=N)
    want = 0.5 * 1.0 + 0.5 * emission.mean()
    assert result["FRII"]["on_emission"]["median"] == pytest.approx(want, rel=1e-9)


def test_a_peak_on_a_hotspot_is_at_distance_zero():
    # An FRII-like source: two hotspots and a faint core below the brightness cut.
    img = _image((75, 40, 2, 1.0), (75, 110, 2, 0.9), (75, 75, 2, 0.1))
    bright = {tuple(p) for p in ag.bright_points(img)}
    assert bright == {(75, 40), (75, 110)}
    # Attention peaks: the strongest on one hotspot, the next on the other, a weak one on
    # the core, 35 px from both hotspots.
    att = _blob(75, 110, 3, 1.0) + _blob(75, 40, 3, 0.7) + _blob(75, 75, 3, 0.4)
    result = ag.agreement(img[None], np.array([1]), [att[None, None]], grid=N)
    frii = result["FRII"]
    assert frii["strongest_peak_distance_px"]["median"] == 0.0
    assert frii["peak_distance_px"]["n"] == ag.PEAKS
    assert frii["peak_distance_px"]["median"] == 0.0
    assert frii["peak_distance_px"]["q75"] == pytest.approx(17.5)  # 0, 0, 35 -> 75th percentile
    assert frii["centre_distance_px"]["median"] == pytest.approx(np.hypot(0.5, 34.5))
    assert frii["peaks_on_emission"] == 1.0
    # A random pixel is far from both hotspots on average.
    assert frii["random_pixel_distance_px"]["median"] > 20


def test_peaks_follow_the_workers_rules():
    # A flat map has one peak, the first cell; peaks come strongest first.
    assert ag.local_maxima(np.ones((5, 5))).tolist() == [[0, 0]]
    cells = np.zeros((6, 6))
    cells[1, 1], cells[4, 4], cells[1, 4] = 0.2, 0.5, 0.3
    assert ag.local_maxima(cells).tolist() == [[4, 4], [1, 4], [1, 1]]
    # Peak positions are cell centres in pixels (as summary.rs reports them).
    comb = np.zeros((N, N))
    comb[100, 40] = 1.0
    assert ag.attention_peaks(comb, grid=30).tolist() == [[102.0, 42.0]]
    assert ag.attention_peaks(comb, grid=N).tolist() == [[100.0, 40.0]]


def _result(rows=1):
    img = _image((60, 60, 3, 1.0))
    tables = ag.agreement(img[None], np.array([0]), [np.ones((1, 1, 37, 37))], grid=N)
    row = {"model": "m", "normalisation": "range_norm", "training": "t", "sha256": "0", "test_accuracy": 1.0}
    return ag.describe("synthetic (1 image)", N, [row | {"classes": tables}] * rows)


def test_card_section_is_inserted_once_and_replaced():
    md = "# Model card\n\n## Test results\n\nnumbers\n\n## Departures from the authors' code\n\n- x\n"
    first = ag.with_section(md, ag.render_section(_result()))
    assert first.index(ag.SECTION) < first.index(ag.BEFORE)
    assert ag.with_section(first, ag.render_section(_result())) == first
    # New numbers replace the old section; everything else stays as it was.
    second = ag.with_section(first, ag.render_section(_result(rows=2)))
    assert second.count(ag.SECTION) == 1
    assert second.replace(ag.render_section(_result(rows=2)), "") == first.replace(ag.render_section(_result()), "")
    # Without the anchor heading, the section goes at the end.
    assert ag.with_section("# card\n", "## Attention and emission\n\nx\n").endswith("## Attention and emission\n\nx\n")


def test_card_update_keeps_the_rest_of_the_card(tmp_path):
    for suffix in (".card.json", ".card.md"):
        shutil.copy(REPO / "models" / f"agcnn-mirabest{suffix}", tmp_path / f"m{suffix}")
    original = json.loads((tmp_path / "m.card.json").read_text())
    original.pop("attention_agreement", None)
    ag.update_card(tmp_path / "m", _result())
    once = {s: (tmp_path / f"m{s}").read_text() for s in (".card.json", ".card.md")}
    updated = json.loads(once[".card.json"])
    assert updated.pop("attention_agreement") == json.loads(json.dumps(_result()))
    assert updated == original
    ag.update_card(tmp_path / "m", _result())
    assert {s: (tmp_path / f"m{s}").read_text() for s in (".card.json", ".card.md")} == once


CARDS = sorted((REPO / "models").glob("*.card.json"))


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.name)
def test_cards_carry_the_agreement_of_their_model(card_path, data_dir):
    """The card's numbers for the shipped model are those of the committed file."""
    card = json.loads(card_path.read_text())
    assert "attention_agreement" in card, "run scripts/attention-agreement.sh after writing the card"
    result = card["attention_agreement"]
    shipped = result["models"][0]
    assert shipped["sha256"] == card["sha256"], "the agreement was computed on another model file"
    assert "## Attention and emission" in card_path.with_name(card["name"] + ".card.md").read_text()
    test = load_split(data_dir, card["subset"], train=False)
    fresh = ag.measure(REPO / "models" / card["file"], test.images, test.labels, result["grid"])
    assert fresh["test_accuracy"] == pytest.approx(shipped["test_accuracy"], abs=1e-12)
    # Which pixels are an image's peaks can change where two of them tie to float32 rounding,
    # and ONNX Runtime's kernels round differently on CPUs with other vector instructions
    # (AVX2 against AVX-512: MiraBest's FRI mean peak distance moved by 0.017 px, 3.8 px over
    # its 222 peaks, as when one peak becomes another; nothing else moved by more than 1e-7
    # of itself). So the peak statistics' means allow one peak of the class to become
    # another, at most the image's diagonal away; the rest stays as it was.
    diagonal = IMAGE_SIZE * 2**0.5
    for name, c in fresh["classes"].items():
        for key, value in c.items():
            want = shipped["classes"][name][key]
            if key in ("peak_distance_px", "strongest_peak_distance_px"):
                assert value["mean"] == pytest.approx(want["mean"], abs=diagonal / value["n"]), (name, key)
                rest = {k: v for k, v in value.items() if k != "mean"}  # n and the quantiles
                assert rest == pytest.approx({k: want[k] for k in rest}, rel=1e-6, abs=1e-9), (name, key)
            elif key == "peaks_on_emission":
                assert value == pytest.approx(want, abs=1 / c["peak_distance_px"]["n"]), (name, key)
            elif isinstance(value, dict):
                assert value == pytest.approx(want, rel=1e-6, abs=1e-9), (name, key)
            else:
                assert value == pytest.approx(want, rel=1e-6), (name, key)


def test_variants_must_share_the_shipped_recipe():
    card = json.loads((REPO / "models" / "agcnn-mirabest-confident.card.json").read_text())
    arch = card["architecture"]
    run = {
        "train": card["training"]["config"] | {"epochs": 20, "seed": 1},
        "model": {k: arch[k] for k in ag.RECIPE_MODEL} | {"normalisation": "softmax", "standardise_pooled": True},
    }
    assert ag.recipe_differences(card, run) == ""
    run["train"]["lr"] = card["training"]["config"]["lr"] / 3
    assert ag.recipe_differences(card, run).startswith("lr ")


def test_command_compares_a_trained_variant_and_updates_the_card(data_dir, tmp_path):
    """End to end: a (very short) variant run with the shipped recipe, exported on demand,
    measured beside the shipped model; a run with another recipe is refused."""
    from radiogate_model.model import ModelConfig
    from radiogate_model.train import TrainConfig, train

    stem = tmp_path / "agcnn-mirabest-confident"
    for suffix in (".onnx", ".card.json", ".card.md"):
        shutil.copy(REPO / "models" / f"agcnn-mirabest-confident{suffix}", tmp_path / f"{stem.name}{suffix}")
    card = json.loads((REPO / "models" / "agcnn-mirabest-confident.card.json").read_text())
    t, arch = card["training"]["config"], card["architecture"]
    recipe = {k: t[k] for k in ag.RECIPE_TRAIN}
    run = tmp_path / "softmax-s1"
    train(
        TrainConfig(**recipe, epochs=1, seed=1, max_batches=2),
        ModelConfig(**{k: arch[k] for k in ag.RECIPE_MODEL}, normalisation="softmax"),
        data_dir,
        run,
    )
    ag.main(["--model", str(stem), "--variants", str(run), "--data-dir", str(data_dir), "--update-card"])
    assert (run / "model.onnx").exists()
    result = json.loads(stem.with_suffix(".card.json").read_text())["attention_agreement"]
    assert [(m["model"], m["normalisation"]) for m in result["models"]] == [
        (stem.name, arch["normalisation"]),
        ("softmax-s1", "softmax"),
    ]
    assert all(set(m["classes"]) == {"FRI", "FRII"} for m in result["models"])
    assert "| softmax-s1 | softmax |" in stem.with_suffix(".card.md").read_text()

    other = tmp_path / "other-lr"
    shutil.copytree(run, other)
    training = json.loads((other / "training.json").read_text())
    training["train"]["lr"] = t["lr"] / 10
    (other / "training.json").write_text(json.dumps(training))
    with pytest.raises(SystemExit, match="shipped recipe"):
        ag.main(["--model", str(stem), "--variants", str(other), "--data-dir", str(data_dir)])
