from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.settings import Settings
from conflict_core.store import AlertState, ModelVersion, PredictionLog, json_safe
from training import monitoring
from training.monitoring import AlertEvent, Condition, Thresholds

NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
HOLDOUT = {"roc_auc": 0.85, "pr_auc": 0.40, "brier": 0.04, "ece": 0.02, "precision": 0.30, "recall": 0.60}


# --------------------------------------------------------------------------- PSI


def test_psi_of_the_same_distribution_is_about_zero() -> None:
    rng = np.random.default_rng(0)
    reference = monitoring.reference_histogram(rng.normal(0, 1, 50_000))
    assert monitoring.psi(reference, rng.normal(0, 1, 50_000)) < 0.01


def test_psi_of_a_shifted_distribution_is_above_the_alert_level() -> None:
    rng = np.random.default_rng(1)
    reference = monitoring.reference_histogram(rng.normal(0, 1, 50_000))
    assert monitoring.psi(reference, rng.normal(0.6, 1, 50_000)) > 0.2
    assert monitoring.psi(reference, rng.normal(0.6, 1, 50_000)) < monitoring.psi(reference, rng.normal(1.5, 1, 50_000))


def test_psi_of_a_mostly_zero_count_feature() -> None:
    rng = np.random.default_rng(2)
    train = rng.poisson(0.1, 20_000)  # ~90% zeros, like concurrent_editors
    reference = monitoring.reference_histogram(train)
    assert reference["proportions"][1] == pytest.approx(np.mean(train == 0))  # zero has a bin of its own
    assert monitoring.psi(reference, rng.poisson(0.1, 20_000)) < 0.01
    assert monitoring.psi(reference, rng.poisson(1.0, 20_000)) > 0.2


def test_psi_sees_mass_moving_onto_a_capped_value() -> None:
    rng = np.random.default_rng(4)
    train = np.minimum(rng.exponential(60, 20_000), 168)  # hours_since_last_sync, capped at 168
    now = np.where(rng.random(20_000) < 0.3, 168.0, train)
    reference = monitoring.reference_histogram(train)
    assert monitoring.psi(reference, train) < 0.01
    assert monitoring.psi(reference, now) > 0.2


def test_build_reference_covers_every_feature_column() -> None:
    frame = pd.DataFrame({"concurrent_editors": [0, 1, 2, 3], "user_conflict_rate": [0.1, 0.2, 0.3, 0.4], "x": [1] * 4})
    reference = monitoring.build_reference(frame)
    assert set(reference) == {"concurrent_editors", "user_conflict_rate"}
    assert sum(reference["user_conflict_rate"]["proportions"]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- thresholds


def healthy(**changes: Any) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "predictions": 1000,
        "labelled": 900,
        "accuracy": 0.9,
        "fallback_rate": 0.01,
        "holdout": dict(HOLDOUT),
        "model": {"labelled": 800, "positives": 40, **HOLDOUT},
        "drift": {"psi": {"concurrent_editors": 0.01}, "rows": 1000},
    }
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            metrics[outer] = {**metrics[outer], inner: value}
        else:
            metrics[key] = value
    return metrics


def verdict(metrics: dict[str, Any], name: str, thresholds: Thresholds | None = None) -> bool | None:
    return {c.name: c.firing for c in monitoring.evaluate(metrics, thresholds or Thresholds())}[name]


def test_healthy_metrics_fire_nothing() -> None:
    assert not any(c.firing for c in monitoring.evaluate(healthy(), Thresholds()))


@pytest.mark.parametrize(
    ("name", "field", "quiet", "loud"),
    [
        ("accuracy_low", "accuracy", 0.70, 0.69),
        ("recall_low", "model.recall", 0.60 * 0.75, 0.60 * 0.75 - 0.01),
        ("precision_low", "model.precision", 0.30 * 0.75, 0.30 * 0.75 - 0.01),
        ("pr_auc_low", "model.pr_auc", 0.40 * 0.75, 0.40 * 0.75 - 0.01),
        ("brier_high", "model.brier", 0.04 * 1.5, 0.04 * 1.5 + 0.001),
        ("calibration_error_high", "model.ece", 0.02 + 0.05, 0.02 + 0.05 + 0.001),
        ("fallback_rate_high", "fallback_rate", 0.05, 0.051),
    ],
)
def test_each_alert_fires_just_past_its_threshold(name: str, field: str, quiet: float, loud: float) -> None:
    assert verdict(healthy(**{field: quiet}), name) is False
    assert verdict(healthy(**{field: loud}), name) is True


