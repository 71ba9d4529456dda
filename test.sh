#!/usr/bin/env bash
# One command: install mme with its test dependencies and run the test suite.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
bash scripts/system-deps.sh
PYTHON=$PY bash scripts/python-deps.sh
$PY -m pip install -q ".[test]"
$PY -m pytest -q "$@"
