"""Contrast families of estimated marginal means, as emmeans' ``.emmc`` functions build them.

Each family turns the k level labels of one group of means into a coefficient matrix
K (contrasts × k) with names, and carries what emmeans attaches to it: the default
multiplicity adjustment, the estimate type (``"pairs"`` for pairwise differences, which
is what lets Tukey's method apply) and the family size (the number of means compared).

=================  ==========================================  ==============  ==========
family             contrasts                                   default adjust  names
=================  ==========================================  ==============  ==========
``pairwise``       mᵢ − mⱼ, i < j                              ``tukey``       ``a - b``
``revpairwise``    mⱼ − mᵢ, i < j (ordered by j)               ``tukey``       ``b - a``
``tukey``          ``pairwise`` (``reverse=True``: revpairwise) ``tukey``
``trt.vs.ctrl``    mᵢ − m_ref, ref = 1st level by default      ``dunnettx``    ``b - a``
``trt.vs.ctrlk``   ``trt.vs.ctrl`` with ref = the last level   ``dunnettx``
``dunnett``        ``trt.vs.ctrl``                             ``dunnettx``
``consec``         mᵢ₊₁ − mᵢ                                   ``mvt``         ``b - a``
``mean_chg``       mean after minus mean before each cut       ``mvt``         ``a|b``
``poly``           orthogonal polynomials, integer weights     ``none``        ``linear``…
``eff``            mᵢ − mean of all                            ``fdr``         ``a effect``
``del.eff``        mᵢ − mean of the others                     ``fdr``         ``a effect``
``identity``       each mean itself                            ``none``        the level
=================  ==========================================  ==============  ==========

The defaults are emmeans 1.8.4's (``attr(M, "adjust")`` of each ``.emmc`` function).
``poly`` reproduces ``poly.emmc``: R's ``poly(1:k, degree)`` columns scaled to the
smallest integers emmeans finds (``-2 -1 0 1 2``, ``2 -1 -2 -1 2``, …), at most degree
``min(6, k − 1)``; the levels are taken as equally spaced whatever their values.
"""
from __future__ import annotations

import numpy as np

from .._errors import DataError, OptionError

__all__ = ["Family", "family", "FAMILIES", "poly_coefficients"]

POLY_NAMES = ["linear", "quadratic", "cubic", "quartic"] + [f"degree {d}" for d in range(5, 21)]


class Family:
    """A contrast family for one group of k means.

    Attributes
    ----------
    names : list of str — one per contrast
    coef : ndarray (n_contrasts, k)
    adjust : str — emmeans' default multiplicity adjustment for the family
    est_type : "pairs", "contrast" or "prediction" (weights that do not sum to zero)
    fam_size : int — the number of means in the family (Tukey's k)
    desc : str — emmeans' description
    """

    def __init__(self, names, coef, adjust, est_type, fam_size, desc):
        self.names = list(names)
        self.coef = np.asarray(coef, dtype=float).reshape(len(self.names), -1)
        self.adjust = adjust
        self.est_type = est_type
        self.fam_size = fam_size
        self.desc = desc


def _ref_position(ref, labels, raw) -> list:
    """emmeans' ``.num.key``: a 1-based position, or a level (raw or as labelled)."""
    refs = ref if isinstance(ref, (list, tuple, np.ndarray)) else [ref]
    out = []
    for r in refs:
        if isinstance(r, (int, np.integer)) and not isinstance(r, bool):
            if not 1 <= int(r) <= len(labels):
                raise DataError(f"ref={r!r} is out of range: there are {len(labels)} means "
                                f"(ref is a 1-based position, as in emmeans, or a level)")
            out.append(int(r) - 1)
            continue
        hit = [i for i, (a, b) in enumerate(zip(labels, raw)) if str(r) in (a, b)]
        if not hit:
            raise DataError(f"ref={r!r} is not one of the levels {raw}")
        out.append(hit[0])
    return out


def _pairwise(labels, reverse=False):
    k = len(labels)
    names, K = [], []
    if not reverse:
        pairs = [(i, j) for i in range(k - 1) for j in range(i + 1, k)]
    else:                                  # revpairwise.emmc: i = 2..k, j = 1..i-1
        pairs = [(i, j) for i in range(1, k) for j in range(i)]
    for i, j in pairs:
        w = np.zeros(k)
        w[i], w[j] = 1.0, -1.0
        names.append(f"{labels[i]} - {labels[j]}")
        K.append(w)
    return Family(names, np.array(K).reshape(-1, k), "tukey", "pairs", k, "pairwise differences")


def _trt_vs_ctrl(labels, raw, ref=1, reverse=False):
    k = len(labels)
    refs = _ref_position(ref, labels, raw)
    cname = labels[refs[0]] if len(refs) == 1 else "avg(" + ",".join(labels[r] for r in refs) + ")"
    templ = np.zeros(k)
    templ[refs] = -1.0 / len(refs)
    names, K = [], []
    for i in range(k):
        if i in refs:
            continue
        w = templ.copy()
        w[i] = 1.0
        names.append(f"{cname} - {labels[i]}" if reverse else f"{labels[i]} - {cname}")
        K.append(-w if reverse else w)
    return Family(names, np.array(K).reshape(-1, k), "dunnettx", "contrast", k,
                  "differences from control")


