"""The HTTP ingress: parses requests (Starlette), calls the graph, answers, logs predictions.

Routes: ``POST /v1/predict``, ``POST /v1/sync-events`` (stored by :mod:`serve_app.ingest`),
``GET /v1/models``, ``GET /v1/prediction-log/status``, ``GET /healthz``, ``GET /readyz``,
``GET /openapi.json`` (:mod:`serve_app.openapi`); every route but the last three needs a
scoped bearer token (:mod:`serve_app.auth`). A client mistake gets a 4xx JSON body naming the
field; a failing dependency (store, model) degrades to the heuristics or a 503, never to a
500; a failing stage is skipped at once while its circuit is open (:mod:`serve_app.circuit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route, Router

from conflict_core.store import json_safe, make_engine, make_session_factory, session_scope, utcnow
from serve_app.app import ServingOptions
from serve_app.auth import TokenGate, store_verifier
from serve_app.batching import Coalescer
from serve_app.circuit import CircuitBreaker
from serve_app.deployments import awaited, on_a_live_replica
from serve_app.heuristics import (
    HEURISTIC_VERSION,
    FallbackReason,
    RiskLevel,
    heuristic_probabilities,
    recommendation_for,
    risk_level,
)
from serve_app.inference import CHALLENGER, CHAMPION, split_answer
from serve_app.ingest import ingest_sync_events
from serve_app.metrics import ServeMetrics
from serve_app.openapi import openapi_document
from serve_app.prediction_log import PredictionLogWriter, spooled_records
from serve_app.rendering import (
    feature_rows,
    features_json,
    iso_utc,
    item_reasons,
    prediction_ids,
    render_predictions,
)
from serve_app.replica_logging import log_through_serve
from serve_app.request_guard import BODY_READ_TIMEOUT_S, read_body
from serve_app.schemas import (
    NUL_ESCAPE,
    PredictItem,
    RequestError,
    error_response,
    parse_json,
    parse_predict_body,
)

log = logging.getLogger(__name__)
HEURISTIC_VARIANT = "heuristic"  # the predictions metric's variant label when the heuristics answered


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
class Ingress:
    def __init__(
        self,
        lookup: DeploymentHandle,
        inference: DeploymentHandle,
        fallback: DeploymentHandle,
        options: ServingOptions,
    ):
        log_through_serve()
        self.lookup, self.inference, self.fallback = lookup, inference, fallback
        self.options = options
        self.max_items = options.max_items_per_request
        self.max_bytes = options.max_request_bytes
        self.medium = options.risk_medium_threshold
        self.high = options.risk_high_threshold
        self.lookup_timeout_s = options.lookup_timeout_s
        self.inference_timeout_s = options.inference_timeout_s
        # FeatureLookup enforces both limits itself; this one only covers a lost or stuck call.
        self.score_timeout_s = self.lookup_timeout_s + self.inference_timeout_s + 1.0
        self.body_timeout_s = BODY_READ_TIMEOUT_S
        # While a stage fails, answer from the heuristics at once instead of waiting out its timeout.
        self.lookup_circuit = CircuitBreaker("FeatureLookup")
        self.heuristics_circuit = CircuitBreaker("FallbackHeuristics")
        # Concurrent requests' items as one FeatureLookup call; requests that arrive while
        # ingress_max_concurrent_batches calls are in flight (one, as shipped) join the next call.
        self._batches = Coalescer(
            self._score,
            max_batch_size=options.ingress_max_batch_size,
            wait_s=options.ingress_batch_wait_timeout_s,
            max_concurrent_batches=options.ingress_max_concurrent_batches,
            policy=options.ingress_batch_wait_policy,
        )
        self.engine = make_engine(options.database_url)
        self.sessions = make_session_factory(self.engine)
        self.metrics = ServeMetrics()
        self.gate = TokenGate(
            store_verifier(self.sessions), enabled=options.access_control_enabled, ttl_s=options.token_cache_ttl_s
        )
        self.writer = PredictionLogWriter(
            options.database_url,
            Path(options.log_spool_dir),
            batch_size=options.log_batch_size,
            flush_interval_s=options.log_flush_interval_s,
            max_buffer=options.log_max_buffer,
            spill_after_s=options.log_spill_after_s,
            on_depth=self._report_log_depth,
        )
        # Serve calls the constructor on the replica's event loop: start the writer now, so what
        # an earlier replica spilled is replayed even before the first prediction.
        with contextlib.suppress(RuntimeError):  # no running loop (constructed outside a replica)
            self.writer.start()
        self._live_task: asyncio.Task[None] | None = None
        with contextlib.suppress(RuntimeError):
            self._live_task = asyncio.get_running_loop().create_task(self._report_live_metrics())
        self.router = Router(
            [
                Route("/v1/predict", self.predict_route, methods=["POST"]),
                Route("/v1/sync-events", self.sync_events_route, methods=["POST"]),
                Route("/v1/models", self.models_route, methods=["GET"]),
                Route("/v1/prediction-log/status", self.log_status_route, methods=["GET"]),
                Route("/healthz", self.healthz_route, methods=["GET"]),
                Route("/readyz", self.readyz_route, methods=["GET"]),
                Route("/openapi.json", self.openapi_route, methods=["GET"]),
            ]
        )

    def _route(self, request: Request) -> Route | Response:
        """The route for ``request`` by Starlette's own matching, or the 404/405 JSON answer.

        The loop stands in for ``Router.__call__`` because this deployment answers Serve's
        ``__call__(request) -> Response`` contract; the Router is an ASGI app that sends its
        own response. Dispatching through it means making the deployment an ASGI ingress
        (``@serve.ingress()`` with ``__serve_build_asgi_app__``, the writer closed by the
        app's lifespan instead of :meth:`__del__`). In-process (``bench/bench_ingress_routing.py``,
        CPU time per request, median of 9 x 5,000 calls on a shared 2-core machine): 14.6 us
        here vs 11.8 us through a Router for ``GET /healthz``, 17.9 vs 12.3 us for a 404 — a
        few microseconds against the milliseconds of a prediction — while the end-to-end cost
        of Serve's ASGI ingress path is not measured yet, so the Serve contract stays.
        """
        path = request.url.path.rstrip("/") or "/"
        scope = {**request.scope, "path": path}
        allowed: list[str] = []
        for route in self.router.routes:
            assert isinstance(route, Route)
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route
            if match is Match.PARTIAL:
                allowed += sorted(route.methods or ())
        if allowed:
            return error_response(405, "method_not_allowed", f"{path} accepts {', '.join(allowed)}")
        return error_response(404, "not_found", f"no route {path}")

    async def __call__(self, request: Request) -> Response:
        route = self._route(request)
        if isinstance(route, Response):
            return route
        if (refused := await self.gate.refuse(request, route.path)) is not None:
            return refused
        try:
            return await route.endpoint(request)
        except RequestError as exc:
            return JSONResponse(exc.to_body(), status_code=exc.status)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(503, "unavailable", "the service could not answer; retry later")

    async def _report_live_metrics(self) -> None:
        """Every ``live_metrics_interval_s``: the variants' live quality from the store, as gauges."""
        from serve_app.live_gauges import live_metric_samples

        def read() -> list[tuple[dict[str, str], float]]:
            with self.sessions() as session:
                return live_metric_samples(session)

        while True:
            try:
                for tags, value in await asyncio.to_thread(read):
                    self.metrics.live_metric.set(value, tags=tags)
            except Exception as exc:  # a store hiccup must not end the loop
                log.warning("live metrics not refreshed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.options.live_metrics_interval_s)

    def _report_log_depth(self, in_memory: int, on_disk: int) -> None:
        self.metrics.log_buffer_depth.set(in_memory, tags={"where": "memory"})
        self.metrics.log_buffer_depth.set(on_disk, tags={"where": "disk"})
        self.metrics.log_dropped.set(self.writer.dropped)

    async def _read_body(self, request: Request) -> bytes:
        return await read_body(request, max_bytes=self.max_bytes, timeout_s=self.body_timeout_s)

    # ------------------------------------------------------------------------- predict

    async def predict_route(self, request: Request) -> Response:
        body = await self._read_body(request)
        payload = parse_json(body, max_bytes=self.max_bytes)
        items, single = parse_predict_body(payload, max_items=self.max_items, may_hold_nul=NUL_ESCAPE in body)
        return await self.predict(items, single)

    async def predict(self, items: list[PredictItem], single: bool = False) -> Response:
        now = utcnow()
        targets = [
            {
                "user_id": i.user_id,
                "entity_type": i.entity_type,
                "entity_id": i.entity_id,
                "changed_fields": i.changed_fields,
                "at": i.at or now,
            }
            for i in items
        ]
        scored = await self._batches(targets)
        matrix: np.ndarray | None = scored.get("features")
        probabilities: np.ndarray | list[float] | None = scored.get("probabilities")
        model_version: str = scored.get("model_version") or HEURISTIC_VERSION
        unavailable = scored.get("unavailable")
        reason = None if unavailable is None else FallbackReason(unavailable)
        if matrix is not None and not np.isfinite(matrix).all():
            log.error("feature lookup returned non-finite features; answering with the heuristics")
            matrix, probabilities, reason = None, None, FallbackReason.FEATURE_LOOKUP_FAILED
        elif probabilities is not None and not np.isfinite(probabilities).all():
            log.error("model %s returned non-finite probabilities; answering with the heuristics", model_version)
            probabilities, reason = None, FallbackReason.INFERENCE_FAILED
        values = matrix.tolist() if matrix is not None else None
        if probabilities is None:
            model_version = HEURISTIC_VERSION
            probabilities = await self._heuristics(feature_rows(values, len(items)))
        # The features' JSON text serves both the response and the log record.
        features = ["{}"] * len(items) if values is None else features_json(values)
        rollout = None if reason is not None or "challenger_version" not in scored else scored
        # A model's own cost-aware cut points apply to its probabilities; the heuristics keep the bands.
        cuts = scored.get("thresholds") if model_version != HEURISTIC_VERSION else None
        medium, high = cuts if cuts is not None else (self.medium, self.high)
        responses = self._respond(items, features, probabilities, model_version, reason, now, medium, high, rollout)
        factors = scored.get("factors") if model_version != HEURISTIC_VERSION else None
        explained = item_reasons(items, values, factors, scored.get("feature_params"))
        return Response(render_predictions(responses, features, single, explained), media_type="application/json")

    async def _score(self, requests: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Concurrent requests' items as one FeatureLookup call (features and model scores).

        Per request: ``features`` (or none when the lookup failed), and ``model_version`` with
        ``probabilities`` or the ``unavailable`` reason.
        """
        flat = requests[0] if len(requests) == 1 else [item for request in requests for item in request]
        failed = [{"unavailable": FallbackReason.FEATURE_LOOKUP_FAILED.value}] * len(requests)
        if not self.lookup_circuit.allow():
            return failed
        try:
            answer = await asyncio.wait_for(
                on_a_live_replica(lambda: self.lookup.score.remote(flat)), self.score_timeout_s
            )
        except Exception as exc:
            self.lookup_circuit.record_failure(FallbackReason.FEATURE_LOOKUP_FAILED.value)
            log.warning("feature lookup failed: %s: %s", type(exc).__name__, exc)
            return failed
        self.lookup_circuit.record_success()
        if len(requests) == 1:
            return [answer]
        features = answer["features"]
        bounds = np.cumsum([0, *(len(r) for r in requests)]).tolist()
        parts = split_answer(answer, bounds)
        for part, start, end in zip(parts, bounds[:-1], bounds[1:], strict=True):
            part["features"] = features[start:end]
        return parts

    async def _heuristics(self, rows: list[dict[str, float] | None]) -> list[float]:
        if not self.heuristics_circuit.allow():
            return heuristic_probabilities(rows)
        try:
            result: list[float] = await asyncio.wait_for(
                on_a_live_replica(lambda: self.fallback.predict.remote(rows)), 2.0
            )
        except Exception as exc:  # the heuristics are plain Python: answer here rather than fail
            self.heuristics_circuit.record_failure()
            log.warning("FallbackHeuristics unreachable (%s); computing heuristics in the ingress", exc)
            return heuristic_probabilities(rows)
        self.heuristics_circuit.record_success()
        return result

    def _respond(
        self,
        items: list[PredictItem],
        features: list[str],
        probabilities: Any,
        model_version: str,
        reason: FallbackReason | None,
        now: dt.datetime,
        medium: float,
        high: float,
        rollout: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Response bodies and log records; ``rollout`` is the challenger's part of the answer, if any
        (``challenger_version`` with ``challenger_rows`` in canary or ``shadow_probabilities`` in shadow)."""
        predicted_at = iso_utc(now)
        responses, records = [], []
        levels: dict[tuple[str, str | None], int] = {}
        reason_value = None if reason is None else reason.value
        # Enum lookups and uuid.UUID objects cost more than the rest of this loop; per level once.
        labels: dict[RiskLevel, tuple[str, str]] = {}
        ids = prediction_ids(len(items))
        champion_variant = None if reason is not None else CHAMPION
        challenger_version = None if rollout is None else rollout["challenger_version"]
        shadow = None if rollout is None or "shadow_probabilities" not in rollout else rollout["shadow_probabilities"]
        canary = None if rollout is None or "challenger_rows" not in rollout else rollout["challenger_rows"].tolist()
        shadow_values = None if shadow is None else shadow.tolist()
        for index, (item, item_features, probability, prediction_id) in enumerate(
            zip(items, features, probabilities, ids, strict=True)
        ):
            version, variant = model_version, champion_variant
            if canary is not None and canary[index]:
                version, variant = challenger_version or model_version, CHALLENGER
            probability = float(probability)
            level = risk_level(probability, medium_threshold=medium, high_threshold=high)
            label = labels.get(level)
            if label is None:
                label = labels[level] = (level.value, recommendation_for(level).value)
            level_value, recommendation_value = label
            body: dict[str, Any] = {  # features_used is added by the caller, which has them as text
                "prediction_id": prediction_id,
                "probability": round(probability, 6),
                "risk_level": level_value,
                "recommendation": recommendation_value,
                "model_version": version,
                "predicted_at": predicted_at,
            }
            if item.sync_id is not None:
                body["sync_id"] = item.sync_id
            if reason_value is not None:
                body["fallback_reason"] = reason_value
            responses.append(body)
            records.append(
                {
                    "prediction_id": prediction_id,
                    "model_type": "conflict_predictor",
                    "model_version": version,
                    "sync_id": item.sync_id,
                    "user_id": item.user_id,
                    "device_id": item.device_id,
                    "entity_type": item.entity_type,
                    "entity_id": item.entity_id,
                    "predicted_conflict": probability >= high,
                    "probability": probability,
                    "risk_level": level_value,
                    "recommendation": recommendation_value,
                    "features": item_features,
                    "fallback_reason": reason_value,
                    "variant": variant,
                    "challenger_version": challenger_version if shadow_values is not None else None,
                    "challenger_probability": None if shadow_values is None else shadow_values[index],
                    "created_at": now,
                }
            )
            key = (level_value, variant)
            levels[key] = levels.get(key, 0) + 1
        for (level_value, variant), count in levels.items():  # one metric update per level, not per item
            tags = {
                "model_version": challenger_version if variant == CHALLENGER and challenger_version else model_version,
                "risk_level": level_value,
                "variant": variant or HEURISTIC_VARIANT,
            }
            self.metrics.predictions.inc(count, tags=tags)
        if shadow_values is not None and challenger_version:
            self.metrics.shadow_predictions.inc(len(items), tags={"model_version": challenger_version})
        if reason is not None:
            self.metrics.fallbacks.inc(len(items), tags={"reason": reason.value})
        self.writer.submit(records)
        return responses

    # ------------------------------------------------------------------------- sync events

    async def sync_events_route(self, request: Request) -> Response:
        payload = parse_json(await self._read_body(request), max_bytes=self.max_bytes)
        return await ingest_sync_events(payload, self.sessions, max_events=self.options.max_events_per_request)

    # ------------------------------------------------------------------------- status

    async def _inference_status(self) -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = await asyncio.wait_for(awaited(self.inference.status.remote()), 2.0)
            return status
        except Exception:
            return None

    async def _store_reachable(self) -> bool:
        def ping() -> None:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(asyncio.to_thread(ping), 3.0)
            return True
        except Exception:
            return False

    async def models_route(self, request: Request) -> Response:
        status = await self._inference_status()
        body: dict[str, Any] = {"serving": status, "heuristic_version": HEURISTIC_VERSION, "registry": None}

        def registry_rows() -> list[dict[str, Any]]:
            from conflict_core import registry

            with session_scope(self.sessions) as session:
                return [
                    {
                        "version": r.version,
                        "algorithm": r.algorithm,
                        "status": r.status,
                        "is_active": r.is_active,
                        "created_at": iso_utc(r.created_at),
                        "metrics": json_safe(r.metrics),
                    }
                    for r in registry.list_versions(session)
                ]

        try:
            body["registry"] = await asyncio.wait_for(asyncio.to_thread(registry_rows), 3.0)
        except Exception as exc:
            body["registry_error"] = f"registry unavailable: {type(exc).__name__}"
        return Response(json.dumps(body, default=str, allow_nan=False), media_type="application/json")

    async def openapi_route(self, request: Request) -> Response:
        limits = {
            "max_items_per_request": self.max_items,
            "max_events_per_request": self.options.max_events_per_request,
        }
        return JSONResponse(openapi_document(**limits))

    async def healthz_route(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz_route(self, request: Request) -> Response:
        status = await self._inference_status()
        model_loaded = bool(status and status.get("loaded"))
        store = await self._store_reachable()
        ready = model_loaded and store
        body = {
            "ready": ready,
            "model_loaded": model_loaded,
            "store_reachable": store,
            "model_version": status.get("model_version") if status else None,
            "unavailable_reason": status.get("unavailable_reason") if status else "inference_unreachable",
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def log_status_route(self, request: Request) -> Response:
        w = self.writer
        spool = w.spool_files()
        return JSONResponse(
            {
                "buffered": w.depth,
                "written": w.written,
                "spilled": w.spilled,
                "spool_files": len(spool),
                "spooled": spooled_records(spool),
                "rejected": w.rejected,
                "spill_failures": w.spill_failures,
                "dropped": w.dropped,
                "rejected_files": len(w.rejected_files()),
                "store_available": w.store_available,
                "last_error": w.last_error,
            }
        )

    def __del__(self) -> Coroutine[Any, Any, None] | None:
        """Serve's graceful-shutdown hook: Serve calls it on the replica's event loop and awaits
        the returned close, which writes or spools what the log still buffers. The interpreter's
        own finaliser calls it too, later or outside any loop; then there is nothing to await."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        writer: PredictionLogWriter | None = getattr(self, "writer", None)  # None if __init__ failed
        return None if writer is None or writer.closed else writer.close()
