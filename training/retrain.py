"""The weekly retrain as one library call: all steps, or no change to what is served.

Steps, in order (each a module-level function, so that tests can make any one fail):

1. ``export``    — sync events of the training window and its feature history to Parquet;
2. ``extract``   — features for the last ``training_days_back`` days (Ray Data, or locally);
3. ``train``     — sweep, calibrate, compare with the active model on the same holdout and
   let the registry's gate decide (:func:`training.pipeline.train_and_register`); the candidate
   is registered, and the gate's decision kept for the next step; the drift reference of the
   candidate is written next to its artifact;
4. ``publish``   — when the gate passed the candidate: activate it (or begin its rollout, see
   ``retrain_rollout_mode``) unless the active model changed since the gate, then point the live
   serve config at it and apply it to the running app. Until this step nothing that is served
   has changed: a run killed before it leaves registry, config and app as they were;
5. ``retention`` — delete training data older than the retention period.

A failure at any step but the last restores what the run changed: the model that was active
before is re-activated (or, if there was none, the candidate is deactivated) and
``serve_config.yaml`` gets its previous text back (and is re-applied). A failed
``retention``, housekeeping after the publish, is recorded in its step's summary and leaves
the published model in place. The restore recognises the run's own
activation by ``activated_by = "retrain#<job_run id>"``, so an activation made by someone
else in the meantime is left alone.

Two runs never overlap: the run holds the ``retrain`` job lock, refreshed between steps.
A run that crashed (killed, out of memory) leaves its ``job_run`` row at ``running`` with
what it must restore; the next run, once it holds the lock, finds such rows, restores and
marks them ``crashed``. A rerun is therefore always safe.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import locks, registry, rollout, serve_config
from conflict_core.atomic import write_text_atomically
from conflict_core.errors import ConflictPredictorError
from conflict_core.settings import Settings
from conflict_core.store import JobRun, ModelVersion, json_safe, session_scope, utcnow
from training import monitoring, retention
from training.publishing import Apply, publish_active_model, publish_registry

log = logging.getLogger(__name__)

JOB = "retrain"
LOCK_NAME = "retrain"
STEPS = ("export", "extract", "train", "publish", "retention")


class RetrainError(ConflictPredictorError):
    """A retrain step failed; the active model and the serve config were restored."""

    def __init__(self, message: str, summary: RetrainSummary):
        super().__init__(message)
        self.summary = summary


@dataclass
class RetrainSummary:
    run_id: int
    status: str  # running, succeeded, failed
    started_at: str
    data_time: str
    finished_at: str | None = None
    failed_step: str | None = None
    error: str | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    active_before: str | None = None
    version: str | None = None
    activated: bool = False
    rollout_stage: str | None = None  # shadow or canary (retrain_rollout_mode) instead of activated
    gate_reason: str | None = None
    holdout: dict[str, float] | None = None
    active_before_holdout: dict[str, float] | None = None
    report_path: str | None = None
    serve_config_updated: bool = False
    serve_app_reconfigured: bool = False
    restored: list[str] = field(default_factory=list)
    recovered_runs: list[int] = field(default_factory=list)
    restore: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> str:
        if self.status != "succeeded":
            return f"retrain #{self.run_id} {self.status} at {self.failed_step}: {self.error}"
        decision = (
            f"put in {self.rollout_stage}" if self.rollout_stage else "activated" if self.activated else "not activated"
        )
        return f"retrain #{self.run_id} succeeded: {self.version} {decision} ({self.gate_reason})"


# --------------------------------------------------------------------------- the steps


def export_step(settings: Settings, engine: Engine, *, now: dt.datetime) -> dict[str, Any]:
    """Export the events the extraction reads (training window plus feature history)."""
    from conflict_core.events.export import export_events
    from training.extract import ExtractionWindow

    window = ExtractionWindow.days_back(settings.training_days_back, end=now)
    result = export_events(engine, settings.events_dir, since=window.history_start, until=now)
    return {"rows": result.rows, "partitions": len(result.partitions), "out_dir": str(result.out_dir)}


def extract_step(settings: Settings, *, now: dt.datetime, use_ray: bool) -> dict[str, Any]:
    """Features of the last ``training_days_back`` days, written as a new training set."""
    from conflict_core.features import FeatureParams
    from training.extract import (
        ExtractionWindow,
        extract_local,
        extract_with_ray,
        partition_files,
        write_training_set,
    )

    params = FeatureParams()
    window = ExtractionWindow.days_back(settings.training_days_back, end=now, params=params)
    files = partition_files(settings.events_dir, window)
    frame = (
        extract_with_ray(files, window, params, task_cpus=settings.job_task_cpus)
        if use_ray
        else extract_local(files, window, params)
    )
    path, manifest = write_training_set(frame, settings.features_dir, window=window, params=params, files=files)
    return {"training_set": str(path), "rows": manifest.rows, "positives": manifest.positives}


def train_step(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    training_set: Path,
    sweep: str,
    num_samples: int | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Train, register and gate; the gate's decision is carried out by the publish step."""
    from training import pipeline
    from training.extract import load_training_set

    result = pipeline.train_and_register(
        settings,
        session_factory,
        training_set=training_set,
        sweep=sweep,
        num_samples=num_samples,
        progress=progress,
        rollout_mode=settings.retrain_rollout_mode,
        defer_decision=True,
    )
    frame, manifest = load_training_set(training_set)
    monitoring.write_reference(
        monitoring.reference_path(settings, result.version),
        monitoring.build_reference(monitoring.reference_rows(frame)),
        source=f"training set {manifest['snapshot']}",
    )
    return result.to_dict()


