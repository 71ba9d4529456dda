"""Residual (R-side) structures against dense NumPy oracles and Mrode's textbook.

For each structure — prior weights, a residual variance per site (``by``), an
unstructured R₀ across the traits of a row with missing records (``cbind``/``us``),
``diag(trait)`` — V = Σ ZₖGₖZₖ' + R is formed densely (small n) and the exact REML/ML
log-likelihood, its gradient (central differences), the average information
½ y'PVᵢPVⱼPy, and the GLS/BLUP solution are compared with what the MME give.
"""
import json
import pathlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mme
from mme.engine.reml import Likelihood

DATA = pathlib.Path(__file__).parent / "data"

#: logLik from the MME vs the dense V formula at the same θ: achieved 3.6e-12
ATOL_LOGLIK = 1e-10
#: MME score vs central differences of the dense logLik (relative step 1e-6), relative
#: to max(1, largest |gradient|): achieved 1.1e-6 (the differences' own error)
RTOL_SCORE = 1e-5
#: AI from working variates vs dense ½ y'PVᵢPVⱼPy: achieved 8.7e-15
RTOL_AI = 1e-12
#: the same for the spatial ρ's, whose ∂V/∂ρ the oracle takes by central differences:
#: achieved 6.6e-11 (the differences' own error)
RTOL_AI_SPATIAL = 1e-8
#: a spatial model with a nugget: AI is farther from the Hessian for ρ, and the decrement
#: test (in AI's metric) stops with the gradient within 3.1e-4 SE (achieved)
ATOL_STATIONARY_NUGGET = 1e-3
#: an FA fit whose specific variance ψₐ ends at its floor (a Heywood case): the
#: convergence test then stops with the free parameters within 4.7e-4 SE (achieved)
ATOL_STATIONARY_HEYWOOD = 2e-3
#: BLUE/BLUP and Var(β̂) vs dense GLS/BLUP at the estimate: achieved 4.6e-15
RTOL_SOLUTION = 1e-12
#: at the REML estimate the dense gradient is ≈ 0: max |∂ℓ/∂θ|·SE(θ) achieved 2.9e-5
#: (the finite differences' error; θ̂ within ~3e-5 SE, the convergence rule)
ATOL_STATIONARY = 3e-4
#: Mrode's printed digits: 3 decimals (half a unit of the last digit)
ATOL_MRODE = 5e-4 + 1e-9
#: Mrode 5.1 PEVs: the book's values differ from the exact inverse of its C by up to
#: 7.0e-5 relative (0.0022 on 31.364; the book inverts a C built from rounded numbers);
#: checked to 1.5e-4 relative
RTOL_MRODE_PEV = 1.5e-4


# ----------------------------------------------------------------- data sets --
def _sire_bivariate(seed=3, ns=25, no=6):
    rng = np.random.default_rng(seed)
    sire = np.repeat(np.arange(ns), no)
    n = ns * no
    G0 = np.array([[1.0, 0.4], [0.4, 0.8]])
    R0 = np.array([[2.0, 0.6], [0.6, 1.5]])
    u = rng.multivariate_normal([0, 0], G0, ns)
    e = rng.multivariate_normal([0, 0], R0, n)
    x = rng.normal(size=n)
    Y = np.array([10.0, 5.0]) + u[sire] + e + np.outer(x, [0.5, -0.3])
    df = pd.DataFrame({"y1": Y[:, 0], "y2": Y[:, 1], "x": x, "sire": sire})
    m = rng.random(n)
    df.loc[m < 0.12, "y1"] = np.nan
    df.loc[m > 0.88, "y2"] = np.nan
    return df


def _sites(seed=5, n=120):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 15, n)
    site = rng.integers(0, 3, n)
    u = rng.normal(0, 1.0, 15)
    sd = np.array([1.0, 2.0, 4.0])[site]
    return pd.DataFrame({"y": 3 + 0.5 * site + u[g] + sd * rng.normal(size=n),
                         "site": pd.Categorical(np.array(["a", "b", "c"])[site]),
                         "g": g, "w": rng.uniform(0.5, 3.0, n), "x": rng.normal(size=n)})


