#!/usr/bin/env bash
# Sets up .venv (idempotent) and serves the embedded default on 127.0.0.1:8000.
# Extra arguments go to `laser-server serve` (see `laser-server serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/laser-server serve "$@"
