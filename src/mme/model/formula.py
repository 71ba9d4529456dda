"""lme4 model formulas: split ``y ~ fixed + (expr | group)`` into its parts.

The fixed part is handed to formulaic (R's model-matrix rules); this module only
finds the random-effects terms, expands ``a/b`` nesting and ``||`` (uncorrelated)
terms the way lme4 does, and keeps the names lme4 prints.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .._errors import FormulaError
from .rsyntax import to_python

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(expr | group)``.

    Attributes
    ----------
    expr : str
        The term's model formula, e.g. ``"1"``, ``"1 + Days"``, ``"0 + Days"``.
    factors : tuple of str
        Grouping columns; more than one means their interaction (``a:b``).
    """

    expr: str
    factors: tuple

    @property
    def group(self) -> str:
        """lme4's name of the grouping factor (``"cask:batch"``)."""
        return ":".join(self.factors)


@dataclass(frozen=True)
class ModelFormula:
    """A parsed lme4 formula: response, fixed-effects formula and random terms."""

    response: str
    fixed: str
    random: tuple
    #: the response columns: ``("y",)``, or for ``cbind(y1, y2) ~ …`` ``("y1", "y2")``
    responses: tuple = ()

    @property
    def multi_response(self) -> bool:
        return len(self.responses) > 1

    @property
    def text(self) -> str:
        rnd = " + ".join(f"({t.expr} | {t.group})" for t in self.random)
        return f"{self.response} ~ {self.fixed}" + (f" + {rnd}" if rnd else "")


def _split_top(text: str, sep: str) -> list:
    """Split ``text`` on ``sep`` outside parentheses."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"unbalanced ')' in {text!r}")
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    if depth != 0:
        raise FormulaError(f"unbalanced '(' in {text!r}")
    parts.append(text[start:])
    return parts


def _group_factors(group: str, formula: str) -> list:
    """``a`` → [(a,)]; ``a:b`` → [(a, b)]; ``a/b`` → [(b, a), (a,)] as lme4 names them."""
    group = group.strip()
    if "/" in group:
        outer, inner = (g.strip() for g in group.split("/", 1))
        outer_f = tuple(f.strip() for f in outer.split(":"))
        inner_terms = _group_factors(inner, formula)
        # lme4: (1|a/b) == (1|b:a) + (1|a); deeper nesting recurses on the inner part.
        return [t + outer_f for t in inner_terms] + [outer_f]
    factors = tuple(f.strip() for f in group.split(":"))
    for f in factors:
        if not _NAME.match(f):
            raise FormulaError(f"grouping factor {f!r} in {formula!r} must be a column name")
    return [factors]


def _expr_terms(expr: str) -> tuple:
    """Split a random-term expression into (has_intercept, [slope terms])."""
    terms = [t.strip() for t in _split_top(expr.replace("-", "+-"), "+") if t.strip()]
    intercept = True
    slopes = []
    for t in terms:
        if t in ("1", "+1"):
            intercept = True
        elif t in ("0", "-1"):
            intercept = False
        elif t.startswith("-"):
            raise FormulaError(f"cannot remove {t[1:]!r} in random term ({expr} | ...)")
        else:
            slopes.append(t)
    return intercept, slopes


_CBIND = re.compile(r"^cbind\s*\((.*)\)$", re.S)


def _responses(lhs: str) -> tuple:
    """``y`` → ("y",); ``cbind(y1, y2)`` → ("y1", "y2") (column names only)."""
    m = _CBIND.match(lhs)
    if not m:
        return (lhs,)
    names = tuple(x.strip() for x in m.group(1).split(","))
    bad = [x for x in names if not _NAME.match(x)]
    if bad or len(names) < 2:
        raise FormulaError(f"cbind() needs two or more response column names, got {lhs!r}")
    if len(set(names)) < len(names):
        raise FormulaError(f"cbind() repeats a response: {lhs!r}")
    return names


def _check_repeated(random: list, formula: str) -> None:
    """A random effect in two terms of one grouping factor (``(1|id) + (1|id)``, or
    ``(1|a/b) + (1|a)``) is not identifiable: a FormulaError naming it."""
    seen = {}
    for t in random:
        intercept, slopes = _expr_terms(t.expr)
        key_group = frozenset(t.factors)
        for col in (["1"] if intercept else []) + [re.sub(r"\s+", "", x) for x in slopes]:
            key = (key_group, col)
            if key in seen:
                what = "intercept" if col == "1" else f"slope {col!r}"
                raise FormulaError(
                    f"the random {what} of {t.group!r} appears twice in {formula!r} (terms "
                    f"({seen[key].expr} | {seen[key].group}) and ({t.expr} | {t.group})): its "
                    "variance would not be identifiable; keep one")
            seen[key] = t


def parse_formula(formula: str) -> ModelFormula:
    """Parse an lme4 formula.

    Examples
    --------
    >>> f = parse_formula("y ~ trt + (1 | block) + (Days || Subject)")
    >>> f.fixed, [(t.expr, t.group) for t in f.random]
    ('trt', [('1', 'block'), ('1', 'Subject'), ('0 + Days', 'Subject')])
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise FormulaError(f"a formula 'response ~ terms' is required, got {formula!r}")
    lhs, rhs = formula.split("~", 1)
    response = lhs.strip()
    if not response:
        raise FormulaError(f"formula {formula!r} has no response")
    if rhs.strip().endswith("+") or not rhs.strip():
        raise FormulaError(f"formula {formula!r} ends without a term after '~' or '+'")
    # R's arithmetic inside calls (I(x^2), poly(x, 2, raw = TRUE)) as formulaic reads it
    rhs = to_python(rhs)
    responses = _responses(response)
    fixed_parts, random = [], []
    for raw in _split_top(rhs, "+"):
        part = raw.strip()
        if not part:
            continue
        inner = part[1:-1] if part.startswith("(") and part.endswith(")") else None
        if inner is not None and "|" in inner and len(_split_top(inner, "|")) > 1:
            bits = _split_top(inner, "||")
            double = len(bits) == 2
            if not double:
                bits = _split_top(inner, "|")
            if len(bits) != 2:
                raise FormulaError(f"cannot read random term {part!r}")
            expr, group = bits[0].strip(), bits[1].strip()
            if not expr:
                raise FormulaError(f"random term {part!r} has no left-hand side (use 1)")
            for factors in _group_factors(group, formula):
                if double:
                    intercept, slopes = _expr_terms(expr)
                    if intercept:
                        random.append(RandomTerm("1", factors))
                    random.extend(RandomTerm(f"0 + {s}", factors) for s in slopes)
                else:
                    random.append(RandomTerm(expr, factors))
        else:
            fixed_parts.append(part)
    _check_repeated(random, formula)
    fixed = " + ".join(fixed_parts)
    # A leading "- 1" or "0" alone still needs something for formulaic to parse.
    if not fixed:
        fixed = "1"
    elif fixed.startswith("-"):
        fixed = "1 " + fixed
    return ModelFormula(response=response, fixed=fixed, random=tuple(random),
                        responses=responses)
