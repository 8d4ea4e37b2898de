"""Running the product's Ray Jobs: a local Ray instance with its dashboard, and job submission.

Entry points name this interpreter explicitly, because a job's shell may not have the
project's virtualenv on its ``PATH``.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conflict_core.errors import ConflictPredictorError


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

    A draining ingress replica waits 30 s by default for an external load balancer to notice;
    a local instance has none, so 2 s. Values already in the environment win.
    """
    modes: dict[str, dict[str, str]] = {
        "default": {},
        "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
        "haproxy": {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_launcher_path(),
        },
    }
    if mode not in modes:
        raise ValueError(f"serve ingress mode must be one of {sorted(modes)}, got {mode!r}")
    return {**modes[mode], "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"} if modes[mode] else {}


def haproxy_launcher_path() -> str:
    """The ``conflict-haproxy`` console script of this interpreter's environment (absolute)."""
    launcher = Path(sys.executable).parent / "conflict-haproxy"
    if not launcher.is_file():
        raise ConflictPredictorError(
            f"{launcher} is missing: install the project into this environment (scripts/setup.sh) "
            "or choose another serve ingress mode (CONFLICT_SERVE_INGRESS_MODE=throughput)"
        )
    return str(launcher)


class JobFailedError(ConflictPredictorError):
    """A submitted Ray Job ended in a state other than SUCCEEDED."""


@contextmanager
def local_ray(
    dashboard_port: int = 8265, num_cpus: int | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start a local Ray instance owned by this process; yields the dashboard URL, shuts down after."""
    import os

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
    )
    try:
        yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        ray.shutdown()


def module_entrypoint(module: str, args: Sequence[str]) -> str:
    return shlex.join([sys.executable, "-m", module, *args])


def submit_and_wait(
    dashboard_url: str,
    entrypoint: str,
    *,
    submission_id: str | None = None,
    echo: Callable[[str], None] = print,
    timeout_s: float = 3600,
    runtime_env: dict[str, Any] | None = None,
) -> str:
    """Submit a Ray Job, stream its log lines through ``echo``, and return its final log.

    Raises :class:`JobFailedError` when it fails, is stopped or outlives ``timeout_s``.
    """
    from ray.job_submission import JobStatus

    from ray_control.dashboard import job_client

    client = job_client(dashboard_url)
    job_id = client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env)
    echo(f"submitted Ray Job {job_id}: {entrypoint}")
    deadline = time.monotonic() + timeout_s
    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        for line in logs[printed:].splitlines():
            echo(f"  [{job_id}] {line}")
        printed = len(logs)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise JobFailedError(f"Ray Job {job_id} did not finish within {timeout_s:.0f} s and was stopped")
        time.sleep(1.0)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        raise JobFailedError(f"Ray Job {job_id} ended {status}: {info.message or 'see its log above'}")
    return logs


def job_summary(logs: str) -> dict[str, Any]:
    """The last JSON object a job entrypoint printed on lines of its own (its summary)."""
    import json

    decoder = json.JSONDecoder()
    position = len(logs)
    while (position := logs.rfind("{", 0, position)) >= 0:
        if position == 0 or logs[position - 1] == "\n":
            try:
                summary, _ = decoder.raw_decode(logs, position)
            except json.JSONDecodeError:
                pass
            else:
                if isinstance(summary, dict):
                    return summary
    raise JobFailedError("the job printed no summary")
