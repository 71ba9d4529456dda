"""Stage 3 of a fit: estimate θ for built MME, by one of four routes, into one type.

    estimate(mme, method, variances)  ─▶  Estimate
      • least squares     no random term: σ²ₑ = RSS / (n − p) (ML: RSS / n)
      • known variances   ``variances=`` given: BLUE/BLUP at them, no REML
      • AI-REML / AI-ML   ``reml.fit_variances`` from moment starts
      • boundary          AI-REML heading to a singular unstructured G₀ hands over to
                          the relative-factor (Λ) form (``boundary.fit_on_boundary``)

Every route returns an :class:`Estimate` holding the likelihood (MME + method), the θ
at which the MME are solved, the evaluation there (solution, residuals, score, AI)
and how it was reached; ``fitting.assemble`` turns it into a ``Fit``.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np

from .._errors import ConvergenceWarning, DataError
from ..model.covariance import parse_variances
from ..model.design import ols_residuals
from .boundary import BoundaryResult, fit_on_boundary
from .reml import BOUND_REL, Evaluation, IterationRecord, Likelihood, fit_variances
from .system import MME

log = logging.getLogger("mme")

#: the routes of ``estimate`` (``Estimate.route``)
LEAST_SQUARES, KNOWN, AI_REML, BOUNDARY = "least squares", "known variances", "AI-REML", "boundary (Λ form)"

#: a non-converged AI-REML estimate whose unstructured G₀ has smallest/largest
#: eigenvalue below this is handed to the Λ form (and reported as a boundary fit)
NEAR_SINGULAR_TOL = 1e-3
#: at a boundary optimum found in the Λ form, the MME (which need G₀⁻¹) are solved at
#: G₀ with its null eigenvalues raised to this × the largest; logLik moves < 1e-6 on
#: the reference case, and the reported G₀ and logLik are the exact ones of the Λ form
BOUNDARY_FLOOR = 1e-6


@dataclass(frozen=True)
class Estimate:
    """The result of the estimation stage, whichever route produced it.

    Attributes
    ----------
    likelihood : Likelihood        the MME and the method (REML/ML)
    theta : ndarray (k,)           θ at which the MME are solved (inside the PD cone)
    evaluation : Evaluation        solution, residuals, score and AI at ``theta``
    route : str                    LEAST_SQUARES, KNOWN, AI_REML or BOUNDARY
    converged, n_iter, history     of the iteration (trivially True, 0, () without one)
    at_bound : ndarray of bool     variances estimated at their lower bound (zero)
    boundary : BoundaryResult      the Λ-form optimum (route BOUNDARY), else None
    """

    likelihood: Likelihood
    theta: np.ndarray
    evaluation: Evaluation
    route: str
    converged: bool = True
    n_iter: int = 0
    history: tuple = ()
    at_bound: np.ndarray = None
    boundary: BoundaryResult | None = None
    #: route LEAST_SQUARES: (ML, REML) log-likelihoods of the linear model as R's
    #: ``logLik(lm)`` and ``logLik(lm, REML = TRUE)`` (σ² = RSS/n and RSS/(n − p))
    linear_model_logliks: tuple | None = None

    @property
    def mme(self) -> MME:
        return self.likelihood.mme

    @property
    def method(self) -> str:
        return self.likelihood.method

    @property
    def estimated(self) -> bool:
        """False when the variances were given (``variances=``)."""
        return self.route != KNOWN

    @property
    def theta_reported(self) -> np.ndarray:
        """θ̂ as reported: on a boundary fit the Λ form's exact (singular) one."""
        return self.boundary.theta if self.boundary is not None else self.theta

    @property
    def loglik(self) -> float:
        """log-likelihood at θ̂ (the Λ form's exact one on a boundary fit)."""
        return -0.5 * self.boundary.m2ll if self.boundary is not None else self.evaluation.loglik


