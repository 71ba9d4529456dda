"""``mme.fit``: a thin chain of four public stages, each callable alone
(as lme4's ``lFormula → mkLmerDevfun → optimizeLmer → mkMerMod``):

    build_design(formula, data, relmat)      → Design   y, sparse X, Z blocks, K⁻¹   (model.design)
    build_mme(design, ordering)              → MME      C's pattern, CHOLMOD analysis (engine.system)
    estimate(mme, method, variances, ...)    → Estimate θ̂ by least squares, known
                                                         variances, AI-REML or the Λ form
                                                         (engine.estimate)
    assemble(estimate)                       → Fit      BLUE, BLUP, PEV, θ ± SE, df (results)

To evaluate the REML log-likelihood at chosen variances without fitting:
``estimate(build_mme(build_design(f, df)), variances={...}).loglik``, or
``engine.reml.Likelihood(mme).evaluate(theta)`` for θ in the MME's layout.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ._errors import OptionError, SingularFitWarning
from ._threads import dense_blas_threads as dense_blas_threads_
from .engine.estimate import KNOWN, LEAST_SQUARES, NEAR_SINGULAR_TOL, Estimate, estimate
from .engine.reml import METHODS
from .engine.system import MME
from .model.design import Design, build_design, relationship_diagonal
from .results import Fit, Internals, RandomEffectsBlock, read_only

__all__ = ["fit", "build_design", "build_mme", "estimate", "assemble"]

#: G₀ whose smallest/largest eigenvalue ratio is below this is reported singular
#: (lme4 flags relative Cholesky-factor elements below 1e-4; AI steps keep G₀'s
#: eigenvalues ≥ 1e-8 × the largest, so a boundary optimum sits well below this).
#: A non-converged fit whose G₀ is within ``NEAR_SINGULAR_TOL`` is reported too.
SINGULAR_TOL = 1e-6


def fit(formula: str, data: pd.DataFrame, method: str = "REML", variances: dict | None = None,
        relmat: dict | None = None, residual: str | None = None, weights: str | None = None,
        covary: dict | None = None, structure: dict | None = None, ordering: str = "auto",
        max_iter: int = 200, verbose: bool = False, start=None, callback=None,
        dense_blas_threads: int | None = 1) -> Fit:
    """Fit a linear mixed model by REML (default) or ML.

    ``build_design → build_mme → estimate → assemble``; see those stages.

    Parameters
    ----------
    formula : str
        lme4 syntax: ``"yield ~ K2O_lbac + (1|rep)"``; random terms ``(1|g)``,
        ``(1|a:b)``, ``(1|a/b)``, ``(x|g)``, ``(x||g)``. Several responses of wide
        data: ``"cbind(y1, y2) ~ 0 + trait + trait:sex + (0 + trait | animal)"`` (a
        factor ``trait`` indexes the responses; a missing response drops only that
        trait of that row).
    data : DataFrame
        Rows with missing values in the model's columns are dropped (with a warning).
    method : "REML" or "ML"
        A model without random terms is fitted by least squares, as R's ``lm``: its
        ``loglik``/``aic``/``bic`` are ``logLik(lm)``'s (ML, p + 1 parameters) whatever
        ``method``; ``method`` sets the residual variance reported, RSS/(n − p) (REML,
        R's ``sigma(lm)²``) or RSS/n (ML).
    variances : dict, optional
        Known variances — ``{"rep": 0.035, "Residual": 0.044}`` (for a term with
        slopes, a d × d matrix) — to solve the MME without REML (BLUP with known
        variances).
    relmat : dict, optional
        ``{"id": mme.Pedigree}`` or ``{"id": (levels, Kinv)}``: the covariance of
        that term's effects is σ² K instead of σ² I.
    residual : str, optional
        The residual covariance: ``"us(trait)"`` (unstructured across the traits of a
        row; the default with ``cbind``), ``"diag(trait)"``, or ``"by(site)"`` (a
        residual variance per level of a column). Default σ²ₑ I.
    weights : str, optional
        Column of prior weights: Var(eᵢ) = σ²ₑ / wᵢ (lme4's ``weights=``).
    covary : dict, optional
        ``{"genetic": ["animal", "dam"]}``: random terms over one relationship matrix
        joined into one block with an unstructured G₀ (direct–maternal covariance);
        ``variances={"genetic": [[150, -40], [-40, 90]], ...}``.
    structure : dict, optional
        ``{"gen": "fa(2)"}``: a factor-analytic G₀ = ΛΛ' + Ψ for that term (genotype ×
        environment); see ``Fit.factor_analytic``.
    ordering : str
        CHOLMOD's fill-reducing ordering ("default", "amd", "metis", "nesdis", ...);
        "auto" (the default): AMD for models with a relationship matrix, CHOLMOD's
        default (AMD, and METIS when AMD fills in much) otherwise
        (``engine.system.choose_ordering``).
    max_iter : int
        Most AI-REML iterations.
    verbose : bool
        Print one line per AI-REML iteration.
    start : dict or array, optional
        AI-REML's starting point (variances, or θ from a checkpoint); see ``estimate``.
    callback : callable, optional
        Called with each AI-REML iteration's record (progress, checkpoints).
    dense_blas_threads : int or None
        Threads of NumPy/SciPy's bundled BLAS during the fit (CHOLMOD keeps the
        system BLAS's threads); 1 avoids two thread pools competing for the cores
        (see ``mme._threads``). None leaves them as they are.

    Returns
    -------
    Fit
    """
    method = str(method).upper()
    if method not in METHODS:
        raise OptionError(f"method must be 'REML' or 'ML', got {method!r}")
    with dense_blas_threads_(dense_blas_threads):
        design = build_design(formula, data, relmat, residual=residual, weights=weights,
                              covary=covary, structure=structure)
        mme = build_mme(design, ordering=ordering)
        est = estimate(mme, method=method, variances=variances, max_iter=max_iter,
                       verbose=verbose, start=start, callback=callback)
        return assemble(est)


def build_mme(design: Design, ordering: str = "auto") -> MME:
    """Stage 2: the MME of a design — C's pattern with its slot maps, and (on the first
    factorization) CHOLMOD's symbolic analysis, done once for the fit."""
    return MME(design, ordering=ordering)


