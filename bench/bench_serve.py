"""Serving benchmark: the Ray Serve graph against two in-process baselines and the trivial
Serve app's ceiling, on SQLite and PostgreSQL in one invocation, driven by wrk; ends with a
verdict on each target of issue 15.

Run from the repo root (it starts a local Ray, so hold the machine's Ray lock):

    flock /tmp/conflict-ray.lock .venv/bin/python bench/bench_serve.py
        [--mode haproxy|throughput|default] [--duration 10] [--concurrency 8,32,64]
        [--items 1,50] [--stores sqlite,postgresql] [--baselines naive,coalesced]
        [--skip-ceiling] [--burst] [--background-load K]

Targets, in order: for each store, the baselines (each its own uvicorn process, before Ray
starts): ``naive`` (``serve_baseline.py``: one lookup and one scikit-learn call per request)
and ``coalesced`` (``serve_baseline_coalesced.py``: what a competent user would write instead
of Ray Serve — concurrent requests coalesced into one lookup and one compiled-model call, the
ingress's response and prediction-log code); then the graph on each store, freshly deployed
for each request size; then ``ceiling``, a Serve app of one replica answering a constant JSON
in the same ingress mode. Single-item requests also get a 1-connection point (the latency
target). PostgreSQL gets a database of its own on ``--postgres-admin-url``'s server, dropped
at the end.

``--mode`` is the serve ingress mode, set in the environment before Ray starts exactly as
``conflictctl`` does (:func:`ray_control.instance.serve_env`): ``haproxy`` (the default;
Ray's HAProxy through the loopback launcher, throughput-optimized replicas), ``throughput``
(throughput-optimized behind Ray's Python proxy) or ``default`` (Ray's Python proxy). The load
goes to 127.0.0.1 only.
``--background-load K`` runs K CPU-bound spinning processes during every measured load point
(the baselines, both stores' graphs and the ceiling alike; not while they start), so that the
stores are compared under the same CPU contention rather than whatever else the machine runs.
Each request size starts with a 3 s unmeasured warm-up. Prints requests/s, predictions/s,
latency percentiles and CPU per request by process for every point, then the verdicts
(MET / NOT MET, best point with p95 < 50 ms and no errors) and the ratios graph / baseline,
graph / ceiling and PostgreSQL / SQLite, and writes a JSON results file under bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray_control.instance import serve_env

REPO = Path(__file__).resolve().parents[1]
LUA = """
local bodies = {}
local n = 0
for line in io.lines("%s") do n = n + 1; bodies[n] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("CONFLICT_BENCH_TOKEN") or "")
request = function()
  i = (i %% n) + 1
  return wrk.format(nil, "/v1/predict", nil, bodies[i])
end
done = function(summary, latency, requests)
  for _, q in ipairs({50, 90, 95, 99}) do
    io.write(string.format("exact-p%%d-us %%d\\n", q, latency:percentile(q)))
  end
end
"""


@functools.lru_cache(maxsize=1)
def bench_token() -> str:
    """This run's ``predict`` token (granted in every store :func:`_seed_store` fills); the graph
    checks it on every request, cached after the first. wrk's Lua reads it from the environment."""
    import secrets

    token = "cp_" + secrets.token_urlsafe(32)
    os.environ["CONFLICT_BENCH_TOKEN"] = token
    return token


def _grant(url: str) -> None:
    from conflict_core import tokens
    from conflict_core.store import make_engine, make_session_factory

    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        session.add(tokens.ApiToken(name="bench", token_sha256=tokens.hash_token(bench_token()), scopes=["predict"]))
    engine.dispose()


def _seed_store(url: str, n_events: int = 20_000) -> None:
    import pandas as pd

    from conflict_core import db
    from conflict_core.events.store_writes import insert_event_frame
    from conflict_core.store import make_engine, make_session_factory, session_scope

    db.upgrade(url)
    rng = random.Random(0)
    now = dt.datetime.now(dt.UTC)
    rows = []
    for i in range(n_events):
        t = now - dt.timedelta(seconds=rng.uniform(0, 20 * 86400))
        conflict = rng.random() < 0.08
        rows.append(
            {
                "event_id": f"seed-{i}",
                "user_id": f"user-{rng.randrange(300)}",
                "device_id": "d",
                "entity_type": "task",
                "entity_id": f"task-{rng.randrange(2000)}",
                "changed_fields": rng.sample(["title", "status", "notes", "due", "owner"], 2),
                "synced_at": t,
                "conflict": conflict,
                "resolution_type": "manual" if conflict else None,
                "resolved_at": t + dt.timedelta(minutes=5) if conflict else None,
            }
        )
    frame = pd.DataFrame(rows)
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        insert_event_frame(session, frame)
    engine.dispose()
    _grant(url)


