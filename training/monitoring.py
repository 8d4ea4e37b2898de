"""Live model quality: rolling metrics, feature drift and alerts that fire once per episode.

At a conflict rate of a few percent accuracy says little (answering "no conflict" every
time scores above 90%), so besides the seed's accuracy rule this module measures recall and
precision at the operating threshold, PR-AUC, Brier score and calibration error against the
model's own holdout figures (``model_registry.metrics["holdout"]``), the share of answers
that came from the fallback heuristics, and the population stability index (PSI) of every
feature against the training set.

Drift needs the training distribution of each feature. It is kept as quantile bins with
their proportions (:func:`reference_histogram`) in ``<models_dir>/<version>/drift_reference.json``,
written by the retrain job next to the model artifact; for models trained elsewhere it is
computed once from the model's training set (or the latest one) and cached there.

Every alert condition has a row in ``alert_state``. A condition notifies when it starts
firing, stays quiet while it keeps firing, and notifies again only after it has recovered
and fires anew. Conditions without enough data to judge leave their state as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conflict_core import registry
from conflict_core.errors import ConflictPredictorError
from conflict_core.features import ALL_FEATURES
from conflict_core.settings import Settings
from conflict_core.store import AlertState, ModelVersion, PredictionLog
from training.evaluate import expected_calibration_error

log = logging.getLogger(__name__)

REFERENCE_FILE = "drift_reference.json"
PSI_BINS = 10
PSI_FLOOR = 1e-4  # share given to an empty bin, so that PSI stays finite


# --------------------------------------------------------------------------- drift (PSI)


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
            reference = build_reference(frame, model.feature_columns)
            source = f"training set {snapshot}"
            write_reference(path, reference, source=source)
            return reference, source
    try:
        frame, manifest = load_training_set(settings.features_dir)
    except ConflictPredictorError:
        return None
    return build_reference(frame), f"latest training set {manifest['snapshot']} (not the model's own)"


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
) -> tuple[dict[str, float], int]:
    """PSI per feature of the newest model-served predictions in ``(since, until]``, and the row count."""
    rows = session.scalars(
        select(PredictionLog.features)
        .where(
            PredictionLog.created_at > since, PredictionLog.created_at <= until, PredictionLog.fallback_reason.is_(None)
        )
        .order_by(PredictionLog.created_at.desc())
        .limit(max_rows)
    ).all()
    if not rows:
        return {}, 0
    frame = pd.DataFrame.from_records([r or {} for r in rows])
    scores = {
        name: psi(ref, pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float))
        for name, ref in reference.items()
        if name in frame
    }
    return scores, len(rows)


def _finite(values: Iterable[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    return v[np.isfinite(v)]


# --------------------------------------------------------------------------- live metrics


@dataclass(frozen=True)
class Thresholds:
    """When each alert condition fires. ``from_settings`` takes the configurable ones."""

    accuracy_min: float = 0.70
    min_labelled: int = 100
    min_positives: int = 20
    max_relative_drop: float = 0.25  # recall, precision, PR-AUC below holdout * (1 - drop)
    max_brier_ratio: float = 1.5  # Brier above holdout * ratio
    max_ece_increase: float = 0.05  # ECE above holdout + increase
    max_fallback_rate: float = 0.05
    psi_max: float = 0.2
    drift_min_rows: int = 200

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Thresholds:
        return cls(
            accuracy_min=settings.accuracy_alert_threshold,
            min_labelled=settings.alert_min_labelled,
            psi_max=settings.psi_alert_threshold,
            **overrides,
        )


def live_metrics(
    session: Session,
    *,
    now: dt.datetime,
    window: dt.timedelta = dt.timedelta(days=7),
    threshold: float | None = None,
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
    accuracy = float(frame["correct"].astype(bool).mean()) if len(frame) else None

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
        "accuracy": accuracy,
        "model_version": active.version if active else None,
        "holdout": dict(active.metrics.get("holdout", {})) if active else None,
        "model": _model_quality(mine, model_threshold if model_threshold is not None else 0.5),
    }


def _model_quality(frame: pd.DataFrame, threshold: float) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, brier_score_loss

    y = frame["actual"].astype(bool).to_numpy(dtype=int)
    proba = frame["probability"].to_numpy(dtype=float)
    n, positives = len(y), int(y.sum())
    quality: dict[str, Any] = {"labelled": n, "positives": positives, "threshold": threshold}
    if n == 0:
        return quality
    predicted = proba >= threshold
    tp = int(np.sum(predicted & (y == 1)))
    quality.update(
        positive_rate=positives / n,
        precision=tp / int(predicted.sum()) if predicted.any() else None,
        recall=tp / positives if positives else None,
        pr_auc=float(average_precision_score(y, proba)) if 0 < positives < n else None,
        brier=float(brier_score_loss(y, proba)),
        ece=expected_calibration_error(y, proba),
    )
    return quality


# --------------------------------------------------------------------------- alert conditions


@dataclass(frozen=True)
class Condition:
    """One alert condition's verdict this run; ``firing=None`` means not enough data to judge."""

    name: str
    firing: bool | None
    value: float | None
    message: str


