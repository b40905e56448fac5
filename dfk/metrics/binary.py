"""The one evaluation module: metrics, decision threshold and plots for binary fake detection.

Training's test stage, ``dfk evaluate`` and promotion all call :func:`evaluate_predictions`, so a
metric means the same everywhere. Metrics come from sklearn.metrics; EER, TPR at a fixed FPR and
expected calibration error are derived from its curves (sklearn has no function for them).
Every metric is guarded against single-class inputs, where ROC quantities are undefined (NaN).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from dfk import LABELS
from dfk.metrics.plots import pyplot, save

CLASS_NAMES = [LABELS[0], LABELS[1]]  # index = label


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (losses, error rates, calibration errors)."""
    return any(k in metric for k in ("loss", "eer", "brier", "ece"))


def predicted(y_prob, threshold: float) -> np.ndarray:
    """The decision rule, the same everywhere: 1 (fake) at or above the threshold, else 0 (real)."""
    return (np.asarray(y_prob) >= threshold).astype(int)


def verdict(y_prob, threshold: float):
    """:func:`predicted` as words: "fake"/"real" for one probability, an array of them for many."""
    words = np.array(CLASS_NAMES)[predicted(y_prob, threshold)]
    return str(words) if words.ndim == 0 else words


def _both_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def eer(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold, defined as DeepfakeBench's ``get_test_metrics`` defines it
    (so figures compare with the field's): on sklearn's ROC curve, the point where the false-negative
    and false-positive rates are closest; the EER is that point's false-positive rate."""
    from sklearn.metrics import roc_curve

    if not _both_classes(y_true):
        return math.nan, 0.5
    fpr, tpr, thr = roc_curve(y_true, y_prob)
    i = int(np.nanargmin(np.abs((1 - tpr) - fpr)))
    return float(fpr[i]), float(min(1.0, thr[i]))


def threshold_at_fpr(y_true: np.ndarray, y_prob: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate stays at or below ``target_fpr``."""
    from sklearn.metrics import roc_curve

    if not _both_classes(y_true):
        return 0.5
    fpr, _, thr = roc_curve(y_true, y_prob)
    ok = np.where(fpr <= target_fpr)[0]
    return float(min(1.0, thr[ok[-1]])) if len(ok) else 1.0


def choose_threshold(y_val: Sequence[int], p_val: Sequence[float], target_fpr: float = 0.0) -> float:
    """Decision threshold picked on validation: the EER point, or a target false-positive rate."""
    y, p = np.asarray(y_val), np.asarray(p_val, dtype=np.float64)
    return threshold_at_fpr(y, p, target_fpr) if target_fpr > 0 else eer(y, p)[1]


def tpr_at_fpr(y_true: np.ndarray, y_prob: np.ndarray, fpr_target: float = 0.01) -> float:
    from sklearn.metrics import roc_curve

    if not _both_classes(y_true):
        return math.nan
    fpr, tpr, _ = roc_curve(y_true, y_prob)
    return float(np.interp(fpr_target, fpr, tpr))


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE over equal-width bins, weighted by bin size (sklearn has calibration_curve but no ECE)."""
    bins = np.minimum((y_prob * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs(y_prob[sel].mean() - y_true[sel].mean())
    return float(total)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def fit_temperature(y_true: Sequence[int], y_prob: Sequence[float]) -> float:
    """Temperature scaling: the T minimising validation log loss of sigmoid(logit / T)."""
    from scipy.optimize import minimize_scalar

    y, z = np.asarray(y_true, dtype=np.float64), _logit(y_prob)

    def nll(log_t: float) -> float:
        q = np.clip(1 / (1 + np.exp(-z / np.exp(log_t))), 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    return float(np.exp(minimize_scalar(nll, bounds=(-4, 4), method="bounded").x))


def apply_temperature(y_prob: Sequence[float], temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T); T = 1 (an uncalibrated model) leaves the probabilities as they are."""
    if temperature == 1.0:
        return np.asarray(y_prob, dtype=np.float64)
    return 1 / (1 + np.exp(-_logit(y_prob) / temperature))


def _at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    pred = predicted(p, threshold)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
    }


def compute_metrics(y_true: Sequence[int], y_prob: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    """All metrics, unprefixed: threshold-free ones, then those at 0.5 and at ``threshold``."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y_true).astype(int)
    p = np.clip(np.asarray(y_prob, dtype=np.float64), 0.0, 1.0)
    both = _both_classes(y)
    out = _at_threshold(y, p, 0.5)
    out.update({
        "roc_auc": float(roc_auc_score(y, p)) if both else math.nan,
        "average_precision": float(average_precision_score(y, p)) if both else math.nan,
        "eer": eer(y, p)[0],
        "tpr_at_fpr_1pct": tpr_at_fpr(y, p, 0.01),
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "brier": float(brier_score_loss(y, p, pos_label=1)) if len(y) else math.nan,
        "ece": expected_calibration_error(y, p),
        "threshold": float(threshold),
    })
    out.update({f"{k}_at_threshold": v for k, v in _at_threshold(y, p, threshold).items()})
    return out


@dataclass
class Evaluation:
    """Predictions on one split and everything derived from them."""

    y_true: np.ndarray
    y_prob: np.ndarray
    threshold: float
    metrics: dict[str, float]
    paths: list[str] = field(default_factory=list)

    @property
    def y_pred(self) -> np.ndarray:
        return predicted(self.y_prob, self.threshold)


def evaluate_predictions(y_true, y_prob, threshold: float = 0.5, paths: Sequence[str] = ()) -> Evaluation:
    y = np.asarray(y_true).astype(int)
    p = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    return Evaluation(y, p, threshold, compute_metrics(y, p, threshold), list(paths))


# ----------------------------------------------------------------------------- artifacts
def write_report(ev: Evaluation, out_dir: str | Path, prefix: str = "test") -> list[Path]:
    """Confusion matrix (PNG + JSON), classification report (text + JSON), ROC, PR, reliability."""
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import (ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay,
                                 classification_report, confusion_matrix)

    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    y, p, pred = ev.y_true, ev.y_prob, ev.y_pred

    cm = confusion_matrix(y, pred, labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(cm, display_labels=CLASS_NAMES).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title(f"{prefix}: confusion matrix (threshold {ev.threshold:.3f})")
    written.append(save(fig, out / f"{prefix}_confusion_matrix.png"))
    (out / f"{prefix}_confusion_matrix.json").write_text(json.dumps({
        "labels": CLASS_NAMES, "matrix": cm.tolist(), "threshold": ev.threshold,
        "tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1]),
    }, indent=2))
    written.append(out / f"{prefix}_confusion_matrix.json")

    report_kw = dict(labels=[0, 1], target_names=CLASS_NAMES, zero_division=0)
    (out / f"{prefix}_classification_report.txt").write_text(classification_report(y, pred, digits=4, **report_kw))
    (out / f"{prefix}_classification_report.json").write_text(
        json.dumps(classification_report(y, pred, output_dict=True, **report_kw), indent=2))
    written += [out / f"{prefix}_classification_report.txt", out / f"{prefix}_classification_report.json"]
    if ev.paths:  # each file's score, for error analysis (sort by probability, open the worst)
        table = out / f"{prefix}_predictions.csv"
        with table.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "probability_fake", "predicted"])
            w.writerows((path, CLASS_NAMES[t], f"{prob:.9g}", CLASS_NAMES[v])
                        for path, t, prob, v in zip(ev.paths, y, p, pred))
        written.append(table)

    if _both_classes(y):
        fig, ax = plt.subplots(figsize=(4.5, 4))
        RocCurveDisplay.from_predictions(y, p, ax=ax, name="model", plot_chance_level=True)
        ax.set_title(f"{prefix}: ROC (AUC {ev.metrics['roc_auc']:.3f}, EER {ev.metrics['eer']:.3f})")
        written.append(save(fig, out / f"{prefix}_roc_curve.png"))
        fig, ax = plt.subplots(figsize=(4.5, 4))
        PrecisionRecallDisplay.from_predictions(y, p, ax=ax, name="model", plot_chance_level=True)
        ax.set_title(f"{prefix}: precision-recall (AP {ev.metrics['average_precision']:.3f})")
        written.append(save(fig, out / f"{prefix}_pr_curve.png"))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    CalibrationDisplay.from_predictions(y, p, n_bins=10, ax=ax, name="model")
    ax.set_title(f"{prefix}: reliability (ECE {ev.metrics['ece']:.3f})")
    written.append(save(fig, out / f"{prefix}_reliability_diagram.png"))
    return written


def plot_learning_curves(history: dict[str, list[float]], path: str | Path) -> Path:
    """Accuracy and loss, train vs validation, side by side as in the notebook's figures."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("accuracy", "loss")):
        epochs = range(1, len(history.get(key, [])) + 1)
        ax.plot(epochs, history.get(key, []), "o-", label=f"train {key}")
        ax.plot(epochs, history.get(f"val_{key}", []), "o-", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.legend()
    return save(fig, Path(path))
