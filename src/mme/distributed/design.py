"""A rank's rows of the design, W_r = [X_r Z_r], over the columns of the whole model.

Every rank holds only its own records, yet the columns of W must be the same on every
rank and the same as ``mme.build_design`` gives for all the records together:

* **Factor levels** are the union over ranks: the distinct values (or, for a
  grouping by several columns, the distinct combinations) of each factor column are
  gathered once, and each rank codes its rows against the union. Fixed-effect
  factors become pandas categoricals with the union as categories (formulaic then
  makes the same columns everywhere, in R's order); a random term's levels are what
  ``group_codes`` gives for the union, i.e. what it gives for the whole data.
* **Aliased fixed-effect columns** are found on X'X summed over ranks (one
  Allreduce), by the rule of the single-machine design (``design.alias_keep``).
* **Relationship matrices** (a pedigree's A⁻¹, or a given K⁻¹) give the levels of
  their term on every rank. K⁻¹ is held as a *source* (``LocalDesign.kinv``,
  :mod:`mme.distributed.kinv`) from which the operator builds only the rows of G⁻¹
  its rank multiplies by: a pedigree's A⁻¹ is never built whole (each rank keeps the
  pedigree and makes its rows, ``Pedigree.ainverse_rows``); a K⁻¹ given as a matrix
  is sliced. With ``kinv="root"`` only rank 0 has the sources. For very large models
  a relmat may be ``(pd.RangeIndex(L), K⁻¹)`` or ``(pd.RangeIndex(L), pedigree)``
  (``mme.Pedigree.from_parents``: animals 0 … L−1) with the data column holding the
  level positions 0 … L−1: no id strings are made.

**Multi-trait** (``cbind(y1, y2) ~ 0 + trait + … + (0 + trait | id)``): each rank
turns its rows of wide data into the long form of ``mme.build_design`` (one row per
observed (unit, trait), unit-major), so the traits of one animal or record stay
together on the rank that read its row; the factor ``trait`` has the responses, in
``cbind`` order, as its levels on every rank (whichever traits a rank observed).

**Residuals** (:mod:`mme.distributed.residual`): R = σ²ₑI, prior weights
(``weights=``), a variance per level of a column (``residual="by(site)"``),
``"diag(trait)"`` or ``"us(trait)"`` across the traits of a row: all block-diagonal
over rows of wide data. ``ar1(col):ar1(row)`` correlates records across a field and
is refused (OptionError naming the option).

The models covered: any number of random terms ``(1|g)``, ``(x|g)``, ``(1|g1:g2)``,
``(0 + trait|g)``, with or without a relationship matrix (no ``covary=`` or
``structure=``). Fixed-effect terms must not be data-dependent transforms
(``scale(x)``, ``poly(x, 2)``, ``center(x)``): they would be computed per slice; the
ranks' column names are compared and a difference is refused.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from formulaic import Formula

from .._errors import DataError, DroppedRowsWarning, FormulaError, OptionError
from ..model.design import (TRAIT, RandomBlock, _long_form,
                            _relmat_parts, _response, _weights, alias_keep, group_codes,
                            checked_kinv, r_name, relmat_codes, term_variables, used_columns)
from ..model.formula import ModelFormula, parse_formula
from ..model.ids import normalize_ids
from ..model.residual import parse_residual
from .comm import Communicator
from .kinv import IdentityKinv, MatrixKinv, PedigreeKinv, kinv_source
from .partition import RowPartition
from .residual import LocalResidual

__all__ = ["LocalDesign", "build_local_design"]


@dataclass(frozen=True)
class LocalDesign:
    """This rank's rows of the MME's design, with the whole model's columns.

    ``blocks`` are ``RandomBlock`` objects whose ``Z`` is None: a term's columns of
    this rank's rows are those of W (``Z(k)`` makes them on demand; W holds them
    once). Their ``Kinv`` is the K⁻¹ given as a matrix (on the ranks that read it) and
    None for a pedigree, whose A⁻¹ is built by rows only. ``kinv`` has, per block, the source
    of K⁻¹'s rows (:mod:`mme.distributed.kinv`), None on a rank without it.
    """

    formula: str
    y: np.ndarray               # this rank's responses
    W: sp.csr_matrix            # this rank's rows of [X Z₁ … Z_b]
    p: int
    fixed_names: tuple
    aliased: tuple
    blocks: tuple
    partition: RowPartition     # rows per rank (after dropping rows with missing values)
    rank: int
    #: this rank's rows' residual structure (R = σ²ₑI when not given)
    residual: LocalResidual = LocalResidual("scalar", None, ("",))
    #: the responses: ("y",), or the traits of a cbind() formula
    responses: tuple = ()
    #: per block, the source of K⁻¹'s rows (None on a rank without it); empty: taken
    #: from the blocks' Kinv (``kinv_sources``)
    kinv: tuple = ()

    def Z(self, k: int) -> sp.csr_matrix:
        """This rank's rows of block k's Z: its columns of W (a copy, made on demand)."""
        off = self.p + sum(b.q for b in self.blocks[:k])
        return self.W[:, off:off + self.blocks[k].q]

    def kinv_sources(self) -> tuple:
        """Per block, the source of its K⁻¹'s rows, or None where this rank has none."""
        if len(self.kinv) == len(self.blocks):
            return self.kinv
        return tuple(kinv_source(b) for b in self.blocks)

    @property
    def multi_response(self) -> bool:
        return len(self.responses) > 1

    @property
    def n(self) -> int:
        """Records on this rank."""
        return self.y.shape[0]

    @property
    def n_total(self) -> int:
        return self.partition.n_rows

    @property
    def dim(self) -> int:
        return self.W.shape[1]

    @property
    def X(self) -> sp.csr_matrix:
        return self.W[:, :self.p]


