"""Submitting the product's Ray Jobs and collecting what they return.

:func:`run_job` submits ``python -m <module> ARGS --result-file F`` (naming this interpreter,
because a job's shell may not have the project's virtualenv on its ``PATH``), follows the
job's log with ``JobSubmissionClient.tail_job_logs`` into a file of its own (and through
``echo`` when given), and returns the summary the entrypoint wrote to its result file
(:func:`jobs._runtime.run`): a job's result is data, not text scraped from its log.
The result and log files live in ``logs_dir``, which every node must see (the data dir).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from conflict_core.errors import ConflictPredictorError
from conflict_core.settings import Settings
from ray_control.dashboard import job_client

FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
PROJECT_DIR = Path(__file__).resolve().parents[1]
# Never uploaded with the job's working directory: data, environments, history, caches.
WORKING_DIR_EXCLUDES = [".git/", ".venv/", "data/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/", ".mypy_cache/"]


class JobFailedError(ConflictPredictorError):
    """A submitted Ray Job ended in a state other than SUCCEEDED, or returned no result."""


def module_entrypoint(module: str, args: Sequence[str]) -> str:
    return shlex.join([sys.executable, "-m", module, *args])


def runtime_env(settings: Settings, project_dir: Path = PROJECT_DIR) -> dict[str, Any]:
    """The job's working directory (the project, without data) and the settings it must see.

    Every setting goes along as its ``CONFLICT_*`` variable (a scheduled retrain needs the
    task CPU share, the gate, the alert webhook ... exactly as the scheduler was configured),
    with paths made absolute because the job runs in an unpacked copy of the working directory.
    Secrets stay behind: no job needs one, and a job's runtime env is visible on the dashboard.
    """
    env_vars: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None or isinstance(value, SecretStr):
            continue
        if isinstance(value, Path):
            value = value.resolve()
        env_vars[f"CONFLICT_{name.upper()}"] = str(value)
    env_vars["CONFLICT_DATABASE_URL"] = env_vars["DATABASE_URL"] = settings.database_url  # absolute already
    return {"working_dir": str(project_dir), "excludes": WORKING_DIR_EXCLUDES, "env_vars": env_vars}


def new_submission_id(module: str) -> str:
    """``<module's last name>-<local time>-<6 hex>``: unique, and readable on the dashboard."""
    return f"{module.rsplit('.', 1)[-1]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def submit_job(
    dashboard_url: str,
    module: str,
    args: Sequence[str],
    *,
    submission_id: str | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> str:
    """Submit ``python -m module ARGS`` as a Ray Job without waiting for it; its submission id."""
    submission_id = (
        submission_id or f"{module.rsplit('.', 1)[-1]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    returned: str = job_client(dashboard_url).submit_job(
        entrypoint=module_entrypoint(module, args), submission_id=submission_id, runtime_env=runtime_env
    )
    return returned


@dataclass(frozen=True)
class JobResult:
    submission_id: str
    log_path: Path
    summary: dict[str, Any]


def run_job(
    dashboard_url: str,
    module: str,
    args: Sequence[str],
    *,
    logs_dir: Path,
    echo: Callable[[str], None] | None = None,
    runtime_env: dict[str, Any] | None = None,
    timeout_s: float = 3600,
) -> JobResult:
    """Submit ``module`` as a Ray Job, wait for it, and return its summary.

    Raises :class:`JobFailedError` when it fails, is stopped, outlives ``timeout_s`` (it is
    then stopped) or writes no result; the message names the log file.
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    submission_id = new_submission_id(module)
    result_path = logs_dir / f"{submission_id}.json"
    log_path = logs_dir / f"{submission_id}.log"
    client = job_client(dashboard_url)
    client.submit_job(
        entrypoint=module_entrypoint(module, [*args, "--result-file", str(result_path)]),
        submission_id=submission_id,
        runtime_env=runtime_env,
    )
    try:
        asyncio.run(asyncio.wait_for(_follow(client, submission_id, log_path, echo), timeout_s))
    except TimeoutError as exc:
        client.stop_job(submission_id)
        raise JobFailedError(
            f"Ray Job {submission_id} did not finish within {timeout_s:.0f} s and was stopped; log: {log_path}"
        ) from exc
    status = _final_status(client, submission_id)
    if status != "SUCCEEDED":
        message = client.get_job_info(submission_id).message
        raise JobFailedError(
            f"Ray Job {submission_id} ended {status}: {message or 'see its log'}; log: {log_path}\n" + _tail(log_path)
        )
    try:
        summary: dict[str, Any] = json.loads(result_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise JobFailedError(f"Ray Job {submission_id} wrote no readable result to {result_path}: {exc}") from exc
    return JobResult(submission_id, log_path, summary)


async def _follow(client: Any, submission_id: str, log_path: Path, echo: Callable[[str], None] | None) -> None:
    with log_path.open("w") as log:
        async for chunk in client.tail_job_logs(submission_id):
            log.write(chunk)
            log.flush()
            if echo is not None:
                for line in chunk.splitlines():
                    echo(f"  [{submission_id}] {line}")


def _final_status(client: Any, submission_id: str, wait_s: float = 30) -> str:
    """The job's status once final (the log stream may close a moment before it is)."""
    deadline = time.monotonic() + wait_s
    while (status := str(client.get_job_status(submission_id).value)) not in FINAL_STATES:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return status


def _tail(log_path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log_path.read_text().splitlines()[-lines:])
    except OSError:
        return ""