def _artifact(directory: Path) -> tuple[str, str]:
    """A model of the shape training writes: log1p → 50-iteration HGB, isotonic calibration on later rows."""
    import joblib
    import numpy as np
    import pandas as pd

    from conflict_core.features import ALL_FEATURES
    from conflict_core.registry import sha256_file
    from training.train import build_estimator, calibrate

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.random((4000, len(ALL_FEATURES))), columns=list(ALL_FEATURES))
    x["conflict"] = (x.iloc[:, 0] + x.iloc[:, 4] + rng.random(4000) > 1.6).astype(int)
    columns = list(ALL_FEATURES)
    config = {
        "model": "hgb",
        "learning_rate": 0.1,
        "max_leaf_nodes": 31,
        "max_iter": 50,
        "min_samples_leaf": 20,
        "l2_regularization": 0.0,
    }
    estimator = build_estimator(config, columns).fit(x[columns].iloc[:3000], x["conflict"].iloc[:3000])
    path = directory / "bench_model.joblib"
    joblib.dump(
        {
            "estimator": calibrate(estimator, x.iloc[3000:], columns),
            "feature_columns": columns,
            "version": "v_bench",
        },
        path,
    )
    return str(path), sha256_file(path)


def bench_config(path: Path, url: str, work: Path, artifact: str, sha: str) -> dict[str, Any]:
    """The Serve config at ``path`` pointed at the bench's store, spool and model."""
    import yaml

    config: dict[str, Any] = yaml.safe_load(path.read_text())
    config["applications"][0]["args"].update(database_url=url, log_spool_dir=str(work / "spool"))
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "ModelInference":
            d["user_config"].update(model_version="v_bench", artifact_path=artifact, artifact_sha256=sha)
    return config


def _bodies(path: Path, items_per_request: int, count: int = 500) -> None:
    rng = random.Random(1)
    with path.open("w") as out:
        for _ in range(count):
            items = [
                {
                    "user_id": f"user-{rng.randrange(300)}",
                    "device_id": "d",
                    "entity_type": "task",
                    "entity_id": f"task-{rng.randrange(2000)}",
                    "changed_fields": ["title", "status"],
                }
                for _ in range(items_per_request)
            ]
            out.write(json.dumps(items[0] if items_per_request == 1 else items) + "\n")


def _parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    out: dict[str, float] = {}
    for q in ("50", "90", "95", "99"):
        m = re.search(rf"^exact-p{q}-us (\d+)", text, re.M)
        if m:
            out[f"p{q}_ms"] = int(m.group(1)) / 1000
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["requests_per_s"] = float(m.group(1)) if m else 0.0
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["errors"] = float(errors.group(1) if errors else 0) + (sum(map(float, sock.groups())) if sock else 0)
    return out


def _wrk(url: str, lua: Path, concurrency: int, duration: float, rate: int | None = None) -> dict[str, float]:
    threads = min(2, concurrency)
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{int(duration)}s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return _parse_wrk(text)


