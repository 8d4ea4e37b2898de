"""Property-based fuzzing of every route of the published OpenAPI document (Schemathesis).

Requests are generated from ``GET /openapi.json`` of the real ingress (in-process, with the
real online feature lookup over a migrated SQLite store and the real heuristics), valid ones
and invalid ones. Every answer must be below 500, and every 4xx a JSON body that names the
field and the problem. ``CONFLICT_FUZZ_EXAMPLES`` sets the examples per route and mode.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.python import asgi  # noqa: E402

from tests.serve_app.ingress_harness import IngressApp, build_ingress  # noqa: E402

# 250 keeps the default test run short; 2500 makes the 10,000 requests of RELIABILITY.md.
EXAMPLES_PER_ROUTE_AND_MODE = int(os.environ.get("CONFLICT_FUZZ_EXAMPLES", "250"))


def check_answer(status: int, body: bytes, where: str) -> None:
    if where.endswith("/readyz"):  # its documented "not ready" (no model is active here)
        assert status in (200, 503), f"{where}: {status} {body[:300]!r}"
        return
    assert status < 500, f"{where}: {status} {body[:300]!r}"
    if 400 <= status < 500:
        answer: Any = json.loads(body)
        assert isinstance(answer, dict), f"{where}: {status} {body[:300]!r}"
        assert isinstance(answer.get("field"), str) and answer["field"], f"{where}: no field in {answer}"
        assert isinstance(answer.get("problem"), str) and answer["problem"], f"{where}: no problem in {answer}"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # generation costs ~0.1 s per request: the 10,000-request run takes ~20 min
def test_every_route_survives_generated_requests(tmp_path: Path) -> None:
    statuses: Counter[tuple[str, int]] = Counter()
    ingress, lookup, _ = build_ingress(tmp_path)
    app = IngressApp(ingress)
    with asgi.get_client(app) as client:
        fuzz(app, client, statuses)
    lookup.core.close()
    total = sum(statuses.values())
    print(f"fuzzed {total} requests: {dict(sorted(statuses.items()))}")
    assert not lookup.errors, lookup.errors[:3]
    # Hypothesis stops early only when a route has fewer distinct inputs (the GET routes).
    assert total >= 4 * EXAMPLES_PER_ROUTE_AND_MODE


def fuzz(app: IngressApp, client: Any, statuses: Counter[tuple[str, int]]) -> None:
    """Every operation of the app's own document, valid and (with a body) invalid requests."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/sync-events", "/v1/models", "/healthz", "/readyz"}
    for operation in operations:
        has_body = operation.method.upper() == "POST"  # a GET without parameters has no invalid form
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_body else (GenerationMode.POSITIVE,):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_ROUTE_AND_MODE,
                deadline=None,
                database=None,
                phases=[Phase.generate],  # a failure is reported as generated; its case goes to the regular tests
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                response = case.call(session=client)
                statuses[(case.operation.path, response.status_code)] += 1
                check_answer(response.status_code, response.content, f"{case.method} {case.path}")

            run()
