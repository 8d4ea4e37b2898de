"""identifiers up to 512 characters, entity types up to 128

Real sync exports use file paths and URLs as entity and event ids. Event, user, device and
entity ids (and the prediction log's copies of them) widen from VARCHAR(128) to
VARCHAR(512), entity types from VARCHAR(64) to VARCHAR(128). On PostgreSQL widening a
VARCHAR keeps the rows and the indexes as they are (no rewrite); on SQLite the batch mode
rebuilds each table with its indexes and constraints.

Revision ID: 0003_long_identifiers
Revises: 0002_model_rollout
Create Date: 2026-12-01 00:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_long_identifiers"
down_revision: str | None = "0002_model_rollout"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, nullable, old length, new length)
_WIDENED: tuple[tuple[str, str, bool, int, int], ...] = (
    ("sync_log", "event_id", False, 128, 512),
    ("sync_log", "user_id", False, 128, 512),
    ("sync_log", "device_id", False, 128, 512),
    ("sync_log", "entity_type", False, 64, 128),
    ("sync_log", "entity_id", False, 128, 512),
    ("prediction_log", "sync_id", True, 128, 512),
    ("prediction_log", "user_id", False, 128, 512),
    ("prediction_log", "device_id", False, 128, 512),
    ("prediction_log", "entity_type", False, 64, 128),
    ("prediction_log", "entity_id", False, 128, 512),
    ("prediction_log", "linked_event_id", True, 128, 512),
)


def _alter(*, widen: bool) -> None:
    tables = dict.fromkeys(table for table, *_ in _WIDENED)
    for table in tables:
        with op.batch_alter_table(table) as batch:
            for name, column, nullable, old, new in _WIDENED:
                if name != table:
                    continue
                batch.alter_column(
                    column,
                    existing_type=sa.String(length=old if widen else new),
                    type_=sa.String(length=new if widen else old),
                    existing_nullable=nullable,
                )


def upgrade() -> None:
    _alter(widen=True)


def downgrade() -> None:
    # Narrowing fails on PostgreSQL if a longer identifier is stored, which is the safe outcome.
    _alter(widen=False)