def _weighted(seed=7, n=150):
    """Var(eᵢ) = σ²/wᵢ with σ² = 2, 12 groups of variance 1."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 12, n)
    w = rng.uniform(0.5, 3.0, n)
    x = rng.normal(size=n)
    y = 3 + 0.5 * x + rng.normal(0, 1.0, 12)[g] + rng.normal(size=n) * np.sqrt(2.0 / w)
    return pd.DataFrame({"y": y, "x": x, "g": g, "w": w})


CASES = {
    "weights": dict(formula="y ~ x + (1|g)", data=_weighted, kw=dict(weights="w")),
    "weights_fixed_only": dict(formula="y ~ x", data=_weighted, kw=dict(weights="w")),
    "by_site": dict(formula="y ~ site + (1|g)", data=_sites, kw=dict(residual="by(site)")),
    "by_site_weights": dict(formula="y ~ site + (1|g)", data=_sites,
                            kw=dict(residual="by(site)", weights="w")),
    "by_site_fixed_only": dict(formula="y ~ site + x", data=_sites, kw=dict(residual="by(site)")),
    "us_traits": dict(formula="cbind(y1, y2) ~ 0 + trait + trait:x + (0 + trait | sire)",
                      data=_sire_bivariate, kw={}),
    "diag_traits": dict(formula="cbind(y1, y2) ~ 0 + trait + trait:x + (0 + trait | sire)",
                        data=_sire_bivariate, kw=dict(residual="diag(trait)")),
    "us_fixed_only": dict(formula="cbind(y1, y2) ~ 0 + trait + trait:x", data=_sire_bivariate,
                          kw=dict(residual="us(trait)")),
}


# -------------------------------------------------------------- dense oracle --
class Dense:
    """V(θ) and the exact log-likelihood of a built MME, formed densely."""

    def __init__(self, system, method="REML"):
        d = system.design
        self.system, self.method = system, method
        self.X = d.X.toarray()
        self.y = d.y
        self.Zs = [b.Z.toarray() for b in d.blocks]
        self.Ks = [np.linalg.inv(b.Kinv.toarray()) for b in d.blocks]
        res = d.residual
        self.res = res
        self.w = np.ones(d.n) if res.weights is None else res.weights

    def R(self, R0):
        n = len(self.y)
        R = np.zeros((n, n))
        for p in self.res.patterns:
            for j, a in enumerate(p.levels):
                for k, b in enumerate(p.levels):
                    R[p.rows[:, j], p.rows[:, k]] = R0[a, b]
        s = 1.0 / np.sqrt(self.w)
        return R * np.outer(s, s)

    def V(self, theta):
        G0s, R0 = self.system.split(theta)
        V = self.R(R0)
        for Z, K, G0 in zip(self.Zs, self.Ks, G0s):
            V += Z @ np.kron(G0, K) @ Z.T
        return V

    def loglik(self, theta):
        V = self.V(theta)
        n, p = self.X.shape
        Vi = np.linalg.inv(V)
        XtViX = self.X.T @ Vi @ self.X
        beta = np.linalg.solve(XtViX, self.X.T @ Vi @ self.y)
        r = self.y - self.X @ beta
        m2 = np.linalg.slogdet(V)[1] + r @ Vi @ r
        if self.method == "REML":
            m2 += (n - p) * np.log(2 * np.pi) + np.linalg.slogdet(XtViX)[1]
        else:
            m2 += n * np.log(2 * np.pi)
        return -0.5 * m2

    def gradient(self, theta, h=1e-6):
        g = np.zeros_like(theta)
        for i in range(len(theta)):
            step = h * max(abs(theta[i]), 1e-2)
            up, dn = theta.copy(), theta.copy()
            up[i] += step
            dn[i] -= step
            g[i] = (self.loglik(up) - self.loglik(dn)) / (2 * step)
        return g

    def dV(self, theta, i, h=1e-7):
        """∂V/∂θᵢ (V is linear in θ: exact differences)."""
        e = np.zeros_like(theta)
        e[i] = 1.0
        return self.V(theta + e) - self.V(theta)

    def ai(self, theta):
        V = self.V(theta)
        Vi = np.linalg.inv(V)
        X = self.X
        P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
        if self.method == "ML":
            P = Vi
            beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ self.y)
            Py = Vi @ (self.y - X @ beta)
        else:
            Py = P @ self.y
        k = len(theta)
        wv = [self.dV(theta, i) @ Py for i in range(k)]
        # REML: ½ wᵢ'P wⱼ; ML: ½ wᵢ'V⁻¹wⱼ (engine/reml.py's definition)
        return 0.5 * np.array([[wv[i] @ P @ wv[j] for j in range(k)] for i in range(k)])


def _build(case):
    c = CASES[case]
    df = c["data"]()
    design = mme.build_design(c["formula"], df, **c["kw"])
    return df, mme.build_mme(design)


def _theta_points(system, est_theta):
    """The estimate and two points away from it (other scales and correlations)."""
    G0s, R0 = system.split(est_theta)
    out = [est_theta]
    for f in (0.6, 1.7):
        Gs = [G * f if G.shape[0] == 1 else G * np.array([[f, 0.5], [0.5, 1 / f]])[:G.shape[0], :G.shape[0]]
              for G in G0s]
        R = R0 * (1 / f) if R0.shape[0] == 1 else np.diag(np.diag(R0)) * 1.3 + (R0 - np.diag(np.diag(R0))) * 0.5
        out.append(system.theta_of(Gs, R))
    return out


# ------------------------------------------------------------------- tests --
@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("case", list(CASES))
def test_loglik_score_ai_match_dense(case, method):
    df, system = _build(case)
    est = mme.estimate(system, method=method)
    lik = Likelihood(system, method)
    dense = Dense(system, method)
    for theta in _theta_points(system, est.theta):
        ev = lik.evaluate(theta)
        assert abs(ev.loglik - dense.loglik(theta)) < ATOL_LOGLIK
        g = dense.gradient(theta)
        if ev.score.shape[0] == 1 and system.residual.is_scalar and not system.structures:
            continue      # least squares: no AI-REML score needed
        scale = max(np.abs(g).max(), 1.0)
        assert np.abs(ev.score - g).max() < RTOL_SCORE * scale, (ev.score, g)
        A = dense.ai(theta)
        assert np.abs(ev.AI - A).max() < RTOL_AI * np.abs(A).max()


@pytest.mark.parametrize("case", list(CASES))
def test_estimate_is_the_dense_optimum_and_solution_is_gls(case):
    df, system = _build(case)
    est = mme.estimate(system)
    assert est.converged
    dense = Dense(system)
    fit = mme.assemble(est)
    se = fit.variance_components["std_error"].to_numpy()
    g = dense.gradient(est.theta)
    assert np.all(np.abs(g) * se < ATOL_STATIONARY), (g, se)
    # BLUE and BLUP = dense GLS / BLUP at θ̂
    V = dense.V(est.theta)
    Vi = np.linalg.inv(V)
    X = dense.X
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ dense.y)
    assert np.abs(fit.beta - beta).max() < RTOL_SOLUTION * np.abs(beta).max()
    np.testing.assert_allclose(fit.vcov_beta, np.linalg.inv(X.T @ Vi @ X),
                               rtol=RTOL_SOLUTION, atol=RTOL_SOLUTION * np.abs(fit.vcov_beta).max())
    G0s, _ = system.split(est.theta)
    r = Vi @ (dense.y - X @ beta)
    for blk, Z, K, G0 in zip(fit.blocks, dense.Zs, dense.Ks, G0s):
        u = np.kron(G0, K) @ Z.T @ r
        assert np.abs(blk.blup.ravel() - u).max() < RTOL_SOLUTION * max(np.abs(u).max(), 1e-12)
    # residuals on the data's scale; fitted + residual = y
    np.testing.assert_allclose(fit.fitted() + fit.residuals(), system.design.y, rtol=0, atol=1e-10)
    # the marginal covariance of the fit is the dense V
    Vm = fit.marginal_covariance().toarray()
    np.testing.assert_allclose(Vm, V, rtol=1e-12, atol=1e-12 * np.abs(V).max())


def test_variance_component_rows_name_levels():
    df = _sites()
    fit = mme.fit("y ~ site + (1|g)", df, residual="by(site)")
    vc = fit.variance_components
    res = vc[vc.group == "Residual"]
    assert list(res.term1) == ["a", "b", "c"] and list(res.term2) == ["", "", ""]
    # the simulated SDs are 1, 2, 4: the estimates are ordered and within a factor 2
    est = res.estimate.to_numpy()
    assert np.all(np.diff(est) > 0) and np.all(np.abs(np.log(est / [1, 4, 16])) < np.log(2))
    fit2 = mme.fit("cbind(y1, y2) ~ 0 + trait + trait:x + (0 + trait | sire)", _sire_bivariate())
    vc2 = fit2.variance_components
    assert [tuple(r) for r in vc2[["group", "term1", "term2"]].itertuples(index=False)] == [
        ("sire", "traity1", ""), ("sire", "traity2", ""), ("sire", "traity1", "traity2"),
        ("Residual", "y1", ""), ("Residual", "y2", ""), ("Residual", "y1", "y2")]
    assert list(fit2.fixed_effects.index) == ["traity1", "traity2", "traity1:x", "traity2:x"]
    # a missing response drops only that trait of that row
    df = _sire_bivariate()
    assert fit2.nobs == int(df[["y1", "y2"]].notna().sum().sum())


def test_weights_scale_invariance_and_unit_weights():
    df = _weighted()
    a = mme.fit("y ~ x + (1|g)", df)
    b = mme.fit("y ~ x + (1|g)", df.assign(one=1.0), weights="one")
    assert abs(a.loglik - b.loglik) < 1e-10
    # weights c·w: Var(eᵢ) = σ²/(c wᵢ), so σ²ₑ scales by c, σ²_g does not move, and
    # logLik is unchanged (n log cσ² − Σ log cwᵢ = n log σ² − Σ log wᵢ)
    c = 4.0
    w1 = mme.fit("y ~ x + (1|g)", df, weights="w")
    w2 = mme.fit("y ~ x + (1|g)", df.assign(w=df.w * c), weights="w")
    v1, v2 = w1.variance_components.estimate.to_numpy(), w2.variance_components.estimate.to_numpy()
    assert v1[0] > 0.1
    assert abs(v2[0] - v1[0]) < 1e-6 * v1[0] and abs(v2[1] - c * v1[1]) < 1e-6 * c * v1[1]
    assert abs(w2.loglik - w1.loglik) < 1e-8


@pytest.mark.parametrize("name", ["mrode_5_1_multitrait", "mrode_5_2_multitrait_missing"])
def test_mrode_multitrait_known_variances(name):
    d = json.loads((DATA / "mrode" / f"{name}.json").read_text())
    ped = mme.Pedigree.from_frame(pd.DataFrame({k: d["pedigree"][k] for k in ("id", "sire", "dam")}))
    rec = pd.DataFrame(d["records"])
    fit = mme.fit("cbind(WWG, PWG) ~ 0 + trait:sex + (0 + trait | animal)", rec,
                  relmat={"animal": ped}, variances={"animal": d["G0"], "Residual": d["R0"]})
    fe = fit.fixed_effects["estimate"]
    n = 0
    for t, by_sex in d["expected"]["sex"].items():
        for sex, value in by_sex.items():
            assert abs(fe[f"trait{t}:sex{sex}"] - value) < ATOL_MRODE
            n += 1
    assert n == 4
    re = fit.random_effects.set_index(["term", "level"])
    ids = [str(i) for i in d["pedigree"]["id"]]
    for t in d["traits"]:
        got = re.loc[[(f"trait{t}", i) for i in ids], "blup"].to_numpy()
        np.testing.assert_allclose(got, d["expected"]["animal_blup"][t], rtol=0, atol=ATOL_MRODE)
        if "animal_pev" in d["expected"]:
            pev = re.loc[[(f"trait{t}", i) for i in ids], "pev"].to_numpy()
            np.testing.assert_allclose(pev, d["expected"]["animal_pev"][t], rtol=RTOL_MRODE_PEV)


def test_structured_residual_bad_input_and_limits():
    df = _sites()
    with pytest.raises(mme.FormulaError, match="cbind"):
        mme.fit("y ~ x + (1|g)", df, residual="us(site)")
    with pytest.raises(mme.FormulaError, match="not understood"):
        mme.fit("y ~ x + (1|g)", df, residual="ar2(site)")
    with pytest.raises(mme.FormulaError, match="nosuch"):
        mme.fit("y ~ x + (1|g)", df, residual="by(nosuch)")
    with pytest.raises(mme.DataError, match="'w'.*> 0"):
        mme.fit("y ~ x + (1|g)", df.assign(w=df.w - 1.0), weights="w")
    with pytest.raises(mme.FormulaError, match="'trait'"):
        mme.fit("cbind(y1, y2) ~ 0 + trait + (0 + trait | sire)",
                _sire_bivariate().assign(trait=1))
    with pytest.raises(mme.FormulaError, match="y3"):
        mme.fit("cbind(y1, y3) ~ 0 + trait", _sire_bivariate())
    fit = mme.fit("y ~ site + (1|g)", df, residual="by(site)")
    # Satterthwaite df work on a structured residual
    em = fit.emmeans("site", df_method="satterthwaite").table
    assert np.all(np.isfinite(em["df"])) and len(em) == 3
    # known variances for a by() residual: one per level, as a vector
    k = mme.fit("y ~ site + (1|g)", df, residual="by(site)",
                variances={"g": 1.0, "Residual": [1.0, 4.0, 16.0]})
    assert list(k.variance_components.estimate) == [1.0, 1.0, 4.0, 16.0]
    with pytest.raises(mme.DataError, match="3 × 3"):
        mme.fit("y ~ site + (1|g)", df, residual="by(site)", variances={"g": 1.0, "Residual": 2.0})


# ------------------------------------------------ correlated effects (covary) --
def _maternal(seed=11, n_found=40, n_calves=360):
    """A pedigree with direct + maternal genetic effects (G₀ = [[20, −4], [−4, 9]] ⊗ A), a
    maternal permanent environment (3) and residual (15); 10% of the records have an
    unknown dam (coded 0): those calves have no maternal effects."""
    rng = np.random.default_rng(seed)
    G0 = np.array([[20.0, -4.0], [-4.0, 9.0]])
    ids = list(range(1, n_found + 1))
    sires, dams = [0] * n_found, [0] * n_found
    bv = {i: rng.multivariate_normal([0, 0], G0) for i in ids}
    females = [i for i in ids if i % 2 == 0]
    males = [i for i in ids if i % 2 == 1]
    for k in range(n_calves):
        c = n_found + k + 1
        s_, d_ = int(rng.choice(males)), int(rng.choice(females))
        bv[c] = 0.5 * (bv[s_] + bv[d_]) + rng.multivariate_normal([0, 0], 0.5 * G0)
        ids.append(c), sires.append(s_), dams.append(d_)
        (females if c % 2 == 0 else males).append(c)
    ped = pd.DataFrame({"id": ids, "sire": sires, "dam": dams})
    calves = ped[ped.id > n_found]
    n = len(calves)
    herd = rng.integers(0, 4, n)
    dam = calves["dam"].to_numpy()
    pe = {d_: rng.normal(0, np.sqrt(3.0)) for d_ in set(dam)}
    y = (30 + 2.0 * herd + np.array([bv[a][0] for a in calves["id"]])
         + np.array([bv[d_][1] + pe[d_] for d_ in dam]) + rng.normal(0, np.sqrt(15.0), n))
    dam_rec = dam.copy()
    dam_rec[rng.random(n) < 0.1] = 0           # dam not recorded
    return ped, pd.DataFrame({"animal": calves["id"].to_numpy(), "dam": dam_rec,
                              "dam_pe": np.where(dam_rec > 0, dam_rec.astype(str), "none"),
                              "herd": herd.astype(str), "bw": y})


def test_mrode_7_1_maternal_known_variances():
    d = json.loads((DATA / "mrode" / "mrode_7_1_maternal.json").read_text())
    ped = mme.Pedigree.from_frame(pd.DataFrame({k: d["pedigree"][k] for k in ("id", "sire", "dam")}))
    rec = pd.DataFrame(d["records"]).astype({"herd": str, "pen": str})
    rec["dam_pe"] = rec["dam"].astype(str)
    fit = mme.fit("bw ~ 0 + pen + herd + (1|animal) + (1|dam) + (1|dam_pe)", rec,
                  relmat={"animal": ped, "dam": ped}, covary={"genetic": ["animal", "dam"]},
                  variances={"genetic": d["G0"], "dam_pe": 40, "Residual": 350})
    fe = fit.fixed_effects["estimate"]
    # R's coding pen1, pen2, herd2, herd3 is the book's constraint herd 1 = 0
    exp = d["expected"]
    np.testing.assert_allclose([fe["pen1"], fe["pen2"]], exp["pen"], atol=ATOL_MRODE)
    np.testing.assert_allclose([fe["herd2"], fe["herd3"]], exp["herd_book_constraint"][1:],
                               atol=ATOL_MRODE)
    re = fit.random_effects.set_index(["group", "term", "level"])["blup"]
    ids = [str(i) for i in d["pedigree"]["id"]]
    np.testing.assert_allclose(re.loc[[("genetic", "animal", i) for i in ids]],
                               exp["direct_blup"], atol=ATOL_MRODE)
    np.testing.assert_allclose(re.loc[[("genetic", "dam", i) for i in ids]],
                               exp["maternal_blup"], atol=ATOL_MRODE)
    pe = exp["maternal_pe_blup"]
    np.testing.assert_allclose(re.loc[[("dam_pe", "(Intercept)", k) for k in pe]],
                               list(pe.values()), atol=ATOL_MRODE)
    vc = fit.variance_components
    assert [tuple(r) for r in vc[["group", "term1", "term2"]].itertuples(index=False)][:3] == [
        ("genetic", "animal", ""), ("genetic", "dam", ""), ("genetic", "animal", "dam")]


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_maternal_reml_with_unknown_dams_matches_dense(method):
    pedf, rec = _maternal()
    ped = mme.Pedigree.from_frame(pedf)
    design = mme.build_design("bw ~ herd + (1|animal) + (1|dam) + (1|dam_pe)", rec,
                              relmat={"animal": ped, "dam": ped},
                              covary={"genetic": ["animal", "dam"]})
    # every record kept; a row with dam 0 has no maternal effect
    assert design.n == len(rec)
    blk = design.blocks[0]
    assert blk.group == "genetic" and blk.terms == ("animal", "dam") and blk.d == 2
    Zdam = blk.Z[:, blk.n_levels:]
    unknown = rec["dam"].to_numpy() == 0
    assert np.all(np.asarray(Zdam.sum(axis=1)).ravel()[unknown] == 0)
    assert np.all(np.asarray(Zdam.sum(axis=1)).ravel()[~unknown] == 1)
    system = mme.build_mme(design)
    G0 = np.array([[20.0, -4.0], [-4.0, 9.0]])
    theta = system.theta_of([G0, np.array([[3.0]])], np.array([[15.0]]))
    dense = Dense(system, method)
    ev = Likelihood(system, method).evaluate(theta)
    assert abs(ev.loglik - dense.loglik(theta)) < ATOL_LOGLIK
    g = dense.gradient(theta)
    assert np.abs(ev.score - g).max() < RTOL_SCORE * max(np.abs(g).max(), 1.0)
    A = dense.ai(theta)
    assert np.abs(ev.AI - A).max() < RTOL_AI * np.abs(A).max()


def test_covary_bad_input():
    pedf, rec = _maternal()
    ped = mme.Pedigree.from_frame(pedf)
    f = "bw ~ herd + (1|animal) + (1|dam) + (1|dam_pe)"
    with pytest.raises(mme.FormulaError, match="sire"):
        mme.fit(f, rec, relmat={"animal": ped, "dam": ped}, covary={"g": ["animal", "sire"]})
    with pytest.raises(mme.FormulaError, match="share one relationship"):
        mme.fit(f, rec, relmat={"animal": ped}, covary={"g": ["animal", "dam"]})
    with pytest.raises(mme.FormulaError, match="two or more"):
        mme.fit(f, rec, relmat={"animal": ped, "dam": ped}, covary={"g": ["animal"]})
    with pytest.raises(mme.DataError, match="'genetic'.*2 × 2"):
        mme.fit(f, rec, relmat={"animal": ped, "dam": ped}, covary={"genetic": ["animal", "dam"]},
                variances={"genetic": 1.0, "dam_pe": 1.0, "Residual": 1.0})
    with pytest.raises(mme.DataError, match="'genetic'.*positive"):
        mme.fit(f, rec, relmat={"animal": ped, "dam": ped}, covary={"genetic": ["animal", "dam"]},
                variances={"genetic": [[1, 2], [2, 1]], "dam_pe": 1.0, "Residual": 1.0})


def test_maternal_reml_estimate_is_the_dense_optimum():
    pedf, rec = _maternal()
    ped = mme.Pedigree.from_frame(pedf)
    design = mme.build_design("bw ~ herd + (1|animal) + (1|dam) + (1|dam_pe)", rec,
                              relmat={"animal": ped, "dam": ped},
                              covary={"genetic": ["animal", "dam"]})
    system = mme.build_mme(design)
    est = mme.estimate(system)
    fit = mme.assemble(est)
    assert not fit.singular
    assert est.converged
    se = fit.variance_components["std_error"].to_numpy()
    g = Dense(system).gradient(est.theta)
    free = ~est.at_bound
    assert np.all((np.abs(g) * np.nan_to_num(se, nan=0.0))[free] < ATOL_STATIONARY), (g, se)


def test_per_trait_heritability_and_genetic_correlation():
    fit = mme.fit("cbind(y1, y2) ~ 0 + trait + trait:x + (0 + trait | sire)", _sire_bivariate())
    vc = fit.variance_components.set_index(["group", "term1", "term2"])["estimate"]
    for t in ("y1", "y2"):
        h = fit.heritability("sire", f"trait{t}")
        g, r = vc[("sire", f"trait{t}", "")], vc[("Residual", t, "")]
        assert abs(h["estimate"] - g / (g + r)) < 1e-14
        assert 0 < h["std_error"] < 1
    rg = fit.genetic_correlation("sire")
    assert list(rg[["term1", "term2"]].iloc[0]) == ["traity1", "traity2"]
    c = vc[("sire", "traity1", "traity2")]
    r = c / np.sqrt(vc[("sire", "traity1", "")] * vc[("sire", "traity2", "")])
    assert abs(rg["estimate"].iloc[0] - r) < 1e-14
    # delta method = the variance of r by a numerical gradient through the same AI⁻¹
    theta = fit.variance_components["estimate"].to_numpy()

    def corr(th):
        return th[2] / np.sqrt(th[0] * th[1])
    grad = np.array([(corr(theta + h) - corr(theta - h)) / 2e-7
                     for h in np.eye(len(theta)) * 1e-7])
    se = np.sqrt(grad @ fit.internals.vcov_theta_ai @ grad)
    assert abs(rg["std_error"].iloc[0] - se) < 1e-6 * se
    with pytest.raises(mme.UnknownTermError, match="traity1"):
        fit.heritability("sire")


# ------------------------------------------------------ spatial AR1 ⊗ AR1 --
def _field(seed=2, nc=8, nr=12, drop=(3, 40, 41), rho=(0.5, 0.3), s2=2.0):
    """A field nc × nr with R = s2·AR1(ρc) ⊗ AR1(ρr), 20 genotypes, some plots lost."""
    rng = np.random.default_rng(seed)
    cc, rr = np.meshgrid(np.arange(1, nc + 1), np.arange(1, nr + 1), indexing="ij")
    cc, rr = cc.ravel(), rr.ravel()
    i, j = np.arange(nc), np.arange(nr)
    R = s2 * np.kron(rho[0] ** np.abs(i[:, None] - i), rho[1] ** np.abs(j[:, None] - j))
    e = rng.multivariate_normal(np.zeros(nc * nr), R)
    gen = rng.integers(0, 20, nc * nr)
    df = pd.DataFrame({"col": cc, "row": rr, "gen": gen, "x": rng.normal(size=nc * nr),
                       "y": 10 + rng.normal(0, 1, 20)[gen] + e})
    return df.drop(index=list(drop)).reset_index(drop=True)


class DenseSpatial(Dense):
    """V = Z G Z' + σ² AR1(ρc) ⊗ AR1(ρr) on the observed plots only (no augmentation)."""

    def __init__(self, system, df, method="REML"):
        d = system.design
        self.system, self.method = system, method
        self.X = d.X.toarray()
        self.y = d.y
        self.Zs = [b.Z.toarray() for b in d.blocks]
        self.Ks = [np.linalg.inv(b.Kinv.toarray()) for b in d.blocks]
        self.c, self.r = df["col"].to_numpy(), df["row"].to_numpy()

    def V(self, theta):
        G0s, phi = self.system.split(theta)
        s2, rc, rr = phi
        V = s2 * (rc ** np.abs(self.c[:, None] - self.c)) * (rr ** np.abs(self.r[:, None] - self.r))
        for Z, K, G0 in zip(self.Zs, self.Ks, G0s):
            V = V + Z @ np.kron(G0, K) @ Z.T
        return V

    def dV(self, theta, i, h=1e-6):
        """∂V/∂θᵢ: V is not linear in ρ, so central differences (error ~h²)."""
        e = np.zeros_like(theta)
        e[i] = h
        return (self.V(theta + e) - self.V(theta - e)) / (2 * h)


