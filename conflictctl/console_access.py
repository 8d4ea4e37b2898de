"""What ``conflictctl run`` needs for access control: its own tokens, and how to open the console."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from conflict_core.settings import Settings
from conflictctl.context import AppContext

PREDICTION_APP = "serve_app.app:build_app"
CONSOLE_APP = "serve_app.console.deployment:build_console"


@dataclass(frozen=True)
class RunTokens:
    client: str | None  # predict + record: the replayed devices
    admin: str | None  # the console login


def issue_run_tokens(app: AppContext) -> RunTokens:
    """A ``predict``+``record`` token for the replay and an ``admin`` token for the console, created
    in the store (the configured ``api_token`` serves the replay when there is one)."""
    from conflict_core import tokens

    with app.session_factory.begin() as session:
        admin = tokens.create(session, name="console admin (conflictctl run)", scopes=["admin"])[1]
        client = (
            app.settings.api_token.get_secret_value()
            if app.settings.api_token is not None
            else tokens.create(session, name="replayed devices (conflictctl run)", scopes=["predict", "record"])[1]
        )
    return RunTokens(client=client, admin=admin)


def fill_console_args(serve_config: dict[str, Any], settings: Settings) -> None:
    """Give the console application this run's absolute paths and dashboard (its replicas do not
    share this shell's working directory)."""
    for application in serve_config["applications"]:
        if application.get("import_path") == CONSOLE_APP:
            args = application.setdefault("args", {})
            args.setdefault("data_dir", str(settings.data_dir.resolve()))
            args.setdefault("serve_config_path", str(settings.serve_config_path.resolve()))
            args.setdefault("serve_config_template", str(settings.serve_config_template.resolve()))
            args.setdefault("dashboard_url", settings.dashboard_url)


def echo_console_login(settings: Settings, run_tokens: RunTokens) -> None:
    console = settings.serve_url.rstrip("/") + "/admin/"
    click.echo(f"operator console  {console}  (while the app runs; log in with this admin token:)")
    click.echo(f"  {run_tokens.admin}")
    click.echo("  more tokens: conflictctl tokens create --scope admin --name YOUR_NAME")