def _wait_http(url: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    body = {"user_id": "u", "device_id": "d", "entity_type": "task", "entity_id": "t", "changed_fields": ["a"]}
    while time.monotonic() < deadline:
        try:
            headers = {"Authorization": f"Bearer {bench_token()}"}
            if httpx.post(url + "/v1/predict", json=body, headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer")


def _custom_metrics(timeout_s: float = 40) -> list[str]:
    """The ``conflict_*`` metric names on this node's Prometheus endpoint (Ray's metrics export port)."""
    import httpx
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    deadline, names = time.monotonic() + timeout_s, set()
    while time.monotonic() < deadline:  # replicas export every few seconds
        try:
            text = httpx.get(url, timeout=5).text
            names = set(re.findall(r"^(?:ray_)?(conflict_\w+?)(?:_bucket|_count|_sum)?\{", text, re.M))
        except httpx.HTTPError:
            pass
        if len(names) >= 6:  # conflict_fallbacks_total appears with the first fallback
            break
        time.sleep(2)
    print(f"custom metrics on {url}: {sorted(names)}", flush=True)
    return sorted(names)


_COMPONENTS = (  # the first one a process's command line contains names it
    "ConsoleIngress",
    "Ingress",
    "FeatureLookup",
    "ModelInference",
    "FallbackHeuristics",
    "ProxyActor",
    "ServeController",
    "serve_baseline",
    "haproxy",
    "raylet",
    "gcs_server",
    "wrk",
    "ServeReplica:ceiling",
    "postgres:",
    "dashboard",  # Ray's dashboard agents (also with the dashboard itself off)
    "log_monitor",
    "monitor.py",
    "bench-background-load",
)
WARMUP_S = 3
MODES = ("haproxy", "throughput", "default")


def _cpu_by_component() -> dict[str, float]:
    """CPU seconds (user + system) used so far by the processes of each component on this machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = next((c for c in _COMPONENTS if c in line), "other")
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return totals


def _scenarios(
    url: str, work: Path, concurrencies: list[int], duration: float, label: str, item_counts: tuple[int, ...] = (1, 50)
) -> list[dict[str, Any]]:
    """Each load point, with the CPU each component spent per request during it (profile by process).

    Single-item requests also get a 1-connection point first: the latency target is set there.
    """
    with _spinning(BACKGROUND_LOAD):
        return _measure_points(url, work, concurrencies, duration, label, item_counts)


BACKGROUND_LOAD = 0  # --background-load


@contextlib.contextmanager
def _spinning(count: int) -> Iterator[None]:
    """``count`` CPU-bound processes for the duration of the block, stopped by their PIDs."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass", "bench-background-load"]) for _ in range(count)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.wait()


def _measure_points(
    url: str, work: Path, concurrencies: list[int], duration: float, label: str, item_counts: tuple[int, ...]
) -> list[dict[str, Any]]:
    rows = []
    for items in item_counts:
        bodies = work / f"bodies_{items}.jsonl"
        lua = work / f"post_{items}.lua"
        lua.write_text(LUA % bodies)
        points = ([1] if items == 1 and 1 not in concurrencies else []) + concurrencies
        _wrk(url, lua, max(concurrencies[0], 2), WARMUP_S)  # not measured: first requests, lazy imports, caches
        for c in points:
            cpu_before = _cpu_by_component()
            r: dict[str, Any] = dict(_wrk(url, lua, c, duration))
            cpu_after = _cpu_by_component()
            requests = max(r["requests_per_s"] * duration, 1.0)
            cpu_ms = {
                k: round((v - cpu_before.get(k, 0.0)) * 1000 / requests, 3)
                for k, v in cpu_after.items()
                if v - cpu_before.get(k, 0.0) > 0.05 and k != "wrk"
            }
            r.update(
                target=label,
                items=items,
                concurrency=c,
                predictions_per_s=r["requests_per_s"] * items,
                cpu_ms_per_request=cpu_ms,
            )
            print(
                f"{label:18s} items={items:3d} c={c:3d}  req/s={r['requests_per_s']:8.1f}  "
                f"pred/s={r['predictions_per_s']:9.1f}  p50={r.get('p50_ms', 0):7.1f}ms  "
                f"p95={r.get('p95_ms', 0):7.1f}ms  p99={r.get('p99_ms', 0):7.1f}ms  errors={int(r['errors'])}",
                flush=True,
            )
            print(
                f"{'':18s} CPU ms/request: total {sum(v for k, v in cpu_ms.items() if k != 'other'):.2f}  "
                + "  ".join(f"{k} {v:.2f}" for k, v in sorted(cpu_ms.items(), key=lambda kv: -kv[1])),
                flush=True,
            )
            rows.append(r)
    return rows


P95_LIMIT_MS = 50.0


