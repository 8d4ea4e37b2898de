"""Request and response shapes of the HTTP API, and the errors a client can cause.

Parsing never raises anything but :class:`RequestError`, which carries the HTTP status, the
offending field (``items[3].changed_fields``) and the problem, so the ingress can answer
every malformed body with a 4xx JSON error instead of a 500.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic import ValidationError as PydanticValidationError
from starlette.responses import JSONResponse

from conflict_core.errors import ConflictPredictorError
from conflict_core.events.validation import EARLIEST_INSTANT, LATEST_INSTANT
from conflict_core.schema import ENTITY_TYPE_MAX_LENGTH, IDENTIFIER_MAX_LENGTH

Text = Annotated[str, Field(min_length=1, max_length=IDENTIFIER_MAX_LENGTH)]
EntityType = Annotated[str, Field(min_length=1, max_length=ENTITY_TYPE_MAX_LENGTH)]
FieldName = Annotated[str, Field(min_length=1, max_length=128)]


class RequestError(ConflictPredictorError):
    """A client mistake: ``status`` (4xx), ``field`` (dotted path or ``body``), ``problem``."""

    def __init__(self, status: int, field: str, problem: str):
        self.status = status
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")

    def to_body(self) -> dict[str, Any]:
        return {
            "error": "invalid_request" if self.status != 413 else "payload_too_large",
            "field": self.field,
            "problem": self.problem,
        }


def error_response(status: int, error: str, problem: str, field: str | None = None) -> JSONResponse:
    """The API's error body: ``error`` (a stable code), ``problem`` (for people), maybe ``field``."""
    body: dict[str, Any] = {"error": error, "problem": problem}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


class PredictItem(BaseModel):
    """One pending sync: who changes which fields of which entity, and optionally when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Text
    device_id: Text
    entity_type: EntityType
    entity_id: Text
    changed_fields: Annotated[list[FieldName], Field(max_length=1000)]
    sync_id: Text | None = None
    at: dt.datetime | None = None

    @field_validator("at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("must carry a timezone (UTC ISO 8601, e.g. 2025-01-01T12:00:00Z)")
        try:
            utc = value.astimezone(dt.UTC)
        except OverflowError:  # the offset moves it past year 1 or 9999
            utc = None
        if utc is None or not EARLIEST_INSTANT <= utc < LATEST_INSTANT:
            raise ValueError(f"must lie between {EARLIEST_INSTANT:%Y-%m-%d} and {LATEST_INSTANT:%Y-%m-%d} (UTC)")
        return utc


# UTF-8 JSON text holds a NUL only as this escape (a raw control character is invalid JSON),
# so a body without it has none; one with it may (or holds an escaped backslash before "u0000").
NUL_ESCAPE = b"\\u0000"

_ITEM = TypeAdapter(PredictItem)
_ITEMS = TypeAdapter(list[PredictItem])  # one validator call per request, not one per item


def _location(loc: tuple[int | str, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


class DuplicateKeyError(ValueError):
    def __init__(self, key: str):
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members; a repeated key is refused rather than silently taking the last value."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def parse_json(body: bytes, *, max_bytes: int) -> Any:
    if len(body) > max_bytes:
        raise RequestError(413, "body", f"request body is {len(body)} bytes, the limit is {max_bytes}")
    if not body:
        raise RequestError(400, "body", "expected a JSON body, got an empty one")
    try:
        text = body.decode("utf-8")  # JSON between systems is UTF-8 (RFC 8259); no UTF-16/32 guessing
    except UnicodeDecodeError as exc:
        raise RequestError(400, "body", f"not UTF-8 text: {exc}") from None
    try:
        return _DECODER.decode(text)
    except DuplicateKeyError as exc:
        raise RequestError(
            400, exc.key or "body", f"the key {exc.key!r} appears more than once in one object"
        ) from None
    except ValueError as exc:
        raise RequestError(400, "body", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "body", "JSON nested too deeply") from None


def parse_predict_body(payload: Any, *, max_items: int, may_hold_nul: bool = True) -> tuple[list[PredictItem], bool]:
    """Items of a predict body and whether it was a single item (object) rather than a list.

    Accepts one item object, a JSON list of items, or ``{"items": [...]}``. ``may_hold_nul=False``
    (the raw body has no :data:`NUL_ESCAPE`) skips the per-field NUL check.
    """
    single = isinstance(payload, dict) and "items" not in payload
    prefix = ""
    if single:
        raw_items: list[Any] = [payload]
    elif isinstance(payload, dict):
        raw_items, prefix = payload["items"], "items"
        extra = sorted(set(payload) - {"items"})
        if extra:
            raise RequestError(422, extra[0] or "body", f"unknown field {extra[0]!r}; a batch body has only 'items'")
    else:
        raw_items = payload
    if not isinstance(raw_items, list):
        got = type(raw_items).__name__
        raise RequestError(422, prefix or "body", f"expected an item object or a list of items, got {got}")
    if not raw_items:
        raise RequestError(422, prefix or "body", "expected at least one item, got an empty list")
    if len(raw_items) > max_items:
        raise RequestError(413, prefix or "body", f"{len(raw_items)} items, the limit is {max_items} per request")
    try:
        items = [_ITEM.validate_python(payload)] if single else _ITEMS.validate_python(raw_items)
    except PydanticValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        raise RequestError(422, _location(tuple(first["loc"]), prefix), first["msg"]) from None
    if may_hold_nul:
        _reject_nul(items, prefix, single)
    return items, single


def _reject_nul(items: list[PredictItem], prefix: str, single: bool) -> None:
    """NUL is valid JSON text that no SQL store keeps (PostgreSQL refuses it): name the field."""
    for index, item in enumerate(items):
        at: tuple[int, ...] = () if single else (index,)
        for name in ("user_id", "device_id", "entity_type", "entity_id", "sync_id"):
            value = getattr(item, name)
            if value is not None and "\x00" in value:
                raise RequestError(422, _location((*at, name), prefix), "must not contain a NUL character")
        for position, field in enumerate(item.changed_fields):
            if "\x00" in field:
                where = _location((*at, "changed_fields", position), prefix)
                raise RequestError(422, where, "must not contain a NUL character")


def parse_event_records(payload: Any, *, max_items: int) -> list[dict[str, Any]]:
    """Records of a ``/v1/sync-events`` body: a list of import-format objects or ``{"events": [...]}``."""
    records = payload.get("events") if isinstance(payload, dict) else payload
    if not isinstance(records, list):
        raise RequestError(422, "events", "expected a list of sync events in the import format")
    if not records:
        raise RequestError(422, "events", "expected at least one event, got an empty list")
    if len(records) > max_items:
        raise RequestError(413, "events", f"{len(records)} events, the limit is {max_items} per request")
    return records
