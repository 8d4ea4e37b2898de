"""A Ray instance for this process: start a local one (with its dashboard), or join a cluster.

Also the environment that chooses Ray Serve's HTTP path, which must be set before Ray starts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conflict_core.errors import ConfigurationError


def serve_env(mode: str) -> dict[str, str]:
    """Environment that puts Ray Serve's HTTP path in ``mode``; it must be set before Ray starts.

    ``haproxy`` (the default): Ray's bundled HAProxy replaces the Python proxy and forwards to
    the ingress replica's own HTTP port (throughput-optimized mode underneath): several times
    the requests/s of the other modes here, see BENCHMARKS.md. Ray 2.60 writes HAProxy's stats
    and Prometheus listeners on every interface, so HAProxy is started through the
    ``conflict-haproxy`` launcher (:mod:`serve_app.haproxy_launcher`), which moves them onto
    127.0.0.1 (``CONFLICT_HAPROXY_BIND_HOST`` to choose another address). ``throughput``: Ray
    Serve's throughput-optimized mode — direct ingress behind the Python proxy, gRPC between
    replicas. ``default``: Ray Serve's Python proxy. In every mode the HTTP ports follow the
    serve config's ``http_options.host`` (127.0.0.1).

    In ``haproxy`` mode HAProxy also replays a request whose ingress replica closed the
    connection without an answer (``empty-response``, ``junk-response``: the replica died with
    the request in flight, e.g. with its node) on the other replica, where Ray's default retries
    connection failures only. Both POST routes are safe to replay: a prediction whose answer
    never reached the client is computed again (its first record, if the dead replica had
    already written it, stays in the log under a prediction id nobody received), and the event
    ingest skips events already stored. Measured on a 3-node cluster losing a worker node under
    load: 0, 1 and 0 failed requests in three runs, against 4, 0 and 4 without (RELIABILITY.md).

    A draining ingress replica waits 30 s by default for an external load balancer to notice;
    a local instance has none, so 2 s. Values already in the environment win.

    In every mode Ray's workers, the replicas and HAProxy included, run at niceness 0 instead
    of Ray's default 15: at 15 any ordinary process on the machine takes the CPU first, and two
    CPU-bound processes beside the app took single-item requests from 382 to 16 req/s at 8
    connections, 1 s p50; at 0 the app kept 201 req/s, p50 38 ms (BENCHMARKS.md). The jobs'
    tasks are Ray workers too, so they and the replicas still share the CPU as equals.
    """
    modes: dict[str, dict[str, str]] = {
        "default": {},
        "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
        "haproxy": {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_launcher_path(),
            "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
        },
    }
    if mode not in modes:
        raise ValueError(f"serve ingress mode must be one of {sorted(modes)}, got {mode!r}")
    draining = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"} if modes[mode] else {}
    return {**modes[mode], **draining, "RAY_worker_niceness": "0"}


def haproxy_launcher_path() -> str:
    """The ``conflict-haproxy`` console script of this interpreter's environment (absolute)."""
    launcher = Path(sys.executable).parent / "conflict-haproxy"
    if not launcher.is_file():
        raise ConfigurationError(
            f"{launcher} is missing: install the project into this environment (scripts/setup.sh) "
            "or choose another serve ingress mode (CONFLICT_SERVE_INGRESS_MODE=throughput)"
        )
    return str(launcher)


@contextmanager
def local_ray(
    dashboard_port: int = 8265, num_cpus: int | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start a local Ray instance owned by this process; yields the dashboard URL, shuts down after."""
    import ray

    for key, value in (env or {}).items():
        os.environ.setdefault(key, value)
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
        logging_level=logging.WARNING,  # Ray's own start-up chatter; its warnings still show
    )
    try:
        yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        ray.shutdown()


def connect(address: str | None) -> None:
    """Join the cluster this process was submitted to (``RAY_ADDRESS``), or ``address``, or
    start a local instance owned by this process (it stops with it). Idempotent."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or address
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
