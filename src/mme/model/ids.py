"""Identifiers as the package compares them: pedigree ids, grouping levels, marker ids.

A data column of animal ids may be read as int, float (a column with NA) or str;
``normalize_ids`` maps all three to the same strings (``12``, ``12.0`` and ``"12"``
compare equal), and ``id_keys`` gives fast comparable keys of one id column (int64
when every id is integral, else normalised strings).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .._errors import PedigreeError

__all__ = ["normalize_ids", "id_keys", "int_strings"]


def _normalize_array(values) -> tuple[np.ndarray, np.ndarray]:
    """(object array of normalised strings, boolean mask of None/NaN)."""
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object)
                                                                if not hasattr(values, "dtype")
                                                                else values)
    s = s.reset_index(drop=True)
    n = len(s)
    na = s.isna().to_numpy()
    out = np.empty(n, dtype=object)
    dt = s.dtype
    ok = ~na
    if pd.api.types.is_bool_dtype(dt):
        raise PedigreeError("ids must be integers or strings, not booleans")
    if pd.api.types.is_integer_dtype(dt):
        out[ok] = s[ok].to_numpy(np.int64).astype(str).astype(object)
    elif pd.api.types.is_float_dtype(dt):
        out[ok] = _float_strings(s[ok].to_numpy(np.float64))
    else:
        v = s[ok].to_numpy(object)
        res = _str_fast(v)
        if res is None:
            res = _str_slow(v)
        out[ok] = res
    return out, na


_ASCII_SPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.strip() strips, in ASCII
_EDGE_SPACE = re.compile(r"(?:^|\x00)[^\S\x00]|[^\S\x00](?:\x00|$)")


def _str_fast(v: np.ndarray):
    """All-str object array without surrounding white space: v itself; else None.

    One C-level join and one regex scan instead of a Python call per element.
    """
    try:
        joined = "\x00".join(v.tolist())
    except TypeError:  # some element is not a str
        return None
    if joined.isascii():  # O(1) in CPython; then a few substring scans suffice
        for w in _ASCII_SPACE:
            if (joined.startswith(w) or joined.endswith(w) or ("\x00" + w) in joined
                    or (w + "\x00") in joined):
                return None
    elif _EDGE_SPACE.search(joined):
        return None
    return v


def _str_slow(v: np.ndarray) -> np.ndarray:
    conv = np.empty(len(v), dtype=object)
    for t, x in enumerate(v.tolist()):
        if isinstance(x, str):
            conv[t] = x.strip()
        elif isinstance(x, (bool, np.bool_)):
            raise PedigreeError(f"ids must be integers or strings, not booleans ({x!r})")
        elif isinstance(x, (int, np.integer)):
            conv[t] = str(int(x))
        elif isinstance(x, (float, np.floating)):
            conv[t] = _float_strings(np.array([x], dtype=np.float64))[0]
        elif isinstance(x, bytes):
            conv[t] = x.decode().strip()
        else:
            conv[t] = str(x).strip()
    return conv


def _float_strings(v: np.ndarray) -> np.ndarray:
    out = v.astype(str).astype(object)
    integral = np.isfinite(v) & (v == np.floor(v)) & (np.abs(v) < 2.0**63)
    out[integral] = v[integral].astype(np.int64).astype(str).astype(object)
    return out


def normalize_ids(values) -> np.ndarray:
    """Normalise ids to the strings a :class:`Pedigree` compares.

    Parameters
    ----------
    values : scalar or array-like of int, float or str.

    Returns
    -------
    numpy.ndarray of object (str); None where the input is None/NaN.
    A scalar input gives a 0-d result's item (a str or None).
    """
    if np.ndim(values) == 0 and not isinstance(values, (pd.Series, pd.Index, np.ndarray)):
        out, na = _normalize_array([values])
        return None if na[0] else out[0]
    out, na = _normalize_array(values)
    out[na] = None
    return out


def int_strings(a: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), dtype=object)
    out[:] = list(map(str, np.asarray(a).tolist()))
    return out


def id_keys(values, missing):
    """Comparable keys of one id column: (keys, missing mask, kind).

    kind "int": int64 keys (the column is integer, or float with integral
    values), equal exactly when their decimal strings are; kind "str":
    normalised strings (object array). Missing entries hold arbitrary keys.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(
        values if hasattr(values, "dtype") else np.asarray(values, dtype=object))
    dt = s.dtype
    tokens = [str(t).strip() for t in (missing or ()) if t is not None
              and not (isinstance(t, float) and np.isnan(t))]
    if not pd.api.types.is_bool_dtype(dt) and (pd.api.types.is_integer_dtype(dt)
                                               or pd.api.types.is_float_dtype(dt)):
        na = s.isna().to_numpy()
        v = s.to_numpy(dtype=np.float64 if pd.api.types.is_float_dtype(dt) else np.int64,
                       na_value=0)
        if v.dtype == np.float64:
            ok = ~na
            integral = np.isfinite(v) & (v == np.floor(v)) & (np.abs(v) < 2.0**53)
            if not integral[ok].all():
                v = None  # genuine non-integral floats: fall back to strings
            else:
                v = np.where(ok, v, 0).astype(np.int64)
        if v is not None:
            miss = na.copy()
            for t in tokens:
                try:
                    iv = int(t)
                except ValueError:
                    continue
                if str(iv) == t:
                    miss |= v == iv
            return v, miss, "int"
    strings, na = _normalize_array(s)
    return strings, na, "str"  # missing tokens are matched later, on the codes
