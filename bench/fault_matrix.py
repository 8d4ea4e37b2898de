"""The fault matrix under load: each row injects one fault into the running prediction app
while a load generator on 127.0.0.1 sends single-item predictions, and reports what the
clients saw and what the store kept. Prints one table (fault, measured, figure).

    flock /tmp/conflict-ray.lock .venv/bin/python bench/fault_matrix.py --rows kill_ingress,pg_restart

Rows: kill_ingress, kill_feature_lookup, kill_model_inference, kill_fallback_heuristics
(``kill -9`` of one replica of that deployment, with the layout serve_config.yaml ships),
pg_restart (the store's PostgreSQL restarted; prediction logs counted against the client's
prediction ids), spool_full (the store down and the spool on a 256 KiB tmpfs; needs root);
on a multi-raylet cluster of its own (bench/fault_cluster.py): spread, kill_worker_node,
gcs_restart (GCS fault tolerance on the Redis at 127.0.0.1:6379), gcs_restart_no_ft, head_restart
(the whole head node, with GCS fault tolerance) and head_restart_no_ft.
``--soak-minutes N`` instead measures the capacity, then samples replica memory, errors and
p95 over N minutes at half of it and writes a CSV and a PNG (``--soak-out``).

The store is a PRIVATE PostgreSQL cluster this script creates under a temporary directory
and runs on ``--pg-port`` (initdb and pg_ctl as the ``postgres`` user via runuser); the
machine's own PostgreSQL is never touched. Ray is a local instance (or cluster) owned by this
process.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

APP = "conflict_predictor"
URL = "http://127.0.0.1:8000"
KILL_ROWS = {
    "kill_ingress": "Ingress",
    "kill_feature_lookup": "FeatureLookup",
    "kill_model_inference": "ModelInference",
    "kill_fallback_heuristics": "FallbackHeuristics",
}
LOCAL_ROWS = (*KILL_ROWS, "pg_restart", "spool_full")
CLUSTER_ROWS = (
    "spread",
    "kill_worker_node",
    "gcs_restart",
    "gcs_restart_no_ft",
    "head_restart",
    "head_restart_no_ft",
)  # bench/fault_cluster.py
ROWS = (*LOCAL_ROWS, *CLUSTER_ROWS)
BODY = {"device_id": "d", "entity_type": "task", "changed_fields": ["title", "status"]}


# --------------------------------------------------------------------------- the private store


class PrivatePostgres:
    """A PostgreSQL cluster of its own under ``root``, on ``port``, run as the postgres user."""

    def __init__(self, root: Path, port: int):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            raise SystemExit("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bin = bins[-1].parent
        self.root, self.port = root, port
        self.data = root / "pgdata"

    def _pg(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, text=True)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        self._pg(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._pg(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w",
            "-m", "fast", action, *extra,
        )  # fmt: skip

    def start(self) -> None:
        self.ctl("start")

    def stop(self) -> None:
        self.ctl("stop")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def restart(self) -> None:
        self.ctl("restart")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


# --------------------------------------------------------------------------- the load


@dataclass
class Answer:
    started: float
    finished: float
    status: int  # 0: connection error or client timeout
    model_version: str | None = None
    fallback_reason: str | None = None
    prediction_id: str | None = None


@dataclass
class Load:
    """``connections`` clients each sending one request after the other until stopped."""

    connections: int
    timeout_s: float = 10.0
    rate_per_s: float | None = None  # all clients together; None: each sends as soon as it has an answer
    answers: list[Answer] = field(default_factory=list)
    skipped: int = 0  # paced slots a client missed because its previous answer came after them
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, index: int) -> None:
        import httpx
        from bench_serve import bench_token

        n = 0
        headers = {"Authorization": f"Bearer {bench_token()}"}  # the predict token _seed_store granted
        interval = self.connections / self.rate_per_s if self.rate_per_s else 0.0
        due = time.monotonic() + interval * index / self.connections  # clients evenly staggered
        with httpx.Client(base_url=URL, timeout=self.timeout_s, headers=headers) as client:
            while not self._stop.is_set():
                if interval:
                    self._stop.wait(max(0.0, due - time.monotonic()))
                    # Each client keeps its own slot on the grid: one that fell behind skips the
                    # slots it missed rather than sending at the moment its answer came, which
                    # would line it up with the clients answered in the same batch and, over a
                    # long run, turn even arrivals into bursts.
                    due += interval
                    behind = time.monotonic() - due
                    if behind > 0:
                        skipped = int(behind // interval) + 1
                        due += skipped * interval
                        self.skipped += skipped
                n += 1
                body = {**BODY, "user_id": f"user-{(index * 7919 + n) % 300}", "entity_id": f"task-{n % 2000}"}
                started = time.monotonic()
                try:
                    r = client.post("/v1/predict", json=body)
                    answer = r.json() if r.status_code == 200 else {}
                    self.answers.append(
                        Answer(
                            started,
                            time.monotonic(),
                            r.status_code,
                            answer.get("model_version"),
                            answer.get("fallback_reason"),
                            answer.get("prediction_id"),
                        )
                    )
                except Exception:
                    self.answers.append(Answer(started, time.monotonic(), 0))
                    time.sleep(0.05)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.connections)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)

    def window(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.started < end]


def summarize(answers: list[Answer], seconds: float) -> dict[str, float]:
    ok = [a for a in answers if a.status == 200]
    latencies = sorted((a.finished - a.started) * 1000 for a in ok)
    finished = sorted(a.finished for a in ok)
    gaps = [b - a for a, b in zip(finished, finished[1:], strict=False)]
    return {
        "requests": len(answers),
        "failed": sum(1 for a in answers if a.status != 200),
        "heuristic": sum(1 for a in ok if a.model_version == "heuristic_v1"),
        "answered_per_s": len(ok) / seconds if seconds else 0.0,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
        "longest_gap_s": max(gaps, default=float("nan")),
    }


def failed_figure(answers: list[Answer]) -> str:
    """``failed of requests``, with the failures by kind: ``4 of 1819 (HTTP 502: 3, no answer: 1)``."""
    kinds = Counter("no answer" if a.status == 0 else f"HTTP {a.status}" for a in answers if a.status != 200)
    detail = ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))
    return f"{sum(kinds.values())} of {len(answers)}" + (f" ({detail})" if detail else "")


# --------------------------------------------------------------------------- Ray and the app


def replica_actors(deployment: str) -> dict[str, int]:
    """Alive replica actors of ``deployment``: actor id -> pid."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
    suffix = f":{APP}:{deployment}"
    return {
        a.actor_id: a.pid
        for a in actors
        if a.pid is not None and a.class_name.startswith("ServeReplica") and a.class_name.endswith(suffix)
    }


