"""Concurrent calls as one call on a list: the graph's batching at every stage.

Each stage of the prediction graph turns the calls in flight into one call on the next stage
(the ingress coalesces requests into one FeatureLookup call, FeatureLookup its callers' calls
into one feature computation and one ModelInference call, ModelInference its callers' matrices
into one model call). :class:`Coalescer` does that with the semantics of ``@serve.batch``
without its per-batch bookkeeping, which on the 2-core machine cost more than the hop itself.

A fixed wait makes every call pay it, including the lone request of a quiet minute, which gains
nothing by waiting because nobody else is coming. The wait ``policy`` says when to skip it:

- ``fixed``: every batch waits ``wait_s`` for company (``@serve.batch``'s rule).
- ``when_idle``: Nagle's rule: a call that finds no batch in flight goes out at once; while
  batches are in flight a new one waits. Measured on the 2-core machine (BENCHMARKS.md), it cut
  the single-connection p50 from 16 to 12 ms but cost 15-20 % of the requests/s at 8 and 32
  connections: clients that each wait for their answer arrive together right after a batch
  completes; the first of them finds nothing in flight and leaves alone, so the batches split.
- ``adaptive``: wait only while waiting pays. Every call that arrives more than ``wait_s``
  after the last window opened opens a new one; the calls arriving within a window are the
  company a batch opened then would have found. Their count per window, averaged over the
  recent windows, says whether the next batch will find any: at a quarter of a call or more it
  waits, below that it goes at once. The count does not depend on what was dispatched, so the rule
  cannot talk itself out of waiting: a lone client's requests (no company) go at once, and
  clients arriving together (company) share batches as under ``fixed``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, get_args

WaitPolicy = Literal["fixed", "when_idle", "adaptive"]
WAIT_POLICIES: tuple[WaitPolicy, ...] = get_args(WaitPolicy)
COMPANY_TO_WAIT = 0.25  # ``adaptive`` waits while the recent windows averaged at least this many joiners
_MOST_COUNTED = 2  # joiners counted per window: after a burst, light traffic stops waiting within ~20 windows
_COMPANY_WEIGHT = 0.1  # weight of the newest window in that average (about the last ten windows)


class Coalescer:
    """Concurrent calls as one call of ``fn`` on a list.

    The semantics of ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s`` as
    ``wait_s``, ``max_concurrent_batches``) without its per-batch bookkeeping (metrics, a task
    per wait): a batch goes out ``wait_s`` after its first call arrived, or at once when it
    is full; with no wait, calls that arrive in the same turn of the event loop, or while
    ``max_concurrent_batches`` batches are running, form the next batch. ``fn`` takes the
    calls' arguments as a list and returns one result per call, in order; its exception goes
    to every call of that batch. A caller that gives up (cancelled, timed out) leaves its
    batch running for the others. ``policy`` says when a batch skips the wait (the module's
    docstring). Between two hops of trivial deployments on the 2-core
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
        policy: WaitPolicy = "fixed",
    ) -> None:
        if policy not in WAIT_POLICIES:
            raise ValueError(f"the wait policy must be one of {', '.join(WAIT_POLICIES)}, got {policy!r}")
        self.fn = fn
        self.max_concurrent_batches = max_concurrent_batches
        self.policy = policy
        self.configure(max_batch_size=max_batch_size, wait_s=wait_s)
        if max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be at least 1, got {max_concurrent_batches}")
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Handle | None = None
        # ``adaptive``: when the current arrival window opened, the calls that joined it, and the
        # recent windows' average of those (starting at one: it waits until a few windows show otherwise).
        self._window_opened: float | None = None
        self._joined = 0
        self.company = 1.0

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
        if self.policy == "adaptive":
            self._count_arrival(loop.time())
        self._pending.append((argument, future))
        self._schedule(loop)
        return await future

    def _count_arrival(self, now: float) -> None:
        opened = self._window_opened
        if opened is not None and now - opened <= self.wait_s:
            self._joined += 1
            return
        if opened is not None:
            self.company += _COMPANY_WEIGHT * (min(self._joined, _MOST_COUNTED) - self.company)
        self._window_opened, self._joined = now, 0

    def _wait_s(self) -> float:
        """How long a batch opened now waits for company."""
        if self.policy == "when_idle" and not self._running:
            return 0.0
        if self.policy == "adaptive" and self.company < COMPANY_TO_WAIT:
            return 0.0
        return self.wait_s

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._pending or len(self._running) >= self.max_concurrent_batches:
            return  # a finishing batch schedules the next one
        if len(self._pending) >= self.max_batch_size:
            if self._timer is not None:
                self._timer.cancel()
            self._dispatch(loop)
        elif self._timer is None:  # after the wait, or after this turn's other arrivals
            wait_s = self._wait_s()
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
