"""Parametric bootstrap of a fit, as lme4's ``bootMer(type = "parametric", use.u = FALSE)``.

Each replicate simulates a response from the fitted model,

    y* = Xβ̂ + Σₖ Zₖ u*ₖ + e*,   u*ₖ ~ N(0, Ĝ₀ₖ ⊗ Kₖ),   e* ~ N(0, σ̂²ₑ W⁻¹),

and refits it with the fit's criterion (REML or ML) from the fit's θ̂, as lme4 does:
the profiled criterion of the relative-factor form minimised over λ (``Refit``). The statistics
are lme4's ``confint(..., method = "boot")`` ones: the SDs and correlations of each
G₀, σ, and β (``profile.lme4_parameters`` names them). A Ĝ₀ reported singular is
simulated as such (its PSD Cholesky factor); K's square root comes from a CHOLMOD
factor of K⁻¹ (K⁻¹ = P'LL'P ⇒ u = P'L'⁻¹z has covariance K), so K is never formed.

The random numbers are NumPy's (``numpy.random.default_rng(seed)``), drawn per
replicate block by block (each block's d × L standard normals, then the n residuals);
they cannot reproduce R's, so results agree with lme4's in distribution only. The
refits reuse one copy of the MME (``MME.with_response``) and one relative-factor form:
C*'s pattern, its CHOLMOD analysis and its expansion in λ are shared by all replicates;
only W'y changes.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from scipy import optimize

from .._errors import MMEError, OptionError
from ..engine.boundary import RelativeFactorForm
from ..engine.cholesky import draw_with_precision
from ..engine.reml import Likelihood
from .profile import (_psd_cholesky, check_profilable, lme4_parameters, minimize_box,
                      sdcor_of_theta)

__all__ = ["parametric_bootstrap", "Refit"]

#: L-BFGS-B's stopping rules of a refit (relative deviance change, projected gradient in
#: units of λ̂): as ``profile.INNER_FTOL`` / ``INNER_GTOL``
REFIT_FTOL = 1e-12
REFIT_GTOL = 1e-7


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
            sample = draw_with_precision(s.block.Kinv)

            def draw(rng, LG=LG, s=s, sample=sample):
                x = sample(rng.standard_normal((s.L, s.d)))       # Var(x) = K per column
                return (LG @ np.asarray(x).T).ravel()
            out.append(draw)
    return out


class Refit:
    """The fit's model for other responses, refitted as lme4 does: the profiled REML/ML
    criterion of the relative-factor form (``engine.boundary``) minimised over λ with
    bounds diag(Λ) ≥ 0 (L-BFGS-B, central-difference gradients), from the fit's λ̂. A
    replicate whose optimum is singular (an SD at 0) costs no more than another."""

    def __init__(self, fit, y: np.ndarray):
        mme = fit.internals.mme
        self.mme = mme.with_response(y)
        self.form = RelativeFactorForm(Likelihood(self.mme, fit.method))
        self.free = np.concatenate(
            [[a == b or s.kind == "us" for a, b in tri]
             for s, tri in zip(mme.structures, self.form.tri)]).astype(bool)
        lam0 = self.form.lam_of(np.asarray(fit.internals.theta, float))
        self.lam0 = np.where(self.free, lam0, 0.0)
        lb = self.form.bounds().lb[self.free]
        self.bounds = optimize.Bounds(lb, np.full(lb.shape, np.inf))
        self.scale = np.maximum(np.abs(self.lam0[self.free]), 0.1)   # λ: SDs relative to σ

    def set_response(self, y: np.ndarray) -> None:
        self.mme.set_response(y)
        self.form.set_response()

    def fit(self) -> tuple:
        """(θ̂, β̂) for the current response."""
        lam = self.lam0.copy()
        sc = self.scale

        def f(u):
            lam[self.free] = u * sc
            return self.form.evaluate(lam)[0]

        _, u = minimize_box(f, self.lam0[self.free] / sc, self.bounds.lb / sc,
                            self.bounds.ub / sc, np.ones(sc.shape), REFIT_FTOL, REFIT_GTOL,
                            probe=1.0 / sc)
        lam[:] = 0.0
        lam[self.free] = u * sc
        m2ll, s2e, sol = self.form.evaluate(lam)
        if not np.isfinite(m2ll):
            raise MMEError("refit did not reach a finite likelihood")
        return self.form.theta_of(lam, s2e), sol[:self.mme.p]


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
    out = np.full((nsim, len(names)), np.nan)
    refit = None
    failed = 0
    for r in range(nsim):
        y = xb.copy()
        for Z, draw in zip(Zs, samplers):
            y += Z @ draw(rng)
        e = sigma * rng.standard_normal(mme.n)
        y += e if sw is None else e / sw
        if refit is None:
            refit = Refit(fit, y)
        else:
            refit.set_response(y)
        try:
            theta, beta = refit.fit()
        except (MMEError, np.linalg.LinAlgError):
            failed += 1
            continue
        out[r, :len(params)] = sdcor_of_theta(mme, params, theta)
        out[r, len(params):] = beta
    frame = pd.DataFrame(out, columns=names)
    frame.index.name = "replicate"
    frame.attrs["n_failed"] = failed
    return frame
