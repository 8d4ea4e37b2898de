"""Publishing the active model into the live Serve config, and the training job that does it.

The committed ``serve_config.yaml`` is a template and is never written. The live config
(``settings.serve_config_path``, under the data directory by default) is a copy of it made
the first time a model is published, holding the active model in ``ModelInference``'s
``user_config``; it is what the running app is deployed from. Applying the live config to a
running app is Ray's business and belongs to the caller, who passes it in as ``apply``
(``ray_control.serve_deploy.applier``), so this module stays plain Python.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from conflict_core import locks, rollout, serve_config
from conflict_core.errors import ConfigurationError
from conflict_core.rollout import Serving
from conflict_core.settings import Settings

log = logging.getLogger(__name__)

Apply = Callable[[Path], bool]
"""Puts the model of a live config into the running app; ``False`` when no app runs."""


@dataclass(frozen=True)
class Published:
    serve_config_updated: bool
    serve_app_reconfigured: bool


def publish_active_model(
    settings: Settings,
    *,
    version: str | None,
    artifact_path: str | None,
    artifact_sha256: str | None,
    apply: Apply | None = None,
) -> Published:
    """Write the model (``None`` everywhere: none, the heuristics answer) into the live config,
    creating it from the template first if needed, then ``apply`` it when given."""
    try:
        path = serve_config.ensure_live(settings.serve_config_template, settings.serve_config_path)
    except ConfigurationError as exc:
        log.warning("the running app keeps its model: %s", exc)
        return Published(False, False)
    serve_config.set_model(path, version=version, artifact_path=artifact_path, artifact_sha256=artifact_sha256)
    return Published(True, apply(path) if apply is not None else False)


def publish_serving(settings: Settings, serving: Serving, *, apply: Apply | None = None) -> Published:
    """Write the champion and the challenger of ``serving`` into the live config (created from
    the template first if needed), then ``apply`` it when given: a rollout step's publish."""
    try:
        path = serve_config.ensure_live(settings.serve_config_template, settings.serve_config_path)
    except ConfigurationError as exc:
        log.warning("the running app keeps its models: %s", exc)
        return Published(False, False)
    serve_config.set_serving(path, serving)
    return Published(True, apply(path) if apply is not None else False)


@contextmanager
def config_lock(config_path: Path) -> Iterator[None]:
    """An exclusive lock of the live config between processes of this machine (blocks until free)."""
    lock_path = config_path.with_name(config_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def publish_registry(
    settings: Settings, session_factory: sessionmaker[Session], *, apply: Apply | None = None
) -> tuple[Serving, Published]:
    """Publish what the registry says now: its active model and its rollout challenger, if any.

    Under an exclusive lock of the live config, the registry is read *inside* the lock: each
    caller publishes after its own commit, so whichever publish runs last writes the final
    state, and two processes (an activation and a rollout step, say) cannot interleave their
    writes and leave the config naming what the registry no longer says.
    """
    with config_lock(settings.serve_config_path):
        with session_factory() as session:
            serving = rollout.serving(session)
        return serving, publish_serving(settings, serving, apply=apply)


def train_and_publish(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    training_set: Path | None = None,
    sweep: str = "ray",
    num_samples: int | None = None,
    activated_by: str,
    apply: Apply | None = None,
    progress: Callable[[str], None] = lambda message: None,
    search_feature_params: bool = False,
    events_dir: Path | None = None,
    days_back: int | None = None,
) -> dict[str, Any]:
    """The training job: train, register and gate under the retrain's lock (a manual training
    and the weekly retrain never gate and activate at once), then publish an activation.

    ``search_feature_params``: first learn the feature windows from the exported events
    (:func:`training.feature_search.search`, Ray tasks unless ``sweep`` is local) and train on
    the winner's training set.
    """
    from training import feature_search, retrain
    from training.extract import latest_event_time
    from training.pipeline import train_and_register

    with locks.job_lock(session_factory, retrain.LOCK_NAME, ttl=dt.timedelta(hours=6)):
        searched, seed_training_set = None, None
        if search_feature_params:
            events = events_dir or settings.events_dir
            searched = feature_search.search(
                events,
                settings.features_dir / "search",
                end=latest_event_time(events),
                days_back=days_back or settings.training_days_back,
                num_samples=num_samples or settings.sweep_num_samples,
                use_ray=sweep == "ray",
                task_cpus=settings.job_task_cpus,
                progress=progress,
            )
            training_set = Path(searched[0].training_set)
            seed_training_set = feature_search.default_training_set(searched)
            progress(f"feature params: {searched[0].label} won")
        result = train_and_register(
            settings,
            session_factory,
            training_set=training_set or settings.features_dir,
            feature_search=searched,
            seed_training_set=seed_training_set,
            sweep=sweep,
            num_samples=num_samples,
            activated_by=activated_by,
            progress=progress,
        )
        published = Published(False, False)
        if result.rollout_stage:
            _, published = publish_registry(settings, session_factory, apply=apply)
        elif result.activated:
            published = publish_active_model(
                settings,
                version=result.version,
                artifact_path=result.artifact_path,
                artifact_sha256=result.artifact_sha256,
                apply=apply,
            )
    decision = (
        f"put in {result.rollout_stage}"
        if result.rollout_stage
        else "activated"
        if result.activated
        else "kept as a candidate"
    )
    return {
        **result.to_dict(),
        **asdict(published),
        "headline": f"{result.version} ({result.algorithm}) {decision}: {result.gate_reason}",
    }
