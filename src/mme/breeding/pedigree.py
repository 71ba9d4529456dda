"""Pedigrees: validation, sorting, inbreeding, A^-1 and log|A|.

The numerator relationship matrix A of a pedigree is never formed; its inverse
is built directly by Henderson's (1976) rules with Quaas' (1976) correction for
inbreeding, from inbreeding coefficients computed by the algorithm of
Meuwissen & Luo (1992).

Identifiers
-----------
Ids are compared as *strings after normalisation*: integers are written in
decimal (``1``, ``np.int64(1)``, ``1.0`` and ``"1"`` are the same animal),
other floats by ``str``, strings are stripped of surrounding white space and
are otherwise significant (``"01"`` differs from ``"1"``, ``"A"`` from
``"a"``). ``Pedigree.ids`` holds the normalised strings.

References
----------
Henderson, C. R. (1976). A simple method for computing the inverse of a
numerator relationship matrix used in prediction of breeding values.
Biometrics 32:69-83.

Quaas, R. L. (1976). Computing the diagonal elements and inverse of a large
numerator relationship matrix. Biometrics 32:949-953.

Meuwissen, T. H. E. & Luo, Z. (1992). Computing inbreeding coefficients in
large populations. Genetics Selection Evolution 24:305-313.

Colleau, J.-J. (2002). An indirect approach to the extensive calculation of
relationship coefficients. Genetics Selection Evolution 34:409-421.
"""
from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _core

from .._errors import OptionError, PedigreeError
from ..model.ids import id_keys, int_strings, normalize_ids


__all__ = ["Pedigree", "PedigreeError", "normalize_ids"]

#: Default tokens for an unknown parent (``None`` / NaN are always missing).
DEFAULT_MISSING = ("", "0", "NA", None)

_SHOW = 5  # how many ids an error or warning message names


def _show(ids, k=_SHOW) -> str:
    ids = list(ids)
    head = ", ".join(repr(str(x)) for x in ids[:k])
    return head + (f", ... ({len(ids)} in all)" if len(ids) > k else "")


def _pederror(msg, ids=()):
    err = PedigreeError(msg)
    err.ids = [str(x) for x in ids]
    return err


