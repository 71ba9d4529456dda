"""Build the compiled core ``mme._core`` and link it to SuiteSparse's CHOLMOD.

All other metadata lives in pyproject.toml. CHOLMOD (cholmod.h and libcholmod) is looked
for, in this order, in
  1. ``SUITESPARSE_ROOT``   a prefix with include/[suitesparse/]cholmod.h and lib/libcholmod.so
  2. ``CONDA_PREFIX``       an active conda environment with conda-forge's ``suitesparse``
  3. ``pkg-config cholmod`` (SuiteSparse 7 installs cholmod.pc; Debian's SuiteSparse 5 does not)
  4. the usual folders      /usr/include/suitesparse, /usr/local/include/suitesparse, /usr/include
When nothing is found the build stops with one message naming the package to install.
The search runs when the extension is compiled, not for an sdist.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Compiler directives are set here, in one place, for every kernel.
DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
}

#: libraries ``_core`` links; libcholmod brings AMD, CAMD, COLAMD, CCOLAMD, METIS and BLAS
LIBRARIES = ["cholmod", "suitesparseconfig"]
SYSTEM_INCLUDES = ["/usr/include/suitesparse", "/usr/local/include/suitesparse", "/usr/include"]

MISSING = """\
mme: SuiteSparse's CHOLMOD was not found (cholmod.h and libcholmod are needed to compile mme._core).
  Looked in: {looked}.
  Install it and run pip again:
    Debian/Ubuntu:  apt-get install libsuitesparse-dev
    Fedora/RHEL:    dnf install suitesparse-devel
    conda:          conda install -c conda-forge suitesparse
  or set SUITESPARSE_ROOT to a prefix holding include/[suitesparse/]cholmod.h and lib/libcholmod.so."""


class SuiteSparseNotFound(Exception):
    pass


def _header_dir(prefix: str) -> str | None:
    for sub in ("include/suitesparse", "include"):
        d = os.path.join(prefix, sub)
        if os.path.isfile(os.path.join(d, "cholmod.h")):
            return d
    return None


def _lib_dir(prefix: str) -> str | None:
    for sub in ("lib", "lib64", os.path.join("lib", _multiarch())):
        d = os.path.join(prefix, sub)
        if os.path.isdir(d) and any(f.startswith("libcholmod.") for f in os.listdir(d)):
            return d
    return None


def _multiarch() -> str:
    try:
        import sysconfig
        return sysconfig.get_config_var("MULTIARCH") or ""
    except Exception:  # pragma: no cover
        return ""


def _from_prefix(name: str, prefix: str, looked: list[str]) -> dict | None:
    inc, lib = _header_dir(prefix), _lib_dir(prefix)
    looked.append(f"{name}={prefix}")
    if inc is None or lib is None:
        return None
    return {"include_dirs": [inc], "library_dirs": [lib], "runtime_library_dirs": [lib],
            "where": f"{name}={prefix}"}


def _from_pkg_config(looked: list[str]) -> dict | None:
    looked.append("pkg-config cholmod")
    exe = shutil.which(os.environ.get("PKG_CONFIG", "pkg-config"))
    if exe is None:
        return None
    try:
        cflags = subprocess.run([exe, "--cflags-only-I", "cholmod"], check=True,
                                capture_output=True, text=True).stdout
        libs = subprocess.run([exe, "--libs-only-L", "cholmod"], check=True,
                              capture_output=True, text=True).stdout
    except subprocess.CalledProcessError:
        return None
    incs = [f[2:] for f in shlex.split(cflags) if f.startswith("-I")]
    libdirs = [f[2:] for f in shlex.split(libs) if f.startswith("-L")]
    # cholmod.pc of SuiteSparse 7 gives .../include/suitesparse; pkg-config drops system dirs
    for d in incs + SYSTEM_INCLUDES:
        if os.path.isfile(os.path.join(d, "cholmod.h")):
            return {"include_dirs": [d], "library_dirs": libdirs,
                    "runtime_library_dirs": [x for x in libdirs if not x.startswith("/usr/lib")],
                    "where": "pkg-config cholmod"}
    return None


def find_cholmod() -> dict:
    """Where cholmod.h and libcholmod are: include/library dirs and a one-line origin."""
    looked: list[str] = []
    root = os.environ.get("SUITESPARSE_ROOT")
    if root:
        found = _from_prefix("SUITESPARSE_ROOT", root, looked)
        if found is None:
            # an explicit choice that is wrong is not silently replaced by another SuiteSparse
            raise SuiteSparseNotFound(MISSING.format(
                looked=f"SUITESPARSE_ROOT={root} (set, but it has no include/[suitesparse/]"
                       "cholmod.h with lib/libcholmod.so)"))
        return found
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        found = _from_prefix("CONDA_PREFIX", conda, looked)
        if found is not None:
            return found
    found = _from_pkg_config(looked)
    if found is not None:
        return found
    for d in SYSTEM_INCLUDES:
        looked.append(d)
        if os.path.isfile(os.path.join(d, "cholmod.h")):
            return {"include_dirs": [d], "library_dirs": [], "runtime_library_dirs": [],
                    "where": d}
    raise SuiteSparseNotFound(MISSING.format(looked=", ".join(looked)))


def suitesparse_version(include_dir: str) -> str:
    """'7.12.1 (CHOLMOD 5.3.4)' read from the headers found."""
    def grab(path, names):
        try:
            text = open(path).read()
        except OSError:
            return "?"
        return ".".join(m.group(1) if (m := re.search(rf"#define\s+{n}\s+(\d+)", text)) else "?"
                        for n in names)
    ss = grab(os.path.join(include_dir, "SuiteSparse_config.h"),
              ["SUITESPARSE_MAIN_VERSION", "SUITESPARSE_SUB_VERSION", "SUITESPARSE_SUBSUB_VERSION"])
    # SuiteSparse 7 defines CHOLMOD's version in cholmod.h, SuiteSparse 5 in cholmod_core.h
    ch = "?.?.?"
    for header in ("cholmod.h", "cholmod_core.h"):
        ch = grab(os.path.join(include_dir, header),
                  ["CHOLMOD_MAIN_VERSION", "CHOLMOD_SUB_VERSION", "CHOLMOD_SUBSUB_VERSION"])
        if "?" not in ch:
            break
    return f"{ss} (CHOLMOD {ch})"


class build_ext_cholmod(build_ext):
    """build_ext that first finds CHOLMOD and adds its folders to every extension."""

    def build_extensions(self):
        try:
            found = find_cholmod()
        except SuiteSparseNotFound as e:
            sys.stderr.write("\n" + str(e) + "\n\n")
            raise SystemExit(1) from None
        print(f"mme: compiling against SuiteSparse {suitesparse_version(found['include_dirs'][0])}"
              f" found through {found['where']}")
        for ext in self.extensions:
            ext.include_dirs = found["include_dirs"] + ext.include_dirs
            ext.library_dirs = found["library_dirs"] + ext.library_dirs
            ext.runtime_library_dirs = found["runtime_library_dirs"] + ext.runtime_library_dirs
            ext.libraries = ext.libraries + [x for x in LIBRARIES if x not in ext.libraries]
        if sys.platform.startswith("linux") and "-Wl,--no-as-needed" not in self.compiler.linker_so:
            # record libcholmod as NEEDED even where the toolchain links --as-needed by default
            # (Debian's gcc does): ldd, auditwheel and the CI check then see what _core links
            self.compiler.linker_so[1:1] = ["-Wl,--no-as-needed"]
        super().build_extensions()


extensions = [
    Extension(
        "mme._core",
        ["src/mme/_core.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES),
      cmdclass={"build_ext": build_ext_cholmod})
