"""FA(1), FA(2) on a simulated MET of 10 environments × 200 genotypes: a dense-V oracle.

Issue 13's "FA(1), FA(2): dense oracle on a simulated MET (10 environments, 200
genotypes)". ``y ~ 0 + env + (0 + env | gen)`` with G₀ = ΛΛ' + Ψ (two factors) and
σ² I errors, fitted with ``structure={"gen": "fa(k)"}``. The oracle is written here from
the data frame alone (not from mme's design): V = (G₀[env_i, env_j] · [gen_i = gen_j]) +
σ² I on all records, formed densely, with the exact REML log-likelihood and its analytic
gradient −½ tr(P ∂V/∂θᵢ) + ½ y'P ∂V/∂θᵢ P y (∂G₀/∂θᵢ by central differences of mme's
``split``, exact for G₀ = ΛΛ' + Ψ, which is quadratic in θ).

Two replicates per genotype × environment (n = 4,000): with one replicate ψₑ and σ² enter
the likelihood only as ψₑ + σ² (and so do the unstructured G₀'s diagonal and σ²), so the
model would not be identified and the SEs (and the stationarity check) would not exist.

Checked: mme's REML logLik = the dense one at mme's θ̂ (1e-8); the dense gradient at θ̂
times the SEs (stationarity: < 3e-4, or 2e-3 when a ψ ends at its floor, the tolerances of
tests/test_residual_structures.py::test_factor_analytic_matches_dense_and_is_stationary);
FA(1) ≤ FA(2) ≤ unstructured logLik (nested models).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import cho_factor, cho_solve
from scipy.linalg.lapack import dpotri

import mme
from mme.engine.reml import Likelihood

#: mme's logLik vs the dense V formula at mme's θ̂ (brief: 1e-8)
ATOL_LOGLIK = 1e-8
#: max |∂ℓ/∂θ|·SE(θ) at the REML estimate (test_residual_structures.py's values); FA(2)
#: achieved 1.4e-4 (analytic dense gradient, so this is mme's own convergence)
ATOL_STATIONARY = 3e-4
#: ... and where the fit stops early: a ψ at its floor (test_residual_structures.py), or
#: FA(1) here, which converges linearly (15 iterations) and is stopped by the relative
#: branch of the convergence rule (Newton decrement < 1e-9·|logLik| ≈ 6.9e-6 at n = 4,000,
#: not the absolute 1e-9): decrement 4.9e-6, |∂ℓ/∂θ|·SE achieved 1.5e-3
ATOL_STATIONARY_HEYWOOD = 2e-3
#: the convergence rule checked with the dense gradient: g'·AI⁻¹·g < 1e-9·max(1, |logLik|)
#: (reml.py's tol_decrement·tol), and < 1e-9 absolute for "full" convergence
TOL_DECREMENT_REL = 1e-9

N_ENV, N_GEN, N_REP = 10, 200, 2
FORMULA = "y ~ 0 + env + (0 + env | gen)"

pytestmark = pytest.mark.slow


def _met(seed=13):
    rng = np.random.default_rng(seed)
    lam = np.column_stack([rng.uniform(0.8, 1.6, N_ENV), rng.normal(0.0, 0.8, N_ENV)])
    G0 = lam @ lam.T + np.diag(rng.uniform(0.2, 0.6, N_ENV))
    U = rng.multivariate_normal(np.zeros(N_ENV), G0, N_GEN)
    g, e, r = np.meshgrid(np.arange(N_GEN), np.arange(N_ENV), np.arange(N_REP), indexing="ij")
    g, e, r = g.ravel(), e.ravel(), r.ravel()
    y = 20.0 + 0.5 * e + U[g, e] + rng.normal(0.0, 1.0, g.size)
    return pd.DataFrame({"gen": [f"G{k:03d}" for k in g],
                         "env": pd.Categorical([f"E{k:02d}" for k in e]),
                         "rep": r, "y": y})


class DenseMET:
    """REML of y ~ 0 + env + (0 + env | gen) with σ² I errors, V dense (n × n)."""

    def __init__(self, df, split):
        self.env = df["env"].cat.codes.to_numpy()
        gen = pd.factorize(df["gen"])[0]
        self.same = gen[:, None] == gen[None, :]
        self.X = np.eye(self.env.max() + 1)[self.env]
        self.y = df["y"].to_numpy(float)
        self.split = split
        self.n, self.p = self.X.shape

    def _G0_s2(self, theta):
        G0s, R0 = self.split(theta)
        return G0s[0], float(np.ravel(R0)[0])

    def V(self, G0, s2):
        V = np.where(self.same, G0[np.ix_(self.env, self.env)], 0.0)
        V[np.diag_indices(self.n)] += s2
        return V

    def _solve(self, theta):
        cf = cho_factor(self.V(*self._G0_s2(theta)), lower=True, check_finite=False)
        ViX = cho_solve(cf, self.X, check_finite=False)
        XViX = self.X.T @ ViX
        Viy = cho_solve(cf, self.y, check_finite=False)
        Py = Viy - ViX @ np.linalg.solve(XViX, self.X.T @ Viy)
        return cf, ViX, XViX, Py

    def loglik(self, theta):
        cf, ViX, XViX, Py = self._solve(theta)
        return -0.5 * ((self.n - self.p) * np.log(2 * np.pi)
                       + 2.0 * np.log(np.diag(cf[0])).sum()
                       + np.linalg.slogdet(XViX)[1] + self.y @ Py)

    def gradient(self, theta):
        cf, ViX, XViX, Py = self._solve(theta)
        Vi = dpotri(cf[0], lower=1)[0]
        Vi = np.tril(Vi) + np.tril(Vi, -1).T
        P = Vi - ViX @ np.linalg.solve(XViX, ViX.T)
        # ∂V/∂θᵢ = [gen_i = gen_j]·∂G₀[env_i, env_j] + ∂σ²·I, so tr(P ∂V) and Py'∂V Py are
        # sums of ∂G₀[a, b] over P's (and Py Py''s) same-genotype entries pooled by (env a, env b)
        E = self.X
        S = E.T @ np.where(self.same, P, 0.0) @ E
        T = E.T @ np.where(self.same, np.outer(Py, Py), 0.0) @ E
        trP, PyPy = np.trace(P), Py @ Py
        g = np.empty(len(theta))
        for i in range(len(theta)):
            h = 1e-4 * max(abs(theta[i]), 1.0)
            up, dn = theta.copy(), theta.copy()
            up[i] += h
            dn[i] -= h
            (Gu, su), (Gd, sd) = self._G0_s2(up), self._G0_s2(dn)
            dG, ds = (Gu - Gd) / (2 * h), (su - sd) / (2 * h)
            g[i] = -0.5 * (np.sum(S * dG) + ds * trP) + 0.5 * (np.sum(T * dG) + ds * PyPy)
        return g


@pytest.fixture(scope="module")
def met():
    return _met()


@pytest.fixture(scope="module")
def unstructured(met):
    fit = mme.fit(FORMULA, met)
    assert fit.converged
    return fit


@pytest.fixture(scope="module")
def fa_fits(met):
    return {k: mme.fit(FORMULA, met, structure={"gen": f"fa({k})"}) for k in (1, 2)}


@pytest.fixture(scope="module")
def dense_at_fit(met, fa_fits):
    """(dense logLik, dense gradient) at each FA fit's θ̂."""
    out = {}
    for k, fit in fa_fits.items():
        theta = np.asarray(fit.internals.estimate.theta, float)
        d = DenseMET(met, fit.internals.mme.split)
        out[k] = d.loglik(theta), d.gradient(theta)
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_fa_matches_dense_oracle_and_is_stationary(fa_fits, dense_at_fit, k):
    fit = fa_fits[k]
    assert fit.converged
    est = fit.internals.estimate
    theta = np.asarray(est.theta, float)
    assert len(theta) == N_ENV * k - k * (k - 1) // 2 + N_ENV + 1
    ll, g = dense_at_fit[k]
    assert abs(fit.loglik - ll) < ATOL_LOGLIK
    se = fit.variance_components["std_error"].to_numpy()
    free = ~np.asarray(est.at_bound, bool)
    tol = ATOL_STATIONARY if free.all() else ATOL_STATIONARY_HEYWOOD
    if k == 1:
        tol = ATOL_STATIONARY_HEYWOOD
    assert np.all(np.isfinite(se[free]))
    assert np.all((np.abs(g) * se)[free] < tol), (np.abs(g) * se, free)
    # the Newton decrement with the dense gradient and mme's AI at θ̂: the stopping rule
    ev = Likelihood(fit.internals.mme, "REML").evaluate(theta)
    np.testing.assert_allclose(ev.score, g, rtol=0, atol=1e-6 * max(np.abs(g).max(), 1.0))
    dec = g[free] @ np.linalg.solve(ev.AI[np.ix_(free, free)], g[free])
    assert 0 <= dec < TOL_DECREMENT_REL * max(1.0, abs(fit.loglik)), dec
    # the implied G₀ is what the FA parameters say
    fa = fit.factor_analytic("gen")
    L = fa.rotated_loadings.to_numpy()
    np.testing.assert_allclose(fa.G0.to_numpy(), L @ L.T + np.diag(fa.specific_variances),
                               rtol=1e-12, atol=1e-12)


def test_fa_loglik_nested_in_unstructured(fa_fits, unstructured):
    # FA(1) ⊂ FA(2) ⊂ unstructured G₀: REML logLik can only rise
    assert fa_fits[1].loglik <= fa_fits[2].loglik + 1e-6
    assert fa_fits[2].loglik <= unstructured.loglik + 1e-6
    # the data are FA(2): FA(2) fits much better than FA(1), about as well as unstructured
    # (LR statistic of 36 extra parameters small)
    assert fa_fits[2].loglik - fa_fits[1].loglik > 5.0


# FA(1) on FA(2) data stops at |∂ℓ/∂θ|·SE 1.5e-3 (the relative branch of the convergence
# rule, decrement < 1e-9·|logLik|, admits ~2.6e-3 SE at |logLik| ≈ 6,900): checked at the
# early-stop tolerance above; a tighter rule is its own issue (see the closing note).
