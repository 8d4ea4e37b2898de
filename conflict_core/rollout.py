"""Rollout stages of a model version, and the one place that moves them.

A version moves ``candidate → shadow → canary → active``, or to ``aborted`` from any stage
before ``active``; an active version that is rolled back is ``aborted`` too, and a version
replaced by another is ``retired``. Shadow may be skipped (candidate → canary), and a canary
may go back to shadow or change its share.

At most one version is the *challenger* (in shadow or canary) beside the one active
*champion*: both are partial unique indexes on ``model_registry``, so two concurrent rollouts
cannot both succeed, whatever the application checks first. A challenger needs a champion:
with no active model there is nothing to compare with, so the first model is activated
directly.

Every step writes a ``rollout_decision`` row (who, why, the numbers behind it) in the
caller's transaction. Nothing here touches Serve; :func:`serving` says what the app should
serve, and :mod:`conflict_core.serve_config` writes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conflict_core import registry
from conflict_core.errors import RolloutError
from conflict_core.store import ModelVersion, RolloutDecision, json_safe, utcnow

CANDIDATE, SHADOW, CANARY, ACTIVE, ABORTED, RETIRED = "candidate", "shadow", "canary", "active", "aborted", "retired"
STAGES = (CANDIDATE, SHADOW, CANARY, ACTIVE, ABORTED, RETIRED)
CHALLENGER_STAGES = (SHADOW, CANARY)
# Where each step may start from.
_ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    SHADOW: (CANDIDATE, CANARY),
    CANARY: (CANDIDATE, SHADOW, CANARY),
    ACTIVE: (SHADOW, CANARY),
    ABORTED: (CANDIDATE, SHADOW, CANARY),
}
# The operator's steps (``conflictctl models rollout VERSION --STEP``) and the stage each leads to.
STEPS = {"shadow": SHADOW, "canary": CANARY, "promote": ACTIVE, "abort": ABORTED}


@dataclass(frozen=True)
class ServedModel:
    version: str
    artifact_path: str
    artifact_sha256: str

    @classmethod
    def of(cls, row: ModelVersion) -> ServedModel:
        return cls(row.version, row.artifact_path, row.artifact_sha256)


@dataclass(frozen=True)
class Serving:
    """What the prediction app should serve: the champion and at most one challenger."""

    champion: ServedModel | None
    challenger: ServedModel | None = None
    mode: str | None = None  # "shadow" or "canary" when there is a challenger
    percent: float = 0.0  # canary share of users, 0..100

    def challenger_config(self) -> dict[str, Any] | None:
        """The challenger block of ``ModelInference``'s ``user_config`` (``None``: no challenger)."""
        if self.challenger is None:
            return None
        return {
            "model_version": self.challenger.version,
            "artifact_path": self.challenger.artifact_path,
            "artifact_sha256": self.challenger.artifact_sha256,
            "mode": self.mode,
            "percent": self.percent,
        }


def challenger(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.is_challenger.is_(True))).one_or_none()


def serving(session: Session) -> Serving:
    """The registry's champion and challenger, as the app should serve them."""
    champion, rival = registry.active(session), challenger(session)
    if rival is None or champion is None:
        return Serving(ServedModel.of(champion) if champion else None)
    percent = float(rival.canary_percent or 0.0) if rival.rollout_stage == CANARY else 0.0
    return Serving(ServedModel.of(champion), ServedModel.of(rival), rival.rollout_stage, percent)


def record(
    session: Session,
    *,
    version: str,
    action: str,
    reason: str,
    by: str,
    now: dt.datetime,
    champion_version: str | None,
    stage_before: str | None,
    stage_after: str | None,
    numbers: dict[str, Any] | None = None,
    automatic: bool = False,
) -> RolloutDecision:
    """Add one ``rollout_decision`` row (NaN in ``numbers`` becomes null)."""
    row = RolloutDecision(
        decided_at=now,
        version=version,
        champion_version=champion_version,
        action=action,
        stage_before=stage_before,
        stage_after=stage_after,
        automatic=automatic,
        decided_by=by,
        reason=reason,
        numbers=json_safe(numbers or {}),
    )
    session.add(row)
    session.flush()
    return row


