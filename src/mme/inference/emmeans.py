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
    emm.contrast("pairwise")                  # Tukey-adjusted, as emmeans
    emm.contrast(method="poly")               # linear, quadratic, ... (no adjustment)
    emm.contrast("trt.vs.ctrl", ref=3)        # dunnettx; ref: 1-based position or a level
    res = fit.emmeans("pairwise ~ K2O_lbac")  # R's `pairwise ~ K2O_lbac`: an EMMList
    res.emmeans, res.contrasts                # (or: emm, con = fit.emmeans("pairwise ~ ..."))
    print(emm)                                # laid out and rounded as emmeans prints

Contrast families are in :mod:`mme.inference.contrast_families`, multiplicity
adjustments (p values and confidence limits, emmeans' rules) in
:mod:`mme.inference.multiplicity`.
"""
from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
from formulaic import Formula
from scipy import stats

from .._errors import DataError, FormulaError, OptionError
from .anova import resolve_df_method, wald
from ..model.design import r_name
from .contrast_families import family as contrast_family
from .kenward_roger import kenward_roger
from .multiplicity import adjust_p_values, critical_values, resolve_adjust
from .printing import print_summary, r_format  # noqa: F401  (r_format re-exported)

__all__ = ["emmeans", "EMMeans", "Contrasts", "EMMList"]

#: Custom contrast weights must sum to zero within this (relative to max |w|).
ZERO_SUM_TOL = 1e-8
#: A grid row is estimable when its component in the null space of X is below this.
ESTIMABLE_TOL = 1e-8
#: emmeans' test for "these weights are contrasts" (|Σw| below this): est type contrast
CONTRAST_SUM_TOL = 1e-3
#: emmeans' ``parens`` option: labels containing these get parentheses in contrast names
PARENS = re.compile(r"-|\+|/|\*")
#: R's ``qr(zapsmall(L))$rank`` tolerance, for the rank of a Scheffé family
SCHEFFE_RANK_TOL = 1e-7


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
    """(spec variables, by variables, left side of ``specs`` or None)."""
    def split(x):
        if x is None:
            return []
        if isinstance(x, str):
            return [p for p in (s.strip() for s in re.split(r"[*+:]", x)) if p]
        out = []
        for s in x:
            out += split(s)
        return out
    lhs = None
    if isinstance(specs, str) and ("~" in specs or "|" in specs):
        lhs_text, _, rhs = specs.rpartition("~") if "~" in specs else ("", "", specs)
        lhs = lhs_text.strip() or None
        left, _, right = rhs.partition("|")
        spec_vars, by_vars = split(left), split(right) + split(by)
    else:
        spec_vars, by_vars = split(specs), split(by)
    if not spec_vars:
        raise FormulaError(f"emmeans: no variable in specs {specs!r}")
    dup = [v for v in spec_vars + by_vars if (spec_vars + by_vars).count(v) > 1]
    if dup:
        raise FormulaError(f"emmeans: {sorted(set(dup))} given more than once in specs/by")
    return spec_vars, by_vars, lhs


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
            level: float = 0.95, contr=None, adjust=None, **options):
    """Estimated marginal means of ``specs`` (optionally within ``by`` groups).

    Parameters
    ----------
    fit : mme.Fit
    specs : str or list of str
        Factor(s) whose level combinations get a mean: ``"trt"``, ``["a", "b"]``,
        ``"a*b"``, or ``"~ a | b"`` (``b`` as ``by``). A left side names a contrast
        family, as in R: ``"pairwise ~ trt"``, ``"trt.vs.ctrl ~ trt | block"``; the
        result is then an :class:`EMMList` of the means and their contrasts.
    by : str or list of str, optional
        Factor(s) within whose levels the means (and contrasts) are computed.
    at : dict, optional
        ``{covariate: value(s)}`` (default: its mean) or ``{factor: level(s)}``
        (default: all levels).
    df_method : "kenward-roger" (default), "satterthwaite", "residual" or "asymptotic"
        Models without random terms always get the residual df (as ``lm``).
    level : float
        Confidence level of the intervals.
    contr : str, dict or list, optional
        Contrasts of the means to return with them (R's ``contr=``; the left side of
        ``specs`` is the same thing). Any family or weights :meth:`EMMeans.contrast`
        takes.
    adjust : str, optional
        Multiplicity adjustment of those contrasts (default: the family's).
    **options
        The contrast family's own options (``ref``, ``reverse``, ``max_degree``, ``wts``).

    Returns
    -------
    EMMeans, or EMMList (``.emmeans``, ``.contrasts``) when contrasts are asked for
    """
    if not 0 < level < 1:
        raise OptionError(f"level must be in (0, 1), got {level!r}")
    method = resolve_df_method(fit, df_method)
    spec_vars, by_vars, lhs = _parse_specs(specs, by)
    if lhs is not None and contr is None:
        contr = lhs
    if contr is None and (adjust is not None or options):
        given = (["adjust"] if adjust is not None else []) + sorted(options)
        raise OptionError(f"emmeans: {given} apply to contrasts; give them with contr= "
                         "or a left side in specs ('pairwise ~ trt'), or call .contrast()")
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
    emm = EMMeans(fit=fit, table=table, linfct=L, spec_vars=tuple(spec_vars),
                  by_vars=tuple(by_vars), df_method=method, level=level,
                  averaged=tuple(averaged), notes=tuple(notes))
    if contr is None:
        return emm
    return EMMList(emm, emm.contrast(contr, adjust=adjust, **options))


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


class _Missing:
    def __repr__(self):
        return "<the means' own by>"


#: ``by`` not given: contrasts within the means' ``by`` groups (``by=None``: across all)
MISSING = _Missing()


def _fmt_level(v) -> str:
    """A level as R pastes it (``175.0`` → ``"175"``)."""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.15g}"
    return str(v)


def _is_num(values) -> bool:
    """emmeans' ``.is.num``: every value reads as a number."""
    try:
        [float(_fmt_level(v)) for v in values]
    except (TypeError, ValueError):
        return False
    return True


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
    def contrast(self, method="eff", adjust=None, *, by=MISSING, level=None,
                 check_sum: bool = True, weights=None, **options) -> "Contrasts":
        """Contrasts among the means, within each ``by`` group, as emmeans' ``contrast()``.

        Parameters
        ----------
        method : str, dict or list
            A contrast family (:mod:`mme.inference.contrast_families`): ``"pairwise"``,
            ``"revpairwise"``, ``"trt.vs.ctrl"`` (``"dunnett"``, ``"trt.vs.ctrlk"``),
            ``"consec"``, ``"mean_chg"``, ``"poly"``, ``"eff"`` (emmeans' default),
            ``"del.eff"``, ``"identity"``; or ``{name: [w₁, …]}``, named weights, one per
            mean of a group; or a list of weight lists (named like R's ``c(1, 0, -1)``).
            ``weights=`` is the same argument under its former name.
        adjust : str, optional
            Multiplicity adjustment within each group (:mod:`mme.inference.multiplicity`):
            ``"tukey"``, ``"dunnettx"``, ``"mvt"``, ``"scheffe"``, ``"sidak"``,
            ``"bonferroni"``, ``"holm"``, ``"hochberg"``, ``"hommel"``, ``"fdr"``/``"BH"``,
            ``"BY"``, ``"none"``. Default: the family's, as in emmeans (pairwise: tukey;
            trt.vs.ctrl: dunnettx; consec, mean_chg: mvt; eff, del.eff: fdr; poly and
            weights: none). Tukey on anything but one set of pairwise differences is
            changed to Šidák with emmeans' note.
        by : str, list or None
            Groups within which contrasts are formed and adjusted; default the means' own
            ``by``; ``None``: all means together.
        level : float
            Confidence level of ``lower_cl``/``upper_cl`` (default the means' level); the
            limits are adjusted as emmeans' ``confint()`` adjusts them.
        check_sum : bool
            Custom weights must sum to zero (a contrast); False allows any linear
            function of the means.
        **options
            The family's own: ``ref`` (trt.vs.ctrl: 1-based position(s) of the control,
            as emmeans, or level(s)), ``reverse``, ``max_degree`` (poly), ``wts`` (eff).

        Returns
        -------
        Contrasts
            Prints as emmeans prints contrasts (tests); ``.confint()`` prints the
            intervals; ``.table`` has both.
        """
        if weights is not None:
            method = weights
        level = self.level if level is None else level
        if not 0 < level < 1:
            raise OptionError(f"level must be in (0, 1), got {level!r}")
        by_vars = self._contrast_by(by)
        t = self.table
        keys = self.spec_vars + self.by_vars
        # by groups in order of appearance (emmeans' .find.by.rows)
        groups = {}
        for i in range(len(t)):
            groups.setdefault(tuple(_fmt_level(t[v].iloc[i]) for v in by_vars), []).append(i)
        rows_of = [np.array(r) for r in groups.values()]
        if len({len(r) for r in rows_of}) != 1:
            raise DataError(f"contrast: the by groups {list(by_vars)} are of unequal sizes")
        inner = [v for v in keys if v not in by_vars]
        enhance = {v for v in inner if _is_num(t[v])}
        names_K = []
        for rows in rows_of:
            raw = [" ".join(_fmt_level(t[v].iloc[i]) for v in inner) for i in rows]
            labels = [" ".join((v if v in enhance else "") + _fmt_level(t[v].iloc[i])
                               for v in inner) for i in rows]
            labels = [f"({a})" if PARENS.search(a) else a for a in labels]
            names_K.append(self._family(method, labels, raw, check_sum, options))
        fam = names_K[0]
        # contrasts of the means: rows of L, estimability, estimates, SE, df
        est_ok = np.isfinite(t["emmean"].to_numpy())
        Lc, ok, by_rows, out_names, con_groups = [], [], [], [], []
        for rows, f in zip(rows_of, names_K):
            idx = []
            for name, w in zip(f.names, f.coef):
                idx.append(len(Lc))
                Lc.append(w @ self.linfct[rows])
                ok.append(bool(np.all(est_ok[rows][np.abs(w) > 0])))
                by_rows.append({v: t[v].iloc[rows[0]] for v in by_vars})
                out_names.append(name)
            con_groups.append(np.array(idx, dtype=int))
        Lc = np.array(Lc).reshape(-1, self.linfct.shape[1])
        est, se, df = wald(self._fit, Lc, self.df_method)
        okm = np.array(ok, dtype=bool)
        est, se, df = (np.where(okm, est, np.nan), np.where(okm, se, np.nan),
                       np.where(okm, df, np.nan))
        with np.errstate(divide="ignore", invalid="ignore"):
            tval = est / se
        adjust = resolve_adjust(fam.adjust if adjust is None else adjust)
        corr = sch_rank = None
        if adjust == "mvt":
            V = _vcov_for(self._fit, self.df_method)
            C = Lc @ V @ Lc.T
            d = np.sqrt(np.diag(C))
            corr = C / np.outer(d, d)
        elif adjust == "scheffe":
            sch_rank = [_rank(Lc[g][okm[g]]) for g in con_groups]
        p, p_adjust, p_notes = adjust_p_values(tval, df, adjust, fam.fam_size, con_groups,
                                               fam.est_type, corr, sch_rank)
        cv, ci_adjust, ci_notes = critical_values(level, df, adjust, fam.fam_size, con_groups,
                                                  fam.est_type, corr, sch_rank)
        index = pd.Index(out_names, name="contrast")
        table = pd.DataFrame(by_rows, index=index) if by_vars else pd.DataFrame(index=index)
        table["estimate"] = est
        table["std_error"] = se
        table["df"] = df
        table["t_value"] = tval
        table["p_value"] = p
        table["lower_cl"] = est - cv * se
        table["upper_cl"] = est + cv * se
        notes = [n for n in self.notes if n.startswith("Results are averaged")
                 or n.startswith("Degrees-of-freedom") or n.startswith("Kenward-Roger traces")]
        return Contrasts(table=table, linfct=Lc, by_vars=tuple(by_vars),
                         df_method=self.df_method, adjust=p_adjust, notes=tuple(notes),
                         p_notes=tuple(p_notes), ci_adjust=ci_adjust, ci_notes=tuple(ci_notes),
                         level=level, method=method if isinstance(method, str) else "custom",
                         coef=fam.coef, est_type=fam.est_type, fam_size=fam.fam_size)

    def pairs(self, adjust=None, **kw) -> "Contrasts":
        """emmeans' ``pairs(emm)``: ``contrast("pairwise")``."""
        return self.contrast("pairwise", adjust=adjust, **kw)

    def _contrast_by(self, by) -> tuple:
        if by is MISSING:
            return tuple(self.by_vars)
        if by is None:
            return ()
        by = [by] if isinstance(by, str) else list(by)
        keys = self.spec_vars + self.by_vars
        bad = [v for v in by if v not in keys]
        if bad:
            raise FormulaError(f"contrast: by={bad} is not among the means' variables {list(keys)}")
        if len(by) == len(keys):
            raise FormulaError(f"contrast: by={by} leaves no variable to contrast")
        return tuple(v for v in keys if v in by)

    @staticmethod
    def _family(method, labels, raw, check_sum, options):
        from .contrast_families import Family
        if isinstance(method, str):
            return contrast_family(method, labels, raw, **options)
        if options:
            raise OptionError(f"contrast: options {sorted(options)} apply to named families, "
                             "not to custom weights")
        names, K = _contrast_weights(method, labels, check_sum)
        is_con = np.all(np.abs(K.sum(axis=1)) < CONTRAST_SUM_TOL)
        return Family(names, K, "none", "contrast" if is_con else "prediction", len(labels),
                      "custom")

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


def _vcov_for(fit, method) -> np.ndarray:
    """The Var(β̂) the estimates' SEs use: Kenward–Roger's adjusted Φ_A, or Φ."""
    return kenward_roger(fit).vcov_adj if method == "kenward-roger" else fit.vcov_beta


def _rank(L) -> int:
    """R's ``qr(zapsmall(L))$rank``, for the Scheffé rank of a family."""
    from .printing import _zapsmall
    if L.size == 0:
        return 0
    Lz = _zapsmall(np.asarray(L, float))
    sv = np.linalg.svd(Lz, compute_uv=False)
    return int(np.sum(sv > SCHEFFE_RANK_TOL * sv.max())) if sv.size and sv.max() > 0 else 0


class Contrasts:
    """Contrasts among estimated marginal means.

    Attributes
    ----------
    table : DataFrame indexed by contrast name
        (by columns,) ``estimate, std_error, df, t_value, p_value, lower_cl, upper_cl``;
        p values adjusted by ``adjust``, limits by ``ci_adjust`` at ``level``.
    linfct : ndarray (m, p) — the contrasts as rows of L on ``fit.fixed_names``
    coef : ndarray (contrasts × means of one group) — the family's weights
    adjust, ci_adjust : str — the adjustments used (emmeans may change one, with a note)
    """

    def __init__(self, table, linfct, by_vars, df_method, adjust, notes, p_notes=(),
                 ci_adjust="none", ci_notes=(), level=0.95, method="custom", coef=None,
                 est_type="contrast", fam_size=None, infer=(False, True)):
        self.table = table
        self.linfct = linfct
        self.by_vars = by_vars
        self.df_method = df_method
        self.adjust = adjust
        self.ci_adjust = ci_adjust
        self.level = level
        self.method = method
        self.coef = coef
        self.est_type = est_type
        self.fam_size = fam_size
        self.infer = tuple(infer)
        self._notes, self._p_notes, self._ci_notes = tuple(notes), tuple(p_notes), tuple(ci_notes)

    @property
    def notes(self) -> tuple:
        """What emmeans prints under the table for the intervals/tests shown."""
        changed = [n for n in self._p_notes + self._ci_notes if n.startswith("Note:")]
        out = list(self._notes) + list(dict.fromkeys(changed))
        if self.infer[0]:
            out.append(f"Confidence level used: {self.level:g}")
            out += [n for n in self._ci_notes if not n.startswith("Note:")]
        if self.infer[1]:
            out += [n for n in self._p_notes if not n.startswith("Note:")]
        return tuple(out)

    def _view(self, infer) -> "Contrasts":
        c = Contrasts.__new__(Contrasts)
        c.__dict__.update(self.__dict__)
        c.infer = tuple(infer)
        return c

    def confint(self) -> "Contrasts":
        """The same contrasts shown with their (adjusted) confidence limits, as emmeans'
        ``confint()``."""
        return self._view((True, False))

    def summary(self, infer=(True, True)) -> "Contrasts":
        """The same contrasts shown with intervals and/or tests (emmeans' ``infer``)."""
        if isinstance(infer, bool):
            infer = (infer, infer)
        return self._view(infer)

    def __str__(self) -> str:
        t = self.table
        asym = not np.all(np.isfinite(t["df"].fillna(0.0)))
        cols = {"contrast": ("L", [str(x) for x in t.index])}
        for v in self.by_vars:
            cols[v] = ("L", [_fmt_level(x) for x in t[v]])
        cols["estimate"] = ("est", t["estimate"].to_numpy())
        cols["SE"] = ("se", t["std_error"].to_numpy())
        cols["df"] = ("df", t["df"].to_numpy())
        if self.infer[0]:
            cols["asymp.LCL" if asym else "lower.CL"] = ("num", t["lower_cl"].to_numpy())
            cols["asymp.UCL" if asym else "upper.CL"] = ("num", t["upper_cl"].to_numpy())
        if self.infer[1]:
            cols["z.ratio" if asym else "t.ratio"] = ("stat", t["t_value"].to_numpy())
            cols["p.value"] = ("p", t["p_value"].to_numpy())
        return print_summary(cols, self.by_vars, self.notes)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "<pre>" + str(self).replace("&", "&amp;").replace("<", "&lt;") + "</pre>"


class EMMList:
    """R's ``emm_list`` from ``emmeans(fit, pairwise ~ trt)``: the means and their contrasts.

    ``res.emmeans`` and ``res.contrasts`` (as R's ``res$emmeans``, ``res$contrasts``);
    ``res["contrasts"]``, ``res[1]``; ``emm, con = res``; prints as R prints the list.
    """

    def __init__(self, emmeans: EMMeans, contrasts: Contrasts):
        self.emmeans = emmeans
        self.contrasts = contrasts

    def __getitem__(self, key):
        if key in (0, "emmeans"):
            return self.emmeans
        if key in (1, "contrasts"):
            return self.contrasts
        raise KeyError(f"{key!r}: an EMMList has 'emmeans' (0) and 'contrasts' (1)")

    def __iter__(self):
        return iter((self.emmeans, self.contrasts))

    def __len__(self) -> int:
        return 2

    def __str__(self) -> str:
        return "$emmeans\n" + str(self.emmeans) + "\n\n$contrasts\n" + str(self.contrasts)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "<pre>" + str(self).replace("&", "&amp;").replace("<", "&lt;") + "</pre>"


def _deparse(w) -> str:
    return "c(" + ", ".join(f"{float(x):.15g}" for x in w) + ")"


def _contrast_weights(weights, labels, check_sum) -> tuple:
    """(names, K) of custom weights: a dict {name: weights}, a list of lists, or one list."""
    k = len(labels)
    if isinstance(weights, dict):
        items = list(weights.items())
    else:
        try:
            ws = list(weights)
        except TypeError:
            raise OptionError(f"contrast: method must be a family name, a dict or a list of "
                             f"weights; got {weights!r}") from None
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