@pytest.mark.parametrize("formula, drop, method", [
    ("y ~ x + (1|gen)", (3, 40, 41), "REML"),
    ("y ~ x", (3, 40, 41), "REML"),
    ("y ~ x + (1|gen)", (), "REML"),
    ("y ~ x + (1|gen)", (), "ML"),
])
def test_spatial_ar1_matches_dense(formula, drop, method):
    df = _field(drop=drop)
    system = mme.build_mme(mme.build_design(formula, df, residual="ar1(col):ar1(row)"))
    assert system.n_aug == len(drop)
    est = mme.estimate(system, method=method)
    assert est.converged
    lik = Likelihood(system, method)
    dense = DenseSpatial(system, df, method)
    G0s, phi = system.split(est.theta)
    points = [est.theta, system.theta_of([G * 1.5 for G in G0s], [phi[0] * 0.7, -0.3, 0.6])]
    for theta in points:
        ev = lik.evaluate(theta)
        assert abs(ev.loglik - dense.loglik(theta)) < ATOL_LOGLIK
        g = dense.gradient(theta)
        assert np.abs(ev.score - g).max() < RTOL_SCORE * max(np.abs(g).max(), 1.0), (ev.score, g)
        A = dense.ai(theta)
        assert np.abs(ev.AI - A).max() < RTOL_AI_SPATIAL * np.abs(A).max()
    fit = mme.assemble(est)
    se = fit.variance_components["std_error"].to_numpy()
    assert np.all(np.abs(dense.gradient(est.theta)) * se < ATOL_STATIONARY)
    vc = fit.variance_components
    assert list(vc.term1[-3:]) == ["", "ar1(col)", "ar1(row)"]
    # BLUE = dense GLS at θ̂; residuals only on the observed plots
    V = dense.V(est.theta)
    Vi = np.linalg.inv(V)
    X = dense.X
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ dense.y)
    assert np.abs(fit.beta - beta).max() < RTOL_SOLUTION * np.abs(beta).max()
    assert fit.residuals().shape == (len(df),) and fit.nobs == len(df)
    np.testing.assert_allclose(fit.marginal_covariance().toarray(), V, rtol=1e-12,
                               atol=1e-12 * np.abs(V).max())