def _is_factor(col: pd.Series) -> bool:
    return (isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == bool
            or not pd.api.types.is_numeric_dtype(col))


def _unique_values(col: pd.Series) -> list:
    if isinstance(col.dtype, pd.CategoricalDtype):
        return list(col.cat.categories[np.unique(col.cat.codes[col.cat.codes >= 0])])
    return list(pd.unique(col.dropna()))


def _sorted_union(lists: list) -> list:
    vals = list(dict.fromkeys(v for l in lists for v in l))
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=str)


def build_local_design(formula: str, data: pd.DataFrame, comm: Communicator,
                       relmat: dict | None = None, kinv: str = "root",
                       residual: str | None = None, weights: str | None = None
                       ) -> LocalDesign:
    """This rank's rows of the design (collective: every rank calls it with its rows).

    Parameters
    ----------
    formula : str
        lme4 syntax, as ``mme.fit``; every rank must give the same.
    data : DataFrame
        This rank's records (any number, zero included).
    comm : Communicator
    relmat : dict, optional
        ``{"id": Pedigree}`` or ``{"id": (levels, Kinv)}``; on ranks other than 0 the
        K⁻¹ of a pair may be None (only its levels are used there).
    kinv : "root" or "all"
        Which ranks hold the source of K⁻¹'s rows: rank 0 only (it applies G⁻¹,
        ``DistributedOperator(ginv="root")``), or every rank (each then builds only its
        share of G⁻¹'s rows, ``ginv="split"``; a pedigree's A⁻¹ is never built whole).
    residual : str, optional
        As ``mme.fit(residual=...)``: ``"by(site)"``, ``"diag(trait)"``,
        ``"us(trait)"`` (the default with cbind); ``ar1(col):ar1(row)`` is refused.
    weights : str, optional
        Column of prior weights, as ``mme.fit(weights=...)``: Var(eᵢ) = σ²ₑ / wᵢ.
    """
    if kinv not in ("root", "all"):
        raise OptionError(f"kinv must be 'root' or 'all', got {kinv!r}")
    relmat = dict(relmat or {})
    with comm.step("checking the formula and columns"):
        if not isinstance(formula, str):
            raise FormulaError("the distributed solver takes the formula as a string")
        mf = parse_formula(formula)
        rkind, rfactor = parse_residual(residual, mf.multi_response)
        if rkind == "ar1ar1":
            raise OptionError(
                f"residual={residual!r}: an ar1(col):ar1(row) residual correlates records "
                "across a field, so R is not block-diagonal over the records a rank holds; "
                "the distributed solver takes weights=, residual='by(col)', 'diag(trait)' "
                "or 'us(trait)': fit this model with mme.fit on one machine")
        if weights is not None and not isinstance(weights, str):
            raise OptionError(f"weights must name a column, got {weights!r}")
        if not isinstance(data, pd.DataFrame):
            raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        for g in relmat:
            if g not in {t.group for t in mf.random}:
                raise FormulaError(f"relmat given for {g!r}, but the formula has no (… | {g}) "
                                   "term")
        if mf.multi_response:
            data = _long_rows(mf, data)
        cols = used_columns(mf)
        missing = [c for c in cols if c not in data.columns]
        if missing:
            raise FormulaError(f"column(s) {missing} used in the formula are not in the data "
                               f"(columns are: {list(data.columns)[:20]})")
        by = rfactor if rkind == "diag" and not mf.multi_response else None
        extra = [c for c in (weights, by) if c is not None and c not in cols]
        absent = [c for c in extra if c not in data.columns]
        if absent:
            raise FormulaError(f"column(s) {absent} named by weights=/residual= are not in "
                               f"the data (columns are: {list(data.columns)[:20]})")
        nullable = {t.factors[0] for t in mf.random if t.group in relmat} - (
            set(_fixed_cols(mf)) | {mf.response})
        sub = data[cols + extra]
        keep = ~sub[[c for c in cols + extra if c not in nullable]].isna().any(
            axis=1).to_numpy()
        n_drop = int((~keep).sum())
        if n_drop:
            per_col = {c: int(sub[c].isna().sum()) for c in cols + extra
                       if sub[c].isna().any()}
            warnings.warn(f"rank {comm.rank}: {n_drop} of {len(data)} rows dropped for "
                          f"missing values in {per_col}", DroppedRowsWarning, stacklevel=2)
        data = data.loc[keep]
        kinds = {c: ("factor" if _is_factor(data[c]) else "numeric") for c in cols + extra}
    comm.check_same("the formula", formula=formula, relmat=sorted(relmat),
                    residual=residual, weights=weights)
    counts = comm.allgather(len(data), "counting the rows")
    part = RowPartition(tuple(int(c) for c in counts))
    if part.n_rows == 0:
        raise DataError("no records on any rank (after dropping rows with missing values)")
    every_kind = comm.allgather(kinds if len(data) else None, "comparing column types")
    with comm.step("coding the factors"):
        factor_cols = set()
        for c in cols + extra:
            seen = {k[c] for k in every_kind if k is not None}
            if len(seen) > 1:
                who = {r: k[c] for r, k in enumerate(every_kind) if k is not None}
                raise DataError(f"column {c!r} is numeric on some ranks and not on others "
                                f"({who}): give it one type (e.g. read it as strings)")
            if seen == {"factor"}:
                factor_cols.add(c)
        relmat_cols = {t.factors[0] for t in mf.random if t.group in relmat}
        fixed_factor = sorted(factor_cols & set(_fixed_cols(mf) + _slope_cols(mf))
                              - relmat_cols)
        local_uniques = {c: _unique_values(data[c]) for c in fixed_factor}
        groupings = [t for t in mf.random if t.group not in relmat]
        local_combos = [data[list(t.factors)].drop_duplicates() for t in groupings]
        local_by = data[[by]].drop_duplicates() if by is not None else None
    gathered = comm.allgather((local_uniques, local_combos, local_by),
                              "gathering the factor levels")
    with comm.step("building this rank's rows of W"):
        data = data.copy()
        for c in fixed_factor:
            cats = (list(mf.responses) if mf.multi_response and c == TRAIT
                    else _sorted_union([g[0][c] for g in gathered]))
            data[c] = pd.Categorical(data[c], categories=cats)
        y = _response(data, mf.response) if len(data) else np.zeros(0)
        res = _local_residual(mf, rkind, rfactor, data, weights,
                              [g[2] for g in gathered] if by is not None else None)
        X, names = _fixed(mf, data)
        blocks, sources = [], []
        for i, t in enumerate(mf.random):
            if t.group in relmat:
                block, source = _relmat_block(t, data, relmat[t.group],
                                              comm.rank == 0 or kinv == "all")
            else:
                j = groupings.index(t)
                union = pd.concat([g[1][j] for g in gathered], ignore_index=True)
                block = _grouping_block(t, data, union)
                source = IdentityKinv(block.n_levels)
            blocks.append(block)
            sources.append(source)
    every_names = comm.allgather((names, [b.terms for b in blocks]) if len(data) else None,
                                 "comparing the columns")
    with comm.step("checking the columns"):
        ref = next(e for e in every_names if e is not None)
        for r, e in enumerate(every_names):
            if e is not None and e != ref:
                raise FormulaError(
                    f"the columns of the model differ between ranks (rank {r}: {e[0]}; "
                    f"other: {ref[0]}): a data-dependent transform in the formula "
                    "(scale, poly, center) cannot be distributed")
        if not len(data):
            names = ref[0]
            X = sp.csr_matrix((0, len(names)))
            blocks = [RandomBlock(group=b.group, terms=ref[1][k], levels=b.levels,
                                  Z=sp.csc_matrix((0, len(ref[1][k]) * b.n_levels)),
                                  Kinv=b.Kinv, logdet_K=b.logdet_K, Kdiag=b.Kdiag,
                                  k_is_identity=b.k_is_identity)
                      for k, b in enumerate(blocks)]
    XtX = comm.allreduce((X.T @ X).toarray(), "X'X for aliased columns")  # dense-ok: p × p
    keep = alias_keep(XtX) if XtX.shape[0] else np.zeros(0, dtype=bool)
    aliased = tuple(nm for nm, k in zip(names, keep) if not k)
    if aliased and comm.rank == 0:
        warnings.warn(f"fixed-effect columns not estimable (aliased), dropped: "
                      f"{list(aliased)}", UserWarning, stacklevel=2)
    X = X[:, np.flatnonzero(keep)]
    names = tuple(nm for nm, k in zip(names, keep) if k)
    with comm.step("checking the random terms"):
        for b in blocks:
            if b.n_levels < 2:
                raise DataError(f"grouping factor {b.group!r} has a single level "
                                f"({list(b.levels)}); its variance cannot be estimated")
            if b.k_is_identity and part.n_rows <= b.q:
                raise DataError(
                    f"number of observations (={part.n_rows}) <= number of random effects "
                    f"(={b.q}) for term ({b.group}); its variance parameters and the "
                    "residual variance are probably unidentifiable")
    if res.kind != "scalar":
        counts = comm.allreduce(np.bincount(res.codes, minlength=res.t).astype(float),
                                "records per residual level")
        with comm.step("checking the residual levels"):
            _check_residual_levels(res, counts)
    W = sp.hstack([sp.csr_matrix(X)] + [sp.csr_matrix(b.Z) for b in blocks], format="csr")
    W.sort_indices()
    # W holds the terms' columns: no second copy in the blocks (LocalDesign.Z(k))
    blocks = [dataclasses.replace(b, Z=None) for b in blocks]
    return LocalDesign(formula=formula, y=y, W=W, p=len(names), fixed_names=names,
                       aliased=aliased, blocks=tuple(blocks), partition=part, rank=comm.rank,
                       residual=res, responses=tuple(mf.responses) or (mf.response,),
                       kinv=tuple(sources))


