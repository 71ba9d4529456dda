"""The marginal covariance of the observations, V = Var(y) = Σₖ Zₖ (G₀ₖ ⊗ Kₖ) Zₖ' + σ²ₑ I,
for chosen fitted rows, as a sparse matrix.

The estimation never forms V (it works with the MME); this is for looking at the
model's covariance structure (``mme.plot.marginal_covariance``) and for checks on
small subsets. For a random term with a known relationship K, only K⁻¹ is stored:
the K entries needed — among the levels that the chosen rows use — come from sparse
Cholesky solves with K⁻¹, |S| right-hand sides for |S| levels, never from a dense K
of all levels.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._errors import DataError

#: largest number of rows returned without ``force=True`` (V may hold up to m² entries)
MAX_ROWS = 20_000
#: bytes of dense right-hand sides per block of solves with K⁻¹
_SOLVE_BYTES = 64 * 2**20


def marginal_covariance(fit, rows=None, force: bool = False) -> sp.csc_matrix:
    """V = Σₖ Zₖ (G₀ₖ ⊗ Kₖ) Zₖ' + σ²ₑ I restricted to the chosen fitted rows.

    Parameters
    ----------
    fit : mme.Fit
    rows : None, int array-like, boolean mask (length nobs) or slice
        Positions among the rows used in the fit (0 … nobs − 1, in the order of
        ``fit.fitted()``); None selects all. Repeated positions are allowed (the
        copies then share their residual, V[i, j] = V[i, i]).
    force : bool
        Allow more than ``MAX_ROWS`` (20,000) rows.

    Returns
    -------
    scipy.sparse.csc_matrix (m × m), symmetric, at the fitted variance parameters.
    Entries that are exactly zero are not stored.

    Raises
    ------
    DataError
        Positions out of range, or more than ``MAX_ROWS`` rows without ``force``.

    Notes
    -----
    For an identity K the result is built from sparse products only. For a
    relationship K with S the set of levels used by the chosen rows, K[:, S] is
    obtained by solving K⁻¹ X = E_S in blocks of columns (one CHOLMOD factorization
    of K⁻¹), keeping only the rows S of X; memory is O(|S|² + 64 MB of solves).
    """
    design = fit.internals.design
    n = design.n
    idx = row_positions(rows, n)
    m = idx.shape[0]
    if m > MAX_ROWS and not force:
        raise DataError(f"marginal_covariance of {m} rows would hold up to {m}² entries; "
                        f"choose rows (at most {MAX_ROWS}) or pass force=True")
    G0s, R0 = fit.internals.mme.split(fit.internals.theta_reported)
    V = design.residual.covariance_rows(R0, idx)
    for block, G0 in zip(design.blocks, G0s):
        V = V + _block_covariance(block.Z[idx, :].tocsc(), block, G0)
    V = sp.csc_matrix(V)
    V.eliminate_zeros()
    V.sort_indices()
    return V


def row_positions(rows, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(rows, slice):
        return np.arange(n, dtype=np.int64)[rows]
    arr = np.asarray(rows)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise DataError(f"a boolean rows mask must have length nobs = {n}, got {arr.shape}")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"rows must be integer positions of fitted rows, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < -n) | (arr >= n)]
    if bad.size:
        raise DataError(f"rows {bad[:5].tolist()} are out of range for {n} fitted rows")
    return np.where(arr < 0, arr + n, arr)


def _block_covariance(Zr: sp.csc_matrix, block, G0: np.ndarray) -> sp.csc_matrix:
    """Zᵣ (G₀ ⊗ K) Zᵣ' for the chosen rows Zᵣ (m × d·L) of one random block.

    Only the levels S used by the chosen rows enter: Zᵣ (G₀ ⊗ K) Zᵣ' =
    Z_S (G₀ ⊗ K[S, S]) Z_S' with Z_S the columns (a, S) of Zᵣ.
    """
    d, L = block.d, block.n_levels
    used = np.diff(Zr.indptr).reshape(d, L).any(axis=0)
    S = np.flatnonzero(used)
    if S.size == 0:
        return sp.csc_matrix((Zr.shape[0], Zr.shape[0]))
    cols = (np.arange(d)[:, None] * L + S[None, :]).ravel()   # term-major, like Z
    ZS = Zr[:, cols].tocsr()
    if block.k_is_identity:
        G = sp.kron(sp.csr_matrix(G0), sp.identity(S.size, format="csr"), format="csr")
        return (ZS @ G @ ZS.T).tocsc()
    KSS = relationship_submatrix(block.Kinv, S)              # |S| × |S| dense
    G = np.kron(G0, KSS)                                     # d|S| × d|S| dense
    ZG = np.asarray(ZS @ G)                                  # m × d|S|
    return sp.csc_matrix(np.asarray(ZS @ ZG.T).T)


def relationship_submatrix(Kinv: sp.spmatrix, S: np.ndarray) -> np.ndarray:
    """K[S, S] (|S| × |S|, dense) from the sparse K⁻¹ by Cholesky solves.

    One factorization of K⁻¹ (CHOLMOD), then solves K⁻¹ X = E_S with blocks of unit
    vectors, as many at a time as fit in about 64 MB of right-hand sides; of each
    block of solutions only the rows S are kept.
    """
    from ..engine.cholesky import Cholesky

    Kinv = sp.csc_matrix(Kinv, dtype=float)
    L = Kinv.shape[0]
    K_lower = sp.tril(Kinv).tocsc()
    factor = Cholesky(K_lower)
    factor.factorize(K_lower)
    S = np.asarray(S, dtype=np.int64)
    out = np.empty((S.size, S.size))
    width = max(1, min(S.size, _SOLVE_BYTES // (8 * max(L, 1))))
    for start in range(0, S.size, width):
        part = S[start:start + width]
        B = np.zeros((L, part.size))
        B[part, np.arange(part.size)] = 1.0
        out[:, start:start + part.size] = factor.solve(B)[S]
    return 0.5 * (out + out.T)
