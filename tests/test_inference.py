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

from conftest import fitted, load_case

# Tolerances: named per quantity, ~10-30x the largest discrepancy measured over the cases
# (pytest --tolerance-report; tests/README.md); "was" gives the value before 2026-12.
# -- against R (lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2, emmeans 1.8.4-1: tests/data/lme4)
#: emmeans: marginal means, their SEs and confidence limits (relative)
RTOL_EMMEAN = 1e-13          # was 1e-4; achieved 5.8e-15, margin 17x
RTOL_EMM_SE = 1e-4           # was 1e-4; achieved 5.5e-6 (kfert_random_ml), margin 18x
RTOL_EMM_CL = 1e-5           # was 1e-4; achieved 5.2e-7, margin 19x
#: emmeans df (relative): Kenward-Roger (pbkrtest) and Satterthwaite (lmerTest)
RTOL_EMM_DF_KR = 5e-5        # was 2e-3; achieved 2.1e-6 (kfert_random), margin 23x
RTOL_EMM_DF_SATT = 1e-3      # was 2e-3; achieved 4.2e-5 (kfert_random_ml), margin 24x
#: contrasts of emmeans (emmeans, Kenward-Roger): estimate, SE, df, t, p (relative)
RTOL_CON_EST = 5e-13         # was 1e-4; achieved 2.4e-14, margin 21x
RTOL_CON_SE = 2e-5           # was 1e-4; achieved 1.4e-6, margin 15x
RTOL_CON_DF = 1e-14          # was 2e-3; achieved 4.4e-16 (df 8), margin 23x
RTOL_CON_T = 2e-5            # was 2e-3; achieved 1.4e-6, margin 15x
RTOL_CON_P = 1e-4            # was 1e-3; achieved 4.9e-6, margin 20x
#: type-III anova (lmerTest): denominator df, F, p (relative), by df method
RTOL_ANOVA_DDF_SATT = 1e-4   # was 2e-3; achieved 5.4e-6 (kfert_random), margin 18x
RTOL_ANOVA_DDF_KR = 2e-7     # was 2e-3; achieved 1.1e-8 (sleepstudy_diag), margin 18x
RTOL_ANOVA_F_SATT = 5e-5     # was 2e-3; achieved 2.7e-6 (kfert_random), margin 19x
RTOL_ANOVA_F_KR = 5e-5       # was 2e-3; achieved 2.7e-6 (kfert_random), margin 19x
RTOL_ANOVA_P_SATT = 3e-4     # was 1e-3; achieved 1.4e-5 (kfert_random), margin 21x
RTOL_ANOVA_P_KR = 1e-4       # was 1e-3; achieved 6.7e-6 (kfert_random), margin 15x
#: Satterthwaite df of single coefficients (lmerTest)
RTOL_COEF_DF = 1e-4          # was 2e-3; achieved 5.4e-6 (kfert_random), margin 18x
#: Wald confidence limits of the coefficients from lmerTest's estimate, SE and df, in SEs
ATOL_CI_IN_SE = 1e-4         # new; achieved 5.3e-6, margin 19x
#: the Wald t test of the intercept of intercept-only models (lmerTest's coefficient table)
RTOL_COEF_T = 3e-6           # new; achieved 1.6e-7, margin 19x
RTOL_COEF_P = 1e-4           # new; achieved 6.4e-6, margin 16x
#: lmerTest's type-III hypothesis matrices are rounded to 7 significant digits
#: (1/6 → 0.1666667): the tolerance is that precision, not what mme reaches
ATOL_TYPE3_R = 5e-8          # new; achieved 3.3e-8 (the rounding)
#: row space (projector L⁺L) against lmerTest's, whatever the basis; same 7-digit limit
ATOL_TYPE3_ROWSPACE = 1e-7   # new; achieved 4.3e-8 (the rounding)
#: ML log-likelihood, AIC, BIC, deviance and χ² of the LRT against lme4 (absolute)
ATOL_LOGLIK = 1e-8           # was 1e-3 (2e-3 for AIC, BIC); achieved 5.3e-10, margin 19x
#: LRT p-value from the χ² (relative)
RTOL_LRT_P = 5e-9            # was 1e-3; achieved 2.3e-10, margin 22x

