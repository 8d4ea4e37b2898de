"""Fault-matrix rows on a Ray cluster of several raylets on this machine.

Ray's own cluster test utility (:class:`ray.cluster_utils.Cluster`) starts a head node and
worker nodes as separate raylets, each with its own logical CPUs and a custom resource naming
it. Rows (run through ``bench/fault_matrix.py --rows ...``):

* ``spread``: where the app's replicas, the extraction's Ray tasks and a small sweep's trials
  ran, node by node (head + two workers).
* ``kill_worker_node``: a worker node's raylet and every process on it killed under load.
* ``gcs_restart``: the head's GCS process killed and restarted under load, with GCS fault
  tolerance on the machine's Redis (``RAY_REDIS_ADDRESS`` and a key namespace of this run's
  own, ``RAY_external_storage_namespace``, deleted afterwards).
* ``gcs_restart_no_ft``: the same without external storage: what a cluster without GCS fault
  tolerance loses.
* ``head_restart``: the whole head node (GCS, raylet, dashboard and every process on it: the
  Serve controller, HAProxy and the replicas) killed under load and started again on the same
  GCS port, with GCS fault tolerance on Redis: the Serve app comes back by itself.
* ``head_restart_no_ft``: the same without external storage.

In the GCS rows only the GCS process is restarted; the head's raylet and the replica processes
on it keep running. In the head rows everything on the head goes, as when a head Pod or VM is
replaced.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fault_matrix import APP, Load, Row, deployment_healthy, failed_figure, summarize

DEPLOYMENTS = ("Ingress", "FeatureLookup", "ModelInference", "FallbackHeuristics")
REQUEST_PATH = ("Ingress", "FeatureLookup", "ModelInference")
DASHBOARD = "http://127.0.0.1:8265"


# --------------------------------------------------------------------------- the cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def local_cluster(head_cpus: int, worker_cpus: tuple[int, ...], *, redis_address: str | None = None) -> Iterator[Any]:
    """A head and ``len(worker_cpus)`` worker raylets on this machine; with ``redis_address``,
    the GCS keeps its tables in that Redis under a namespace of its own, deleted at the end.

    The GCS listens on a fixed port so that a restarted GCS is found where raylets and
    workers expect it.
    """
    from ray.cluster_utils import Cluster

    namespace = f"conflict-fault-matrix-{uuid.uuid4().hex[:12]}"
    env = {"RAY_REDIS_ADDRESS": redis_address, "RAY_external_storage_namespace": namespace} if redis_address else {}
    head_args = {
        "num_cpus": head_cpus,
        "resources": {"head": 1},
        "include_dashboard": True,  # the state API (replicas, tasks, nodes) is served by the dashboard
        "dashboard_host": "127.0.0.1",
        "dashboard_port": 8265,
        "gcs_server_port": _free_port(),
    }
    with _environ(env):
        cluster = Cluster(initialize_head=True, head_node_args=head_args)
        cluster.head_args = head_args  # type: ignore[attr-defined]  # a restarted head starts with these again
        try:
            for index, cpus in enumerate(worker_cpus, start=1):
                cluster.add_node(num_cpus=cpus, resources={f"worker{index}": 1})
            cluster.wait_for_nodes()
            yield cluster
        finally:
            import ray

            ray.shutdown()
            cluster.shutdown()
            if redis_address:
                _delete_namespace(redis_address, namespace)


def _delete_namespace(redis_address: str, namespace: str) -> None:
    """Ray's own clean-up of one cluster's GCS tables in Redis (keys ``RAY<namespace>@*``)."""
    from ray._private.gcs_utils import cleanup_redis_storage

    host, port = redis_address.rsplit(":", 1)
    cleanup_redis_storage(host, int(port), "", False, namespace)


def node_names() -> dict[str, str]:
    """Node id -> ``head`` / ``worker1`` / ``worker2``... (the custom resource each node was given)."""
    from ray.util.state import list_nodes

    names = {}
    for node in list_nodes(address=DASHBOARD, limit=100, detail=True):
        own = [k for k in node.resources_total if k == "head" or k.startswith("worker")]
        names[node.node_id] = own[0] if own else node.node_id[:8]
    return names


def replica_nodes() -> dict[str, dict[str, str]]:
    """Alive replicas of the app: deployment -> {actor id: node id}."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=DASHBOARD, filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False
    )
    placement: dict[str, dict[str, str]] = {d: {} for d in DEPLOYMENTS}
    for a in actors:
        for d in DEPLOYMENTS:
            if a.node_id and a.class_name.startswith("ServeReplica") and a.class_name.endswith(f":{APP}:{d}"):
                placement[d][a.actor_id] = a.node_id
    return placement


