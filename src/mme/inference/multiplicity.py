"""Multiplicity adjustments of p values and confidence limits, by emmeans' rules
(``.adj.p.value`` and ``.adj.critval`` of emmeans 1.8.4).

Adjustments (``adjust=``; case-insensitive, a unique prefix is enough, as R's ``pmatch``):

==============  =================================================  ===========================
adjust          p value                                            confidence limits
==============  =================================================  ===========================
``none``        2·P(T > |t|)                                       t quantile
``tukey``       P(Q > √2|t|), studentized range of the family's   q(level; k, df)/√2
                k means (``scipy.stats.studentized_range``)
``sidak``       1 − (1 − p)ⁿ                                       t quantile at 1 − level^(1/n)
``bonferroni``  min(1, n·p)                                        t quantile at (1 − level)/n
``holm``, ``hochberg``, ``hommel``, ``BH`` (= ``fdr``), ``BY``:   R's ``p.adjust``      Bonferroni (as emmeans)
``scheffe``     P(F(r, df) > t²/r), r = rank of the family         √(r·F(level; r, df))
``dunnettx``    emmeans' approximation to Dunnett: a weighted      its root (exact, not
                mean of Tukey (k' = (1 + √(1 + 8n))/2 means) and   emmeans' uniroot tol 5e-4)
                Šidák, weights (n − 1)/n and 1/n
``mvt``         P(max|Tᵢ| ≥ |t|), multivariate t of the family     its quantile
                (:mod:`mme.inference.mvt`, quasi-Monte Carlo)
==============  =================================================  ===========================

n is the number of contrasts in a family, k the family size (number of means). Families
are the ``by`` groups. emmeans' rules reproduced here: a family of one contrast is not
adjusted (except Scheffé); Tukey is changed to Šidák, with emmeans' note, unless the
contrasts are one set of pairwise differences; confidence limits for the ``p.adjust``
methods use Bonferroni; Tukey's p uses ``zapsmall(df)``; ``mvt`` uses the df as mvtnorm
receives them from emmeans (``floor(df + 0.25)``, at least 1, infinite → normal).
"""
from __future__ import annotations

import numpy as np
from scipy import optimize, stats

from .._errors import OptionError

from .mvt import MaxAbsT
from .printing import _zapsmall

__all__ = ["ADJUSTMENTS", "resolve_adjust", "adjust_p_values", "critical_values",
           "p_adjust", "pdunnx", "qdunnx"]

P_ADJUST = ("holm", "hochberg", "hommel", "bonferroni", "BH", "BY", "fdr", "none")
#: the names emmeans accepts for p values, in its pmatch order
ADJUSTMENTS = ("sidak", "tukey", "scheffe", "dunnettx", "mvt") + P_ADJUST
#: for confidence limits emmeans knows these; anything else becomes Bonferroni
CI_ADJUSTMENTS = ("sidak", "tukey", "scheffe", "dunnettx", "mvt", "bonferroni", "none")
#: root finding of the Tukey and dunnettx critical values (absolute, on the t scale)
QUANTILE_XTOL = 1e-12


def _pmatch(name: str, table) -> str | None:
    """R's ``pmatch``: an exact match, else the one entry that starts with ``name``."""
    if name in table:
        return name
    hits = [t for t in table if t.startswith(name)]
    return hits[0] if len(hits) == 1 else None


def resolve_adjust(adjust) -> str:
    """emmeans' spelling of an adjustment name (``"Tukey"`` → ``"tukey"``, ``"bh"`` → ``"BH"``)."""
    a = str(adjust).lower()
    if a in ("bh", "by"):
        a = a.upper()
    k = _pmatch(a, ADJUSTMENTS) if a else None
    if k is None:
        raise OptionError(f"adjust={adjust!r} is not recognized; use one of {list(ADJUSTMENTS)}")
    return k


def _changed(old, new, reason) -> str:
    return (f'Note: adjust = "{old}" was changed to "{new}"\n'
            f'because "{old}" is {reason}')


