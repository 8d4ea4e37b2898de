"""The hyperparameter sweep: Ray Tune over logistic regression and gradient boosting.

Each trial fits on the oldest part of the training data and is scored on the newest part
(PR-AUC, since conflicts are rare), so selection never looks at the future. Half of the
trials go to each model family.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.train import fit_candidate

log = logging.getLogger(__name__)

METRIC = "val_pr_auc"


def search_space() -> dict[str, Any]:
    from ray import tune

    return {
        "model": tune.grid_search(["logreg", "hgb"]),
        "class_weight": tune.choice([None, "balanced"]),
        # logistic regression
        "C": tune.loguniform(1e-3, 1e2),
        "l1_ratio": tune.choice([0.0, 0.5, 1.0]),
        # gradient boosting
        "learning_rate": tune.loguniform(0.03, 0.3),
        "max_leaf_nodes": tune.choice([15, 31, 63]),
        "max_iter": tune.choice([100, 200, 300]),
        "min_samples_leaf": tune.choice([20, 50, 200]),
        "l2_regularization": tune.loguniform(1e-4, 1.0),
    }


def sample_configs(num_samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """Configurations drawn from the same ranges without Ray (tests, quick local runs)."""
    rng = np.random.default_rng(seed)

    def logu(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    configs = []
    for i in range(num_samples):
        configs.append(
            {
                "model": ("logreg", "hgb")[i % 2],
                "class_weight": (None, "balanced")[int(rng.integers(2))],
                "C": logu(1e-3, 1e2),
                "l1_ratio": float(rng.choice([0.0, 0.5, 1.0])),
                "learning_rate": logu(0.03, 0.3),
                "max_leaf_nodes": int(rng.choice([15, 31, 63])),
                "max_iter": int(rng.choice([100, 200, 300])),
                "min_samples_leaf": int(rng.choice([20, 50, 200])),
                "l2_regularization": logu(1e-4, 1.0),
            }
        )
    return configs


def best_config(results: Sequence[tuple[dict[str, Any], dict[str, float]]]) -> tuple[dict[str, Any], dict[str, float]]:
    selectable = [r for r in results if r[1]["selectable"] > 0]
    if not selectable:
        raise RuntimeError("no configuration of the sweep respected the known feature directions")
    return max(selectable, key=lambda r: r[1][METRIC])


def sweep_local(
    configs: Sequence[dict[str, Any]], feature_columns: Sequence[str], fit: pd.DataFrame, validation: pd.DataFrame
) -> list[tuple[dict[str, Any], dict[str, float]]]:
    return [(dict(c), fit_candidate(c, feature_columns, fit, validation)[1]) for c in configs]


def _trial(config: dict[str, Any], *, feature_columns: list[str], fit: pd.DataFrame, validation: pd.DataFrame) -> None:
    from ray import tune

    _, scores = fit_candidate(config, feature_columns, fit, validation)
    tune.report(scores)


def sweep_with_ray(
    num_samples: int,
    feature_columns: Sequence[str],
    fit: pd.DataFrame,
    validation: pd.DataFrame,
    *,
    storage_path: Path,
    name: str,
    cpus_per_trial: float = 1.0,
    seed: int = 0,
) -> list[tuple[dict[str, Any], dict[str, float]]]:
    """``num_samples`` trials (rounded up to even: one grid entry per model family) on Ray Tune."""
    from ray import tune
    from ray.tune import RunConfig, TuneConfig

    trainable = tune.with_resources(
        tune.with_parameters(_trial, feature_columns=list(feature_columns), fit=fit, validation=validation),
        {"cpu": cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(),
        tune_config=TuneConfig(metric=METRIC, mode="max", num_samples=max(1, (num_samples + 1) // 2)),
        run_config=RunConfig(name=name, storage_path=str(storage_path.resolve()), verbose=1),
    )
    grid = tuner.fit()
    results = []
    for index in range(len(grid)):
        result = grid[index]
        if result.error is not None or result.config is None or result.metrics is None:
            log.warning("sweep trial failed: %s", result.error or "no metrics reported")
            continue
        metrics = result.metrics
        results.append((dict(result.config), {k: float(metrics[k]) for k in (METRIC, "val_roc_auc", "selectable")}))
    if not results:
        raise RuntimeError("every trial of the sweep failed; see the Ray Tune logs under " + str(storage_path))
    return results
