"""Printing numbers and tables as R does, for ``print(EMMeans)`` / ``print(Contrasts)``.

Reproduces

- R's ``format(x, digits=, nsmall=)`` for a numeric vector in fixed notation
  (:func:`r_format`): one number of decimals for the whole vector, the fewest that
  show every element to ``digits`` significant digits, at least ``nsmall``; NA and
  Inf written as R writes them;
- R's ``zapsmall`` and ``signif`` (``_zapsmall``, ``_signif``);
- emmeans' ``print.summary_emm`` (:func:`print_summary`): estimates and confidence
  limits to the digits that ``.opt.dig`` finds the intervals need (``_opt_digits``,
  at least 3), SE to 3 significant digits, df to 2 decimals, t/z ratios to 3,
  p-values to 4 (``<.0001``), factor columns left-aligned, one block per ``by``
  group, then the notes.
"""
from __future__ import annotations

import numpy as np

__all__ = ["r_format", "print_summary"]


def _zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest finite |x|."""
    fin = np.isfinite(x)
    if not fin.any():
        return x
    mx = np.max(np.abs(x[fin]))
    if mx > 0:
        return np.round(x, max(0, digits - int(np.ceil(np.log10(mx)))))
    return np.round(x, digits)


def _signif(x: np.ndarray, digits: int) -> np.ndarray:
    """R's ``signif``: round each element to ``digits`` significant digits."""
    out = np.array(x, float)
    fin = np.isfinite(out) & (out != 0)
    mag = np.floor(np.log10(np.abs(out[fin])))
    out[fin] = np.round(out[fin] / 10 ** (mag - digits + 1)) * 10 ** (mag - digits + 1)
    return out


def r_format(x, digits: int = 7, nsmall: int = 0) -> list:
    """R's ``format(x, digits=, nsmall=)`` for a numeric vector in fixed notation:
    the fewest decimals that show every element to ``digits`` significant digits
    (trailing zeros dropped), common to the vector; NA, Inf as R prints them."""
    x = np.asarray(x, float)
    rgt = 0
    for v in x[np.isfinite(x)]:
        if v == 0:
            continue
        mant, exp = f"{abs(v):.{digits - 1}e}".split("e")
        nsig = len(mant.replace(".", "").rstrip("0")) or 1
        rgt = max(rgt, nsig - 1 - int(exp))
    rgt = min(max(rgt, nsmall), 15)
    out = []
    for v in x:
        if np.isnan(v):
            out.append("NA")
        elif np.isinf(v):
            out.append("Inf" if v > 0 else "-Inf")
        else:
            out.append(f"{v:.{rgt}f}")
    return out


def _opt_digits(est, se) -> int:
    """emmeans' ``.opt.dig`` over rows (est − 2SE, est, est + 2SE); at least 3."""
    best = 3
    for e, s in zip(est, se):
        if not (np.isfinite(e) and np.isfinite(s)):
            continue
        x = np.array([e - 2 * s, e, e + 2 * s])
        mx = np.max(np.abs(x))
        if mx == 0:
            continue
        z = np.array([x.min(), x.max()]) / mx
        dz = np.round(z[1] - z[0], 8)
        if dz <= 0:
            continue
        best = max(best, int(np.floor(1.51 - np.log10(dz) + 0.5)))
    return best


def print_summary(cols: dict, by_vars, notes) -> str:
    """Lay out a table as emmeans' ``print.summary_emm``: numbers zapped, df rounded to
    2 decimals, test statistics to 3, p-values to 4 (``<.0001``), SE to 3 significant
    digits and the rest to the digits the intervals need (at least 3)."""
    est = se = None
    for kind, v in cols.values():
        if kind == "est":
            est = _zapsmall(np.asarray(v, float))
        elif kind == "se":
            se = _signif(_zapsmall(np.asarray(v, float)), 3)
    digits = _opt_digits(est, se) if est is not None and se is not None else 4
    text = {}
    for name, (kind, v) in cols.items():
        if kind == "L":
            text[name] = list(v)
            continue
        x = _zapsmall(np.asarray(v, float))
        if kind == "est":
            s = r_format(x, digits)
            s = ["nonEst" if np.isnan(a) else b for a, b in zip(x, s)]
        elif kind == "se":
            s = r_format(se, digits)
        elif kind == "df":
            s = r_format(np.round(x, 2), digits)
        elif kind == "stat":
            s = r_format(np.round(x, 3), 7, nsmall=3)
        elif kind == "p":
            s = r_format(np.round(x, 4), 7, nsmall=4)
            s = ["<.0001" if a < 1e-4 else b for a, b in zip(x, s)]
        else:
            s = r_format(x, digits)
        text[name] = s
    widths = {n: max([len(n)] + [len(a) for a in s]) for n, s in text.items()}
    left = {n for n, (kind, _) in cols.items() if kind == "L"}

    def cell(n, a):
        return a.ljust(widths[n]) if n in left else a.rjust(widths[n])

    shown = [n for n in cols if n not in by_vars]
    header = " " + " ".join(cell(n, n) for n in shown)
    nrow = len(next(iter(text.values())))
    lines = []
    if by_vars:
        groups = []
        for i in range(nrow):
            key = ", ".join(f"{v} = {text[v][i].strip()}" for v in by_vars)
            if key not in groups:
                groups.append(key)
        for key in groups:
            lines.append(f"{key}:")
            lines.append(header)
            for i in range(nrow):
                if ", ".join(f"{v} = {text[v][i].strip()}" for v in by_vars) == key:
                    lines.append(" " + " ".join(cell(n, text[n][i]) for n in shown))
            lines.append("")
    else:
        lines.append(header)
        for i in range(nrow):
            lines.append(" " + " ".join(cell(n, text[n][i]) for n in shown))
        lines.append("")
    lines += list(notes)
    return "\n".join(lines)
