"""What every command shares: the settings, an engine and a session factory, built on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import click
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from conflict_core.settings import Settings
from conflict_core.store import make_engine, make_session_factory


@dataclass
class AppContext:
    overrides: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def settings(self) -> Settings:
        return Settings(**self.overrides)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)


pass_app = click.make_pass_decorator(AppContext)


def progress_bar(total: int | None, description: str, unit: str = "rows") -> tqdm:
    """A progress bar on stderr, quiet when stderr is not a terminal (CI, job logs)."""
    return tqdm(
        total=total, desc=description, unit=unit, unit_scale=True, dynamic_ncols=True, mininterval=0.5, disable=None
    )