def _long_rows(mf: ModelFormula, data: pd.DataFrame) -> pd.DataFrame:
    """This rank's rows of wide data in the long form of ``mme.build_design`` (one row
    per observed (unit, trait)); a rank that observed no response has none."""
    absent = [r for r in mf.responses if r not in data.columns]
    if absent or (len(data) and data[list(mf.responses)].notna().to_numpy().any()):
        return _long_form(mf, data)        # its errors name the response column
    long = data.iloc[:0].copy()
    long[TRAIT] = pd.Categorical([], categories=list(mf.responses))
    long[".unit"] = np.zeros(0, dtype=np.int64)
    long[mf.response] = np.zeros(0)
    return long


def _local_residual(mf: ModelFormula, kind: str, factor, data: pd.DataFrame, weights,
                    by_union) -> LocalResidual:
    """This rank's rows' residual structure (levels the same on every rank)."""
    w = None if weights is None else np.zeros(0)
    if weights is not None and len(data):
        try:
            w = _weights(data, weights)
        except DataError as exc:
            raise DataError(f"{exc} (row labels of this rank's slice of the data"
                            + (", in the long form of the cbind() traits)" if
                               mf.multi_response else ")")) from None
    if kind == "scalar":
        return LocalResidual("scalar", None, ("",), weights=w)
    if mf.multi_response:
        codes = (data[TRAIT].cat.codes.to_numpy(np.int64) if len(data)
                 else np.zeros(0, np.int64))
        units = data[".unit"].to_numpy(np.int64)
        return LocalResidual(kind, TRAIT, tuple(mf.responses), codes=codes,
                             units=units if kind == "us" else None, weights=w)
    union = pd.concat([u for u in by_union if u is not None and len(u)],
                      ignore_index=True).drop_duplicates()
    _, levels = group_codes(union, (factor,))
    codes = (pd.Index(levels).get_indexer(data[factor].astype(str).to_numpy(object))
             .astype(np.int64) if len(data) else np.zeros(0, np.int64))
    return LocalResidual(kind, factor, tuple(levels), codes=codes, weights=w)


