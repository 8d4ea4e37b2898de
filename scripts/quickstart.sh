#!/usr/bin/env bash
# Set everything up, then run the whole product on the embedded defaults
# (SQLite under data/, a local Ray instance): see README "Quickstart".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/conflictctl run "$@"
