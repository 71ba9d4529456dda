"""Plots of a fitted model (matplotlib, an optional extra: ``pip install mme[plot]``).

- :func:`marginal_covariance`: V = ZGZ' + R of chosen rows as an image — the block
  pattern shows which observations the random terms make covariant.
- :func:`caterpillar`: BLUPs of one term, sorted, with ± z·√cond_var intervals.
- :func:`field_map`: residuals on the field (rows × columns).
- :func:`variogram`: the residuals' sample semivariogram beside the fitted AR1 ⊗ AR1 one.
- :func:`fa_biplot`: an FA(k) G₀'s rotated loadings (environments, arrows) and the
  genotypes' factor scores (points) on the first two factors.

Each function draws on ``ax`` (a new figure when None) and returns the Axes.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from ._errors import OptionError, UnknownTermError

#: rows drawn by :func:`marginal_covariance` when ``rows`` is None
DEFAULT_ROWS = 60
#: at most this many tick labels per axis
MAX_LABELS = 60


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("mme's plots need matplotlib: pip install mme[plot]") from exc
    return plt


def _new_axes(ax, size):
    if ax is not None:
        return ax
    plt = _pyplot()
    _, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


def _thin_ticks(n: int) -> np.ndarray:
    step = max(1, int(np.ceil(n / MAX_LABELS)))
    return np.arange(0, n, step)


def _default_rows(design) -> np.ndarray:
    """The first DEFAULT_ROWS fitted rows in the order of the first grouping factor's
    levels (a stable sort), so that its blocks appear on the diagonal."""
    n = design.n
    if n <= DEFAULT_ROWS:
        return np.arange(n)
    if design.blocks:
        Z = design.blocks[0].Z.tocsr()
        first_level = np.full(n, np.iinfo(np.int64).max)
        rows = np.repeat(np.arange(n), np.diff(Z.indptr))
        np.minimum.at(first_level, rows, Z.indices % design.blocks[0].n_levels)
        order = np.argsort(first_level, kind="stable")
    else:
        order = np.arange(n)
    return order[:DEFAULT_ROWS]


def _row_labels(design, idx: np.ndarray) -> list:
    """"<row label>: <level|level…>": the data's index and each grouping factor's level."""
    index = design.data.index[idx]
    parts = []
    for b in design.blocks:
        Z = b.Z[idx, :].tocsr()
        lv = np.full(len(idx), "", dtype=object)
        for i in range(len(idx)):
            cols = Z.indices[Z.indptr[i]:Z.indptr[i + 1]]
            if cols.size:
                lv[i] = str(b.levels[cols[0] % b.n_levels])
        parts.append(lv)
    labels = []
    for i, r in enumerate(index):
        lv = "|".join(dict.fromkeys(p[i] for p in parts)) if parts else ""
        labels.append(f"{r}: {lv}" if lv else f"{r}")
    return labels


def marginal_covariance(fit, rows=None, ax=None, cmap=None):
    """Draw V = Σₖ Zₖ Gₖ Zₖ' + σ²ₑ I of chosen fitted rows as an image with a colorbar.

    Parameters
    ----------
    fit : mme.Fit
    rows : positions among the fitted rows (see :func:`mme.inference.marginal.marginal_covariance`)
        None: all rows when there are at most 60, else the first 60 rows in the
        order of the first grouping factor's levels.
    ax : matplotlib Axes, optional
    cmap : str, optional
        Default "Blues" (zero is white) when V ≥ 0, "RdBu_r" centred at 0 otherwise.

    Returns
    -------
    matplotlib Axes. Rows are labelled "<data index>: <level of each grouping factor>".
    """
    from .inference.marginal import row_positions, marginal_covariance as _V

    design = fit.internals.design
    idx = _default_rows(design) if rows is None else row_positions(rows, design.n)
    V = _V(fit, idx).toarray()  # dense-ok: a plot of at most a few hundred rows
    m = len(idx)
    size = float(np.clip(2.5 + 0.12 * m, 4.5, 11.0))
    ax = _new_axes(ax, (size + 1.2, size))
    lo, hi = float(V.min()), float(V.max())
    if lo < -1e-12 * max(abs(hi), 1e-300):   # rounding (−5e-14) is not a negative covariance
        vmax = max(abs(lo), abs(hi))
        img = ax.imshow(V, cmap=cmap or "RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    else:
        img = ax.imshow(V, cmap=cmap or "Blues", vmin=0.0, vmax=hi, interpolation="nearest")
    ax.figure.colorbar(img, ax=ax, shrink=0.8, label="covariance")
    labels = _row_labels(design, idx)
    ticks = _thin_ticks(m)
    fontsize = 7 if m > 30 else 8
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=fontsize)
    ax.set_xticks(ticks, [labels[i] for i in ticks], fontsize=fontsize, rotation=90)
    groups = "|".join(dict.fromkeys(b.group for b in design.blocks))
    ax.set_ylabel(f"row: {groups}" if groups else "row", fontsize=8)
    ax.set_title(f"Marginal covariance V = ZGZ' + R\n{m} of {design.n} rows of {fit.formula}",
                 fontsize=9)
    return ax


def caterpillar(fit, group: str, term: str = "(Intercept)", level: float = 0.95, ax=None):
    """Draw the BLUPs of one random term, sorted, with ± z·√cond_var intervals.

    Parameters
    ----------
    fit : mme.Fit
    group : str
        Grouping factor as named in ``fit.random_effects["group"]`` (``"Subject"``).
    term : str
        ``"(Intercept)"`` or a slope name (``"Days"``).
    level : float
        Coverage of the intervals, z = Φ⁻¹((1 + level)/2). The intervals use
        ``cond_var`` = Var(u | y, β = β̂), as lme4's ``dotplot(ranef(m, condVar=TRUE))``.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes; levels on the y axis (labelled when at most 60), BLUPs on x.
    """
    if not 0.0 < level < 1.0:
        raise OptionError(f"level must be in (0, 1), got {level!r}")
    re = fit.random_effects
    sel = re[(re["group"] == group) & (re["term"] == term)]
    if sel.empty:
        pairs = sorted(set(zip(re["group"], re["term"])))
        raise UnknownTermError(f"no random effects for group {group!r}, term {term!r}; "
                       f"the fit has (group, term) {pairs}")
    sel = sel.sort_values("blup", kind="stable")
    blup = sel["blup"].to_numpy()
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    half = z * np.sqrt(np.maximum(sel["cond_var"].to_numpy(), 0.0))
    n = len(sel)
    ax = _new_axes(ax, (5.5, float(np.clip(1.2 + 0.16 * n, 3.0, 12.0))))
    pos = np.arange(n)
    ax.axvline(0.0, color="0.55", lw=0.8, ls="--", zorder=1)
    ax.errorbar(blup, pos, xerr=half, fmt="o", ms=3.5 if n <= 100 else 2.0, color="C0",
                ecolor="C0", elinewidth=1.0 if n <= 100 else 0.5, capsize=0, zorder=2)
    ticks = _thin_ticks(n) if n <= 4 * MAX_LABELS else np.zeros(0, int)
    levels = [str(v) for v in sel["level"]]
    ax.set_yticks(ticks, [levels[i] for i in ticks], fontsize=8 if n <= 40 else 6)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_ylabel(f"{group} (sorted by BLUP)")
    ax.set_xlabel(f"BLUP ± {z:.2f}·√cond_var  ({level:.0%} intervals)")
    ax.set_title(f"{group}: {term}", fontsize=10)
    ax.grid(axis="x", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    return ax


# -- field trials ------------------------------------------------------------------
def _field_coordinates(fit, col, row, site):
    """(col, row) of the fitted rows (one field: ``site`` level or all), their residuals,
    and the fitted spatial parameters (σ², ρc, ρr) of that field when the fit has them."""
    design = fit.internals.design
    res = design.residual
    if col is None or row is None:
        if res.kind != "ar1ar1":
            raise OptionError("give col= and row= (the plot coordinate columns): the fit has "
                              "no ar1(col):ar1(row) residual to take them from")
        col, row = res.factors
    data = design.data
    for c in (col, row):
        if c not in data.columns:
            raise UnknownTermError(f"no column {c!r} in the fitted data")
    keep = np.ones(len(data), bool)
    k = 0
    if site is not None:
        by = res.by if res.kind == "ar1ar1" else None
        if by is None:
            raise OptionError("site= needs a fit with residual='by(site, ar1(col):ar1(row))'")
        levels = list(res.levels)
        if str(site) not in levels:
            raise UnknownTermError(f"no field {site!r}; fields are {levels}")
        k = levels.index(str(site))
        keep = (data[by].astype(str) == str(site)).to_numpy()
    elif res.kind == "ar1ar1" and len(res.fields) > 1:
        raise OptionError(f"the fit has {len(res.fields)} fields: choose one with site=")
    phi = None
    if res.kind == "ar1ar1":
        _, R0 = fit.internals.mme.split(fit.internals.theta_reported)
        phi = np.reshape(R0, (-1, 3))[k]
    c = data[col].to_numpy(dtype=float)[keep]
    r = data[row].to_numpy(dtype=float)[keep]
    return c, r, fit.residuals().to_numpy()[keep], phi, (col, row)


def field_map(fit, col=None, row=None, site=None, ax=None, cmap="RdBu_r"):
    """The residuals on the field: a rows × columns heat map (empty plots left blank).

    Parameters
    ----------
    fit : mme.Fit
    col, row : str, optional
        Plot coordinate columns (default: those of the fit's ``ar1(col):ar1(row)``).
    site : optional
        The field of a ``by(site, ar1(col):ar1(row))`` fit.
    """
    c, r, e, _, (cn, rn) = _field_coordinates(fit, col, row, site)
    c0, r0 = (c - c.min()).astype(int), (r - r.min()).astype(int)
    grid = np.full((r0.max() + 1, c0.max() + 1), np.nan)
    grid[r0, c0] = e
    ax = _new_axes(ax, (1.5 + 0.35 * grid.shape[1], 1.2 + 0.3 * grid.shape[0]))
    vmax = float(np.nanmax(np.abs(grid)))
    img = ax.imshow(grid, cmap=cmap, vmin=-vmax, vmax=vmax, origin="lower",
                    extent=(c.min() - 0.5, c.max() + 0.5, r.min() - 0.5, r.max() + 0.5),
                    interpolation="nearest")
    ax.figure.colorbar(img, ax=ax, shrink=0.8, label="residual")
    ax.set_xlabel(cn)
    ax.set_ylabel(rn)
    ax.set_title("residuals on the field" + (f" ({site})" if site is not None else ""))
    return ax


def variogram(fit, col=None, row=None, site=None, max_lag=None, axes=None):
    """The sample semivariogram of the residuals beside the fitted one (ASReml's plot).

    Sample: γ̂(hc, hr) = mean of ½(eᵢ − eⱼ)² over plot pairs at column lag hc and row
    lag hr. Fitted (separable AR1): γ(hc, hr) = σ²(1 − ρc^hc ρr^hr). Both are drawn as
    heat maps over the lags (up to ``max_lag`` in each direction, default 10).

    Returns the two Axes.
    """
    c, r, e, phi, (cn, rn) = _field_coordinates(fit, col, row, site)
    L = int(max_lag or 10)
    hc = np.abs(c[:, None] - c[None, :]).astype(int)
    hr = np.abs(r[:, None] - r[None, :]).astype(int)
    d2 = 0.5 * (e[:, None] - e[None, :]) ** 2
    upper = np.triu(np.ones_like(d2, dtype=bool), 1) & (hc <= L) & (hr <= L)
    tot = np.zeros((L + 1, L + 1))
    cnt = np.zeros((L + 1, L + 1))
    np.add.at(tot, (hr[upper], hc[upper]), d2[upper])
    np.add.at(cnt, (hr[upper], hc[upper]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sample = np.where(cnt > 0, tot / cnt, np.nan)
    if axes is None:
        plt = _pyplot()
        _, axes = plt.subplots(1, 2, figsize=(9.5, 4.2), layout="constrained")
    vmax = float(np.nanmax(sample))
    panels = [("sample semivariogram", sample)]
    if phi is not None:
        s2, rc, rr = phi
        i = np.arange(L + 1)
        panels.append(("fitted σ²(1 − ρc^hc ρr^hr)", s2 * (1.0 - np.outer(rr ** i, rc ** i))))
        vmax = max(vmax, float(np.max(panels[1][1])))
    for ax, (title, G) in zip(axes, panels):
        img = ax.imshow(G, origin="lower", cmap="viridis", vmin=0.0, vmax=vmax,
                        interpolation="nearest")
        ax.set_xlabel(f"lag in {cn}")
        ax.set_ylabel(f"lag in {rn}")
        ax.set_title(title)
    axes[-1].figure.colorbar(img, ax=list(axes), shrink=0.8, label="semivariance")
    return axes


def fa_biplot(fit, group: str, ax=None, label_levels: int = 10):
    """Biplot of a factor-analytic term: environments as arrows at their rotated
    loadings on factors 1 and 2, genotypes as points at their predicted factor scores
    (scaled to the arrows' range); the ``label_levels`` most extreme genotypes named."""
    fa = fit.factor_analytic(group)
    R = fa.rotated_loadings.to_numpy()
    if R.shape[1] < 2:
        raise OptionError("a biplot needs fa(k) with k ≥ 2")
    S = fa.scores.to_numpy()[:, :2]
    scale = np.abs(R[:, :2]).max() / max(np.abs(S).max(), 1e-300)
    ax = _new_axes(ax, (6.5, 6.0))
    ax.scatter(S[:, 0] * scale, S[:, 1] * scale, s=12, color="0.5", alpha=0.7,
               label="genotypes (scores)")
    far = np.argsort(-np.hypot(S[:, 0], S[:, 1]))[:label_levels]
    for i in far:
        ax.annotate(str(fa.scores.index[i]), (S[i, 0] * scale, S[i, 1] * scale), fontsize=7,
                    color="0.3")
    for name, (x, y) in zip(fa.rotated_loadings.index, R[:, :2]):
        ax.annotate("", (x, y), (0, 0), arrowprops=dict(arrowstyle="->", color="C3"))
        ax.annotate(str(name), (x, y), color="C3", fontsize=9)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    pct = 100 * (R[:, :2] ** 2).sum(axis=0) / np.trace(fa.G0.to_numpy())
    ax.set_xlabel(f"factor 1 ({pct[0]:.0f}% of the genetic variance)")
    ax.set_ylabel(f"factor 2 ({pct[1]:.0f}%)")
    ax.set_title(f"FA biplot of '{group}': environments (arrows), genotypes (points)")
    return ax