def _check_residual_levels(res: LocalResidual, counts: np.ndarray) -> None:
    """The rules of ``model.residual.residual_structure`` on the records of all ranks."""
    if res.kind == "diag":
        few = [res.levels[a] for a in range(res.t) if 0 < counts[a] < 2]
        if few:
            raise DataError(f"residual diag({res.factor}): level(s) {few} have fewer than "
                            "two records; their residual variance cannot be estimated")
    none = [res.levels[a] for a in range(res.t) if counts[a] == 0]
    if none:
        raise DataError(f"residual {res.kind}({res.factor}): level(s) {none} have no "
                        "records")


def _fixed_cols(mf: ModelFormula) -> list:
    from ..model.design import _fixed_variables
    return sorted(_fixed_variables(mf.fixed))


def _slope_cols(mf: ModelFormula) -> list:
    return sorted({v for t in mf.random for v in term_variables(t.expr)})


def _fixed(mf: ModelFormula, data: pd.DataFrame) -> tuple:
    try:
        mm = Formula(mf.fixed).get_model_matrix(data, output="sparse", na_action="raise")
    except Exception as exc:  # formulaic raises several parser error types
        raise FormulaError(f"cannot build the fixed-effects matrix for {mf.fixed!r}: "
                           f"{exc}") from exc
    return sp.csr_matrix(mm, dtype=float), [r_name(c) for c in mm.model_spec.column_names]


