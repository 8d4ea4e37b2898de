"""Named job locks in the store (``job_lock``), so that two runs of a job never overlap.

A lock has a holder and an expiry. Acquiring is one atomic statement each way round:

1. ``INSERT`` the row; the primary key refuses it when the name is already held.
2. Otherwise ``UPDATE ... WHERE name = :name AND expires_at < :now``: only an *expired*
   lock is taken over, and the database lets exactly one contender match that row.

A holder that crashes never releases its lock, so the expiry is what frees it; a long job
calls :func:`refresh` between steps to push the expiry forward while it is alive. Release
deletes the row only while the caller still holds it, so a holder whose lock expired and
was taken over cannot release the new holder's lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from conflict_core.errors import JobLockedError
from conflict_core.store import JobLock, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockHandle:
    name: str
    holder: str
    acquired_at: dt.datetime
    expires_at: dt.datetime


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


def default_holder() -> str:
    """``host:pid:random``, unique per acquisition and readable in the table."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:128]


def acquire(
    session_factory: sessionmaker[Session],
    name: str,
    *,
    ttl: dt.timedelta,
    holder: str | None = None,
    now: dt.datetime | None = None,
) -> LockHandle:
    """Take the lock ``name`` for ``ttl`` or raise :class:`JobLockedError` naming the holder."""
    if ttl <= dt.timedelta(0):
        raise ValueError(f"lock ttl must be positive, got {ttl}")
    holder = holder or default_holder()
    now = now or utcnow()
    expires = now + ttl
    try:
        with session_factory.begin() as session:
            session.add(JobLock(name=name, holder=holder, acquired_at=now, expires_at=expires))
        return LockHandle(name, holder, now, expires)
    except IntegrityError:
        pass  # held (or once held): fall through to the take-over of an expired lock
    with session_factory.begin() as session:
        taken = _rowcount(
            session.execute(
                update(JobLock)
                .where(JobLock.name == name, JobLock.expires_at < now)
                .values(holder=holder, acquired_at=now, expires_at=expires)
                .execution_options(synchronize_session=False)
            )
        )
    if taken == 1:
        log.warning("lock %s had expired; taken over by %s", name, holder)
        return LockHandle(name, holder, now, expires)
    current = holder_of(session_factory, name)
    detail = f"held by {current.holder} until {current.expires_at.isoformat()}" if current else "held by another run"
    raise JobLockedError(f"job lock {name!r} is {detail}; another run is in progress")


def refresh(
    session_factory: sessionmaker[Session], lock: LockHandle, *, ttl: dt.timedelta, now: dt.datetime | None = None
) -> LockHandle:
    """Push the expiry of a lock the caller holds to ``now + ttl``; raise if it was lost."""
    now = now or utcnow()
    with session_factory.begin() as session:
        updated = _rowcount(
            session.execute(
                update(JobLock)
                .where(JobLock.name == lock.name, JobLock.holder == lock.holder)
                .values(expires_at=now + ttl)
                .execution_options(synchronize_session=False)
            )
        )
    if updated != 1:
        raise JobLockedError(
            f"job lock {lock.name!r} is no longer held by {lock.holder}; it expired and was taken over"
        )
    return LockHandle(lock.name, lock.holder, lock.acquired_at, now + ttl)


def release(session_factory: sessionmaker[Session], lock: LockHandle) -> bool:
    """Delete the lock if the caller still holds it; ``False`` when it had been taken over."""
    with session_factory.begin() as session:
        deleted = _rowcount(
            session.execute(
                delete(JobLock)
                .where(JobLock.name == lock.name, JobLock.holder == lock.holder)
                .execution_options(synchronize_session=False)
            )
        )
    if deleted != 1:
        log.warning("lock %s was no longer held by %s at release", lock.name, lock.holder)
    return deleted == 1


def holder_of(session_factory: sessionmaker[Session], name: str) -> LockHandle | None:
    with session_factory() as session:
        row = session.scalars(select(JobLock).where(JobLock.name == name)).one_or_none()
        return LockHandle(row.name, row.holder, row.acquired_at, row.expires_at) if row else None


@contextmanager
def job_lock(
    session_factory: sessionmaker[Session],
    name: str,
    *,
    ttl: dt.timedelta,
    holder: str | None = None,
    now: dt.datetime | None = None,
) -> Iterator[LockHandle]:
    """Hold ``name`` for the body of the ``with`` block; released however the block ends."""
    lock = acquire(session_factory, name, ttl=ttl, holder=holder, now=now)
    try:
        yield lock
    finally:
        release(session_factory, lock)