def publish_step(
    settings: Settings, *, version: str, artifact_path: str, artifact_sha256: str, apply: Apply | None
) -> dict[str, Any]:
    """Point the live serve config at the newly active model and apply it to the running app."""
    published = publish_active_model(
        settings, version=version, artifact_path=artifact_path, artifact_sha256=artifact_sha256, apply=apply
    )
    return asdict(published)


def retention_step(settings: Settings) -> dict[str, Any]:
    return retention.apply_retention(settings).to_dict()


# --------------------------------------------------------------------------- restore


def _tag(run_id: int) -> str:
    return f"{JOB}#{run_id}"


def _config_versions(path: Path) -> set[str]:
    """The champion's and the challenger's versions in the serve config at ``path``."""
    try:
        config = yaml.safe_load(path.read_text())
        user_config = serve_config.inference_user_config(config)
        challenger = user_config.get(serve_config.CHALLENGER_KEY) or {}
        return {v for v in (user_config.get("model_version"), challenger.get("model_version")) if v}
    except (OSError, yaml.YAMLError, ConflictPredictorError, AttributeError, TypeError):
        return set()


def undo_run(
    settings: Settings,
    session_factory: sessionmaker[Session],
    run_id: int,
    restore: dict[str, Any],
    apply: Apply | None = None,
) -> list[str]:
    """Put back the active model and the serve config a run changed; what was done, as notes."""
    tag = _tag(run_id)
    notes: list[str] = []
    with session_scope(session_factory) as session:
        ours = set(session.scalars(select(ModelVersion.version).where(ModelVersion.activated_by == tag)))
        challenger = rollout.challenger(session)
        if challenger is not None and challenger.rollout_by == tag:
            ours.add(challenger.version)
            rollout.abort(session, challenger.version, by=f"{tag}:restore", reason=f"retrain #{run_id} failed")
            notes.append(f"aborted the rollout of {challenger.version}")
        current = registry.active(session)
        if current is not None and current.activated_by == tag:
            before = restore.get("active_version")
            if before:
                registry.activate(session, before, by=f"{tag}:restore")
                notes.append(f"re-activated {before} in place of {current.version}")
            else:
                registry.deactivate(session, current.version)
                notes.append(f"deactivated {current.version}; no model was active before")
    path = settings.serve_config_path
    text = restore.get("serve_config_text")
    if text is not None and path.is_file() and path.read_text() != text and ours & _config_versions(path):
        write_text_atomically(path, text)
        notes.append(f"restored {path}")
        try:
            if apply is not None and apply(path):
                notes.append("re-applied the restored serve config to the running app")
        except ConflictPredictorError as exc:
            notes.append(f"could not re-apply the restored serve config: {exc}")
    for note in notes:
        log.warning("retrain #%d: %s", run_id, note)
    return notes


