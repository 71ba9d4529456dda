"""Memory forecast: refuse a model that cannot fit before its factor is allocated.

After the MME's pattern is built (``mme.build_mme``) CHOLMOD's symbolic analysis
(``sksparse.cholmod.analyze``) fixes the fill-reducing permutation P. scikit-sparse
does not expose CHOLMOD's counts from the analysis (``Common->lnz``, the supernodes,
``L->xsize``) without a numeric factorization, so they are computed here from the
pattern of P C P' alone: the elimination tree (Liu's algorithm with path
compression), its postorder, the column counts of L by the skeleton/least-common-
ancestor method of Gilbert, Ng & Peyton (1994) as in CSparse's ``cs_counts`` (Davis
2006) — O(nnz(C)) time, O(dim) memory, exact (tested against ``Factor.L()``) — then
CHOLMOD's own choices from them: supernodal when flops/nnz(L) ≥ 40, and its
fundamental supernodes with relaxed amalgamation (``cholmod_super_symbolic``), whose
dense blocks store the factor with its zeros (the stored count is tested equal to
``Factor.L().nnz``).

The forecast (``forecast``) is what the fit adds to the process at its peak: the
parts held through the REML rounds (the factor, C⁻¹'s fixed columns and per-round
vectors, the position of C in L, the result arrays) plus the largest transient set
of one round — the factorization's update workspace; L's CSC copy with the selected
inverse on its pattern and the selected inversion's buffers; or, in the first round,
L's copy and the selected inverse while C's pattern is located in L.

Measured (``benchmarks/bench_memory_forecast.py``, ``results_memory_forecast.md``):
on the 100k- and 300k-animal benchmark models the command line's whole fit raised the
process's peak resident set by 257 MiB and 1.26 GiB above its resident set at the
forecast, which predicted 262 MiB and 1.26 GiB (ratios 1.02 and 0.99).

It compares the total with the memory available: ``--memory-limit`` (or the
environment variable ``MME_MEMORY_LIMIT``) when given, else the smaller of the
cgroup's limit less its current use (``/sys/fs/cgroup/memory.max`` -
``memory.current``, or cgroup v1's ``memory.limit_in_bytes`` -
``memory.usage_in_bytes``) and ``MemAvailable`` of ``/proc/meminfo``.

References: Gilbert, J. R., Ng, E. G. & Peyton, B. W. (1994) An efficient algorithm
to compute row and column counts for sparse Cholesky factorization. SIAM J. Matrix
Anal. Appl. 15:1075-1091. Davis, T. A. (2006) Direct Methods for Sparse Linear
Systems, SIAM (``cs_etree``, ``cs_post``, ``cs_counts``). Chen, Y., Davis, T. A.,
Hager, W. W. & Rajamanickam, S. (2008) Algorithm 887: CHOLMOD. ACM TOMS 35:22
(supernodal analysis: ``cholmod_super_symbolic``).
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


def _symbolic(C: sp.spmatrix, perm: np.ndarray) -> tuple:
    """(elimination tree, column counts of L incl. the diagonal) of C[perm][:, perm]."""
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
    return parent, _counts(lo.indptr.tolist(), lo.indices.tolist(), parent, post, n)


def cholesky_nnz(C: sp.spmatrix, perm: np.ndarray) -> int:
    """nnz(L) of the Cholesky factor of C[perm][:, perm] (C: lower or full pattern)."""
    return int(sum(_symbolic(C, perm)[1]))


# -- CHOLMOD's supernodes ----------------------------------------------------------
#: CHOLMOD's defaults (``Common->nrelax``, ``zrelax``, ``supernodal_switch``)
NRELAX = (4, 16, 48)
ZRELAX = (0.8, 0.1, 0.05)
SUPERNODAL_SWITCH = 40.0


def supernodes(parent: list, colcount: list, relax: bool = True) -> list:
    """CHOLMOD's supernodes, as ``cholmod_super_symbolic`` finds them: (first column,
    columns, rows of the first column) each, for a postordered elimination tree.

    Fundamental supernodes (j-1 joins j when j is its parent, its only child, and
    j-1's column is j's plus j-1), then relaxed amalgamation of a child s with the
    next supernode s+1 when it is s's parent: always up to ``NRELAX[0]`` columns, or
    when the zeros it adds keep the merged block's share of zeros below ``ZRELAX``
    for its width. A supernode is stored as a dense (rows × columns) block, so a
    supernodal L holds Σ rows·columns values (``Factor.L()``'s copy: the lower
    trapezoids, Σ rows·columns − columns·(columns−1)/2 entries; tested equal)."""
    n = len(parent)
    nchild = [0] * n
    for j in range(n):
        if parent[j] != -1:
            nchild[parent[j]] += 1
    first = [0]
    for j in range(1, n):
        if parent[j - 1] != j or colcount[j - 1] != colcount[j] + 1 or nchild[j] > 1:
            first.append(j)
    first.append(n)
    nf = len(first) - 1
    smap = [0] * n
    for s in range(nf):
        for j in range(first[s], first[s + 1]):
            smap[j] = s
    ncol = [first[s + 1] - first[s] for s in range(nf)]
    nrow = [colcount[first[s]] for s in range(nf)]
    if relax:
        sparent = [smap[parent[first[s + 1] - 1]] if parent[first[s + 1] - 1] != -1 else -1
                   for s in range(nf)]
        zeros = [0] * nf
        merged = [-1] * nf
        for s in range(nf - 2, -1, -1):
            ss = sparent[s]
            if ss == -1:
                continue
            while merged[ss] != -1:             # the current parent (path compression)
                ss = merged[ss]
            top, ss = ss, sparent[s]
            while merged[ss] != -1:
                merged[ss], ss = top, merged[ss]
            if top != s + 1:
                continue
            n0, n1 = ncol[s], ncol[s + 1]
            ns = n0 + n1
            total_zeros = zeros[s + 1]
            if ns <= NRELAX[0]:
                merge = True
            else:
                new_zeros = n0 * (nrow[s + 1] + n0 - nrow[s])
                if new_zeros == 0:
                    merge = True
                else:
                    z = (total_zeros + new_zeros) / (ns * (ns + 1) / 2
                                                     + ns * (nrow[s + 1] - n1))
                    total_zeros += new_zeros
                    merge = ((ns <= NRELAX[1] and z < ZRELAX[0])
                             or (ns <= NRELAX[2] and z < ZRELAX[1]) or z < ZRELAX[2])
            if merge:
                zeros[s] = total_zeros
                merged[s + 1] = s
                nrow[s] = n0 + nrow[s + 1]
                ncol[s] += ncol[s + 1]
        keep = [s for s in range(nf) if merged[s] == -1]
    else:
        keep = range(nf)
    return [(first[s], ncol[s], nrow[s]) for s in keep]


def _selinv_workspace(snodes: list, width: int = 1024, panel: int = 256,
                      max_tail: int = 12000) -> int:
    """Bytes the supernodal selected inversion (``_core.selected_inverse_supernodal``)
    touches in its work buffers: the largest diagonal block's lower triangle (the dense
    tail of L, when it is one block), two m × w panels and the m × panel gather."""
    last = snodes[-1] if snodes else (0, 0, 0)
    tail = last[1] if last[1] == last[2] and 64 <= last[1] <= max_tail else 0
    max_w, max_m, max_mw = tail, 0, 0
    for _, ncol, nrow in (snodes[:-1] if tail else snodes):
        for o in range(0, ncol, width):        # the kernel's supernodes: at most `width`
            w = min(width, ncol - o)
            m = nrow - o - w
            max_w, max_m, max_mw = max(max_w, w), max(max_m, m), max(max_mw, m * w)
    return 8 * (max_w * (max_w + 1) // 2 + 2 * max_mw + max_m * min(panel, max_m) + max_m)


@dataclass
class Forecast:
    """What a fit adds to the process at its peak: the parts held through the REML
    rounds (``held``) and the largest of the transient sets of one round
    (``transient``: name → parts); ``total`` = Σ held + max over the transient sets."""

    nnz_L: int
    nnz_C: int
    dim: int
    supernodal: bool
    stored_L: int        # entries of the factor's copy as CSC (supernodal: with its zeros)
    held: dict           # name -> bytes
    transient: dict      # phase -> {name -> bytes}
    available: int
    source: str

    @property
    def peak_phase(self) -> str:
        return max(self.transient, key=lambda k: sum(self.transient[k].values()))

    @property
    def parts(self) -> dict:
        """Every part at the peak (held, then the peak phase's)."""
        return {**self.held, **self.transient[self.peak_phase]}

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def fits(self) -> bool:
        return self.total <= self.available

    def describe(self) -> str:
        kind = (f"supernodal, {self.stored_L:,} stored" if self.supernodal
                else "simplicial")
        return (f"predicted {human(self.total)} (nnz(L) = {self.nnz_L:,}, {kind}: "
                + ", ".join(f"{k} {human(v)}" for k, v in self.held.items())
                + f", at the peak ({self.peak_phase}) "
                + ", ".join(f"{k} {human(v)}"
                            for k, v in self.transient[self.peak_phase].items())
                + f"); available {human(self.available)} ({self.source})")


def forecast(system, factor, limit=None) -> Forecast:
    """The memory a fit of ``system`` (an ``mme.build_mme`` result) adds at its peak,
    from the symbolic ``factor`` (``cholmod.analyze``: its permutation P), against
    ``limit`` or what is available.

    From the pattern of P C P': the column counts of L, and CHOLMOD's choice and
    layout of the factor (``supernodes``; supernodal when flops/nnz(L) ≥ 40). Held
    through the fit: the numeric factor (supernodal: 8 bytes per stored value + 4 per
    row index), C⁻¹[:, :p] and the per-round vectors (``dense``), the position of C's
    pattern in L (8·nnz(C)) and the random effects' result arrays. Transient, in turn,
    within one round: CHOLMOD's update workspace during the factorization (at most
    the largest (rows − columns)² block of a supernode); the CSC copy of L
    (``Factor.L()``, 12 bytes per entry, + its conversion: 4 per entry), the selected
    inverse on its pattern (8 per entry) and the kernel's buffers; in the first
    round, with L's copy and the selected inverse, locating C's pattern in L
    (7 int64 arrays of nnz(C)).
    """
    parent, counts = _symbolic(system.C, factor.perm)
    nnz_L = int(sum(counts))
    flops = float(sum(c * c for c in counts))
    supernodal = flops / max(nnz_L, 1) >= SUPERNODAL_SWITCH
    snodes = supernodes(parent, counts, relax=supernodal)
    nnz_C, dim, p = int(system.C.nnz), int(system.dim), int(system.p)
    idx = 4 if nnz_L < 2 ** 31 else 8
    if supernodal:
        stored = sum(c * r - c * (c - 1) // 2 for _, c, r in snodes)
        factor_bytes = sum(8 * c * r + idx * r for _, c, r in snodes) + 8 * dim
        update = 8 * max([(r - c) ** 2 for _, c, r in snodes] or [0])
    else:
        stored = nnz_L      # CHOLMOD's simplicial factor keeps room to grow (grow0, grow2)
        factor_bytes = (8 + idx) * (1.2 * nnz_L + 5 * dim) + 16 * dim
        update = 8 * dim
    copy = (8 + idx) * stored + 4 * (dim + 1)
    held = {"factor": int(factor_bytes), "dense": int(8 * dim * (p + 24)),
            "C in L": 8 * nnz_C, "results": 8 * 8 * dim}
    transient = {
        "factorization": {"update workspace": int(update)},
        "selected inversion": {"L copy": int(copy), "selected inverse": 8 * stored,
                               "its workspace": _selinv_workspace(snodes)},
        "first round": {"L copy": int(copy), "selected inverse": 8 * stored,
                        "locating C in L": 7 * 8 * nnz_C},
        "L copy": {"L copy": int(copy), "L conversion": 4 * stored},
    }
    if limit is None:
        available, source = available_memory()
    else:
        available, source = parse_size(limit), "--memory-limit"
    return Forecast(nnz_L, nnz_C, dim, supernodal, int(stored), held, transient, available,
                    source)


def refusal(fc: Forecast) -> str:
    """The one-line message of a model refused for memory."""
    return (f"not enough memory for this model: {fc.describe()}. Ways out: BLUP by PCG at "
            "known variances (--variances ... --solver pcg, no factorization), a machine "
            "with more memory, or another fill-reducing ordering (--ordering metis or amd)")
