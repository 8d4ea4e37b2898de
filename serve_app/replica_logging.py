"""The serve app's log lines in Ray Serve's replica logs.

When a replica starts (and whenever its deployment's ``logging_config`` changes), Serve
attaches its handlers to the ``ray.serve`` logger: the replica's log file
``logs/serve/replica_<app>_<deployment>_<id>.log`` in the Ray session's folder, with the
replica and request ids, and stderr. That logger does not propagate, and the app's modules
log under ``serve_app.*``, so without this module their warnings (a prediction log that
cannot spool, a store that is down) reach neither the replica's file nor Serve's format.

:func:`log_through_serve`, called first in every deployment's constructor, hands the
``serve_app`` records to whatever handlers ``ray.serve`` has at the moment of each record,
at the deployment's log level as the replica started (or above, if it is raised later).
Outside a replica (tests, the command line, benchmarks) it does nothing: the modules'
loggers stay ordinary ones.
"""

from __future__ import annotations

import logging

APP_LOGGER = "serve_app"
SERVE_LOGGER = "ray.serve"  # ray.serve._private.constants.SERVE_LOGGER_NAME


class ToServeLogger(logging.Handler):
    """Passes each record to the ``ray.serve`` logger's handlers (its file and stream), looked up
    per record: Serve replaces them when the deployment's logging config changes."""

    def emit(self, record: logging.LogRecord) -> None:
        serve_logger = logging.getLogger(SERVE_LOGGER)
        if record.levelno >= serve_logger.getEffectiveLevel():
            serve_logger.handle(record)


def in_replica() -> bool:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


def log_through_serve() -> None:
    """In a Serve replica: the ``serve_app`` loggers write through Serve's replica handlers
    (and only there: no second copy through the root logger). Idempotent."""
    if not in_replica():
        return
    app_logger = logging.getLogger(APP_LOGGER)
    if not any(isinstance(handler, ToServeLogger) for handler in app_logger.handlers):
        app_logger.addHandler(ToServeLogger())
    # The deployment's log level decides; below it no record is even made.
    app_logger.setLevel(logging.getLogger(SERVE_LOGGER).getEffectiveLevel())
    app_logger.propagate = False
