"""Unbalanced designs against lme4 1.1-31 / lmerTest 3.1-3 / pbkrtest 0.5.2 / emmeans 1.8.4-1
(R 4.2.2; tests/data/r_unbalanced, written by generate.R there).

On the balanced designs of tests/data/lme4 Kenward–Roger's adjusted Var(β̂) equals the
unadjusted one; here it does not (``kr_adjustment_rel`` in each JSON, and
``test_reference_discriminates_kr``), so the KR SEs, df and F tests are really checked.

Tolerances: the largest relative discrepancy achieved over the four cases is given beside
each constant; the constant is 10–30× that. The discrepancies are set by how tightly the
REML optimum is found (mme's AI-REML stops with the variance components ~1e-5 relative from
lme4's; lme4's log-likelihood is the higher one by ≤ 2e-9), so the split-plot case agrees to
~1e-8 and the others to ~1e-6.
"""
import json
import pathlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mme

DATA = pathlib.Path(__file__).parent / "data" / "r_unbalanced"
CASES = ["splitplot_unbalanced", "sleepstudy_unbalanced", "rcbd_missing", "two_random_unbalanced"]

#: REML log-likelihood, absolute (achieved 1.7e-9)
ATOL_LOGLIK = 3e-8
#: variance components (achieved 3.8e-5: two_random_unbalanced; sleepstudy covariance 3.4e-5)
RTOL_VARCOMP = 5e-4
#: fixed-effect estimates and contrast estimates (achieved 2.2e-6)
RTOL_ESTIMATE = 3e-5
#: unadjusted SEs of coefficients, sqrt(diag Φ) (achieved 1.9e-6)
RTOL_SE = 3e-5
#: KR-adjusted SEs of coefficients, sqrt(diag Φ_A) (achieved 1.9e-6)
RTOL_SE_KR = 3e-5
#: Φ_A = pbkrtest::vcovAdj, max |Δ| / max |Φ_A| (achieved 3.8e-6)
RTOL_VCOV_ADJ = 5e-5
#: KR df: coefficients, emmeans, contrasts, anova denominators (achieved 6.8e-6)
RTOL_DF_KR = 1e-4
#: Satterthwaite df: coefficients, emmeans, contrasts (achieved 3.0e-5)
RTOL_DF_SATTERTHWAITE = 5e-4
#: Satterthwaite denominator df of the F tests (achieved 3.9e-6; rcbd_missing 9.1e-7 with
#: lmerTest's type-I basis for its one-term model)
RTOL_ANOVA_DDF_SATTERTHWAITE = 4e-5
#: F values and t ratios (achieved 4.3e-6)
RTOL_STAT = 5e-5
#: p-values of t and F tests, unadjusted and Tukey (achieved 7.9e-5)
RTOL_P = 1e-3
#: estimated marginal means (achieved 1.1e-7)
RTOL_EMMEAN = 2e-6
#: SEs of emmeans and of contrasts among them, KR and Satterthwaite (achieved 7.0e-6)
RTOL_EMM_SE = 1e-4
#: confidence limits of emmeans at level 0.95 and 0.90 (achieved 3.4e-7)
RTOL_EMM_CL = 5e-6
#: each reference must move the SEs (Φ_A vs Φ) and the df (KR vs Satterthwaite) by more
#: than this many times the tolerance, or it would not tell KR from the unadjusted method
#: (smallest: splitplot_unbalanced, SE moved 1.1e-4 = 3.6 × RTOL_SE_KR)
DISCRIMINATION = 3.0


def _as_list(x):
    """jsonlite's auto_unbox writes one-element vectors as scalars."""
    return x if isinstance(x, list) else [x]


def _load(name):
    ref = json.loads((DATA / f"{name}.json").read_text())
    df = pd.read_csv(DATA / f"{name}.csv")
    for c in _as_list(ref["factors"]):
        df[c] = pd.Categorical(df[c], categories=sorted(df[c].unique()))
    return ref, df


_FITS = {}


def _case(name):
    if name not in _FITS:
        ref, df = _load(name)
        assert ref["REML"] is True
        _FITS[name] = (ref, mme.fit(ref["formula"], df, method="REML"))
    return _FITS[name]


def _close(got, want, rtol, what):
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape and got.size > 0, (what, got.shape, want.shape)
    assert np.all(np.isfinite(want)), what
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0, err_msg=what)
    return got.size


def _wald_rows(fit, Lrows, df_method, spec):
    """(estimate, SE, df) of the rows of Lrows (on fit.fixed_names) through the public
    ``emmeans(...).contrast(weights, check_sum=False)``: weights w with w·L_emm = l."""
    emm = fit.emmeans(spec, df_method=df_method)
    Lemm = emm.linfct
    W, *_ = np.linalg.lstsq(Lemm.T, np.asarray(Lrows, float).T, rcond=None)
    W = W.T
    np.testing.assert_allclose(W @ Lemm, Lrows, atol=1e-10)   # l lies in the emmeans' span
    t = emm.contrast([list(w) for w in W], check_sum=False).table
    return t["estimate"].to_numpy(), t["std_error"].to_numpy(), t["df"].to_numpy()


