"""The lifecycle on a live local Ray: scheduled submissions and the weekly retrain as Ray Jobs (slow)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from sqlalchemy import select

from conflict_core import db, registry
from conflict_core.settings import Settings
from conflict_core.store import MonitoringRun, make_engine, make_session_factory
from conflictctl.scheduler import JobSubmitter, load_schedules
from ray_control.jobs import run_job
from tests.conftest import END

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _wait(client: JobSubmissionClient, job_id: str, timeout_s: float = 300) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(1)
    return status


def test_the_scheduler_submits_outcome_tracking_as_a_ray_job(dashboard: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    settings = Settings(
        database_url=url, data_dir=tmp_path, dashboard_url=dashboard, serve_config_path=tmp_path / "serve_config.yaml"
    )
    schedule = next(s for s in load_schedules().schedules if s.name == "track_outcomes")

    job_id = JobSubmitter(settings).submit(schedule)

    assert job_id is not None and job_id.startswith("track_outcomes-")
    client = JobSubmissionClient(dashboard)
    status = _wait(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert "outcomes: 0 updated" in logs  # the job ran against this store, from its env
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        assert session.scalars(select(MonitoringRun)).one().updated_count == 0
    engine.dispose()


def test_weekly_retrain_as_a_ray_job_activates_only_through_the_gate(
    dashboard: str, simulated_store: tuple[str, Path], tmp_path: Path
) -> None:
    source, _ = simulated_store
    shutil.copy(source.removeprefix("sqlite:///"), tmp_path / "store.db")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    serve_config = tmp_path / "serve_config.yaml"
    shutil.copy(REPO / "serve_config.yaml", serve_config)
    args = [
        "--database-url",
        url,
        "--data-dir",
        str(tmp_path),
        "--serve-config",
        str(serve_config),
        "--now",
        END.isoformat(),
        "--num-samples",
        "2",
    ]
    # Small CPU shares, as when the retrain runs beside a live Serve app on two cores.
    env = {"env_vars": {"CONFLICT_JOB_TASK_CPUS": "0.5"}}

    first = run_job(dashboard, "jobs.retrain", args, logs_dir=tmp_path / "logs", runtime_env=env).summary
    assert first["status"] == "succeeded" and first["activated"], first
    assert first["gate_reason"].startswith("first model")
    published = serve_config.read_text()
    assert f"model_version: {first['version']}" in published

    time.sleep(1.1)  # versions are named by the second
    second = run_job(dashboard, "jobs.retrain", args, logs_dir=tmp_path / "logs", runtime_env=env).summary
    assert second["status"] == "succeeded" and not second["activated"], second
    assert "vs active" in second["gate_reason"]  # the same data cannot beat the active model by 5%
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        assert registry.active(session).version == first["version"]
        assert registry.get(session, second["version"]).status == "candidate"
    engine.dispose()
    assert serve_config.read_text() == published  # the serve config still names the active model