def assemble(est: Estimate) -> Fit:
    """Stage 4: the ``Fit`` at an ``Estimate`` — BLUE with Var(β̂), BLUP with PEV,
    lme4's conditional variances and reliabilities, θ̂ with SEs from AI⁻¹, the
    singular-fit report. On a boundary fit the MME are solved at θ moved just inside
    the PD cone, while the reported G₀, σ²ₑ and logLik are the Λ form's exact ones.
    """
    mme = est.mme
    design = mme.design
    mme.ensure(est.theta)
    p = mme.p
    F = mme.fixed_columns() if p else np.zeros((mme.dim, 0))
    vcov_beta = F[:p]
    se, ai_inv, df_method = _theta_standard_errors(est)
    singular, se_mask, messages = _singularity(est)
    if singular:
        warnings.warn("boundary (singular) fit: " + "; ".join(messages), SingularFitWarning,
                      stacklevel=3)
    theta_report = np.where(est.at_bound, 0.0, est.theta_reported)
    ev = est.evaluation
    internals = Internals(estimate=est, F=read_only(F), vcov_theta_ai=read_only(ai_inv))
    return Fit(formula=design.formula, method=est.method, nobs=design.n,
               fixed_names=design.fixed_names, aliased=design.aliased,
               beta=ev.solution[:p], vcov_beta=vcov_beta, df_method=df_method,
               _vc_table=_vc_table(mme, theta_report, np.where(se_mask, np.nan, se)),
               blocks=_random_effects(est, F),
               # a linear model's logLik is R's logLik(lm): ML, whatever ``method``
               loglik=(est.linear_model_logliks[0] if est.route == LEAST_SQUARES
                       else est.loglik),
               n_params=p + mme.k, converged=est.converged, n_iter=est.n_iter,
               history=est.history, singular=singular, estimated=est.estimated,
               fitted_values=design.y - ev.resid, residual_values=ev.resid, internals=internals)


def _random_effects(est: Estimate, F: np.ndarray) -> tuple:
    """One ``RandomEffectsBlock`` per random term: BLUP, PEV = diag Cᵘᵘ, lme4's
    condVar = diag (Z'R⁻¹Z + G⁻¹)⁻¹ = PEV − diag(Fᵤ (Cˣˣ)⁻¹ Fᵤ'), reliability."""
    mme, ev = est.mme, est.evaluation
    if not mme.structures:
        return ()
    p = mme.p
    if ev.cuu_diag is not None:
        cuu = ev.cuu_diag
    else:
        diag = np.arange(p, mme.dim, dtype=np.int64)
        cuu = mme.selected_inverse(diag, diag)
    Fu = F[p:]
    cond = cuu - (np.einsum("ij,jk,ik->i", Fu, np.linalg.inv(F[:p]), Fu) if p else 0.0)
    G0s, _ = mme.split(est.theta)
    blocks = []
    i = 0
    for s, G0 in zip(mme.structures, G0s):
        sl = slice(s.offset - p, s.offset - p + s.block.q)
        shape = (s.d, s.L)
        pev = cuu[sl].reshape(shape).copy()
        kdiag = relationship_diagonal(s.block)
        prior = np.diag(G0)[:, None] * kdiag[None, :]
        blup = ev.solution[s.offset:s.offset + s.block.q].reshape(shape).copy()
        cond_b = cond[sl].reshape(shape).copy()
        reliability = 1.0 - pev / prior
        zero = _terms_at_bound(s, est.at_bound[i:i + s.n_params])
        # a variance reported as 0: its effects are exactly 0, known exactly (the MME
        # were solved at the variance's floor, where they are ~1e-10 of the scale);
        # reliability is the limit 1 − PEV/σ² → 0
        blup[zero], pev[zero], cond_b[zero], reliability[zero] = 0.0, 0.0, 0.0, 0.0
        blocks.append(RandomEffectsBlock(
            group=s.block.group, terms=s.block.terms, levels=s.block.levels,
            blup=blup, pev=pev, cond_var=cond_b, reliability=reliability))
        i += s.n_params
    return tuple(blocks)


