"""Train one AG-CNN on a MiraBest subset; keep the checkpoint with the lowest validation loss.

python -m radiogate_model.train --subset mirabest_confident --seed 1 --out runs/mbc-s1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .augment import random_affine
from .data import SUBSETS, data_checksums, default_data_dir, load_split, train_val_split
from .model import AGCNN, AGGREGATIONS, NORMALISATIONS, ModelConfig, count_parameters


@dataclass
class TrainConfig:
    subset: str = "mirabest_confident"
    seed: int = 1
    epochs: int = 60
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # The aggregation head's learning rate, as a multiple of `lr` (see `head_parameters`).
    head_lr_mult: float = 1.0
    warmup_epochs: int = 2
    hflip: bool = True
    threads: int = 1
    # "cpu", or "cuda" / "cuda:N" to train on a GPU (augmentation draws stay on the CPU generator,
    # so a seed draws the same augmentations on either).
    device: str = "cpu"
    # Training images whose statistics replace BatchNorm's running ones after each epoch.
    precise_bn_images: int = 320
    # Keep an exponential moving average of the weights (this decay per step; 0 = off) and
    # validate, checkpoint and ship the average instead of the raw weights.
    ema_decay: float = 0.0
    # For tests: stop an epoch after this many batches (0 = the whole epoch).
    max_batches: int = 0


def set_seed(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Full float32 convolutions on a GPU, as on the CPU (cuDNN would use TF32 on recent GPUs).
    torch.backends.cudnn.allow_tf32 = False
    return torch.Generator().manual_seed(seed)


def describe_machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{platform.machine()} CPU, {threads} thread(s)"


def _lr_at(cfg: TrainConfig, epoch_progress: float) -> float:
    """Linear warm-up, then cosine decay to zero over the run."""
    if epoch_progress < cfg.warmup_epochs:
        return cfg.lr * (epoch_progress + 1e-3) / cfg.warmup_epochs
    t = (epoch_progress - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _unit(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8.astype(np.float32) / 255.0)[:, None]


def _to_model(x01: torch.Tensor) -> torch.Tensor:
    return ((x01 - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)


def head_parameters(model: AGCNN) -> list[torch.nn.Parameter]:
    """The aggregation head's weights. Their inputs are spatial means over mostly empty sky,
    so the class signal in them is small and the weights that read it must grow large: with
    Adam, whose steps are about lr in size whatever the gradient, that takes many steps
    unless the head's lr is larger than the convolutions'."""
    heads = [getattr(model, name) for name in ("per_gate", "fuse", "concat") if hasattr(model, name)]
    return [p for h in heads for p in h.parameters()]


@torch.no_grad()
def recompute_batchnorm(model: AGCNN, images: torch.Tensor, gen: torch.Generator, n: int, hflip: bool) -> None:
    """Replace BatchNorm's running statistics with exact averages over `n` augmented
    training images under the current weights ("precise BN").

    The pooled sums average features over mostly empty sky, so a small lag in the running
    means (momentum 0.1 while the weights move fast) shifts every pooled feature and makes
    eval-mode predictions collapse onto one class early in training.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    order = torch.randperm(len(images), generator=gen)[:n]
    for i in range(0, len(order), 32):
        model(_to_model(random_affine(images[order[i : i + 32]], gen, hflip=hflip)))
    for m in norms:
        m.momentum = 0.1