def test_spatial_bad_input():
    df = _field()
    with pytest.raises(mme.OptionError, match="ML"):
        mme.fit("y ~ x + (1|gen)", df, residual="ar1(col):ar1(row)", method="ML")
    dup = pd.concat([df, df.iloc[[0]]], ignore_index=True)
    with pytest.raises(mme.DataError, match="share the plot"):
        mme.fit("y ~ x", dup, residual="ar1(col):ar1(row)")
    with pytest.raises(mme.DataError, match="integers"):
        mme.fit("y ~ x", df.assign(col=df.col + 0.5), residual="ar1(col):ar1(row)")
    with pytest.raises(mme.FormulaError, match="plot|ar1"):
        mme.fit("cbind(y, x) ~ 0 + trait", df, residual="ar1(col):ar1(row)")


def _two_fields():
    a = _field(seed=2, nc=6, nr=8, drop=(5,), rho=(0.6, 0.2), s2=1.0).assign(site="A")
    b = _field(seed=3, nc=5, nr=9, drop=(), rho=(-0.2, 0.5), s2=4.0).assign(site="B")
    b["y"] += 3.0
    return pd.concat([a, b], ignore_index=True)


class DenseFields(DenseSpatial):
    """V = Z G Z' + ⊕ₛ σ²ₛ AR1(ρc,ₛ) ⊗ AR1(ρr,ₛ) on the observed plots."""

    def __init__(self, system, df, method="REML"):
        super().__init__(system, df, method)
        self.site = pd.factorize(df["site"], sort=True)[0]

    def V(self, theta):
        G0s, phi = self.system.split(theta)
        V = np.zeros((len(self.y), len(self.y)))
        for k, (s2, rc, rr) in enumerate(np.reshape(phi, (-1, 3))):
            m = self.site == k
            c, r = self.c[m], self.r[m]
            V[np.ix_(m, m)] = s2 * (rc ** np.abs(c[:, None] - c)) * (rr ** np.abs(r[:, None] - r))
        for Z, K, G0 in zip(self.Zs, self.Ks, G0s):
            V = V + Z @ np.kron(G0, K) @ Z.T
        return V


