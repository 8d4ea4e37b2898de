from __future__ import annotations

import json

import pytest

from serve_app.schemas import RequestError, parse_event_records, parse_json, parse_predict_body

ITEM = {"user_id": "u1", "device_id": "d1", "entity_type": "task", "entity_id": "t1", "changed_fields": ["title"]}


def test_single_item_and_lists() -> None:
    items, single = parse_predict_body(dict(ITEM, sync_id="e1", at="2025-01-01T00:00:00Z"), max_items=5)
    assert (
        single and items[0].sync_id == "e1" and items[0].at is not None and items[0].at.utcoffset().total_seconds() == 0
    )
    items, single = parse_predict_body([ITEM, ITEM], max_items=5)
    assert not single and len(items) == 2
    items, single = parse_predict_body({"items": [ITEM]}, max_items=5)
    assert not single and len(items) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in ITEM.items() if k != "user_id"}, "user_id"),
        (dict(ITEM, changed_fields="title"), "changed_fields"),
        (dict(ITEM, changed_fields=["ok", 3]), "changed_fields[1]"),
        (dict(ITEM, at="yesterday"), "at"),
        (dict(ITEM, at="2025-01-01T00:00:00"), "at"),
        (dict(ITEM, entity_id=""), "entity_id"),
        (dict(ITEM, colour="red"), "colour"),
        ([ITEM, dict(ITEM, device_id=None)], "[1].device_id"),
        ({"items": [ITEM, dict(ITEM, user_id=5)]}, "items[1].user_id"),
        (dict(ITEM, at="1969-12-31T23:59:59Z"), "at"),
        (dict(ITEM, at="0001-01-10T00:00:00Z"), "at"),
        (dict(ITEM, at="9999-12-31T23:59:59-01:00"), "at"),  # past year 9999 in UTC
        (dict(ITEM, at="2200-01-01T00:00:00Z"), "at"),
        (dict(ITEM, user_id="u\x00"), "user_id"),
        ([ITEM, dict(ITEM, changed_fields=["a", "b\x00"])], "[1].changed_fields[1]"),
        ({"items": [dict(ITEM, sync_id="\x00")]}, "items[0].sync_id"),
        ([], "body"),
        ("text", "body"),
    ],
)
def test_bad_items_name_the_field(body: object, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_predict_body(body, max_items=5)
    assert caught.value.status == 422
    assert caught.value.field == field
    assert caught.value.to_body()["field"] == field


def test_too_many_items_is_413() -> None:
    with pytest.raises(RequestError) as caught:
        parse_predict_body([ITEM] * 6, max_items=5)
    assert caught.value.status == 413


def test_oversized_and_malformed_bodies() -> None:
    with pytest.raises(RequestError) as caught:
        parse_json(b"x" * 101, max_bytes=100)
    assert caught.value.status == 413
    utf16 = json.dumps(dict(ITEM, entity_id="t\x00")).encode("utf-16")  # would hide the NUL escape
    for raw in (b"", b"{not json", b"\xff\xfe", b"[" * 100_000, utf16):  # [: nested past the parser's depth
        with pytest.raises(RequestError) as caught:
            parse_json(raw, max_bytes=100_000)
        assert caught.value.status == 400 and caught.value.field == "body"
    assert parse_json(json.dumps(ITEM).encode(), max_bytes=1000) == ITEM


def test_at_is_kept_as_utc_within_its_range() -> None:
    (item,), _ = parse_predict_body(dict(ITEM, at="2199-12-31T23:00:00-00:30"), max_items=5)
    assert item.at is not None and item.at.isoformat() == "2199-12-31T23:30:00+00:00"


def test_event_records_shape() -> None:
    assert parse_event_records({"events": [{"a": 1}]}, max_items=3) == [{"a": 1}]
    with pytest.raises(RequestError):
        parse_event_records({"events": "x"}, max_items=3)
    with pytest.raises(RequestError) as caught:
        parse_event_records([{}] * 4, max_items=3)
    assert caught.value.status == 413


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_a_body_holding_nul_always_shows_the_escape(ensure_ascii: bool) -> None:
    """The ingress skips the per-field NUL check when the raw body lacks NUL_ESCAPE: that must be safe."""
    from serve_app.schemas import NUL_ESCAPE

    body = json.dumps([ITEM, dict(ITEM, entity_id="t\x00")], ensure_ascii=ensure_ascii).encode()
    assert NUL_ESCAPE in body
    with pytest.raises(RequestError) as caught:
        parse_predict_body(json.loads(body), max_items=5, may_hold_nul=NUL_ESCAPE in body)
    assert caught.value.field == "[1].entity_id"
    clean = json.dumps([ITEM, dict(ITEM, entity_id="t\\u0000")]).encode()  # a backslash, then text
    assert parse_predict_body(json.loads(clean), max_items=5, may_hold_nul=NUL_ESCAPE in clean)[0][1].entity_id == (
        "t\\u0000"
    )
