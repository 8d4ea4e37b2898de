"""Rollout on the real graph (local Ray, PostgreSQL): steady load through shadow → canary →
promote → abort without a failed request, sticky canary users, the variants in the prediction
log, and every metric the Grafana dashboard queries exported on the metrics endpoint.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conflict_core import registry, rollout
from conflict_core.features import ALL_FEATURES
from conflict_core.store import ModelVersion, PredictionLog, make_engine, make_session_factory
from serve_app.inference import canary_bucket
from tests.conftest import grant
from tests.serve_app.test_graph import (  # noqa: F401 (pg_url is a fixture)
    BASE,
    HEADERS,
    ITEM,
    REPO,
    TOKEN,
    Graph,
    _artifact,
    _events,
    pg_url,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

DASHBOARD = REPO / "configs" / "grafana" / "conflict-predictor-dashboard.json"
MODEL_KEYS = ("model_version", "artifact_path", "artifact_sha256")


@pytest.fixture(scope="module")
def graph(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graph]:  # noqa: F811
    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        g = Graph(pg_url, tmp_path_factory.mktemp("spool"), tmp_path_factory.mktemp("models"))
        g.config["applications"][0]["args"]["live_metrics_interval_s"] = 1.0
        g.deploy(g.v1, timeout_s=120)
        grant(pg_url, name="rollout graph tests", token=TOKEN)
        # Some history first, so that the lookups compute features from real rows.
        events = _events(8, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6))
        assert httpx.post(f"{BASE}/v1/sync-events", json=events, headers=HEADERS, timeout=30).status_code == 200
        yield g
    finally:
        serve.shutdown()
        ray.shutdown()


def model(artifact: dict[str, Any]) -> dict[str, Any]:
    return {k: artifact[k] for k in MODEL_KEYS}


def with_challenger(champion: dict[str, Any], challenger: dict[str, Any] | None, **how: Any) -> dict[str, Any]:
    return {**champion, "challenger": None if challenger is None else {**model(challenger), **how}}


def predict(client: httpx.Client, users: list[str]) -> httpx.Response:
    return client.post("/v1/predict", json=[dict(ITEM, user_id=u, entity_id=f"t-{u}") for u in users])


def test_steady_load_through_shadow_canary_promote_and_abort_fails_no_request(graph: Graph, pg_url: str) -> None:  # noqa: F811
    v2 = _artifact(graph.models, "v_roll_2", columns=list(ALL_FEATURES)[::-1])
    v3 = _artifact(graph.models, "v_roll_3")
    stop = threading.Event()
    outcomes: list[tuple[int, frozenset[str]]] = []

    def fire(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=BASE, headers=HEADERS, timeout=30) as c:
            while not stop.is_set():
                r = predict(c, [f"user-{rng.randrange(300)}" for _ in range(3)])
                answers = r.json()["predictions"] if r.status_code == 200 else []
                bad = {p["fallback_reason"] for p in answers if "fallback_reason" in p}
                outcomes.append((r.status_code, frozenset({p["model_version"] for p in answers} | bad)))

    steps = [
        ("shadow", with_challenger(graph.v1, v2, mode="shadow")),
        ("canary", with_challenger(graph.v1, v2, mode="canary", percent=50)),
        ("promote", with_challenger({**graph.v1, **model(v2)}, None)),
        ("canary v3", with_challenger({**graph.v1, **model(v2)}, v3, mode="canary", percent=30)),
        ("abort", with_challenger({**graph.v1, **model(v2)}, None)),
    ]
    from ray import serve

    handle = serve.get_deployment_handle("ModelInference", app_name="conflict_predictor")
    # The layout runs several ModelInference replicas; the router may answer from any of them.
    pids_before = {handle.status.remote().result()["pid"] for _ in range(20)}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(fire, seed) for seed in range(3)]
        time.sleep(1.0)
        for _, user_config in steps:
            graph.deploy(user_config)
            time.sleep(1.0)
        stop.set()
        for f in futures:
            f.result()
    elapsed = time.monotonic() - started
    statuses = [status for status, _ in outcomes]
    seen = set().union(*(versions for _, versions in outcomes))
    print(f"\n{len(outcomes)} requests in {elapsed:.1f}s through {', '.join(s for s, _ in steps)}")
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    assert seen <= {"v_test_1", "v_roll_2", "v_roll_3"}, seen  # never a fallback
    assert {"v_test_1", "v_roll_2", "v_roll_3"} <= seen  # champion, then canary and promoted, then canary
    assert outcomes[-1][1] == frozenset({"v_roll_2"})  # after the abort only the champion answers
    pids_after = {handle.status.remote().result()["pid"] for _ in range(20)}
    # Reconfigured in place: no process that was not serving before answers now (a restart of
    # even one replica would bring a new one).
    assert pids_after and pids_after <= pids_before, (pids_before, pids_after)

    engine = make_engine(pg_url)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                shadowed = conn.scalar(
                    select(func.count()).where(
                        PredictionLog.challenger_version == "v_roll_2",
                        PredictionLog.challenger_probability.is_not(None),
                    )
                )
                canaried = conn.scalar(
                    select(func.count()).where(
                        PredictionLog.variant == "challenger", PredictionLog.model_version == "v_roll_2"
                    )
                )
            if shadowed and canaried:
                break
            time.sleep(0.5)
    finally:
        engine.dispose()
    assert shadowed and canaried, (shadowed, canaried)


def test_canary_users_are_sticky_and_match_their_bucket(graph: Graph) -> None:
    v3 = _artifact(graph.models, "v_roll_3b")
    graph.deploy(with_challenger(graph.v1, v3, mode="canary", percent=40))
    users = [f"sticky-{i}" for i in range(60)]
    try:
        with httpx.Client(base_url=BASE, headers=HEADERS, timeout=30) as c:
            first = [p["model_version"] for p in predict(c, users).json()["predictions"]]
            again = [p["model_version"] for p in predict(c, users[::-1]).json()["predictions"]][::-1]
    finally:
        graph.deploy(graph.v1)
    expected = ["v_roll_3b" if canary_bucket(u) < 4000 else "v_test_1" for u in users]
    assert first == expected and again == expected


def _exported(port: int) -> set[str]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


def _queried() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, f"{DASHBOARD} queries nothing"
    return {name for expr in exprs for name in re.findall(r"\b(ray_[a-z0-9_]+)", expr)}


def test_every_metric_the_dashboard_queries_is_exported(graph: Graph, pg_url: str) -> None:  # noqa: F811
    import ray

    # A fallback (no model anywhere) so that the fallback counter has a series.
    graph.deploy({k: None for k in MODEL_KEYS})
    with httpx.Client(base_url=BASE, headers=HEADERS, timeout=30) as c:
        assert "fallback_reason" in predict(c, ["metrics-user"]).json()["predictions"][0]
    # A rollout in the registry with a decision on live outcomes: the live-metric gauges.
    v2 = _artifact(graph.models, "v_roll_live")
    factory = make_session_factory(make_engine(pg_url))
    now = dt.datetime.now(dt.UTC)
    with factory.begin() as session:
        for artifact in (graph.v1, v2):
            if session.scalar(select(func.count()).where(ModelVersion.version == artifact["model_version"])):
                continue
            registry.register(
                session,
                version=artifact["model_version"],
                algorithm="logreg",
                params={},
                metrics={"holdout": {}},
                feature_columns=list(ALL_FEATURES),
                train_samples=1,
                holdout_samples=1,
                training_window_start=now,
                training_window_end=now,
                artifact_path=artifact["artifact_path"],
                artifact_sha256=artifact["artifact_sha256"],
            )
        registry.activate(session, graph.v1["model_version"], by="test")
        rollout.start_shadow(session, "v_roll_live", by="test")
        quality = {"labelled": 400, "accuracy": 0.8, "pr_auc": 0.5, "roc_auc": 0.8, "brier": 0.1}
        rollout.record(
            session,
            version="v_roll_live",
            action="stay",
            reason="test",
            by="test",
            now=now,
            champion_version=graph.v1["model_version"],
            stage_before="shadow",
            stage_after="shadow",
            numbers={"champion": quality, "challenger": {**quality, "pr_auc": 0.55}},
        )
    factory.kw["bind"].dispose()
    graph.deploy(with_challenger(graph.v1, v2, mode="shadow"))
    with httpx.Client(base_url=BASE, headers=HEADERS, timeout=30) as c:
        for _ in range(5):
            assert predict(c, ["metrics-user", "other-user"]).status_code == 200
    graph.deploy(graph.v1)  # the challenger leaves: its gauge series stays, at -1

    port = ray.nodes()[0]["MetricsExportPort"]
    queried = _queried()
    missing = queried
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        missing = queried - _exported(port)
        if not missing:
            break
        time.sleep(2)
    print(f"\nthe dashboard queries {len(queried)} metrics: {', '.join(sorted(queried))}")
    assert not missing, f"queried by {DASHBOARD.name} but not exported: {sorted(missing)}"
