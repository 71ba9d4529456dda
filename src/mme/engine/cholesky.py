"""Sparse Cholesky factor of a symmetric positive-definite matrix: CHOLMOD through
``mme._core`` (``_cholmod.pxi``, the ``cholmod.h`` API bound directly).

``Cholesky(C, ordering)`` runs CHOLMOD's symbolic analysis (fill-reducing ordering,
elimination tree, supernodes) on the pattern of ``C`` — its lower triangle in CSC,
the form the MME is stored in — once; ``factorize(C)`` is a numeric factorization of
values on that pattern (``C + βI`` with ``beta``). After it: ``solve``, ``logdet``,
and ``selected_inverse`` — the entries of C⁻¹ on the pattern of L, in the factor's
own value layout, addressed by ``slots(rows, cols)`` (positions found once per
analysis). Nothing copies L: the supernodal kernel reads CHOLMOD's supernodal
arrays; a simplicial factor (small, low-fill problems) is read through views of its
CSC arrays. ``L()`` returns L as a SciPy CSC matrix (tests and diagnostics only).

Orderings (``ordering=``, the names scikit-sparse used): ``"amd"``, ``"metis"``,
``"nesdis"``, ``"colamd"``, ``"natural"`` (no permutation), ``"default"`` (CHOLMOD's
own: AMD, then METIS when AMD's fill is large), ``"best"`` (every method, the
sparsest kept). ``mode``: ``"auto"`` (CHOLMOD's choice: supernodal when the flops
per entry of L reach 40), ``"supernodal"``, ``"simplicial"``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .. import _core
from .._errors import InternalError
from .._threads import all_cores_for_large

#: Largest dense trailing block of a simplicial L inverted with LAPACK (w² doubles).
MAX_DENSE_TAIL = 12000
#: nnz(L) from which the selected inverse runs SciPy's BLAS on every core (``_threads``)
PARALLEL_SELINV_MIN_NNZ = 20_000_000
#: Widest block of columns taken as one supernode in a simplicial L (w² doubles).
MAX_SUPERNODE_WIDTH = 1024

ORDERINGS = ("amd", "metis", "nesdis", "colamd", "natural", "default", "best")


def dense_tail_start(L) -> int:
    """First column of the dense lower triangle that ends a CSC L (n when none).

    Fill-reducing orderings end L with a dense block (the last separator, the
    fixed effects); the selected inverse of a simplicial L takes it as one block and
    inverts it with LAPACK. Blocks narrower than 64 or wider than ``MAX_DENSE_TAIL``
    are left to the ordinary supernode partition.
    """
    n = L.shape[0]
    dense = np.diff(L.indptr) == (n - np.arange(n))
    bad = np.flatnonzero(~dense)
    t = int(bad[-1]) + 1 if bad.size else 0
    w = n - t
    return t if 64 <= w <= MAX_DENSE_TAIL else n


def supernode_partition(L) -> np.ndarray:
    """Column blocks of a CSC L for ``_core.selected_inverse_supernodal``:
    supernodes found from the pattern, then the dense tail."""
    n = L.shape[0]
    t = dense_tail_start(L)
    starts = _core.supernodes(L.indptr, L.indices, t, MAX_SUPERNODE_WIDTH)
    if t < n:
        starts = np.append(starts, n)
    return starts


class Cholesky:
    """L L' = P C P' of a symmetric C given by its lower triangle (CSC), analyzed once.

    Attributes
    ----------
    n : int               dimension
    ordering : str        the ordering asked for
    perm : (n,) int64     P: row k of P C P' is C's ``perm[k]``
    """

    def __init__(self, C: sp.csc_matrix, ordering: str = "default", mode: str = "auto"):
        if not sp.isspmatrix_csc(C):
            raise InternalError("Cholesky needs C as a CSC matrix (its lower triangle)")
        if not C.has_sorted_indices:
            C.sort_indices()
        self._f = _core.Factor(C.indptr, C.indices, ordering, mode)
        self.n = int(C.shape[0])
        self.ordering = ordering
        self.perm = self._f.perm
        self._pinv = None
        self._csc_partition = None
        self._Zx = None      # selected_inverse's output, reused from round to round

    # -- symbolic ------------------------------------------------------------
    @property
    def is_supernodal(self) -> bool:
        return self._f.is_supernodal

    @property
    def nnz_L(self) -> int:
        """nnz(L) from the analysis (without the zeros of supernodal amalgamation)."""
        return self._f.lnz

    @property
    def value_count(self) -> int:
        """Length of ``selected_inverse``'s array (supernodal: ``xsize``)."""
        return self._f.value_count

    def symbolic(self) -> dict:
        """CHOLMOD's sizes from the analysis (``_core.Factor.symbolic``)."""
        return self._f.symbolic()

    @property
    def pinv(self) -> np.ndarray:
        if self._pinv is None:
            self._pinv = np.empty(self.n, dtype=np.int64)
            self._pinv[self.perm] = np.arange(self.n, dtype=np.int64)
        return self._pinv

    # -- numeric ---------------------------------------------------------------
    def factorize(self, C, beta: float = 0.0) -> None:
        """Numeric factorization of C + βI (C: the analyzed pattern's CSC lower
        triangle, or its ``data`` array). Raises ``NotPositiveDefiniteError``."""
        data = C.data if sp.issparse(C) else C
        self._f.factorize(np.ascontiguousarray(data, dtype=np.float64), float(beta))

    def solve(self, b, system: str = "A") -> np.ndarray:
        """x with C x = b ("A"); L x = b ("L"); L'x = b ("Lt"); x = P b ("P");
        x = P'b ("Pt"). b: (n,) or (n, k)."""
        return self._f.solve(b, system)

    def logdet(self) -> float:
        return float(self._f.logdet())

    def free(self) -> None:
        """Release the factor's memory (and the selected inverse's buffer) now."""
        self._f.free()
        self._Zx = None

    # -- the selected inverse ----------------------------------------------------
    def slots(self, rows, cols) -> np.ndarray:
        """Positions in ``selected_inverse()``'s array of C⁻¹[rows, cols] (either
        triangle); raises ``InternalError`` for an entry not on the pattern of L."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        pos = np.empty(rows.shape[0], dtype=np.int64)
        if self._f.is_supernodal:
            self._f.supernodal_slots(rows, cols, pos)
        else:
            indptr, indices, _ = self._f.simplicial_csc()
            r, c = self.pinv[rows], self.pinv[cols]
            _core.csc_positions(indptr, indices, np.maximum(r, c), np.minimum(r, c), pos)
        if (pos < 0).any():
            raise InternalError("requested entry of C⁻¹ is not on the pattern of L")
        return pos

    def selected_inverse(self) -> np.ndarray:
        """C⁻¹ on the pattern of L, in the factor's value layout (``slots``).

        The array returned is this factor's buffer, overwritten by the next call
        (a REML round reads its slots and moves on): allocating a fresh one each
        round costs a page fault per 4 KiB — 0.05 s at 100k animals, seconds at 1M,
        as much as the ``L()`` copy the binding removed. Copy what must outlive it.
        """
        size = self._f.value_count
        if self._Zx is None or self._Zx.shape[0] != size:
            self._Zx = None
            self._Zx = np.empty(size)
        Zx = self._Zx
        with all_cores_for_large(self.nnz_L >= PARALLEL_SELINV_MIN_NNZ):
            if self._f.is_supernodal:
                self._f.selected_inverse_supernodal(Zx)
                return Zx
            indptr, indices, data = self._f.simplicial_csc()
            if self._csc_partition is None:
                L = sp.csc_matrix((data, indices, indptr), shape=(self.n, self.n))
                self._csc_partition = supernode_partition(L)
            _core.selected_inverse_supernodal(indptr, indices, data, Zx, self._csc_partition)
            return Zx

    def L(self) -> sp.csc_matrix:
        """L as a CSC matrix (a copy; rows sorted, the diagonal first)."""
        if not self._f.is_supernodal:
            indptr, indices, data = self._f.simplicial_csc()
            return sp.csc_matrix((data.copy(), indices.copy(), indptr.copy()),
                                 shape=(self.n, self.n))
        sup, pi, px, s = self._f.supernodal_arrays()
        x = self._f.supernodal_values()
        cols_out, rows_out, vals = [], [], []
        for J in range(sup.shape[0] - 1):
            w, m = int(sup[J + 1] - sup[J]), int(pi[J + 1] - pi[J])
            block = x[px[J]:px[J] + w * m].reshape(w, m)   # block[t] = column sup[J] + t
            rJ = s[pi[J]:pi[J + 1]]
            for t in range(w):
                rows_out.append(rJ[t:])
                vals.append(block[t, t:])
                cols_out.append(np.full(m - t, sup[J] + t, dtype=np.int64))
        L = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows_out),
                                                  np.concatenate(cols_out))),
                          shape=(self.n, self.n))
        L.sort_indices()
        return L


def draw_with_precision(Q: sp.spmatrix):
    """A function z ↦ x with Var(x) = Q⁻¹ for standard normal z (n × m): for a sparse
    precision Q = P'LL'P (CHOLMOD, simplicial), x = P'L'⁻¹z. One factorization, then
    two triangular solves per call; Q⁻¹ (a relationship matrix K) is never formed."""
    low = sp.tril(sp.csc_matrix(Q, dtype=float), format="csc")
    low.sort_indices()
    chol = Cholesky(low, "default", mode="simplicial")
    chol.factorize(low)
    return lambda z: chol.solve(chol.solve(np.asarray(z, dtype=float), "Lt"), "Pt")
