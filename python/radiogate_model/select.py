"""Choose a training recipe on the validation split, never on the test batch.

    python -m radiogate_model.select --runs ../runs/mirabest-s1 ... --report-test --out ../out/mirabest-selection.json

A recipe is everything a run was trained with except its seed (and the threads or device it
ran on). Each run is measured on its own validation images (the seeded 20% of the training
batches it never trained on):

- its best validation loss (from training.json: the checkpoint it keeps);
- where its attention falls: the share of the combined attention map on emission pixels over
  the share that uniform attention would put there (`agreement.emission_shares`; the median
  per class).

The recipe: of those with at least `--min-seeds` runs, the lowest mean best validation loss.
Where attention falls is a property of a trained model more than of its recipe: with the same
recipe, some seeds put their attention on the source (median enrichment 2-9) and others on the
sky around it (0.5-0.8, below uniform). So attention chooses the shipped checkpoint, not the recipe:
`shipped_run` is the run with the lowest best validation loss among those whose attention is
on the emission (median enrichment above 1 in both classes), since the worker publishes
attention summaries that must point at the source (the paper's point). A recipe none of whose
seeds does that is not chosen.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from .agreement import attention_maps, combine, emission_mask, emission_shares, onnx_of_run
from .data import CLASS_NAMES, default_data_dir, load_split, train_val_split
from .evaluate import evaluate
from .train import machine_of

# Options that do not make a different recipe.
NOT_RECIPE = ("seed", "threads", "device", "max_batches")
# Options added after some runs were trained, at the value that means what those runs did.
ADDED_LATER = {"ema_decay": 0.0}
MIN_ENRICHMENT = 1.0


def recipe_of(training: dict) -> dict:
    train = {k: v for k, v in {**ADDED_LATER, **training["train"]}.items() if k not in NOT_RECIPE}
    return {**train, **{f"model.{k}": v for k, v in training["model"].items()}}


def measure_run(run: Path, data_dir: Path) -> dict:
    """The run's validation measures, kept in its validation.json (remeasured when the
    checkpoint is newer). Its recipe is read from training.json every time, so that runs
    measured before an option existed group by today's rule."""
    training = json.loads((run / "training.json").read_text())
    cached = run / "validation.json"
    if cached.exists() and cached.stat().st_mtime >= (run / "best.pt").stat().st_mtime:
        measured = json.loads(cached.read_text())
    else:
        measured = _measure(run, training, data_dir)
        cached.write_text(json.dumps(measured, indent=2) + "\n")
    return {**measured, "recipe": recipe_of(training)}


def _measure(run: Path, training: dict, data_dir: Path) -> dict:
    subset, seed = training["train"]["subset"], training["train"]["seed"]
    _, val = train_val_split(load_split(data_dir, subset, train=True), seed=seed)
    probs, gate_maps = attention_maps(onnx_of_run(run), val.images)
    on_emission, area = emission_shares(combine(gate_maps), emission_mask(val.images))
    enrichment = on_emission / area
    return {
        "run": run.name,
        "seed": seed,
        "machine": machine_of(training),
        "best_epoch": training["best"]["epoch"],
        "val_loss": training["best"]["val_loss"],
        "val_accuracy": float((probs.argmax(1) == val.labels).mean()),
        "val_enrichment": {
            name: float(np.median(enrichment[val.labels == label])) for label, name in enumerate(CLASS_NAMES)
        },
    }


def looks_at_source(row: dict) -> bool:
    """Attention on the emission more than uniform attention would put there, in both classes."""
    return all(row["val_enrichment"][c] > MIN_ENRICHMENT for c in CLASS_NAMES)


def shipped_run(rows: list[dict]) -> tuple[dict, bool]:
    """The run to ship of one recipe's runs, and whether its attention is on the emission (when
    no run's is, the lowest validation loss of all)."""
    on_source = [r for r in rows if looks_at_source(r)]
    return min(on_source or rows, key=lambda r: r["val_loss"]), bool(on_source)


def differences(recipes: list[dict]) -> list[str]:
    """A short name for each recipe: the options in which the recipes differ."""
    keys = sorted({k for r in recipes for k in r if len({json.dumps(x.get(k)) for x in recipes}) > 1})
    return [", ".join(f"{k.removeprefix('model.')} {r.get(k)}" for k in keys) or "the one recipe" for r in recipes]


