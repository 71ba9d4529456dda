"""The MME engine: known-variance BLUP vs a dense textbook solve, analyze once,
ML/REML consistency, rank deficiency, formula syntax."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sksparse import cholmod

import mme
from conftest import DATA, load_case

#: sparse solve vs dense textbook solve of the same equations
RTOL_DENSE = 1e-9
#: Mrode (2014) Example 3.1 expected BLUE/BLUP (issue 5)
ATOL_MRODE = 1e-8


def _dense_mme(X, Z, y, Ginv, s2e):
    """Henderson's MME, dense, as in the textbooks."""
    C = np.block([[X.T @ X, X.T @ Z], [Z.T @ X, Z.T @ Z + s2e * Ginv]])
    rhs = np.concatenate([X.T @ y, Z.T @ y])
    return np.linalg.solve(C, rhs), np.linalg.inv(C) * s2e


def test_known_variances_reproduce_dense_mme():
    ref, df = load_case("penicillin")
    v = {"plate": 0.7, "sample": 3.7, "Residual": 0.3}
    fit = mme.fit(ref["formula"], df, variances=v)
    assert fit.n_iter == 0 and not fit.estimated
    d = fit.internals.design
    X = d.X.toarray()
    Z = sp.hstack([b.Z for b in d.blocks]).toarray()
    q1, q2 = d.blocks[0].q, d.blocks[1].q
    Ginv = np.diag(np.r_[np.full(q1, 1 / v["plate"]), np.full(q2, 1 / v["sample"])])
    sol, Cinv = _dense_mme(X, Z, d.y, Ginv, v["Residual"])
    np.testing.assert_allclose(fit.beta, sol[:1], rtol=RTOL_DENSE)
    np.testing.assert_allclose(fit.random_effects.blup, sol[1:], rtol=RTOL_DENSE, atol=1e-12)
    np.testing.assert_allclose(fit.random_effects.pev, np.diag(Cinv)[1:], rtol=RTOL_DENSE)
    np.testing.assert_allclose(fit.vcov_beta, Cinv[:1, :1], rtol=RTOL_DENSE)


def test_mrode_animal_model_with_pedigree():
    ex = json.loads((DATA / "mrode_3_1.json").read_text())
    ped = mme.Pedigree.from_frame(pd.DataFrame(ex["pedigree"]))
    data = pd.DataFrame(ex["data"])
    fit = mme.fit("wwg ~ 0 + sex + (1|id)", data, relmat={"id": ped},
                  variances=ex["variances"])
    fe = fit.fixed_effects["estimate"]
    for sex, val in ex["expected"]["sex"].items():
        assert fe[f"sex{sex}"] == pytest.approx(val, abs=ATOL_MRODE)
    re = fit.random_effects.set_index("level")
    assert len(re) == 8  # ancestors without records get BLUPs too
    for animal, val in ex["expected"]["blup_id"].items():
        assert re.loc[animal, "blup"] == pytest.approx(val, abs=ATOL_MRODE)


def test_analyze_runs_once_per_fit(monkeypatch):
    calls = []
    real = cholmod.analyze

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cholmod, "analyze", counting)
    ref, df = load_case("sleepstudy_us")
    fit = mme.fit(ref["formula"], df)
    assert fit.n_iter >= 3
    assert len(calls) == 1
    assert fit.internals.mme.n_factorize > fit.n_iter


def test_pattern_values_are_rewritten_in_place():
    ref, df = load_case("pastes")
    fit = mme.fit(ref["formula"], df)
    m = fit.internals.mme
    data_id = id(m.C.data)
    m.set_values([np.array([[2.0]]), np.array([[3.0]])], 1.5)
    assert id(m.C.data) == data_id


def test_fixed_only_model_is_least_squares():
    ref, df = load_case("kfert_random")
    fit = mme.fit("yield ~ K2O_lbac + rep", df)
    X = fit.internals.design.X.toarray()
    y = fit.internals.design.y
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    np.testing.assert_allclose(fit.beta, beta, rtol=RTOL_DENSE)
    resid_df = len(y) - X.shape[1]
    assert (fit.fixed_effects["df"] == resid_df).all()
    s2 = rss[0] / resid_df
    np.testing.assert_allclose(fit.fixed_effects["std_error"],
                               np.sqrt(np.diag(np.linalg.inv(X.T @ X)) * s2), rtol=RTOL_DENSE)
    # the seed's table: SE of a treatment difference 0.171 with 8 df
    assert fit.fixed_effects.loc["K2O_lbac144", "std_error"] == pytest.approx(0.1707, abs=5e-5)


def test_aliased_columns_are_dropped_and_reported():
    ref, df = load_case("kfert_random")
    df = df.assign(dup=df["yield"] * 0 + 2.0 * (df["rep"] == "2"))
    with pytest.warns(UserWarning, match="aliased"):
        fit = mme.fit("yield ~ K2O_lbac + rep + dup", df)
    assert fit.aliased == ("dup",)
    assert "dup" not in fit.fixed_effects.index


def test_missing_rows_dropped_with_count():
    ref, df = load_case("dyestuff")
    df = df.copy()
    df.loc[[0, 5], "Yield"] = np.nan
    with pytest.warns(mme.DroppedRowsWarning, match="2 of 30 rows"):
        fit = mme.fit("Yield ~ 1 + (1|Batch)", df)
    assert fit.nobs == 28


