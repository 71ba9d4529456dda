#!/usr/bin/env bash
# Install the system libraries mme builds against, when missing:
#   SuiteSparse headers and libraries (CHOLMOD), which mme's compiled core links, and an
#   optimized BLAS (OpenBLAS) for CHOLMOD.
# On Debian's default reference BLAS, CHOLMOD's supernodal factorization measured
# 21x slower on this project's machines than with libopenblas0-pthread.
# Without root: use conda-forge instead (see README, "HPC / no root").
set -euo pipefail

have_cholmod() { [ -f /usr/include/suitesparse/cholmod.h ] || [ -f /usr/local/include/cholmod.h ] \
                 || [ -n "${CONDA_PREFIX:-}" -a -f "${CONDA_PREFIX:-/nonexistent}/include/cholmod.h" ]; }
have_openblas() { ldconfig -p 2>/dev/null | grep -q 'libopenblas' ; }

need=()
have_cholmod || need+=(libsuitesparse-dev)
have_openblas || need+=(libopenblas0-pthread)
if [ ${#need[@]} -eq 0 ]; then
  echo "system-deps: SuiteSparse headers and OpenBLAS present"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "system-deps: installing ${need[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
elif command -v sudo >/dev/null && command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "system-deps: missing ${need[*]} and no root to apt-get them." >&2
  echo "  Without root: a binary wheel of mme (it bundles CHOLMOD and OpenBLAS)," >&2
  echo "  or conda install -c conda-forge suitesparse (README, Installing)" >&2
  have_cholmod || exit 1
fi
