"""BLUP with known variances by preconditioned conjugate gradients (no factorization).

For variances given, Henderson's mixed-model equations

    C x = rhs,   C = W'R⁻¹W + diag(0, G⁻¹),   rhs = W'R⁻¹y,   W = [X Z],
    R⁻¹ = I/σ²ₑ,  G⁻¹ = ⊕ₖ G₀ₖ⁻¹ ⊗ Kₖ⁻¹  (Kₖ⁻¹ = A⁻¹, G⁻¹, H⁻¹ or I)

are solved by the conjugate-gradient method (Hestenes & Stiefel 1952) with a
preconditioner M ≈ C, touching C only through products C·v. Two ways to form
them (``operator``):

* ``"assembled"`` (default): C is built once as a sparse matrix (both
  triangles, CSR) and each iteration costs one sparse mat-vec. Assembling C is
  cheap — O(nnz(W'W) + nnz(K⁻¹)) — it is the Cholesky factor, with its fill, that
  a million-animal model cannot afford.
* ``"data"``: iteration on data (Schaeffer & Kennedy 1986; Misztal & Gianola
  1987): C·v = W'(W v)/σ²ₑ + G⁻¹v, from the records (W) and the sparse K⁻¹; C is
  never formed. The route to models whose C does not fit in memory.

Preconditioners (``preconditioner``):

* ``"jacobi"``: M = diag(C) (Strandén & Lidauer 1999 found the diagonal enough
  for single-trait animal models);
* ``"block"``: M = block-diagonal: the fixed-effects block X'X/σ²ₑ as one dense
  p × p block (Cholesky; used when p ≤ ``max_dense_fixed``, else its diagonal) —
  fixed effects are few and strongly coupled, which is what slows Jacobi PCG
  down — and, for random terms with d > 1 correlated effects per level (random
  slopes, G₀ ⊗ K), the d × d block of each level (Strandén & Lidauer 1999; the
  block-diagonal preconditioner of Tsuruta, Misztal & Strandén 2001).

Convergence is declared when the relative residual ‖rhs − C x‖ / ‖rhs‖ ≤ ``tol``
on the true residual (the recursively updated residual is recomputed from x
before stopping, and the iteration restarts from x if they disagree).

The public entry is :func:`blup_pcg` (formula, data, variances, relmat — the
same arguments as :func:`mme.fit` with ``variances``); :func:`solve_pcg` takes
an already built :class:`~mme.model.design.Design` or a :class:`~mme.results.Fit`.

References
----------
Hestenes, M. R. & Stiefel, E. (1952). Methods of conjugate gradients for solving
linear systems. J. Res. Natl. Bur. Stand. 49:409-436.

Schaeffer, L. R. & Kennedy, B. W. (1986). Computing solutions to mixed model
equations. Proc. 3rd World Congr. Genet. Appl. Livest. Prod. 12:382-393.

Misztal, I. & Gianola, D. (1987). Indirect solution of mixed model equations.
J. Dairy Sci. 70:716-723.

Strandén, I. & Lidauer, M. (1999). Solving large mixed linear models using
preconditioned conjugate gradient iteration. J. Dairy Sci. 82:2779-2787.

Tsuruta, S., Misztal, I. & Strandén, I. (2001). Use of the preconditioned
conjugate gradient algorithm as a generic solver for mixed-model equations in
animal breeding applications. J. Anim. Sci. 79:1166-1172.
"""
from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp

from .._errors import ConvergenceWarning, DataError, OptionError
from .._threads import available_cores
from ..model.covariance import ginv_matrix, parse_variances
from ..model.design import Design, build_design
from ..results import Fit, random_effects_frame

__all__ = ["PCGResult", "blup_pcg", "solve_pcg", "MMEOperator"]

#: the fixed-effects block is inverted densely up to this many columns
MAX_DENSE_FIXED = 2000


@dataclass
class PCGResult:
    """Solutions of the MME by PCG.

    Attributes
    ----------
    fixed_effects : DataFrame
        Index ``term``; column ``estimate`` (BLUE).
    random_effects : DataFrame
        ``group, term, level, blup`` (the layout of ``Fit.random_effects``).
    solutions : DataFrame
        Both stacked: ``group`` ("(fixed)" for fixed effects), ``term, level,
        estimate``, in the order of the MME.
    solution : ndarray
        x = [β̂; û] in the order of the MME.
    n_iter : int
        CG iterations.
    rel_residual : float
        Final ‖rhs − C x‖ / ‖rhs‖ (true residual).
    converged : bool
    residual_history : ndarray
        Relative (recursive) residual after each iteration.
    seconds : dict
        ``setup`` (operator and preconditioner), ``solve`` (iterations).
    """

    fixed_effects: pd.DataFrame
    random_effects: pd.DataFrame
    solutions: pd.DataFrame
    solution: np.ndarray = field(repr=False)
    n_iter: int = 0
    rel_residual: float = np.nan
    converged: bool = False
    residual_history: np.ndarray = field(default=None, repr=False)
    seconds: dict = field(default_factory=dict)
    preconditioner: str = "jacobi"
    operator: str = "assembled"
    variances: dict = field(default_factory=dict)


