"""Scoped API tokens: created, listed, revoked and verified against the store.

A token is ``cp_`` followed by 43 URL-safe characters (32 random bytes). Only its sha256 is
stored (``api_token.token_sha256``), so a copy of the store grants nothing; the clear token is
returned once, by :func:`create`. A token carries scopes:

* ``predict`` — ``POST /v1/predict``
* ``record`` — ``POST /v1/sync-events``
* ``read`` — ``GET /v1/models`` and the prediction-log status
* ``admin`` — the operator console

A high-entropy random secret needs no slow password hash: sha256 is preimage-resistant, and
the lookup by hash reveals nothing an attacker could use to guess a token byte by byte.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import JSON, Index, Integer, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from conflict_core.errors import ConflictPredictorError
from conflict_core.store import Base, utcnow

TOKEN_PREFIX = "cp_"


class Scope(enum.StrEnum):
    PREDICT = "predict"
    RECORD = "record"
    READ = "read"
    ADMIN = "admin"


class TokenError(ConflictPredictorError):
    """A token operation cannot be carried out (unknown token, bad scope, empty name)."""


class ApiToken(Base):
    """One API token: its hash, never the token itself."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]

    __table_args__ = (Index("ix_api_token_name", "name"),)


@dataclass(frozen=True)
class TokenInfo:
    """What a verification tells about a token: who it names, what it may do, whether it is revoked."""

    id: int
    name: str
    scopes: frozenset[str]
    revoked: bool

    def allows(self, scope: str) -> bool:
        return not self.revoked and scope in self.scopes


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_scopes(values: Iterable[str]) -> list[str]:
    """The scopes named in ``values``, validated, deduplicated and sorted."""
    known = {scope.value for scope in Scope}
    scopes = sorted({value.strip().lower() for value in values})
    unknown = [scope for scope in scopes if scope not in known]
    if unknown:
        raise TokenError(f"unknown scope {unknown[0]!r}; expected one of {', '.join(sorted(known))}")
    if not scopes:
        raise TokenError(f"a token needs at least one scope; expected some of {', '.join(sorted(known))}")
    return scopes


def create(
    session: Session, *, name: str, scopes: Iterable[str], now: dt.datetime | None = None
) -> tuple[ApiToken, str]:
    """Add a token; returns its row and the clear token (the only time it is available)."""
    name = name.strip()
    if not name:
        raise TokenError("a token needs a non-empty name (who or what uses it)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_sha256=hash_token(token), scopes=parse_scopes(scopes), created_at=now or utcnow())
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session, *, include_revoked: bool = True) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke(session: Session, ident: str, *, now: dt.datetime | None = None) -> list[ApiToken]:
    """Revoke the token with id ``ident``, or every unrevoked token named ``ident``."""
    query = select(ApiToken).where(ApiToken.revoked_at.is_(None))
    query = query.where(ApiToken.id == int(ident) if ident.isdigit() else ApiToken.name == ident)
    rows = list(session.scalars(query))
    if not rows:
        raise TokenError(f"no unrevoked token with id or name {ident!r} (see: conflictctl tokens list)")
    for row in rows:
        row.revoked_at = now or utcnow()
    session.flush()
    return rows


def verify(session: Session, token: str, *, touch: bool = True) -> TokenInfo | None:
    """What the store knows about ``token``, or ``None`` for a token it never issued.

    ``touch`` records the use in ``last_used_at`` (callers that cache the answer touch once
    per cache period, not per request).
    """
    if not token.startswith(TOKEN_PREFIX):
        return None
    digest = hash_token(token)
    row = session.scalars(select(ApiToken).where(ApiToken.token_sha256 == digest)).one_or_none()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    if touch and row.revoked_at is None:
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=utcnow()))
    return TokenInfo(id=row.id, name=row.name, scopes=frozenset(row.scopes), revoked=row.revoked_at is not None)
