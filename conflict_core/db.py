"""Schema management: Alembic migrations run from the package, URL from settings."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData

from conflict_core.errors import StoreError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def schema_metadata() -> MetaData:
    """Every table of the store: those of :mod:`conflict_core.store` and of the modules that
    declare their own on the same base (tokens, audit), which must be imported to register."""
    from conflict_core import audit, tokens  # noqa: F401  (their tables join Base.metadata)
    from conflict_core.store import Base

    return Base.metadata


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the store at ``database_url`` to ``revision`` (default: the newest)."""
    from sqlalchemy.exc import OperationalError

    try:
        command.upgrade(alembic_config(database_url), revision)
    except OperationalError as exc:
        raise StoreError(f"cannot migrate the store at {_redacted(database_url)}: {exc.orig}") from exc


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from conflict_core.store import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _redacted(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).render_as_string(hide_password=True)