def _stage_problem(row: ModelVersion, target: str) -> str | None:
    allowed = _ALLOWED_FROM[target]
    if row.rollout_stage in allowed:
        return None
    return (
        f"model version {row.version} is {row.rollout_stage}; moving it to {target} needs one of: {', '.join(allowed)}"
    )


def _challenger_problem(row: ModelVersion, champion: ModelVersion | None, other: ModelVersion | None) -> str | None:
    if champion is None:
        return f"no model is active, so {row.version} has no champion to be compared with; activate it instead"
    if other is not None and other.version != row.version:
        return f"{other.version} is already the challenger ({other.rollout_stage}); promote or abort it first"
    return None


def _check(row: ModelVersion, target: str) -> None:
    problem = _stage_problem(row, target)
    if problem:
        raise RolloutError(problem)


def open_steps(row: ModelVersion, *, champion: ModelVersion | None, rival: ModelVersion | None) -> tuple[str, ...]:
    """The steps of :data:`STEPS` that ``row`` may take now, given the registry's champion and
    challenger, by the rules the steps enforce (the artifact's checksum is verified only when
    a step is taken)."""
    return tuple(
        step
        for step, target in STEPS.items()
        if _stage_problem(row, target) is None
        and (target not in CHALLENGER_STAGES or _challenger_problem(row, champion, rival) is None)
    )


def _become_challenger(session: Session, row: ModelVersion) -> ModelVersion:
    """The champion ``row`` is compared with; refuses a second challenger or a missing champion."""
    champion = registry.active(session)
    problem = _challenger_problem(row, champion, challenger(session))
    if problem is not None or champion is None:  # a missing champion is a problem too
        raise RolloutError(problem)
    registry.verify_artifact(Path(row.artifact_path), row.artifact_sha256)
    row.is_challenger = True
    try:
        session.flush()
    except IntegrityError as exc:
        raise RolloutError(f"another rollout raced with {row.version}; try again") from exc
    return champion


def start_shadow(
    session: Session, version: str, *, by: str, now: dt.datetime | None = None, reason: str = "", **extra: Any
) -> ModelVersion:
    """Score ``version`` beside the champion on every request, logged but never returned."""
    now = now or utcnow()
    row = registry.get(session, version)
    _check(row, SHADOW)
    before = row.rollout_stage
    champion = _become_challenger(session, row)
    row.rollout_stage, row.canary_percent, row.rollout_by = SHADOW, None, by
    row.shadow_started_at = row.shadow_started_at or now
    record(
        session,
        version=version,
        action=SHADOW,
        reason=reason or f"{version} scored in shadow beside {champion.version}",
        by=by,
        now=now,
        champion_version=champion.version,
        stage_before=before,
        stage_after=SHADOW,
        **extra,
    )
    return row


def start_canary(
    session: Session,
    version: str,
    percent: float,
    *,
    by: str,
    now: dt.datetime | None = None,
    reason: str = "",
    **extra: Any,
) -> ModelVersion:
    """Answer ``percent`` % of users (sticky by user id) with ``version``, the rest with the champion."""
    if not 0 < percent < 100:
        raise RolloutError(f"canary percent must be above 0 and below 100, got {percent}; use promote for 100")
    now = now or utcnow()
    row = registry.get(session, version)
    _check(row, CANARY)
    before = row.rollout_stage
    champion = _become_challenger(session, row)
    row.rollout_stage, row.canary_percent, row.rollout_by = CANARY, float(percent), by
    row.canary_started_at = row.canary_started_at or now
    record(
        session,
        version=version,
        action=CANARY,
        reason=reason or f"{version} answers {percent:g}% of users; {champion.version} the rest",
        by=by,
        now=now,
        champion_version=champion.version,
        stage_before=before,
        stage_after=CANARY,
        numbers={"percent": percent, **extra.pop("numbers", {})},
        **extra,
    )
    return row


