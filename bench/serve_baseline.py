"""The in-process baseline: one plain Starlette/uvicorn process, same features, same model.

``python bench/serve_baseline.py --database-url URL --artifact PATH --sha256 HEX --port 8100``
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.feature_lookup import FEATURE_NAMES, OnlineFeatureLookup
from serve_app.heuristics import recommendation_for, risk_level
from serve_app.inference import load_model
from serve_app.schemas import NUL_ESCAPE, parse_json, parse_predict_body


def make_app(database_url: str, artifact: str, sha256: str) -> Starlette:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # as ModelInference: idle OpenMP workers would spin between requests
    lookup = OnlineFeatureLookup(database_url, refresh_interval_s=0.5)
    model = load_model("baseline", artifact, sha256)

    async def predict(request: Request) -> JSONResponse:
        body = await request.body()
        payload = parse_json(body, max_bytes=2_000_000)
        items, single = parse_predict_body(payload, max_items=500, may_hold_nul=NUL_ESCAPE in body)
        targets = [i.model_dump() for i in items]
        matrix = lookup.compute(targets)
        out: list[dict[str, Any]] = []
        for row, p in zip(matrix, model.predict_proba(matrix), strict=True):
            level = risk_level(float(p), medium_threshold=0.2, high_threshold=0.5)
            out.append(
                {
                    "probability": float(p),
                    "risk_level": level.value,
                    "recommendation": recommendation_for(level).value,
                    "model_version": model.version,
                    "features_used": dict(zip(FEATURE_NAMES, map(float, row), strict=True)),
                }
            )
        return JSONResponse(out[0] if single else {"predictions": out})

    return Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--port", type=int, default=8100)
    a = parser.parse_args()
    uvicorn.run(make_app(a.database_url, a.artifact, a.sha256), host="127.0.0.1", port=a.port, log_level="warning")
