"""Predictions from a fitted model for new data: ŷ = X_new β̂ + Σₖ Z_new,k ûₖ.

The fixed part re-applies the fit's formulaic model spec (same levels, contrasts
and stateful transforms) to the new rows; columns that were aliased in the fit are
dropped the same way. Each random term's columns (intercept, slopes) are evaluated
on the new rows with a spec learnt on the fitted rows, and multiplied by the BLUPs
of the rows' levels. A level of a grouping factor that the fit has not seen gets
the effect 0 — a population-level prediction, as lme4's
``predict(..., allow.new.levels = TRUE)`` — and a warning says how many rows and
levels that concerns.

Rows with a missing value in a column the prediction needs get NaN (R's
``na.action = na.pass``).

Intervals (``interval=``), at the estimated variances (their own uncertainty is not
propagated, as in lme4 users' usual recipes and in ``predict.lm``):

- ``include_random=True``, ``"confidence"``: for the conditional mean x'β + z'u of the
  row. se² = w'C⁻¹w with w = [x; z] — Henderson's C⁻¹ is the covariance of the
  prediction errors (β̂ − β, û − u), so β̂'s uncertainty and û's shrinkage both count;
  a level unseen in the fit (û = 0) adds its prior variance z'G₀z.
- ``include_random=False``, ``"confidence"``: for x'β; se² = x' Var(β̂) x.
- ``"prediction"``: for a new observation of the row, adding σ²ₑ (and, with
  ``include_random=False``, z'G₀z of every random term: an observation from a new
  group). Needs σ²ₑ I residuals (prior weights: the new row has weight 1).
- quantiles: t(n − p) for a model without random terms — exactly R's
  ``predict.lm(interval=)`` — and the normal otherwise (df of a prediction from a
  mixed model are not defined; lme4 itself gives no intervals).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from formulaic import Formula

from .._errors import DataError, FormulaError, InternalError, OptionError
from ..model.design import r_name, term_variables
from ..model.formula import parse_formula
from ..model.ids import normalize_ids

#: how many unseen labels a message lists
_SHOW = 5


#: new rows per block of solves with the MME's factor (dim × this dense right-hand sides)
SOLVE_CHUNK = 256
#: the intervals ``predict`` gives
INTERVALS = ("confidence", "prediction")


def predict(fit, newdata: pd.DataFrame | None = None, include_random: bool = True,
            interval: str | None = None, level: float = 0.95):
    """Predicted values X β̂ (+ Z û) for new rows.

    Parameters
    ----------
    fit : mme.Fit
    newdata : DataFrame, optional
        Needs the columns of the fixed part, and with ``include_random`` those of
        the random terms and their grouping factors; the response is not needed.
        None gives the fitted values (X β̂ + Z û, or X β̂) of the rows used in the fit.
    include_random : bool
        True: conditional predictions X β̂ + Σₖ Zₖ ûₖ. False: population-level X β̂.
    interval : None, "confidence" or "prediction"
        Add a standard error and limits (see the module docstring of what they cover).
    level : float
        Confidence level of the limits.

    Returns
    -------
    pandas.Series (float), indexed like ``newdata`` (like the fitted rows when
    ``newdata`` is None), named ``"predicted"``; with ``interval``, a DataFrame with
    R's columns ``fit, lwr, upr`` and ``se_fit`` (``predict.lm``'s ``se.fit``: the SE of
    the fitted value), and for prediction intervals ``se_pred`` = √(se_fit² + the new
    observation's variance), the half-width's scale.

    Raises
    ------
    DataError
        A needed column is missing, a fixed-effect factor has a level the fit has
        not seen, or a numeric column is not numeric.

    Warns
    -----
    UserWarning
        When rows carry levels of a grouping factor unseen in the fit: their
        effects for that factor are 0.
    """
    if not isinstance(include_random, (bool, np.bool_)):
        raise OptionError(f"include_random must be True or False, got {include_random!r}")
    design = fit.internals.design
    if interval is not None:
        return _predict_interval(fit, newdata, include_random, interval, level)
    if newdata is None:
        values = fit.fitted().to_numpy() if include_random else _xbeta(fit, design.X)
        return pd.Series(values, index=design.data.index, name="predicted")
    if not isinstance(newdata, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame, got {type(newdata).__name__}")
    mf = parse_formula(fit.formula)
    terms = mf.random if include_random else ()
    if mf.multi_response:
        return _predict_traits(fit, mf, newdata, include_random)
    frame, complete, rows = _usable_rows(fit, design, newdata, terms, "to predict")
    out = np.full(len(frame), np.nan)
    if len(rows):
        eta = _xbeta(fit, _fixed_matrix(design, rows))
        for term, block in _term_blocks(fit, terms):
            eta += _random_part(design, term, block, rows)
        out[complete] = eta
    return pd.Series(out, index=newdata.index, name="predicted")


class _TermEffects:
    """The part of a fitted block that belongs to one formula term (a member of a
    ``covary`` block: its rows of the BLUPs, over the block's shared levels)."""

    def __init__(self, block, rows: list, names: tuple):
        self.group = block.group
        self.levels = block.levels
        self.terms = names
        self.blup = np.asarray(block.blup)[rows]


def _term_blocks(fit, terms) -> list:
    """(formula term, its effects) pairs; a ``covary`` block serves each of its members."""
    if len(terms) == len(fit.blocks):       # one block per term (no covary): in order
        return list(zip(terms, fit.blocks))
    by_group = {b.group: b for b in fit.blocks}
    out = []
    for term in terms:
        if term.group in by_group:
            out.append((term, by_group[term.group]))
            continue
        for b in fit.blocks:
            rows = [i for i, t in enumerate(b.terms)
                    if t == term.group or t.startswith(f"{term.group}:")]
            if rows:
                names = tuple("(Intercept)" if b.terms[i] == term.group
                              else b.terms[i][len(term.group) + 1:] for i in rows)
                out.append((term, _TermEffects(b, rows, names)))
                break
        else:
            raise InternalError(f"no fitted effects for the random term of {term.group!r}")
    return out


def _predict_traits(fit, mf, newdata: pd.DataFrame, include_random: bool) -> pd.DataFrame:
    """A multi-response (cbind) fit: one prediction per row of wide ``newdata`` and
    trait, as a DataFrame indexed like ``newdata`` with one column per response."""
    from ..model.design import TRAIT
    if TRAIT in newdata.columns:
        raise DataError(f"newdata of a cbind() fit must not have a column {TRAIT!r}: one "
                        "prediction per trait is made for each row")
    traits = list(mf.responses)
    n = len(newdata)
    long = newdata.loc[np.repeat(newdata.index.to_numpy(), len(traits))].reset_index(drop=True)
    long[TRAIT] = pd.Categorical(np.tile(np.array(traits, dtype=object), n), categories=traits)
    uni = predict(_Univariate(fit), long, include_random=include_random).to_numpy()
    return pd.DataFrame(uni.reshape(n, len(traits)), index=newdata.index, columns=traits)


class _Univariate:
    """A view of a cbind fit whose formula has its first response, so that the long
    rows (with ``trait``) go through the single-response prediction."""

    def __init__(self, fit):
        self._fit = fit
        mf = parse_formula(fit.formula)
        self.formula = fit.formula.split("~", 1)[1]
        self.formula = f"{mf.responses[0]} ~{self.formula}"

    def __getattr__(self, name):
        return getattr(self._fit, name)


# -- fixed part ------------------------------------------------------------------
def _xbeta(fit, X) -> np.ndarray:
    if X.shape[1] == 0:
        return np.zeros(X.shape[0])
    return np.asarray(X @ fit.beta, dtype=float).ravel()


def _usable_rows(fit, design, newdata: pd.DataFrame, terms, purpose: str) -> tuple:
    """(newdata with the fixed factors coerced, mask of rows with every needed value,
    those rows); a DataError names the columns newdata lacks."""
    needed = _needed_columns(design.fixed_spec, terms)
    missing = [c for c in needed if c not in newdata.columns]
    if missing:
        raise DataError(f"newdata lacks column(s) {missing} needed {purpose} from "
                        f"'{fit.formula}' (it has: {list(newdata.columns)[:20]})")
    frame = _coerce_fixed_factors(design.fixed_spec, newdata)
    complete = (~frame[needed].isna().any(axis=1).to_numpy() if needed
                else np.ones(len(frame), bool))
    return frame, complete, (frame.loc[complete] if not complete.all() else frame)


def _needed_columns(spec, terms) -> list:
    cols = sorted(spec.required_variables)
    for t in terms:
        cols += sorted(term_variables(t.expr)) + list(t.factors)
    return list(dict.fromkeys(cols))


def _categorical_states(spec) -> dict:
    """{column: levels} for the plain columns the spec encodes as categorical."""
    out = {}
    for name, (kind, state) in spec.encoder_state.items():
        if getattr(kind, "value", kind) == "categorical" and "categories" in state:
            out[name] = list(state["categories"])
    return out


def _label_key(v) -> str:
    """A comparable label: 36, 36.0 and "36" all give "36"."""
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (np.integer, np.floating, np.str_)):
        v = v.item()
    return str(v)


def _coerce_fixed_factors(spec, newdata: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``newdata`` whose fixed-effect factor columns are Categoricals on the
    fit's levels. Values are matched exactly, then by their labels (so "36" matches
    the level 36); a value matching no level raises DataError naming the column."""
    frame = newdata.copy(deep=False)
    for col, levels in _categorical_states(spec).items():
        if col not in frame.columns:
            continue  # an expression such as C(a); formulaic checks it (see _fixed_matrix)
        values = frame[col].astype(object)
        by_label = {_label_key(v): v for v in levels}
        level_set = set(levels)
        lookup, unseen = {}, []
        for v in pd.unique(values.dropna()):
            if v in level_set:
                lookup[v] = v
            elif _label_key(v) in by_label:
                lookup[v] = by_label[_label_key(v)]
            else:
                unseen.append(v)
        if unseen:
            raise DataError(
                f"fixed-effect factor {col!r} has level(s) not seen in the fit: "
                f"{unseen[:_SHOW]}{' ...' if len(unseen) > _SHOW else ''} "
                f"(levels in the fit: {levels[:20]})")
        frame[col] = pd.Categorical(values.map(lookup), categories=levels)
    return frame


def _fixed_matrix(design, rows: pd.DataFrame) -> sp.csc_matrix:
    """X for new rows, with the fit's columns (aliased ones dropped), in its order.

    A column the fit encoded as numerical must be numeric here: formulaic would encode
    strings as a factor and, doing so, change the encoder state of the fit's own spec
    (every later prediction then failed); the spec is also copied for the same reason."""
    for name, (kind, _) in design.fixed_spec.encoder_state.items():
        if getattr(kind, "value", kind) == "numerical" and name in rows.columns:
            col = rows[name]
            if not pd.api.types.is_numeric_dtype(col) or col.dtype == bool:
                raise DataError(f"column {name!r} is numeric in the fit but {col.dtype} in "
                                "newdata")
    spec = copy.deepcopy(design.fixed_spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", _data_mismatch_warning())
            mm = spec.get_model_matrix(rows, output="sparse")
    except Exception as exc:
        raise DataError(f"cannot build the fixed-effects matrix for new data "
                        f"('{spec.formula}'): {exc}") from exc
    names = [r_name(c) for c in mm.model_spec.column_names]
    pos = {n: i for i, n in enumerate(names)}
    lost = [n for n in design.fixed_names if n not in pos]
    if lost:
        raise DataError(f"new data give no column(s) {lost} of the fixed effects")
    X = sp.csc_matrix(mm, dtype=float)
    return X[:, [pos[n] for n in design.fixed_names]]


def _data_mismatch_warning():
    try:
        from formulaic.errors import DataMismatchWarning
        return DataMismatchWarning
    except ImportError:  # pragma: no cover - older formulaic
        return UserWarning


# -- random part -----------------------------------------------------------------
def _term_matrix(design, term, rows: pd.DataFrame) -> tuple:
    """The term's columns (n_new × d) with a spec learnt on the fitted rows, so that
    stateful transforms (``center(x)``) keep the fit's centring."""
    for v in sorted(term_variables(term.expr)):
        col = rows[v]
        if isinstance(col.dtype, pd.CategoricalDtype):
            continue        # a factor such as trait: one column per level
        if not pd.api.types.is_numeric_dtype(col) or col.dtype == bool:
            raise DataError(f"random slope variable {v!r} in ({term.expr} | {term.group}) "
                            f"must be numeric in newdata, it is {col.dtype}")
    try:
        spec = Formula(term.expr).get_model_matrix(design.data, output="pandas").model_spec
        mm = spec.get_model_matrix(rows, output="pandas")
    except Exception as exc:
        raise FormulaError(f"cannot evaluate random term ({term.expr} | {term.group}) "
                           f"on newdata: {exc}") from exc
    return np.asarray(mm, dtype=float), tuple(r_name(c) for c in mm.model_spec.column_names)


def _group_keys(rows: pd.DataFrame, factors: tuple, normalise: bool) -> np.ndarray:
    """Fallback labels of the (interacted) grouping factor for each row, ":"-joined:
    integral floats written as integers (308.0 → "308"), or, with ``normalise``, the
    pedigree's id normalisation (the labels of a relationship matrix)."""
    parts = []
    for f in factors:
        vals = rows[f].to_numpy(dtype=object)
        if normalise:
            try:
                parts.append(np.asarray(normalize_ids(rows[f]), dtype=object))
                continue
            except Exception:  # booleans, mixed objects: keep the plain labels
                pass
        parts.append(np.array([_label_key(v) for v in vals], dtype=object))
    if len(parts) == 1:
        return parts[0]
    return np.array([":".join(p) for p in zip(*parts)], dtype=object)


def _level_codes(block, rows: pd.DataFrame, factors: tuple) -> np.ndarray:
    """Index of each row's level among ``block.levels``; −1 for a level not in the fit.

    Tries the fit's own labels (``str`` of the value), then integral floats as
    integers, then the pedigree's normalisation (ids of a relationship matrix)."""
    plain = rows[factors[0]].astype(object).map(str)
    for f in factors[1:]:
        plain = plain + ":" + rows[f].astype(object).map(str)
    plain = plain.to_numpy(dtype=object)
    codes = block.levels.get_indexer(plain)
    for normalise in (False, True):
        todo = codes < 0
        if not todo.any():
            break
        alt = block.levels.get_indexer(_group_keys(rows.loc[todo], factors, normalise))
        codes[todo] = alt
    return codes


def _random_part(design, term, block, rows: pd.DataFrame) -> np.ndarray:
    T, names = _term_matrix(design, term, rows)
    if names != tuple(block.terms):
        raise FormulaError(f"random term ({term.expr} | {term.group}) gives columns {names} "
                           f"on newdata, the fit has {block.terms}")
    codes = _level_codes(block, rows, term.factors)
    new = codes < 0
    if new.any():
        labels = pd.unique(pd.Series(_group_keys(rows.loc[new], term.factors, False)))
        warnings.warn(
            f"{int(new.sum())} of {len(rows)} rows have {len(labels)} level(s) of "
            f"{term.group!r} not in the fit (e.g. {list(labels[:_SHOW])}); their "
            f"({term.expr} | {term.group}) effects are set to 0 (population level)",
            UserWarning, stacklevel=4)
    U = block.blup[:, np.where(new, 0, codes)]          # d × n_new
    return np.where(new, 0.0, np.einsum("ij,ji->i", T, U))


# -- intervals -------------------------------------------------------------------
def _predict_interval(fit, newdata, include_random: bool, interval: str,
                      level: float) -> pd.DataFrame:
    """``fit, se_fit, lwr, upr`` of ``predict(..., interval=)``; see the module docstring."""
    from scipy import stats
    if interval not in INTERVALS:
        raise OptionError(f"interval must be None, 'confidence' or 'prediction', "
                          f"got {interval!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) \
            or not 0 < level < 1:
        raise OptionError(f"level must be a number in (0, 1), got {level!r}")
    mme = fit.internals.mme
    design = fit.internals.design
    mf = parse_formula(fit.formula)
    if mf.multi_response:
        raise OptionError("predict(interval=) is not available for cbind() (multi-response) "
                          "fits")
    if len(mf.random) != len(fit.blocks):
        raise OptionError("predict(interval=) is not available for fits with covary= blocks")
    if interval == "prediction" and not mme.residual.is_scalar:
        raise OptionError(f"interval='prediction' needs σ²ₑ I residuals; this fit's residual "
                          f"is structured ({mme.residual.kind!r}), so a new row's residual "
                          "variance is not defined: use interval='confidence'")
    frame = design.data if newdata is None else newdata
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame, got {type(frame).__name__}")
    terms = mf.random if (include_random or interval == "prediction") else ()
    frame, complete, rows = _usable_rows(fit, design, frame, terms,
                                         f"for {interval} intervals")
    fitv = np.full(len(frame), np.nan)
    se = np.full(len(frame), np.nan)
    new_var = np.full(len(frame), np.nan)
    if len(rows):
        fitv[complete], se[complete], new_var[complete] = _mean_and_se(
            fit, design, mme, mf, rows, include_random, interval)
    fixed_only = not mme.structures and mme.residual.is_scalar
    a = 0.5 * (1.0 + level)
    q = stats.t.ppf(a, fit.nobs - len(fit.beta)) if fixed_only else stats.norm.ppf(a)
    cols = {"fit": fitv, "se_fit": se}
    width = se
    if interval == "prediction":
        width = cols["se_pred"] = np.sqrt(se ** 2 + new_var)
    cols.update(lwr=fitv - q * width, upr=fitv + q * width)
    out = pd.DataFrame(cols, index=frame.index)
    out.attrs.update(interval=interval, level=float(level), include_random=include_random,
                     quantile="t" if fixed_only else "normal")
    return out


def _mean_and_se(fit, design, mme, mf, rows, include_random: bool, interval: str) -> tuple:
    X = _fixed_matrix(design, rows)
    m = X.shape[0]
    eta = _xbeta(fit, X)
    G0s, R0 = mme.split(np.asarray(fit.internals.theta_reported, float))
    extra = np.zeros(m)
    pairs = list(zip(_term_blocks(fit, mf.random), mme.structures, G0s)) if (
        include_random or interval == "prediction") else []
    if include_random:
        r_idx, c_idx, vals = [X.tocoo().row], [X.tocoo().col], [X.tocoo().data]
        for (term, block), s, G0 in pairs:
            eta += _random_part(design, term, block, rows)
            T, _ = _term_matrix(design, term, rows)
            codes = _level_codes(block, rows, term.factors)
            seen = codes >= 0
            for a in range(s.d):
                r_idx.append(np.flatnonzero(seen))
                c_idx.append(s.offset + a * s.L + codes[seen])
                vals.append(T[seen, a])
            Tn = T[~seen]
            extra[~seen] += np.einsum("ij,jk,ik->i", Tn, G0, Tn)
        Wn = sp.csc_matrix((np.concatenate(vals), (np.concatenate(r_idx),
                                                   np.concatenate(c_idx))), shape=(m, mme.dim))
        fac = fit.internals.factor_at_estimate()
        var = np.empty(m)
        for i in range(0, m, SOLVE_CHUNK):
            B = Wn[i:i + SOLVE_CHUNK].T.toarray()   # dense-ok: dim × SOLVE_CHUNK right-hand sides
            var[i:i + SOLVE_CHUNK] = np.sum(B * fac.solve(B), axis=0)
    else:
        Xd = X.toarray()                             # dense-ok: new rows × p (fixed part)
        var = np.einsum("ij,jk,ik->i", Xd, fit.vcov_beta, Xd)
    # a new observation of the row: its residual, and at the population level the
    # effects of every random term as for a new group
    new_var = np.zeros(m)
    if interval == "prediction":
        new_var += float(R0[0, 0])
        if not include_random:
            for (term, block), s, G0 in pairs:
                T, _ = _term_matrix(design, term, rows)
                new_var += np.einsum("ij,jk,ik->i", T, G0, T)
    return eta, np.sqrt(np.maximum(var, 0.0) + extra), new_var