def test_drift_alert_per_feature_above_the_psi_threshold() -> None:
    metrics = healthy(drift={"psi": {"a": 0.2, "b": 0.21}, "rows": 1000})
    assert (verdict(metrics, "drift:a"), verdict(metrics, "drift:b")) == (False, True)
    assert verdict(metrics, "drift:a", Thresholds(psi_max=0.1)) is True


def test_too_little_data_judges_nothing() -> None:
    assert verdict(healthy(labelled=99, accuracy=0.1), "accuracy_low") is None
    few_conflicts = healthy(**{"model.positives": 19, "model.recall": 0.0})
    assert verdict(few_conflicts, "recall_low") is None
    assert verdict(healthy(predictions=99, fallback_rate=1.0), "fallback_rate_high") is None
    assert verdict(healthy(drift={"psi": {"a": 5.0}, "rows": 199}), "drift:a") is None
    assert verdict(healthy(holdout={}), "brier_high") is None


def test_thresholds_follow_settings(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, accuracy_alert_threshold=0.8, alert_min_labelled=10, psi_alert_threshold=0.3)
    t = Thresholds.from_settings(settings)
    assert (t.accuracy_min, t.min_labelled, t.psi_max) == (0.8, 10, 0.3)


# --------------------------------------------------------------------------- episodes


class Recorder:
    def __init__(self, deliver: bool = True) -> None:
        self.events: list[AlertEvent] = []
        self.deliver = deliver

    def __call__(self, event: AlertEvent) -> bool:
        self.events.append(event)
        return self.deliver

    def fired(self) -> list[str]:
        return [e.name for e in self.events if e.state == "firing"]


def step(factory: sessionmaker[Session], firing: bool | None, notify: Recorder, at: int) -> monitoring.AlertOutcome:
    condition = Condition("accuracy_low", firing, 0.5 if firing else 0.9, "accuracy")
    with factory.begin() as session:
        return monitoring.update_alerts(session, [condition], now=NOW + dt.timedelta(hours=6 * at), notify=notify)


def test_alert_fires_once_per_episode(session_factory: sessionmaker[Session]) -> None:
    notify = Recorder()
    assert step(session_factory, True, notify, 0).fired  # fires
    assert not step(session_factory, True, notify, 1).fired  # stays quiet while firing
    assert step(session_factory, None, notify, 2).firing == ["accuracy_low"]  # no data: unchanged
    assert notify.fired() == ["accuracy_low"]
    assert step(session_factory, False, notify, 3).resolved  # recovers
    assert not step(session_factory, False, notify, 4).resolved
    assert step(session_factory, True, notify, 5).fired  # a new episode fires again
    assert notify.fired() == ["accuracy_low", "accuracy_low"]
    assert [e.state for e in notify.events] == ["firing", "resolved", "firing"]
    with session_factory() as session:
        state = session.get(AlertState, "accuracy_low")
        assert state is not None and state.firing and state.since == NOW + dt.timedelta(hours=30)


def test_undelivered_alert_is_retried_next_run(session_factory: sessionmaker[Session]) -> None:
    down, up = Recorder(deliver=False), Recorder()
    assert not step(session_factory, True, down, 0).fired
    assert step(session_factory, True, up, 1).fired
    assert down.fired() == up.fired() == ["accuracy_low"]


