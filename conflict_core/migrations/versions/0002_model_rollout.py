"""model rollout: per-version rollout stage, one challenger, rollout decisions, prediction variants

Revision ID: 0002_model_rollout
Revises: 0001
Create Date: 2026-12-01 00:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import conflict_core.store

revision: str = "0002_model_rollout"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = conflict_core.store.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("model_registry") as batch:
        batch.add_column(sa.Column("rollout_stage", sa.String(length=16), nullable=False, server_default="candidate"))
        batch.add_column(sa.Column("is_challenger", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("canary_percent", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rollout_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("shadow_started_at", _UTC, nullable=True))
        batch.add_column(sa.Column("canary_started_at", _UTC, nullable=True))
        batch.add_column(sa.Column("aborted_at", _UTC, nullable=True))
        batch.add_column(sa.Column("abort_reason", sa.Text(), nullable=True))
    # Existing versions: the active one is "active", the ones that were active once "retired".
    op.execute("UPDATE model_registry SET rollout_stage = 'active' WHERE is_active")
    op.execute("UPDATE model_registry SET rollout_stage = 'retired' WHERE status = 'retired'")
    op.create_index(
        "uq_model_registry_one_challenger",
        "model_registry",
        ["is_challenger"],
        unique=True,
        sqlite_where=sa.text("is_challenger"),
        postgresql_where=sa.text("is_challenger"),
    )

    op.create_table(
        "rollout_decision",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("decided_at", _UTC, nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("champion_version", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("stage_before", sa.String(length=16), nullable=True),
        sa.Column("stage_after", sa.String(length=16), nullable=True),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("decided_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollout_decision_decided_at", "rollout_decision", ["decided_at"])
    op.create_index("ix_rollout_decision_version", "rollout_decision", ["version"])

    with op.batch_alter_table("prediction_log") as batch:
        batch.add_column(sa.Column("variant", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("challenger_version", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("challenger_probability", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prediction_log") as batch:
        batch.drop_column("challenger_probability")
        batch.drop_column("challenger_version")
        batch.drop_column("variant")
    op.drop_index("ix_rollout_decision_version", table_name="rollout_decision")
    op.drop_index("ix_rollout_decision_decided_at", table_name="rollout_decision")
    op.drop_table("rollout_decision")
    op.drop_index("uq_model_registry_one_challenger", table_name="model_registry")
    with op.batch_alter_table("model_registry") as batch:
        for column in (
            "abort_reason",
            "aborted_at",
            "canary_started_at",
            "shadow_started_at",
            "rollout_by",
            "canary_percent",
            "is_challenger",
            "rollout_stage",
        ):
            batch.drop_column(column)
