from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import locks
from conflict_core.errors import JobLockedError

T0 = dt.datetime(2026, 3, 2, 3, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def test_second_acquire_fails_while_held(session_factory: sessionmaker[Session]) -> None:
    first = locks.acquire(session_factory, "retrain", ttl=HOUR, holder="a", now=T0)
    with pytest.raises(JobLockedError, match="held by a"):
        locks.acquire(session_factory, "retrain", ttl=HOUR, holder="b", now=T0 + dt.timedelta(minutes=59))
    assert locks.holder_of(session_factory, "retrain") == first


def test_other_names_are_independent(session_factory: sessionmaker[Session]) -> None:
    locks.acquire(session_factory, "retrain", ttl=HOUR, holder="a", now=T0)
    assert locks.acquire(session_factory, "retention", ttl=HOUR, holder="b", now=T0).holder == "b"


def test_expired_lock_of_a_crashed_holder_is_taken_over(session_factory: sessionmaker[Session]) -> None:
    crashed = locks.acquire(session_factory, "retrain", ttl=HOUR, holder="crashed", now=T0)
    taken = locks.acquire(session_factory, "retrain", ttl=HOUR, holder="next", now=T0 + HOUR + dt.timedelta(seconds=1))
    assert locks.holder_of(session_factory, "retrain") == taken
    # The crashed holder, should it wake up, can neither refresh nor release the new lock.
    with pytest.raises(JobLockedError):
        locks.refresh(session_factory, crashed, ttl=HOUR)
    assert locks.release(session_factory, crashed) is False
    assert locks.holder_of(session_factory, "retrain") == taken


def test_lock_is_released_after_an_exception(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError, match="boom"), locks.job_lock(session_factory, "retrain", ttl=HOUR, now=T0):
        assert locks.holder_of(session_factory, "retrain") is not None
        raise RuntimeError("boom")
    assert locks.holder_of(session_factory, "retrain") is None
    with locks.job_lock(session_factory, "retrain", ttl=HOUR, now=T0) as again:
        assert locks.holder_of(session_factory, "retrain") == again


def test_refresh_extends_the_expiry(session_factory: sessionmaker[Session]) -> None:
    lock = locks.acquire(session_factory, "retrain", ttl=HOUR, holder="a", now=T0)
    refreshed = locks.refresh(session_factory, lock, ttl=HOUR, now=T0 + dt.timedelta(minutes=50))
    assert refreshed.expires_at == T0 + dt.timedelta(minutes=110)
    with pytest.raises(JobLockedError):
        locks.acquire(session_factory, "retrain", ttl=HOUR, holder="b", now=T0 + dt.timedelta(minutes=90))
