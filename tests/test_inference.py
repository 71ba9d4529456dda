"""Inference for fixed effects (issue 3): emmeans and contrasts, type-III F tests,
Kenward–Roger and Satterthwaite df, confidence intervals, likelihood-ratio tests.

Reference numbers are lme4 1.1-31 / lmerTest 3.1-3 / emmeans / pbkrtest
(tests/data/lme4, written by generate_lme4.R) and the seed's printed emmeans tables
(Cochran & Cox potassium RCBD). The Kenward–Roger and Satterthwaite pieces, which
mme computes from the MME, are checked against a dense transliteration of pbkrtest
that forms V (n × n) on small data — here, in the test only.
"""
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import mme
from mme.inference.anova import DfMethodError, type3_contrasts
from mme.inference.kenward_roger import kenward_roger
from mme.inference.lrt import lrt

from conftest import load_case

#: estimates and standard errors against lme4/emmeans
RTOL_EST = 1e-4
#: df and F statistics against lmerTest/pbkrtest/emmeans
RTOL_DF = 2e-3
#: p-values against lmerTest/emmeans
RTOL_P = 1e-3
#: MME computation against the dense n × n computation (same θ)
RTOL_DENSE = 1e-8
#: observed information: central differences of the analytic score vs the analytic Hessian
RTOL_OBS_INFO = 1e-5
#: Hutchinson (stochastic) traces against the exact ones, 200 probes, ~100 levels
RTOL_HUTCHINSON = 2e-3
#: log-likelihood / AIC / BIC (absolute), as in test_lme4_reference
ATOL_LOGLIK = 1e-3

KR_CASES = ["kfert_random", "cake_splitplot", "sleepstudy_us", "sleepstudy_diag",
            "penicillin", "pastes", "dyestuff"]

_FITS = {}


def fitted(name):
    if name not in _FITS:
        ref, df = load_case(name)
        _FITS[name] = (ref, df, mme.fit(ref["formula"], df, method=ref["method"]))
    return _FITS[name]


def _as_list(x):
    return x if isinstance(x, list) else [x]


# ============================================================ the seed's tables ==
# Printed by emmeans in the seed (lines ~150-187), from tests/data/lme4/kfert_random.csv.
SEED_FIXED = """
$emmeans
K2O_lbac emmean SE df lower.CL upper.CL
36 7.92 0.121 8 7.64 8.19
54 8.12 0.121 8 7.84 8.40
72 7.81 0.121 8 7.53 8.09
108 7.58 0.121 8 7.30 7.86
144 7.52 0.121 8 7.24 7.79

Results are averaged over the levels of: rep
Confidence level used: 0.95

$contrasts
contrast estimate SE df t.ratio p.value
c(1, 0, 0, 0, -1) 0.4 0.171 8 2.344 0.0471

Results are averaged over the levels of: rep
"""

SEED_RANDOM = """
$emmeans
K2O_lbac emmean SE df lower.CL upper.CL
36 7.92 0.162 5.57 7.51 8.32
54 8.12 0.162 5.57 7.72 8.52
72 7.81 0.162 5.57 7.41 8.21
108 7.58 0.162 5.57 7.18 7.98
144 7.52 0.162 5.57 7.11 7.92

Degrees-of-freedom method: kenward-roger
Confidence level used: 0.95

$contrasts
contrast estimate SE df t.ratio p.value
c(1, 0, 0, 0, -1) 0.4 0.171 8 2.344 0.0471

Degrees-of-freedom method: kenward-roger
"""


def _normalized(text):
    """Lines with runs of blanks collapsed (the seed is a web page), blank lines dropped."""
    return [re.sub(r"\s+", " ", ln).strip() for ln in text.strip().splitlines() if ln.strip()]


@pytest.mark.parametrize("formula,expected", [
    ("yield ~ K2O_lbac + rep", SEED_FIXED),
    ("yield ~ K2O_lbac + (1|rep)", SEED_RANDOM),
])
def test_seed_emmeans_tables_print_identically(formula, expected):
    _, df = load_case("kfert_random")
    fit = mme.fit(formula, df)
    emm = fit.emmeans("K2O_lbac")                     # Kenward-Roger by default
    con = emm.contrast([[1, 0, 0, 0, -1]])
    printed = "$emmeans\n" + str(emm) + "\n\n$contrasts\n" + str(con)
    print(printed)
    assert _normalized(printed) == _normalized(expected)


