"""The attention-gated CNN (AG-CNN) of Bowles et al. 2021, MNRAS 501, 4579.

Architecture as in the authors' published code, with two deliberate departures:
every attention normalisation is computed per image (the authors' range_norm took
its min and max over the whole batch, so a prediction depended on its batchmates),
and the network returns logits (the authors applied softmax before a cross-entropy
loss that applies it again). The exported ONNX graph adds the final softmax.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORMALISATIONS = ("softmax", "sigmoid", "range_norm", "std_mean_norm")
AGGREGATIONS = ("ft", "concat", "mean", "deep_sup")
IMAGE_SIZE = 150
# Channels of the feature maps that gates 1, 2 and 3 act on (blocks 3, 2 and 1).
GATE_CHANNELS = (32, 16, 6)
GATING_CHANNELS = 64


@dataclass(frozen=True)
class ModelConfig:
    """Architecture options of one AG-CNN."""

    gates: int = 3
    normalisation: str = "range_norm"
    aggregation: str = "ft"
    dropout: float = 0.5
    # Train with each pooled vector standardised by a parameter-free BatchNorm (see
    # AGCNN.fold_pooling); exported models have it folded into the head.
    standardise_pooled: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.gates <= 3:
            raise ValueError(f"gates must be 0..3, got {self.gates}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}")


def _conv_block(channels: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(channels):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def normalise_attention(psi: torch.Tensor, method: str) -> torch.Tensor:
    """Turn raw gate scores psi [N,1,H,W] into an attention map, per image."""
    n = psi.shape[0]
    flat = psi.reshape(n, -1)
    if method == "softmax":
        out = torch.softmax(flat, dim=1)
    elif method == "sigmoid":
        out = torch.sigmoid(flat)
    elif method == "range_norm":
        lo = flat.min(dim=1, keepdim=True).values
        hi = flat.max(dim=1, keepdim=True).values
        out = (flat - lo) / (hi - lo).clamp_min(1e-12)
    elif method == "std_mean_norm":
        lo = flat.min(dim=1, keepdim=True).values
        hi = flat.max(dim=1, keepdim=True).values
        # The authors' formula ((psi - min) / max - 0.5) / 0.25; max guarded away from 0.
        safe_hi = torch.where(hi.abs() < 1e-12, torch.full_like(hi, 1e-12), hi)
        out = ((flat - lo) / safe_hi - 0.5) / 0.25
    else:
        raise ValueError(f"unknown normalisation {method!r}")
    return out.reshape_as(psi)


class AttentionGate(nn.Module):
    """Additive attention gate: where in x does the coarse gating signal g point?"""

    def __init__(self, in_channels: int, normalisation: str) -> None:
        super().__init__()
        self.theta = nn.Conv2d(in_channels, GATING_CHANNELS, 1, bias=False)
        self.phi = nn.Conv2d(GATING_CHANNELS, GATING_CHANNELS, 1, bias=False)
        self.psi = nn.Conv2d(GATING_CHANNELS, 1, 1, bias=True)
        nn.init.constant_(self.psi.bias, 10.0)
        self.normalisation = normalisation

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi_g = F.interpolate(self.phi(g), size=x.shape[2:], mode="bilinear", align_corners=False)
        psi = self.psi(F.relu(self.theta(x) + phi_g))
        attention = normalise_attention(psi, self.normalisation)
        return x * attention, attention


class AGCNN(nn.Module):
    """Returns (logits [N,2], attention maps [N,1,H,W] for gates 1..gates)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        self.block1 = _conv_block([1, 6, 6, 6])
        self.block2 = _conv_block([6, 16, 16, 16])
        self.block3 = _conv_block([16, 32, 32, 32])
        self.block4 = _conv_block([32, 64, 64])
        self.gates = nn.ModuleList(AttentionGate(c, cfg.normalisation) for c in GATE_CHANNELS[: cfg.gates])
        self.dropout = nn.Dropout(cfg.dropout)
        pooled = list(GATE_CHANNELS[: cfg.gates]) or [GATING_CHANNELS]
        if cfg.standardise_pooled:
            self.pool_norms = nn.ModuleList(nn.BatchNorm1d(c, affine=False) for c in pooled)
        if cfg.aggregation in ("ft", "mean", "deep_sup"):
            self.per_gate = nn.ModuleList(nn.Linear(c, 2) for c in pooled)
        if cfg.aggregation == "ft":
            self.fuse = nn.Linear(2 * len(pooled), 2)
        if cfg.aggregation in ("concat", "deep_sup"):
            self.concat = nn.Linear(sum(pooled), 2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x1 = self.block1(image)
        x2 = self.block2(F.max_pool2d(x1, 2))
        x3 = self.block3(F.max_pool2d(x2, 2))
        g = self.block4(F.max_pool2d(x3, 2))
        features = [x3, x2, x1]
        pooled: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        for index, (gate, x) in enumerate(zip(self.gates, features, strict=False)):
            gated, attention = gate(x, g)
            pooled.append(self._pool(gated, index))
            attentions.append(attention)
        if not pooled:
            pooled.append(self._pool(g, 0))
        return self._aggregate(pooled), attentions

    def _pool(self, x: torch.Tensor, index: int) -> torch.Tensor:
        pooled = x.sum(dim=(2, 3))
        if hasattr(self, "pool_norms"):
            pooled = self.pool_norms[index](pooled)
        return self.dropout(pooled)

    @torch.no_grad()
    def fold_pooling(self) -> None:
        """Make this the paper's plain spatial-sum network, computing the same function.

        Training standardises each pooled vector (a BatchNorm without parameters). The sums
        run over mostly empty sky, so the class signal in them is a small change on a large
        offset, in units that differ by a factor of 400 between gates; read by a head in
        those units, Adam (whose steps are about lr whatever the gradient) needs the authors'
        lr of 5e-5 and hours of training. Standardised, the head learns at ordinary rates.
        In eval mode the standardisation is an affine map with fixed statistics, so folding
        it into the head's first linear layers (weights / std, bias - weights . mean / std)
        leaves exactly the sum-pooling architecture, with no extra parameters.
        """
        if not hasattr(self, "pool_norms"):
            return
        scales, shifts = [], []
        for norm in self.pool_norms:
            std = torch.sqrt(norm.running_var + norm.eps)
            scales.append(1.0 / std)
            shifts.append(norm.running_mean / std)

        def fold(linear: nn.Linear, scale: torch.Tensor, shift: torch.Tensor, cols: slice) -> None:
            w = linear.weight[:, cols]
            linear.bias -= w @ shift
            linear.weight[:, cols] = w * scale

        if hasattr(self, "per_gate"):
            for head, scale, shift in zip(self.per_gate, scales, shifts, strict=True):
                fold(head, scale, shift, slice(None))
        if hasattr(self, "concat"):
            col = 0
            for scale, shift in zip(scales, shifts, strict=True):
                fold(self.concat, scale, shift, slice(col, col + len(scale)))
                col += len(scale)
        del self.pool_norms

    def _aggregate(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        agg = self.config.aggregation
        if agg == "ft":
            heads = [F.relu(head(p)) for head, p in zip(self.per_gate, pooled, strict=True)]
            return self.fuse(torch.cat(heads, dim=1))
        if agg == "concat":
            return self.concat(torch.cat(pooled, dim=1))
        per_gate = [head(p) for head, p in zip(self.per_gate, pooled, strict=True)]
        if agg == "mean":
            return torch.stack(per_gate).mean(dim=0)
        return torch.stack([self.concat(torch.cat(pooled, dim=1)), *per_gate]).mean(dim=0)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ExportWrapper(nn.Module):
    """The export contract: image [N,1,150,150] -> probs [N,2], attention_1..3."""

    def __init__(self, model: AGCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, attentions = self.model(image)
        return (torch.softmax(logits, dim=1), *attentions)
