from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from conflict_core.errors import ConfigurationError
from conflict_core.settings import Settings
from conflictctl import scheduler

UTC = dt.UTC
# Sunday 2026-03-01 23:59:30 UTC, so the weekly retrain is hours away and the day rolls over.
FIXED = dt.datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC)


@pytest.fixture
def schedules() -> scheduler.ScheduleFile:
    return scheduler.load_schedules(scheduler.DEFAULT_SCHEDULES)


def test_the_project_schedule_file_defines_the_three_jobs(schedules: scheduler.ScheduleFile) -> None:
    assert {s.name: s.module for s in schedules.schedules} == {
        "track_outcomes": "jobs.track_outcomes",
        "retrain": "jobs.retrain",
        "retention": "jobs.retention",
    }
    assert schedules.coalesce and schedules.misfire_grace_time_s > 0


def test_next_run_times_from_a_fixed_instant(schedules: scheduler.ScheduleFile) -> None:
    times = scheduler.next_run_times(schedules.schedules, after=FIXED, count=5)
    assert times["track_outcomes"] == [dt.datetime(2026, 3, 2, h, 0, tzinfo=UTC) for h in (0, 6, 12, 18)] + [
        dt.datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    ]
    assert times["retrain"] == [dt.datetime(2026, 3, 2 + 7 * k, 3, 0, tzinfo=UTC) for k in range(5)]
    assert all(t.weekday() == 0 for t in times["retrain"])  # Mondays
    assert times["retention"] == [dt.datetime(2026, 3, 2 + k, 4, 30, tzinfo=UTC) for k in range(5)]


def test_next_run_time_is_strictly_after_the_instant(schedules: scheduler.ScheduleFile) -> None:
    on_the_dot = dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    times = scheduler.next_run_times(schedules.schedules, after=on_the_dot, count=1)
    assert times["track_outcomes"] == [dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)]
    # The same instant expressed in another offset gives the same answer: schedules are UTC.
    elsewhere = on_the_dot.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert scheduler.next_run_times(schedules.schedules, after=elsewhere, count=1) == times


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("jobs: {}\n", "non-empty 'jobs'"),
        ("timezone: Europe/Paris\njobs: {a: {cron: '* * * * *', module: m}}\n", "must be UTC"),
        ("jobs: {a: {cron: '61 * * * *', module: m}}\n", "invalid cron"),
        ("jobs: {a: {cron: '* * * * *'}}\n", "needs 'cron' and 'module'"),
        ("jobs: {a: {cron: '* * * * *', module: m, every: 5}}\n", "needs 'cron' and 'module'"),
        ("retries: 3\njobs: {a: {cron: '* * * * *', module: m}}\n", "unknown keys"),
    ],
)
def test_bad_schedule_files_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=problem):
        scheduler.load_schedules(path)


def test_scheduler_registers_each_job_with_misfire_handling(schedules: scheduler.ScheduleFile) -> None:
    built = scheduler.build_scheduler(schedules, lambda s: None)
    jobs = {job.id: job for job in built.get_jobs()}
    assert set(jobs) == {"track_outcomes", "retrain", "retention"}
    for job in jobs.values():
        assert job.misfire_grace_time == schedules.misfire_grace_time_s and job.coalesce and job.max_instances == 1


class FakeClient:
    submitted: list[dict[str, Any]] = []

    def __init__(self, address: str) -> None:
        self.address = address

    def submit_job(self, **kwargs: Any) -> str:
        FakeClient.submitted.append({"address": self.address, **kwargs})
        return str(kwargs["submission_id"])


def test_submission_uses_the_venv_interpreter_and_absolute_settings(
    tmp_path: Path, schedules: scheduler.ScheduleFile, caplog: pytest.LogCaptureFixture
) -> None:
    FakeClient.submitted = []
    settings = Settings(database_url="sqlite:///data/x.db", data_dir=tmp_path / "data", dashboard_url="http://ray:8265")
    submitter = scheduler.JobSubmitter(
        settings, client_factory=FakeClient, clock=lambda: dt.datetime(2026, 3, 2, 3, 0, 7, tzinfo=UTC)
    )
    retrain = next(s for s in schedules.schedules if s.name == "retrain")
    with caplog.at_level(logging.INFO, logger="conflictctl.scheduler"):
        assert submitter.submit(retrain) == "retrain-20260302T0300Z"
    call = FakeClient.submitted[0]
    assert call["address"] == "http://ray:8265"
    assert call["entrypoint"].split() == [sys.executable, "-m", "jobs.retrain"]
    env = call["runtime_env"]
    assert env["working_dir"] == str(scheduler.PROJECT_DIR) and "data/" in env["excludes"]
    assert env["env_vars"]["DATABASE_URL"] == f"sqlite:///{Path('data/x.db').resolve()}"
    assert env["env_vars"]["CONFLICT_DATA_DIR"] == str((tmp_path / "data").resolve())
    assert [r.getMessage() for r in caplog.records if "submitted" in r.getMessage()] == [
        f"schedule retrain: submitted Ray Job retrain-20260302T0300Z to http://ray:8265: {call['entrypoint']}"
    ]


def test_the_job_sees_every_setting_the_scheduler_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduled retrain must train with the same task CPU share, gate and webhook as configured."""
    settings = Settings(
        database_url="sqlite:///data/x.db",
        data_dir=tmp_path / "data",
        job_task_cpus=0.25,
        gate_min_relative_improvement=0.02,
        alert_webhook_url="http://127.0.0.1:9/hook",
        risk_medium_threshold=0.3,
    )
    env_vars = scheduler.runtime_env(settings)["env_vars"]
    for key in [k for k in os.environ if k.startswith("CONFLICT_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(key)
    for key, value in env_vars.items():
        monkeypatch.setenv(key, value)
    in_the_job = Settings()
    assert in_the_job.model_dump() == {
        **settings.model_dump(),
        "database_url": f"sqlite:///{Path('data/x.db').resolve()}",
        "data_dir": (tmp_path / "data").resolve(),
        "serve_config_path": settings.serve_config_path.resolve(),
        "serve_config_template": settings.serve_config_template.resolve(),
    }


def test_a_failed_submission_is_logged_and_does_not_stop_the_scheduler(
    tmp_path: Path, schedules: scheduler.ScheduleFile, caplog: pytest.LogCaptureFixture
) -> None:
    class Down:
        def __init__(self, address: str) -> None:
            raise ConnectionError("dashboard unreachable")

    submitter = scheduler.JobSubmitter(Settings(data_dir=tmp_path), client_factory=Down)
    with caplog.at_level(logging.ERROR, logger="conflictctl.scheduler"):
        assert submitter.submit(schedules.schedules[0]) is None
    assert "dashboard unreachable" in caplog.text
