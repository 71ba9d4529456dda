"""Rectangle probabilities of the multivariate t (and normal) distribution for multiplicity
adjustments: P(max |Tᵢ| ≤ c) for T = Z / S, Z ~ N(0, R) with a correlation matrix R that
may be singular (pairwise differences of k means have rank k − 1), S² ~ χ²_ν / ν.

emmeans' ``"mvt"`` adjustment calls ``mvtnorm::pmvt`` / ``qmvt`` (Genz & Bretz's
randomised quasi-Monte Carlo, absolute error 1e-3 by default). This module uses the same
method — Genz's separation of variables with a pivoted Cholesky factor — integrated by a
randomised rank-1 (Richtmyer) lattice with the baker's transform, ``N_BATCHES`` random
shifts from a fixed seed (so results are reproducible) and ``N_POINTS`` points each. A
singular R is handled as Genz does: a constraint whose Cholesky row ends before its own
diagonal bounds the last variable it involves. ``scipy.stats.multivariate_t.cdf`` was
tried first: it is accurate for non-singular R but wrong for singular R (0.13–0.3 off the
exact Tukey probability for the pairwise differences of 5 means), hence this module.

The Monte Carlo standard error of each probability is returned with it; at the defaults it
is ≈ 1e-6 for the families emmeans uses (tests/test_emmeans_contrasts.py measures it
against Tukey's exact probabilities, which the pairwise family of a balanced design must
reproduce).
"""
from __future__ import annotations

import numpy as np
from scipy import optimize, special, stats

__all__ = ["MaxAbsT", "pmvt_max_abs", "qmvt_max_abs", "N_POINTS", "N_BATCHES", "SEED"]

#: lattice points per random shift, number of shifts, seed of the shifts
N_POINTS = 20000
N_BATCHES = 10
SEED = 20261203
#: a Cholesky pivot below this (on a correlation matrix) is a linear dependence
SINGULAR_TOL = 1e-10


def _pivoted_cholesky(R: np.ndarray) -> tuple:
    """R[p][:, p] = L L' with L (m × r) lower trapezoidal, r = rank; returns (L, p)."""
    A = np.array(R, dtype=float)
    m = A.shape[0]
    perm = np.arange(m)
    L = np.zeros((m, m))
    r = 0
    for j in range(m):
        d = np.diag(A)[j:] - np.sum(L[j:, :j] ** 2, axis=1)
        i = j + int(np.argmax(d))
        if d[i - j] <= SINGULAR_TOL:
            break
        if i != j:                                   # swap rows/cols i and j
            A[[i, j]] = A[[j, i]]
            A[:, [i, j]] = A[:, [j, i]]
            L[[i, j]] = L[[j, i]]
            perm[[i, j]] = perm[[j, i]]
        L[j, j] = np.sqrt(d[i - j])
        L[j + 1:, j] = (A[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
        r += 1
    return L[:, :r], perm


def _lattice(n: int, dim: int) -> np.ndarray:
    """Richtmyer rank-1 lattice: frac(i·√pₖ), i = 1..n, k = 1..dim → (dim, n)."""
    primes = []
    c = 2
    while len(primes) < dim:
        if all(c % p for p in primes):
            primes.append(c)
        c += 1
    i = np.arange(1, n + 1)
    return np.mod(np.outer(np.sqrt(primes), i), 1.0)


class MaxAbsT:
    """P(|Tᵢ| ≤ c ∀i) for one correlation matrix and df, reusing the QMC points
    (common random numbers: every probability and quantile of one instance uses the same
    points, so they are smooth and monotone in c)."""

    def __init__(self, R, df, n_points=N_POINTS, n_batches=N_BATCHES, seed=SEED):
        R = np.asarray(R, dtype=float)
        self.L, _ = _pivoted_cholesky(R)
        self.m, self.r = self.L.shape
        # constraint i bounds variable last(i): its last nonzero coefficient
        scale = np.max(np.abs(self.L), axis=1, keepdims=True)
        nz = np.abs(self.L) > 1e-12 * np.maximum(scale, 1e-300)
        self.last = np.array([np.flatnonzero(row).max() for row in nz])
        self.df = float(df)
        dim = self.r + (0 if np.isinf(self.df) else 1)
        rng = np.random.default_rng(seed)
        base = _lattice(n_points, dim)
        # all shifts side by side: columns b·n .. (b+1)·n − 1 are batch b
        u = np.hstack([np.mod(base + rng.random((dim, 1)), 1.0) for _ in range(n_batches)])
        u = np.abs(2.0 * u - 1.0)                     # baker's transform
        if np.isinf(self.df):
            self.s = np.ones(u.shape[1])
        else:                                         # S = √(χ²_ν/ν) by its upper quantile
            self.s, u = np.sqrt(special.chdtri(self.df, u[0]) / self.df), u[1:]
        self.u = u
        self.n_batches = n_batches
        self.attached = [np.flatnonzero(self.last == j) for j in range(self.r)]

    def prob(self, c: float) -> tuple:
        """(P(max |Tᵢ| ≤ c), Monte Carlo standard error over the random shifts)."""
        if c <= 0:
            return 0.0, 0.0
        n = self.s.shape[0]
        cs = c * self.s
        y = np.zeros((self.r, n))
        f = np.ones(n)
        for j in range(self.r):
            A = self.attached[j]
            a = self.L[A, j][:, None]
            mu = self.L[A, :j] @ y[:j] if j else np.zeros((len(A), n))
            b1, b2 = (-cs - mu) / a, (cs - mu) / a
            lo = np.max(np.minimum(b1, b2), axis=0)
            hi = np.min(np.maximum(b1, b2), axis=0)
            plo, phi = special.ndtr(lo), special.ndtr(hi)
            width = np.maximum(phi - plo, 0.0)
            f *= width
            if j < self.r - 1:
                q = np.clip(plo + self.u[j] * width, 1e-300, 1 - 1e-16)
                y[j] = special.ndtri(q)
        vals = f.reshape(self.n_batches, -1).mean(axis=1)
        return float(vals.mean()), float(vals.std(ddof=1) / np.sqrt(self.n_batches))

    def quantile(self, level: float) -> float:
        """c with P(max |Tᵢ| ≤ c) = level (two-sided simultaneous critical value)."""
        # the unadjusted and the Bonferroni critical values bracket it
        lo = stats.t.ppf(0.5 + 0.5 * level, self.df) * (1 - 1e-9)
        hi = stats.t.ppf(1 - (1 - level) / (2 * self.m), self.df) * (1 + 1e-6) + 1e-9
        return float(optimize.brentq(lambda c: self.prob(c)[0] - level, lo, hi, xtol=1e-10))


def pmvt_max_abs(c, R, df, **kw) -> tuple:
    """(P(max |Tᵢ| ≤ c), its Monte Carlo standard error); ``df=inf``: normal."""
    if c <= 0:
        return 0.0, 0.0
    return MaxAbsT(R, df, **kw).prob(float(c))


def qmvt_max_abs(level, R, df, **kw) -> float:
    """c with P(max |Tᵢ| ≤ c) = level."""
    return MaxAbsT(R, df, **kw).quantile(level)
