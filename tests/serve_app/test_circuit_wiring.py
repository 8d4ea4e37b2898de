"""The breakers in the graph: a failing stage is skipped at full speed, with its own fallback
reason, and used again once a probe succeeds (no Ray: the real classes, stand-in handles)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from conflict_core import db
from serve_app.circuit import CircuitBreaker, CircuitState
from serve_app.deployments import FeatureLookup
from tests.serve_app.ingress_harness import Method, ingress_client

ITEM = {"user_id": "u1", "device_id": "d1", "entity_type": "task", "entity_id": "e1", "changed_fields": ["title"]}


def test_a_hanging_feature_lookup_costs_three_timeouts_then_nothing(tmp_path: Path) -> None:
    with ingress_client(tmp_path) as (client, ingress, lookup):
        ingress.score_timeout_s = 0.3
        ingress.lookup_circuit = CircuitBreaker("FeatureLookup", failure_threshold=3, reset_timeout_s=1.0)
        working = lookup.score.function

        async def hang(items: list[dict[str, Any]]) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {}

        lookup.score.function = hang
        took = []
        for _ in range(20):
            started = time.perf_counter()
            response = client.post("/v1/predict", json=ITEM)
            took.append(time.perf_counter() - started)
            assert response.status_code == 200
            assert response.json()["fallback_reason"] == "feature_lookup_failed"
        assert all(t >= 0.3 for t in took[:3])
        assert max(took[3:]) < 0.2, took  # fail fast: no more timeouts while the circuit is open
        assert ingress.lookup_circuit.state is CircuitState.OPEN
        calls = lookup.score.calls

        lookup.score.function = working  # the stage recovers; after the cool-down one probe closes the circuit
        time.sleep(1.05)
        response = client.post("/v1/predict", json=ITEM)
        assert lookup.score.calls == calls + 1
        assert "fallback_reason" not in response.json() or response.json()["fallback_reason"] == "no_active_model"
        assert ingress.lookup_circuit.state is CircuitState.CLOSED


def test_unreachable_heuristics_are_computed_in_the_ingress_without_waiting(tmp_path: Path) -> None:
    with ingress_client(tmp_path) as (client, ingress, lookup):
        lookup.fail = RuntimeError("FeatureLookup replica died")

        def dead(rows: Any) -> Any:
            raise ConnectionError("FallbackHeuristics replica died")

        fallback = ingress.fallback
        fallback.predict = Method(dead)
        for _ in range(10):
            response = client.post("/v1/predict", json=ITEM)
            assert response.status_code == 200
            assert response.json()["model_version"] == "heuristic_v1"
        assert fallback.predict.calls == 3  # the circuit opened after three failures
        assert lookup.score.calls == 3


class HangingInference:
    def __init__(self) -> None:
        self.predict = Method(self._predict)
        self.hang = True

    async def _predict(self, request: tuple[Any, ...]) -> dict[str, Any]:
        matrix = request[0]
        if self.hang:
            await asyncio.sleep(30)
        return {"model_version": "v1", "probabilities": np.full(len(matrix), 0.5)}


def test_feature_lookup_skips_a_dead_inference_and_keeps_its_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    inference = HangingInference()
    lookup_class: Any = cast(Any, FeatureLookup).func_or_class
    lookup = lookup_class(url, refresh_interval_s=0.0, inference=inference, inference_timeout_s=0.2)
    lookup.inference_circuit = CircuitBreaker("ModelInference", failure_threshold=2, reset_timeout_s=0.5)
    matrix = np.zeros((1, 7))

    async def scenario() -> list[tuple[dict[str, Any], float]]:
        out = []
        for _ in range(6):
            started = time.perf_counter()
            out.append((await lookup._infer(matrix, ["u1"]), time.perf_counter() - started))
        inference.hang = False
        await asyncio.sleep(0.55)
        out.append((await lookup._infer(matrix, ["u1"]), 0.0))
        return out

    try:
        results = asyncio.run(scenario())
    finally:
        lookup.core.close()
    assert [r["unavailable"] for r, _ in results[:6]] == ["inference_timeout"] * 6
    assert all(t >= 0.2 for _, t in results[:2])
    assert all(t < 0.05 for _, t in results[2:6])
    assert inference.predict.calls == 3
    assert results[6][0]["model_version"] == "v1"
    assert lookup.inference_circuit.state is CircuitState.CLOSED


def test_a_call_whose_replica_died_is_made_again_not_answered_by_the_heuristics(tmp_path: Path) -> None:
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    with ingress_client(tmp_path) as (client, ingress, lookup):
        working = lookup.score.function
        lost = [ActorUnavailableError("Actor is unavailable.", None), ActorDiedError()]

        def dies_then_works(items: list[dict[str, Any]]) -> dict[str, Any]:
            if lost:
                raise lost.pop(0)  # the replica that took the call is gone; the next call reaches its peer
            return cast(dict[str, Any], working(items))

        lookup.score.function = dies_then_works
        for request in range(3):  # more requests than the breaker's threshold of failures
            if request:
                lost[:] = [ActorUnavailableError("Actor is unavailable.", None)]
            response = client.post("/v1/predict", json=ITEM)
            assert response.status_code == 200
            assert response.json()["fallback_reason"] == "no_active_model"  # the lookup's own answer
        assert ingress.lookup_circuit.state is CircuitState.CLOSED
        assert lookup.score.calls == 3 + 2 + 2  # two losses then the answer; one loss each after

        lost[:] = [ActorDiedError()] * 3  # every attempt lost: the heuristics answer, the breaker counts it
        response = client.post("/v1/predict", json=ITEM)
        assert response.json()["fallback_reason"] == "feature_lookup_failed"
