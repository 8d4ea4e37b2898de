"""One monitoring pass: live metrics, feature drift, the alert conditions and their episodes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from conflict_core import registry
from conflict_core.settings import Settings
from training.monitoring.alerts import (
    AlertOutcome,
    Notifier,
    Thresholds,
    _number,
    evaluate,
    make_notifier,
    update_alerts,
)
from training.monitoring.drift import feature_drift, load_reference
from training.monitoring.live import live_metrics


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
    thresholds = thresholds or Thresholds.from_settings(settings)
    metrics = live_metrics(
        session, now=now, window=window, threshold=settings.risk_medium_threshold, alpha=thresholds.alpha
    )
    active = registry.active(session)
    reference = load_reference(settings, active)
    if reference is None:
        metrics["drift"] = None
    else:
        scores, p_values, rows = feature_drift(session, reference[0], since=now - window, until=now)
        metrics["drift"] = {
            "psi": scores,
            "p_value": p_values,
            "rows": rows,
            "reference": reference[1],
            "max_psi": max((v for v in scores.values() if _number(v)), default=None),
        }
    conditions = evaluate(metrics, thresholds)
    outcome = update_alerts(session, conditions, now=now, notify=notify or make_notifier(settings))
    metrics["alert_events"] = [f"{e.state}: {e.name}" for e in outcome.fired + outcome.resolved]
    return metrics, outcome
