"""Henderson's mixed-model equations with a fixed sparsity pattern.

    C = | X'X/σ²ₑ   X'Z/σ²ₑ        |     rhs = | X'y/σ²ₑ |
        | Z'X/σ²ₑ   Z'Z/σ²ₑ + G⁻¹  |           | Z'y/σ²ₑ |

C is stored as its lower triangle (CSC), the form CHOLMOD reads. Its pattern —
W'W with W = [X Z] plus every G⁻¹ slot — is built once; each parameter value
only rewrites ``C.data`` in place: ``C.data = base / σ²ₑ``, then the G⁻¹ values
at their precomputed slots. CHOLMOD's analysis (``cholesky.Cholesky``: fill-reducing
ordering and symbolic factorization) runs once per model; each θ costs one numeric
refactorization (``Cholesky.factorize``).

Factor state is explicit: ``MME.theta`` is the θ whose values C and its factor
hold, and ``MME.ensure(θ)`` is the one way to put them there (a no-op when they
already are). Anything that solves with the factor calls ``ensure`` first, so no
caller has to "restore" the factor after evaluating elsewhere. ``release()``
drops the factor (9 GB at 1M animals); ``ensure`` then raises
``FactorReleasedError``.

θ is laid out as the lower-triangle elements of each block's G₀ (``covariance``'s
order), then σ²ₑ; ``split`` and ``theta_of`` convert.
"""
from __future__ import annotations

import copy
import dataclasses
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from .. import _core
from .._errors import FactorReleasedError, InternalError, NotPositiveDefiniteError
from ..model.covariance import BlockStructure
from ..model.design import Design
from .cholesky import (MAX_DENSE_TAIL, MAX_SUPERNODE_WIDTH,  # noqa: F401 (re-exported)
                       PARALLEL_SELINV_MIN_NNZ, Cholesky, dense_tail_start,
                       supernode_partition)