class Pedigree:
    """A validated pedigree, parents numbered before offspring.

    Build one with :meth:`from_frame`, :meth:`from_csv` or the constructor
    ``Pedigree(id, sire, dam)``. The constructor validates the pedigree and
    raises :class:`PedigreeError` naming the offending ids when

    * an id is missing, or duplicated with different parents (rows that are
      exact duplicates are dropped with a warning);
    * an animal is its own parent;
    * an id is used both as a sire and as a dam;
    * an animal is its own ancestor (the message shows the cycle).

    Parents without a row of their own are added as founders (listed in
    :attr:`added_founders`, with a warning). If the rows already list parents
    before offspring (after the added founders, which come first) their order
    is kept; otherwise animals are sorted by generation number (0 for
    founders, 1 + the larger generation of the parents), keeping the input
    order within a generation. The sort is O(n) (Kahn's algorithm).

    Ids are compared as strings after normalisation; see :func:`normalize_ids`
    (``1``, ``1.0`` and ``"1"`` are the same animal).

    Parameters
    ----------
    id, sire, dam : array-like of the same length
        Animal ids and the ids of their parents.
    missing : iterable
        Tokens meaning "unknown parent", compared with the normalised
        strings. None and NaN always mean unknown.

    Attributes
    ----------
    ids : pandas.Index
        Normalised ids in internal order (parents before offspring).
    sire, dam : numpy.ndarray of int64
        Internal indices of the parents, -1 when unknown (read-only).
    n : int
        Number of animals.
    added_founders : pandas.Index
        Ids that appeared only as parents and were added as founders.

    Notes
    -----
    Inbreeding coefficients are computed by Meuwissen & Luo (1992), A^-1 by
    Henderson's (1976) rules with Quaas' (1976) correction:
    A = T D T' with D = diag(d_i), d_i = 1/2 - (F_s + F_d)/4 (3/4 - F_p/4
    with one known parent, 1 for founders), and A^-1 = T'^-1 D^-1 T^-1.

    References
    ----------
    Meuwissen, T. H. E. & Luo, Z. (1992). Genet. Sel. Evol. 24:305-313.
    Quaas, R. L. (1976). Biometrics 32:949-953.
    Henderson, C. R. (1976). Biometrics 32:69-83.
    """

    __slots__ = ("_ids", "_sire", "_dam", "_added", "_F", "_d", "_logdet", "_ainv", "_missing")

    def __init__(self, id, sire, dam, *, missing: Iterable = DEFAULT_MISSING):
        keys = _read_keys(id, sire, dam, missing)
        _check_no_missing_id(keys)
        _drop_duplicate_rows(keys)
        all_ids, sire_c, dam_c, added = _add_missing_founders(keys)
        gen, acyclic = _generations(sire_c, dam_c)
        _check_structure(all_ids, sire_c, dam_c, gen, acyclic, keys.label)
        order = _parents_first_order(sire_c, dam_c, gen)
        if order is not None:
            all_ids, sire_c, dam_c = _renumber(order, all_ids, sire_c, dam_c)
        self._init(pd.Index(keys.label(all_ids), dtype=object, name="id"), sire_c, dam_c,
                   pd.Index(keys.label(added), dtype=object, name="id"))
        self._missing = tuple(t for t in (missing or ()) if t is not None
                              and not (isinstance(t, float) and np.isnan(t)))

    @property
    def missing_tokens(self) -> tuple:
        """The codes that meant "unknown parent" when the pedigree was read (a data
        column of a relmat term, e.g. the dams of a maternal model, uses the same)."""
        return getattr(self, "_missing", DEFAULT_MISSING)

    def _init(self, ids, sire, dam, added):
        sire = np.ascontiguousarray(sire, dtype=np.int64)
        dam = np.ascontiguousarray(dam, dtype=np.int64)
        sire.flags.writeable = False
        dam.flags.writeable = False
        self._ids = ids
        self._sire = sire
        self._dam = dam
        self._added = added
        self._F = None
        self._d = None
        self._logdet = None
        self._ainv = None

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_frame(cls, df: pd.DataFrame, id: str = "id", sire: str = "sire",
                   dam: str = "dam", missing: Iterable = DEFAULT_MISSING) -> "Pedigree":
        """Pedigree from a DataFrame with id, sire and dam columns.

        Parameters
        ----------
        df : pandas.DataFrame
        id, sire, dam : str
            Column names.
        missing : iterable
            Tokens meaning "unknown parent" (None/NaN always do).

        Returns
        -------
        Pedigree

        Raises
        ------
        PedigreeError
            A column is absent, or the pedigree is invalid (see
            :class:`Pedigree`).
        """
        absent = [c for c in (id, sire, dam) if c not in df.columns]
        if absent:
            raise _pederror(f"pedigree column(s) {absent} not found; columns are "
                            f"{list(df.columns)}")
        return cls(df[id], df[sire], df[dam], missing=missing)

    @classmethod
    def from_csv(cls, path, id: str = "id", sire: str = "sire", dam: str = "dam",
                 missing: Iterable = DEFAULT_MISSING, **read_csv_kw) -> "Pedigree":
        """Pedigree from a delimited text file (read with :func:`pandas.read_csv`).

        All columns are read as strings (no NA conversion by pandas), so ids
        such as ``007`` keep their leading zeros and only ``missing`` decides
        what an unknown parent is. Extra keywords go to ``pandas.read_csv``.
        """
        kw = {"dtype": str, "keep_default_na": False, "na_filter": False}
        kw.update(read_csv_kw)
        df = pd.read_csv(path, **kw)
        return cls.from_frame(df, id=id, sire=sire, dam=dam, missing=missing)

    @classmethod
    def from_parents(cls, sire, dam) -> "Pedigree":
        """Pedigree of animals numbered 0 … n−1, given the positions of their parents.

        For pedigrees already coded as integers with parents before offspring (a
        national evaluation's renumbered pedigree, a simulation): ``sire[i]`` and
        ``dam[i]`` are the positions of animal i's parents, −1 when unknown. Nothing
        is sorted or renamed and no id strings are made until :attr:`ids` is asked
        for (then ``"0"`` … ``"n-1"``): at 10⁷ animals this saves the ~0.6 GB of
        strings and the hashing of the constructor. A relmat of integer-coded data
        takes it as ``(pd.RangeIndex(n), ped)`` (``mme.distributed``).

        Parameters
        ----------
        sire, dam : array-like of int, length n
            Parent positions in [0, i) for animal i, or −1.

        Raises
        ------
        PedigreeError
            The lengths differ, a value is not an integer, a parent is not numbered
            before its offspring (or is out of range), or an animal is used both as
            a sire and as a dam; the message names the animals.
        """
        arrs = []
        for name, v in (("sire", sire), ("dam", dam)):
            a = np.asarray(v)
            if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
                raise _pederror(f"{name} must be a 1-d array of integer positions "
                                f"(−1 unknown), got dtype {a.dtype} and shape {a.shape}")
            arrs.append(np.ascontiguousarray(a, dtype=np.int64))
        s, d = arrs
        if s.shape != d.shape:
            raise _pederror(f"sire and dam must have the same length ({s.size}, {d.size})")
        ar = np.arange(s.size, dtype=np.int64)
        bad = np.flatnonzero((s >= ar) | (d >= ar) | (s < -1) | (d < -1))
        if bad.size:
            i = int(bad[0])
            raise _pederror(f"{bad.size} animal(s) have a parent that is not numbered before "
                            f"them (or is out of range), e.g. animal {i} with sire {s[i]} and "
                            f"dam {d[i]}: from_parents needs parents before offspring, −1 "
                            "for unknown", int_strings(bad[:_SHOW]))
        problem = _sire_and_dam_problem(ar, s, d, int_strings)
        if problem is not None:
            raise _pederror("invalid pedigree: " + problem[0], problem[1])
        ped = cls.__new__(cls)
        ped._init(None, s, d, pd.Index([], dtype=object, name="id"))
        ped._missing = ("-1",)
        return ped

    # ------------------------------------------------------------------ basics
    @property
    def ids(self) -> pd.Index:
        """Normalised ids in internal order (parents before offspring).

        For a pedigree made by :meth:`from_parents` they are the positions as
        strings, ``"0"`` … ``"n-1"``, made when first asked for.
        """
        if self._ids is None:
            self._ids = pd.Index(int_strings(np.arange(self.n, dtype=np.int64)),
                                 dtype=object, name="id")
        return self._ids

    @property
    def sire(self) -> np.ndarray:
        """Internal index of each animal's sire, -1 when unknown (read-only)."""
        return self._sire

    @property
    def dam(self) -> np.ndarray:
        """Internal index of each animal's dam, -1 when unknown (read-only)."""
        return self._dam

    @property
    def n(self) -> int:
        """Number of animals (including added founders)."""
        return len(self._sire)

    def __len__(self) -> int:
        return self.n

    @property
    def added_founders(self) -> pd.Index:
        """Ids that appeared only as parents and were added as founders."""
        return self._added

    @property
    def n_founders(self) -> int:
        """Animals with both parents unknown."""
        return int(np.count_nonzero((self._sire < 0) & (self._dam < 0)))

    def index_of(self, ids):
        """Internal indices of ``ids`` (normalised as the pedigree's ids).

        Parameters
        ----------
        ids : scalar or array-like

        Returns
        -------
        int or numpy.ndarray of int64

        Raises
        ------
        PedigreeError
            Some ids are not in the pedigree; the message names them.
        """
        scalar = np.ndim(ids) == 0 and not isinstance(ids, (pd.Index, pd.Series, np.ndarray))
        keys = normalize_ids([ids] if scalar else ids)
        pos = self.ids.get_indexer(keys)
        if (pos < 0).any():
            bad = pd.unique(np.asarray(keys, dtype=object)[pos < 0])
            raise _pederror(f"{len(bad)} id(s) are not in the pedigree: {_show(bad)}", bad)
        pos = pos.astype(np.int64)
        return int(pos[0]) if scalar else pos

    def to_frame(self) -> pd.DataFrame:
        """id, sire, dam as normalised strings (a missing value when unknown), internal order."""
        ids = self.ids.to_numpy(object)
        s = np.where(self._sire >= 0, ids[np.maximum(self._sire, 0)], None)
        d = np.where(self._dam >= 0, ids[np.maximum(self._dam, 0)], None)
        return pd.DataFrame({"id": ids, "sire": s, "dam": d})

    # ---------------------------------------------------------- relationships
    def _inbreeding_array(self) -> np.ndarray:
        if self._F is None:
            F = np.empty(self.n, dtype=np.float64)
            _core.inbreeding(self._sire, self._dam, F)
            F.flags.writeable = False
            self._F = F
        return self._F

    def _mendelian(self) -> np.ndarray:
        if self._d is None:
            d = np.empty(self.n, dtype=np.float64)
            self._logdet = float(_core.mendelian_variances(self._sire, self._dam,
                                                           self._inbreeding_array(), d))
            d.flags.writeable = False
            self._d = d
        return self._d

    @property
    def inbreeding(self) -> pd.Series:
        """Inbreeding coefficients F, indexed by id (cached).

        Computed by the algorithm of Meuwissen & Luo (1992), Genet. Sel. Evol.
        24:305-313: for each animal its ancestors are traced, each after all
        of its descendants among them (bucketed by generation number, which
        serves as ML92's decreasing order at O(1) per ancestor), accumulating
        the row of T in A = T D T'; 1 + F_i = sum_j T_ij^2 d_j.
        """
        return pd.Series(self._inbreeding_array().copy(), index=self.ids, name="F")

    @property
    def mendelian_variances(self) -> pd.Series:
        """d_i = Var(Mendelian sampling) / sigma_a^2, the diagonal of D in A = T D T'."""
        return pd.Series(self._mendelian().copy(), index=self.ids, name="d")

    def ainverse_row_nnz(self) -> np.ndarray:
        """An upper bound on the nonzeros of each row of A⁻¹, without building it.

        The entries Henderson's rules write to each row before duplicates are
        summed: 1 + (known parents) for the animal, 2 + (1 if the other parent is
        known) per offspring. O(n); what ranks use to cut A⁻¹ into row blocks of
        about equal work before any of it is built.

        Returns
        -------
        numpy.ndarray of int64, length n
        """
        counts = np.empty(self.n, dtype=np.int64)
        _core.ainverse_row_counts(self._sire, self._dam, 0, self.n, counts)
        return counts

    def ainverse_rows(self, lo: int, hi: int) -> sp.csr_matrix:
        """Rows ``lo`` … ``hi − 1`` of A⁻¹, without building the other rows.

        Animal i contributes to rows i, sire and dam only (Henderson's rules with
        Quaas' correction, as :meth:`ainverse`), so all animals from ``lo`` on are
        scanned and only what lands in the range is kept: memory is that of the
        rows, time O(n − lo) plus the sort of the rows' entries. Equal to
        ``ainverse()[lo:hi]`` exactly (the same kernel builds both; a row's
        duplicates are summed in the order of the animals whatever the range).

        Parameters
        ----------
        lo, hi : int
            0 ≤ lo ≤ hi ≤ n; an empty range gives a 0 × n matrix.

        Returns
        -------
        scipy.sparse.csr_matrix
            (hi − lo) × n, sorted indices, no duplicates.

        Raises
        ------
        OptionError
            ``lo``/``hi`` are not integers with 0 ≤ lo ≤ hi ≤ n.
        """
        n = self.n
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, hi))
        if not ok or not 0 <= lo <= hi <= n:
            raise OptionError(f"ainverse_rows: need integers 0 <= lo <= hi <= n = {n}, got "
                              f"lo={lo!r}, hi={hi!r}")
        lo, hi = int(lo), int(hi)
        counts = np.empty(hi - lo, dtype=np.int64)
        _core.ainverse_row_counts(self._sire, self._dam, lo, hi, counts)
        indptr = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        del counts
        room = int(indptr[-1])
        itype = np.int32 if max(n, room) < np.iinfo(np.int32).max else np.int64
        indices = np.empty(room, dtype=itype)
        vals = np.empty(room, dtype=np.float64)
        nnz = _core.ainverse_rows(self._sire, self._dam, self._mendelian(), lo, hi, indptr,
                                  indices, vals)
        indices.resize(nnz, refcheck=False)      # shrink in place (no second copy)
        vals.resize(nnz, refcheck=False)
        A = sp.csr_matrix((vals, indices, indptr.astype(itype, copy=False)),
                          shape=(hi - lo, n))
        A.has_sorted_indices = True
        return A

    def ainverse_diagonal(self) -> np.ndarray:
        """diag(A⁻¹) without building A⁻¹: b_i + Σ over offspring c of b_c/4, b = 1/d.

        Equal to ``ainverse().diagonal()`` exactly (the same sums in the same order).
        """
        out = np.empty(self.n, dtype=np.float64)
        _core.ainverse_diagonal(self._sire, self._dam, self._mendelian(), out)
        return out

    def ainverse(self) -> sp.csc_matrix:
        """Inverse of the numerator relationship matrix, sparse, in ``ids`` order.

        Built by Henderson's (1976) rules with Quaas' (1976) correction for
        inbreeding: with b_i = 1/d_i, animal i contributes b_i to (i, i),
        -b_i/2 to (i, p) and (p, i) for each known parent p, and b_i/4 to
        (p, q) for each pair of known parents (p = q included).

        Returns
        -------
        scipy.sparse.csc_matrix
            n x n, symmetric, both triangles stored, sorted indices, no
            duplicates. A copy of a cached matrix.

        References
        ----------
        Henderson, C. R. (1976). Biometrics 32:69-83.
        Quaas, R. L. (1976). Biometrics 32:949-953.
        """
        if self._ainv is None:
            # all the rows; A⁻¹ is symmetric, so its CSR arrays are its CSC arrays
            R = self.ainverse_rows(0, self.n)
            A = sp.csc_matrix((R.data, R.indices, R.indptr), shape=R.shape)
            A.has_sorted_indices = True
            self._ainv = A
        return self._ainv.copy()

    def logdet_a(self) -> float:
        """log|A| = sum_i log d_i (A = T D T', T unit lower triangular)."""
        self._mendelian()
        return self._logdet

    def relationship_matrix(self, ids=None) -> pd.DataFrame:
        """Dense numerator relationships among ``ids`` (all animals if None).

        Computed without forming A for the whole pedigree: the pedigree is
        restricted to ``ids`` and their ancestors, and A X is evaluated for
        unit vectors X by the recursions of Colleau (2002),
        A = T D T' with T^-1 = I - P (O(#ancestors) per column).

        Returns
        -------
        pandas.DataFrame
            Rows and columns labelled by the (normalised) ids, in the order
            given.
        """
        if ids is None:
            sel = np.arange(self.n, dtype=np.int64)
        else:
            sel = np.atleast_1d(self.index_of(ids))
        A = _relationship_block(self._sire, self._dam, self._mendelian(), sel)
        labels = self.ids[sel]
        return pd.DataFrame(A, index=labels, columns=labels)

    def __repr__(self) -> str:
        n = self.n
        base = f"Pedigree(n={n:,} animals, {self.n_founders:,} founders"
        if self._F is not None or n <= 200_000:
            F = self._inbreeding_array()
            inbred = int(np.count_nonzero(F > 0))
            fmax = float(F.max()) if n else 0.0
            return base + f", {inbred:,} inbred, max F={fmax:.4f})"
        return base + ", inbreeding not computed yet)"


