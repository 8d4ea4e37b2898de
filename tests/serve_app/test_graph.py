"""The real graph on a local Ray instance: predictions, every fallback, bad input, hot model
switch under load, and prediction logging through a store outage.

One Ray instance and one PostgreSQL database serve the whole module (Serve start-up is the
slow part); each test re-deploys only what it changes.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sqlalchemy import func, select

from conflict_core import db
from conflict_core.features import ALL_FEATURES
from conflict_core.registry import sha256_file
from conflict_core.store import PredictionLog, make_engine
from ray_control.serve_deploy import deploy_config
from tests.conftest import grant

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

BASE = "http://127.0.0.1:8000"
TOKEN = "cp_graph-tests-every-scope-0123456789abcdefghijklmn"  # granted in this module's own store
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
ITEM = {"user_id": "u1", "device_id": "d1", "entity_type": "task", "entity_id": "t1", "changed_fields": ["title"]}


def _artifact(
    directory: Path,
    version: str,
    *,
    columns: list[str] | None = None,
    fit_columns: int | None = None,
    raw: Any = None,
    nan: bool = False,
) -> dict[str, Any]:
    """A tiny model artifact and its user_config; ``fit_columns`` fits on fewer columns than it claims,
    ``nan`` makes it answer NaN."""
    path = directory / f"{version}.joblib"
    if raw is not None:
        joblib.dump(raw, path)
    else:
        columns = columns or list(ALL_FEATURES)
        rng = np.random.default_rng(0)
        x = rng.random((200, fit_columns or len(columns)))
        y = (x[:, 0] + rng.random(200) * 0.5 > 0.8).astype(int)
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
        if nan:
            model[-1].coef_[:] = np.nan
        joblib.dump({"estimator": model, "feature_columns": columns, "version": version}, path)
    return {
        "model_version": version,
        "artifact_path": str(path),
        "artifact_sha256": sha256_file(path),
        "max_batch_size": 64,
        "batch_wait_timeout_s": 0.003,
    }


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    import psycopg

    admin_url = os.environ.get("CONFLICT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"cp_serve_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    db.upgrade(url)
    try:
        yield url
    finally:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


REPO = Path(__file__).resolve().parents[2]


class Graph:
    """The app deployed from ``serve_config.yaml`` through the dashboard, as ``serve deploy`` does."""

    def __init__(self, url: str, spool: Path, models: Path):
        import yaml

        self.config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
        self.config["applications"][0]["args"].update(
            database_url=url,
            log_spool_dir=str(spool),
            lookup_timeout_s=3.0,
            inference_timeout_s=1.0,
            max_request_bytes=100_000,
            max_items_per_request=100,
            log_flush_interval_s=0.1,
            feature_refresh_interval_s=0.0,
        )
        # A fixed count of ModelInference replicas: autoscaling a third one up and an old one
        # down would look like a restart, and in-place reconfiguration is what these tests check.
        for deployment in self.config["applications"][0]["deployments"]:
            if deployment["name"] == "ModelInference":
                deployment["autoscaling_config"].update(min_replicas=2, max_replicas=2)
        self.models = models
        self.v1 = _artifact(models, "v_test_1")

    def deploy(self, user_config: dict[str, Any], timeout_s: float = 90) -> None:
        from ray import serve

        revision = uuid.uuid4().hex
        for deployment in self.config["applications"][0]["deployments"]:
            if deployment["name"] == "ModelInference":
                deployment["user_config"] = {**user_config, "revision": revision}
        deploy_config(self.config)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            app = serve.status().applications.get("conflict_predictor")
            if app is not None and app.status == "RUNNING":
                handle = serve.get_deployment_handle("ModelInference", app_name="conflict_predictor")
                # Every replica (the shipped layout runs two), not just the one that answers first.
                if all(handle.status.remote().result()["revision"] == revision for _ in range(20)):
                    return
            time.sleep(0.3)
        raise AssertionError(f"config revision {revision} not running after {timeout_s}s")


@pytest.fixture(scope="module")
def graph(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graph]:
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        g = Graph(pg_url, tmp_path_factory.mktemp("spool"), tmp_path_factory.mktemp("models"))
        g.deploy(g.v1, timeout_s=120)
        yield g
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(graph: Graph, pg_url: str) -> Iterator[httpx.Client]:
    grant(pg_url, name="graph tests", token=TOKEN)
    with httpx.Client(base_url=BASE, headers=HEADERS, timeout=30) as c:
        yield c


def _events(n: int, start: dt.datetime) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"ev-{i}",
            "user_id": f"u{i % 3}",
            "device_id": "d",
            "entity_type": "task",
            "entity_id": "t1",
            "changed_fields": ["title", "status"][: 1 + i % 2],
            "synced_at": (start + dt.timedelta(seconds=30 * i)).isoformat(),
            "conflict": i % 4 == 0,
            "resolution_type": "manual" if i % 4 == 0 else None,
            "resolved_at": (start + dt.timedelta(seconds=30 * i + 5)).isoformat() if i % 4 == 0 else None,
        }
        for i in range(n)
    ]


def test_sync_events_are_idempotent_and_validated(client: httpx.Client) -> None:
    events = _events(8, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6))
    first = client.post("/v1/sync-events", json={"events": events})
    assert first.status_code == 200, first.text
    assert first.json()["inserted"] == 8
    again = client.post("/v1/sync-events", json=events)
    assert again.json() == {"received": 8, "inserted": 0, "skipped_existing": 8}
    bad = client.post("/v1/sync-events", json=[dict(events[0], event_id="new", synced_at="not a time")])
    assert bad.status_code == 422 and bad.json()["field"] == "events[0].synced_at"
    # What the store could not keep is the client's mistake too, named as such.
    for change, field in [
        ({"synced_at": "0001-01-01T00:30:00+01:00"}, "events[0].synced_at"),
        ({"user_id": "u\x00"}, "events[0].user_id"),
        ({"entity_id": "\ud800"}, "events[0].entity_id"),
    ]:
        refused = client.post(
            "/v1/sync-events",
            content=json.dumps([dict(events[0], event_id="new", **change)]),
            headers={"content-type": "application/json"},
        )
        assert refused.status_code == 422 and refused.json()["field"] == field, refused.text


def test_single_and_batch_predictions(client: httpx.Client) -> None:
    single = client.post("/v1/predict", json=dict(ITEM, sync_id="s-1"))
    assert single.status_code == 200, single.text
    body = single.json()
    assert body["model_version"] == "v_test_1" and "fallback_reason" not in body
    assert 0 <= body["probability"] <= 1 and body["risk_level"] in {"low", "medium", "high"}
    assert body["recommendation"] in {"sync_now", "fetch_first", "warn_user"}
    assert set(body["features_used"]) == set(ALL_FEATURES)
    assert body["features_used"]["entity_edit_frequency"] > 0  # history from the imported events
    assert body["predicted_at"].endswith("Z") and body["sync_id"] == "s-1"
    batch = client.post("/v1/predict", json=[dict(ITEM, user_id=f"u{i}", entity_id=f"t{i}") for i in range(20)])
    assert batch.status_code == 200
    predictions = batch.json()["predictions"]
    assert len(predictions) == 20 and len({p["prediction_id"] for p in predictions}) == 20
    assert all(p["model_version"] == "v_test_1" for p in predictions)
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/v1/models").json()["serving"]["model_version"] == "v_test_1"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({**ITEM, "changed_fields": "title"}, 422, "changed_fields"),
        ([ITEM, {**ITEM, "user_id": None}], 422, "[1].user_id"),
        ({**ITEM, "at": "2025-01-01T00:00:00"}, 422, "at"),
        ([ITEM] * 101, 413, "body"),
        ({**ITEM, "at": "0001-01-10T00:00:00Z"}, 422, "at"),
        ({**ITEM, "at": "9999-12-31T23:59:59-01:00"}, 422, "at"),
        ({"items": [ITEM, {**ITEM, "device_id": "d\x00"}]}, 422, "items[1].device_id"),
    ],
)
def test_bad_inputs_get_4xx_naming_the_field(client: httpx.Client, body: Any, status: int, field: str) -> None:
    response = client.post("/v1/predict", json=body)
    assert response.status_code == status and response.json()["field"] == field


def test_malformed_oversized_and_unknown(client: httpx.Client) -> None:
    assert client.post("/v1/predict", content=b"{oops").status_code == 400
    nested = client.post("/v1/predict", content=b"[" * 50_000)
    assert nested.status_code == 400 and "nested" in nested.json()["problem"]
    huge = client.post("/v1/predict", content=b"[" + b" " * 200_000 + b"]")
    assert huge.status_code == 413 and huge.json()["field"] == "body"
    assert client.get("/v1/nope").status_code == 404
    assert client.get("/v1/predict").status_code == 405


def _fallback_reason(client: httpx.Client) -> tuple[str | None, str]:
    body = client.post("/v1/predict", json=ITEM).json()
    return body.get("fallback_reason"), body["model_version"]


def test_each_model_fallback_reason(graph: Graph, client: httpx.Client) -> None:
    cases = [
        ({"model_version": None, "artifact_path": None, "artifact_sha256": None}, "no_active_model"),
        ({**graph.v1, "model_version": "v_bad_sha", "artifact_sha256": "0" * 64}, "artifact_verification_failed"),
        (_artifact(graph.models, "v_not_a_model", raw=["not", "a", "model"]), "artifact_load_failed"),
        (_artifact(graph.models, "v_wrong_shape", fit_columns=3), "inference_failed"),
        (_artifact(graph.models, "v_nan", nan=True), "inference_failed"),
        ({**graph.v1, "fault_injection_delay_s": 1.5}, "inference_timeout"),
    ]
    try:
        for user_config, reason in cases:
            graph.deploy(user_config)
            assert _fallback_reason(client) == (reason, "heuristic_v1"), reason
        assert client.get("/readyz").status_code == 200  # the timeout case has a model loaded
        graph.deploy(cases[0][0])
        assert client.get("/readyz").status_code == 503
    finally:
        graph.deploy(graph.v1)
    assert _fallback_reason(client) == (None, "v_test_1")


def test_hot_model_switch_under_load_in_place(graph: Graph, client: httpx.Client) -> None:
    from ray import serve

    handle = serve.get_deployment_handle("ModelInference", app_name="conflict_predictor")
    pids_before = {handle.status.remote().result()["pid"] for _ in range(30)}  # every replica's
    v2 = _artifact(graph.models, "v_test_2", columns=list(ALL_FEATURES)[::-1])
    stop = threading.Event()
    outcomes: list[tuple[int, str]] = []

    def fire() -> None:
        with httpx.Client(base_url=BASE, headers=HEADERS, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/predict", json=[ITEM, dict(ITEM, user_id="u2")])
                versions = (
                    {p["model_version"] + ":" + str(p.get("fallback_reason")) for p in r.json()["predictions"]}
                    if r.status_code == 200
                    else {"?"}
                )
                outcomes.append((r.status_code, ",".join(sorted(versions))))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(fire) for _ in range(4)]
        time.sleep(1.5)
        graph.deploy(v2)
        time.sleep(1.5)
        stop.set()
        for f in futures:
            f.result()
    statuses = {status for status, _ in outcomes}
    versions = [v for _, v in outcomes]
    assert statuses == {200}, statuses
    # Never a fallback, never two versions within one request.
    assert set(versions) <= {"v_test_1:None", "v_test_2:None"}, set(versions)
    assert versions[0] == "v_test_1:None" and versions[-1] == "v_test_2:None"
    after = [handle.status.remote().result() for _ in range(60)]
    assert {a["model_version"] for a in after} == {"v_test_2"}
    # Reconfigured, not restarted: every process answering now was serving before.
    pids_after = {a["pid"] for a in after}
    assert pids_after and pids_after <= pids_before, (pids_before, pids_after)
    graph.deploy(graph.v1)


def test_logging_survives_a_store_outage_without_loss(graph: Graph, client: httpx.Client, pg_url: str) -> None:
    import psycopg

    name = pg_url.rsplit("/", 1)[1]
    admin = psycopg.connect(
        os.environ.get("CONFLICT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"), autocommit=True
    )
    ids: list[str] = []
    reasons: list[str | None] = []

    def burst(n: int) -> None:
        for i in range(n):
            r = client.post("/v1/predict", json=[dict(ITEM, user_id=f"out{i}", sync_id=f"sync-{uuid.uuid4().hex}")] * 3)
            assert r.status_code == 200, r.text
            for p in r.json()["predictions"]:
                ids.append(p["prediction_id"])
                reasons.append(p.get("fallback_reason"))

    try:
        burst(20)
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        burst(40)  # the store is gone: features fail, the heuristics answer, logging buffers
        assert "feature_lookup_failed" in reasons
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # a sustained outage moves the buffer to disk
            status = client.get("/v1/prediction-log/status").json()
            if status["buffered"] == 0 and status["spool_files"] > 0:
                break
            time.sleep(0.2)
        assert not status["store_available"] and status["spilled"] > 0 and status["spool_files"] > 0, status
    finally:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.close()
    engine = make_engine(pg_url)

    def stored_of(expected: int) -> int:
        deadline, stored = time.monotonic() + 30, 0
        while time.monotonic() < deadline:
            with engine.connect() as c:
                stored = c.scalar(
                    select(func.count()).select_from(PredictionLog).where(PredictionLog.prediction_id.in_(ids))
                )
            if stored == expected:
                break
            time.sleep(0.5)
        return int(stored or 0)

    try:
        assert stored_of(180) == len(ids) == 180  # replayed from disk with no new traffic
        assert client.get("/v1/prediction-log/status").json()["spool_files"] == 0
        burst(10)
        assert stored_of(210) == len(ids) == 210
        with engine.connect() as c:
            synced = c.scalar(
                select(func.count()).select_from(PredictionLog).where(PredictionLog.sync_id.like("sync-%"))
            )
        assert synced == 210
    finally:
        engine.dispose()


def test_a_models_own_thresholds_decide_the_recommendation(graph: Graph, client: httpx.Client) -> None:
    # Cut points that put every probability in the middle band: fetch_first from 0, warn_user at 1.
    cuts = _artifact(graph.models, "v_test_cuts")
    path = Path(cuts["artifact_path"])
    artifact = joblib.load(path)
    artifact["decision_thresholds"] = {"fetch_first": 0.0, "warn_user": 1.0, "source": "costs"}
    joblib.dump(artifact, path)
    cuts["artifact_sha256"] = sha256_file(path)
    graph.deploy(cuts)
    try:
        predictions = client.post("/v1/predict", json=[dict(ITEM, entity_id=f"t{i}") for i in range(10)]).json()
        assert {(p["model_version"], p["risk_level"], p["recommendation"]) for p in predictions["predictions"]} == {
            ("v_test_cuts", "medium", "fetch_first")
        }
    finally:
        graph.deploy(graph.v1)