def test_seed_numbers_at_full_precision():
    _, df = load_case("kfert_random")
    fixed = mme.fit("yield ~ K2O_lbac + rep", df)
    random = mme.fit("yield ~ K2O_lbac + (1|rep)", df)
    tf, tr = fixed.emmeans("K2O_lbac").table, random.emmeans("K2O_lbac").table
    assert np.allclose(tf["df"], 8.0) and np.allclose(tf["std_error"].round(3), 0.121)
    assert np.allclose(tr["std_error"].round(3), 0.162) and np.allclose(tr["df"].round(2), 5.57)
    for fit in (fixed, random):
        c = fit.emmeans("K2O_lbac").contrast({"c1": [1, 0, 0, 0, -1]}).table.loc["c1"]
        assert c["estimate"] == pytest.approx(0.4, rel=RTOL_EST)
        assert c["std_error"] == pytest.approx(0.171, abs=5e-4)
        assert c["df"] == pytest.approx(8.0, rel=RTOL_DF)
        assert c["t_value"] == pytest.approx(2.344, abs=5e-4)
        assert c["p_value"] == pytest.approx(0.0471, abs=5e-5)


# =============================================================== the references ==
def _emm_reference_check(table, ref_rows, spec):
    ref = pd.DataFrame(ref_rows)
    assert [str(v) for v in table[spec]] == [str(v) for v in ref[spec]]
    np.testing.assert_allclose(table["emmean"], ref["emmean"], rtol=RTOL_EST)
    np.testing.assert_allclose(table["std_error"], ref["SE"], rtol=RTOL_EST)
    np.testing.assert_allclose(table["df"], ref["df"], rtol=RTOL_DF)
    np.testing.assert_allclose(table["lower_cl"], ref["lower.CL"], rtol=RTOL_EST)
    np.testing.assert_allclose(table["upper_cl"], ref["upper.CL"], rtol=RTOL_EST)


@pytest.mark.parametrize("name", KR_CASES)
def test_emmeans_against_emmeans_package(name):
    ref, _, fit = fitted(name)
    for key, method in (("emmeans_kr", "kenward-roger"), ("emmeans_satterthwaite", "satterthwaite")):
        if key not in ref:
            continue
        spec = ref[key]["specs"]
        emm = fit.emmeans(spec, df_method=method)
        _emm_reference_check(emm.table, ref[key]["table"], spec)


@pytest.mark.parametrize("name", [n for n in KR_CASES if "contrasts_kr" in load_case(n)[0]])
def test_contrasts_against_emmeans_package(name):
    ref, _, fit = fitted(name)
    # generate_lme4.R: contr = list(c1 = c(1, 0, 0, 0, -1))
    emm = fit.emmeans(ref["emmeans_kr"]["specs"])
    got = emm.contrast({"c1": [1, 0, 0, 0, -1]}).table
    for row in _as_list(ref["contrasts_kr"]):
        g = got.loc[row["contrast"]]
        assert g["estimate"] == pytest.approx(row["estimate"], rel=RTOL_EST)
        assert g["std_error"] == pytest.approx(row["SE"], rel=RTOL_EST)
        assert g["df"] == pytest.approx(row["df"], rel=RTOL_DF)
        assert g["t_value"] == pytest.approx(row["t.ratio"], rel=RTOL_DF)
        assert g["p_value"] == pytest.approx(row["p.value"], rel=RTOL_P)


@pytest.mark.parametrize("name", KR_CASES)
@pytest.mark.parametrize("method,key", [("satterthwaite", "anova_satterthwaite"),
                                        ("kenward-roger", "anova_kr")])
def test_type3_anova_against_lmertest(name, method, key):
    ref, _, fit = fitted(name)
    a = fit.anova(df_method=method)
    r = ref[key]
    terms = _as_list(r["term"])
    assert list(a.index) == terms
    if not terms:
        assert list(a.columns) == ["num_df", "den_df", "F_value", "p_value"]
        return
    np.testing.assert_array_equal(a["num_df"], _as_list(r["numdf"]))
    np.testing.assert_allclose(a["den_df"], _as_list(r["dendf"]), rtol=RTOL_DF)
    np.testing.assert_allclose(a["F_value"], _as_list(r["F"]), rtol=RTOL_DF)
    np.testing.assert_allclose(a["p_value"], _as_list(r["p"]), rtol=RTOL_P)


