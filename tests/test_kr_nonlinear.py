"""Kenward–Roger on fits whose V is not linear in θ (issue 13): a spatial AR1 ⊗ AR1
residual (with and without missing plots, with a random genotype, per site) and
factor-analytic G₀ (FA(1), FA(2)), against a dense oracle written here from the paper.

The oracle builds V(θ) from the plot coordinates and the model matrices by formula
(not through mme's covariance code), takes ∂V/∂θᵢ and ∂²V/∂θᵢ∂θⱼ by central
differences (Richardson-extrapolated), and forms Kenward & Roger's (1997) pieces
literally: Φ = (X'V⁻¹X)⁻¹, Pᵢ = −X'V⁻¹VᵢV⁻¹X, Qᵢⱼ = X'V⁻¹VᵢV⁻¹VⱼV⁻¹X,
Rᵢⱼ = X'V⁻¹VᵢⱼV⁻¹X, 𝒲 = 2 [tr(PVᵢPVⱼ)]⁻¹ and
Φ_A = Φ + 2Φ[Σ𝒲ᵢⱼ(Qᵢⱼ − PᵢΦPⱼ − ¼Rᵢⱼ)]Φ. Its df come from the same pbkrtest-literal
``_kr_adjust`` that tests/test_kenward_roger_structured.py checks against pbkrtest.

On a V linear in θ the dense route must equal the MME route (which matches pbkrtest)
to rounding, and its Rᵢⱼ term must vanish.
"""
import numpy as np
import pandas as pd
import pytest

import mme
from mme.inference import kenward_roger as KR
from mme.inference import kr_nonlinear
from mme.inference.kr_nonlinear import kenward_roger_dense

from test_residual_structures import _field, _met

#: dense route vs the oracle: Φ, tr(PVᵢPVⱼ) and ∂Φ/∂θ (first derivatives of V only,
#: Richardson-extrapolated differences). Achieved 9.2e-13 (by-site ∂Φ/∂θ).
RTOL_ORACLE = 1e-11
#: Φ_A, which adds the oracle's second differences of V in ρ. Achieved 2.4e-9 (by site;
#: FA, quadratic in the loadings: 1.1e-12).
RTOL_ORACLE_ADJ = 5e-8
#: df of each coefficient against the oracle's. Achieved 2.2e-12.
RTOL_DF = 5e-11
#: dense route vs the MME route on linear structures (σ²ₑ, by(site)): rounding.
#: Achieved 1.7e-15 (∂Φ/∂θ), 8e-16 (Φ_A), 4e-16 (information).
RTOL_LINEAR = 1e-13


# ------------------------------------------------------------------ oracle --
class Oracle:
    """Kenward–Roger from V(θ) by formula; derivatives by central differences."""

    def __init__(self, fit, V):
        self.fit, self.V = fit, V
        self.X = fit.internals.design.X.toarray()
        self.theta = np.asarray(fit.internals.theta, float)

    def _d1(self, i, h):
        e = np.zeros_like(self.theta)
        e[i] = h
        return (self.V(self.theta + e) - self.V(self.theta - e)) / (2 * h)

    def _d2(self, i, j, h):
        ei, ej = np.zeros_like(self.theta), np.zeros_like(self.theta)
        ei[i], ej[j] = h, h
        f = lambda a, b: self.V(self.theta + a * ei + b * ej)
        return (f(1, 1) - f(1, -1) - f(-1, 1) + f(-1, -1)) / (4 * h * h)

    def dV(self, i, h=1e-3):
        return (4 * self._d1(i, h / 2) - self._d1(i, h)) / 3          # Richardson

    def d2V(self, i, j, h=1e-2):
        return (4 * self._d2(i, j, h / 2) - self._d2(i, j, h)) / 3

    def pieces(self):
        X, V = self.X, self.V(self.theta)
        k = self.theta.size
        Vi = np.linalg.inv(V)
        ViX = Vi @ X
        Phi = np.linalg.inv(X.T @ ViX)
        P = Vi - ViX @ Phi @ ViX.T
        dV = [self.dV(i) for i in range(k)]
        PdV = [P @ d for d in dV]
        B = [d @ ViX for d in dV]                                   # Vᵢ V⁻¹X
        Pi = [-ViX.T @ b for b in B]
        info = np.array([[np.sum(a * b.T) for b in PdV] for a in PdV])   # tr(PVᵢPVⱼ)
        W = 2 * np.linalg.inv(info)
        S = np.zeros_like(Phi)
        for i in range(k):
            for j in range(k):
                Q = B[i].T @ Vi @ B[j]
                R = ViX.T @ self.d2V(i, j) @ ViX if self.nonlinear(i, j) else 0.0
                S += W[i, j] * (Q - Pi[i] @ Phi @ Pi[j] - 0.25 * R)
        return {"vcov": Phi, "vcov_adj": Phi + 2 * Phi @ S @ Phi, "information": info, "W": W,
                "dvcov": np.array([-Phi @ p @ Phi for p in Pi])}

    def nonlinear(self, i, j, h=1e-1):
        """Vᵢⱼ ≠ 0: V(θ + heᵢ + heⱼ) − V(θ + heᵢ) − V(θ + heⱼ) + V(θ) is not ~0 (the
        single steps cached; a V bilinear-free in θᵢ, θⱼ gives exactly rounding)."""
        if not hasattr(self, "_single"):
            self._V0 = self.V(self.theta)
            self._single = {}
        def step(*idx):
            e = np.zeros_like(self.theta)
            for t in idx:
                e[t] += h
            return self.V(self.theta + e)
        for t in (i, j):
            if t not in self._single:
                self._single[t] = step(t)
        d = step(i, j) - self._single[i] - self._single[j] + self._V0
        return bool(np.abs(d).max() > 1e-9 * np.abs(self._V0).max())


