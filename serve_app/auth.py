"""Bearer-token access control for the HTTP routes.

Each route needs one scope (``ROUTE_SCOPES``); health, readiness and the OpenAPI document need none. A replica
verifies a token against the store once, then trusts the answer for ``ttl_s`` seconds from an
in-memory cache keyed by the token's sha256: the hot path costs one hash and one dict lookup,
and a revocation reaches every replica within ``ttl_s``. A token in use is verified again in
the background during the last fifth of its cache period, while requests go on being answered
from the cache, so under steady traffic no request waits for the store; requests that do have
to wait (a token first seen, or back after a quiet spell) share one store query per token.
Under CPU contention on PostgreSQL, waiting requests had cost a p99 of ~1 s every cache period
(BENCHMARKS.md). Unknown tokens are cached too (a
flood of made-up tokens cannot turn into a flood of store queries beyond one per token). When
the store is unreachable, a token it vouched for within ``stale_if_error_s`` stays good, so
predictions go on through an outage as the rest of the serving path does.

Refusals are JSON naming the problem: no or unknown token 401, revoked token 401, a token
without the route's scope 403. A refused request never reaches the route, so it is never
logged as a prediction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from conflict_core import tokens
from conflict_core.store import session_scope
from conflict_core.tokens import Scope, TokenInfo, hash_token

log = logging.getLogger(__name__)

REFRESH_AHEAD = 0.2  # the share of the cache period, at its end, in which use re-verifies in the background

ROUTE_SCOPES: dict[tuple[str, str], Scope] = {
    ("POST", "/v1/predict"): Scope.PREDICT,
    ("POST", "/v1/sync-events"): Scope.RECORD,
    ("GET", "/v1/models"): Scope.READ,
    ("GET", "/v1/prediction-log/status"): Scope.READ,
}
OPEN_ROUTES = frozenset({("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json")})


def store_verifier(sessions: sessionmaker[Session]) -> Callable[[str], TokenInfo | None]:
    """:func:`conflict_core.tokens.verify` in a session of its own, for :class:`TokenGate`."""

    def verify(token: str) -> TokenInfo | None:
        with session_scope(sessions) as session:
            return tokens.verify(session, token)

    return verify


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def refusal(status: int, problem: str) -> JSONResponse:
    error = "unauthorized" if status == 401 else "forbidden" if status == 403 else "unavailable"
    headers = {"WWW-Authenticate": 'Bearer realm="conflict-predictor"'} if status == 401 else None
    return JSONResponse({"error": error, "problem": problem}, status_code=status, headers=headers)


@dataclass
class _Entry:
    info: TokenInfo | None
    expires: float
    verified: float  # when the store last answered for this token


def _retrieve_failure(task: asyncio.Task[TokenInfo | None]) -> None:
    """Mark a verification's failure as seen: a background one has nobody awaiting it, and the
    next request that needs the answer asks the store again (and handles the failure)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("token verification failed: %s", task.exception())


class TokenGate:
    """Decides, per request, whether its bearer token may use the route.

    ``verify`` is the store lookup (:func:`conflict_core.tokens.verify` in a session); it runs in
    a worker thread, one at a time per token, about once per token in use per ``ttl_s``.
    """

    def __init__(
        self,
        verify: Callable[[str], TokenInfo | None],
        *,
        enabled: bool = True,
        ttl_s: float = 5.0,
        stale_if_error_s: float = 600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        component: str = "the prediction app",
    ):
        self.verify, self.enabled, self.ttl_s, self.stale_if_error_s = verify, enabled, ttl_s, stale_if_error_s
        self.max_entries, self.clock = max_entries, clock
        self.cache: dict[str, _Entry] = {}
        self._verifying: dict[str, asyncio.Task[TokenInfo | None]] = {}
        if not enabled:
            log.warning(
                "access control is OFF for %s (access_control_enabled=false): every route is open to anyone "
                "who can reach the port",
                component,
            )

    async def identify(self, token: str) -> TokenInfo | None:
        """What the store says about ``token``, from the cache while it is fresh."""
        digest = hash_token(token)
        now = self.clock()
        entry = self.cache.get(digest)
        if entry is not None and now < entry.expires:
            if now >= entry.expires - REFRESH_AHEAD * self.ttl_s and digest not in self._verifying:
                self._verification(digest, token)  # answered from the cache; the store is asked beside it
            return entry.info
        try:
            # asyncio.shield: a caller that gives up leaves the query to the others waiting on it.
            return await asyncio.shield(self._verifying.get(digest) or self._verification(digest, token))
        except Exception:
            # The store is down: predictions go on with the heuristics and a spilled log, so a
            # token it vouched for lately stays good (a revocation cannot be learned meanwhile);
            # asked again after another cache period.
            entry = self.cache.get(digest)
            if entry is None or entry.info is None or now - entry.verified > self.stale_if_error_s:
                raise
            entry.expires = max(entry.expires, now + self.ttl_s)
            return entry.info

    def _verification(self, digest: str, token: str) -> asyncio.Task[TokenInfo | None]:
        """The store query for ``token`` in a worker thread; its answer goes into the cache."""

        async def verify() -> TokenInfo | None:
            try:
                info = await asyncio.to_thread(self.verify, token)
            finally:
                self._verifying.pop(digest, None)
            now = self.clock()
            if len(self.cache) >= self.max_entries:
                self.cache = {k: v for k, v in self.cache.items() if v.expires > now}
                if len(self.cache) >= self.max_entries:
                    self.cache.clear()
            self.cache[digest] = _Entry(info, now + self.ttl_s, now)
            return info

        task = self._verifying[digest] = asyncio.get_running_loop().create_task(verify())
        task.add_done_callback(_retrieve_failure)
        return task

    async def check(self, token: str | None, scope: Scope) -> JSONResponse | None:
        """``None`` when ``token`` may act with ``scope``; otherwise the refusal to send."""
        if not self.enabled:
            return None
        if token is None:
            return refusal(401, f"no bearer token: send 'Authorization: Bearer <token>' with the {scope} scope")
        try:
            info = await self.identify(token)
        except Exception as exc:  # the store is down: refuse, but as the outage it is
            log.warning("token verification failed: %s: %s", type(exc).__name__, exc)
            return refusal(503, "the token could not be verified (store unreachable); retry later")
        if info is None:
            return refusal(401, "the bearer token is not one this service issued")
        if info.revoked:
            return refusal(401, f"the bearer token {info.name!r} was revoked")
        if scope not in info.scopes:
            have = ", ".join(sorted(info.scopes)) or "none"
            return refusal(403, f"the token {info.name!r} lacks the {scope} scope this route needs (it has: {have})")
        return None

    async def refuse(self, request: Request, path: str) -> Response | None:
        """The refusal for ``request`` on ``path``, or ``None``; a route missing from
        ``ROUTE_SCOPES`` and ``OPEN_ROUTES`` needs ``admin`` (closed unless said otherwise)."""
        route = ("GET" if request.method == "HEAD" else request.method, path)
        if route in OPEN_ROUTES:
            return None
        return await self.check(bearer_token(request), ROUTE_SCOPES.get(route, Scope.ADMIN))
