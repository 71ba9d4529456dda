"""Progress of a command-line run on stderr, and its log file.

Each stage (reading data, the pedigree, the genotypes, the design, the symbolic
analysis, every REML round with the rounds and time expected to be left) is one line
on stderr, ``[mme] ...``, whatever the stream: a batch job's stderr redirected to a
file holds one greppable line per stage and per round, as BLUPF90's logs do. On a
terminal, with tqdm (a dependency; the lines alone when it is missing), a bar at the
bottom follows the REML rounds (rounds done of ``max_iter``, logLik, change, seconds
and the time expected to be left), the lines going through ``tqdm.write`` above it.
A stream that is not a terminal gets no bar (tqdm's ``disable=None`` rule): its
carriage-return redraws would fill a log file. ``--quiet`` turns stderr off.
Everything is also written to the log file (``mme.log`` in the output folder), with
the library's own per-iteration lines (logger ``"mme"``).
"""
from __future__ import annotations

import logging
import math
import sys
import time

import numpy as np

from ..engine.reml import TOL_DECREMENT_ABS

log = logging.getLogger("mme.cli")


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def is_terminal(stream) -> bool:
    """Is ``stream`` an interactive terminal (where a bar can redraw itself)?"""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):     # no isatty, or a closed stream
        return False


class Progress:
    """Lines on stderr (unless quiet) and in the log; under them a tqdm bar for the REML
    rounds when tqdm is installed, ``bar`` is true and the stream is a terminal."""

    def __init__(self, quiet: bool = False, stream=None, bar: bool = True):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tqdm = _tqdm() if bar else None
        self._bar = None
        self._t0 = time.perf_counter()
        self._last_loglik = None
        self._last_decrement = None
        self._seconds = []
        self.max_iter = None

    def note(self, msg: str) -> None:
        """One progress line (stderr and the log)."""
        log.info(msg)
        if self.quiet:
            return
        line = f"[mme] {msg}"
        if self._bar is not None:
            self.tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    # -- REML rounds -----------------------------------------------------------
    def reml_start(self, max_iter: int, loglik0: float | None = None) -> None:
        self.max_iter = max_iter
        self._last_loglik = loglik0
        self._last_decrement = None
        self._seconds = []
        self._t0 = time.perf_counter()
        if self.tqdm is not None and not self.quiet and is_terminal(self.stream):
            # a count, not a percentage: AI-REML stops long before max_iter; the time
            # left is the decrement's forecast (``time_left``), not tqdm's
            self._bar = self.tqdm(total=max_iter, desc="AI-REML", unit="round",
                                  file=self.stream, leave=False, dynamic_ncols=True,
                                  bar_format="{desc}: round {n_fmt} (at most {total_fmt}), "
                                             "{elapsed}{postfix}")

    def reml_round(self, rec, offset: int = 0) -> None:
        """One AI-REML round (a ``reml.IterationRecord``; ``offset``: rounds of the run
        this one resumes)."""
        change = (rec.loglik - self._last_loglik) if self._last_loglik is not None else None
        self._last_loglik = rec.loglik
        ch = f"{change:+.3g}" if change is not None else "-"
        self._seconds.append(rec.seconds)
        left = self.time_left(rec.decrement, rec.iteration)
        self._last_decrement = rec.decrement
        msg = (f"REML round {rec.iteration + offset}: {rec.kind}, logLik {rec.loglik:.6f}, change {ch}, "
               f"decrement {rec.decrement:.2g}, {rec.seconds:.2f} s" + (f", {left}" if left else ""))
        self.note(msg)
        if self._bar is not None and not self.quiet:
            self._bar.update(1)
            self._bar.set_postfix({"logLik": f"{rec.loglik:.4f}", "change": ch,
                                   "s": f"{rec.seconds:.2f}",
                                   "left": (left or "?").removesuffix(" left")})

    def time_left(self, decrement: float, iteration: int) -> str | None:
        """Expected rounds and time left: the Newton decrement (the convergence test,
        ``reml.TOL_DECREMENT_ABS``) shrank by the ratio r = d_k / d_(k-1) this round; at
        that rate (AI-REML near the optimum is at least that fast) it reaches the
        tolerance in ⌈log(tol / d_k) / log r⌉ rounds of the mean round time so far,
        capped by the rounds ``max_iter`` leaves. None while there is no rate yet (first
        round, or a decrement that grew)."""
        d0, d1 = self._last_decrement, decrement
        if d0 is None or not (0.0 < d1 < d0) or not np.isfinite(d0):
            return None
        if d1 < TOL_DECREMENT_ABS:
            return "converging"
        rounds = math.ceil(math.log(TOL_DECREMENT_ABS / d1) / math.log(d1 / d0))
        if self.max_iter is not None:
            rounds = min(rounds, max(self.max_iter - iteration, 0))
        secs = rounds * float(np.mean(self._seconds))
        return f"~{rounds} round{'s' if rounds != 1 else ''} (~{_duration(secs)}) left"

    def reml_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LogFile:
    """Attach a file handler to the ``mme`` loggers for the duration of a run."""

    def __init__(self, path):
        self.path = path
        self.handler = None
        self._levels = {}

    def __enter__(self):
        if self.path is None:
            return self
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s "
                                                    "%(message)s"))
        for name in ("mme",):
            lg = logging.getLogger(name)
            self._levels[name] = lg.level
            lg.setLevel(logging.INFO)
            lg.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        if self.handler is None:
            return False
        for name, level in self._levels.items():
            lg = logging.getLogger(name)
            lg.removeHandler(self.handler)
            lg.setLevel(level)
        self.handler.close()
        return False
