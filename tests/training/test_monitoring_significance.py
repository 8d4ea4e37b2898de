"""Alerts do not cry wolf on small samples, and still fire on a real change.

The rule under test (training.monitoring.alerts): a condition is judged only with its minimum
sample, and fires only when the live figure's one-sided 99% confidence interval lies wholly
past its limit; a feature drifts only with PSI above the limit *and* a goodness-of-fit
p-value below alpha over the number of features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training import monitoring
from training.monitoring.live import model_quality
from training.monitoring.significance import goodness_of_fit_p_value, wilson_bounds

THRESHOLDS = monitoring.Thresholds()  # the defaults: 100 labelled, 200 drift rows, alpha 0.01


def _training_features(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Feature columns shaped like the product's: mostly-zero counts, a capped time, rates."""
    return pd.DataFrame(
        {
            "concurrent_editors": rng.poisson(0.15, n),
            "hours_since_last_sync": np.minimum(rng.exponential(30, n), 168.0),
            "user_conflict_rate": rng.beta(2, 30, n),
            "entity_edit_frequency": rng.gamma(2.0, 1.5, n),
            "field_overlap_score": np.where(rng.random(n) < 0.6, 0.0, rng.random(n)),
        }
    )


def _drift_conditions(reference: dict, live: pd.DataFrame) -> list[monitoring.Condition]:
    scores = {name: monitoring.psi(ref, live[name]) for name, ref in reference.items()}
    p_values = {name: monitoring.drift_p_value(ref, live[name]) for name, ref in reference.items()}
    metrics = {"drift": {"psi": scores, "p_value": p_values, "rows": len(live)}}
    return [c for c in monitoring.evaluate(metrics, THRESHOLDS) if c.name.startswith("drift:")]


def test_random_slices_of_the_training_distribution_at_the_minimum_sample_never_alert() -> None:
    rng = np.random.default_rng(0)
    training = _training_features(rng, 20_000)
    reference = monitoring.build_reference(training)
    for _ in range(300):
        live = training.iloc[rng.choice(len(training), THRESHOLDS.drift_min_rows, replace=False)]
        conditions = _drift_conditions(reference, live)
        assert len(conditions) == 5
        assert not any(c.firing for c in conditions), [c.message for c in conditions if c.firing]


def test_a_real_shift_alerts_at_the_minimum_sample() -> None:
    rng = np.random.default_rng(1)
    training = _training_features(rng, 20_000)
    reference = monitoring.build_reference(training)
    live = _training_features(rng, THRESHOLDS.drift_min_rows)
    live["user_conflict_rate"] = rng.beta(2, 8, len(live))  # conflict rates four times higher
    firing = {c.name for c in _drift_conditions(reference, live) if c.firing}
    assert firing == {"drift:user_conflict_rate"}


