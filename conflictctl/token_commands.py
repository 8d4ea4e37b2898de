"""API token commands: ``conflictctl tokens create | list | revoke``."""

from __future__ import annotations

import click

from conflict_core.tokens import Scope
from conflictctl.context import AppContext, pass_app


@click.group("tokens")
def tokens_group() -> None:
    """Scoped bearer tokens for the HTTP API and the console (stored hashed)."""


@tokens_group.command("create")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice([scope.value for scope in Scope]),
    help="what the token may do; repeat for several",
)
@click.option("--name", required=True, help="who or what uses the token (shown in the console's audit trail)")
@pass_app
def tokens_create(app: AppContext, scopes: tuple[str, ...], name: str) -> None:
    """Create a token; it is printed once, alone on the last line, and never stored in clear."""
    from conflict_core import db, tokens

    db.upgrade(app.settings.database_url)
    with app.session_factory.begin() as session:
        row, token = tokens.create(session, name=name, scopes=scopes)
        click.echo(f"created token {row.id} {row.name!r} with scopes {', '.join(row.scopes)}; it is shown only once:")
    click.echo(token)


@tokens_group.command("list")
@click.option("--active", is_flag=True, help="leave out revoked tokens")
@pass_app
def tokens_list(app: AppContext, active: bool) -> None:
    """Every token: id, name, scopes, created, last used, revoked."""
    from conflict_core import tokens

    with app.session_factory() as session:
        rows = tokens.list_tokens(session, include_revoked=not active)
    if not rows:
        click.echo("no tokens (create one: conflictctl tokens create --scope predict --name NAME)")
        return
    click.echo(f"{'id':>4}  {'name':<24} {'scopes':<28} {'created':<17} {'last used':<17} revoked")
    for row in rows:
        click.echo(
            f"{row.id:>4}  {row.name:<24} {','.join(row.scopes):<28} {row.created_at:%Y-%m-%d %H:%M}  "
            f"{f'{row.last_used_at:%Y-%m-%d %H:%M}' if row.last_used_at else '-':<17} "
            f"{f'{row.revoked_at:%Y-%m-%d %H:%M}' if row.revoked_at else ''}"
        )


@tokens_group.command("revoke")
@click.argument("ident")
@pass_app
def tokens_revoke(app: AppContext, ident: str) -> None:
    """Revoke the token with id IDENT, or every unrevoked token named IDENT.

    Replicas trust a verified token for token_cache_ttl_s seconds (5 by default), so a
    revocation is in force everywhere within that time.
    """
    from conflict_core import tokens

    with app.session_factory.begin() as session:
        rows = tokens.revoke(session, ident)
        click.echo("revoked " + ", ".join(f"{row.id} {row.name!r}" for row in rows))
    click.echo(f"in force on every replica within {app.settings.token_cache_ttl_s:g} s")


COMMANDS = [tokens_group]
