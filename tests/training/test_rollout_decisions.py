"""Promotion, abort and rollback rules on live outcomes (pure functions, no store)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from conflict_core.settings import Settings
from training.rollout_decisions import (
    VariantRows,
    bootstrap_pr_auc_difference,
    judge_challenger,
    judge_champion,
    live_quality,
)

START = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
SETTINGS = Settings(rollout_min_labelled=300, rollout_min_positives=20, rollout_bootstrap_resamples=300)


def outcomes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < 0.25


def scores(actual: np.ndarray, signal: float, seed: int) -> np.ndarray:
    """Probabilities whose ranking quality grows with ``signal`` (0: pure noise)."""
    noise = np.random.default_rng(seed).normal(size=len(actual))
    return 1 / (1 + np.exp(-(signal * (actual - 0.5) * 2 + noise) + 1))


def frame(actual: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"actual": actual, "probability": proba})


def shadow_rows(challenger_signal: float, n: int = 1500) -> VariantRows:
    y = outcomes(n)
    return VariantRows("shadow", START, frame(y, scores(y, 1.0, 1)), frame(y, scores(y, challenger_signal, 2)))


def canary_rows(challenger_signal: float, n: int = 1500) -> VariantRows:
    y_a, y_b = outcomes(n, 10), outcomes(n // 4, 11)
    return VariantRows("canary", START, frame(y_a, scores(y_a, 1.0, 1)), frame(y_b, scores(y_b, challenger_signal, 2)))


def decide(rows: VariantRows, hours: float = 48) -> tuple[str, str, dict]:  # type: ignore[type-arg]
    return judge_challenger(SETTINGS, rows, threshold=0.3, started=START, now=START + dt.timedelta(hours=hours))


@pytest.mark.parametrize("rows", [shadow_rows, canary_rows], ids=["shadow (paired)", "canary (unpaired)"])
def test_a_clearly_better_challenger_is_promoted(rows) -> None:  # type: ignore[no-untyped-def]
    action, reason, numbers = decide(rows(2.5))
    assert action == "promote", reason
    assert numbers["pr_auc_difference"]["low"] > 0
    assert numbers["paired"] == (numbers["mode"] == "shadow")


@pytest.mark.parametrize("rows", [shadow_rows, canary_rows], ids=["shadow (paired)", "canary (unpaired)"])
def test_a_clearly_worse_challenger_is_aborted(rows) -> None:  # type: ignore[no-untyped-def]
    action, reason, numbers = decide(rows(0.1))
    assert action == "abort" and reason.startswith("significantly worse"), reason
    assert numbers["pr_auc_difference"]["high"] < 0


def test_an_equal_challenger_stays_and_is_aborted_once_its_time_is_up() -> None:
    action, reason, _ = decide(shadow_rows(1.0))
    assert action == "stay", reason
    action, reason, _ = decide(shadow_rows(1.0), hours=SETTINGS.rollout_abort_after_hours + 1)
    assert action == "abort" and "not promoted within" in reason


def test_too_few_outcomes_means_no_judgement_yet() -> None:
    action, reason, numbers = decide(shadow_rows(3.0, n=200))
    assert action == "stay" and "each needs 300" in reason
    assert "pr_auc_difference" not in numbers


def test_a_small_gain_inside_the_margin_is_not_promoted() -> None:
    strict = SETTINGS.model_copy(update={"rollout_margin": 5.0})  # +500 % PR-AUC: unreachable
    action, reason, _ = judge_challenger(
        strict, shadow_rows(2.5), threshold=0.3, started=START, now=START + dt.timedelta(hours=48)
    )
    assert action == "stay" and "needs more than" in reason


def test_the_margin_defaults_to_the_gates() -> None:
    assert Settings(gate_min_relative_improvement=0.07).rollout_relative_margin == 0.07
    assert Settings(rollout_margin=0.02).rollout_relative_margin == 0.02


def test_pairing_narrows_the_interval() -> None:
    y = outcomes(1500)
    a, b = scores(y, 1.0, 1), scores(y, 1.2, 2)
    paired = bootstrap_pr_auc_difference((y, a), (y, b), paired=True, resamples=300, confidence=0.95)
    unpaired = bootstrap_pr_auc_difference((y, a), (y, b), paired=False, resamples=300, confidence=0.95)
    assert paired["difference"] == pytest.approx(unpaired["difference"])
    assert paired["high"] - paired["low"] < unpaired["high"] - unpaired["low"]


def test_a_paired_bootstrap_refuses_different_rows() -> None:
    y = outcomes(100)
    with pytest.raises(ValueError, match="same rows"):
        bootstrap_pr_auc_difference((y, y * 0.5), (~y, y * 0.5), paired=True, resamples=100, confidence=0.9)


def test_live_quality_of_one_class_has_no_ranking_metrics() -> None:
    quality = live_quality(np.zeros(10, dtype=bool), np.full(10, 0.1), 0.3)
    assert quality["accuracy"] == 1.0 and quality["pr_auc"] is None and quality["roc_auc"] is None


ROLLBACK = Settings(rollback_min_labelled=100)


def test_a_drop_of_more_than_10_percent_below_holdout_rolls_back() -> None:
    live = {"labelled": 500, "accuracy": 0.80, "pr_auc": 0.40}
    action, reason, numbers = judge_champion(ROLLBACK, live, {"holdout value": {"accuracy": 0.82, "pr_auc": 0.50}})
    assert action == "rollback" and "pr_auc 0.4000 is 20.0% below its holdout value 0.5000" in reason
    assert len(numbers["breaches"]) == 1


def test_a_drop_below_the_previous_versions_live_value_rolls_back() -> None:
    live = {"labelled": 500, "accuracy": 0.70, "pr_auc": 0.50}
    references = {"holdout value": {"accuracy": 0.72, "pr_auc": 0.5}, "previous live": {"accuracy": 0.80}}
    action, reason, _ = judge_champion(ROLLBACK, live, references)
    assert action == "rollback" and "accuracy 0.7000 is 12.5% below its previous live" in reason


def test_a_drop_within_10_percent_keeps_the_model() -> None:
    live = {"labelled": 500, "accuracy": 0.75, "pr_auc": 0.46}
    action, _, numbers = judge_champion(ROLLBACK, live, {"holdout value": {"accuracy": 0.80, "pr_auc": 0.50}})
    assert action == "keep" and numbers["breaches"] == []


def test_no_rollback_is_judged_on_too_few_outcomes() -> None:
    live = {"labelled": 20, "accuracy": 0.1, "pr_auc": 0.1}
    action, reason, _ = judge_champion(ROLLBACK, live, {"holdout value": {"accuracy": 0.8, "pr_auc": 0.5}})
    assert action == "keep" and "100 needed" in reason
