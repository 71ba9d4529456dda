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
import pandas as pd
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
class Field:
    """One field's grid: ``rows`` (its rows, observed then missing plots, in the MME's
    row order) and the grid index c·n_r + r of each."""

    level: str
    n_c: int
    n_r: int
    rows: np.ndarray = field(repr=False)
    grid: np.ndarray = field(repr=False)

    @property
    def N(self) -> int:
        return self.n_c * self.n_r


@dataclass(frozen=True)
class SpatialResidual:
    """σ² AR1(ρ_c) ⊗ AR1(ρ_r) per field (one field, or one per level of ``by``); rows =
    the observed plots in data order, then each field's missing plots.

    Build it with :func:`spatial_residual`.
    """

    factors: tuple                # (column coordinate, row coordinate) column names
    by: str | None                # the field factor of by(site, ...), else None
    n_obs: int                    # records
    fields: tuple = field(repr=False)   # of Field
    kind: str = "ar1ar1"
    weights: None = None
    sqrt_weights: None = None
    logdet_weights: float = 0.0
    factor: str | None = None

    # -- shape ---------------------------------------------------------------
    @property
    def N(self) -> int:
        return sum(f.N for f in self.fields)

    @property
    def n(self) -> int:
        return self.N

    @property
    def n_missing(self) -> int:
        """Plots of the rectangles without a record (carried as unknowns)."""
        return self.N - self.n_obs

    @property
    def n_params(self) -> int:
        return 3 * len(self.fields)

    @property
    def pairs(self) -> tuple:
        return tuple((i, i) for i in range(self.n_params))

    @property
    def is_scalar(self) -> bool:
        return False

    @property
    def t(self) -> int:
        return 1

    @property
    def levels(self) -> tuple:
        return tuple(f.level for f in self.fields)

    def names(self) -> list:
        c, r = self.factors
        out = []
        for f in self.fields:
            if self.by is None:
                out += [("", ""), (f"ar1({c})", ""), (f"ar1({r})", "")]
            else:
                out += [(f.level, ""), (f.level, f"ar1({c})"), (f.level, f"ar1({r})")]
        return out

    # -- parameters ----------------------------------------------------------
    def R0(self, phi) -> np.ndarray:
        return np.asarray(phi, dtype=float).ravel().copy()

    def theta_of(self, R0) -> np.ndarray:
        out = np.asarray(R0, dtype=float).ravel()
        if out.shape != (self.n_params,):
            raise DataError("variances['Residual'] of an ar1(col):ar1(row) residual is "
                            "(σ², ρ_col, ρ_row) per field, "
                            f"{self.n_params} numbers; got {out.tolist()}")
        return out.copy()

    def _split(self, phi):
        return np.asarray(phi, dtype=float).reshape(len(self.fields), 3)

    def feasible(self, R0) -> bool:
        P = self._split(R0)
        return bool(np.all(P[:, 0] > 0) and np.all(np.abs(P[:, 1:]) < RHO_MAX))

    def variance_mask(self) -> np.ndarray:
        return np.tile([True, False, False], len(self.fields))

    def log_scale_mask(self) -> np.ndarray:
        return self.variance_mask()

    # -- the 9 cells per field ------------------------------------------------
    def cell_matrices(self) -> list:
        """Bᵢ^c ⊗ Bⱼ^r of each field in the MME's row order (N × N sparse)."""
        out = []
        for f in self.fields:
            Bc, Br = _basis(f.n_c), _basis(f.n_r)
            for A in Bc:
                for B in Br:
                    K = sp.kron(A, B, format="coo")
                    inv = np.empty(f.N, dtype=np.int64)
                    inv[f.grid] = f.rows
                    out.append(sp.csr_matrix((K.data, (inv[K.row], inv[K.col])),
                                             shape=(self.N, self.N)))
        return out

    def pattern_inverses(self, R0) -> np.ndarray:
        """The state the other methods take: φ itself."""
        return np.asarray(R0, dtype=float)

    def rinv_cells(self, phi) -> np.ndarray:
        return np.concatenate([np.outer(_f(rc), _f(rr)).ravel() / s2
                               for s2, rc, rr in self._split(phi)])

    def _dcells(self, phi, i: int) -> np.ndarray:
        """∂r/∂φᵢ (the coefficients of ∂H/∂φᵢ)."""
        k, j = divmod(i, 3)
        s2, rc, rr = self._split(phi)[k]
        out = np.zeros(9 * len(self.fields))
        if j == 0:
            d = -np.outer(_f(rc), _f(rr)).ravel() / s2 ** 2
        elif j == 1:
            d = np.outer(_df(rc), _f(rr)).ravel() / s2
        else:
            d = np.outer(_f(rc), _df(rr)).ravel() / s2
        out[9 * k:9 * k + 9] = d
        return out

    def logdet(self, phi) -> float:
        if not self.feasible(phi):
            return np.inf
        return float(sum(f.N * np.log(s2) + f.n_r * (f.n_c - 1) * np.log1p(-rc * rc)
                         + f.n_c * (f.n_r - 1) * np.log1p(-rr * rr)
                         for f, (s2, rc, rr) in zip(self.fields, self._split(phi))))

    def trace_rinv_dr(self, phi, i: int) -> float:
        """tr(R⁻¹ ∂R/∂φᵢ) = ∂ log|R| / ∂φᵢ."""
        k, j = divmod(i, 3)
        f = self.fields[k]
        s2, rc, rr = self._split(phi)[k]
        if j == 0:
            return f.N / s2
        if j == 1:
            return -2.0 * rc * f.n_r * (f.n_c - 1) / (1.0 - rc * rc)
        return -2.0 * rr * f.n_c * (f.n_r - 1) / (1.0 - rr * rr)

    # R⁻¹(∂R/∂φ)R⁻¹ = −∂H/∂φ: the "M" of the generic formulas is −ṙ over the cells
    def derivative_mats(self, phi, i: int) -> np.ndarray:
        return -self._dcells(phi, i)

    def cell_weights(self, Ms) -> np.ndarray:
        return np.asarray(Ms)

    def _mats(self) -> list:
        cache = self.__dict__.get("_cell_cache")
        if cache is None:
            cache = self.cell_matrices()
            object.__setattr__(self, "_cell_cache", cache)
        return cache

    def _H(self, coef) -> sp.csr_matrix:
        H = None
        for c, M in zip(coef, self._mats()):
            if c != 0.0:
                H = M * c if H is None else H + M * c
        return sp.csr_matrix((self.N, self.N)) if H is None else sp.csr_matrix(H)

    def apply_rinv(self, phi, V: np.ndarray) -> np.ndarray:
        """R⁻¹V with H = R⁻¹ assembled once per φ (an evaluation applies it several times)."""
        key = np.asarray(phi, dtype=float).tobytes()
        cached = self.__dict__.get("_rinv_cache")
        if cached is None or cached[0] != key:
            cached = (key, self._H(self.rinv_cells(phi)))
            object.__setattr__(self, "_rinv_cache", cached)
        return cached[1] @ V

    def unit_quadratic(self, e: np.ndarray, Ms) -> float:
        return float(e @ (self._H(Ms) @ e))

    def sandwich(self, A: np.ndarray, Ms) -> np.ndarray:
        return A.T @ (self._H(Ms) @ A)

    def apply_R(self, phi, v: np.ndarray) -> np.ndarray:
        """R v = ⊕ σ² (Σ_c ⊗ Σ_r) v field by field (Kronecker, no N × N matrix)."""
        single = v.ndim == 1
        V = v[:, None] if single else v
        out = np.zeros_like(V, dtype=float)
        for f, (s2, rc, rr) in zip(self.fields, self._split(phi)):
            Sc, Sr = _ar1(rc, f.n_c), _ar1(rr, f.n_r)
            for k in range(V.shape[1]):
                grid = np.zeros(f.N)
                grid[f.grid] = V[f.rows, k]
                G = grid.reshape(f.n_c, f.n_r)
                out[f.rows, k] = (s2 * (Sc @ G @ Sr)).ravel()[f.grid]
        return out[:, 0] if single else out

    def apply_dr(self, i: int, v: np.ndarray, phi=None) -> np.ndarray:
        """(∂R/∂φᵢ) v = −R (∂H/∂φᵢ) R v."""
        Rv = self.apply_R(phi, v)
        return -self.apply_R(phi, self._H(self._dcells(phi, i)) @ Rv)

    def covariance_rows(self, phi, idx: np.ndarray):
        """R[idx, idx] over observed rows (block-diagonal over fields), sparse."""
        idx = np.asarray(idx, dtype=np.int64)
        field_of, gpos = np.full(self.N, -1), np.zeros(self.N, dtype=np.int64)
        for k, f in enumerate(self.fields):
            field_of[f.rows] = k
            gpos[f.rows] = f.grid
        P = self._split(phi)
        fk = field_of[idx]
        R = np.zeros((idx.size, idx.size))
        for k, f in enumerate(self.fields):
            sel = np.flatnonzero(fk == k)
            if not sel.size:
                continue
            s2, rc, rr = P[k]
            ci, ri = np.divmod(gpos[idx[sel]], f.n_r)
            R[np.ix_(sel, sel)] = (s2 * rc ** np.abs(ci[:, None] - ci[None, :])
                                   * rr ** np.abs(ri[:, None] - ri[None, :]))
        return sp.csc_matrix(R)

    def field_rows(self) -> list:
        """Observed rows of each field (for starting values)."""
        return [f.rows[f.rows < self.n_obs] for f in self.fields]


