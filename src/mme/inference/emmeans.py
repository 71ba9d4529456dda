"""Estimated marginal means (least-squares means) and contrasts among them, as R's
``emmeans`` computes them for ``lm`` and ``lmer`` fits (Searle, Speed & Milliken 1980;
Lenth's emmeans package).

The reference grid is the full cross of the levels of every factor in the fixed
part and of the covariates at their means (or at the values given in ``at``); its
rows of X come from the fit's own formulaic spec, so the coding is the fit's. The
mean for one combination of the ``specs`` (and ``by``) factors averages the grid
rows over the other factors with equal weights: an m × p matrix L, estimates Lβ̂,
variances from Φ = Cˣˣ — or from Kenward–Roger's adjusted Φ_A when
``df_method="kenward-roger"``, as emmeans does with pbkrtest — and df per row from
the chosen method (``anova.resolve_df_method``).

    emm = fit.emmeans("K2O_lbac")            # Kenward–Roger by default
    emm.table                                 # K2O_lbac, emmean, std_error, df, lower_cl, upper_cl
    emm.contrast({"36 vs 144": [1, 0, 0, 0, -1]}).table
    emm.contrast("pairwise", adjust="tukey")
    print(emm)                                # laid out and rounded as emmeans prints
"""
from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
from formulaic import Formula
from scipy import stats

from .._errors import DataError, FormulaError
from .anova import resolve_df_method, wald
from ..model.design import r_name
from .kenward_roger import kenward_roger
from .printing import print_summary, r_format  # noqa: F401  (r_format re-exported)

__all__ = ["emmeans", "EMMeans", "Contrasts"]

#: Custom contrast weights must sum to zero within this (relative to max |w|).
ZERO_SUM_TOL = 1e-8
#: A grid row is estimable when its component in the null space of X is below this.
ESTIMABLE_TOL = 1e-8
ADJUSTMENTS = ("none", "tukey", "bonferroni", "holm", "sidak")


# ------------------------------------------------------------------ the grid --
def _grid_variables(fit) -> tuple:
    """(ordered variable names, {factor: levels}, {covariate: mean}) of the fixed part."""
    design = fit.internals.design
    spec, data = design.fixed_spec, design.data
    states = spec.encoder_state
    order = []
    for t in spec.terms:
        for fac in t.factors:
            for v in _variables_of(fac.expr):
                if v in data.columns and v not in order:
                    order.append(v)
    for v in sorted(spec.required_variables):
        if v in data.columns and v not in order:
            order.append(v)
    factors, covariates = {}, {}
    for v in order:
        kind, state = states.get(v, (None, {}))
        if kind is not None and "categorical" in str(kind).lower():
            factors[v] = list(state.get("categories", _levels(data[v])))
            continue
        wrapped = [s for e, (k, s) in states.items()
                   if e != v and "categorical" in str(k).lower() and v in _variables_of(e)]
        if wrapped:                                   # e.g. C(v)
            factors[v] = list(wrapped[0].get("categories", _levels(data[v])))
        elif pd.api.types.is_numeric_dtype(data[v]) and data[v].dtype != bool:
            covariates[v] = float(data[v].mean())
        else:
            factors[v] = _levels(data[v])
    return order, factors, covariates


def _variables_of(expr: str) -> list:
    """Data variables of one factor expression (``np.log(x)`` → ``["x"]``)."""
    if expr == "1":
        return []
    try:
        return sorted(Formula(expr).required_variables)
    except Exception:  # formulaic raises several parser error types
        return [expr]


def _levels(col: pd.Series) -> list:
    if isinstance(col.dtype, pd.CategoricalDtype):
        return list(col.cat.categories)
    return sorted(col.unique())


def _parse_specs(specs, by) -> tuple:
    def split(x):
        if x is None:
            return []
        if isinstance(x, str):
            return [p for p in (s.strip() for s in re.split(r"[*+:]", x)) if p]
        out = []
        for s in x:
            out += split(s)
        return out
    if isinstance(specs, str) and ("~" in specs or "|" in specs):
        rhs = specs.split("~", 1)[-1]
        left, _, right = rhs.partition("|")
        spec_vars, by_vars = split(left), split(right) + split(by)
    else:
        spec_vars, by_vars = split(specs), split(by)
    if not spec_vars:
        raise FormulaError(f"emmeans: no variable in specs {specs!r}")
    dup = [v for v in spec_vars + by_vars if (spec_vars + by_vars).count(v) > 1]
    if dup:
        raise FormulaError(f"emmeans: {sorted(set(dup))} given more than once in specs/by")
    return spec_vars, by_vars