# -- against dense n × n computations at the same θ (round-off only), of the largest entry
#: Kenward-Roger: expected information, Var(β̂), its adjusted version, ∂Var(β̂)/∂θ, df
RTOL_KR_INFO = 1e-12         # was 1e-8; achieved 3.9e-14, margin 26x
RTOL_KR_VCOV = 1e-11         # was 1e-8; achieved 3.7e-13, margin 27x
RTOL_KR_VCOV_ADJ = 2e-11     # was 1e-8; achieved 1.0e-12, margin 20x
RTOL_KR_DVCOV = 2e-11        # was 1e-8; achieved 8.0e-13, margin 25x
RTOL_KR_DF = 2e-11           # was 1e-8; achieved 7.7e-13 (relative), margin 26x
#: Satterthwaite's ∂Var(β̂)/∂θ
RTOL_SATT_DVCOV = 5e-13      # was 1e-8; achieved 3.1e-14, margin 16x
#: observed information: central differences of the analytic score vs the dense Hessian
RTOL_OBS_INFO = 5e-7         # was 1e-5; achieved 3.0e-8, margin 17x
#: SEs of the variance components against √diag of the dense AI⁻¹ (½ y'PVᵢPVⱼPy), relative
RTOL_VC_SE_DENSE = 1e-11     # was 1e-10 (against fit.internals.ai itself); achieved 4.8e-13, 21x
#: Hutchinson (stochastic: 200 probes, fixed seed) traces against the exact ones. A Monte
#: Carlo error, not round-off: the information and df keep their statistical tolerance
RTOL_HUTCHINSON_INFO = 2e-3      # was 2e-3; achieved 1.2e-3 (Monte Carlo error)
RTOL_HUTCHINSON_DF = 2e-3        # was 2e-3; achieved 4.5e-4 (Monte Carlo error)
RTOL_HUTCHINSON_VCOV_ADJ = 2e-4  # was 2e-3; achieved 9.8e-6, margin 20x

# -- identities between outputs of one fit (round-off only)
RTOL_IDENTITY = 2e-14        # was 1e-12 / 1e-10; achieved 8.9e-16, margin 22x
#: Tukey's p from scipy's studentized range at emmeans' zapsmall'd df against the same at
#: the raw df: achieved 3.5e-14 (one of 10; 0 elsewhere)
RTOL_TUKEY_IDENTITY = 5e-13
#: type-III F and den df after recoding the factors (another reference level): the same
#: hypotheses, so the same numbers up to round-off in another basis
RTOL_RECODED_F = 5e-11       # was 1e-8; achieved 1.9e-12, margin 26x
RTOL_RECODED_DDF = 1e-10     # was 2e-3; achieved 6.5e-12, margin 15x
#: classical ANOVA F (and its p) of a fixed-only model against ΔRSS from least squares
RTOL_CLASSICAL_F = 2e-13     # was 1e-10; achieved 8.1e-15, margin 25x

# -- the seed's printed emmeans tables: half a unit of the last printed digit
PRINTED_2_DECIMALS = 5e-3
PRINTED_3_DECIMALS = 5e-4
PRINTED_4_DECIMALS = 5e-5

KR_CASES = ["kfert_random", "cake_splitplot", "sleepstudy_us", "sleepstudy_diag",
            "penicillin", "pastes", "dyestuff"]
#: cases whose type-III anova has terms (the others are intercept-only: lmerTest's is empty)
ANOVA_CASES = [n for n in KR_CASES if load_case(n)[0]["anova_kr"]["term"]]
INTERCEPT_ONLY = [n for n in KR_CASES if n not in ANOVA_CASES]
#: (case, reference key) for every emmeans table in the references
EMMEANS_REFS = [(n, key) for n in KR_CASES + ["kfert_random_ml"]
                for key in ("emmeans_kr", "emmeans_satterthwaite") if key in load_case(n)[0]]


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
    _, _, fit = fitted("kfert_random", formula)
    emm = fit.emmeans("K2O_lbac")                     # Kenward-Roger by default
    con = emm.contrast([[1, 0, 0, 0, -1]])
    printed = "$emmeans\n" + str(emm) + "\n\n$contrasts\n" + str(con)
    print(printed)
    assert _normalized(printed) == _normalized(expected)


