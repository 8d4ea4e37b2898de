"""Sync-event ingest: ``POST /v1/sync-events`` bodies validated like an import file and stored.

The records of one request are checked as a whole (:func:`conflict_core.events.validation.
validate_records`, the import format's rules) and inserted in one transaction, events already
stored being skipped; a mistake answers 422 naming the record and column, a store that cannot
take them 503. The online feature lookup sees the new events at its next refresh.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pyarrow as pa
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import JSONResponse, Response

from conflict_core.errors import ImportFormatError
from conflict_core.store import session_scope
from serve_app.prediction_log import is_outage
from serve_app.schemas import RequestError, error_response, parse_event_records

log = logging.getLogger(__name__)


def validated_events(records: list[dict[str, Any]]) -> pa.Table:
    """The records as the store's event table; a mistake is a 422 naming ``events[i].column``."""
    from conflict_core.events.validation import validate_records

    try:
        return validate_records(records, source="request body")
    except ImportFormatError as exc:
        field = "events" if exc.row is None else f"events[{exc.row - 1}]"
        if exc.column is not None:
            field += f".{exc.column}"
        raise RequestError(422, field, exc.problem) from None


async def ingest_sync_events(payload: Any, sessions: sessionmaker[Session], *, max_events: int) -> Response:
    """Validate and store a parsed request body; answers how many were received, inserted and
    skipped as already stored."""
    from conflict_core.events.store_writes import insert_event_frame

    records = parse_event_records(payload, max_items=max_events)
    table = validated_events(records)

    def insert() -> tuple[int, int]:
        with session_scope(sessions) as session:
            return insert_event_frame(session, table)

    try:
        inserted, skipped = await asyncio.to_thread(insert)
    except Exception as exc:
        if not is_outage(exc):  # validation admits only what the store keeps: this is ours to fix
            log.exception("sync event insert refused")
            return error_response(503, "unavailable", "the sync events could not be stored; retry later")
        log.warning("sync event insert failed: %s", exc)
        return error_response(503, "store_unavailable", "the sync event store is unreachable; retry later")
    return JSONResponse({"received": len(records), "inserted": inserted, "skipped_existing": skipped})
