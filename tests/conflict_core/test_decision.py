from __future__ import annotations

import numpy as np
import pytest

from conflict_core.decision import (
    DecisionCosts,
    DecisionThresholds,
    actions_for,
    cost_thresholds,
    mean_cost,
    policy_comparison,
)

COSTS = DecisionCosts(manual_resolution=10.0, extra_fetch=0.5, user_interruption=2.0, fetch_avoids_fraction=0.6)


def _expected(p: float, costs: DecisionCosts) -> list[float]:
    """Expected cost of sync_now, fetch_first, warn_user at probability p (written out directly)."""
    resolve = costs.manual_resolution
    return [
        p * resolve,
        costs.extra_fetch + p * (1 - costs.fetch_avoids_fraction) * resolve,
        costs.user_interruption,
    ]


@pytest.mark.parametrize(
    "costs",
    [
        COSTS,
        DecisionCosts(50.0, 1.0, 5.0, 0.3),
        DecisionCosts(10.0, 3.0, 2.0, 0.6),  # a fetch costs more than a warning: never fetch first
        DecisionCosts(10.0, 0.5, 2.0, 0.0),  # a fetch avoids nothing
        DecisionCosts(1.0, 0.1, 5.0, 1.0),  # warning never pays
    ],
)
def test_thresholds_pick_the_action_of_least_expected_cost(costs: DecisionCosts) -> None:
    thresholds = cost_thresholds(costs)
    grid = np.linspace(0, 1, 2001)
    chosen = actions_for(grid, thresholds)
    for p, action in zip(grid, chosen, strict=True):
        expected = _expected(float(p), costs)
        assert expected[action] <= min(expected) + 1e-9, (p, action, expected)


def test_default_costs_give_three_bands_well_below_the_fixed_ones() -> None:
    thresholds = cost_thresholds(COSTS)
    assert thresholds.fetch_first == pytest.approx(0.5 / (0.6 * 10))
    assert thresholds.warn_user == pytest.approx((2.0 - 0.5) / (0.4 * 10))
    assert list(actions_for(np.array([0.01, 0.1, 0.5]), thresholds)) == [0, 1, 2]


def test_cost_aware_thresholds_cost_less_than_fixed_bands_on_calibrated_low_base_rate_data() -> None:
    rng = np.random.default_rng(1)
    p = rng.beta(0.3, 12, 200_000)  # mostly tiny probabilities, mean ~2.4 %
    y = rng.random(len(p)) < p  # calibrated by construction
    costs = policy_comparison(
        y, p, thresholds=cost_thresholds(COSTS), fixed=DecisionThresholds(0.2, 0.5, "fixed"), costs=COSTS
    )
    assert costs["cost_aware"] < costs["fixed_bands"] < costs["always_sync_now"] + 1e-9


def test_realised_cost_counts_each_action() -> None:
    thresholds = DecisionThresholds(0.3, 0.6)
    outcomes = np.array([1, 0, 1, 0])
    probabilities = np.array([0.1, 0.4, 0.4, 0.9])
    # sync & conflict: 10; fetch & none: 0.5; fetch & conflict: 0.5 + 0.4 * 10; warn: 2
    assert mean_cost(outcomes, probabilities, thresholds, COSTS) == pytest.approx((10 + 0.5 + 4.5 + 2) / 4)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"manual_resolution": 0.0}, "manual_resolution must be > 0"),
        ({"extra_fetch": -1.0}, "extra_fetch must be >= 0"),
        ({"fetch_avoids_fraction": 1.5}, "within 0..1"),
    ],
)
def test_costs_are_validated(kwargs: dict[str, float], problem: str) -> None:
    values = {**COSTS.to_dict(), **kwargs}
    with pytest.raises(ValueError, match=problem):
        DecisionCosts(**values)


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="fetch_first <= warn_user"):
        DecisionThresholds(0.5, 0.2)