def promote(
    session: Session, version: str, *, by: str, now: dt.datetime | None = None, reason: str = "", **extra: Any
) -> ModelVersion:
    """Make the challenger ``version`` the active model; the champion is retired."""
    now = now or utcnow()
    row = registry.get(session, version)
    _check(row, ACTIVE)
    before = row.rollout_stage
    champion = registry.active(session)
    row.is_challenger = False
    session.flush()
    registry.activate(session, version, by=by, now=now)
    record(
        session,
        version=version,
        action="promote",
        reason=reason or f"{version} promoted from {before}",
        by=by,
        now=now,
        champion_version=champion.version if champion else None,
        stage_before=before,
        stage_after=ACTIVE,
        **extra,
    )
    return row


def abort(
    session: Session, version: str, *, by: str, now: dt.datetime | None = None, reason: str = "", **extra: Any
) -> ModelVersion:
    """Stop the rollout of ``version``; the champion alone answers again."""
    now = now or utcnow()
    row = registry.get(session, version)
    _check(row, ABORTED)
    before = row.rollout_stage
    champion = registry.active(session)
    why = reason or f"{version} aborted in {before}"
    row.rollout_stage, row.is_challenger, row.canary_percent = ABORTED, False, None
    row.aborted_at, row.abort_reason, row.rollout_by = now, why, by
    session.flush()
    record(
        session,
        version=version,
        action="abort",
        reason=why,
        by=by,
        now=now,
        champion_version=champion.version if champion else None,
        stage_before=before,
        stage_after=ABORTED,
        **extra,
    )
    return row


def rollback(
    session: Session, *, by: str, now: dt.datetime | None = None, reason: str = "", **extra: Any
) -> tuple[ModelVersion, ModelVersion]:
    """Re-activate the version that was active before the current one, which is aborted.

    A challenger in progress is aborted too: it was compared with the version rolled back.
    Returns ``(rolled back, restored)``.
    """
    now = now or utcnow()
    current = registry.active(session)
    if current is None:
        raise RolloutError("no model is active, so there is nothing to roll back")
    previous = previous_version(session, current)
    if previous is None:
        raise RolloutError(f"no version was active before {current.version} (and not aborted) to roll back to")
    rival = challenger(session)
    if rival is not None:
        abort(session, rival.version, by=by, now=now, reason=f"its champion {current.version} was rolled back")
    restored = registry.activate(session, previous.version, by=by, now=now)
    why = reason or f"{current.version} rolled back to {restored.version}"
    current.rollout_stage, current.aborted_at, current.abort_reason = ABORTED, now, why
    session.flush()
    record(
        session,
        version=current.version,
        action="rollback",
        reason=why,
        by=by,
        now=now,
        champion_version=restored.version,
        stage_before=ACTIVE,
        stage_after=ABORTED,
        **extra,
    )
    return current, restored


def previous_version(session: Session, current: ModelVersion) -> ModelVersion | None:
    """The version active most recently before ``current``, skipping aborted ones (a version that
    was rolled back is never restored by a later rollback)."""
    if current.activated_at is None:
        return None
    return session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.activated_at.is_not(None),
            ModelVersion.activated_at < current.activated_at,
            ModelVersion.is_active.is_(False),
            ModelVersion.rollout_stage != ABORTED,
        )
        .order_by(ModelVersion.activated_at.desc())
    ).first()


def decisions(session: Session, version: str | None = None, limit: int = 50) -> list[RolloutDecision]:
    """The latest rollout decisions, newest first (of one version when given)."""
    query = select(RolloutDecision).order_by(RolloutDecision.decided_at.desc(), RolloutDecision.id.desc())
    if version is not None:
        query = query.where(RolloutDecision.version == version)
    return list(session.scalars(query.limit(limit)))