@pytest.mark.parametrize("name", KR_CASES)
def test_coefficient_df_against_lmertest(name):
    ref, _, fit = fitted(name)
    np.testing.assert_allclose(fit.fixed_effects["df"], ref["fixef"]["df_satterthwaite"],
                               rtol=RTOL_DF)
    ci = fit.confint(df_method="satterthwaite").loc[list(fit.fixed_names)]
    fe = fit.fixed_effects
    t = stats.t.ppf(0.975, fe["df"])
    np.testing.assert_allclose(ci["lower"], fe["estimate"] - t * fe["std_error"], rtol=1e-12)


def test_type3_hypotheses_do_not_depend_on_the_coding():
    """Reordering the factor levels (another reference level) changes the coefficients
    but not the type-III tests."""
    ref, df, fit = fitted("cake_splitplot")
    df2 = df.copy()
    df2["recipe"] = pd.Categorical(df2["recipe"], categories=["C", "A", "B"])
    df2["temperature"] = pd.Categorical(df2["temperature"],
                                        categories=[205, 175, 185, 195, 215, 225])
    fit2 = mme.fit(ref["formula"], df2)
    assert fit2.fixed_names != fit.fixed_names
    for method in ("satterthwaite", "kenward-roger"):
        a1, a2 = fit.anova(method), fit2.anova(method)
        np.testing.assert_allclose(a2["F_value"], a1["F_value"], rtol=1e-8)
        np.testing.assert_allclose(a2["den_df"], a1["den_df"], rtol=RTOL_DF)


# ========================================= dense (n × n) check of the MME pieces ==
def dense_pbkrtest(fit):
    """pbkrtest's vcovAdj (and lmerTest's Satterthwaite pieces) with V formed densely."""
    it = fit.internals
    model = it.likelihood
    G0s, s2e = model.split(it.theta)
    X = it.design.X.toarray()
    y = it.design.y
    n = X.shape[0]
    Vs = []
    for s in model.mme.structures:
        Z = s.block.Z.toarray()
        K = np.linalg.inv(s.block.Kinv.toarray())
        for i in range(s.n_params):
            Vs.append(Z @ np.kron(s.E(i), K) @ Z.T)
    Vs.append(np.eye(n))
    k = len(Vs)
    V = sum(t * Vi for t, Vi in zip(it.theta, Vs))
    Vinv = np.linalg.inv(V)
    Phi = np.linalg.inv(X.T @ Vinv @ X)
    TT = Vinv @ X
    HH = [Vi @ Vinv for Vi in Vs]
    OO = [H @ X for H in HH]
    PP = [-(OO[i].T @ TT) for i in range(k)]
    QQ = [[OO[i].T @ Vinv @ OO[j] for j in range(k)] for i in range(k)]
    IE2 = np.array([[np.sum(HH[i].T * HH[j]) - 2 * np.sum(Phi * QQ[i][j])
                     + np.sum((Phi @ PP[i]) * (PP[j] @ Phi)) for j in range(k)] for i in range(k)])
    W = 2 * np.linalg.inv(IE2)
    UU = sum(W[i, j] * (QQ[i][j] - PP[i] @ Phi @ PP[j]) for i in range(k) for j in range(k))
    PhiA = Phi + 2 * Phi @ UU @ Phi
    P = Vinv - Vinv @ X @ Phi @ X.T @ Vinv
    Py = P @ y
    obs = np.array([[-0.5 * np.trace(P @ Vs[i] @ P @ Vs[j]) + Py @ Vs[i] @ P @ Vs[j] @ Py
                     for j in range(k)] for i in range(k)])
    dPhi = np.array([-Phi @ PP[i] @ Phi for i in range(k)])
    return {"Phi": Phi, "PhiA": PhiA, "IE2": IE2, "W": W, "P": PP, "dPhi": dPhi, "obs_info": obs}