def test_seed_numbers_at_full_precision():
    """The seed's printed numbers, at the precision printed (3 or 4 decimals)."""
    _, _, fixed = fitted("kfert_random", "yield ~ K2O_lbac + rep")
    _, _, random = fitted("kfert_random")
    tf, tr = fixed.emmeans("K2O_lbac").table, random.emmeans("K2O_lbac").table
    np.testing.assert_allclose(tf["df"], 8.0, rtol=0, atol=0)          # residual df: exact
    np.testing.assert_allclose(tf["std_error"], 0.121, rtol=0, atol=PRINTED_3_DECIMALS)
    np.testing.assert_allclose(tr["std_error"], 0.162, rtol=0, atol=PRINTED_3_DECIMALS)
    np.testing.assert_allclose(tr["df"], 5.57, rtol=0, atol=PRINTED_2_DECIMALS)
    for t in (tf, tr):
        np.testing.assert_allclose(t["emmean"], [7.92, 8.12, 7.81, 7.58, 7.52], rtol=0,
                                   atol=PRINTED_2_DECIMALS)
    for fit in (fixed, random):
        c = fit.emmeans("K2O_lbac").contrast({"c1": [1, 0, 0, 0, -1]}).table.loc["c1"]
        np.testing.assert_allclose(c[["estimate", "std_error", "t_value"]].astype(float),
                                   [0.4, 0.171, 2.344], rtol=0, atol=PRINTED_3_DECIMALS)
        np.testing.assert_allclose(c["df"], 8.0, rtol=RTOL_IDENTITY, atol=0)
        np.testing.assert_allclose(c["p_value"], 0.0471, rtol=0, atol=PRINTED_4_DECIMALS)


# =============================================================== the references ==
def _emm_reference_check(table, ref_rows, spec, rtol_df):
    ref = pd.DataFrame(ref_rows)
    assert len(ref) > 0 and len(table) == len(ref)
    assert [str(v) for v in table[spec]] == [str(v) for v in ref[spec]]
    np.testing.assert_allclose(table["emmean"], ref["emmean"], rtol=RTOL_EMMEAN, atol=0)
    np.testing.assert_allclose(table["std_error"], ref["SE"], rtol=RTOL_EMM_SE, atol=0)
    np.testing.assert_allclose(table["df"], ref["df"], rtol=rtol_df, atol=0)
    np.testing.assert_allclose(table["lower_cl"], ref["lower.CL"], rtol=RTOL_EMM_CL, atol=0)
    np.testing.assert_allclose(table["upper_cl"], ref["upper.CL"], rtol=RTOL_EMM_CL, atol=0)


@pytest.mark.parametrize("name,key", EMMEANS_REFS)
def test_emmeans_against_emmeans_package(name, key):
    ref, _, fit = fitted(name)
    method, rtol_df = {"emmeans_kr": ("kenward-roger", RTOL_EMM_DF_KR),
                       "emmeans_satterthwaite": ("satterthwaite", RTOL_EMM_DF_SATT)}[key]
    spec = ref[key]["specs"]
    emm = fit.emmeans(spec, df_method=method)
    _emm_reference_check(emm.table, ref[key]["table"], spec, rtol_df)


@pytest.mark.parametrize("name", [n for n in KR_CASES if "contrasts_kr" in load_case(n)[0]])
def test_contrasts_against_emmeans_package(name):
    ref, _, fit = fitted(name)
    # generate_lme4.R: contr = list(c1 = c(1, 0, 0, 0, -1))
    emm = fit.emmeans(ref["emmeans_kr"]["specs"])
    got = emm.contrast({"c1": [1, 0, 0, 0, -1]}).table
    rows = _as_list(ref["contrasts_kr"])
    assert list(got.index) == [r["contrast"] for r in rows]
    for row in rows:
        g = got.loc[row["contrast"]]
        np.testing.assert_allclose(g["estimate"], row["estimate"], rtol=RTOL_CON_EST, atol=0)
        np.testing.assert_allclose(g["std_error"], row["SE"], rtol=RTOL_CON_SE, atol=0)
        np.testing.assert_allclose(g["df"], row["df"], rtol=RTOL_CON_DF, atol=0)
        np.testing.assert_allclose(g["t_value"], row["t.ratio"], rtol=RTOL_CON_T, atol=0)
        np.testing.assert_allclose(g["p_value"], row["p.value"], rtol=RTOL_CON_P, atol=0)


@pytest.mark.parametrize("name", ANOVA_CASES)
@pytest.mark.parametrize("method,key", [("satterthwaite", "anova_satterthwaite"),
                                        ("kenward-roger", "anova_kr")])
