"""What every Ray Job entrypoint shares: argument basics, settings, and how a run ends.

An entrypoint's ``main(argv)`` parses its arguments, calls one library function and returns
the run's summary (a JSON-able dict, with a one-line ``headline``). :func:`run` prints the
summary, writes it to ``--result-file`` (what :func:`ray_control.jobs.run_job` returns to the
submitter) and exits 1 on a product error, whose summary says what failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conflict_core.atomic import write_text_atomically
from conflict_core.errors import ConflictPredictorError
from conflict_core.settings import Settings


class JobError(ConflictPredictorError):
    """A job ran and failed; ``summary`` is what it leaves as its result."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def base_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--database-url", help="store URL (default: settings / DATABASE_URL)")
    parser.add_argument("--data-dir", help="root of exports, features and models (default: settings)")
    parser.add_argument(
        "--serve-config", help="the live serve config to publish an activated model into (default: settings)"
    )
    parser.add_argument("--result-file", type=Path, help="also write the run's summary (JSON) to this file")
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


def run(main: Callable[[list[str] | None], dict[str, Any]], argv: list[str] | None = None) -> None:
    """Run a job body; print and store its summary; exit non-zero on a product error."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--result-file", type=Path)
    result_file = peek.parse_known_args(argv)[0].result_file
    status = 0
    try:
        summary = {"status": "succeeded", **main(argv)}
    except JobError as exc:
        summary, status = {"status": "failed", "error": str(exc), **exc.summary}, 1
    except ConflictPredictorError as exc:
        summary, status = {"status": "failed", "error": str(exc), "error_type": type(exc).__name__}, 1
    text = json.dumps(summary, default=str, indent=2)
    print(text, flush=True)
    if summary.get("headline"):
        print(summary["headline"], file=sys.stderr if status else sys.stdout, flush=True)
    if result_file is not None:
        write_text_atomically(result_file, text)
    sys.exit(status)
