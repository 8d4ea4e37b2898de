"""CPU the deployed prediction app burns while nobody calls it, per component.

On a 2-core machine, what the replicas spend between requests (event-window refreshes,
metrics pushes, Ray's own loops) is CPU the requests do not get. Deploys the shipped
``serve_config.yaml`` on the serving benchmark's store and model, lets it settle, then samples
every process's CPU time over a quiet window and prints each component's share of one core:

    flock /tmp/conflict-ray.lock .venv/bin/python bench/idle_cpu.py [--settle-s 15] [--window-s 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import REPO, _artifact, _cpu_by_component, _seed_store, _wait_http, bench_config  # noqa: E402

from ray_control.instance import serve_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle-s", type=float, default=15.0, help="Wait after the app answers, unmeasured.")
    parser.add_argument("--window-s", type=float, default=30.0, help="The measured idle window.")
    parser.add_argument("--config", default=str(REPO / "serve_config.yaml"))
    parser.add_argument("--mode", default="haproxy", choices=("haproxy", "throughput", "default"))
    a = parser.parse_args()
    os.environ.update(serve_env(a.mode))

    import ray
    from ray import serve

    from ray_control.serve_deploy import deploy_config

    work = Path(tempfile.mkdtemp(prefix="idle_cpu_"))
    url = f"sqlite:///{work / 'store.db'}"
    _seed_store(url)
    artifact, sha = _artifact(work)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        deploy_config(bench_config(Path(a.config), url, work, artifact, sha))
        _wait_http("http://127.0.0.1:8000", timeout_s=180)
        time.sleep(a.settle_s)
        before, started = _cpu_by_component(), time.monotonic()
        time.sleep(a.window_s)
        after, elapsed = _cpu_by_component(), time.monotonic() - started
    finally:
        serve.shutdown()
        ray.shutdown()
    shares = {k: (v - before.get(k, 0.0)) / elapsed * 100 for k, v in after.items()}
    print(f"idle CPU over {elapsed:.0f} s ({os.cpu_count()} CPUs; % of one core; 'other' is everything else)")
    for name, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        if share >= 0.05:
            print(f"  {name:24s} {share:6.1f} %")
    print(f"  {'app and Ray (not other)':24s} {sum(v for k, v in shares.items() if k != 'other'):6.1f} %")


if __name__ == "__main__":
    main()
