"""R's format() in mme.inference.printing, and the hypothesis basis of the type-III anova
(lmerTest 3.1-3 uses type-I contrasts for a model with one fixed term).

The expected values were obtained with R 4.2.2 / lme4 1.1-31 / lmerTest 3.1-3 by the
Rscript calls given in the comments (``dput`` output, copied here as literals).
"""
import warnings

import numpy as np
import pandas as pd
import pytest

import mme
from mme.inference import emmeans as emmeans_module
from mme.inference.anova import doolittle, ftest, type1_contrasts, type3_contrasts
from mme.inference.printing import print_summary, r_format

NA = np.nan

# ------------------------------------------------------------------------ r_format --
# R pads the elements of format() to a common width; r_format leaves the padding to the
# table layout, so R's strings are compared stripped.
R_FORMAT_CASES = [
    # dput(format(c(1.23456, 10, NA), digits=3))
    (([1.23456, 10, NA],), {"digits": 3}, [" 1.23", "10.00", "   NA"]),
    # dput(format(c(0.5, 0.25, 2), digits=7))
    (([0.5, 0.25, 2],), {"digits": 7}, ["0.50", "0.25", "2.00"]),
    # dput(format(c(3.14159, 2.71828), digits=3))
    (([3.14159, 2.71828],), {"digits": 3}, ["3.14", "2.72"]),
    # dput(format(c(12.3456, 0.001234), digits=3))
    (([12.3456, 0.001234],), {"digits": 3}, ["12.34560", " 0.00123"]),
    # dput(format(c(-1.5, Inf, -Inf, NA), digits=3))
    (([-1.5, np.inf, -np.inf, NA],), {"digits": 3}, ["-1.5", " Inf", "-Inf", "  NA"]),
    # dput(format(c(0, 0.04999, 123.4), digits=3))
    (([0, 0.04999, 123.4],), {"digits": 3}, ["  0.00", "  0.05", "123.40"]),
    # dput(format(c(6.088902, 6.089314), digits=5))
    (([6.088902, 6.089314],), {"digits": 5}, ["6.0889", "6.0893"]),
    # dput(format(c(99.95, 0.1), digits=3))
    (([99.95, 0.1],), {"digits": 3}, ["100.0", "  0.1"]),
    # dput(format(c(0.15, 0.25, 0.35), digits=1))   (binary values: 0.15 < 0.15 exactly)
    (([0.15, 0.25, 0.35],), {"digits": 1}, ["0.1", "0.2", "0.3"]),
    # nsmall: dput(format(c(1, 2, 3), nsmall=2))
    (([1, 2, 3],), {"nsmall": 2}, ["1.00", "2.00", "3.00"]),
    # dput(format(c(1.5, 2.25), digits=7, nsmall=3))
    (([1.5, 2.25],), {"digits": 7, "nsmall": 3}, ["1.500", "2.250"]),
    # dput(format(c(0.12345678, 3), digits=4, nsmall=1))   (digits need more than nsmall)
    (([0.12345678, 3],), {"digits": 4, "nsmall": 1}, ["0.1235", "3.0000"]),
    # p-values as print.summary_emm: dput(format(round(c(0.0232448, 0.5), 4), digits=7, nsmall=4))
    ((np.round([0.0232448, 0.5], 4),), {"digits": 7, "nsmall": 4}, ["0.0232", "0.5000"]),
]


@pytest.mark.parametrize("args, kw, want", R_FORMAT_CASES)
def test_r_format_matches_r(args, kw, want):
    assert r_format(*args, **kw) == [s.strip() for s in want]


def test_printing_helpers_importable_from_emmeans():
    """emmeans keeps r_format importable where it used to live."""
    assert emmeans_module.r_format is r_format
    assert emmeans_module.print_summary is print_summary


