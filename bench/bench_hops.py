"""Ray Serve's own cost of handle hops on this machine: a chain of trivial deployments.

The prediction graph answers a request through three deployments (Ingress -> FeatureLookup
-> ModelInference, two handle hops). This benchmark deploys the same shape with handlers that
do no work — the head reads the body and returns a constant after its downstream calls — and
drives it with wrk exactly as ``bench_serve.py`` drives the graph (HAProxy mode, one Ray
instance), so the graph's numbers can be read against the floor Ray itself leaves for 0, 1
and 2 hops::

    flock /tmp/conflict-ray.lock .venv/bin/python bench/bench_hops.py \\
        [--duration 5] [--concurrency 1,8,32] [--depths 0,1,2] [--transports grpc,actor] [--batched]

``grpc`` is the throughput-optimized mode's transport between replicas (what the product
uses); ``actor`` sends the same calls as Ray actor tasks (``handle.options(_by_reference=True)``).
``--batched head`` coalesces at the head as the ingress does: concurrent requests' payloads as
one downstream call (``@serve.batch``, 2 ms wait, 8 batches in flight); ``--batched all`` also
puts ``@serve.batch`` (no wait) on the downstream methods, as the graph does.
Prints one row per point: requests/s, p50/p95/p99 latency, and the milliseconds a hop adds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_serve import _wrk  # noqa: E402

from ray_control.instance import serve_env  # noqa: E402
from serve_app.batching import Coalescer  # noqa: E402

GET_LUA = """
wrk.method = "GET"
done = function(summary, latency, requests)
  for _, q in ipairs({50, 90, 95, 99}) do
    io.write(string.format("exact-p%d-us %d\\n", q, latency:percentile(q)))
  end
end
"""


def chain_app(depth: int, transport: str, batched: str) -> Any:
    """A head deployment answering HTTP and ``depth`` downstream deployments, each calling the next."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    by_reference = transport == "actor"

    class Stage:
        def __init__(self, downstream: Any = None):
            self.downstream = None if downstream is None else downstream.options(_by_reference=by_reference)

        async def _call(self, payload: list[int]) -> list[int]:
            if self.downstream is not None:
                payload = await self.downstream.run.remote(payload)
            return payload

        async def run(self, payload: list[int]) -> list[int]:
            return await self._call(payload)

    class BatchedStage(Stage):
        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
        async def run(self, payloads: list[list[int]]) -> list[list[int]]:  # type: ignore[override]
            flat = [p for payload in payloads for p in payload]
            answer = await self._call(flat)
            return [answer[: len(p)] for p in payloads]

    class Head:
        def __init__(self, downstream: Any = None):
            self.downstream = None if downstream is None else downstream.options(_by_reference=by_reference)

        async def __call__(self, request: Request) -> Response:
            await request.body()
            if self.downstream is not None:
                await self.score([1])
            return Response(b'{"probability":0.5}', media_type="application/json")

        async def score(self, payload: list[int]) -> list[int]:
            answer: list[int] = await self.downstream.run.remote(payload)
            return answer

    class CoalescingHead(Head):
        # The ingress's own batching: concurrent requests' items as one downstream call.
        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, max_concurrent_batches=8)
        async def score(self, payloads: list[list[int]]) -> list[list[int]]:  # type: ignore[override]
            flat = [p for payload in payloads for p in payload]
            answer = await self.downstream.run.remote(flat)
            return [answer[: len(p)] for p in payloads]

    class CoalescedStage(Stage):
        def __init__(self, downstream: Any = None):
            super().__init__(downstream)
            self.coalescer = Coalescer(self._run_many, max_batch_size=64, max_concurrent_batches=2)

        async def run(self, payload: list[int]) -> list[int]:
            answer: list[int] = await self.coalescer(payload)
            return answer

        async def _run_many(self, payloads: list[list[int]]) -> list[list[int]]:
            flat = [p for payload in payloads for p in payload]
            answer = await self._call(flat)
            return [answer[: len(p)] for p in payloads]

    class CoalescerHead(Head):
        def __init__(self, downstream: Any = None):
            super().__init__(downstream)
            self.coalescer = Coalescer(self._score_many, max_batch_size=64, wait_s=0.002, max_concurrent_batches=8)

        async def score(self, payload: list[int]) -> list[int]:
            answer: list[int] = await self.coalescer(payload)
            return answer

        async def _score_many(self, payloads: list[list[int]]) -> list[list[int]]:
            flat = [p for payload in payloads for p in payload]
            answer = await self.downstream.run.remote(flat)
            return [answer[: len(p)] for p in payloads]

    options: dict[str, Any] = {"max_ongoing_requests": 512, "ray_actor_options": {"num_cpus": 0.1}}
    heads = {"none": Head, "coalesced": CoalescerHead}
    head = serve.deployment(**options)(heads.get(batched, CoalescingHead))
    stages = {"all": BatchedStage, "coalesced": CoalescedStage}
    stage = serve.deployment(**options)(stages.get(batched, Stage))
    node: Any = None
    for index in range(depth):
        named = stage.options(name=f"Stage{depth - index}")  # type: ignore[attr-defined]
        node = named.bind() if node is None else named.bind(node)
    return head.bind() if node is None else head.bind(node)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--depths", default="0,1,2")
    parser.add_argument("--transports", default="grpc,actor")
    parser.add_argument(
        "--batched",
        choices=("none", "head", "all", "coalesced"),
        default="none",
        help="@serve.batch at the head only, or at the head and downstream as the graph does",
    )
    a = parser.parse_args()
    for key, value in serve_env("haproxy").items():
        os.environ.setdefault(key, value)

    import ray
    from ray import serve

    concurrencies = [int(c) for c in a.concurrency.split(",")]
    print(f"nproc {os.cpu_count()}; HAProxy mode; batching: {a.batched}")
    print(f"{'transport':>9} {'hops':>4} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_hops_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    lua = work / "get.lua"
    lua.write_text(GET_LUA)
    baseline: dict[int, float] = {}
    try:
        for transport in a.transports.split(","):
            for depth in (int(d) for d in a.depths.split(",")):
                if depth == 0 and transport != a.transports.split(",")[0]:
                    continue  # no hop, no transport
                serve.run(chain_app(depth, transport, a.batched), name="chain", route_prefix="/")
                time.sleep(3)
                for c in concurrencies:
                    r = _wrk("http://127.0.0.1:8000/", lua, c, a.duration)
                    if depth == 0:
                        baseline[c] = r.get("p50_ms", 0.0)
                    added = (r.get("p50_ms", 0.0) - baseline.get(c, 0.0)) / depth if depth else 0.0
                    print(
                        f"{transport:>9} {depth:>4} {c:>5} {r['requests_per_s']:>8.0f} {r.get('p50_ms', 0):>7.2f} "
                        f"{r.get('p95_ms', 0):>7.2f} {r.get('p99_ms', 0):>7.2f}"
                        + (f"   +{added:.2f} ms p50 per hop" if depth else "")
                        + (f"   errors {r['errors']:.0f}" if r["errors"] else ""),
                        flush=True,
                    )
                serve.delete("chain")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
