"""A separate process for the lifecycle fault tests: a retrain that blocks at a chosen point
(to be killed there with SIGKILL), or one activation / rollback started at a given instant.

``python -m tests.training.lifecycle_child retrain|activate|rollback CONFIG_JSON``. The
retrain's export, extract and train are the fakes of :mod:`tests.training.retrain_fakes` (the
train registers and gates a new version like the pipeline does); locks, the run record,
publishing and the recovery are the real code.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from conflict_core.errors import RegistryError
from conflict_core.settings import Settings
from conflict_core.store import make_engine, make_session_factory
from tests.training.retrain_fakes import NOW, fake_train
from training import activation, retrain

BLOCK_POINTS = ("export", "extract", "train", "train:done", "publish:apply", "retention")


def block_here(marker: Path) -> None:
    marker.write_text("blocked")
    time.sleep(3600)


def run_retrain(settings: Settings, factory: Any, args: dict[str, Any]) -> None:
    block_at, marker = args.get("block_at"), Path(args["marker"])
    original = retrain._run_step

    def run_step(step: str, *a: Any, **k: Any) -> dict[str, Any]:
        if block_at == step:
            block_here(marker)
        outcome = original(step, *a, **k)
        if block_at == f"{step}:done":
            block_here(marker)
        return outcome

    def train(s: Settings, f: Any, **_: Any) -> dict[str, Any]:
        return fake_train(s, f, args["new_version"], gate=args["gate"])

    def apply(path: Path) -> bool:
        if block_at == "publish:apply":
            block_here(marker)
        return False

    retrain._run_step = run_step  # type: ignore[assignment]
    retrain.export_step = lambda s, e, *, now: {"rows": 10}  # type: ignore[assignment]
    retrain.extract_step = lambda s, *, now, use_ray: {"training_set": "unused", "rows": 10}  # type: ignore[assignment]
    retrain.train_step = train  # type: ignore[assignment]
    summary = retrain.retrain(
        settings,
        factory,
        factory.kw["bind"],
        now=NOW,
        use_ray=False,
        sweep="local",
        lock_ttl=dt.timedelta(seconds=args["lock_ttl_s"]),
        apply=apply,
    )
    print(json.dumps({"status": summary.status, "recovered": summary.recovered_runs, "version": summary.version}))


def run_activation(settings: Settings, factory: Any, command: str, args: dict[str, Any]) -> None:
    Path(args["ready"]).write_text("ready")
    go = Path(args["go"])
    while not go.exists():  # both contenders start at the same instant
        time.sleep(0.001)
    try:
        if command == "activate":
            version, _ = activation.activate(settings, factory, args["version"], by=args["by"])
        else:
            version, _ = activation.rollback(settings, factory, by=args["by"])
    except RegistryError as exc:  # the other activation won the race: refused, not half-done
        print(json.dumps({"refused": str(exc)}))
        return
    print(json.dumps({"published": version}))


def main() -> None:
    command, args = sys.argv[1], json.loads(sys.argv[2])
    settings = Settings(
        database_url=args["database_url"],
        data_dir=Path(args["data_dir"]),
        serve_config_path=Path(args["serve_config"]),
        dashboard_url="http://127.0.0.1:9",
    )
    factory = make_session_factory(make_engine(settings.database_url))
    if command == "retrain":
        run_retrain(settings, factory, args)
    else:
        run_activation(settings, factory, command, args)


if __name__ == "__main__":
    main()
