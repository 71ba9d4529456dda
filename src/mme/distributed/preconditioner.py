"""The block-diagonal preconditioner of the distributed PCG, M ≈ C.

* the fixed-effects block X'R⁻¹X as one dense p × p block (Cholesky), for
  p ≤ ``max_dense_fixed`` (its diagonal above): fixed effects are few and strongly
  coupled;
* for a random term with d > 1 effects per level (random slopes, or the traits of
  ``(0 + trait | id)`` in a multi-trait model), the d × d block of each level:
  Σ_r diag(Z_r,a' R_r⁻¹ Z_r,c) + (G₀⁻¹)_ac diag(K⁻¹) — with R₀'s covariances
  between the traits of a record (Strandén & Lidauer 1999; Tsuruta, Misztal &
  Strandén 2001);
* the diagonal of C elsewhere (Jacobi).

Its parts are sums over ranks like C's (one Allreduce each, once per solve); the
result is replicated, so M⁻¹R costs no communication.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from .._errors import DataError, OptionError
from .operator import DistributedOperator

__all__ = ["BlockPreconditioner", "MAX_DENSE_FIXED"]

#: the fixed-effects block is inverted densely up to this many columns
MAX_DENSE_FIXED = 2000


class BlockPreconditioner:
    """R ↦ M⁻¹ R for R of shape dim or dim × k (``kind`` "block" or "jacobi")."""

    def __init__(self, op: DistributedOperator, kind: str = "block",
                 max_dense_fixed: int = MAX_DENSE_FIXED):
        if kind not in ("block", "jacobi"):
            raise OptionError(f"preconditioner must be 'block' or 'jacobi', got {kind!r}")
        comm, design = op.comm, op.design
        if np.any(op.diag <= 0):
            bad = np.flatnonzero(op.diag <= 0)[:5]
            raise DataError(f"the MME have zero or negative diagonal entries at "
                            f"{bad.tolist()}: an empty level or column")
        self.kind = kind
        self.dinv = 1.0 / op.diag
        self.p = p = op.p
        self.fixed = None
        self.blocks = []
        if kind == "jacobi":
            return
        if 0 < p <= max_dense_fixed:
            X = design.W[:, :p]
            XRX = (X.T @ X) / op.s2e if op.Rinv is None else X.T @ (op.Rinv @ X)
            Cxx = comm.allreduce(XRX.toarray(),  # dense-ok: p × p
                                 "preconditioner: X'X")
            try:
                self.fixed = sla.cho_factor(Cxx, lower=True)
            except np.linalg.LinAlgError:
                self.fixed = None
        off = p
        for k, (b, G0inv) in enumerate(zip(design.blocks, op.G0inv)):
            d, L = b.d, b.n_levels
            if d > 1:
                Z = sp.csc_matrix(design.Z(k))
                M = np.zeros((L, d, d))
                for a in range(d):
                    Za = Z[:, a * L:(a + 1) * L]
                    for c in range(a + 1):
                        Zc = op.rinv(Z[:, c * L:(c + 1) * L])
                        zz = np.asarray(Za.multiply(Zc).sum(axis=0)).ravel()
                        M[:, a, c] = M[:, c, a] = zz
                if op.owner:
                    kd = op.kinv_diagonal(k)
                    M += G0inv[None, :, :] * kd[:, None, None]
                M = comm.allreduce(M, f"preconditioner: blocks of {b.group!r}")
                self.blocks.append((slice(off, off + d * L), L, d, np.linalg.inv(M)))
            off += b.q

    def __call__(self, R: np.ndarray) -> np.ndarray:
        two = R.ndim == 2
        Rm = R if two else R[:, None]
        Z = self.dinv[:, None] * Rm
        if self.fixed is not None:
            Z[:self.p] = sla.cho_solve(self.fixed, Rm[:self.p])
        for sl, L, d, Minv in self.blocks:
            Rb = Rm[sl].reshape(d, L, -1)
            Z[sl] = np.einsum("lab,blk->alk", Minv, Rb).reshape(d * L, -1)
        return Z if two else Z[:, 0]
