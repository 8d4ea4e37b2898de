"""The console's login session, CSRF tokens and security headers.

The session is Starlette's signed cookie (itsdangerous, HttpOnly, SameSite=Strict, with a
max age): it holds the admin token's id and name, never the token, and a CSRF token. Every
state-changing form posts that CSRF token back; a request whose token is missing or different
is refused before it changes anything. A logged-in session stays valid only while its token
is unrevoked (checked against the store at most once per ``ttl_s`` per token).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_FIELD = "csrf_token"

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response of the wrapped app."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, with_headers)


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use."""
    token: str | None = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_valid(request: Request, form: FormData) -> bool:
    sent = form.get(CSRF_FIELD)
    expected = request.session.get("csrf")
    return isinstance(sent, str) and bool(expected) and hmac.compare_digest(sent, str(expected))


class SessionCheck:
    """Whether a session's token is still unrevoked, cached for ``ttl_s`` seconds per token id."""

    def __init__(self, still_valid: Callable[[int], bool], ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.still_valid, self.ttl_s, self.clock = still_valid, ttl_s, clock
        self.cache: dict[int, tuple[bool, float]] = {}

    def user(self, request: Request) -> dict[str, Any] | None:
        """The logged-in operator (``{"token_id", "name"}``) or ``None``."""
        token_id, name = request.session.get("token_id"), request.session.get("name")
        if not isinstance(token_id, int) or not isinstance(name, str):
            return None
        now = self.clock()
        cached = self.cache.get(token_id)
        if cached is None or cached[1] <= now:
            cached = self.cache[token_id] = (self.still_valid(token_id), now + self.ttl_s)
        if not cached[0]:
            request.session.clear()
            return None
        return {"token_id": token_id, "name": name}