# ------------------------------------------------------- Pedigree.__init__ steps --
class _Keys:
    """The three id columns as int64 keys, with missing masks and the key -> id labels."""

    __slots__ = ("ids", "sire", "dam", "id_miss", "sire_miss", "dam_miss", "uniq", "index")

    def __init__(self, ids, sire, dam, id_miss, sire_miss, dam_miss, uniq):
        self.ids, self.sire, self.dam = ids, sire, dam
        self.id_miss, self.sire_miss, self.dam_miss = id_miss, sire_miss, dam_miss
        self.uniq = uniq      # None: the keys are the integer ids themselves
        self.index = None     # pd.Index of ids, set by _drop_duplicate_rows

    def label(self, keys) -> np.ndarray:
        """Normalised id strings of ``keys``."""
        keys = np.asarray(keys, dtype=np.int64)
        return int_strings(keys) if self.uniq is None else self.uniq[keys]


def _read_keys(id, sire, dam, missing) -> _Keys:
    """Read the three columns into int64 keys and missing masks (equal lengths checked)."""
    cols = [id_keys(v, missing) for v in (id, sire, dam)]
    n0 = len(cols[0][0])
    if len(cols[1][0]) != n0 or len(cols[2][0]) != n0:
        raise _pederror(f"id, sire and dam must have the same length "
                        f"({n0}, {len(cols[1][0])}, {len(cols[2][0])})")
    if all(kind == "int" for _, _, kind in cols):
        # integer ids: int64 keys; the ids are their decimal strings
        (ids_s, id_miss, _), (sire_s, sire_miss, _), (dam_s, dam_miss, _) = cols
        return _Keys(ids_s, sire_s, dam_s, id_miss, sire_miss, dam_miss, None)
    # string ids: one hash pass over the three columns, then int codes
    strs = [int_strings(k) if kind == "int" else k for k, _, kind in cols]
    codes, uniq = pd.factorize(np.concatenate(strs), use_na_sentinel=True)
    uniq = np.asarray(uniq, dtype=object)
    tokens = [str(t).strip() for t in (missing or ()) if t is not None
              and not (isinstance(t, float) and np.isnan(t))]
    tok = pd.Index(uniq).get_indexer(tokens) if tokens else np.empty(0, np.int64)
    tok = tok[tok >= 0]
    codes = codes.astype(np.int64)
    miss_all = (codes < 0) | np.isin(codes, tok)
    return _Keys(codes[:n0], codes[n0:2 * n0], codes[2 * n0:],
                 miss_all[:n0] | cols[0][1], miss_all[n0:2 * n0] | cols[1][1],
                 miss_all[2 * n0:] | cols[2][1], uniq)