# --------------------------------------------------------------------------- checks --
@pytest.mark.parametrize("name", CASES)
def test_reference_discriminates_kr(name):
    """The reference is unbalanced enough: Φ_A ≠ Φ and KR df ≠ Satterthwaite df."""
    ref, _ = _load(name)
    assert set(ref["versions"]) >= {"R", "lme4", "lmerTest", "pbkrtest", "emmeans"}
    f = ref["fixef"]
    se_shift = np.max(np.abs(np.array(f["se_kr"]) / np.array(f["se"]) - 1))
    df_shift = np.max(np.abs(np.array(f["df_kr"]) / np.array(f["df_satterthwaite"]) - 1))
    assert ref["kr_adjustment_rel"] > DISCRIMINATION * RTOL_VCOV_ADJ
    assert se_shift > DISCRIMINATION * RTOL_SE_KR
    assert df_shift > DISCRIMINATION * RTOL_DF_KR


@pytest.mark.parametrize("name", CASES)
def test_loglik(name):
    ref, fit = _case(name)
    assert fit.converged
    assert fit.nobs == ref["nobs"]
    assert fit.loglik == pytest.approx(ref["logLik"], abs=ATOL_LOGLIK)
    assert fit.aic == pytest.approx(ref["AIC"], abs=2 * ATOL_LOGLIK)
    assert fit.bic == pytest.approx(ref["BIC"], abs=2 * ATOL_LOGLIK)
    assert fit.singular == ref["singular"]


@pytest.mark.parametrize("name", CASES)
def test_variance_components(name):
    ref, fit = _case(name)
    got = {(r.group, r.term1, r.term2): r.estimate for r in fit.variance_components.itertuples()}
    vc = ref["varcorr"]
    keys = [(g, v1 or "", v2 or "") for g, v1, v2 in zip(vc["grp"], vc["var1"], vc["var2"])]
    assert len(got) == len(keys)
    missing = [k for k in keys if k not in got]
    assert not missing, f"{missing} not in {list(got)}"
    _close([got[k] for k in keys], vc["vcov"], RTOL_VARCOMP, "variance components")


@pytest.mark.parametrize("name", CASES)
def test_fixed_effects_satterthwaite(name):
    ref, fit = _case(name)
    fe, f = fit.fixed_effects, ref["fixef"]
    assert list(fe.index) == _as_list(f["term"])
    _close(fe["estimate"], f["estimate"], RTOL_ESTIMATE, "estimates")
    _close(fe["std_error"], f["se"], RTOL_SE, "SE")
    _close(fe["df"], f["df_satterthwaite"], RTOL_DF_SATTERTHWAITE, "Satterthwaite df")


def _kenward_roger(fit):
    try:
        from mme.inference.kenward_roger import kenward_roger
    except ImportError:  # before the src/mme reorganisation
        from mme.kenward_roger import kenward_roger
    return kenward_roger(fit)


@pytest.mark.parametrize("name", CASES)
def test_fixed_effects_kenward_roger(name):
    """pbkrtest::vcovAdj and lmerTest's summary(ddf = "Kenward-Roger")."""
    ref, fit = _case(name)
    f = ref["fixef"]
    kr = _kenward_roger(fit)
    VA = np.array(ref["vcov_adj"], float)
    assert kr.vcov_adj.shape == VA.shape and VA.size > 0
    assert np.abs(kr.vcov_adj - VA).max() <= RTOL_VCOV_ADJ * np.abs(VA).max()
    se = np.sqrt(np.diag(kr.vcov_adj))
    df = kr.df(np.eye(len(fit.beta)))
    _close(se, f["se_kr"], RTOL_SE_KR, "KR SE")
    _close(df, f["df_kr"], RTOL_DF_KR, "KR df")
    t = fit.beta / se
    _close(t, f["t_kr"], RTOL_STAT, "KR t")
    _close(2 * stats.t.sf(np.abs(t), df), f["p_kr"], RTOL_P, "KR p")


def _compare_anova(fit, ref_tab, df_method, rtol_ddf):
    a = fit.anova(df_method=df_method)
    assert list(a.index) == _as_list(ref_tab["term"])
    n = _close(a["num_df"], _as_list(ref_tab["numdf"]), 0, "num df")
    _close(a["F_value"], _as_list(ref_tab["F"]), RTOL_STAT, "F")
    _close(a["den_df"], _as_list(ref_tab["dendf"]), rtol_ddf, "den df")
    _close(a["p_value"], _as_list(ref_tab["p"]), RTOL_P, "p")
    assert n > 0


@pytest.mark.parametrize("name", CASES)
def test_anova_kenward_roger(name):
    ref, fit = _case(name)
    _compare_anova(fit, ref["anova_kr"], "kenward-roger", RTOL_DF_KR)


# lmerTest's anova(type = 3) uses type-I (Doolittle) contrasts for a one-term model and the
# Satterthwaite F ddf depends on the basis; mme follows it (inference.anova.type1_contrasts).


