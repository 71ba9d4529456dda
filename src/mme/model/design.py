"""Design matrices: the response y, the sparse fixed-effects matrix X and one sparse
Z block per random term, from a parsed formula and a DataFrame.

X comes from formulaic (R's rules for contrasts, interactions and full-rank
coding), with columns renamed the way R prints them (``K2O_lbac54``). Columns of X
that are linear combinations of earlier ones are dropped and reported, as R's
``lm`` reports aliased coefficients.
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
from formulaic import Formula

from .._errors import (DataError, DroppedRowsWarning, FormulaError, InternalError,
                       NotPositiveDefiniteError)
from .formula import ModelFormula, RandomTerm, parse_formula
from .rsyntax import r_column_name
from .ids import normalize_ids
from .residual import ResidualStructure, parse_residual, residual_structure
from .spatial import spatial_residual

log = logging.getLogger("mme")

#: A column of X is aliased when the squared norm of its residual on the kept
#: columns before it is below ALIAS_TOL × its squared norm. R's lm uses 1e-7 on the
#: QR diagonal of X; working on X'X squares the condition number, hence 1e-10 here.
ALIAS_TOL = 1e-10


@dataclass(frozen=True)
class RandomBlock:
    """One random term: Z (n × d·L, term-major columns) and its relationship.

    The covariance of its effects is G₀ ⊗ K with G₀ (d × d) estimated and K the
    known relationship among the L levels (identity unless given); only K⁻¹ is used.
    """

    group: str
    terms: tuple            # d column names of the term's model matrix
    levels: pd.Index        # L level labels
    Z: sp.csc_matrix        # n × (d·L)
    Kinv: sp.csc_matrix     # L × L, symmetric, full (both triangles)
    logdet_K: float         # log|K| (0 for identity)
    Kdiag: np.ndarray = None  # diag(K) (1 + F for a pedigree); None if unknown
    k_is_identity: bool = True  # K = I (no relationship matrix given): the one test of it
    structure: str | None = None  # G₀'s structure: None (unstructured) or "fa(k)"

    @property
    def d(self) -> int:
        return len(self.terms)

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def q(self) -> int:
        return self.d * self.n_levels


@dataclass(frozen=True)
class Design:
    """Everything numeric that the MME need, plus the names to report results.

    Stage 1 of a fit (``build_design``); ``W = [X Z]`` is formed once, on first use.
    """

    formula: str            # the formula as the user wrote it
    y: np.ndarray
    X: sp.csc_matrix
    fixed_names: tuple
    aliased: tuple
    blocks: tuple
    fixed_spec: object = field(repr=False)   # formulaic ModelSpec, for new data
    data: pd.DataFrame = field(repr=False)   # the rows used (after dropping NA)
    residual: ResidualStructure = field(default=None, repr=False)   # R's structure

    @cached_property
    def W(self) -> sp.csc_matrix:
        """[X Z₁ … Z_b] (n × dim), sparse CSC."""
        return sp.hstack([self.X] + [b.Z for b in self.blocks], format="csc")

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]


def r_name(name: str) -> str:
    """formulaic column name → R's: ``a[T.b]:c[d]`` → ``ab:cd``, Intercept → (Intercept),
    ``I(x ** 2)`` → ``I(x^2)``, ``poly(x, 2, raw=True)[0]`` → ``poly(x, 2, raw = TRUE)1``
    (``rsyntax.r_column_name``)."""
    return r_column_name(name)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def formulaic_message(exc: Exception) -> str:
    """formulaic's error message without terminal colour codes (and on one line)."""
    return " ".join(_ANSI.sub("", str(exc)).split())


def _fixed_variables(fixed: str) -> set:
    try:
        return set(Formula(fixed).required_variables)
    except Exception as exc:  # formulaic raises several parser error types
        raise FormulaError(f"cannot parse the fixed part {fixed!r}: "
                           f"{formulaic_message(exc)}") from exc


def term_variables(expr: str) -> set:
    """The data columns a term's expression (``1 + x``, ``poly(x, 2)``) reads."""
    return _fixed_variables(expr)


