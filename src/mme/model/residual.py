"""Residual (R-side) covariance structures: R block-diagonal over units.

    R = ⊕ᵤ Rᵤ,   Rᵤ = W_u^{-1/2} R₀[oᵤ, oᵤ] W_u^{-1/2}

A *unit* is a row of wide data (the traits of one animal in a multi-trait model) or
a single record; oᵤ are the levels of the residual factor observed in unit u (the
traits recorded on that animal, the site of that record) and W_u the prior weights
of its rows. R₀ (t × t) is

- ``scalar``   σ²ₑ (t = 1): R = σ²ₑ W⁻¹, lme4's default and ``weights=``
- ``diag``     diag(σ²₁ … σ²ₜ): ``residual="by(site)"`` (ASReml's ``dsum``, nlme's
               ``varIdent``) or ``"diag(trait)"``; every record is its own unit
- ``us``       unstructured t × t: ``residual="us(trait)"`` across the traits of a
               row of wide data (the default with ``cbind(y1, y2) ~ …``)

Prior weights are folded into the data once: with W̃ = W^{1/2}[X Z] and ỹ = W^{1/2}y
the residual covariance is R̃ᵤ = R₀[oᵤ, oᵤ], and log|R| gains −Σ log wᵢ.

Units are grouped by their pattern o of observed levels; R₀[o, o]⁻¹ is computed once
per pattern and θ. W̃'R̃⁻¹W̃ = Σ over patterns p and level pairs (a ≥ b) in p of
r_p,ab(θ)·Bₚ,ab with Bₚ,ab = W̃ₚₐ'W̃ₚ_b (+ its transpose when a ≠ b), W̃ₚₐ the rows of
level a of the units of pattern p in unit order: each (p, a, b) is a *cell* whose
pattern is fixed, so C's pattern is built once and C.data = B·r(θ) + G⁻¹ slots.

Parameters φ are the lower-triangle elements of R₀, variances first then
covariances (``covariance``'s order). For φᵢ = R₀[a, b], ∂R/∂φᵢ = Eᵢ restricted to
each unit's levels, and with Mₚ,ᵢ = Rₚ⁻¹ Eᵢ[o, o] Rₚ⁻¹ REML needs (``engine.reml``)

    tr(R⁻¹ ∂R/∂φᵢ)               = Σₚ nₚ tr(Rₚ⁻¹ Eᵢ[o, o])
    tr(C⁻¹ W̃'R⁻¹(∂R/∂φᵢ)R⁻¹W̃)   = Σ_cells Mₚ,ᵢ[a, b] ⟨C⁻¹, Bₚ,ab⟩
    ẽ'R⁻¹(∂R/∂φᵢ)R⁻¹ẽ           = Σₚ Σᵤ ẽᵤ' Mₚ,ᵢ ẽᵤ
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .._errors import DataError, FormulaError

#: the kinds of R₀
KINDS = ("scalar", "diag", "us")
_SPEC = re.compile(r"^\s*(us|diag|by)\s*\(\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*\)\s*$")
_BY_AR1 = re.compile(r"^\s*by\s*\(\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*,\s*ar1\s*\(\s*"
                     r"([A-Za-z_.][A-Za-z0-9_.]*)\s*\)\s*:\s*ar1\s*\(\s*"
                     r"([A-Za-z_.][A-Za-z0-9_.]*)\s*\)\s*\)\s*$")
_AR1 = re.compile(r"^\s*ar1\s*\(\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*\)\s*:\s*"
                  r"ar1\s*\(\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*\)\s*$")


def parse_residual(spec: str | None, multi_response: bool) -> tuple:
    """(kind, factor) from ``residual=``: None, "us(trait)", "diag(trait)", "by(site)"."""
    if spec is None:
        return ("us", "trait") if multi_response else ("scalar", None)
    a = _AR1.match(str(spec))
    b = _BY_AR1.match(str(spec))
    if a or b:
        if multi_response:
            raise FormulaError(f"residual={spec!r} is for one response per plot")
        return ("ar1ar1", (a.group(1), a.group(2), None) if a
                else (b.group(2), b.group(3), b.group(1)))
    m = _SPEC.match(str(spec))
    if not m:
        raise FormulaError(f"residual={spec!r} is not understood; use 'us(trait)', "
                           "'diag(trait)' (multi-response cbind formulas), 'by(factor)' or "
                           "'ar1(col):ar1(row)'")
    kind, factor = m.group(1), m.group(2)
    if kind == "by":
        kind = "diag"
    if kind == "us" and not multi_response:
        raise FormulaError(f"residual={spec!r}: an unstructured residual covariance needs "
                           "several responses per row: cbind(y1, y2) ~ ...")
    if multi_response and factor != "trait":
        raise FormulaError(f"residual={spec!r}: with a cbind() response the residual "
                           "structure is across 'trait', e.g. residual='us(trait)'")
    return kind, factor


@dataclass(frozen=True)
class Pattern:
    """Units with the same observed levels: ``rows[u, j]`` is the row of level
    ``levels[j]`` in the u-th unit of the pattern."""

    levels: tuple
    rows: np.ndarray

    @property
    def n_units(self) -> int:
        return self.rows.shape[0]


@dataclass(frozen=True)
class ResidualStructure:
    """R₀ (t × t) over the levels of one factor, its units, and its parameter algebra.

    Build it with :func:`residual_structure`.
    """

    kind: str
    factor: str | None
    levels: tuple                 # t level names ("" for scalar)
    n: int                        # rows
    patterns: tuple               # of Pattern
    weights: np.ndarray | None = field(default=None, repr=False)
    pairs: tuple = ()             # (a, b), a ≥ b: the parameters, variances first
    cells: tuple = ()             # (pattern index, j, k) with j ≥ k, local positions

    # -- shape ---------------------------------------------------------------
    @property
    def t(self) -> int:
        return len(self.levels)

    @property
    def n_params(self) -> int:
        return len(self.pairs)

    @property
    def is_scalar(self) -> bool:
        return self.kind == "scalar"

    @property
    def sqrt_weights(self) -> np.ndarray | None:
        return None if self.weights is None else np.sqrt(self.weights)

    @property
    def logdet_weights(self) -> float:
        """Σ log wᵢ (log|R| = Σₚ nₚ log|R₀[o, o]| − Σ log wᵢ)."""
        return 0.0 if self.weights is None else float(np.sum(np.log(self.weights)))

    def names(self) -> list:
        """(term1, term2) of each parameter as ``variance_components`` shows them."""
        out = []
        for a, b in self.pairs:
            if self.is_scalar:
                out.append(("", ""))
            else:
                out.append((self.levels[a], "") if a == b else (self.levels[b], self.levels[a]))
        return out

    # -- parameters ------------------------------------------------------------
    def R0(self, phi: np.ndarray) -> np.ndarray:
        R = np.zeros((self.t, self.t))
        for v, (a, b) in zip(phi, self.pairs):
            R[a, b] = R[b, a] = v
        return R

    def theta_of(self, R0: np.ndarray) -> np.ndarray:
        R0 = np.atleast_2d(R0)
        return np.array([R0[a, b] for a, b in self.pairs])

    def E(self, i: int) -> np.ndarray:
        a, b = self.pairs[i]
        E = np.zeros((self.t, self.t))
        E[a, b] = E[b, a] = 1.0
        return E

    def variance_mask(self) -> np.ndarray:
        return np.array([a == b for a, b in self.pairs])

    @property
    def n_missing(self) -> int:
        """Rows carried as extra unknowns (spatial grids only)."""
        return 0

    def feasible(self, R0: np.ndarray) -> bool:
        from .covariance import is_positive_definite
        return bool(np.all(np.diag(R0) > 0)) and is_positive_definite(R0, 1e-12)

    def log_scale_mask(self) -> np.ndarray:
        """Variances of a scalar or diagonal R₀ are stepped on the log scale; an
        unstructured R₀ stays linear (positive definiteness is checked as a whole)."""
        return np.array([(a == b) and self.kind != "us" for a, b in self.pairs])

    # -- per pattern at R₀ -----------------------------------------------------
    def pattern_inverses(self, R0: np.ndarray) -> list:
        """R₀[o, o]⁻¹ for each pattern."""
        return [np.linalg.inv(R0[np.ix_(p.levels, p.levels)]) for p in self.patterns]

    def rinv_cells(self, Rinvs: list) -> np.ndarray:
        """r(θ): the entry of R₀[o, o]⁻¹ each cell multiplies."""
        return np.array([Rinvs[p][j, k] for p, j, k in self.cells])

    def logdet(self, R0: np.ndarray) -> float:
        """log|R| = Σₚ nₚ log|R₀[o, o]| − Σ log wᵢ."""
        out = -self.logdet_weights
        for p in self.patterns:
            sign, ld = np.linalg.slogdet(R0[np.ix_(p.levels, p.levels)])
            if sign <= 0:
                return np.inf
            out += p.n_units * ld
        return out

    def apply_rinv(self, Rinvs: list, V: np.ndarray) -> np.ndarray:
        """R̃⁻¹V for V (n,) or (n, m) in the weighted scale."""
        if self.is_scalar:
            return V * Rinvs[0][0, 0]
        V = np.asarray(V, float)
        out = np.empty_like(V)
        for p, Ri in zip(self.patterns, Rinvs):
            blk = V[p.rows]                          # (n_p, t_p[, m])
            out[p.rows] = np.einsum("jk,uk...->uj...", Ri, blk)
        return out

    def derivative_mats(self, Rinvs: list, i: int) -> list:
        """Mₚ,ᵢ = R₀[o, o]⁻¹ Eᵢ[o, o] R₀[o, o]⁻¹ for each pattern."""
        E = self.E(i)
        return [Ri @ E[np.ix_(p.levels, p.levels)] @ Ri for p, Ri in zip(self.patterns, Rinvs)]

    def trace_rinv_dr(self, Rinvs: list, i: int) -> float:
        """tr(R⁻¹ ∂R/∂φᵢ) = Σₚ nₚ tr(R₀[o, o]⁻¹ Eᵢ[o, o])."""
        E = self.E(i)
        return float(sum(p.n_units * np.sum(Ri * E[np.ix_(p.levels, p.levels)])
                         for p, Ri in zip(self.patterns, Rinvs)))

    def cell_weights(self, Ms: list) -> np.ndarray:
        """Mₚ[j, k] for each cell (j ≥ k)."""
        return np.array([Ms[p][j, k] for p, j, k in self.cells])

    def unit_quadratic(self, e: np.ndarray, Ms: list) -> float:
        """Σₚ Σᵤ eᵤ' Mₚ eᵤ for a weighted-scale n-vector e."""
        total = 0.0
        for p, M in zip(self.patterns, Ms):
            blk = e[p.rows]
            total += float(np.einsum("uj,jk,uk->", blk, M, blk))
        return total

    def apply_dr(self, i: int, v: np.ndarray, state=None) -> np.ndarray:
        """(∂R/∂φᵢ) v for an n-vector (weighted scale)."""
        E = self.E(i)
        out = np.zeros_like(v)
        for p in self.patterns:
            Eo = E[np.ix_(p.levels, p.levels)]
            if np.any(Eo):
                out[p.rows] = v[p.rows] @ Eo
        return out

    def sandwich(self, A: np.ndarray, Ms: list) -> np.ndarray:
        """Σᵤ Aᵤ' Mₚ Aᵤ for A (n × m): A' R⁻¹(∂R/∂φ)R⁻¹ A blockwise."""
        m = A.shape[1]
        out = np.zeros((m, m))
        for p, M in zip(self.patterns, Ms):
            blk = A[p.rows]                          # (n_p, t_p, m)
            out += np.einsum("ujm,jk,ukl->ml", blk, M, blk)
        return out

    def covariance_rows(self, R0: np.ndarray, idx: np.ndarray):
        """R[idx, idx] (sparse, original scale) for chosen rows (repeats allowed)."""
        import scipy.sparse as sp
        idx = np.asarray(idx, dtype=np.int64)
        m = idx.shape[0]
        E = sp.csr_matrix((np.ones(m), (np.arange(m), idx)), shape=(m, self.n))
        rr, cc, vv = [], [], []
        for p in self.patterns:
            for j, a in enumerate(p.levels):
                for k, b in enumerate(p.levels):
                    rr.append(p.rows[:, j])
                    cc.append(p.rows[:, k])
                    vv.append(np.full(p.n_units, R0[a, b]))
        v = np.concatenate(vv)
        r, c = np.concatenate(rr), np.concatenate(cc)
        if self.weights is not None:
            sw = self.sqrt_weights
            v = v / (sw[r] * sw[c])
        R = sp.csr_matrix((v, (r, c)), shape=(self.n, self.n))
        return sp.csc_matrix(E @ R @ E.T)

    def level_rows(self) -> list:
        """Row indices of each level (for starting values)."""
        out = [[] for _ in range(self.t)]
        for p in self.patterns:
            for j, a in enumerate(p.levels):
                out[a].append(p.rows[:, j])
        return [np.concatenate(r) if r else np.zeros(0, np.int64) for r in out]


