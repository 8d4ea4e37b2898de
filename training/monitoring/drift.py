"""Feature drift: the population stability index (PSI) of live features against training.

Drift needs the training distribution of each feature. It is kept as quantile bins with
their proportions (:func:`reference_histogram`) in ``<models_dir>/<version>/drift_reference.json``,
written by the retrain job next to the model artifact; for models trained elsewhere it is
computed once from the model's training set (or the latest one) and cached there. The
reference is built from the newest rows of the training set (its holdout, the period the
model was judged on), not from the whole window: the oldest rows carry the warm-up of every
history feature (no past syncs yet) that live traffic never shows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from conflict_core import registry
from conflict_core.errors import ConflictPredictorError
from conflict_core.features import ALL_FEATURES
from conflict_core.settings import Settings
from conflict_core.store import ModelVersion, PredictionLog
from training.monitoring.significance import goodness_of_fit_p_value

log = logging.getLogger(__name__)

REFERENCE_FILE = "drift_reference.json"
PSI_BINS = 10
PSI_FLOOR = 1e-4  # share given to an empty bin, so that PSI stays finite
REFERENCE_SHARE = 0.2  # the newest fifth of a training set: its holdout


def reference_histogram(values: Iterable[float] | np.ndarray, bins: int = PSI_BINS) -> dict[str, Any]:
    """Quantile bin edges of a training feature and the share of training rows in each bin.

    Bins are right-closed: ``(edge[i-1], edge[i]]``. A value that fills several quantiles
    (count features that are mostly 0, a capped feature at its cap) gets a bin of its own,
    ``(nextafter(q, -inf), q]``, so that a change in how often it occurs is seen.
    """
    v = _finite(values)
    if len(v) == 0:
        raise ValueError("cannot build a drift reference from no finite values")
    quantiles = np.quantile(v, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    unique, repeats = np.unique(quantiles, return_counts=True)
    edges = np.unique(np.concatenate([unique, np.nextafter(unique[repeats > 1], -np.inf)]))
    counts = np.bincount(_bin(edges, v), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "proportions": (counts / len(v)).tolist(), "rows": int(len(v))}


def psi(reference: Mapping[str, Any], values: Iterable[float] | np.ndarray) -> float:
    """Population stability index of ``values`` against a :func:`reference_histogram`.

    ``sum((actual - expected) * ln(actual / expected))`` over the reference bins; about 0 for
    the same distribution, above 0.2 for a shift worth acting on.
    """
    v = _finite(values)
    if len(v) == 0:
        return float("nan")
    edges = np.asarray(reference["edges"], dtype=float)
    expected = np.asarray(reference["proportions"], dtype=float)
    actual = np.bincount(_bin(edges, v), minlength=len(expected)) / len(v)
    expected, actual = np.clip(expected, PSI_FLOOR, None), np.clip(actual, PSI_FLOOR, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _bin(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges, values, side="left")


def build_reference(frame: pd.DataFrame, features: Sequence[str] = ALL_FEATURES) -> dict[str, Any]:
    return {name: reference_histogram(frame[name].to_numpy(dtype=float)) for name in features if name in frame}


def reference_rows(training_set: pd.DataFrame) -> pd.DataFrame:
    """The rows a drift reference is built from: the newest ``REFERENCE_SHARE`` by sync time."""
    newest = training_set.sort_values("synced_at", kind="stable") if "synced_at" in training_set else training_set
    return newest.tail(max(1, int(round(len(newest) * REFERENCE_SHARE))))


def write_reference(path: Path, reference: Mapping[str, Any], *, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": source, "features": reference}, indent=1))
    tmp.replace(path)


def reference_path(settings: Settings, version: str) -> Path:
    return settings.models_dir / version / REFERENCE_FILE


def load_reference(settings: Settings, model: ModelVersion | None) -> tuple[dict[str, Any], str] | None:
    """Training histograms for ``model`` and where they came from, or ``None`` when unknown.

    Order: the cached file next to the model; the model's own training set (named in its
    artifact); the latest training set under ``features_dir`` (then said so in the source).
    """
    from training.extract import load_training_set

    if model is not None:
        path = reference_path(settings, model.version)
        if path.is_file():
            stored = json.loads(path.read_text())
            return stored["features"], stored.get("source", str(path))
        snapshot = _training_snapshot(model)
        if snapshot and (settings.features_dir / snapshot).is_dir():
            frame, _ = load_training_set(settings.features_dir / snapshot)
            reference = build_reference(reference_rows(frame), model.feature_columns)
            source = f"training set {snapshot}"
            write_reference(path, reference, source=source)
            return reference, source
    try:
        frame, manifest = load_training_set(settings.features_dir)
    except ConflictPredictorError:
        return None
    return build_reference(reference_rows(frame)), f"latest training set {manifest['snapshot']} (not the model's own)"


def _training_snapshot(model: ModelVersion) -> str | None:
    try:
        artifact = registry.load_artifact(Path(model.artifact_path), model.artifact_sha256)
    except (ConflictPredictorError, OSError, ValueError) as exc:
        log.warning("cannot read the artifact of %s to find its training set: %s", model.version, exc)
        return None
    snapshot = artifact.get("training_set")
    return str(snapshot) if snapshot else None


def feature_drift(
    session: Session,
    reference: Mapping[str, Any],
    *,
    since: dt.datetime,
    until: dt.datetime,
    max_rows: int = 50_000,
) -> tuple[dict[str, float], dict[str, float], int]:
    """PSI per feature of the newest model-served predictions in ``(since, until]``, the
    p-value of each feature's goodness-of-fit test against its reference (counting the
    distinct users behind the rows), and the row count."""
    logged = session.execute(
        select(PredictionLog.features, PredictionLog.user_id)
        .where(
            PredictionLog.created_at > since, PredictionLog.created_at <= until, PredictionLog.fallback_reason.is_(None)
        )
        .order_by(PredictionLog.created_at.desc())
        .limit(max_rows)
    ).all()
    if not logged:
        return {}, {}, 0
    rows = [features for features, _ in logged]
    users = len({user for _, user in logged})
    frame = pd.DataFrame.from_records([r or {} for r in rows])
    scores: dict[str, float] = {}
    p_values: dict[str, float] = {}
    for name, ref in reference.items():
        if name in frame:
            values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
            scores[name], p_values[name] = psi(ref, values), drift_p_value(ref, values, independent=users)
    return scores, p_values, len(rows)


def drift_p_value(
    reference: Mapping[str, Any], values: Iterable[float] | np.ndarray, *, independent: float | None = None
) -> float:
    """p-value that ``values`` were drawn from the reference distribution (chi-square, binned);
    ``independent``: how many independent observations they amount to (distinct users)."""
    v = _finite(values)
    if len(v) == 0:
        return float("nan")
    expected = np.asarray(reference["proportions"], dtype=float)
    observed = np.bincount(_bin(np.asarray(reference["edges"], dtype=float), v), minlength=len(expected))
    return goodness_of_fit_p_value(observed, expected, independent=independent)


def _finite(values: Iterable[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    return v[np.isfinite(v)]
