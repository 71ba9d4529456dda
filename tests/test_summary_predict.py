"""summary() as lme4/lmerTest print it; predict(interval=); fitted()/residuals() as
Series indexed like the data.

References: tests/data/intervals/summary_<case>.txt (R's printed ``summary(m)`` of a
``lmerTest::lmer`` fit) and intervals.json ("summary": the unrounded numbers behind
them; "predict_lm": R's ``predict.lm(..., interval=, se.fit = TRUE)``), written by
``Rscript tests/data/intervals/generate_intervals.R tests/data/intervals``. Intervals of
mixed models are checked against dense oracles (V formed as an n × n matrix).
"""
import json
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import mme
from conftest import fitted
from mme.inference.summary import abbreviate, format_pval, r_format

DATA = pathlib.Path(__file__).parent / "data" / "intervals"
REF = json.loads((DATA / "intervals.json").read_text())

#: predict.lm's fit, se.fit and limits; achieved 4.3e-15 (relative), margin 23
RTOL_PREDICT_LM = 1e-13
#: prediction standard errors against the dense oracle (V⁻¹ formed densely); achieved
#: 2.6e-16 relative (2.8e-17 of the largest se), margin ~40
RTOL_PREDICT_DENSE = 1e-14
#: identities between a prediction's columns (limits = fit ± q·se); achieved 3.9e-15
RTOL_PREDICT_IDENTITY = 1e-13
#: lme4's scaled residual quantiles, absolute (they are of order 1); achieved 8.3e-6
#: (sleepstudy_us: θ̂ ≈ 3e-5 SE from lme4's, see test_lme4_reference.RTOL_VC), margin 12
ATOL_SCALED_RESID = 1e-4
#: correlation of the fixed effects (lme4's cov2cor(vcov)), absolute; achieved 1.7e-6
#: (sleepstudy_us, the same θ̂ discrepancy), margin 18
ATOL_COR_FIXEF = 3e-5

SUMMARY_CASES = ["kfert_random", "sleepstudy_us"]


# ================================================================== summary ==
@pytest.mark.parametrize("name", SUMMARY_CASES)
def test_summary_is_lmertests_printed_text(name):
    """From "REML criterion" to the correlation of fixed effects the text is R's, line by
    line (layout, labels, rounding, format.pval, stars, abbreviations); the title and
    formula lines are mme's own (R deparses the formula: ``(1 | rep)``)."""
    _, _, fit = fitted(name)
    mine = fit.summary().splitlines()
    r = (DATA / f"summary_{name}.txt").read_text(encoding="utf-8").splitlines()
    start_r = next(i for i, ln in enumerate(r) if ln.startswith("REML criterion"))
    start = next(i for i, ln in enumerate(mine) if ln.startswith("REML criterion"))
    block = mine[start:start + len(r) - start_r]
    assert block == r[start_r:]
    assert mine[0].startswith("Linear mixed model fit by REML")
    assert mine[1] == f"Formula: {fit.formula}"


@pytest.mark.parametrize("name", SUMMARY_CASES)
def test_summary_numbers_are_lmertests(name):
    """The numbers behind the printed text, unrounded: scaled residual quantiles,
    p-values as format.pval writes them, correlation of the fixed effects."""
    _, _, fit = fitted(name)
    ref = REF["summary"][name]
    sigma = np.sqrt(fit.variance_components["estimate"].iloc[-1])
    q = np.quantile(fit.residuals().to_numpy() / sigma, [0, .25, .5, .75, 1])
    np.testing.assert_allclose(q, ref["scaled_residual_quantiles"], rtol=0,
                               atol=ATOL_SCALED_RESID)
    # generate_intervals.R calls format.pval(p, digits = 4) (printCoefmat uses 3: the
    # printed text of test_summary_is_lmertests_printed_text)
    assert format_pval(ref["coefficients"]["p"], 4) == ref["format_pval"]
    assert format_pval(fit.fixed_effects["p_value"].to_numpy(), 4) == ref["format_pval"]
    V = fit.vcov_beta
    C = V / np.sqrt(np.outer(np.diag(V), np.diag(V)))
    np.testing.assert_allclose(C, np.atleast_2d(np.array(ref["correlation"], float)), rtol=0,
                               atol=ATOL_COR_FIXEF)


