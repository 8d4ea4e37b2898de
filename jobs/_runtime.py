"""What every Ray Job entrypoint shares: argument basics, settings, Ray start-up, summary."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from conflict_core.errors import ConflictPredictorError
from conflict_core.settings import Settings


def base_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--database-url", help="store URL (default: settings / DATABASE_URL)")
    parser.add_argument("--data-dir", help="root of exports, features and models (default: settings)")
    parser.add_argument(
        "--serve-config", help="serve_config.yaml to publish an activated model into (default: settings)"
    )
    return parser


def utc_timestamp(text: str) -> dt.datetime:
    """An ISO 8601 instant with an offset (``Z`` or ``+00:00``), as UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 timestamp, got {text!r}") from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"timestamp {text!r} has no offset; add Z for UTC")
    return value.astimezone(dt.UTC)


def settings_from(args: argparse.Namespace) -> Settings:
    given = {"database_url": args.database_url, "data_dir": args.data_dir, "serve_config_path": args.serve_config}
    overrides = {k: v for k, v in given.items() if v}
    return Settings(**overrides)


def init_ray(settings: Settings) -> None:
    """Join the cluster the job was submitted to, or the configured one, or start a local one.

    A local instance (a job run by hand, without ``settings.ray_address``) is this process's
    own and stops with it; run jobs beside a live app by submitting them to its cluster.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or settings.ray_address
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)


def run(main: Callable[[], dict[str, Any]]) -> None:
    """Run a job body, print its summary as JSON, and exit non-zero on a product error."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = main()
    except ConflictPredictorError as exc:
        print(json.dumps({"status": "failed", "error": str(exc), "error_type": type(exc).__name__}), flush=True)
        sys.exit(1)
    print(json.dumps({"status": "succeeded", **summary}, default=str, indent=2), flush=True)