def _consec(labels, reverse=False):
    k = len(labels)
    s = -1.0 if reverse else 1.0
    names, K = [], []
    for i in range(k - 1):
        w = np.zeros(k)
        w[i], w[i + 1] = -s, s
        names.append(f"{labels[i]} - {labels[i + 1]}" if reverse
                     else f"{labels[i + 1]} - {labels[i]}")
        K.append(w)
    return Family(names, np.array(K).reshape(-1, k), "mvt", "contrast", k,
                  "changes between consecutive levels")


def _mean_chg(labels, reverse=False):
    k = len(labels)
    s = -1.0 if reverse else 1.0
    names, K = [], []
    for i in range(1, k):
        K.append(np.r_[np.full(i, -s / i), np.full(k - i, s / (k - i))])
        names.append(f"{labels[i - 1]}|{labels[i]}")
    return Family(names, np.array(K).reshape(-1, k), "mvt", "contrast", k,
                  "mean after minus mean before")


def poly_coefficients(k: int, max_degree: int | None = None) -> np.ndarray:
    """emmeans' ``poly.emmc`` weights (degree × k): R's ``poly(1:k, degree)`` columns
    rescaled to the smallest integers by emmeans' own rule."""
    if max_degree is None:
        max_degree = min(6, k - 1)
    degree = min(20, int(max_degree))
    if k < 2 or degree < 1:
        return np.zeros((0, k))
    if degree > k - 1:
        raise DataError(f"poly contrasts: degree {degree} needs more than {k} levels")
    x = np.arange(1.0, k + 1.0)
    x -= x.mean()
    # poly(): column j is x^j orthogonalised against 1, x, ..., x^(j-1) (unique, signs included)
    V = np.vander(x, degree + 1, increasing=True)
    Q, R = np.linalg.qr(V)
    Z = Q * np.diag(R)
    out = []
    for j in range(1, degree + 1):
        con = Z[:, j] / np.linalg.norm(Z[:, j])
        con = con / con[con > 0.01].min()
        z = np.max(np.abs(con - np.round(con)))
        while z > 0.05:
            con = con / z
            z = np.max(np.abs(con - np.round(con)))
        out.append(np.round(con))
    return np.array(out)


def _poly(labels, max_degree=None):
    K = poly_coefficients(len(labels), max_degree)
    return Family(POLY_NAMES[:len(K)], K, "none", "contrast", len(labels), "polynomial contrasts")


def _eff(labels, delete=False, wts=None):
    k = len(labels)
    w = np.ones(k) if wts is None else np.asarray(wts, dtype=float)
    if w.shape != (k,):
        raise DataError(f"eff contrasts: wts has {w.size} values; there are {k} means")
    w = w / w.sum()
    names, K = [], []
    for i in range(k):
        c = -w.copy()
        c[i] += 1.0
        if delete:
            c = c / c[i]
        names.append(f"{labels[i]} effect")
        K.append(c)
    desc = "differences from mean of others" if delete else "differences from grand mean"
    return Family(names, np.array(K), "fdr", "contrast", k, desc)


def _identity(labels):
    k = len(labels)
    return Family(list(labels), np.eye(k), "none", "prediction", k, "identity")


#: family name → builder(labels, raw, **options)
FAMILIES = {
    "pairwise": lambda lab, raw, reverse=False: _pairwise(lab, reverse),
    "revpairwise": lambda lab, raw: _pairwise(lab, True),
    "tukey": lambda lab, raw, reverse=False: _pairwise(lab, reverse),
    "trt.vs.ctrl": lambda lab, raw, ref=1, reverse=False: _trt_vs_ctrl(lab, raw, ref, reverse),
    "trt.vs.ctrlk": lambda lab, raw, ref=None, reverse=False:
        _trt_vs_ctrl(lab, raw, len(lab) if ref is None else ref, reverse),
    "dunnett": lambda lab, raw, ref=1, reverse=False: _trt_vs_ctrl(lab, raw, ref, reverse),
    "consec": lambda lab, raw, reverse=False: _consec(lab, reverse),
    "mean_chg": lambda lab, raw, reverse=False: _mean_chg(lab, reverse),
    "poly": lambda lab, raw, max_degree=None: _poly(lab, max_degree),
    "eff": lambda lab, raw, wts=None: _eff(lab, False, wts),
    "del.eff": lambda lab, raw, wts=None: _eff(lab, True, wts),
    "identity": lambda lab, raw: _identity(lab),
}


def family(name: str, labels, raw=None, **options) -> Family:
    """The contrast family ``name`` for means labelled ``labels`` (``raw``: the levels
    before emmeans' name prefix, for matching ``ref``); ``options`` are the family's own
    (``ref``, ``reverse``, ``max_degree``, ``wts``)."""
    if name not in FAMILIES:
        raise OptionError(f"unknown contrast method {name!r}; use one of {sorted(FAMILIES)}, "
                         "a dict {name: weights} or a list of weight lists")
    raw = list(labels) if raw is None else list(raw)
    try:
        return FAMILIES[name](list(labels), raw, **options)
    except TypeError as exc:
        raise OptionError(f"contrast method {name!r} does not take the options "
                         f"{sorted(options)}: {exc}") from None
