"""The app on a three-node Ray cluster on this machine: a head and two worker raylets (Ray's own
cluster test utility, one logical CPU each). The replicas of every request-path deployment
spread over the nodes; the extraction's Ray tasks run beside the app although no node has a
whole CPU free; and when a worker node dies under load the clients keep getting answers while
Serve replaces its replicas on the nodes that are left: the only requests lost are those in
flight on an ingress replica of the dead node, at most one per client connection.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from conflict_core import db
from conflict_core.features import ALL_FEATURES
from conflict_core.registry import sha256_file
from ray_control.instance import serve_env
from ray_control.serve_deploy import deploy_config
from tests.conftest import grant

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
APP = "conflict_predictor"
BASE = "http://127.0.0.1:8000"
DASHBOARD = "http://127.0.0.1:8265"
REQUEST_PATH = ("Ingress", "FeatureLookup", "ModelInference")
DEPLOYMENTS = (*REQUEST_PATH, "FallbackHeuristics")
ITEM = {"user_id": "u1", "device_id": "d1", "entity_type": "task", "entity_id": "t1", "changed_fields": ["title"]}


def _model(directory: Path) -> dict[str, Any]:
    """A small fitted model artifact and the ModelInference user_config naming it."""
    rng = np.random.default_rng(0)
    x = rng.random((200, len(ALL_FEATURES)))
    y = (x[:, 0] > 0.5).astype(int)
    path = directory / "v_cluster.joblib"
    estimator = LogisticRegression().fit(x, y)
    joblib.dump({"estimator": estimator, "feature_columns": list(ALL_FEATURES), "version": "v_cluster"}, path)
    return {"model_version": "v_cluster", "artifact_path": str(path), "artifact_sha256": sha256_file(path)}


def replica_nodes() -> dict[str, dict[str, str]]:
    """Alive replicas of the app: deployment -> {actor id: node id}."""
    from ray.util.state import list_actors

    placement: dict[str, dict[str, str]] = {d: {} for d in DEPLOYMENTS}
    for a in list_actors(address=DASHBOARD, filters=[("state", "=", "ALIVE")], limit=1000):
        for d in DEPLOYMENTS:
            if a.node_id and a.class_name.startswith("ServeReplica") and a.class_name.endswith(f":{APP}:{d}"):
                placement[d][a.actor_id] = a.node_id
    return placement


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Three raylets with the app deployed from ``serve_config.yaml`` on a SQLite store."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    work = tmp_path_factory.mktemp("cluster")
    url = f"sqlite:///{work / 'store.db'}"
    db.upgrade(url)
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["applications"][0]["args"].update(database_url=url, log_spool_dir=str(work / "spool"))
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "ModelInference":
            d["user_config"].update(_model(work))
    with pytest.MonkeyPatch.context() as env:
        for key, value in serve_env("haproxy").items():  # before any raylet starts: Serve's processes inherit it
            env.setenv(key, value)
        nodes = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": 8265,
            },
        )
        try:
            for _ in range(2):
                nodes.add_node(num_cpus=1)
            nodes.wait_for_nodes()
            ray.init(address=nodes.address, log_to_driver=False)
            deploy_config(config)
            token = grant(url, "predict", name="cluster tests")
            _wait_answering(token, timeout_s=180)
            yield nodes, token
        finally:
            if ray.is_initialized():
                serve.shutdown()
            ray.shutdown()
            nodes.shutdown()


def _wait_answering(token: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = httpx.post(f"{BASE}/v1/predict", json=ITEM, headers={"Authorization": f"Bearer {token}"}, timeout=5)
            if r.status_code == 200 and r.json()["model_version"] == "v_cluster" and _all_replicas_running():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the app did not answer from its model with every replica running within {timeout_s} s")


def _all_replicas_running() -> bool:
    """Serve reports the app RUNNING: every deployment at its target replica count, healthy
    (the first answer can come while a replica on a busy 1-CPU node is still starting)."""
    from ray import serve

    app = serve.status().applications.get("conflict_predictor")
    return app is not None and str(app.status).endswith("RUNNING")


def test_request_path_replicas_spread_over_the_nodes(cluster: tuple[Any, str]) -> None:
    placement = replica_nodes()
    for deployment in REQUEST_PATH:
        nodes = list(placement[deployment].values())
        assert len(nodes) == 2, f"{deployment}: {len(nodes)} replicas"
        assert len(set(nodes)) == 2, f"both {deployment} replicas on one node"
    assert len({n for d in DEPLOYMENTS for n in placement[d].values()}) == 3


def test_the_extraction_runs_on_the_nodes_beside_the_app(cluster: tuple[Any, str], tmp_path: Path) -> None:
    """The app's fractional replicas are spread over the three 1-CPU nodes, so no node has a
    whole CPU free: the extraction's tasks ask only for ``task_cpus`` each and still run, and
    the frame equals the single-process one."""
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from conflict_core.simulator import simulate, simulation_size_for_events
    from training.extract import ExtractionWindow, extract_local, extract_with_ray, latest_event_time, partition_files

    table = simulate(simulation_size_for_events(5_000, days=10))
    table = table.append_column("date", pc.strftime(table["synced_at"], format="%Y-%m-%d"))
    pads.write_dataset(table, tmp_path, format="parquet", partitioning=["date"], partitioning_flavor="hive")
    window = ExtractionWindow.days_back(10, end=latest_event_time(tmp_path))
    files = partition_files(tmp_path, window)
    result: dict[str, Any] = {}

    def extract() -> None:
        try:
            result["frame"] = extract_with_ray(files, window, task_cpus=0.25)
        except Exception as exc:  # reported below
            result["error"] = exc

    worker = threading.Thread(target=extract, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the extraction did not finish within 120 s beside the app (tasks waiting for CPUs?)"
    assert "error" not in result, result.get("error")
    pd.testing.assert_frame_equal(result["frame"], extract_local(files, window))


def test_losing_a_worker_node_under_load_loses_at_most_the_requests_in_flight_on_it(cluster: tuple[Any, str]) -> None:
    nodes, token = cluster
    before = replica_nodes()
    hosted = Counter(n for d in REQUEST_PATH for n in before[d].values())
    victim = max(nodes.worker_nodes, key=lambda node: hosted.get(node.node_id, 0))
    assert hosted[victim.node_id] >= 1

    answers: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=BASE, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/predict", json=ITEM)
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    answers.append((time.monotonic(), r.status_code, version))
                except httpx.HTTPError:
                    answers.append((time.monotonic(), 0, None))
                    time.sleep(0.05)

    clients = 4
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(3)
    killed_at = time.monotonic()
    nodes.remove_node(victim, allow_graceful=False)
    wanted = {d: len(before[d]) for d in DEPLOYMENTS}
    deadline = killed_at + 120
    while time.monotonic() < deadline:
        now = replica_nodes()
        if all(len([n for n in now[d].values() if n != victim.node_id]) >= wanted[d] for d in DEPLOYMENTS):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"replicas not replaced within 120 s: {replica_nodes()}")
    recovered_at = time.monotonic()
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(timeout=15)

    during = [a for a in answers if a[0] >= killed_at]
    failed = [a for a in during if a[1] != 200]
    in_flight_bound = clients if victim.node_id in before["Ingress"].values() else 0
    assert during and len(failed) <= in_flight_bound, f"{len(failed)} of {len(during)} requests failed"
    answered = sorted(t for t, status, _ in during if status == 200)
    assert max(b - a for a, b in zip(answered, answered[1:], strict=False)) < 2.0, "answers stopped"
    tail = [a for a in answers if a[0] >= recovered_at + 2]
    assert tail and all(version == "v_cluster" for _, _, version in tail), "answers still from the heuristics"
    assert victim.node_id not in {n for d in DEPLOYMENTS for n in replica_nodes()[d].values()}