@pytest.mark.parametrize("name", list(CASES))
def test_anova_satterthwaite(name):
    ref, fit = _case(name)
    _compare_anova(fit, ref["anova_satterthwaite"], "satterthwaite", RTOL_ANOVA_DDF_SATTERTHWAITE)


def test_rcbd_satterthwaite_ddf_in_lmertest_basis():
    """Pins the diagnosis of the rcbd_missing xfail: given lmerTest's hypothesis basis
    (type-I rows of the unit-upper Doolittle factor of X'X for K2O_lbac), mme's own
    Satterthwaite df per direction, combined as lmerTest's get_Fstat_ddf, reproduce
    lmerTest's den df; given the identity rows they reproduce mme's anova."""
    ref, fit = _case("rcbd_missing")
    _, df = _load("rcbd_missing")
    names = list(fit.fixed_names)
    X = np.column_stack([np.ones(len(df))] + [(df["K2O_lbac"] == lev).to_numpy(float)
                                              for lev in df["K2O_lbac"].cat.categories[1:]])
    assert names == ["(Intercept)"] + [f"K2O_lbac{lev}" for lev in df["K2O_lbac"].cat.categories[1:]]
    R = np.linalg.cholesky(X.T @ X).T
    Lt = (R / np.diag(R)[:, None])[1:]               # t(doolittle(X'X)$L), K2O_lbac rows

    def fai_cornelius(L):
        w, P = np.linalg.eigh(L @ fit.vcov_beta @ L.T)
        _, _, nu = _wald_rows(fit, P[:, ::-1].T @ L, "satterthwaite", "K2O_lbac")
        E = np.sum(nu / (nu - 2))
        return 2 * E / (E - len(nu))

    want = _as_list(ref["anova_satterthwaite"]["dendf"])[0]
    assert fai_cornelius(Lt) == pytest.approx(want, rel=RTOL_ANOVA_DDF_SATTERTHWAITE)
    own = fit.anova(df_method="satterthwaite")["den_df"].iloc[0]
    # mme's anova uses lmerTest's basis for a one-term model (6.089320 vs the identity rows' 6.088902)
    assert fai_cornelius(Lt) == pytest.approx(own, rel=1e-10)


# --------------------------------------------------------------------------- emmeans --
def _emmeans_params(with_pairs=False):
    out = []
    for name in CASES:
        ref, _ = _load(name)
        for i, e in enumerate(ref.get("emmeans") or []):
            if with_pairs and "pairwise_none" not in e:
                continue
            label = f"{name}-{e['specs']}" + (f"-by-{e['by']}" if e.get("by") else "") + \
                f"-{e['df_method']}-{e['level']}"
            out.append(pytest.param(name, i, id=label))
    return out


@pytest.mark.parametrize("name, i", _emmeans_params())
def test_emmeans(name, i):
    ref, fit = _case(name)
    e = ref["emmeans"][i]
    em = fit.emmeans(e["specs"], by=e.get("by"), df_method=e["df_method"], level=e["level"])
    got, want = em.table, pd.DataFrame(e["table"])
    assert len(want) > 0 and len(got) == len(want)
    for key in [e["specs"]] + ([e["by"]] if e.get("by") else []):
        assert got[key].astype(str).tolist() == want[key].astype(str).tolist(), key
    rtol_df = RTOL_DF_KR if e["df_method"] == "kenward-roger" else RTOL_DF_SATTERTHWAITE
    _close(got["emmean"], want["emmean"], RTOL_EMMEAN, "emmean")
    _close(got["std_error"], want["SE"], RTOL_EMM_SE, "SE")
    _close(got["df"], want["df"], rtol_df, "df")
    _close(got["lower_cl"], want["lower.CL"], RTOL_EMM_CL, "lower CL")
    _close(got["upper_cl"], want["upper.CL"], RTOL_EMM_CL, "upper CL")


@pytest.mark.parametrize("adjust", ["none", "tukey"])
@pytest.mark.parametrize("name, i", _emmeans_params(with_pairs=True))
def test_emmeans_pairwise(name, i, adjust):
    ref, fit = _case(name)
    e = ref["emmeans"][i]
    em = fit.emmeans(e["specs"], by=e.get("by"), df_method=e["df_method"], level=e["level"])
    got = em.contrast("pairwise", adjust=adjust).table
    want = pd.DataFrame(e[f"pairwise_{adjust}"])
    assert len(want) > 0 and len(got) == len(want)
    # emmeans prefixes numeric-looking levels with the factor name: K2O_lbac36 - K2O_lbac54
    assert list(got.index) == [c.strip() for c in want["contrast"]]
    rtol_df = RTOL_DF_KR if e["df_method"] == "kenward-roger" else RTOL_DF_SATTERTHWAITE
    _close(got["estimate"], want["estimate"], RTOL_ESTIMATE, "estimate")
    _close(got["std_error"], want["SE"], RTOL_EMM_SE, "SE")
    _close(got["df"], want["df"], rtol_df, "df")
    _close(got["t_value"], want["t.ratio"], RTOL_STAT, "t")
    _close(got["p_value"], want["p.value"], RTOL_P, f"p ({adjust})")