def test_r_formatting_rules():
    """R's format(), format.pval() and abbreviate() on the cases their code branches on
    (R's outputs, typed from an R 4.2.2 session)."""
    assert r_format([0.03511, 0.04368], 4) == ["0.03511", "0.04368"]
    assert r_format([612.0898, 35.0717, 654.9408], 4) == ["612.09", " 35.07", "654.94"]
    assert r_format([1.49033e-08], 3) == ["1.49e-08"]
    assert r_format([1.5e-08, 2.25e-10], 3) == ["1.50e-08", "2.25e-10"]
    assert r_format([123456789.0], 4) == ["123456789"]
    assert format_pval([0.2676, 0.0471, 1.49033e-08]) == ["0.2676", "0.0471", "1.49e-08"]
    assert format_pval([1e-20, 3.26e-06]) == ["< 2e-16", "3.26e-06"]
    assert format_pval([1e-20, 0.5]) == ["<2e-16", "0.5"]
    assert abbreviate(["(Intercept)", "K2O_lbac54", "K2O_lbac108", "K2O_lbac144"], 6) == \
        ["(Intr)", "K2O_54", "K2O_10", "K2O_14"]
    assert abbreviate(["treatmentA", "treatmentB"], 6) == ["trtmnA", "trtmnB"]


def test_summary_of_other_fits_does_not_break():
    """ML (AIC table), a singular fit, no random terms, known variances."""
    _, _, ml = fitted("sleepstudy_us_ml")
    s = ml.summary()
    assert "AIC" in s and "df.resid" in s and "REML criterion" not in s
    _, _, lm = fitted("kfert_random", "yield ~ K2O_lbac + rep")
    s = lm.summary().splitlines()
    assert s[0].startswith("Linear model fit by") and "Number of obs: 15" in s
    _, _, known = fitted("kfert_random", variances={"rep": 0.035, "Residual": 0.044})
    s = known.summary()
    assert "variances given" in s and "at the given variances" in s and " Inf " in s


