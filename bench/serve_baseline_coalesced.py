"""The baseline a competent user would write instead of Ray Serve: one uvicorn process that
coalesces concurrent requests into one feature lookup and one compiled-model call per batch.

``python bench/serve_baseline_coalesced.py --database-url URL --artifact PATH --sha256 HEX --port 8101``

Per request it does the graph's work: the same parsing and validation (``serve_app.schemas``),
the same event window and feature code (``OnlineFeatureLookup.compute_many`` over the batch),
the same model (compiled to numpy, :mod:`training.compiled`), the ingress's own response and
prediction-log record code (``Ingress._respond``, ``serve_app.rendering``) and the same prediction-log
writer into the same store. Batching as the graph's ingress: up to ``--max-batch`` requests
or ``--wait-ms`` after the first, at most ``--max-concurrent`` batches computing at once (in
worker threads, so the event loop keeps accepting requests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conflict_core.store import utcnow
from serve_app.feature_lookup import OnlineFeatureLookup
from serve_app.inference import LoadedModel, load_model
from serve_app.ingress import Ingress
from serve_app.prediction_log import PredictionLogWriter
from serve_app.rendering import features_json, render_predictions
from serve_app.schemas import NUL_ESCAPE, RequestError, parse_json, parse_predict_body

Batch = list[list[dict[str, Any]]]


class Coalescer:
    """Concurrent calls of :meth:`submit` answered by one ``work(batch)`` per batch."""

    def __init__(self, work: Callable[[Batch], list[Any]], max_batch: int, wait_s: float, max_concurrent: int):
        self.work, self.max_batch, self.wait_s = work, max_batch, wait_s
        self._pending: list[tuple[list[dict[str, Any]], asyncio.Future[Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(max_concurrent)

    async def submit(self, request: list[dict[str, Any]]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[list[dict[str, Any]], asyncio.Future[Any]]]) -> None:
        async with self._slots:
            try:
                answers = await asyncio.to_thread(self.work, [request for request, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    future.set_exception(exc)
                return
        for (_, future), answer in zip(batch, answers, strict=True):
            future.set_result(answer)


class _NoMetric:
    def inc(self, *args: object, **kwargs: object) -> None:
        pass


def make_app(database_url: str, artifact: str, sha256: str, *, max_batch: int, wait_ms: float, max_concurrent: int):  # type: ignore[no-untyped-def]
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # as ModelInference
    lookup = OnlineFeatureLookup(database_url, refresh_interval_s=0.5)
    model: LoadedModel = load_model("v_baseline", artifact, sha256)
    if model.compiled is None:
        raise SystemExit(f"the model at {artifact} did not compile; this baseline serves the compiled form")
    writer = PredictionLogWriter(database_url, Path(tempfile.mkdtemp(prefix="baseline_spool_")))
    # The ingress's own response and log-record code, on a stand-in replica without Ray metrics.
    replica = types.SimpleNamespace(
        medium=0.2,
        high=0.5,
        metrics=types.SimpleNamespace(predictions=_NoMetric(), fallbacks=_NoMetric()),
        writer=writer,
    )
    respond = Ingress.func_or_class._respond  # type: ignore[attr-defined]

    def score(requests: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        matrices = lookup.compute_many(requests)
        probabilities = model.predict_proba(np.concatenate(matrices))
        bounds = np.cumsum([0, *(len(m) for m in matrices)])
        return [(m, probabilities[bounds[k] : bounds[k + 1]]) for k, m in enumerate(matrices)]

    coalescer = Coalescer(score, max_batch, wait_ms / 1000, max_concurrent)

    async def predict(request: Request) -> Response:
        body = await request.body()
        try:
            items, single = parse_predict_body(
                parse_json(body, max_bytes=2_000_000), max_items=500, may_hold_nul=NUL_ESCAPE in body
            )
        except RequestError as exc:
            return JSONResponse(exc.to_body(), status_code=exc.status)
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
        matrix, probabilities = await coalescer.submit(targets)
        features = features_json(matrix.tolist())
        cuts = model.thresholds  # the model's own cost-aware cut points, as the graph applies them
        medium, high = (cuts.fetch_first, cuts.warn_user) if cuts is not None else (replica.medium, replica.high)
        responses = respond(replica, items, features, probabilities, model.version, None, now, medium, high)
        return Response(render_predictions(responses, features, single), media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        yield
        await writer.close()
        lookup.close()

    return Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])], lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--wait-ms", type=float, default=2.0)
    parser.add_argument("--max-concurrent", type=int, default=2)
    a = parser.parse_args()
    app = make_app(
        a.database_url, a.artifact, a.sha256, max_batch=a.max_batch, wait_ms=a.wait_ms, max_concurrent=a.max_concurrent
    )
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")
