"""The sync event import format, as one Arrow schema shared by simulator, import and export.

One row per entity change a device pushed. ``changed_fields`` is a list of field names
(a JSON array in CSV). Timestamps are UTC. ``resolved_at`` is when the conflict's
resolution was recorded; a conflict counts as known to the features only from then on.
"""

from __future__ import annotations

import pyarrow as pa

# Longest identifiers the store holds: event, user, device and entity ids can be file paths
# or URLs in real exports; entity types are names of kinds of things.
IDENTIFIER_MAX_LENGTH = 512
ENTITY_TYPE_MAX_LENGTH = 128
RESOLUTION_TYPE_MAX_LENGTH = 64

REQUIRED_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "device_id",
    "entity_type",
    "entity_id",
    "changed_fields",
    "synced_at",
    "conflict",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("resolution_type", "resolved_at", "base_version", "server_version")
ALL_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
# The columns stored in ``sync_log``; the resolution columns live in ``conflict_resolution``.
SYNC_LOG_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "device_id",
    "entity_type",
    "entity_id",
    "changed_fields",
    "synced_at",
    "conflict",
    "base_version",
    "server_version",
)

TIMESTAMP = pa.timestamp("us", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("entity_type", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("changed_fields", pa.list_(pa.string()), nullable=False),
        pa.field("synced_at", TIMESTAMP, nullable=False),
        pa.field("conflict", pa.bool_(), nullable=False),
        pa.field("resolution_type", pa.string()),
        pa.field("resolved_at", TIMESTAMP),
        pa.field("base_version", pa.int64()),
        pa.field("server_version", pa.int64()),
    ]
)

# Exported Parquet is partitioned hive-style by the UTC day of ``synced_at``.
PARTITION_COLUMN = "date"