def test_spatial_per_site_matches_dense():
    df = _two_fields()
    system = mme.build_mme(mme.build_design("y ~ site + (1|gen)", df,
                                            residual="by(site, ar1(col):ar1(row))"))
    assert system.n_aug == 1 and system.k == 1 + 6
    est = mme.estimate(system)
    assert est.converged
    dense = DenseFields(system, df)
    lik = Likelihood(system, "REML")
    ev = lik.evaluate(est.theta)
    assert abs(ev.loglik - dense.loglik(est.theta)) < ATOL_LOGLIK
    g = dense.gradient(est.theta)
    assert np.abs(ev.score - g).max() < RTOL_SCORE * max(np.abs(g).max(), 1.0)
    A = dense.ai(est.theta)
    assert np.abs(ev.AI - A).max() < RTOL_AI_SPATIAL * np.abs(A).max()
    fit = mme.assemble(est)
    vc = fit.variance_components
    assert [tuple(r) for r in vc[["term1", "term2"]].iloc[1:].itertuples(index=False)] == [
        ("A", ""), ("A", "ar1(col)"), ("A", "ar1(row)"),
        ("B", ""), ("B", "ar1(col)"), ("B", "ar1(row)")]
    se = vc["std_error"].to_numpy()
    assert np.all(np.abs(g) * se < ATOL_STATIONARY)


