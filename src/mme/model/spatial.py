"""Separable spatial residuals: R = σ² AR1(ρ_col) ⊗ AR1(ρ_row) over a field's grid
(Gilmour, Cullis & Verbyla 1997), ``residual="ar1(col):ar1(row)"``.

The grid is the full rectangle of the integer plot coordinates in the two columns
(n_c columns × n_r rows, N = n_c n_r plots). AR1's precision is tridiagonal:

    Q(ρ) = AR1(ρ)⁻¹ = f₀(ρ) E_end + f₁(ρ) E_int + f₂(ρ) T,
    f₀ = 1/(1 − ρ²),  f₁ = (1 + ρ²)/(1 − ρ²),  f₂ = −ρ/(1 − ρ²)

(E_end: the two end points of the diagonal, E_int: the interior diagonal, T: the
first off-diagonals), so the full grid's precision H = R⁻¹ = σ⁻² Q(ρ_c) ⊗ Q(ρ_r) is a
sum of 9 fixed sparse matrices Bᵢⱼ = Bᵢ^c ⊗ Bⱼ^r with coefficients fᵢ(ρ_c)fⱼ(ρ_r)/σ²:
the same "cells" that ``engine.system`` turns into C.data = B·r(θ) on a fixed pattern.
Never an n × n dense matrix.

Plots of the rectangle without a record are carried as extra unknowns: a row with
y = 0 and its own indicator column, flat prior (``MME`` appends them after Z). The
restricted likelihood of the augmented data is the REML likelihood of the observed
plots (every error contrast is orthogonal to the indicators, so none involves a
missing plot, and |X'X| is unchanged), so REML is exact; ML is not (it would condition
on the missing plots) and is refused when plots are missing.

    log|R| = N log σ² + n_r (n_c − 1) log(1 − ρ_c²) + n_c (n_r − 1) log(1 − ρ_r²)

Parameters φ = (σ², ρ_c, ρ_r); ``variance_components`` rows: group ``Residual`` with
term1 "" (σ²), ``ar1(col)`` and ``ar1(row)`` (the correlations).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .._errors import DataError, FormulaError

#: |ρ| must stay below this (AR1's precision is singular at ±1)
RHO_MAX = 0.999
#: starting correlation along each direction
RHO_START = 0.1


def _basis(n: int) -> list:
    """[E_end, E_int, T] of one direction (n ≥ 2)."""
    d_end = np.zeros(n)
    d_end[[0, n - 1]] = 1.0
    d_int = 1.0 - d_end
    T = sp.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], shape=(n, n), format="csr")
    return [sp.diags(d_end, format="csr"), sp.diags(d_int, format="csr"), T]


def _f(rho: float) -> np.ndarray:
    s = 1.0 - rho * rho
    return np.array([1.0 / s, (1.0 + rho * rho) / s, -rho / s])


def _df(rho: float) -> np.ndarray:
    s = (1.0 - rho * rho) ** 2
    return np.array([2.0 * rho / s, 4.0 * rho / s, -(1.0 + rho * rho) / s])


def _ar1(rho: float, n: int) -> np.ndarray:
    i = np.arange(n)
    return rho ** np.abs(i[:, None] - i[None, :])


@dataclass(frozen=True)
class SpatialResidual:
    """σ² AR1(ρ_c) ⊗ AR1(ρ_r) over one field; rows = observed plots, then missing ones.

    Build it with :func:`spatial_residual`.
    """

    factors: tuple                # (column coordinate, row coordinate) column names
    n_obs: int                    # records
    n_c: int
    n_r: int
    grid_of_row: np.ndarray = field(repr=False)   # (N,) grid index c·n_r + r of each row
    kind: str = "ar1ar1"
    weights: None = None
    sqrt_weights: None = None
    logdet_weights: float = 0.0
    pairs: tuple = ((0, 0), (1, 1), (2, 2))
    factor: str | None = None

    # -- shape ---------------------------------------------------------------
    @property
    def N(self) -> int:
        return self.n_c * self.n_r

    @property
    def n(self) -> int:
        return self.N

    @property
    def n_missing(self) -> int:
        """Plots of the rectangle without a record (carried as unknowns)."""
        return self.N - self.n_obs

    @property
    def n_params(self) -> int:
        return 3

    @property
    def is_scalar(self) -> bool:
        return False

    @property
    def t(self) -> int:
        return 1

    @property
    def levels(self) -> tuple:
        return ("",)

    def names(self) -> list:
        c, r = self.factors
        return [("", ""), (f"ar1({c})", ""), (f"ar1({r})", "")]

    # -- parameters ----------------------------------------------------------
    def R0(self, phi) -> np.ndarray:
        return np.asarray(phi, dtype=float).ravel().copy()

    def theta_of(self, R0) -> np.ndarray:
        out = np.asarray(R0, dtype=float).ravel()
        if out.shape != (3,):
            raise DataError("variances['Residual'] of an ar1(col):ar1(row) residual is "
                            f"(σ², ρ_col, ρ_row), got {out.tolist()}")
        return out.copy()

    def feasible(self, R0) -> bool:
        s2, rc, rr = R0
        return s2 > 0 and abs(rc) < RHO_MAX and abs(rr) < RHO_MAX

    def variance_mask(self) -> np.ndarray:
        return np.array([True, False, False])

    def log_scale_mask(self) -> np.ndarray:
        return np.array([True, False, False])

    # -- the 9 cells ----------------------------------------------------------
    def cell_matrices(self) -> list:
        """Bᵢ^c ⊗ Bⱼ^r in row order (N × N sparse), i, j = end, interior, off-diagonal."""
        g = self.grid_of_row
        Bc, Br = _basis(self.n_c), _basis(self.n_r)
        out = []
        for A in Bc:
            for B in Br:
                K = sp.kron(A, B, format="csr")
                out.append(sp.csr_matrix(K[g][:, g]))
        return out

    def pattern_inverses(self, R0) -> np.ndarray:
        """The state the other methods take: φ itself."""
        return np.asarray(R0, dtype=float)

    def rinv_cells(self, phi) -> np.ndarray:
        s2, rc, rr = phi
        return np.outer(_f(rc), _f(rr)).ravel() / s2

    def _dcells(self, phi, i: int) -> np.ndarray:
        """∂r/∂φᵢ (the coefficients of ∂H/∂φᵢ)."""
        s2, rc, rr = phi
        if i == 0:
            return -np.outer(_f(rc), _f(rr)).ravel() / s2 ** 2
        if i == 1:
            return np.outer(_df(rc), _f(rr)).ravel() / s2
        return np.outer(_f(rc), _df(rr)).ravel() / s2

    def logdet(self, phi) -> float:
        s2, rc, rr = phi
        if not self.feasible(phi):
            return np.inf
        return (self.N * np.log(s2) + self.n_r * (self.n_c - 1) * np.log1p(-rc * rc)
                + self.n_c * (self.n_r - 1) * np.log1p(-rr * rr))

    def trace_rinv_dr(self, phi, i: int) -> float:
        """tr(R⁻¹ ∂R/∂φᵢ) = ∂ log|R| / ∂φᵢ."""
        s2, rc, rr = phi
        if i == 0:
            return self.N / s2
        if i == 1:
            return -2.0 * rc * self.n_r * (self.n_c - 1) / (1.0 - rc * rc)
        return -2.0 * rr * self.n_c * (self.n_r - 1) / (1.0 - rr * rr)

    # R⁻¹(∂R/∂φ)R⁻¹ = −∂H/∂φ: the "M" of the generic formulas is −ṙ over the cells
    def derivative_mats(self, phi, i: int) -> np.ndarray:
        return -self._dcells(phi, i)

    def cell_weights(self, Ms) -> np.ndarray:
        return np.asarray(Ms)

    def _H(self, coef) -> sp.csr_matrix:
        mats = self._mats()
        H = mats[0] * coef[0]
        for c, M in zip(coef[1:], mats[1:]):
            H = H + M * c
        return sp.csr_matrix(H)

    def _mats(self) -> list:
        cache = self.__dict__.get("_cell_cache")
        if cache is None:
            cache = self.cell_matrices()
            object.__setattr__(self, "_cell_cache", cache)
        return cache

    def apply_rinv(self, phi, V: np.ndarray) -> np.ndarray:
        return self._H(self.rinv_cells(phi)) @ V

    def unit_quadratic(self, e: np.ndarray, Ms) -> float:
        return float(e @ (self._H(Ms) @ e))

    def sandwich(self, A: np.ndarray, Ms) -> np.ndarray:
        return A.T @ (self._H(Ms) @ A)

    def apply_R(self, phi, v: np.ndarray) -> np.ndarray:
        """R v = σ² (Σ_c ⊗ Σ_r) v through the grid (Kronecker, no N × N matrix)."""
        s2, rc, rr = phi
        g = self.grid_of_row
        out = np.empty_like(v)
        single = v.ndim == 1
        V = v[:, None] if single else v
        res = np.empty_like(V)
        Sc, Sr = _ar1(rc, self.n_c), _ar1(rr, self.n_r)
        for k in range(V.shape[1]):
            grid = np.zeros(self.N)
            grid[g] = V[:, k]
            G = grid.reshape(self.n_c, self.n_r)
            res[:, k] = (s2 * (Sc @ G @ Sr)).ravel()[g]
        out = res[:, 0] if single else res
        return out

    def apply_dr(self, i: int, v: np.ndarray, phi=None) -> np.ndarray:
        """(∂R/∂φᵢ) v = −R (∂H/∂φᵢ) R v."""
        Rv = self.apply_R(phi, v)
        return -self.apply_R(phi, self._H(self._dcells(phi, i)) @ Rv)

    def covariance_rows(self, phi, idx: np.ndarray):
        """R[idx, idx] over observed rows (dense small block, returned sparse)."""
        s2, rc, rr = phi
        g = self.grid_of_row[np.asarray(idx, dtype=np.int64)]
        ci, ri = np.divmod(g, self.n_r)
        R = s2 * (rc ** np.abs(ci[:, None] - ci[None, :])) * (rr ** np.abs(ri[:, None] - ri[None, :]))
        return sp.csc_matrix(R)

    def observed_rows(self) -> np.ndarray:
        return np.arange(self.n_obs, dtype=np.int64)


def spatial_residual(data, col: str, row: str) -> SpatialResidual:
    """The grid of a field from the integer coordinates of its records."""
    coords = []
    for name in (col, row):
        v = data[name]
        x = np.asarray(v, dtype=float)
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            raise DataError(f"spatial coordinate column {name!r} must hold integers "
                            "(plot positions)")
        coords.append(x.astype(np.int64))
    c, r = coords
    c0, r0 = c - c.min(), r - r.min()
    n_c, n_r = int(c0.max()) + 1, int(r0.max()) + 1
    if n_c < 2 or n_r < 2:
        raise FormulaError(f"ar1({col}):ar1({row}) needs at least 2 positions in each "
                           f"direction; the field is {n_c} × {n_r}")
    g = c0 * n_r + r0
    uniq, counts = np.unique(g, return_counts=True)
    if np.any(counts > 1):
        bad = uniq[counts > 1][0]
        raise DataError(f"two records share the plot ({col}={int(bad // n_r + c.min())}, "
                        f"{row}={int(bad % n_r + r.min())}): one record per plot")
    missing = np.setdiff1d(np.arange(n_c * n_r), g)
    return SpatialResidual(factors=(col, row), n_obs=len(g), n_c=n_c, n_r=n_r,
                           grid_of_row=np.concatenate([g, missing]).astype(np.int64))
