"""Pick the shipped model of a set of training runs by validation loss, export it, and
write its model card (JSON and Markdown) with every number computed here.

    python -m radiogate_model.card --subset mirabest_confident \
        --runs runs/mirabest_confident-s1 runs/mirabest_confident-s2 runs/mirabest_confident-s3 \
        --out ../models/agcnn-mirabest-confident

Each run is exported and evaluated on the test batch (single pass and rotation TTA). The
shipped run is the one with the lowest best validation loss among those whose attention on
their validation images is on the emission (radiogate_model.select): test numbers never
choose. With `--selection` (radiogate_model.select's JSON), the card also shows how the
recipe was chosen, and the runs must be that comparison's chosen recipe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path

import onnxruntime
import torch

from .data import default_data_dir
from .evaluate import evaluate
from .export import OPSET, export
from .select import measure_run, render, shipped_run
from .train import load_checkpoint, machine_of

# Bowles et al. 2021, range_norm + ft, 3 gates (their table of test results).
PAPER_ARCHITECTURE = "range_norm attention with the `ft` aggregation and 3 gates"
PAPER = {
    "mirabest_confident": {"accuracy": 0.917, "roc_auc": 0.964, "f1_fri": 0.914, "f1_frii": 0.919},
    "mirabest": {"accuracy": 0.844, "roc_auc": 0.920, "f1_fri": 0.823, "f1_frii": 0.860},
}
# The side of gate k's attention map (gate 1 on the coarsest block), for a 150x150 input.
GATE_SIDES = (37, 75, 150)
MIN_MAX = (
    "each gate's min and max taken as global max pools (radiogate_model.reductions: the outputs PyTorch's "
    "export gives, bit for bit)"
)
SUBSET_TITLES = {"mirabest_confident": "MiraBest* (confident only)", "mirabest": "MiraBest (confident + uncertain)"}


def _row(m: dict) -> dict:
    return {
        "accuracy": m["accuracy"],
        "roc_auc": m["roc_auc"],
        "f1_fri": m["FRI"]["f1"],
        "f1_frii": m["FRII"]["f1"],
        "ece": m["ece"],
    }


def _mean_std(rows: list[dict]) -> dict:
    return {
        k: {"mean": statistics.fmean(r[k] for r in rows), "std": statistics.pstdev(r[k] for r in rows)} for k in rows[0]
    }


def head_departure(model: dict) -> str:
    """How this model's head and gates differ from the configuration of the paper's results row."""
    return (
        f"Head and gates: the `{model['aggregation']}` aggregation with {model['gates']} gates "
        f"({model['normalisation']} attention), the recipe chosen on validation images; the paper's row in "
        f"the results table is its {PAPER_ARCHITECTURE}, so that row compares another configuration of the "
        "same network, not this one retrained."
    )


def train_command(subset: str, seeds: list[int], config: dict, architecture: dict) -> str:
    """The scripts/train-models.sh call that trains these seeds with this recipe and writes the card."""
    args = (
        f"--epochs {config['epochs']} --lr {config['lr']} --gates {architecture['gates']} "
        f"--aggregation {architecture['aggregation']} --normalisation {architecture['normalisation']}"
    )
    if config.get("device", "cpu") != "cpu":
        args += f" --device {config['device']}"
    return f'SUBSETS={subset} SEEDS="{" ".join(map(str, seeds))}" TRAIN_ARGS="{args}" scripts/train-models.sh'


def build_card(
    subset: str, runs: list[Path], out_stem: Path, data_dir: Path, tta: int, selection: dict | None = None
) -> dict:
    if selection is not None:
        if selection["chosen"] is None:
            raise SystemExit("the selection chose no recipe")
        chosen = next(r for r in selection["recipes"] if r["recipe"] == selection["chosen"])
        if sorted(r["run"] for r in chosen["runs"]) != sorted(run.name for run in runs):
            raise SystemExit(f"the runs are not those of the selection's chosen recipe ({selection['chosen']})")
    per_seed = []
    for run in runs:
        training = json.loads((run / "training.json").read_text())
        onnx_path = run / "model.onnx"
        digest = export(load_checkpoint(run), onnx_path)
        result = evaluate(onnx_path, subset, data_dir, tta)
        validation = measure_run(run, data_dir)
        per_seed.append(
            {"run": run.name, "training": training, "sha256": digest, "evaluation": result, "validation": validation}
        )
    ship, on_source = shipped_run([r["validation"] for r in per_seed])
    shipped = next(r for r in per_seed if r["run"] == ship["run"])
    model_path = out_stem.with_suffix(".onnx")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes((Path(shipped["evaluation"]["model"])).read_bytes())
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert sha == shipped["sha256"]
    train_cfg = shipped["training"]["train"]
    card = {
        "name": out_stem.name,
        "file": model_path.name,
        "sha256": sha,
        "task": "FRI (class 0) vs FRII (class 1) radio galaxy classification",
        "paper": "Bowles, Scaife, Porter, Tang & Bastien 2021, MNRAS 501, 4579",
        "subset": subset,
        "subset_title": SUBSET_TITLES[subset],
        "architecture": shipped["training"]["model"] | {"standardise_pooled": False},
        "parameters": shipped["training"]["parameters"],
        "export": {
            "opset": OPSET,
            "input": "image float32 [N,1,150,150], uint8/255 normalised with mean 0.5, std 0.5",
            "outputs": "probs [N,2] softmax (FRI, FRII); "
            + ", ".join(
                f"attention_{k} [N,1,{side},{side}]"
                for k, side in enumerate(GATE_SIDES[: shipped["training"]["model"]["gates"]], start=1)
            ),
            "min_max": MIN_MAX,
        },
        "per_image_normalisation": (
            "Every attention normalisation is computed per image. The authors' range_norm took its min and max "
            "over the whole batch tensor, so their predictions depended on the batchmates; here an image's outputs "
            "are the same alone and in any batch (tested to 1e-6)."
        ),
        "head": head_departure(shipped["training"]["model"]),
        "loss": (
            "Cross-entropy on logits. The authors applied softmax before a cross-entropy loss that applies it "
            "again; the exported graph applies softmax once, after the network."
        ),
        "pooling": (
            "Spatial sum of each gated feature map, as in the paper. Training standardises each pooled vector with "
            "a parameter-free BatchNorm (the sums run over mostly empty sky, so the class signal is a small change "
            "on a large offset, in units that differ 400-fold between gates, which is why the authors needed an lr "
            "of 5e-5 and hours of training); export folds its fixed statistics into the head's first linear "
            "layer, so the shipped graph is exactly the sum-pooling network, parameter for parameter."
        ),
        "training_changes": (
            "The paper trained with Adam at a fixed lr of 5e-5 for about 8 hours per model on a GPU. Here: "
            f"AdamW (weight decay {train_cfg['weight_decay']}), peak lr {train_cfg['lr']} with "
            f"{train_cfg['warmup_epochs']} warm-up epochs and cosine decay over {train_cfg['epochs']} epochs, "
            f"batch {train_cfg['batch_size']}"
            + (f", head lr x{train_cfg['head_lr_mult']}" if train_cfg.get("head_lr_mult", 1.0) != 1.0 else "")
            + ", the paper's RandomAffine augmentation (rotation up to 180 degrees, "
            "translation 2/150, scale 0.9-1.1, bilinear)"
            + (
                " plus random horizontal flips (FR class does not change under reflection)"
                if train_cfg["hflip"]
                else ""
            )
            + f"; BatchNorm statistics recomputed over {train_cfg['precise_bn_images']} augmented training images "
            "after every epoch (precise BN), because lagging running means made eval-mode predictions collapse "
            "onto one class early in training."
        ),
        "training": {
            "selection": "lowest validation loss over epochs; shipped seed = lowest best validation loss "
            + (
                "among the seeds whose attention on their validation images is on the emission (median "
                "enrichment above 1 in FRI and FRII)"
                if on_source
                else "(no seed's attention on its validation images was on the emission)"
            ),
            **({"recipe_selection": selection} if selection is not None else {}),
            "shipped_seed": train_cfg["seed"],
            "shipped_epoch": shipped["training"]["best"]["epoch"],
            "config": train_cfg,
            "n_train": shipped["training"]["n_train"],
            "n_val": shipped["training"]["n_val"],
            "seeds": [r["training"]["train"]["seed"] for r in per_seed],
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "machine": machine_of(shipped["training"]),
        },
        "data": {
            "dataset": "MiraBest (Porter & Scaife), CC BY 4.0; images from the FIRST survey "
            "(Becker, White & Helfand 1995)",
            "test": "official test_batch, never used for model selection",
            "sha256": shipped["training"].get("data_sha256", {}),
        },
        "metrics": {
            "shipped": {
                "single_pass": shipped["evaluation"]["single_pass"],
                "rotation_tta": shipped["evaluation"].get("rotation_tta"),
            },
            "seeds": [
                {
                    "seed": r["training"]["train"]["seed"],
                    "best_val_loss": r["training"]["best"]["val_loss"],
                    "val_attention_enrichment": r["validation"]["val_enrichment"],
                    "single_pass": _row(r["evaluation"]["single_pass"]),
                    "rotation_tta": (
                        _row(r["evaluation"]["rotation_tta"]) if "rotation_tta" in r["evaluation"] else None
                    ),
                }
                for r in per_seed
            ],
            "mean_over_seeds": {
                "single_pass": _mean_std([_row(r["evaluation"]["single_pass"]) for r in per_seed]),
                **(
                    {"rotation_tta": _mean_std([_row(r["evaluation"]["rotation_tta"]) for r in per_seed])}
                    if tta > 1
                    else {}
                ),
            },
            "paper": PAPER[subset],
        },
        "reproduce": {
            "train": train_command(
                subset,
                [r["training"]["train"]["seed"] for r in per_seed],
                train_cfg,
                shipped["training"]["model"],
            ),
            "evaluate": f"cd python && python -m radiogate_model.evaluate --model ../models/{model_path.name} "
            f"--subset {subset} --tta {tta}",
            **({"select": f"cd python && {selection['command']}"} if selection and "command" in selection else {}),
        },
    }
    out_stem.with_suffix(".card.json").write_text(json.dumps(card, indent=2) + "\n")
    out_stem.with_suffix(".card.md").write_text(render_markdown(card))
    return card


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_markdown(card: dict) -> str:
    m = card["metrics"]
    single, tta = m["shipped"]["single_pass"], m["shipped"]["rotation_tta"]
    mean = m["mean_over_seeds"]
    paper = m["paper"]
    n_seeds = len(m["seeds"])

    def line(name: str, r: dict) -> str:
        return f"| {name} | {_pct(r['accuracy'])} | {r['roc_auc']:.3f} | {r['f1_fri']:.3f} / {r['f1_frii']:.3f} |"

    def mean_line(name: str, r: dict) -> str:
        return (
            f"| {name} | {_pct(r['accuracy']['mean'])} ± {_pct(r['accuracy']['std'])} | "
            f"{r['roc_auc']['mean']:.3f} | {r['f1_fri']['mean']:.3f} / {r['f1_frii']['mean']:.3f} |"
        )

    lines = [
        f"# Model card: {card['name']}",
        "",
        f"AG-CNN ({card['paper']}) trained on **{card['subset_title']}**: {card['task']}.",
        "",
        f"- File: `models/{card['file']}`, sha256 `{card['sha256']}`",
        f"- Architecture: {card['architecture']['gates']} gates, {card['architecture']['normalisation']}, "
        f"{card['architecture']['aggregation']} aggregation; {card['parameters']:,} trainable parameters",
        f"- Export: ONNX opset {card['export']['opset']}; input {card['export']['input']}; "
        f"outputs {card['export']['outputs']}"
        + (f"; {card['export']['min_max']}" if "min_max" in card["export"] else ""),
        f"- Rewritten: {card['rewritten']}" if "rewritten" in card else None,
        f"- Trained on {card['training']['n_train']} images, validated on {card['training']['n_val']} "
        f"(seeded 20% of the training batches); shipped seed {card['training']['shipped_seed']}, "
        f"epoch {card['training']['shipped_epoch']}, chosen by {card['training']['selection']}",
        f"- Data: {card['data']['dataset']}. Test set: {card['data']['test']}.",
        "",
        "## Test results",
        "",
        "| model | accuracy | ROC AUC | F1 FRI / FRII |",
        "|---|---|---|---|",
        line("Bowles et al. 2021 (paper)", paper),
        line("shipped, single pass", _row(single)),
        line(f"shipped, rotation TTA ({tta['rotations']} rotations)", _row(tta)) if tta else "",
        mean_line(f"mean ± std over {n_seeds} seeds, single pass", mean["single_pass"]),
        mean_line(f"mean ± std over {n_seeds} seeds, rotation TTA", mean["rotation_tta"])
        if "rotation_tta" in mean
        else "",
        "",
        f"Shipped model, single pass: precision FRI {single['FRI']['precision']:.3f}, "
        f"FRII {single['FRII']['precision']:.3f}; recall FRI {single['FRI']['recall']:.3f}, "
        f"FRII {single['FRII']['recall']:.3f}; expected calibration error {single['ece']:.3f}.",
        "",
        "| seed | best val loss | val attention enrichment FRI / FRII | single-pass accuracy | AUC | TTA accuracy |",
        "|---|---|---|---|---|---|",
        *[
            f"| {s['seed']} | {s['best_val_loss']:.4f} | {s['val_attention_enrichment']['FRI']:.2f} / "
            f"{s['val_attention_enrichment']['FRII']:.2f} | {_pct(s['single_pass']['accuracy'])} | "
            f"{s['single_pass']['roc_auc']:.3f} | "
            f"{_pct(s['rotation_tta']['accuracy']) if s['rotation_tta'] else '-'} |"
            for s in m["seeds"]
        ],
        "",
        *(
            [
                "## How the recipe was chosen",
                "",
                f"On the validation images only: {sel['rule']}. Enrichment: the median over images of the share "
                "of the combined attention map on emission pixels over the emission's share of the image "
                "(1: no better than uniform attention).",
                "",
                render(sel),
                "",
            ]
            if (sel := card["training"].get("recipe_selection"))
            else []
        ),
        "## Departures from the authors' code",
        "",
        f"- {card['per_image_normalisation']}",
        f"- {card['head']}" if "head" in card else None,
        f"- {card['loss']}",
        f"- {card['pooling']}",
        f"- {card['training_changes']}",
        "",
        "## Training configuration",
        "",
        "```json",
        json.dumps(card["training"]["config"], indent=2),
        "```",
        "",
        "## Reproduce",
        "",
        f"- Train all seeds and write this card: `{card['reproduce']['train']}`",
        f"- Evaluate the shipped file: `{card['reproduce']['evaluate']}`",
        f"- Compare the recipes: `{card['reproduce']['select']}`" if "select" in card["reproduce"] else None,
        "",
    ]
    return "\n".join(x for x in lines if x is not None) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", required=True, choices=sorted(PAPER))
    p.add_argument("--runs", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True, help="output stem, e.g. ../models/agcnn-mirabest")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--tta", type=int, default=36)
    p.add_argument("--selection", type=Path, help="radiogate_model.select's comparison of recipes (JSON)")
    a = p.parse_args(argv)
    selection = json.loads(a.selection.read_text()) if a.selection else None
    card = build_card(a.subset, a.runs, a.out, a.data_dir or default_data_dir(), a.tta, selection)
    print(render_markdown(card))


if __name__ == "__main__":
    main()