class _RowSplitCSR:
    """y = M v with M's rows split in chunks of equal nnz, one thread per chunk.

    SciPy's CSR mat-vec releases the GIL, so the chunks run in parallel
    (1.6× on 2 cores for C of a 1M-animal model); one chunk means a plain M @ v.
    """

    def __init__(self, M: sp.csr_matrix, threads: int):
        M = sp.csr_matrix(M)
        self.shape = M.shape
        threads = max(1, min(int(threads), M.shape[0] // 50_000 or 1))
        if threads == 1:
            self.parts, self.bounds, self.pool = [M], [0, M.shape[0]], None
            return
        cuts = np.searchsorted(M.indptr, np.linspace(0, M.nnz, threads + 1)[1:-1])
        self.bounds = [0] + [int(c) for c in cuts] + [M.shape[0]]
        self.parts = [M[a:b] for a, b in zip(self.bounds[:-1], self.bounds[1:])]
        self.pool = ThreadPoolExecutor(threads)

    def __matmul__(self, v: np.ndarray) -> np.ndarray:
        if self.pool is None:
            return self.parts[0] @ v
        out = np.empty(self.shape[0])
        futures = [self.pool.submit(P.__matmul__, v) for P in self.parts]
        for a, b, f in zip(self.bounds[:-1], self.bounds[1:], futures):
            out[a:b] = f.result()
        return out

    @property
    def nnz(self) -> int:
        return int(sum(P.nnz for P in self.parts))

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False)


class MMEOperator:
    """C·v, rhs and preconditioners of the MME for given variances.

    Parameters
    ----------
    design : Design
    G0s : list of (d × d) arrays, one per random block
    sigma2_e : float
    operator : "assembled" or "data"
    threads : int, optional
        Threads for the mat-vecs (chunks of rows; ``solve_pcg`` passes the CPUs
        available to the process). Matrices under 100,000 rows use one.
    """

    def __init__(self, design: Design, G0s: list, sigma2_e: float, operator: str = "assembled",
                 threads: int | None = 1):
        if operator not in ("assembled", "data"):
            raise OptionError(f"operator must be 'assembled' or 'data', got {operator!r}")
        self.design = design
        self.operator = operator
        self.s2e = float(sigma2_e)
        self.W = design.W.tocsr()
        self.n, self.dim = self.W.shape
        self.p = design.p
        self.rhs = np.asarray(self.W.T @ design.y, dtype=float) / self.s2e
        # G⁻¹ on the random part, block-diagonal over terms: G₀⁻¹ ⊗ K⁻¹
        self.G0inv = [np.linalg.inv(G0) for G0 in G0s]
        self.Ginv = ginv_matrix(design.blocks, G0s, p=self.p)
        if operator == "assembled":
            WtW = (self.W.T @ self.W).tocsr()
            C = (WtW * (1.0 / self.s2e) + self.Ginv).tocsr()
            C.sum_duplicates()
            C.sort_indices()
            self.C = C
            self.diag = C.diagonal()
            self._C = _RowSplitCSR(C, threads)
        else:
            self.C = None
            self.diag = (np.asarray(self.W.multiply(self.W).sum(axis=0)).ravel() / self.s2e
                         + self.Ginv.diagonal())
            self._W = _RowSplitCSR(self.W, threads)
            self._WT = _RowSplitCSR(self.W.T.tocsr(), threads)
            self._G = _RowSplitCSR(self.Ginv, threads)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """C v."""
        if self.C is not None:
            return self._C @ v
        out = self._WT @ (self._W @ v)
        out *= 1.0 / self.s2e
        out += self._G @ v
        return out

    @property
    def nnz(self) -> int:
        """Stored nonzeros of the operator (C both triangles, or W, W' and G⁻¹)."""
        if self.C is not None:
            return int(self.C.nnz)
        return int(2 * self.W.nnz + self.Ginv.nnz)

    def close(self) -> None:
        """Stop the mat-vec threads."""
        for name in ("_C", "_W", "_WT", "_G"):
            if hasattr(self, name):
                getattr(self, name).close()

    # -- preconditioners --------------------------------------------------
    def preconditioner(self, kind: str = "jacobi", max_dense_fixed: int = MAX_DENSE_FIXED):
        """A function r ↦ M⁻¹ r."""
        if kind not in ("jacobi", "block"):
            raise OptionError(f"preconditioner must be 'jacobi' or 'block', got {kind!r}")
        if np.any(self.diag <= 0):
            bad = np.flatnonzero(self.diag <= 0)[:5]
            raise DataError(f"the MME have zero or negative diagonal entries at {bad.tolist()}: "
                            "an empty level or column")
        dinv = 1.0 / self.diag
        if kind == "jacobi":
            return lambda r: dinv * r
        p = self.p
        fixed = None
        if 0 < p <= max_dense_fixed:
            X = self.W[:, :p]
            Cxx = (X.T @ X).toarray() / self.s2e  # dense-ok: p × p, p ≤ max_dense_fixed
            fixed = sla.cho_factor(Cxx, lower=True)
        blocks = []   # (slice, L, d, inverse d×d blocks (L, d, d)) for d > 1 terms
        off = p
        for b, G0inv in zip(self.design.blocks, self.G0inv):
            d, L = b.d, b.n_levels
            if d > 1:
                Z = sp.csc_matrix(b.Z)
                M = np.empty((L, d, d))
                kd = b.Kinv.diagonal()
                for a in range(d):
                    Za = Z[:, a * L:(a + 1) * L]
                    for c in range(a + 1):
                        Zc = Z[:, c * L:(c + 1) * L]
                        zz = np.asarray(Za.multiply(Zc).sum(axis=0)).ravel() / self.s2e
                        M[:, a, c] = M[:, c, a] = zz + G0inv[a, c] * kd
                blocks.append((slice(off, off + d * L), L, d, np.linalg.inv(M)))
            off += b.q

        def apply(r):
            z = dinv * r
            if fixed is not None:
                z[:p] = sla.cho_solve(fixed, r[:p])
            for sl, L, d, Minv in blocks:
                R = r[sl].reshape(d, L)
                z[sl] = np.einsum("lab,bl->al", Minv, R).ravel()
            return z
        return apply


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a'b without BLAS: numpy's own loop. OpenBLAS' threaded ddot/dnrm2 cost ms per call
    on vectors of 10⁵-10⁶ on a 2-vCPU machine (thread wake-ups), more than the mat-vec."""
    return float(np.einsum("i,i->", a, b))


def _norm(a: np.ndarray) -> float:
    return float(np.sqrt(_dot(a, a)))


def pcg(matvec, b: np.ndarray, precond, tol: float = 1e-8, max_iter: int = 5000,
        x0: np.ndarray | None = None) -> tuple:
    """Preconditioned conjugate gradients for symmetric positive definite C.

    Returns (x, n_iter, relative true residual, converged, history of relative
    recursive residuals).
    """
    bnorm = _norm(b)
    if bnorm == 0.0:
        return np.zeros_like(b), 0, 0.0, True, np.zeros(0)
    x = np.zeros_like(b) if x0 is None else np.array(x0, dtype=float)
    r = b - matvec(x) if x0 is not None else b.copy()
    z = precond(r)
    p = z.copy()
    rz = _dot(r, z)
    hist = []
    it = 0
    rel = _norm(r) / bnorm
    converged = rel <= tol
    restarts = 0
    while not converged and it < max_iter:
        q = matvec(p)
        pq = _dot(p, q)
        if pq <= 0.0:
            raise DataError("the MME are not positive definite (p'Cp ≤ 0 in PCG)")
        alpha = rz / pq
        x += alpha * p
        r -= alpha * q
        it += 1
        rel = _norm(r) / bnorm
        hist.append(rel)
        if rel <= tol:
            # confirm on the true residual; restart from x if they disagree
            r = b - matvec(x)
            rel = _norm(r) / bnorm
            if rel <= tol or restarts >= 5:
                converged = rel <= tol
                break
            restarts += 1
            z = precond(r)
            p = z.copy()
            rz = _dot(r, z)
            continue
        z = precond(r)
        rz_new = _dot(r, z)
        beta = rz_new / rz
        rz = rz_new
        p *= beta
        p += z
    if not converged and it >= max_iter:
        rel = _norm(b - matvec(x)) / bnorm
        converged = rel <= tol
    return x, it, rel, converged, np.asarray(hist)


def _tables(design: Design, x: np.ndarray) -> tuple:
    p = design.p
    fixed = pd.DataFrame({"estimate": x[:p]}, index=pd.Index(design.fixed_names, name="term"))
    blups, off = [], p
    for b in design.blocks:
        blups.append(x[off:off + b.q].reshape(b.d, b.n_levels))
        off += b.q
    rand = random_effects_frame(design.blocks, {"blup": blups})
    sol = pd.concat([
        pd.DataFrame({"group": "(fixed)", "term": list(design.fixed_names), "level": "",
                      "estimate": x[:p]}),
        rand.rename(columns={"blup": "estimate"})], ignore_index=True)
    return fixed, rand, sol


def solve_pcg(fit_or_design, variances: dict | None = None, tol: float = 1e-8,
              max_iter: int = 5000, preconditioner: str = "jacobi",
              operator: str = "assembled", x0: np.ndarray | None = None,
              max_dense_fixed: int = MAX_DENSE_FIXED, threads: int | None = None,
              warn: bool = True) -> PCGResult:
    """Solve the MME of a built design (or a fitted model) at known variances by PCG.

    Parameters
    ----------
    fit_or_design : mme.Fit or mme.model.design.Design
        With a Fit, its design is reused and ``variances`` default to its
        estimates.
    variances : dict
        ``{"herd": 0.2, "id": 0.4, "Residual": 0.6}`` (d × d matrices for terms
        with slopes), as ``mme.fit(variances=...)``.
    tol : float
        Stop when ‖rhs − C x‖ / ‖rhs‖ ≤ tol.
    max_iter : int
    preconditioner : "jacobi" or "block"
    operator : "assembled" (sparse C built once) or "data" (iteration on data)
    x0 : array, optional
        Starting solution (e.g. from a previous round).
    max_dense_fixed : int
        Largest fixed-effects block the "block" preconditioner inverts densely.
    threads : int, optional
        Threads for the sparse mat-vecs (default: all CPUs available).
    warn : bool
        Warn (ConvergenceWarning) when max_iter is reached.

    Returns
    -------
    PCGResult
    """
    t0 = time.perf_counter()
    if isinstance(fit_or_design, Design):
        design = fit_or_design
        if variances is None:
            raise DataError("variances are required when solving a design")
    elif isinstance(fit_or_design, Fit):
        fit = fit_or_design
        design = fit.internals.design
        if variances is None:
            G0s, R0 = fit.internals.mme.split(fit.internals.theta)
            variances = {b.group: G for b, G in zip(design.blocks, G0s)}
            variances["Residual"] = R0
    else:
        raise OptionError("solve_pcg needs an mme.Fit or an mme.model.design.Design; "
                        "use blup_pcg(formula, data, variances, relmat) from a formula")
    if not design.residual.is_scalar or design.residual.weights is not None:
        raise DataError("PCG solves R = σ²ₑI only; this model has a structured residual or "
                        "weights: use mme.fit(..., variances=...) (direct solve)")
    G0s, R0 = parse_variances(design.blocks, variances, design.residual)
    s2e = float(R0[0, 0])
    op = MMEOperator(design, G0s, s2e, operator=operator,
                     threads=available_cores() if threads is None else threads)
    try:
        M = op.preconditioner(preconditioner, max_dense_fixed=max_dense_fixed)
        t1 = time.perf_counter()
        x, it, rel, converged, hist = pcg(op.matvec, op.rhs, M, tol=tol, max_iter=max_iter,
                                          x0=x0)
        t2 = time.perf_counter()
    finally:
        op.close()
    if not converged and warn:
        warnings.warn(f"PCG did not reach a relative residual of {tol:g} in {it} iterations "
                      f"(reached {rel:.3g})", ConvergenceWarning, stacklevel=2)
    fixed, rand, sol = _tables(design, x)
    return PCGResult(fixed_effects=fixed, random_effects=rand, solutions=sol, solution=x,
                     n_iter=it, rel_residual=rel, converged=converged, residual_history=hist,
                     seconds={"setup": t1 - t0, "solve": t2 - t1},
                     preconditioner=preconditioner, operator=operator,
                     variances={k: (np.asarray(v).tolist() if np.ndim(v) else float(v))
                                for k, v in variances.items()})


def blup_pcg(formula: str, data: pd.DataFrame, variances: dict, relmat: dict | None = None,
             **kw) -> PCGResult:
    """BLUE and BLUP with known variances by PCG, from a formula.

    ``blup_pcg("y ~ sex + (1|herd) + (1|id)", phen, {"herd": 0.2, "id": 0.4,
    "Residual": 0.6}, relmat={"id": ped})`` solves the same equations as
    ``mme.fit(..., variances=...)`` without factorizing C (no PEV / reliability:
    those need C⁻¹). Keywords go to :func:`solve_pcg` (``tol``, ``max_iter``,
    ``preconditioner``, ``operator``, ``x0``).

    Returns
    -------
    PCGResult
        ``.fixed_effects``, ``.random_effects``, ``.solutions``, ``.n_iter``,
        ``.rel_residual``; ``.seconds["design"]`` is the time to build the design.
    """
    t0 = time.perf_counter()
    design = build_design(formula, data, relmat)
    t1 = time.perf_counter()
    res = solve_pcg(design, variances, **kw)
    res.seconds = {"design": t1 - t0, **res.seconds}
    return res
