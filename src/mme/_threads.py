"""Thread policy for the two BLAS libraries a fit runs on.

CHOLMOD calls the system BLAS it was linked against (Debian: libopenblas), while
NumPy/SciPy (and ``_core``'s supernodal selected inverse, through SciPy's
``cython_blas``) call the OpenBLAS bundled in their wheels. Each library keeps
its own pool of spinning worker threads; on a machine with few cores the two
pools fight over them after every switch from one library to the other. On the
2-core benchmark machine the crossed 73k-record fit took 2.3 s with both pools
at 2 threads and 1.2 s with the wheel-bundled pools at 1 (benchmarks/README.md).
``dense_blas_threads`` limits the bundled pools during a fit and restores them.

In mme's binary wheel CHOLMOD calls its own OpenBLAS, vendored in the wheel's ``mme.libs``
folder (the scipy-openblas32 build, file ``libscipy_openblas-<hash>.so``): still a second pool,
so the policy is unchanged, but that file's name looks like SciPy's bundled copy, and only its
folder tells it is CHOLMOD's (``_is_bundled``).

A large supernodal selected inverse is the exception: it runs for seconds to
minutes while CHOLMOD's pool sleeps, so ``all_cores_for_large`` gives the bundled
pools every core for that one call when L is big enough for threads to pay
(``MME.selected_inverse``).

``thread_limit(n)`` (the command line's ``threads``) caps the whole run at ``n``
threads: every pool threadpoolctl finds (the system BLAS, the bundled ones, OpenMP)
is set to ``n`` for the block, and ``available_cores`` answers at most ``n`` so that
the policies above stay inside the cap.
"""
from __future__ import annotations

import contextlib
import os

from threadpoolctl import ThreadpoolController, threadpool_limits

#: Substrings of the wheel-bundled OpenBLAS builds of NumPy and SciPy.
_BUNDLED = ("scipy_openblas", "numpy.libs", "scipy.libs")
#: The folder of mme's own wheel where auditwheel puts CHOLMOD and the BLAS it calls.
_OWN = "mme.libs"


def _is_bundled(filepath: str) -> bool:
    """True for NumPy/SciPy's bundled BLAS; False for CHOLMOD's (the system's or mme.libs')."""
    parts = filepath.replace("\\", "/").split("/")
    if _OWN in parts:
        return False
    return any(s in filepath for s in _BUNDLED)


def _pools():
    """(bundled, system) BLAS pools as threadpoolctl controllers."""
    controller = ThreadpoolController()
    blas = [c for c in controller.lib_controllers if c.user_api == "blas"]
    bundled = [c for c in blas if _is_bundled(c.filepath)]
    system = [c for c in blas if c not in bundled]
    return bundled, system


#: the cap of ``thread_limit`` (None: no cap)
_CAP = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, at most the cap of
    ``thread_limit``): the one home of the core count."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:       # not Linux
        n = os.cpu_count() or 1
    return n if _CAP is None else max(1, min(n, _CAP))


@contextlib.contextmanager
def thread_limit(n: int | None):
    """Run the block with every thread pool (BLAS and OpenMP) at ``n`` threads and
    ``available_cores()`` at most ``n`` (None: as is)."""
    global _CAP
    if n is None:
        yield
        return
    saved = _CAP
    with threadpool_limits(limits=int(n)):
        _CAP = int(n)
        try:
            yield
        finally:
            _CAP = saved


@contextlib.contextmanager
def _bundled_threads(bundled: list, n: int):
    saved = [c.num_threads for c in bundled]
    for c in bundled:
        c.set_num_threads(int(n))
    try:
        yield
    finally:
        for c, k in zip(bundled, saved):
            c.set_num_threads(k)


@contextlib.contextmanager
def all_cores_for_large(large: bool):
    """Give NumPy/SciPy's bundled BLAS every available core for the block when ``large``."""
    if not large:
        yield
        return
    pools = _pools()
    if not pools[0]:
        yield
        return
    with _bundled_threads(pools[0], available_cores()):
        yield


@contextlib.contextmanager
def dense_blas_threads(n: int | None):
    """Run the block with NumPy/SciPy's own BLAS limited to ``n`` threads (None: as is)."""
    if n is None:
        yield
        return
    pools = _pools()
    if not pools[0] or not pools[1]:
        # one BLAS for everything: no second pool to fight with
        yield
        return
    with _bundled_threads(pools[0], n):
        yield
