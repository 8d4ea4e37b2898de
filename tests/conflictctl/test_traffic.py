"""Simulated devices: the replay of a recorded day against an app that answers like the graph."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conflictctl.traffic import replay_events


class _FakeApp:
    """Answers /v1/predict like the graph and records every call, in arrival order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/predict", self.predict, methods=["POST"]),
                Route("/v1/sync-events", self.events, methods=["POST"]),
            ]
        )

    async def predict(self, request: Request) -> JSONResponse:
        items = await request.json()
        self.calls.append(("predict", items))
        if any(i["entity_id"] == "e-unavailable" for i in items):
            return JSONResponse({"error": "unavailable"}, status_code=503)
        return JSONResponse(
            {
                "predictions": [
                    {
                        "probability": 0.1,
                        **({"fallback_reason": "no_active_model"} if i["entity_id"] == "e-fallback" else {}),
                    }
                    for i in items
                ]
            }
        )

    async def events(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.calls.append(("events", body["events"]))
        time.sleep(0.01)
        return JSONResponse({"inserted": len(body["events"])})


@pytest.fixture
def fake_app() -> Iterator[tuple[str, _FakeApp]]:
    fake = _FakeApp()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", fake
    server.should_exit = True
    thread.join(timeout=5)


def _live_day(n_pushes: int) -> pd.DataFrame:
    start = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
    rows = []
    for p in range(n_pushes):
        for k in range(1 + p % 3):  # pushes of 1, 2 and 3 items
            conflict = p % 4 == 0 and k == 0
            rows.append(
                {
                    "event_id": f"ev-{p}-{k}",
                    "user_id": f"u{p % 5}",
                    "device_id": f"d{p % 5}",
                    "entity_type": "task",
                    "entity_id": "e-fallback" if p == 1 else f"e{p}-{k}",
                    "changed_fields": ["title", "status"][: k + 1],
                    "synced_at": start + dt.timedelta(minutes=p),
                    "conflict": conflict,
                    "resolution_type": "manual_merge" if conflict else None,
                    "resolved_at": start + dt.timedelta(minutes=p, seconds=30) if conflict else pd.NaT,
                }
            )
    return pd.DataFrame(rows)


def test_replay_predicts_each_push_as_of_its_instant_then_records_it(fake_app: tuple[str, _FakeApp]) -> None:
    url, fake = fake_app
    day = _live_day(12)
    report = replay_events(url, day, concurrency=1)

    assert report["pushes"] == report["requests"] == 12
    assert report["predictions"] == len(day) and report["errors"] == 0
    assert report["recorded_without_prediction"] == 0
    assert report["fallback_rate"] == pytest.approx(2 / len(day))  # the push of two items on e-fallback
    kinds = [kind for kind, _ in fake.calls]
    assert kinds == ["predict", "events"] * 12  # each push: predicted first, then recorded
    first_predict, first_events = fake.calls[0][1], fake.calls[1][1]
    assert [i["sync_id"] for i in first_predict] == [e["event_id"] for e in first_events] == ["ev-0-0"]
    assert first_predict[0]["at"] == "2026-03-02T09:00:00+00:00"
    assert first_events[0]["conflict"] is True and first_events[0]["resolution_type"] == "manual_merge"
    recorded = [e for kind, body in fake.calls if kind == "events" for e in body]
    assert sorted(e["event_id"] for e in recorded) == sorted(day["event_id"])
    assert all(e["resolved_at"] is None for e in recorded if not e["conflict"])


def test_a_push_whose_prediction_failed_is_still_recorded(fake_app: tuple[str, _FakeApp]) -> None:
    url, fake = fake_app
    day = _live_day(6)
    day.loc[day["event_id"].str.startswith("ev-3-"), "entity_id"] = "e-unavailable"
    report = replay_events(url, day, concurrency=1)
    assert report["errors"] == 1 and report["predictions"] == len(day) - 1  # push 3 has one item
    recorded = [e["event_id"] for kind, body in fake.calls if kind == "events" for e in body]
    assert sorted(recorded) == sorted(day["event_id"])  # the device synced anyway


def test_replay_predicts_exactly_the_stated_part_and_records_the_rest(fake_app: tuple[str, _FakeApp]) -> None:
    url, fake = fake_app
    day = _live_day(40)
    until = dt.datetime(2026, 3, 2, 9, 25, tzinfo=dt.UTC)  # the first 25 pushes, one a minute
    report = replay_events(url, day, until=until, concurrency=2, record_batch=7)

    covered = day[day["synced_at"] < until]
    assert report["requests"] == report["pushes"] == 25  # however fast the machine is
    assert report["predictions"] == len(covered)
    predicted = [i["sync_id"] for kind, body in fake.calls if kind == "predict" for i in body]
    assert sorted(predicted) == sorted(covered["event_id"])
    recorded = [e["event_id"] for kind, body in fake.calls if kind == "events" for e in body]
    assert sorted(recorded) == sorted(day["event_id"])  # nothing lost, nothing twice
    assert report["recorded_without_prediction"] == len(day) - len(covered)


def test_concurrent_replay_never_groups_pushes_that_share_a_user_or_an_entity() -> None:
    from conflictctl.traffic import independent_run

    def push(user: str, *entities: str) -> pd.DataFrame:
        return pd.DataFrame(
            {"user_id": [user] * len(entities), "entity_type": ["task"] * len(entities), "entity_id": list(entities)}
        )

    pushes = [push("u1", "a"), push("u2", "b", "c"), push("u3", "d"), push("u1", "e"), push("u4", "f")]
    assert independent_run(pushes, 0, limit=8) == 3  # the second push of u1 waits for the first
    assert independent_run(pushes, 3, limit=8) == 2
    assert independent_run(pushes, 0, limit=2) == 2
    shared_entity = [push("u1", "a"), push("u2", "b", "a")]
    assert independent_run(shared_entity, 0, limit=8) == 1  # u2 must see u1's sync of "a"
    assert independent_run(shared_entity, 1, limit=8) == 1
