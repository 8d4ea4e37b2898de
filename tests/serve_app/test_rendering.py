"""The ingress's hand-built response body is byte for byte what ``JSONResponse`` renders."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from starlette.responses import JSONResponse

from serve_app.feature_lookup import FEATURE_NAMES
from serve_app.rendering import features_json, prediction_ids, render_predictions


def _responses(values: list[list[float]] | None, n: int, *, sync: bool, reason: str | None) -> list[dict[str, Any]]:
    out = []
    for i, prediction_id in enumerate(prediction_ids(n)):
        body: dict[str, Any] = {
            "prediction_id": prediction_id,
            "probability": round(i / 7 + 1e-9, 6),
            "risk_level": "medium",
            "recommendation": "fetch_first",
            "model_version": 'v_"ünïcode"',
            "features_used": {} if values is None else dict(zip(FEATURE_NAMES, values[i], strict=True)),
            "predicted_at": "2026-01-01T00:00:00.000Z",
            "reasons": [f'{i} other people synced this "task" in the last 5 minutes', "ünïcode\u2028"][: i % 3],
        }
        if sync:
            body["sync_id"] = f'sync-{i}-"quoted"\\-é-\u2028'
        if reason is not None:
            body["fallback_reason"] = reason
        out.append(body)
    return out


@pytest.mark.parametrize("single", [True, False])
@pytest.mark.parametrize("with_features", [True, False])
@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.parametrize("reason", [None, "inference_timeout"])
def test_render_matches_json_response(single: bool, with_features: bool, sync: bool, reason: str | None) -> None:
    n = 1 if single else 13
    rng = np.random.default_rng(0)
    matrix = rng.random((n, len(FEATURE_NAMES))) * np.array([1, 1e6, 1e-9, 3, 0, -2, 5.5])
    matrix[0, 0] = -0.0
    values = matrix.tolist() if with_features else None
    responses = _responses(values, n, sync=sync, reason=reason)
    expected = JSONResponse(responses[0] if single else {"predictions": responses}).body
    features = ["{}"] * n if values is None else features_json(values)
    reasons = [body["reasons"] for body in responses]
    assert render_predictions(responses, features, single, reasons) == expected


def test_prediction_ids_are_time_ordered_version_7_uuids() -> None:
    import time
    import uuid

    first = prediction_ids(200)
    time.sleep(0.002)
    later = prediction_ids(3)
    for value in first + later:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and parsed.hex == value
    assert len(set(first + later)) == 203
    # The leading 48 bits are the milliseconds: a later call sorts after every earlier id.
    assert min(later) > max(first)
    assert abs(int(first[0][:12], 16) - time.time_ns() // 1_000_000) < 5_000
