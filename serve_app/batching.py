"""When a ``@serve.batch`` call should wait for company: Nagle's rule for batching.

A fixed ``batch_wait_timeout_s`` makes every request pay the wait, including the lone request
of a quiet minute, which gains nothing by waiting because nobody else is coming. Serve's
batch queue reads the timeout when a batch's first call arrives, so setting it just before
each call decides that call's batch: a call that finds no other call in flight goes out at
once; while calls are in flight (under load) a new one waits up to ``wait_s`` for others to
join its batch, exactly as a fixed timeout would.
"""

from __future__ import annotations

from typing import Any


class IdleDispatch:
    """Calls a ``@serve.batch`` bound method, with no batching wait while nothing is in flight."""

    def __init__(self, method: Any, wait_s: float) -> None:
        self.method = method  # the batch wrapper's setters are not in Ray's type hints
        self.wait_s = wait_s
        self.in_flight = 0

    async def __call__(self, request: Any) -> Any:
        self.method.set_batch_wait_timeout_s(self.wait_s if self.in_flight else 0.0)
        self.in_flight += 1
        try:
            return await self.method(request)
        finally:
            self.in_flight -= 1
