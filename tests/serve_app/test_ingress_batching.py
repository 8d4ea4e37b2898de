"""The ingress's coalescing under concurrent requests: with one FeatureLookup call in flight
(the shipped ``ingress_max_concurrent_batches``), requests that arrive while it runs share the
next call instead of each opening their own (no Ray: the real ingress, stand-in handles)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import httpx

from serve_app.app import AppArgs
from tests.serve_app.ingress_harness import IngressApp, build_ingress

ITEM = {"user_id": "u1", "device_id": "d1", "entity_type": "task", "entity_id": "e1", "changed_fields": ["title"]}


def _post_concurrently(tmp_path: Path, requests: int, **args: Any) -> tuple[list[int], list[int], int]:
    """Status codes, the batch sizes FeatureLookup saw, and the most calls it had in flight."""
    ingress, lookup, _ = build_ingress(tmp_path, **args)
    compute = lookup.score.function
    sizes: list[int] = []
    in_flight = most = 0

    async def slow_score(items: list[dict[str, Any]]) -> Any:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        sizes.append(len(items))
        await asyncio.sleep(0.05)  # a lookup round trip under load
        in_flight -= 1
        return compute(items)

    lookup.score.function = slow_score

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=cast(Any, IngressApp(ingress)))
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
            first = asyncio.ensure_future(client.post("/v1/predict", json=ITEM))
            await asyncio.sleep(0.02)  # its lookup call is running
            rest = []
            for i in range(requests - 1):  # one every 3 ms, each after the last one's batching wait
                rest.append(asyncio.ensure_future(client.post("/v1/predict", json={**ITEM, "entity_id": f"e{i}"})))
                await asyncio.sleep(0.003)
            responses = await asyncio.gather(first, *rest)
        await ingress.writer.close()
        return [r.status_code for r in responses]

    try:
        codes = asyncio.run(scenario())
    finally:
        lookup.core.close()
    return codes, sizes, most


def test_requests_arriving_during_a_lookup_call_share_the_next_one(tmp_path: Path) -> None:
    assert AppArgs().ingress_max_concurrent_batches == 1  # what serve_config.yaml ships
    codes, sizes, most = _post_concurrently(tmp_path, 9)
    assert codes == [200] * 9
    assert sizes == [1, 8]  # the first request alone, the eight that came meanwhile together
    assert most == 1


def test_more_calls_in_flight_split_the_same_requests_into_more_calls(tmp_path: Path) -> None:
    codes, sizes, most = _post_concurrently(tmp_path, 9, ingress_max_concurrent_batches=4)
    assert codes == [200] * 9
    assert sum(sizes) == 9
    assert len(sizes) > 2
    assert 1 < most <= 4
