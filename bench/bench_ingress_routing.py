"""Ingress dispatch cost per request, in-process: the ingress's own matching over its Starlette
routes (Serve's ``__call__(request) -> Response`` contract) against Starlette's ``Router`` and a
``Starlette`` app with JSON 404/405 handlers over the same guarded endpoints.

Direct ASGI calls, no network and no Ray; CPU time of this thread (robust to a shared machine's
load), median and best of ``--repeat`` rounds of ``--calls`` calls, the variants interleaved.

    .venv/bin/python bench/bench_ingress_routing.py [--calls 5000] [--repeat 9]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.routing import Route, Router  # noqa: E402

from serve_app.schemas import RequestError, error_response  # noqa: E402
from tests.serve_app.ingress_harness import build_ingress  # noqa: E402

CASES = {
    "GET /healthz": ("GET", "/healthz"),
    "GET /v1/prediction-log/status (token)": ("GET", "/v1/prediction-log/status"),
    "GET /nope (404)": ("GET", "/nope"),
}


def http_scope(method: str, path: str, token: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode()), (b"host", b"127.0.0.1")],
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 1),
        "root_path": "",
        "http_version": "1.1",
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    pass


def variants(ingress: Any) -> dict[str, Callable[[dict[str, Any]], Awaitable[None]]]:
    async def as_deployed(scope: dict[str, Any]) -> None:  # what Serve does for a plain deployment
        response = await ingress(Request(scope, receive, send))
        await response(scope, receive, send)

    def guarded(route: Any) -> Callable[[Request], Awaitable[Any]]:
        async def endpoint(request: Request) -> Any:
            if (refused := await ingress.gate.refuse(request, route.path)) is not None:
                return refused
            try:
                return await route.endpoint(request)
            except RequestError as exc:
                return error_response(exc.status, **exc.to_body())

        return endpoint

    async def not_found(scope: Any, receive: Any, send: Any) -> None:
        await error_response(404, "not_found", f"no route {scope['path']}")(scope, receive, send)

    routes = [Route(r.path, guarded(r), methods=sorted(r.methods - {"HEAD"})) for r in ingress.router.routes]
    router = Router(routes, default=not_found, redirect_slashes=False)

    def http_error(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else "method_not_allowed"
        return error_response(exc.status_code, code, str(exc.detail))

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})

    async def through_router(scope: dict[str, Any]) -> None:
        await router(scope, receive, send)

    async def through_app(scope: dict[str, Any]) -> None:
        await app(scope, receive, send)

    return {"ingress matching": as_deployed, "Router": through_router, "Starlette app": through_app}


async def measure(ingress: Any, calls: int, repeat: int) -> None:
    ways = variants(ingress)
    for label, (method, path) in CASES.items():
        scope = http_scope(method, path, ingress.harness_token)
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(repeat):
            for name, call in ways.items():
                for _ in range(200):
                    await call(dict(scope))
                started = time.thread_time()
                for _ in range(calls):
                    await call(dict(scope))
                times[name].append((time.thread_time() - started) / calls * 1e6)
        for name, values in times.items():
            print(f"{label:40s} {name:18s} median {statistics.median(values):6.1f} us  best {min(values):6.1f} us")
    await ingress.writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ingress, lookup, _ = build_ingress(Path(tmp))
        try:
            asyncio.run(measure(ingress, args.calls, args.repeat))
        finally:
            lookup.core.close()


if __name__ == "__main__":
    main()
