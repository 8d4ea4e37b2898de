"""The lifecycle scheduler: submits the outcome-tracking, retrain and retention Ray Jobs on cron.

Schedules come from one file (``configs/schedules.yaml``, UTC). Each firing submits a Ray
Job through :class:`ray.job_submission.JobSubmissionClient` at ``settings.dashboard_url``
and logs one line; the job itself runs on the cluster, so the scheduler never waits for it
and two firings never run in this process at once. Overlap between runs of a job is
prevented by the job's lock in the store, not here.

The submission id is ``<job>-<UTC minute>``; Ray refuses a second submission with the same
id, so two schedulers running by mistake submit each run once.
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator
from pydantic import ValidationError as PydanticValidationError

from conflict_core.errors import ConfigurationError
from conflict_core.settings import Settings
from ray_control.jobs import WORKING_DIR_EXCLUDES, runtime_env  # noqa: F401 (what a scheduled job runs with)

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_SCHEDULES = PROJECT_DIR / "configs" / "schedules.yaml"


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    module: str
    args: tuple[str, ...] = ()

    def trigger(self) -> CronTrigger:
        return CronTrigger.from_crontab(self.cron, timezone=dt.UTC)


@dataclass(frozen=True)
class ScheduleFile:
    schedules: tuple[Schedule, ...]
    misfire_grace_time_s: int = 3600
    coalesce: bool = True
    path: Path | None = field(default=None, compare=False)


class _JobEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str
    module: str
    args: tuple[str, ...] = ()

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            CronTrigger.from_crontab(value, timezone=dt.UTC)
        except ValueError as exc:
            raise ValueError(f"invalid cron {value!r}: {exc}") from exc
        return value


class _ScheduleFileModel(BaseModel):
    """The schedule file as written: UTC only, a non-empty ``jobs`` mapping, nothing unknown."""

    model_config = ConfigDict(extra="forbid")

    timezone: Literal["UTC"] = "UTC"
    misfire_grace_time_seconds: PositiveInt = 3600
    coalesce: bool = True
    jobs: dict[str, _JobEntry] = Field(min_length=1)


def _problem(error: Mapping[str, Any]) -> str:
    """One pydantic error in the schedule file's own terms."""
    loc = error["loc"]
    if loc and loc[0] == "jobs" and len(loc) >= 2 and error["type"] in {"missing", "extra_forbidden"}:
        return f"job {loc[1]!r} needs 'cron' and 'module' (and optional 'args') only"
    if loc and loc[0] == "jobs" and len(loc) <= 1:
        return "expected a non-empty 'jobs' mapping"
    if error["type"] == "extra_forbidden":
        return f"unknown keys [{loc[0]!r}]; expected {sorted(_ScheduleFileModel.model_fields)}"
    if loc == ("timezone",):
        return f"timezone must be UTC, got {error['input']!r}"
    where = ".".join(str(part) for part in loc)
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def load_schedules(path: Path = DEFAULT_SCHEDULES) -> ScheduleFile:
    """Read and validate the schedule file; every problem names the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigurationError(f"schedule file {path} does not exist") from exc
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"schedule file {path}: expected a mapping with a non-empty 'jobs' mapping")
    try:
        model = _ScheduleFileModel.model_validate(raw)
    except PydanticValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise ConfigurationError(f"schedule file {path}: {problems}") from None
    schedules = tuple(Schedule(name, job.cron, job.module, job.args) for name, job in model.jobs.items())
    return ScheduleFile(schedules, model.misfire_grace_time_seconds, model.coalesce, path)


def next_run_times(
    schedules: Sequence[Schedule], *, after: dt.datetime, count: int = 3
) -> dict[str, list[dt.datetime]]:
    """The next ``count`` firing times of each schedule strictly after ``after`` (UTC)."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    out: dict[str, list[dt.datetime]] = {}
    for schedule in schedules:
        trigger, times = schedule.trigger(), list[dt.datetime]()
        previous: dt.datetime | None = None
        moment = after + dt.timedelta(microseconds=1)
        while len(times) < count:
            fire = trigger.get_next_fire_time(previous, moment)
            if fire is None:
                break
            times.append(fire.astimezone(dt.UTC))
            previous, moment = fire, fire + dt.timedelta(microseconds=1)
        out[schedule.name] = times
    return out


# --------------------------------------------------------------------------- submission


def entrypoint(schedule: Schedule, *, python: str | None = None) -> str:
    """``<venv python> -m <module> <args>``: the scheduler's own interpreter, since a bare
    ``python`` on the cluster may not be the project's environment."""
    return shlex.join([python or sys.executable, "-m", schedule.module, *schedule.args])


def submission_id(schedule: Schedule, at: dt.datetime) -> str:
    return f"{schedule.name}-{at.astimezone(dt.UTC):%Y%m%dT%H%MZ}"


@dataclass
class JobSubmitter:
    """Submits a schedule's job to Ray; ``client_factory`` is replaceable for tests."""

    settings: Settings
    project_dir: Path = PROJECT_DIR
    python: str | None = None
    client_factory: Callable[[str], Any] | None = None
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    def _client(self) -> Any:
        if self.client_factory is not None:
            return self.client_factory(self.settings.dashboard_url)
        from ray_control.dashboard import job_client

        return job_client(self.settings.dashboard_url)

    def submit(self, schedule: Schedule) -> str | None:
        """Submit one run; logs one line either way and never raises (the scheduler keeps going)."""
        sid = submission_id(schedule, self.clock())
        command = entrypoint(schedule, python=self.python)
        try:
            returned = self._client().submit_job(
                entrypoint=command,
                submission_id=sid,
                runtime_env=runtime_env(self.settings, self.project_dir),
                metadata={"schedule": schedule.name, "cron": schedule.cron},
            )
        except Exception as exc:  # Ray raises plain RuntimeError/ConnectionError; keep scheduling
            log.error(
                "schedule %s: submission %s to %s failed: %s", schedule.name, sid, self.settings.dashboard_url, exc
            )
            return None
        log.info(
            "schedule %s: submitted Ray Job %s to %s: %s", schedule.name, returned, self.settings.dashboard_url, command
        )
        return str(returned)


def build_scheduler(schedule_file: ScheduleFile, submit: Callable[[Schedule], Any]) -> BlockingScheduler:
    scheduler = BlockingScheduler(
        timezone=dt.UTC,
        job_defaults={
            "misfire_grace_time": schedule_file.misfire_grace_time_s,
            "coalesce": schedule_file.coalesce,
            "max_instances": 1,
        },
    )
    for schedule in schedule_file.schedules:
        scheduler.add_job(
            submit,
            schedule.trigger(),
            args=[schedule],
            id=schedule.name,
            name=schedule.name,
            replace_existing=True,
            misfire_grace_time=schedule_file.misfire_grace_time_s,
            coalesce=schedule_file.coalesce,
            max_instances=1,
        )
    return scheduler


def run(settings: Settings, schedule_file: ScheduleFile, *, python: str | None = None) -> None:
    """Block, submitting each job on its schedule, until interrupted."""
    submitter = JobSubmitter(settings, python=python)
    scheduler = build_scheduler(schedule_file, submitter.submit)
    upcoming = next_run_times(schedule_file.schedules, after=dt.datetime.now(dt.UTC), count=1)
    for name, times in upcoming.items():
        log.info("schedule %s: next run %s", name, times[0].isoformat() if times else "never")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("scheduler stopped")