def select(rows: list[dict], min_seeds: int) -> dict:
    recipes: list[dict] = []
    members: list[list[dict]] = []
    for row in rows:
        if row["recipe"] in recipes:
            members[recipes.index(row["recipe"])].append(row)
        else:
            recipes.append(row["recipe"])
            members.append([row])
    summaries = []
    for name, recipe, runs in zip(differences(recipes), recipes, members, strict=True):
        losses = [r["val_loss"] for r in runs]
        ship, on_source = shipped_run(runs)
        why_not = None
        if len(runs) < min_seeds:
            why_not = f"fewer than {min_seeds} seeds"
        elif not on_source:
            why_not = "no seed's attention on the emission"
        summaries.append(
            {
                "recipe": name,
                "seeds": sorted(r["seed"] for r in runs),
                "mean_val_loss": float(np.mean(losses)),
                "std_val_loss": float(np.std(losses)),
                "mean_val_accuracy": float(np.mean([r["val_accuracy"] for r in runs])),
                "seeds_on_source": sum(looks_at_source(r) for r in runs),
                "shipped_run": ship["run"] if on_source else None,
                "why_not": why_not,
                "options": recipe,
                "runs": [{k: v for k, v in r.items() if k != "recipe"} for r in runs],
            }
        )
    eligible = [s for s in summaries if s["why_not"] is None]
    chosen = min(eligible, key=lambda s: s["mean_val_loss"]) if eligible else None
    return {
        "rule": (
            f"recipe: of those with at least {min_seeds} seeds and a seed whose attention is on the emission, the "
            "lowest mean best validation loss; shipped run: the lowest best validation loss among that recipe's "
            f"seeds whose median attention enrichment on emission is above {MIN_ENRICHMENT} in both classes; "
            "all on validation images, the test batch is not used"
        ),
        "chosen": chosen["recipe"] if chosen else None,
        "shipped_run": chosen["shipped_run"] if chosen else None,
        "recipes": sorted(summaries, key=lambda s: s["mean_val_loss"]),
    }


def render(result: dict) -> str:
    test = all("test_accuracy" in s for s in result["recipes"])
    lines = [
        "| recipe | seed | machine | best val loss (epoch) | val accuracy | attention enrichment FRI / FRII | |"
        + (" test accuracy (not used to choose) |" if test else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if test else ""),
    ]
    for s in result["recipes"]:
        for r in sorted(s["runs"], key=lambda r: r["seed"]):
            e = r["val_enrichment"]
            mark = "shipped" if s["recipe"] == result["chosen"] and r["run"] == s["shipped_run"] else ""
            lines.append(
                f"| {s['recipe']} | {r['seed']} | {r['machine']} | {r['val_loss']:.3f} ({r['best_epoch']}) "
                f"| {100 * r['val_accuracy']:.1f}% | {e['FRI']:.2f} / {e['FRII']:.2f} | {mark} |"
                + (f" {100 * r['test_accuracy']:.1f}% |" if test else "")
            )
        mark = "**chosen**" if s["recipe"] == result["chosen"] else (s["why_not"] or "")
        lines.append(
            f"| **{s['recipe']}: mean of {len(s['seeds'])}** | | | {s['mean_val_loss']:.3f} ± {s['std_val_loss']:.3f} "
            f"| {100 * s['mean_val_accuracy']:.1f}% "
            f"| {s['seeds_on_source']} of {len(s['seeds'])} on the source | {mark} |"
            + (f" {100 * s['test_accuracy']['mean']:.1f}% ± {100 * s['test_accuracy']['std']:.1f}% |" if test else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--min-seeds", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the comparison here (JSON)")
    p.add_argument(
        "--report-test", action="store_true", help="also show each run's test accuracy (for the record; never used)"
    )
    a = p.parse_args(argv)
    data_dir = a.data_dir or default_data_dir()
    rows = [measure_run(run, data_dir) for run in a.runs]
    result = select(rows, a.min_seeds)
    result["command"] = shlex.join(
        ["python", "-m", "radiogate_model.select", *(sys.argv[1:] if argv is None else argv)]
    )
    if a.report_test:
        # After the choice, for the record.
        accuracy = {}
        for run, row in zip(a.runs, rows, strict=True):
            evaluation = evaluate(onnx_of_run(run), row["recipe"]["subset"], data_dir, tta=0)
            accuracy[row["run"], json.dumps(row["recipe"], sort_keys=True)] = evaluation["single_pass"]["accuracy"]
        for s in result["recipes"]:
            for r in s["runs"]:
                r["test_accuracy"] = accuracy[r["run"], json.dumps(s["options"], sort_keys=True)]
            acc = [r["test_accuracy"] for r in s["runs"]]
            s["test_accuracy"] = {"mean": float(np.mean(acc)), "std": float(np.std(acc))}
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"chosen: {result['chosen']} ({result['shipped_run']})")


if __name__ == "__main__":
    main()
