"""``Fit.summary()`` laid out as lme4's ``print(summary(lmer))`` with lmerTest's
coefficient table, numbers formatted as R formats them.

Blocks, in lme4's order: the title (``summary_title``: one small function, so that the
labels of other kinds of fit live in one place), the formula, the criterion (REML
criterion at convergence, or the AIC/BIC/logLik/deviance/df.resid table of an ML fit),
the scaled residuals' quantiles, the random effects (Groups, Name, Variance, Std.Dev.,
Corr), the number of observations and groups, the fixed effects (Estimate, Std. Error,
df, t value, Pr(>|t|) and significance stars, as lmerTest), the correlation of the fixed
effects, then mme's own lines (log-likelihood, AIC, BIC, convergence, singular fit).

R's rules reproduced here: ``format(x, digits=)`` for a numeric vector (``r_format``:
the fewest significant digits ≤ ``digits`` that show every element, one number of
decimals for all, scientific notation when narrower, padded to a common width);
``format.pval``; ``printCoefmat`` (estimate, SE and df rounded together to
``digits − digmin`` decimals, t values to 3, p-values by ``format.pval`` with 3 digits
and ``eps`` = 2.2e-16); ``abbreviate`` (the column names of the correlation matrix);
``zapsmall``. The differences from lme4's text: the formula is printed as written (R
deparses it: ``(1 | rep)``), there are no ``Data:``/``Control:`` lines, and the title
says mme.
"""
from __future__ import annotations

import numpy as np

__all__ = ["summary_text", "summary_title", "r_format", "format_pval", "abbreviate"]

#: R's getOption("digits") − 3, print.summary.merMod's default
DIGITS = 4
#: lme4.summary.cor.max: the correlation of fixed effects is printed up to this many
COR_MAX = 12
#: .Machine$double.eps, printCoefmat's eps.Pvalue
EPS_PVALUE = np.finfo(float).eps
SIGNIF_LEGEND = "Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1"


# ------------------------------------------------------------- R's formatting --
def _sig_exp(v: float, digits: int) -> tuple:
    """(significant digits needed ≤ digits, decimal exponent) of v rounded to digits."""
    mant, exp = f"{abs(v):.{digits - 1}e}".split("e")
    return len(mant.replace(".", "").rstrip("0")) or 1, int(exp)


def r_format(x, digits: int = 7, nsmall: int = 0, pad: bool = True) -> list:
    """R's ``format(x, digits=, nsmall=)`` of a numeric vector: one notation and number
    of decimals for all elements, the fewest that show each to ``digits`` significant
    digits; scientific when narrower than fixed; right-justified to a common width
    (``pad``). NA/NaN → "NA"/"NaN", ±Inf → "Inf"/"-Inf"."""
    x = np.asarray(x, float).ravel()
    fin = x[np.isfinite(x)]
    nz = fin[fin != 0]
    rgt, left, msig, emax = 0, 1, 1, 0
    for v in nz:
        nsig, e = _sig_exp(v, digits)
        rgt = max(rgt, nsig - 1 - e)
        left = max(left, e + 1)
        msig = max(msig, nsig)
        emax = max(emax, abs(e))
    rgt = max(rgt, nsmall)
    neg = int(bool((fin < 0).any()))
    w_fixed = neg + left + (rgt > 0) + rgt
    w_sci = neg + 1 + (msig > 1) + (msig - 1) + 2 + (3 if emax >= 100 else 2)
    sci = len(nz) > 0 and w_fixed > w_sci
    out = []
    for v in x:
        if np.isnan(v):
            out.append("NA")
        elif np.isinf(v):
            out.append("Inf" if v > 0 else "-Inf")
        elif sci:
            out.append(f"{v:.{msig - 1}e}")
        else:
            out.append(f"{v:.{rgt}f}")
    if pad and out:
        w = max(len(s) for s in out)
        out = [s.rjust(w) for s in out]
    return out


def zapsmall(x, digits: int) -> np.ndarray:
    """R's ``zapsmall(x, digits)``."""
    x = np.asarray(x, float)
    fin = np.isfinite(x)
    if not fin.any():
        return x
    mx = float(np.max(np.abs(x[fin])))
    return np.round(x, max(0, digits - int(np.ceil(np.log10(mx)))) if mx > 0 else digits)


