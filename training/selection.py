"""Choosing the model to ship so that it never loses to the seed baseline.

The seed baseline (standardised, class-balanced logistic regression on the five seed
features) is a candidate like any configuration of the sweep (``{"model": "seed"}``).

1. On the validation slice, a configuration is *eligible* only if it is at least as good
   as the seed baseline on **both** ROC-AUC and PR-AUC; the eligible one with the best PR-AUC
   is chosen (the seed baseline itself when none is eligible). Selection therefore never
   trades one metric away for the other.
2. On the time-ordered holdout, the chosen model (calibrated) must again be at least as good
   as the seed baseline on both; otherwise the seed baseline is shipped instead, calibrated
   with Platt scaling, which is strictly monotone and so keeps its ranking metrics exactly.

Metrics on a holdout with few positives are uncertain, so the report carries bootstrap
confidence intervals and the number of positives next to each value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from conflict_core.features import SEED_FEATURES
from training.evaluate import expected_calibration_error

SEED_CONFIG: dict[str, Any] = {"model": "seed"}
_TOLERANCE = 1e-12


def is_seed(config: dict[str, Any]) -> bool:
    return config.get("model") == "seed"


def columns_for(config: dict[str, Any], features: Sequence[str]) -> list[str]:
    """The features a configuration is trained on (the seed baseline: the five seed features)."""
    return list(SEED_FEATURES) if is_seed(config) else list(features)


def not_worse(scores: dict[str, float], reference: dict[str, float], *, roc: str, pr: str) -> bool:
    return scores[roc] + _TOLERANCE >= reference[roc] and scores[pr] + _TOLERANCE >= reference[pr]


@dataclass(frozen=True)
class Choice:
    config: dict[str, Any]
    scores: dict[str, float]
    reason: str


def choose_on_validation(
    results: Sequence[tuple[dict[str, Any], dict[str, float]]], seed_scores: dict[str, float]
) -> Choice:
    """The best-PR-AUC configuration not worse than the seed baseline on both validation metrics."""
    eligible = [
        (config, scores)
        for config, scores in results
        if scores["selectable"] > 0 and not_worse(scores, seed_scores, roc="val_roc_auc", pr="val_pr_auc")
    ]
    if not eligible:
        return Choice(
            dict(SEED_CONFIG),
            seed_scores,
            "no configuration of the sweep matched the seed baseline on both validation ROC-AUC and PR-AUC",
        )
    config, scores = max(eligible, key=lambda result: result[1]["val_pr_auc"])
    return Choice(
        dict(config),
        scores,
        f"{len(eligible)} of {len(results)} configurations at least match the seed baseline on validation "
        "ROC-AUC and PR-AUC; the best PR-AUC of them",
    )


def ranking_scores(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    return {
        "roc_auc": float(roc_auc_score(y_true, proba)),
        "pr_auc": float(average_precision_score(y_true, proba)),
    }


def bootstrap_intervals(
    y_true: np.ndarray, proba: np.ndarray, *, rounds: int = 300, level: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of ROC-AUC, PR-AUC, Brier and ECE over resampled holdout rows.

    Resamples without both outcomes are skipped (possible with very few positives).
    """
    y_true, proba = np.asarray(y_true, dtype=int), np.asarray(proba, dtype=float)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"roc_auc": [], "pr_auc": [], "brier": [], "ece": []}
    n = len(y_true)
    for _ in range(rounds):
        index = rng.integers(0, n, n)
        y, p = y_true[index], proba[index]
        if y.min() == y.max():
            continue
        draws["roc_auc"].append(roc_auc_score(y, p))
        draws["pr_auc"].append(average_precision_score(y, p))
        draws["brier"].append(brier_score_loss(y, p))
        draws["ece"].append(expected_calibration_error(y, p))
    tail = (1 - level) / 2 * 100
    return {
        name: (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
        if values
        else (float("nan"), float("nan"))
        for name, values in draws.items()
    }