# ================================================================= fitted ==
def test_fitted_and_residuals_are_series_indexed_like_the_data():
    _, df, _ = fitted("kfert_random")
    df.index = [f"plot{i}" for i in range(len(df))]
    df.loc["plot3", "yield"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = mme.fit("yield ~ K2O_lbac + (1|rep)", df)
    f, e = fit.fitted(), fit.residuals()
    assert isinstance(f, pd.Series) and isinstance(e, pd.Series)
    assert list(f.index) == [i for i in df.index if i != "plot3"] == list(e.index)
    np.testing.assert_allclose((f + e).to_numpy(), df["yield"].drop("plot3").to_numpy(),
                               rtol=0, atol=1e-12)
    pd.testing.assert_series_equal(fit.predict(), f.rename("predicted"))


# ================================================================ predict ==
def _kfert_newdata():
    r = REF["predict_lm"]["newdata"]
    return pd.DataFrame({"K2O_lbac": [int(v) for v in r["K2O_lbac"]], "rep": r["rep"]})


@pytest.mark.parametrize("interval", ["confidence", "prediction"])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_predict_intervals_of_a_linear_model_are_predict_lm(interval, level):
    _, _, fit = fitted("kfert_random", "yield ~ K2O_lbac + rep")
    nd = _kfert_newdata()
    nd["rep"] = nd["rep"].astype(int)
    got = fit.predict(nd, interval=interval, level=level)
    want = REF["predict_lm"][f"{interval}_{int(level * 100)}"]
    assert list(got.columns) == (["fit", "se_fit", "lwr", "upr"] if interval == "confidence"
                                 else ["fit", "se_fit", "se_pred", "lwr", "upr"])
    assert got.attrs["quantile"] == "t"
    for col, key in (("fit", "fit"), ("lwr", "lwr"), ("upr", "upr"), ("se_fit", "se_fit")):
        np.testing.assert_allclose(got[col], want[key], rtol=RTOL_PREDICT_LM, atol=0)


def _dense_pieces(fit):
    """Dense X, Z, G, V of a fit with σ²ₑ I residuals (the oracle's ingredients)."""
    d = fit.internals.design
    mme_ = fit.internals.mme
    G0s, R0 = mme_.split(np.asarray(fit.internals.theta_reported, float))
    X = d.X.toarray()
    Z = sp.hstack([b.Z for b in d.blocks]).toarray()
    G = sp.block_diag([np.kron(G0, np.eye(s.L)) for s, G0 in zip(mme_.structures, G0s)]
                      ).toarray()
    V = Z @ G @ Z.T + R0[0, 0] * np.eye(len(d.y))
    return X, Z, G, V, G0s, float(R0[0, 0])


@pytest.mark.parametrize("name", ["kfert_random", "sleepstudy_us"])
def test_predict_intervals_of_a_mixed_model_against_dense_oracle(name):
    """Conditional (x'β + z'u) and population (x'β) intervals at the estimated variances:
    se² = m'Gm − m'GZ'V⁻¹ZGm + d'(X'V⁻¹X)⁻¹d, d = k − X'V⁻¹ZGm (Henderson's prediction
    error variance of k'β̂ + m'û), + z'G₀z for a level unseen in the fit, + σ²ₑ for a new
    observation; normal quantiles."""
    _, df, fit = fitted(name)
    X, Z, G, V, G0s, s2 = _dense_pieces(fit)
    Vi = np.linalg.inv(V)
    Q = np.linalg.inv(X.T @ Vi @ X)
    rows = df.iloc[[0, 4, 7, 11]].copy()
    new = rows.iloc[[1]].copy()
    grp = fit.blocks[0].group
    new[grp] = "unseen"
    nd = pd.concat([rows.astype({grp: str}), new.astype({grp: str})], ignore_index=True)
    pos = [0, 4, 7, 11]
    k = X[pos]
    m = Z[pos]
    a = (X.T @ Vi @ Z @ G @ m.T).T
    dd = k - a
    pev = (np.einsum("ij,jk,ik->i", m, G, m) - np.einsum("ij,jk,ik->i", m @ G @ Z.T, Vi, m @ G @ Z.T)
           + np.einsum("ij,jk,ik->i", dd, Q, dd))
    # the unseen row: x'Qx + z'G₀z (û = 0, u independent of the data)
    t = np.array([1.0, df.iloc[4]["Days"]]) if name.startswith("sleep") else np.array([1.0])
    pev_new = X[4] @ Q @ X[4] + t @ G0s[0] @ t
    want_conf = np.sqrt(np.append(pev, pev_new))
    with pytest.warns(UserWarning, match="not in the fit"):
        conf = fit.predict(nd, interval="confidence", level=0.9)
    scale = want_conf.max()
    np.testing.assert_allclose(conf["se_fit"], want_conf, rtol=0, atol=RTOL_PREDICT_DENSE * scale)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(conf["upr"] - conf["fit"], z * conf["se_fit"],
                               rtol=RTOL_PREDICT_IDENTITY, atol=0)
    np.testing.assert_allclose(conf["fit"].iloc[:4], fit.fitted().to_numpy()[pos], rtol=1e-13,
                               atol=0)
    with pytest.warns(UserWarning):
        pred = fit.predict(nd, interval="prediction")
    np.testing.assert_allclose(pred["se_fit"], conf["se_fit"], rtol=0, atol=0)
    np.testing.assert_allclose(pred["se_pred"] ** 2, want_conf ** 2 + s2,
                               rtol=RTOL_PREDICT_DENSE, atol=0)
    np.testing.assert_allclose(pred["upr"] - pred["fit"], stats.norm.ppf(0.975) * pred["se_pred"],
                               rtol=RTOL_PREDICT_IDENTITY, atol=0)
    # population level: x'β with Var x'Qx; a new observation adds z'G₀z + σ²ₑ
    pop = fit.predict(nd, include_random=False, interval="confidence")
    xs = X[[0, 4, 7, 11, 4]]
    np.testing.assert_allclose(pop["se_fit"] ** 2, np.einsum("ij,jk,ik->i", xs, Q, xs),
                               rtol=RTOL_PREDICT_DENSE, atol=0)
    popp = fit.predict(nd, include_random=False, interval="prediction")
    T = (np.column_stack([np.ones(5), nd["Days"].to_numpy(float)]) if name.startswith("sleep")
         else np.ones((5, 1)))
    np.testing.assert_allclose(popp["se_pred"] ** 2,
                               pop["se_fit"] ** 2 + np.einsum("ij,jk,ik->i", T, G0s[0], T) + s2,
                               rtol=RTOL_PREDICT_DENSE, atol=0)


def test_predict_interval_errors():
    _, df, fit = fitted("kfert_random")
    with pytest.raises(mme.OptionError, match="interval"):
        fit.predict(df, interval="credible")
    with pytest.raises(mme.OptionError, match="level"):
        fit.predict(df, interval="confidence", level=1.5)
    with pytest.raises(mme.DataError, match="rep"):
        fit.predict(df.drop(columns="rep"), interval="confidence")
