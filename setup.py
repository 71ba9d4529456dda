"""Build the compiled core ``mme._core``; all other metadata lives in pyproject.toml."""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# Compiler directives are set here, in one place, for every kernel.
DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
}

# CHOLMOD (SuiteSparse 5.x or 7.x), bound by _core (``_cholmod.pxi``). Minimal
# discovery: SUITESPARSE_INCLUDE_DIR / SUITESPARSE_LIBRARY_DIR, else the Debian/Ubuntu
# layout (libsuitesparse-dev: headers in /usr/include/suitesparse).
CHOLMOD_INCLUDE = [d for d in (os.environ.get("SUITESPARSE_INCLUDE_DIR"),
                               "/usr/include/suitesparse") if d and os.path.isdir(d)]
CHOLMOD_LIBDIRS = [d for d in (os.environ.get("SUITESPARSE_LIBRARY_DIR"),) if d]

extensions = [
    Extension(
        "mme._core",
        ["src/mme/_core.pyx"],
        include_dirs=[np.get_include()] + CHOLMOD_INCLUDE[:1],
        library_dirs=CHOLMOD_LIBDIRS,
        libraries=["cholmod", "suitesparseconfig"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
