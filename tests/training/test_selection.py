from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from conflict_core.features import SEED_FEATURES
from training.selection import SEED_CONFIG, bootstrap_intervals, choose_on_validation, columns_for

SEED = {"val_pr_auc": 0.40, "val_roc_auc": 0.90, "selectable": 1.0}


def _result(model: str, pr: float, roc: float, selectable: float = 1.0) -> tuple[dict, dict]:
    return {"model": model}, {"val_pr_auc": pr, "val_roc_auc": roc, "selectable": selectable}


def test_a_better_pr_auc_bought_with_a_worse_roc_auc_is_not_chosen() -> None:
    results = [_result("hgb", 0.60, 0.85), _result("logreg", 0.45, 0.91)]
    choice = choose_on_validation(results, SEED)
    assert choice.config == {"model": "logreg"}
    assert "1 of 2" in choice.reason


def test_the_seed_baseline_is_chosen_when_nothing_matches_it_on_both() -> None:
    results = [_result("hgb", 0.60, 0.85), _result("logreg", 0.35, 0.95), _result("logreg", 0.9, 0.99, 0.0)]
    choice = choose_on_validation(results, SEED)
    assert choice.config == SEED_CONFIG and choice.scores == SEED
    assert columns_for(choice.config, ["a", "b"]) == list(SEED_FEATURES)


def test_bootstrap_intervals_bracket_the_point_estimate() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.05).astype(int)
    p = np.clip(0.05 + 0.3 * y + rng.normal(0, 0.1, len(y)), 0, 1)
    intervals = bootstrap_intervals(y, p, rounds=200)
    for name, value in (("roc_auc", roc_auc_score(y, p)), ("pr_auc", average_precision_score(y, p))):
        low, high = intervals[name]
        assert low < value < high and high - low < 0.2
