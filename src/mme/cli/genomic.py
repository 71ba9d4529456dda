"""The ``[genomic]`` section of a run (``--genomic FILE``): genotypes → G → H⁻¹ or G⁻¹.

A genotype file has one row per animal: its id, then its genotypes coded 0, 1, 2
(copies of the counted allele). Two layouts, told apart by the first line:

* BLUPF90's: ``id 0120112...`` — the genotypes as one string of digits, one per
  marker, the same number of digits on every row (the id may be padded with blanks so
  the strings start in the same column); 5 is a missing genotype;
* a table: comma-, tab-, semicolon- or whitespace-separated, ``id m1 m2 ...`` with a
  header line naming the markers, or without one (a first line whose genotype fields
  are all numbers or missing codes is a genotype row; markers are then named by their
  position). Missing: 5, NA, an empty field or ``.``.

A missing genotype is refused (impute first), as is a code other than 0, 1, 2, rows of
different length and a duplicated id; each message names the file, the animal, its line
and the marker.

The relationship matrix for the term (``term``) is then

* ``model = "single-step"``: H⁻¹ = A⁻¹ + [[0, 0], [0, τG⁻¹ − ωA₂₂⁻¹]] from the pedigree
  and G (:func:`mme.single_step_inverse`; Aguilar et al. 2010, Christensen & Lund 2010);
  every genotyped animal must be in the pedigree;
* ``model = "gblup"``: G itself (its inverse by dense Cholesky); every animal with a
  record must be genotyped, and no pedigree is needed,

with G by VanRaden's (2008) method 1 (:func:`mme.genomic_relationship`: allele
frequencies from the genotypes, tuned to A₂₂ when ``tune`` is set, then blended:
G ← (1 − w) G + w A₂₂, or w I without a pedigree). Both are handed to the fit as a
``(levels, K⁻¹)`` pair, as a Python user would (``mme.fit(..., relmat={term: pair})``).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..breeding.genomic import _chol_inverse, genomic_relationship, single_step_inverse
from ..model.ids import normalize_ids
from .errors import InputError
from .io import _check_file, resolve_sep

#: genotype models of ``[genomic] model`` / ``--genomic-model``
MODELS = ("single-step", "gblup")
#: ``tune`` values (None: G is not tuned)
TUNES = ("diag-offdiag", "mean")
#: BLUPF90's code of a missing genotype
MISSING_CODE = 5
#: tokens meaning a missing genotype in a table
MISSING_TOKENS = ("5", "NA", "", ".", "nan", "NaN")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class GenomicConfig:
    """The ``[genomic]`` settings (parameter file or ``mme fit`` options)."""

    file: str
    sep: str = "auto"
    term: str | None = None         # default: the single relmat term
    model: str = "single-step"
    blend: float = 0.05             # BLUPF90's default weight of A22 (I without a pedigree)
    tune: str | None = None
    tau: float = 1.0
    omega: float = 1.0


@dataclass
class Genotypes:
    """Genotypes read from a file: ``M`` (animals × markers, int8 0/1/2) and names."""

    ids: np.ndarray                 # normalised ids (object array), file order
    M: np.ndarray
    markers: list
    layout: str

    def frame(self) -> pd.DataFrame:
        """M as a float DataFrame indexed by id (what :func:`mme.genomic_relationship` takes)."""
        return pd.DataFrame(self.M.astype(np.float64), index=pd.Index(self.ids, name="id"),
                            columns=self.markers)


# -- reading ----------------------------------------------------------------------------
def _lines(path: Path):
    """(line number, text) of the non-empty lines."""
    try:
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                text = line.rstrip("\n\r")
                if text.strip():
                    yield i, text
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})"
                         ) from None


def _split(text: str, sep: str) -> list:
    if sep == r"\s+":
        return text.split()
    return [t.strip().strip('"') for t in text.split(sep)]


def _is_digit_string(fields: list) -> bool:
    return len(fields) == 2 and len(fields[1]) > 1 and fields[1].isdigit() and \
        fields[1].isascii()


def _missing(path, animal, line, marker) -> InputError:
    return InputError(f"{path}: missing genotype of animal {animal!r} (line {line}) at "
                      f"marker {marker}: impute the genotypes first (mme takes complete "
                      "0/1/2 genotypes)")


def _bad_code(path, animal, line, marker, value) -> InputError:
    return InputError(f"{path}: genotype {value!r} of animal {animal!r} (line {line}) at "
                      f"marker {marker} is not 0, 1 or 2 (copies of the counted allele)")


def _length(path, animal, line, got, want, first) -> InputError:
    return InputError(f"{path}: rows of different length: animal {animal!r} (line {line}) "
                      f"has {got} genotypes, {first!r} (the first row) has {want}")


def read_genotypes(path, sep: str = "auto") -> Genotypes:
    """Read a genotype file (BLUPF90's digit strings or a table; see the module)."""
    path = _check_file(path, "genotype")
    s = resolve_sep(path, sep)
    if s == "parquet":
        raise InputError(f"{path}: genotype files are text (BLUPF90's 'id 0120112...' or a "
                         "table id m1 m2 ...), not Parquet")
    rows = _lines(path)
    first = next(rows, None)
    if first is None:
        raise InputError(f"{path}: the genotype file is empty")
    fields = _split(first[1], s)
    if _is_digit_string(fields):
        ids, M = _read_digit_strings(path, s, first, rows)
        markers = [str(j + 1) for j in range(M.shape[1])]
        layout = "BLUPF90 layout"
    else:
        ids, M, markers = _read_table(path, s, first, fields, rows)
        layout = "table layout"
    ids = normalize_ids(pd.Series(ids, dtype=object))
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise InputError(f"{path}: animal(s) {', '.join(map(repr, list(dup[:5])))} have more "
                         "than one row of genotypes")
    if M.shape[1] == 0:
        raise InputError(f"{path}: no genotypes after the ids")
    return Genotypes(ids=np.asarray(ids, dtype=object), M=M, markers=markers, layout=layout)


def _read_digit_strings(path, s, first, rows):
    ids, strings = [], []
    want, first_id = len(_split(first[1], s)[1]), _split(first[1], s)[0]
    for line, text in [first, *rows]:
        f = _split(text, s)
        if len(f) != 2 or not (f[1].isdigit() and f[1].isascii()):
            raise InputError(f"{path}: line {line} is not 'id genotypes' (BLUPF90 layout: "
                             "the id, blanks, then one digit 0/1/2 per marker, 5 missing): "
                             f"{text[:60]!r}")
        if len(f[1]) != want:
            raise _length(path, f[0], line, len(f[1]), want, first_id)
        ids.append((f[0], line))
        strings.append(f[1])
    M = (np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8) - 48).reshape(
        len(strings), want).astype(np.int8)
    bad = np.argwhere(M > 2)
    if len(bad):
        r, c = bad[0]
        animal, line = ids[r]
        if M[r, c] == MISSING_CODE:
            raise _missing(path, animal, line, c + 1)
        raise _bad_code(path, animal, line, c + 1, str(M[r, c]))
    return [i for i, _ in ids], M


