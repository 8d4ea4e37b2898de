"""Access control of the ingress, without Ray: every route × (no token, unknown, wrong scope,
revoked, right scope), on the real Ingress class behind Starlette's TestClient."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from conflict_core import tokens
from conflict_core.features import ALL_FEATURES
from conflict_core.store import make_engine, make_session_factory, session_scope
from serve_app.app import AppArgs
from serve_app.auth import ROUTE_SCOPES, TokenGate
from tests.conftest import grant

ITEM = {"user_id": "u1", "device_id": "d1", "entity_type": "task", "entity_id": "t1", "changed_fields": ["title"]}
EVENT = {
    "event_id": "e1",
    "user_id": "u1",
    "device_id": "d1",
    "entity_type": "task",
    "entity_id": "t1",
    "changed_fields": ["title"],
    "synced_at": "2026-06-01T00:00:00Z",
    "conflict": False,
}
ROUTES: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/predict", ITEM, "predict"),
    ("POST", "/v1/sync-events", {"events": [EVENT]}, "record"),
    ("GET", "/v1/models", None, "read"),
    ("GET", "/v1/prediction-log/status", None, "read"),
]


class _Remote:
    def __init__(self, answer: Any):
        self.answer = answer

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            return self.answer(*args) if callable(self.answer) else self.answer

        return call()


class _Lookup:
    score = _Remote(
        lambda flat: {
            "features": np.zeros((len(flat), len(ALL_FEATURES))),
            "probabilities": np.full(len(flat), 0.1),
            "model_version": "v_test",
        }
    )


class _Inference:
    status = _Remote({"loaded": True, "model_version": "v_test"})


class _Fallback:
    predict = _Remote(lambda rows: [0.05] * len(rows))


def _ingress(database_url: str, spool: Path, **overrides: Any) -> Any:
    from serve_app.ingress import Ingress

    options = dataclasses.replace(AppArgs(database_url=database_url, log_spool_dir=str(spool)).resolved(), **overrides)
    cls = cast(Any, Ingress).func_or_class  # the plain class under @serve.deployment
    return cls(_Lookup(), _Inference(), _Fallback(), options)


def _client(ingress: Any) -> TestClient:
    async def endpoint(request: Request) -> Response:
        response: Response = await ingress(request)
        return response

    paths = ["/v1/predict", "/v1/sync-events", "/v1/models", "/v1/prediction-log/status", "/healthz", "/readyz"]
    return TestClient(Starlette(routes=[Route(p, endpoint, methods=["GET", "POST"]) for p in paths]))


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Any, str]]:
    ingress = _ingress(database_url, tmp_path / "spool")
    with _client(ingress) as client:
        yield client, ingress, database_url
        assert client.portal is not None
        client.portal.call(ingress.writer.close)


def _call(client: TestClient, method: str, path: str, body: Any, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(method, path, json=body, headers=headers)


def test_every_route_table_entry_is_tested() -> None:
    assert {(m, p) for m, p, _, _ in ROUTES} == set(ROUTE_SCOPES)


@pytest.mark.parametrize(("method", "path", "body", "scope"), ROUTES)
def test_each_route_refuses_and_admits_by_scope(
    app: tuple[TestClient, Any, str], method: str, path: str, body: Any, scope: str
) -> None:
    client, ingress, url = app
    right = grant(url, scope, name="right")
    wrong = grant(url, *[s for s in ("predict", "record", "read", "admin") if s != scope], name="wrong")
    revoked = grant(url, scope, name="gone")
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        tokens.revoke(session, "gone")
    engine.dispose()

    none = _call(client, method, path, body, None)
    assert none.status_code == 401 and none.json()["error"] == "unauthorized"
    assert "no bearer token" in none.json()["problem"] and scope in none.json()["problem"]
    assert none.headers["www-authenticate"].startswith("Bearer")

    unknown = _call(client, method, path, body, "cp_" + "x" * 43)
    assert unknown.status_code == 401 and "not one this service issued" in unknown.json()["problem"]

    forbidden = _call(client, method, path, body, wrong)
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    assert f"lacks the {scope} scope" in forbidden.json()["problem"]

    gone = _call(client, method, path, body, revoked)
    assert gone.status_code == 401 and "'gone' was revoked" in gone.json()["problem"]

    assert ingress.writer.depth == 0, "a refused request was logged as a prediction"
    ok = _call(client, method, path, body, right)
    assert ok.status_code == 200, ok.text
    if path == "/v1/predict":
        assert ok.json()["model_version"] == "v_test"
        assert ingress.writer.depth + ingress.writer.written == 1


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_and_readiness_stay_open(app: tuple[TestClient, Any, str], path: str) -> None:
    client, _, _ = app
    assert client.get(path).status_code == 200


def test_revocation_takes_effect_once_the_cache_period_ends(sqlite_url: str) -> None:
    from conflict_core import db

    db.upgrade(sqlite_url)
    token = grant(sqlite_url, "predict", name="soon-gone")
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    calls: list[str] = []

    def verify(value: str) -> tokens.TokenInfo | None:
        calls.append(value)
        with session_scope(sessions) as session:
            return tokens.verify(session, value)

    now = [0.0]
    gate = TokenGate(verify, ttl_s=5.0, clock=lambda: now[0])

    async def check() -> int | None:
        refused = await gate.check(token, tokens.Scope.PREDICT)
        return None if refused is None else refused.status_code

    assert asyncio.run(check()) is None
    for _ in range(100):
        assert asyncio.run(check()) is None
    assert len(calls) == 1, "a cached token was verified against the store again"
    with session_scope(sessions) as session:
        tokens.revoke(session, "soon-gone")
    now[0] = 4.9
    assert asyncio.run(check()) is None  # still trusted inside the cache period
    now[0] = 5.1
    assert asyncio.run(check()) == 401
    engine.dispose()


def test_a_token_in_use_is_verified_again_in_the_background_before_its_cache_period_ends() -> None:
    known = tokens.TokenInfo(id=1, name="device", scopes=frozenset({"predict"}), revoked=False)
    revoked = dataclasses.replace(known, revoked=True)
    answers = [known]
    calls: list[float] = []

    def verify(value: str) -> tokens.TokenInfo | None:
        calls.append(now[0])
        time.sleep(0.05)  # a store round trip
        return answers[0]

    now = [0.0]
    gate = TokenGate(verify, ttl_s=5.0, clock=lambda: now[0])

    async def scenario() -> list[int | None]:
        statuses = []

        async def check() -> None:
            started = time.perf_counter()
            refused = await gate.check("cp_device", tokens.Scope.PREDICT)
            statuses.append(None if refused is None else refused.status_code)
            waited.append(time.perf_counter() - started)

        await check()  # first sight: waits for the store
        answers[0] = revoked
        now[0] = 3.9
        await check()  # before the last fifth of the period: the cache alone
        now[0] = 4.2
        await asyncio.gather(*(check() for _ in range(5)))  # the last fifth: cached answers, one query beside them
        await asyncio.sleep(0.2)  # that query finishes
        await check()  # still inside the first period, but the store's newer answer counts
        return statuses

    waited: list[float] = []
    statuses = asyncio.run(scenario())
    assert statuses == [None] * 7 + [401]
    assert calls == [0.0, 4.2], "one query at first sight, one refresh ahead of expiry"
    assert max(waited[1:7]) < 0.04, "a request waited for the background verification"


def test_requests_waiting_for_the_same_token_share_one_store_query() -> None:
    known = tokens.TokenInfo(id=1, name="device", scopes=frozenset({"predict"}), revoked=False)
    calls: list[str] = []

    def verify(value: str) -> tokens.TokenInfo | None:
        calls.append(value)
        time.sleep(0.05)
        return known if value == "cp_device" else None

    gate = TokenGate(verify, ttl_s=5.0)

    async def scenario() -> list[int | None]:
        refusals = await asyncio.gather(
            *(gate.check(t, tokens.Scope.PREDICT) for t in ["cp_device"] * 20 + ["cp_unknown"] * 5)
        )
        return [None if r is None else r.status_code for r in refusals]

    assert asyncio.run(scenario()) == [None] * 20 + [401] * 5
    assert sorted(calls) == ["cp_device", "cp_unknown"]


def test_a_store_outage_keeps_known_tokens_good_for_a_while_and_refuses_others_with_a_503() -> None:
    store_up = [True]
    known = tokens.TokenInfo(id=1, name="device", scopes=frozenset({"predict"}), revoked=False)

    def verify(value: str) -> tokens.TokenInfo | None:
        if not store_up[0]:
            raise OSError("connection refused")
        return known if value == "cp_known" else None

    now = [0.0]
    gate = TokenGate(verify, ttl_s=5.0, stale_if_error_s=60.0, clock=lambda: now[0])

    def status(token: str) -> int:
        refused = asyncio.run(gate.check(token, tokens.Scope.PREDICT))
        return 200 if refused is None else refused.status_code

    assert status("cp_known") == 200
    store_up[0] = False
    now[0] = 30.0
    assert status("cp_known") == 200  # vouched for 30 s ago: still good through the outage
    assert status("cp_never_seen") == 503  # not a 500, and not a guess
    now[0] = 61.0
    assert status("cp_known") == 503  # the outage outlived what the gate may assume


def test_switching_access_control_off_opens_routes_and_warns(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from conflict_core import db

    db.upgrade(sqlite_url)
    with caplog.at_level(logging.WARNING, logger="serve_app.auth"):
        ingress = _ingress(sqlite_url, tmp_path / "spool", access_control_enabled=False)
    assert any("access control is OFF" in r.getMessage() for r in caplog.records)
    with _client(ingress) as client:
        assert client.get("/v1/models").status_code == 200


def test_access_control_is_on_by_default(sqlite_url: str) -> None:
    assert AppArgs(database_url=sqlite_url).resolved().access_control_enabled is True