def used_columns(mf: ModelFormula) -> list:
    """Every data column the formula needs, in a stable order."""
    cols = [mf.response]
    cols += sorted(_fixed_variables(mf.fixed))
    for t in mf.random:
        cols += sorted(term_variables(t.expr))
        cols += list(t.factors)
    seen, out = set(), []
    for c in cols:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def _check_columns(mf: ModelFormula, data: pd.DataFrame, relmat: dict) -> list:
    cols = used_columns(mf)
    missing = [c for c in cols if c not in data.columns]
    if missing:
        raise FormulaError(
            f"column(s) {missing} used in the formula are not in the data "
            f"(columns are: {list(data.columns)[:20]})")
    return cols


def _drop_missing(data: pd.DataFrame, cols: list) -> pd.DataFrame:
    sub = data[cols]
    keep = ~sub.isna().any(axis=1).to_numpy()
    n_drop = int((~keep).sum())
    if n_drop:
        per_col = {c: int(sub[c].isna().sum()) for c in cols if sub[c].isna().any()}
        warnings.warn(
            f"{n_drop} of {len(data)} rows dropped for missing values in {per_col}",
            DroppedRowsWarning, stacklevel=4)
    out = data.loc[keep]
    if len(out) == 0:
        raise DataError(
            f"no rows left after dropping {n_drop} rows with missing values in {cols}")
    return out


def _response(data: pd.DataFrame, name: str) -> np.ndarray:
    col = data[name]
    if col.dtype == bool or not pd.api.types.is_numeric_dtype(col):
        raise DataError(f"response column {name!r} must be numeric, it is {col.dtype}")
    y = col.to_numpy(dtype=float)
    if not np.all(np.isfinite(y)):
        bad = np.flatnonzero(~np.isfinite(y))[:5]
        raise DataError(f"response column {name!r} has non-finite values at rows {bad.tolist()}")
    return y


def _alias_check(X: sp.csc_matrix) -> np.ndarray:
    """Keep-mask of X's columns: a column is aliased when it lies in the span of the
    kept columns before it (R's lm keeps the first of a collinear set).

    Works on the small dense p × p cross-product X'X by an in-order Cholesky.
    """
    return alias_keep((X.T @ X).toarray())  # dense-ok: p × p


def alias_keep(XtX: np.ndarray) -> np.ndarray:
    """Keep-mask of the columns of X from its cross-product X'X (p × p, dense): the
    rule of ``_alias_check`` (also used by the distributed design, whose X'X is a sum
    over ranks)."""
    p = XtX.shape[0]
    scale = np.sqrt(np.maximum(np.diag(XtX), 0.0))
    keep = np.zeros(p, dtype=bool)
    Lk = np.zeros((p, p))
    kept = []
    for j in range(p):
        if scale[j] == 0.0:
            continue
        if kept:
            Lsub = Lk[np.ix_(kept, kept)]
            b = np.linalg.solve(Lsub, XtX[kept, j] / (scale[kept] * scale[j]))
            resid = 1.0 - b @ b
        else:
            b = np.zeros(0)
            resid = 1.0
        if resid > ALIAS_TOL:
            keep[j] = True
            Lk[j, kept] = b
            Lk[j, j] = np.sqrt(resid)
            kept.append(j)
    return keep


def ols_residuals(X: sp.csc_matrix, y: np.ndarray) -> np.ndarray:
    """y − Xb̂ by least squares on the small dense X'X (X full column rank)."""
    if not X.shape[1]:
        return y.copy()
    XtX = (X.T @ X).toarray()  # dense-ok: p × p
    return y - X @ np.linalg.solve(XtX, X.T @ y)


def _fixed_matrix(mf: ModelFormula, data: pd.DataFrame) -> tuple:
    try:
        mm = Formula(mf.fixed).get_model_matrix(data, output="sparse", na_action="raise")
    except Exception as exc:
        raise FormulaError(f"cannot build the fixed-effects matrix for {mf.fixed!r}: "
                           f"{formulaic_message(exc)}") from exc
    X = sp.csc_matrix(mm, dtype=float)
    names = [r_name(c) for c in mm.model_spec.column_names]
    keep = _alias_check(X) if X.shape[1] else np.zeros(0, dtype=bool)
    aliased = tuple(n for n, k in zip(names, keep) if not k)
    if aliased:
        warnings.warn(f"fixed-effect columns not estimable (aliased), dropped: {list(aliased)}",
                      UserWarning, stacklevel=4)
    X = X[:, np.flatnonzero(keep)].tocsc()
    return X, tuple(n for n, k in zip(names, keep) if k), aliased, mm.model_spec


