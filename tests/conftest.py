"""Shared fixtures: migrated stores on SQLite and on PostgreSQL.

PostgreSQL runs at 127.0.0.1:5432 (user ``postgres``, trust auth) on every development
machine and in CI. Each test that asks for it gets a database of its own, dropped afterwards.
Outside CI an unreachable server skips those tests with the reason; in CI it fails them.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.orm import Session, sessionmaker

from conflict_core import db
from conflict_core.events.export import export_events
from conflict_core.events.store_writes import insert_event_frame
from conflict_core.features import FeatureParams
from conflict_core.simulator import SimulationConfig, simulate
from conflict_core.store import make_engine, make_session_factory
from training.extract import ExtractionWindow, extract_local, latest_event_time, partition_files

POSTGRES_ADMIN_URL = os.environ.get("CONFLICT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_admin():  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is required in CI: {exc}")
        pytest.skip(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {exc}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    admin = _postgres_admin()
    name = f"cp_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A freshly migrated, empty store: once on SQLite, once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    db.upgrade(url)
    return url


@pytest.fixture
def session_factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


# ---- a small simulated history, exported and extracted once per test session ----

END = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def simulated_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A SQLite store filled with 45 simulated days, and its date-partitioned export."""
    root = tmp_path_factory.mktemp("simulated")
    url = f"sqlite:///{root / 'store.db'}"
    db.upgrade(url)
    table = simulate(SimulationConfig(users=80, entities=600, days=45, seed=11, start=END - dt.timedelta(days=45)))
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        insert_event_frame(session, table)
    export_events(engine, root / "events")
    engine.dispose()
    return url, root / "events"


@pytest.fixture(scope="session")
def training_frame(
    simulated_store: tuple[str, Path],
) -> tuple[pd.DataFrame, ExtractionWindow, list[Path]]:
    _, events_dir = simulated_store
    window = ExtractionWindow.days_back(45, end=latest_event_time(events_dir), params=FeatureParams())
    files = partition_files(events_dir, window)
    return extract_local(files, window), window, files


# ---- API tokens ----

ALL_SCOPES = ("predict", "record", "read", "admin")


def grant(database_url: str, *scopes: str, name: str = "tests", token: str | None = None) -> str:
    """A token with ``scopes`` in the store at ``database_url``; returns it in clear.

    ``token`` fixes its value (a module-wide test credential); otherwise a new random one."""
    from conflict_core import tokens

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            if token is None:
                return tokens.create(session, name=name, scopes=scopes or ALL_SCOPES)[1]
            session.add(
                tokens.ApiToken(
                    name=name,
                    token_sha256=tokens.hash_token(token),
                    scopes=tokens.parse_scopes(scopes or ALL_SCOPES),
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
            return token
    finally:
        engine.dispose()
