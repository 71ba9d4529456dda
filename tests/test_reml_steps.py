"""The AI-REML iteration's pieces: moment starting values, the log-scale step for
variances, and the Newton-decrement convergence test."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mme
from mme.engine import reml
from conftest import load_case

# Tolerances at ~10-30x what is achieved (tests/README.md); "was" is the value before 2026-12.
#: closed-form moment estimator vs the same textbook formula coded with pandas
RTOL_MOMENT = 1e-14          # was 1e-12; achieved 6.9e-16, margin 15x
#: the AI step on the log scale against the formula (same arithmetic)
RTOL_STEP = 1e-14            # was 1e-14; achieved 0
#: θ after one more AI-REML run from a converged θ (penicillin), in standard errors
ATOL_FURTHER_STEP = 2e-5     # was 1e-4; achieved 8.9e-7, margin 22x
#: the bound-constrained Newton step against scipy's trust-region minimiser of the same
#: quadratic model (all four parameters, the pinned and held ones fixed)
RTOL_BOUND_STEP = 1e-14      # new; achieved 3.9e-16, margin 26x


def _textbook_one_way(groups: np.ndarray, r: np.ndarray) -> float:
    """(MSB − MSW)/n₀ of the unbalanced one-way ANOVA (e.g. Searle, Casella & McCulloch 1992, §3.5)."""
    df = pd.DataFrame({"g": groups, "r": r})
    g = df.groupby("g")["r"]
    n_j, mean_j = g.size().to_numpy(float), g.mean().to_numpy()
    n, J = len(r), len(n_j)
    grand = r.mean()
    msb = np.sum(n_j * (mean_j - grand) ** 2) / (J - 1)
    msw = np.sum((r - g.transform("mean").to_numpy()) ** 2) / (n - J)
    n0 = (n - np.sum(n_j ** 2) / n) / (J - 1)
    return (msb - msw) / n0


def test_moment_start_is_the_one_way_anova_estimator():
    rng = np.random.default_rng(7)
    J = 12
    sizes = rng.integers(2, 9, size=J)
    groups = np.repeat(np.arange(J), sizes)
    r = rng.normal(size=J)[groups] * 0.8 + rng.normal(size=groups.size)
    Z = sp.csc_matrix((np.ones(groups.size), (np.arange(groups.size), groups)))
    got = reml._moment_variance(Z, r)
    np.testing.assert_allclose(got, _textbook_one_way(groups, r), rtol=RTOL_MOMENT, atol=0)


def test_moment_start_not_identified_returns_none():
    # one record per level: between and within cannot be told apart
    Z = sp.identity(5, format="csc")
    assert reml._moment_variance(Z, np.arange(5.0)) is None


def test_log_scale_step_keeps_variances_positive():
    theta = np.array([0.02, 0.5, 1.0, 3.0])
    delta = np.array([-0.05, 0.2, -0.4, 1.5])       # the first would cross zero linearly
    log_mask = np.array([True, True, True, False])
    got = reml.ai_trial(theta, delta, 1.0, log_mask)
    # log σ² scale: σ² · exp(δ/σ²) (Newton step δ/σ² there), linear for the rest
    expected = np.array([0.02 * np.exp(-2.5), 0.5 * np.exp(0.4), 1.0 * np.exp(-0.4), 4.5])
    np.testing.assert_allclose(got, expected, rtol=RTOL_STEP, atol=0)
    # a variance leaving its lower bound (δ/σ² > LOG_STEP_MAX) moves linearly
    got = reml.ai_trial(np.array([1e-8]), np.array([0.3]), 1.0, np.array([True]))
    np.testing.assert_allclose(got, [1e-8 + 0.3], rtol=RTOL_STEP, atol=0)
    # halved steps halve the log-scale step
    got = reml.ai_trial(theta, delta, 0.5, log_mask)
    np.testing.assert_allclose(got[0], 0.02 * np.exp(-1.25), rtol=RTOL_STEP, atol=0)


def test_converged_fit_has_small_decrement_and_matches_a_further_step():
    ref, df = load_case("penicillin")
    fit = mme.fit(ref["formula"], df)
    log = fit.iteration_log
    assert fit.converged
    assert log["decrement"].iloc[-1] < reml.TOL_DECREMENT_ABS
    # continuing from the converged θ moves no variance by more than ATOL_FURTHER_STEP SEs
    model = fit.internals.likelihood
    res = reml.fit_variances(model, theta0=fit.internals.theta)
    se = np.sqrt(np.diag(np.linalg.inv(res.evaluation.AI)))
    np.testing.assert_allclose((res.theta - fit.internals.theta) / se, 0, rtol=0,
                               atol=ATOL_FURTHER_STEP)


def test_variance_heading_for_zero_is_tried_at_its_bound():
    from types import SimpleNamespace
    AI = np.diag([1.0 / 0.5 ** 2, 1.0 / 0.5 ** 2, 1.0 / 0.1 ** 2])   # SEs 0.5, 0.5, 0.1
    ev = SimpleNamespace(AI=AI)
    theta = np.array([0.02, 0.3, 1.0])
    delta = np.array([-0.05, -0.4, 0.1])     # both variances would cross zero linearly
    free = np.ones(3, dtype=bool)
    mask = reml._heading_for_zero(ev, theta, delta, free, np.ones(3, dtype=bool))
    # 0.02 < 0.1 × SE 0.5 jumps; 0.3 ≥ 0.05 keeps its log step; σ²ₑ does not cross zero
    assert mask.tolist() == [True, False, False]
    # a parameter held at its bound (not free) is left alone
    free[0] = False
    assert not reml._heading_for_zero(ev, theta, delta, free, np.ones(3, dtype=bool)).any()


def test_zero_variance_reaches_the_bound_and_is_flagged():
    rng = np.random.default_rng(5)
    n = 300
    a, b = rng.integers(0, 10, n), rng.integers(0, 30, n)
    y = rng.normal(0, 1, 30)[b] + rng.normal(0, 1, n)          # no 'a' effect
    df = pd.DataFrame({"y": y, "a": a.astype(str), "b": b.astype(str)})
    with pytest.warns(mme.SingularFitWarning):
        fit = mme.fit("y ~ 1 + (1|a) + (1|b)", df)
    assert fit.converged
    vc = fit.variance_components.set_index("group")["estimate"]
    assert vc["a"] == 0.0 and vc["b"] > 0.5


def test_bound_step_is_the_constrained_maximiser_of_the_quadratic_model():
    """With a variance pinned at its bound, the other parameters take the maximiser of
    s'δ − ½δ'AIδ given δ_pin = lb − θ_pin (checked by scipy's minimiser)."""
    from types import SimpleNamespace
    from scipy.optimize import minimize
    rng = np.random.default_rng(11)
    B = rng.normal(size=(4, 4))
    AI = B @ B.T + 4 * np.eye(4)
    score = rng.normal(size=4)
    theta = np.array([0.3, 0.02, 1.5, 0.8])
    lb = np.full(4, 1e-9)
    pin = np.array([False, True, False, False])
    free = np.array([True, True, True, False])        # the last held (at its bound)
    got = reml._bound_step(SimpleNamespace(AI=AI, score=score), theta, free, pin, lb)
    d_pin = lb[1] - theta[1]

    E = np.zeros((4, 2))
    E[0, 0] = E[2, 1] = 1.0                           # the two parameters left to move
    d0 = np.array([0.0, d_pin, 0.0, 0.0])

    def neg_q(x):
        d = d0 + E @ x
        return -(score @ d - 0.5 * d @ AI @ d)
    opt = minimize(neg_q, np.zeros(2), method="trust-exact",
                   jac=lambda x: -E.T @ (score - AI @ (d0 + E @ x)),
                   hess=lambda x: E.T @ AI @ E, options={"gtol": 1e-14})
    np.testing.assert_allclose(got[[0, 2]], opt.x, rtol=RTOL_BOUND_STEP, atol=0)
    assert got[1] == d_pin and got[3] == 0.0
