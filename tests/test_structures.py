"""predict, the marginal covariance V, invariances of a fit, bad input, and plots.

Tolerances: predictions and V are compared with dense NumPy algebra on the same
fitted parameters (round-off only, ``RTOL_EXACT``, ``RTOL_V_DENSE``); fits of permuted or
relabelled data with the fit of the original data (the REML path is the same up to
round-off in the sums, ``RTOL_INVARIANT_*``); boundary fits with lme4's (below).
"""
import json
import warnings

import numpy as np
import pandas as pd
import pytest

import mme
from mme.inference import marginal
from conftest import DATA, load_case, mrode

# Named tolerances at ~10-30x what is achieved (tests/README.md); "was" = before 2026-12.
#: predictions and V against dense algebra on the same parameters (relative; V of its max)
RTOL_EXACT = 1e-14           # was 1e-12; achieved 7.1e-16, margin 14x
#: predict(newdata = fitted data) against fit.fitted() (absolute; responses up to ~500)
ATOL_PREDICT = 1e-12         # was 1e-10; achieved 5.7e-14, margin 18x
#: V = ZGZ' + R against the dense product (of its largest entry)
RTOL_V_DENSE = 2e-15         # was 1e-12; achieved 1.2e-16, margin 17x
#: logLik, variance components, fixed effects, BLUPs (of the group's largest) after
#: permuting rows / relabelling levels (the REML path is the same up to round-off); all
#: four were RTOL_INVARIANT = 1e-8; achieved on sleepstudy_us and penicillin:
RTOL_INVARIANT_LOGLIK = 2e-11  # achieved 1.0e-12, margin 20x
RTOL_INVARIANT_VC = 2e-12      # achieved 1.2e-13, margin 17x
RTOL_INVARIANT_FE = 5e-12      # achieved 3.4e-13, margin 15x
RTOL_INVARIANT_BLUP = 5e-11    # achieved 2.5e-12, margin 20x
#: predictions for Mrode's animals without records against the JSON's dense recomputation
ATOL_MRODE_PREDICT = 1e-14   # was 1e-6 (the JSON had 6+ digits then); achieved 4.4e-16, 23x
#: fitted values of the permuted fit, row by row
RTOL_PERMUTED_FITTED = 1e-13  # was 1e-7; achieved 3.9e-15, margin 26x

ALL_CASES = ["kfert_random", "dyestuff", "penicillin", "pastes", "cake_splitplot",
             "sleepstudy_us", "sleepstudy_diag"]


def _xbeta_dense(fit):
    X = fit.internals.design.X.toarray()
    return X @ fit.beta


# -- predict ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_CASES)
def test_predict_on_fitted_data_equals_fitted(lme4_fit, name):
    _, fit = lme4_fit(name)
    _, df = load_case(name)
    pred = fit.predict(df)
    assert isinstance(pred, pd.Series)
    assert pred.index.equals(df.index)
    np.testing.assert_allclose(pred.to_numpy(), fit.fitted(), rtol=0, atol=ATOL_PREDICT)


def test_predict_none_gives_fitted_values(lme4_fit):
    _, fit = lme4_fit("sleepstudy_us")
    np.testing.assert_array_equal(fit.predict().to_numpy(), fit.fitted())
    np.testing.assert_allclose(fit.predict(include_random=False).to_numpy(), _xbeta_dense(fit),
                               rtol=RTOL_EXACT)


