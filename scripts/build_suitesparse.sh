#!/usr/bin/env bash
# Build the part of SuiteSparse 7 that mme's compiled core links, for a binary wheel:
#   SuiteSparse_config, AMD, CAMD, COLAMD, CCOLAMD and CHOLMOD (with its Supernodal module
#   and the METIS bundled in CHOLMOD), shared libraries, installed into PREFIX/{include,lib},
#   against the DYNAMIC_ARCH + pthreads OpenBLAS of the scipy-openblas32 wheel
#   (scripts/openblas-requirements.txt), which is copied into PREFIX/lib beside them.
# auditwheel then vendors these libraries into the wheel's mme.libs folder.
#
# Usage: scripts/build_suitesparse.sh PREFIX
# Environment:
#   MME_SUITESPARSE_SOURCE  upstream (default): the SuiteSparse release tarball, by URL and sha256.
#                           pypi: the sdist of pyklu 0.2.0 from PyPI (sha256-pinned), which
#                           carries the same SuiteSparse 7.12.1 tree under extern/SuiteSparse;
#                           for machines that reach PyPI but not the upstream release
#                           (this project's CI).
#   MME_SUITESPARSE_CACHE   where downloads are kept between runs (default ~/.cache/mme-suitesparse)
#   MME_LICENSE_DIR         also copy the bundled libraries' licence files here (the wheel's
#                           licence folder, LICENSES/bundled, see pyproject.toml)
#   PYTHON                  the python whose pip downloads the OpenBLAS wheel (default python3)
#   JOBS                    parallel compile jobs (default: number of cores)
# Needs: a C compiler, cmake >= 3.22, tar, sha256sum, python3 with pip.
set -euo pipefail

PREFIX=${1:?usage: build_suitesparse.sh PREFIX}
HERE=$(cd "$(dirname "$0")" && pwd)
SOURCE=${MME_SUITESPARSE_SOURCE:-upstream}
CACHE=${MME_SUITESPARSE_CACHE:-$HOME/.cache/mme-suitesparse}
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

SS_VERSION=7.12.1
# sha256 of the release tarball as published by the Homebrew formula of this version
SS_URL="https://github.com/DrTimothyAldenDavis/SuiteSparse/archive/refs/tags/v${SS_VERSION}.tar.gz"
SS_SHA256=794ae22f7e38e2ac9f5cbb673be9dd80cdaff2cdf858f5104e082694f743b0ba
# the pyklu sdist: SuiteSparse 7.12.1 (SUITESPARSE_DATE "Nov 4, 2025", CHOLMOD 5.3.4)
PYKLU_SDIST=pyklu-0.2.0.tar.gz
PYKLU_SHA256=eb3f37a2806540192049ef511b18a1b5c0c5c15be23f7aafcc9065a4d3311514
# what is built: nothing else of SuiteSparse is compiled
PROJECTS="suitesparse_config;amd;camd;colamd;ccolamd;cholmod"
SUBDIRS="SuiteSparse_config AMD CAMD COLAMD CCOLAMD CHOLMOD"

say() { echo "build_suitesparse: $*"; }
die() { echo "build_suitesparse: error: $*" >&2; exit 1; }
check_sha() {  # file sha256
  local got; got=$(sha256sum "$1" | awk '{print $1}')
  [ "$got" = "$2" ] || die "$1: sha256 $got, expected $2 (corrupt or changed download)"
}

