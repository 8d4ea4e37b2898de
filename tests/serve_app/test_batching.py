"""The graph's batching: concurrent calls become one call, each caller gets its own answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from serve_app.batching import Coalescer


class _Recorder:
    """A batched function: records each batch, answers each call with its argument doubled."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.release = release
        self.running = 0
        self.most_running = 0

    async def __call__(self, arguments: list[Any]) -> list[Any]:
        self.batches.append(list(arguments))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.release is not None:
                await self.release.wait()
            else:
                await asyncio.sleep(0)
            return [a * 2 for a in arguments]
        finally:
            self.running -= 1


def test_calls_of_one_turn_go_out_as_one_batch_and_each_gets_its_own_answer() -> None:
    async def scenario() -> tuple[list[Any], list[list[Any]]]:
        fn = _Recorder()
        batches = Coalescer(fn, max_batch_size=64)
        answers = await asyncio.gather(*(batches(i) for i in range(5)))
        return answers, fn.batches

    answers, batches = asyncio.run(scenario())
    assert answers == [0, 2, 4, 6, 8]
    assert batches == [[0, 1, 2, 3, 4]]


def test_batches_hold_at_most_max_batch_size_calls() -> None:
    async def scenario() -> list[list[Any]]:
        fn = _Recorder()
        batches = Coalescer(fn, max_batch_size=2, max_concurrent_batches=4)
        assert await asyncio.gather(*(batches(i) for i in range(5))) == [0, 2, 4, 6, 8]
        return fn.batches

    assert asyncio.run(scenario()) == [[0, 1], [2, 3], [4]]


def test_calls_that_arrive_while_batches_run_form_the_next_batch_when_one_finishes() -> None:
    async def scenario() -> tuple[list[list[Any]], int, list[Any]]:
        release = asyncio.Event()
        fn = _Recorder(release)
        batches = Coalescer(fn, max_batch_size=64, max_concurrent_batches=1)
        first = asyncio.ensure_future(batches("a"))
        await asyncio.sleep(0.01)  # the first batch is running
        later = [asyncio.ensure_future(batches(x)) for x in ("b", "c", "d")]
        await asyncio.sleep(0.01)
        assert fn.batches == [["a"]]  # they wait for the running batch, not the wait time
        release.set()
        answers = await asyncio.gather(first, *later)
        return fn.batches, fn.most_running, answers

    batches, most_running, answers = asyncio.run(scenario())
    assert batches == [["a"], ["b", "c", "d"]]
    assert most_running == 1
    assert answers == ["aa", "bb", "cc", "dd"]


def test_a_batch_waits_for_company_and_a_full_batch_does_not() -> None:
    async def scenario() -> tuple[float, float, list[list[Any]]]:
        fn = _Recorder()
        batches = Coalescer(fn, max_batch_size=3, wait_s=0.2)
        started = time.perf_counter()
        await batches(1)  # alone: goes out when the wait is over
        lone = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(batches(i) for i in range(3)))  # full at once: no wait
        full = time.perf_counter() - started
        return lone, full, fn.batches

    lone, full, batches = asyncio.run(scenario())
    assert lone >= 0.19
    assert full < 0.1
    assert batches == [[1], [0, 1, 2]]


def test_when_idle_a_lone_call_goes_at_once_and_calls_under_load_wait_to_share_a_batch() -> None:
    async def scenario() -> tuple[float, list[list[Any]]]:
        release = asyncio.Event()
        fn = _Recorder(release)
        batches = Coalescer(fn, max_batch_size=64, wait_s=0.05, max_concurrent_batches=2, policy="when_idle")
        started = time.perf_counter()
        first = asyncio.ensure_future(batches("a"))
        await asyncio.sleep(0.005)
        assert fn.batches == [["a"]]  # nothing was in flight: no wait
        second = asyncio.ensure_future(batches("b"))
        await asyncio.sleep(0.005)
        third = asyncio.ensure_future(batches("c"))
        await asyncio.sleep(0.005)
        assert fn.batches == [["a"]]  # a batch is in flight: these wait for company
        release.set()
        await asyncio.gather(first, second, third)
        return time.perf_counter() - started, fn.batches

    elapsed, batches = asyncio.run(scenario())
    assert batches == [["a"], ["b", "c"]]
    assert elapsed >= 0.05


