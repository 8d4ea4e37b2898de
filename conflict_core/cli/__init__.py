"""``conflictctl``: one command line for every operation of Conflict Predictor."""

from conflict_core.cli.main import main

__all__ = ["main"]
