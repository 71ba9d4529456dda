"""Henderson's mixed-model equations with a fixed sparsity pattern.

    C = | X'X/σ²ₑ   X'Z/σ²ₑ        |     rhs = | X'y/σ²ₑ |
        | Z'X/σ²ₑ   Z'Z/σ²ₑ + G⁻¹  |           | Z'y/σ²ₑ |

C is stored as its lower triangle (CSC), the form CHOLMOD reads. Its pattern —
W'W with W = [X Z] plus every G⁻¹ slot — is built once; each parameter value
only rewrites ``C.data`` in place: ``C.data = base / σ²ₑ``, then the G⁻¹ values
at their precomputed slots. ``cholmod.analyze`` (fill-reducing ordering and
symbolic factorization) runs once per model; each θ costs one numeric
refactorization (``Factor.cholesky_inplace``).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sksparse import cholmod

from .. import _core
from .._errors import NotPositiveDefiniteError
from .._threads import all_cores_for_large
from ..model.covariance import BlockStructure
from ..model.design import Design


def csc_slots(M: sp.csc_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions in ``M.data`` of the entries (rows, cols); −1 where absent."""
    pos = np.empty(rows.shape[0], dtype=np.int64)
    _core.csc_positions(M.indptr, M.indices, np.ascontiguousarray(rows, dtype=np.int64),
                        np.ascontiguousarray(cols, dtype=np.int64), pos)
    return pos


#: Largest dense trailing block of L inverted with LAPACK (w² doubles of memory).
MAX_DENSE_TAIL = 12000
#: nnz(L) from which the selected inverse runs SciPy's BLAS on every core (``_threads``)
PARALLEL_SELINV_MIN_NNZ = 20_000_000
#: Widest supernode taken as one block by the supernodal selected inverse (w² doubles).
MAX_SUPERNODE_WIDTH = 1024


def dense_tail_start(L) -> int:
    """First column of the dense lower triangle that ends L (n when there is none).

    Fill-reducing orderings end L with a dense block (the last separator, the
    fixed effects); the supernodal selected inverse takes it as one block and
    inverts it with LAPACK (``dtrtri`` + ``dlauum``). Blocks narrower than 64 or
    wider than ``MAX_DENSE_TAIL`` are left to the ordinary supernode partition.
    """
    n = L.shape[0]
    dense = np.diff(L.indptr) == (n - np.arange(n))
    bad = np.flatnonzero(~dense)
    t = int(bad[-1]) + 1 if bad.size else 0
    w = n - t
    return t if 64 <= w <= MAX_DENSE_TAIL else n


def supernode_partition(L) -> np.ndarray:
    """Column blocks for ``_core.selected_inverse_supernodal``: supernodes + the dense tail."""
    n = L.shape[0]
    t = dense_tail_start(L)
    starts = _core.supernodes(L.indptr, L.indices, t, MAX_SUPERNODE_WIDTH)
    if t < n:
        starts = np.append(starts, n)
    return starts


def choose_ordering(ordering: str, structures: list) -> str:
    """The CHOLMOD ordering for ``ordering="auto"``: AMD when a random term has a
    relationship matrix (pedigree/genomic K), CHOLMOD's default otherwise.

    CHOLMOD's default runs AMD and, when AMD's fill is large, METIS too, keeping the
    sparser factor. On pedigree (A⁻¹) models AMD's factor was the one kept at every
    size measured (10k, 100k, 300k, 1M animals: the same nnz(L)), and METIS's was
    2.5–25% larger; asking for AMD alone cuts the analysis (1M: 35–53 s vs 62 s; 300k
    3.5 vs 6.5 s). Crossed K = I designs keep the default: there METIS wins
    (73k crossed records: nnz(L) 735k vs AMD's 1.18M). Any other value is passed on.
    """
    if ordering != "auto":
        return ordering
    if any(not s.block.k_is_identity for s in structures):
        return "amd"
    return "default"