def _per_node(node_ids: list[str], names: dict[str, str]) -> str:
    counts = Counter(names.get(n, n[:8]) for n in node_ids)
    return ", ".join(f"{name} {counts[name]}" for name in sorted(counts)) or "none"


# --------------------------------------------------------------------------- spread


def job_rows(work: Path) -> list[Row]:
    """Where the extraction's Ray tasks and a small sweep's trials ran, node by node, and how long
    the extraction took, with the app deployed beside them."""
    names = node_names()
    label = f"{len(names)}-node cluster (head + {len(names) - 1} workers), jobs beside the app"
    started = time.monotonic()
    frame, tasks = _extraction_on_cluster(work)
    rows: list[Row] = [(label, "extraction of 20,000 events (task_cpus 0.5)", f"{time.monotonic() - started:.1f} s")]
    rows += [
        (label, f"extraction tasks '{name}' per node", _per_node(node_ids, names))
        for name, node_ids in sorted(tasks.items())
    ]
    rows.append((label, "sweep trials per node", _per_node(_sweep_on_cluster(frame, work), names)))
    return rows


def replica_rows() -> list[Row]:
    """Where the app's replicas run, node by node."""
    names = node_names()
    label = f"{len(names)}-node cluster (head + {len(names) - 1} workers), app"
    return [
        (label, f"{d} replicas per node", _per_node(list(nodes.values()), names))
        for d, nodes in replica_nodes().items()
    ]


