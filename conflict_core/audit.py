"""The audit trail of model registry actions taken by operators (activate, deactivate, rollback)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from conflict_core.store import Base, utcnow


class ModelAudit(Base):
    """One registry action: who (a token's name), when, what, from which version to which."""

    __tablename__ = "model_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    from_version: Mapped[str | None] = mapped_column(String(32))
    to_version: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    from_version: str | None,
    to_version: str | None,
    detail: str | None = None,
) -> ModelAudit:
    row = ModelAudit(
        at=utcnow(), actor=actor, action=action, from_version=from_version, to_version=to_version, detail=detail
    )
    session.add(row)
    session.flush()
    return row


def recent(session: Session, limit: int = 50) -> list[ModelAudit]:
    return list(session.scalars(select(ModelAudit).order_by(ModelAudit.at.desc(), ModelAudit.id.desc()).limit(limit)))