def _user_history(rng: np.random.Generator, days: int, users: int = 90, rate_scale: float = 1.0) -> pd.DataFrame:
    """Rows clustered by user, as served features are: each user keeps a conflict rate of their
    own, and on a given day a third of the users sync, some of them dozens of times, so one
    day's rows come from a score of users."""
    rate = rng.beta(2, 30, users) * rate_scale
    frames = []
    for day in range(days):
        active = rng.choice(users, size=users // 3, replace=False)
        per_user = np.ceil(rng.lognormal(2.0, 1.0, len(active))).astype(int)
        user = np.repeat(active, per_user)
        frames.append(
            pd.DataFrame(
                {
                    "day": day,
                    "user_id": user,
                    "user_conflict_rate": np.clip(rate[user] + rng.normal(0, 0.003, len(user)), 0, 1),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_a_day_of_the_training_history_never_alerts_though_its_rows_cluster_by_user() -> None:
    rng = np.random.default_rng(6)
    history = _user_history(rng, days=30)
    reference = monitoring.build_reference(monitoring.reference_rows(history.rename(columns={"day": "synced_at"})))
    unclustered_alerts = 0
    for day in range(24, 30):
        live = history[history["day"] == day]
        assert len(live) >= THRESHOLDS.drift_min_rows
        values = live["user_conflict_rate"]
        p_value = monitoring.drift_p_value(
            reference["user_conflict_rate"], values, independent=live["user_id"].nunique()
        )
        metrics = {
            "drift": {
                "psi": {"user_conflict_rate": monitoring.psi(reference["user_conflict_rate"], values)},
                "p_value": {"user_conflict_rate": p_value},
                "rows": len(live),
            }
        }
        assert not any(c.firing for c in monitoring.evaluate(metrics, THRESHOLDS) if c.name.startswith("drift:"))
        unclustered_alerts += monitoring.drift_p_value(reference["user_conflict_rate"], values) < THRESHOLDS.alpha
    # Counted as independent rows, the same days look significantly different: the clustering is real.
    assert unclustered_alerts > 0


def test_every_users_conflict_rate_tripling_alerts_even_counting_users() -> None:
    rng = np.random.default_rng(7)
    history = _user_history(rng, days=30)
    reference = monitoring.build_reference(history)
    live = _user_history(np.random.default_rng(8), days=1, rate_scale=3.0)
    values = live["user_conflict_rate"]
    p_value = monitoring.drift_p_value(reference["user_conflict_rate"], values, independent=live["user_id"].nunique())
    assert monitoring.psi(reference["user_conflict_rate"], values) > THRESHOLDS.psi_max
    assert p_value < THRESHOLDS.alpha / 7


def test_below_the_minimum_sample_drift_is_not_judged() -> None:
    rng = np.random.default_rng(2)
    training = _training_features(rng, 5_000)
    live = _training_features(rng, THRESHOLDS.drift_min_rows - 1).assign(concurrent_editors=5)
    assert all(c.firing is None for c in _drift_conditions(monitoring.build_reference(training), live))


def _labelled(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Answers of a calibrated model at a 5% conflict rate: outcomes drawn from its probabilities."""
    proba = np.clip(rng.beta(0.6, 9, n), 0, 1)
    return pd.DataFrame({"probability": proba, "actual": rng.random(n) < proba})


def _metric_conditions(frame: pd.DataFrame, holdout: dict) -> dict[str, bool | None]:
    threshold = 0.2
    correct = int(((frame["probability"] >= threshold) == frame["actual"]).sum())
    metrics = {
        "labelled": len(frame),
        "accuracy": correct / len(frame),
        "accuracy_bounds": wilson_bounds(correct, len(frame), THRESHOLDS.alpha),
        "model": model_quality(frame, threshold, THRESHOLDS.alpha),
        "holdout": holdout,
    }
    return {c.name: c.firing for c in monitoring.evaluate(metrics, THRESHOLDS) if not c.name.startswith("drift:")}


@pytest.fixture(scope="module")
def holdout() -> dict:
    """The model's holdout figures, measured on a large sample of the same distribution."""
    quality = model_quality(_labelled(np.random.default_rng(3), 200_000), 0.2, alpha=None)
    return {k: quality[k] for k in ("precision", "recall", "pr_auc", "brier", "ece")}


def test_random_labelled_samples_at_the_minimum_never_raise_a_metric_alert(holdout: dict) -> None:
    rng = np.random.default_rng(4)
    point_estimates_past_a_limit = 0
    for _ in range(30):
        frame = _labelled(rng, 400)
        quality = model_quality(frame, 0.2, THRESHOLDS.alpha)
        verdicts = _metric_conditions(frame, holdout)
        assert not any(verdicts.values()), verdicts
        point_estimates_past_a_limit += quality["pr_auc"] is not None and quality["pr_auc"] < holdout["pr_auc"] * 0.75
    assert point_estimates_past_a_limit > 0  # the point estimate alone would have alerted


def test_a_model_that_lost_its_signal_raises_the_pr_auc_alert(holdout: dict) -> None:
    rng = np.random.default_rng(5)
    frame = _labelled(rng, 2_000)
    frame["probability"] = rng.permutation(frame["probability"].to_numpy())  # scores unrelated to outcomes
    verdicts = _metric_conditions(frame, holdout)
    assert verdicts["pr_auc_low"] is True and verdicts["recall_low"] is True


def test_the_goodness_of_fit_test_merges_sparse_bins() -> None:
    # Expected shares with tiny bins; observed exactly proportional: no evidence of a change.
    expected = np.array([0.5, 0.001, 0.001, 0.498])
    assert goodness_of_fit_p_value(np.array([100, 0, 0, 100]), expected) > 0.5
    assert goodness_of_fit_p_value(np.array([10, 0, 0, 190]), expected) < 1e-6
