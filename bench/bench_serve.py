"""Serving benchmark: the Ray Serve graph vs an in-process Starlette baseline, driven by wrk.

Run from the repo root (it starts a local Ray, so hold the machine's Ray lock):

    flock /tmp/conflict-ray.lock .venv/bin/python bench/bench_serve.py
        [--mode haproxy|throughput|default]
        [--duration 10] [--concurrency 8,16,24,32,40,48,64] [--burst]

``--mode`` is the serve ingress mode, set in the environment before Ray starts exactly as
``conflictctl`` does (:func:`ray_control.instance.serve_env`): ``haproxy`` (the default;
Ray's HAProxy through the loopback launcher, throughput-optimized replicas), ``throughput``
(throughput-optimized behind Ray's Python proxy) or ``default`` (Ray's Python proxy). The load
goes to 127.0.0.1 only.
Each request size starts with a 3 s unmeasured warm-up at the first concurrency. Prints
requests/s, predictions/s and latency percentiles per scenario and writes a JSON
results file under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
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


def _seed_store(url: str, n_events: int = 20_000) -> None:
    import pandas as pd

    from conflict_core import db
    from conflict_core.events_io import insert_event_frame
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
            if httpx.post(url + "/v1/predict", json=body, timeout=5).status_code == 200:
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


_COMPONENTS = (
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
    """Each load point, with the CPU each component spent per request during it (profile by process)."""
    rows = []
    for items in item_counts:
        bodies = work / f"bodies_{items}.jsonl"
        lua = work / f"post_{items}.lua"
        lua.write_text(LUA % bodies)
        _wrk(url, lua, concurrencies[0], WARMUP_S)  # not measured: first requests, lazy imports, caches
        for c in concurrencies:
            cpu_before = _cpu_by_component()
            r = _wrk(url, lua, c, duration)
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
                f"{label:9s} items={items:3d} c={c:3d}  req/s={r['requests_per_s']:8.1f}  "
                f"pred/s={r['predictions_per_s']:9.1f}  p50={r.get('p50_ms', 0):7.1f}ms  "
                f"p95={r.get('p95_ms', 0):7.1f}ms  p99={r.get('p99_ms', 0):7.1f}ms  errors={int(r['errors'])}",
                flush=True,
            )
            print(
                f"{'':9s} CPU ms/request: total {sum(v for k, v in cpu_ms.items() if k != 'other'):.2f}  "
                + "  ".join(f"{k} {v:.2f}" for k, v in sorted(cpu_ms.items(), key=lambda kv: -kv[1])),
                flush=True,
            )
            rows.append(r)
    return rows


def _summary(results: list[dict[str, Any]]) -> None:
    """Where each target's rate is first reached (1,000 req/s single item, 10,000 predictions/s on 50 items)."""
    goals = {1: ("requests_per_s", 1000.0), 50: ("predictions_per_s", 10000.0)}
    for target in dict.fromkeys(r["target"] for r in results if "items" in r):
        for items, (key, goal) in goals.items():
            rows = [r for r in results if r.get("target") == target and r.get("items") == items]
            hit = next((r for r in rows if r[key] >= goal), None)
            print(
                f"{target}: items={items} {key} >= {goal:,.0f}: "
                + (
                    f"first at c={hit['concurrency']} ({hit[key]:,.0f}, p95 {hit.get('p95_ms', 0):.1f} ms)"
                    if hit
                    else f"not reached (best {max((r[key] for r in rows), default=0):,.0f})"
                ),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default="haproxy")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="8,32,64")
    parser.add_argument("--burst", action="store_true", help="Also run the 10x load step and report replicas.")
    parser.add_argument("--burst-connections", default="8,80", help="Connections before,after the load step.")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--items", default="1,50", help="Items per request to measure: 1, 50 or both.")
    parser.add_argument(
        "--config",
        default=str(REPO / "serve_config.yaml"),
        help="Serve config to deploy (default: the committed serve_config.yaml).",
    )
    parser.add_argument("--burst-only", action="store_true", help="Only the burst, from a freshly started graph.")
    a = parser.parse_args()
    concurrencies = [int(c) for c in a.concurrency.split(",")]
    item_counts = tuple(int(i) for i in a.items.split(","))
    os.environ.update(serve_env(a.mode))

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    url = f"sqlite:///{work / 'store.db'}"
    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}; store {url}; mode {a.mode}", flush=True)
    _seed_store(url)
    artifact, sha = _artifact(work)
    for items in (1, 50):
        _bodies(work / f"bodies_{items}.jsonl", items)
    results: list[dict[str, Any]] = []

    if a.burst_only:
        a.skip_baseline, a.burst = True, True
    if not a.skip_baseline:
        baseline = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / "serve_baseline.py"),
                "--database-url",
                url,
                "--artifact",
                artifact,
                "--sha256",
                sha,
                "--port",
                "8100",
            ]
        )
        try:
            _wait_http("http://127.0.0.1:8100")
            results += _scenarios("http://127.0.0.1:8100", work, concurrencies, a.duration, "baseline", item_counts)
        finally:
            baseline.send_signal(signal.SIGTERM)
            baseline.wait(timeout=30)

    import ray
    from ray import serve

    from ray_control.serve_deploy import deploy_config

    config = bench_config(Path(a.config), url, work, artifact, sha)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        deploy_config(config)
        _wait_http("http://127.0.0.1:8000", timeout_s=180)
        if a.burst_only:
            (work / "post_1.lua").write_text(LUA % (work / "bodies_1.jsonl"))
        else:
            results += _scenarios(
                "http://127.0.0.1:8000", work, concurrencies, a.duration, f"ray-{a.mode}", item_counts
            )
        if a.burst:
            lua = work / "post_1.lua"

            def replicas() -> dict[str, int]:
                app = serve.status().applications["conflict_predictor"]
                return {n: sum(d.replica_states.values()) for n, d in app.deployments.items()}

            before = replicas()
            low_c, high_c = (int(c) for c in a.burst_connections.split(","))
            low = _wrk("http://127.0.0.1:8000", lua, low_c, a.duration)
            peak = dict(before)
            high_run = subprocess.Popen(
                [
                    "wrk",
                    "-t",
                    "2",
                    "-c",
                    str(high_c),
                    "-d",
                    f"{int(max(a.duration, 20))}s",
                    "--latency",
                    "-s",
                    str(lua),
                    "http://127.0.0.1:8000",
                ],
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
            results.append(
                {
                    "target": "burst",
                    "connections": [low_c, high_c],
                    "low": low,
                    "high": high,
                    "replicas_before": before,
                    "replicas_peak": peak,
                    "replicas_after": after,
                }
            )
        results.append({"target": "metrics", "custom_metrics": _custom_metrics()})
    finally:
        serve.shutdown()
        ray.shutdown()

    base = {(r["items"], r["concurrency"]): r for r in results if r.get("target") == "baseline"}
    for r in results:
        if str(r.get("target", "")).startswith("ray-") and (r["items"], r["concurrency"]) in base:
            b = base[(r["items"], r["concurrency"])]
            print(
                f"ratio graph/baseline items={r['items']} c={r['concurrency']}: "
                f"{r['requests_per_s'] / max(b['requests_per_s'], 1e-9):.2f}"
            )
    _summary(results)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"serve_{a.mode}_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
