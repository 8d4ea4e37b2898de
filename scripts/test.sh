#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit, PostgreSQL-backed and Ray-backed).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not ray"` for the fast part only.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The layers of pyproject.toml's import-linter contracts: imports point down, Ray stays at the edges.
.venv/bin/lint-imports --no-cache
# pytest exits 5 when it collected no test; that is a failure here, like any non-zero status.
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