def spatial_residual(data, col: str, row: str, by: str | None = None) -> SpatialResidual:
    """The grid of each field (one, or one per level of ``by``) from the integer plot
    coordinates of its records."""
    coords = []
    for name in (col, row):
        x = np.asarray(data[name], dtype=float)
        if np.any(np.isnan(x)):
            bad = data.index[np.isnan(x)][:5].tolist()
            raise DataError(f"spatial coordinate column {name!r} is missing for rows {bad}: "
                            "every record needs its plot position")
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            raise DataError(f"spatial coordinate column {name!r} must hold integers "
                            "(plot positions)")
        coords.append(x.astype(np.int64))
    if by is None:
        codes, levels = np.zeros(len(data), dtype=np.int64), [""]
    else:
        codes, levels = pd.factorize(data[by], sort=True)
        levels = [str(v) for v in levels]
    fields, n_obs, next_row = [], len(data), len(data)
    for k, level in enumerate(levels):
        obs = np.flatnonzero(codes == k)
        c, r = coords[0][obs], coords[1][obs]
        c0, r0 = c - c.min(), r - r.min()
        n_c, n_r = int(c0.max()) + 1, int(r0.max()) + 1
        where = f" in {by}={level}" if by is not None else ""
        if n_c < 2 or n_r < 2:
            raise FormulaError(f"ar1({col}):ar1({row}) needs at least 2 positions in each "
                               f"direction; the field{where} is {n_c} × {n_r}")
        g = c0 * n_r + r0
        uniq, counts = np.unique(g, return_counts=True)
        if np.any(counts > 1):
            bad = uniq[counts > 1][0]
            raise DataError(f"two records share the plot ({col}={int(bad // n_r + c.min())}, "
                            f"{row}={int(bad % n_r + r.min())}){where}: one record per plot")
        missing = np.setdiff1d(np.arange(n_c * n_r), g)
        rows = np.concatenate([obs, next_row + np.arange(missing.size)]).astype(np.int64)
        next_row += missing.size
        fields.append(Field(level, n_c, n_r, rows, np.concatenate([g, missing]).astype(np.int64)))
    return SpatialResidual(factors=(col, row), by=by, n_obs=n_obs, fields=tuple(fields))
