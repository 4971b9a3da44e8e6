"""The committed models: their files match their cards, and the evaluation command
reproduces every number the cards report."""

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from radiogate_model import morphology
from radiogate_model.evaluate import compare, evaluate, square_views
from radiogate_model.fuse import fused_form
from radiogate_model.model import AGCNN, ModelConfig, count_parameters

from .conftest import REPO


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


CARDS = sorted((REPO / "models").glob("*.card.json"))


def test_both_subsets_ship_a_model():
    assert {json.loads(c.read_text())["subset"] for c in CARDS} == {"mirabest_confident", "mirabest"}


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.name)
def test_card_matches_file_and_contract(card_path):
    card = json.loads(card_path.read_text())
    model = REPO / "models" / card["file"]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == card["sha256"]
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    gates = card["architecture"]["gates"]
    assert [o.name for o in sess.get_outputs()] == ["probs"] + [f"attention_{k}" for k in range(1, gates + 1)]
    arch = ModelConfig(**{k: card["architecture"][k] for k in ("gates", "normalisation", "aggregation", "dropout")})
    assert card["parameters"] == count_parameters(AGCNN(arch))
    assert card["training"]["selection"].startswith("lowest validation loss")


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.name)
def test_evaluation_reproduces_card(card_path, data_dir):
    card = json.loads(card_path.read_text())
    shipped = card["metrics"]["shipped"]
    tta = shipped["rotation_tta"]["rotations"] if shipped["rotation_tta"] else 0
    result = evaluate(REPO / "models" / card["file"], card["subset"], data_dir, tta)
    # rel 1e-6: ONNX Runtime's float32 kernels round differently on CPUs with other vector
    # instructions (AVX2 against AVX-512: ECE moved by 1.3e-8, 1.8e-7 of itself), while a
    # count or an accuracy (steps of 1/104 and more) must still be the same.
    assert _flat(result["single_pass"]) == pytest.approx(_flat(shipped["single_pass"]), rel=1e-6, abs=1e-9)
    if tta:
        assert _flat(result["rotation_tta"]) == pytest.approx(_flat(shipped["rotation_tta"]), abs=1e-6)


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.name)
def test_the_fused_form_is_the_model_fused_and_agrees_with_it(card_path, data_dir):
    card = json.loads(card_path.read_text())
    form = card["forms"]["fused"]
    model, fused = REPO / "models" / card["file"], REPO / "models" / form["file"]
    assert hashlib.sha256(fused.read_bytes()).hexdigest() == form["sha256"]
    # The committed file is what radiogate_model.fuse makes of the model, byte for byte.
    made, counts = fused_form(onnx.load(model))
    assert fused.read_bytes() == made.SerializeToString()
    recorded = form["fused"]
    assert (counts["relu"], counts["add_relu"], counts["upsample"]) == (
        recorded["conv_relu"],
        recorded["conv_add_relu"],
        recorded["upsample_matmul"],
    )
    # Same labels on the test batch; outputs within float32 rounding (the card's figures are
    # this machine's; another CPU's kernels may round otherwise).
    result = compare(model, fused, card["subset"], data_dir)
    assert result["labels_differ"] == form["test_batch"]["labels_differ"] == 0
    assert result["max_prob_diff"] <= 1e-5
    assert max(result["max_attention_diff"].values()) <= 1e-5


# What README's model table and docs/operations.md ([inference] views) report for the
# worker's eight views (`python -m radiogate_model.evaluate ... --views 8`): accuracy,
# ROC AUC, F1 FRI / FRII.
VIEWS_8 = {
    "mirabest_confident": (0.952, 0.989, 0.947, 0.956),
    "mirabest": (0.856, 0.933, 0.843, 0.867),
}


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.name)
def test_the_eight_views_score_what_the_documentation_says(card_path, data_dir):
    card = json.loads(card_path.read_text())
    result = evaluate(REPO / "models" / card["file"], card["subset"], data_dir, 0, views=8)
    views = result["square_views"]
    got = (views["accuracy"], views["roc_auc"], views["FRI"]["f1"], views["FRII"]["f1"])
    assert got == pytest.approx(VIEWS_8[card["subset"]], abs=5e-4)


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.name)
def test_the_emission_extent_on_the_card_is_measured_again(card_path, data_dir):
    card = json.loads(card_path.read_text())
    entry = morphology.card_entry(card["subset"], data_dir, card_path.name, REPO / "models" / card["file"])
    assert entry == card["emission_extent"]
    md = card_path.with_name(card_path.name.removesuffix(".json") + ".md").read_text()
    assert morphology.render_section(entry) in md


def test_square_views_are_the_squares_symmetries():
    images = np.arange(2 * 9, dtype=np.float32).reshape(2, 1, 3, 3)
    for count in (1, 2, 4, 8):
        views = square_views(images, count)
        assert len(views) == count
        assert len({v.tobytes() for v in views}) == count
    # Every symmetry of the square, each once: the 4 turns of the image and of its transpose.
    expected = {np.rot90(m, k, axes=(2, 3)).tobytes() for m in (images, images.transpose(0, 1, 3, 2)) for k in range(4)}
    assert {v.tobytes() for v in square_views(images, 8)} == expected
