"""Cost-aware recommendations: which action a calibrated conflict probability calls for.

A device about to push an edit can

* ``sync_now`` — costs nothing now; with probability ``p`` the sync conflicts and somebody
  resolves it by hand (``manual_resolution``);
* ``fetch_first`` — an extra fetch (``extra_fetch``) that avoids a share
  (``fetch_avoids_fraction``) of the conflicts: the ones whose other edit already reached the
  server;
* ``warn_user`` — interrupts the person (``user_interruption``), who then merges knowingly.

Expected costs are linear in ``p``::

    sync_now     p * C_resolve
    fetch_first  C_fetch + p * (1 - a) * C_resolve
    warn_user    C_interrupt

so the action of least expected cost changes at (at most) two probabilities, which become the
``fetch_first`` and ``warn_user`` thresholds. They mean what they say only on *calibrated*
probabilities, which is why each model carries its own (computed when it is trained, from the
costs configured then) and the fixed 0.2 / 0.5 bands remain only for the heuristics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# A cut point no probability reaches: the action above it is never the cheapest.
NEVER = float(np.nextafter(1.0, 2.0))


@dataclass(frozen=True)
class DecisionCosts:
    """What each outcome costs, in one unit (e.g. minutes of a person's time)."""

    manual_resolution: float
    extra_fetch: float
    user_interruption: float
    fetch_avoids_fraction: float

    def __post_init__(self) -> None:
        for name in ("manual_resolution", "extra_fetch", "user_interruption"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"cost {name} must be >= 0, got {getattr(self, name)}")
        if self.manual_resolution <= 0:
            raise ValueError(f"cost manual_resolution must be > 0, got {self.manual_resolution}")
        if not 0 <= self.fetch_avoids_fraction <= 1:
            raise ValueError(f"fetch_avoids_fraction must be within 0..1, got {self.fetch_avoids_fraction}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class DecisionThresholds:
    """``p < fetch_first``: sync now; ``fetch_first <= p < warn_user``: fetch first; else warn.

    ``fetch_first == warn_user`` means fetching first is never the cheapest action.
    """

    fetch_first: float
    warn_user: float
    source: str = "costs"

    def __post_init__(self) -> None:
        if not 0 <= self.fetch_first <= self.warn_user <= NEVER:
            raise ValueError(
                f"thresholds must satisfy 0 <= fetch_first <= warn_user <= 1 (or just above: never), "
                f"got fetch_first={self.fetch_first}, warn_user={self.warn_user}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DecisionThresholds:
        return cls(float(values["fetch_first"]), float(values["warn_user"]), str(values.get("source", "costs")))


def cost_thresholds(costs: DecisionCosts) -> DecisionThresholds:
    """The probabilities at which the cheapest expected action changes (the lower envelope)."""
    resolve, fetch, interrupt, avoids = (
        costs.manual_resolution,
        costs.extra_fetch,
        costs.user_interruption,
        costs.fetch_avoids_fraction,
    )
    warn_over_sync = min(interrupt / resolve, NEVER)
    # Fetching first beats syncing from p > fetch / (avoids * resolve) and beats warning
    # below p < (interrupt - fetch) / ((1 - avoids) * resolve).
    if avoids <= 0:
        return DecisionThresholds(warn_over_sync, warn_over_sync)
    fetch_over_sync = fetch / (avoids * resolve)
    warn_over_fetch = np.inf if avoids >= 1 else (interrupt - fetch) / ((1 - avoids) * resolve)
    if fetch_over_sync >= warn_over_fetch:  # fetching first is never the cheapest
        return DecisionThresholds(warn_over_sync, warn_over_sync)
    return DecisionThresholds(min(fetch_over_sync, NEVER), float(min(warn_over_fetch, NEVER)))


def realised_costs(outcomes: np.ndarray, actions: np.ndarray, costs: DecisionCosts) -> np.ndarray:
    """Cost of each decision given whether the sync would have conflicted (0 sync, 1 fetch, 2 warn)."""
    conflict = np.asarray(outcomes, dtype=float)
    resolve = costs.manual_resolution
    return np.select(
        [actions == 0, actions == 1],
        [conflict * resolve, costs.extra_fetch + conflict * (1 - costs.fetch_avoids_fraction) * resolve],
        default=costs.user_interruption,
    )


def actions_for(probabilities: np.ndarray, thresholds: DecisionThresholds) -> np.ndarray:
    """0 (sync now), 1 (fetch first) or 2 (warn user) per probability."""
    p = np.asarray(probabilities, dtype=float)
    return np.where(p >= thresholds.warn_user, 2, np.where(p >= thresholds.fetch_first, 1, 0))


def mean_cost(
    outcomes: np.ndarray, probabilities: np.ndarray, thresholds: DecisionThresholds, costs: DecisionCosts
) -> float:
    """Average realised cost per decision of acting on ``probabilities`` with ``thresholds``."""
    if len(outcomes) == 0:
        return float("nan")
    return float(realised_costs(outcomes, actions_for(probabilities, thresholds), costs).mean())


def policy_comparison(
    outcomes: np.ndarray,
    probabilities: np.ndarray,
    *,
    thresholds: DecisionThresholds,
    fixed: DecisionThresholds,
    costs: DecisionCosts,
) -> dict[str, float]:
    """Average cost per decision on labelled data: the model's thresholds, the fixed bands, always syncing."""
    never = DecisionThresholds(NEVER, NEVER, "never")
    return {
        "cost_aware": mean_cost(outcomes, probabilities, thresholds, costs),
        "fixed_bands": mean_cost(outcomes, probabilities, fixed, costs),
        "always_sync_now": mean_cost(outcomes, np.zeros(len(outcomes)), never, costs),
    }