def residual_structure(kind: str, factor: str | None, n: int, level_codes=None,
                       level_names=(), unit_codes=None, weights=None) -> ResidualStructure:
    """Group the n rows into units and patterns.

    Parameters
    ----------
    kind : "scalar", "diag" or "us"
    factor : the residual factor's name (None for scalar)
    level_codes : (n,) int, level of each row (diag, us)
    level_names : the t level names
    unit_codes : (n,) int, unit of each row (us); diag and scalar: each row is a unit
    weights : (n,) prior weights or None
    """
    if kind not in KINDS:
        raise FormulaError(f"residual kind must be one of {KINDS}, got {kind!r}")
    if kind == "scalar":
        levels = ("",)
        patterns = (Pattern((0,), np.arange(n, dtype=np.int64)[:, None]),)
    elif kind == "diag":
        levels = tuple(str(x) for x in level_names)
        codes = np.asarray(level_codes, dtype=np.int64)
        counts = np.bincount(codes, minlength=len(levels))
        few = [levels[a] for a in range(len(levels)) if 0 < counts[a] < 2]
        if few:
            raise DataError(f"residual {kind}({factor}): level(s) {few} have fewer than two "
                            "records; their residual variance cannot be estimated")
        patterns = tuple(Pattern((a,), np.flatnonzero(codes == a)[:, None])
                         for a in range(len(levels)) if np.any(codes == a))
    else:
        levels = tuple(str(x) for x in level_names)
        patterns = _unit_patterns(np.asarray(level_codes, np.int64),
                                  np.asarray(unit_codes, np.int64), len(levels))
    t = len(levels)
    seen = sorted({a for p in patterns for a in p.levels})
    if len(seen) < t:
        missing = [levels[a] for a in range(t) if a not in seen]
        raise DataError(f"residual {kind}({factor}): level(s) {missing} have no records")
    if kind == "us":
        pairs = tuple([(a, a) for a in range(t)] + [(a, b) for b in range(t) for a in range(b + 1, t)])
    else:
        pairs = tuple((a, a) for a in range(t))
    cells = tuple((pi, j, k) for pi, p in enumerate(patterns)
                  for j in range(len(p.levels)) for k in range(j + 1))
    if weights is not None:
        weights = np.asarray(weights, dtype=float)
    return ResidualStructure(kind=kind, factor=factor, levels=levels, n=n, patterns=patterns,
                             weights=weights, pairs=pairs, cells=cells)


def _unit_patterns(level: np.ndarray, unit: np.ndarray, t: int) -> tuple:
    """Patterns of observed levels over units (rows of one unit have distinct levels)."""
    order = np.lexsort((level, unit))
    u_sorted, l_sorted = unit[order], level[order]
    if np.any((np.diff(u_sorted) == 0) & (np.diff(l_sorted) == 0)):
        raise DataError("a unit has two records of the same trait")
    starts = np.flatnonzero(np.r_[True, np.diff(u_sorted) != 0])
    # bit mask of observed levels per unit
    bits = np.add.reduceat(np.left_shift(1, l_sorted), starts)
    out = []
    for mask in np.unique(bits):
        levels = tuple(a for a in range(t) if mask >> a & 1)
        us = np.flatnonzero(bits == mask)
        rows = np.stack([order[starts[us] + j] for j in range(len(levels))], axis=1)
        out.append(Pattern(levels, rows.astype(np.int64)))
    return tuple(out)
