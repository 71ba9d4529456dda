"""Printing numbers and tables as R does, for ``print(EMMeans)`` / ``print(Contrasts)``.

Reproduces

- R's ``format(x, digits=, nsmall=)`` for a numeric vector in fixed notation
  (:func:`r_format`): one number of decimals for the whole vector, the fewest that
  show every element to ``digits`` significant digits, at least ``nsmall``; NA and
  Inf written as R writes them;
- R's ``zapsmall`` and ``signif`` (``_zapsmall``, ``_signif``);
- emmeans' ``print.summary_emm`` (:func:`print_summary`): estimates and confidence
  limits to the digits that ``.opt.dig`` finds the intervals need (``_opt_digits``,
  at least 3) — the SE column too, formatted as a whole (0.1009 beside 0.0973), df to
  2 decimals, t/z ratios to 3,
  p-values to 4 (``<.0001``), factor columns left-aligned, one block per ``by``
  group, then the notes.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["r_format", "print_summary"]


def _round1(x: float, dig: int) -> float:
    """R's (≥ 4.0.0) ``round(x, dig)`` for one finite double: of the two decimals with
    ``dig`` places around x, the one nearer in double arithmetic, ties to even (checked
    against R 4.2.2 on 10 000 values, half of them decimal ties)."""
    if x == 0.0 or dig > 15:
        return x
    sgn = -1.0 if x < 0 else 1.0
    x = abs(x)
    p = 10.0 ** dig
    x10 = p * x
    i10 = math.floor(x10)
    xd, xu = i10 / p, math.ceil(x10) / p
    du, dd = xu - x, x - xd
    return sgn * (xu if (du < dd or (du == dd and i10 % 2 == 1)) else xd) + 0.0


def _round(x, digits: int) -> np.ndarray:
    """R's ``round(x, digits)`` elementwise (``np.round`` scales by 10^digits and rounds
    -3.1115 to -3.112, where R gives -3.111; R prints a rounded -0 as 0)."""
    x = np.array(x, dtype=float)
    flat = x.reshape(-1)
    for i, v in enumerate(flat):
        if np.isfinite(v):
            flat[i] = _round1(float(v), int(digits)) + 0.0
    return x


def _zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest finite |x|."""
    fin = np.isfinite(x)
    if not fin.any():
        return x
    mx = np.max(np.abs(x[fin]))
    if mx > 0:
        return _round(x, max(0, digits - int(np.ceil(np.log10(mx)))))
    return _round(x, digits)


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
    2 decimals, test statistics to 3, p-values to 4 (``<.0001``), and the estimates, SE
    and limits to the digits the intervals need (at least 3), as R's ``format``."""
    est = se = None
    for kind, v in cols.values():
        if kind == "est":
            est = _zapsmall(np.asarray(v, float))
        elif kind == "se":
            se = _zapsmall(np.asarray(v, float))
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
            s = r_format(_round(x, 2), digits)
        elif kind == "stat":
            s = r_format(_round(x, 3), 7, nsmall=3)
        elif kind == "p":
            s = r_format(_round(x, 4), 7, nsmall=4)
            s = ["<.0001" if b == "0.0000" else b for b in s]
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