def _codes(tokens: list) -> np.ndarray:
    """0/1/2 as int8; -1 for a missing code, -2 for anything else."""
    a = np.asarray(tokens, dtype=str)
    out = np.full(a.shape, -2, dtype=np.int8)
    for k in (0, 1, 2):
        out[a == str(k)] = k
    for j in np.flatnonzero(out == -2):
        t = a[j]
        if t in MISSING_TOKENS:
            out[j] = -1
        elif _NUMBER.match(t) and float(t) in (0.0, 1.0, 2.0):
            out[j] = int(float(t))
        elif _NUMBER.match(t) and float(t) == MISSING_CODE:
            out[j] = -1
    return out


def _read_table(path, s, first, fields, rows):
    header = not all(_NUMBER.match(t) or t in MISSING_TOKENS for t in fields[1:])
    if header:
        markers = fields[1:]
        dup = pd.Index(markers)[pd.Index(markers).duplicated()]
        if len(dup):
            raise InputError(f"{path}: marker(s) {', '.join(map(repr, list(dup[:5])))} "
                             "appear twice in the header")
        data = rows
    else:
        markers = [str(j + 1) for j in range(len(fields) - 1)]
        data = iter([first, *rows])
    want = len(markers)
    ids, blocks, first_id = [], [], None
    for line, text in data:
        f = _split(text, s)
        if first_id is None:
            first_id = f[0]
        if len(f) - 1 != want:
            if header:
                raise InputError(f"{path}: rows of different length: animal {f[0]!r} (line "
                                 f"{line}) has {len(f) - 1} genotypes, the header names "
                                 f"{want} markers")
            raise _length(path, f[0], line, len(f) - 1, want, first_id)
        c = _codes(f[1:])
        if (c < 0).any():
            j = int(np.flatnonzero(c < 0)[0])
            if c[j] == -1:
                raise _missing(path, f[0], line, markers[j])
            raise _bad_code(path, f[0], line, markers[j], f[1 + j])
        ids.append(f[0])
        blocks.append(c)
    if not ids:
        raise InputError(f"{path}: a header line but no genotypes")
    return ids, np.vstack(blocks), markers


