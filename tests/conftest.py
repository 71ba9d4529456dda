"""Shared helpers for the test suite.

* ``load_case(name)``: a tests/data/lme4 reference (JSON) and its data (CSV), with R's
  factors as categoricals ordered as R orders them.
* ``fitted(name, formula=None, **options)``: ONE session-wide cache of fitted models, so
  that each (data set, formula, options) is fitted once across all test files. The fit is
  shared: a test that changes a fit's state (``MME.set_values``, ``Fit.release``,
  monkeypatching what the fit calls, counting factorizations) must fit its own.
* ``mrode()``: Mrode (2014) Example 3.1 (tests/data/mrode_3_1.json), fitted once.
* ``pytest --tolerance-report``: every ``numpy.testing.assert_allclose`` call records the
  discrepancy it saw; at the end a table lists, per call site, the largest absolute and
  relative error and the fraction of the tolerance used (margin = 1 / fraction). That is
  how the named tolerance constants of the test files were set (tests/README.md).
"""
import copy
import functools
import inspect
import json
import pathlib

import numpy as np
import pandas as pd
import pytest

DATA = pathlib.Path(__file__).parent / "data"
LME4 = DATA / "lme4"


# ============================================================== reference cases ==
@functools.lru_cache(maxsize=None)
def _read_case(name):
    ref = json.loads((LME4 / f"{name}.json").read_text())
    df = pd.read_csv(LME4 / f"{name}.csv")
    factors = ref["factors"]
    factors = [factors] if isinstance(factors, str) else factors
    for c in factors:
        df[c] = pd.Categorical(df[c], categories=sorted(df[c].unique()))
    # jsonlite's auto_unbox writes one-element vectors as scalars
    for key, val in ref["fixef"].items():
        if not isinstance(val, list):
            ref["fixef"][key] = [val]
    return ref, df


def load_case(name):
    """(reference dict, DataFrame) with R's factors as ordered-like-R categoricals.

    Fresh copies on every call (the files are read once): callers may modify them."""
    ref, df = _read_case(name)
    return copy.deepcopy(ref), df.copy()


def _freeze(value):
    """A hashable, order-independent key for fit options (dicts, arrays, lists)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape, value.tobytes())
    return value


_FITS = {}


def fitted(name, formula=None, **options):
    """(ref, data, fit) of a tests/data/lme4 case, fitted once per session.

    ``formula`` defaults to the reference's, ``method`` to the reference's (for the
    reference formula) or REML; other ``options`` are passed to ``mme.fit``. ``data`` is a
    fresh copy; ``ref`` and ``fit`` are shared by every caller and must not be modified.
    """
    import mme
    ref, df = load_case(name)
    if formula is None:
        formula = ref["formula"]
    options.setdefault("method", ref["method"] if formula == ref["formula"] else "REML")
    key = (name, formula, _freeze(options))
    if key not in _FITS:
        _FITS[key] = mme.fit(formula, df, **options)
    return ref, df, _FITS[key]


@pytest.fixture(scope="session")
def lme4_fit():
    """fit(name) → (reference, mme.Fit) of the reference model, from the shared cache."""
    def get(name):
        ref, _, fit = fitted(name)
        return ref, fit
    return get


@functools.lru_cache(maxsize=None)
def _mrode():
    import mme
    ex = json.loads((DATA / "mrode_3_1.json").read_text())
    ped = mme.Pedigree.from_frame(pd.DataFrame(ex["pedigree"]))
    data = pd.DataFrame(ex["data"])
    fit = mme.fit("wwg ~ 0 + sex + (1|id)", data, relmat={"id": ped}, variances=ex["variances"])
    return ex, ped, data, fit


def mrode():
    """(example dict, Pedigree, data, fit at the book's variances), fitted once; shared."""
    ex, ped, data, fit = _mrode()
    return copy.deepcopy(ex), ped, data.copy(), fit


# ============================================================ tolerance report ==
def pytest_addoption(parser):
    parser.addoption("--tolerance-report", action="store", nargs="?", const="-", default=None,
                     metavar="FILE",
                     help="record the discrepancy of every numpy.testing.assert_allclose "
                          "and print (or write to FILE as JSON) the achieved error and the "
                          "margin to the tolerance per call site")


_RECORDS = {}


def _record(actual, desired, rtol, atol):
    try:
        a = np.asarray(actual, dtype=float)
        d = np.asarray(desired, dtype=float)
        a, d = np.broadcast_arrays(a, d)
    except (TypeError, ValueError):
        return
    ok = np.isfinite(a) & np.isfinite(d)
    if not ok.any():
        return
    a, d = a[ok], d[ok]
    err = np.abs(a - d)
    bound = atol + rtol * np.abs(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        used = np.where(bound > 0, err / bound, np.where(err > 0, np.inf, 0.0))
        rel = np.where(d != 0, err / np.abs(d), np.where(err > 0, np.inf, 0.0))
    here = pathlib.Path(__file__).parent
    site = None
    for fr in inspect.stack()[2:]:
        p = pathlib.Path(fr.filename)
        if p.parent == here and p.name != "conftest.py":
            site = (p.name, fr.lineno, fr.function)
            break
    if site is None:
        return
    r = _RECORDS.setdefault(site, {"n": 0, "used": 0.0, "abs": 0.0, "rel": 0.0,
                                   "rtol": rtol, "atol": atol})
    r["n"] += 1
    r["used"] = max(r["used"], float(used.max()))
    r["abs"] = max(r["abs"], float(err.max()))
    r["rel"] = max(r["rel"], float(rel.max()))
    r["rtol"], r["atol"] = max(r["rtol"], rtol), max(r["atol"], atol)


def pytest_configure(config):
    if not config.getoption("--tolerance-report"):
        return
    real = np.testing.assert_allclose

    @functools.wraps(real)
    def recording(actual, desired, rtol=1e-7, atol=0, *args, **kwargs):
        _record(actual, desired, rtol, atol)
        return real(actual, desired, rtol, atol, *args, **kwargs)

    np.testing.assert_allclose = recording


def pytest_terminal_summary(terminalreporter, config):
    dest = config.getoption("--tolerance-report")
    if not dest:
        return
    rows = [{"file": f, "line": ln, "test": fn, **r} for (f, ln, fn), r in sorted(_RECORDS.items())]
    if dest != "-":
        pathlib.Path(dest).write_text(json.dumps(rows, indent=1))
    tr = terminalreporter
    tr.section("tolerance report (max over calls; margin = tolerance / achieved)")
    tr.write_line(f"{'site':58s} {'n':>4s} {'rtol':>8s} {'atol':>8s} {'max abs':>9s} "
                  f"{'max rel':>9s} {'margin':>8s}")
    for r in rows:
        margin = 1.0 / r["used"] if r["used"] > 0 else float("inf")
        site = f"{r['file']}:{r['line']} {r['test']}"[:58]
        tr.write_line(f"{site:58s} {r['n']:4d} {r['rtol']:8.1e} {r['atol']:8.1e} "
                      f"{r['abs']:9.2e} {r['rel']:9.2e} {margin:8.1f}")