def recover_crashed_runs(
    settings: Settings, session_factory: sessionmaker[Session], *, now: dt.datetime, apply: Apply | None = None
) -> list[int]:
    """Restore after runs left ``running`` (only call while holding the retrain lock)."""
    with session_factory() as session:
        stale = list(session.scalars(select(JobRun).where(JobRun.job == JOB, JobRun.status == "running")))
    recovered: list[int] = []
    for run in stale:
        status, error = "crashed", "the run stopped without finishing; recovered by a later run"
        try:
            notes = undo_run(settings, session_factory, run.id, run.summary.get("restore", {}), apply)
        except Exception as exc:
            # Retrying forever would block every later retrain. What the crashed run left active
            # passed its gate; the new run's gate compares against it. Say so, and go on.
            log.exception("retrain #%d: could not restore what it changed; left as it is", run.id)
            status = "restore_failed"
            error = f"the run stopped without finishing, and restoring failed: {type(exc).__name__}: {exc}"
            notes = []
        with session_scope(session_factory) as session:
            row = session.get(JobRun, run.id)
            assert row is not None
            row.status, row.finished_at = status, now
            row.summary = {**row.summary, "status": status, "restored": notes, "error": error}
        recovered.append(run.id)
    return recovered


# --------------------------------------------------------------------------- the run


def _save(
    session_factory: sessionmaker[Session], summary: RetrainSummary, *, finished: dt.datetime | None = None
) -> None:
    with session_scope(session_factory) as session:
        row = session.get(JobRun, summary.run_id)
        assert row is not None
        row.status, row.finished_at = summary.status, finished
        row.summary = json_safe(summary.to_dict())


def retrain(
    settings: Settings,
    session_factory: sessionmaker[Session],
    engine: Engine,
    *,
    now: dt.datetime | None = None,
    use_ray: bool = True,
    sweep: str = "ray",
    num_samples: int | None = None,
    lock_ttl: dt.timedelta = dt.timedelta(hours=6),
    apply: Apply | None = None,
    progress: Callable[[str], None] = lambda message: log.info("%s", message),
) -> RetrainSummary:
    """Run every step; return the summary, or raise :class:`RetrainError` after restoring.

    ``now`` is the data time (the end of the training window; simulated in demos and tests);
    the lock and the recorded run times use the wall clock. ``apply`` puts a published or
    restored live serve config into the running app (none: the file alone changes).
    """
    data_time = now or utcnow()
    with locks.job_lock(session_factory, LOCK_NAME, ttl=lock_ttl) as lock:
        recovered = recover_crashed_runs(settings, session_factory, now=utcnow(), apply=apply)
        with session_scope(session_factory) as session:
            before = registry.active(session)
            restore = {
                "active_version": before.version if before else None,
                "serve_config_text": settings.serve_config_path.read_text()
                if settings.serve_config_path.is_file()
                else None,
            }
            row = JobRun(job=JOB, started_at=utcnow(), status="running", summary={"restore": restore})
            session.add(row)
            session.flush()
            run_id = row.id
        summary = RetrainSummary(
            run_id=run_id,
            status="running",
            started_at=row.started_at.isoformat(),
            data_time=data_time.isoformat(),
            active_before=restore["active_version"],
            recovered_runs=recovered,
            restore=restore,
        )
        _save(session_factory, summary)
        step = STEPS[0]
        try:
            for step in STEPS:
                started = time.monotonic()
                progress(f"retrain #{run_id}: {step}")
                outcome = _run_step(
                    step,
                    settings,
                    session_factory,
                    engine,
                    summary,
                    data_time=data_time,
                    use_ray=use_ray,
                    sweep=sweep,
                    num_samples=num_samples,
                    apply=apply,
                    progress=progress,
                )
                summary.steps[step] = {**outcome, "seconds": round(time.monotonic() - started, 2)}
                _save(session_factory, summary)
                lock = locks.refresh(session_factory, lock, ttl=lock_ttl)
        except Exception as exc:
            summary.status, summary.failed_step, summary.error = "failed", step, f"{type(exc).__name__}: {exc}"
            log.exception("retrain #%d failed at %s", run_id, step)
            try:
                summary.restored = undo_run(settings, session_factory, run_id, restore, apply)
            except Exception as restore_exc:  # the restore itself failed: say so loudly, keep the run "running"
                summary.restored = [
                    f"RESTORE FAILED ({type(restore_exc).__name__}: {restore_exc}); the next run retries it"
                ]
                log.exception("retrain #%d could not restore", run_id)
                summary.status = "running"
                _save(session_factory, summary)
                raise RetrainError(summary.headline(), summary) from exc
            _save(session_factory, summary, finished=utcnow())
            raise RetrainError(summary.headline(), summary) from exc
        summary.status = "succeeded"
        summary.finished_at = utcnow().isoformat()
        _save(session_factory, summary, finished=utcnow())
        progress(summary.headline())
        return summary


