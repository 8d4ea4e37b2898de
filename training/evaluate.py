"""Holdout metrics: ranking, calibration and the classification at the operating threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """Mean |observed rate - predicted probability| over equal-width bins, weighted by bin size."""
    y_true, proba = np.asarray(y_true, dtype=float), np.asarray(proba, dtype=float)
    if len(proba) == 0:
        return float("nan")
    bins = np.minimum((proba * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    observed = np.bincount(bins, weights=y_true, minlength=n_bins)
    predicted = np.bincount(bins, weights=proba, minlength=n_bins)
    nonempty = counts > 0
    return float(np.sum(np.abs(observed[nonempty] - predicted[nonempty])) / len(proba))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    """Everything the report and the registry keep about one model on one holdout."""
    y_true = np.asarray(y_true, dtype=int)
    proba = np.clip(np.asarray(proba, dtype=float), 0.0, 1.0)
    predicted = (proba >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    report = classification_report(
        y_true, predicted, labels=[0, 1], target_names=["no_conflict", "conflict"], output_dict=True, zero_division=0
    )
    tn, fp, fn, tp = confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    return {
        "samples": int(len(y_true)),
        "positives": int(y_true.sum()),
        "positive_rate": float(y_true.mean()) if len(y_true) else 0.0,
        "roc_auc": float(roc_auc_score(y_true, proba)) if both_classes else float("nan"),
        "pr_auc": float(average_precision_score(y_true, proba)) if both_classes else float("nan"),
        "brier": float(brier_score_loss(y_true, proba)),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "ece": expected_calibration_error(y_true, proba),
        "threshold": threshold,
        "accuracy": float((predicted == y_true).mean()) if len(y_true) else float("nan"),
        "precision": float(report["conflict"]["precision"]),
        "recall": float(report["conflict"]["recall"]),
        "f1": float(report["conflict"]["f1-score"]),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "classification_report": report,
    }


def curves(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """ROC, precision-recall and reliability curves, for plotting."""
    fpr, tpr, _ = roc_curve(y_true, proba)
    precision, recall, _ = precision_recall_curve(y_true, proba)
    observed, predicted = calibration_curve(y_true, proba, n_bins=n_bins, strategy="quantile")
    return {"roc": (fpr, tpr), "pr": (recall, precision), "reliability": (predicted, observed)}
