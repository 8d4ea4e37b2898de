"""The ingress in-process, without Ray: its real class behind a plain ASGI adapter, with
stand-ins for the handles it calls (the real online feature lookup over a migrated store, the
real heuristics), so Starlette's TestClient, uvicorn or Schemathesis can drive it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
from starlette.requests import Request
from starlette.testclient import TestClient

from conflict_core import db, tokens
from conflict_core.store import make_engine, make_session_factory, session_scope
from serve_app.app import AppArgs
from serve_app.feature_lookup import OnlineFeatureLookup
from serve_app.heuristics import FallbackReason, heuristic_probabilities
from serve_app.ingress import Ingress


class Method:
    """A handle method: ``.remote(...)`` returns an awaitable, as a ``DeploymentResponse`` does."""

    def __init__(self, function: Callable[..., Any]):
        self.function = function
        self.calls = 0

    def remote(self, *args: Any) -> Any:
        self.calls += 1

        async def call() -> Any:
            result = self.function(*args)
            return await result if asyncio.iscoroutine(result) else result

        return call()


class LookupStandIn:
    """FeatureLookup's ``score`` over the real :class:`OnlineFeatureLookup`; no model is active,
    so the heuristics answer. Exceptions the lookup raises are kept for the tests to assert on."""

    def __init__(self, database_url: str):
        self.core = OnlineFeatureLookup(database_url, refresh_interval_s=0)
        self.errors: list[BaseException] = []
        self.score = Method(self._score)
        self.fail: BaseException | None = None

    def _score(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        try:
            matrix: np.ndarray = self.core.compute(items)
        except Exception as exc:
            self.errors.append(exc)
            raise
        return {"features": matrix, "unavailable": FallbackReason.NO_ACTIVE_MODEL.value}


class InferenceStandIn:
    def __init__(self) -> None:
        self.status = Method(lambda: {"loaded": False, "model_version": None, "unavailable_reason": "no_active_model"})


class FallbackStandIn:
    def __init__(self) -> None:
        self.predict = Method(heuristic_probabilities)


class IngressApp:
    """ASGI: one ``Request`` per HTTP scope, answered by :meth:`Ingress.__call__` (as Serve does).

    Access control stays on: a request without an ``Authorization`` header gets the bearer
    token :func:`build_ingress` granted (every scope), as a client of the real app would send.
    """

    def __init__(self, ingress: Any):
        self.ingress = ingress
        self.authorization = f"Bearer {getattr(ingress, 'harness_token', '')}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = list(scope.get("headers") or [])
        if not any(name.lower() == b"authorization" for name, _ in headers):
            scope = {**scope, "headers": [*headers, (b"authorization", self.authorization)]}
        response = await self.ingress(Request(scope, receive))
        await response(scope, receive, send)


def build_ingress(tmp_path: Path, **args: Any) -> tuple[Any, LookupStandIn, FallbackStandIn]:
    """The ingress over a new store in ``tmp_path``."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    options = AppArgs(database_url=url, log_spool_dir=str(tmp_path / "spool"), **args).resolved()
    lookup, fallback = LookupStandIn(url), FallbackStandIn()
    ingress_class: Any = cast(Any, Ingress).func_or_class  # the plain class under @serve.deployment
    ingress = ingress_class(lookup=lookup, inference=InferenceStandIn(), fallback=fallback, options=options)
    with session_scope(make_session_factory(make_engine(url))) as session:
        _, ingress.harness_token = tokens.create(session, name="harness", scopes=[s.value for s in tokens.Scope])
    return ingress, lookup, fallback


@contextmanager
def ingress_client(tmp_path: Path, **args: Any) -> Iterator[tuple[TestClient, Any, LookupStandIn]]:
    ingress, lookup, _ = build_ingress(tmp_path, **args)
    try:
        with TestClient(cast(Any, IngressApp(ingress)), raise_server_exceptions=True) as client:
            yield client, ingress, lookup
            assert client.portal is not None
            client.portal.call(ingress.writer.close)
    finally:
        lookup.core.close()