def dense_lb_ddf(L, Phi, PP, W):
    """pbkrtest::Lb_ddf, line by line."""
    L = np.atleast_2d(L)
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    A1 = A2 = 0.0
    k = len(PP)
    for i in range(k):
        for j in range(i, k):
            e = 1 if i == j else 2
            ui = Theta @ Phi @ PP[i] @ Phi
            uj = Theta @ Phi @ PP[j] @ Phi
            A1 += e * W[i, j] * np.trace(ui) * np.trace(uj)
            A2 += e * W[i, j] * np.sum(ui * uj.T)
    q = L.shape[0]
    B = (A1 + 6 * A2) / (2 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
    V0, V1, V2 = 1 + c1 * B, 1 - c2 * B, 1 - c3 * B
    rho = 1 / q * ((1 - A2 / q) / V1) ** 2 * V0 / V2
    return 4 + (q + 2) / (q * rho - 1)


def simulated(n=90, levels=14, seed=3, relmat=False):
    """Unbalanced data: a 3-level treatment, a covariate, a random intercept g."""
    rng = np.random.default_rng(seed)
    sizes = 1 + rng.multinomial(n - levels, np.full(levels, 1 / levels))
    g = np.repeat([f"g{i:02d}" for i in range(levels)], sizes)
    trt = rng.choice(["a", "b", "c"], size=n)
    x = rng.normal(size=n)
    u = rng.normal(scale=0.8, size=levels)
    y = 1 + (trt == "b") * 0.5 - (trt == "c") * 0.2 + 0.3 * x + u[np.repeat(np.arange(levels), sizes)] \
        + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "trt": trt, "x": x, "g": g})
    if not relmat:
        return df, None
    lev = [f"g{i:02d}" for i in range(levels)]
    K = 0.5 ** np.abs(np.subtract.outer(np.arange(levels), np.arange(levels)))
    return df, {"g": (lev, sp.csc_matrix(np.linalg.inv(K)))}


def _dense_cases():
    out = {name: fitted(name)[2] for name in
           ("kfert_random", "sleepstudy_us", "sleepstudy_diag", "penicillin", "pastes")}
    df, _ = simulated()
    out["unbalanced"] = mme.fit("y ~ trt + x + (1|g)", df)
    df, rel = simulated(relmat=True)
    out["relmat"] = mme.fit("y ~ trt + x + (1|g)", df, relmat=rel)
    out["random_slope"] = mme.fit("y ~ trt + x + (x|g)", simulated(n=120, seed=5)[0])
    return out


@pytest.fixture(scope="module")
def dense_cases():
    return _dense_cases()


@pytest.mark.parametrize("case", ["kfert_random", "sleepstudy_us", "sleepstudy_diag", "penicillin",
                                  "pastes", "unbalanced", "relmat", "random_slope"])
def test_kenward_roger_pieces_match_dense(dense_cases, case):
    fit = dense_cases[case]
    D = dense_pbkrtest(fit)
    kr = kenward_roger(fit, trace_method="exact")
    scale = np.abs(D["IE2"]).max()
    np.testing.assert_allclose(kr.information, D["IE2"], rtol=RTOL_DENSE, atol=RTOL_DENSE * scale)
    np.testing.assert_allclose(kr.vcov, D["Phi"], rtol=RTOL_DENSE)
    np.testing.assert_allclose(kr.vcov_adj, D["PhiA"], rtol=RTOL_DENSE,
                               atol=RTOL_DENSE * np.abs(D["PhiA"]).max())
    np.testing.assert_allclose(kr.dvcov, D["dPhi"], rtol=RTOL_DENSE,
                               atol=RTOL_DENSE * np.abs(D["dPhi"]).max())
    # KR df of each coefficient, of the emmeans and of a 2-row hypothesis
    p = len(fit.beta)
    rows = list(np.eye(p)) + ([np.ones(p) / p] if p > 1 else [])
    for l in rows:
        assert kr.df(l)[0] == pytest.approx(dense_lb_ddf(l, D["Phi"], D["P"], D["W"]),
                                            rel=RTOL_DENSE)
    if p > 2:
        L = np.eye(p)[1:3]
        assert kr.ftest(L, fit.beta)["den_df"] == pytest.approx(
            dense_lb_ddf(L, D["Phi"], D["P"], D["W"]), rel=RTOL_DENSE)