def _terms_at_bound(s, at_bound: np.ndarray) -> np.ndarray:
    """Mask (d,) of a block's terms whose variance is at its bound (reported as 0): a
    scalar term, or a term of a diagonal G₀ (unstructured and FA blocks: none)."""
    out = np.zeros(s.d, bool)
    if s.fa_k or not (s.d == 1 or s.kind == "diag"):
        return out
    out[:] = np.asarray(at_bound, bool)[:s.d]
    return out


def _theta_standard_errors(est: Estimate) -> tuple:
    """(SE of θ̂, AI⁻¹ with zero rows/columns at the bound, df method of β̂)."""
    ev, k = est.evaluation, est.mme.k
    if est.route == LEAST_SQUARES:
        n, p = est.mme.n, est.mme.p
        se = np.array([est.theta[0] * np.sqrt(2.0 / (n - p))])
        return se, np.diag(se ** 2), "residual"
    if est.route == KNOWN:
        return (np.full(k, np.nan), np.zeros((k, k)),
                "residual" if not est.mme.structures and est.mme.residual.is_scalar
                else "asymptotic (variances given)")
    free = ~est.at_bound
    ai_inv = np.zeros_like(ev.AI)
    ai_inv[np.ix_(free, free)] = np.linalg.pinv(ev.AI[np.ix_(free, free)])
    return np.sqrt(np.maximum(np.diag(ai_inv), 0.0)), ai_inv, "Satterthwaite"


def _singularity(est: Estimate) -> tuple:
    """lme4's isSingular: a variance at zero, or a G₀ (d > 1) of deficient rank.

    Returns (singular, mask of θ entries without an SE, messages).
    """
    mme = est.mme
    se_mask = np.zeros(mme.k, bool)
    singular = bool(np.any(est.at_bound))
    messages = ["a variance is estimated at zero"] if singular else []
    if not est.estimated:
        return singular, se_mask, messages
    G0s, _ = mme.split(est.theta_reported)
    i = 0
    for s, G in zip(mme.structures, G0s):
        b = s.block
        i += s.n_params
        if G.shape[0] < 2:
            continue
        ev_G = np.linalg.eigvalsh(G)
        ratio = max(ev_G[0] / ev_G[-1], 0.0) if ev_G[-1] > 0 else 0.0
        # rank-deficient at θ̂ (the Λ form's optimum); or heading there when neither
        # AI-REML nor the Λ form got further (the estimate stays PSD)
        if not (ratio <= SINGULAR_TOL or (not est.converged and ratio <= NEAR_SINGULAR_TOL)):
            continue
        singular = True
        if est.boundary is not None:
            # no asymptotic SE on the boundary of the PSD cone (lme4 gives none)
            se_mask[i - s.n_params:i] = True
        sd = np.sqrt(np.maximum(np.diag(G), 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = G / np.outer(sd, sd)
        off = np.abs(corr[np.tril_indices_from(corr, -1)])
        top = float(np.nanmax(off)) if np.isfinite(off).any() else np.nan
        messages.append(
            f"G₀ of the '{b.group}' term ({', '.join(b.terms)}) is singular: smallest/"
            f"largest eigenvalue {ratio:.2g}, |correlation| up to {top:.4f}"
            + (f" (rank {int(np.sum(ev_G > SINGULAR_TOL * ev_G[-1]))} of {len(ev_G)})"
               if est.boundary is not None else "")
            + ("" if est.converged else
               "; the fit stopped short of the boundary optimum (logLik may be a "
               "little below lme4's); simplify the term, e.g. fewer slopes or '||' "
               f"for '{b.group}'"))
    return singular, se_mask, messages


def _vc_table(mme: MME, theta: np.ndarray, se: np.ndarray) -> pd.DataFrame:
    """``variance_components``: group, term1, term2, estimate, std_error."""
    rows, i = [], 0
    for s in mme.structures:
        for t1, t2 in s.param_names():
            rows.append((s.block.group, t1, t2, theta[i], se[i]))
            i += 1
    for t1, t2 in mme.residual.names():
        rows.append(("Residual", t1, t2, theta[i], se[i]))
        i += 1
    return pd.DataFrame(rows, columns=["group", "term1", "term2", "estimate", "std_error"])
