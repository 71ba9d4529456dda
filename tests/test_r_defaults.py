"""R's defaults (issue 14): linear models as R's lm, boundary fits that end cleanly,
formulas as R reads them, and labels that tell the truth.

References: tests/data/r_defaults/*.json, written by tests/data/r_defaults/generate.R
(R 4.2.2, lme4 1.1-31; versions in each JSON). Tolerances are named per quantity at
~10-30x the discrepancy achieved (``pytest --tolerance-report``; tests/README.md).
"""
import json
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest

import mme
from mme.engine import reml

DATA = pathlib.Path(__file__).parent / "data" / "r_defaults"

# -- linear models as R's lm ---------------------------------------------------------
#: logLik (ML and REML) against lm's, absolute (AIC and BIC: 2x)
ATOL_LM_LOGLIK = 1e-10           # new; achieved 7.3e-12 (the REML logLik of rcbd_weighted), margin 14x
#: coefficients, and SEs and sigma, against lm's (relative; lm's QR vs the MME's Cholesky)
RTOL_LM_COEF = 1e-12             # new; achieved 7.4e-14, margin 14x
RTOL_LM_SE = 2e-13               # new; achieved 1.05e-14 (quadratic_I), margin 19x
#: ... with raw powers x, x² (x up to 144): X'X has condition number 4.9e9, and the MME's
#: Cholesky of X'X loses what lm's QR keeps (cond(X) ≈ 7e4)
RTOL_LM_COEF_RAW_POWERS = 3e-10  # new; achieved 1.7e-11 (the x² coefficient), margin 18x
#: ... with orthogonal poly(): the small quadratic coefficient (0.03 of the intercept)
RTOL_LM_COEF_ORTH_POLY = 1e-11   # new; achieved 7.1e-13, margin 14x
#: lmerTest's ranova (REML LRT of (1|rep) against the linear model), absolute
ATOL_RANOVA = 5e-10              # new; achieved 3.1e-11 (AIC; logLik 1.5e-11), margin 16x

# -- formulas as R reads them ----------------------------------------------------------
#: lmer fits with poly()/I() against lme4 (logLik absolute, fixed effects and SEs relative)
ATOL_POLY_LOGLIK = 2e-9          # new; achieved 9.6e-11, margin 21x
RTOL_POLY_FIXEF = 5e-12          # new; achieved 2.7e-13, margin 18x
#: reference-limited: lme4's θ (bobyqa) moves the SEs, as RTOL_SE in test_lme4_reference
RTOL_POLY_SE = 1.5e-5            # new; achieved 7.7e-7, margin 19x

# -- labels --------------------------------------------------------------------------
#: REML logLik at lme4's variances, given as known, against lme4's logLik (absolute)
ATOL_KNOWN_LOGLIK = 1e-10        # new; achieved 3.6e-12 (kfert), margin 27x
#: the correlation implied by the given G₀ against lme4's (round-off)
RTOL_KNOWN_CORR = 5e-15          # new; achieved 2.1e-16, margin 23x

# -- the split plot at the boundary (lme4: block:A variance 0) ------------------------
#: logLik against lme4's (absolute); the issue asks 1e-6. mme's is the lower by ~2-5e-10:
#: the MME are solved with the zero variance at its floor (BOUND_REL × scale)
ATOL_BOUNDARY_LOGLIK = 1e-8      # new; achieved 5.0e-10, margin 20x
#: the non-zero variance components (relative). Reference-limited: lme4's bobyqa stops
#: with the block variance 1.7e-6 (REML) from mme's optimum, where mme's Newton decrement
#: is 3e-19 (a θ error of 1.7e-6 moves logLik by ~1e-12, below bobyqa's tolerance)
RTOL_BOUNDARY_VC = 3e-5          # new; achieved 1.7e-6 (block, REML), margin 18x
#: fixed effects (relative; the balanced design makes them OLS means, free of θ)
RTOL_BOUNDARY_FIXEF = 1e-11      # new; achieved 3.8e-13, margin 26x
#: SEs of the fixed effects and the block BLUPs (absolute on the scale of the largest
#: |BLUP|): they follow lme4's θ error above
RTOL_BOUNDARY_SE = 5e-6          # new; achieved 3.2e-7, margin 16x
BOUNDARY_BLUP_ATOL_FRACTION = 5e-6   # new; achieved 3.3e-7, margin 15x
#: the block term's conditional variances (relative)
RTOL_BOUNDARY_CONDVAR = 1e-6     # new; achieved 5.1e-8, margin 20x
#: most AI-REML rounds the issue allows for this 24-row fit
MAX_BOUNDARY_ITER = 30