mkdir -p "$CACHE" "$PREFIX/lib" "$PREFIX/include"
PREFIX=$(cd "$PREFIX" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mme-suitesparse.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- 1. OpenBLAS: the scipy-openblas32 wheel, pinned by hash --------------------------
say "OpenBLAS from $(grep -m1 '^scipy-openblas32' "$HERE/openblas-requirements.txt" | awk '{print $1}')"
"$PY" -m pip download -q --no-deps --only-binary :all: --require-hashes \
  -r "$HERE/openblas-requirements.txt" -d "$CACHE/wheels"
wheel=$(ls -t "$CACHE"/wheels/scipy_openblas32-*"$(uname -m)"*.whl | head -1)
mkdir -p "$WORK/blas"
"$PY" -m zipfile -e "$wheel" "$WORK/blas"
cp "$WORK/blas/scipy_openblas32/lib/libscipy_openblas.so" "$PREFIX/lib/"
BLAS_LIB="$PREFIX/lib/libscipy_openblas.so"

# ---- 2. SuiteSparse source --------------------------------------------------------------
mkdir -p "$WORK/src"
case "$SOURCE" in
  upstream)
    tarball="$CACHE/SuiteSparse-${SS_VERSION}.tar.gz"
    if [ ! -f "$tarball" ]; then
      say "downloading $SS_URL"
      curl -fsSL --retry 3 -o "$tarball.part" "$SS_URL" && mv "$tarball.part" "$tarball"
    fi
    check_sha "$tarball" "$SS_SHA256"
    top="SuiteSparse-${SS_VERSION}"; strip=1 ;;
  pypi)
    tarball="$CACHE/$PYKLU_SDIST"
    if [ ! -f "$tarball" ]; then
      say "downloading the pyklu 0.2.0 sdist (SuiteSparse ${SS_VERSION} sources) with pip"
      # --no-binary pyklu: its sdist; pip prepares its metadata in an isolated env first
      "$PY" -m pip download -q --no-deps --no-binary pyklu -d "$WORK/dl" "pyklu==0.2.0" \
        2>&1 | grep -v "^WARNING: Location" || true
      [ -f "$WORK/dl/$PYKLU_SDIST" ] || die "pip did not download $PYKLU_SDIST"
      mv "$WORK/dl/$PYKLU_SDIST" "$tarball"
    fi
    check_sha "$tarball" "$PYKLU_SHA256"
    top="pyklu-0.2.0/extern/SuiteSparse"; strip=3 ;;
  *) die "MME_SUITESPARSE_SOURCE=$SOURCE: use upstream or pypi" ;;
esac
members=("$top/CMakeLists.txt" "$top/LICENSE.txt")
for d in $SUBDIRS; do members+=("$top/$d"); done
tar -xzf "$tarball" -C "$WORK/src" --strip-components=$strip "${members[@]}"
version=$(awk '/define SUITESPARSE_(MAIN|SUB|SUBSUB)_VERSION/ {printf "%s%s", sep, $3; sep="."}' \
          "$WORK/src/SuiteSparse_config/SuiteSparse_config.h")
[ "$version" = "$SS_VERSION" ] || die "source says SuiteSparse $version, expected $SS_VERSION"
say "SuiteSparse $version ($SOURCE)"

# ---- 3. BLAS names: scipy-openblas32 prefixes every symbol with scipy_ -------------------
# SuiteSparse can add a suffix to the BLAS names (BLAS64_SUFFIX) but not a prefix, so a header
# forced into every compile renames each routine it calls (dgemm_ -> scipy_dgemm_). The list
# is read from SuiteSparse_config.h, the one place SuiteSparse names its BLAS/LAPACK calls.
names=$(grep -oE 'SUITESPARSE_BLAS \( *[a-z0-9]+ *,' "$WORK/src/SuiteSparse_config/SuiteSparse_config.h" \
        | sed -E 's/.*\( *([a-z0-9]+).*/\1/' | sort -u)
[ -n "$names" ] || die "no BLAS names found in SuiteSparse_config.h"
{
  echo "/* generated by mme's scripts/build_suitesparse.sh: BLAS names of scipy-openblas32 */"
  for n in $names; do echo "#define ${n}_ scipy_${n}_"; done
} > "$WORK/blas_prefix.h"

