"""The ``conflictctl`` group; each concern adds its commands from its own module."""

from __future__ import annotations

import logging

import click

from conflict_core.errors import ConflictPredictorError
from conflictctl.context import AppContext

# Libraries whose per-request and per-plugin chatter is INFO; their warnings still show.
QUIET_LOGGERS = ("httpx", "httpcore", "alembic")
# Ray sets these two loggers' level to INFO when their modules are imported ("ray.serve" on
# ``import ray.serve``, which also replaces its handlers; the job SDK on ``import
# ray.job_submission``). The commands import Ray lazily, after this group's callback ran, so a
# level set here would be undone; a filter on the logger itself survives both.
RAY_INFO_LOGGERS = ("ray.serve", "ray.dashboard.modules.job.sdk")


class WarningsOnly(logging.Filter):
    """Lets through warnings and errors only, whatever level the logger is set to later."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet_library_loggers() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in RAY_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, WarningsOnly) for f in logger.filters):
            logger.addFilter(WarningsOnly())


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
        quiet_library_loggers()
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