@pytest.mark.parametrize("case", ["kfert_random", "unbalanced", "relmat", "sleepstudy_us"])
def test_satterthwaite_pieces_match_dense(dense_cases, case):
    fit = dense_cases[case]
    D = dense_pbkrtest(fit)
    it = fit.internals
    np.testing.assert_allclose(it.dvcov, D["dPhi"], rtol=RTOL_DENSE,
                               atol=RTOL_DENSE * np.abs(D["dPhi"]).max())
    # vcov_theta is the inverse of the observed information (numerical in mme)
    J = np.linalg.inv(it.vcov_theta)
    np.testing.assert_allclose(J, D["obs_info"], rtol=RTOL_OBS_INFO,
                               atol=RTOL_OBS_INFO * np.abs(D["obs_info"]).max())


def test_hutchinson_traces_agree_with_exact():
    df, _ = simulated(n=1500, levels=100, seed=11)
    fit = mme.fit("y ~ trt + x + (1|g)", df)
    ex = kenward_roger(fit, trace_method="exact")
    hu = kenward_roger(fit, trace_method="hutchinson", n_probes=200)
    assert ex.trace_method == "exact" and hu.trace_method == "hutchinson" and hu.n_probes == 200
    np.testing.assert_allclose(hu.information, ex.information, rtol=RTOL_HUTCHINSON)
    L = fit.emmeans("trt").linfct
    np.testing.assert_allclose(hu.df(L), ex.df(L), rtol=RTOL_HUTCHINSON)
    np.testing.assert_allclose(hu.vcov_adj, ex.vcov_adj, rtol=RTOL_HUTCHINSON)
    # the same seed gives the same numbers
    again = mme.inference.kenward_roger.kenward_roger(fit, trace_method="hutchinson", n_probes=200)
    assert again is hu
    fresh = mme.inference.kenward_roger._compute(fit, "hutchinson", 200, mme.inference.kenward_roger.PROBE_SEED,
                                       mme.inference.kenward_roger.EXACT_MAX_Q)
    np.testing.assert_array_equal(fresh.information, hu.information)


# ======================================================= grid, by, at, contrasts ==
def test_by_groups_average_back_to_the_marginal_means():
    ref, _, fit = fitted("cake_splitplot")
    by = fit.emmeans("recipe", by="temperature").table
    assert list(by.columns[:2]) == ["recipe", "temperature"] and len(by) == 18
    marg = fit.emmeans("recipe").table
    np.testing.assert_allclose(by.groupby("recipe", sort=False)["emmean"].mean().to_numpy(),
                               marg["emmean"], rtol=1e-12)
    # recipe A at 175 °C is the intercept (treatment coding)
    assert by["emmean"].iloc[0] == pytest.approx(fit.beta[0], rel=1e-12)
    con = fit.emmeans("~ recipe | temperature").contrast("pairwise").table
    assert len(con) == 18 and set(con["temperature"]) == set(by["temperature"])
    assert "Results are averaged" not in str(fit.emmeans("recipe", by="temperature"))
    assert "Results are averaged over the levels of: temperature" in str(fit.emmeans("recipe"))


def test_covariates_at_their_mean_or_at_given_values():
    ref, df, fit = fitted("sleepstudy_us")
    b0, b1 = fit.beta
    t = fit.emmeans("Days").table
    assert t["emmean"].iloc[0] == pytest.approx(b0 + b1 * df["Days"].mean(), rel=1e-12)
    t = fit.emmeans("Days", at={"Days": [0, 9]}).table
    np.testing.assert_allclose(t["emmean"], [b0, b0 + 9 * b1], rtol=1e-12)
    np.testing.assert_allclose(t["std_error"].iloc[0], np.sqrt(kenward_roger(fit).vcov_adj[0, 0]),
                               rtol=1e-12)
    c = fit.emmeans("Days", at={"Days": [0, 1]}).contrast({"slope": [-1, 1]}).table.loc["slope"]
    assert c["estimate"] == pytest.approx(b1, rel=1e-12)
    assert c["df"] == pytest.approx(ref["anova_kr"]["dendf"], rel=RTOL_DF)


