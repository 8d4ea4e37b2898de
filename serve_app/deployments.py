"""The Serve deployments behind the ingress: FeatureLookup, ModelInference, FallbackHeuristics.

Each wraps a plain-Python core (:mod:`serve_app.feature_lookup`, :mod:`serve_app.inference`,
:mod:`serve_app.heuristics`); a :class:`~serve_app.batching.Coalescer` turns the concurrent
calls of FeatureLookup and ModelInference into one call each.
Replica counts, concurrency and CPU shares come from ``serve_config.yaml``; the defaults here
only make ``serve.run`` of the builder work without it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from conflict_core.features import FeatureParams
from serve_app.batching import Coalescer
from serve_app.circuit import CircuitBreaker
from serve_app.feature_lookup import OnlineFeatureLookup
from serve_app.heuristics import FallbackReason, heuristic_probabilities
from serve_app.inference import CANARY, SHADOW, ChallengerInput, ModelUnavailable, Variants, split_answer
from serve_app.metrics import ServeMetrics
from serve_app.replica_logging import log_through_serve

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005
T = TypeVar("T")
# What FeatureLookup sends ModelInference per batch: the champion's matrix, with its rows' user
# ids (canary routing) and, while the challenger needs features of its own, those.
InferenceRequest = np.ndarray | tuple[np.ndarray, list[str]] | tuple[np.ndarray, list[str], ChallengerInput | None]


async def awaited(awaitable: Awaitable[T]) -> T:
    """``awaitable`` as a coroutine, which ``asyncio.wait_for`` takes (a ``DeploymentResponse`` is not one)."""
    return await awaitable


async def on_a_live_replica(call: Callable[[], Awaitable[T]], *, retries: int = 2) -> T:
    """``call()`` (a handle call), made again up to ``retries`` times while the replica that took
    it turns out dead or unreachable (``RayActorError``: killed, its node lost).

    Only for calls that are safe to repeat — the graph's feature, model and heuristics calls
    read and compute, they write nothing. Without it, a replica killed with calls in flight
    failed those calls although its peer was alive, and three such failures opened the
    caller's circuit: measured, 270 of 2,270 answers from the heuristics in the 15 s after a
    FeatureLookup replica's ``kill -9`` (RELIABILITY.md). The caller's own timeout still bounds
    every attempt together.
    """
    for attempt in range(retries + 1):
        try:
            return await call()
        except RayActorError as exc:
            if attempt == retries:
                raise
            log.info("replica lost with a call in flight (%s); calling again", type(exc).__name__)
    raise AssertionError("unreachable")


def _stacked(matrices: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(matrices) if len(matrices) > 1 else matrices[0]


def configure_batching(batches: Coalescer, user_config: Mapping[str, Any]) -> None:
    """Apply ``max_batch_size`` / ``batch_wait_timeout_s`` from ``user_config`` to a deployment's batches."""
    batches.configure(
        max_batch_size=int(user_config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
        wait_s=float(user_config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S)),
    )


