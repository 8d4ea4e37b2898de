"""The console's state changes: registry and rollout actions (audited) and Ray Job submissions.

A registry action is the same two steps ``conflictctl models activate | deactivate | rollback``
takes: the registry change in one transaction (here with its audit row in the same
transaction), then :func:`training.activation.publish_current` with the dashboard's applier,
which, under the live config's lock, writes what the registry now serves (the active model and
any rollout challenger) into the live Serve config and reconfigures the running app's replicas
in place.

A rollout action is the same two steps ``conflictctl models rollout VERSION --shadow |
--canary PERCENT | --promote | --abort`` takes: the :mod:`conflict_core.rollout` step (with its
``rollout_decision`` row, and here its audit row) in one transaction, then
:func:`training.publishing.publish_registry`, which writes the registry's champion and
challenger into the live Serve config and reconfigures the running app in place. Its
confirmation page previews the step by taking it in a transaction that is rolled back, so the
preview and any refusal are the step's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from conflict_core import audit, registry, rollout
from conflict_core.errors import ConflictPredictorError, ValidationError
from conflict_core.rollout import Serving
from conflict_core.settings import Settings
from conflict_core.store import ModelVersion

if TYPE_CHECKING:
    from training.publishing import Published

ACTIONS = ("activate", "deactivate", "rollback")
ROLLOUT_ACTIONS = tuple(rollout.STEPS)  # shadow, canary, promote, abort
CANARY_PERCENT = (1.0, 99.0)  # the console's bounds of a canary's share of users
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
        audit.record(session, actor=actor, action=action, from_version=from_version, to_version=to_version)
    from ray_control.serve_deploy import applier
    from training.activation import publish_current

    # Under the live config's lock, what the registry serves after the commit: the same publish
    # as conflictctl's, so concurrent activations from either leave config and registry agreeing.
    _, result = publish_current(settings, sessions, apply=applier(settings.dashboard_url))
    return ActionResult(action, from_version, to_version, _published(settings, result))


def _published(settings: Settings, result: Published) -> str:
    if result.serve_app_reconfigured:
        return "running app reconfigured"
    if result.serve_config_updated:
        return f"{settings.serve_config_path} updated; no running app to reconfigure"
    return "no serve config to update"


# --------------------------------------------------------------------------- rollout


def serving_text(serving: Serving) -> str:
    """``v1, challenger v2 in canary at 10%``: what ``serving`` answers with."""
    champion = serving.champion.version if serving.champion else "the heuristics"
    if serving.challenger is None:
        return f"{champion}, no challenger"
    share = f" at {serving.percent:g}%" if serving.mode == rollout.CANARY else ""
    return f"{champion}, challenger {serving.challenger.version} in {serving.mode}{share}"


@dataclass(frozen=True)
class RolloutChange:
    """One rollout step: the version's stage and what the app serves, before and after."""

    action: str
    version: str
    percent: float | None  # the canary share, for ``canary``
    stage_before: str
    stage_after: str
    before: Serving
    after: Serving

    def detail(self) -> str:
        """The audit trail's account of the step."""
        share = f" at {self.percent:g}%" if self.percent is not None else ""
        return f"{self.version}: {self.stage_before} → {self.stage_after}{share}"

    def command(self) -> str:
        """The ``conflictctl`` command that takes the same step."""
        flag = f"--canary {self.percent:g}" if self.percent is not None else f"--{self.action}"
        return f"conflictctl models rollout {self.version} {flag}"


@dataclass(frozen=True)
class RolloutResult:
    change: RolloutChange
    published: str

    def message(self) -> str:
        change = self.change
        return f"{change.action} {change.detail()}; serving {serving_text(change.after)} ({self.published})"


def parse_percent(text: object) -> float:
    """The canary share from the form's ``percent`` field, a number from 1 to 99."""
    raw = str(text or "").strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    low, high = CANARY_PERCENT
    if not low <= value <= high:  # NaN is refused too
        raise ValidationError(
            "percent", f"the canary's share of users must be a number from {low:g} to {high:g}, got {raw!r}"
        )
    return value


def offered_steps(row: ModelVersion, *, champion: ModelVersion | None, rival: ModelVersion | None) -> tuple[str, ...]:
    """The rollout buttons ``row`` gets: the steps the registry would take for it now, with
    abort only for the challenger (aborting a candidate is allowed, but stops no rollout)."""
    steps = rollout.open_steps(row, champion=champion, rival=rival)
    return tuple(step for step in steps if step != "abort" or row.is_challenger)


def _take_step(
    session: Session, action: str, version: str | None, percent: float | None, *, by: str, reason: str = ""
) -> RolloutChange:
    if action not in ROLLOUT_ACTIONS:
        raise ConflictPredictorError(f"unknown rollout action {action!r}; expected one of {', '.join(ROLLOUT_ACTIONS)}")
    if not version:
        raise ValidationError("version", f"{action} needs a model version")
    before = rollout.serving(session)
    stage_before = registry.get(session, version).rollout_stage
    if action == "canary":
        if percent is None:
            raise ValidationError("percent", "canary needs the share of users it answers")
        row = rollout.start_canary(session, version, percent, by=by, reason=reason)
    else:
        step = {"shadow": rollout.start_shadow, "promote": rollout.promote, "abort": rollout.abort}[action]
        row = step(session, version, by=by, reason=reason)
    share = percent if action == "canary" else None
    return RolloutChange(action, version, share, stage_before, row.rollout_stage, before, rollout.serving(session))


def rehearse(session: Session, action: str, version: str | None, percent: float | None, *, by: str) -> RolloutChange:
    """What the step would change now, for the confirmation page: it is taken and rolled back,
    so it is refused here with the very error the real step would raise."""
    try:
        return _take_step(session, action, version, percent, by=by)
    finally:
        session.rollback()


def perform_rollout(
    sessions: sessionmaker[Session],
    settings: Settings,
    action: str,
    version: str | None,
    percent: float | None = None,
    *,
    actor: str,
    reason: str = "",
) -> RolloutResult:
    """Take the rollout step as ``actor`` (recorded as a rollout decision and audited), then
    publish the registry's champion and challenger as ``conflictctl models rollout`` does."""
    with sessions.begin() as session:
        change = _take_step(session, action, version, percent, by=actor, reason=reason)
        audit.record(
            session,
            actor=actor,
            action=action,
            from_version=change.before.champion.version if change.before.champion else None,
            to_version=change.after.champion.version if change.after.champion else None,
            detail=change.detail(),
        )
    from ray_control.serve_deploy import applier
    from training.publishing import publish_registry

    _, result = publish_registry(settings, sessions, apply=applier(settings.dashboard_url))
    return RolloutResult(change, _published(settings, result))


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
