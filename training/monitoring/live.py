"""Rolling live metrics of the served predictions, with the confidence bounds alerts use.

At a conflict rate of a few percent accuracy says little (answering "no conflict" every
time scores above 90%), so besides the seed's accuracy rule this measures recall and
precision at the operating threshold, PR-AUC, Brier score and calibration error of the
active model's own answers, and the share of answers that came from the fallback heuristics.
Each figure comes with its one-sided confidence bounds (:mod:`training.monitoring.significance`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conflict_core import registry
from conflict_core.store import PredictionLog
from training.evaluate import expected_calibration_error
from training.monitoring.significance import bootstrap_bounds, wilson_bounds

DEFAULT_ALPHA = 0.01


def live_metrics(
    session: Session,
    *,
    now: dt.datetime,
    window: dt.timedelta = dt.timedelta(days=7),
    threshold: float | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Rolling metrics of the predictions made in ``(now - window, now]``.

    ``accuracy`` covers every labelled prediction (what clients experienced, fallbacks
    included). The ``model`` block covers only the active model's own answers, scored at its
    operating threshold, so that it compares like for like with its holdout figures.
    """
    start = now - window
    in_window = (PredictionLog.created_at > start, PredictionLog.created_at <= now)
    counts = session.execute(
        select(
            func.count(),
            func.count(PredictionLog.fallback_reason),
            func.count(PredictionLog.actual_conflict_occurred),
            func.count(PredictionLog.outcome_status),
        ).where(*in_window)
    ).one()
    total, fallback, labelled, with_status = (int(c) for c in counts)
    active = registry.active(session)
    rows = session.execute(
        select(
            PredictionLog.model_version,
            PredictionLog.fallback_reason,
            PredictionLog.probability,
            PredictionLog.prediction_correct,
            PredictionLog.actual_conflict_occurred,
        ).where(*in_window, PredictionLog.actual_conflict_occurred.is_not(None))
    ).all()
    frame = pd.DataFrame(rows, columns=["model_version", "fallback_reason", "probability", "correct", "actual"])
    correct = int(frame["correct"].astype(bool).sum())
    accuracy = correct / len(frame) if len(frame) else None

    model_threshold = threshold
    if active is not None:
        model_threshold = float(active.metrics.get("threshold", threshold if threshold is not None else 0.5))
        mine = frame[(frame["model_version"] == active.version) & frame["fallback_reason"].isna()]
    else:
        mine = frame[frame["fallback_reason"].isna()]
    return {
        "window": {"start": start.isoformat(), "end": now.isoformat(), "days": window / dt.timedelta(days=1)},
        "predictions": total,
        "labelled": labelled,
        "no_sync": with_status - labelled,
        "pending": total - with_status,
        "fallback": fallback,
        "fallback_rate": fallback / total if total else None,
        "fallback_rate_bounds": wilson_bounds(fallback, total, alpha) if total else None,
        "accuracy": accuracy,
        "accuracy_bounds": wilson_bounds(correct, len(frame), alpha) if len(frame) else None,
        "model_version": active.version if active else None,
        "holdout": dict(active.metrics.get("holdout", {})) if active else None,
        "model": model_quality(mine, model_threshold if model_threshold is not None else 0.5, alpha),
    }


def model_quality(frame: pd.DataFrame, threshold: float, alpha: float | None = DEFAULT_ALPHA) -> dict[str, Any]:
    """Quality of one set of labelled answers; ``bounds`` holds each figure's one-sided
    ``1 - alpha`` (lower, upper) bounds (``alpha=None``: point figures only)."""
    from sklearn.metrics import average_precision_score, brier_score_loss

    y = frame["actual"].astype(bool).to_numpy(dtype=int)
    proba = frame["probability"].to_numpy(dtype=float)
    n, positives = len(y), int(y.sum())
    quality: dict[str, Any] = {"labelled": n, "positives": positives, "threshold": threshold}
    if n == 0:
        return quality
    predicted = proba >= threshold
    tp, flagged = int(np.sum(predicted & (y == 1))), int(predicted.sum())
    quality.update(
        positive_rate=positives / n,
        precision=tp / flagged if flagged else None,
        recall=tp / positives if positives else None,
        pr_auc=float(average_precision_score(y, proba)) if 0 < positives < n else None,
        brier=float(brier_score_loss(y, proba)),
        ece=expected_calibration_error(y, proba),
    )
    if alpha is None:
        return quality
    bounds: dict[str, tuple[float, float] | None] = {
        "precision": wilson_bounds(tp, flagged, alpha) if flagged else None,
        "recall": wilson_bounds(tp, positives, alpha) if positives else None,
        "brier": bootstrap_bounds(lambda t, p: float(np.mean((p - t) ** 2)), y, proba, alpha),
        "ece": bootstrap_bounds(expected_calibration_error, y, proba, alpha),
        "pr_auc": bootstrap_bounds(average_precision_score, y, proba, alpha) if 0 < positives < n else None,
    }
    quality["bounds"] = bounds
    return quality