def test_type3_anova_against_lmertest(name, method, key):
    ref, _, fit = fitted(name)
    a = fit.anova(df_method=method)
    r = ref[key]
    terms = _as_list(r["term"])
    assert terms and list(a.index) == terms
    kr = method == "kenward-roger"
    np.testing.assert_array_equal(a["num_df"], _as_list(r["numdf"]))
    np.testing.assert_allclose(a["den_df"], _as_list(r["dendf"]), atol=0,
                               rtol=RTOL_ANOVA_DDF_KR if kr else RTOL_ANOVA_DDF_SATT)
    np.testing.assert_allclose(a["F_value"], _as_list(r["F"]), atol=0,
                               rtol=RTOL_ANOVA_F_KR if kr else RTOL_ANOVA_F_SATT)
    np.testing.assert_allclose(a["p_value"], _as_list(r["p"]), atol=0,
                               rtol=RTOL_ANOVA_P_KR if kr else RTOL_ANOVA_P_SATT)


@pytest.mark.parametrize("name", INTERCEPT_ONLY)
def test_intercept_only_models_have_lmertests_empty_anova_and_intercept_test(name):
    """lmerTest's type-III anova of an intercept-only model has no rows (the intercept is
    not a term); its only test is the coefficient table's t test of the intercept."""
    ref, _, fit = fitted(name)
    for method, key in (("satterthwaite", "anova_satterthwaite"), ("kenward-roger", "anova_kr")):
        assert _as_list(ref[key]["term"]) == []
        a = fit.anova(df_method=method)
        assert len(a) == 0 and list(a.columns) == ["num_df", "den_df", "F_value", "p_value"]
    fe = fit.fixed_effects.loc["(Intercept)"]
    f = ref["fixef"]
    t_ref = f["estimate"][0] / f["se"][0]
    p_ref = 2 * stats.t.sf(abs(t_ref), f["df_satterthwaite"][0])
    np.testing.assert_allclose(fe["t_value"], t_ref, rtol=RTOL_COEF_T, atol=0)
    np.testing.assert_allclose(fe["df"], f["df_satterthwaite"][0], rtol=RTOL_COEF_DF, atol=0)
    np.testing.assert_allclose(fe["p_value"], p_ref, rtol=RTOL_COEF_P, atol=0)


@pytest.mark.parametrize("name", KR_CASES)
def test_coefficient_df_and_confint_against_lmertest(name):
    ref, _, fit = fitted(name)
    np.testing.assert_allclose(fit.fixed_effects["df"], ref["fixef"]["df_satterthwaite"],
                               rtol=RTOL_COEF_DF, atol=0)
    ci = fit.confint(method="Wald", df_method="satterthwaite", tidy=True).loc[
        list(fit.fixed_names)]
    # lmerTest's confint is profile-based; the Wald interval from its estimate, SE and df,
    # compared in units of the SE (a bound near 0 has no relative accuracy)
    f = ref["fixef"]
    est, se = np.array(f["estimate"]), np.array(f["se"])
    t = stats.t.ppf(0.975, f["df_satterthwaite"])
    for col, sign in (("lower", -1), ("upper", 1)):
        np.testing.assert_allclose((ci[col].to_numpy() - (est + sign * t * se)) / se, 0,
                                   rtol=0, atol=ATOL_CI_IN_SE)


@pytest.mark.parametrize("name", [n for n in ANOVA_CASES if "contrasts_type3" in load_case(n)[0]])
def test_type3_contrasts_are_lmertests(name):
    """The hypothesis matrices of the type-III tests against lmerTest's
    ``get_contrasts_type3`` (written by generate_lme4.R). With one fixed term lmerTest's
    anova uses type-I (Doolittle) rows instead: there only the row space must agree."""
    ref, _, fit = fitted(name)
    Ls = type3_contrasts(fit)
    assert list(Ls) == list(ref["contrasts_type3"])
    for term, r in ref["contrasts_type3"].items():
        R = np.atleast_2d(np.array(r["L"], dtype=float))
        L = Ls[term]
        assert r["columns"] == list(fit.fixed_names) and L.shape == R.shape
        proj = lambda M: np.linalg.pinv(M) @ M                     # noqa: E731
        np.testing.assert_allclose(proj(L), proj(R), rtol=0, atol=ATOL_TYPE3_ROWSPACE)
        if len(Ls) > 1:            # lmerTest's type-III basis (not its one-term fallback)
            np.testing.assert_allclose(L, R, rtol=0, atol=ATOL_TYPE3_R)


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
        np.testing.assert_allclose(a2["F_value"], a1["F_value"], rtol=RTOL_RECODED_F, atol=0)
        np.testing.assert_allclose(a2["den_df"], a1["den_df"], rtol=RTOL_RECODED_DDF, atol=0)


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


