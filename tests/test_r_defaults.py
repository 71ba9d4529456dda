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