def _best(results: list[dict[str, Any]], target: str, items: int, key: str = "requests_per_s") -> dict[str, Any] | None:
    """The point of ``target`` with the most ``key`` among those with p95 under the limit and no errors."""
    rows = [
        r
        for r in results
        if r.get("target") == target
        and r.get("items") == items
        and r.get("p95_ms", 1e9) < P95_LIMIT_MS
        and not r.get("errors")
    ]
    return max(rows, key=lambda r: r[key], default=None)


def _verdicts(results: list[dict[str, Any]], stores: list[str]) -> list[dict[str, Any]]:
    """The issue's targets, per store, each with its measured value and MET / NOT MET."""
    ceiling = _best(results, "ceiling", 1)
    out: list[dict[str, Any]] = []

    def verdict(store: str, name: str, met: bool, detail: str) -> None:
        out.append({"store": store, "target": name, "met": met, "detail": detail})
        print(f"[{'MET' if met else 'NOT MET':7s}] {store:10s} {name}: {detail}", flush=True)

    def point(r: dict[str, Any] | None, key: str) -> str:
        if r is None:
            return "no point with p95 < 50 ms"
        return f"{r[key]:,.0f} at c={r['concurrency']} (p50 {r.get('p50_ms', 0):.1f}, p95 {r.get('p95_ms', 0):.1f} ms)"

    print(f"\n== verdicts (p95 limit {P95_LIMIT_MS:.0f} ms; a point with errors never counts)", flush=True)
    for store in stores:
        graph = f"graph/{store}"
        if not any(r.get("target") == graph for r in results):
            continue
        single = _best(results, graph, 1)
        verdict(
            store,
            "1 item: >= 1,000 req/s at p95 < 50 ms",
            single is not None and single["requests_per_s"] >= 1000,
            point(single, "requests_per_s"),
        )
        one = next((r for r in results if r.get("target") == graph and r["items"] == 1 and r["concurrency"] == 1), None)
        if one is not None:
            verdict(
                store,
                "1 item, 1 connection: p50 <= 5 ms and p99 <= 15 ms",
                one.get("p50_ms", 1e9) <= 5 and one.get("p99_ms", 1e9) <= 15 and not one.get("errors"),
                f"p50 {one.get('p50_ms', 0):.2f} ms, p99 {one.get('p99_ms', 0):.2f} ms "
                f"({one['requests_per_s']:.0f} req/s)",
            )
        fifty = _best(results, graph, 50, "predictions_per_s")
        if any(r.get("target") == graph and r["items"] == 50 for r in results):
            verdict(
                store,
                "50 items: >= 10,000 predictions/s at p95 < 50 ms",
                fifty is not None and fifty["predictions_per_s"] >= 10000,
                point(fifty, "predictions_per_s"),
            )
        if ceiling is not None:
            ratio = (single["requests_per_s"] if single else 0.0) / ceiling["requests_per_s"]
            verdict(
                store,
                "graph / trivial Serve app (1 item, best req/s at p95 < 50 ms) >= 0.45",
                ratio >= 0.45,
                f"{ratio:.2f} (graph {point(single, 'requests_per_s')}; ceiling {point(ceiling, 'requests_per_s')})",
            )
    return out


def _ratios(results: list[dict[str, Any]], stores: list[str], baselines: list[str]) -> None:
    """Graph / each baseline at the same load point, and PostgreSQL / SQLite for each target."""
    print("\n== ratios (requests/s at the same items and connections)", flush=True)
    index = {(r["target"], r["items"], r["concurrency"]): r for r in results if "items" in r}
    for (target, items, c), r in index.items():
        if not target.startswith("graph/"):
            continue
        store = target.split("/", 1)[1]
        parts = [
            f"{name} {r['requests_per_s'] / max(b['requests_per_s'], 1e-9):.2f}"
            for name in [*baselines, "ceiling"]
            if (b := index.get((f"{name}/{store}" if name != "ceiling" else "ceiling", items, c))) is not None
        ]
        if parts:
            print(f"graph/{store} items={items} c={c}: graph / " + ", graph / ".join(parts), flush=True)
    if len(stores) > 1:
        first, *others = stores
        for other in others:
            for name in ["graph", *baselines]:
                for items, key in ((1, "requests_per_s"), (50, "predictions_per_s")):
                    a, b = _best(results, f"{name}/{first}", items, key), _best(results, f"{name}/{other}", items, key)
                    if a is not None and b is not None:
                        print(
                            f"{name} items={items}: best within p95 < 50 ms on {other} / {first} = "
                            f"{b[key] / max(a[key], 1e-9):.2f} ({b[key]:,.0f} vs {a[key]:,.0f})",
                            flush=True,
                        )