def _extraction_on_cluster(work: Path, events: int = 20_000) -> tuple[Any, dict[str, list[str]]]:
    """A small simulated export extracted by Ray tasks; the training frame and task name -> node ids."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import ray
    from ray.util.state import list_tasks

    from conflict_core.simulator import simulate, simulation_size_for_events
    from training.extract import ExtractionWindow, extract_with_ray, latest_event_time, partition_files

    events_dir = work / "events"
    table = simulate(simulation_size_for_events(events, days=30))
    table = table.append_column("date", pc.strftime(table["synced_at"], format="%Y-%m-%d"))
    pads.write_dataset(table, events_dir, format="parquet", partitioning=["date"], partitioning_flavor="hive")
    window = ExtractionWindow.days_back(30, end=latest_event_time(events_dir))
    job = ray.get_runtime_context().get_job_id()
    frame = extract_with_ray(partition_files(events_dir, window), window, task_cpus=0.5)
    tasks: dict[str, list[str]] = {}
    deadline = time.monotonic() + 15  # task events reach the GCS a second or so after the tasks end
    while time.monotonic() < deadline:
        tasks = {}
        for t in list_tasks(address=DASHBOARD, filters=[("job_id", "=", job)], limit=10_000, detail=True):
            if t.node_id and t.type == "NORMAL_TASK":
                tasks.setdefault(t.name, []).append(t.node_id)
        if sum(len(nodes) for name, nodes in tasks.items() if "bucket_task" in name) >= 6:  # 4 entity + 2 user
            break
        time.sleep(1)
    return frame, tasks


def _sweep_on_cluster(frame: Any, work: Path) -> list[str]:
    """Two sweep trials (one per model family) on Ray Tune; the node ids their trial actors ran on."""
    from ray.util.state import list_actors

    from conflict_core.features import ALL_FEATURES
    from training.train import time_split
    from training.tune import sweep_with_ray

    split = time_split(frame)
    sweep_with_ray(
        2, list(ALL_FEATURES), split.fit, split.calibration, storage_path=work / "tune", name="cluster",
        cpus_per_trial=0.5,
    )  # fmt: skip
    actors = list_actors(address=DASHBOARD, limit=1000, detail=True, raise_on_missing_output=False)
    return [a.node_id for a in actors if a.node_id and ("_trial" in a.class_name or "ImplicitFunc" in a.class_name)]


# --------------------------------------------------------------------------- losing a worker node


def _first_times(predicates: dict[str, Callable[[], bool]], timeout_s: float) -> dict[str, float | None]:
    """Seconds until each predicate first held (polled together), ``None`` if not within the time."""
    started = time.monotonic()
    seen: dict[str, float | None] = dict.fromkeys(predicates)
    while time.monotonic() - started < timeout_s and any(v is None for v in seen.values()):
        for name, predicate in predicates.items():
            if seen[name] is None:
                with contextlib.suppress(Exception):
                    if predicate():
                        seen[name] = time.monotonic() - started
        time.sleep(0.25)
    return seen


def _node_dead(node_id: str) -> bool:
    from ray.util.state import list_nodes

    return any(n.node_id == node_id and n.state == "DEAD" for n in list_nodes(address=DASHBOARD, limit=100))


def kill_worker_node_row(cluster: Any, connections: int, warm_s: float, fault_s: float) -> list[Row]:
    """Kill (SIGKILL, no drain) the worker node holding most request-path replicas, under load."""
    names = node_names()
    before = replica_nodes()
    hosted = Counter(n for d in REQUEST_PATH for n in before[d].values())
    victim = max(
        (node for node in cluster.worker_nodes), key=lambda node: hosted.get(node.node_id, 0)
    )  # the one whose loss costs most
    lost = {d: [a for a, n in before[d].items() if n == victim.node_id] for d in DEPLOYMENTS}
    wanted = {d: len(actors) for d, actors in before.items()}

    def replaced() -> bool:
        now = replica_nodes()
        return all(
            len([a for a, n in now[d].items() if n != victim.node_id]) >= wanted[d] and deployment_healthy(d)
            for d in DEPLOYMENTS
        )

    load = Load(connections)
    load.start()
    time.sleep(warm_s)
    killed_at = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    times = _first_times({"dead": lambda: _node_dead(victim.node_id), "replaced": replaced}, timeout_s=180)
    offset = time.monotonic() - killed_at
    time.sleep(max(0.0, fault_s - offset))
    load.stop()
    after = replica_nodes()
    base = summarize(load.window(killed_at - warm_s, killed_at), warm_s)
    fault = summarize(load.window(killed_at, killed_at + fault_s), fault_s)
    label = f"worker node killed ({names[victim.node_id]} of {len(names)} nodes)"

    def since_kill(key: str) -> str:
        value = times[key]
        return "not within 180 s" if value is None else f"{value + 0:.1f} s"

    return [
        (label, "replicas on it", ", ".join(f"{d} {len(a)}" for d, a in lost.items() if a) or "none"),
        (label, f"failed requests in {fault_s:.0f} s", failed_figure(load.window(killed_at, killed_at + fault_s))),
        (label, "answered by the heuristics", f"{fault['heuristic']:.0f} (before: {base['heuristic']:.0f})"),
        (label, "answered/s before -> after", f"{base['answered_per_s']:.0f} -> {fault['answered_per_s']:.0f}"),
        (label, "p95 before -> after", f"{base['p95_ms']:.0f} ms -> {fault['p95_ms']:.0f} ms"),
        (label, "longest time without an answer", f"{fault['longest_gap_s']:.2f} s"),
        (label, "node marked dead by the GCS after", since_kill("dead")),
        (label, "every deployment back at its replica count, healthy, after", since_kill("replaced")),
        *((label, f"{d} replicas per node after", _per_node(list(after[d].values()), names)) for d in DEPLOYMENTS),
    ]


# --------------------------------------------------------------------------- the GCS restarted


def _raylet_alive(node: Any) -> bool:
    from ray._private import ray_constants

    return all(p.process.poll() is None for p in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []))


def gcs_restart_row(
    cluster: Any, *, fault_tolerant: bool, connections: int, warm_s: float, down_s: float, fault_s: float
) -> list[Row]:
    """Kill the head's GCS process under load, start it again ``down_s`` later on the same port.

    The driver disconnects first (it is the operator's process, not part of the app) and
    reconnects afterwards to ask Serve about the app; clients only talk HTTP.
    """
    import ray
    from ray import serve

    before = replica_nodes()
    head = cluster.head_node
    load = Load(connections)
    load.start()
    time.sleep(warm_s)
    ray.shutdown()
    killed_at = time.monotonic()
    head.kill_gcs_server()
    time.sleep(down_s)
    head.start_gcs_server()
    restarted_at = time.monotonic()

    def serving_again() -> bool:
        if not ray.is_initialized():
            ray.init(address=cluster.address, log_to_driver=False)
        app = serve.status().applications[APP]
        return str(app.status).endswith("RUNNING")

    times = _first_times(
        {"serve": serving_again} if fault_tolerant else {"raylet_gone": lambda: not _raylet_alive(head)},
        timeout_s=max(fault_s, 90.0),
    )
    time.sleep(max(0.0, killed_at + fault_s - time.monotonic()))
    load.stop()
    base = summarize(load.window(killed_at - warm_s, killed_at), warm_s)
    down = summarize(load.window(killed_at, restarted_at), restarted_at - killed_at)
    after_s = killed_at + fault_s - restarted_at
    after = summarize(load.window(restarted_at, killed_at + fault_s), after_s)
    ok = [a.finished for a in load.answers if a.status == 200]
    last_answer = max(ok, default=killed_at) - restarted_at
    storage = "GCS fault tolerance on Redis" if fault_tolerant else "no GCS fault tolerance (in-memory GCS)"
    label = f"GCS killed and restarted after {down_s:.0f} s, {storage}"
    gap = summarize(load.window(killed_at, killed_at + fault_s), fault_s)["longest_gap_s"]
    rows: list[Row] = [
        (
            label,
            f"failed requests while the GCS was down ({down_s:.0f} s)",
            failed_figure(load.window(killed_at, restarted_at)),
        ),
        (label, "answered/s before -> GCS down", f"{base['answered_per_s']:.0f} -> {down['answered_per_s']:.0f}"),
        (
            label,
            f"failed requests in the {after_s:.0f} s after the restart",
            failed_figure(load.window(restarted_at, killed_at + fault_s)),
        ),
        (label, "answered/s after the restart", f"{after['answered_per_s']:.0f}"),
        (label, "longest time without an answer", f"{gap:.2f} s"),
    ]
    if fault_tolerant:
        try:
            now = replica_nodes()
        except Exception:  # the dashboard did not come back: no state API
            now = {d: {} for d in DEPLOYMENTS}
        same = sum(len(set(now[d]) & set(before[d])) for d in DEPLOYMENTS)
        total = sum(len(before[d]) for d in DEPLOYMENTS)
        serve_s = times["serve"]
        rows += [
            (
                label,
                "driver reconnected and Serve reports the app RUNNING, after the restart",
                "not within 90 s" if serve_s is None else f"{serve_s:.1f} s",
            ),
            (label, "replicas still the same actors (none restarted)", f"{same} of {total}"),
        ]
    else:
        gone = times["raylet_gone"]
        rows += [
            (
                label,
                "head raylet exited after the restart",
                "still running after 90 s" if gone is None else f"{gone:.1f} s",
            ),
            (label, "last answer, relative to the restart", f"{last_answer:+.1f} s"),
        ]
    return rows


# --------------------------------------------------------------------------- the head node restarted


def head_restart_row(
    cluster: Any, *, fault_tolerant: bool, connections: int, warm_s: float, wait_s: float
) -> list[Row]:
    """Kill every process of the head node under load (``SIGKILL``), start a new head with the
    same arguments (same GCS port; with fault tolerance, the same Redis namespace), and wait
    up to ``wait_s`` for answers to come back; the load runs throughout."""
    import ray
    from ray import serve

    load = Load(connections)
    load.start()
    time.sleep(warm_s)
    ray.shutdown()  # the operator's driver is not part of the app
    killed_at = time.monotonic()
    cluster.remove_node(cluster.head_node, allow_graceful=False)
    cluster.add_node(**cluster.head_args)
    restarted_at = time.monotonic()

    def answered_again() -> bool:
        return any(a.status == 200 and a.finished > restarted_at for a in list(load.answers))

    def serving_again() -> bool:
        if not ray.is_initialized():
            ray.init(address=cluster.address, log_to_driver=False)
        return str(serve.status().applications[APP].status).endswith("RUNNING")

    times = _first_times({"answer": answered_again, "serve": serving_again}, timeout_s=wait_s)
    first = times["answer"]
    settle_s = 15.0 if first is not None else 0.0
    time.sleep(settle_s)
    ended_at = time.monotonic()
    load.stop()
    base = summarize(load.window(killed_at - warm_s, killed_at), warm_s)
    back_at = restarted_at + (first if first is not None else ended_at - restarted_at)
    storage = "GCS fault tolerance on Redis" if fault_tolerant else "no GCS fault tolerance (in-memory GCS)"
    label = f"Whole head node killed (GCS, raylet, controller, HAProxy, replicas) and restarted, {storage}"
    rows: list[Row] = [
        (label, "answered/s before", f"{base['answered_per_s']:.0f}"),
        (
            label,
            "head processes killed and a new head up (GCS, raylet, dashboard)",
            f"{restarted_at - killed_at:.1f} s",
        ),
        (
            label,
            "first answer after the new head was up",
            f"not within {wait_s:.0f} s" if first is None else f"{first:.1f} s",
        ),
        (
            label,
            "Serve reports the app RUNNING after the new head was up",
            "not within the wait" if times["serve"] is None else f"{times['serve']:.1f} s",
        ),
        (label, "failed requests from the kill to the first answer", failed_figure(load.window(killed_at, back_at))),
    ]
    if first is not None:
        after = summarize(load.window(back_at, ended_at), ended_at - back_at)
        rows += [
            (
                label,
                f"failed requests in the {ended_at - back_at:.0f} s after",
                failed_figure(load.window(back_at, ended_at)),
            ),
            (label, "answered/s after", f"{after['answered_per_s']:.0f}"),
        ]
    return rows


# --------------------------------------------------------------------------- the app on a cluster


def run_cluster_rows(
    rows: list[str], url: str, work: Path, mode: str, connections: int, warm_s: float, fault_s: float
) -> list[Row]:
    """Each group of rows on a cluster of its own, the app deployed on it."""
    from fault_matrix import running_app

    from ray_control.instance import serve_env

    os.environ.update(serve_env(mode))  # before any raylet starts: Serve's processes inherit it
    results: list[Row] = []
    multinode = [r for r in rows if r in ("spread", "kill_worker_node")]
    if multinode:
        with local_cluster(1, (1, 1)) as cluster, running_app(url, work, mode, address=cluster.address):
            if "spread" in multinode:
                results += replica_rows()
                results += job_rows(Path(tempfile.mkdtemp(dir=work)))  # beside the app, as in production
                if "kill_worker_node" in multinode:
                    results += kill_worker_node_row(cluster, connections, warm_s, fault_s)

    # One-node clusters, with and without GCS fault tolerance on Redis: the GCS process alone, or the whole head.
    def gcs(cluster: Any, fault_tolerant: bool) -> list[Row]:
        return gcs_restart_row(
            cluster, fault_tolerant=fault_tolerant, connections=connections, warm_s=warm_s, down_s=10.0,
            fault_s=10.0 + max(fault_s, 30.0),
        )  # fmt: skip

    def head(cluster: Any, fault_tolerant: bool) -> list[Row]:
        wait_s = 180.0 if fault_tolerant else 60.0
        return head_restart_row(
            cluster, fault_tolerant=fault_tolerant, connections=connections, warm_s=warm_s, wait_s=wait_s
        )

    redis = "127.0.0.1:6379"
    one_node: dict[str, tuple[str | None, Callable[[Any, bool], list[Row]]]] = {
        "gcs_restart": (redis, gcs),
        "gcs_restart_no_ft": (None, gcs),
        "head_restart": (redis, head),
        "head_restart_no_ft": (None, head),
    }
    for row, (store, measure) in one_node.items():
        if row in rows:
            with (
                local_cluster(2, (), redis_address=store) as cluster,
                running_app(url, work, mode, address=cluster.address),
            ):
                results += measure(cluster, store is not None)
    print(f"cluster rows finished at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    return results