def _term_matrix(t, data: pd.DataFrame) -> tuple:
    n = len(data)
    for v in sorted(term_variables(t.expr)):
        col = data[v]
        if isinstance(col.dtype, pd.CategoricalDtype):
            continue
        if not pd.api.types.is_numeric_dtype(col) or col.dtype == bool:
            raise DataError(f"random slope variable {v!r} in ({t.expr} | {t.group}) must be "
                            f"numeric, it is {col.dtype}")
    if t.expr.strip() == "1":
        return np.ones((n, 1)), ("(Intercept)",)
    mm = Formula(t.expr).get_model_matrix(data, output="pandas")
    return (np.asarray(mm, dtype=float),
            tuple(r_name(c) for c in mm.model_spec.column_names))


def _z(T: np.ndarray, codes: np.ndarray, L: int) -> sp.csc_matrix:
    n, d = T.shape
    rows = np.tile(np.arange(n, dtype=np.int64), d)
    cols = (np.repeat(np.arange(d, dtype=np.int64), n) * L) + np.tile(codes, d)
    known = np.tile(codes >= 0, d)
    Z = sp.csc_matrix((T.T.ravel()[known], (rows[known], cols[known])), shape=(n, d * L))
    Z.eliminate_zeros()
    return Z


def _integer_coded(t, data: pd.DataFrame, rel, owner: bool) -> tuple:
    """A relmat given as (RangeIndex(L), K⁻¹ or pedigree[, log|K|]): the data column holds
    the level positions 0 … L−1 (negative or missing: no effect). For very large models:
    no id strings are made; K⁻¹ is used on the owner rank only (None elsewhere); a
    pedigree (animals 0 … L−1, ``Pedigree.from_parents``) gives A⁻¹ by rows.
    Returns (block, source of K⁻¹'s rows or None)."""
    levels = rel[0]
    L = len(levels)
    Kinv = source = None
    logdet = float(rel[2]) if len(rel) == 3 else 0.0
    if hasattr(rel[1], "ainverse_rows"):
        if rel[1].n != L:
            raise DataError(f"relmat for {t.group!r}: the pedigree has {rel[1].n:,} animals, "
                            f"the levels are 0 … {L - 1}")
        if owner:
            source = PedigreeKinv(rel[1])
            if len(rel) == 2:
                logdet = float(rel[1].logdet_a())
    elif owner:
        source = MatrixKinv(checked_kinv(rel[1], L, t.group))
    col = data[t.factors[0]]
    if len(col) and not pd.api.types.is_integer_dtype(col):
        raise DataError(f"relmat for {t.group!r} has integer levels (a RangeIndex): column "
                        f"{t.factors[0]!r} must hold integers 0 … {L - 1}, it is {col.dtype}")
    codes = col.to_numpy(np.int64) if len(col) else np.zeros(0, dtype=np.int64)
    if np.any(codes >= L):
        bad = pd.unique(codes[codes >= L])
        raise DataError(f"{len(bad)} {t.group!r} value(s) in the data are not levels of its "
                        f"relationship matrix (0 … {L - 1}), e.g. {list(bad[:5])}")
    codes = np.where(codes < 0, -1, codes)
    T, names = _term_matrix(t, data)
    return RandomBlock(group=t.group, terms=names, levels=levels, Z=_z(T, codes, L),
                       Kinv=Kinv, logdet_K=logdet, Kdiag=None, k_is_identity=False), source


