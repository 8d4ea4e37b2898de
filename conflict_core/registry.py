"""The model registry: versions, checksums, the activation gate, activation and rollback.

Rows live in ``model_registry``; the database lets at most one row be active. An artifact is
a joblib file holding the fitted preprocessing and model as one object; it is never loaded
before its sha256 matches the registry row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conflict_core.errors import ArtifactFormatError, ArtifactIntegrityError, RegistryError
from conflict_core.store import ModelVersion, utcnow

HEURISTIC_VERSION = "heuristic_v1"


def new_version(now: dt.datetime | None = None) -> str:
    """A version name ``vYYYYMMDD_HHMMSS`` (UTC)."""
    return (now or utcnow()).astimezone(dt.UTC).strftime("v%Y%m%d_%H%M%S")


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_artifact(path: Path, expected_sha256: str) -> None:
    """Raise :class:`ArtifactIntegrityError` unless ``path`` exists and hashes to the expectation."""
    if not path.is_file():
        raise ArtifactIntegrityError(f"model artifact {path} does not exist")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"model artifact {path} has sha256 {actual}, the registry expects {expected_sha256}"
        )


def load_artifact(path: Path, expected_sha256: str) -> dict[str, Any]:
    """The artifact's contents, after verifying its checksum (never unpickles an unverified file).

    The bytes are read once, hashed and unpickled from memory, so a file replaced between the
    check and the load cannot slip through.
    """
    import io

    import joblib

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"model artifact {path} does not exist") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"model artifact {path} has sha256 {actual}, the registry expects {expected_sha256}"
        )
    artifact = joblib.load(io.BytesIO(data))
    if not isinstance(artifact, dict) or "estimator" not in artifact or "feature_columns" not in artifact:
        raise ArtifactFormatError(f"model artifact {path} is not a Conflict Predictor model")
    return artifact


@dataclass(frozen=True)
class GateDecision:
    activate: bool
    reason: str


def gate(
    *,
    candidate_roc_auc: float,
    active_roc_auc: float | None,
    min_relative_improvement: float,
    quality_floor: float,
    active_unscorable: str | None = None,
) -> GateDecision:
    """Whether a candidate replaces the active model.

    Both scores come from the same holdout. A candidate must clear ``quality_floor``; when a
    model is active it must also beat it by more than ``min_relative_improvement`` (relative
    ROC-AUC, e.g. 0.05 for 5%). An active model that cannot be scored (``active_unscorable``
    says why: its artifact fails verification, say, so the app already answers with the
    heuristics) is judged like no model, and the reason says so.
    """
    if candidate_roc_auc < quality_floor:
        return GateDecision(
            False, f"holdout ROC-AUC {candidate_roc_auc:.4f} is below the quality floor {quality_floor:.2f}"
        )
    if active_roc_auc is None:
        why = "first model" if active_unscorable is None else f"the active model cannot be scored ({active_unscorable})"
        return GateDecision(
            True, f"{why}; holdout ROC-AUC {candidate_roc_auc:.4f} clears the floor {quality_floor:.2f}"
        )
    improvement = (candidate_roc_auc - active_roc_auc) / active_roc_auc
    verdict = (
        f"holdout ROC-AUC {candidate_roc_auc:.4f} vs active {active_roc_auc:.4f} "
        f"({improvement:+.1%}, needs more than {min_relative_improvement:+.1%})"
    )
    return GateDecision(improvement > min_relative_improvement, verdict)


def register(session: Session, **fields: Any) -> ModelVersion:
    """Add a candidate version; ``fields`` are :class:`ModelVersion` columns."""
    row = ModelVersion(status="candidate", is_active=False, **fields)
    session.add(row)
    session.flush()
    return row


def get(session: Session, version: str) -> ModelVersion:
    row = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).one_or_none()
    if row is None:
        raise RegistryError(f"no model version {version!r} in the registry")
    return row


def active(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.is_active.is_(True))).one_or_none()


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())))


def activate(session: Session, version: str, *, by: str, now: dt.datetime | None = None) -> ModelVersion:
    """Make ``version`` the only active model, in the caller's transaction.

    Refuses an artifact whose checksum does not match. The partial unique index makes a
    concurrent activation fail rather than leave two active models.
    """
    row = get(session, version)
    verify_artifact(Path(row.artifact_path), row.artifact_sha256)
    if row.is_active:
        return row
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.is_active.is_(True))
        .values(is_active=False, status="retired", rollout_stage="retired")
    )
    row.is_active, row.status = True, "active"
    row.rollout_stage, row.is_challenger, row.canary_percent = "active", False, None
    row.activated_at, row.activated_by = now or utcnow(), by
    try:
        session.flush()
    except IntegrityError as exc:
        raise RegistryError(f"another activation of a model raced with {version}; try again") from exc
    return row


def deactivate(session: Session, version: str) -> ModelVersion:
    row = get(session, version)
    if not row.is_active:
        raise RegistryError(f"model version {version} is not active")
    row.is_active, row.status, row.rollout_stage = False, "retired", "retired"
    session.flush()
    return row


def previously_active(session: Session) -> ModelVersion | None:
    """The model that was active before the current one (what :func:`rollback` re-activates)."""
    current = active(session)
    query = select(ModelVersion).where(ModelVersion.activated_at.is_not(None), ModelVersion.is_active.is_(False))
    if current is not None and current.activated_at is not None:
        query = query.where(ModelVersion.activated_at < current.activated_at)
    return session.scalars(query.order_by(ModelVersion.activated_at.desc())).first()


def rollback(session: Session, *, by: str) -> ModelVersion:
    """Re-activate the model that was active before the current one."""
    previous = previously_active(session)
    if previous is None:
        raise RegistryError("no previously active model to roll back to")
    return activate(session, previous.version, by=by)
