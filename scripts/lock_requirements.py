"""Write requirements.lock: the project's runtime dependencies (no dev extras), pinned to the
versions installed in this virtualenv, with everything they pull in. The Dockerfile installs
exactly these. Run after changing dependencies: ``.venv/bin/python scripts/lock_requirements.py``."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "conflict-predictor"
# The image's Python and platform, for the markers (the image is Linux, x86_64, CPython 3.11).
ENVIRONMENT: dict[str, str] = {
    **cast(dict[str, str], default_environment()),
    "python_version": "3.11",
    "sys_platform": "linux",
    "platform_system": "Linux",
}


def closure(root: str) -> dict[str, str]:
    pinned: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        dist = metadata.distribution(name)
        if canonicalize_name(name) != PROJECT:
            pinned[canonicalize_name(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate(cast(Any, {**ENVIRONMENT, "extra": extra})) for extra in (extras or {""})
            ):
                continue
            pending.append((req.name, frozenset(req.extras)))
    return pinned


def main() -> None:
    pinned = closure(PROJECT)
    lines = [f"{name}=={version}" for name, version in sorted(pinned.items())]
    header = "# Pinned runtime dependencies of conflict-predictor; written by scripts/lock_requirements.py\n"
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "requirements.lock"
    out.write_text(header + "\n".join(lines) + "\n")
    print(f"{out}: {len(lines)} packages")


if __name__ == "__main__":
    main()
