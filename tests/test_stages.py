"""The staged fit (build_design → build_mme → estimate → assemble) used stage by
stage, the factor's explicit state (MME.ensure / release), and a Fit that cannot
be changed through what it hands out."""
import json
import pathlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mme
from mme.engine.estimate import AI_REML, BOUNDARY, KNOWN, LEAST_SQUARES
from mme.engine.reml import Likelihood

from conftest import load_case

DATA = pathlib.Path(__file__).parent / "data"

#: −2ℓ_REML from the MME vs the dense formula on V (15 rows): achieved ~1e-13
ATOL_LOGLIK_DENSE = 1e-9
#: the staged fit vs mme.fit on the same data (same code path): exact up to rounding
RTOL_STAGED = 1e-12
#: logLik at θ vs lme4 1.1-31 (the reference's printed 15+ digits): achieved ~4e-10
ATOL_LOGLIK_LME4 = 1e-7


def dense_reml_loglik(y, X, Zs, variances, s2e):
    """ℓ_REML with lme4's constants from V = Σ σ²ₖ ZₖZₖ' + σ²ₑ I formed densely."""
    n, p = X.shape
    V = s2e * np.eye(n) + sum(v * (Z @ Z.T) for Z, v in zip(Zs, variances))
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    P = Vi - Vi @ X @ np.linalg.solve(XtViX, X.T @ Vi)
    m2ll = ((n - p) * np.log(2 * np.pi) + np.linalg.slogdet(V)[1]
            + np.linalg.slogdet(XtViX)[1] + y @ P @ y)
    return -0.5 * m2ll


def test_stages_alone_reproduce_fit():
    ref, df = load_case("kfert_random")
    design = mme.build_design(ref["formula"], df)
    assert design.n == 15 and design.p == 5 and [b.group for b in design.blocks] == ["rep"]
    assert design.W.shape == (15, 5 + 3)
    system = mme.build_mme(design)
    assert system.factor is None and system.theta is None     # nothing factorized yet
    est = mme.estimate(system)
    assert est.route == AI_REML and est.converged
    assert system.n_analyze == 1
    staged = mme.assemble(est)
    whole = mme.fit(ref["formula"], df)
    assert abs(staged.loglik - whole.loglik) <= RTOL_STAGED * abs(whole.loglik)
    np.testing.assert_allclose(staged.beta, whole.beta, rtol=RTOL_STAGED)
    np.testing.assert_allclose(staged.variance_components["estimate"],
                               whole.variance_components["estimate"], rtol=RTOL_STAGED)
    assert abs(staged.loglik - ref["logLik"]) < ATOL_LOGLIK_LME4


def test_loglik_at_given_variances_equals_dense_formula():
    ref, df = load_case("kfert_random")
    design = mme.build_design(ref["formula"], df)
    system = mme.build_mme(design)
    X = design.X.toarray()
    Z = design.blocks[0].Z.toarray()
    for s2g, s2e in [(0.035, 0.044), (0.5, 0.01), (1e-4, 2.0)]:
        est = mme.estimate(system, variances={"rep": s2g, "Residual": s2e})
        assert est.route == KNOWN and not est.estimated
        dense = dense_reml_loglik(design.y, X, [Z], [s2g], s2e)
        assert abs(est.loglik - dense) < ATOL_LOGLIK_DENSE
        # the same number from the likelihood object in θ's layout
        ev = Likelihood(system, "REML").evaluate(np.array([s2g, s2e]))
        assert abs(ev.loglik - dense) < ATOL_LOGLIK_DENSE
    # one symbolic analysis for all of them
    assert system.n_analyze == 1


def test_each_route_returns_an_estimate():
    ref, df = load_case("kfert_random")
    ls = mme.estimate(mme.build_mme(mme.build_design("yield ~ K2O_lbac + rep", df)))
    assert ls.route == LEAST_SQUARES and ls.estimated
    fit = mme.assemble(ls)
    assert fit.df_method == "residual"
    rss = float(fit.residuals() @ fit.residuals())
    assert abs(fit.variance_components["estimate"].iloc[-1] - rss / (15 - 7)) < 1e-12
    known = mme.estimate(mme.build_mme(mme.build_design(ref["formula"], df)),
                         variances={"rep": 0.03, "Residual": 0.04})
    assert known.route == KNOWN and known.n_iter == 0
    case = json.loads((DATA / "rank_deficient_slopes.json").read_text())
    d = pd.read_csv(DATA / "rank_deficient_slopes.csv")
    with pytest.warns(mme.SingularFitWarning):
        est = mme.estimate(mme.build_mme(mme.build_design("y ~ x + z + (1 + x + z | g)", d)))
        fit = mme.assemble(est)
    assert est.route == BOUNDARY and est.boundary is not None
    assert fit.loglik >= case["loglik"] - 1e-6