def format_pval(pv, digits: int = 3, eps: float = EPS_PVALUE) -> list:
    """R's ``format.pval(pv, digits, eps)``: p ≥ 1e-3 jointly in fixed notation, smaller
    ones jointly in R's ``format``, those below ``eps`` as ``"<2e-16"`` / ``"< 2e-16"``."""
    pv = np.asarray(pv, float)
    out = ["NA"] * len(pv)
    ok = ~np.isnan(pv)
    is0 = ok & (pv < eps)
    rest = ok & ~is0
    rr = {}
    if rest.any():
        idx = np.flatnonzero(rest)
        vals = pv[idx]
        expo = np.floor(np.log10(np.where(vals > 0, vals, 1e-50)))
        fixp = (expo >= -3) | (vals == 0)
        for mask in (fixp, ~fixp):
            if mask.any():
                for i, s in zip(idx[mask], r_format(vals[mask], digits, pad=False)):
                    rr[i] = s
        for i, s in rr.items():
            out[i] = s
    if is0.any():
        d = max(1, digits - 2)
        if rr:
            nc = max(len(s) for s in rr.values())
            if d > 1 and d + 6 > nc:
                d = max(1, nc - 7)
            sep = "" if d == 1 and nc <= 6 else " "
        else:
            sep = "" if d == 1 else " "
        text = "<" + sep + r_format([eps], d, pad=False)[0]
        for i in np.flatnonzero(is0):
            out[i] = text
    return out


def _strip(s: str, minlen: int) -> str:
    """R's C ``stripchars`` (abbreviate, use.classes = TRUE) for one word."""
    b = list(s.strip())
    if len(b) <= minlen:
        return "".join(b)

    def first(i):
        return b[i - 1].isspace()

    def last(i):
        return not b[i - 1].isspace() and (i + 1 >= len(b) or b[i + 1].isspace())

    vowel = set("aeiou")
    rules = [lambda i: b[i] in vowel and last(i),
             lambda i: b[i] in vowel and not first(i),
             lambda i: b[i].islower() and last(i),
             lambda i: b[i].islower() and not first(i),
             lambda i: not first(i) and not b[i].isspace()]
    for rule in rules:
        i = len(b) - 1
        while i > 0:
            if i < len(b) and rule(i):
                del b[i]
            if len(b) - sum(c.isspace() for c in b) <= minlen:
                return "".join(b)
            i -= 1
    return "".join(b)


def abbreviate(names, minlength: int) -> list:
    """R's ``abbreviate(names, minlength)`` (method "left.kept"): drop lower-case vowels,
    then lower-case letters, then any letters from the end until ``minlength`` remain;
    names that collide are abbreviated again with a larger ``minlength``."""
    names = list(names)
    out = [_strip(n, minlength) for n in names]
    m = minlength
    while len(set(out)) < len(out) and m < max(len(n) for n in names):
        m += 1
        dup = {a for a in out if out.count(a) > 1}
        out = [_strip(n, m) if a in dup else a for n, a in zip(names, out)]
    return out


def _named_vector(names, values, right_values: bool = True) -> list:
    """R's print of a named vector: one width for every column (the widest name or
    value), right-justified, each followed by a space."""
    w = [max(max(len(n) for n in names), max(len(v) for v in values))] * len(names)
    return ["".join(n.rjust(k) + " " for n, k in zip(names, w)),
            "".join((v.rjust(k) if right_values else v.ljust(k)) + " "
                    for v, k in zip(values, w))]


def _char_matrix(header, rows, rownames=None, right: bool = False) -> list:
    """R's print of a character matrix (quote = FALSE): columns padded to a common width
    (left-justified unless ``right``), row names left-justified, one space between."""
    rownames = rownames if rownames is not None else [""] * len(rows)
    rw = max([len(r) for r in rownames] + [0])
    ncol = len(header)
    w = [max([len(header[j])] + [len(r[j]) for r in rows]) for j in range(ncol)]

    def cell(s, j):
        return s.rjust(w[j]) if right else s.ljust(w[j])

    lines = [" " * rw + "".join(" " + cell(h, j) for j, h in enumerate(header))]
    for rn, r in zip(rownames, rows):
        lines.append(rn.ljust(rw) + "".join(" " + cell(s, j) for j, s in enumerate(r)))
    return lines