def _run_step(
    step: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
    engine: Engine,
    summary: RetrainSummary,
    *,
    data_time: dt.datetime,
    use_ray: bool,
    sweep: str,
    num_samples: int | None,
    apply: Apply | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    if step == "export":
        return export_step(settings, engine, now=data_time)
    if step == "extract":
        return extract_step(settings, now=data_time, use_ray=use_ray)
    if step == "train":
        result = train_step(
            settings,
            session_factory,
            training_set=Path(summary.steps["extract"]["training_set"]),
            sweep=sweep,
            num_samples=num_samples,
            progress=progress,
        )
        summary.version, summary.gate_reason = result["version"], result["gate_reason"]
        summary.holdout, summary.active_before_holdout = result["holdout"], result["active_before_holdout"]
        summary.report_path = result["report_path"]
        return {
            k: result.get(k)
            for k in (
                "version",
                "algorithm",
                "pending",
                "active_before",
                "gate_reason",
                "artifact_path",
                "artifact_sha256",
            )
        }
    if step == "publish":
        train = summary.steps["train"]
        if not train.get("pending"):
            return {"skipped": "the gate kept the active model"}
        from training.pipeline import carry_out_decision

        carried = carry_out_decision(
            settings,
            session_factory,
            train["version"],
            train["pending"],
            by=_tag(summary.run_id),
            reason=summary.gate_reason or "",
            active_at_gate=train.get("active_before"),
        )
        summary.activated, summary.rollout_stage = carried.activated, carried.rollout_stage
        if carried.skipped:
            log.warning("retrain #%d: %s", summary.run_id, carried.skipped)
            return {"skipped": carried.skipped}
        if summary.rollout_stage:  # the new version is the challenger beside the active model
            _, published = publish_registry(settings, session_factory, apply=apply)
            summary.serve_config_updated = published.serve_config_updated
            summary.serve_app_reconfigured = published.serve_app_reconfigured
            return asdict(published)
        outcome = publish_step(
            settings,
            version=train["version"],
            artifact_path=train["artifact_path"],
            artifact_sha256=train["artifact_sha256"],
            apply=apply,
        )
        summary.serve_config_updated = outcome["serve_config_updated"]
        summary.serve_app_reconfigured = outcome["serve_app_reconfigured"]
        return outcome
    if step == "retention":
        # Housekeeping after the model is published: a failure is reported, not undone by
        # restoring the model (the daily retention job and the next run try again).
        try:
            return retention_step(settings)
        except Exception as exc:
            log.exception("retrain #%d: retention failed; the run's model stands", summary.run_id)
            return {"failed": f"{type(exc).__name__}: {exc}"}
    raise ValueError(f"unknown retrain step {step!r}")
