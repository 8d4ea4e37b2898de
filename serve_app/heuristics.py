"""The seed heuristic ``heuristic_v1``, risk banding and recommendations, as plain Python.

The heuristic answers whenever the trained model cannot (no active model, a bad artifact,
failed or slow inference, failed feature lookup). It scores the five seed features with
fixed weights chosen from their documented business logic: simultaneous editors and
overlapping fields are direct conflict causes, a user's conflict history and a long gap
since the last sync make one likelier, a busy entity a little likelier. Without features
(the lookup failed) it answers with a medium default, so a client fetches before pushing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

from conflict_core.registry import HEURISTIC_VERSION

__all__ = [
    "HEURISTIC_VERSION",
    "UNKNOWN_RISK_PROBABILITY",
    "FallbackReason",
    "Recommendation",
    "RiskLevel",
    "heuristic_probabilities",
    "heuristic_probability",
    "recommendation_for",
    "risk_level",
]

# A probability inside the default medium band: unknown risk means "fetch first".
UNKNOWN_RISK_PROBABILITY = 0.3


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Recommendation(StrEnum):
    SYNC_NOW = "sync_now"
    FETCH_FIRST = "fetch_first"
    WARN_USER = "warn_user"


class FallbackReason(StrEnum):
    NO_ACTIVE_MODEL = "no_active_model"
    ARTIFACT_VERIFICATION_FAILED = "artifact_verification_failed"
    ARTIFACT_LOAD_FAILED = "artifact_load_failed"
    INFERENCE_FAILED = "inference_failed"
    INFERENCE_TIMEOUT = "inference_timeout"
    FEATURE_LOOKUP_FAILED = "feature_lookup_failed"


_RECOMMENDATIONS = {
    RiskLevel.LOW: Recommendation.SYNC_NOW,
    RiskLevel.MEDIUM: Recommendation.FETCH_FIRST,
    RiskLevel.HIGH: Recommendation.WARN_USER,
}


def risk_level(probability: float, *, medium_threshold: float, high_threshold: float) -> RiskLevel:
    """``high`` from ``high_threshold`` up, ``medium`` from ``medium_threshold`` up, else ``low``."""
    if probability >= high_threshold:
        return RiskLevel.HIGH
    if probability >= medium_threshold:
        return RiskLevel.MEDIUM
    return RiskLevel.LOW


def recommendation_for(level: RiskLevel) -> Recommendation:
    return _RECOMMENDATIONS[level]


def heuristic_probability(features: Mapping[str, float] | None) -> float:
    """``heuristic_v1``: a bounded weighted sum of the seed features."""
    if not features:
        return UNKNOWN_RISK_PROBABILITY
    editors = max(0.0, float(features.get("concurrent_editors", 0.0)))
    hours = max(0.0, float(features.get("hours_since_last_sync", 0.0)))
    user_rate = min(max(float(features.get("user_conflict_rate", 0.0)), 0.0), 1.0)
    frequency = max(0.0, float(features.get("entity_edit_frequency", 0.0)))
    overlap = min(max(float(features.get("field_overlap_score", 0.0)), 0.0), 1.0)
    score = (
        0.02
        + 0.20 * min(editors, 3.0)
        + 0.35 * overlap
        + 0.50 * user_rate
        + 0.10 * min(hours / 24.0, 1.0)
        + 0.05 * min(frequency / 10.0, 1.0)
    )
    return min(max(score, 0.0), 0.99)


def heuristic_probabilities(rows: Sequence[Mapping[str, float] | None]) -> list[float]:
    return [heuristic_probability(row) for row in rows]