def test_field_pictures_show_the_residuals():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from mme import plot
    df = _field()
    fit = mme.fit("y ~ x + (1|gen)", df, residual="ar1(col):ar1(row)")
    e = fit.residuals()
    ax = plot.field_map(fit)
    grid = ax.images[0].get_array()
    # plot (col, row) sits at [row − 1, col − 1]; lost plots are blank
    for k in (0, 17, len(df) - 1):
        assert grid[df.row[k] - 1, df.col[k] - 1] == pytest.approx(e[k], abs=1e-12)
    assert int(np.ma.count_masked(np.ma.masked_invalid(grid))) == 3
    axes = plot.variogram(fit, max_lag=3)
    sample = axes[0].images[0].get_array()
    # lag (hc = 1, hr = 0): plot pairs in adjacent columns of the same row
    c, r = df.col.to_numpy(), df.row.to_numpy()
    pairs = [(i, j) for i in range(len(df)) for j in range(i + 1, len(df))
             if abs(c[i] - c[j]) == 1 and r[i] == r[j]]
    want = np.mean([0.5 * (e[i] - e[j]) ** 2 for i, j in pairs])
    assert sample[0, 1] == pytest.approx(want, rel=1e-12)
    fitted = axes[1].images[0].get_array()
    _, phi = fit.internals.mme.split(fit.internals.theta)
    assert fitted[2, 1] == pytest.approx(phi[0] * (1 - phi[1] * phi[2] ** 2), rel=1e-12)
    with pytest.raises(mme.OptionError, match="col= and row="):
        plot.field_map(mme.fit("y ~ x", df))


def test_field_example_recovers_the_simulation():
    from mme.examples.field import FORMULA, TRUE, load_field
    df = load_field()
    fit = mme.fit(FORMULA, df, residual="ar1(col):ar1(row)")
    vc = fit.variance_components.set_index(["group", "term1"])
    for key, truth in (("gen", ("gen", "(Intercept)")), ("sigma2", ("Residual", "")),
                       ("rho_col", ("Residual", "ar1(col)")), ("rho_row", ("Residual", "ar1(row)"))):
        est, se = vc.loc[truth, ["estimate", "std_error"]]
        assert abs(est - TRUE[key]) < 3 * se, (key, est, se)
    assert fit.aic < mme.fit(FORMULA, df).aic - 50


# ------------------------------------------- factor-analytic G₀ (FA(k)) --
def _met(seed=4, ng=40, ne=5, psi=(0.1, 0.4)):
    """Genotypes × environments with G₀ = ΛΛ' + Ψ (2 factors), 2 reps."""
    rng = np.random.default_rng(seed)
    lam = rng.normal(0, 1, (ne, 2)) * [1.2, 0.6]
    G0 = lam @ lam.T + np.diag(rng.uniform(*psi, ne))
    U = rng.multivariate_normal(np.zeros(ne), G0, ng)
    df = pd.DataFrame([(g, e, r) for g in range(ng) for e in range(ne) for r in range(2)],
                      columns=["gen", "env", "rep"])
    df["env"] = pd.Categorical("E" + df.env.astype(str))
    df["y"] = 10 + 0.5 * df.env.cat.codes + U[df.gen, df.env.cat.codes] + rng.normal(0, 1, len(df))
    return df


class DenseFA(Dense):
    def dV(self, theta, i, h=1e-6):
        e = np.zeros_like(theta)
        e[i] = h
        return (self.V(theta + e) - self.V(theta - e)) / (2 * h)


