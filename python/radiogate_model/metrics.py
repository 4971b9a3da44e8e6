"""Classification metrics for the binary FRI/FRII problem, in plain numpy."""

from __future__ import annotations

import itertools

import numpy as np

from .data import CLASS_NAMES


def roc_auc(labels: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of `score` for the positive class 1 (Mann-Whitney, ties halved)."""
    pos, neg = score[labels == 1], score[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of the predicted class's probability, equal-width bins over [0.5, 1] confidence."""
    pred = probs.argmax(1)
    conf = probs.max(1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0.5 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, per-class precision/recall/F1, ROC AUC (FRII positive), ECE."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(1)
    out: dict = {"n": len(labels), "accuracy": float((pred == labels).mean())}
    for cls, name in enumerate(CLASS_NAMES):
        tp = int(((pred == cls) & (labels == cls)).sum())
        fp = int(((pred == cls) & (labels != cls)).sum())
        fn = int(((pred != cls) & (labels == cls)).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int((labels == cls).sum())}
    out["roc_auc"] = roc_auc(labels, probs[:, 1])
    out["ece"] = expected_calibration_error(labels, probs)
    return out