# --------------------------------------------------------------------- blocks --
def summary_title(fit) -> list:
    """The summary's first lines: what was fitted and what logLik is (``Fit._heading``,
    the one home of those labels), with lmerTest's "t-tests use Satterthwaite's method"."""
    head = list(fit._heading())
    df = {"Satterthwaite": "Satterthwaite's method", "residual": "residual df"}.get(
        fit.df_method, fit.df_method)
    head[0] = f"{head[0]}. t-tests use {df}"
    return head


def _criterion(fit) -> list:
    if fit.method == "REML" and fit.loglik_kind == "REML":
        at = "at convergence" if fit.estimated else "at the given variances"
        return [f"REML criterion {at}: {round(-2.0 * fit.loglik, 1):.7g}"]
    dev = -2.0 * fit.loglik
    vals = np.round([fit.aic, fit.bic, fit.loglik, dev, fit.nobs - fit.n_params], 1)
    text = r_format(vals, 7)
    text[-1] = r_format(vals[-1:], 7)[0]
    return _named_vector(["AIC", "BIC", "logLik", "deviance", "df.resid"], text)


def _scaled_residuals(fit) -> list:
    mme = fit.internals.mme
    if not mme.residual.is_scalar:
        return []
    s2 = float(mme.split(np.asarray(fit.internals.theta_reported, float))[1][0, 0])
    ev = fit.internals.estimate.evaluation
    r = np.asarray(ev.resid_w if ev.resid_w is not None else ev.resid, float)[:fit.nobs]
    q = zapsmall(np.quantile(r / np.sqrt(s2), [0, 0.25, 0.5, 0.75, 1]), DIGITS + 1)
    return ["Scaled residuals: ",
            *_named_vector(["Min", "1Q", "Median", "3Q", "Max"], r_format(q, DIGITS)), ""]


