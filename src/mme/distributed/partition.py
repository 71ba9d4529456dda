"""The partition of the records by rows: which rank holds which rows, and reading a
rank's own slice of a data file.

Rows are split into ``size`` contiguous slices of sizes differing by at most one
(rank r holds rows ``start[r] : start[r] + count[r]`` in file order), so the rows
of a rank are a function of (number of rows, number of ranks) only. With more
ranks than rows some ranks hold none; they still take part in every collective.

A CSV/text file is read by each rank with ``skiprows``/``nrows`` (the rows are
counted once by scanning the file for line ends, which reads it but parses
nothing; a Parquet file's count is in its metadata, and a rank reads only the row
groups that hold its rows). Several files are split as their rows stacked in order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import DataError

__all__ = ["RowPartition", "count_data_lines", "file_rows", "pieces", "read_slice"]


@dataclass(frozen=True)
class RowPartition:
    """Contiguous row slices, one per rank."""

    counts: tuple   # rows of each rank

    @classmethod
    def even(cls, n_rows: int, size: int) -> "RowPartition":
        """``n_rows`` split into ``size`` slices whose sizes differ by at most one."""
        if size < 1:
            raise DataError(f"a partition needs at least one rank, got {size}")
        base, extra = divmod(int(n_rows), int(size))
        return cls(tuple(base + (1 if r < extra else 0) for r in range(size)))

    @property
    def size(self) -> int:
        return len(self.counts)

    @property
    def n_rows(self) -> int:
        return int(sum(self.counts))

    @property
    def starts(self) -> tuple:
        return tuple(int(s) for s in np.concatenate([[0], np.cumsum(self.counts)[:-1]]))

    def rows(self, rank: int) -> slice:
        """The rows (a slice of the whole file's rows) of ``rank``."""
        a = self.starts[rank]
        return slice(a, a + self.counts[rank])

    def describe(self) -> str:
        """``"2 ranks: rows 0-4,999 (5,000), 5,000-9,999 (5,000)"``."""
        parts = [f"{s:,}-{s + c - 1:,} ({c:,})" if c else "none (0)"
                 for s, c in zip(self.starts, self.counts)]
        return f"{self.size} rank{'s' if self.size > 1 else ''}: rows " + ", ".join(parts)


def count_data_lines(path, header: bool = True) -> int:
    """Data lines of a text file (non-empty lines, minus the header line)."""
    n = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 22)
            if not chunk:
                break
            n += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        n += 1
    return max(n - (1 if header else 0), 0)


def file_rows(path, parquet: bool | None = None, header: bool = True) -> int:
    """Data rows of one file: a Parquet file's row count from its metadata, a text
    file's lines (minus the header line)."""
    path = Path(path)
    if parquet is None:
        parquet = path.suffix.lower() in (".parquet", ".pq")
    if parquet:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow: pip install "
                            "'mme[parquet]'") from None
        return int(pq.ParquetFile(path).metadata.num_rows)
    return count_data_lines(path, header=header)


def pieces(part: RowPartition, rank: int, file_counts: list) -> list:
    """(file index, first row in that file, rows) of ``rank``'s slice of the files'
    rows stacked in order."""
    rows = part.rows(rank)
    out, first = [], 0
    for i, n in enumerate(file_counts):
        a, b = max(rows.start, first), min(rows.stop, first + n)
        if b > a:
            out.append((i, a - first, b - a))
        first += n
    return out


def read_slice(path, rank: int, size: int, read_csv_kw: dict | None = None
               ) -> tuple[pd.DataFrame, RowPartition]:
    """This rank's rows of a CSV/text or Parquet file, and the partition of all rows.

    ``read_csv_kw`` are passed to ``pandas.read_csv`` (sep, dtype, na_values, header,
    names); a file with a header line keeps it as the column names of every slice.
    A Parquet file is read by row groups: only those holding the rank's rows.
    """
    path = Path(path)
    kw = dict(read_csv_kw or {})
    parquet = path.suffix.lower() in (".parquet", ".pq")
    header = kw.get("header", "infer") is not None
    n = file_rows(path, parquet, header)
    part = RowPartition.even(n, size)
    rows = part.rows(rank)
    count = rows.stop - rows.start
    if parquet:
        from ..cli.io import _read_parquet_rows
        return _read_parquet_rows(path, rows.start, count), part
    first = 1 if header else 0
    if count == 0:
        # no rows here: read the header only, so the columns are known
        return pd.read_csv(path, nrows=0, **kw), part
    df = pd.read_csv(path, skiprows=range(first, first + rows.start), nrows=count, **kw)
    if len(df) != count:
        raise DataError(f"{path}: rank {rank} expected rows {rows.start:,}-"
                        f"{rows.stop - 1:,} but read {len(df):,} (blank or quoted "
                        "multi-line records are not supported in distributed reading)")
    return df, part