def _past(value: Any, limit: Any, *, above: bool, judged: bool) -> bool | None:
    """``value`` beyond ``limit`` (above or below it), or ``None`` when it cannot be judged."""
    if not judged or not _number(value) or not _number(limit):
        return None
    return bool(value > limit) if above else bool(value < limit)


def _scaled(reference: Any, factor: float = 1.0, offset: float = 0.0) -> float | None:
    return float(reference) * factor + offset if _number(reference) else None


def evaluate(metrics: Mapping[str, Any], thresholds: Thresholds) -> list[Condition]:
    """Every alert condition against one run's metrics (see :func:`live_metrics` and drift)."""
    t = thresholds
    out: list[Condition] = []
    labelled: int = metrics.get("labelled") or 0
    accuracy: Any = metrics.get("accuracy")
    out.append(
        Condition(
            "accuracy_low",
            _past(accuracy, t.accuracy_min, above=False, judged=labelled >= t.min_labelled),
            accuracy,
            f"7-day accuracy {_fmt(accuracy)} over {labelled} labelled predictions (alert below {t.accuracy_min:.2f})",
        )
    )

    model: dict[str, Any] = dict(metrics.get("model") or {})
    holdout: dict[str, Any] = dict(metrics.get("holdout") or {})
    model_labelled: int = model.get("labelled") or 0
    positives: int = model.get("positives") or 0
    judged = model_labelled >= t.min_labelled
    for name in ("recall", "precision", "pr_auc"):
        live: Any = model.get(name)
        floor = _scaled(holdout.get(name), 1 - t.max_relative_drop)
        out.append(
            Condition(
                f"{name}_low",
                _past(live, floor, above=False, judged=judged and positives >= t.min_positives),
                live,
                f"live {name} {_fmt(live)} vs holdout {_fmt(holdout.get(name))} (alert below {_fmt(floor)}; "
                f"{model_labelled} labelled, {positives} conflicts)",
            )
        )
    brier: Any = model.get("brier")
    ceiling = _scaled(holdout.get("brier"), t.max_brier_ratio)
    out.append(
        Condition(
            "brier_high",
            _past(brier, ceiling, above=True, judged=judged),
            brier,
            f"live Brier score {_fmt(brier)} vs holdout {_fmt(holdout.get('brier'))} (alert above {_fmt(ceiling)})",
        )
    )
    ece: Any = model.get("ece")
    ceiling = _scaled(holdout.get("ece"), offset=t.max_ece_increase)
    out.append(
        Condition(
            "calibration_error_high",
            _past(ece, ceiling, above=True, judged=judged),
            ece,
            f"live calibration error {_fmt(ece)} vs holdout {_fmt(holdout.get('ece'))} (alert above {_fmt(ceiling)})",
        )
    )
    total: int = metrics.get("predictions") or 0
    rate: Any = metrics.get("fallback_rate")
    out.append(
        Condition(
            "fallback_rate_high",
            _past(rate, t.max_fallback_rate, above=True, judged=total >= t.min_labelled),
            rate,
            f"{_fmt(rate)} of {total} predictions came from the fallback heuristics "
            f"(alert above {t.max_fallback_rate:.2f})",
        )
    )
    drift: dict[str, Any] = dict(metrics.get("drift") or {})
    drift_rows: int = drift.get("rows") or 0
    for feature, value in sorted((drift.get("psi") or {}).items()):
        out.append(
            Condition(
                f"drift:{feature}",
                _past(value, t.psi_max, above=True, judged=drift_rows >= t.drift_min_rows),
                value,
                f"feature {feature} drifted from the training set: PSI {_fmt(value)} over {drift_rows} predictions "
                f"(alert above {t.psi_max:.2f})",
            )
        )
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if _number(value) else "n/a"