def estimate(mme: MME, method: str = "REML", variances: dict | None = None,
             max_iter: int = 200, verbose: bool = False, start: dict | None = None,
             callback=None) -> Estimate:
    """Estimate the variance parameters of built MME (or take them as given).

    Parameters
    ----------
    mme : MME
        From ``fitting.build_mme``.
    method : "REML" or "ML"
    variances : dict, optional
        Known variances (``{"rep": 0.035, "Residual": 0.044}``; a d × d matrix for a
        term with slopes): no REML, the MME are solved at them.
    max_iter : int
        Most AI-REML iterations.
    verbose : bool
        Print one line per AI-REML iteration.
    start : dict or array, optional
        Starting point of AI-REML: variances in the form of ``variances`` (e.g. from a
        smaller model), or θ itself (a row of ``Fit.iteration_log``'s theta columns, a
        checkpoint); default: moment starts.
    callback : callable, optional
        Called with each iteration's ``reml.IterationRecord`` (θ, logLik, step, seconds):
        progress bars, checkpoints.

    Returns
    -------
    Estimate
    """
    likelihood = Likelihood(mme, method)
    if variances is not None:
        G0s, R0 = parse_variances(mme.design.blocks, variances, mme.residual)
        theta = mme.theta_of(G0s, R0)
        return Estimate(likelihood, theta, likelihood.evaluate(theta), KNOWN,
                        at_bound=np.zeros(mme.k, bool))
    if not mme.structures and mme.residual.is_scalar:
        logliks = linear_model_logliks(mme)
        theta = least_squares_variance(likelihood)
        return Estimate(likelihood, theta, likelihood.evaluate(theta), LEAST_SQUARES,
                        at_bound=np.zeros(1, bool), linear_model_logliks=logliks)
    theta0 = None
    if isinstance(start, dict):
        G0s, R0 = parse_variances(mme.design.blocks, start, mme.residual)
        theta0 = mme.theta_of(G0s, R0)
    elif start is not None:
        theta0 = np.asarray(start, dtype=float).ravel()
        if theta0.shape != (mme.k,) or not likelihood.feasible(theta0):
            raise DataError(f"start: θ must hold {mme.k} values inside the parameter space "
                            f"(the Fit.iteration_log theta columns), got {theta0.tolist()}")
    return _ai_reml(likelihood, max_iter, verbose, theta0, callback)


def least_squares_variance(likelihood: Likelihood) -> np.ndarray:
    """θ = [σ²ₑ] of a model without random terms: RSS/(n − p) (REML) or RSS/n (ML)."""
    mme = likelihood.mme
    X, y = mme.W, mme.y
    p = X.shape[1]
    r = ols_residuals(X, y)
    denom = len(y) - (p if likelihood.method == "REML" else 0)
    if denom <= 0:
        raise DataError(f"{len(y)} observations cannot estimate {p} fixed effects and a "
                        "residual variance")
    return np.array([float(r @ r) / denom])


def linear_model_logliks(mme: MME) -> tuple:
    """(ML, REML) log-likelihood of a model without random terms, each at its own
    maximum — R's ``logLik(lm)`` (σ̂² = RSS/n) and ``logLik(lm, REML = TRUE)`` (σ̂² =
    RSS/(n − p), p = rank X) — evaluated by the engine's likelihood (prior weights
    included, as lm's ``½ Σ log wᵢ``)."""
    out = []
    for method in ("ML", "REML"):
        lik = Likelihood(mme, method)
        out.append(lik.evaluate(least_squares_variance(lik), derivatives=False).loglik)
    return tuple(out)


def _ai_reml(likelihood: Likelihood, max_iter: int, verbose: bool, theta0=None,
             callback=None) -> Estimate:
    """AI-REML; near a singular unstructured G₀, the Λ form finishes."""
    # AI-REML cannot converge on a boundary it can only approach: hold its
    # non-convergence warning until the Λ form has had its say
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always", ConvergenceWarning)
        # the Λ form (unstructured G₀ only; with a structured R its parameters join λ)
        hand_over = ((lambda t: heads_to_boundary(likelihood, t))
                     if all(s.kind == "us" for s in likelihood.mme.structures) else None)
        if theta0 is None:
            theta0 = _fa_start(likelihood, max_iter)
        result = fit_variances(likelihood, theta0=theta0, max_iter=max_iter, verbose=verbose,
                               hand_over=hand_over, callback=callback)
    ai = Estimate(likelihood, result.theta, result.evaluation, AI_REML,
                  converged=result.converged, n_iter=result.n_iter,
                  history=tuple(result.history), at_bound=result.at_bound)
    if hand_over is not None and heads_to_boundary(likelihood, ai.theta):
        t0 = time.perf_counter()
        boundary = fit_on_boundary(likelihood, ai.theta)
        if boundary.m2ll < ai.evaluation.m2ll:
            log.info("boundary fit in the relative-factor form: logLik %.10g -> %.10g "
                     "(%d evaluations)", ai.evaluation.loglik, -0.5 * boundary.m2ll,
                     boundary.n_eval)
            record = IterationRecord(ai.n_iter + 1, "Λ form (COBYQA)", boundary.theta.copy(),
                                     -0.5 * boundary.m2ll, float(boundary.n_eval), np.nan,
                                     time.perf_counter() - t0)
            theta, at_bound = interior(likelihood, boundary.theta)
            return Estimate(likelihood, theta, likelihood.evaluate(theta), BOUNDARY,
                            converged=True, n_iter=ai.n_iter, history=ai.history + (record,),
                            at_bound=at_bound, boundary=boundary)
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if result.handed_over:
        warnings.warn(f"REML stopped after {ai.n_iter} iterations near the boundary of the "
                      "PSD cone and the Λ form did not improve on it",
                      ConvergenceWarning, stacklevel=4)
    return ai


