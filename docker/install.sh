#!/bin/sh
# The one install of supportloop, used by the README's commands (the Makefile's `install`) and by the
# Docker images (docker/Dockerfile), so the two cannot drift (tests/test_docker.py checks that both call it).
#
#   sh docker/install.sh VENV [pip arguments...]     e.g.  sh docker/install.sh .venv -e ".[test]"
#
# Makes a virtual environment at VENV with torch pinned and supportloop. torch is pinned here, not in
# pyproject.toml (which keeps a range): SUPPORTLOOP_TORCH (default torch==2.13.0, the CPU build these
# machines have on disk); TORCH_INDEX_URL, when set, is where torch comes from (the Docker images: the CPU
# wheels at https://download.pytorch.org/whl/cpu; the CUDA variant: .../whl/cu126).
set -eu
VENV=$1
shift
PYTHON=${PYTHON:-python3}
TORCH=${SUPPORTLOOP_TORCH:-torch==2.13.0}

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$VENV/bin/pip" install --quiet --index-url "$TORCH_INDEX_URL" "$TORCH"
fi
"$VENV/bin/pip" install --quiet "$TORCH" "$@"