DENSE_CASES = ["kfert_random", "sleepstudy_us", "sleepstudy_diag", "penicillin", "pastes",
               "unbalanced", "relmat", "random_slope"]


@pytest.mark.parametrize("case", DENSE_CASES)
def test_kenward_roger_pieces_match_dense(dense_cases, case):
    fit = dense_cases[case]
    D = dense_pbkrtest(fit)
    kr = kenward_roger(fit, trace_method="exact")
    np.testing.assert_allclose(kr.information, D["IE2"], rtol=0,
                               atol=RTOL_KR_INFO * np.abs(D["IE2"]).max())
    np.testing.assert_allclose(kr.vcov, D["Phi"], rtol=0,
                               atol=RTOL_KR_VCOV * np.abs(D["Phi"]).max())
    np.testing.assert_allclose(kr.vcov_adj, D["PhiA"], rtol=0,
                               atol=RTOL_KR_VCOV_ADJ * np.abs(D["PhiA"]).max())
    np.testing.assert_allclose(kr.dvcov, D["dPhi"], rtol=0,
                               atol=RTOL_KR_DVCOV * np.abs(D["dPhi"]).max())
    # KR df of each coefficient, of the emmeans and of a 2-row hypothesis
    p = len(fit.beta)
    rows = list(np.eye(p)) + ([np.ones(p) / p] if p > 1 else [])
    got = [kr.df(l)[0] for l in rows]
    want = [dense_lb_ddf(l, D["Phi"], D["P"], D["W"]) for l in rows]
    if p > 2:
        L = np.eye(p)[1:3]
        got.append(kr.ftest(L, fit.beta)["den_df"])
        want.append(dense_lb_ddf(L, D["Phi"], D["P"], D["W"]))
    np.testing.assert_allclose(got, want, rtol=RTOL_KR_DF, atol=0)


@pytest.mark.parametrize("case", ["kfert_random", "unbalanced", "relmat", "sleepstudy_us"])
def test_satterthwaite_pieces_match_dense(dense_cases, case):
    fit = dense_cases[case]
    D = dense_pbkrtest(fit)
    it = fit.internals
    np.testing.assert_allclose(it.dvcov, D["dPhi"], rtol=0,
                               atol=RTOL_SATT_DVCOV * np.abs(D["dPhi"]).max())
    # vcov_theta is the inverse of the observed information (numerical in mme)
    J = np.linalg.inv(it.vcov_theta)
    np.testing.assert_allclose(J, D["obs_info"], rtol=0,
                               atol=RTOL_OBS_INFO * np.abs(D["obs_info"]).max())


def dense_average_information(fit):
    """AIᵢⱼ = ½ y'P Vᵢ P Vⱼ P y, P = V⁻¹ − V⁻¹X(X'V⁻¹X)⁻¹X'V⁻¹, from V formed densely at θ̂."""
    it = fit.internals
    X = it.design.X.toarray()
    y = it.design.y
    n = X.shape[0]
    Vs = []
    for s in it.mme.structures:
        Z = s.block.Z.toarray()
        K = np.linalg.inv(s.block.Kinv.toarray())
        for i in range(s.n_params):
            Vs.append(Z @ np.kron(s.E(i), K) @ Z.T)
    Vs.append(np.eye(n))
    V = sum(t * Vi for t, Vi in zip(it.theta, Vs))
    Vinv = np.linalg.inv(V)
    VinvX = Vinv @ X
    P = Vinv - VinvX @ np.linalg.solve(X.T @ VinvX, VinvX.T)
    Py = P @ y
    u = [P @ (Vi @ Py) for Vi in Vs]
    return np.array([[0.5 * (Vs[i] @ Py) @ u[j] for j in range(len(Vs))] for i in range(len(Vs))])


