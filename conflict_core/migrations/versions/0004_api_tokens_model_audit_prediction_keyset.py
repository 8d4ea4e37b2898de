"""api tokens, model audit trail, keyset indexes on the prediction log

Revision ID: api_tokens_console
Revises: 0003_long_identifiers
Create Date: 2026-12-01 00:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import conflict_core.store

revision: str = "api_tokens_console"
down_revision: str | None = "0003_long_identifiers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The console pages the prediction log newest first by (created_at, id), optionally filtered;
# these serve the unfiltered view and the two filters whose matches can be rare.
KEYSET_INDEXES = {
    "ix_prediction_log_keyset": ["created_at", "id"],
    "ix_prediction_log_version_keyset": ["model_version", "created_at", "id"],
    "ix_prediction_log_fallback_keyset": ["fallback_reason", "created_at", "id"],
}


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", conflict_core.store.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", conflict_core.store.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_index("ix_api_token_name", "api_token", ["name"])
    op.create_table(
        "model_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_version", sa.String(length=32), nullable=True),
        sa.Column("to_version", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_audit_at", "model_audit", ["at"])
    for name, columns in KEYSET_INDEXES.items():
        op.create_index(name, "prediction_log", columns)


def downgrade() -> None:
    for name in KEYSET_INDEXES:
        op.drop_index(name, table_name="prediction_log")
    op.drop_index("ix_model_audit_at", table_name="model_audit")
    op.drop_table("model_audit")
    op.drop_index("ix_api_token_name", table_name="api_token")
    op.drop_table("api_token")
