"""The ``conflictctl`` group; each concern adds its commands from its own module."""

from __future__ import annotations

import logging

import click

from conflict_core.errors import ConflictPredictorError
from conflictctl.context import AppContext


class _Group(click.Group):
    """Turns the product's own errors into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except ConflictPredictorError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--database-url", envvar="DATABASE_URL", help="Store URL (default: SQLite under data/).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Root of exports, features and models.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, data_dir: str | None, verbose: bool) -> None:
    """Predict sync edit conflicts: manage the store, train models, serve and monitor them."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        # Per-request and per-plugin chatter of the libraries; their warnings still show.
        for name in ("httpx", "httpcore", "alembic", "ray.dashboard.modules.job.sdk", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    overrides = {k: v for k, v in {"database_url": database_url, "data_dir": data_dir}.items() if v}
    ctx.obj = AppContext(overrides=overrides)


def _register() -> None:
    from conflictctl import (
        data_commands,
        lifecycle_commands,
        model_commands,
        pipeline_commands,
        rollout_commands,
        serve_commands,
        token_commands,
    )

    for module in (
        data_commands,
        model_commands,
        pipeline_commands,
        serve_commands,
        lifecycle_commands,
        token_commands,
    ):
        for command in module.COMMANDS:
            main.add_command(command)
    for command in rollout_commands.MODEL_COMMANDS:
        model_commands.models_group.add_command(command)


_register()
