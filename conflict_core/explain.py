"""Why a prediction is what it is: the top contributing factors, in words.

A factor's *contribution* to one prediction is how much the probability drops when that
feature alone is set back to a typical value (the training median the model carries):
``p(x) - p(x with feature j := reference_j)``. It works the same for any model family
(logistic regression, gradient boosting, their calibrated wrappers) and costs one batched
``predict_proba`` over ``n * (k + 1)`` rows for ``n`` items and ``k`` features.

The words are built from the feature values and the feature parameters the model was
trained with (its windows), e.g. "2 other people synced this task in the last 5 minutes"
or "your last sync was 3 days ago".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from conflict_core.features import FeatureParams

DEFAULT_TOP = 3
# Contributions below this (in probability) are noise, not a reason.
MIN_CONTRIBUTION = 0.005


def contributions(
    predict: Callable[[np.ndarray], np.ndarray], matrix: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, contributions)``: ``contributions[i, j]`` is item i's drop when feature j is typical."""
    n, k = matrix.shape
    stacked = np.repeat(matrix[None, :, :], k + 1, axis=0)  # copy 0: as is; copy j+1: feature j typical
    for j in range(k):
        stacked[j + 1, :, j] = reference[j]
    probabilities = np.asarray(predict(stacked.reshape((k + 1) * n, k)), dtype=np.float64).reshape(k + 1, n)
    return probabilities[0], (probabilities[0][None, :] - probabilities[1:]).T


def top_factors(
    contribution: np.ndarray,
    names: Sequence[str],
    *,
    top: int = DEFAULT_TOP,
    min_contribution: float = MIN_CONTRIBUTION,
) -> list[list[str]]:
    """Per item, the names of up to ``top`` features that raise its risk most, largest first."""
    order = np.argsort(-contribution, axis=1, kind="stable")[:, :top]
    return [[names[j] for j in row if contribution[i, j] >= min_contribution] for i, row in enumerate(order)]


def _duration(hours: float) -> str:
    if hours >= 48:
        return f"{hours / 24:.0f} days"
    if hours >= 2:
        return f"{hours:.0f} hours"
    minutes = max(1, round(hours * 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _window(days: float) -> str:
    return _duration(days * 24)


def _fields(changed_fields: Sequence[str]) -> str:
    shown = ", ".join(f"`{name}`" for name in changed_fields[:3])
    return shown + (f" and {len(changed_fields) - 3} more" if len(changed_fields) > 3 else "")


def describe(
    name: str,
    value: float,
    *,
    entity_type: str,
    changed_fields: Sequence[str],
    params: FeatureParams,
) -> str:
    """One factor in words, from its value and the model's feature windows."""
    thing = f"this {entity_type}"
    history = _window(params.history_window_days)
    if name == "concurrent_editors":
        people = int(round(value))
        who = "other person" if people == 1 else "other people"
        return f"{people} {who} synced {thing} in the last {_duration(params.concurrent_window_minutes / 60)}"
    if name == "hours_since_last_sync":
        capped = value >= params.hours_since_cap
        return f"your last sync was {'more than ' if capped else ''}{_duration(value)} ago: your copy may be stale"
    if name == "user_conflict_rate":
        return f"about {value:.0%} of your syncs in the last {history} conflicted"
    if name == "entity_edit_frequency":
        return f"{thing} is changed about {value:.1f} times a day"
    if name == "field_overlap_score":
        if value >= 1 and changed_fields:
            return f"others changed {_fields(changed_fields)} on {thing} in the last {history}"
        return f"others changed {value:.0%} of the fields you are changing on {thing} in the last {history}"
    if name == "edits_since_own_last_sync":
        changes = int(round(value))
        return f"{changes} change{'s' if changes != 1 else ''} by others to {thing} since your last sync of it"
    if name == "overlap_since_own_last_sync":
        if value >= 1 and changed_fields:
            return f"someone else changed {_fields(changed_fields)} on {thing} since your last sync of it"
        return f"someone else changed {value:.0%} of the fields you are changing since your last sync of {thing}"
    return f"{name} is {value:g}"


def reasons(
    factors: Sequence[str],
    values: Mapping[str, float],
    *,
    entity_type: str,
    changed_fields: Sequence[str],
    params: FeatureParams,
) -> list[str]:
    """The factors of one prediction in words, in order."""
    return [
        describe(name, values[name], entity_type=entity_type, changed_fields=changed_fields, params=params)
        for name in factors
    ]