def _codes_levels(col: pd.Series) -> tuple:
    """Integer codes of a grouping column and its levels in R's order: a categorical's
    categories that occur, otherwise the sorted distinct values (``pd.factorize``)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.unique())
        lv = [c for c in col.cat.categories if c in present]
        return pd.Index(lv).get_indexer(col), lv
    try:
        codes, uniques = pd.factorize(col, sort=True)
    except TypeError:                # mixed types that do not sort together
        lv = sorted(col.unique(), key=str)
        return pd.Index(lv).get_indexer(col), lv
    return codes, list(uniques)


def group_codes(data: pd.DataFrame, factors: tuple) -> tuple:
    """Integer codes and level labels of a (possibly interacted) grouping factor.

    Levels are ordered as R orders ``factor(a:b)``: by the first factor's levels,
    then the second's; labels are joined by ``":"``.
    """
    codes_list, labels_list = [], []
    for f in factors:
        codes, lv = _codes_levels(data[f])
        codes_list.append(np.asarray(codes))
        labels_list.append([str(v) for v in lv])
    if len(factors) == 1:
        return codes_list[0].astype(np.int64), pd.Index(labels_list[0], dtype=object)
    sizes = [len(l) for l in labels_list]
    combined = np.ravel_multi_index(codes_list, sizes)
    used, codes = np.unique(combined, return_inverse=True)
    parts = np.unravel_index(used, sizes)
    labels = [":".join(labels_list[k][parts[k][i]] for k in range(len(factors)))
              for i in range(len(used))]
    return codes.astype(np.int64), pd.Index(labels, dtype=object)


#: a value of a relmat term's column meaning "not known" (with NA): a pedigree's
#: default unknown-parent codes (``Pedigree.missing_tokens`` when it has them)
UNKNOWN_TOKENS = ("", "0", "NA")

#: K⁻¹ given as (levels, Kinv) must equal its transpose to this × its largest |entry|
KINV_SYMMETRY_TOL = 1e-10


def _relmat_parts(rel, group: str) -> tuple:
    """(levels, Kinv csc, logdet K) from a Pedigree-like object or a (levels, Kinv) pair."""
    if hasattr(rel, "ainverse"):
        Kinv = sp.csc_matrix(rel.ainverse())
        levels = pd.Index(rel.ids, dtype=object)
        return levels, Kinv, float(rel.logdet_a()), 1.0 + np.asarray(rel.inbreeding, float)
    if isinstance(rel, tuple) and len(rel) in (2, 3):
        levels = pd.Index(normalize_ids(rel[0]), dtype=object)
        dup = levels[levels.duplicated()]
        if len(dup):
            raise DataError(f"relmat for {group!r}: {len(dup)} level(s) repeated in the "
                            f"levels of K⁻¹, e.g. {list(dup[:5])}")
        Kinv = checked_kinv(rel[1], len(levels), group)
        if len(rel) == 3:           # log|K| given: K⁻¹ is not factorized here
            return levels, Kinv, float(rel[2]), None
        factor = _factor_kinv(Kinv, group)
        logdet = -factor.logdet()
        Kdiag = _diag_of_inverse(factor)
        factor.free()
        return levels, Kinv, logdet, Kdiag
    raise DataError(f"relmat for {group!r} must be an mme.Pedigree or a (levels, Kinv) pair")


def checked_kinv(Kinv, L: int, group: str) -> sp.csc_matrix:
    """A given K⁻¹ as CSC, after checking it is L × L and symmetric (DataError naming
    the term otherwise)."""
    Kinv = sp.csc_matrix(Kinv, dtype=float)
    if Kinv.shape != (L, L):
        raise DataError(f"relmat for {group!r}: K⁻¹ is {Kinv.shape}, expected "
                        f"{L} × {L} levels")
    asym = abs(Kinv - Kinv.T)
    if asym.nnz and asym.max() > KINV_SYMMETRY_TOL * max(abs(Kinv).max(), 1e-300):
        raise DataError(f"relmat for {group!r}: K⁻¹ is not symmetric (largest "
                        f"|K⁻¹ − K⁻¹'| = {asym.max():.3g}); give both triangles")
    return Kinv


def _factor_kinv(Kinv: sp.csc_matrix, group: str):
    from ..engine.cholesky import Cholesky
    try:
        K_lower = sp.tril(Kinv).tocsc()
        factor = Cholesky(K_lower)
        factor.factorize(K_lower)
    except NotPositiveDefiniteError as exc:
        raise NotPositiveDefiniteError(
            f"relmat for {group!r}: K⁻¹ is not positive definite ({exc})") from exc
    return factor


def _diag_of_inverse(factor) -> np.ndarray:
    """diag(K) from the factor of K⁻¹ by a selected inverse (K itself is never formed)."""
    i = np.arange(factor.n, dtype=np.int64)
    return factor.selected_inverse()[factor.slots(i, i)].copy()


def relationship_diagonal(block: RandomBlock) -> np.ndarray:
    """diag(K) of a term — reliabilities are 1 − PEV/(σ²Kᵢᵢ): 1 + F kept from a
    pedigree, ones for K = I, from K⁻¹ by a selected inverse when a ``(levels, Kinv)``
    relmat was factorized for log|K|; else (``(levels, Kinv, logdet)``: K⁻¹ not
    factorized at the design) computed here, one factorization of K⁻¹."""
    if block.Kdiag is not None:
        return block.Kdiag
    factor = _factor_kinv(block.Kinv, block.group)
    kdiag = _diag_of_inverse(factor)
    factor.free()
    return kdiag


def relmat_codes(rel, levels: pd.Index, ids, group: str) -> tuple:
    """(codes of ``ids`` among a relationship matrix's ``levels``, mask of unknown ids).

    An unknown level (missing, or a pedigree's unknown-parent token such as 0: a dam
    that is not known) gets code −1 and gives the row no effect of this term; the row
    is kept. Any other id not among the levels is a DataError naming examples."""
    codes = levels.get_indexer(ids) if len(ids) else np.zeros(0, dtype=np.int64)
    tokens = {normalize_ids(t) for t in getattr(rel, "missing_tokens", UNKNOWN_TOKENS)}
    unknown = (codes < 0) & np.array([v is None or v in tokens for v in ids], dtype=bool)
    bad = (codes < 0) & ~unknown
    if bad.any():
        vals = pd.unique(ids[bad])
        raise DataError(f"{len(vals)} {group!r} value(s) in the data are not in its "
                        f"relationship matrix / pedigree, e.g. {list(vals[:5])}")
    return codes, unknown


def _random_block(term: RandomTerm, data: pd.DataFrame, relmat: dict,
                  unit_level_ok: bool = False) -> RandomBlock:
    n = len(data)
    for v in sorted(term_variables(term.expr)):
        if isinstance(data[v].dtype, pd.CategoricalDtype):
            continue        # a factor: (0 + trait | animal) gives one column per level
        if not pd.api.types.is_numeric_dtype(data[v]) or data[v].dtype == bool:
            raise DataError(
                f"random slope variable {v!r} in ({term.expr} | {term.group}) must be "
                f"numeric, it is {data[v].dtype}")
    if term.expr.strip() == "1":     # (1|g): the common case, without a formulaic pass
        T, names = np.ones((n, 1)), ("(Intercept)",)
    else:
        try:
            mm = Formula(term.expr).get_model_matrix(data, output="pandas")
        except Exception as exc:  # formulaic raises several error types
            raise FormulaError(f"cannot build the random term ({term.expr} | {term.group}): "
                               f"{formulaic_message(exc)}") from exc
        T = np.asarray(mm, dtype=float)
        names = tuple(r_name(c) for c in mm.model_spec.column_names)
    if T.shape[1] == 0:
        raise FormulaError(f"random term ({term.expr} | {term.group}) has no columns")
    if term.group in relmat:
        if len(term.factors) != 1:
            raise FormulaError(f"relmat needs a single grouping column, got {term.group!r}")
        rel = relmat[term.group]
        levels, Kinv, logdet, Kdiag = _relmat_parts(rel, term.group)
        codes, unknown = relmat_codes(rel, levels, normalize_ids(data[term.factors[0]]),
                                      term.group)
        if unknown.any():
            log.info("%d rows have no known %r (missing or an unknown-parent code): no %r "
                     "effect for them", int(unknown.sum()), term.factors[0], term.group)
    else:
        codes, levels = group_codes(data, term.factors)
        Kinv = sp.identity(len(levels), format="csc")
        logdet = 0.0
        Kdiag = np.ones(len(levels))
    L, d = len(levels), T.shape[1]
    if L < 2:
        raise DataError(
            f"grouping factor {term.group!r} has a single level ({list(levels)}); "
            "its variance cannot be estimated")
    # a term with one level per record is allowed beside a spatial residual (a nugget,
    # ASReml's `units`: identifiable from the correlated part)
    if term.group not in relmat and n <= L * d and not unit_level_ok:
        # lme4's check.nobs.vs.nRE (a relationship matrix legitimately has more levels)
        raise DataError(
            f"number of observations (={n}) <= number of random effects (={L * d}) for term "
            f"({term.expr} | {term.group}); its variance parameters and the residual "
            "variance are probably unidentifiable")
    rows = np.tile(np.arange(n, dtype=np.int64), d)
    cols = (np.repeat(np.arange(d, dtype=np.int64), n) * L) + np.tile(codes, d)
    vals = T.T.ravel()
    known = np.tile(codes >= 0, d)
    Z = sp.csc_matrix((vals[known], (rows[known], cols[known])), shape=(n, d * L))
    Z.eliminate_zeros()
    return RandomBlock(group=term.group, terms=names, levels=levels, Z=Z,
                       Kinv=Kinv, logdet_K=logdet, Kdiag=Kdiag,
                       k_is_identity=term.group not in relmat)


def build_design(formula: str | ModelFormula, data: pd.DataFrame,
                 relmat: dict | None = None, residual: str | None = None,
                 weights: str | None = None, covary: dict | None = None,
                 structure: dict | None = None) -> Design:
    """Stage 1 of a fit: formula + data frame → y, sparse X, sparse Z blocks, R's structure.

    Parameters
    ----------
    formula : str or ModelFormula
        lme4 syntax (``"y ~ a + (1|g)"``), or a formula parsed by ``parse_formula``.
        ``cbind(y1, y2) ~ 0 + trait + …`` fits several responses of wide data (one
        row per unit): internally the long form with a factor ``trait`` whose levels
        are the responses in ``cbind`` order; a missing response drops only that
        trait of that row.
    data : DataFrame
        Rows with missing values in the model's columns are dropped (with a warning).
    relmat : dict, optional
        ``{"id": mme.Pedigree}`` or ``{"id": (levels, Kinv)}``.
    residual : str, optional
        ``"us(trait)"`` (the default with ``cbind``), ``"diag(trait)"``, or
        ``"by(factor)"``: a residual variance per level of a column (``model.residual``).
    weights : str, optional
        Column of prior weights: Var(eᵢ) = σ²/wᵢ, as lme4's ``weights=``.
    covary : dict, optional
        ``{"genetic": ["animal", "dam"]}``: join random terms over one relationship
        matrix into one block with an unstructured G₀ ⊗ K (direct–maternal models). A
        row whose level of such a term is unknown (missing, or the pedigree's
        unknown-parent code) gets no effect of it and is kept.
    structure : dict, optional
        ``{"gen": "fa(2)"}``: G₀ of that term factor analytic, ΛΛ' + Ψ (k factors),
        instead of unstructured; for ``(0 + env | gen)`` genotype × environment models.

    Returns
    -------
    Design
    """
    mf = formula if isinstance(formula, ModelFormula) else parse_formula(formula)
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    relmat = dict(relmat or {})
    kind, rfactor = parse_residual(residual, mf.multi_response)
    if mf.multi_response:
        data = _long_form(mf, data)
    cols = _check_columns(mf, data, relmat)
    named = [weights] + ([c for c in rfactor if c] if kind == "ar1ar1" else
                         [rfactor if kind == "diag" and not mf.multi_response else None])
    extra = [c for c in named if c is not None and c not in cols]
    absent = [c for c in extra if c not in data.columns]
    if absent:
        raise FormulaError(f"column(s) {absent} named by weights=/residual= are not in the "
                           f"data (columns are: {list(data.columns)[:20]})")
    for g in relmat:
        if g not in {t.group for t in mf.random}:
            raise FormulaError(f"relmat given for {g!r}, but the formula has no (… | {g}) term")
    keep_na = _nullable(mf, relmat) | (set(rfactor[:2]) if kind == "ar1ar1" else set())
    data = _drop_missing(data, [c for c in cols + extra if c not in keep_na])
    y = _response(data, mf.response)
    w = _weights(data, weights)
    X, names, aliased, spec = _fixed_matrix(mf, data)
    blocks = _join_covarying(tuple(_random_block(t, data, relmat, kind == "ar1ar1")
                                   for t in mf.random),
                             covary, relmat)
    blocks = _with_structures(blocks, structure)
    if kind == "ar1ar1":
        if w is not None:
            raise FormulaError("weights= with an ar1(col):ar1(row) residual is not supported")
        res = spatial_residual(data, rfactor[0], rfactor[1], by=rfactor[2])
    elif kind == "scalar":
        res = residual_structure("scalar", None, len(y), weights=w)
    elif mf.multi_response:
        codes = data["trait"].cat.codes.to_numpy(np.int64)
        res = residual_structure(kind, "trait", len(y), codes, mf.responses,
                                 data[".unit"].to_numpy(np.int64), weights=w)
    else:
        codes, levels = group_codes(data, (rfactor,))
        res = residual_structure(kind, rfactor, len(y), codes, list(levels), weights=w)
    return Design(formula=formula if isinstance(formula, str) else mf.text, y=y, X=X,
                  fixed_names=names, aliased=aliased, blocks=blocks, fixed_spec=spec,
                  data=data, residual=res)


def _nullable(mf: ModelFormula, relmat: dict) -> set:
    """Grouping columns of relmat terms used nowhere else: a missing value there means
    an unknown level (no effect), not a row to drop."""
    own = {t.factors[0] for t in mf.random if t.group in relmat and len(t.factors) == 1}
    if not own:
        return set()
    other = {mf.response} | set(_fixed_variables(mf.fixed))
    for t in mf.random:
        other |= set(term_variables(t.expr))
        if t.group not in relmat:
            other |= set(t.factors)
    return own - other


def _with_structures(blocks: tuple, structure: dict | None) -> tuple:
    """Blocks with the G₀ structure named in ``structure=`` (validated by
    ``covariance.parse_structure`` when the MME are built)."""
    if not structure:
        return blocks
    if not isinstance(structure, dict):
        raise FormulaError("structure must be a dict such as {'gen': 'fa(2)'}")
    groups = [b.group for b in blocks]
    absent = [g for g in structure if g not in groups]
    if absent:
        raise FormulaError(f"structure names {absent}, which are not random terms of the "
                           f"formula (its terms: {groups})")
    from .covariance import parse_structure
    for b in blocks:
        if b.group in structure:
            parse_structure(structure[b.group], b.d, b.group)
    return tuple(replace(b, structure=structure[b.group]) if b.group in structure else b
                 for b in blocks)


def _join_covarying(blocks: tuple, covary: dict | None, relmat: dict) -> tuple:
    """Blocks named together in ``covary`` become one block: Z = [Z_a Z_b …] over the
    shared levels and K, G₀ unstructured over all their terms."""
    if not covary:
        return blocks
    if not isinstance(covary, dict):
        raise FormulaError("covary must be a dict such as {'genetic': ['animal', 'dam']}")
    by_group = {b.group: b for b in blocks}
    taken, joined = {}, {}
    for name, members in covary.items():
        if isinstance(members, str) or len(members) < 2:
            raise FormulaError(f"covary[{name!r}] must list two or more random terms, "
                               f"got {members!r}")
        absent = [m for m in members if m not in by_group]
        if absent:
            raise FormulaError(f"covary[{name!r}] names {absent}, which are not random terms "
                               f"of the formula (its terms: {list(by_group)})")
        twice = [m for m in members if m in taken]
        if twice:
            raise FormulaError(f"covary: {twice} already belong to {taken[twice[0]]!r}")
        if name in by_group and name not in members:
            raise FormulaError(f"covary: {name!r} is already the name of a random term")
        rels = [relmat.get(m) for m in members]
        if rels[0] is None or any(r is not rels[0] for r in rels):
            raise FormulaError(f"covary[{name!r}]: {list(members)} must share one "
                               "relationship matrix: pass the same object in relmat= for each")
        parts = [by_group[m] for m in members]
        if any(not parts[0].levels.equals(b.levels) for b in parts[1:]):
            raise InternalError("covarying terms over one relationship with different levels")
        scalar = all(b.d == 1 for b in parts)
        terms = tuple(b.group if scalar else f"{b.group}:{t}" for b in parts for t in b.terms)
        first = parts[0]
        joined[members[0]] = RandomBlock(
            group=name, terms=terms, levels=first.levels,
            Z=sp.hstack([b.Z for b in parts], format="csc"), Kinv=first.Kinv,
            logdet_K=first.logdet_K, Kdiag=first.Kdiag, k_is_identity=first.k_is_identity)
        for m in members:
            taken[m] = name
    return tuple(joined[b.group] if b.group in joined else b
                 for b in blocks if b.group not in taken or b.group in joined)


#: the factor that indexes the responses of a ``cbind`` formula in the long form
TRAIT = "trait"


def _long_form(mf: ModelFormula, data: pd.DataFrame) -> pd.DataFrame:
    """Wide data (one row per unit, one column per response) → long data: one row per
    observed (unit, trait), unit-major; columns ``trait`` (levels in ``cbind`` order),
    ``.unit`` (the wide row's position) and the response under ``mf.response``."""
    absent = [r for r in mf.responses if r not in data.columns]
    if absent:
        raise FormulaError(f"response column(s) {absent} of {mf.response} are not in the data")
    for taken in (TRAIT, ".unit"):
        if taken in data.columns:
            raise FormulaError(f"a cbind() formula adds a column {taken!r}; the data have one "
                               "already: rename it")
    for r in mf.responses:
        col = data[r]
        if col.dtype == bool or not pd.api.types.is_numeric_dtype(col):
            raise DataError(f"response column {r!r} must be numeric, it is {col.dtype}")
    n, t = len(data), len(mf.responses)
    long = data.loc[np.repeat(data.index.to_numpy(), t)].reset_index(drop=True)
    long[TRAIT] = pd.Categorical(np.tile(np.array(mf.responses, dtype=object), n),
                                 categories=list(mf.responses))
    long[".unit"] = np.repeat(np.arange(n, dtype=np.int64), t)
    long[mf.response] = np.column_stack([data[r].to_numpy(dtype=float)
                                         for r in mf.responses]).ravel()
    observed = long[mf.response].notna().to_numpy()
    if not observed.any():
        raise DataError(f"all responses of {mf.response} are missing")
    return long.loc[observed].reset_index(drop=True)


def _weights(data: pd.DataFrame, name: str | None) -> np.ndarray | None:
    """Prior weights: numeric, finite and > 0 (the error names the rows)."""
    if name is None:
        return None
    col = data[name]
    if col.dtype == bool or not pd.api.types.is_numeric_dtype(col):
        raise DataError(f"weights column {name!r} must be numeric, it is {col.dtype}")
    w = col.to_numpy(dtype=float)
    bad = np.flatnonzero(~(np.isfinite(w) & (w > 0)))
    if bad.size:
        raise DataError(f"weights column {name!r} must be finite and > 0; rows "
                        f"{data.index[bad[:5]].tolist()} have {w[bad[:5]].tolist()}")
    return w