def _check_no_missing_id(k: _Keys) -> None:
    """Raise if a row has a missing animal id."""
    if k.id_miss.any():
        rows = np.flatnonzero(k.id_miss)
        raise _pederror(f"{len(rows)} row(s) have a missing animal id (rows "
                        f"{', '.join(map(str, rows[:_SHOW]))}"
                        f"{', ...' if len(rows) > _SHOW else ''})")


def _drop_duplicate_rows(k: _Keys) -> None:
    """Find duplicated ids: drop exact duplicate rows (warning), raise if parents differ."""
    idx = pd.Index(k.ids)
    if not idx.is_unique:
        frame = pd.DataFrame({"id": k.ids, "sire": k.sire, "dam": k.dam,
                              "sm": k.sire_miss, "dm": k.dam_miss})
        frame.loc[k.sire_miss, "sire"] = k.ids[0]  # placeholders, told apart by sm/dm
        frame.loc[k.dam_miss, "dam"] = k.ids[0]
        exact = frame.duplicated(keep="first").to_numpy()
        if exact.any():
            dropped = k.label(pd.unique(k.ids[exact]))
            # stacklevel 4: the caller of Pedigree(...) sees the warning as before
            warnings.warn(f"dropped {int(exact.sum())} exact duplicate pedigree row(s) "
                          f"of id(s) {_show(dropped)}", UserWarning, stacklevel=4)
            keep = ~exact
            k.ids, k.sire, k.dam = k.ids[keep], k.sire[keep], k.dam[keep]
            k.sire_miss, k.dam_miss = k.sire_miss[keep], k.dam_miss[keep]
            idx = pd.Index(k.ids)
        if not idx.is_unique:
            bad = k.label(pd.unique(k.ids[idx.duplicated(keep=False)]))
            raise _pederror(f"{len(bad)} id(s) appear in several rows with different "
                            f"parents: {_show(bad)}", bad)
    k.index = idx


