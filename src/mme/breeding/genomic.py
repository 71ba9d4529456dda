"""Genomic relationships (VanRaden 2008) and the single-step H^-1.

References
----------
VanRaden, P. M. (2008). Efficient methods to compute genomic predictions.
Journal of Dairy Science 91:4414-4423.

Legarra, A., Aguilar, I. & Misztal, I. (2009). A relationship matrix including
full pedigree and genomic information. Journal of Dairy Science 92:4656-4663.

Aguilar, I., Misztal, I., Johnson, D. L., Legarra, A., Tsuruta, S. &
Lawlor, T. J. (2010). Hot topic: A unified approach to utilize phenotypic,
full pedigree, and genomic information for genetic evaluation of Holstein
final score. Journal of Dairy Science 93:743-752.

Christensen, O. F. & Lund, M. S. (2010). Genomic prediction when some animals
are not genotyped. Genetics Selection Evolution 42:2.

Chen, C. Y., Misztal, I., Aguilar, I., Legarra, A. & Muir, W. M. (2011).
Effect of different genomic relationship matrices on accuracy and scale.
Journal of Animal Science 89:2673-2679.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp

from ..model.ids import normalize_ids
from .pedigree import Pedigree

from .._errors import DataError, NotPositiveDefiniteError


__all__ = ["genomic_relationship", "single_step_inverse", "DataError",
           "NotPositiveDefiniteError"]

_METHODS = ("vanraden1",)
_TUNES = (None, "diag-offdiag", "mean")

_PD_ADVICE = (
    "blend it with A22 or I, e.g. genomic_relationship(M, blend=0.05, A22=...), "
    "or tune it to A22 (tune='diag-offdiag' or 'mean' with A22); note that G "
    "centred with allele frequencies estimated from the same genotypes is "
    "always singular, and so is G with fewer markers than animals or with "
    "duplicated genotypes")


def _ids_or_none(obj):
    if isinstance(obj, pd.DataFrame):
        ids = normalize_ids(obj.index)
        if pd.isna(ids).any():
            raise DataError("genotype rows have missing ids")
        dup = pd.Index(ids).duplicated(keep=False)
        if dup.any():
            raise DataError(f"duplicated genotyped ids: {sorted(set(ids[dup]))[:5]}")
        return ids
    return None


def _as_square(A, name, ids=None):
    """A DataFrame/array as a dense square ndarray aligned to ``ids``."""
    if isinstance(A, pd.DataFrame):
        rows = normalize_ids(A.index)
        cols = normalize_ids(A.columns)
        if ids is not None:
            r = pd.Index(rows).get_indexer(ids)
            c = pd.Index(cols).get_indexer(ids)
            if (r < 0).any() or (c < 0).any():
                miss = sorted(set(np.asarray(ids, dtype=object)[(r < 0) | (c < 0)]))
                raise DataError(f"{name} has no row/column for id(s) {miss[:5]}")
            return np.asarray(A.to_numpy(dtype=np.float64)[np.ix_(r, c)])
        A = A.to_numpy(dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise DataError(f"{name} must be a square matrix, got shape {A.shape}")
    if ids is not None and A.shape[0] != len(ids):
        raise DataError(f"{name} is {A.shape[0]} x {A.shape[1]} but there are "
                        f"{len(ids)} genotyped animals")
    return A


def genomic_relationship(M, method: str = "vanraden1", allele_freq=None, blend: float = 0.0,
                         A22=None, tune=None):
    """Genomic relationship matrix G from marker genotypes.

    Parameters
    ----------
    M : (n, m) array-like or pandas.DataFrame
        Genotypes coded 0, 1, 2 (copies of the counted allele); rows are
        animals (a DataFrame's index gives their ids), columns markers. No
        missing values (impute first).
    method : {"vanraden1"}
        VanRaden (2008) method 1: Z = M - 2p, G = Z Z' / (2 sum_k p_k (1 - p_k)).
    allele_freq : (m,) array-like or pandas.Series, optional
        Frequencies p of the counted allele (e.g. in the base population); a
        Series is aligned to M's columns. Default: estimated from M.
    blend : float in [0, 1), optional
        Weight w of G <- (1 - w) G + w A22 (w I when A22 is not given);
        makes G positive definite.
    A22 : (n, n) array-like, pandas.DataFrame or Pedigree, optional
        Pedigree relationships of the genotyped animals, for blending and
        tuning. A DataFrame is aligned by ids; a Pedigree is used to compute
        them (M must then be a DataFrame whose index holds the ids).
    tune : {None, "diag-offdiag", "mean"}
        Put G on the scale of A22 before blending: "diag-offdiag" finds
        G <- a + b G with the averages of the diagonal and of the
        off-diagonal elements equal to those of A22 (Chen et al. 2011);
        "mean" adds the constant that makes the average of all elements equal
        to that of A22. Requires A22.

    Returns
    -------
    pandas.DataFrame or numpy.ndarray
        G (n x n): a DataFrame indexed by the normalised ids (rows and
        columns) when M is a DataFrame, else an ndarray.

    Raises
    ------
    DataError
        Genotypes outside 0..2 or missing, frequencies outside [0, 1],
        all markers monomorphic, inconsistent shapes or ids, unknown
        ``method``/``tune``, ``tune`` without A22.

    Notes
    -----
    Order of the adjustments: G is computed, tuned to A22, then blended.

    References
    ----------
    VanRaden, P. M. (2008). J. Dairy Sci. 91:4414-4423.
    Chen, C. Y. et al. (2011). J. Anim. Sci. 89:2673-2679.
    """
    if method not in _METHODS:
        raise DataError(f"unknown method {method!r}; supported: {_METHODS}")
    if tune not in _TUNES:
        raise DataError(f"unknown tune {tune!r}; supported: {_TUNES}")
    if not 0.0 <= float(blend) < 1.0:
        raise DataError(f"blend must be in [0, 1), got {blend}")
    ids = _ids_or_none(M)
    columns = M.columns if isinstance(M, pd.DataFrame) else None
    try:
        X = np.asarray(M.to_numpy(dtype=np.float64) if isinstance(M, pd.DataFrame) else M,
                       dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"genotypes must be coded 0/1/2 (copies of one allele) as numbers; "
                        f"could not read them as numbers: {exc}") from exc
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"M must be a non-empty 2-D (animals x markers) array, got {X.shape}")
    if not np.isfinite(X).all():
        r, c = np.argwhere(~np.isfinite(X))[0]
        raise DataError(f"missing genotype (animal row {r}, marker column {c}); impute first")
    if ((X < 0) | (X > 2)).any():
        r, c = np.argwhere((X < 0) | (X > 2))[0]
        raise DataError(f"genotype {X[r, c]} at animal row {r}, marker column {c} is "
                        "outside 0..2 (code genotypes as 0, 1, 2 copies of an allele)")
    n, m = X.shape
    if allele_freq is None:
        p = X.mean(axis=0) / 2.0
    else:
        if isinstance(allele_freq, pd.Series) and columns is not None:
            missing = columns.difference(allele_freq.index)
            if len(missing):
                raise DataError(f"allele_freq has no value for marker(s) {list(missing[:5])}")
            allele_freq = allele_freq.reindex(columns)
        p = np.asarray(allele_freq, dtype=np.float64).ravel()
        if p.shape != (m,):
            raise DataError(f"allele_freq must have one value per marker ({m}), got {p.shape}")
        if not np.all((p >= 0) & (p <= 1)):
            raise DataError("allele_freq must lie in [0, 1]")
    scale = 2.0 * np.sum(p * (1.0 - p))
    if not scale > 0:
        raise DataError("all markers are monomorphic (sum 2p(1-p) = 0); G is undefined")
    Z = X - 2.0 * p
    G = (Z @ Z.T) / scale

    need_a22 = tune is not None or (blend > 0 and A22 is not None)
    A = None
    if isinstance(A22, Pedigree):
        if ids is None:
            raise DataError("A22 given as a Pedigree needs M as a DataFrame indexed by id")
        A = A22.relationship_matrix(ids).to_numpy() if need_a22 else None
    elif A22 is not None:
        A = _as_square(A22, "A22", ids)
        if A.shape[0] != n:
            raise DataError(f"A22 is {A.shape[0]} x {A.shape[0]} but M has {n} rows")
    if tune is not None:
        if A is None:
            raise DataError(f"tune={tune!r} needs A22 (the pedigree relationships of the "
                            "genotyped animals, or the Pedigree)")
        G = _tune(G, A, tune)
    if blend > 0:
        w = float(blend)
        G = (1.0 - w) * G + (w * A if A is not None else w * np.eye(n))
    G = 0.5 * (G + G.T)
    if ids is not None:
        return pd.DataFrame(G, index=pd.Index(ids, name="id"), columns=pd.Index(ids, name="id"))
    return G


def _tune(G, A, tune):
    n = G.shape[0]
    if tune == "mean":
        return G + (A.mean() - G.mean())
    if n < 2:
        raise DataError("tune='diag-offdiag' needs at least 2 genotyped animals")
    off = ~np.eye(n, dtype=bool)
    dg, og = np.diag(G).mean(), G[off].mean()
    da, oa = np.diag(A).mean(), A[off].mean()
    if dg == og:
        raise DataError("tune='diag-offdiag': G has equal mean diagonal and off-diagonal")
    b = (da - oa) / (dg - og)
    a = da - b * dg
    return a + b * G


#: A pivot of the Cholesky factor below this fraction of the largest one
#: (squared) counts as a singular matrix.
_SINGULAR_RTOL = 1e-12


def _chol_inverse(M, what):
    """Inverse of a symmetric positive-definite dense matrix, by Cholesky."""
    try:
        c = sla.cho_factor(M, lower=True, check_finite=True)
        dg = np.diag(c[0]) ** 2
        if dg.min() <= _SINGULAR_RTOL * dg.max():  # numerically singular
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        ev = np.linalg.eigvalsh(M)
        raise NotPositiveDefiniteError(
            f"{what} ({M.shape[0]} x {M.shape[0]}) is not positive definite (smallest "
            f"eigenvalue {ev[0]:.3g}); " + _PD_ADVICE) from None
    inv = sla.cho_solve(c, np.eye(M.shape[0]), check_finite=False)
    return 0.5 * (inv + inv.T)


def single_step_inverse(ped: Pedigree, G, genotyped_ids=None, tau: float = 1.0,
                        omega: float = 1.0) -> sp.csc_matrix:
    """Inverse of the single-step relationship matrix H.

    H^-1 = A^-1 + [[0, 0], [0, tau G^-1 - omega A22^-1]] (Aguilar et al.
    2010; Christensen & Lund 2010), where the block is on the rows and
    columns of the genotyped animals and A22 is their block of A.

    Parameters
    ----------
    ped : Pedigree
        Must contain every genotyped animal.
    G : (g, g) pandas.DataFrame or array-like
        Genomic relationships (e.g. from :func:`genomic_relationship`, blended
        or tuned so that it is positive definite).
    genotyped_ids : array-like, optional
        Ids of G's rows/columns. Default: G's index (G a DataFrame); required
        for an array. With a DataFrame G, G is aligned to these ids.
    tau, omega : float
        Scaling of G^-1 and A22^-1 (1 and 1 give the usual H^-1).

    Returns
    -------
    scipy.sparse.csc_matrix
        n x n, in ``ped.ids`` order, symmetric with both triangles stored.

    Raises
    ------
    NotPositiveDefiniteError
        G is not positive definite (the message says how to blend or tune it).
    PedigreeError
        Genotyped ids are not in the pedigree (the message names them).
    DataError
        Shapes or ids are inconsistent.

    Notes
    -----
    A22 is computed without forming A: the pedigree is restricted to the
    genotyped animals and their ancestors and A e_i is evaluated by the
    recursions of Colleau (2002), O(#ancestors) per genotyped animal; A22^-1
    and G^-1 are dense (g x g), fine for up to several thousand genotyped.
    """
    if not isinstance(ped, Pedigree):
        raise DataError(f"single_step_inverse needs an mme.Pedigree as its first argument, "
                        f"got {type(ped).__name__} (build one with mme.Pedigree.from_frame)")
    if genotyped_ids is None:
        if not isinstance(G, pd.DataFrame):
            raise DataError("genotyped_ids is required when G is not a DataFrame")
        ids = _ids_or_none(G)
    else:
        ids = normalize_ids(genotyped_ids)
        if pd.isna(ids).any():
            raise DataError("genotyped_ids contains missing ids")
        dup = pd.Index(ids).duplicated(keep=False)
        if dup.any():
            raise DataError(f"duplicated genotyped ids: {sorted(set(ids[dup]))[:5]}")
    Gm = _as_square(G, "G", ids)
    if not np.all(np.isfinite(Gm)):
        raise DataError("G has non-finite values")
    pos = ped.index_of(ids)
    A22 = ped.relationship_matrix(ids).to_numpy()
    Ginv = _chol_inverse(0.5 * (Gm + Gm.T), "G")
    A22inv = _chol_inverse(A22, "A22")
    block = tau * Ginv - omega * A22inv
    g = len(pos)
    r = np.repeat(pos, g)
    c = np.tile(pos, g)
    n = ped.n
    H = ped.ainverse() + sp.csc_matrix((block.ravel(), (r, c)), shape=(n, n))
    H = sp.csc_matrix(H)
    H.sum_duplicates()
    H.sort_indices()
    return H
