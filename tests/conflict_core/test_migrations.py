from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from conflict_core import db
from conflict_core.store import make_engine

LONG_ID = "https://files.example.com/" + "p/" * 243  # 512 characters
SYNCED_AT = dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    return url


def _insert_sync(url: str, event_id: str, entity_type: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO sync_log (event_id, user_id, device_id, entity_type, entity_id, changed_fields,"
                    " synced_at, conflict) VALUES (:e, :e, :e, :t, :e, '[]', :at, false)"
                ),
                {"e": event_id, "t": entity_type, "at": SYNCED_AT.replace(tzinfo=None)},
            )
    finally:
        engine.dispose()


def test_long_identifier_migration_keeps_rows_and_indexes_and_matches_the_models(empty_url: str) -> None:
    assert len(LONG_ID) == 512
    db.upgrade(empty_url, "0001")
    _insert_sync(empty_url, "short-1", "task")

    db.upgrade(empty_url)

    _insert_sync(empty_url, LONG_ID, "t" * 128)
    engine = make_engine(empty_url)
    try:
        with engine.connect() as connection:
            ids = connection.execute(text("SELECT event_id FROM sync_log ORDER BY id")).scalars().all()
            indexes = {index["name"] for index in inspect(connection).get_indexes("sync_log")}
            # The store's models and the migrated schema agree: nothing left for autogenerate.
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, db.schema_metadata())
    finally:
        engine.dispose()
    assert ids == ["short-1", LONG_ID]
    assert {"ix_sync_log_user_time", "ix_sync_log_entity_time", "ix_sync_log_synced_at"} <= indexes
    assert differences == []


@pytest.mark.postgres
def test_postgres_refuses_identifiers_beyond_512(postgres_url: str) -> None:
    from sqlalchemy.exc import DataError

    db.upgrade(postgres_url)
    with pytest.raises(DataError):
        _insert_sync(postgres_url, LONG_ID + "x", "task")
