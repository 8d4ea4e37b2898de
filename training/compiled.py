"""A fitted model compiled to flat numpy arrays, evaluated with a few numpy operations per call.

scikit-learn's ``predict_proba`` on the pipeline :mod:`training.train` writes (log1p →
optional scaler → logistic regression or histogram gradient boosting, wrapped in
``CalibratedClassifierCV`` with isotonic or Platt calibration) validates its input, builds
a DataFrame, checks feature names and walks four objects on every call: about a
millisecond of fixed cost, which a serving batch of one item pays in full. The compiled form
holds only the fitted numbers and repeats the same arithmetic:

- ``FunctionTransformer(np.log1p)`` → ``np.log1p``; ``StandardScaler`` → ``(x - mean) / scale``;
- ``LogisticRegression`` → ``x @ coef.T + intercept``;
- ``HistGradientBoostingClassifier`` → every tree's nodes in one set of arrays (leaves point
  to themselves), all trees walked together for ``max depth`` steps, leaf values summed onto
  the baseline;
- isotonic calibration → ``np.interp`` over the fitted thresholds after clipping to their
  range; Platt → ``expit(-(a * score + b))``; averaged over the calibrated classifiers as
  scikit-learn does.

:func:`compile_model` refuses (:class:`UnsupportedModel`) anything else, such as categorical
splits or a multi-class model; the caller then keeps scikit-learn. :func:`max_difference`
measures the compiled form against ``predict_proba`` on given rows, so a loader can check
the equality it relies on before serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from conflict_core.errors import ConflictPredictorError


class UnsupportedModel(ConflictPredictorError):
    """The estimator holds a step or a setting the compiled form does not reproduce."""


@dataclass(frozen=True)
class _Log1p:
    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.log1p(x)


@dataclass(frozen=True)
class _Scale:
    mean: np.ndarray | None
    scale: np.ndarray | None

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.mean is not None:
            x = x - self.mean
        if self.scale is not None:
            x = x / self.scale
        return x


@dataclass(frozen=True)
class _Linear:
    coef: np.ndarray  # (1, n_features), as LogisticRegression.coef_
    intercept: float

    def score(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.coef.T + self.intercept).ravel()


@dataclass(frozen=True)
class _Forest:
    """All trees of a boosted model as one node table; node ids are global, leaves loop to themselves.

    ``score`` walks every tree of every row at once, ``depth`` steps, one ``np.take`` per array
    per step (NaN routing only when the input holds a NaN).
    """

    baseline: float
    roots: np.ndarray  # (n_trees,) int64
    feature: np.ndarray  # (n_nodes,) int64, 0 on leaves
    threshold: np.ndarray  # (n_nodes,) float64, x <= threshold goes left
    missing_left: np.ndarray  # (n_nodes,) bool, where NaN goes
    children: np.ndarray  # (2 * n_nodes,) int64: node k's right child at 2k, its left at 2k + 1
    value: np.ndarray  # (n_nodes,) float64, the leaf values (0 elsewhere)
    depth: int  # steps that bring every root to a leaf
    n_features: int

    def score(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        flat = np.ascontiguousarray(x, dtype=np.float64).ravel()
        offsets = (np.arange(n, dtype=np.int64) * self.n_features)[:, None]
        node = np.broadcast_to(self.roots, (n, len(self.roots)))
        with_missing = bool(np.isnan(flat).any())
        for _ in range(self.depth):
            values = np.take(flat, offsets + np.take(self.feature, node))
            go_left = values <= np.take(self.threshold, node)
            if with_missing:
                go_left = np.where(np.isnan(values), np.take(self.missing_left, node), go_left)
            node = np.take(self.children, 2 * node + go_left)
        return self.baseline + np.take(self.value, node).sum(axis=1)


@dataclass(frozen=True)
class _Isotonic:
    x: np.ndarray
    y: np.ndarray
    low: float
    high: float

    def apply(self, scores: np.ndarray) -> np.ndarray:
        if len(self.y) == 1:
            return np.repeat(self.y, len(scores)).astype(np.float64)
        return np.interp(np.clip(scores, self.low, self.high), self.x, self.y)


@dataclass(frozen=True)
class _Platt:
    a: float
    b: float

    def apply(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(expit(-(self.a * scores + self.b)), dtype=np.float64)


_Transform = _Log1p | _Scale
_Scorer = _Linear | _Forest
_Calibrator = _Isotonic | _Platt


@dataclass(frozen=True)
class _Member:
    """One calibrated classifier: transforms, a decision score, and its calibrator (None: expit)."""

    transforms: tuple[_Transform, ...]
    scorer: _Scorer
    calibrator: _Calibrator | None

    def positive(self, x: np.ndarray) -> np.ndarray:
        for step in self.transforms:
            x = step.apply(x)
        scores = self.scorer.score(x)
        if self.calibrator is None:
            return np.asarray(expit(scores), dtype=np.float64)
        proba = self.calibrator.apply(scores)
        # CalibratedClassifierCV rounds values a hair above 1 down to 1.
        proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
        return proba


@dataclass(frozen=True)
class CompiledModel:
    """The positive-class probability of a compiled binary classifier; input columns as fitted."""

    members: tuple[_Member, ...]
    n_features: int

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``estimator.predict_proba(x)[:, 1]`` for an ``(n, n_features)`` float matrix."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected an (n, {self.n_features}) feature matrix, got shape {x.shape}")
        if len(self.members) == 1:
            return self.members[0].positive(x)
        total = np.zeros(x.shape[0], dtype=np.float64)
        for member in self.members:
            total += member.positive(x)
        return total / len(self.members)


def compile_model(estimator: object) -> CompiledModel:
    """The compiled form of a fitted binary classifier; raises :class:`UnsupportedModel`."""
    if isinstance(estimator, CalibratedClassifierCV):
        if len(estimator.classes_) != 2:
            raise UnsupportedModel(f"expected a binary classifier, got classes {list(estimator.classes_)}")
        members = []
        for calibrated in estimator.calibrated_classifiers_:
            if calibrated.method not in ("isotonic", "sigmoid") or len(calibrated.calibrators) != 1:
                raise UnsupportedModel(f"calibration method {calibrated.method!r} is not compiled")
            transforms, scorer, n_features = _chain(calibrated.estimator)
            members.append(_Member(transforms, scorer, _calibrator(calibrated.calibrators[0])))
        return CompiledModel(tuple(members), n_features)
    transforms, scorer, n_features = _chain(estimator)
    return CompiledModel((_Member(transforms, scorer, None),), n_features)


def max_difference(compiled: CompiledModel, estimator: object, x: np.ndarray, columns: Sequence[str]) -> float:
    """The largest absolute difference from ``estimator.predict_proba`` on ``x`` (as a frame of ``columns``)."""
    import pandas as pd

    expected = np.asarray(estimator.predict_proba(pd.DataFrame(x, columns=list(columns))))[:, 1]  # type: ignore[attr-defined]
    return float(np.max(np.abs(compiled.predict_proba(x) - expected), initial=0.0))


def _chain(estimator: object) -> tuple[tuple[_Transform, ...], _Scorer, int]:
    if isinstance(estimator, FrozenEstimator):
        estimator = estimator.estimator
    steps = [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
    *preprocessing, final = steps
    transforms = tuple(_transform(step) for step in preprocessing if step not in (None, "passthrough"))
    if isinstance(final, LogisticRegression):
        return transforms, _linear(final), int(final.n_features_in_)
    if isinstance(final, HistGradientBoostingClassifier):
        return transforms, _forest(final), int(final.n_features_in_)
    raise UnsupportedModel(f"final step {type(final).__name__} is not compiled; expected LogisticRegression or HGB")


def _transform(step: object) -> _Transform:
    if isinstance(step, FunctionTransformer):
        if step.func is not np.log1p or step.kw_args:
            raise UnsupportedModel(f"FunctionTransformer({step.func!r}) is not compiled; only np.log1p is")
        return _Log1p()
    if isinstance(step, StandardScaler):
        return _Scale(
            np.asarray(step.mean_, dtype=np.float64) if step.with_mean else None,
            np.asarray(step.scale_, dtype=np.float64) if step.with_std else None,
        )
    raise UnsupportedModel(f"preprocessing step {type(step).__name__} is not compiled")


def _linear(model: LogisticRegression) -> _Linear:
    if len(model.classes_) != 2 or model.coef_.shape[0] != 1:
        raise UnsupportedModel(f"expected a binary logistic regression, got coef_ of shape {model.coef_.shape}")
    return _Linear(np.asarray(model.coef_, dtype=np.float64), float(model.intercept_[0]))


def _forest(model: HistGradientBoostingClassifier) -> _Forest:
    if model.n_trees_per_iteration_ != 1:
        raise UnsupportedModel(f"expected a binary model, got {model.n_trees_per_iteration_} trees per iteration")
    if getattr(model, "_preprocessor", None) is not None or model.is_categorical_ is not None:
        raise UnsupportedModel("categorical features are not compiled")
    roots, parts, offset, depth = [], [], 0, 0
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise UnsupportedModel("a categorical split is not compiled")
        leaf = nodes["is_leaf"].astype(bool)
        own = np.arange(len(nodes), dtype=np.int64) + offset
        parts.append(
            (
                np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64),
                np.where(leaf, np.inf, nodes["num_threshold"]).astype(np.float64),
                nodes["missing_go_to_left"].astype(bool),
                np.where(leaf, own, nodes["left"].astype(np.int64) + offset),
                np.where(leaf, own, nodes["right"].astype(np.int64) + offset),
                np.where(leaf, nodes["value"], 0.0).astype(np.float64),
            )
        )
        roots.append(offset)
        depth = max(depth, int(nodes["depth"].max()))
        offset += len(nodes)
    feature, threshold, missing_left, left, right, value = (np.concatenate(c) for c in zip(*parts, strict=True))
    baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
    return _Forest(
        baseline=float(baseline[0]),
        roots=np.asarray(roots, dtype=np.int64),
        feature=feature,
        threshold=threshold,
        missing_left=missing_left,
        children=np.stack([right, left], axis=1).ravel(),
        value=value,
        depth=depth,
        n_features=int(model.n_features_in_),
    )


def _calibrator(calibrator: object) -> _Calibrator:
    if isinstance(calibrator, IsotonicRegression):
        if calibrator.out_of_bounds != "clip":
            raise UnsupportedModel(
                f"isotonic out_of_bounds={calibrator.out_of_bounds!r} is not compiled; expected 'clip'"
            )
        return _Isotonic(
            np.asarray(calibrator.X_thresholds_, dtype=np.float64),
            np.asarray(calibrator.y_thresholds_, dtype=np.float64),
            float(calibrator.X_min_),
            float(calibrator.X_max_),
        )
    if type(calibrator).__name__ == "_SigmoidCalibration":
        return _Platt(float(calibrator.a_), float(calibrator.b_))  # type: ignore[attr-defined]
    raise UnsupportedModel(f"calibrator {type(calibrator).__name__} is not compiled")
