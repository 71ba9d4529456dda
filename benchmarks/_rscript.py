"""Run R scripts for the benchmarks (one place for what bench_lme4.py and bench_crossed.py did).

Usage::

    from _rscript import RscriptError, run_rscript
    try:
        r = run_rscript("lme4_fit.R", [csv, out, "3"], timeout=600, out_file=out)
    except RscriptError as exc:      # exc.kind: missing_r, missing_package, timeout, failed, ...
        ...
    r.values            # parsed output: dict of key<TAB>value lines (parse="kv"), JSON, or text
    r.process_seconds   # wall time of the Rscript process

The R scripts here write plain ``key<TAB>value`` lines (no jsonlite dependency) to the
file named by one of their arguments; pass that file as ``out_file`` (it is removed
before the run so stale output is never read). Without ``out_file`` the script's
standard output is parsed. ``Rscript --vanilla`` is always used.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
_NO_PACKAGE = re.compile(r"there is no package called\s+[‘'\"`]?([A-Za-z][A-Za-z0-9.]*)")


class RscriptError(RuntimeError):
    """Rscript could not produce a result.

    ``kind`` is one of ``"missing_r"`` (no Rscript executable), ``"missing_package"``
    (``library(x)`` failed; ``package`` names it), ``"timeout"``, ``"failed"``
    (non-zero exit), ``"no_output"`` (exit 0 but no output file) or ``"bad_output"``.
    The first line of the message says what happened; R's stderr follows.
    """

    def __init__(self, message, *, kind, package=None, returncode=None, stderr="", process_seconds=None):
        super().__init__(message)
        self.kind = kind
        self.package = package
        self.returncode = returncode
        self.stderr = stderr
        self.process_seconds = process_seconds


@dataclass
class RscriptResult:
    values: object
    process_seconds: float
    cmd: list = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""


def parse_kv(text):
    """``key<TAB>value`` lines -> dict (later keys win; lines without a tab map to '')."""
    kv = {}
    for line in text.split("\n"):
        if line:
            k, _, v = line.partition("\t")
            kv[k] = v
    return kv


def rscript_command(script=None, args=(), *, expr=None, rscript="Rscript"):
    """The argv ``run_rscript`` runs (a relative ``script`` is taken in benchmarks/)."""
    if (script is None) == (expr is None):
        raise ValueError("give exactly one of script and expr")
    if script is not None:
        path = script if os.path.isabs(script) else os.path.join(HERE, script)
        return [rscript, "--vanilla", path, *map(str, args)]
    return [rscript, "--vanilla", "-e", expr, *map(str, args)]


def run_rscript(script=None, args=(), timeout=None, *, expr=None, out_file=None, parse="kv",
                rscript="Rscript"):
    """Run ``Rscript --vanilla script args...`` (or ``-e expr``) and return its parsed output.

    parse: "kv" (``key<TAB>value`` lines, the format of lme4_fit.R / lme4_crossed.R),
    "json" or "text". Raises ``RscriptError`` when R or an R package is missing, on a
    timeout, a non-zero exit, or missing/unparsable output.
    """
    cmd = rscript_command(script, args, expr=expr, rscript=rscript)
    if shutil.which(rscript) is None:
        raise RscriptError(f"{rscript} not found on PATH: R is not installed "
                           "(Debian: apt-get install r-base-core r-cran-lme4)", kind="missing_r")
    if out_file is not None and os.path.exists(out_file):
        os.remove(out_file)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RscriptError(f"timed out after {timeout} s", kind="timeout",
                           process_seconds=time.perf_counter() - t0) from None
    except OSError as exc:
        raise RscriptError(f"could not run {rscript}: {exc!r}", kind="missing_r") from None
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        m = _NO_PACKAGE.search(proc.stderr)
        if m:
            pkg = m.group(1)
            raise RscriptError(f"Rscript exit {proc.returncode}: R package '{pkg}' is not installed "
                               f"(Debian: apt-get install r-cran-{pkg.lower()})\n{proc.stderr}",
                               kind="missing_package", package=pkg, returncode=proc.returncode,
                               stderr=proc.stderr, process_seconds=seconds)
        raise RscriptError(f"Rscript exit {proc.returncode}\n{proc.stderr}", kind="failed",
                           returncode=proc.returncode, stderr=proc.stderr, process_seconds=seconds)
    if out_file is not None:
        if not os.path.exists(out_file):
            raise RscriptError(f"Rscript exit 0 but wrote no {out_file}\n{proc.stderr}", kind="no_output",
                               returncode=0, stderr=proc.stderr, process_seconds=seconds)
        with open(out_file) as fh:
            text = fh.read()
    else:
        text = proc.stdout
    try:
        if parse == "kv":
            values = parse_kv(text)
        elif parse == "json":
            values = json.loads(text)
        elif parse == "text":
            values = text
        else:
            raise ValueError(f"parse must be 'kv', 'json' or 'text', not {parse!r}")
    except json.JSONDecodeError as exc:
        raise RscriptError(f"unparsable JSON from {cmd[2]}: {exc}", kind="bad_output", returncode=0,
                           stderr=proc.stderr, process_seconds=seconds) from None
    return RscriptResult(values, seconds, cmd, proc.stdout, proc.stderr)