# ------------------------------------------------------------------ p.adjust --
def p_adjust(p, method: str, n: int | None = None) -> np.ndarray:
    """R's ``p.adjust(p, method, n)`` (NAs kept, n defaults to the number of p values)."""
    p0 = np.array(p, dtype=float)
    ok = ~np.isnan(p0)
    q = p0[ok]
    lp = q.size
    n = p0.size if n is None else int(n)
    if method == "fdr":
        method = "BH"
    if n <= 1 or method == "none" or lp == 0:
        return p0
    if n == 2 and method == "hommel":
        method = "hochberg"
    if method == "bonferroni":
        out = np.minimum(1.0, n * q)
    elif method == "holm":
        o = np.argsort(q, kind="stable")
        i = np.arange(1, lp + 1)
        out = np.empty(lp)
        out[o] = np.minimum(1.0, np.maximum.accumulate((n + 1 - i) * q[o]))
    elif method in ("hochberg", "BH", "BY"):
        o = np.argsort(-q, kind="stable")
        i = np.arange(lp, 0, -1)
        mult = {"hochberg": n + 1 - i, "BH": n / i,
                "BY": np.sum(1.0 / np.arange(1, n + 1)) * n / i}[method]
        out = np.empty(lp)
        out[o] = np.minimum(1.0, np.minimum.accumulate(mult * q[o]))
    elif method == "hommel":
        pp = np.r_[q, np.ones(n - lp)] if n > lp else q.copy()
        o = np.argsort(pp, kind="stable")
        ps = pp[o]
        i = np.arange(1, n + 1)
        qv = pa = np.full(n, np.min(n * ps / i))
        for j in range(n - 1, 1, -1):
            ij = np.arange(0, n - j + 1)
            i2 = np.arange(n - j + 1, n)
            q1 = np.min(j * ps[i2] / np.arange(2, j + 1))
            qv = qv.copy()
            qv[ij] = np.minimum(j * ps[ij], q1)
            qv[i2] = qv[n - j]
            pa = np.maximum(pa, qv)
        res = np.empty(n)
        res[o] = np.maximum(pa, ps)
        out = res[:lp]
    else:
        raise OptionError(f"unknown p.adjust method {method!r}")
    p0[ok] = out
    return p0


# ------------------------------------------------------- F with infinite df --
def _f_cdf(x, d1, d2):
    """F(d1, d2) cdf; d2 = inf (asymptotic): χ²_d1 / d1 (scipy's F gives NaN there)."""
    x, d2 = np.broadcast_arrays(np.asarray(x, float), np.asarray(d2, float))
    fin = np.isfinite(d2)
    return np.where(fin, stats.f.cdf(x, d1, np.where(fin, d2, 1.0)), stats.chi2.cdf(x * d1, d1))


def _f_sf(x, d1, d2):
    x, d2 = np.broadcast_arrays(np.asarray(x, float), np.asarray(d2, float))
    fin = np.isfinite(d2)
    return np.where(fin, stats.f.sf(x, d1, np.where(fin, d2, 1.0)), stats.chi2.sf(x * d1, d1))


def _f_ppf(q, d1, d2):
    q, d2 = np.broadcast_arrays(np.asarray(q, float), np.asarray(d2, float))
    fin = np.isfinite(d2)
    return np.where(fin, stats.f.ppf(q, d1, np.where(fin, d2, 1.0)), stats.chi2.ppf(q, d1) / d1)


# ------------------------------------------------------------------ dunnettx --
def _family_of(n):
    """The number of means whose pairwise differences number n: (1 + √(1 + 8n))/2."""
    return (1.0 + np.sqrt(1.0 + 8.0 * n)) / 2.0


def pdunnx(x, n, df):
    """emmeans' ``.pdunnx``: P(max |Tᵢ| ≤ x) for n comparisons with a control, approximated
    by ((n − 1)/n)·Tukey(k' = (1 + √(1 + 8n))/2 means) + (1/n)·Šidák."""
    x = np.asarray(x, float)
    twt = (n - 1.0) / n
    tuk = stats.studentized_range.cdf(np.sqrt(2.0) * x, _family_of(n), df)
    sid = _f_cdf(x ** 2, 1, df) ** n
    return twt * tuk + (1.0 - twt) * sid


