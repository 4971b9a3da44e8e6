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


def _attention(subset: str) -> dict:
    card = next(card for card in (json.loads(c.read_text()) for c in CARDS) if card["subset"] == subset)
    agreement = card["attention_agreement"]
    classes = agreement["models"][0]["classes"]
    return {
        name: (
            f"{c['enrichment']['median']:.1f}x",
            f'{c["strongest_peak_distance_px"]["median"] * agreement["pixel_arcsec"]:.1f}"',
        )
        for name, c in classes.items()
    }


def _row(metrics: dict, std: bool = False) -> str:
    """A README table row's numbers: accuracy, ROC AUC, F1 FRI / FRII."""
    if std:
        mean = {k: v["mean"] for k, v in metrics.items()}
        accuracy = f"{100 * mean['accuracy']:.1f}% ± {100 * metrics['accuracy']['std']:.1f}%"
        return f"{accuracy} | {mean['roc_auc']:.3f} | {mean['f1_fri']:.3f} / {mean['f1_frii']:.3f} |"
    return (
        f"{100 * metrics['accuracy']:.1f}% | {metrics['roc_auc']:.3f} | "
        f"{metrics['FRI']['f1']:.3f} / {metrics['FRII']['f1']:.3f} |"
    )


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.name)
def test_the_readme_table_is_the_cards(card_path):
    card = json.loads(card_path.read_text())
    metrics = card["metrics"]
    rows = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| MiraBest")]
    name = "MiraBest*" if card["subset"] == "mirabest_confident" else "MiraBest"
    mine = {line.split(" | ")[1]: line.split(" | ", 2)[2] for line in rows if line.startswith(f"| {name} |")}
    paper = metrics["paper"]
    assert mine["Bowles et al. 2021"] == (
        f"{100 * paper['accuracy']:.1f}% | {paper['roc_auc']:.3f} | {paper['f1_fri']:.3f} / {paper['f1_frii']:.3f} |"
    )
    assert mine["mean of 3 seeds, single pass"] == _row(metrics["mean_over_seeds"]["single_pass"], std=True)
    assert mine["mean of 3 seeds, 36-rotation TTA"] == _row(metrics["mean_over_seeds"]["rotation_tta"], std=True)
    single = next(v for k, v in mine.items() if k.startswith("shipped (") and k.endswith("single pass"))
    assert single == _row(metrics["shipped"]["single_pass"])
    assert mine["shipped, 36-rotation TTA"] == _row(metrics["shipped"]["rotation_tta"])


def test_the_readme_quotes_the_cards_attention_numbers():
    readme = " ".join((REPO / "README.md").read_text().split())
    confident, mirabest = _attention("mirabest_confident"), _attention("mirabest")
    assert (
        f"the 60-epoch MiraBest* model puts {confident['FRI'][0]} (FRI) and {confident['FRII'][0]} (FRII) "
        "the uniform share of its attention on the emission"
    ) in readme
    assert (
        f"The MiraBest model puts {mirabest['FRI'][0]} (FRI) and {mirabest['FRII'][0]} (FRII) on the emission "
        f"of the test images, and its strongest attention peak lies a median {mirabest['FRI'][1]} (FRI) and "
        f"{mirabest['FRII'][1]} (FRII) from bright emission"
    ) in readme


def test_square_views_are_the_squares_symmetries():
    images = np.arange(2 * 9, dtype=np.float32).reshape(2, 1, 3, 3)
    for count in (1, 2, 4, 8):
        views = square_views(images, count)
        assert len(views) == count
        assert len({v.tobytes() for v in views}) == count
    # Every symmetry of the square, each once: the 4 turns of the image and of its transpose.
    expected = {np.rot90(m, k, axes=(2, 3)).tobytes() for m in (images, images.transpose(0, 1, 3, 2)) for k in range(4)}
    assert {v.tobytes() for v in square_views(images, 8)} == expected