def test_multiplicity_adjustments():
    _, _, fit = fitted("kfert_random")
    emm = fit.emmeans("K2O_lbac")
    raw = emm.contrast("pairwise").table
    tk = emm.contrast("pairwise", adjust="tukey").table
    assert list(raw.index[:2]) == ["36 - 54", "36 - 72"] and len(raw) == 10
    expected = stats.studentized_range.sf(np.abs(raw["t_value"]) * np.sqrt(2), 5, raw["df"])
    np.testing.assert_allclose(tk["p_value"], expected, rtol=1e-10)
    bf = emm.contrast("pairwise", adjust="bonferroni").table
    np.testing.assert_allclose(bf["p_value"], np.minimum(1, 10 * raw["p_value"]), rtol=1e-12)
    hm = emm.contrast("pairwise", adjust="holm").table["p_value"].to_numpy()
    p = raw["p_value"].to_numpy()
    o = np.argsort(p)
    expect = np.minimum(1, np.maximum.accumulate((10 - np.arange(10)) * p[o]))
    np.testing.assert_allclose(hm[o], expect, rtol=1e-12)
    tvc = emm.contrast("trt.vs.ctrl").table
    assert list(tvc.index) == ["54 - 36", "72 - 36", "108 - 36", "144 - 36"]
    sd = emm.contrast("trt.vs.ctrl", adjust="tukey")        # → Sidak, with a note
    assert sd.adjust == "sidak" and "changed to \"sidak\"" in str(sd)
    assert "P value adjustment: tukey method for comparing a family of 5 estimates" in \
        str(emm.contrast("pairwise", adjust="tukey"))


# ================================================================ fixed-only fits ==
def test_fixed_only_model_gives_classical_results():
    _, df = load_case("kfert_random")
    fit = mme.fit("yield ~ K2O_lbac + rep", df)
    for method in ("kenward-roger", "satterthwaite", "residual"):
        assert np.all(fit.emmeans("K2O_lbac", df_method=method).table["df"] == 8)
    a = fit.anova("kenward-roger")
    assert list(a.index) == ["K2O_lbac", "rep"]
    # classical two-way ANOVA (balanced: type III = sequential): F = (ΔRSS/q) / (RSS/(n-p))
    def rss(formula):
        X = mme.fit(formula, df).internals.design.X.toarray()
        r = df["yield"] - X @ np.linalg.lstsq(X, df["yield"], rcond=None)[0]
        return float(r @ r)
    full = rss("yield ~ K2O_lbac + rep")
    for term, small, q in (("K2O_lbac", "yield ~ rep", 4), ("rep", "yield ~ K2O_lbac", 2)):
        F = (rss(small) - full) / q / (full / 8)
        assert a.loc[term, "F_value"] == pytest.approx(F, rel=1e-10)
        assert a.loc[term, "den_df"] == 8 and a.loc[term, "num_df"] == q
    asym = fit.emmeans("K2O_lbac", df_method="asymptotic")
    assert np.all(np.isinf(asym.table["df"])) and "asymp.LCL" in str(asym)


# ====================================================================== confint ==
def test_confint_fixed_and_variance_components():
    ref, _, fit = fitted("kfert_random")
    ci = fit.confint(level=0.9, df_method="kenward-roger")
    kr = kenward_roger(fit)
    se = np.sqrt(np.diag(kr.vcov_adj))
    df = kr.df(np.eye(len(fit.beta)))
    t = stats.t.ppf(0.95, df)
    fe = ci.loc[list(fit.fixed_names)]
    np.testing.assert_allclose(fe["upper"], fit.beta + t * se, rtol=1e-12)
    vc = fit.variance_components
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(ci.loc["var(rep (Intercept))", ["lower", "upper"]],
                               vc["estimate"][0] + np.array([-z, z]) * vc["std_error"][0], rtol=1e-12)
    se_ai = np.sqrt(np.diag(np.linalg.inv(fit.internals.ai)))
    np.testing.assert_allclose(vc["std_error"], se_ai, rtol=1e-10)
    assert list(ci.columns) == ["estimate", "lower", "upper"]


