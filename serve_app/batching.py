"""Concurrent calls as one call on a list: the graph's batching at every stage.

Each stage of the prediction graph turns the calls in flight into one call on the next stage
(the ingress coalesces requests into one FeatureLookup call, FeatureLookup its callers' calls
into one feature computation and one ModelInference call, ModelInference its callers' matrices
into one model call). :class:`Coalescer` does that with the semantics of ``@serve.batch``
without its per-batch bookkeeping, which on the 2-core machine cost more than the hop itself.

A fixed wait makes every call pay it, including the lone request of a quiet minute, which gains
nothing by waiting because nobody else is coming. ``when_idle`` is Nagle's rule: a call that
finds no batch in flight goes out at once; while batches are in flight a new one waits up to
``wait_s`` for others to join it, exactly as a fixed wait would. It is off by default, like
Nagle's own switch is a choice: measured on the 2-core machine (BENCHMARKS.md), it cut the
single-connection p50 from 16 to 12 ms but cost 15-20 % of the requests/s at 8 and 32
connections. Clients that each wait for their answer arrive together right after a batch
completes; the first of them finds nothing in flight and leaves alone, so the batches split.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Coalescer:
    """Concurrent calls as one call of ``fn`` on a list.

    The semantics of ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s`` as
    ``wait_s``, ``max_concurrent_batches``) without its per-batch bookkeeping (metrics, a task
    per wait): a batch goes out ``wait_s`` after its first call arrived, or at once when it
    is full; with no wait, calls that arrive in the same turn of the event loop, or while
    ``max_concurrent_batches`` batches are running, form the next batch. ``fn`` takes the
    calls' arguments as a list and returns one result per call, in order; its exception goes
    to every call of that batch. A caller that gives up (cancelled, timed out) leaves its
    batch running for the others. With ``when_idle``, a call that finds no batch in flight
    does not wait. Between two hops of trivial deployments on the 2-core
    machine it answered a lone request 1.7 ms sooner than ``@serve.batch`` and carried 20-25 %
    more requests/s (``bench/bench_hops.py``, BENCHMARKS.md).
    """

    def __init__(
        self,
        fn: Any,
        *,
        max_batch_size: int,
        wait_s: float = 0.0,
        max_concurrent_batches: int = 1,
        when_idle: bool = False,
    ) -> None:
        self.fn = fn
        self.max_concurrent_batches = max_concurrent_batches
        self.when_idle = when_idle
        self.configure(max_batch_size=max_batch_size, wait_s=wait_s)
        if max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be at least 1, got {max_concurrent_batches}")
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Handle | None = None

    def configure(self, *, max_batch_size: int, wait_s: float) -> None:
        """Batch size and wait for the batches from now on (a deployment's ``reconfigure``)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if not wait_s >= 0:
            raise ValueError(f"the batch wait must be 0 or more seconds, got {wait_s}")
        self.max_batch_size, self.wait_s = max_batch_size, wait_s

    async def __call__(self, argument: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((argument, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._pending or len(self._running) >= self.max_concurrent_batches:
            return  # a finishing batch schedules the next one
        if len(self._pending) >= self.max_batch_size:
            if self._timer is not None:
                self._timer.cancel()
            self._dispatch(loop)
        elif self._timer is None:  # after the wait, or after this turn's other arrivals
            wait_s = 0.0 if self.when_idle and not self._running else self.wait_s
            self._timer = (
                loop.call_later(wait_s, self._dispatch, loop) if wait_s else loop.call_soon(self._dispatch, loop)
            )

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        while self._pending and len(self._running) < self.max_concurrent_batches:
            batch, self._pending = self._pending[: self.max_batch_size], self._pending[self.max_batch_size :]
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._schedule(task.get_loop())

    async def _run(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            results = await self.fn([argument for argument, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} calls got {len(results)} results")
        except BaseException as exc:  # every caller of the batch gets it; cancellation included
            for _, future in batch:
                if not future.done():
                    future.cancel() if isinstance(exc, asyncio.CancelledError) else future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its caller gave up
                future.set_result(result)