def _spatial_V(fit, df, by=None):
    """σ² ρ_c^|Δc| ρ_r^|Δr| within a field (0 between fields) + Z G Z', by formula."""
    design = fit.internals.design
    Zs = [b.Z.toarray() for b in design.blocks]
    c, r = df["col"].to_numpy(float), df["row"].to_numpy(float)
    site = df[by].astype(str).to_numpy() if by else np.zeros(len(df))
    levels = [str(v) for v in fit.internals.mme.residual.levels] if by else [0]

    def V(theta):
        G0s, phi = fit.internals.mme.split(theta)
        phi = np.asarray(phi, float).reshape(-1, 3)
        out = np.zeros((len(df), len(df)))
        for (s2, rc, rr), lev in zip(phi, levels):
            m = (site[:, None] == lev) & (site[None, :] == lev)
            out += m * s2 * rc ** np.abs(c[:, None] - c) * rr ** np.abs(r[:, None] - r)
        for Z, G0 in zip(Zs, G0s):
            out += Z @ np.kron(G0, np.eye(Z.shape[1] // G0.shape[0])) @ Z.T
        return out
    return V


def _fa_V(fit):
    design = fit.internals.design
    Z = design.blocks[0].Z.toarray()

    def V(theta):
        G0s, R0 = fit.internals.mme.split(theta)
        L = Z.shape[1] // G0s[0].shape[0]
        return Z @ np.kron(G0s[0], np.eye(L)) @ Z.T + float(np.asarray(R0).ravel()[0]) * np.eye(len(Z))
    return V


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _check_against_oracle(fit, V):
    kr = KR.kenward_roger(fit)
    o = Oracle(fit, V).pieces()
    np.testing.assert_allclose(kr.vcov, fit.vcov_beta, rtol=1e-10)
    assert _rel(kr.vcov, o["vcov"]) < RTOL_ORACLE
    assert _rel(kr.information, o["information"]) < RTOL_ORACLE
    assert _rel(kr.dvcov, o["dvcov"]) < RTOL_ORACLE
    assert _rel(kr.vcov_adj, o["vcov_adj"]) < RTOL_ORACLE_ADJ
    p = len(fit.beta)
    for i in range(p):
        L = np.eye(p)[i:i + 1]
        df_mme = KR._kr_adjust(L, kr.vcov, kr.dvcov, kr.W, 1)[0]
        df_oracle = KR._kr_adjust(L, o["vcov"], o["dvcov"], o["W"], 1)[0]
        assert abs(df_mme - df_oracle) < RTOL_DF * df_oracle, (i, df_mme, df_oracle)
    return kr, o


# ------------------------------------------------------------------- tests --
@pytest.mark.parametrize("formula, drop", [
    ("y ~ x + (1|gen)", (3, 40, 41)),     # missing plots carried as unknowns by the MME
    ("y ~ x + (1|gen)", ()),
    ("y ~ x", (5, 6)),
])
def test_spatial_kenward_roger_matches_the_oracle(formula, drop):
    df = _field(drop=drop)
    fit = mme.fit(formula, df, residual="ar1(col):ar1(row)")
    kr, o = _check_against_oracle(fit, _spatial_V(fit, df))
    # the second-derivative term matters here: dropping it changes Φ_A
    first = kenward_roger_dense(fit, second_order=False)
    assert _rel(first.vcov_adj, kr.vcov_adj) > 1e-4


def test_spatial_per_site_kenward_roger_matches_the_oracle():
    a, b = _field(seed=2, drop=(3,)), _field(seed=5, nc=6, nr=10, rho=(0.2, 0.6), drop=())
    df = pd.concat([a.assign(site="A"), b.assign(site="B", gen=b.gen + 20)], ignore_index=True)
    fit = mme.fit("y ~ site + x + (1|gen)", df, residual="by(site, ar1(col):ar1(row))")
    _check_against_oracle(fit, _spatial_V(fit, df, by="site"))


@pytest.mark.slow
@pytest.mark.parametrize("k, seed", [(1, 4), (2, 5)])    # seed 5: FA(2) not at a bound
def test_factor_analytic_kenward_roger_matches_the_oracle(k, seed):
    df = _met(seed=seed, ng=30, psi=(0.4, 0.9))
    fit = mme.fit("y ~ 0 + env + (0 + env | gen)", df, structure={"gen": f"fa({k})"})
    assert not fit.singular
    _check_against_oracle(fit, _fa_V(fit))


def test_linear_structures_dense_route_equals_the_mme_route():
    """Where V is linear the dense route is pbkrtest's (the MME route, checked against
    pbkrtest elsewhere) and its second-order term is exactly zero."""
    df = _field(drop=(3,))
    df["site"] = np.where(df["col"] <= 4, "A", "B")
    for fit in (mme.fit("y ~ x + (1|gen)", df),
                mme.fit("y ~ x + site + (1|gen)", df, residual="by(site)")):
        assert not kr_nonlinear.needs_dense(fit)
        ref = KR._compute(fit, "exact", 0, 0, 10**6)
        dense = kenward_roger_dense(fit)
        for name in ("vcov_adj", "information", "dvcov", "W"):
            assert _rel(getattr(dense, name), getattr(ref, name)) < RTOL_LINEAR, name
        first = kenward_roger_dense(fit, second_order=False)
        np.testing.assert_array_equal(first.vcov_adj, dense.vcov_adj)


def test_emmeans_and_anova_run_with_kenward_roger_on_these_fits():
    df = _field(drop=(3, 40, 41))
    df["trt"] = pd.Categorical(np.where(df["row"] % 2 == 0, "a", "b"))
    sp_fit = mme.fit("y ~ trt + x + (1|gen)", df, residual="ar1(col):ar1(row)")
    em = sp_fit.emmeans("trt", df_method="kenward-roger").table
    assert np.all(np.isfinite(em["df"])) and np.all(em["df"] > 0)
    av = sp_fit.anova(df_method="kenward-roger")
    assert np.all(np.isfinite(av.filter(like="df").to_numpy(float)))
    fa = mme.fit("y ~ 0 + env + (0 + env | gen)", _met(ng=30), structure={"gen": "fa(1)"})
    em = fa.emmeans("env", df_method="kenward-roger").table
    # SE from Φ_A (not Φ): the adjusted variances of the env means are the diagonal
    np.testing.assert_allclose(em["std_error"] ** 2, np.diag(KR.kenward_roger(fa).vcov_adj),
                               rtol=1e-10)


def test_large_fits_are_refused_with_the_way_out(monkeypatch):
    df = _field()
    fit = mme.fit("y ~ x + (1|gen)", df, residual="ar1(col):ar1(row)")
    monkeypatch.setattr(kr_nonlinear, "DENSE_MAX_N", 50)
    with pytest.raises(mme.DfMethodError, match="DENSE_MAX_N = 50.*satterthwaite"):
        kenward_roger_dense(fit)