class MME:
    """The coefficient matrix C (lower CSC), rhs and the Cholesky factor of one model.

    Attributes
    ----------
    W : csc (n × dim)      [X Z]
    C : csc (dim × dim)    lower triangle of C, values for the last θ set
    structures : list of BlockStructure
    factor : sksparse.cholmod.Factor, analyzed once (``n_analyze`` counts it)
    """

    def __init__(self, design: Design, ordering: str = "auto"):
        self.design = design
        X = design.X
        Zs = [b.Z for b in design.blocks]
        self.W = sp.hstack([X] + Zs, format="csc")
        self.n, self.dim = self.W.shape
        self.p = X.shape[1]
        self.y = design.y
        self.Wty = self.W.T @ self.y
        self.yty = float(self.y @ self.y)
        offset = self.p
        self.structures = []
        for b in design.blocks:
            self.structures.append(BlockStructure(b, offset))
            offset += b.q
        self._build_pattern()
        self.ordering = choose_ordering(ordering, self.structures)
        self.factor = None
        self.n_analyze = 0
        self.n_factorize = 0
        self._supernodes = None

    def _build_pattern(self):
        WtW = sp.tril(self.W.T @ self.W).tocoo()
        g_rows = [s.rows for s in self.structures]
        g_cols = [s.cols for s in self.structures]
        diag = np.arange(self.dim, dtype=np.int64)
        rows = np.concatenate([WtW.row.astype(np.int64), diag] + g_rows)
        cols = np.concatenate([WtW.col.astype(np.int64), diag] + g_cols)
        vals = np.concatenate([WtW.data, np.zeros(self.dim)]
                              + [np.zeros(r.shape[0]) for r in g_rows])
        # coo → csc sums duplicates and keeps the explicit zeros: the pattern is the union.
        C = sp.csc_matrix((vals, (rows, cols)), shape=(self.dim, self.dim))
        C.sum_duplicates()
        C.sort_indices()
        self.C = C
        self.base = C.data.copy()   # W'W on the union pattern
        self.gslots = []
        for s in self.structures:
            pos = csc_slots(C, s.rows, s.cols)
            assert (pos >= 0).all(), "G⁻¹ slot missing from the pattern of C"
            self.gslots.append(pos)
        self.diag_slots = csc_slots(C, diag, diag)

    # -- values ------------------------------------------------------------
    def set_values(self, G0s: list, sigma2_e: float) -> None:
        """Rewrite C.data in place for G₀ of each block and σ²ₑ."""
        data = self.C.data
        np.multiply(self.base, 1.0 / sigma2_e, out=data)
        for s, slots, G0 in zip(self.structures, self.gslots, G0s):
            data[slots] += s.ginv_values(np.linalg.inv(G0))

    def factorize(self) -> None:
        """Numeric Cholesky of C (symbolic analysis on the first call only)."""
        if self.factor is None:
            self.factor = cholmod.analyze(self.C, ordering_method=self.ordering)
            self.n_analyze += 1
        try:
            self.factor.cholesky_inplace(self.C)
        except cholmod.CholmodNotPositiveDefiniteError as exc:
            raise NotPositiveDefiniteError(
                f"the mixed-model equations are not positive definite ({exc}); "
                "check for a variance at zero or a singular relationship matrix") from exc
        self.n_factorize += 1
        if not np.isfinite(self.factor.logdet()):
            raise NotPositiveDefiniteError(
                "the mixed-model equations are numerically not positive definite "
                "(a G₀ at the edge of the positive-definite cone)")

    def rhs(self, sigma2_e: float) -> np.ndarray:
        return self.Wty / sigma2_e

    def solve(self, b: np.ndarray) -> np.ndarray:
        return self.factor.solve_A(b)

    def logdet(self) -> float:
        return float(self.factor.logdet())

    # -- selected inverse --------------------------------------------------
    def selected_inverse(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(C⁻¹)[rows, cols] for entries on the pattern of C (selected inversion).

        Uses the factor in hand: L is copied to CSC once per call; the dense
        trailing block and every supernode are taken as blocks by ``_core``'s
        BLAS-3 recurrences. The supernode partition is found once per analysis.
        """
        L = self.factor.L()
        if not L.has_sorted_indices:
            L.sort_indices()
        Zx = np.empty_like(L.data)
        if self._supernodes is None or self._supernodes[0] != L.nnz:
            self._supernodes = (L.nnz, supernode_partition(L))
        with all_cores_for_large(L.nnz >= PARALLEL_SELINV_MIN_NNZ):
            _core.selected_inverse_supernodal(L.indptr, L.indices, L.data, Zx,
                                              self._supernodes[1])
        pinv = np.empty(self.dim, dtype=np.int64)
        pinv[self.factor.P()] = np.arange(self.dim)
        r, c = pinv[rows], pinv[cols]
        lo, hi = np.minimum(r, c), np.maximum(r, c)
        pos = csc_slots(L, hi, lo)
        if (pos < 0).any():
            raise RuntimeError("requested entry of C⁻¹ is not on the pattern of L")
        return Zx[pos]
