"""The active model's side of the gate: its figures on the candidate's holdout rows.

Each model carries its own feature parameters (windows, cap, prior), so the active model is
scored on the same holdout rows with features computed with *its* parameters, not the
candidate's; otherwise a model trained on other windows would be judged on inputs it never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry
from conflict_core.errors import ArtifactIntegrityError
from conflict_core.features import FeatureParams
from conflict_core.store import session_scope
from training.evaluate import classification_metrics
from training.extract import LABEL

HoldoutFeatures = Callable[[FeatureParams], pd.DataFrame]
"""The holdout rows with features computed with the given parameters."""


@dataclass
class ActiveScore:
    """The active model on the candidate's holdout: who it is, and its figures if it could be scored."""

    info: tuple[str, Path, str] | None = None  # version, artifact path, artifact sha256
    metrics: dict[str, Any] | None = None
    proba: np.ndarray | None = None
    unscorable: str | None = None
    notes: list[str] = field(default_factory=list)


def holdout_features(
    computed: Mapping[FeatureParams, pd.DataFrame], compute: HoldoutFeatures
) -> Callable[[FeatureParams], pd.DataFrame]:
    """The holdout for any parameters: a frame already computed with them, else ``compute``'s."""

    def for_params(params: FeatureParams) -> pd.DataFrame:
        known = computed.get(params)
        return known if known is not None else compute(params)

    return for_params


def score_active(session_factory: sessionmaker[Session], holdout_for: HoldoutFeatures, threshold: float) -> ActiveScore:
    """The active model's holdout metrics on features made with its own parameters; an artifact
    that fails verification or lacks a feature column makes it unscorable, with a note."""
    with session_scope(session_factory) as session:
        current = registry.active(session)
        info = (current.version, Path(current.artifact_path), current.artifact_sha256) if current else None
    if info is None:
        return ActiveScore()
    try:
        artifact = registry.load_artifact(info[1], info[2])
        holdout = holdout_for(FeatureParams(**artifact.get("feature_params", {})))
        proba = artifact["estimator"].predict_proba(holdout[artifact["feature_columns"]])[:, 1]
    except (ArtifactIntegrityError, KeyError) as exc:
        return ActiveScore(
            info, unscorable=f"{info[0]}: {exc}", notes=[f"active model {info[0]} could not be scored: {exc}"]
        )
    metrics = classification_metrics(holdout[LABEL].to_numpy(), proba, threshold)
    return ActiveScore(info, metrics, proba)
