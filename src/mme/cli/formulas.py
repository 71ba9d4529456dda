"""A formula read from a file or the command line is data, not code.

formulaic evaluates the fixed part of a formula as Python, so a formula such as
``y ~ I(__import__("os").system("rm -rf ~"))`` would run a command. Before any
formula from the command line or a parameter file reaches :func:`mme.fit` it must
pass this allow-list:

* names: the data's columns (also ``trait`` with ``cbind``), and only as
  variables; a name with dots is allowed only when it is a column (``log.y``);
* calls: ``log``, ``exp``, ``sqrt``, ``I``, ``poly``, ``scale``, ``C``, ``cbind``
  (keyword arguments inside them, such as ``poly(x, degree=2)``, are names too);
* numbers, ``TRUE``/``FALSE`` (``True``/``False``) inside calls, and the operators
  ``~ + - * / : | ( ) , ^ ** =``.

Refused: strings, attribute access, subscripts, lambdas, any name with ``__``, a
call of anything else, any other character. The error names the offending piece.
"""
from __future__ import annotations

import re

from .errors import InputError

#: functions a formula may call
ALLOWED_CALLS = frozenset({"log", "exp", "sqrt", "I", "poly", "scale", "C", "cbind"})
#: constants a formula may use (R's and Python's logicals: ``poly(x, 2, raw = TRUE)``)
ALLOWED_CONSTANTS = frozenset({"TRUE", "FALSE", "True", "False"})
#: keyword arguments a call may take
ALLOWED_KEYWORDS = frozenset({"degree", "raw", "center", "scale", "ddof", "levels",
                              "contr", "base"})

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_.][A-Za-z0-9_.]*)
  | (?P<op>\*\*|\|\||[~+\-*/:|(),^=])
""", re.X)


def check_formula(formula: str, columns) -> None:
    """Raise :class:`InputError` unless ``formula`` passes the allow-list.

    Parameters
    ----------
    formula : str
    columns : iterable of str
        The data's column names.
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise InputError(f"formula {formula!r}: expected 'response ~ terms'")
    cols = set(map(str, columns))
    if "cbind" in formula:
        cols.add("trait")
    dunder = re.search(r"[A-Za-z0-9_.]*__[A-Za-z0-9_.]*", formula)
    if dunder:
        raise InputError(f"formula {formula!r}: {dunder.group()!r} is not allowed (no dunder "
                         "names in a formula)")
    tokens, pos = [], 0
    while pos < len(formula):
        m = _TOKEN.match(formula, pos)
        if m is None:
            bad = formula[pos]
            what = "strings" if bad in "'\"" else f"the character {bad!r}"
            raise InputError(f"formula {formula!r}: {what} not allowed here "
                             f"(at {formula[pos:pos + 20]!r})")
        if m.lastgroup != "space":
            tokens.append((m.lastgroup, m.group()))
        pos = m.end()
    depth = 0
    for i, (kind, text) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "op":
            depth += text == "("
            depth -= text == ")"
            if depth < 0:
                raise InputError(f"formula {formula!r}: unbalanced ')'")
            continue
        if kind != "name":
            continue
        if "__" in text:
            raise InputError(f"formula {formula!r}: {text!r} is not allowed (no dunder "
                             "names in a formula)")
        if nxt == "(":
            if text not in ALLOWED_CALLS:
                raise InputError(f"formula {formula!r}: the call {text}(...) is not allowed "
                                 f"(allowed: {', '.join(sorted(ALLOWED_CALLS))})")
        elif nxt == "=" and depth > 0:
            if text not in ALLOWED_KEYWORDS:
                raise InputError(f"formula {formula!r}: the keyword {text}= is not allowed")
        elif text not in cols and not (text in ALLOWED_CONSTANTS and depth > 0):
            if "." in text.strip(".") and text.split(".")[0] in cols | ALLOWED_CALLS:
                raise InputError(f"formula {formula!r}: attribute access {text!r} is not "
                                 "allowed")
            raise InputError(f"formula {formula!r}: {text!r} is not a column of the data "
                             f"(columns: {', '.join(sorted(cols))})")
    if depth:
        raise InputError(f"formula {formula!r}: unbalanced '('")