# --------------------------------------------------------------------- doolittle --
def test_doolittle_matches_lmertest():
    # x <- matrix(c(4,2,2,0, 2,2,0,1, 2,0,2,1, 0,1,1,3), 4); dput(lmerTest:::doolittle(x))
    # (singular: the third pivot is 0, so column 3 of L stays 0 below the diagonal)
    x = np.array([[4, 2, 2, 0], [2, 2, 0, 1], [2, 0, 2, 1], [0, 1, 1, 3]], float)
    L_r = np.array([1, 0.5, 0.5, 0, 0, 1, -1, 1, 0, 0, 1, 0, 0, 0, 0, 1.]).reshape(4, 4).T
    U_r = np.array([4, 0, 0, 0, 2, 1, 0, 0, 2, -1, 0, 2, 0, 1, 2, 2.]).reshape(4, 4).T
    L, U = doolittle(x)
    np.testing.assert_array_equal(L, L_r)
    np.testing.assert_array_equal(U, U_r)
    # y <- matrix(c(1,1,2, 1,1,3, 2,3,9), 3); dput(lmerTest:::doolittle(y))
    L, U = doolittle(np.array([[1, 1, 2], [1, 1, 3], [2, 3, 9]], float))
    np.testing.assert_array_equal(L, np.array([1, 1, 2, 0, 1, 0, 0, 0, 1.]).reshape(3, 3).T)
    np.testing.assert_array_equal(U, np.array([1, 0, 0, 1, 0, 1, 2, 1, 5.]).reshape(3, 3).T)
    # z <- matrix(c(1e7, 1, 1, 2), 2); dput(lmerTest:::doolittle(z))   (|L21| = 1e-7 < 1e-6 -> 0)
    L, U = doolittle(np.array([[1e7, 1], [1, 2]]))
    np.testing.assert_array_equal(L, np.eye(2))
    np.testing.assert_allclose(U, [[1e7, 1], [0, 1.9999999]], rtol=1e-15)


# ------------------------------------------------------------ the anova's basis --
# The data of every model below; in R:
# d <- data.frame(
#   g = c("g1","g1","g1","g1","g2","g2","g2","g2","g3","g3","g3","g4","g4","g4","g4","g5","g5","g5"),
#   A = c("a3","a2","a3","a3","a2","a3","a3","a1","a1","a1","a1","a3","a3","a1","a2","a3","a1","a3"),
#   B = c("b1","b1","b2","b1","b1","b1","b2","b1","b2","b1","b1","b2","b2","b2","b2","b2","b2","b2"),
#   x = c(1.2,2.4,1.3,4.5,2.5,5.5,5.3,4.6,0.0,3.9,4.9,5.2,1.9,4.0,3.0,3.4,7.1,3.4),
#   y = c(12.37,10.83,12.91,14.27,11.55,15.14,15.06,11.82,11.32,11.12,10.05,14.0,13.36,11.46,
#         12.77,13.58,13.21,14.64),
#   stringsAsFactors = TRUE)
# m <- lmer(<formula>, data = d, REML = TRUE)
# lapply(lmerTest:::get_contrasts_type3(m), function(L) round(L, 10))   # the hypotheses of
# anova(m, type = 3)                                                     # anova(m, type = 3)
DATA = pd.DataFrame({
    "g": ["g1", "g1", "g1", "g1", "g2", "g2", "g2", "g2", "g3", "g3", "g3", "g4", "g4", "g4",
          "g4", "g5", "g5", "g5"],
    "A": ["a3", "a2", "a3", "a3", "a2", "a3", "a3", "a1", "a1", "a1", "a1", "a3", "a3", "a1",
          "a2", "a3", "a1", "a3"],
    "B": ["b1", "b1", "b2", "b1", "b1", "b1", "b2", "b1", "b2", "b1", "b1", "b2", "b2", "b2",
          "b2", "b2", "b2", "b2"],
    "x": [1.2, 2.4, 1.3, 4.5, 2.5, 5.5, 5.3, 4.6, 0.0, 3.9, 4.9, 5.2, 1.9, 4.0, 3.0, 3.4, 7.1, 3.4],
    "y": [12.37, 10.83, 12.91, 14.27, 11.55, 15.14, 15.06, 11.82, 11.32, 11.12, 10.05, 14.0,
          13.36, 11.46, 12.77, 13.58, 13.21, 14.64]})
for _c in "gAB":
    DATA[_c] = pd.Categorical(DATA[_c], categories=sorted(DATA[_c].unique()))