def test_formula_syntax_quadratic_and_log():
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({"x": rng.uniform(1, 5, n), "g": rng.integers(0, 10, n).astype(str)})
    df["y"] = 1 + 0.5 * df.x - 0.1 * df.x ** 2 + rng.normal(0, 0.3, n) + df.g.astype(int) * 0.1
    fit = mme.fit("y ~ x + I(x**2) + log(x) + (1|g)", df)
    assert list(fit.fixed_effects.index) == ["(Intercept)", "x", "I(x ** 2)", "log(x)"]
    no_int = mme.fit("y ~ 0 + g", df)
    assert "(Intercept)" not in no_int.fixed_effects.index and len(no_int.beta) == 10


def test_nested_syntax_equals_explicit_terms():
    ref, df = load_case("pastes")
    a = mme.fit("strength ~ 1 + (1|batch/cask)", df)
    b = mme.fit("strength ~ 1 + (1|cask:batch) + (1|batch)", df)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-10)


def test_ml_loglik_is_lme4s():
    ref, df = load_case("kfert_random_ml")
    fit = mme.fit(ref["formula"], df, method="ML")
    assert fit.loglik == pytest.approx(ref["logLik"], abs=1e-6)


# ---------------------------------------------------------------- bad input
def test_missing_column_is_named():
    _, df = load_case("dyestuff")
    with pytest.raises(mme.FormulaError, match="nitrogen"):
        mme.fit("Yield ~ nitrogen + (1|Batch)", df)


def test_non_numeric_response():
    _, df = load_case("dyestuff")
    with pytest.raises(mme.DataError, match="'Batch'.*numeric"):
        mme.fit("Batch ~ 1 + (1|Yield)", df)


def test_empty_after_dropping_missing():
    _, df = load_case("dyestuff")
    df = df.assign(Yield=np.nan)
    with pytest.raises(mme.DataError, match="no rows left"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mme.fit("Yield ~ 1 + (1|Batch)", df)


def test_single_level_grouping_factor():
    _, df = load_case("dyestuff")
    df = df.assign(one="x")
    with pytest.raises(mme.DataError, match="'one' has a single level"):
        mme.fit("Yield ~ 1 + (1|one)", df)


def test_non_numeric_slope():
    _, df = load_case("sleepstudy_us")
    df = df.assign(dstr=df.Days.astype(str))
    with pytest.raises(mme.DataError, match="'dstr'"):
        mme.fit("Reaction ~ Days + (dstr|Subject)", df)


def test_records_for_ids_absent_from_pedigree():
    ex = json.loads((DATA / "mrode_3_1.json").read_text())
    ped = mme.Pedigree.from_frame(pd.DataFrame(ex["pedigree"]))
    data = pd.DataFrame(ex["data"])
    data.loc[0, "id"] = "99"
    with pytest.raises(mme.DataError, match="'99'"):
        mme.fit("wwg ~ 0 + sex + (1|id)", data, relmat={"id": ped}, variances=ex["variances"])


def test_bad_formula():
    _, df = load_case("dyestuff")
    with pytest.raises(mme.FormulaError):
        mme.fit("Yield + (1|Batch)", df)
    with pytest.raises(mme.FormulaError):
        mme.fit("Yield ~ 1 + (1|Batch", df)


def test_boundary_fit_is_reported_singular_with_zero_variance():
    """No group signal: σ²_g → 0 (lme4's isSingular); the REML logLik then equals
    the REML logLik of the model without the term."""
    rng = np.random.default_rng(3)
    n = 300
    df = pd.DataFrame({"y": rng.normal(size=n), "g": rng.integers(0, 20, n).astype(str)})
    with pytest.warns(mme.SingularFitWarning):
        fit = mme.fit("y ~ 1 + (1|g)", df)
    assert fit.singular and fit.converged
    vc = fit.variance_components.set_index("group")
    assert vc.loc["g", "estimate"] == 0.0
    lm = mme.fit("y ~ 1", df)
    assert fit.loglik == pytest.approx(lm.loglik, abs=1e-6)
    assert vc.loc["Residual", "estimate"] == pytest.approx(
        lm.variance_components["estimate"].iloc[0], rel=1e-6)



def test_auto_ordering_is_amd_with_a_pedigree_and_default_without():
    from mme.engine.system import choose_ordering
    ex = json.loads((DATA / "mrode_3_1.json").read_text())
    ped = mme.Pedigree.from_frame(pd.DataFrame(ex["pedigree"]))
    fit = mme.fit("wwg ~ 0 + sex + (1|id)", pd.DataFrame(ex["data"]), relmat={"id": ped},
                  variances=ex["variances"])
    assert fit.internals.mme.ordering == "amd"
    ref, df = load_case("penicillin")
    fit = mme.fit(ref["formula"], df)
    assert fit.internals.mme.ordering == "default"
    # an explicit choice is passed on untouched
    assert choose_ordering("metis", fit.internals.mme.structures) == "metis"
    assert mme.fit(ref["formula"], df, ordering="metis").internals.mme.ordering == "metis"