def _json(name):
    return json.loads((DATA / f"{name}.json").read_text())


def _splitplot():
    ref = _json("splitplot_boundary")
    df = pd.read_csv(DATA / "splitplot_boundary.csv")
    for c in ref["factors"]:
        df[c] = pd.Categorical(df[c], categories=sorted(df[c].unique()))
    return ref, df


def _fit_recording(formula, df, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = mme.fit(formula, df, **kw)
    return fit, [type(w.message) for w in caught]


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_splitplot_at_the_boundary_ends_cleanly_as_lme4(method):
    ref, df = _splitplot()
    r = ref[method]
    fit, caught = _fit_recording(ref["formula"], df, method=method)
    # converged, singular, few rounds, a singular-fit warning and no convergence warning
    assert fit.converged and fit.singular
    assert fit.n_iter < MAX_BOUNDARY_ITER
    assert mme.SingularFitWarning in caught and mme.ConvergenceWarning not in caught
    assert r["singular"] and any("boundary (singular) fit" in m for m in r["messages"])
    np.testing.assert_allclose(fit.loglik, r["logLik"], rtol=0, atol=ATOL_BOUNDARY_LOGLIK)
    vc = fit.variance_components.set_index("group")["estimate"]
    ref_vc = dict(zip(r["varcorr"]["grp"], r["varcorr"]["vcov"]))
    assert ref_vc["block:A"] == 0.0 and vc["block:A"] == 0.0
    np.testing.assert_allclose([vc["block"], vc["Residual"]], [ref_vc["block"], ref_vc["Residual"]],
                               rtol=RTOL_BOUNDARY_VC, atol=0)
    fe = fit.fixed_effects
    assert list(fe.index) == r["fixef"]["term"]
    np.testing.assert_allclose(fe["estimate"], r["fixef"]["estimate"], rtol=RTOL_BOUNDARY_FIXEF, atol=0)
    np.testing.assert_allclose(fe["std_error"], r["fixef"]["se"], rtol=RTOL_BOUNDARY_SE, atol=0)
    # BLUPs and conditional variances: exactly 0 for the variance reported as 0
    re = fit.random_effects
    for g in r["ranef"]:
        mine = re[re["group"] == g["group"]]
        assert list(mine["level"]) == g["levels"]
        if g["group"] == "block:A":
            assert np.all(np.asarray(g["blup"]) == 0) and np.all(np.asarray(g["cond_var"]) == 0)
            assert np.all(mine["blup"].to_numpy() == 0.0)
            assert np.all(mine["cond_var"].to_numpy() == 0.0)
            assert np.all(mine["pev"].to_numpy() == 0.0)
            assert np.all(mine["reliability"].to_numpy() == 0.0)
        else:
            scale = np.max(np.abs(g["blup"]))
            np.testing.assert_allclose(mine["blup"], g["blup"], rtol=0,
                                       atol=BOUNDARY_BLUP_ATOL_FRACTION * scale)
            np.testing.assert_allclose(mine["cond_var"], g["cond_var"],
                                       rtol=RTOL_BOUNDARY_CONDVAR, atol=0)


def test_splitplot_iterations_never_lower_the_loglik():
    """The best point visited is kept: every accepted round raises log L (or keeps it)."""
    ref, df = _splitplot()
    for method in ("REML", "ML"):
        fit, _ = _fit_recording(ref["formula"], df, method=method)
        ll = fit.iteration_log["loglik"].to_numpy()
        assert np.all(np.diff(ll) >= 0.0), (method, np.diff(ll))


def test_the_bound_is_fixed_for_the_fit():
    """A variance at its bound sits at BOUND_REL × max|θ₀| (the start), whatever the other
    variances do afterwards, and is flagged and reported as 0."""
    ref, df = _splitplot()
    fit, _ = _fit_recording(ref["formula"], df)
    model = fit.internals.likelihood
    theta0 = reml.starting_values(model)
    res = reml.fit_variances(model, theta0=theta0)
    i = [s.block.group for s in model.mme.structures].index("block:A")
    assert res.at_bound.tolist() == [i == j for j in range(model.k)]
    assert res.theta[i] == reml.BOUND_REL * np.abs(theta0).max()
    # the same from a start 100 times larger: the floor follows the start, not θ
    res = reml.fit_variances(model, theta0=100 * theta0)
    assert res.converged and res.at_bound[i]
    assert res.theta[i] == reml.BOUND_REL * 100 * np.abs(theta0).max()


# ============================================================ linear models as lm ==
def _kfert(numeric_k=False):
    df = pd.read_csv(pathlib.Path(mme.__file__).parent / "data" / "kfert.csv")
    df["w"] = df["rep"] * (1 + (df["K2O_lbac"] % 36 == 0))
    df["rep"] = pd.Categorical(df["rep"].astype(str), categories=["1", "2", "3"])
    df["rep_copy"] = df["rep"]
    if not numeric_k:
        df["K2O_lbac"] = pd.Categorical(df["K2O_lbac"], categories=sorted(df["K2O_lbac"].unique()))
    return df


def _lm_fit(case, **kw):
    df = _kfert(numeric_k="K2O_lbac" not in case["factors"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # the aliased columns' warning
        return mme.fit(case["formula"], df, weights=case.get("weights"), **kw)


@pytest.mark.parametrize("name", ["rcbd_fixed", "rcbd_aliased", "rcbd_weighted"])
@pytest.mark.parametrize("method", ["REML", "ML"])
def test_linear_model_loglik_aic_bic_are_lms(name, method):
    case = _json("linear_models")["cases"][name]
    fit = _lm_fit(case, method=method)
    assert fit.estimation == "least squares" and fit.loglik_kind == "ML (as lm)"
    # R's logLik(lm): ML with σ̂² = RSS/n, df = rank + 1 — whatever method= says
    assert fit.n_params == case["df"] == case["rank"] + 1
    np.testing.assert_allclose([fit.loglik, fit.loglik_reml], [case["logLik"], case["logLik_REML"]],
                               rtol=0, atol=ATOL_LM_LOGLIK)
    np.testing.assert_allclose([fit.aic, fit.bic], [case["AIC"], case["BIC"]],
                               rtol=0, atol=2 * ATOL_LM_LOGLIK)
    fe = fit.fixed_effects
    est = case["estimable"]
    assert list(fe.index) == est["term"]
    assert set(fit.aliased) == set(case["coef"]["term"]) - set(est["term"])
    np.testing.assert_allclose(fe["estimate"], est["estimate"], rtol=RTOL_LM_COEF, atol=0)
    if method == "REML":      # σ̂² = RSS/(n − p) as R's sigma(lm) (ML: RSS/n, SEs smaller)
        np.testing.assert_allclose(fe["std_error"], est["se"], rtol=RTOL_LM_SE, atol=0)
        np.testing.assert_allclose(np.sqrt(fit.variance_components["estimate"].iloc[0]),
                                   case["sigma"], rtol=RTOL_LM_SE, atol=0)


def test_linear_model_is_labelled_as_lm():
    case = _json("linear_models")["cases"]["rcbd_fixed"]
    fit = _lm_fit(case)
    s, r = fit.summary(), repr(fit)
    assert s.startswith("Linear model fit by least squares (mme; as R's lm)")
    assert "logLik is lm's: maximum likelihood (σ² = RSS/n), df = p + 1 = 8" in s
    assert "REML" not in s.splitlines()[0] and "6.9111" in s
    assert "<mme.Fit least squares" in r and "logLik(ML (as lm))=6.9111" in r
    text = fit.methods_text()
    assert "R's logLik(lm)" in text and "6.9111" in text


def test_lrt_of_a_random_term_against_the_linear_model_is_ranova():
    """lmerTest's ranova: REML LRT with the linear model's logLik(lm, REML = TRUE)."""
    ref = _json("linear_models")["ranova"]
    df = pd.read_csv(pathlib.Path(__file__).parent / "data" / "lme4" / "kfert_random.csv")
    for c in ("rep", "K2O_lbac"):
        df[c] = pd.Categorical(df[c], categories=sorted(df[c].unique()))
    mixed = mme.fit(ref["formula"], df)
    lm = mme.fit(ref["reduced"], df)
    tab = mme.lrt(lm, mixed)
    assert "REML" in tab.attrs["note"]
    assert tab["n_params"].tolist() == ref["npar"][::-1]
    np.testing.assert_allclose(tab["loglik"], ref["logLik"][::-1], rtol=0, atol=ATOL_RANOVA)
    np.testing.assert_allclose(tab["aic"], ref["AIC"][::-1], rtol=0, atol=2 * ATOL_RANOVA)
    np.testing.assert_allclose(tab["chisq"].iloc[1], ref["LRT"][1], rtol=0, atol=2 * ATOL_RANOVA)
    # a different fixed part: both refitted by ML; the linear model's loglik is lm's already
    tab = mme.lrt(mme.fit("yield ~ 1", df), mixed)
    assert "ML" in tab.attrs["note"]
    np.testing.assert_allclose(tab["loglik"].iloc[0], mme.fit("yield ~ 1", df, method="ML").loglik,
                               rtol=0, atol=0)


# ==================================================== formulas as R reads them ==
@pytest.mark.parametrize("name", ["quadratic_I", "quadratic_raw", "quadratic_orth"])
def test_I_and_poly_in_a_linear_model_are_lms(name):
    """I(x^2) is x squared, poly(x, 2, raw = TRUE) and orthogonal poly(x, 2) give lm's
    columns, names (as lm prints them) and fit."""
    case = _json("linear_models")["cases"][name]
    fit = _lm_fit(case)
    fe = fit.fixed_effects
    assert list(fe.index) == case["coef"]["term"]
    rtol = RTOL_LM_COEF_ORTH_POLY if name == "quadratic_orth" else RTOL_LM_COEF_RAW_POWERS
    np.testing.assert_allclose(fe["estimate"], case["coef"]["estimate"], rtol=rtol, atol=0)
    np.testing.assert_allclose(fe["std_error"], case["estimable"]["se"], rtol=RTOL_LM_SE, atol=0)
    np.testing.assert_allclose([fit.loglik, fit.loglik_reml], [case["logLik"], case["logLik_REML"]],
                               rtol=0, atol=ATOL_LM_LOGLIK)


@pytest.mark.parametrize("name", ["orth", "raw", "I"])
def test_I_and_poly_in_a_mixed_model_are_lme4s(name):
    ref = _json("poly_lmer")
    case = ref["cases"][name]
    df = pd.read_csv(pathlib.Path(__file__).parent / "data" / "lme4" / "sleepstudy_us.csv")
    df["Subject"] = pd.Categorical(df["Subject"].astype(str))
    fit = mme.fit(case["formula"], df)
    fe = fit.fixed_effects
    assert list(fe.index) == case["fixef"]["term"]
    np.testing.assert_allclose(fit.loglik, case["logLik"], rtol=0, atol=ATOL_POLY_LOGLIK)
    np.testing.assert_allclose(fe["estimate"], case["fixef"]["estimate"], rtol=RTOL_POLY_FIXEF, atol=0)
    np.testing.assert_allclose(fe["std_error"], case["fixef"]["se"], rtol=RTOL_POLY_SE, atol=0)
    # the anova table names the terms as R does
    terms = case["formula"].split("~")[1].split(" + (")[0].strip().split(" + ")
    assert list(fit.anova().index) == terms


def test_r_syntax_round_trip():
    from mme.model.rsyntax import r_column_name, to_python
    assert to_python("y ~ a*b + I(x^2) + poly(x, 2, raw = TRUE) + (a + b)^2 + I((x+1)^2)") == \
        "y ~ a*b + I(x**2) + poly(x, 2, raw = True) + (a + b)^2 + I((x+1)**2)"
    assert to_python("y ~ I(x %% 2) + I(x %/% 3) + (1|g)") == "y ~ I(x % 2) + I(x // 3) + (1|g)"
    # quoted text is left alone
    assert to_python("y ~ C(a, levels=['x^2', \"TRUE\"]) + I(x^2)") == \
        "y ~ C(a, levels=['x^2', \"TRUE\"]) + I(x**2)"
    cases = {"I(x ** 2)": "I(x^2)", "poly(x, 2, raw=True)[0]": "poly(x, 2, raw = TRUE)1",
             "poly(x, 2)[2]": "poly(x, 2)2", "a[T.b]:c[d]": "ab:cd", "log(x + 1)": "log(x + 1)",
             "I((x + 1) ** 2)": "I((x + 1)^2)", "I(2 ** -x)": "I(2^-x)",
             "a[T.b]:poly(x, 2)[2]": "ab:poly(x, 2)2", "Intercept": "(Intercept)",
             "I(x - (y - z))": "I(x - (y - z))",
             # R's deparse (R 4.2.2): no spaces around / %% %/%, parentheses kept
             "I(x / 10)": "I(x/10)", "I(x * 2 / 3)": "I(x * 2/3)", "I(x % 2)": "I(x%%2)",
             "I(x // 2)": "I(x%/%2)", "I(x == 1)": "I(x == 1)", "I(x >= 1)": "I(x >= 1)",
             "I(-x ** 2)": "I(-x^2)", "I(x ** 2.0)": "I(x^2)", "I(x * 0.001)": "I(x * 0.001)",
             "I(x / (y + 1))": "I(x/(y + 1))", "I(not x)": "I(!x)"}
    for py, r in cases.items():
        assert r_column_name(py) == r, (py, r_column_name(py), r)


def test_formula_errors_are_plain_and_name_the_problem():
    df = pd.DataFrame({"x": np.arange(8.0), "y": np.arange(8.0) ** 1.5, "id": list("aabbccdd")})
    for bad in ["y ~ x + * 2", "y ~ x +", "y ~ (x"]:
        with pytest.raises(mme.FormulaError) as e:
            mme.fit(bad, df)
        assert "\x1b" not in str(e.value), str(e.value)
    with pytest.raises(mme.FormulaError, match=r"random intercept of 'id' appears twice"):
        mme.fit("y ~ x + (1|id) + (1|id)", df)
    with pytest.raises(mme.FormulaError, match=r"random slope 'x' of 'id' appears twice"):
        mme.fit("y ~ x + (x|id) + (0 + x|id)", df)
    df["g"] = list("ppqqppqq")
    with pytest.raises(mme.FormulaError, match=r"random intercept of 'g' appears twice"):
        mme.fit("y ~ 1 + (1|g/id) + (1|g)", df)
    # lme4's legitimate repeats: the same factor with different columns, '||'
    mme.parse_formula("y ~ x + (1|id) + (0 + x|id)")
    mme.parse_formula("y ~ x + (x||id)")


# ============================================================ labels that tell the truth ==
def _lme4_case(name):
    ref = json.loads((pathlib.Path(__file__).parent / "data" / "lme4" / f"{name}.json").read_text())
    df = pd.read_csv(pathlib.Path(__file__).parent / "data" / "lme4" / f"{name}.csv")
    factors = [ref["factors"]] if isinstance(ref["factors"], str) else ref["factors"]
    for c in factors:
        df[c] = pd.Categorical(df[c], categories=sorted(df[c].unique()))
    return ref, df


def test_known_variances_are_labelled_blup_and_have_no_variance_ses():
    ref, df = _lme4_case("kfert_random")
    vc = dict(zip(ref["varcorr"]["grp"], ref["varcorr"]["vcov"]))
    fit = mme.fit(ref["formula"], df, variances=vc)
    assert fit.estimation == "BLUP at known variances"
    assert fit.loglik_kind == "REML at the given variances"
    # at lme4's own estimates, the REML logLik is lme4's
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=0, atol=ATOL_KNOWN_LOGLIK)
    s, r = fit.summary(), repr(fit)
    first = s.splitlines()[0]
    assert "BLUP at known variances" in first and "fit by REML" not in first
    assert "not maximised" in s and "<mme.Fit BLUP at known variances" in r
    assert "logLik(REML at the given variances)=" in r
    assert "BLUP at known variances" in fit.methods_text()
    # nothing was estimated: no SE of a variance or of a function of the variances
    assert np.isnan(fit.variance_components["std_error"]).all()
    h2 = fit.heritability("rep")
    assert np.isfinite(h2["estimate"]) and np.isnan(h2["std_error"])
    assert np.isnan(fit.aic) and np.isnan(fit.bic)
    # df that need Var(θ̂) say so and name the way out
    for call in (lambda: fit.anova(), lambda: fit.anova("kenward-roger")):
        with pytest.raises(mme.DfMethodError, match="need estimated variances.*asymptotic"):
            call()
    assert np.isfinite(fit.anova("asymptotic")["F_value"]).all()


def test_known_variances_genetic_correlation_has_no_se():
    ref, df = _lme4_case("sleepstudy_us")
    v = ref["varcorr"]["vcov"]
    fit = mme.fit(ref["formula"], df, variances={"Subject": [[v[0], v[2]], [v[2], v[1]]],
                                                 "Residual": v[3]})
    gc = fit.genetic_correlation("Subject")
    np.testing.assert_allclose(gc["estimate"], ref["varcorr"]["sdcor"][2], rtol=RTOL_KNOWN_CORR,
                               atol=0)
    assert np.isnan(gc["std_error"]).all()
    np.testing.assert_allclose(fit.loglik, ref["logLik"], rtol=0, atol=ATOL_KNOWN_LOGLIK)


def test_command_line_linear_model_and_boundary_fit(tmp_path, capsys):
    """summary.txt and methods.md of a linear model say lm's logLik; the split plot at
    the boundary exits 0 (converged), with no convergence note."""
    from mme.cli import main
    kfert = pathlib.Path(mme.__file__).parent / "data" / "kfert.csv"
    assert main(["fit", "yield ~ K2O_lbac + rep", "--data", str(kfert), "--factors",
                 "rep,K2O_lbac", "--out", str(tmp_path / "lm")]) == 0
    err = capsys.readouterr().err
    assert "estimating (least squares, as R's lm)" in err and "logLik (ML (as lm)) 6.911116" in err
    summary = (tmp_path / "lm" / "summary.txt").read_text()
    assert summary.startswith("Linear model fit by least squares") and "6.9111" in summary
    assert "R's logLik(lm)" in (tmp_path / "lm" / "methods.md").read_text()
    assert main(["fit", "y ~ A*B + (1|block) + (1|block:A)", "--data",
                 str(DATA / "splitplot_boundary.csv"), "--out", str(tmp_path / "sp")]) == 0
    err = capsys.readouterr().err
    assert "did not converge" not in err
    assert "boundary (singular) fit" in (tmp_path / "sp" / "summary.txt").read_text()


def test_command_line_allow_list_takes_r_logicals():
    from mme.cli.errors import InputError
    from mme.cli.formulas import check_formula
    check_formula("y ~ poly(x, 2, raw = TRUE) + I(x^2) + (1|g)", ["y", "x", "g"])
    with pytest.raises(InputError, match="'TRUE' is not a column"):
        check_formula("y ~ x + TRUE", ["y", "x"])          # only as an argument of a call
