"""Reading a request body defensively: declared type, size limit, and a deadline.

A slow client (a slowloris-style body trickled byte by byte, or a declared length that never
arrives) holds only its own coroutine, never a thread, and only until ``timeout_s``: then it
gets a 408 and the replica forgets it. A body over the limit is refused by its declared
length before any of it is read, or as soon as the bytes read pass the limit. A body
declared as anything but JSON gets a 415; a missing Content-Type is taken as JSON.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from serve_app.schemas import RequestError

BODY_READ_TIMEOUT_S = 10.0


def check_json_content_type(content_type: str | None) -> None:
    """Refuse a declared media type that is not JSON (``application/json`` or ``*/*+json``)."""
    if content_type is None or not content_type.strip():
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json")):
        return
    raise RequestError(415, "content-type", f"expected application/json, got {media_type!r}")


async def read_body(request: Request, *, max_bytes: int, timeout_s: float = BODY_READ_TIMEOUT_S) -> bytes:
    """The whole body of ``request``, or a :class:`RequestError` (408, 413 or 415)."""
    check_json_content_type(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, "body", f"request body is {declared} bytes, the limit is {max_bytes}")

    async def chunks() -> bytes:
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise RequestError(413, "body", f"request body exceeds the limit of {max_bytes} bytes")
            parts.append(chunk)
        return b"".join(parts)

    try:
        return await asyncio.wait_for(chunks(), timeout_s)
    except TimeoutError:
        raise RequestError(408, "body", f"the request body did not arrive within {timeout_s:g} s") from None