def test_adaptive_stops_waiting_for_a_lone_client_and_waits_again_when_clients_arrive_together() -> None:
    async def scenario() -> tuple[list[float], list[float], list[list[Any]]]:
        fn = _Recorder()
        batches = Coalescer(fn, max_batch_size=64, wait_s=0.02, max_concurrent_batches=8, policy="adaptive")
        lone: list[float] = []
        for k in range(30):  # one client, one request at a time, 30 ms apart: nobody ever joins
            started = time.perf_counter()
            await batches(k)
            lone.append(time.perf_counter() - started)
            await asyncio.sleep(0.03)
        fn.batches.clear()
        together: list[float] = []
        for round_ in range(20):  # four clients arriving at once: each window has three joiners
            started = time.perf_counter()
            await asyncio.gather(*(batches(round_ * 10 + c) for c in range(4)))
            together.append(time.perf_counter() - started)
            await asyncio.sleep(0.03)
        return lone, together, fn.batches

    lone, together, batches = asyncio.run(scenario())
    # The first lone calls wait (the policy starts by waiting); once the windows showed no
    # company, they go at once.
    assert min(lone[:3]) >= 0.02
    assert max(lone[-10:]) < 0.015
    # Clients arriving together soon make it wait again, and then share one batch a round.
    assert all(len(batch) == 4 for batch in batches[-10:])
    assert min(together[-10:]) >= 0.02


def test_adaptive_counts_arrivals_not_dispatches_so_a_lone_burst_client_is_still_batched() -> None:
    """Calls that came while the policy was not waiting still count as company: under load that
    starts after a quiet spell the waiting comes back although no batch had waited to find them."""

    async def scenario() -> float:
        batches = Coalescer(_Recorder(), max_batch_size=64, wait_s=0.02, policy="adaptive")
        batches.company = 0.0  # a quiet spell: not waiting
        for _ in range(15):  # pairs of calls a few ms apart: each window has a joiner
            first = asyncio.ensure_future(batches(1))
            await asyncio.sleep(0.003)
            await asyncio.gather(first, batches(2))
            await asyncio.sleep(0.03)
        return batches.company

    assert asyncio.run(scenario()) >= 0.5


def test_an_unknown_wait_policy_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="fixed, when_idle, adaptive"):
        Coalescer(_Recorder(), max_batch_size=8, policy="sometimes")  # type: ignore[arg-type]


def test_the_batch_functions_error_reaches_every_caller_of_that_batch_only() -> None:
    async def scenario() -> list[Any]:
        calls = 0

        async def flaky(arguments: list[Any]) -> list[Any]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise TimeoutError("lookup")
            return arguments

        batches = Coalescer(flaky, max_batch_size=64)
        failed = await asyncio.gather(batches(1), batches(2), return_exceptions=True)
        return [*failed, await batches(3)]

    first, second, third = asyncio.run(scenario())
    assert isinstance(first, TimeoutError) and isinstance(second, TimeoutError)
    assert third == 3


def test_a_result_list_of_the_wrong_length_is_an_error_not_a_misaligned_answer() -> None:
    async def short(arguments: list[Any]) -> list[Any]:
        return arguments[:1]

    async def scenario() -> None:
        batches = Coalescer(short, max_batch_size=64)
        await asyncio.gather(batches(1), batches(2))

    with pytest.raises(RuntimeError, match="a batch of 2 calls got 1 results"):
        asyncio.run(scenario())


def test_a_caller_that_gives_up_leaves_its_batch_to_the_others() -> None:
    async def scenario() -> tuple[Any, list[list[Any]]]:
        release = asyncio.Event()
        fn = _Recorder(release)
        batches = Coalescer(fn, max_batch_size=64)
        impatient = asyncio.ensure_future(asyncio.wait_for(batches(1), 0.01))
        patient = asyncio.ensure_future(batches(2))
        with pytest.raises(TimeoutError):
            await impatient
        release.set()
        return await patient, fn.batches

    answer, batches = asyncio.run(scenario())
    assert answer == 4
    assert [sorted(b) for b in batches] == [[1, 2]]  # one batch for both


def test_reconfiguring_changes_later_batches_and_bad_values_are_refused() -> None:
    async def scenario() -> list[list[Any]]:
        fn = _Recorder()
        batches = Coalescer(fn, max_batch_size=64)
        batches.configure(max_batch_size=1, wait_s=0.0)
        await asyncio.gather(batches(1), batches(2))
        return fn.batches

    assert asyncio.run(scenario()) == [[1], [2]]
    with pytest.raises(ValueError, match="max_batch_size must be at least 1, got 0"):
        Coalescer(_Recorder(), max_batch_size=0)
    with pytest.raises(ValueError, match="the batch wait must be 0 or more seconds, got -1"):
        Coalescer(_Recorder(), max_batch_size=1, wait_s=-1)
    with pytest.raises(ValueError, match="max_concurrent_batches must be at least 1"):
        Coalescer(_Recorder(), max_batch_size=1, max_concurrent_batches=0)
