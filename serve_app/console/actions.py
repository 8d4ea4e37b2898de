"""The console's state changes: registry actions (audited) and Ray Job submissions.

A registry action is the same two steps ``conflictctl models activate | deactivate | rollback``
takes: the registry change in one transaction (here with its audit row in the same
transaction), then :func:`training.publishing.publish_active_model` with the dashboard's
applier, which writes the model into the live Serve config and reconfigures the running app's
replicas in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from conflict_core import audit, registry
from conflict_core.errors import ConflictPredictorError
from conflict_core.settings import Settings

ACTIONS = ("activate", "deactivate", "rollback")
JOBS = {"retrain": "jobs.retrain", "track_outcomes": "jobs.track_outcomes"}


@dataclass(frozen=True)
class ActionResult:
    action: str
    from_version: str | None
    to_version: str | None
    published: str

    def message(self) -> str:
        what = {
            "activate": f"activated {self.to_version}",
            "deactivate": f"deactivated {self.from_version}; the heuristics answer until another activation",
            "rollback": f"rolled back from {self.from_version} to {self.to_version}",
        }[self.action]
        return f"{what} ({self.published})"


def preview(session: Session, action: str, version: str | None) -> tuple[str | None, str | None]:
    """The (from, to) versions ``action`` would produce now, for the confirmation page.

    Raises :class:`ConflictPredictorError` when the action cannot be taken."""
    current = registry.active(session)
    from_version = current.version if current else None
    if action == "activate":
        if not version:
            raise ConflictPredictorError("activate needs a version")
        row = registry.get(session, version)
        if row.is_active:
            raise ConflictPredictorError(f"{version} is already the active model")
        return from_version, version
    if action == "deactivate":
        if not version or from_version != version:
            raise ConflictPredictorError(f"{version!r} is not the active model (active: {from_version or 'none'})")
        return from_version, None
    if action == "rollback":
        previous = registry.previously_active(session)
        if previous is None:
            raise ConflictPredictorError("no previously active model to roll back to")
        return from_version, previous.version
    raise ConflictPredictorError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")


def perform(
    sessions: sessionmaker[Session], settings: Settings, action: str, version: str | None, *, actor: str
) -> ActionResult:
    """Carry out ``action`` as ``actor``, audit it, and publish the resulting active model."""
    if action not in ACTIONS:
        raise ConflictPredictorError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    with sessions.begin() as session:
        current = registry.active(session)
        from_version = current.version if current else None
        if action == "activate":
            if not version:
                raise ConflictPredictorError("activate needs a version")
            row = registry.activate(session, version, by=actor)
        elif action == "deactivate":
            if not version:
                raise ConflictPredictorError("deactivate needs a version")
            registry.deactivate(session, version)
            row = None
        else:
            row = registry.rollback(session, by=actor)
        to_version = row.version if row else None
        published_model = (row.version, row.artifact_path, row.artifact_sha256) if row else (None, None, None)
        audit.record(session, actor=actor, action=action, from_version=from_version, to_version=to_version)
    from ray_control.serve_deploy import applier
    from training.publishing import publish_active_model

    result = publish_active_model(
        settings,
        version=published_model[0],
        artifact_path=published_model[1],
        artifact_sha256=published_model[2],
        apply=applier(settings.dashboard_url),
    )
    published = (
        "running app reconfigured"
        if result.serve_app_reconfigured
        else f"{settings.serve_config_path} updated; no running app to reconfigure"
        if result.serve_config_updated
        else "no serve config to update"
    )
    return ActionResult(action, from_version, to_version, published)


def submit_job(settings: Settings, job: str) -> str:
    """Submit ``job`` (``retrain`` or ``track_outcomes``) as a Ray Job with the settings a
    scheduled run gets (:func:`ray_control.jobs.runtime_env`), without waiting; its id."""
    from ray_control.jobs import runtime_env
    from ray_control.jobs import submit_job as submit

    if job not in JOBS:
        raise ConflictPredictorError(f"unknown job {job!r}; expected one of {', '.join(JOBS)}")
    try:
        return submit(settings.dashboard_url, JOBS[job], [], runtime_env=runtime_env(settings))
    except (ConnectionError, RuntimeError, OSError) as exc:  # Ray raises these plain types
        raise ConflictPredictorError(f"the Ray dashboard at {settings.dashboard_url} refused the job: {exc}") from exc