# ---- 4. configure, build, install --------------------------------------------------------
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$WORK/src" -B "$WORK/build" "${gen[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_INSTALL_LIBDIR=lib \
  -DCMAKE_INSTALL_RPATH='$ORIGIN' \
  -DCMAKE_C_FLAGS="-include $WORK/blas_prefix.h" \
  -DSUITESPARSE_ENABLE_PROJECTS="$PROJECTS" \
  -DBUILD_SHARED_LIBS=ON -DBUILD_STATIC_LIBS=OFF -DBUILD_TESTING=OFF \
  -DSUITESPARSE_DEMOS=OFF -DSUITESPARSE_USE_CUDA=OFF -DSUITESPARSE_USE_FORTRAN=OFF \
  -DSUITESPARSE_USE_PYTHON=OFF -DSUITESPARSE_USE_OPENMP=OFF \
  -DCHOLMOD_GPL=ON -DCHOLMOD_SUPERNODAL=ON -DCHOLMOD_PARTITION=ON -DCHOLMOD_CAMD=ON \
  -DCHOLMOD_USE_CUDA=OFF \
  -DBLA_VENDOR=Generic -DBLAS_LIBRARIES="$BLAS_LIB" -DLAPACK_LIBRARIES="$BLAS_LIB" \
  > "$WORK/configure.log" 2>&1 || { tail -40 "$WORK/configure.log" >&2; die "cmake configure failed"; }
say "compiling with $JOBS jobs"
cmake --build "$WORK/build" --parallel "$JOBS" > "$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; die "build failed"; }
cmake --install "$WORK/build" > /dev/null

# ---- 5. checks: CHOLMOD calls the prefixed OpenBLAS and nothing else of a BLAS -----------
lib=$(ls "$PREFIX"/lib/libcholmod.so.* | head -1)
# (nm's output goes to files first: `nm | grep -q` under pipefail fails when grep exits early)
nm -D --undefined-only "$lib" | awk '{print $2}' > "$WORK/undefined.txt"
nm -D --defined-only "$lib" | awk '{print $3}' > "$WORK/defined.txt"
unresolved=$(grep -E '^([sdcz][a-z0-9]+|dznrm2|scnrm2)_$' "$WORK/undefined.txt" || true)
[ -z "$unresolved" ] || die "libcholmod calls unprefixed BLAS names: $unresolved"
grep -qx 'scipy_dpotrf_' "$WORK/undefined.txt" \
  || die "libcholmod does not call scipy_dpotrf_ (supernodal module missing?)"
grep -qx 'cholmod_l_super_numeric' "$WORK/defined.txt" || die "libcholmod has no supernodal module"
grep -qx 'cholmod_l_metis' "$WORK/defined.txt" || die "libcholmod has no METIS (Partition module)"
say "libcholmod: supernodal + METIS, BLAS = scipy-openblas32; NEEDED:" \
    $(readelf -d "$lib" | awk '/NEEDED/ {gsub(/[][]/, "", $5); print $5}')

# ---- 6. licences of what the wheel bundles -----------------------------------------------
lic="$PREFIX/share/licenses/mme-bundled"
mkdir -p "$lic"
cp "$WORK/src/LICENSE.txt"                     "$lic/SuiteSparse-LICENSE.txt"
cp "$WORK/src/AMD/Doc/License.txt"             "$lic/AMD-License.txt"
cp "$WORK/src/CAMD/Doc/License.txt"            "$lic/CAMD-License.txt"
cp "$WORK/src/COLAMD/Doc/License.txt"          "$lic/COLAMD-License.txt"
cp "$WORK/src/CCOLAMD/Doc/License.txt"         "$lic/CCOLAMD-License.txt"
cp "$WORK/src/CHOLMOD/Doc/License.txt"         "$lic/CHOLMOD-License.txt"
cp "$WORK/src/CHOLMOD/SuiteSparse_metis/LICENSE.txt" "$lic/METIS-LICENSE.txt"
obl=$(ls -d "$WORK"/blas/scipy_openblas32-*.dist-info)
for f in $(find "$obl" -iname 'LICEN*' -type f); do cp "$f" "$lic/OpenBLAS-$(basename "$f")"; done
ls "$lic"/OpenBLAS-* >/dev/null 2>&1 || die "no licence file found in $obl"
cat > "$lic/README-bundled.txt" <<EOF
Libraries bundled in mme's binary wheels (folder mme.libs), with their licences here:
  SuiteSparse ${SS_VERSION}: SuiteSparse_config (BSD-3-Clause), AMD, CAMD, COLAMD, CCOLAMD
  (BSD-3-Clause), CHOLMOD (Utility, Check, Cholesky, Partition: LGPL-2.1-or-later;
  Supernodal, MatrixOps, Modify: GPL-2.0-or-later) with METIS 5.1.0 (Apache-2.0).
  OpenBLAS 0.3.34 from scipy-openblas32 (BSD-3-Clause; its libgfortran/libquadmath are
  GPL-3.0-or-later with the GCC Runtime Library Exception).
Because CHOLMOD's Supernodal module is GPL-2.0-or-later, a binary wheel of mme as a whole
is distributed under the GPL-2.0-or-later; mme's own source code stays under the MIT licence.
EOF
if [ -n "${MME_LICENSE_DIR:-}" ]; then
  mkdir -p "$MME_LICENSE_DIR" && cp "$lic"/* "$MME_LICENSE_DIR/"
fi
say "installed into $PREFIX"
