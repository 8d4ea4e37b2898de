"""The console as its own Ray Serve application: ``serve_app.console.deployment:build_console``.

It runs beside the prediction app (route prefix ``/admin`` in ``serve_config.yaml``) with a
deployment of its own, so console pages never take a prediction replica's time.
"""

from __future__ import annotations

from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application, Deployment
from starlette.types import ASGIApp

from conflict_core.settings import Settings
from serve_app.replica_logging import log_through_serve


class ConsoleArgs(BaseModel):
    """The application's ``args``; anything left out comes from the replica's settings."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(default=None, description="Store URL; default from settings.")
    data_dir: str | None = Field(default=None, description="Data root (absolute); default from settings.")
    serve_config_path: str | None = Field(
        default=None, description="The serve config activations write (absolute); default from settings."
    )
    serve_config_template: str | None = Field(
        default=None, description="The committed serve config the live one is made from (absolute)."
    )
    dashboard_url: str | None = Field(default=None, description="Ray dashboard for job submission and links.")
    https_only: bool = Field(default=False, description="Mark the session cookie Secure (behind HTTPS).")

    def settings(self) -> Settings:
        overrides = {k: v for k, v in self.model_dump(exclude={"https_only"}).items() if v is not None}
        return Settings(**overrides)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.05})
@serve.ingress()
class ConsoleIngress:
    def __init__(self, args: dict[str, Any]):
        log_through_serve()
        self.args = ConsoleArgs.model_validate(args)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        from serve_app.console.app import ConsoleConfig, create_app

        return create_app(ConsoleConfig(self.args.settings(), https_only=self.args.https_only))


def build_console(args: ConsoleArgs | dict[str, Any]) -> Application:
    """The console application; ``args`` are validated here, so a typo fails the deploy."""
    validated = args if isinstance(args, ConsoleArgs) else ConsoleArgs.model_validate(args)
    return cast(Deployment, ConsoleIngress).bind(validated.model_dump())