@pytest.mark.parametrize("k, psi", [(1, (0.4, 0.9)), (2, (0.4, 0.9)), (2, (0.1, 0.4))])
def test_factor_analytic_matches_dense_and_is_stationary(k, psi):
    df = _met(ng=50, psi=psi)
    f = "y ~ 0 + env + (0 + env | gen)"
    system = mme.build_mme(mme.build_design(f, df, structure={"gen": f"fa({k})"}))
    s = system.structures[0]
    assert s.n_params == 5 * k - k * (k - 1) // 2 + 5
    est = mme.estimate(system)
    assert est.converged
    dense = DenseFA(system)
    lik = Likelihood(system, "REML")
    for theta in (est.theta, est.theta * np.r_[np.full(s.n_params, 1.2), 0.8]):
        ev = lik.evaluate(theta)
        assert abs(ev.loglik - dense.loglik(theta)) < ATOL_LOGLIK
        g = dense.gradient(theta)
        assert np.abs(ev.score - g).max() < RTOL_SCORE * max(np.abs(g).max(), 1.0)
        A = dense.ai(theta)
        assert np.abs(ev.AI - A).max() < RTOL_AI_SPATIAL * np.abs(A).max()
    g = dense.gradient(est.theta)
    free = ~est.at_bound
    fit = mme.assemble(est)
    se = fit.variance_components["std_error"].to_numpy()
    tol = ATOL_STATIONARY if free.all() else ATOL_STATIONARY_HEYWOOD
    assert np.all((np.abs(g) * se)[free] < tol), (g, se)
    # FA(k) is nested in the unstructured G₀: never a higher REML logLik
    us = mme.fit(f, df)
    assert fit.loglik <= us.loglik + 1e-6
    fa = fit.factor_analytic("gen")
    G = fa.G0.to_numpy()
    np.testing.assert_allclose(G, fa.rotated_loadings.to_numpy() @ fa.rotated_loadings.to_numpy().T
                               + np.diag(fa.specific_variances), rtol=1e-12, atol=1e-12)
    R = fa.rotated_loadings.to_numpy()
    RtR = R.T @ R
    assert np.abs(RtR - np.diag(np.diag(RtR))).max() < 1e-10 * np.abs(RtR).max()
    assert list(fit.variance_components.term2[:3]) == ["fa1"] * 3


def test_factor_analytic_bad_input_and_biplot():
    df = _met()
    f = "y ~ 0 + env + (0 + env | gen)"
    with pytest.raises(mme.FormulaError, match="fa\\(5\\)"):
        mme.fit(f, df, structure={"gen": "fa(5)"})
    with pytest.raises(mme.FormulaError, match="nope"):
        mme.fit(f, df, structure={"nope": "fa(1)"})
    with pytest.raises(mme.FormulaError, match="not understood"):
        mme.fit(f, df, structure={"gen": "ar1"})
    fit = mme.fit(f, df, structure={"gen": "fa(2)"})
    for df_method in ("kenward-roger", "satterthwaite"):      # KR: tests/test_kr_nonlinear.py
        assert np.all(np.isfinite(fit.emmeans("env", df_method=df_method).table["df"]))
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from mme import plot
    ax = plot.fa_biplot(fit, "gen")
    assert len(ax.collections[0].get_offsets()) == 40


#: a 2-trait fit with diagonal G₀ and R₀ vs two univariate fits: logLik achieved 2.5e-10,
#: variances 6e-6 relative (each fit's own convergence), fixed effects 2e-7
ATOL_SPLIT_LOGLIK = 1e-8
RTOL_SPLIT_VARIANCE = 1e-4
RTOL_SPLIT_BETA = 1e-5


def test_two_traits_with_diagonal_covariances_are_two_univariate_fits():
    df = _sire_bivariate()
    both = mme.fit("cbind(y1, y2) ~ 0 + trait + trait:x + (0 + trait | sire)", df,
                   residual="diag(trait)", structure={"sire": "diag"})
    one = [mme.fit(f"{t} ~ x + (1|sire)", df) for t in ("y1", "y2")]
    assert abs(both.loglik - sum(f.loglik for f in one)) < ATOL_SPLIT_LOGLIK
    vc = both.variance_components.set_index(["group", "term1"])["estimate"]
    for t, f in zip(("y1", "y2"), one):
        g, r = f.variance_components["estimate"]
        assert abs(vc[("sire", f"trait{t}")] / g - 1) < RTOL_SPLIT_VARIANCE
        assert abs(vc[("Residual", t)] / r - 1) < RTOL_SPLIT_VARIANCE
        fe = both.fixed_effects["estimate"]
        np.testing.assert_allclose([fe[f"trait{t}"], fe[f"trait{t}:x"]],
                                   f.fixed_effects["estimate"].to_numpy(), rtol=RTOL_SPLIT_BETA)


def test_multi_trait_predict_and_emmeans_by_trait():
    df = _sire_bivariate()
    df["sex"] = np.where(np.arange(len(df)) % 2, "M", "F")
    fit = mme.fit("cbind(y1, y2) ~ 0 + trait + trait:sex + (0 + trait | sire)", df)
    # predict on the wide rows = the fitted values of the long rows (unit-major)
    p = fit.predict(df.head(5))
    d = fit.internals.design.data
    fitted = fit.fitted()          # indexed by (unit, trait) of the observed responses
    assert list(fitted.index) == list(zip(d[".unit"], d["trait"].astype(str)))
    for i in range(5):
        for t in ("y1", "y2"):
            if (i, t) in fitted.index:
                assert abs(p.loc[i, t] - fitted[(i, t)]) < 1e-10
    # emmeans of sex within each trait: the trait-specific sex means
    em = fit.emmeans("sex", by="trait", df_method="kenward-roger").table
    fe = fit.fixed_effects["estimate"]
    got = em.set_index(["trait", "sex"])["emmean"]
    assert abs(got[("y1", "F")] - fe["traity1"]) < 1e-10
    assert abs(got[("y2", "M")] - (fe["traity2"] + fe["traity2:sexM"])) < 1e-10


def test_spatial_and_by_bad_input():
    df = _field()
    with pytest.raises(mme.DataError, match="'row' is missing"):
        mme.fit("y ~ x", df.assign(row=df.row.where(df.index != 7)), residual="ar1(col):ar1(row)")
    s = _sites()
    lone = pd.concat([s, s.iloc[[0]].assign(site="d")], ignore_index=True)
    lone["site"] = lone["site"].astype(str)
    with pytest.raises(mme.DataError, match=r"\['d'\].*fewer than two"):
        mme.fit("y ~ x + (1|g)", lone, residual="by(site)")


def _boundary_bivariate(seed=1):
    """A sire model whose REML genetic correlation is +1 (true 0.95, 40 sires)."""
    rng = np.random.default_rng(seed)
    ns, no = 40, 6
    sire = np.repeat(np.arange(ns), no)
    n = ns * no
    c = 0.95 * np.sqrt(2.0)
    u = rng.multivariate_normal([0, 0], [[1.0, c], [c, 2.0]], ns)
    e = rng.multivariate_normal([0, 0], [[3.0, 0.5], [0.5, 4.0]], n)
    herd = rng.integers(0, 8, n)
    Y = np.array([10.0, 20.0]) + u[sire] + e + np.c_[herd * 0.3, herd * -0.2]
    return pd.DataFrame({"y1": Y[:, 0], "y2": Y[:, 1], "sire": sire, "herd": herd.astype(str)})


#: the boundary optimum of a multi-trait fit (λ and R's parameters by COBYQA) vs a dense
#: Nelder–Mead started there: achieved improvement −2.9e-11 (none); COBYQA's final
#: trust radius 1e-7 bounds what it can leave
ATOL_BOUNDARY_OPTIMUM = 1e-7


