"""Nagle's rule for ``@serve.batch``, when chosen: a lone call never waits, calls under load do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.batching import IdleDispatch


class _BatchedMethod:
    """Stands in for a ``@serve.batch`` bound method: records the timeout each call started with."""

    def __init__(self) -> None:
        self.timeout_s = 0.005
        self.started_with: list[float] = []
        self.release = asyncio.Event()

    def set_batch_wait_timeout_s(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    async def __call__(self, request: Any) -> Any:
        self.started_with.append(self.timeout_s)
        await self.release.wait()
        return request


def test_a_call_alone_goes_at_once_and_calls_under_load_wait_to_share_a_batch() -> None:
    async def scenario() -> tuple[list[Any], list[float], int]:
        method = _BatchedMethod()
        dispatch = IdleDispatch(method, wait_s=0.002)
        first = asyncio.create_task(dispatch("a"))
        await asyncio.sleep(0)
        others = [asyncio.create_task(dispatch(r)) for r in ("b", "c")]
        await asyncio.sleep(0)
        method.release.set()
        answers = await asyncio.gather(first, *others)
        lone = await dispatch("d")  # everything answered: nothing in flight again
        return [*answers, lone], method.started_with, dispatch.in_flight

    answers, started_with, in_flight = asyncio.run(scenario())
    assert answers == ["a", "b", "c", "d"]
    assert started_with == [0.0, 0.002, 0.002, 0.0]
    assert in_flight == 0


def test_a_failed_call_leaves_nothing_in_flight() -> None:
    class _Failing(_BatchedMethod):
        async def __call__(self, request: Any) -> Any:
            raise TimeoutError("lookup")

    async def scenario() -> int:
        dispatch = IdleDispatch(_Failing(), wait_s=0.002)
        with pytest.raises(TimeoutError, match="lookup"):
            await dispatch("a")
        return dispatch.in_flight

    assert asyncio.run(scenario()) == 0


def test_without_when_idle_every_call_waits() -> None:
    async def scenario() -> list[float]:
        method = _BatchedMethod()
        method.release.set()
        dispatch = IdleDispatch(method, wait_s=0.002, when_idle=False)
        await dispatch("a")
        await dispatch("b")
        return method.started_with

    assert asyncio.run(scenario()) == [0.002, 0.002]