def _add_missing_founders(k: _Keys) -> tuple:
    """Add parents without a row of their own as founders (first, warning); code parents.

    Returns (all ids as keys, sire index, dam index, added keys); indices are
    positions in all ids, -1 when unknown.
    """
    idx = k.index
    s_code = idx.get_indexer(k.sire)
    d_code = idx.get_indexer(k.dam)
    s_new = (s_code < 0) & ~k.sire_miss
    d_new = (d_code < 0) & ~k.dam_miss
    added = k.ids[:0]
    all_ids = k.ids
    if s_new.any() or d_new.any():
        both = np.concatenate([k.sire[s_new], k.dam[d_new]])
        pos = np.concatenate([np.flatnonzero(s_new), np.flatnonzero(d_new)])
        added = pd.unique(both[np.argsort(pos, kind="stable")])
        warnings.warn(f"{len(added)} parent(s) without a pedigree row of their own were "
                      f"added as founders: {_show(k.label(added))}", UserWarning, stacklevel=4)
        all_ids = np.concatenate([added, k.ids])
        idx = pd.Index(all_ids)
        s_code = idx.get_indexer(k.sire)
        d_code = idx.get_indexer(k.dam)
    s_code[k.sire_miss] = -1
    d_code[k.dam_miss] = -1
    n_add = len(added)
    n = n_add + len(k.ids)
    sire_c = np.full(n, -1, dtype=np.int64)
    dam_c = np.full(n, -1, dtype=np.int64)
    sire_c[n_add:] = s_code
    dam_c[n_add:] = d_code
    return all_ids, sire_c, dam_c, added