@serve.deployment(
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.25},
)
class FeatureLookup:
    """Batched online features, then one ``ModelInference`` call for the whole batch.

    The window is loaded when the replica starts and tailed every ``refresh_interval_s`` by a
    background thread (:class:`serve_app.feature_lookup.OnlineFeatureLookup`), so a batch
    never queries the store. Scoring the batch here, rather than from the ingress per
    request, makes it one inference round trip per batch instead of one per request; the
    outcome still says which stage failed, so the ingress answers each failure with its own
    fallback reason (a lookup error or timeout raises; an inference problem comes back as
    ``unavailable``).
    """

    def __init__(
        self,
        database_url: str,
        refresh_interval_s: float = 0.5,
        max_staleness_s: float = 5.0,
        inference: DeploymentHandle | None = None,
        lookup_timeout_s: float = 2.0,
        inference_timeout_s: float = 1.0,
        window_margin_s: float = 0.0,
    ):
        log_through_serve()
        self.core = OnlineFeatureLookup(
            database_url,
            refresh_interval_s=refresh_interval_s,
            max_staleness_s=max_staleness_s,
            window_margin=dt.timedelta(seconds=window_margin_s),
        )
        self.inference = inference
        self.lookup_timeout_s = lookup_timeout_s
        self.inference_timeout_s = inference_timeout_s
        # While inference fails, batches get the stage's fallback reason at once (no timeout wait).
        self.inference_circuit = CircuitBreaker("ModelInference")
        self.metrics = ServeMetrics()
        self._tags = {"deployment": "FeatureLookup"}
        # A rollout challenger's feature parameters while they differ from the champion's (its
        # features are then computed beside the champion's, for ModelInference to score it on).
        self.challenger_params: FeatureParams | None = None
        self._batches = Coalescer(
            self._score,
            max_batch_size=DEFAULT_MAX_BATCH_SIZE,
            wait_s=DEFAULT_BATCH_WAIT_TIMEOUT_S,
            max_concurrent_batches=2,  # the next batch's features overlap this batch's inference
        )

    def __del__(self) -> None:
        core = getattr(self, "core", None)
        if core is not None:
            core.close()

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        configure_batching(self._batches, user_config)

    async def _features(self, requests: list[list[dict[str, Any]]]) -> tuple[list[np.ndarray], FeatureParams]:
        started = time.perf_counter()
        self.metrics.batch_size.observe(len(requests), tags=self._tags)
        self.metrics.batch_items.observe(sum(len(r) for r in requests), tags=self._tags)
        result = await asyncio.wait_for(
            asyncio.to_thread(self.core.compute_many_with_params, requests), self.lookup_timeout_s
        )
        self.metrics.lookup_latency.observe((time.perf_counter() - started) * 1000)
        return result

    async def score(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The items' ``{"features", "model_version", "probabilities", ...}`` or ``{"features", "unavailable"}``,
        computed and scored together with the calls that arrive beside this one.

        Raises when the features cannot be computed (the ingress answers ``feature_lookup_failed``).
        """
        answer: dict[str, Any] = await self._batches(items)
        return answer

    async def _score(self, requests: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """:meth:`score` for a batch of calls: one feature computation and one inference call."""
        matrices, used = await self._features(requests)
        # The user ids route a canary's rows (sticky per user); plain strings, cheap to send.
        users = [item["user_id"] for request in requests for item in request]
        challenger = await self._challenger_features(requests, used)
        outcome = await self._infer(_stacked(matrices), users, challenger)
        wanted = outcome.get("feature_params")
        wanted_by_challenger = outcome.get("challenger_feature_params")
        champion_params = None if wanted is None else FeatureParams(**wanted)
        challenger_params = None if wanted_by_challenger is None else FeatureParams(**wanted_by_challenger)
        rescore = False
        if champion_params is not None and champion_params != used:
            # The served model was trained with other windows (it was just published): from now
            # on compute with its parameters, and answer this batch with them too.
            await asyncio.to_thread(self.core.use_params, champion_params)
            matrices, used = await self._features(requests)
            rescore = True
        if challenger_params != self.challenger_params:
            # A challenger with parameters of its own arrived (or left): from now on compute its
            # features too, over a window reaching back as far as they need; and for this batch.
            self.challenger_params = challenger_params
            if challenger_params is not None:
                await asyncio.to_thread(self.core.cover, challenger_params)
                rescore = True
        if rescore:
            challenger = await self._challenger_features(requests, used)
            outcome = await self._infer(_stacked(matrices), users, challenger)
        if "probabilities" not in outcome:
            return [{"features": m, **outcome} for m in matrices]
        bounds = np.cumsum([0, *(len(m) for m in matrices)]).tolist()
        return [{"features": m, **part} for m, part in zip(matrices, split_answer(outcome, bounds), strict=True)]

    async def _challenger_features(
        self, requests: list[list[dict[str, Any]]], used: FeatureParams
    ) -> ChallengerInput | None:
        """The batch's features with the challenger's parameters, when they differ from ``used``."""
        params = self.challenger_params
        if params is None or params == used:
            return None
        matrices, _ = await asyncio.wait_for(
            asyncio.to_thread(self.core.compute_many_with_params, requests, params), self.lookup_timeout_s
        )
        return ChallengerInput(_stacked(matrices), params)

    async def _infer(
        self, matrix: np.ndarray, users: list[str], challenger: ChallengerInput | None = None
    ) -> dict[str, Any]:
        inference = self.inference
        if inference is None:
            return {"unavailable": FallbackReason.NO_ACTIVE_MODEL.value}
        circuit = self.inference_circuit
        if not circuit.allow():
            return {"unavailable": circuit.last_failure or FallbackReason.INFERENCE_FAILED.value}
        try:
            answer: dict[str, Any] = await asyncio.wait_for(
                on_a_live_replica(lambda: inference.predict.remote((matrix, users, challenger))),
                self.inference_timeout_s,
            )
        except TimeoutError:
            circuit.record_failure(FallbackReason.INFERENCE_TIMEOUT.value)
            return {"unavailable": FallbackReason.INFERENCE_TIMEOUT.value}
        except Exception as exc:
            circuit.record_failure(FallbackReason.INFERENCE_FAILED.value)
            log.warning("inference failed: %s: %s", type(exc).__name__, exc)
            return {"unavailable": FallbackReason.INFERENCE_FAILED.value}
        circuit.record_success()
        return answer


@serve.deployment(
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.25},
)
class ModelInference:
    """Batched ``predict_proba`` of the champion, and of a rollout's challenger; both from ``user_config``.

    ``user_config``: ``model_version``, ``artifact_path``, ``artifact_sha256`` of the champion
    (all null: the registry's active model in the store, if any, as of this deploy);
    ``challenger``: null, or the same three keys plus ``mode`` (``shadow``/``canary``) and
    ``percent``; ``max_batch_size``, ``batch_wait_timeout_s``. Re-deploying with a changed
    ``user_config`` calls :meth:`reconfigure` on the running replicas: new models are loaded
    next to the old ones and swapped in by one assignment each (see
    :class:`serve_app.inference.Variants`).
    """

    def __init__(self, database_url: str | None = None) -> None:
        from threadpoolctl import threadpool_limits

        log_through_serve()
        # One thread per replica: batches are small, and idle OpenMP/BLAS workers spin between
        # calls (measured: 9 ms of CPU per 3 ms predict_proba call with 2 threads on 2 cores).
        # Replicas scale out instead.
        threadpool_limits(limits=1)
        self.database_url = database_url
        self.variants = Variants()
        self.metrics = ServeMetrics()
        self.delay_s = 0.0
        self.revision: str | None = None
        self._reported_challenger: dict[str, str] | None = None
        self._batches = Coalescer(
            self._predict, max_batch_size=DEFAULT_MAX_BATCH_SIZE, wait_s=DEFAULT_BATCH_WAIT_TIMEOUT_S
        )

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        configure_batching(self._batches, user_config)
        # Fault injection for the timeout drill and its test; 0 in every real config.
        self.delay_s = float(user_config.get("fault_injection_delay_s", 0.0))
        # An optional label of the config revision, so operators can tell which one a replica runs.
        self.revision = user_config.get("revision")
        self.variants.configure(user_config, self.database_url)
        self._report_rollout()

    def _report_rollout(self) -> None:
        """The challenger gauge: its canary percent (0 in shadow); the previous one's series set to -1."""
        plan = self.variants.challenger
        if self._reported_challenger is not None:
            self.metrics.rollout_percent.set(-1, tags=self._reported_challenger)
            self._reported_challenger = None
        if plan is not None:
            tags = {"model_version": plan.model.version, "mode": plan.mode}
            self.metrics.rollout_percent.set(plan.percent if plan.mode == CANARY else 0.0, tags=tags)
            self._reported_challenger = tags

    async def predict(self, request: InferenceRequest) -> dict[str, Any]:
        """The model's answer for one caller's matrix, scored together with the calls beside it
        (see :meth:`_predict`)."""
        answer: dict[str, Any] = await self._batches(request)
        return answer

    async def _predict(self, requests: list[InferenceRequest]) -> list[dict[str, Any]]:
        """Per request (a matrix; or a matrix, its rows' user ids and, when the challenger needs
        features of its own, a :class:`~serve_app.inference.ChallengerInput`): the answer of
        :meth:`serve_app.inference.Variants.predict` for its rows — ``model_version``,
        ``probabilities``, the model's decision ``thresholds``, per item the ``factors`` that
        raise its risk most, its ``feature_params`` and the challenger's part — or
        ``{"unavailable": reason}``."""
        started = time.perf_counter()
        tags = {"deployment": "ModelInference"}
        matrices = [r[0] if isinstance(r, tuple) else r for r in requests]
        self.metrics.batch_size.observe(len(requests), tags=tags)
        self.metrics.batch_items.observe(sum(len(m) for m in matrices), tags=tags)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        users: list[str] | None = []
        for request in requests:
            if not isinstance(request, tuple) or users is None:
                users = None  # no user ids: a canary cannot route, the champion answers
            else:
                users.extend(request[1])
        try:
            answer = self.variants.predict(_stacked(matrices), users, _challenger_input(requests))
        except ModelUnavailable as exc:
            return [{"unavailable": exc.reason.value}] * len(requests)
        rollout = SHADOW if "shadow_probabilities" in answer else CANARY if "challenger_rows" in answer else "none"
        self.metrics.inference_latency.observe((time.perf_counter() - started) * 1000, tags={"rollout": rollout})
        bounds = np.cumsum([0, *(len(m) for m in matrices)]).tolist()
        return split_answer(answer, bounds)

    def status(self) -> dict[str, Any]:
        """The served models and, for in-place reload checks, this replica's process id."""
        return {**self.variants.status(), "pid": os.getpid(), "revision": self.revision}


def _challenger_input(requests: list[InferenceRequest]) -> ChallengerInput | None:
    """The batch's challenger features, when every request carries them with the same parameters."""
    parts = [r[2] if isinstance(r, tuple) and len(r) > 2 else None for r in requests]
    first = parts[0]
    if first is None or any(p is None or p.feature_params != first.feature_params for p in parts):
        return None
    return ChallengerInput(_stacked([p.matrix for p in parts if p is not None]), first.feature_params)


@serve.deployment(
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.1},
)
class FallbackHeuristics:
    """``heuristic_v1`` for whatever the model cannot answer."""

    def __init__(self) -> None:
        log_through_serve()

    def predict(self, rows: list[dict[str, float] | None]) -> list[float]:
        return heuristic_probabilities(rows)