@pytest.mark.parametrize("case", ["kfert_random", "sleepstudy_us", "sleepstudy_diag",
                                  "penicillin", "pastes", "relmat", "random_slope"])
def test_variance_component_standard_errors_are_the_dense_ai_inverse(dense_cases, case):
    """SE(θ̂) = √diag AI⁻¹ with AI formed from V in the test (lme4 gives no SEs of
    variance components, so there is no R reference)."""
    fit = dense_cases[case]
    se = np.sqrt(np.diag(np.linalg.inv(dense_average_information(fit))))
    np.testing.assert_allclose(fit.variance_components["std_error"], se, rtol=RTOL_VC_SE_DENSE,
                               atol=0)


def test_hutchinson_traces_agree_with_exact():
    df, _ = simulated(n=1500, levels=100, seed=11)
    fit = mme.fit("y ~ trt + x + (1|g)", df)
    ex = kenward_roger(fit, trace_method="exact")
    hu = kenward_roger(fit, trace_method="hutchinson", n_probes=200)
    assert ex.trace_method == "exact" and hu.trace_method == "hutchinson" and hu.n_probes == 200
    np.testing.assert_allclose(hu.information, ex.information, rtol=RTOL_HUTCHINSON_INFO, atol=0)
    L = fit.emmeans("trt").linfct
    np.testing.assert_allclose(hu.df(L), ex.df(L), rtol=RTOL_HUTCHINSON_DF, atol=0)
    np.testing.assert_allclose(hu.vcov_adj, ex.vcov_adj, rtol=RTOL_HUTCHINSON_VCOV_ADJ, atol=0)
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
                               marg["emmean"], rtol=RTOL_IDENTITY, atol=0)
    # recipe A at 175 °C is the intercept (treatment coding)
    np.testing.assert_allclose(by["emmean"].iloc[0], fit.beta[0], rtol=RTOL_IDENTITY, atol=0)
    con = fit.emmeans("~ recipe | temperature").contrast("pairwise").table
    assert len(con) == 18 and set(con["temperature"]) == set(by["temperature"])
    assert "Results are averaged" not in str(fit.emmeans("recipe", by="temperature"))
    assert "Results are averaged over the levels of: temperature" in str(fit.emmeans("recipe"))


def test_covariates_at_their_mean_or_at_given_values():
    ref, df, fit = fitted("sleepstudy_us")
    b0, b1 = fit.beta
    t = fit.emmeans("Days").table
    np.testing.assert_allclose(t["emmean"].iloc[0], b0 + b1 * df["Days"].mean(),
                               rtol=RTOL_IDENTITY, atol=0)
    t = fit.emmeans("Days", at={"Days": [0, 9]}).table
    np.testing.assert_allclose(t["emmean"], [b0, b0 + 9 * b1], rtol=RTOL_IDENTITY, atol=0)
    np.testing.assert_allclose(t["std_error"].iloc[0], np.sqrt(kenward_roger(fit).vcov_adj[0, 0]),
                               rtol=RTOL_IDENTITY, atol=0)
    c = fit.emmeans("Days", at={"Days": [0, 1]}).contrast({"slope": [-1, 1]}).table.loc["slope"]
    np.testing.assert_allclose(c["estimate"], b1, rtol=RTOL_IDENTITY, atol=0)
    # the slope's KR df is pbkrtest's F-test ddf for Days
    np.testing.assert_allclose(c["df"], ref["anova_kr"]["dendf"], rtol=RTOL_ANOVA_DDF_KR, atol=0)


