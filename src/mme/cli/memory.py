"""Memory forecast: refuse a model that cannot fit before its factor is allocated.

After the MME's pattern is built (``mme.build_mme``) CHOLMOD's symbolic analysis
(``engine.cholesky.Cholesky``: ``cholmod_analyze`` through ``mme._core``) fixes the
fill-reducing permutation, CHOLMOD's choice of a supernodal or simplicial factor and,
when supernodal, its supernodes (relaxed amalgamation included): the exact number of
values the numeric factor will store (``L->xsize``), of its row indices
(``L->ssize``) and the largest update block of the factorization
(``L->maxcsize``), read from the symbolic factor before anything numeric exists.

The forecast (``forecast``) is what the fit adds to the process at its peak: the
parts held through the REML rounds (the factor, C⁻¹'s fixed columns and per-round
vectors, the position of C in L, the result arrays) plus the largest transient set
of one round — the factorization's update workspace; the selected inverse (on the
factor's own layout: as many values as the factor) and the selected inversion's
buffers; or, in the first round, the selected inverse while C's pattern is located
in the factor.

It compares the total with the memory available: ``--memory-limit`` (or the
environment variable ``MME_MEMORY_LIMIT``) when given, else the smaller of the
cgroup's limit less its current use (``/sys/fs/cgroup/memory.max`` -
``memory.current``, or cgroup v1's ``memory.limit_in_bytes`` -
``memory.usage_in_bytes``) and ``MemAvailable`` of ``/proc/meminfo``.

Reference: Chen, Y., Davis, T. A., Hager, W. W. & Rajamanickam, S. (2008) Algorithm
887: CHOLMOD. ACM TOMS 35:22 (supernodal analysis: ``cholmod_super_symbolic``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 2 ** 10, "kib": 2 ** 10, "m": 2 ** 20,
          "mb": 2 ** 20, "mib": 2 ** 20, "g": 2 ** 30, "gb": 2 ** 30, "gib": 2 ** 30,
          "t": 2 ** 40, "tb": 2 ** 40, "tib": 2 ** 40}


def parse_size(text) -> int:
    """"8G", "512MiB", "1.5 GB", 1000000 → bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _UNITS:
        raise InputError(f"memory limit {text!r}: expected a size such as 8G, 512M or "
                         "1500000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"


def _read_int(path) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> tuple[int, str]:
    """(bytes available, where the figure comes from): cgroup limit less its use, or
    MemAvailable, whichever is smaller."""
    options = []
    for limit_f, usage_f, name in (
            ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "cgroup v2"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
             "/sys/fs/cgroup/memory/memory.usage_in_bytes", "cgroup v1")):
        lim = _read_int(limit_f)
        if lim is not None and lim < 2 ** 60:
            use = _read_int(usage_f) or 0
            options.append((max(lim - use, 0), f"{name} limit {human(lim)} less "
                                               f"{human(use)} in use"))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                options.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    if not options:
        return 2 ** 62, "unknown (no cgroup limit, no /proc/meminfo)"
    return min(options)


def _selinv_workspace(ncols: np.ndarray, nrows: np.ndarray, panel: int = 256) -> int:
    """Bytes of the supernodal selected inversion's work buffers
    (``_core.Factor.selected_inverse_supernodal``) that it touches: the lower triangle
    of the widest supernode's w × w diagonal block (the buffer is w × w; only its lower
    half is written), two m × w panels and the m × panel gather of the largest, the
    row positions and the supernode of each column."""
    if ncols.size == 0:
        return 0
    m = nrows - ncols
    max_w, max_m, max_mw = int(ncols.max()), int(m.max()), int((m * ncols).max())
    return 8 * (max_w * (max_w + 1) // 2 + 2 * max_mw + max_m * min(panel, max_m) + max_m
                + int(ncols.sum()))


