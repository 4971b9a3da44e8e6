"""Choosing the recipe and the shipped run on validation images (radiogate_model.select)."""

import json

import pytest

from radiogate_model.card import build_card
from radiogate_model.model import ModelConfig
from radiogate_model.select import main, measure_run, recipe_of, render, select, shipped_run
from radiogate_model.train import TrainConfig, train


def row(recipe: str, seed: int, loss: float, fri: float, frii: float) -> dict:
    return {
        "run": f"{recipe}-s{seed}",
        "seed": seed,
        "machine": "CPU",
        "best_epoch": 30,
        "val_loss": loss,
        "val_accuracy": 0.8,
        "val_enrichment": {"FRI": fri, "FRII": frii},
        "recipe": {"epochs": {"a": 60, "b": 30, "c": 90}[recipe], "model.gates": 3},
    }


def test_lowest_mean_loss_with_a_seed_on_the_source_and_ships_that_seed():
    rows = [
        # a: lowest loss, but every seed's attention is off the source.
        row("a", 1, 0.30, 0.6, 0.7),
        row("a", 2, 0.31, 3.0, 0.9),
        row("a", 3, 0.29, 0.5, 0.6),
        # b: chosen; its lowest-loss seed looks away, so seed 2 ships.
        row("b", 1, 0.33, 0.7, 0.6),
        row("b", 2, 0.36, 3.5, 2.9),
        row("b", 3, 0.37, 2.1, 1.8),
        # c: lowest loss of all, too few seeds.
        row("c", 1, 0.20, 3.0, 3.0),
    ]
    result = select(rows, min_seeds=3)
    assert result["chosen"] == "epochs 30"
    assert result["shipped_run"] == "b-s2"
    why = {r["recipe"]: r["why_not"] for r in result["recipes"]}
    assert why == {
        "epochs 60": "no seed's attention on the emission",
        "epochs 30": None,
        "epochs 90": "fewer than 3 seeds",
    }
    table = render(result)
    assert "| epochs 30 | 2 | CPU | 0.360 (30) | 80.0% | 3.50 / 2.90 | shipped |" in table
    assert "2 of 3 on the source | **chosen** |" in table


def test_without_a_seed_on_the_source_the_lowest_loss_ships():
    rows = [row("a", 1, 0.30, 0.6, 0.7), row("a", 2, 0.25, 0.9, 1.4)]
    ship, on_source = shipped_run(rows)
    assert (ship["run"], on_source) == ("a-s2", False)
    assert select(rows, min_seeds=2)["chosen"] is None


@pytest.fixture(scope="module")
def short_runs(data_dir, tmp_path_factory):
    runs = []
    for seed in (1, 2):
        out = tmp_path_factory.mktemp(f"run{seed}")
        cfg = TrainConfig(subset="mirabest_confident", seed=seed, epochs=1, max_batches=2, precise_bn_images=32)
        train(cfg, ModelConfig(), data_dir, out)
        runs.append(out)
    return runs


def test_a_run_is_measured_on_its_own_validation_images(data_dir, short_runs):
    measured = measure_run(short_runs[0], data_dir)
    assert measured["seed"] == 1
    assert measured["machine"].endswith("CPU, 1 thread(s)")
    assert set(measured["val_enrichment"]) == {"FRI", "FRII"}
    assert all(v > 0 for v in measured["val_enrichment"].values())
    assert measured["recipe"]["epochs"] == 1
    assert "seed" not in measured["recipe"]
    # The cache keeps what was measured; the recipe always comes from training.json.
    cached = short_runs[0] / "validation.json"
    cached.write_text(json.dumps({**json.loads(cached.read_text()), "recipe": {"stale": True}}))
    assert measure_run(short_runs[0], data_dir) == measured


def test_the_card_ships_the_selections_run_and_refuses_other_runs(data_dir, short_runs, tmp_path):
    rows = [measure_run(run, data_dir) for run in short_runs]
    ship, _ = shipped_run(rows)
    # Two batches of training decide nothing about attention: the comparison shown in the card is
    # made to choose this recipe; the shipped seed is still the card's own choice.
    selection = select([r | {"val_enrichment": {"FRI": 2.0, "FRII": 2.0}} for r in rows], min_seeds=2)
    card = build_card("mirabest_confident", short_runs, tmp_path / "m", data_dir, tta=0, selection=selection)
    assert card["training"]["shipped_seed"] == ship["seed"]
    assert [s["val_attention_enrichment"] for s in card["metrics"]["seeds"]] == [r["val_enrichment"] for r in rows]
    markdown = (tmp_path / "m.card.md").read_text()
    assert "| seed | best val loss | val attention enrichment FRI / FRII |" in markdown
    assert "## How the recipe was chosen" in markdown
    assert json.loads((tmp_path / "m.card.json").read_text())["training"]["recipe_selection"] == selection
    with pytest.raises(SystemExit, match="chose no recipe"):
        build_card("mirabest_confident", short_runs, tmp_path / "n", data_dir, tta=0, selection=select(rows[:1], 2))
    with pytest.raises(SystemExit, match="not those of the selection"):
        build_card("mirabest_confident", short_runs[:1], tmp_path / "n", data_dir, tta=0, selection=selection)


def test_the_command_writes_the_comparison_and_reports_test_accuracy_after_it(data_dir, short_runs, tmp_path, capsys):
    out = tmp_path / "selection.json"
    runs = [str(r) for r in short_runs]
    main(["--runs", *runs, "--data-dir", str(data_dir), "--min-seeds", "2", "--out", str(out), "--report-test"])
    result = json.loads(out.read_text())
    (recipe,) = result["recipes"]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in recipe["runs"])
    assert recipe["test_accuracy"]["mean"] == pytest.approx(sum(r["test_accuracy"] for r in recipe["runs"]) / 2)
    assert "test accuracy (not used to choose)" in capsys.readouterr().out
    assert result["command"].startswith("python -m radiogate_model.select --runs ")


def test_runs_from_before_an_option_existed_share_a_recipe_with_runs_that_leave_it_off():
    old = {"train": {"seed": 1, "epochs": 60, "lr": 3e-3}, "model": {"gates": 2}}
    new = {"train": {"seed": 2, "epochs": 60, "lr": 3e-3, "ema_decay": 0.0}, "model": {"gates": 2}}
    averaged = {"train": {"seed": 3, "epochs": 60, "lr": 3e-3, "ema_decay": 0.998}, "model": {"gates": 2}}
    assert recipe_of(old) == recipe_of(new) != recipe_of(averaged)