# lmerTest's hypothesis matrices, rows in R's order, columns as fixef(m)
LMERTEST_L = {
    # one term: type I (rows of t(doolittle(crossprod(X))$L))
    "y ~ A + (1|g)": {"A": [[0, 1, -0.6], [0, 0, 1]]},
    "y ~ x + (1|g)": {"x": [[0, 1]]},
    "y ~ 0 + A + (1|g)": {"A": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
    # several terms: type III
    "y ~ A + B + (1|g)": {"A": [[0, 1, 0, 0], [0, 0, 1, 0]], "B": [[0, 0, 0, 1]]},
    "y ~ A * B + (1|g)": {"A": [[0, 1, 0, 0, 0.5, 0], [0, 0, 1, 0, 0, 0.5]],
                          "B": [[0, 0, 0, 1, 1 / 3, 1 / 3]],
                          "A:B": [[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]},
    "y ~ A + x + (1|g)": {"A": [[0, 1, 0, 0], [0, 0, 1, 0]], "x": [[0, 0, 0, 1]]},
}

_FITS = {}


def _fit(formula):
    if formula not in _FITS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the last model is singular (var(g) = 0)
            _FITS[formula] = mme.fit(formula, DATA, method="REML")
    return _FITS[formula]


@pytest.mark.parametrize("formula", list(LMERTEST_L))
def test_anova_hypotheses_are_lmertests(formula):
    fit = _fit(formula)
    Ls = type3_contrasts(fit)
    want = LMERTEST_L[formula]
    assert list(Ls) == list(want)
    for term, L in want.items():
        np.testing.assert_allclose(Ls[term], np.array(L, float), rtol=0, atol=1e-10,
                                   err_msg=f"{formula}: {term}")


@pytest.mark.parametrize("formula", list(LMERTEST_L))
def test_type1_basis_only_for_one_term(formula):
    fit = _fit(formula)
    n_terms = len(LMERTEST_L[formula])
    t1, t3 = type1_contrasts(fit), type3_contrasts(fit)
    same = all(np.array_equal(t1[k], t3[k]) for k in t3)
    # with several terms type I (each term after the ones before it) differs from type III
    assert same == (n_terms == 1)


# anova(m, type = 3) with ddf = "Satterthwaite" (lmerTest 3.1-3):
#   y ~ A + (1|g):     A   NumDF 2  DenDF 13.91267111  F 14.51537393  p 0.0003935232925
#   y ~ A + B + (1|g): A   NumDF 2  DenDF 12.91745807  F 12.304552801 p 0.001019914675
#                      B   NumDF 1  DenDF 13.73173005  F 1.283482085  p 0.276646792592
LMERTEST_ANOVA = {
    "y ~ A + (1|g)": {"A": (2, 13.91267111, 14.51537393, 0.0003935232925)},
    "y ~ A + B + (1|g)": {"A": (2, 12.91745807, 12.304552801, 0.001019914675),
                          "B": (1, 13.73173005, 1.283482085, 0.276646792592)},
}
#: den df, F and p relative to lmerTest (achieved 1.3e-6, 1.4e-6 and 4.2e-6; set by how
#: closely each program finds the REML optimum)
RTOL_DDF = 2e-5
RTOL_F = 2e-5
RTOL_P = 1e-4


@pytest.mark.parametrize("formula", list(LMERTEST_ANOVA))
def test_satterthwaite_anova_matches_lmertest(formula):
    a = _fit(formula).anova(df_method="satterthwaite")
    want = LMERTEST_ANOVA[formula]
    assert list(a.index) == list(want)
    for term, (numdf, ddf, F, p) in want.items():
        assert a.loc[term, "num_df"] == numdf
        assert a.loc[term, "den_df"] == pytest.approx(ddf, rel=RTOL_DDF)
        assert a.loc[term, "F_value"] == pytest.approx(F, rel=RTOL_F)
        assert a.loc[term, "p_value"] == pytest.approx(p, rel=RTOL_P)


def test_one_term_basis_matters_for_satterthwaite_only():
    """The type-III basis (identity rows) spans the same hypothesis as lmerTest's type-I
    rows: same F and KR test, but a Satterthwaite den df 3% away from lmerTest's."""
    fit = _fit("y ~ A + (1|g)")
    L1 = type3_contrasts(fit)["A"]
    I = np.eye(3)[1:]
    ddf = LMERTEST_ANOVA["y ~ A + (1|g)"]["A"][1]
    s1, sI = ftest(fit, L1, "satterthwaite"), ftest(fit, I, "satterthwaite")
    assert s1["F_value"] == pytest.approx(sI["F_value"], rel=1e-12)
    assert s1["den_df"] == pytest.approx(ddf, rel=RTOL_DDF)
    assert abs(sI["den_df"] / ddf - 1) > 100 * RTOL_DDF
    k1, kI = ftest(fit, L1, "kenward-roger"), ftest(fit, I, "kenward-roger")
    assert k1["den_df"] == pytest.approx(kI["den_df"], rel=1e-10)
    assert k1["F_value"] == pytest.approx(kI["F_value"], rel=1e-10)