@torch.no_grad()
def validation_loss(model: AGCNN, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = torch.cat([model(_to_model(images[i : i + 64]))[0] for i in range(0, len(images), 64)])
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc


def train(cfg: TrainConfig, model_cfg: ModelConfig, data_dir: Path, out_dir: Path) -> dict:
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    gen = set_seed(cfg.seed)
    train_split, val_split = train_val_split(load_split(data_dir, cfg.subset, train=True), seed=cfg.seed)
    x_train, y_train = _unit(train_split.images).to(device), torch.from_numpy(train_split.labels).to(device)
    x_val, y_val = _unit(val_split.images).to(device), torch.from_numpy(val_split.labels).to(device)

    model = AGCNN(model_cfg).to(device, memory_format=torch.channels_last)
    head = head_parameters(model)
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    opt = torch.optim.AdamW(
        [{"params": body, "lr_mult": 1.0}, {"params": head, "lr_mult": cfg.head_lr_mult}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    # The model that is validated and checkpointed: the raw weights, or their moving average
    # (whose BatchNorm statistics precise BN then measures under the averaged weights).
    # Without precise BN, the average keeps averages of the running statistics too.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=not cfg.precise_bn_images)
        if cfg.ema_decay
        else None
    )
    kept = ema.module if ema else model
    out_dir.mkdir(parents=True, exist_ok=True)
    best = {"val_loss": float("inf")}
    history = []
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    if cfg.max_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches)
    for epoch in range(cfg.epochs):
        t0 = time.time()
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = group["lr_mult"] * _lr_at(cfg, epoch + step / steps_per_epoch)
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = _to_model(random_affine(x_train[idx], gen, hflip=cfg.hflip))
            logits, _ = model(x)
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema:
                ema.update_parameters(model)
            total += loss.item() * len(idx)
        if cfg.precise_bn_images:
            recompute_batchnorm(kept, x_train, gen, cfg.precise_bn_images, cfg.hflip)
        val_loss, val_acc = validation_loss(kept, x_val, y_val)
        row = {
            "epoch": epoch + 1,
            "train_loss": total / min(len(x_train), steps_per_epoch * cfg.batch_size),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": time.time() - t0,
        }
        history.append(row)
        print(json.dumps(row), flush=True)
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "val_acc": val_acc, "epoch": epoch + 1}
            torch.save(kept.state_dict(), out_dir / "best.pt")
    summary = {
        "train": asdict(cfg),
        "model": asdict(model_cfg),
        "parameters": count_parameters(model),
        "machine": describe_machine(device, cfg.threads),
        "n_train": len(train_split),
        "n_val": len(val_split),
        "best": best,
        "data_sha256": data_checksums(data_dir),
        "history": history,
    }
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2))
    return summary


def machine_of(training: dict) -> str:
    """What a run trained on (training.json; runs from before it recorded this were all
    single-threaded CPU runs)."""
    return training.get("machine") or describe_machine(torch.device("cpu"), training["train"]["threads"])


def load_checkpoint(run_dir: Path) -> AGCNN:
    summary = json.loads((run_dir / "training.json").read_text())
    model = AGCNN(ModelConfig(**summary["model"]))
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", choices=sorted(SUBSETS), default="mirabest_confident")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--head-lr-mult", type=float, default=TrainConfig.head_lr_mult)
    p.add_argument("--no-hflip", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=TrainConfig.device, help='"cpu" or "cuda" (a GPU)')
    p.add_argument("--max-batches", type=int, default=0)
    p.add_argument("--precise-bn-images", type=int, default=TrainConfig.precise_bn_images)
    p.add_argument("--ema-decay", type=float, default=TrainConfig.ema_decay)
    p.add_argument("--gates", type=int, default=3)
    p.add_argument("--normalisation", choices=NORMALISATIONS, default="range_norm")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default="ft")
    a = p.parse_args(argv)
    cfg = TrainConfig(
        subset=a.subset,
        seed=a.seed,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        head_lr_mult=a.head_lr_mult,
        hflip=not a.no_hflip,
        threads=a.threads,
        device=a.device,
        max_batches=a.max_batches,
        precise_bn_images=a.precise_bn_images,
        ema_decay=a.ema_decay,
    )
    model_cfg = ModelConfig(gates=a.gates, normalisation=a.normalisation, aggregation=a.aggregation)
    summary = train(cfg, model_cfg, a.data_dir or default_data_dir(), a.out)
    print(json.dumps({"parameters": summary["parameters"], "best": summary["best"]}))


if __name__ == "__main__":
    main()
