"""Wald inference for fixed effects: type-III F tests per term (as ``lmerTest::anova``)
and the dispatch of the denominator-df methods shared with ``emmeans`` and ``confint``
(``inference.confint``: its Wald intervals with ``df_method``).

df methods (``df_method``):

- ``"satterthwaite"`` — Var(Lβ̂) from Φ = Cˣˣ, df by Satterthwaite (``satterthwaite``);
  multi-df F tests as lmerTest's ``contestMD`` (one df per eigen-direction of
  LΦL', combined by Fai & Cornelius 1996).
- ``"kenward-roger"`` — Var from the adjusted Φ_A and the KR df / F scaling
  (``kenward_roger``; REML fits only, as pbkrtest).
- ``"residual"`` — n − p; the only finite df of a model without random terms, which
  therefore gets it for any of the three names above (the classical ``lm`` results).
- ``"asymptotic"`` — df = ∞ (z and χ²/q tests).

Type-III hypotheses follow SAS's rules (Goodnight 1976) as lmerTest's
``get_contrasts_type3`` builds them: a general set of estimable functions
L = (X'X)⁻X'X of the over-parameterized (all-levels) design, then, for each term,
the columns of terms not containing it are eliminated and rows belonging only to
containing terms are orthogonalized away. For treatment coding this gives tests of
the marginal means with equal weights, independent of the coding. A model with a single
term besides the intercept gets, as in lmerTest, the type-I basis instead (rows of the
unit triangular Doolittle factor of X'X): the same hypothesis, but the Satterthwaite
denominator df of a multi-df test depends on the basis, not only on its row space.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from formulaic import Formula
from scipy import stats

from .._errors import DataError
from ..model.design import r_name
from ..model.rsyntax import r_term_name
from .kenward_roger import DfMethodError, check_kenward_roger, kenward_roger
from .satterthwaite import contrast_eigen, satterthwaite_df, satterthwaite_F_df

__all__ = ["anova", "type3_contrasts", "type1_contrasts", "doolittle",
           "DfMethodError"]

_ALIASES = {
    "kenward-roger": "kenward-roger", "kenward_roger": "kenward-roger", "kr": "kenward-roger",
    "kenwardroger": "kenward-roger",
    "satterthwaite": "satterthwaite", "sat": "satterthwaite",
    "residual": "residual", "resid": "residual",
    "asymptotic": "asymptotic", "asymp": "asymptotic", "z": "asymptotic",
}

#: Zero tests of the type-III elimination (lmerTest: 1e-8 pivots, 1e-6 entries).
PIVOT_EPS = 1e-8
ENTRY_EPS = 1e-6
GINV_EPS = 1e-10
#: lmerTest's ``doolittle`` tolerance: smaller pivots and (final) entries are zero.
DOOLITTLE_EPS = 1e-6
#: lmerTest's eigenvalue tolerance for the rank of LΦL' (sqrt of machine epsilon).


# ------------------------------------------------------------------ df methods --
def resolve_df_method(fit, df_method: str) -> str:
    """Normalize ``df_method`` and check that it applies to ``fit``.

    Returns one of "kenward-roger", "satterthwaite", "residual", "asymptotic".
    Models without random terms map the first three to "residual".
    """
    key = str(df_method).strip().lower().replace(" ", "")
    if key not in _ALIASES:
        raise DfMethodError(
            f"unknown df_method {df_method!r}; use 'kenward-roger', 'satterthwaite', "
            "'residual' or 'asymptotic'")
    method = _ALIASES[key]
    scalar_r = fit.internals.mme.residual.is_scalar
    if not fit.blocks and scalar_r:
        return "asymptotic" if method == "asymptotic" else "residual"
    if method == "residual":
        raise DfMethodError("residual df apply to models without random terms and with "
                            "R = σ²I; use 'kenward-roger', 'satterthwaite' or 'asymptotic'")
    if method == "kenward-roger":
        check_kenward_roger(fit)
    if method == "satterthwaite" and not fit.estimated:
        raise DfMethodError("Satterthwaite df need estimated variances; these were given "
                            "(use df_method='asymptotic')")
    return method


def residual_df(fit) -> float:
    return float(fit.nobs - len(fit.beta))


def wald(fit, L: np.ndarray, method: str) -> tuple:
    """Estimates, standard errors and df of the rows of L (m × p) for a resolved method."""
    L = np.atleast_2d(np.asarray(L, float))
    est = L @ fit.beta
    if method == "kenward-roger":
        kr = kenward_roger(fit)
        V = kr.vcov_adj
        df = kr.df(L)
    else:
        V = fit.vcov_beta
        if method == "satterthwaite":
            it = fit.internals
            df = satterthwaite_df(L, V, *it.satterthwaite_pieces)
        elif method == "residual":
            df = np.full(L.shape[0], residual_df(fit))
        else:
            df = np.full(L.shape[0], np.inf)
    var = np.einsum("ij,jk,ik->i", L, V, L)
    return est, np.sqrt(np.maximum(var, 0.0)), np.asarray(df, float)


def ftest(fit, L: np.ndarray, method: str) -> dict:
    """F test of Lβ = 0: ``num_df, den_df, F_value, p_value`` (lmerTest's ``contestMD``)."""
    L = np.atleast_2d(np.asarray(L, float))
    if L.shape[0] == 0 or not np.any(L):
        return {"num_df": 0, "den_df": np.nan, "F_value": np.nan, "p_value": np.nan}
    if method == "kenward-roger":
        out = kenward_roger(fit).ftest(L, fit.beta)
        out = {k: out[k] for k in ("num_df", "den_df", "F_value")}
    else:
        Phi = fit.vcov_beta
        w, P = contrast_eigen(L, Phi)
        q = w.shape[0]
        if q == 0:
            return {"num_df": 0, "den_df": np.nan, "F_value": np.nan, "p_value": np.nan}
        F = float(np.sum((P.T @ L @ fit.beta) ** 2 / w) / q)
        if method == "satterthwaite":
            it = fit.internals
            ddf = satterthwaite_F_df(L, Phi, *it.satterthwaite_pieces)
        elif method == "residual":
            ddf = residual_df(fit)
        else:
            ddf = np.inf
        out = {"num_df": q, "den_df": float(ddf), "F_value": F}
    out["p_value"] = float(stats.f.sf(out["F_value"], out["num_df"], out["den_df"])) \
        if np.isfinite(out["den_df"]) else float(stats.chi2.sf(out["F_value"] * out["num_df"],
                                                                out["num_df"]))
    return out


# ------------------------------------------------------------ type-III contrasts --
def _term_info(fit) -> tuple:
    """(terms without the intercept, has_intercept, kind of each factor expression)."""
    spec = fit.internals.design.fixed_spec
    terms = [t for t in spec.terms if str(t) != "1"]
    has_intercept = any(str(t) == "1" for t in spec.terms)
    kinds = {}
    for expr, (kind, _state) in spec.encoder_state.items():
        kinds[expr] = "factor" if "categorical" in str(kind).lower() else "numeric"
    return terms, has_intercept, kinds


def _contains(term, other, kinds) -> bool:
    """lmerTest's ``relatives``: ``other`` contains ``term`` (a superset of its variables
    with the same numeric variables)."""
    a = {f.expr for f in term.factors}
    b = {f.expr for f in other.factors}
    num_a = {v for v in a if kinds.get(v) == "numeric"}
    num_b = {v for v in b if kinds.get(v) == "numeric"}
    return a <= b and num_a == num_b


def type3_contrasts(fit) -> dict:
    """Type-III hypothesis matrices, {term: L (q × p)} on ``fit.fixed_names``.

    As lmerTest's ``get_contrasts_type3``: a model with at most one term besides the
    intercept (or at most one column in X) gets the type-I basis of
    :func:`type1_contrasts` — the same hypothesis (the term's row space is the same),
    but Satterthwaite's F denominator df (one ν per eigen-direction of LΦL', combined
    by Fai & Cornelius) depends on the basis, so it is lmerTest's.
    """
    terms, has_intercept, kinds = _term_info(fit)
    if not terms:
        return {}
    if len(terms) <= 1 or len(fit.fixed_names) <= 1:
        return type1_contrasts(fit)
    design = fit.internals.design
    spec = design.fixed_spec
    try:
        # only the row space matters: build it on the distinct rows of the used columns
        cols = sorted(Formula(str(spec.formula)).required_variables)
        rows = design.data[cols].drop_duplicates() if cols else design.data.iloc[:1]
        mm = Formula(str(spec.formula)).get_model_matrix(
            rows, ensure_full_rank=False, output="sparse")
    except Exception as exc:  # pragma: no cover - formulaic error types vary
        raise DataError(f"cannot build the over-parameterized design for type-III tests: {exc}") from exc
    rdX = np.asarray(mm.todense() if hasattr(mm, "todense") else mm, dtype=float)  # dense-ok: distinct rows
    names = [r_name(c) for c in mm.model_spec.column_names]
    col_term = [None] * len(names)
    for t, sl in mm.model_spec.term_slices.items():
        for c in range(sl.start, sl.stop):
            col_term[c] = "(Intercept)" if str(t) == "1" else str(t)
    pos = {n: i for i, n in enumerate(names)}
    missing = [n for n in fit.fixed_names if n not in pos]
    if missing:
        raise DataError(f"type-III tests: coefficients {missing} not found among the "
                        "over-parameterized columns")
    is_coef = np.array([pos[n] for n in fit.fixed_names])
    # general set of estimable functions (lmerTest's general_L)
    xtx = rdX.T @ rdX
    g2 = np.zeros_like(xtx)
    g2[np.ix_(is_coef, is_coef)] = np.linalg.inv(xtx[np.ix_(is_coef, is_coef)])
    g2[np.abs(g2) < GINV_EPS] = 0.0
    Lgen = g2 @ xtx
    Lgen[np.abs(Lgen) < ENTRY_EPS] = 0.0
    out = {}
    for t in terms:
        name = str(t)
        relatives = [str(o) for o in terms if o is not t and _contains(t, o, kinds)]
        term_cols = [c for c, ct in enumerate(col_term) if ct == name]
        rel_cols = [c for c, ct in enumerate(col_term) if ct in relatives]
        other = [c for c in range(len(names)) if c not in set(term_cols) | set(rel_cols)]
        Lc = _type3_for_term(Lgen.copy(), term_cols, other)
        out[name] = Lc[:, is_coef]
    return out


def type1_contrasts(fit) -> dict:
    """Type-I (sequential) hypothesis matrices, {term: L (q × p)} on ``fit.fixed_names``.

    As lmerTest's ``get_contrasts_type1``: the rows, for each term's columns of X, of
    ``t(doolittle(X'X)$L)`` — the unit upper-triangular factor U of X'X = U'DU (``[[1]]``
    when X has one column).
    """
    terms, _, _ = _term_info(fit)
    X = fit.internals.design.X
    p = X.shape[1]
    if p == 0:
        return {str(t): np.zeros((0, 0)) for t in terms}
    if p == 1:
        L = np.ones((1, 1))
    else:
        XtX = X.T @ X
        XtX = np.asarray(XtX.todense() if hasattr(XtX, "todense") else XtX, dtype=float)  # dense-ok: p × p
        L = doolittle(XtX)[0].T
    col_term = _fixed_column_terms(fit)
    return {str(t): L[[c for c in range(p) if col_term[c] == str(t)]] for t in terms}


def _fixed_column_terms(fit) -> list:
    """The term (formulaic's name, "(Intercept)" for 1) of each of ``fit.fixed_names``."""
    spec = fit.internals.design.fixed_spec
    names = [r_name(c) for c in spec.column_names]
    term_of = {}
    for t, sl in spec.term_slices.items():
        for c in range(sl.start, sl.stop):
            term_of[names[c]] = "(Intercept)" if str(t) == "1" else str(t)
    return [term_of[n] for n in fit.fixed_names]


def doolittle(x: np.ndarray, eps: float = DOOLITTLE_EPS) -> tuple:
    """(L, U) with x = L U, L unit lower-triangular, as lmerTest's ``doolittle``.

    No pivoting; a pivot |U_ii| < ``eps`` leaves column i of L zero below the
    diagonal, and entries of L and U with |·| < ``eps`` are set to zero at the end.
    """
    x = np.asarray(x, dtype=float)
    n = x.shape[0]
    if x.ndim != 2 or x.shape[1] != n or n < 2:
        raise ValueError("doolittle: x must be a square matrix of order 2 or more")
    L = np.eye(n)
    U = np.zeros((n, n))
    for i in range(n):
        U[i] = x[i] - L[i, :i] @ U[:i]
        if i + 1 < n:
            col = x[i + 1:, i] - L[i + 1:, :i] @ U[:i, i]
            L[i + 1:, i] = 0.0 if abs(U[i, i]) < eps else col / U[i, i]
    L[np.abs(L) < eps] = 0.0
    U[np.abs(U) < eps] = 0.0
    return L, U


def _type3_for_term(L: np.ndarray, term_cols: list, other_cols: list) -> np.ndarray:
    """Goodnight's elimination of the unrelated columns, then orthogonalization of the
    rows that belong to containing terms only (lmerTest's ``contrast_type3SAS``)."""
    for c in other_cols:
        piv = np.flatnonzero(np.abs(L[:, c]) > PIVOT_EPS)
        if piv.size:
            r0 = piv[0]
            L[r0] = L[r0] / L[r0, c]
            for r in piv[1:]:
                L[r] = L[r] - L[r, c] * L[r0]
            L[r0] = 0.0
    L = L[np.abs(L).sum(axis=1) > 0]
    if L.shape[0] <= 1:
        return L
    tc = np.asarray(term_cols)
    zero_rows = np.flatnonzero(np.abs(L[:, tc]).sum(axis=1) == 0)
    for zr in zero_rows:
        w = L[zr].copy()
        ww = float(w @ w)
        if ww > 0:
            for i in range(L.shape[0]):
                if i != zr and np.abs(L[i]).sum() != 0:
                    L[i] = L[i] - (w @ L[i]) / ww * w
        L[zr] = 0.0
    L[np.abs(L) < ENTRY_EPS] = 0.0
    return L[np.abs(L).sum(axis=1) != 0]


# ---------------------------------------------------------------------- public --
def anova(fit, df_method: str = "satterthwaite") -> pd.DataFrame:
    """Type-III Wald F tests, one row per fixed-effects term (``lmerTest::anova(type=3)``).

    Parameters
    ----------
    fit : mme.Fit
    df_method : "satterthwaite" (default), "kenward-roger", "residual" or "asymptotic"

    Returns
    -------
    DataFrame indexed by term with columns ``num_df, den_df, F_value, p_value``;
    ``.attrs["heading"]`` names the method. An intercept-only model gives an empty table.
    """
    method = resolve_df_method(fit, df_method)
    Ls = type3_contrasts(fit)
    # terms as R names them (I(x^2), poly(x, 2, raw = TRUE)), not formulaic's rendering
    rows = {r_term_name(t): ftest(fit, L, method) for t, L in Ls.items()}
    out = pd.DataFrame.from_dict(rows, orient="index",
                                 columns=["num_df", "den_df", "F_value", "p_value"])
    out.index.name = "term"
    if len(out):
        out["num_df"] = out["num_df"].astype(int)
    label = {"satterthwaite": "Satterthwaite's", "kenward-roger": "Kenward-Roger's",
             "residual": "residual", "asymptotic": "asymptotic (chi-square)"}[method]
    out.attrs["heading"] = f"Type III Analysis of Variance Table with {label} method"
    out.attrs["df_method"] = method
    return out
