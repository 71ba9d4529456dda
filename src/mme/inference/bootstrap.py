"""Parametric bootstrap of a fit, as lme4's ``bootMer(type = "parametric", use.u = FALSE)``.

Each replicate simulates a response from the fitted model,

    y* = Xβ̂ + Σₖ Zₖ u*ₖ + e*,   u*ₖ ~ N(0, Ĝ₀ₖ ⊗ Kₖ),   e* ~ N(0, σ̂²ₑ W⁻¹),

and refits it with the fit's criterion (REML or ML) from the fit's θ̂. The statistics
are lme4's ``confint(..., method = "boot")`` ones: the SDs and correlations of each
G₀, σ, and β (``profile.lme4_parameters`` names them). A Ĝ₀ reported singular is
simulated as such (its PSD Cholesky factor); K's square root comes from a CHOLMOD
factor of K⁻¹ (K⁻¹ = P'LL'P ⇒ u = P'L'⁻¹z has covariance K), so K is never formed.

The random numbers are NumPy's (``numpy.random.default_rng(seed)``), drawn per
replicate block by block (each block's d × L standard normals, then the n residuals);
they cannot reproduce R's, so results agree with lme4's in distribution only. The
refits reuse one copy of the MME (``MME.with_response``: C's pattern and its CHOLMOD
analysis shared by all replicates; only W'y changes).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sksparse import cholmod

from .._errors import MMEError, OptionError
from ..engine.estimate import estimate as estimate_variances
from .profile import _psd_cholesky, check_profilable, lme4_parameters, sdcor_of_theta

__all__ = ["parametric_bootstrap"]


def _block_samplers(mme, G0s):
    """One function rng → u (the block's d·L effects, term-major) per random block."""
    out = []
    for s, G in zip(mme.structures, G0s):
        sd = np.sqrt(np.maximum(np.diag(G), 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            R = np.where(np.outer(sd, sd) > 0, G / np.outer(sd, sd), 0.0)
        np.fill_diagonal(R, 1.0)
        LR = _psd_cholesky(R)
        if LR is None:   # a correlation matrix nudged off PSD by round-off
            w, V = np.linalg.eigh(R)
            LR = V * np.sqrt(np.maximum(w, 0.0))
        LG = sd[:, None] * LR
        if s.block.k_is_identity:
            out.append(lambda rng, LG=LG, s=s: (LG @ rng.standard_normal((s.d, s.L))).ravel())
        else:
            f = cholmod.cholesky(s.block.Kinv.tocsc(), mode="simplicial")

            def draw(rng, LG=LG, s=s, f=f):
                z = rng.standard_normal((s.L, s.d))
                # K⁻¹ = P'LL'P: x = P'L'⁻¹z has Var(x) = P'(LL')⁻¹P = K
                x = f.apply_Pt(f.solve_Lt(z, use_LDLt_decomposition=False))
                return (LG @ np.asarray(x).T).ravel()
            out.append(draw)
    return out


def parametric_bootstrap(fit, nsim: int, seed=None) -> pd.DataFrame:
    """``nsim`` refits of responses simulated from ``fit``.

    Returns
    -------
    DataFrame, one row per replicate, one column per parameter (lme4's names: sd_…,
    cor_…, sigma, then the fixed effects); a refit that failed is a row of NaN, and
    ``attrs["n_failed"]`` counts them (lme4 prints the same count as warnings).
    """
    check_profilable(fit, "boot")
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or nsim < 1:
        raise OptionError(f"nsim must be a positive integer, got {nsim!r}")
    mme = fit.internals.mme
    design = mme.design
    params = lme4_parameters(mme)
    names = [q.name for q in params] + list(fit.fixed_names)
    theta_hat = np.asarray(fit.internals.theta_reported, float)
    G0s, R0 = mme.split(theta_hat)
    sigma = float(np.sqrt(R0[0, 0]))
    samplers = _block_samplers(mme, G0s)
    Zs = [s.block.Z for s in mme.structures]
    xb = np.asarray(design.X @ fit.beta).ravel()
    sw = mme.residual.sqrt_weights
    rng = np.random.default_rng(seed)
    start = np.asarray(fit.internals.theta, float)
    out = np.full((nsim, len(names)), np.nan)
    boot_mme = None
    failed = 0
    for r in range(nsim):
        y = xb.copy()
        for Z, draw in zip(Zs, samplers):
            y += Z @ draw(rng)
        e = sigma * rng.standard_normal(mme.n)
        y += e if sw is None else e / sw
        if boot_mme is None:
            boot_mme = mme.with_response(y)
        else:
            boot_mme.set_response(y)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = estimate_variances(boot_mme, method=fit.method, start=start)
        except MMEError:
            failed += 1
            continue
        out[r, :len(params)] = sdcor_of_theta(mme, params, est.theta_reported)
        out[r, len(params):] = est.evaluation.solution[:mme.p]
    frame = pd.DataFrame(out, columns=names)
    frame.index.name = "replicate"
    frame.attrs["n_failed"] = failed
    return frame
