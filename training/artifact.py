"""The model artifact: what a trained model ships with, written next to its report.

One ``model.joblib`` per version holds the calibrated estimator and everything serving needs
to use it as it was trained: its feature columns and feature parameters, its cost-aware
thresholds, and the feature medians its reasons compare against. The registry keeps the
file's sha256; :func:`conflict_core.registry.load_artifact` refuses a file that differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from conflict_core import registry

ARTIFACT_FILE = "model.joblib"


@dataclass(frozen=True)
class WrittenArtifact:
    path: Path
    sha256: str


def write_artifact(
    out_dir: Path,
    *,
    version: str,
    model: Any,
    config: Mapping[str, Any],
    features: Sequence[str],
    train_rows: pd.DataFrame,
    feature_params: Mapping[str, Any],
    threshold: float,
    decision_thresholds: Mapping[str, float],
    decision_costs: Mapping[str, float],
    training_set: str,
) -> WrittenArtifact:
    """Write ``model.joblib`` into ``out_dir``; ``train_rows`` are the rows the model was fitted on."""
    path = out_dir / ARTIFACT_FILE
    joblib.dump(
        {
            "estimator": model,
            "feature_columns": list(features),
            "version": version,
            "algorithm": config["model"],
            "params": dict(config),
            "threshold": threshold,
            "decision_thresholds": dict(decision_thresholds),
            # What the served model's reasons compare against, and the windows its features use.
            "feature_reference": {c: float(train_rows[c].median()) for c in features},
            "feature_params": dict(feature_params),
            "decision_costs": dict(decision_costs),
            "training_set": training_set,
        },
        path,
    )
    return WrittenArtifact(path, registry.sha256_file(path))