def qdunnx(level, n, df) -> float:
    """The x with ``pdunnx(x, n, df) = level`` (emmeans' ``.qdunnx``, root found to
    ``QUANTILE_XTOL`` instead of uniroot's 5e-4)."""
    if n < 1.005:
        return float(stats.t.ppf(0.5 + 0.5 * level, df))
    xtuk = _qtukey(level, _family_of(n), df) / np.sqrt(2.0)
    xsid = float(np.sqrt(_f_ppf(level ** (1.0 / n), 1, df)))
    lo, hi = min(xtuk, xsid), max(xtuk, xsid)
    if hi - lo < 1e-14:
        return lo
    f = lambda x: float(pdunnx(x, n, df)) - level  # noqa: E731
    return float(optimize.brentq(f, lo * (1 - 1e-9), hi * (1 + 1e-9), xtol=QUANTILE_XTOL))


def _qtukey(level, k, df) -> float:
    """Quantile of the studentized range (R's ``qtukey``, to ``QUANTILE_XTOL``)."""
    f = lambda q: float(stats.studentized_range.cdf(q, k, df)) - level  # noqa: E731
    hi = 2.0 * np.sqrt(2.0) * stats.t.ppf(1 - (1 - level) / (k * (k - 1)), df) + 1.0
    return float(optimize.brentq(f, 1e-6, hi, xtol=QUANTILE_XTOL))


def _per_df(d, f) -> np.ndarray:
    """f(df) for each df, computed once per distinct value (root finding is slow)."""
    u, inv = np.unique(d, return_inverse=True)
    return np.array([f(x) for x in u])[inv]


def _mvt_df(df) -> float:
    """emmeans' ``.fix.df``: the df mvtnorm gets (integer; 0 = normal → inf here)."""
    d = float(df)
    if d > 0:
        d = max(1.0, d)
    if np.isinf(d) or d > 9999:
        return np.inf
    return float(np.floor(d + 0.25))


# ----------------------------------------------------------------- p values --
def _message(kind, adjust, fam_size, n_contr, fs, scheffe_dim):
    """emmeans' note for the adjustment, or None (none; Tukey/Scheffé with < 3 means)."""
    chk = {"none": 1, "tukey": 2, "scheffe": 3}.get(adjust, 99)
    if chk <= 1 or (fs < 3 and chk < 10):
        return None
    if adjust == "tukey":
        extra = f"for comparing a family of {_num(fam_size)} estimates"
    elif adjust == "scheffe":
        extra = f"with rank {scheffe_dim}"
    else:
        extra = f"for {n_contr} {'tests' if kind == 'p' else 'estimates'}"
    head = "P value adjustment:" if kind == "p" else "Conf-level adjustment:"
    return f"{head} {adjust} method {extra}"


def _num(x) -> str:
    return f"{x:.7g}" if isinstance(x, float) else str(x)


def _est_type_rule(adjust, est_type, notes):
    if adjust == "tukey" and est_type != "pairs":
        notes.append(_changed("tukey", "sidak",
                              "only appropriate for one set of pairwise comparisons"))
        return "sidak"
    return adjust


def adjust_p_values(t, df, adjust, fam_size, groups, est_type, corr=None, sch_rank=None):
    """emmeans' ``.adj.p.value`` (two-sided).

    Parameters
    ----------
    t, df : arrays over all contrasts (df inf: z tests)
    adjust : str (resolved by :func:`resolve_adjust`)
    fam_size : int — means in a family (Tukey's k)
    groups : list of index arrays — the ``by`` families (equal sizes)
    est_type : "pairs", "contrast" or "prediction"
    corr : correlation matrix of the contrasts (``mvt``)
    sch_rank : rank of each family's contrasts (``scheffe``)

    Returns
    -------
    (p values, adjustment used, notes: list of str)
    """
    t = np.asarray(t, float)
    DF = np.where(np.isnan(np.asarray(df, float)), np.inf, np.asarray(df, float))
    n_contr = len(groups[0])
    notes = []
    if n_contr == 1 and adjust != "scheffe":
        adjust = "none"
    adjust = _est_type_rule(adjust, est_type, notes)
    uneven = sch_rank is not None and len(set(sch_rank)) > 1
    ragged = uneven or adjust in ("mvt",) + P_ADJUST
    by_rows = groups if ragged else [np.arange(t.size)]
    p_unadj = 2.0 * stats.t.sf(np.abs(t), DF)
    p_unadj = np.where(np.isnan(t), np.nan, p_unadj)
    pval = np.full(t.size, np.nan)
    for jj, rows in enumerate(by_rows):
        rows = np.asarray(rows)
        up, abst, d = p_unadj[rows], np.abs(t[rows]), DF[rows]
        if ragged:
            n_contr = len(rows)
        if adjust in P_ADJUST:
            pval[rows] = p_adjust(up, adjust, n=n_contr)
        elif adjust == "sidak":
            pval[rows] = 1.0 - (1.0 - up) ** n_contr
        elif adjust == "tukey":
            pval[rows] = stats.studentized_range.sf(np.sqrt(2.0) * abst, fam_size, _zapsmall(d))
        elif adjust == "scheffe":
            r = sch_rank[jj]
            pval[rows] = _f_sf(t[rows] ** 2 / r, r, d)
        elif adjust == "dunnettx":
            pval[rows] = 1.0 - pdunnx(abst, n_contr, d)
        elif adjust == "mvt":
            sub, cache = corr[np.ix_(rows, rows)], {}
            for i, (a, di) in enumerate(zip(abst, d)):
                key = _mvt_df(di)
                if np.isfinite(a):
                    if key not in cache:
                        cache[key] = MaxAbsT(sub, key)
                    pval[rows[i]] = 1.0 - cache[key].prob(a)[0]
        pval[rows] = np.where(np.isnan(t[rows]), np.nan, pval[rows])
    msg = _family_message("p", adjust, fam_size, n_contr, groups, ragged, sch_rank)
    if msg:
        notes.append(msg)
    return np.clip(pval, 0.0, 1.0), adjust, notes