def _match_level(value, levels: list, var: str):
    for lev in levels:
        if lev == value or str(lev) == str(value):
            return lev
    raise DataError(f"emmeans: {value!r} is not a level of {var!r} (levels: {levels})")


def _reference_grid(fit, spec_vars, by_vars, at) -> tuple:
    order, factors, covariates = _grid_variables(fit)
    known = set(factors) | set(covariates)
    for v in spec_vars + by_vars:
        if v not in known:
            raise FormulaError(
                f"emmeans: {v!r} is not a variable of the fixed part "
                f"'{fit.internals.design.fixed_spec.formula}' (factors: {sorted(factors)}, "
                f"covariates: {sorted(covariates)})")
    values = {v: list(factors[v]) if v in factors else [covariates[v]] for v in order}
    for v, val in (at or {}).items():
        if v not in known:
            raise FormulaError(f"emmeans: 'at' names {v!r}, not a variable of the fixed part "
                               f"(factors: {sorted(factors)}, covariates: {sorted(covariates)})")
        vals = list(val) if isinstance(val, (list, tuple, np.ndarray, pd.Index, pd.Series)) else [val]
        if not vals:
            raise DataError(f"emmeans: 'at' gives no value for {v!r}")
        if v in factors:
            values[v] = [_match_level(x, factors[v], v) for x in vals]
        else:
            values[v] = [float(x) for x in vals]
    return order, factors, values


def _grid_frame(fit, order, factors, values) -> pd.DataFrame:
    """All combinations, first variable varying fastest (as emmeans' grid)."""
    combos = list(itertools.product(*[values[v] for v in reversed(order)]))
    grid = pd.DataFrame([c[::-1] for c in combos], columns=order)
    data = fit.internals.design.data
    for v in order:
        col = data[v]
        if v in factors and isinstance(col.dtype, pd.CategoricalDtype):
            grid[v] = pd.Categorical(grid[v], categories=col.cat.categories)
        elif v in factors and col.dtype != object and not pd.api.types.is_string_dtype(col):
            grid[v] = grid[v].astype(col.dtype)
        elif v in factors:
            grid[v] = pd.Categorical(grid[v], categories=factors[v])
    return grid


def _grid_X(fit, grid: pd.DataFrame) -> tuple:
    """Rows of X for the grid on the fit's kept columns, and on all columns (incl. aliased)."""
    design = fit.internals.design
    try:
        mm = design.fixed_spec.get_model_matrix(grid, output="sparse")
    except Exception as exc:  # formulaic raises several error types
        raise DataError(f"emmeans: cannot build the reference grid's model matrix: {exc}") from exc
    Xg = np.asarray(mm.todense() if hasattr(mm, "todense") else mm, dtype=float)  # dense-ok: reference grid
    names = [r_name(c) for c in design.fixed_spec.column_names]
    pos = {n: i for i, n in enumerate(names)}
    kept = np.array([pos[n] for n in fit.fixed_names], dtype=int)
    return Xg[:, kept], Xg


def _estimable(fit, Lfull: np.ndarray) -> np.ndarray:
    """Rows of L (on all columns of X, aliased included) that are estimable."""
    if not fit.aliased:
        return np.ones(Lfull.shape[0], bool)
    design = fit.internals.design
    mm = design.fixed_spec.get_model_matrix(design.data, output="sparse")
    XtX = mm.T @ mm
    XtX = np.asarray(XtX.todense() if hasattr(XtX, "todense") else XtX, dtype=float)  # dense-ok: p × p
    w, U = np.linalg.eigh(XtX)
    null = U[:, w <= 1e-9 * max(w.max(), 1e-300)]
    scale = np.maximum(np.abs(Lfull).max(axis=1), 1e-300)
    return np.abs(Lfull @ null).max(axis=1, initial=0.0) <= ESTIMABLE_TOL * scale


