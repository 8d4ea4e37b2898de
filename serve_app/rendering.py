"""Prediction responses as bytes, and the ids and timestamps they carry.

The hot path renders each response by hand (the same bytes ``JSONResponse`` would give,
compact and ``ensure_ascii=False``): a feature row's JSON text is made once and serves both
the response and the prediction-log record.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from conflict_core import explain
from conflict_core.features import FeatureParams
from serve_app.feature_lookup import FEATURE_NAMES
from serve_app.schemas import PredictItem


def iso_utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def prediction_ids(count: int) -> list[str]:
    """``count`` version-7 UUIDs (RFC 9562) as 32 hex digits, from the clock and one urandom call.

    Version 7 starts with the Unix time in milliseconds, so new ids sort after older ones and
    ``prediction_log``'s unique index takes them at its end: a batch of inserts dirties a few
    index pages instead of one page per row, which random (version-4) ids cost.
    """
    millis = f"{time.time_ns() // 1_000_000:012x}"
    raw = os.urandom(10 * count).hex()
    return [f"{millis}7{raw[i : i + 3]}{_VARIANT[raw[i + 3]]}{raw[i + 4 : i + 19]}" for i in range(0, 20 * count, 20)]


_FEATURES_JSON = "{" + ",".join(f"{json.dumps(name)}:%r" for name in FEATURE_NAMES) + "}"


def features_json(values: list[list[float]]) -> list[str]:
    """Each feature row as its JSON object (finite floats: ``repr`` is what ``json`` writes)."""
    return [_FEATURES_JSON % tuple(row) for row in values]


def item_reasons(
    items: Sequence[PredictItem],
    values: list[list[float]] | None,
    factors: list[list[str]] | None,
    feature_params: dict[str, Any] | None,
) -> list[list[str]]:
    """Each item's top risk factors in words (none when the heuristics answered)."""
    if values is None or factors is None:
        return [[] for _ in items]
    params = FeatureParams(**(feature_params or {}))
    return [
        explain.reasons(
            names,
            dict(zip(FEATURE_NAMES, row, strict=True)),
            entity_type=item.entity_type,
            changed_fields=item.changed_fields,
            params=params,
        )
        if names
        else []
        for item, row, names in zip(items, values, factors, strict=True)
    ]


def render_predictions(
    responses: list[dict[str, Any]], features: list[str], single: bool, reasons: list[list[str]] | None = None
) -> bytes:
    """The bytes ``JSONResponse`` renders for these responses (compact, ``ensure_ascii=False``), with
    ``features_used`` taken from ``features``, each item's features as JSON text, and ``reasons``."""
    first = responses[0]
    versions: dict[str, str] = {}  # a canary answers some rows with the challenger's version
    predicted_at = json.dumps(first["predicted_at"])
    parts = []
    explained = reasons if reasons is not None else [[] for _ in responses]
    for body, features_json, why in zip(responses, features, explained, strict=True):
        model_version = versions.get(body["model_version"])
        if model_version is None:
            model_version = versions[body["model_version"]] = json.dumps(body["model_version"], ensure_ascii=False)
        text = (
            f'{{"prediction_id":"{body["prediction_id"]}","probability":{body["probability"]!r},'
            f'"risk_level":"{body["risk_level"]}","recommendation":"{body["recommendation"]}",'
            f'"model_version":{model_version},"features_used":{features_json},"predicted_at":{predicted_at},'
            f'"reasons":{json.dumps(why, ensure_ascii=False, separators=(",", ":")) if why else "[]"}'
        )
        if "sync_id" in body:
            text += ',"sync_id":' + json.dumps(body["sync_id"], ensure_ascii=False)
        if "fallback_reason" in body:
            text += ',"fallback_reason":"' + body["fallback_reason"] + '"'
        parts.append(text + "}")
    return (parts[0] if single else '{"predictions":[' + ",".join(parts) + "]}").encode("utf-8")


def feature_rows(values: list[list[float]] | None, count: int) -> list[dict[str, float] | None]:
    """Each feature row as a name → value mapping, or ``count`` Nones when the lookup failed."""
    if values is None:
        return [None] * count
    return [dict(zip(FEATURE_NAMES, row, strict=True)) for row in values]