def csc_slots(M: sp.csc_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions in ``M.data`` of the entries (rows, cols); −1 where absent."""
    pos = np.empty(rows.shape[0], dtype=np.int64)
    _core.csc_positions(M.indptr, M.indices, np.ascontiguousarray(rows, dtype=np.int64),
                        np.ascontiguousarray(cols, dtype=np.int64), pos)
    return pos


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
    W : csc (n × dim)      W̃ = W^{1/2}[X Z] (W: prior weights; [X Z] without them)
    y : (n,)               ỹ = W^{1/2} y
    C : csc (dim × dim)    lower triangle of C, values for the last θ set
    structures : list of BlockStructure
    residual : ResidualStructure (``model.residual``)
    sizes : list of int    number of θ entries of each block
    k : int                len(θ) (block parameters, then R₀'s)
    theta : ndarray or None  the θ whose values C and the factor hold
    factor : cholesky.Cholesky, analyzed once (``n_analyze`` counts it)
    """

    def __init__(self, design: Design, ordering: str = "auto"):
        self.design = design
        self.residual = design.residual
        sw = self.residual.sqrt_weights
        # prior weights folded into the data: W̃ = W^{1/2}[X Z], ỹ = W^{1/2}y
        self.W = design.W if sw is None else sp.csc_matrix(sp.diags(sw) @ design.W)
        self.y = design.y if sw is None else design.y * sw
        # plots of a spatial grid without a record: rows y = 0 with an indicator column
        # each (flat prior), appended after Z (``model.spatial``)
        self.n_aug = self.residual.n_missing
        if self.n_aug:
            m = self.n_aug
            self.W = sp.bmat([[self.W, None], [None, sp.identity(m, format="csc")]],
                             format="csc")
            self.y = np.concatenate([self.y, np.zeros(m)])
        self.n, self.dim = self.W.shape
        self.p = design.p
        offset = self.p
        self.structures = []
        for b in design.blocks:
            self.structures.append(BlockStructure(b, offset))
            offset += b.q
        self.sizes = [s.n_params for s in self.structures]
        self.n_r = self.residual.n_params
        self.k = sum(self.sizes) + self.n_r
        self._build_pattern()
        self.ordering = choose_ordering(ordering, self.structures)
        self.factor = None
        self.theta = None
        self.released = False
        self.n_analyze = 0
        self.n_factorize = 0
        self._pattern_in_L = None

    def block_Z(self, s: BlockStructure):
        """Z̃ of one random block (weighted rows when there are prior weights)."""
        if self.residual.weights is None and not self.n_aug:
            return s.block.Z
        return self.W[:, s.offset:s.offset + s.block.q]

    def _cells(self) -> list:
        """Lower-triangle COO of each residual cell's W̃ₚₐ'W̃ₚ_b (+ transpose), and
        the cell's W̃'ỹ and ỹ'ỹ pieces (``model.residual``)."""
        res, W, y = self.residual, self.W, self.y
        if res.is_scalar:
            WtW = sp.tril(W.T @ W).tocoo()
            return [(WtW, W.T @ y, float(y @ y))]
        if hasattr(res, "cell_matrices"):
            out = []
            for H in res.cell_matrices():
                HW = H @ W
                out.append((sp.tril(W.T @ HW).tocoo(), np.asarray(HW.T @ y).ravel(),
                            float(y @ (H @ y))))
            return out
        Wr = W.tocsr()
        out = []
        for pi, j, k in res.cells:
            rows = res.patterns[pi].rows
            ra, rb = rows[:, j], rows[:, k]
            Wa, Wb = Wr[ra], Wr[rb]
            M = (Wa.T @ Wb).tocsc()
            if j != k:
                M = M + M.T
                Wty = Wa.T @ y[rb] + Wb.T @ y[ra]
                yty = 2.0 * float(y[ra] @ y[rb])
            else:
                Wty = Wa.T @ y[ra]
                yty = float(y[ra] @ y[ra])
            out.append((sp.tril(M).tocoo(), np.asarray(Wty).ravel(), yty))
        return out

    def _build_pattern(self):
        cells = self._cells()
        g_rows = [s.rows for s in self.structures]
        g_cols = [s.cols for s in self.structures]
        diag = np.arange(self.dim, dtype=np.int64)
        rows = np.concatenate([c[0].row.astype(np.int64) for c in cells] + [diag] + g_rows)
        cols = np.concatenate([c[0].col.astype(np.int64) for c in cells] + [diag] + g_cols)
        # coo → csc sums duplicates and keeps the explicit zeros: the pattern is the union.
        C = sp.csc_matrix((np.zeros(rows.shape[0]), (rows, cols)), shape=(self.dim, self.dim))
        C.sum_duplicates()
        C.sort_indices()
        self.C = C
        # C.data = B·r(θ) + G⁻¹ slots, one column of B per residual cell; for σ²ₑI the
        # one column is kept dense as ``base`` (W̃'W̃ on C's pattern)
        slots = [csc_slots(C, M.row.astype(np.int64), M.col.astype(np.int64))
                 for M, _, _ in cells]
        self.Wty_cells = np.column_stack([c[1] for c in cells])
        self.yty_cells = np.array([c[2] for c in cells])
        if self.residual.is_scalar:
            self.base = np.zeros(C.nnz)
            self.base[slots[0]] = cells[0][0].data
            self.Wty = self.Wty_cells[:, 0]
            self.yty = float(self.yty_cells[0])
            self.B = self.B_trace = None
        else:
            self.B = sp.csc_matrix((np.concatenate([c[0].data for c in cells]),
                                    (np.concatenate(slots),
                                     np.concatenate([np.full(sl.shape[0], i, dtype=np.int64)
                                                     for i, sl in enumerate(slots)]))),
                                   shape=(C.nnz, len(cells)))
            # ⟨C⁻¹, B_cell⟩ over the full symmetric matrix: off-diagonal slots count twice
            twice = np.where(C.indices != self.pattern_cols, 2.0, 1.0)
            self.B_trace = sp.csc_matrix(sp.diags(twice) @ self.B)
        self.gslots = []
        for s in self.structures:
            pos = csc_slots(C, s.rows, s.cols)
            if (pos < 0).any():
                raise InternalError("a G⁻¹ slot is missing from the pattern of C")
            self.gslots.append(pos)
        self.diag_slots = csc_slots(C, diag, diag)

    # -- parameters ----------------------------------------------------------
    def split(self, theta: np.ndarray) -> tuple:
        """(list of G₀ per block, R₀) from θ; R₀ is t × t (1 × 1: σ²ₑ)."""
        G0s, i = [], 0
        for s, m in zip(self.structures, self.sizes):
            G0s.append(s.G0(theta[i:i + m]))
            i += m
        return G0s, self.residual.R0(theta[i:])

    def sigma2(self, theta: np.ndarray) -> float:
        """σ²ₑ of a scalar residual (θ's last entry)."""
        if not self.residual.is_scalar:
            raise InternalError("σ²ₑ asked of a structured residual")
        return float(theta[-1])

    def theta_of(self, G0s: list, R0) -> np.ndarray:
        """θ from G₀ per block and R₀ (a t × t matrix, or σ²ₑ; the inverse of ``split``)."""
        return np.concatenate([s.theta_of(G) for s, G in zip(self.structures, G0s)]
                              + [self.residual.theta_of(np.atleast_2d(np.asarray(R0, float)))])

    def with_response(self, y: np.ndarray) -> "MME":
        """A copy of these MME for another response vector y (same X, Z, K, weights):
        C's pattern and slot maps are shared, C's values and the CHOLMOD factor are the
        copy's own (analysed on its first factorization). Refitting simulated responses
        (``inference.bootstrap``) calls ``set_response`` on one copy, so the analysis is
        done once for all of them. Scalar residuals only (σ²ₑ I, prior weights)."""
        if not self.residual.is_scalar or self.n_aug:
            raise InternalError("with_response needs a scalar residual without missing plots")
        new = copy.copy(self)
        new.C = self.C.copy()
        new.factor = None
        new.theta = None
        new.released = False
        new.n_analyze = new.n_factorize = 0
        new._supernodes = None
        new._pattern_in_L = None
        new.__dict__.pop("pattern_rows", None)
        new.__dict__.pop("pattern_cols", None)
        new.set_response(y)
        return new

    def set_response(self, y: np.ndarray) -> None:
        """Rewrite the response (ỹ, W̃'ỹ, ỹ'ỹ) in place; C and its factor do not
        depend on y and stay valid."""
        y = np.asarray(y, dtype=float)
        if y.shape != (self.n,):
            raise InternalError(f"a response of {self.n} values expected, got {y.shape}")
        self.design = dataclasses.replace(self.design, y=y)
        sw = self.residual.sqrt_weights
        self.y = y if sw is None else y * sw
        self.Wty = np.asarray(self.W.T @ self.y).ravel()
        self.yty = float(self.y @ self.y)
        self.Wty_cells = self.Wty[:, None]
        self.yty_cells = np.array([self.yty])

    # -- values and factor state ---------------------------------------------
    def ensure(self, theta: np.ndarray) -> None:
        """Make C and its factor those at θ (refactorize only when θ differs).

        The one entry point to the factor's state: every solve, log-determinant
        and selected inverse is at ``self.theta`` afterwards.
        """
        if self.released:
            raise FactorReleasedError(
                "the Cholesky factor of this fit was released (Fit.release()); quantities "
                "that need it (Kenward-Roger df, emmeans/anova with new contrasts, "
                "marginal_covariance, ...) are no longer available: refit the model")
        theta = np.asarray(theta, dtype=float)
        if self.theta is not None and np.array_equal(self.theta, theta):
            return
        G0s, R0 = self.split(theta)
        self.set_values(G0s, R0)
        self._factorize()
        self.theta = theta.copy()

    def release(self) -> None:
        """Free the factor (and C's values); ``ensure`` raises afterwards."""
        if self.factor is not None:
            self.factor.free()
        self.factor = None
        self.theta = None
        self._pattern_in_L = None
        self.released = True

    def set_values(self, G0s: list, R0) -> None:
        """Rewrite C.data in place for G₀ of each block and R₀ (or σ²ₑ) (no
        factorization: the factor no longer matches C, so ``theta`` is None until
        ``ensure``)."""
        self.theta = None
        data = self.C.data
        R0 = np.asarray(R0, dtype=float)
        if self.residual.kind != "ar1ar1":
            R0 = np.atleast_2d(R0)
        if self.residual.is_scalar:
            np.multiply(self.base, 1.0 / R0[0, 0], out=data)
        else:
            data[:] = self.B @ self.residual.rinv_cells(self.residual.pattern_inverses(R0))
        for s, slots, G0 in zip(self.structures, self.gslots, G0s):
            data[slots] += s.ginv_values(np.linalg.inv(G0))

    def _factorize(self) -> None:
        """Numeric Cholesky of C (symbolic analysis on the first call only)."""
        if self.factor is None:
            self.factor = Cholesky(self.C, self.ordering)
            self.n_analyze += 1
        try:
            self.factor.factorize(self.C)
        except NotPositiveDefiniteError as exc:
            raise NotPositiveDefiniteError(
                f"the mixed-model equations are not positive definite ({exc}); "
                "check for a variance at zero or a singular relationship matrix") from exc
        self.n_factorize += 1
        if not np.isfinite(self.factor.logdet()):
            raise NotPositiveDefiniteError(
                "the mixed-model equations are numerically not positive definite "
                "(a G₀ at the edge of the positive-definite cone)")

    def rhs(self, rinv_cells: np.ndarray) -> np.ndarray:
        """W̃'R̃⁻¹ỹ for the cells' R⁻¹ entries (``ResidualStructure.rinv_cells``)."""
        return self.Wty_cells @ rinv_cells

    def yRy(self, rinv_cells: np.ndarray) -> float:
        """ỹ'R̃⁻¹ỹ."""
        return float(self.yty_cells @ rinv_cells)

    def solve(self, b: np.ndarray) -> np.ndarray:
        return self.factor.solve(b)

    def logdet(self) -> float:
        return self.factor.logdet()

    def fixed_columns(self) -> np.ndarray:
        """F = C⁻¹[:, :p] (dim × p) by p solves with the factor in hand."""
        E = np.zeros((self.dim, self.p))
        E[np.arange(self.p), np.arange(self.p)] = 1.0
        return self.solve(E)

    # -- selected inverse --------------------------------------------------
    @cached_property
    def pattern_rows(self) -> np.ndarray:
        """Row of each slot of C.data (C's pattern is fixed: computed once)."""
        return self.C.indices.astype(np.int64)

    @cached_property
    def pattern_cols(self) -> np.ndarray:
        """Column of each slot of C.data."""
        return np.repeat(np.arange(self.dim, dtype=np.int64), np.diff(self.C.indptr))

    def cinv_on_pattern(self, extra_rows=None, extra_cols=None) -> tuple:
        """C⁻¹ at every slot of C.data (and at extra (rows, cols) on L's pattern).

        The positions of C's pattern in the factor are found once per analysis (they
        are fixed with the symbolic factorization); each call runs one selected
        inverse, on the factor's own arrays (``Cholesky.selected_inverse``).
        """
        Zx = self.factor.selected_inverse()
        if self._pattern_in_L is None or self._pattern_in_L[0] is not self.factor:
            self._pattern_in_L = (self.factor, self.factor.slots(self.pattern_rows,
                                                                 self.pattern_cols))
        on_C = Zx[self._pattern_in_L[1]]
        if extra_rows is None:
            return on_C, np.zeros(0)
        return on_C, Zx[self.factor.slots(extra_rows, extra_cols)]

    def selected_inverse(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(C⁻¹)[rows, cols] for entries on the pattern of L (selected inversion
        with the factor in hand: the dense trailing block and every supernode are
        taken as blocks by ``_core``'s BLAS-3 recurrences)."""
        Zx = self.factor.selected_inverse()
        return Zx[self.factor.slots(rows, cols)]