# --------------------------------------------------------------------------- alert episodes


@dataclass(frozen=True)
class AlertEvent:
    name: str
    state: str  # "firing" or "resolved"
    value: float | None
    message: str
    at: dt.datetime

    def text(self) -> str:
        mark = "ALERT" if self.state == "firing" else "RESOLVED"
        return f"[Conflict Predictor] {mark} {self.name}: {self.message}"


Notifier = Callable[[AlertEvent], bool]
"""Delivers one alert event; ``False`` when delivery failed (the event is retried next run)."""


def log_notifier(event: AlertEvent) -> bool:
    (log.warning if event.state == "firing" else log.info)("%s", event.text())
    return True


@dataclass
class WebhookNotifier:
    """Logs every event and posts it as Slack-compatible JSON (``{"text": ...}``) to ``url``."""

    url: str
    timeout_s: float = 10.0
    client: httpx.Client | None = None

    def __call__(self, event: AlertEvent) -> bool:
        log_notifier(event)
        payload = {"text": event.text(), "alert": {**asdict(event), "at": event.at.isoformat()}}
        try:
            if self.client is not None:
                response = self.client.post(self.url, json=payload, timeout=self.timeout_s)
            else:
                response = httpx.post(self.url, json=payload, timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.error("alert webhook failed for %s (%s); will retry on the next run", event.name, exc)
            return False
        return True


def make_notifier(settings: Settings) -> Notifier:
    return WebhookNotifier(settings.alert_webhook_url) if settings.alert_webhook_url else log_notifier


@dataclass
class AlertOutcome:
    fired: list[AlertEvent] = field(default_factory=list)
    resolved: list[AlertEvent] = field(default_factory=list)
    firing: list[str] = field(default_factory=list)


def update_alerts(
    session: Session, conditions: Sequence[Condition], *, now: dt.datetime, notify: Notifier = log_notifier
) -> AlertOutcome:
    """Move each condition's ``alert_state`` and notify on the edges of an episode only."""
    states = {
        s.name: s for s in session.scalars(select(AlertState).where(AlertState.name.in_([c.name for c in conditions])))
    }
    outcome = AlertOutcome()
    for condition in conditions:
        state = states.get(condition.name)
        was_firing = bool(state and state.firing)
        if condition.firing is None:
            if was_firing:
                outcome.firing.append(condition.name)
            continue
        if state is None:
            state = AlertState(name=condition.name, firing=False)
            session.add(state)
        state.last_value = condition.value
        state.message = condition.message
        if condition.firing and not was_firing:
            event = AlertEvent(condition.name, "firing", condition.value, condition.message, now)
            if notify(event):
                state.firing, state.since = True, now
                outcome.fired.append(event)
                outcome.firing.append(condition.name)
        elif condition.firing:
            outcome.firing.append(condition.name)
        elif was_firing:
            event = AlertEvent(condition.name, "resolved", condition.value, condition.message, now)
            notify(event)
            state.firing, state.since = False, None
            outcome.resolved.append(event)
    session.flush()
    return outcome


def firing_alerts(session: Session) -> list[AlertState]:
    return list(session.scalars(select(AlertState).where(AlertState.firing.is_(True)).order_by(AlertState.name)))


# --------------------------------------------------------------------------- one monitoring pass


def monitor(
    settings: Settings,
    session: Session,
    *,
    now: dt.datetime,
    window: dt.timedelta = dt.timedelta(days=7),
    thresholds: Thresholds | None = None,
    notify: Notifier | None = None,
) -> tuple[dict[str, Any], AlertOutcome]:
    """Rolling metrics plus drift, the alert conditions, and the alert episodes they move."""
    metrics = live_metrics(session, now=now, window=window, threshold=settings.risk_medium_threshold)
    active = registry.active(session)
    reference = load_reference(settings, active)
    if reference is None:
        metrics["drift"] = None
    else:
        scores, rows = feature_drift(session, reference[0], since=now - window, until=now)
        metrics["drift"] = {
            "psi": scores,
            "rows": rows,
            "reference": reference[1],
            "max_psi": max((v for v in scores.values() if _number(v)), default=None),
        }
    conditions = evaluate(metrics, thresholds or Thresholds.from_settings(settings))
    outcome = update_alerts(session, conditions, now=now, notify=notify or make_notifier(settings))
    metrics["alert_events"] = [f"{e.state}: {e.name}" for e in outcome.fired + outcome.resolved]
    return metrics, outcome
