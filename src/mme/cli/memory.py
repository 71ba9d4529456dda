"""Memory forecast: refuse a model that cannot fit before its factor is allocated.

After the MME's pattern is built (``mme.build_mme``) CHOLMOD's symbolic analysis
(``sksparse.cholmod.analyze``) fixes the fill-reducing permutation P. scikit-sparse
does not expose CHOLMOD's count of nonzeros in L from the analysis (``Common->lnz``)
without a numeric factorization, so nnz(L) is computed here from the pattern of
P C P' alone: the elimination tree (Liu's algorithm with path compression), its
postorder, and the column counts of L by the skeleton/least-common-ancestor method
of Gilbert, Ng & Peyton (1994) as in CSparse's ``cs_counts`` (Davis 2006) — O(nnz(C))
time, O(dim) memory, exact for a simplicial factor (tested against ``Factor.L()``).

The forecast then adds up what one REML round holds at its peak:

    factor      CHOLMOD's supernodal L: 8 bytes x nnz(L) x 1.25 (relaxed supernodes
                store some zeros) + 4 bytes x nnz(L) of row indices
    L copy      ``Factor.L()`` for the selected inverse: 12 bytes x nnz(L) (values and
                int32 indices; int64 indices above 2^31 entries: 16 bytes)
    L conversion  the same again, transient: CHOLMOD's simplicial copy of the supernodal
                factor is handed to SciPy while both exist
    selinv      the selected inverse on L's pattern: 8 bytes x nnz(L)
    MME         C (lower, values and indices) and its value base: 3 x 12 x nnz(C)
    design      W = [X Z] and its blocks: 2 x 12 x nnz(W), y and residuals
    dense       C^-1's fixed columns (dim x p) and per-round vectors: 8 x dim x (p + 24)

(On the 100k-animal benchmark animal model, nnz(L) 3.42M, the fit's peak RSS rose
200.7 MiB above the process's RSS at the forecast; the sum above is 202 MiB.)
It compares the sum with the memory available: ``--memory-limit`` (or the environment
variable ``MME_MEMORY_LIMIT``) when given, else the smaller of the cgroup's limit
less its current use (``/sys/fs/cgroup/memory.max`` - ``memory.current``, or cgroup
v1's ``memory.limit_in_bytes`` - ``memory.usage_in_bytes``) and ``MemAvailable``
of ``/proc/meminfo``.

References: Gilbert, J. R., Ng, E. G. & Peyton, B. W. (1994) An efficient algorithm
to compute row and column counts for sparse Cholesky factorization. SIAM J. Matrix
Anal. Appl. 15:1075-1091. Davis, T. A. (2006) Direct Methods for Sparse Linear
Systems, SIAM (``cs_etree``, ``cs_post``, ``cs_counts``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import InputError

_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 2 ** 10, "kib": 2 ** 10, "m": 2 ** 20,
          "mb": 2 ** 20, "mib": 2 ** 20, "g": 2 ** 30, "gb": 2 ** 30, "gib": 2 ** 30,
          "t": 2 ** 40, "tb": 2 ** 40, "tib": 2 ** 40}
#: supernodal L stores this many values per nonzero of the exact L (relaxed amalgamation)
SUPERNODAL_OVERHEAD = 1.25


def parse_size(text) -> int:
    """"8G", "512MiB", "1.5 GB", 1000000 → bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _UNITS:
        raise InputError(f"memory limit {text!r}: expected a size such as 8G, 512M or "
                         "1500000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"


def _read_int(path) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> tuple[int, str]:
    """(bytes available, where the figure comes from): cgroup limit less its use, or
    MemAvailable, whichever is smaller."""
    options = []
    for limit_f, usage_f, name in (
            ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "cgroup v2"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
             "/sys/fs/cgroup/memory/memory.usage_in_bytes", "cgroup v1")):
        lim = _read_int(limit_f)
        if lim is not None and lim < 2 ** 60:
            use = _read_int(usage_f) or 0
            options.append((max(lim - use, 0), f"{name} limit {human(lim)} less "
                                               f"{human(use)} in use"))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                options.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    if not options:
        return 2 ** 62, "unknown (no cgroup limit, no /proc/meminfo)"
    return min(options)


# -- nnz(L) from the pattern -------------------------------------------------------
def _etree(Ap, Ai, n) -> list:
    """Elimination tree of a symmetric matrix given by its upper triangle (CSC)."""
    parent = [-1] * n
    ancestor = [-1] * n
    for k in range(n):
        for p in range(Ap[k], Ap[k + 1]):
            i = Ai[p]
            while i != -1 and i < k:
                inext = ancestor[i]
                ancestor[i] = k
                if inext == -1:
                    parent[i] = k
                i = inext
    return parent