def deployment_healthy(deployment: str) -> bool:
    from ray import serve

    status = serve.status().applications[APP].deployments[deployment]
    return str(status.status).endswith("HEALTHY")


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic() - started
        time.sleep(interval_s)
    return None


@contextlib.contextmanager
def running_app(
    url: str, work: Path, mode: str, single_replica: bool = False, address: str | None = None
) -> Iterator[None]:
    """The app deployed on a local Ray instance of its own, or on the cluster at ``address``
    (started with :func:`ray_control.instance.serve_env` of ``mode`` already in its environment)."""
    import ray
    from bench_serve import _artifact, _wait_http, bench_config

    from ray_control.instance import serve_env
    from ray_control.serve_deploy import deploy_config

    os.environ.update(serve_env(mode))
    artifact, sha = _artifact(work)
    config = bench_config(REPO / "serve_config.yaml", url, work, artifact, sha)
    if single_replica:  # the layout before two replicas: what one replica's loss costs with the breakers alone
        for deployment in config["applications"][0]["deployments"]:
            deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    if address is None:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=True,  # the state API (replica pids) is served by the dashboard
            dashboard_host="127.0.0.1",
            dashboard_port=8265,
            log_to_driver=False,
        )
    else:
        ray.init(address=address, log_to_driver=False)
    try:
        deploy_config(config)
        _wait_http(URL, timeout_s=240)
        yield
    finally:
        from ray import serve

        if ray.is_initialized():  # a row may have left the cluster (GCS restarted without fault tolerance)
            with contextlib.suppress(Exception):
                serve.shutdown()
        ray.shutdown()


