#!/usr/bin/env bash
# One command: install what is missing (SuiteSparse, OpenBLAS, mme with its Python deps)
# and run the main job — the seed's RCBD fitted with blocks fixed and blocks random.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
bash scripts/system-deps.sh
$PY -m pip install -q .
cd /tmp && $PY -m mme.examples.rcbd
