"""Confidence intervals of a fit's parameters, as lme4's ``confint.merMod``.

``Fit.confint(parm=None, level=0.95, method="profile", nsim=500, seed=None,
df_method=None, tidy=False)``:

- rows: lme4's parameter names with ``oldNames = FALSE`` — ``sd_<term>|<group>``,
  ``cor_<term_i>.<term_j>|<group>``, ``sigma`` (random terms in lme4's order), then the
  fixed effects; a model without random terms has the fixed effects only (R's
  ``confint(lm)``).
- columns: R's ``"2.5 %"``, ``"97.5 %"`` (``format_perc``); ``tidy=True`` gives
  ``estimate, lower, upper`` instead (the fit's own estimates: SDs, correlations, σ
  and β̂; ``attrs`` hold ``method`` and ``level``).

Methods:

- ``"profile"`` (lme4's default): likelihood-profile intervals of the ML deviance
  (``inference.profile``; lme4 profiles the ML refit of a REML fit, so does mme).
- ``"Wald"``: lme4's — β̂ ± z·SE for the fixed effects, NaN for the variance
  parameters. ``df_method=`` ("satterthwaite", "kenward-roger", "residual",
  "asymptotic") replaces z by t quantiles with those df (and Kenward–Roger's adjusted
  SE); a model without random terms gets t(n − p) by default, as ``confint(lm)``.
- ``"boot"``: percentile intervals of a parametric bootstrap (``inference.bootstrap``),
  ``nsim`` replicates from ``numpy.random.default_rng(seed)``; quantiles by
  ``numpy.nanquantile`` (linear interpolation; ``boot.ci``'s "perc" interpolates order
  statistics on the normal scale: the two differ by O(1/nsim)).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .._errors import OptionError, UnknownTermError
from .profile import check_profilable, lme4_parameters, profile_intervals, sdcor_of_theta

__all__ = ["confint", "format_perc", "parameter_names"]

METHODS = {"profile": "profile", "wald": "Wald", "boot": "boot"}


def format_perc(probs, digits: int = 3) -> list:
    """R's ``format.perc``: ``paste(format(100 * probs, trim = TRUE, scientific = FALSE,
    digits = digits), "%")`` — one common number of decimals, the fewest that shows
    every value with ``digits`` significant digits (2.5 → "2.5 %", 5 → "5 %")."""
    vals = [100.0 * float(p) for p in probs]
    decimals = 0
    for v in vals:
        s = f"{v:.{digits}g}"
        if "e" in s:
            s = f"{float(s):f}".rstrip("0")
        if "." in s:
            decimals = max(decimals, len(s.split(".")[1].rstrip("0")))
    return [f"{v:.{decimals}f} %" for v in vals]


def parameter_names(fit) -> list:
    """The rows of ``confint``: variance parameters (lme4's names), then fixed effects."""
    mme = fit.internals.mme
    vn = [q.name for q in lme4_parameters(mme)] if mme.structures else []
    return vn + list(fit.fixed_names)


def _estimates(fit) -> pd.Series:
    """The fit's estimates on lme4's scale (SD, correlation, σ, β̂), by parameter name."""
    mme = fit.internals.mme
    vals = []
    if mme.structures:
        params = lme4_parameters(mme)
        if mme.residual.is_scalar:
            vals = list(sdcor_of_theta(mme, params, fit.internals.theta_reported))
        else:
            vals = [np.nan] * len(params)
    return pd.Series(vals + list(fit.beta), index=parameter_names(fit), dtype=float)


def _select(fit, parm) -> list:
    names = parameter_names(fit)
    if parm is None:
        return names
    nv = len(names) - len(fit.fixed_names)
    if isinstance(parm, str):
        if parm == "theta_":
            return names[:nv]
        if parm == "beta_":
            return names[nv:]
        parm = [parm]
    out = []
    for p in parm:
        if p not in names:
            raise UnknownTermError(f"confint: no parameter {p!r} (the parameters: {names}; "
                                   "'theta_' or 'beta_' select all variance or fixed ones)")
        out.append(p)
    return out


def _wald(fit, names: list, level: float, df_method) -> dict:
    """{name: (lower, upper)}: fixed effects β̂ ± q·SE, variance parameters NaN."""
    from .anova import resolve_df_method, wald
    a = 0.5 * (1.0 + level)
    p = len(fit.beta)
    mme = fit.internals.mme
    fixed_only = not mme.structures and mme.residual.is_scalar
    if df_method is None and fixed_only:
        df_method = "residual"
    out = {n: (np.nan, np.nan) for n in names}
    if not p:
        return out
    if df_method is None:
        est = np.asarray(fit.beta, float)
        se = np.sqrt(np.diag(fit.vcov_beta))
        q = np.full(p, stats.norm.ppf(a))
    else:
        method = resolve_df_method(fit, df_method)
        est, se, df = wald(fit, np.eye(p), method)
        q = np.where(np.isfinite(df), stats.t.ppf(a, np.where(np.isfinite(df), df, 1.0)),
                     stats.norm.ppf(a))
    for j, n in enumerate(fit.fixed_names):
        if n in out:
            out[n] = (est[j] - q[j] * se[j], est[j] + q[j] * se[j])
    return out


def confint(fit, parm=None, level: float = 0.95, method: str = "profile", nsim: int = 500,
            seed=None, df_method=None, tidy: bool = False) -> pd.DataFrame:
    """Confidence intervals as lme4's ``confint(merMod, parm, level, method, nsim)``;
    see the module docstring. ``parm``: None (all), a name, a list of names, or lme4's
    ``"theta_"`` / ``"beta_"``."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) \
            or not 0 < level < 1:
        raise OptionError(f"level must be a number in (0, 1), got {level!r}")
    key = str(method).lower()
    if key not in METHODS:
        raise OptionError(f"method must be 'profile', 'Wald' or 'boot', got {method!r}")
    method = METHODS[key]
    if df_method is not None and method != "Wald":
        raise OptionError(f"df_method={df_method!r} applies to method='Wald' only "
                          f"(t quantiles), not to method={method!r}")
    names = _select(fit, parm)
    mme = fit.internals.mme
    if not mme.structures and mme.residual.is_scalar and method != "Wald":
        check_profilable(fit, method)       # raises: no random term
    attrs = {"method": method, "level": float(level)}
    if method == "Wald":
        lim = _wald(fit, names, level, df_method)
        attrs["df_method"] = df_method or ("residual" if not mme.structures else "asymptotic")
    elif method == "profile":
        lim = profile_intervals(fit, names, level)
        attrs["criterion"] = "ML"
    else:
        from .bootstrap import parametric_bootstrap
        reps = parametric_bootstrap(fit, nsim, seed)
        a = 0.5 * (1.0 - level)
        qs = np.nanquantile(reps[names].to_numpy(), [a, 1.0 - a], axis=0)
        lim = {n: (qs[0, i], qs[1, i]) for i, n in enumerate(names)}
        attrs.update(nsim=int(nsim), seed=seed, n_failed=int(reps.attrs["n_failed"]))
    lower = np.array([lim[n][0] for n in names], float)
    upper = np.array([lim[n][1] for n in names], float)
    if tidy:
        est = _estimates(fit)
        out = pd.DataFrame({"estimate": est[names].to_numpy(), "lower": lower, "upper": upper},
                           index=pd.Index(names, name="parameter"))
    else:
        a = 0.5 * (1.0 - level)
        cols = format_perc([a, 1.0 - a])
        out = pd.DataFrame({cols[0]: lower, cols[1]: upper}, index=pd.Index(names))
    out.attrs.update(attrs)
    return out