def _random_effects(fit) -> list:
    from .profile import lme4_block_order
    mme = fit.internals.mme
    G0s, R0 = mme.split(np.asarray(fit.internals.theta_reported, float))
    groups, names, var, corr_blocks = [], [], [], []
    for bi in lme4_block_order(mme.structures):
        s, G = mme.structures[bi], G0s[bi]
        for a, t in enumerate(s.block.terms):
            groups.append(s.block.group if a == 0 else "")
            names.append(t)
            var.append(max(G[a, a], 0.0))
        corr_blocks.append(G)
    if mme.residual.is_scalar:
        groups.append("Residual")
        names.append("")
        var.append(float(R0[0, 0]))
    else:
        # a structured residual: its variances as variance_components lists them
        vc = fit.variance_components
        res = vc[(vc["group"] == "Residual").to_numpy()]
        vmask = np.asarray(mme.residual.variance_mask(), bool)
        rows = res[vmask] if len(vmask) == len(res) else res[(res["term2"] == "").to_numpy()]
        for i, (t, v) in enumerate(zip(rows["term1"], rows["estimate"])):
            groups.append("Residual" if i == 0 else "")
            names.append(t)
            var.append(float(v))
    var = np.array(var)
    cols = [groups, names, r_format(var, DIGITS), r_format(np.sqrt(var), DIGITS)]
    header = ["Groups", "Name", "Variance", "Std.Dev."]
    maxlen = max([G.shape[0] for G in corr_blocks] + [1])
    if maxlen > 1:
        corr_rows = []
        for G in corr_blocks:
            sd = np.sqrt(np.maximum(np.diag(G), 0.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                C = np.where(np.outer(sd, sd) > 0, G / np.outer(sd, sd), np.nan)
            np.fill_diagonal(C, 1.0)
            d = G.shape[0]
            txt = np.array(r_format(np.round(C, 2), 7, nsmall=2)).reshape(d, d)
            for i in range(d):
                corr_rows.append([txt[i, j] if j < i else "" for j in range(maxlen - 1)])
        corr_rows += [[""] * (maxlen - 1)] * (len(var) - len(corr_rows))
        for j in range(maxlen - 1):
            cols.append([r[j] for r in corr_rows])
            header.append("Corr" if j == 0 else "")
    rows = [list(r) for r in zip(*cols)]
    return ["Random effects:", *_char_matrix(header, rows)]


def _groups_line(fit) -> str:
    from .profile import lme4_block_order
    mme = fit.internals.mme
    seen = {}
    for bi in lme4_block_order(mme.structures):
        s = mme.structures[bi]
        seen.setdefault(s.block.group, s.L)
    if not seen:
        return f"Number of obs: {fit.nobs}"
    return (f"Number of obs: {fit.nobs}, groups:  "
            + "; ".join(f"{g}, {n}" for g, n in seen.items()))


def coefficient_table(fe) -> list:
    """lmerTest's coefficient table by R's ``printCoefmat`` (digits 4)."""
    est = fe[["estimate", "std_error", "df"]].to_numpy(float)
    tval = fe["t_value"].to_numpy(float)
    pv = fe["p_value"].to_numpy(float)
    digits = DIGITS
    dig_tst = max(1, min(5, digits - 1))
    acs = np.abs(est[np.isfinite(est) & (est != 0)])
    digmin = 1 + np.floor(np.log10([acs.min(), acs.max()])) if acs.size else np.array([0, 0])
    cs = np.array(r_format(np.round(est, int(max(1, np.max(digits - digmin)))), digits)
                  ).reshape(est.shape)
    # printCoefmat: an entry formatted as 0 that is not 0 is shown to digits − 1
    for i, j in zip(*np.nonzero((est != 0) & np.isfinite(est))):
        if float(cs[i, j]) == 0:
            cs[i, j] = r_format([est[i, j]], max(1, digits - 1), pad=False)[0]
    tst = r_format(np.round(tval, dig_tst), digits)
    pvs = format_pval(pv, dig_tst, EPS_PVALUE)
    header = ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    rows = [[*cs[i], tst[i], pvs[i]] for i in range(len(pv))]
    stars = bool(np.any(pv[np.isfinite(pv)] < 0.1))
    if stars:
        sym = ["***" if p <= 0.001 else "**" if p <= 0.01 else "*" if p <= 0.05
               else "." if p <= 0.1 else " " for p in np.nan_to_num(pv, nan=1.0)]
        w = max(len(s) for s in sym)
        header.append("")
        for r, s in zip(rows, sym):
            r.append(s.ljust(w))
    lines = _char_matrix(header, rows, rownames=list(fe.index), right=True)
    if stars:
        lines += ["---", SIGNIF_LEGEND]
    return lines


def _correlation(fit) -> list:
    p = len(fit.beta)
    if p <= 1:
        return []
    if p > COR_MAX:
        return ["", f"Correlation matrix not shown by default, as p = {p} > {COR_MAX}.",
                "Use fit.vcov if you need it"]
    V = np.asarray(fit.vcov_beta, float)
    sd = np.sqrt(np.diag(V))
    C = V / np.outer(sd, sd)
    txt = np.array(r_format(np.round(C, 3), 7, nsmall=3)).reshape(p, p)
    rn = list(fit.fixed_names)
    rns = abbreviate(rn, 11)
    cns = abbreviate(rn, 6)
    rows = [[txt[i, j] if j < i else "" for j in range(p - 1)] for i in range(1, p)]
    return ["", "Correlation of Fixed Effects:",
            *_char_matrix(cns[:p - 1], rows, rownames=rns[1:])]


def _mme_lines(fit) -> list:
    if not fit.estimated:
        state = "variances given (no REML)"
    else:
        state = (f"converged in {fit.n_iter} iterations" if fit.converged
                 else f"NOT converged after {fit.n_iter} iterations")
    out = ["", f"mme: logLik {fit.loglik:.4f}, AIC {fit.aic:.4f}, BIC {fit.bic:.4f}; {state}"]
    if fit.singular:
        out.append("boundary (singular) fit: a variance is estimated at zero or a G₀ is "
                   "singular (see the SingularFitWarning)")
    if fit.aliased:
        out.append(f"Not estimable (aliased): {', '.join(fit.aliased)}")
    return out


def summary_text(fit) -> str:
    """The whole summary (see the module docstring)."""
    lines = [*summary_title(fit), f"Formula: {fit.formula}", ""]
    lines += _criterion(fit) + [""]
    lines += _scaled_residuals(fit)
    lines += _random_effects(fit)
    lines.append(_groups_line(fit))
    if len(fit.beta):
        lines += ["", "Fixed effects:"] + coefficient_table(fit.fixed_effects)
        lines += _correlation(fit)
    lines += _mme_lines(fit)
    return "\n".join(lines)