# --------------------------------------------------------------------------- the rows

Row = tuple[str, str, str]  # fault, measured, figure


def kill_row(name: str, deployment: str, connections: int, warm_s: float, fault_s: float) -> list[Row]:
    before = replica_actors(deployment)
    if not before:
        return [(name, "replicas found", f"none of {deployment}")]
    load = Load(connections)
    load.start()
    time.sleep(warm_s)
    victim_id, victim_pid = next(iter(before.items()))
    killed_at = time.monotonic()
    os.kill(victim_pid, signal.SIGKILL)
    replaced = wait_for(
        lambda: len(set(replica_actors(deployment)) - {victim_id}) >= len(before) and deployment_healthy(deployment),
        timeout_s=120,
    )
    time.sleep(max(0.0, fault_s - (time.monotonic() - killed_at)))
    load.stop()
    base = summarize(load.window(killed_at - warm_s, killed_at), warm_s)
    fault = summarize(load.window(killed_at, killed_at + fault_s), fault_s)
    label = f"kill -9 one of {len(before)} {deployment} replicas"
    return [
        (
            label,
            f"failed requests in {fault_s:.0f} s after the kill",
            failed_figure(load.window(killed_at, killed_at + fault_s)),
        ),
        (label, "answered by the heuristics", f"{fault['heuristic']:.0f} (before: {base['heuristic']:.0f})"),
        (label, "answered/s before -> after", f"{base['answered_per_s']:.0f} -> {fault['answered_per_s']:.0f}"),
        (label, "p95 before -> after", f"{base['p95_ms']:.0f} ms -> {fault['p95_ms']:.0f} ms"),
        (label, "longest time without an answer", f"{fault['longest_gap_s']:.2f} s"),
        (label, "replacement replica healthy after", "not within 120 s" if replaced is None else f"{replaced:.1f} s"),
    ]


def logged_ids(url: str) -> tuple[int, set[str]]:
    from sqlalchemy import select

    from conflict_core.store import PredictionLog, make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as c:
            ids = [row[0] for row in c.execute(select(PredictionLog.prediction_id))]
    finally:
        engine.dispose()
    return len(ids), set(ids)


def drained(url: str, expected: set[str], timeout_s: float = 90) -> tuple[int, set[str]]:
    """The logged ids once every expected id is in (or the time is up)."""
    rows, ids = logged_ids(url)
    deadline = time.monotonic() + timeout_s
    while not expected <= ids and time.monotonic() < deadline:
        time.sleep(1.0)
        rows, ids = logged_ids(url)
    return rows, ids


def pg_restart_row(pg: PrivatePostgres, url: str, connections: int, warm_s: float, fault_s: float) -> list[Row]:
    rows_before, ids_before = logged_ids(url)
    load = Load(connections)
    load.start()
    time.sleep(warm_s)
    restarted_at = time.monotonic()
    pg.restart()
    restart_s = time.monotonic() - restarted_at
    time.sleep(max(0.0, fault_s - restart_s))
    load.stop()
    client_ids = {a.prediction_id for a in load.answers if a.prediction_id}
    rows, ids = drained(url, client_ids | ids_before)
    new_ids = ids - ids_before
    fault = summarize(load.window(restarted_at, restarted_at + fault_s), fault_s)
    label = "PostgreSQL restarted (pg_ctl restart -m fast)"
    return [
        (label, "restart took", f"{restart_s:.1f} s"),
        (
            label,
            f"failed requests in {fault_s:.0f} s from the restart",
            f"{fault['failed']:.0f} of {fault['requests']:.0f}",
        ),
        (label, "answered by the heuristics", f"{fault['heuristic']:.0f}"),
        (label, "prediction logs lost (client ids not in the store)", f"{len(client_ids - ids)} of {len(client_ids)}"),
        (label, "prediction logs duplicated", f"{(rows - rows_before) - len(new_ids)}"),
        (label, "logged ids no client received", f"{len(new_ids - client_ids)}"),
    ]


