"""R's expression syntax inside model formulas, and R's names of model-matrix columns.

formulaic (the model-matrix engine) evaluates the arguments of a call in a formula —
``I(x^2)``, ``poly(x, 2, raw = TRUE)``, ``log(x + 1)`` — as Python. Two things differ
from R there, and this module bridges them both ways:

* ``to_python(text)``: inside a call, R's ``^`` is Python's ``**`` (``^`` is ``xor``),
  ``%%`` and ``%/%`` are ``%`` and ``//``, and ``TRUE``/``FALSE`` are ``True``/``False``. Outside calls nothing changes: there
  ``^`` is the formula operator ``(a + b)^2`` in both.
* ``r_column_name(name)``: formulaic names a column by its own rendering of the Python
  expression (``I(x ** 2)``, ``poly(x, 2, raw=True)[0]``, ``a[T.b]:c``); R names it by
  deparsing the call (``I(x^2)``, ``poly(x, 2, raw = TRUE)1``, ``ab:c``). formulaic
  numbers the columns of a raw polynomial from 0 and of an orthogonal one from 1; R
  numbers both from 1 (``poly(x, 2)1``, ``poly(x, 2)2``).
"""
from __future__ import annotations

import ast
import re

__all__ = ["to_python", "r_deparse", "r_column_name", "r_term_name"]

_WORD = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
_R_CONSTANTS = {"TRUE": "True", "FALSE": "False"}


def to_python(text: str) -> str:
    """R syntax inside the calls of a formula → Python (``^`` → ``**``, TRUE/FALSE).

    >>> to_python("y ~ a*b + I(x^2) + poly(x, 2, raw = TRUE) + (a + b)^2")
    'y ~ a*b + I(x**2) + poly(x, 2, raw = True) + (a + b)^2'
    """
    out, depth_calls, i, n = [], [], 0, len(text)
    # depth_calls: for each open parenthesis, whether it opened a call's arguments
    while i < n:
        c = text[i]
        if c in "'\"`":
            # a quoted string or name: copied as it is
            j = text.find(c, i + 1)
            j = n - 1 if j < 0 else j
            out.append(text[i:j + 1])
            i = j + 1
            continue
        m = _WORD.match(text, i) if (c.isalpha() or c in "_.") else None
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_.")):
            word = m.group(0)
            in_call = any(depth_calls)
            out.append(_R_CONSTANTS.get(word, word) if in_call else word)
            i = m.end()
            continue
        if c == "(":
            prev = "".join(out).rstrip()
            depth_calls.append(bool(prev) and (prev[-1].isalnum() or prev[-1] in "_."))
        elif c == ")":
            if depth_calls:
                depth_calls.pop()
        elif c == "^" and any(depth_calls):
            out.append("**")
            i += 1
            continue
        elif c == "%" and any(depth_calls):
            # R's %% (remainder) and %/% (integer division)
            for r_op, py_op in (("%/%", "//"), ("%%", "%")):
                if text.startswith(r_op, i):
                    out.append(py_op)
                    i += len(r_op)
                    break
            else:
                out.append(c)
                i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


# -- Python expression (as formulaic renders it) → R's deparse -----------------------
_BINOPS = {ast.Add: ("+", 4), ast.Sub: ("-", 4), ast.Mult: ("*", 5), ast.Div: ("/", 5),
           ast.Mod: ("%%", 6), ast.FloorDiv: ("%/%", 6), ast.Pow: ("^", 8)}
_TIGHT = {"/", "^", "%%", "%/%"}
_CMPOPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
           ast.GtE: ">="}


def _number(v) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _deparse(node, parent: int = 0) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant):
        return _number(node.value) if not isinstance(node.value, str) else f'"{node.value}"'
    if isinstance(node, ast.Attribute):
        return f"{_deparse(node.value, 10)}${node.attr}"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        s = ("-" if isinstance(node.op, ast.USub) else "+") + _deparse(node.operand, 7)
        return f"({s})" if parent > 7 else s
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return "!" + _deparse(node.operand, 7)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op, prec = _BINOPS[type(node.op)]
        right_assoc = op == "^"
        left = _deparse(node.left, prec + (1 if right_assoc else 0))
        # R writes a signed exponent without parentheses: 2^-x
        right = _deparse(node.right, 0 if right_assoc and isinstance(node.right, ast.UnaryOp)
                         else prec + (0 if right_assoc else 1))
        # R's deparse: spaces around + - *, none around / ^ %% %/%
        s = f"{left}{op}{right}" if op in _TIGHT else f"{left} {op} {right}"
        return f"({s})" if prec < parent else s
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
        s = (f"{_deparse(node.left, 4)} {_CMPOPS[type(node.ops[0])]} "
             f"{_deparse(node.comparators[0], 4)}")
        return f"({s})" if parent > 3 else s
    if isinstance(node, ast.Call):
        args = [_deparse(a) for a in node.args]
        args += [f"{k.arg} = {_deparse(k.value)}" for k in node.keywords]
        return f"{_deparse(node.func, 10)}({', '.join(args)})"
    raise ValueError("not an R expression")


def r_deparse(expr: str) -> str:
    """R's deparse of a Python expression as formulaic renders it (unchanged if it is not
    one that R writes differently).

    >>> r_deparse("I(x ** 2)"), r_deparse("poly(x, 2, raw=True)"), r_deparse("log(x + 1)")
    ('I(x^2)', 'poly(x, 2, raw = TRUE)', 'log(x + 1)')
    """
    try:
        return _deparse(ast.parse(expr.strip(), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError):
        return expr


def _split_colon(name: str) -> list:
    """Split an interaction column name on ':' outside brackets and parentheses."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(name):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == ":" and depth == 0:
            parts.append(name[start:i])
            start = i + 1
    parts.append(name[start:])
    return parts


_LEVEL = re.compile(r"^(?P<expr>.*?)\[(?:T\.)?(?P<level>[^\[\]]*)\]$", re.S)


def _raw_poly(node) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "poly"
            and any(k.arg == "raw" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords))


def _part_name(part: str) -> str:
    m = _LEVEL.match(part)
    expr, level = (m["expr"], m["level"]) if m else (part, None)
    if "(" not in expr:
        # a plain column or a factor level: a[T.b] → ab (R's treatment-contrast names)
        return expr + (level or "") if m else re.sub(r"\[(?:T\.)?(.*?)\]", r"\1", part)
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        return re.sub(r"\[(?:T\.)?(.*?)\]", r"\1", part)
    r = r_deparse(expr)
    if level is None:
        return r
    if _raw_poly(node) and level.isdigit():
        level = str(int(level) + 1)           # formulaic: 0, 1, …; R: 1, 2, …
    return r + level


def r_column_name(name: str) -> str:
    """formulaic column name → R's: ``Intercept`` → ``(Intercept)``, ``a[T.b]:c[d]`` →
    ``ab:cd``, ``I(x ** 2)`` → ``I(x^2)``, ``poly(x, 2, raw=True)[0]`` →
    ``poly(x, 2, raw = TRUE)1``."""
    if name == "Intercept":
        return "(Intercept)"
    return ":".join(_part_name(p) for p in _split_colon(name))


def r_term_name(term: str) -> str:
    """A formulaic term (``K2O_lbac:I(x ** 2)``) as R labels it (``K2O_lbac:I(x^2)``)."""
    return ":".join(r_deparse(p) for p in _split_colon(term))
