"""When a ``@serve.batch`` call should wait for company: Nagle's rule for batching, optional.

A fixed ``batch_wait_timeout_s`` makes every request pay the wait, including the lone request
of a quiet minute, which gains nothing by waiting because nobody else is coming. Serve's
batch queue reads the timeout when a batch's first call arrives, so setting it just before
each call decides that call's batch: with ``when_idle``, a call that finds no other call in
flight goes out at once; while calls are in flight a new one waits up to ``wait_s`` for others
to join its batch, exactly as a fixed timeout would.

It is off by default, like Nagle's own switch is a choice: measured on the 2-core machine
(BENCHMARKS.md), it cut the single-connection p50 from 16 to 12 ms but cost 15-20 % of the
requests/s at 8 and 32 connections. Clients that each wait for their answer arrive together
right after a batch completes; the first of them finds nothing in flight and leaves alone,
so the batches split in two.
"""

from __future__ import annotations

from typing import Any


class IdleDispatch:
    """Calls a ``@serve.batch`` bound method with the batching wait ``wait_s``; with ``when_idle``,
    none while nothing is in flight."""

    def __init__(self, method: Any, wait_s: float, *, when_idle: bool = True) -> None:
        self.method = method  # the batch wrapper's setters are not in Ray's type hints
        self.wait_s = wait_s
        self.when_idle = when_idle
        self.in_flight = 0
        method.set_batch_wait_timeout_s(wait_s)

    async def __call__(self, request: Any) -> Any:
        if self.when_idle:
            self.method.set_batch_wait_timeout_s(self.wait_s if self.in_flight else 0.0)
        self.in_flight += 1
        try:
            return await self.method(request)
        finally:
            self.in_flight -= 1