def grant_reader(url: str) -> str:
    """A new token with the ``read`` scope (the prediction-log status route needs it)."""
    import secrets

    from conflict_core import tokens
    from conflict_core.store import make_engine, make_session_factory

    token = "cp_" + secrets.token_urlsafe(32)
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        session.add(tokens.ApiToken(name="fault-matrix-reader", token_sha256=tokens.hash_token(token), scopes=["read"]))
    engine.dispose()
    return token


def spool_status(token: str, samples: int = 20) -> dict[str, dict[str, Any]]:
    """/v1/prediction-log/status of the ingress replicas (requests spread over them)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(samples):
        with contextlib.suppress(Exception):
            body = httpx.get(URL + "/v1/prediction-log/status", timeout=5, headers=headers).json()
            seen[f"{body['written']}-{body['spilled']}-{body.get('dropped')}"] = body
    return seen


def spool_full_row(
    pg: PrivatePostgres, url: str, spool: Path, connections: int, warm_s: float, fault_s: float
) -> list[Row]:
    rows_before, ids_before = logged_ids(url)
    reader = grant_reader(url)
    spool_status(reader)  # while the store is up: each ingress replica verifies and caches the token
    load = Load(connections)
    load.start()
    time.sleep(warm_s)
    stopped_at = time.monotonic()
    pg.stop()
    time.sleep(fault_s)
    usage = shutil.disk_usage(spool)
    spooled_files = [p.name for p in spool.iterdir() if p.name.endswith(".jsonl")]
    statuses = spool_status(reader)
    pg.start()
    time.sleep(5)
    load.stop()
    client_ids = {a.prediction_id for a in load.answers if a.prediction_id}
    rows, ids = drained(url, client_ids | ids_before, timeout_s=60)
    fault = summarize(load.window(stopped_at, stopped_at + fault_s), fault_s)
    dropped = max((s.get("dropped") or 0 for s in statuses.values()), default=0)
    failures = max((s.get("spill_failures") or 0 for s in statuses.values()), default=0)
    logs = Path("/tmp/ray/session_latest/logs")
    lines = 0
    for path in [*logs.rglob("*.log"), *logs.rglob("*.err")]:
        with contextlib.suppress(OSError):
            lines += path.read_text(errors="replace").count("is unwritable")
    label = f"store down and spool full ({usage.total // 1024} KiB tmpfs)"
    return [
        (label, f"failed requests in {fault_s:.0f} s", f"{fault['failed']:.0f} of {fault['requests']:.0f}"),
        (label, "spool used / spool files while full", f"{usage.used // 1024} KiB / {len(spooled_files)}"),
        (label, "spill failures / dropped (status route, one replica's max)", f"{failures} / {dropped}"),
        (label, "'spool ... is unwritable' log lines", f"{lines}"),
        (label, "client ids not in the store after recovery", f"{len(client_ids - ids)} of {len(client_ids)}"),
        (label, "prediction logs duplicated", f"{(rows - rows_before) - len(ids - ids_before)}"),
    ]


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def capacity(connections: int, seconds: float = 20.0, settle_s: float = 5.0) -> float:
    """Answered/s with ``connections`` clients sending back to back (after ``settle_s``)."""
    load = Load(connections)
    load.start()
    time.sleep(settle_s + seconds)
    load.stop()
    started = min(a.started for a in load.answers) + settle_s
    return summarize(load.window(started, started + seconds), seconds)["answered_per_s"]


def replica_pids() -> dict[str, dict[str, int]]:
    """Every alive replica of the app: deployment -> {actor id: pid}."""
    return {d: replica_actors(d) for d in ("Ingress", "FeatureLookup", "ModelInference", "FallbackHeuristics")}


def replica_rss(pids: dict[str, dict[str, int]]) -> dict[str, float]:
    """RSS in MiB of every replica in ``pids`` (:func:`replica_pids`), keyed ``deployment:actor id``."""
    rss = {}
    for d, actors in pids.items():
        for actor, pid in actors.items():
            mib = rss_mib(pid)
            if mib is not None:
                rss[f"{d}:{actor[:8]}"] = mib
    return rss


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def machine_jiffies() -> list[int]:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (jiffies)."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


class SoakProbe:
    """Where a soak's time goes, per sample: CPU seconds of every replica, of the private
    PostgreSQL and of this (client) process per answered request; the machine's busy and steal
    share; the client's garbage-collection pauses. A p95 that moves can then be put on a part."""

    def __init__(self, pg: PrivatePostgres) -> None:
        self.pg = pg
        self.gc_pause_s = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)
        self._last = self._read(replica_pids())

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause_s += time.perf_counter() - self._gc_started

    def _read(self, pids: dict[str, dict[str, int]]) -> dict[str, Any]:
        cpu = {d: sum(cpu_seconds(pid) or 0.0 for pid in actors.values()) for d, actors in pids.items()}
        postmaster = self.pg.postmaster_pid()
        if postmaster:
            cpu["postgres"] = sum(cpu_seconds(p) or 0.0 for p in [postmaster, *children_of(postmaster)])
        cpu["client"] = cpu_seconds(os.getpid()) or 0.0
        return {"cpu": cpu, "jiffies": machine_jiffies(), "gc": self.gc_pause_s}

    def sample(self, answered: int, pids: dict[str, dict[str, int]]) -> dict[str, float]:
        """CPU ms per answered request by part (replicas: ``pids``), machine busy/steal %, client GC ms
        since the last call."""
        now, last = self._read(pids), self._last
        self._last = now
        out = {
            f"cpu_ms_per_req:{k}": (v - last["cpu"].get(k, v)) * 1000 / max(answered, 1) for k, v in now["cpu"].items()
        }
        delta = [b - a for a, b in zip(last["jiffies"], now["jiffies"], strict=True)]
        total = sum(delta) or 1
        out["machine_busy_pct"] = 100 * (total - delta[3] - delta[4]) / total
        out["steal_pct"] = 100 * delta[7] / total
        out["client_gc_ms"] = (now["gc"] - last["gc"]) * 1000
        return out

    def close(self) -> None:
        gc.callbacks.remove(self._on_gc)


