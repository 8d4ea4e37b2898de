"""``conflictctl``: one command line for every operation of Conflict Predictor."""

from conflictctl.main import main

__all__ = ["main"]
