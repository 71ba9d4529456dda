"""A rank's block of R⁻¹: the residual covariance of its own records.

The distributed solver takes the residual structures that are block-diagonal over
*units* a rank holds whole (a row of wide data is never split between ranks):

* ``scalar``  R = σ²ₑ W⁻¹ (``weights=``: Var(eᵢ) = σ²ₑ / wᵢ; without weights R = σ²ₑ I,
  applied as a scalar, no matrix is formed);
* ``diag``    a residual variance per level of a column (``residual="by(site)"``) or
  per trait (``"diag(trait)"``): R diagonal;
* ``us``      an unstructured R₀ across the traits of a row of wide data
  (``cbind(y1, y2) ~ …``, ``residual="us(trait)"``, the default with cbind): the
  unit's block is R₀[o, o] for its observed traits o (missing records).

With prior weights the unit's block is W_u^{-1/2} R₀[o, o] W_u^{-1/2}, so its inverse
is W_u^{1/2} R₀[o, o]⁻¹ W_u^{1/2} (the single-machine ``model.residual`` algebra).
Residuals correlated across records (``ar1(col):ar1(row)``) are not block-diagonal
over records and are refused by :mod:`mme.distributed.design`.

The local R⁻¹ is a sparse n_r × n_r matrix with at most t nonzeros per row (t traits);
the operator multiplies by it between W and W'.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..model.residual import _unit_patterns

__all__ = ["LocalResidual"]


@dataclass(frozen=True)
class LocalResidual:
    """This rank's rows' residual structure (R₀ is given when the MME are built).

    ``codes`` is the level (trait, site) of each row, ``units`` the unit (wide row) of
    each row (``us`` only), ``weights`` the prior weights (or None).
    """

    kind: str                       # "scalar", "diag" or "us"
    factor: str | None
    levels: tuple                   # t level names (("",) for scalar)
    codes: np.ndarray | None = field(default=None, repr=False)
    units: np.ndarray | None = field(default=None, repr=False)
    weights: np.ndarray | None = field(default=None, repr=False)

    @property
    def t(self) -> int:
        return len(self.levels)

    @property
    def is_scalar(self) -> bool:
        """R = σ²ₑ I: applied as a scalar."""
        return self.kind == "scalar" and self.weights is None

    def describe(self) -> str:
        """``"us(trait) over 2 traits"``, ``"sigma2_e / w (weights)"`` …"""
        if self.kind == "scalar":
            return "sigma2_e I" if self.weights is None else "sigma2_e / w (weights)"
        w = " with weights" if self.weights is not None else ""
        kind = "by" if self.kind == "diag" and self.factor != "trait" else self.kind
        return f"{kind}({self.factor}) over {self.t} levels{w}"

    def rinv(self, R0: np.ndarray, n: int) -> sp.csr_matrix | None:
        """This rank's block of R⁻¹ (n × n, CSR), or None for R = σ²ₑ I."""
        R0 = np.atleast_2d(np.asarray(R0, dtype=float))
        if self.is_scalar:
            return None
        if self.kind == "scalar":
            d = self.weights / R0[0, 0]
            return sp.diags(d, format="csr")
        if self.kind == "diag":
            d = 1.0 / np.diag(R0)[self.codes] if n else np.zeros(0)
            if self.weights is not None:
                d = d * self.weights
            return sp.diags(d, format="csr")
        rows, cols, vals = [], [], []
        if n:
            for p in _unit_patterns(self.codes, self.units, self.t):
                Ri = np.linalg.inv(R0[np.ix_(p.levels, p.levels)])
                for j in range(len(p.levels)):
                    for k in range(len(p.levels)):
                        rows.append(p.rows[:, j])
                        cols.append(p.rows[:, k])
                        vals.append(np.full(p.n_units, Ri[j, k]))
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        v = np.concatenate(vals) if vals else np.zeros(0)
        if self.weights is not None and v.size:
            sw = np.sqrt(self.weights)
            v = v * sw[r] * sw[c]
        M = sp.csr_matrix((v, (r, c)), shape=(n, n))
        M.sort_indices()
        return M
