"""``mme pedigree check FILE`` and ``mme pedigree inbreeding FILE --out F.csv``.

``check`` reads the file as :class:`mme.Pedigree` does for a fit and reports:
animals, parents added as founders (ids that appear only as parents), founders,
animals with one or both parents known, sires and dams, generations, exact duplicate
rows (dropped), the unknown-parent codes in use and undeclared ones (an added
founder such as ``-`` or ``000``, or one that is the parent of many animals, is most
likely a code for "unknown"), parents not born before their offspring (with
``--birth-year COL``) and the inbreeding coefficients (Meuwissen & Luo 1992).
Errors that make the pedigree unusable — an id with two sets of parents, an animal
its own ancestor (the loop is shown), an id used as sire and as dam, a missing id —
are reported by :class:`mme.Pedigree` and exit with status 1.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..breeding.pedigree import DEFAULT_MISSING
from .errors import EXIT_INPUT, EXIT_OK, InputError
from .methods import generations

#: added founders whose id looks like a code for "unknown parent"
SUSPICIOUS = re.compile(r"^(-?0+|-\d+|\.+|-+|\?+|n/?a|nan|null|none|unknown|missing|x+)$",
                        re.IGNORECASE)


def _missing(tokens):
    return tuple(tokens) if tokens is not None else DEFAULT_MISSING


def check(path, sep="auto", missing=None, columns=("id", "sire", "dam"), birth_year=None,
          out=print) -> int:
    """Print the report of ``mme pedigree check``; returns the exit status."""
    from .runner import load_pedigree
    from .io import read_pedigree_frame
    tokens = _missing(missing)
    ped, notes = load_pedigree(path, sep=sep, missing=tokens, columns=columns)
    n, sire, dam = ped.n, np.asarray(ped.sire), np.asarray(ped.dam)
    added = list(ped.added_founders)
    both = int(np.count_nonzero((sire >= 0) & (dam >= 0)))
    one = int(np.count_nonzero((sire >= 0) ^ (dam >= 0)))
    gen = generations(ped)
    per_gen = np.bincount(gen)
    out(f"Pedigree {path}: {n:,} animals ({n - len(added):,} rows, {len(added):,} parents "
        "added as founders)")
    out(f"  founders (both parents unknown): {ped.n_founders:,}; one parent known: {one:,}; "
        f"both known: {both:,}")
    out(f"  sires: {len(np.unique(sire[sire >= 0])):,}; dams: {len(np.unique(dam[dam >= 0])):,}")
    out(f"  generations: {len(per_gen)} (animals per generation: "
        + ", ".join(f"{g}: {c:,}" for g, c in enumerate(per_gen)) + ")")
    shown = [repr(t) for t in tokens if t is not None]
    out(f"  unknown-parent codes: {', '.join(shown)} (declared)")
    warnings_n = 0
    for line in notes:
        out(f"  warning: {line}")
        warnings_n += 1
    if added:
        offspring = pd.Series(np.concatenate([sire[sire >= 0], dam[dam >= 0]])).value_counts()
        pos = ped.ids.get_indexer(added)
        counts = {a: int(offspring.get(p, 0)) for a, p in zip(added, pos)}
        many = max(10, int(0.05 * n))
        odd = [a for a in added if SUSPICIOUS.match(str(a)) or counts[a] >= many]
        for a in odd:
            out(f"  warning: parent id {a!r} (parent of {counts[a]:,} animals, no row of its "
                "own) looks like an undeclared unknown-parent code: declare it with "
                f"--missing {','.join([str(t) for t in tokens if t] + [str(a)])}")
            warnings_n += 1
    if birth_year:
        frame = read_pedigree_frame(path, sep=sep, columns=columns)
        if birth_year not in frame.columns:
            raise InputError(f"{path}: birth-year column {birth_year!r} not found; columns "
                             f"are {', '.join(frame.columns)}")
        year = pd.to_numeric(frame[birth_year], errors="coerce")
        by_id = pd.Series(year.to_numpy(), index=frame[columns[0]].to_numpy())
        by_id = by_id[~by_id.index.duplicated()]
        y = by_id.reindex(ped.ids).to_numpy()
        bad = []
        for par in (sire, dam):
            has = par >= 0
            idx = np.flatnonzero(has)
            late = idx[(y[par[idx]] >= y[idx])]
            bad.extend(ped.ids[late])
        bad = list(dict.fromkeys(bad))
        if bad:
            out(f"  warning: {len(bad):,} animals born no later than a parent "
                f"({birth_year}): {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}")
            warnings_n += 1
        else:
            out(f"  birth years ({birth_year}): every parent born before its offspring")
    F = ped.inbreeding
    inbred = F[F > 0]
    if len(inbred):
        top = F.idxmax()
        out(f"  inbreeding: {len(inbred):,} inbred ({100 * len(inbred) / n:.1f}%), mean F "
            f"{F.mean():.4f}, mean among inbred {inbred.mean():.4f}, max {F.max():.4f} "
            f"(animal {top})")
    else:
        out("  inbreeding: no inbred animal")
    out(f"OK: a valid pedigree ({warnings_n} warning{'s' if warnings_n != 1 else ''})")
    return EXIT_OK


def inbreeding(path, out_path, sep="auto", missing=None, columns=("id", "sire", "dam"),
               out=print) -> int:
    """Write id, sire, dam, F (parents first) to ``out_path``; returns the exit status."""
    from .runner import load_pedigree
    ped, notes = load_pedigree(path, sep=sep, missing=_missing(missing), columns=columns)
    for line in notes:
        out(f"warning: {line}")
    tab = ped.to_frame()
    tokens = [str(t) for t in _missing(missing) if t is not None]
    tab = tab.fillna("0" if "0" in tokens else (tokens[0] if tokens else ""))  # as read
    tab["F"] = ped.inbreeding.to_numpy()
    out_path = Path(out_path)
    if out_path.parent and not out_path.parent.exists():
        raise InputError(f"output folder {str(out_path.parent)!r} does not exist")
    tab.to_csv(out_path, index=False)
    F = tab["F"]
    out(f"wrote {out_path}: {len(tab):,} animals, {int((F > 0).sum()):,} inbred, mean F "
        f"{F.mean():.4f}, max F {F.max():.4f}")
    return EXIT_OK


__all__ = ["check", "inbreeding", "EXIT_INPUT"]