def _ceiling_app() -> Any:
    """The trivial Serve app: one replica whose handler reads the body and returns a constant JSON answer."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(max_ongoing_requests=256, num_replicas=1, ray_actor_options={"num_cpus": 0.3})
    class Constant:
        async def __call__(self, request: Request) -> Response:
            await request.body()
            return Response(b'{"probability":0.5}', media_type="application/json")

    return Constant.bind()  # type: ignore[attr-defined]


BASELINES = {"naive": ("serve_baseline.py", 8100), "coalesced": ("serve_baseline_coalesced.py", 8101)}


def _postgres_database(admin_url: str) -> tuple[str, Any]:
    """A fresh database on the PostgreSQL server at ``admin_url``: its SQLAlchemy URL and a drop function."""
    import psycopg

    admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    name = f"bench_serve_{os.getpid()}"
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"{base}/{name}", drop


def _run_baseline(
    name: str, url: str, store: str, artifact: str, sha: str, work: Path, a: argparse.Namespace
) -> list[dict[str, Any]]:
    script, port = BASELINES[name]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / script), "--database-url", url, "--artifact", artifact]
        + ["--sha256", sha, "--port", str(port)]
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}")
        concurrencies = [int(c) for c in a.concurrency.split(",")]
        item_counts = tuple(int(i) for i in a.items.split(","))
        return _scenarios(f"http://127.0.0.1:{port}", work, concurrencies, a.duration, f"{name}/{store}", item_counts)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _burst(lua: Path, a: argparse.Namespace) -> dict[str, Any]:
    from ray import serve

    def replicas() -> dict[str, int]:
        app = serve.status().applications["conflict_predictor"]
        return {n: sum(d.replica_states.values()) for n, d in app.deployments.items()}

    before = replicas()
    low_c, high_c = (int(c) for c in a.burst_connections.split(","))
    low = _wrk("http://127.0.0.1:8000", lua, low_c, a.duration)
    peak = dict(before)
    high_run = subprocess.Popen(
        ["wrk", "-t", "2", "-c", str(high_c), "-d", f"{int(max(a.duration, 20))}s", "--latency", "-s", str(lua)]
        + ["http://127.0.0.1:8000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    while high_run.poll() is None:
        time.sleep(1)
        peak = {n: max(peak.get(n, 0), c) for n, c in replicas().items()}
    high = _parse_wrk(high_run.communicate()[0])
    after = replicas()
    print(
        f"burst: c={low_c} req/s={low['requests_per_s']:.0f} p95={low.get('p95_ms', 0):.1f}ms "
        f"errors={int(low['errors'])} -> c={high_c} req/s={high['requests_per_s']:.0f} "
        f"p95={high.get('p95_ms', 0):.1f}ms p99={high.get('p99_ms', 0):.1f}ms errors={int(high['errors'])}; "
        f"replicas {before} -> peak {peak}",
        flush=True,
    )
    return {
        "target": "burst",
        "connections": [low_c, high_c],
        "low": low,
        "high": high,
        "replicas_before": before,
        "replicas_peak": peak,
        "replicas_after": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default="haproxy")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="8,32,64")
    parser.add_argument("--stores", default="sqlite,postgresql", help="Stores to run against, in this order.")
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--baselines", default="naive,coalesced", help="In-process baselines to measure (naive, coalesced; '' none)."
    )
    parser.add_argument("--skip-baseline", action="store_true", help="Same as --baselines ''.")
    parser.add_argument("--skip-ceiling", action="store_true", help="Do not measure the trivial Serve app.")
    parser.add_argument("--burst", action="store_true", help="Also run the 10x load step and report replicas.")
    parser.add_argument("--burst-connections", default="8,80", help="Connections before,after the load step.")
    parser.add_argument("--items", default="1,50", help="Items per request to measure: 1, 50 or both.")
    parser.add_argument(
        "--config",
        default=str(REPO / "serve_config.yaml"),
        help="Serve config to deploy (default: the committed serve_config.yaml).",
    )
    parser.add_argument("--burst-only", action="store_true", help="Only the burst, from a freshly started graph.")
    parser.add_argument(
        "--background-load", type=int, default=0, metavar="K", help="CPU-bound processes spinning during the run."
    )
    a = parser.parse_args()
    concurrencies = [int(c) for c in a.concurrency.split(",")]
    item_counts = tuple(int(i) for i in a.items.split(","))
    stores = [s for s in a.stores.split(",") if s]
    baselines = [] if a.skip_baseline or a.burst_only else [b for b in a.baselines.split(",") if b]
    unknown = sorted(set(stores) - {"sqlite", "postgresql"}) + sorted(set(baselines) - set(BASELINES))
    if unknown:
        parser.error(f"unknown store or baseline {unknown}; stores: sqlite, postgresql; baselines: {sorted(BASELINES)}")
    os.environ.update(serve_env(a.mode))
    global BACKGROUND_LOAD
    BACKGROUND_LOAD = a.background_load

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    urls: dict[str, str] = {}
    cleanup: list[Any] = []
    results: list[dict[str, Any]] = []
    try:
        for store in stores:
            if store == "sqlite":
                urls[store] = f"sqlite:///{work / 'store.db'}"
            else:
                urls[store], drop = _postgres_database(a.postgres_admin_url)
                cleanup.append(drop)
            _seed_store(urls[store])
        print(
            f"machine: {os.cpu_count()} CPUs, {sys.platform}; mode {a.mode}; stores {urls}; "
            f"background load: {a.background_load} spinning processes",
            flush=True,
        )
        artifact, sha = _artifact(work)
        for items in (1, 50):
            _bodies(work / f"bodies_{items}.jsonl", items)
        for store in stores:
            for name in baselines:
                results += _run_baseline(name, urls[store], store, artifact, sha, work, a)
        results += _ray_targets(a, stores, urls, work, artifact, sha, concurrencies, item_counts)
    finally:
        for drop in cleanup:
            drop()

    verdicts = _verdicts(results, stores)
    _ratios(results, stores, baselines)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"serve_{a.mode}_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps([*results, {"target": "verdicts", "verdicts": verdicts}], indent=2))
    print(f"results: {path}")


def _ray_targets(
    a: argparse.Namespace,
    stores: list[str],
    urls: dict[str, str],
    work: Path,
    artifact: str,
    sha: str,
    concurrencies: list[int],
    item_counts: tuple[int, ...],
) -> list[dict[str, Any]]:
    """The graph on each store (a freshly deployed graph per request size), the burst, then the ceiling."""
    import ray
    from ray import serve

    from ray_control.serve_deploy import deploy_config

    results: list[dict[str, Any]] = []
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for store in stores:
            config = bench_config(Path(a.config), urls[store], work / store, artifact, sha)
            for items in () if a.burst_only else item_counts:
                deploy_config(config)
                _wait_http("http://127.0.0.1:8000", timeout_s=180)
                results += _scenarios(
                    "http://127.0.0.1:8000", work, concurrencies, a.duration, f"graph/{store}", (items,)
                )
                serve.delete("conflict_predictor")
            if a.burst and store == stores[0]:
                deploy_config(config)
                _wait_http("http://127.0.0.1:8000", timeout_s=180)
                (work / "post_1.lua").write_text(LUA % (work / "bodies_1.jsonl"))
                results.append(_burst(work / "post_1.lua", a))
                results.append({"target": "metrics", "custom_metrics": _custom_metrics()})
                serve.delete("conflict_predictor")
        if not a.skip_ceiling and not a.burst_only:
            serve.run(_ceiling_app(), name="ceiling", route_prefix="/")
            _wait_http("http://127.0.0.1:8000", timeout_s=120)
            results += _scenarios("http://127.0.0.1:8000", work, concurrencies, a.duration, "ceiling", (1,))
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


if __name__ == "__main__":
    main()
