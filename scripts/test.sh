#!/usr/bin/env bash
# Sets up .venv (idempotent) and runs every check CI runs: ruff, mypy, the docs site, pytest.
#   bash scripts/test.sh                 # the default suite
#   bash scripts/test.sh -m slow         # extra pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
V=.venv/bin
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
apt_install() {
  $sudo apt-get install -y -q "$@" >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null; }
}
# The replica tests start their own PostgreSQL server from Debian's postgresql package.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
then
  echo "== installing PostgreSQL (Debian's postgresql) for tests/test_postgres.py"
  apt_install postgresql
fi
# The operator page test drives Debian's chromium headless (Selenium, chromedriver).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "== installing chromium and chromedriver (Debian's) for tests/test_ui.py"
  apt_install chromium chromium-driver
fi

echo "== ruff"
"$V/ruff" check .
"$V/ruff" format --check .

echo "== mypy"
# mypy cannot follow setuptools' editable finder (laser.bandit -> bandit/), and no mypy
# setting maps an import name onto a folder of another name (mypy_path and
# explicit_package_bases take package names from folder names), so give it the import
# layout as symlinks.
tc=build/typecheck/laser
mkdir -p "$tc"
for pkg in bandit client server; do ln -sfn "../../../$pkg" "$tc/$pkg"; done
MYPYPATH=build/typecheck "$V/mypy" -p laser.bandit -p laser.client -p laser.server

echo "== docs (mkdocs --strict: a broken link or an unlisted page fails)"
"$V/mkdocs" build --strict --quiet

echo "== pytest"
"$V/python" -m pytest "$@"