# ========================================================================== LRT ==
def test_lrt_refits_with_ml_when_fixed_effects_differ():
    ref_ml, df = load_case("kfert_random_ml")
    full = mme.fit("yield ~ K2O_lbac + (1|rep)", df)             # REML
    null = mme.fit("yield ~ 1 + (1|rep)", df)
    tab = lrt(null, full)
    assert "refitting model(s) with ML" in tab.attrs["note"]
    assert list(tab.columns) == ["n_params", "aic", "bic", "loglik", "deviance", "chisq", "df", "p_value"]
    row = tab.loc["fit1"]
    assert row["loglik"] == pytest.approx(ref_ml["logLik"], abs=ATOL_LOGLIK)
    assert row["aic"] == pytest.approx(ref_ml["AIC"], abs=2 * ATOL_LOGLIK)
    assert row["bic"] == pytest.approx(ref_ml["BIC"], abs=2 * ATOL_LOGLIK)
    null_ml = mme.fit("yield ~ 1 + (1|rep)", df, method="ML")
    chisq = 2 * (ref_ml["logLik"] - null_ml.loglik)
    assert row["chisq"] == pytest.approx(chisq, abs=2 * ATOL_LOGLIK)
    assert row["df"] == 4 and row["p_value"] == pytest.approx(stats.chi2.sf(chisq, 4), rel=RTOL_P)
    assert np.isnan(tab.loc["fit0", "chisq"])


def test_lrt_same_fixed_effects_uses_reml():
    _, df = load_case("kfert_random")
    mixed = mme.fit("yield ~ K2O_lbac + (1|rep)", df)
    fixed = mme.fit("yield ~ K2O_lbac", df)
    tab = lrt(mixed, fixed)
    assert list(tab.index) == ["fit1", "fit0"]                  # sorted by n_params
    assert "REML" in tab.attrs["note"]
    assert tab.loc["fit0", "chisq"] == pytest.approx(2 * (mixed.loglik - fixed.loglik), rel=1e-12)
    with pytest.raises(mme.DataError):
        lrt(mixed, mme.fit("yield ~ K2O_lbac + (1|rep)", df.iloc[:-1]))


# ==================================================================== bad input ==
def test_bad_input_raises_typed_errors():
    ref, df, fit = fitted("kfert_random")
    with pytest.raises(mme.FormulaError, match="not a variable of the fixed part"):
        fit.emmeans("nitrogen")
    with pytest.raises(mme.FormulaError):
        fit.emmeans("rep")                                     # random, not fixed
    emm = fit.emmeans("K2O_lbac")
    with pytest.raises(mme.DataError, match="has 3 weights; there are 5 means"):
        emm.contrast({"short": [1, 0, -1]})
    with pytest.raises(mme.DataError, match="sum to"):
        emm.contrast({"c": [1, 0, 0, 0, 0]})
    assert emm.contrast({"mean36": [1, 0, 0, 0, 0]}, check_sum=False).table.loc["mean36", "estimate"] \
        == pytest.approx(emm.table["emmean"][0])
    with pytest.raises(ValueError):
        emm.contrast("pairwise", adjust="scheffe")
    with pytest.raises(mme.DataError, match="not a level"):
        fit.emmeans("K2O_lbac", at={"K2O_lbac": [36, 999]})
    with pytest.raises(DfMethodError, match="unknown df_method"):
        fit.emmeans("K2O_lbac", df_method="containment")
    with pytest.raises(DfMethodError, match="residual df apply to models without random terms"):
        fit.anova(df_method="residual")
    _, df_ml, ml = fitted("kfert_random_ml")
    with pytest.raises(DfMethodError, match="only available for REML"):
        ml.emmeans("K2O_lbac")
    with pytest.raises(DfMethodError):
        ml.anova(df_method="kenward-roger")
    assert isinstance(DfMethodError("x"), ValueError)
    assert len(ml.emmeans("K2O_lbac", df_method="satterthwaite").table) == 5
    given = mme.fit("yield ~ K2O_lbac + (1|rep)", df_ml,
                    variances={"rep": 0.035, "Residual": 0.044})
    with pytest.raises(DfMethodError, match="given"):
        given.emmeans("K2O_lbac")
    assert np.all(np.isinf(given.emmeans("K2O_lbac", df_method="asymptotic").table["df"]))


def test_type3_contrasts_shape():
    _, _, fit = fitted("cake_splitplot")
    Ls = type3_contrasts(fit)
    assert {k: v.shape for k, v in Ls.items()} == {
        "recipe": (2, 18), "temperature": (5, 18), "recipe:temperature": (10, 18)}
