"""Readers of the command line: data tables and pedigrees from files.

Formats, chosen by ``sep`` or detected from the file:

* ``.parquet`` / ``.pq`` (or ``sep="parquet"``): read by pandas through pyarrow, an
  optional dependency (``pip install 'mme[parquet]'``);
* delimited text: ``sep="auto"`` (the default) looks at the first non-empty line —
  a comma makes it CSV, a tab TSV, a semicolon ``;``-separated, anything else
  whitespace-separated text as BLUPF90 writes it (runs of blanks, no quotes).

BLUPF90's files have no header line: give the column names (``names``); a first
line made only of numbers without ``names`` is refused rather than taken as a header.

Columns listed in ``factors`` (and the grouping columns of the random terms, which
the runner adds) are read as strings, so ids such as ``007`` keep their zeros.
Every error is an :class:`~mme.cli.errors.InputError` naming the file.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .errors import InputError

#: file suffixes read as Parquet
PARQUET_SUFFIXES = (".parquet", ".pq")
#: the separators accepted by ``sep``
SEPARATORS = {"auto": None, "comma": ",", ",": ",", "tab": "\t", "\\t": "\t",
              "semicolon": ";", ";": ";", "whitespace": r"\s+", "space": r"\s+",
              "parquet": "parquet"}
_KIND = {",": "CSV", "\t": "tab-separated", ";": "semicolon-separated"}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    return line.rstrip("\n\r")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                         "is it Parquet? name it .parquet or pass --sep parquet") from None
    raise InputError(f"{path}: the file is empty")


def resolve_sep(path: Path, sep: str = "auto") -> str:
    """The separator of ``path``: ``","``, ``"\\t"``, ``";"``, ``r"\\s+"`` or ``"parquet"``."""
    key = str(sep).lower() if sep is not None else "auto"
    if key not in SEPARATORS:
        raise InputError(f"unknown separator {sep!r} (use one of: comma, tab, semicolon, "
                         "whitespace, parquet, auto)")
    if SEPARATORS[key] is not None:
        return SEPARATORS[key]
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return "parquet"
    line = _first_line(path)
    for s in (",", "\t", ";"):
        if s in line:
            return s
    return r"\s+"


def _check_file(path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file {str(path)!r} not found")
    if path.is_dir():
        raise InputError(f"{what} file {str(path)!r} is a folder")
    return path


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow, which is not installed: "
                         "pip install 'mme[parquet]' (or pyarrow>=12)") from None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own types
        raise InputError(f"{path}: cannot read Parquet: {exc}") from None


def read_table(path, sep: str = "auto", names=None, factors=(), missing=None,
               what: str = "data", rows: tuple | None = None) -> pd.DataFrame:
    """Read one data file.

    Parameters
    ----------
    path : str or Path
    sep : str
        "auto", "comma", "tab", "semicolon", "whitespace" or "parquet".
    names : list of str, optional
        Column names of a file without a header line (BLUPF90).
    factors : iterable of str
        Columns read as strings (ids, codes); each must exist.
    missing : list of str, optional
        Extra tokens that mean a missing value (besides pandas' NA, NaN, empty).
    rows : (start, count), optional
        Read only these data rows (0 = the first after the header): a rank's slice
        in a distributed run (``mme.distributed.partition``).
    """
    path = _check_file(path, what)
    factors = list(dict.fromkeys(factors or ()))
    s = resolve_sep(path, sep)
    if s == "parquet":
        df = _read_parquet(path) if rows is None else _read_parquet_rows(path, *rows)
        if names:
            raise InputError(f"{path}: Parquet files name their own columns (drop names)")
    else:
        header = "infer"
        if names:
            header = None
            names = list(names)
        else:
            tokens = [t for t in re.split(s if s != r"\s+" else r"\s+",
                                          _first_line(path).strip()) if t != ""]
            if tokens and all(_NUMBER.match(t.strip().strip('"')) for t in tokens):
                raise InputError(
                    f"{path}: the first line is all numbers, so the file has no header "
                    f"line: name its {len(tokens)} columns (--names a,b,... or "
                    "names = [...] in the parameter file)")
        kw = dict(sep=s, header=header, names=names, dtype={c: str for c in factors},
                  na_values=list(missing) if missing else None, skipinitialspace=s != r"\s+")
        if rows is not None:
            first = 0 if names else 1
            kw.update(skiprows=range(first, first + rows[0]), nrows=rows[1])
        try:
            df = pd.read_csv(path, **kw)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
            msg = " ".join(str(exc).split())
            kind = _KIND.get(s, "whitespace-separated")
            raise InputError(f"{path}: cannot read as {kind} text: {msg}") from None
        df.columns = [str(c).strip() for c in df.columns]
    absent = [c for c in factors if c not in df.columns]
    if absent:
        raise InputError(f"{path}: column(s) {', '.join(map(repr, absent))} not found; its "
                         f"columns are {', '.join(map(str, df.columns))}")
    for c in factors:
        col = df[c]
        df[c] = col.where(col.isna(), col.astype(str).str.strip())
    return df


def _read_parquet_rows(path: Path, start: int, count: int) -> pd.DataFrame:
    """Rows start … start + count − 1 of a Parquet file, reading only the row groups
    that hold them."""
    _read_parquet_check(path)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    first, groups = 0, []
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first < start + count and first + n > start:
            groups.append((g, first))
        first += n
    if not groups or count == 0:
        return pf.schema_arrow.empty_table().to_pandas()
    table = pf.read_row_groups([g for g, _ in groups])
    return table.slice(start - groups[0][1], count).to_pandas()


def _read_parquet_check(path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow, which is not installed: "
                         "pip install 'mme[parquet]' (or pyarrow>=12)") from None


def read_tables(paths, **kw) -> pd.DataFrame:
    """Read and stack several data files with the same columns (rows in file order)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError("no data file given")
    frames = [read_table(p, **kw) for p in paths]
    cols = list(frames[0].columns)
    for p, f in zip(paths[1:], frames[1:]):
        if list(f.columns) != cols:
            raise InputError(f"{p}: its columns {list(f.columns)} differ from those of "
                             f"{paths[0]} ({cols})")
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def read_pedigree_frame(path, sep: str = "auto", columns=("id", "sire", "dam"),
                        header="auto") -> pd.DataFrame:
    """A pedigree file as strings (nothing turned into NA), columns id, sire, dam first.

    ``header="auto"``: the first line is a header when it holds the three column names
    (``columns``); otherwise (BLUPF90) the first three columns are id, sire and dam
    and any further columns are kept as ``col4``, ``col5``, ...
    """
    path = _check_file(path, "pedigree")
    s = resolve_sep(path, sep)
    id_, sire, dam = columns
    if s == "parquet":
        df = _read_parquet(path).astype(str)
    else:
        if header == "auto":
            first = [t.strip().strip('"') for t in re.split(s, _first_line(path).strip())]
            low = [t.lower() for t in first]
            header = all(c.lower() in low for c in columns)
        kw = dict(sep=s, dtype=str, keep_default_na=False, na_filter=False,
                  header=0 if header else None)
        try:
            df = pd.read_csv(path, **kw)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the pedigree: "
                             f"{' '.join(str(exc).split())}") from None
        if header:
            lower = {str(c).strip().lower(): c for c in df.columns}
            df = df.rename(columns={lower[c.lower()]: c for c in columns if c.lower() in lower})
        else:
            if df.shape[1] < 3:
                raise InputError(f"{path}: a pedigree needs three columns (id, sire, dam); "
                                 f"the file has {df.shape[1]}")
            df.columns = [id_, sire, dam] + [f"col{i + 4}" for i in range(df.shape[1] - 3)]
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise InputError(f"{path}: pedigree column(s) {', '.join(map(repr, absent))} not "
                         f"found; its columns are {', '.join(map(str, df.columns))}")
    for c in df.columns:
        df[c] = df[c].astype(str).str.strip()
    return df