def test_ensure_refactorizes_only_when_theta_changes():
    ref, df = load_case("kfert_random")
    system = mme.build_mme(mme.build_design(ref["formula"], df))
    theta = np.array([0.035, 0.044])
    system.ensure(theta)
    n = system.n_factorize
    system.ensure(theta.copy())
    assert system.n_factorize == n
    system.ensure(np.array([0.05, 0.044]))
    assert system.n_factorize == n + 1 and np.array_equal(system.theta, [0.05, 0.044])
    # values rewritten without a factorization: the state says the factor is stale
    system.set_values([np.array([[0.1]])], 0.2)
    assert system.theta is None
    system.ensure(theta)
    assert np.array_equal(system.theta, theta)


def test_inference_after_evaluating_elsewhere_uses_the_estimate():
    """Satterthwaite's observed information evaluates at perturbed θ; KR and BLUP-based
    results afterwards must still be those at θ̂ (no caller restores the factor)."""
    ref, df = load_case("sleepstudy_us")
    a = mme.fit(ref["formula"], df)
    kr_first = a.emmeans("Days", at={"Days": [0, 9]}, df_method="kenward-roger").table
    b = mme.fit(ref["formula"], df)
    _ = b.fixed_effects["df"]                       # moves the factor away from θ̂
    assert not np.array_equal(b.internals.mme.theta, b.internals.theta)
    kr_after = b.emmeans("Days", at={"Days": [0, 9]}, df_method="kenward-roger").table
    pd.testing.assert_frame_equal(kr_first, kr_after, rtol=1e-12, atol=0)


def test_release_drops_the_factor_with_a_clear_error():
    ref, df = load_case("kfert_random")
    fit = mme.fit(ref["formula"], df)
    df_before = fit.fixed_effects["df"].to_numpy()
    fit.release()
    assert fit.internals.mme.factor is None
    # what was computed, and Satterthwaite df (computed before releasing), remain
    np.testing.assert_array_equal(fit.fixed_effects["df"].to_numpy(), df_before)
    assert fit.random_effects.shape[0] == 3
    with pytest.raises(mme.FactorReleasedError, match="released"):
        fit.emmeans("K2O_lbac", df_method="kenward-roger")


def test_fit_cannot_be_changed_through_what_it_hands_out():
    ref, df = load_case("sleepstudy_us")
    fit = mme.fit(ref["formula"], df)
    beta0 = fit.beta.copy()
    for arr in (fit.beta, fit.vcov_beta, fit.df_beta, fit.blocks[0].blup, fit.blocks[0].pev,
                fit.history[0].theta, fit.internals.F):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 99.0
    with pytest.raises(ValueError, match="read-only"):
        fit.fitted_values[0] = 1.0
    vc = fit.variance_components
    vc.loc[0, "estimate"] = -1.0
    assert fit.variance_components.loc[0, "estimate"] > 0
    fe = fit.fixed_effects
    fe.iloc[0, 0] = 99.0
    np.testing.assert_array_equal(fit.fixed_effects["estimate"].to_numpy(), beta0)
    re = fit.random_effects
    re.loc[0, "blup"] = 99.0
    assert fit.random_effects.loc[0, "blup"] != 99.0
    fit.residuals()[0] = 1e9                        # a copy
    assert fit.residuals()[0] != 1e9
    with pytest.raises(AttributeError):
        fit.loglik = 0.0


def test_bad_options_are_typed_errors():
    ref, df = load_case("kfert_random")
    with pytest.raises(mme.OptionError, match="method"):
        mme.fit(ref["formula"], df, method="GLS")
    system = mme.build_mme(mme.build_design(ref["formula"], df))
    with pytest.raises(mme.OptionError, match="method"):
        mme.estimate(system, method="MINQUE")
    with pytest.raises(mme.DataError, match="'block'.*not random terms"):
        mme.estimate(system, variances={"rep": 1.0, "block": 1.0, "Residual": 1.0})
    with pytest.raises(mme.UnknownTermError, match="nope"):
        mme.fit(ref["formula"], df).heritability("nope")


def test_every_raised_error_is_an_mme_error():
    import mme._core as core
    for cls in (core.PatternError, mme.OptionError, mme.UnknownTermError,
                mme.FactorReleasedError, mme.InternalError):
        assert issubclass(cls, mme.MMEError)
    with pytest.raises(mme.MMEError):
        core.csc_positions(np.array([0, 1], np.int64), np.array([0], np.int64),
                           np.array([0], np.int64), np.array([0, 1], np.int64),
                           np.empty(1, np.int64))


def test_start_and_callback_resume_a_fit():
    """A checkpoint is θ from an iteration record; resuming from it reaches the same fit."""
    ref, df = load_case("sleepstudy_us")
    records = []
    full = mme.fit(ref["formula"], df, callback=records.append)
    assert [r.iteration for r in records] == list(range(1, full.n_iter + 1))
    resumed = mme.fit(ref["formula"], df, start=np.array(records[0].theta))
    assert abs(resumed.loglik - full.loglik) < 1e-9 * abs(full.loglik)
    assert resumed.n_iter < full.n_iter
    by_name = mme.fit(ref["formula"], df, start={"Subject": [[600.0, 10.0], [10.0, 35.0]],
                                                 "Residual": 650.0})
    assert abs(by_name.loglik - full.loglik) < 1e-9 * abs(full.loglik)
    with pytest.raises(mme.DataError, match="start"):
        mme.fit(ref["formula"], df, start=np.array([1.0, 2.0]))
