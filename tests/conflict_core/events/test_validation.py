from __future__ import annotations

from typing import Any

import pytest

from conflict_core.errors import ImportFormatError
from conflict_core.events.validation import validate_records
from conflict_core.schema import EVENT_SCHEMA
from tests.conflict_core.events.event_files import (
    _event,
)

# --------------------------------------------------------------------------- JSON records


def test_validate_records_matches_file_validation() -> None:
    records = [{**_event(n), "synced_at": _event(n)["synced_at"].isoformat(), "resolved_at": None} for n in range(3)]
    records[0]["resolution_type"] = None
    table = validate_records(records, source="POST /v1/sync-events")
    assert table.schema == EVENT_SCHEMA
    assert table.column("changed_fields").to_pylist()[1] == ["title", "status"]

    records[2]["conflict"] = "perhaps"
    with pytest.raises(ImportFormatError) as caught:
        validate_records(records, source="POST /v1/sync-events")
    assert (caught.value.path, caught.value.row, caught.value.column) == (
        "POST /v1/sync-events",
        3,
        "conflict",
    )


def test_validate_records_refuses_non_string_ids() -> None:
    with pytest.raises(ImportFormatError) as caught:
        validate_records([_event(0, user_id=42)], source="body")
    assert (caught.value.row, caught.value.column) == (1, "user_id")


@pytest.mark.parametrize(("column", "value"), [("entity_id", "t\ud800"), ("changed_fields", ["title", "\udfff"])])
def test_validate_records_refuses_text_that_is_not_unicode(column: str, value: Any) -> None:
    """A lone surrogate (valid in JSON as an escape) is named as a client error, not a crash."""
    records = [_event(0), {**_event(1), column: value}]
    with pytest.raises(ImportFormatError) as caught:
        validate_records([{**r, "synced_at": r["synced_at"].isoformat()} for r in records], source="body")
    assert (caught.value.row, caught.value.column) == (2, column)
    assert "Unicode" in caught.value.problem
