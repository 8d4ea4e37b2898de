"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 22:43:22.865532
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import conflict_core.store

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("firing", sa.Boolean(), nullable=False),
        sa.Column("since", conflict_core.store.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "job_lock",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("acquired_at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "job_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("started_at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", conflict_core.store.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("job_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_run_job"), ["job"], unique=False)

    op.create_table(
        "model_registry",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("algorithm", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("feature_columns", sa.JSON(), nullable=False),
        sa.Column("train_samples", sa.Integer(), nullable=False),
        sa.Column("holdout_samples", sa.Integer(), nullable=False),
        sa.Column("training_window_start", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("training_window_end", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("artifact_path", sa.Text(), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("report_path", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("gate_decision", sa.Text(), nullable=True),
        sa.Column("created_at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("activated_at", conflict_core.store.UTCDateTime(timezone=True), nullable=True),
        sa.Column("activated_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version"),
    )
    with op.batch_alter_table("model_registry", schema=None) as batch_op:
        batch_op.create_index(
            "uq_model_registry_one_active",
            ["is_active"],
            unique=True,
            sqlite_where=sa.text("is_active"),
            postgresql_where=sa.text("is_active"),
        )

    op.create_table(
        "monitoring_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ran_at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("updated_count", sa.Integer(), nullable=False),
        sa.Column("labelled_count", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("alerts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("monitoring_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_monitoring_run_ran_at"), ["ran_at"], unique=False)

    op.create_table(
        "prediction_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("prediction_id", sa.String(length=64), nullable=False),
        sa.Column("model_type", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("sync_id", sa.String(length=128), nullable=True),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("entity_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=128), nullable=False),
        sa.Column("predicted_conflict", sa.Boolean(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("risk_level", sa.String(length=16), nullable=False),
        sa.Column("recommendation", sa.String(length=32), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("fallback_reason", sa.String(length=64), nullable=True),
        sa.Column("created_at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actual_conflict_occurred", sa.Boolean(), nullable=True),
        sa.Column("prediction_correct", sa.Boolean(), nullable=True),
        sa.Column("outcome_status", sa.String(length=16), nullable=True),
        sa.Column("linked_event_id", sa.String(length=128), nullable=True),
        sa.Column("outcome_at", conflict_core.store.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prediction_id"),
    )
    with op.batch_alter_table("prediction_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prediction_log_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_prediction_log_sync_id"), ["sync_id"], unique=False)

    op.create_table(
        "sync_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("entity_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=128), nullable=False),
        sa.Column("changed_fields", sa.JSON(), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=True),
        sa.Column("server_version", sa.Integer(), nullable=True),
        sa.Column("synced_at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("conflict", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("sync_log", schema=None) as batch_op:
        batch_op.create_index("ix_sync_log_entity_time", ["entity_type", "entity_id", "synced_at"], unique=False)
        batch_op.create_index("ix_sync_log_synced_at", ["synced_at"], unique=False)
        batch_op.create_index("ix_sync_log_user_time", ["user_id", "synced_at"], unique=False)

    op.create_table(
        "conflict_resolution",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sync_id", sa.Integer(), nullable=False),
        sa.Column("resolution_type", sa.String(length=64), nullable=False),
        sa.Column("resolved_at", conflict_core.store.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sync_id"], ["sync_log.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sync_id"),
    )
    with op.batch_alter_table("conflict_resolution", schema=None) as batch_op:
        batch_op.create_index("ix_conflict_resolution_resolved_at", ["resolved_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("conflict_resolution", schema=None) as batch_op:
        batch_op.drop_index("ix_conflict_resolution_resolved_at")

    op.drop_table("conflict_resolution")
    with op.batch_alter_table("sync_log", schema=None) as batch_op:
        batch_op.drop_index("ix_sync_log_user_time")
        batch_op.drop_index("ix_sync_log_synced_at")
        batch_op.drop_index("ix_sync_log_entity_time")

    op.drop_table("sync_log")
    with op.batch_alter_table("prediction_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prediction_log_sync_id"))
        batch_op.drop_index(batch_op.f("ix_prediction_log_created_at"))

    op.drop_table("prediction_log")
    with op.batch_alter_table("monitoring_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitoring_run_ran_at"))

    op.drop_table("monitoring_run")
    with op.batch_alter_table("model_registry", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_model_registry_one_active",
            sqlite_where=sa.text("is_active"),
            postgresql_where=sa.text("is_active"),
        )

    op.drop_table("model_registry")
    with op.batch_alter_table("job_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_run_job"))

    op.drop_table("job_run")
    op.drop_table("job_lock")
    op.drop_table("alert_state")
