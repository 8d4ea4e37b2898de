"""Simulated devices against a running app: steady random traffic, or a replay of a recorded day.

Both talk HTTP to the app like real clients and return the same tallies: requests,
predictions, errors, latency percentiles and the fallback rate.
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx

from conflict_core.errors import ConflictPredictorError
from conflictctl.client_auth import bearer_headers


class TrafficError(ConflictPredictorError):
    """The simulated devices could not reach the app at all."""


def drive_traffic(
    base_url: str,
    *,
    seconds: float,
    users: list[str],
    entities: list[str],
    conflict_rate: float,
    seed: int = 0,
    token: str | None = None,
) -> dict[str, float]:
    """Simulated clients: predict a pending sync, push it, record its result; returns the tallies.

    ``token``: the bearer token they send (scopes ``predict`` and ``record``)."""
    rng = random.Random(seed)
    latencies: list[float] = []
    fallbacks = predictions = errors = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base_url.rstrip("/"), headers=bearer_headers(token), timeout=10) as client:
        while time.monotonic() < deadline:
            user = rng.choice(users)
            items = [
                {
                    "user_id": user,
                    "device_id": f"{user}-d1",
                    "entity_type": "task",
                    "entity_id": rng.choice(entities),
                    "changed_fields": rng.sample(["title", "status", "notes", "due"], 2),
                    "sync_id": uuid.uuid4().hex,
                }
                for _ in range(rng.choice([1, 1, 1, 5, 20]))
            ]
            started = time.perf_counter()
            response = client.post("/v1/predict", json=items)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                errors += 1
                continue
            for p in response.json()["predictions"]:
                predictions += 1
                fallbacks += "fallback_reason" in p
            now = dt.datetime.now(dt.UTC)
            events = [
                {
                    "event_id": i["sync_id"],
                    "user_id": i["user_id"],
                    "device_id": i["device_id"],
                    "entity_type": "task",
                    "entity_id": i["entity_id"],
                    "changed_fields": i["changed_fields"],
                    "synced_at": now.isoformat(),
                    "conflict": (c := rng.random() < conflict_rate),
                    "resolution_type": "manual_merge" if c else None,
                    "resolved_at": now.isoformat() if c else None,
                }
                for i in items
            ]
            if client.post("/v1/sync-events", json={"events": events}).status_code != 200:
                errors += 1
    if not latencies:
        raise TrafficError(f"no request to {base_url} completed")
    q = _percentiles(latencies)
    return {
        "requests": len(latencies),
        "predictions": predictions,
        "errors": errors,
        "p50_ms": q[49],
        "p95_ms": q[94],
        "p99_ms": q[98],
        "fallback_rate": fallbacks / max(predictions, 1),
    }


def independent_run(pushes: Sequence[Any], start: int, limit: int) -> int:
    """How many pushes from ``start`` on can be replayed at once without changing any feature.

    A push's features depend on earlier syncs of its user and of its entities; pushes that share
    neither can run concurrently, in any order. The run ends before the first push that shares a
    user or an entity with one already in it, or at ``limit``.
    """
    users: set[str] = set()
    entities: set[tuple[str, str]] = set()
    count = 0
    for push in pushes[start : start + limit]:
        push_users = set(push["user_id"])
        push_entities = set(zip(push["entity_type"], push["entity_id"], strict=True))
        if users & push_users or entities & push_entities:
            break
        users |= push_users
        entities |= push_entities
        count += 1
    return max(count, 1)


def _percentiles(latencies: list[float]) -> list[float]:
    """Percentiles 1..99 of the latencies (NaN when there are none)."""
    if len(latencies) > 1:
        return statistics.quantiles(latencies, n=100)
    return (latencies or [float("nan")]) * 99


def _iso(value: Any) -> str | None:
    return None if value is None or value != value else value.isoformat()


def replay_events(
    base_url: str,
    events: Any,
    *,
    until: dt.datetime | None = None,
    concurrency: int = 8,
    token: str | None = None,
    record_batch: int = 500,
) -> dict[str, float]:
    """Replay a simulated day through the app as devices would: predict each push, then record it.

    ``events`` is a table in the import format. Its rows are grouped into pushes (one device's
    syncs at one instant) and replayed in time order, up to ``concurrency`` pushes at a time
    when they share no user and no entity (:func:`independent_run`), so that each push's
    features are exactly what a strictly sequential replay would give: each
    push is predicted as of its own instant (``at``, so features see only what preceded it) with
    the event ids as sync ids, then recorded through ``/v1/sync-events`` with its real outcome.
    Pushes synced at ``until`` or later are recorded without a prediction, so the store ends
    up complete either way. What is predicted depends on the events and ``until`` alone,
    never on how fast the machine is: only the latencies differ between runs.
    Returns the tallies of :func:`drive_traffic`.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    frame = events.to_pandas() if hasattr(events, "to_pandas") else pd.DataFrame(events)
    frame = frame.sort_values(["synced_at", "event_id"], kind="stable")
    if until is not None:
        frame, rest = frame[frame["synced_at"] < until], frame[frame["synced_at"] >= until]
    else:
        rest = frame.iloc[0:0]
    pushes = [group for _, group in frame.groupby(["synced_at", "device_id"], sort=True)]
    latencies: list[float] = []
    tallies = {"predictions": 0, "fallbacks": 0, "conflicts": 0, "errors": 0}

    def records(push: pd.DataFrame) -> list[dict[str, Any]]:
        return [
            {
                "event_id": r.event_id,
                "user_id": r.user_id,
                "device_id": r.device_id,
                "entity_type": r.entity_type,
                "entity_id": r.entity_id,
                "changed_fields": list(r.changed_fields),
                "synced_at": _iso(r.synced_at),
                "conflict": bool(r.conflict),
                "resolution_type": r.resolution_type if r.conflict else None,
                "resolved_at": _iso(r.resolved_at) if r.conflict else None,
            }
            for r in push.itertuples(index=False)
        ]

    def one(client: httpx.Client, push: pd.DataFrame) -> tuple[float, int, int, int]:
        items = [
            {
                "user_id": r.user_id,
                "device_id": r.device_id,
                "entity_type": r.entity_type,
                "entity_id": r.entity_id,
                "changed_fields": list(r.changed_fields),
                "sync_id": r.event_id,
                "at": _iso(r.synced_at),
            }
            for r in push.itertuples(index=False)
        ]
        started = time.perf_counter()
        response = client.post("/v1/predict", json=items)
        latency = (time.perf_counter() - started) * 1000
        predictions = response.json()["predictions"] if response.status_code == 200 else []
        fallbacks = sum("fallback_reason" in p for p in predictions)
        # The device pushes whether or not it got a prediction: the sync is recorded either way.
        recorded = client.post("/v1/sync-events", json={"events": records(push)}).status_code == 200
        return latency, len(predictions), fallbacks, int(response.status_code != 200) + int(not recorded)

    replayed = 0
    with (
        httpx.Client(base_url=base_url.rstrip("/"), headers=bearer_headers(token), timeout=30) as client,
        ThreadPoolExecutor(max_workers=concurrency) as pool,
    ):
        while replayed < len(pushes):
            wave = pushes[replayed : replayed + independent_run(pushes, replayed, concurrency)]
            for latency, predicted, fallbacks, failed in pool.map(lambda p: one(client, p), wave):
                latencies.append(latency)
                tallies["predictions"] += predicted
                tallies["fallbacks"] += fallbacks
                tallies["errors"] += failed
            replayed += len(wave)
        for start in range(0, len(rest), record_batch):
            if (
                client.post(
                    "/v1/sync-events", json={"events": records(rest.iloc[start : start + record_batch])}
                ).status_code
                != 200
            ):
                tallies["errors"] += 1
    q = _percentiles(latencies)
    return {
        "requests": len(latencies),
        "pushes": len(pushes),
        "predictions": tallies["predictions"],
        "recorded_without_prediction": len(rest),
        "errors": tallies["errors"],
        "p50_ms": q[49],
        "p95_ms": q[94],
        "p99_ms": q[98],
        "fallback_rate": tallies["fallbacks"] / max(tallies["predictions"], 1),
    }