# ------------------------------------------------------------------ emmeans --
def emmeans(fit, specs, by=None, at: dict | None = None, df_method: str = "kenward-roger",
            level: float = 0.95) -> "EMMeans":
    """Estimated marginal means of ``specs`` (optionally within ``by`` groups).

    Parameters
    ----------
    fit : mme.Fit
    specs : str or list of str
        Factor(s) whose level combinations get a mean: ``"trt"``, ``["a", "b"]``,
        ``"a*b"``, or ``"~ a | b"`` (``b`` as ``by``).
    by : str or list of str, optional
        Factor(s) within whose levels the means (and contrasts) are computed.
    at : dict, optional
        ``{covariate: value(s)}`` (default: its mean) or ``{factor: level(s)}``
        (default: all levels).
    df_method : "kenward-roger" (default), "satterthwaite", "residual" or "asymptotic"
        Models without random terms always get the residual df (as ``lm``).
    level : float
        Confidence level of the intervals.

    Returns
    -------
    EMMeans
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    method = resolve_df_method(fit, df_method)
    spec_vars, by_vars = _parse_specs(specs, by)
    order, factors, values = _reference_grid(fit, spec_vars, by_vars, at)
    grid = _grid_frame(fit, order, factors, values)
    Xk, Xfull = _grid_X(fit, grid)
    keys = spec_vars + by_vars
    # groups in emmeans order: first spec variable fastest, by variables slowest
    group_values = [values[v] for v in keys]
    combos = [c[::-1] for c in itertools.product(*reversed(group_values))]
    key_cols = {v: [c[i] for c in combos] for i, v in enumerate(keys)}
    gidx = np.zeros(len(grid), dtype=int)
    mult = 1
    for v, vals in zip(keys, group_values):
        gidx += mult * np.array([_index_of(x, vals) for x in grid[v]], dtype=int)
        mult *= len(vals)
    # combos enumerate with the first key fastest: index = Σ pos_v · Π sizes before v
    m = len(combos)
    W = np.zeros((m, len(grid)))
    W[gidx, np.arange(len(grid))] = 1.0
    W /= W.sum(axis=1, keepdims=True)
    L = W @ Xk
    ok = _estimable(fit, W @ Xfull)
    est, se, df = wald(fit, L, method)
    est, se, df = np.where(ok, est, np.nan), np.where(ok, se, np.nan), np.where(ok, df, np.nan)
    lo, hi = _interval(est, se, df, level)
    table = pd.DataFrame({v: key_cols[v] for v in keys})
    table["emmean"] = est
    table["std_error"] = se
    table["df"] = df
    table["lower_cl"] = lo
    table["upper_cl"] = hi
    averaged = [v for v in order if v in factors and v not in keys]
    notes = []
    if averaged:
        notes.append("Results are averaged over the levels of: " + ", ".join(averaged))
    if fit.blocks or method == "asymptotic":
        notes.append(f"Degrees-of-freedom method: {method}")
    if method == "kenward-roger":
        kr = kenward_roger(fit)
        if kr.trace_method == "hutchinson":
            notes.append(f"Kenward-Roger traces estimated by Hutchinson's method "
                         f"({kr.n_probes} probes; largest relative SE {kr.trace_rel_se.max():.1e})")
    notes.append(f"Confidence level used: {level:g}")
    return EMMeans(fit=fit, table=table, linfct=L, spec_vars=tuple(spec_vars),
                   by_vars=tuple(by_vars), df_method=method, level=level,
                   averaged=tuple(averaged), notes=tuple(notes))


def _index_of(x, vals):
    for i, v in enumerate(vals):
        if v == x or str(v) == str(x):
            return i
    raise KeyError(x)  # pragma: no cover - grid values come from vals


def _interval(est, se, df, level):
    a = 0.5 * (1.0 + level)
    finite = np.isfinite(df)
    crit = np.where(finite, stats.t.ppf(a, np.where(finite, df, 1.0)), stats.norm.ppf(a))
    return est - crit * se, est + crit * se


class EMMeans:
    """Estimated marginal means: ``table``, ``linfct`` (the m × p matrix L) and
    ``contrast()``; prints as emmeans does.

    Attributes
    ----------
    table : DataFrame
        spec (and by) columns, then ``emmean, std_error, df, lower_cl, upper_cl``.
    linfct : ndarray (m, p)
        Rows of L on ``fit.fixed_names``: emmean = L β̂.
    df_method : str
    notes : tuple of str — what was averaged, the df method, the confidence level
    """

    def __init__(self, fit, table, linfct, spec_vars, by_vars, df_method, level, averaged, notes):
        self._fit = fit
        self.table = table
        self.linfct = linfct
        self.spec_vars = spec_vars
        self.by_vars = by_vars
        self.df_method = df_method
        self.level = level
        self.averaged = averaged
        self.notes = notes

    # -- contrasts ---------------------------------------------------------------
    def contrast(self, weights="pairwise", adjust: str = "none", check_sum: bool = True,
                 ref: int = 0) -> "Contrasts":
        """Contrasts among the means (within each ``by`` group).

        Parameters
        ----------
        weights : "pairwise", "trt.vs.ctrl", dict or list
            ``"pairwise"``: every mᵢ − mⱼ (i < j); ``"trt.vs.ctrl"``: every level
            minus level ``ref``; ``{name: [w₁, …]}``: named weights, one per mean of a
            group; a list of weight lists (named like R's ``c(1, 0, -1)``) or one list.
        adjust : "none" (default), "tukey", "bonferroni", "holm" or "sidak"
            Multiplicity adjustment within each group. Tukey (studentized range,
            ``scipy.stats.studentized_range``) is for pairwise comparisons only;
            otherwise it is changed to Sidak with a note, as emmeans does.
        check_sum : bool
            Custom weights must sum to zero (a contrast); False allows any linear
            function of the means.
        ref : int
            Position of the control level for ``"trt.vs.ctrl"``.

        Returns
        -------
        Contrasts
        """
        adjust = str(adjust).lower()
        if adjust not in ADJUSTMENTS:
            raise ValueError(f"adjust must be one of {ADJUSTMENTS}, got {adjust!r}")
        t = self.table
        n_groups = 1
        for v in self.by_vars:
            n_groups *= t[v].nunique()
        k = len(t) // n_groups
        labels = [" ".join(str(t[v].iloc[i]) for v in self.spec_vars) for i in range(k)]
        names, K = _contrast_weights(weights, labels, check_sum, ref)
        notes = [n for n in self.notes if n.startswith("Results are averaged")
                 or n.startswith("Degrees-of-freedom") or n.startswith("Kenward-Roger traces")]
        if adjust == "tukey" and weights != "pairwise":
            notes.append('Note: adjust = "tukey" was changed to "sidak" because "tukey" is '
                         "only appropriate for one set of pairwise comparisons")
            adjust = "sidak"
        rows_L, rows_est_ok, by_rows, out_names = [], [], [], []
        for g in range(n_groups):
            block = slice(g * k, (g + 1) * k)
            Lg = self.linfct[block]
            ok = np.isfinite(t["emmean"].to_numpy()[block])
            for name, w in zip(names, K):
                rows_L.append(w @ Lg)
                rows_est_ok.append(bool(np.all(ok[np.abs(w) > 0])))
                by_rows.append({v: t[v].iloc[g * k] for v in self.by_vars})
                out_names.append(name)
        Lc = np.array(rows_L)
        est, se, df = wald(self._fit, Lc, self.df_method)
        okm = np.array(rows_est_ok)
        est, se, df = (np.where(okm, est, np.nan), np.where(okm, se, np.nan),
                       np.where(okm, df, np.nan))
        with np.errstate(divide="ignore", invalid="ignore"):
            tval = est / se
        p = _two_sided(tval, df)
        nc = len(names)
        for g in range(n_groups):
            sl = slice(g * nc, (g + 1) * nc)
            p[sl] = _adjust(p[sl], tval[sl], df[sl], adjust, k)
        if adjust == "tukey":
            notes.append(f"P value adjustment: tukey method for comparing a family of {k} estimates")
        elif adjust != "none":
            notes.append(f"P value adjustment: {adjust} method for {nc} tests")
        table = pd.DataFrame(by_rows, index=pd.Index(out_names, name="contrast")) \
            if self.by_vars else pd.DataFrame(index=pd.Index(out_names, name="contrast"))
        table["estimate"] = est
        table["std_error"] = se
        table["df"] = df
        table["t_value"] = tval
        table["p_value"] = p
        return Contrasts(table=table, linfct=Lc, by_vars=self.by_vars, df_method=self.df_method,
                         adjust=adjust, notes=tuple(notes))

    # -- printing ----------------------------------------------------------------
    def __str__(self) -> str:
        t = self.table
        asym = not np.all(np.isfinite(t["df"].fillna(0.0)))
        cols = {v: ("L", [str(x) for x in t[v]]) for v in self.spec_vars + self.by_vars}
        cols["emmean"] = ("est", t["emmean"].to_numpy())
        cols["SE"] = ("se", t["std_error"].to_numpy())
        cols["df"] = ("df", t["df"].to_numpy())
        cols["asymp.LCL" if asym else "lower.CL"] = ("num", t["lower_cl"].to_numpy())
        cols["asymp.UCL" if asym else "upper.CL"] = ("num", t["upper_cl"].to_numpy())
        return print_summary(cols, self.by_vars, self.notes)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "<pre>" + str(self).replace("&", "&amp;").replace("<", "&lt;") + "</pre>"


class Contrasts:
    """Contrasts among estimated marginal means.

    Attributes
    ----------
    table : DataFrame indexed by contrast name
        (by columns,) ``estimate, std_error, df, t_value, p_value``
    linfct : ndarray (m, p) — the contrasts as rows of L on ``fit.fixed_names``
    """

    def __init__(self, table, linfct, by_vars, df_method, adjust, notes):
        self.table = table
        self.linfct = linfct
        self.by_vars = by_vars
        self.df_method = df_method
        self.adjust = adjust
        self.notes = notes

    def __str__(self) -> str:
        t = self.table
        asym = not np.all(np.isfinite(t["df"].fillna(0.0)))
        cols = {"contrast": ("L", [str(x) for x in t.index])}
        for v in self.by_vars:
            cols[v] = ("L", [str(x) for x in t[v]])
        cols["estimate"] = ("est", t["estimate"].to_numpy())
        cols["SE"] = ("se", t["std_error"].to_numpy())
        cols["df"] = ("df", t["df"].to_numpy())
        cols["z.ratio" if asym else "t.ratio"] = ("stat", t["t_value"].to_numpy())
        cols["p.value"] = ("p", t["p_value"].to_numpy())
        return print_summary(cols, self.by_vars, self.notes)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "<pre>" + str(self).replace("&", "&amp;").replace("<", "&lt;") + "</pre>"


def _deparse(w) -> str:
    return "c(" + ", ".join(f"{float(x):.15g}" for x in w) + ")"


def _contrast_weights(weights, labels, check_sum, ref) -> tuple:
    k = len(labels)
    if isinstance(weights, str):
        if weights == "pairwise":
            names, K = [], []
            for i, j in itertools.combinations(range(k), 2):
                w = np.zeros(k)
                w[i], w[j] = 1.0, -1.0
                names.append(f"{labels[i]} - {labels[j]}")
                K.append(w)
            return names, np.array(K).reshape(-1, k)
        if weights == "trt.vs.ctrl":
            if not 0 <= ref < k:
                raise DataError(f"ref={ref} is not a position among the {k} means")
            names, K = [], []
            for j in range(k):
                if j != ref:
                    w = np.zeros(k)
                    w[j], w[ref] = 1.0, -1.0
                    names.append(f"{labels[j]} - {labels[ref]}")
                    K.append(w)
            return names, np.array(K).reshape(-1, k)
        raise ValueError(f"weights must be 'pairwise', 'trt.vs.ctrl', a dict or a list; got {weights!r}")
    if isinstance(weights, dict):
        items = list(weights.items())
    else:
        ws = list(weights)
        if ws and np.ndim(ws[0]) == 0:
            ws = [ws]
        items = [(_deparse(w), w) for w in ws]
    if not items:
        raise DataError("contrast: no weights given")
    names, K = [], []
    for name, w in items:
        w = np.asarray(w, dtype=float).ravel()
        if w.shape[0] != k:
            raise DataError(f"contrast {name!r} has {w.shape[0]} weights; there are {k} means "
                            f"({', '.join(labels)})")
        if check_sum and abs(w.sum()) > ZERO_SUM_TOL * max(np.abs(w).max(), 1.0):
            raise DataError(f"contrast {name!r}: weights sum to {w.sum():g}, not 0 "
                            "(pass check_sum=False for a general linear function of the means)")
        names.append(str(name))
        K.append(w)
    return names, np.array(K)


def _two_sided(t, df):
    t, df = np.asarray(t, float), np.asarray(df, float)
    finite = np.isfinite(df)
    p = np.where(finite, 2.0 * stats.t.sf(np.abs(t), np.where(finite, df, 1.0)),
                 2.0 * stats.norm.sf(np.abs(t)))
    return np.where(np.isnan(t), np.nan, p)


def _adjust(p, t, df, method, k):
    p = p.copy()
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if method == "none" or m == 0:
        return p
    if method == "bonferroni":
        p[ok] = np.minimum(1.0, p[ok] * m)
    elif method == "sidak":
        p[ok] = 1.0 - (1.0 - p[ok]) ** m
    elif method == "holm":
        idx = np.flatnonzero(ok)
        order = idx[np.argsort(p[idx], kind="stable")]
        adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
        p[order] = np.minimum(1.0, adj)
    elif method == "tukey":
        from scipy.stats import studentized_range
        for i in np.flatnonzero(ok):
            d = df[i] if np.isfinite(df[i]) else np.inf
            p[i] = float(studentized_range.sf(abs(t[i]) * np.sqrt(2.0), k, d))
    return p