def _family_message(kind, adjust, fam_size, n_contr, groups, ragged, sch_rank):
    """The note on the family an adjustment used (``_message``), with "(varies)" for
    families of different sizes."""
    if ragged:
        fs, sdim = _family_of(max(len(r) for r in groups)), "(varies)"
    else:
        fs, sdim = fam_size, (sch_rank[0] if sch_rank is not None else None)
    return _message(kind, adjust, fam_size, n_contr, fs, sdim)


def critical_values(level, df, adjust, fam_size, groups, est_type, corr=None, sch_rank=None):
    """emmeans' ``.adj.critval`` (two-sided): the multiplier of the SE for each contrast's
    confidence limits. Returns (critical values, adjustment used, notes)."""
    DF = np.where(np.isnan(np.asarray(df, float)), np.inf, np.asarray(df, float))
    n_contr = len(groups[0])
    notes = []
    uneven = sch_rank is not None and len(set(sch_rank)) > 1
    if not uneven and n_contr == 1 and adjust != "scheffe":
        adjust = "none"
    adjust = _pmatch(adjust, CI_ADJUSTMENTS) or "bonferroni"
    by_rows = groups
    if not uneven and adjust != "mvt" and len(np.unique(DF)) == 1:
        by_rows = [np.arange(DF.size)]
    adjust = _est_type_rule(adjust, est_type, notes)
    cv = np.full(DF.size, np.nan)
    for jj, rows in enumerate(by_rows):
        rows = np.asarray(rows)
        d = DF[rows]
        if uneven:
            n_contr = len(rows)
        if adjust == "none":
            cv[rows] = stats.t.ppf(0.5 + 0.5 * level, d)
        elif adjust == "sidak":
            cv[rows] = -stats.t.ppf((1.0 - level ** (1.0 / n_contr)) / 2.0, d)
        elif adjust == "bonferroni":
            cv[rows] = -stats.t.ppf((1.0 - level) / n_contr / 2.0, d)
        elif adjust == "tukey":
            cv[rows] = _per_df(d, lambda x: _qtukey(level, fam_size, x) / np.sqrt(2.0))
        elif adjust == "scheffe":
            r = sch_rank[jj]
            cv[rows] = np.sqrt(r * _f_ppf(level, r, d))
        elif adjust == "dunnettx":
            cv[rows] = _per_df(d, lambda x: qdunnx(level, n_contr, x))
        elif adjust == "mvt":
            sub = corr[np.ix_(rows, rows)]
            cache = {}
            for i, x in enumerate(d):
                key = _mvt_df(x)
                if key not in cache:
                    cache[key] = MaxAbsT(sub, key).quantile(level)
                cv[rows[i]] = cache[key]
    msg = _family_message("ci", adjust, fam_size, n_contr, groups, uneven, sch_rank)
    if msg:
        notes.append(msg)
    return cv, adjust, notes
