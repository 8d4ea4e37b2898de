"""Alert conditions and their episodes: each fires once, when it starts, and once when it ends.

A condition is judged only with enough data (``min_labelled`` labelled predictions,
``min_positives`` conflicts, ``drift_min_rows`` rows) and fires only when the difference is
significant (:mod:`training.monitoring.significance`): the live figure's whole one-sided
``1 - alpha`` confidence interval lies past its limit, and a drifted feature's PSI is above
``psi_max`` with a goodness-of-fit p-value below ``alpha`` over the number of features.

Every alert condition has a row in ``alert_state``. A condition notifies when it starts
firing, stays quiet while it keeps firing, and notifies again only after it has recovered
and fires anew. Conditions without enough data to judge leave their state as it is.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from conflict_core.settings import Settings
from conflict_core.store import AlertState

log = logging.getLogger(__name__)


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
    alpha: float = 0.01  # one-sided: a figure must be past its limit with 99% confidence

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Thresholds:
        return cls(
            accuracy_min=settings.accuracy_alert_threshold,
            min_labelled=settings.alert_min_labelled,
            psi_max=settings.psi_alert_threshold,
            alpha=settings.alert_significance,
            **overrides,
        )


@dataclass(frozen=True)
class Condition:
    """One alert condition's verdict this run; ``firing=None`` means not enough data to judge."""

    name: str
    firing: bool | None
    value: float | None
    message: str


def _past(value: Any, limit: Any, *, above: bool, judged: bool, bounds: Any = None) -> bool | None:
    """``value`` beyond ``limit`` (above or below it), or ``None`` when it cannot be judged.

    With ``bounds`` (the value's one-sided lower and upper confidence bounds) the whole
    interval must be beyond the limit: the lower bound above it, or the upper bound below it.
    """
    if not judged or not _number(value) or not _number(limit):
        return None
    if bounds is not None:
        lower, upper = bounds
        return bool(lower > limit) if above else bool(upper < limit)
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
            _past(
                accuracy,
                t.accuracy_min,
                above=False,
                judged=labelled >= t.min_labelled,
                bounds=metrics.get("accuracy_bounds"),
            ),
            accuracy,
            f"7-day accuracy {_fmt(accuracy)} over {labelled} labelled predictions (alert below {t.accuracy_min:.2f})",
        )
    )

    model: dict[str, Any] = dict(metrics.get("model") or {})
    bounds: dict[str, Any] = dict(model.get("bounds") or {})
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
                _past(
                    live, floor, above=False, judged=judged and positives >= t.min_positives, bounds=bounds.get(name)
                ),
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
            _past(brier, ceiling, above=True, judged=judged, bounds=bounds.get("brier")),
            brier,
            f"live Brier score {_fmt(brier)} vs holdout {_fmt(holdout.get('brier'))} (alert above {_fmt(ceiling)})",
        )
    )
    ece: Any = model.get("ece")
    ceiling = _scaled(holdout.get("ece"), offset=t.max_ece_increase)
    out.append(
        Condition(
            "calibration_error_high",
            _past(ece, ceiling, above=True, judged=judged, bounds=bounds.get("ece")),
            ece,
            f"live calibration error {_fmt(ece)} vs holdout {_fmt(holdout.get('ece'))} (alert above {_fmt(ceiling)})",
        )
    )
    total: int = metrics.get("predictions") or 0
    rate: Any = metrics.get("fallback_rate")
    out.append(
        Condition(
            "fallback_rate_high",
            _past(
                rate,
                t.max_fallback_rate,
                above=True,
                judged=total >= t.min_labelled,
                bounds=metrics.get("fallback_rate_bounds"),
            ),
            rate,
            f"{_fmt(rate)} of {total} predictions came from the fallback heuristics "
            f"(alert above {t.max_fallback_rate:.2f})",
        )
    )
    drift: dict[str, Any] = dict(metrics.get("drift") or {})
    drift_rows: int = drift.get("rows") or 0
    scores: dict[str, Any] = dict(drift.get("psi") or {})
    p_values: dict[str, Any] = dict(drift.get("p_value") or {})
    per_feature_alpha = t.alpha / max(len(scores), 1)  # Bonferroni over the features tested together
    for feature, value in sorted(scores.items()):
        p_value: Any = p_values.get(feature)
        firing = _past(value, t.psi_max, above=True, judged=drift_rows >= t.drift_min_rows)
        if firing and _number(p_value):
            firing = bool(p_value < per_feature_alpha)
        out.append(
            Condition(
                f"drift:{feature}",
                firing,
                value,
                f"feature {feature} drifted from the training set: PSI {_fmt(value)} over {drift_rows} predictions "
                f"(alert above {t.psi_max:.2f} with p < {per_feature_alpha:.4f}; p = {_fmt(p_value)})",
            )
        )
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if _number(value) else "n/a"


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
