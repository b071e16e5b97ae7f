#!/usr/bin/env bash
# Set up the development environment in .venv (idempotent; fast when nothing changed).
#   - torch is pinned to 2.13.0 (CPU build); an unpinned torch pulls a multi-GB CUDA build.
#   - installs nnflash-agent and nnflash in editable mode (nnflash with the host, tflite, dev and cluster extras).
#   - as root, installs the system packages the integration tests need (OpenSSH server, iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp_key=$(cat pyproject.toml agent/pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.nnflash-setup-$stamp_key"

if [ -x scripts/install_system_deps.sh ] && [ "$(id -u)" = 0 ]; then
    scripts/install_system_deps.sh
fi

if [ -f "$stamp" ] && [ -x "$VENV/bin/nnflash" ]; then
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
echo "setup: installing nnflash and its dependencies into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c constraints.txt "torch==2.13.0"
# Two distributions: the agent (agent/pyproject.toml, imported as nnflash_agent) and the host
# (pyproject.toml, imported as nnflash.*; src/nnflash/ links to the top-level folders).
# constraints.txt pins every third-party distribution: without it pip's resolver gives up on this graph
# (resolution-too-deep).
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ./agent -e ".[host,tflite,dev,cluster]" "torch==2.13.0"
rm -f "$VENV"/.nnflash-setup-*
touch "$stamp"
echo "setup: done" >&2
