"""The HTTP API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

Request bodies come from the pydantic models that validate requests
(:class:`serve_app.schemas.PredictItem`); the sync-event body from :class:`SyncEventIn`,
whose fields are the import format's columns (:mod:`conflict_core.schema`, checked by a test).
Responses are described by the models below, which the ingress's answers follow (tests check
real answers against them). Sync-server teams generate clients from this document, and the
fuzz tests generate their requests from it.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from serve_app.schemas import FieldName, PredictItem, Text

API_VERSION = "1"
_REF = "#/components/schemas/{model}"


class PredictBatch(BaseModel):
    """Several items in one request; answered as ``{"predictions": [...]}`` in item order."""

    model_config = ConfigDict(extra="forbid")

    items: list[PredictItem] = Field(min_length=1)


class SyncEventIn(BaseModel):
    """One sync event in the import format (the columns of ``conflict_core.schema``)."""

    model_config = ConfigDict(extra="allow")

    event_id: Text
    user_id: Text
    device_id: Text
    entity_type: Text
    entity_id: Text
    changed_fields: list[FieldName]
    synced_at: dt.datetime = Field(description="UTC, ISO 8601 with an offset")
    conflict: bool
    resolution_type: str | None = None
    resolved_at: dt.datetime | None = None
    base_version: int | None = None
    server_version: int | None = None


class SyncEventsBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    events: list[SyncEventIn] = Field(min_length=1)


class Prediction(BaseModel):
    prediction_id: str
    probability: float = Field(ge=0, le=1)
    risk_level: Literal["low", "medium", "high"]
    recommendation: Literal["sync_now", "fetch_first", "warn_user"]
    model_version: str = Field(description="the model that answered, or heuristic_v1")
    predicted_at: str = Field(description="UTC ISO 8601")
    features_used: dict[str, float]
    sync_id: str | None = None
    fallback_reason: str | None = Field(default=None, description="why the heuristics answered, if they did")


class PredictionList(BaseModel):
    predictions: list[Prediction]


class SyncEventsResult(BaseModel):
    received: int
    inserted: int
    skipped_existing: int


class ErrorBody(BaseModel):
    """Every 4xx and 503 answer: what went wrong and, for a client mistake, which field."""

    error: str = Field(description="invalid_request, payload_too_large, not_found, method_not_allowed, …")
    problem: str
    field: str | None = Field(default=None, description="dotted path of the offending field, or 'body'")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    model_loaded: bool
    store_reachable: bool
    model_version: str | None
    unavailable_reason: str | None


_MODELS: tuple[type[BaseModel], ...] = (
    PredictItem,
    PredictBatch,
    SyncEventIn,
    SyncEventsBody,
    Prediction,
    PredictionList,
    SyncEventsResult,
    ErrorBody,
    Health,
    Readiness,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "the body is not JSON (or not UTF-8)",
        408: "the body did not arrive in time",
        413: "the body or the number of items is over the limit",
        415: "the body is not declared as JSON",
        422: "a field is missing or invalid; `field` names it",
        503: "a dependency is unavailable; retry later",
    }
    return {str(s): _json(_ref(ErrorBody), meaning[s]) for s in statuses}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


@cache
def openapi_document(*, max_items_per_request: int = 500, max_events_per_request: int = 5000) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the prediction API, with this deployment's limits."""
    _, definitions = models_json_schema(
        [
            (m, "validation" if m in (PredictItem, PredictBatch, SyncEventIn, SyncEventsBody) else "serialization")
            for m in _MODELS
        ],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = definitions["$defs"]
    schemas["PredictBatch"]["properties"]["items"]["maxItems"] = max_items_per_request
    schemas["SyncEventsBody"]["properties"]["events"]["maxItems"] = max_events_per_request
    predict_body = {
        "oneOf": [
            _ref(PredictItem),
            {"type": "array", "items": _ref(PredictItem), "minItems": 1, "maxItems": max_items_per_request},
            _ref(PredictBatch),
        ]
    }
    events_body = {
        "oneOf": [
            {"type": "array", "items": _ref(SyncEventIn), "minItems": 1, "maxItems": max_events_per_request},
            _ref(SyncEventsBody),
        ]
    }
    predict_answer = {"oneOf": [_ref(Prediction), _ref(PredictionList)]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Conflict Predictor",
            "version": API_VERSION,
            "description": "Predicts, before a device syncs an edit, the probability that the sync will "
            "conflict, and what the client should do.",
        },
        "paths": {
            "/v1/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Conflict probability of one pending sync (an object) or several (a list or {items})",
                    "requestBody": _body(predict_body),
                    "responses": {
                        "200": _json(predict_answer, "one prediction per item, in item order"),
                        **_errors(400, 408, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/sync-events": {
                "post": {
                    "operationId": "recordSyncEvents",
                    "summary": "Record sync events (and their outcome) in the import format",
                    "requestBody": _body(events_body),
                    "responses": {
                        "200": _json(_ref(SyncEventsResult), "stored; events already known are skipped"),
                        **_errors(400, 408, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The served model and the registry",
                    "responses": {"200": _json({"type": "object"}, "serving status and registry rows")},
                }
            },
            "/v1/prediction-log/status": {
                "get": {
                    "operationId": "predictionLogStatus",
                    "summary": "Buffered, spilled and written prediction-log records",
                    "responses": {"200": _json({"type": "object"}, "the prediction-log writer's counters")},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness",
                    "responses": {"200": _json(_ref(Health), "the ingress answers")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: a model is loaded and the store answers",
                    "responses": {
                        "200": _json(_ref(Readiness), "ready"),
                        "503": _json(_ref(Readiness), "not ready; the body says why"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {"schemas": schemas},
    }