# -- the relationship matrix ------------------------------------------------------------
def genomic_relmat(g: GenomicConfig, ped=None, pedigree_file=None, progress=None) -> tuple:
    """((levels, K⁻¹), facts) for the genomic term: H⁻¹ (single-step) or G⁻¹ (gblup).

    ``facts`` (for the log, the methods paragraph and ``info``): model, term, file,
    n_genotyped, n_markers, layout, blend (and what it blends with), tune, tau, omega.
    """
    t = time.perf_counter()
    gen = read_genotypes(g.file, g.sep)
    n, m = gen.M.shape
    if progress is not None:
        progress.note(f"genotypes: {n:,} animals x {m:,} markers ({gen.layout}) from {g.file}")
    if ped is not None:
        known = set(ped.ids)
        absent = [i for i in gen.ids if i not in known]
        if absent:
            raise InputError(f"{g.file}: {len(absent)} genotyped animal(s) not in the "
                             f"pedigree {pedigree_file}: "
                             f"{', '.join(map(repr, absent[:5]))}"
                             + (", ..." if len(absent) > 5 else ""))
    if g.model == "single-step" and ped is None:
        raise InputError("single-step needs a pedigree ([pedigree] file / --pedigree); with "
                         "genotypes only use model = \"gblup\" (--genomic-model gblup)")
    G = genomic_relationship(gen.frame(), blend=g.blend, A22=ped, tune=g.tune)
    if g.model == "single-step":
        Kinv = single_step_inverse(ped, G, tau=g.tau, omega=g.omega)
        levels = ped.ids
    else:
        Kinv = sp.csc_matrix(_chol_inverse(G.to_numpy(), "G"))
        levels = G.index
    facts = {"model": g.model, "term": g.term, "file": str(g.file), "n_genotyped": n,
             "n_markers": m, "layout": gen.layout, "blend": float(g.blend),
             "blend_with": "A22" if ped is not None else "I", "tune": g.tune,
             "tau": float(g.tau), "omega": float(g.omega), "method": "vanraden1",
             "genotyped": list(gen.ids)}
    if progress is not None:
        what = (f"H^-1 (single-step, tau {g.tau:g}, omega {g.omega:g}): {Kinv.shape[0]:,} "
                f"animals, {n:,} genotyped" if g.model == "single-step"
                else f"G^-1 (GBLUP): {n:,} animals")
        progress.note(f"{what}; G by VanRaden method 1"
                      + (f", tuned to A22 ({g.tune})" if g.tune else "")
                      + (f", blended with {g.blend:g} {facts['blend_with']}" if g.blend
                         else "") + f" ({time.perf_counter() - t:.2f} s)")
    return (levels, Kinv), facts