def test_multi_trait_boundary_fit_reaches_the_constrained_optimum():
    """r_g → +1: AI-REML hands over to the Λ form with R's parameters optimised too; the
    fit ends converged and singular, at the dense optimum over PSD G₀."""
    from scipy.optimize import minimize
    df = _boundary_bivariate()
    system = mme.build_mme(mme.build_design(
        "cbind(y1, y2) ~ 0 + trait + trait:herd + (0 + trait | sire)", df))
    with pytest.warns(mme.SingularFitWarning, match="rank 1 of 2"):
        est = mme.estimate(system)
        fit = mme.assemble(est)
    assert est.route == "boundary (Λ form)" and fit.converged and fit.singular
    assert fit.genetic_correlation("sire")["estimate"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    dense = Dense(system)
    theta = est.theta_reported
    assert abs(dense.loglik(theta) - fit.loglik) < ATOL_LOGLIK
    G0s, R0 = system.split(theta)

    def unpack(x):
        L = np.array([[x[0], 0.0], [x[1], x[2]]])
        return system.theta_of([L @ L.T], np.array([[x[3], x[5]], [x[5], x[4]]]))

    w, V = np.linalg.eigh(G0s[0])
    v = V[:, -1] * np.sqrt(w[-1])
    x0 = np.array([abs(v[0]), np.sign(v[0]) * v[1], 0.0, R0[0, 0], R0[1, 1], R0[0, 1]])
    f = lambda x: -dense.loglik(unpack(x)) if np.linalg.eigvalsh(
        np.array([[x[3], x[5]], [x[5], x[4]]]))[0] > 0 else 1e10
    best = minimize(f, x0, method="Nelder-Mead",
                    options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 1500})
    assert -best.fun - fit.loglik < ATOL_BOUNDARY_OPTIMUM


def test_covary_predict_and_multi_trait_covary():
    pedf, rec = _maternal()
    ped = mme.Pedigree.from_frame(pedf)
    fit = mme.fit("bw ~ herd + (1|animal) + (1|dam) + (1|dam_pe)", rec,
                  relmat={"animal": ped, "dam": ped}, covary={"genetic": ["animal", "dam"]})
    rows = rec.iloc[:40]
    assert (rows.dam == 0).any()          # unknown dams among them: no maternal effect
    with pytest.warns(UserWarning, match="dam"):
        p = fit.predict(rows).to_numpy()
    assert np.abs(p - fit.fitted()[:40]).max() < 1e-10
    # covary joins multi-trait terms too: (0 + trait | animal) + (0 + trait | dam) → 4 × 4 G₀
    wide = rec.assign(bw2=rec.bw * 0.5 + np.random.default_rng(1).normal(0, 3, len(rec)))
    design = mme.build_design("cbind(bw, bw2) ~ 0 + trait + (0 + trait | animal) + "
                              "(0 + trait | dam)", wide, relmat={"animal": ped, "dam": ped},
                              covary={"genetic": ["animal", "dam"]})
    (blk,) = design.blocks
    assert blk.terms == ("animal:traitbw", "animal:traitbw2", "dam:traitbw", "dam:traitbw2")
    assert mme.build_mme(design).structures[0].n_params == 10


def test_multi_trait_bad_input():
    df = _sire_bivariate()
    with pytest.raises(mme.DataError, match="'y2'.*numeric"):
        mme.fit("cbind(y1, y2) ~ 0 + trait", df.assign(y2="a"))
    with pytest.raises(mme.DataError, match="y2"):
        mme.fit("cbind(y1, y2) ~ 0 + trait + (0 + trait | sire)", df.assign(y2=np.nan))
    with pytest.raises(mme.FormulaError, match="'trait'"):
        mme.fit("y1 ~ trait + (1|sire)", df)


def test_trait_missing_in_a_whole_contemporary_group():
    """Trait 2 not recorded in herd 3: its traity2:herd3 effect is not estimable and is
    reported as aliased; the fit converges as usual."""
    df = _boundary_bivariate(seed=2)
    df.loc[df.herd == "3", "y2"] = np.nan
    with pytest.warns(UserWarning, match="traity2:herd3"):
        fit = mme.fit("cbind(y1, y2) ~ 0 + trait + trait:herd + (0 + trait | sire)", df)
    assert fit.converged and "traity2:herd3" in fit.aliased
    assert "traity2:herd3" not in fit.fixed_effects.index


def test_known_spatial_variances_and_max_iter_zero():
    df = _field()
    system = mme.build_mme(mme.build_design("y ~ x + (1|gen)", df,
                                            residual="ar1(col):ar1(row)"))
    theta = system.theta_of([np.array([[1.0]])], np.array([2.0, 0.5, 0.3]))
    fit = mme.fit("y ~ x + (1|gen)", df, residual="ar1(col):ar1(row)",
                  variances={"gen": 1.0, "Residual": [2.0, 0.5, 0.3]})
    assert abs(fit.loglik - DenseSpatial(system, df).loglik(theta)) < ATOL_LOGLIK
    with pytest.raises(mme.DataError, match="ρ"):
        mme.fit("y ~ x", df, residual="ar1(col):ar1(row)", variances={"Residual": [2, 1.2, 0]})
    with pytest.warns(mme.ConvergenceWarning):
        f0 = mme.fit("y ~ x + (1|gen)", df, max_iter=0)
    assert not f0.converged and f0.n_iter == 0


def test_spatial_with_a_nugget_matches_dense():
    """AR1 ⊗ AR1 + an independent plot error (ASReml's `units`) as (1|plot): one level per
    record is allowed beside a spatial residual, where it is identifiable."""
    df = _field(seed=5)
    rng = np.random.default_rng(9)
    df["y"] = df["y"] + rng.normal(0, 0.7, len(df))          # nugget variance 0.49
    df["plot"] = np.arange(len(df)).astype(str)
    system = mme.build_mme(mme.build_design("y ~ x + (1|gen) + (1|plot)", df,
                                            residual="ar1(col):ar1(row)"))
    est = mme.estimate(system)
    assert est.converged
    dense = DenseSpatial(system, df)
    ev = Likelihood(system, "REML").evaluate(est.theta)
    assert abs(ev.loglik - dense.loglik(est.theta)) < ATOL_LOGLIK
    g = dense.gradient(est.theta)
    assert np.abs(ev.score - g).max() < RTOL_SCORE * max(np.abs(g).max(), 1.0)
    se = mme.assemble(est).variance_components["std_error"].to_numpy()
    free = ~est.at_bound
    assert np.all((np.abs(g) * se)[free] < ATOL_STATIONARY_NUGGET)
    with pytest.raises(mme.DataError, match="unidentifiable"):
        mme.fit("y ~ x + (1|plot)", df)                       # without the spatial part
