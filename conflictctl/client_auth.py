"""The bearer token conflictctl's own HTTP clients send (predict, traffic, the run's replay)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from conflictctl.context import AppContext


def bearer_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def client_token(app: AppContext, scopes: Sequence[str], name: str) -> Iterator[str | None]:
    """The configured ``api_token`` (``CONFLICT_API_TOKEN``) when there is one; otherwise a token
    with ``scopes`` created in the store for this command and revoked when it ends."""
    from conflict_core import tokens

    configured = app.settings.api_token
    if configured is not None:
        yield configured.get_secret_value()
        return
    if not app.settings.access_control_enabled:
        yield None
        return
    with app.session_factory.begin() as session:
        row, token = tokens.create(session, name=name, scopes=scopes)
        token_id = row.id
    try:
        yield token
    finally:
        with app.session_factory.begin() as session:
            tokens.revoke(session, str(token_id))