def _generations(sire_c, dam_c) -> tuple:
    """Generation numbers by Kahn's algorithm (-1 on or below a cycle), and whether all got one."""
    n = len(sire_c)
    gen = np.empty(n, dtype=np.int64)
    n_sorted = _core.topological_generations(sire_c, dam_c, gen)
    return gen, n_sorted == n


def _check_structure(all_ids, sire_c, dam_c, gen, acyclic, label) -> None:
    """Raise one PedigreeError listing self-parenting, ids used as sire and dam, and cycles."""
    own = _own_parents(sire_c, dam_c)
    problems = [_self_parenting_problem(all_ids, own, label),
                _sire_and_dam_problem(all_ids, sire_c, dam_c, label),
                None if acyclic else _cycle_problem(all_ids, sire_c, dam_c, gen, own, label)]
    problems = [p for p in problems if p is not None]
    if problems:
        bad_ids = [b for _, bad in problems for b in bad]
        raise _pederror("invalid pedigree: " + "; ".join(m for m, _ in problems), pd.unique(
            np.asarray(bad_ids, dtype=object)))


def _own_parents(sire_c, dam_c) -> np.ndarray:
    """Mask of the animals that are their own sire or dam."""
    ar = np.arange(len(sire_c), dtype=np.int64)
    return (sire_c == ar) | (dam_c == ar)