def _postorder(parent, n) -> list:
    head = [-1] * n
    nxt = [-1] * n
    for j in range(n - 1, -1, -1):
        if parent[j] != -1:
            nxt[j] = head[parent[j]]
            head[parent[j]] = j
    post = []
    for j in range(n):
        if parent[j] != -1:
            continue
        stack = [j]
        while stack:
            p = stack[-1]
            i = head[p]
            if i == -1:
                stack.pop()
                post.append(p)
            else:
                head[p] = nxt[i]
                stack.append(i)
    return post


def _counts(Lp, Li, parent, post, n) -> list:
    """Column counts of L (CSparse's cs_counts, Cholesky case); Lp/Li: lower CSC."""
    delta = [0] * n
    first = [-1] * n
    maxfirst = [-1] * n
    prevleaf = [-1] * n
    ancestor = list(range(n))
    for k in range(n):
        j = post[k]
        delta[j] = 1 if first[j] == -1 else 0
        while j != -1 and first[j] == -1:
            first[j] = k
            j = parent[j]
    for k in range(n):
        j = post[k]
        pj = parent[j]
        if pj != -1:
            delta[pj] -= 1
        fj = first[j]
        for p in range(Lp[j], Lp[j + 1]):
            i = Li[p]
            if i <= j or fj <= maxfirst[i]:
                continue
            maxfirst[i] = fj
            jprev = prevleaf[i]
            prevleaf[i] = j
            delta[j] += 1
            if jprev == -1:
                continue
            q = jprev
            while q != ancestor[q]:
                q = ancestor[q]
            s = jprev
            while s != q:
                sp_ = ancestor[s]
                ancestor[s] = q
                s = sp_
            delta[q] -= 1
        if pj != -1:
            ancestor[j] = pj
    for j in post:
        if parent[j] != -1:
            delta[parent[j]] += delta[j]
    return delta


def cholesky_nnz(C: sp.spmatrix, perm: np.ndarray) -> int:
    """nnz(L) of the Cholesky factor of C[perm][:, perm] (C: lower or full pattern)."""
    n = C.shape[0]
    pat = sp.csc_matrix((np.ones(C.nnz), C.indices, C.indptr), shape=C.shape)
    full = (pat + pat.T).tocsc()
    Cp = full[perm][:, perm]
    up = sp.triu(Cp, format="csc")
    lo = sp.tril(Cp, format="csc")
    up.sort_indices()
    lo.sort_indices()
    parent = _etree(up.indptr.tolist(), up.indices.tolist(), n)
    post = _postorder(parent, n)
    return int(sum(_counts(lo.indptr.tolist(), lo.indices.tolist(), parent, post, n)))


@dataclass
class Forecast:
    nnz_L: int
    nnz_C: int
    dim: int
    parts: dict          # name -> bytes
    available: int
    source: str

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def fits(self) -> bool:
        return self.total <= self.available

    def describe(self) -> str:
        return (f"predicted {human(self.total)} (nnz(L) = {self.nnz_L:,}: "
                + ", ".join(f"{k} {human(v)}" for k, v in self.parts.items())
                + f"); available {human(self.available)} ({self.source})")


def forecast(system, factor, limit=None) -> Forecast:
    """The memory one REML round of ``system`` (an ``mme.build_mme`` result) needs, from
    the symbolic ``factor`` (``cholmod.analyze``), against ``limit`` or what is available."""
    nnz_L = cholesky_nnz(system.C, factor.P())
    idx = 4 if nnz_L < 2 ** 31 else 8
    nnz_C, dim = int(system.C.nnz), int(system.dim)
    nnz_W = int(system.W.nnz)
    p = int(system.p)
    parts = {
        "factor": int(nnz_L * (8 * SUPERNODAL_OVERHEAD + idx)),
        "L copy": int(nnz_L * (8 + idx)),
        "L conversion": int(nnz_L * (8 + idx)),
        "selected inverse": int(nnz_L * 8),
        "MME": int(3 * nnz_C * 12),
        "design": int(2 * nnz_W * 12 + 8 * 4 * system.n),
        "dense": int(8 * dim * (p + 24)),
    }
    if limit is None:
        available, source = available_memory()
    else:
        available, source = parse_size(limit), "--memory-limit"
    return Forecast(nnz_L, nnz_C, dim, parts, available, source)


def refusal(fc: Forecast) -> str:
    """The one-line message of a model refused for memory."""
    return (f"not enough memory for this model: {fc.describe()}. Ways out: BLUP by PCG at "
            "known variances (--variances ... --solver pcg, no factorization), a machine "
            "with more memory, or another fill-reducing ordering (--ordering metis or amd)")
