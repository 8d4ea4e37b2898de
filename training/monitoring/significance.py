"""When a difference is more than the luck of the sample: the tests behind every alert.

An alert compares a live figure with a limit. Measured on a few hundred predictions, a live
figure moves by chance alone, so each condition fires only when the whole one-sided
confidence interval (level ``1 - alpha``) lies past the limit, not merely its point estimate:

- proportions (accuracy, precision, recall, fallback rate): the Wilson score interval;
- PR-AUC, Brier score, calibration error: a percentile bootstrap over the labelled rows;
- feature drift: a chi-square goodness-of-fit test of the live rows' bin counts against the
  training proportions (bins merged until each expects at least five rows), at ``alpha``
  divided by the number of features (Bonferroni), besides the PSI limit itself. Rows of one
  user are not independent (a user's history features barely move within a day), so the
  test counts the distinct users behind the rows, not the rows: the statistic is scaled by
  ``users / rows``, the design effect of rows clustered by user at its most conservative.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 200
MIN_EXPECTED = 5.0


def wilson_bounds(successes: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided ``1 - alpha`` lower and upper bounds of a proportion (Wilson score)."""
    if n <= 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(1 - alpha))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_bounds(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    proba: np.ndarray,
    alpha: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float] | None:
    """One-sided ``1 - alpha`` percentile bounds of ``metric(y, proba)``; ``None`` when no
    resample could be scored (a single class). Seeded: the same rows give the same bounds."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        take = rng.integers(0, len(y), len(y))
        y_b = y[take]
        if 0 < y_b.sum() < len(y_b):
            values.append(metric(y_b, proba[take]))
    if not values:
        return None
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def goodness_of_fit_p_value(
    observed: np.ndarray, expected_share: np.ndarray, *, independent: float | None = None
) -> float:
    """p-value of a chi-square test that ``observed`` bin counts follow ``expected_share``.

    ``independent``: how many independent observations the counts amount to (the distinct
    users behind clustered rows); the counts are scaled to it. Neighbouring bins are merged
    (in order) until each expects at least ``MIN_EXPECTED``, where the chi-square
    approximation holds; one bin left means nothing to test (1.0).
    """
    observed = np.asarray(observed, dtype=float)
    if independent is not None and 0 < independent < observed.sum():
        observed = observed * (independent / observed.sum())
    n = observed.sum()
    expected = np.asarray(expected_share, dtype=float) * n
    merged_observed, merged_expected = [], []
    run_observed = run_expected = 0.0
    for o, e in zip(observed, expected, strict=True):
        run_observed, run_expected = run_observed + o, run_expected + e
        if run_expected >= MIN_EXPECTED:
            merged_observed.append(run_observed)
            merged_expected.append(run_expected)
            run_observed = run_expected = 0.0
    if merged_expected:
        merged_observed[-1] += run_observed
        merged_expected[-1] += run_expected
    if len(merged_expected) < 2:
        return 1.0
    o, e = np.asarray(merged_observed), np.asarray(merged_expected)
    statistic = float(np.sum((o - e) ** 2 / e))
    return float(stats.chi2.sf(statistic, df=len(e) - 1))