def arrival_peak(answers: list[Answer], bin_s: float) -> int:
    """The most requests sent within one ``bin_s`` bin: how bursty the arrivals were."""
    return max(Counter(int(a.started // bin_s) for a in answers).values(), default=0)


def soak(
    minutes: float,
    connections: int,
    out: Path,
    pg: PrivatePostgres,
    warmup_min: float = 5.0,
    sample_s: float = 10.0,
) -> list[Row]:
    """Half the measured capacity for ``minutes``: replica memory, errors, p95 and where the CPU
    goes (:class:`SoakProbe`) every ``sample_s``."""
    full = capacity(8)
    rate = full / 2
    print(f"capacity {full:.0f} answered/s with 8 connections; soak at {rate:.0f}/s", flush=True)
    load = Load(connections, rate_per_s=rate)
    load.start()
    samples: list[dict[str, Any]] = []
    probe = SoakProbe(pg)
    began = last = time.monotonic()
    while (now := time.monotonic()) < began + minutes * 60:
        time.sleep(max(0.0, min(sample_s, began + minutes * 60 - now)))
        now = time.monotonic()
        window = summarize(load.window(last, now), now - last)
        answered = round(window["answered_per_s"] * (now - last))
        pids = replica_pids()  # one state-API read per sample, for memory and CPU alike
        samples.append(
            {
                "t_min": (now - began) / 60,
                **window,
                "rss": replica_rss(pids),
                **probe.sample(answered, pids),
                "client_arrivals_max_per_20ms": arrival_peak(load.window(last, now), 0.02),
                "client_skipped_slots": load.skipped,
            }
        )
        if len(samples) % 6 == 0:
            print(
                f"soak {samples[-1]['t_min']:.1f} min: p95 {window['p95_ms']:.0f} ms, "
                f"{window['answered_per_s']:.0f}/s, machine busy {samples[-1]['machine_busy_pct']:.0f} %, "
                f"steal {samples[-1]['steal_pct']:.1f} %, most arrivals in 20 ms "
                f"{samples[-1]['client_arrivals_max_per_20ms']}, skipped slots {load.skipped}",
                flush=True,
            )
        last = now
    probe.close()
    load.stop()
    out.mkdir(parents=True, exist_ok=True)
    _write_soak_csv(samples, out / "soak.csv")
    _plot_soak(samples, out / "soak.png", rate)
    warm = [s for s in samples if s["t_min"] >= warmup_min] or samples
    first, final = warm[0]["rss"], samples[-1]["rss"]
    growth = {k: (final[k] - v) / v * 100 for k, v in first.items() if k in final and v}
    worst = max(growth, key=lambda k: growth[k], default="none")
    p95s = [s["p95_ms"] for s in warm if s["p95_ms"] == s["p95_ms"]]
    tenth = max(1, len(p95s) // 10)
    label = f"soak {minutes:g} min at half capacity ({rate:.0f}/s of {full:.0f}/s), {connections} connections"
    return [
        (label, "errors", f"{sum(s['failed'] for s in samples):.0f} of {sum(s['requests'] for s in samples):.0f}"),
        (label, "answered/s per sample: median", f"{statistics.median(s['answered_per_s'] for s in samples):.0f}"),
        (
            label,
            f"largest replica RSS growth from minute {warm[0]['t_min']:.0f} to the end",
            f"{growth.get(worst, 0):.1f} % ({worst}: {first.get(worst, 0):.0f} -> {final.get(worst, 0):.0f} MiB)",
        ),
        (label, "replicas at the end that were not there after warm-up", f"{len(set(final) - set(first))}"),
        (
            label,
            f"p95 per {sample_s:.0f} s sample after warm-up: median / max",
            f"{statistics.median(p95s):.0f} / {max(p95s):.0f} ms",
        ),
        (
            label,
            "p95 median: first tenth -> last tenth of the run",
            f"{statistics.median(p95s[:tenth]):.0f} -> {statistics.median(p95s[-tenth:]):.0f} ms",
        ),
        (
            label,
            "most requests sent within 20 ms, median: first tenth -> last tenth; paced slots skipped",
            f"{statistics.median(s['client_arrivals_max_per_20ms'] for s in warm[:tenth]):.0f} -> "
            f"{statistics.median(s['client_arrivals_max_per_20ms'] for s in warm[-tenth:]):.0f}; {load.skipped}",
        ),
        (label, "samples and plot", f"{out / 'soak.csv'}, {out / 'soak.png'}"),
    ]


def _write_soak_csv(samples: list[dict[str, Any]], path: Path) -> None:
    import csv

    replicas = sorted({k for s in samples for k in s["rss"]})
    probe_keys = ("cpu_ms_per_req:", "machine_", "steal_", "client_")
    probed = sorted({k for s in samples for k in s if k.startswith(probe_keys)})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["t_min", "requests", "failed", "answered_per_s", "p95_ms", *probed, *(f"rss_mib:{r}" for r in replicas)]
        )
        for s in samples:
            writer.writerow(
                [f"{s['t_min']:.2f}", s["requests"], s["failed"], f"{s['answered_per_s']:.1f}", f"{s['p95_ms']:.1f}"]
                + [f"{s[k]:.2f}" if k in s else "" for k in probed]
                + [f"{s['rss'][r]:.1f}" if r in s["rss"] else "" for r in replicas]
            )


def _plot_soak(samples: list[dict[str, Any]], path: Path, rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_min"] for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    fig.suptitle(f"Soak at {rate:.0f} predictions/s (half the measured capacity)")
    for name in sorted({k for s in samples for k in s["rss"]}):
        axes[0].plot(t, [s["rss"].get(name, float("nan")) for s in samples], label=name)
    axes[0].set_ylabel("replica RSS (MiB)")
    axes[0].legend(fontsize=6)
    axes[1].plot(t, [s["p95_ms"] for s in samples], label="p95 (ms)")
    axes[1].plot(t, [s.get("client_gc_ms", float("nan")) for s in samples], label="client GC pauses (ms per sample)")
    axes[1].set_ylabel("ms")
    axes[1].legend(fontsize=7)
    for key in sorted({k for s in samples for k in s if k.startswith("cpu_ms_per_req:")}):
        axes[2].plot(t, [s.get(key, float("nan")) for s in samples], label=key.split(":", 1)[1])
    axes[2].set_ylabel("CPU ms per answered request")
    axes[2].legend(fontsize=7)
    axes[3].plot(t, [s["failed"] for s in samples], label="errors per sample")
    axes[3].plot(t, [s.get("machine_busy_pct", float("nan")) for s in samples], label="machine busy %")
    axes[3].plot(t, [s.get("steal_pct", float("nan")) for s in samples], label="steal %")
    axes[3].plot(
        t, [s.get("client_arrivals_max_per_20ms", float("nan")) for s in samples], label="most requests sent in 20 ms"
    )
    axes[3].legend(fontsize=7)
    axes[3].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_table(rows: list[Row]) -> None:
    widths = [max(len(r[i]) for r in rows + [("fault", "measured", "figure")]) for i in range(3)]
    line = " | ".join(f"{{:<{w}}}" for w in widths)
    print(line.format("fault", "measured", "figure"))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warm-s", type=float, default=8.0, help="load before the fault (the baseline window)")
    parser.add_argument("--fault-s", type=float, default=20.0, help="load measured from the fault on")
    parser.add_argument("--pg-port", type=int, default=55432)
    parser.add_argument("--mode", default="haproxy", help="serve ingress mode (ray_control.instance.serve_env)")
    parser.add_argument(
        "--single-replica", action="store_true", help="one replica of every deployment instead of the shipped layout"
    )
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="run the soak instead of the rows")
    parser.add_argument("--soak-connections", type=int, default=16)
    parser.add_argument("--soak-out", type=Path, default=REPO / "bench" / "results", help="soak CSV and PNG go here")
    a = parser.parse_args()
    # SIGTERM before Ray starts still cleans up (PostgreSQL, the work directory's mount); once Ray is
    # up its own handler takes over and the private PostgreSQL may be left running: pg_ctl stop it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = [r for r in a.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; expected some of {', '.join(ROWS)}")

    from bench_serve import _seed_store

    work = Path(tempfile.mkdtemp(prefix="fault_matrix_"))
    work.chmod(0o755)
    spool = work / "spool"
    spool.mkdir()
    mounted = False
    if "spool_full" in rows and not a.soak_minutes:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(spool)], check=True)
        mounted = True
    pg = PrivatePostgres(work / "pg", a.pg_port)
    results: list[Row] = []
    try:
        pg.init()
        url = pg.create_database("conflict")
        _seed_store(url)
        print(f"store {url}; work {work}; rows {rows if not a.soak_minutes else 'soak'}", flush=True)
        local = [r for r in rows if r in LOCAL_ROWS]
        if a.soak_minutes or local:
            with running_app(url, work, a.mode, a.single_replica):
                if a.soak_minutes:
                    results += soak(a.soak_minutes, a.soak_connections, a.soak_out, pg)
                for row in local if not a.soak_minutes else []:
                    if row in KILL_ROWS:
                        results += kill_row(row, KILL_ROWS[row], a.connections, a.warm_s, a.fault_s)
                    elif row == "pg_restart":
                        results += pg_restart_row(pg, url, a.connections, a.warm_s, a.fault_s)
                    elif row == "spool_full":
                        results += spool_full_row(pg, url, spool, a.connections, a.warm_s, a.fault_s)
                    time.sleep(5)  # let autoscaling and the log writer settle between rows
        cluster = [r for r in rows if r in CLUSTER_ROWS]
        if cluster and not a.soak_minutes:
            from fault_cluster import run_cluster_rows

            results += run_cluster_rows(cluster, url, work, a.mode, a.connections, a.warm_s, a.fault_s)
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        if mounted:
            subprocess.run(["umount", str(spool)], check=False)
    print()
    print_table(results)


if __name__ == "__main__":
    main()
