from __future__ import annotations

import pytest

from serve_app.heuristics import (
    UNKNOWN_RISK_PROBABILITY,
    Recommendation,
    RiskLevel,
    heuristic_probability,
    recommendation_for,
    risk_level,
)

QUIET = {
    "concurrent_editors": 0,
    "hours_since_last_sync": 0.1,
    "user_conflict_rate": 0.0,
    "entity_edit_frequency": 0.1,
    "field_overlap_score": 0.0,
}


@pytest.mark.parametrize(
    ("probability", "expected"),
    [
        (0.0, RiskLevel.LOW),
        (0.199, RiskLevel.LOW),
        (0.2, RiskLevel.MEDIUM),
        (0.499, RiskLevel.MEDIUM),
        (0.5, RiskLevel.HIGH),
        (1.0, RiskLevel.HIGH),
    ],
)
def test_risk_bands_follow_thresholds(probability: float, expected: RiskLevel) -> None:
    assert risk_level(probability, medium_threshold=0.2, high_threshold=0.5) is expected


def test_recommendation_per_band() -> None:
    assert recommendation_for(RiskLevel.LOW) is Recommendation.SYNC_NOW
    assert recommendation_for(RiskLevel.MEDIUM) is Recommendation.FETCH_FIRST
    assert recommendation_for(RiskLevel.HIGH) is Recommendation.WARN_USER


def test_quiet_sync_is_low_risk() -> None:
    assert risk_level(heuristic_probability(QUIET), medium_threshold=0.2, high_threshold=0.5) is RiskLevel.LOW


@pytest.mark.parametrize(
    "feature", ["concurrent_editors", "field_overlap_score", "user_conflict_rate", "hours_since_last_sync"]
)
def test_more_of_a_risk_factor_never_lowers_the_score(feature: str) -> None:
    riskier = {**QUIET, feature: {"concurrent_editors": 3, "hours_since_last_sync": 100}.get(feature, 0.9)}
    assert heuristic_probability(riskier) > heuristic_probability(QUIET)


def test_concurrent_overlapping_edit_is_high_risk() -> None:
    hot = {**QUIET, "concurrent_editors": 2, "field_overlap_score": 1.0}
    assert heuristic_probability(hot) >= 0.5


def test_bounded_and_defaults_without_features() -> None:
    extreme = {**QUIET, "concurrent_editors": 1000, "field_overlap_score": 5, "user_conflict_rate": 7}
    assert 0.0 <= heuristic_probability(extreme) < 1.0
    assert heuristic_probability(None) == UNKNOWN_RISK_PROBABILITY
    assert risk_level(UNKNOWN_RISK_PROBABILITY, medium_threshold=0.2, high_threshold=0.5) is RiskLevel.MEDIUM
