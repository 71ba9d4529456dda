"""Likelihood-ratio test of nested fits, laid out as lme4's ``anova.merMod``.

The statistic is χ² = 2 (ℓ₁ − ℓ₀) (floored at 0) on the difference in the number
of parameters (fixed effects + variance parameters). REML likelihoods are only
comparable between models with the same fixed effects; when the fixed effects
differ and a fit is REML, both fits are refitted by ML first — as ``anova.merMod``
does — and the table says so in ``.attrs["note"]``. Two REML fits with the same
fixed effects are compared on their REML likelihoods (a test of variance
components; the χ² reference is conservative at the boundary σ² = 0).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from .._errors import DataError

__all__ = ["lrt"]


def _same_fixed(f0, f1) -> bool:
    return tuple(f0.fixed_names) == tuple(f1.fixed_names)


def _relmat_of(fit) -> dict:
    """The fit's relationship matrices as {group: (levels, Kinv, logdet K)} for a refit."""
    out = {}
    for b in fit.internals.design.blocks:
        Kinv = b.Kinv
        ident = (Kinv.shape[0] == Kinv.nnz and np.allclose(Kinv.diagonal(), 1.0)
                 and b.logdet_K == 0.0)
        if not ident:
            out[b.group] = (list(b.levels), Kinv, b.logdet_K)
    return out


def _refit_ml(fit):
    # a linear model's loglik is already its ML one (R's logLik(lm))
    if fit.method == "ML" or fit.estimation == "least squares":
        return fit
    from ..fitting import fit as mme_fit
    kwargs = {}
    rel = _relmat_of(fit)
    if rel:
        kwargs["relmat"] = rel
    return mme_fit(fit.formula, fit.internals.design.data, method="ML", **kwargs)


def lrt(fit0, fit1, refit: bool = True, names: tuple = ("fit0", "fit1")) -> pd.DataFrame:
    """Likelihood-ratio test of two nested fits (``anova(m0, m1)`` in lme4).

    Parameters
    ----------
    fit0, fit1 : mme.Fit
        Nested fits to the same observations (either order; rows are sorted by the
        number of parameters).
    refit : bool
        Refit REML fits by ML when their fixed effects differ (default, as lme4).
        With ``refit=False`` such a comparison raises DataError.
    names : row labels for fit0 and fit1.

    Returns
    -------
    DataFrame indexed by model with columns
    ``n_params, aic, bic, loglik, deviance, chisq, df, p_value``
    (``deviance`` = −2ℓ; the first row has NaN test columns). ``.attrs["note"]``
    says how the likelihoods were obtained.
    """
    if fit0.nobs != fit1.nobs:
        raise DataError(f"models were not all fitted to the same number of observations "
                        f"({fit0.nobs} and {fit1.nobs})")
    if fit0.n_params == fit1.n_params:
        raise DataError("the two fits have the same number of parameters; they are not nested")
    methods = {fit0.method, fit1.method}
    fits = [fit0, fit1]
    if "REML" in methods and (methods != {"REML"} or not _same_fixed(fit0, fit1)):
        if not refit:
            raise DataError("REML fits with different fixed effects (or a REML and an ML fit) "
                            "cannot be compared by their likelihoods; use refit=True")
        fits = [_refit_ml(f) for f in fits]
        note = "refitting model(s) with ML (instead of REML)"
    elif methods == {"REML"}:
        note = "REML likelihoods (same fixed effects): a test of the variance components"
    else:
        note = "ML likelihoods"
    # REML comparisons use each fit's REML log-likelihood (a linear model's loglik is
    # lm's ML one; its REML one is logLik(lm, REML = TRUE))
    reml = note.startswith("REML")
    ll = [f.loglik_reml if reml else f.loglik for f in fits]
    order = np.argsort([f.n_params for f in fits], kind="stable")
    rows = []
    for i in order:
        f = fits[i]
        rows.append({"model": names[i], "n_params": f.n_params,
                     "aic": -2.0 * ll[i] + 2.0 * f.n_params,
                     "bic": -2.0 * ll[i] + np.log(f.nobs) * f.n_params,
                     "loglik": ll[i], "deviance": -2.0 * ll[i]})
    out = pd.DataFrame(rows).set_index("model")
    small, big = ll[order[0]], ll[order[1]]
    chisq = max(0.0, 2.0 * (big - small))
    df = fits[order[1]].n_params - fits[order[0]].n_params
    if big < small - 1e-6 * max(1.0, abs(small)):
        warnings.warn("the larger model has the lower log-likelihood: are the fits nested "
                      "and converged?", UserWarning, stacklevel=2)
    out["chisq"] = [np.nan, chisq]
    out["df"] = [np.nan, float(df)]
    out["p_value"] = [np.nan, float(stats.chi2.sf(chisq, df))]
    out.attrs["note"] = note
    return out