def test_predict_population_level(lme4_fit):
    _, fit = lme4_fit("sleepstudy_us")
    _, df = load_case("sleepstudy_us")
    xb = fit.beta[0] + fit.beta[1] * df["Days"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no new-level warning when the random part is off
        pred = fit.predict(df, include_random=False)
    np.testing.assert_allclose(pred.to_numpy(), xb, rtol=RTOL_EXACT)


def test_predict_new_levels_get_population_prediction(lme4_fit):
    _, fit = lme4_fit("sleepstudy_us")
    _, df = load_case("sleepstudy_us")
    new = df.copy()
    new["Subject"] = "new_" + df["Subject"].astype(str)
    with pytest.warns(UserWarning, match=r"180 of 180 rows have 18 level\(s\) of 'Subject'"):
        pred = fit.predict(new)
    np.testing.assert_allclose(pred.to_numpy(), _xbeta_dense(fit), rtol=RTOL_EXACT)


def test_predict_mixes_known_and_new_levels(lme4_fit):
    _, fit = lme4_fit("sleepstudy_us")
    re = fit.random_effects.pivot(index="level", columns="term", values="blup")
    new = pd.DataFrame({"Days": [0.0, 4.5, 9.0, 2.0],
                        "Subject": [308, "308", "999", 330]},  # ints and strings both match
                       index=["a", "b", "c", "d"])
    with pytest.warns(UserWarning, match=r"1 of 4 rows have 1 level\(s\).*\['999'\]"):
        pred = fit.predict(new)
    b0, b1 = fit.beta
    want = [b0 + re.loc["308", "(Intercept)"],
            b0 + re.loc["308", "(Intercept)"] + 4.5 * (b1 + re.loc["308", "Days"]),
            b0 + 9.0 * b1,
            b0 + re.loc["330", "(Intercept)"] + 2.0 * (b1 + re.loc["330", "Days"])]
    assert list(pred.index) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(pred.to_numpy(), want, rtol=RTOL_EXACT)


def test_predict_interaction_group(lme4_fit):
    _, fit = lme4_fit("pastes")  # (1|batch/cask) = (1|cask:batch) + (1|batch)
    re = fit.random_effects.set_index(["group", "level"])["blup"]
    new = pd.DataFrame({"batch": ["A", "B", "Z"], "cask": ["a", "c", "a"]})
    with pytest.warns(UserWarning) as caught:
        pred = fit.predict(new)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "1 of 3 rows have 1 level(s) of 'batch'" in messages[0]
    assert "1 of 3 rows have 1 level(s) of 'cask:batch' not in the fit (e.g. ['a:Z'])" in messages[1]
    b0 = fit.beta[0]
    want = [b0 + re[("cask:batch", "a:A")] + re[("batch", "A")],
            b0 + re[("cask:batch", "c:B")] + re[("batch", "B")],
            b0]
    np.testing.assert_allclose(pred.to_numpy(), want, rtol=RTOL_EXACT)


def test_predict_pedigree_animals_without_records():
    ex, _, data, fit = mrode()
    np.testing.assert_allclose(fit.predict(data).to_numpy(), fit.fitted(), rtol=0,
                               atol=ATOL_PREDICT)
    blup = ex["expected"]["blup_id"]
    sex = ex["expected"]["sex"]
    # ancestors 1 and 3 have no records but have BLUPs through A; ids may come as ints
    new = pd.DataFrame({"id": [1, "3"], "sex": ["M", "F"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = fit.predict(new)
    np.testing.assert_allclose(pred.to_numpy(), [sex["M"] + blup["1"], sex["F"] + blup["3"]],
                               rtol=0, atol=ATOL_MRODE_PREDICT)


def test_predict_fixed_factor_levels_and_missing_values(lme4_fit):
    _, fit = lme4_fit("kfert_random")
    fe = fit.fixed_effects["estimate"]
    new = pd.DataFrame({"K2O_lbac": ["36", 108, 144.0, np.nan], "rep": [1, 2, 3, 1]})
    pred = fit.predict(new, include_random=False)
    want = [fe["(Intercept)"], fe["(Intercept)"] + fe["K2O_lbac108"],
            fe["(Intercept)"] + fe["K2O_lbac144"]]
    np.testing.assert_allclose(pred.to_numpy()[:3], want, rtol=RTOL_EXACT)
    assert np.isnan(pred.iloc[3])  # R's na.pass: a missing covariate gives NA


def test_predict_unseen_fixed_level_is_a_data_error(lme4_fit):
    _, fit = lme4_fit("kfert_random")
    with pytest.raises(mme.DataError, match=r"'K2O_lbac'.*\[999\]"):
        fit.predict(pd.DataFrame({"K2O_lbac": [36, 999], "rep": [1, 1]}))


def test_predict_missing_column_is_a_data_error(lme4_fit):
    _, fit = lme4_fit("sleepstudy_us")
    _, df = load_case("sleepstudy_us")
    with pytest.raises(mme.DataError, match=r"\['Days'\]"):
        fit.predict(df.drop(columns="Days"))
    with pytest.raises(mme.DataError, match=r"\['Subject'\]"):
        fit.predict(df.drop(columns="Subject"))
    # the grouping factor is not needed for population-level predictions: Xβ̂
    pred = fit.predict(df.drop(columns="Subject"), include_random=False)
    np.testing.assert_allclose(pred.to_numpy(), fit.beta[0] + fit.beta[1] * df["Days"].to_numpy(),
                               rtol=RTOL_EXACT, atol=0)


def test_predict_non_numeric_slope_is_a_data_error(lme4_fit):
    _, fit = lme4_fit("sleepstudy_us")
    _, df = load_case("sleepstudy_us")
    bad = df.assign(Days=df["Days"].astype(str))
    with pytest.raises(mme.DataError, match="'Days'"):
        fit.predict(bad)


# -- marginal covariance ---------------------------------------------------------
def _dense_V(fit, rows):
    """Σ Z (G₀ ⊗ K) Z' + σ²ₑ I on all rows, dense, then the chosen rows and columns."""
    design = fit.internals.design
    G0s, s2e = fit.internals.mme.split(fit.internals.theta)
    V = s2e * np.eye(design.n)
    for b, G0 in zip(design.blocks, G0s):
        K = np.linalg.inv(b.Kinv.toarray())
        Z = b.Z.toarray()
        V += Z @ np.kron(G0, K) @ Z.T
    return V[np.ix_(rows, rows)]


@pytest.mark.parametrize("name", ["sleepstudy_us", "sleepstudy_diag", "penicillin", "pastes"])
def test_marginal_covariance_matches_dense(lme4_fit, name):
    _, fit = lme4_fit(name)
    n = fit.nobs
    for rows in (None, [5, 0, 17, n - 1, 5], np.arange(n) % 3 == 0):
        got = fit.marginal_covariance(rows)
        idx = np.arange(n) if rows is None else (
            np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows))
        want = _dense_V(fit, idx)
        assert got.shape == (len(idx), len(idx))
        scale = np.abs(want).max()
        np.testing.assert_allclose(got.toarray(), want, rtol=0, atol=RTOL_V_DENSE * scale)


def test_marginal_covariance_is_sparse_for_independent_groups(lme4_fit):
    _, fit = lme4_fit("sleepstudy_us")
    V = fit.marginal_covariance()
    assert V.nnz == 18 * 10 * 10  # 18 subjects × 10 × 10 days, nothing else stored


def test_marginal_covariance_pedigree_mrode():
    ex, ped, data, fit = mrode()
    A = np.linalg.inv(ped.ainverse().toarray())
    block = fit.internals.design.blocks[0]
    Z = block.Z.toarray()
    want = Z @ A @ Z.T * ex["variances"]["id"] + ex["variances"]["Residual"] * np.eye(len(data))
    got = fit.marginal_covariance().toarray()
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL_V_DENSE * np.abs(want).max())
    sub = [3, 1]
    np.testing.assert_allclose(fit.marginal_covariance(sub).toarray(), want[np.ix_(sub, sub)],
                               rtol=RTOL_EXACT)


def test_relationship_submatrix_solves_in_blocks(monkeypatch):
    _, ped, _, _ = mrode()
    Ainv = ped.ainverse()
    A = np.linalg.inv(Ainv.toarray())
    S = np.array([7, 0, 3, 4])
    monkeypatch.setattr(marginal, "_SOLVE_BYTES", 8 * Ainv.shape[0])  # one column per solve
    np.testing.assert_allclose(marginal.relationship_submatrix(Ainv, S), A[np.ix_(S, S)],
                               rtol=RTOL_EXACT, atol=RTOL_EXACT)


def test_marginal_covariance_row_limit(lme4_fit, monkeypatch):
    _, fit = lme4_fit("dyestuff")
    with pytest.raises(mme.DataError, match="force=True"):
        marginal.marginal_covariance(fit, np.zeros(marginal.MAX_ROWS + 1, dtype=int))
    monkeypatch.setattr(marginal, "MAX_ROWS", 10)
    with pytest.raises(mme.DataError, match="30 rows"):
        marginal.marginal_covariance(fit)
    assert marginal.marginal_covariance(fit, force=True).shape == (30, 30)
    with pytest.raises(mme.DataError, match=r"\[30\]"):
        marginal.marginal_covariance(fit, [0, 30])


# -- invariances -----------------------------------------------------------------
def _summary(fit):
    vc = fit.variance_components.set_index(["group", "term1", "term2"])["estimate"]
    fe = fit.fixed_effects["estimate"]
    re = fit.random_effects.set_index(["group", "term", "level"])["blup"]
    return vc, fe, re, fit.loglik


def _assert_same_fit(a, b, relabel=None):
    vc_a, fe_a, re_a, ll_a = _summary(a)
    vc_b, fe_b, re_b, ll_b = _summary(b)
    assert b.converged
    np.testing.assert_allclose(ll_b, ll_a, rtol=RTOL_INVARIANT_LOGLIK, atol=0)
    vc_a, vc_b = vc_a.sort_index(), vc_b.sort_index()
    assert vc_b.index.equals(vc_a.index) and fe_b.index.equals(fe_a.index)
    np.testing.assert_allclose(vc_b.to_numpy(), vc_a.to_numpy(), rtol=RTOL_INVARIANT_VC, atol=0)
    np.testing.assert_allclose(fe_b.to_numpy(), fe_a.to_numpy(), rtol=RTOL_INVARIANT_FE, atol=0)
    if relabel is not None:  # the BLUP of old level x is the BLUP of new level relabel[group][x]
        keys = [(g, t, relabel.get(g, {}).get(lv, lv)) for g, t, lv in re_a.index]
        re_a = pd.Series(re_a.to_numpy(), index=pd.MultiIndex.from_tuples(keys, names=re_a.index.names))
    re_b = re_b.loc[re_a.index]
    # relative to the spread of the group's BLUPs (a BLUP near 0 has no relative accuracy)
    scale = re_a.abs().groupby(level=["group", "term"]).transform("max").to_numpy()
    np.testing.assert_allclose((re_b.to_numpy() - re_a.to_numpy()) / scale, 0, rtol=0,
                               atol=RTOL_INVARIANT_BLUP)


@pytest.mark.parametrize("name", ["sleepstudy_us", "penicillin"])
def test_row_permutation_changes_nothing(lme4_fit, name):
    ref, fit = lme4_fit(name)
    _, df = load_case(name)
    perm = np.random.default_rng(20240401).permutation(len(df))
    refit = mme.fit(ref["formula"], df.iloc[perm], method=ref["method"])
    _assert_same_fit(fit, refit)
    # fitted values follow their rows: a Series indexed by the data's row labels
    got = refit.fitted()
    assert list(got.index) == list(df.index[perm])
    np.testing.assert_allclose(got.loc[fit.fitted().index], fit.fitted(),
                               rtol=RTOL_PERMUTED_FITTED, atol=0)


@pytest.mark.parametrize("name", ["sleepstudy_us", "penicillin"])
def test_relabelled_levels_change_nothing(lme4_fit, name):
    ref, fit = lme4_fit(name)
    _, df = load_case(name)
    factors = ref["factors"] if isinstance(ref["factors"], list) else [ref["factors"]]
    rng = np.random.default_rng(7)
    relabel, new = {}, df.copy()
    for f in factors:
        old = [str(v) for v in df[f].cat.categories]
        # "S<random number>": new labels sort in a different order than the old ones
        codes = rng.permutation(len(old))
        relabel[f] = {o: f"S{c:03d}" for o, c in zip(old, codes)}
        new[f] = df[f].astype(str).map(relabel[f])
    assert [relabel[factors[0]][o] for o in sorted(relabel[factors[0]])] != \
        sorted(relabel[factors[0]].values())
    refit = mme.fit(ref["formula"], new, method=ref["method"])
    _assert_same_fit(fit, refit, relabel=relabel)


# -- bad input -------------------------------------------------------------------
def test_missing_grouping_factor_is_named():
    _, df = load_case("sleepstudy_us")
    with pytest.raises(mme.FormulaError, match="Patient"):
        mme.fit("Reaction ~ Days + (Days|Patient)", df)


def test_non_numeric_slope_is_named():
    _, df = load_case("sleepstudy_us")
    df["DayName"] = "day" + df["Days"].astype(str)
    with pytest.raises(mme.DataError, match="'DayName'"):
        mme.fit("Reaction ~ Days + (DayName|Subject)", df)


def _more_slopes_than_observations():
    """30 groups × 2 rows; (1 + x1 + x2 + x3 | g) has 4 effects per group: 120 > 60.
    lme4 stops: "number of observations (=60) <= number of random effects (=120)"."""
    rng = np.random.default_rng(1)
    g = np.repeat([f"g{i:02d}" for i in range(30)], 2)
    df = pd.DataFrame({"g": g, "x1": rng.normal(size=60), "x2": rng.normal(size=60),
                       "x3": rng.normal(size=60)})
    df["y"] = 1 + 0.5 * df["x1"] + rng.normal(size=60) + np.repeat(rng.normal(size=30), 2)
    return df


def test_more_random_effects_than_observations_is_refused():
    """lme4's check.nobs.vs.nRE: 60 observations cannot identify 120 random effects."""
    df = _more_slopes_than_observations()
    with pytest.raises(mme.DataError, match=r"observations \(=60\) <= number of random effects "
                                            r"\(=120\).*\| g\)"):
        mme.fit("y ~ x1 + (1 + x1 + x2 + x3 | g)", df)


# -- plots -----------------------------------------------------------------------
@pytest.fixture
def pyplot():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    yield plt
    plt.close("all")


def test_plot_marginal_covariance(lme4_fit, pyplot):
    from mme import plot
    _, fit = lme4_fit("sleepstudy_us")
    ax = plot.marginal_covariance(fit)
    img = ax.get_images()[0].get_array()
    assert img.shape == (60, 60)  # first 60 rows in Subject order
    np.testing.assert_allclose(img, fit.marginal_covariance(np.arange(60)).toarray(),
                               rtol=RTOL_EXACT, atol=0)
    assert len(ax.figure.axes) == 2  # the image and its colorbar
    assert ax.get_yticklabels()[0].get_text() == "0: 308"
    _, ax2 = pyplot.subplots()
    assert plot.marginal_covariance(fit, rows=[0, 10, 20], ax=ax2) is ax2


def test_plot_marginal_covariance_pedigree(pyplot):
    from mme import plot
    _, _, data, fit = mrode()
    ax = plot.marginal_covariance(fit)
    assert ax.get_images()[0].get_array().shape == (len(data), len(data))


def test_plot_caterpillar(lme4_fit, pyplot):
    from mme import plot
    _, fit = lme4_fit("sleepstudy_us")
    ax = plot.caterpillar(fit, "Subject", "Days", level=0.9)
    x = ax.lines[-1].get_xdata()  # the BLUP markers, sorted
    assert len(x) == 18 and np.all(np.diff(x) >= 0)
    assert "Days" in ax.get_title()
    with pytest.raises(KeyError, match="Patient"):
        plot.caterpillar(fit, "Patient")
    with pytest.raises(ValueError, match="level"):
        plot.caterpillar(fit, "Subject", level=95)


def test_plot_needs_matplotlib(lme4_fit, monkeypatch):
    import sys
    from mme import plot
    _, fit = lme4_fit("dyestuff")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install mme\[plot\]"):
        plot.caterpillar(fit, "Batch")


#: rank-deficient unstructured G₀ (tests/data/rank_deficient_slopes.R, lme4 1.1-31 +
#: lmerTest 3.1-3 + pbkrtest 0.5.2): the optimum is on the boundary of the PSD cone and is
#: reached in the Λ form (``mme.boundary``). β, SE, Satterthwaite and Kenward–Roger df,
#: BLUPs are computed at G₀ with its null eigenvalues raised to 1e-6 × the largest
#: (``fit.BOUNDARY_FLOOR``). Achieved (REML/ML max) and margins:
#: logLik: ours minus lme4's is +4.3e-9 (REML), +1.1e-8 (ML), +5.1e-11 (correlation -1):
#: bobyqa stops short; ours must not fall below lme4's, nor exceed it by much (that would be
#: another criterion).
LOGLIK_BELOW_BOUNDARY = 1e-9   # was 1e-6 (ours - lme4 >= -this); achieved ours above always
LOGLIK_ABOVE_BOUNDARY = 2e-7   # was 1e-4; achieved 1.1e-8 (ML), margin 19x
#: G₀ (of its largest element) and σ²ₑ: both optimisers stop on a flat ridge (lme4's Λ has a
#: 7e-6 entry ours has at 0). NOT tightened, and below 10x: achieved 3.9e-5 (ML; REML
#: 1.6e-5), margin 2.6x; kept at the old 1e-4 (never looser)
G0_ATOL_BOUNDARY = 1e-4        # was 1e-4
SIGMA2_RTOL_BOUNDARY = 1e-4    # was 1e-4; achieved 3.5e-6, margin 28x
#: the same for the correlation -1 case (d = 2), which lands closer to lme4's
G0_ATOL_CORR1 = 5e-5           # was 1e-4; achieved 2.5e-6 of the largest, margin 20x
SIGMA2_RTOL_CORR1 = 1e-5       # was 1e-4; achieved 3.7e-7, margin 27x
#: eigenvalues of the reported G₀ (of the largest): PSD, rank 1
EIG_PSD_FLOOR = 1e-15          # was 1e-12; achieved -7.5e-17, margin 13x
EIG_RANK1_CEIL = 5e-14         # was 1e-8; achieved 2.0e-15, margin 25x
#: β, SE, df (Satterthwaite and KR), BLUPs (of the largest). SE, df and the KR F NOT
#: tightened and below 10x (achieved 8.0e-6 -> margin 6.3x; df 2.0e-5 -> 5.0x, KR 1.5e-5 ->
#: 6.9x; KR F 1.3e-5 -> 7.5x): the floor on G₀'s null eigenvalues limits the agreement;
#: kept at their old values (never looser)
BETA_RTOL_BOUNDARY = 1e-5      # was 1e-5; achieved 4.4e-7, margin 23x
SE_RTOL_BOUNDARY = 5e-5        # was 5e-5
DF_RTOL_BOUNDARY = 1e-4        # was 1e-4
BLUP_ATOL_BOUNDARY = 5e-5      # was 5e-5; achieved 5.0e-6 of the largest, margin 10x
#: the Λ form's −2ℓ and θ round trip against the G⁻¹ form's at the same point
RTOL_BOUNDARY_FORM = 5e-15     # was 1e-10 / 1e-12; achieved 3.0e-16, margin 17x


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_rank_deficient_unstructured_G0_reaches_lme4s_boundary_optimum(method):
    full = json.loads((DATA / "rank_deficient_slopes.json").read_text())
    ref = full if method == "REML" else full["ml"]
    d = pd.read_csv(DATA / "rank_deficient_slopes.csv")
    assert ref["isSingular"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = mme.fit("y ~ x + z + (1 + x + z | g)", d, method=method)
    msgs = [str(w.message) for w in caught if issubclass(w.category, mme.SingularFitWarning)]
    assert fit.singular and fit.converged
    assert msgs and "'g' term" in msgs[0] and "rank 1 of 3" in msgs[0]
    assert not [w for w in caught if issubclass(w.category, mme.ConvergenceWarning)]
    assert -LOGLIK_BELOW_BOUNDARY <= fit.loglik - ref["loglik"] <= LOGLIK_ABOVE_BOUNDARY
    vc = fit.variance_components
    G0 = np.zeros((3, 3))
    terms = ["(Intercept)", "x", "z"]
    for _, r in vc[vc["group"] == "g"].iterrows():
        a = terms.index(r["term1"])
        b = terms.index(r["term2"]) if r["term2"] else a
        G0[a, b] = G0[b, a] = r["estimate"]
    G0_ref = np.array(ref["G0"])
    np.testing.assert_allclose(G0, G0_ref, rtol=0, atol=G0_ATOL_BOUNDARY * np.abs(G0_ref).max())
    assert np.linalg.eigvalsh(G0)[0] >= -EIG_PSD_FLOOR * np.abs(G0).max()      # PSD, rank 1
    assert np.linalg.eigvalsh(G0)[1] <= EIG_RANK1_CEIL * np.abs(G0).max()
    s2 = vc.loc[vc["group"] == "Residual", "estimate"].item()
    np.testing.assert_allclose(s2, ref["sigma2"], rtol=SIGMA2_RTOL_BOUNDARY, atol=0)
    # no asymptotic SEs for a G₀ on the boundary (lme4 gives none); σ²ₑ keeps its SE
    assert vc.loc[vc["group"] == "g", "std_error"].isna().all()
    assert np.isfinite(vc.loc[vc["group"] == "Residual", "std_error"].item())
    if method == "ML":
        return
    fe = fit.fixed_effects
    np.testing.assert_allclose(fe["estimate"], ref["fixef"], rtol=BETA_RTOL_BOUNDARY)
    np.testing.assert_allclose(fe["std_error"], ref["se"], rtol=SE_RTOL_BOUNDARY)
    np.testing.assert_allclose(fe["df"], ref["df_satterthwaite"], rtol=DF_RTOL_BOUNDARY)
    # Kenward–Roger (pbkrtest) at the boundary: df and the F of each slope (= (β/SE_KR)²)
    kr = fit.anova(df_method="kenward-roger")
    np.testing.assert_allclose(kr["den_df"], ref["df_kenward_roger"][1:], rtol=DF_RTOL_BOUNDARY)
    f_ref = (np.array(ref["fixef"][1:]) / np.array(ref["se_kenward_roger"][1:])) ** 2
    np.testing.assert_allclose(kr["F_value"], f_ref, rtol=2 * SE_RTOL_BOUNDARY)
    blup = fit.random_effects.pivot(index="level", columns="term", values="blup")
    R = np.array(ref["ranef"])
    np.testing.assert_allclose(blup.loc[ref["ranef_levels"], terms].to_numpy(), R, rtol=0,
                               atol=BLUP_ATOL_BOUNDARY * np.abs(R).max())


def test_correlation_one_boundary_matches_lme4():
    """A d = 2 term whose correlation goes to −1 (rank-1 G₀): lme4's optimum and isSingular."""
    ref = json.loads((DATA / "correlation_one_slope.json").read_text())
    d = pd.read_csv(DATA / "correlation_one_slope.csv")
    with pytest.warns(mme.SingularFitWarning, match="rank 1 of 2"):
        fit = mme.fit("y ~ x + (1 + x | g)", d)
    assert ref["isSingular"] and fit.singular and fit.converged
    assert -LOGLIK_BELOW_BOUNDARY <= fit.loglik - ref["loglik"] <= LOGLIK_ABOVE_BOUNDARY
    est = fit.variance_components["estimate"].to_numpy()
    G0_ref = np.array(ref["G0"])
    np.testing.assert_allclose(est[:3], [G0_ref[0, 0], G0_ref[1, 1], G0_ref[1, 0]], rtol=0,
                               atol=G0_ATOL_CORR1 * np.abs(G0_ref).max())
    np.testing.assert_allclose(est[3], ref["sigma2"], rtol=SIGMA2_RTOL_CORR1, atol=0)


def test_boundary_form_criterion_equals_the_mme_criterion_inside_the_cone():
    """The Λ form's −2ℓ(λ, σ²ₑ) is the G⁻¹ form's −2ℓ(θ) at the same point (REML and ML)."""
    from mme.engine.boundary import RelativeFactorForm
    d = pd.read_csv(DATA / "rank_deficient_slopes.csv")
    for method in ("REML", "ML"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = mme.fit("y ~ x + z + (1 + x + z | g) + (1 | h)",
                          d.assign(h=np.arange(len(d)) % 7), method=method)
        model = fit.internals.likelihood
        G0 = np.array([[0.7, 0.2, 0.05], [0.2, 0.4, 0.02], [0.05, 0.02, 0.1]])
        theta = np.concatenate([model.mme.structures[0].theta_of(G0), [0.3], [0.9]])
        form = RelativeFactorForm(model)
        lam = form.lam_of(theta)
        np.testing.assert_allclose(form.m2ll(lam, 0.9), model.evaluate(theta, derivatives=False).m2ll,
                                   rtol=RTOL_BOUNDARY_FORM, atol=0)
        np.testing.assert_allclose(form.theta_of(lam, 0.9), theta, rtol=RTOL_BOUNDARY_FORM,
                                   atol=0)


def test_marginal_covariance_of_a_boundary_fit_uses_the_reported_singular_G0():
    d = pd.read_csv(DATA / "correlation_one_slope.csv")
    with pytest.warns(mme.SingularFitWarning):
        fit = mme.fit("y ~ x + (1 + x | g)", d)
    rows = np.arange(12)
    V = fit.marginal_covariance(rows).toarray()
    vc = fit.variance_components["estimate"].to_numpy()
    G0 = np.array([[vc[0], vc[2]], [vc[2], vc[1]]])
    Z = np.zeros((12, 4))   # rows 0-11 are groups g1, g2 (6 records each)
    x = d["x"].to_numpy()[:12]
    for i in range(12):
        Z[i, 2 * (i // 6)] = 1.0
        Z[i, 2 * (i // 6) + 1] = x[i]
    dense = Z @ np.kron(np.eye(2), G0) @ Z.T + vc[3] * np.eye(12)
    np.testing.assert_allclose(V, dense, rtol=0, atol=RTOL_V_DENSE * np.abs(dense).max())