#: an FA block with at most this many terms starts from the unstructured fit
FA_START_US_MAX_D = 8


def _fa_start(likelihood: Likelihood, max_iter: int) -> np.ndarray | None:
    """Starting θ for a model with factor-analytic blocks: the FA(k) approximation of
    those blocks' G₀ from the same model fitted unstructured (as ASReml users start FA
    from US). The FA likelihood has local optima; from moment starts AI-REML found a
    lower one on a 5-environment test case that this start avoids. None without FA."""
    mme = likelihood.mme
    if not any(s.fa_k for s in mme.structures):
        return None
    design = mme.design
    # unstructured G₀ has d(d+1)/2 parameters: beyond FA_START_US_MAX_D terms the start
    # comes from a diagonal G₀ instead (its FA approximation adds correlations of 0.5)
    us = replace(design, blocks=tuple(
        replace(b, structure=None if b.d <= FA_START_US_MAX_D else "diag")
        if b.structure and str(b.structure).startswith("fa") else b for b in design.blocks))
    lik_us = Likelihood(MME(us, ordering=mme.ordering), likelihood.method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fit_variances(lik_us, max_iter=max_iter)
    G0s, R0 = lik_us.split(r.theta)
    log.info("FA start from the %s fit: logLik %.6f after %d iterations",
             "unstructured" if all(b.d <= FA_START_US_MAX_D for b in design.blocks
                                   if b.structure) else "unstructured/diagonal",
             r.evaluation.loglik, r.n_iter)
    return mme.theta_of(G0s, R0)


def heads_to_boundary(likelihood: Likelihood, theta: np.ndarray) -> bool:
    """True when an unstructured G₀ (d ≥ 2) is near rank deficiency at θ."""
    G0s, _ = likelihood.split(theta)
    for G in G0s:
        if G.shape[0] >= 2:
            w = np.linalg.eigvalsh(G)
            if w[-1] <= 0 or w[0] / w[-1] <= NEAR_SINGULAR_TOL:
                return True
    return False


def interior(likelihood: Likelihood, theta: np.ndarray) -> tuple:
    """(θ moved just inside the PD cone, at_bound mask), so that the G⁻¹ form exists.

    Each G₀'s eigenvalues are raised to at least ``BOUNDARY_FLOOR`` × its largest,
    a variance at zero to ``reml.BOUND_REL`` × max|θ| (``fit_variances``' bound, flagged
    at_bound).
    """
    out, at_bound = [], []
    G0s, R0 = likelihood.split(theta)
    lb = BOUND_REL * np.abs(theta).max()
    for s, G in zip(likelihood.mme.structures, G0s):
        if s.d == 1:
            out.append(np.array([max(G[0, 0], lb)]))
            at_bound.append([G[0, 0] <= lb])
            continue
        w, V = np.linalg.eigh(G)
        w = np.maximum(w, BOUNDARY_FLOOR * max(w[-1], lb))
        out.append(s.theta_of((V * w) @ V.T))
        at_bound.append(np.zeros(s.n_params, bool))
    return (np.concatenate(out + [likelihood.residual.theta_of(R0)]),
            np.concatenate([np.asarray(a, bool) for a in at_bound]
                           + [np.zeros(likelihood.residual.n_params, bool)]))
