"""The Serve deployments behind the ingress: FeatureLookup, ModelInference, FallbackHeuristics.

Each wraps a plain-Python core (:mod:`serve_app.feature_lookup`, :mod:`serve_app.inference`,
:mod:`serve_app.heuristics`); ``@serve.batch`` turns many concurrent requests into one call.
Replica counts, concurrency and CPU shares come from ``serve_config.yaml``; the defaults here
only make ``serve.run`` of the builder work without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from ray import serve

from serve_app.feature_lookup import OnlineFeatureLookup
from serve_app.heuristics import heuristic_probabilities
from serve_app.inference import ModelHolder, ModelUnavailable
from serve_app.metrics import ServeMetrics

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005


@serve.deployment(
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.25},
)
class FeatureLookup:
    """Batched online feature computation over an in-memory window of the store's history.

    The window is loaded when the replica starts and tailed every ``refresh_interval_s`` by a
    background thread (:class:`serve_app.feature_lookup.OnlineFeatureLookup`), so a batch
    never queries the store.
    """

    def __init__(self, database_url: str, refresh_interval_s: float = 0.5, max_staleness_s: float = 5.0):
        self.core = OnlineFeatureLookup(
            database_url, refresh_interval_s=refresh_interval_s, max_staleness_s=max_staleness_s
        )
        self.metrics = ServeMetrics()

    def __del__(self) -> None:
        core = getattr(self, "core", None)
        if core is not None:
            core.close()

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        self.lookup.set_max_batch_size(int(user_config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)))
        self.lookup.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S)))

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def lookup(self, requests: list[list[dict[str, Any]]]) -> list[np.ndarray]:
        started = time.perf_counter()
        tags = {"deployment": "FeatureLookup"}
        self.metrics.batch_size.observe(len(requests), tags=tags)
        self.metrics.batch_items.observe(sum(len(r) for r in requests), tags=tags)
        result = await asyncio.to_thread(self.core.compute_many, requests)
        self.metrics.lookup_latency.observe((time.perf_counter() - started) * 1000)
        return result


@serve.deployment(
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.25},
)
class ModelInference:
    """Batched ``predict_proba`` of the active model; the model comes from ``user_config``.

    ``user_config``: ``model_version``, ``artifact_path``, ``artifact_sha256`` (all null: no
    model), ``max_batch_size``, ``batch_wait_timeout_s``. Re-deploying with a changed
    ``user_config`` calls :meth:`reconfigure` on the running replicas: the new model is
    loaded next to the old one and swapped in by one assignment.
    """

    def __init__(self) -> None:
        self.holder = ModelHolder()
        self.metrics = ServeMetrics()
        self.delay_s = 0.0
        self.revision: str | None = None

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        self.predict.set_max_batch_size(int(user_config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)))
        self.predict.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S)))
        # Fault injection for the timeout drill and its test; 0 in every real config.
        self.delay_s = float(user_config.get("fault_injection_delay_s", 0.0))
        # An optional label of the config revision, so operators can tell which one a replica runs.
        self.revision = user_config.get("revision")
        self.holder.configure(
            user_config.get("model_version"), user_config.get("artifact_path"), user_config.get("artifact_sha256")
        )

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def predict(self, matrices: list[np.ndarray]) -> list[dict[str, Any]]:
        """Per request: ``{"model_version", "probabilities"}`` or ``{"unavailable": reason}``."""
        started = time.perf_counter()
        tags = {"deployment": "ModelInference"}
        self.metrics.batch_size.observe(len(matrices), tags=tags)
        self.metrics.batch_items.observe(sum(len(m) for m in matrices), tags=tags)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        try:
            version, probabilities = self.holder.predict(np.concatenate(matrices))
        except ModelUnavailable as exc:
            return [{"unavailable": exc.reason.value}] * len(matrices)
        self.metrics.inference_latency.observe((time.perf_counter() - started) * 1000)
        bounds = np.cumsum([0, *(len(m) for m in matrices)])
        return [
            {"model_version": version, "probabilities": probabilities[bounds[i] : bounds[i + 1]]}
            for i in range(len(matrices))
        ]

    def status(self) -> dict[str, Any]:
        """The served model and, for in-place reload checks, this replica's process id."""
        return {**self.holder.status(), "pid": os.getpid(), "revision": self.revision}


@serve.deployment(
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.1},
)
class FallbackHeuristics:
    """``heuristic_v1`` for whatever the model cannot answer."""

    def predict(self, rows: list[dict[str, float] | None]) -> list[float]:
        return heuristic_probabilities(rows)
