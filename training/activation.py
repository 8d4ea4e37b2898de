"""Activations and rollbacks that keep the registry and the live serve config in step.

An activation is two writes in two places: the registry row (the store) and the live serve
config (a file, then the running app). Two processes activating at the same moment could
interleave them — A commits v1, B commits v2, B publishes v2, A publishes v1 — and leave the
store saying v2 while the app serves v1. So publishing never writes the version its caller
activated: under an exclusive lock on the live config (``<config>.lock``, ``flock``) it reads
the registry's active model *now* and publishes that. Each caller publishes after its own
commit, so the last publish starts after both commits and writes the final state; the
registry's partial unique index already guarantees one active model (a concurrent
activation fails with a :class:`~conflict_core.errors.RegistryError`, "try again").
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from conflict_core import registry
from conflict_core.settings import Settings
from conflict_core.store import session_scope
from training.publishing import Apply, Published, publish_registry


def publish_current(
    settings: Settings, session_factory: sessionmaker[Session], *, apply: Apply | None = None
) -> tuple[str | None, Published]:
    """Publish what the registry serves at this moment (:func:`training.publishing.publish_registry`,
    under the live config's lock): its active model (none: the heuristics) and its rollout
    challenger, if any; returns the active version and what was published."""
    serving, published = publish_registry(settings, session_factory, apply=apply)
    return (serving.champion.version if serving.champion else None), published


def activate(
    settings: Settings, session_factory: sessionmaker[Session], version: str, *, by: str, apply: Apply | None = None
) -> tuple[str | None, Published]:
    """Activate ``version``, then publish the active model; returns what was published."""
    with session_scope(session_factory) as session:
        registry.activate(session, version, by=by)
    return publish_current(settings, session_factory, apply=apply)


def rollback(
    settings: Settings, session_factory: sessionmaker[Session], *, by: str, apply: Apply | None = None
) -> tuple[str | None, Published]:
    """Re-activate the previously active model, then publish the active model."""
    with session_scope(session_factory) as session:
        registry.rollback(session, by=by)
    return publish_current(settings, session_factory, apply=apply)


def deactivate(
    settings: Settings, session_factory: sessionmaker[Session], version: str, *, apply: Apply | None = None
) -> tuple[str | None, Published]:
    with session_scope(session_factory) as session:
        registry.deactivate(session, version)
    return publish_current(settings, session_factory, apply=apply)
