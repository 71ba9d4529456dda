"""REML / ML on the boundary: the relative-covariance-factor (Λ) form of the MME.

The MME in ``system`` need G⁻¹, so AI-REML iterates on G₀ can approach a
rank-deficient optimum (an unstructured G₀ whose correlation goes to ±1) but not
reach it. This module writes the same model the way lme4 does (Bates et al.
2015): u = (Λ ⊗ I) v, Var(v) = σ²ₑ (I ⊗ K), G₀ = σ²ₑ ΛΛ' with Λ lower
triangular and diag(Λ) ≥ 0. Then

    C* = T'W'W T + blockdiag(0ₚ, I_d ⊗ K⁻¹),   T = blockdiag(Iₚ, Λ_b ⊗ I_L),
    C* ŝ = T'W'y,   pwrss = y'y − ŝ'T'W'y,

C* stays positive definite when Λ is singular, and σ²ₑ is profiled out:

    −2ℓ_REML(λ) = (n−p)(1 + log(2π pwrss/(n−p))) + log|C*| + Σ_b d_b log|K_b|
    −2ℓ_ML(λ)   = n(1 + log(2π pwrss/n)) + log|C*| + log|(C*⁻¹)ₓₓ| + Σ_b d_b log|K_b|

(log|C*uu| = log|C*| + log|(C*⁻¹)ₓₓ|). λ — the lower triangle of every Λ_b,
column by column (lme4's θ order) — is optimised with bounds diag(Λ) ≥ 0 by
COBYQA (``scipy.optimize``, derivative-free trust region, BOBYQA's successor),
started from the AI-REML estimate. The pattern of C* (the union over all Λ) is
analysed by CHOLMOD once; each λ costs one numeric factorization.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, minimize

from .._errors import NotPositiveDefiniteError
from .cholesky import Cholesky
from .reml import Likelihood
from .system import csc_slots

#: COBYQA's final trust-region radius on λ (relative standard deviations):
#: lme4's bobyqa stops at 2e-7 on the deviance; 1e-7 on λ reaches the same logLik
#: to well below 1e-6 on the reference cases.
FINAL_RADIUS = 1e-7
#: C*(λ) is kept as a polynomial in λ (``RelativeFactorForm._expansion``) when its
#: 1 + m + m(m+1)/2 value vectors (m = len(λ)) hold at most this many numbers
EXPANSION_MAX_VALUES = 2e7


@dataclass(frozen=True)
class BoundaryResult:
    """The optimum of the profiled likelihood in the Λ form."""

    lam: np.ndarray          # λ̂ (lower triangles of Λ_b, column-major, per block)
    theta: np.ndarray        # θ̂ in ``Likelihood``'s order (G₀ elements per block, σ²ₑ)
    m2ll: float              # −2ℓ at λ̂ (exact, G₀ may be singular)
    n_eval: int


class RelativeFactorForm:
    """Profiled −2ℓ(λ) of a ``Likelihood`` written with u = (Λ ⊗ I) v."""

    def __init__(self, model: Likelihood):
        self.model = model
        mme = model.mme
        self.ml = model.method == "ML"
        self.n, self.p, self.dim = mme.n, mme.p, mme.dim
        scalar = mme.residual.is_scalar
        self.WtW = (mme.W.T @ mme.W).tocsc() if scalar else None
        self.Wty = mme.Wty if scalar else None
        self.yty = mme.yty if scalar else None
        self.blocks = mme.structures
        # lower-triangle index pairs of Λ_b, column-major: (0,0), (1,0), ..., (1,1), ...
        self.tri = [[(i, j) for j in range(s.d) for i in range(j, s.d)] for s in self.blocks]
        self.sizes = [len(t) for t in self.tri]
        self.logdet_K = sum(s.d * s.block.logdet_K for s in self.blocks)
        self._build_pattern()
        self.factor = None
        self.n_eval = 0

    # -- pattern -------------------------------------------------------------
    def _wrw_pattern(self):
        """W'W's pattern as 0/1 (the union pattern of T'W'WT over all Λ)."""
        A = self.WtW.copy()
        A.data = np.ones_like(A.data)
        return A

    def _T(self, lam: np.ndarray) -> sp.csc_matrix:
        parts = [sp.identity(self.p, format="csc")] if self.p else []
        for s, Lam in zip(self.blocks, self.lambdas(lam)):
            parts.append(sp.kron(sp.csc_matrix(Lam), sp.identity(s.L, format="csc"), format="csc"))
        return sp.block_diag(parts, format="csc")

    def _build_pattern(self) -> None:
        # the union of T'W'WT's pattern over every Λ: Λ all ones, |W'W| (no cancellation)
        ones = np.concatenate([np.ones(m) for m in self.sizes]) if self.sizes else np.zeros(0)
        A = self._wrw_pattern()
        T1 = self._T(ones)
        P = sp.tril(T1.T @ A @ T1).tocoo()
        rows = [P.row.astype(np.int64), np.arange(self.dim, dtype=np.int64)]
        cols = [P.col.astype(np.int64), np.arange(self.dim, dtype=np.int64)]
        k_rows, k_cols, k_vals = [], [], []
        for s in self.blocks:
            diag_pairs = np.flatnonzero(s.pair_index % (s.d + 1) == 0)  # (a, a) slots: I ⊗ K⁻¹
            k_rows.append(s.rows[diag_pairs])
            k_cols.append(s.cols[diag_pairs])
            k_vals.append(s.kvals[diag_pairs])
        r, c = np.concatenate(rows + k_rows), np.concatenate(cols + k_cols)
        C = sp.csc_matrix((np.zeros(r.shape[0]), (r, c)), shape=(self.dim, self.dim))
        C.sum_duplicates()
        C.sort_indices()
        self.C = C
        self.kslots = csc_slots(C, np.concatenate(k_rows + [np.zeros(0, np.int64)]),
                                np.concatenate(k_cols + [np.zeros(0, np.int64)]))
        self.kvals = np.concatenate(k_vals + [np.zeros(0)])
        self.kslots_unique, inv = np.unique(self.kslots, return_inverse=True)
        self.kvals_summed = np.bincount(inv.ravel(), weights=self.kvals,
                                        minlength=self.kslots_unique.shape[0])

    # -- parameters ----------------------------------------------------------
    def lambdas(self, lam: np.ndarray) -> list:
        out, i = [], 0
        for s, tri, m in zip(self.blocks, self.tri, self.sizes):
            Lam = np.zeros((s.d, s.d))
            for (a, b), v in zip(tri, lam[i:i + m]):
                Lam[a, b] = v
            out.append(Lam)
            i += m
        return out

    def lam_of(self, theta: np.ndarray) -> np.ndarray:
        """λ from a positive-definite θ (G₀ per block, σ²ₑ): Λ_b = chol(G₀_b / σ²ₑ)."""
        G0s, R0 = self.model.split(theta)
        s2e = float(R0[0, 0])
        out = []
        for tri, G0 in zip(self.tri, G0s):
            Lam = np.linalg.cholesky(G0 / s2e)
            out.append([Lam[a, b] for a, b in tri])
        return np.concatenate(out)

    def bounds(self) -> Bounds:
        lb = np.concatenate([[0.0 if a == b else -np.inf for a, b in tri] for tri in self.tri])
        return Bounds(lb, np.full(lb.shape, np.inf))

    # -- the criterion -------------------------------------------------------
    def _expansion(self):
        """C*'s values and rhs* as polynomials in λ, or None when too large to keep.

        T(λ) = T₀ + Σₑ λₑTₑ, so T'AT = T₀'AT₀ + Σₑ λₑ(Tₑ'AT₀ + T₀'ATₑ)
        + Σ_{e≤f} λₑλ_f (Tₑ'AT_f + T_f'ATₑ, once for e = f): one vector of C's slot values
        per term, formed once; each λ then costs a few axpys instead of sparse products.
        """
        if not hasattr(self, "_exp"):
            self._exp = None
            m = sum(self.sizes)
            nq = m * (m + 1) // 2
            if (1 + m + nq) * self.C.nnz <= EXPANSION_MAX_VALUES:
                C = self.C

                def slot_values(M):
                    M = sp.tril(M).tocoo()
                    pos = csc_slots(C, M.row.astype(np.int64), M.col.astype(np.int64))
                    if (pos < 0).any():
                        raise ValueError("outside the pattern")
                    v = np.zeros(C.nnz)
                    np.add.at(v, pos, M.data)
                    return v

                A = self.WtW
                T0 = self._T(np.zeros(m))
                Ts = [self._T(np.eye(m)[e]) - T0 for e in range(m)]
                try:
                    c0 = slot_values(T0.T @ A @ T0)
                    lin = np.array([slot_values(Te.T @ A @ T0 + T0.T @ A @ Te) for Te in Ts])
                    pairs = [(e, f) for e in range(m) for f in range(e, m)]
                    quad = np.array([slot_values(Ts[e].T @ A @ Ts[f] if e == f else
                                                 Ts[e].T @ A @ Ts[f] + Ts[f].T @ A @ Ts[e])
                                     for e, f in pairs])
                except ValueError:
                    return None
                c0[self.kslots_unique] += self.kvals_summed
                self._exp_T = (T0, Ts)
                self._exp = [c0, lin.reshape(m, C.nnz), quad.reshape(len(pairs), C.nnz),
                             np.array(pairs, dtype=np.int64).reshape(-1, 2), None, None]
                self._expand_rhs()
        return self._exp

    def _expand_rhs(self) -> None:
        T0, Ts = self._exp_T
        self._exp[4] = T0.T @ self.Wty
        self._exp[5] = np.array([Te.T @ self.Wty for Te in Ts]).reshape(len(Ts), -1)

    def set_response(self) -> None:
        """Re-read W'y and y'y from the MME after ``MME.set_response`` (C* does not
        depend on y: its pattern, analysis and expansion stay)."""
        mme = self.model.mme
        self.Wty, self.yty = mme.Wty, mme.yty
        if getattr(self, "_exp", None) is not None:
            self._expand_rhs()

    def _solve(self, lam: np.ndarray) -> tuple:
        """Factorize C*(λ): (log|C*|, pwrss, ŝ)."""
        lam = np.asarray(lam, float)
        exp = self._expansion()
        if exp is not None:
            c0, lin, quad, pairs, r0, rlin = exp
            data = c0 + lam @ lin
            if len(pairs):
                data += (lam[pairs[:, 0]] * lam[pairs[:, 1]]) @ quad
            rhs = r0 + lam @ rlin
        else:
            T = self._T(lam)
            P = sp.tril(T.T @ self.WtW @ T).tocoo()
            data = np.zeros_like(self.C.data)
            np.add.at(data, csc_slots(self.C, P.row.astype(np.int64), P.col.astype(np.int64)),
                      P.data)
            np.add.at(data, self.kslots, self.kvals)
            rhs = T.T @ self.Wty
        self.C.data[:] = data
        if self.factor is None:
            self.factor = Cholesky(self.C, self.model.mme.ordering)
        self.factor.factorize(self.C)
        self.n_eval += 1
        sol = self.factor.solve(rhs)
        pwrss = max(self.yty - float(sol @ rhs), 1e-300)
        return self.factor.logdet(), pwrss, sol

    def _cinv_xx(self) -> np.ndarray:
        """(C*⁻¹)ₓₓ from the factor in hand."""
        E = np.zeros((self.dim, self.p))
        E[np.arange(self.p), np.arange(self.p)] = 1.0
        return self.factor.solve(E)[:self.p]

    def _m2ll(self, logdet: float, pwrss: float, s2e: float) -> float:
        m = self.n if self.ml else self.n - self.p
        out = (logdet + self.logdet_K + m * np.log(2.0 * np.pi * s2e) + pwrss / s2e
               - self.model.mme.residual.logdet_weights)
        if self.ml and self.p:
            out += np.linalg.slogdet(self._cinv_xx())[1]
        return float(out)

    def evaluate(self, lam: np.ndarray) -> tuple:
        """(−2ℓ, σ̂²ₑ, ŝ) at λ with σ²ₑ profiled out; ŝ = [β̂; v̂] in the v scale."""
        logdet, pwrss, sol = self._solve(lam)
        s2e = pwrss / (self.n if self.ml else self.n - self.p)
        return self._m2ll(logdet, pwrss, s2e), s2e, sol

    def m2ll(self, lam: np.ndarray, s2e: float) -> float:
        """−2ℓ at (λ, σ²ₑ), σ²ₑ not profiled (for the Hessian in φ = (λ, σ²ₑ))."""
        logdet, pwrss, _ = self._solve(lam)
        return self._m2ll(logdet, pwrss, s2e)

    def ml_parts(self, lam: np.ndarray) -> tuple:
        """(ldL2, pwrss, β̂, (C*⁻¹)ₓₓ) at λ for ML, so that with σ²ₑ given
        −2ℓ_ML = ldL2 + n log(2πσ²ₑ) + pwrss/σ²ₑ (lme4's ``devfun2``); with β_j held at b
        instead of β̂_j, pwrss grows by (b − β̂_j)² / [(C*⁻¹)ₓₓ]_jj (the profile of a
        fixed effect, ``inference.profile``). ldL2 = log|C*ᵤᵤ| + Σ d log|K| − log|W|."""
        logdet, pwrss, sol = self._solve(lam)
        cxx = self._cinv_xx() if self.p else np.zeros((0, 0))
        ld = logdet + self.logdet_K - self.model.mme.residual.logdet_weights
        if self.p:
            ld += np.linalg.slogdet(cxx)[1]
        return float(ld), pwrss, sol[:self.p].copy(), cxx

    def vcov_beta(self, lam: np.ndarray, s2e: float) -> np.ndarray:
        """Var(β̂) = σ²ₑ (C*⁻¹)ₓₓ at (λ, σ²ₑ)."""
        self._solve(lam)
        return s2e * self._cinv_xx()

    def theta_of(self, lam: np.ndarray, s2e: float) -> np.ndarray:
        """θ (G₀ = σ²ₑ ΛΛ' per block, then σ²ₑ) in ``Likelihood``'s order."""
        out = [s.theta_of(s2e * Lam @ Lam.T) for s, Lam in zip(self.blocks, self.lambdas(lam))]
        return np.concatenate(out + [np.array([s2e])])


class StructuredRelativeFactorForm(RelativeFactorForm):
    """The Λ form with a structured residual (multi-trait ``us``/``diag``, ``by``,
    weights): u = (Λ ⊗ I)v with Var(v) = I ⊗ K, so G₀ = ΛΛ' (no σ²ₑ to profile), and
    R's parameters φ optimised with λ:

        C* = T'W̃'R⁻¹W̃T + blockdiag(0ₚ, I ⊗ K⁻¹),   rhs* = T'W̃'R⁻¹ỹ,
        −2ℓ_REML = (n−p) log 2π + log|R| + Σ d log|K| + log|C*| + ỹ'R⁻¹ỹ − ŝ'rhs*

    W̃'R⁻¹W̃ comes from the MME's residual cells (``C.data = B·r(φ)``)."""

    def __init__(self, model: Likelihood):
        mme = model.mme
        # the union pattern: C's own (W̃'R⁻¹W̃ ⊆ C's lower pattern), as a full 0/1 matrix
        lower = sp.csc_matrix((np.ones(mme.C.nnz), mme.C.indices, mme.C.indptr),
                              shape=mme.C.shape)
        self._pattern = (lower + lower.T).tocsc()
        super().__init__(model)
        self.n_r = mme.residual.n_params

    def _wrw_pattern(self):
        return self._pattern

    def split_params(self, x: np.ndarray) -> tuple:
        m = sum(self.sizes)
        return np.asarray(x[:m], float), np.asarray(x[m:], float)

    def lam_of(self, theta: np.ndarray) -> np.ndarray:
        """(λ, φ) from a positive-definite θ: Λ_b = chol(G₀_b), φ = R's parameters."""
        G0s, R0 = self.model.split(theta)
        out = []
        for tri, G0 in zip(self.tri, G0s):
            Lam = np.linalg.cholesky(G0)
            out.append([Lam[a, b] for a, b in tri])
        return np.concatenate(out + [self.model.mme.residual.theta_of(R0)])

    def bounds(self) -> Bounds:
        lam = super().bounds()
        res = self.model.mme.residual
        lb = np.where(res.variance_mask(), 1e-12, -np.inf)
        return Bounds(np.concatenate([lam.lb, lb]), np.full(lam.lb.shape[0] + lb.shape[0], np.inf))

    def evaluate(self, x: np.ndarray) -> tuple:
        """(−2ℓ, None, ŝ) at (λ, φ); +∞ outside R's parameter space."""
        mme = self.model.mme
        res = mme.residual
        lam, phi = self.split_params(x)
        R0 = res.R0(phi)
        if not res.feasible(R0):
            return np.inf, None, None
        r = res.rinv_cells(res.pattern_inverses(R0))
        lower = sp.csc_matrix((mme.B @ r, mme.C.indices, mme.C.indptr), shape=mme.C.shape)
        M = (lower + lower.T - sp.diags(lower.diagonal())).tocsc()
        T = self._T(lam)
        P = sp.tril(T.T @ M @ T).tocoo()
        data = np.zeros_like(self.C.data)
        np.add.at(data, csc_slots(self.C, P.row.astype(np.int64), P.col.astype(np.int64)), P.data)
        np.add.at(data, self.kslots, self.kvals)
        self.C.data[:] = data
        if self.factor is None:
            self.factor = Cholesky(self.C, mme.ordering)
        try:
            self.factor.factorize(self.C)
        except NotPositiveDefiniteError:
            return np.inf, None, None
        self.n_eval += 1
        rhs = T.T @ mme.rhs(r)
        sol = self.factor.solve(rhs)
        yPy = mme.yRy(r) - float(sol @ rhs)
        m = self.n - mme.n_aug if self.ml else self.n - mme.n_aug - self.p
        out = (m * np.log(2.0 * np.pi) + res.logdet(R0) + self.logdet_K
               + self.factor.logdet() + yPy)
        if self.ml and self.p:
            out += np.linalg.slogdet(self._cinv_xx())[1]
        return float(out), None, sol

    def theta_of(self, x: np.ndarray, s2e=None) -> np.ndarray:
        """θ (G₀ = ΛΛ' per block, then R's parameters)."""
        lam, phi = self.split_params(x)
        out = [s.theta_of(Lam @ Lam.T) for s, Lam in zip(self.blocks, self.lambdas(lam))]
        return np.concatenate(out + [phi])


def fit_on_boundary(model: Likelihood, theta0: np.ndarray, max_eval: int | None = None) -> BoundaryResult:
    """Maximise the (profiled) REML/ML likelihood over λ (and a structured residual's
    parameters) from the AI-REML estimate θ₀."""
    if not model.mme.residual.is_scalar:
        form = StructuredRelativeFactorForm(model)
        x0 = form.lam_of(theta0)
        start, _, _ = form.evaluate(x0)
        scale = max(float(np.max(np.abs(x0))), 1e-3)
        res = minimize(lambda x: form.evaluate(x)[0], x0, method="COBYQA", bounds=form.bounds(),
                       options={"initial_tr_radius": 0.1 * scale, "final_tr_radius": FINAL_RADIUS,
                                "maxfev": max_eval or 500 * x0.shape[0]})
        x = np.asarray(res.x, float)
        m2ll, _, _ = form.evaluate(x)
        if not m2ll <= start:
            x, m2ll = x0, start
        return BoundaryResult(lam=x, theta=form.theta_of(x), m2ll=m2ll, n_eval=form.n_eval)
    form = RelativeFactorForm(model)
    lam0 = form.lam_of(theta0)
    start, start_s2e, _ = form.evaluate(lam0)
    k = lam0.shape[0]
    scale = max(float(np.max(np.abs(lam0))), 1e-3)
    res = minimize(lambda x: form.evaluate(x)[0], lam0, method="COBYQA", bounds=form.bounds(),
                   options={"initial_tr_radius": 0.1 * scale, "final_tr_radius": FINAL_RADIUS,
                            "maxfev": max_eval or 500 * k})
    lam = np.asarray(res.x, float)
    m2ll, s2e, _ = form.evaluate(lam)
    if m2ll > start:
        lam, m2ll, s2e = lam0, start, start_s2e
    return BoundaryResult(lam=lam, theta=form.theta_of(lam, s2e), m2ll=m2ll, n_eval=form.n_eval)


#: relative central-difference step for the Hessian and ∂Var(β̂)/∂φ on the boundary
BOUNDARY_DIFF_STEP = 1e-4


def satterthwaite_pieces(model: Likelihood, lam: np.ndarray, s2e: float) -> tuple:
    """(∂Var(β̂)/∂φᵢ (k, p, p), Var(φ̂) (k, k)) in φ = (λ, σ²ₑ), as lmerTest does.

    At a boundary optimum G₀ = σ²ₑΛΛ' is singular and θ (G₀'s elements) leaves the
    PSD cone in some directions; in φ every direction is allowed (a column of Λ and
    its negative give the same G₀), so the Hessian of −2ℓ exists there. Both are
    central differences: Var(φ̂) = 2 H⁻¹, H = ∂²(−2ℓ)/∂φ∂φ'.
    """
    form = RelativeFactorForm(model)
    phi0 = np.append(np.asarray(lam, float), s2e)
    k = phi0.shape[0]
    lam_scale = max(float(np.max(np.abs(lam))), 1e-3) if lam.size else 1.0
    h = BOUNDARY_DIFF_STEP * np.append(np.maximum(np.abs(lam), 0.1 * lam_scale), s2e)

    def f(phi):
        return form.m2ll(phi[:-1], phi[-1])

    def shifted(*moves):
        x = phi0.copy()
        for i, sgn in moves:
            x[i] += sgn * h[i]
        return x

    f0 = f(phi0)
    H = np.zeros((k, k))
    for i in range(k):
        H[i, i] = (f(shifted((i, 1))) - 2.0 * f0 + f(shifted((i, -1)))) / h[i] ** 2
        for j in range(i):
            H[i, j] = H[j, i] = (f(shifted((i, 1), (j, 1))) - f(shifted((i, 1), (j, -1)))
                                 - f(shifted((i, -1), (j, 1))) + f(shifted((i, -1), (j, -1)))
                                 ) / (4.0 * h[i] * h[j])
    vcov_phi = 2.0 * np.linalg.pinv(H)
    dvcov = np.array([(form.vcov_beta(x[:-1], x[-1]) - form.vcov_beta(y[:-1], y[-1])) / (2 * h[i])
                      for i in range(k)
                      for x, y in [(shifted((i, 1)), shifted((i, -1)))]])
    return dvcov, vcov_phi