def _relmat_block(t, data: pd.DataFrame, rel, owner: bool) -> tuple:
    """(block, source of K⁻¹'s rows or None) of a term with a relmat."""
    if len(t.factors) != 1:
        raise FormulaError(f"relmat needs a single grouping column, got {t.group!r}")
    if isinstance(rel, tuple) and len(rel) in (2, 3) and isinstance(rel[0], pd.RangeIndex):
        return _integer_coded(t, data, rel, owner)
    source = None
    if hasattr(rel, "ainverse_rows"):
        # a pedigree: A⁻¹ is built by rows in the operator, never whole here
        levels, Kinv, Kdiag = pd.Index(rel.ids, dtype=object), None, None
        logdet = float(rel.logdet_a()) if owner else 0.0
        source = PedigreeKinv(rel) if owner else None
    elif owner:
        levels, Kinv, logdet, Kdiag = _relmat_parts(rel, t.group)
        source = MatrixKinv(Kinv)
    elif hasattr(rel, "ids"):
        levels, Kinv, logdet, Kdiag = pd.Index(rel.ids, dtype=object), None, 0.0, None
    elif isinstance(rel, tuple) and len(rel) in (2, 3):
        levels, Kinv, logdet, Kdiag = (pd.Index(normalize_ids(rel[0]), dtype=object), None,
                                       0.0, None)
    else:
        raise DataError(f"relmat for {t.group!r} must be an mme.Pedigree or a (levels, Kinv) "
                        "pair")
    T, names = _term_matrix(t, data)
    ids = normalize_ids(data[t.factors[0]]) if len(data) else np.zeros(0, dtype=object)
    codes, _ = relmat_codes(rel, levels, ids, t.group)
    return RandomBlock(group=t.group, terms=names, levels=levels,
                       Z=_z(T, np.asarray(codes, np.int64), len(levels)), Kinv=Kinv,
                       logdet_K=logdet, Kdiag=Kdiag, k_is_identity=False), source


def _grouping_block(t, data: pd.DataFrame, union: pd.DataFrame) -> RandomBlock:
    union = union.drop_duplicates()
    _, levels = group_codes(union, t.factors) if len(union) else (None, pd.Index([]))
    T, names = _term_matrix(t, data)
    if len(data):
        labels = data[t.factors[0]].astype(str).to_numpy(object) if len(t.factors) == 1 else \
            data[list(t.factors)].astype(str).agg(":".join, axis=1).to_numpy(object)
        codes = pd.Index(levels).get_indexer(labels).astype(np.int64)
    else:
        codes = np.zeros(0, dtype=np.int64)
    L = len(levels)
    return RandomBlock(group=t.group, terms=names, levels=pd.Index(levels, dtype=object),
                       Z=_z(T, codes, L), Kinv=sp.identity(L, format="csc"), logdet_K=0.0,
                       Kdiag=np.ones(L),
                       k_is_identity=True)