def _self_parenting_problem(all_ids, own, label):
    """(message, ids) for animals that are their own parent, or None."""
    if not own.any():
        return None
    b = label(all_ids[own])
    return f"{len(b)} animal(s) are their own parent: {_show(b)}", list(b)


def _sire_and_dam_problem(all_ids, sire_c, dam_c, label):
    """(message, ids) for ids used both as a sire and as a dam, or None."""
    n = len(sire_c)
    is_sire = np.zeros(n, dtype=bool)
    is_sire[sire_c[sire_c >= 0]] = True
    is_dam = np.zeros(n, dtype=bool)
    is_dam[dam_c[dam_c >= 0]] = True
    sd = np.flatnonzero(is_sire & is_dam)
    if not len(sd):
        return None
    b = label(all_ids[sd])
    return f"{len(b)} id(s) are used both as a sire and as a dam: {_show(b)}", list(b)


def _cycle_problem(all_ids, sire_c, dam_c, gen, own, label):
    """(message, ids) for animals that are their own ancestors (self-parents aside), or None."""
    cycles = _find_cycles(sire_c, dam_c, gen < 0)
    own_set = set(np.flatnonzero(own).tolist())
    cycles = [c for c in cycles if not (len(c) == 2 and c[0] in own_set)]
    if not cycles:
        return None
    shown = "; ".join(" -> ".join(repr(str(x)) for x in label(all_ids[c]))
                      for c in cycles[:3])
    msg = (f"{len(cycles)}{'+' if len(cycles) >= 10 else ''} cycle(s): animal(s) "
           f"{_show(label(all_ids[[c[0] for c in cycles]]))} are their own ancestors "
           f"(each id is a parent of the next): {shown}")
    return msg, list(label(all_ids[[v for c in cycles for v in c[:-1]]]))