def test_webhook_posts_slack_compatible_json() -> None:
    received: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(json.loads(request.content))
        return httpx.Response(200, text="ok")

    notifier = monitoring.WebhookNotifier(
        "https://hooks.example/x", client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    assert notifier(AlertEvent("drift:a", "firing", 0.31, "feature a drifted", NOW))
    assert received[0]["text"].startswith("[Conflict Predictor] ALERT drift:a")
    assert received[0]["alert"]["value"] == 0.31

    failing = monitoring.WebhookNotifier(
        "https://hooks.example/x", client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    )
    assert failing(AlertEvent("drift:a", "firing", 0.31, "x", NOW)) is False


# --------------------------------------------------------------------------- live metrics from the store


def logged(
    i: int,
    *,
    probability: float,
    actual: bool | None,
    version: str = "v1",
    fallback: str | None = None,
    features: dict[str, float] | None = None,
    at: dt.datetime = NOW - dt.timedelta(days=2),
) -> PredictionLog:
    predicted = probability >= 0.2
    return PredictionLog(
        prediction_id=f"p{i}",
        model_version=version,
        sync_id=None,
        user_id=f"u{i % 80}",  # 80 users: drift is tested over distinct users
        device_id="d",
        entity_type="task",
        entity_id=f"e{i}",
        predicted_conflict=predicted,
        probability=probability,
        risk_level="low",
        recommendation="sync_now",
        features=features or {},
        fallback_reason=fallback,
        created_at=at,
        actual_conflict_occurred=actual,
        prediction_correct=None if actual is None else predicted == actual,
        outcome_status=None if actual is None else "sync_id",
    )


def active_model(tmp_path) -> ModelVersion:
    return ModelVersion(
        version="v1",
        algorithm="logreg",
        params={},
        metrics={"holdout": HOLDOUT, "threshold": 0.2},
        feature_columns=["concurrent_editors"],
        train_samples=1,
        holdout_samples=1,
        training_window_start=NOW,
        training_window_end=NOW,
        artifact_path=str(tmp_path / "none.joblib"),
        artifact_sha256="0" * 64,
        status="active",
        is_active=True,
    )


def test_live_metrics_from_logged_predictions(tmp_path, session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        session.add(active_model(tmp_path))
        # Active model: 2 TP, 1 FP, 1 FN, 6 TN.
        rows = [(0.9, True), (0.8, True), (0.5, False), (0.1, True)] + [(0.05, False)] * 6
        session.add_all(logged(i, probability=p, actual=a) for i, (p, a) in enumerate(rows))
        session.add(logged(100, probability=0.3, actual=False, fallback="model_error"))  # wrong, fallback
        session.add(logged(101, probability=0.9, actual=True, version="v0"))  # right, older model
        session.add(logged(102, probability=0.9, actual=None))  # pending
        session.add(logged(103, probability=0.9, actual=True, at=NOW - dt.timedelta(days=8)))  # outside window
    with session_factory() as session:
        m = monitoring.live_metrics(session, now=NOW, threshold=0.2)
    assert (m["predictions"], m["labelled"], m["pending"], m["fallback"]) == (13, 12, 1, 1)
    assert m["accuracy"] == pytest.approx(9 / 12)
    assert m["fallback_rate"] == pytest.approx(1 / 13)
    model = m["model"]
    assert (model["labelled"], model["positives"]) == (10, 3)
    assert model["precision"] == pytest.approx(2 / 3) and model["recall"] == pytest.approx(2 / 3)
    assert m["model_version"] == "v1" and m["holdout"] == HOLDOUT


def test_monitor_measures_drift_against_the_model_reference(tmp_path, session_factory: sessionmaker[Session]) -> None:
    settings = Settings(data_dir=tmp_path)
    rng = np.random.default_rng(3)
    monitoring.write_reference(
        monitoring.reference_path(settings, "v1"),
        {
            "concurrent_editors": monitoring.reference_histogram(rng.normal(0, 1, 10_000)),
            "user_conflict_rate": monitoring.reference_histogram(rng.normal(0, 1, 10_000)),
        },
        source="test",
    )
    with session_factory.begin() as session:
        session.add(active_model(tmp_path))
        session.add_all(
            logged(
                i,
                probability=0.1,
                actual=None,
                features={"concurrent_editors": float(a), "user_conflict_rate": float(b)},
            )
            for i, (a, b) in enumerate(zip(rng.normal(0, 1, 400), rng.normal(2, 1, 400), strict=True))
        )
    notify = Recorder()
    with session_factory.begin() as session:
        metrics, outcome = monitoring.monitor(settings, session, now=NOW, notify=notify)
    assert metrics["drift"]["rows"] == 400 and metrics["drift"]["reference"] == "test"
    assert metrics["drift"]["psi"]["concurrent_editors"] < 0.1 < 0.2 < metrics["drift"]["psi"]["user_conflict_rate"]
    assert notify.fired() == ["drift:user_conflict_rate"]
    assert (
        metrics["drift"]["p_value"]["user_conflict_rate"]
        < 1e-6
        < 0.5
        < metrics["drift"]["p_value"]["concurrent_editors"]
    )
    with session_factory() as session:
        assert [s.name for s in session.scalars(select(AlertState).where(AlertState.firing))] == [
            "drift:user_conflict_rate"
        ]


def test_json_safe_turns_nan_into_null() -> None:
    assert json_safe({"a": float("nan"), "b": [np.float64(1.5), np.int64(2)]}) == {"a": None, "b": [1.5, 2]}
