"""The active model (and a rollout's challenger) as swappable references, plain Python.

:class:`ModelHolder` loads an artifact only after :func:`conflict_core.registry.load_artifact`
has verified its sha256, and replaces what it serves (the model, or none and the reason) by
assigning a single attribute once the new model is fully loaded: a prediction running concurrently keeps the object it
started with, so it never sees a half-loaded model.

:class:`Variants` adds the challenger of a rollout beside the champion: in ``shadow`` mode it
scores the same batch matrix (one more ``predict_proba``) and its probabilities travel with the
answer for the prediction log only; in ``canary`` mode it answers the rows of the users whose
:func:`canary_bucket` falls below ``percent * 100`` (sticky: a user keeps their variant for the
whole canary and across replicas and restarts). A challenger that fails never fails a request:
the champion answers.

Each model is scored on features computed with its own parameters (windows, cap, prior). When
the challenger was trained with other parameters than the champion, the answer names them
(``challenger_feature_params``) and the caller sends the challenger's own matrix beside the
champion's from then on (:class:`ChallengerInput`); a batch without it is answered by the
champion alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conflict_core.decision import DecisionThresholds
from conflict_core.errors import ArtifactFormatError, ArtifactIntegrityError, ConflictPredictorError
from conflict_core.explain import contributions, top_factors
from conflict_core.features import FeatureParams
from conflict_core.registry import load_artifact
from serve_app.feature_lookup import FEATURE_NAMES
from serve_app.heuristics import FallbackReason
from training.compiled import CompiledModel, UnsupportedModel, compile_model, max_difference

log = logging.getLogger(__name__)


class ModelUnavailable(ConflictPredictorError):
    """No model can answer; ``reason`` says why (a :class:`FallbackReason`)."""

    def __init__(self, reason: FallbackReason, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


@dataclass(frozen=True)
class LoadedModel:
    version: str
    sha256: str
    estimator: Any
    feature_columns: tuple[str, ...]
    column_index: np.ndarray  # positions of feature_columns within FEATURE_NAMES
    compiled: CompiledModel | None = None  # the same function as flat arrays, checked at load
    # The model's own sync_now / fetch_first / warn_user cut points (None: trained before they
    # existed; the ingress then applies the configured fixed bands).
    thresholds: DecisionThresholds | None = None
    # Typical value of each of feature_columns (training medians): a factor's contribution is
    # the drop in probability when it is set back to this. None: the model gives no reasons.
    reference: np.ndarray | None = None
    feature_params: FeatureParams = field(default_factory=FeatureParams)

    def _proba(self, columns: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            return np.clip(self.compiled.predict_proba(columns), 0.0, 1.0)
        frame = pd.DataFrame(columns, columns=list(self.feature_columns))
        probabilities = np.asarray(self.estimator.predict_proba(frame))[:, 1]
        return np.clip(probabilities.astype(np.float64), 0.0, 1.0)

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        return self._proba(matrix[:, self.column_index])

    def predict_with_factors(self, matrix: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
        """Probabilities and, per item, the features that raise its risk most (none without a reference)."""
        if self.reference is None:
            return self.predict_proba(matrix), [[] for _ in range(len(matrix))]
        probabilities, contribution = contributions(self._proba, matrix[:, self.column_index], self.reference)
        return probabilities, top_factors(contribution, self.feature_columns)


def load_model(version: str, artifact_path: str, artifact_sha256: str) -> LoadedModel:
    """A verified, loaded model; raises :class:`ModelUnavailable` with the precise reason."""
    try:
        artifact = load_artifact(Path(artifact_path), artifact_sha256)
    except ArtifactFormatError as exc:
        raise ModelUnavailable(FallbackReason.ARTIFACT_LOAD_FAILED, str(exc)) from exc
    except ArtifactIntegrityError as exc:
        raise ModelUnavailable(FallbackReason.ARTIFACT_VERIFICATION_FAILED, str(exc)) from exc
    except Exception as exc:  # joblib/unpickling problems of a file whose checksum matched
        raise ModelUnavailable(FallbackReason.ARTIFACT_LOAD_FAILED, f"{type(exc).__name__}: {exc}") from exc
    columns = tuple(artifact["feature_columns"])
    unknown = [c for c in columns if c not in FEATURE_NAMES]
    if unknown:
        raise ModelUnavailable(FallbackReason.ARTIFACT_LOAD_FAILED, f"artifact needs unknown features {unknown}")
    index = np.array([FEATURE_NAMES.index(c) for c in columns], dtype=np.int64)
    stored = artifact.get("decision_thresholds")
    typical = artifact.get("feature_reference")
    try:
        thresholds = None if stored is None else DecisionThresholds.from_dict(stored)
        reference = None if typical is None else np.array([float(typical[c]) for c in columns], dtype=np.float64)
        params = FeatureParams(**artifact.get("feature_params", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(FallbackReason.ARTIFACT_LOAD_FAILED, f"artifact's decision metadata: {exc}") from exc
    return LoadedModel(
        version,
        artifact_sha256,
        artifact["estimator"],
        columns,
        index,
        _compiled(version, artifact, columns),
        thresholds,
        reference,
        params,
    )


COMPILED_TOLERANCE = 1e-9


def _compiled(version: str, artifact: dict[str, Any], columns: tuple[str, ...]) -> CompiledModel | None:
    """The estimator compiled to numpy if it compiles and matches ``predict_proba`` on probe rows, else None."""
    estimator = artifact["estimator"]
    try:
        compiled = compile_model(estimator)
    except UnsupportedModel as exc:
        log.info("model %s served through scikit-learn: %s", version, exc)
        return None
    rng = np.random.default_rng(0)  # counts, rates and gaps: zeros, small and large values
    probe = rng.exponential(3.0, (512, len(columns))) * rng.choice([0.0, 0.1, 1.0, 30.0], (512, len(columns)))
    try:
        difference = max_difference(compiled, estimator, probe, columns)
    except Exception as exc:  # e.g. fitted on other columns than it names: scikit-learn fails as it would
        log.warning("model %s not compiled, its probe failed: %s: %s", version, type(exc).__name__, exc)
        return None
    if not difference <= COMPILED_TOLERANCE:  # NaN included
        log.warning("model %s: compiled form differs by %.3g, served through scikit-learn", version, difference)
        return None
    return compiled


@dataclass(frozen=True)
class Scored:
    """One batch scored by one model: what the ingress needs to answer and explain."""

    version: str
    probabilities: np.ndarray
    thresholds: DecisionThresholds | None
    factors: list[list[str]]  # per item, the features raising its risk most
    feature_params: FeatureParams


@dataclass(frozen=True)
class _Serving:
    """What a holder serves: a model, or none and why (swapped as one reference)."""

    model: LoadedModel | None
    unavailable: ModelUnavailable | None


class ModelHolder:
    """The model a replica serves, or the reason it serves none."""

    def __init__(self) -> None:
        self._serving = _Serving(None, ModelUnavailable(FallbackReason.NO_ACTIVE_MODEL))

    @property
    def model(self) -> LoadedModel | None:
        return self._serving.model

    @property
    def unavailable(self) -> ModelUnavailable | None:
        return self._serving.unavailable

    def serve_loaded(self, model: LoadedModel) -> None:
        """Serve a model already loaded and verified (by a challenger's holder, say)."""
        self._serving = _Serving(model, None)
        log.info("now serving model %s", model.version)

    def configure(self, version: str | None, artifact_path: str | None, artifact_sha256: str | None) -> None:
        """Serve the named model (``None``: no model). Loads first, then swaps the reference."""
        if not version or not artifact_path or not artifact_sha256:
            self._serving = _Serving(None, ModelUnavailable(FallbackReason.NO_ACTIVE_MODEL))
            return
        current = self.model
        if current is not None and current.version == version and current.sha256 == artifact_sha256:
            return
        try:
            loaded = load_model(version, artifact_path, artifact_sha256)
        except ModelUnavailable as exc:
            log.error("model %s not loaded, answering with the heuristics: %s", version, exc)
            self._serving = _Serving(None, exc)
            return
        self._serving = _Serving(loaded, None)
        log.info("now serving model %s", version)

    def configure_from_registry(self, database_url: str) -> None:
        """Serve the store registry's active model (``user_config`` named none), or none.

        This is what a plain ``serve run``/``serve deploy`` of the committed
        ``serve_config.yaml`` serves. The registry's artifact path and sha256 go through the
        same verified load as a named model.
        """
        from conflict_core import registry
        from conflict_core.store import make_engine, make_session_factory, session_scope

        try:
            engine = make_engine(database_url)
            try:
                with session_scope(make_session_factory(engine)) as session:
                    row = registry.active(session)
                    named = None if row is None else (row.version, row.artifact_path, row.artifact_sha256)
            finally:
                engine.dispose()
        except Exception as exc:
            log.error("registry unreadable, serving no model: %s: %s", type(exc).__name__, exc)
            unavailable = ModelUnavailable(FallbackReason.NO_ACTIVE_MODEL, f"registry unreadable: {exc}")
            self._serving = _Serving(None, unavailable)
            return
        if named is None:
            self.configure(None, None, None)
        else:
            self.configure(*named)

    def predict(self, matrix: np.ndarray) -> tuple[str, np.ndarray]:
        version, probabilities, _ = self.predict_with_thresholds(matrix)
        return version, probabilities

    def predict_with_thresholds(self, matrix: np.ndarray) -> tuple[str, np.ndarray, DecisionThresholds | None]:
        """The version, its probabilities and its decision thresholds, all from the same model."""
        model = self._current()
        return model.version, model.predict_proba(matrix), model.thresholds

    def score(self, matrix: np.ndarray) -> Scored:
        """Probabilities with everything the answer needs from the same model (one read of it)."""
        model = self._current()
        probabilities, factors = model.predict_with_factors(matrix)
        return Scored(model.version, probabilities, model.thresholds, factors, model.feature_params)

    def _current(self) -> LoadedModel:
        serving = self._serving  # one read: a concurrent swap does not affect this call
        if serving.model is None:
            raise serving.unavailable or ModelUnavailable(FallbackReason.NO_ACTIVE_MODEL)
        return serving.model

    def status(self) -> dict[str, Any]:
        serving = self._serving
        model, unavailable = serving.model, serving.unavailable
        return {
            "model_version": None if model is None else model.version,
            "artifact_sha256": None if model is None else model.sha256,
            "feature_columns": None if model is None else list(model.feature_columns),
            "decision_thresholds": None if model is None or model.thresholds is None else model.thresholds.to_dict(),
            "loaded": model is not None,
            "unavailable_reason": None if unavailable is None else unavailable.reason.value,
        }


# --------------------------------------------------------------------------- champion and challenger

CHAMPION, CHALLENGER = "champion", "challenger"
SHADOW, CANARY = "shadow", "canary"
CANARY_BUCKETS = 10_000


def canary_bucket(user_id: str) -> int:
    """A stable bucket 0..9999 of ``user_id``: the same on every replica, process and restart.

    (Python's ``hash()`` is salted per process, so it would move users between variants.)
    """
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % CANARY_BUCKETS


def canary_rows(user_ids: Sequence[str], percent: float) -> np.ndarray:
    """Which rows a canary at ``percent`` % answers (bucket below ``percent * 100``)."""
    limit = percent * (CANARY_BUCKETS / 100)
    return np.fromiter((canary_bucket(u) < limit for u in user_ids), dtype=bool, count=len(user_ids))


@dataclass(frozen=True)
class ChallengerInput:
    """The rows' features computed with the challenger's parameters, when they differ from the champion's."""

    matrix: np.ndarray
    feature_params: FeatureParams


@dataclass(frozen=True)
class ChallengerPlan:
    """The challenger and how it takes part: ``shadow`` (scored, not returned) or ``canary`` (``percent``)."""

    model: LoadedModel
    mode: str
    percent: float


class Variants:
    """A champion :class:`ModelHolder` and at most one challenger, configured from ``user_config``."""

    def __init__(self) -> None:
        self.champion = ModelHolder()
        self._challenger: ChallengerPlan | None = None
        self.challenger_problem: str | None = None

    @property
    def challenger(self) -> ChallengerPlan | None:
        return self._challenger

    def configure(self, user_config: Mapping[str, Any], database_url: str | None = None) -> None:
        """Load what ``user_config`` names: champion keys at the top, the challenger under ``challenger``.

        The challenger is loaded (and verified) before anything is swapped; when it becomes the
        champion (a promotion) its loaded model is reused, not read again.
        """
        plan = self._challenger_plan(user_config.get("challenger"))
        named = (user_config.get("model_version"), user_config.get("artifact_path"), user_config.get("artifact_sha256"))
        previous = self._challenger
        if (
            previous is not None
            and named[0] == previous.model.version
            and named[2] == previous.model.sha256
            and self.champion.model is not previous.model
        ):
            self.champion.serve_loaded(previous.model)
        elif not all(named) and database_url is not None:
            self.champion.configure_from_registry(database_url)
        else:
            self.champion.configure(*named)
        champion = self.champion.model
        if plan is not None and champion is not None and plan.model.version == champion.version:
            plan = None  # the challenger is the champion now
        self._challenger = plan

    def _challenger_plan(self, block: Any) -> ChallengerPlan | None:
        self.challenger_problem = None
        if not block:
            return None
        if not isinstance(block, Mapping):
            self.challenger_problem = f"challenger must be a mapping, got {type(block).__name__}"
            log.error("%s; serving the champion alone", self.challenger_problem)
            return None
        mode, percent = block.get("mode"), float(block.get("percent") or 0.0)
        if mode not in (SHADOW, CANARY) or (mode == CANARY and not 0 < percent < 100):
            self.challenger_problem = (
                f"challenger mode {mode!r} with percent {percent}: expected shadow, or canary with 0 < percent < 100"
            )
            log.error("%s; serving the champion alone", self.challenger_problem)
            return None
        version, path, sha = block.get("model_version"), block.get("artifact_path"), block.get("artifact_sha256")
        current = self._challenger
        if current is not None and current.model.version == version and current.model.sha256 == sha:
            return ChallengerPlan(current.model, mode, percent)
        if not version or not path or not sha:
            self.challenger_problem = "challenger needs model_version, artifact_path and artifact_sha256"
            log.error("%s; serving the champion alone", self.challenger_problem)
            return None
        try:
            model = load_model(version, path, sha)
        except ModelUnavailable as exc:
            self.challenger_problem = f"challenger {version} not loaded: {exc}"
            log.error("%s; serving the champion alone", self.challenger_problem)
            return None
        log.info("challenger %s loaded (%s%s)", version, mode, f" {percent:g}%" if mode == CANARY else "")
        return ChallengerPlan(model, mode, percent)

    def predict(
        self, matrix: np.ndarray, user_ids: Sequence[str] | None = None, challenger_input: ChallengerInput | None = None
    ) -> dict[str, Any]:
        """The champion's answer, with the challenger's part (see the module doc).

        ``{"model_version", "probabilities"}`` plus, with a challenger, ``challenger_version``
        and either ``shadow_probabilities`` (shadow) or ``challenger_rows`` (canary: a boolean
        mask of the rows it answered; ``probabilities`` holds its values there); and
        ``challenger_feature_params`` when the challenger needs features of its own
        (``challenger_input``; without it the champion answers alone).
        Raises :class:`ModelUnavailable` when the champion cannot answer.
        """
        plan = self._challenger  # one read: a concurrent reconfigure does not affect this call
        scored = self.champion.score(matrix)
        version, probabilities = scored.version, scored.probabilities
        thresholds = scored.thresholds
        answer: dict[str, Any] = {
            "model_version": version,
            "probabilities": probabilities,
            "thresholds": None if thresholds is None else (thresholds.fetch_first, thresholds.warn_user),
            "factors": scored.factors,
            "feature_params": asdict(scored.feature_params),
        }
        if plan is None or plan.model.version == version:
            return answer
        own_matrix = matrix
        if plan.model.feature_params != scored.feature_params:
            answer["challenger_feature_params"] = asdict(plan.model.feature_params)
            if challenger_input is None or challenger_input.feature_params != plan.model.feature_params:
                return answer
            own_matrix = challenger_input.matrix
        try:
            if plan.mode == SHADOW:
                answer["shadow_probabilities"] = plan.model.predict_proba(own_matrix)
            elif user_ids is not None:
                rows = canary_rows(user_ids, plan.percent)
                if rows.any():
                    challenger_probabilities, challenger_factors = plan.model.predict_with_factors(own_matrix[rows])
                    probabilities[rows] = challenger_probabilities
                    factors = list(scored.factors)
                    for position, row_factors in zip(np.flatnonzero(rows), challenger_factors, strict=True):
                        factors[position] = row_factors
                    answer["factors"] = factors
                answer["challenger_rows"] = rows
            else:
                return answer
        except Exception as exc:  # a failing challenger must not fail a request the champion can answer
            name = plan.model.version
            log.warning("challenger %s failed (%s: %s); the champion answers", name, type(exc).__name__, exc)
            answer.pop("shadow_probabilities", None)
            answer.pop("challenger_rows", None)
            return answer
        answer["challenger_version"] = plan.model.version
        return answer

    def status(self) -> dict[str, Any]:
        plan = self._challenger
        challenger = None
        if plan is not None:
            challenger = {"model_version": plan.model.version, "mode": plan.mode, "percent": plan.percent}
        return {**self.champion.status(), "challenger": challenger, "challenger_problem": self.challenger_problem}


_ROW_KEYS = ("probabilities", "shadow_probabilities", "challenger_rows", "factors")


def split_answer(answer: Mapping[str, Any], bounds: Sequence[int]) -> list[dict[str, Any]]:
    """``answer`` for each slice ``bounds[i]:bounds[i+1]`` of its rows (per-row arrays sliced, the rest shared)."""
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        part = dict(answer)
        for key in _ROW_KEYS:
            if key in answer:
                part[key] = answer[key][start:end]
        parts.append(part)
    return parts
