"""The serving path's two heaviest pure-Python parts, timed in one process (no Ray, no HTTP).

    .venv/bin/python bench/bench_online_parts.py

1. ``OnlineFeatureLookup.compute_many`` over the serving benchmark's store (20,000 events
   over 20 days, 300 users, 2,000 entities) for batches of 1, 2, 4 and 8 requests of 50
   items, and for single items: what one FeatureLookup batch costs.
2. Inserting 1,000-row batches of prediction records into ``prediction_log`` on SQLite while
   the table grows to 60,000 rows, with random (version-4) and time-ordered (version-7, what
   the ingress issues) prediction ids: CPU per record.
3. ``predict_proba`` of the benchmark's model on one row, 300 calls 2 ms apart (as requests
   arrive), with OpenMP's default thread count and with one thread (what ModelInference
   sets): CPU and wall time per call. Idle OpenMP workers spin between calls.
4. The ingress's bearer-token check (``serve_app.auth.TokenGate``): the first check of a
   token (a store lookup) and every later one within the cache period (a hash and a dict
   lookup), per request.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serve  # noqa: E402  (the serving benchmark's store and request bodies)

from conflict_core import db  # noqa: E402
from conflict_core.store import make_engine  # noqa: E402
from serve_app.feature_lookup import FEATURE_NAMES, OnlineFeatureLookup  # noqa: E402
from serve_app.prediction_log import insert_ignoring_duplicates  # noqa: E402
from serve_app.rendering import prediction_ids as _prediction_ids  # noqa: E402


def _lookup(work: Path) -> None:
    url = f"sqlite:///{work / 'store.db'}"
    bench_serve._seed_store(url)
    bench_serve._bodies(work / "bodies_50.jsonl", 50)
    bench_serve._bodies(work / "bodies_1.jsonl", 1)
    lookup = OnlineFeatureLookup(url, refresh_interval_s=0.5)
    try:
        for size, path in ((50, "bodies_50.jsonl"), (1, "bodies_1.jsonl")):
            bodies = [json.loads(line) for line in (work / path).read_text().splitlines()]
            requests = [[dict(item, at=None) for item in (b if isinstance(b, list) else [b])] for b in bodies]
            for per_batch in (1, 2, 4, 8) if size == 50 else (1, 8):
                lookup.compute_many(requests[:per_batch])  # warm
                started, batches = time.perf_counter(), 0
                for start in range(0, 200, per_batch):
                    lookup.compute_many(requests[start : start + per_batch])
                    batches += 1
                ms = (time.perf_counter() - started) / batches * 1000
                print(f"lookup  {per_batch} request(s) of {size:>2} items per batch: {ms:6.2f} ms", flush=True)
    finally:
        lookup.close()


def _records(ids: list[str], now: dt.datetime, features: str) -> list[dict[str, object]]:
    return [
        {
            "prediction_id": prediction_id,
            "model_type": "conflict_predictor",
            "model_version": "v_bench",
            "sync_id": None,
            "user_id": "user-12",
            "device_id": "d",
            "entity_type": "task",
            "entity_id": "task-1234",
            "predicted_conflict": False,
            "probability": 0.1,
            "risk_level": "low",
            "recommendation": "sync_now",
            "features": features,
            "fallback_reason": None,
            "created_at": now,
        }
        for prediction_id in ids
    ]


def _prediction_log(work: Path) -> None:
    features = json.dumps(dict.fromkeys(FEATURE_NAMES, 1.2345678), separators=(",", ":"))
    for label, make_ids in (
        ("random (v4)", lambda n: [uuid.uuid4().hex for _ in range(n)]),
        ("time-ordered (v7)", _prediction_ids),
    ):
        url = f"sqlite:///{work / f'log_{label[:6]}.db'}"
        db.upgrade(url)
        engine = make_engine(url)
        now = dt.datetime.now(dt.UTC)
        per_record = []
        for _ in range(60):  # 60 batches of 1,000: the table grows to 60,000 rows
            batch = _records(make_ids(1000), now, features)
            started = time.process_time()
            insert_ignoring_duplicates(engine, batch)
            per_record.append((time.process_time() - started) / 1000 * 1e6)
        engine.dispose()
        first, last = sum(per_record[:10]) / 10, sum(per_record[-10:]) / 10
        print(
            f"log     {label:<18} ids: {first:5.1f} us CPU per record in the first 10,000 rows, "
            f"{last:5.1f} in the last 10,000",
            flush=True,
        )


def _inference_threads(work: Path) -> None:
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    from serve_app.inference import load_model

    artifact, sha = bench_serve._artifact(work)
    model = load_model("v_bench", artifact, sha)
    row = np.zeros((1, len(FEATURE_NAMES)))
    default = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"), default=1)
    for threads in (default, 1):
        with threadpool_limits(limits=threads, user_api="openmp"):
            for _ in range(20):
                model.predict_proba(row)  # warm
            wall, cpu, pause = time.perf_counter(), time.process_time(), 0.0
            for _ in range(300):
                model.predict_proba(row)
                started = time.perf_counter()
                time.sleep(0.002)
                pause += time.perf_counter() - started
            wall_ms = (time.perf_counter() - wall - pause) / 300 * 1000
            cpu_ms = (time.process_time() - cpu) / 300 * 1000
        print(f"predict {threads} OpenMP thread(s): {cpu_ms:5.2f} ms CPU, {wall_ms:5.2f} ms wall per call", flush=True)


def _token_check(work: Path) -> None:
    import asyncio

    from conflict_core import tokens
    from conflict_core.store import make_session_factory
    from serve_app.auth import TokenGate, store_verifier

    url = f"sqlite:///{work / 'tokens.db'}"
    db.upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        token = tokens.create(session, name="bench", scopes=["predict"])[1]
    gate = TokenGate(store_verifier(sessions), ttl_s=3600)

    async def run(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            assert await gate.check(token, tokens.Scope.PREDICT) is None
        return (time.perf_counter() - started) / n

    first = asyncio.run(run(1))
    cached = asyncio.run(run(100_000))
    print(f"token   first check (store lookup) {first * 1e3:6.2f} ms; cached {cached * 1e6:5.2f} us per request")
    engine.dispose()


def main() -> None:
    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_parts_") as tmp:
        _lookup(Path(tmp))
        _prediction_log(Path(tmp))
        _inference_threads(Path(tmp))
        _token_check(Path(tmp))


if __name__ == "__main__":
    main()
