"""A serve config under 50-item load, with how the graph batched it: for tuning runs.

Run from the repo root (it starts a local Ray, so hold the machine's Ray lock):

    flock /tmp/conflict-ray.lock .venv/bin/python bench/bench_batches.py [CONFIG] [--concurrency 8,12]

Deploys CONFIG (default: the committed ``serve_config.yaml``) in HAProxy mode on the serving
benchmark's store and model, drives 50-item requests with wrk for 10 s per concurrency, and
prints requests/s and latency, then the mean of each custom histogram over that point read
from Ray's Prometheus endpoint: items per ``FeatureLookup`` and ``ModelInference`` batch,
feature-lookup and inference latency per batch. These means are approximate: Ray 2.60
exports a histogram's ``_sum`` from the midpoints of the buckets its observations fell in
(a batch of one request counts as 0.5 in ``conflict_batch_size``, whose first bucket is
(0, 1]), so read them as the bucket range they point at, not as exact values.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serve  # noqa: E402  (the serving benchmark's store, model, bodies and wrk driver)

from ray_control.instance import serve_env  # noqa: E402

URL = "http://127.0.0.1:8000"
_SERIES = re.compile(r"^(?:ray_)?(conflict_\w+?)_(sum|count)\{([^}]*)\} ([0-9.e+]+)", re.M)


def _histograms(metrics_url: str) -> dict[tuple[str, str], dict[str, float]]:
    """Sum and count of every ``conflict_*`` histogram, by metric and deployment tag."""
    import httpx

    out: dict[tuple[str, str], dict[str, float]] = {}
    for name, kind, tags, value in _SERIES.findall(httpx.get(metrics_url, timeout=10).text):
        deployment = re.search(r'deployment="(\w+)"', tags)
        totals = out.setdefault((name, deployment[1] if deployment else ""), {})
        totals[kind] = totals.get(kind, 0.0) + float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(bench_serve.REPO / "serve_config.yaml"))
    parser.add_argument("--concurrency", default="8,12")
    parser.add_argument("--duration", type=float, default=10.0)
    a = parser.parse_args()
    os.environ.update(serve_env("haproxy"))

    import ray

    from ray_control.serve_deploy import deploy_config

    work = Path(tempfile.mkdtemp(prefix="bench_batches_"))
    url = f"sqlite:///{work / 'store.db'}"
    bench_serve._seed_store(url)
    artifact, sha = bench_serve._artifact(work)
    bench_serve._bodies(work / "bodies_50.jsonl", 50)
    lua = work / "post_50.lua"
    lua.write_text(bench_serve.LUA % (work / "bodies_50.jsonl"))
    config = bench_serve.bench_config(Path(a.config), url, work, artifact, sha)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        deploy_config(config)
        bench_serve._wait_http(URL, timeout_s=180)
        node = next(n for n in ray.nodes() if n["Alive"])
        metrics_url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
        bench_serve._wrk(URL, lua, 8, bench_serve.WARMUP_S)  # not measured
        time.sleep(12)  # replicas export their metrics every few seconds
        before = _histograms(metrics_url)
        for connections in (int(c) for c in a.concurrency.split(",")):
            r = bench_serve._wrk(URL, lua, connections, a.duration)
            print(
                f"c={connections:>3}  req/s={r['requests_per_s']:7.1f}  predictions/s={50 * r['requests_per_s']:8.0f}"
                f"  p50={r['p50_ms']:6.1f}ms  p95={r['p95_ms']:6.1f}ms",
                flush=True,
            )
            time.sleep(12)
            after = _histograms(metrics_url)
            for key in sorted(after):
                count = after[key].get("count", 0.0) - before.get(key, {}).get("count", 0.0)
                total = after[key].get("sum", 0.0) - before.get(key, {}).get("sum", 0.0)
                if count:
                    print(f"      {key[0]:<36} {key[1]:<15} mean ~{total / count:8.2f} over {count:.0f}", flush=True)
            before = after
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
