#!/usr/bin/env bash
# Test dependency: the scikit-sparse series that matches the system SuiteSparse
# (the tests check mme's own CHOLMOD binding against it; mme does not import it):
# 0.4.x builds against SuiteSparse 5 (Debian 12's libsuitesparse-dev), 0.5 needs 7.
set -euo pipefail
PY=${PYTHON:-python3}
if $PY -c "import sksparse.cholmod" 2>/dev/null; then
  echo "python-deps: scikit-sparse already importable"; exit 0
fi
hdr=$(ls /usr/include/suitesparse/SuiteSparse_config.h "${CONDA_PREFIX:-/nonexistent}/include/SuiteSparse_config.h" 2>/dev/null | head -1 || true)
major=$(grep -m1 -E '#define SUITESPARSE_MAIN_VERSION' "$hdr" 2>/dev/null | awk '{print $3}' || true)
# numpy and cython are build requirements of scikit-sparse 0.4.x
$PY -m pip install -q "numpy>=1.23" "cython>=3.0" setuptools wheel
if [ "${major:-5}" -ge 7 ]; then spec="scikit-sparse>=0.5"; else spec="scikit-sparse>=0.4.12,<0.5"; fi
echo "python-deps: SuiteSparse ${major:-?} -> $spec"
$PY -m pip install -q "$spec"