@dataclass
class Forecast:
    """What a fit adds to the process at its peak: the parts held through the REML
    rounds (``held``) and the largest of the transient sets of one round
    (``transient``: name → parts); ``total`` = Σ held + max over the transient sets."""

    nnz_L: int
    nnz_C: int
    dim: int
    supernodal: bool
    stored_L: int        # values the numeric factor stores (supernodal: xsize, with zeros)
    held: dict           # name -> bytes
    transient: dict      # phase -> {name -> bytes}
    available: int
    source: str

    @property
    def peak_phase(self) -> str:
        return max(self.transient, key=lambda k: sum(self.transient[k].values()))

    @property
    def parts(self) -> dict:
        """Every part at the peak (held, then the peak phase's)."""
        return {**self.held, **self.transient[self.peak_phase]}

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def fits(self) -> bool:
        return self.total <= self.available

    def describe(self) -> str:
        kind = (f"supernodal, {self.stored_L:,} stored" if self.supernodal
                else "simplicial")
        return (f"predicted {human(self.total)} (nnz(L) = {self.nnz_L:,}, {kind}: "
                + ", ".join(f"{k} {human(v)}" for k, v in self.held.items())
                + f", at the peak ({self.peak_phase}) "
                + ", ".join(f"{k} {human(v)}"
                            for k, v in self.transient[self.peak_phase].items())
                + f"); available {human(self.available)} ({self.source})")


def forecast(system, factor, limit=None) -> Forecast:
    """The memory a fit of ``system`` (an ``mme.build_mme`` result) adds at its peak,
    from the symbolic ``factor`` (``engine.cholesky.Cholesky`` after its analysis),
    against ``limit`` or what is available.

    CHOLMOD's symbolic factor gives nnz(L), whether the factor is supernodal and, if
    so, its exact layout: ``xsize`` values and ``ssize`` row indices, the supernodes'
    sizes and the largest update block (``maxcsize``). Held through the fit: the
    numeric factor (supernodal: 8 bytes per stored value and per row index; simplicial:
    value + row index per entry with CHOLMOD's room to grow, 1.2 nnz(L) + 5 dim), the
    int64 copy of C's pattern CHOLMOD reads, C⁻¹[:, :p] and the per-round vectors
    (``dense``), the position, row and column of each slot of C in the factor
    (3 × 8 nnz(C)) and the random effects' result arrays. Transient, in turn, within
    one round: the factorization's permuted copy of C and its update workspace; the
    selected inverse (8 bytes per stored value) with the kernel's buffers; in the
    first round, the selected inverse while C's slots are located in the factor.
    """
    sym = factor.symbolic()
    nnz_L = int(sym["lnz"])
    supernodal = bool(sym["supernodal"])
    nnz_C, dim, p = int(system.C.nnz), int(system.dim), int(system.p)
    if supernodal:
        stored = int(sym["xsize"])
        factor_bytes = 8 * stored + 8 * int(sym["ssize"]) + 24 * (sym["nsuper"] + 1) + 16 * dim
        update = 8 * int(sym["maxcsize"])
        workspace = _selinv_workspace(sym["ncols"], sym["nrows"])
    else:
        stored = nnz_L
        factor_bytes = 16 * (1.2 * nnz_L + 5 * dim) + 48 * dim
        update = 8 * dim
        workspace = 8 * stored + 16 * dim       # the supernode partition of a CSC view
    held = {"factor": int(factor_bytes), "C pattern (int64)": 8 * (nnz_C + dim + 1),
            "dense": int(8 * dim * (p + 24)), "C in L": 3 * 8 * nnz_C,
            "results": 8 * 8 * dim}
    transient = {
        "factorization": {"permuted C": 16 * nnz_C + 8 * dim,
                          "update workspace": int(update)},
        "selected inversion": {"selected inverse": 8 * stored,
                               "its workspace": int(workspace)},
        "first round": {"selected inverse": 8 * stored,
                        "locating C in L": 9 * nnz_C + 8 * dim},
    }
    if limit is None:
        available, source = available_memory()
    else:
        available, source = parse_size(limit), "--memory-limit"
    return Forecast(nnz_L, nnz_C, dim, supernodal, int(stored), held, transient, available,
                    source)


def refusal(fc: Forecast) -> str:
    """The one-line message of a model refused for memory."""
    return (f"not enough memory for this model: {fc.describe()}. Ways out: BLUP by PCG at "
            "known variances (--variances ... --solver pcg, no factorization), a machine "
            "with more memory, or another fill-reducing ordering (--ordering metis or amd)")