def test_multiplicity_adjustments():
    """Adjustments as identities of the unadjusted p values (emmeans' own numbers for every
    family and adjustment: test_emmeans_contrasts.py)."""
    _, _, fit = fitted("kfert_random")
    emm = fit.emmeans("K2O_lbac")
    raw = emm.contrast("pairwise", adjust="none").table
    tk = emm.contrast("pairwise").table                     # Tukey by default, as emmeans
    # emmeans prefixes numeric-looking levels with the factor name
    assert list(raw.index[:2]) == ["K2O_lbac36 - K2O_lbac54", "K2O_lbac36 - K2O_lbac72"]
    assert len(raw) == 10
    expected = stats.studentized_range.sf(np.abs(raw["t_value"]) * np.sqrt(2), 5, raw["df"])
    np.testing.assert_allclose(tk["p_value"], expected, rtol=RTOL_TUKEY_IDENTITY, atol=0)
    bf = emm.contrast("pairwise", adjust="bonferroni").table
    np.testing.assert_allclose(bf["p_value"], np.minimum(1, 10 * raw["p_value"]),
                               rtol=RTOL_IDENTITY, atol=0)
    hm = emm.contrast("pairwise", adjust="holm").table["p_value"].to_numpy()
    p = raw["p_value"].to_numpy()
    o = np.argsort(p)
    expect = np.minimum(1, np.maximum.accumulate((10 - np.arange(10)) * p[o]))
    np.testing.assert_allclose(hm[o], expect, rtol=RTOL_IDENTITY, atol=0)
    tvc = emm.contrast("trt.vs.ctrl").table
    assert list(tvc.index) == ["K2O_lbac54 - K2O_lbac36", "K2O_lbac72 - K2O_lbac36",
                               "K2O_lbac108 - K2O_lbac36", "K2O_lbac144 - K2O_lbac36"]
    sd = emm.contrast("trt.vs.ctrl", adjust="tukey")        # → Sidak, with a note
    assert sd.adjust == "sidak" and "changed to \"sidak\"" in str(sd)
    assert "P value adjustment: tukey method for comparing a family of 5 estimates" in \
        str(emm.contrast("pairwise", adjust="tukey"))


# ================================================================ fixed-only fits ==
def test_fixed_only_model_gives_classical_results():
    _, df, fit = fitted("kfert_random", "yield ~ K2O_lbac + rep")
    for method in ("kenward-roger", "satterthwaite", "residual"):
        assert np.all(fit.emmeans("K2O_lbac", df_method=method).table["df"] == 8)
    a = fit.anova("kenward-roger")
    assert list(a.index) == ["K2O_lbac", "rep"]
    # classical two-way ANOVA (balanced: type III = sequential): F = (ΔRSS/q) / (RSS/(n-p))
    def rss(formula):
        X = fitted("kfert_random", formula)[2].internals.design.X.toarray()
        r = df["yield"] - X @ np.linalg.lstsq(X, df["yield"], rcond=None)[0]
        return float(r @ r)
    full = rss("yield ~ K2O_lbac + rep")
    for term, small, q in (("K2O_lbac", "yield ~ rep", 4), ("rep", "yield ~ K2O_lbac", 2)):
        F = (rss(small) - full) / q / (full / 8)
        np.testing.assert_allclose(a.loc[term, "F_value"], F, rtol=RTOL_CLASSICAL_F, atol=0)
        assert a.loc[term, "den_df"] == 8 and a.loc[term, "num_df"] == q
        np.testing.assert_allclose(a.loc[term, "p_value"], stats.f.sf(F, q, 8),
                                   rtol=RTOL_CLASSICAL_F, atol=0)
    asym = fit.emmeans("K2O_lbac", df_method="asymptotic")
    assert np.all(np.isinf(asym.table["df"])) and "asymp.LCL" in str(asym)


# ====================================================================== confint ==
def test_confint_fixed_and_variance_components():
    """Wald intervals with Kenward–Roger df and adjusted SE for the fixed effects; the
    variance parameters have none (as lme4's Wald; their profile and bootstrap intervals
    are in test_intervals.py), and their AI-REML SEs are the dense average information's."""
    ref, _, fit = fitted("kfert_random")
    ci = fit.confint(level=0.9, method="Wald", df_method="kenward-roger", tidy=True)
    kr = kenward_roger(fit)
    se = np.sqrt(np.diag(kr.vcov_adj))
    df = kr.df(np.eye(len(fit.beta)))
    t = stats.t.ppf(0.95, df)
    fe = ci.loc[list(fit.fixed_names)]
    np.testing.assert_allclose(fe["upper"], fit.beta + t * se, rtol=RTOL_IDENTITY, atol=0)
    np.testing.assert_allclose(fe["lower"], fit.beta - t * se, rtol=RTOL_IDENTITY, atol=0)
    vc = fit.variance_components
    assert ci.loc[["sd_(Intercept)|rep", "sigma"], ["lower", "upper"]].isna().all().all()
    np.testing.assert_allclose(ci.loc[["sd_(Intercept)|rep", "sigma"], "estimate"],
                               np.sqrt(vc["estimate"]), rtol=RTOL_IDENTITY, atol=0)
    # the SEs are those of the dense average information (not fit.internals.ai itself)
    se_dense = np.sqrt(np.diag(np.linalg.inv(dense_average_information(fit))))
    np.testing.assert_allclose(vc["std_error"], se_dense, rtol=RTOL_VC_SE_DENSE, atol=0)
    assert list(ci.columns) == ["estimate", "lower", "upper"]