def _parents_first_order(sire_c, dam_c, gen):
    """None if parents already precede offspring, else a stable sort by generation."""
    ar = np.arange(len(sire_c), dtype=np.int64)
    if np.all(sire_c < ar) and np.all(dam_c < ar):
        return None
    return np.argsort(gen, kind="stable")


def _renumber(order, all_ids, sire_c, dam_c) -> tuple:
    """Put the animals in ``order`` and renumber the parent indices to match."""
    n = len(order)
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n, dtype=np.int64)
    s_o = sire_c[order]
    d_o = dam_c[order]
    sire_c = np.where(s_o >= 0, inv[np.maximum(s_o, 0)], -1)
    dam_c = np.where(d_o >= 0, inv[np.maximum(d_o, 0)], -1)
    return all_ids[order], sire_c, dam_c


def _relationship_block(sire, dam, dvar, sel, block: int = 256) -> np.ndarray:
    """A[sel, sel] (dense) via the pedigree of sel and its ancestors."""
    n = len(sire)
    mask = np.zeros(n, dtype=np.uint8)
    mask[sel] = 1
    _core.mark_ancestors(sire, dam, mask)
    keep = np.flatnonzero(mask)
    new = np.full(n, -1, dtype=np.int64)
    new[keep] = np.arange(len(keep), dtype=np.int64)
    s = sire[keep]
    d = dam[keep]
    s = np.where(s >= 0, new[np.maximum(s, 0)], -1)
    d = np.where(d >= 0, new[np.maximum(d, 0)], -1)
    dv = np.ascontiguousarray(dvar[keep])
    m = len(keep)
    rows = new[sel]
    g = len(sel)
    out = np.empty((g, g), dtype=np.float64)
    for c0 in range(0, g, block):
        c1 = min(g, c0 + block)
        X = np.zeros((m, c1 - c0), dtype=np.float64)
        X[rows[c0:c1], np.arange(c1 - c0)] = 1.0
        Y = np.empty_like(X)
        _core.a_multiply(s, d, dv, X, Y)
        out[:, c0:c1] = Y[rows]
    return out


def _find_cycles(sire, dam, remaining, limit: int = 10) -> list[list[int]]:
    """Cycles among the animals Kahn's algorithm could not order.

    Every such animal has a parent that is also unordered, so walking from
    it to such a parent must reach a cycle. Each cycle is returned in
    parent -> offspring order, closed (first == last). O(#remaining).
    """
    state = np.zeros(len(sire), dtype=np.int8)  # 0 new, 1 on current walk, 2 done
    cycles: list[list[int]] = []
    for start in np.flatnonzero(remaining):
        if state[start]:
            continue
        walk = []
        v = int(start)
        while state[v] == 0:
            state[v] = 1
            walk.append(v)
            s, d = int(sire[v]), int(dam[v])
            v = s if s >= 0 and remaining[s] else d
        if state[v] == 1:  # closed a new cycle
            cyc = walk[walk.index(v):]
            # the walk goes offspring -> parent; report parent -> offspring
            cyc = [v] + cyc[::-1]
            cycles.append(cyc)
        for w in walk:
            state[w] = 2
        if len(cycles) >= limit:
            break
    return cycles