# ========================================================================== LRT ==
def test_lrt_refits_with_ml_when_fixed_effects_differ():
    ref_ml, _, null_ml = fitted("kfert_random_ml", "yield ~ 1 + (1|rep)", method="ML")
    _, _, full = fitted("kfert_random")                          # REML
    _, _, null = fitted("kfert_random", "yield ~ 1 + (1|rep)")
    tab = lrt(null, full)
    assert "refitting model(s) with ML" in tab.attrs["note"]
    assert list(tab.columns) == ["n_params", "aic", "bic", "loglik", "deviance", "chisq", "df", "p_value"]
    row = tab.loc["fit1"]
    # the full model refitted with ML is lme4's ML fit (kfert_random_ml.json)
    np.testing.assert_allclose(row[["loglik", "aic", "bic", "deviance"]].astype(float),
                               [ref_ml["logLik"], ref_ml["AIC"], ref_ml["BIC"], -2 * ref_ml["logLik"]],
                               rtol=0, atol=ATOL_LOGLIK)
    chisq = 2 * (ref_ml["logLik"] - null_ml.loglik)
    np.testing.assert_allclose(row["chisq"], chisq, rtol=0, atol=ATOL_LOGLIK)
    assert row["df"] == 4
    np.testing.assert_allclose(row["p_value"], stats.chi2.sf(chisq, 4), rtol=RTOL_LRT_P, atol=0)
    assert np.isnan(tab.loc["fit0", "chisq"])


def test_lrt_same_fixed_effects_uses_reml():
    _, df, mixed = fitted("kfert_random")
    _, _, fixed = fitted("kfert_random", "yield ~ K2O_lbac")
    tab = lrt(mixed, fixed)
    assert list(tab.index) == ["fit1", "fit0"]                  # sorted by n_params
    assert "REML" in tab.attrs["note"]
    np.testing.assert_allclose(tab.loc["fit0", "chisq"], 2 * (mixed.loglik - fixed.loglik_reml),
                               rtol=RTOL_IDENTITY, atol=0)
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
    np.testing.assert_allclose(
        emm.contrast({"mean36": [1, 0, 0, 0, 0]}, check_sum=False).table.loc["mean36", "estimate"],
        emm.table["emmean"][0], rtol=RTOL_IDENTITY, atol=0)
    with pytest.raises(mme.OptionError):
        emm.contrast("pairwise", adjust="scheffé")
    with pytest.raises(mme.DataError, match="not a level"):
        fit.emmeans("K2O_lbac", at={"K2O_lbac": [36, 999]})
    with pytest.raises(DfMethodError, match="unknown df_method"):
        fit.emmeans("K2O_lbac", df_method="containment")
    with pytest.raises(DfMethodError, match="residual df apply to models without random terms"):
        fit.anova(df_method="residual")
    ref_ml, df_ml, ml = fitted("kfert_random_ml")
    with pytest.raises(DfMethodError, match="only available for REML"):
        ml.emmeans("K2O_lbac")
    with pytest.raises(DfMethodError):
        ml.anova(df_method="kenward-roger")
    assert isinstance(DfMethodError("x"), ValueError)
    # Satterthwaite is available for ML fits: emmeans' own numbers (generate_lme4.R)
    _emm_reference_check(ml.emmeans("K2O_lbac", df_method="satterthwaite").table,
                         ref_ml["emmeans_satterthwaite"]["table"], "K2O_lbac", RTOL_EMM_DF_SATT)
    given = mme.fit("yield ~ K2O_lbac + (1|rep)", df_ml,
                    variances={"rep": 0.035, "Residual": 0.044})
    with pytest.raises(DfMethodError, match="given"):
        given.emmeans("K2O_lbac")
    asym = given.emmeans("K2O_lbac", df_method="asymptotic").table
    assert np.all(np.isinf(asym["df"]))
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(asym["upper_cl"], asym["emmean"] + z * asym["std_error"],
                               rtol=RTOL_IDENTITY, atol=0)
