"""``mme.fit``: a thin chain of stages, each callable alone.

    parse_formula → build_design → MME (pattern once) → Model.fit_variances (AI-REML)
    → assemble results (BLUE, BLUP, PEV, θ ± SE, df)
"""
from __future__ import annotations

import logging
import time
import warnings
from functools import cached_property

import numpy as np
import pandas as pd

from ._errors import ConvergenceWarning, DataError, SingularFitWarning
from .engine.boundary import BoundaryResult, fit_on_boundary, satterthwaite_pieces
from .model.design import Design, build_design, ols_residuals
from .model.formula import parse_formula
from .engine.reml import IterationRecord, Model, fit_variances
from .results import Fit, RandomEffectsBlock
from .inference.satterthwaite import observed_information, satterthwaite_df, vcov_derivatives
from .engine.system import MME
from ._threads import dense_blas_threads as dense_blas_threads_


#: G₀ whose smallest/largest eigenvalue ratio is below this is reported singular
#: (lme4 flags relative Cholesky-factor elements below 1e-4; AI steps keep G₀'s
#: eigenvalues ≥ 1e-8 × the largest, so a boundary optimum sits well below this).
SINGULAR_TOL = 1e-6
#: a non-converged fit whose G₀ is this close to singular is reported as a boundary fit
NEAR_SINGULAR_TOL = 1e-3
#: at a boundary optimum found in the Λ form (``boundary``), BLUPs, PEVs and df are
#: computed at G₀ with its null eigenvalues raised to this × the largest (the G⁻¹
#: form needs G₀ > 0); logLik moves < 1e-6 on the reference case, and the reported
#: G₀ and logLik are the exact ones of the Λ form
BOUNDARY_FLOOR = 1e-6

log = logging.getLogger("mme")


class Internals:
    """What inference needs after the fit (kept off the public surface).

    The Satterthwaite pieces — the observed information of θ (2k score
    evaluations) and ∂Cˣˣ/∂θ — are computed on first use and cached, so a fit
    whose df are never asked for does not pay for them.
    """

    def __init__(self, design: Design, model: Model, theta: np.ndarray, F: np.ndarray,
                 ai: np.ndarray, vcov_theta_ai: np.ndarray, at_bound: np.ndarray,
                 estimated: bool, boundary: BoundaryResult | None = None):
        self.design = design
        self.model = model
        self.theta = theta            # θ̂ (G₀ elements per block, then σ²ₑ)
        self.F = F                    # C⁻¹[:, :p]
        self.ai = ai                  # average information at θ̂
        self.vcov_theta_ai = vcov_theta_ai  # AI⁻¹ (0 rows/cols at the boundary)
        self.at_bound = at_bound
        self.estimated = estimated
        self.boundary = boundary      # the Λ-form optimum of a boundary fit, else None

    @property
    def theta_reported(self) -> np.ndarray:
        """θ̂ as reported: on a boundary fit the Λ form's exact (singular) one, else ``theta``."""
        return self.boundary.theta if self.boundary is not None else self.theta

    @property
    def has_variances(self) -> bool:
        """True when θ was estimated for a model with random terms (df need θ's covariance)."""
        return bool(self.model.mme.structures) and self.estimated

    @cached_property
    def vcov_theta(self) -> np.ndarray:
        """Asymptotic Var(θ̂): inverse observed information (lmerTest's choice)."""
        k = self.model.k
        if not self.has_variances:
            return np.zeros((k, k))
        J = observed_information(self.model, self.theta, self.at_bound)
        free = ~self.at_bound
        out = np.zeros_like(J)
        out[np.ix_(free, free)] = np.linalg.pinv(J[np.ix_(free, free)])
        return out

    @cached_property
    def dvcov(self):
        """∂Cˣˣ/∂θᵢ, array (k, p, p); None without estimated variances."""
        if not self.has_variances:
            return None
        p = self.model.mme.p
        if not p:
            return np.zeros((self.model.k, 0, 0))
        return vcov_derivatives(self.model, self.theta, self.F)

    @cached_property
    def satterthwaite_pieces(self) -> tuple:
        """(∂Var(β̂)/∂φ, Var(φ̂)) for Satterthwaite's df: φ = θ, or on a boundary
        (singular G₀) φ = (λ, σ²ₑ) of the Λ form (``boundary.satterthwaite_pieces``)."""
        if self.boundary is None or not self.model.mme.p:
            return self.dvcov, self.vcov_theta
        b = self.boundary
        out = satterthwaite_pieces(self.model, b.lam, float(b.theta[-1]))
        # leave the factor at θ for whoever uses the G⁻¹ form next
        self.model.evaluate(self.theta, derivatives=False)
        return out

    @cached_property
    def fixed_df(self) -> np.ndarray:
        """Default df of each coefficient: Satterthwaite (mixed), residual (fixed-only)."""
        mme = self.model.mme
        p = mme.p
        if not mme.structures:
            return np.full(p, float(mme.n - p))
        if not self.estimated:
            return np.full(p, np.inf)
        if not p:
            return np.zeros(0)
        F = self.F
        return satterthwaite_df(np.eye(p), F[:p], *self.satterthwaite_pieces)


def fit(formula: str, data: pd.DataFrame, method: str = "REML", variances: dict | None = None,
        relmat: dict | None = None, ordering: str = "auto", max_iter: int = 200,
        verbose: bool = False, dense_blas_threads: int | None = 1) -> Fit:
    """Fit a linear mixed model by REML (default) or ML.

    Parameters
    ----------
    formula : str
        lme4 syntax: ``"yield ~ K2O_lbac + (1|rep)"``; random terms ``(1|g)``,
        ``(1|a:b)``, ``(1|a/b)``, ``(x|g)``, ``(x||g)``.
    data : DataFrame
        Rows with missing values in the model's columns are dropped (with a warning).
    method : "REML" or "ML"
    variances : dict, optional
        Known variances — ``{"rep": 0.035, "Residual": 0.044}`` (for a term with
        slopes, a d × d matrix) — to solve the MME without REML (BLUP with known
        variances).
    relmat : dict, optional
        ``{"id": mme.Pedigree}`` or ``{"id": (levels, Kinv)}``: the covariance of
        that term's effects is σ² K instead of σ² I.
    ordering : str
        CHOLMOD's fill-reducing ordering ("default", "amd", "metis", "nesdis", ...);
        "auto" (the default): AMD for models with a relationship matrix, CHOLMOD's
        default (AMD, and METIS when AMD fills in much) otherwise
        (``system.choose_ordering``).
    dense_blas_threads : int or None
        Threads of NumPy/SciPy's bundled BLAS during the fit (CHOLMOD keeps the
        system BLAS's threads); 1 avoids two thread pools competing for the cores
        (see ``mme._threads``). None leaves them as they are.

    Returns
    -------
    Fit
    """
    method = str(method).upper()
    if method not in ("REML", "ML"):
        raise ValueError(f"method must be 'REML' or 'ML', got {method!r}")
    with dense_blas_threads_(dense_blas_threads):
        return _fit(formula, data, method, variances, relmat, ordering, max_iter, verbose)


def _fit(formula, data, method, variances, relmat, ordering, max_iter, verbose) -> Fit:
    mf = parse_formula(formula)
    design = build_design(mf, data, relmat)
    model = Model(MME(design, ordering=ordering), method)
    if variances is not None:
        theta = _theta_from_variances(model, variances)
        ev = model.evaluate(theta)
        result = None
        n_iter, converged, history, at_bound = 0, True, (), np.zeros(model.k, bool)
    elif not design.blocks:
        theta = _ols_variance(model)
        ev = model.evaluate(theta)
        n_iter, converged, history, at_bound = 0, True, (), np.zeros(1, bool)
    else:
        # AI-REML cannot converge on a boundary it can only approach: hold its
        # non-convergence warning until the Λ form has had its say
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always", ConvergenceWarning)
            result = fit_variances(model, max_iter=max_iter, verbose=verbose,
                                   hand_over=lambda t: _heads_to_boundary(model, t))
        theta, ev = result.theta, result.evaluation
        n_iter, converged, history, at_bound = (result.n_iter, result.converged,
                                                tuple(result.history), result.at_bound)
        boundary = None
        if _heads_to_boundary(model, theta):
            t0 = time.perf_counter()
            boundary = fit_on_boundary(model, theta)
            if boundary.m2ll < ev.m2ll:
                log.info("boundary fit in the relative-factor form: logLik %.10g -> %.10g "
                         "(%d evaluations)", ev.loglik, -0.5 * boundary.m2ll, boundary.n_eval)
                history += (IterationRecord(n_iter + 1, "Λ form (COBYQA)", boundary.theta.copy(),
                                            -0.5 * boundary.m2ll, float(boundary.n_eval),
                                            np.nan, time.perf_counter() - t0),)
                theta, at_bound = _interior(model, boundary.theta)
                ev = model.evaluate(theta)
                return _assemble(formula, design, model, theta, ev, n_iter, True, history,
                                 at_bound, estimated=True, boundary=boundary)
        for w in held:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if result.handed_over:
            warnings.warn(f"REML stopped after {n_iter} iterations near the boundary of the "
                          "PSD cone and the Λ form did not improve on it",
                          ConvergenceWarning, stacklevel=3)
    return _assemble(formula, design, model, theta, ev, n_iter, converged, history,
                     at_bound, estimated=variances is None)


def _heads_to_boundary(model: Model, theta: np.ndarray) -> bool:
    """True when an unstructured G₀ (d ≥ 2) is near rank deficiency at the AI-REML estimate."""
    G0s, _ = model.split(theta)
    for G in G0s:
        if G.shape[0] >= 2:
            w = np.linalg.eigvalsh(G)
            if w[-1] <= 0 or w[0] / w[-1] <= NEAR_SINGULAR_TOL:
                return True
    return False


def _interior(model: Model, theta: np.ndarray) -> tuple:
    """θ moved just inside the PD cone so that the G⁻¹ form of the MME exists.

    Each G₀'s eigenvalues are raised to at least ``BOUNDARY_FLOOR`` × its largest,
    a variance at zero to 1e-10 × max|θ| (``fit_variances``' bound, flagged at_bound).
    """
    out, at_bound = [], []
    G0s, s2e = model.split(theta)
    lb = 1e-10 * np.abs(theta).max()
    for s, G in zip(model.mme.structures, G0s):
        if s.d == 1:
            zero = G[0, 0] <= lb
            out.append(np.array([max(G[0, 0], lb)]))
            at_bound.append([zero])
            continue
        w, V = np.linalg.eigh(G)
        w = np.maximum(w, BOUNDARY_FLOOR * max(w[-1], lb))
        out.append(s.theta_of((V * w) @ V.T))
        at_bound.append(np.zeros(s.n_params, bool))
    return (np.concatenate(out + [np.array([s2e])]),
            np.concatenate([np.asarray(a, bool) for a in at_bound] + [np.array([False])]))


def _ols_variance(model: Model) -> np.ndarray:
    X, y = model.mme.design.X, model.mme.y
    p = X.shape[1]
    r = ols_residuals(X, y)
    denom = len(y) - (p if model.method == "REML" else 0)
    if denom <= 0:
        raise DataError(f"{len(y)} observations cannot estimate {p} fixed effects and a residual variance")
    return np.array([float(r @ r) / denom])


def _theta_from_variances(model: Model, variances: dict) -> np.ndarray:
    out = []
    known = set(variances)
    for s in model.mme.structures:
        g = s.block.group
        if g not in variances:
            raise DataError(f"variances: no value for random term {g!r} (given: {sorted(known)})")
        G0 = np.atleast_2d(np.asarray(variances[g], dtype=float))
        if G0.shape != (s.d, s.d):
            raise DataError(f"variances[{g!r}] must be {s.d} × {s.d} for terms {s.block.terms}")
        out.append(s.theta_of(G0))
    if "Residual" not in variances:
        raise DataError("variances: a 'Residual' value is required")
    theta = np.concatenate(out + [np.array([float(variances["Residual"])])])
    if not model.feasible(theta):
        raise DataError("variances: each variance must be > 0 and each G₀ positive definite")
    return theta


def _vc_table(model: Model, theta: np.ndarray, se: np.ndarray) -> pd.DataFrame:
    rows, i = [], 0
    for s in model.mme.structures:
        for a, b in s.pairs:
            t1, t2 = s.block.terms[a], s.block.terms[b]
            rows.append((s.block.group, t1 if a == b else t2, "" if a == b else t1,
                         theta[i], se[i]))
            i += 1
    rows.append(("Residual", "", "", theta[-1], se[-1]))
    return pd.DataFrame(rows, columns=["group", "term1", "term2", "estimate", "std_error"])


def _assemble(formula, design, model, theta, ev, n_iter, converged, history, at_bound,
              estimated, boundary: BoundaryResult | None = None) -> Fit:
    """Results at θ; with ``boundary``, θ is its estimate moved just inside the PD cone
    (``_interior``) and the reported G₀, σ²ₑ and logLik are the Λ form's exact ones."""
    theta_report = boundary.theta if boundary is not None else theta
    loglik = -0.5 * boundary.m2ll if boundary is not None else ev.loglik
    mme = model.mme
    p = mme.p
    F = model._fixed_columns() if p else np.zeros((mme.dim, 0))
    vcov_beta = F[:p].copy()
    blocks = []
    if mme.structures:
        if ev.cuu_diag is not None:
            cuu = ev.cuu_diag
        else:
            diag = np.arange(p, mme.dim, dtype=np.int64)
            cuu = mme.selected_inverse(diag, diag)
        Fu = F[p:]
        cond = cuu - (np.einsum("ij,jk,ik->i", Fu, np.linalg.inv(vcov_beta), Fu) if p else 0.0)
        G0s, _ = model.split(theta)
        for s, G0 in zip(mme.structures, G0s):
            sl = slice(s.offset - p, s.offset - p + s.block.q)
            shape = (s.d, s.L)
            pev = cuu[sl].reshape(shape)
            kdiag = s.block.Kdiag if s.block.Kdiag is not None else np.full(s.L, np.nan)
            prior = np.diag(G0)[:, None] * kdiag[None, :]
            blocks.append(RandomEffectsBlock(
                group=s.block.group, terms=s.block.terms, levels=s.block.levels,
                blup=ev.solution[s.offset:s.offset + s.block.q].reshape(shape),
                pev=pev, cond_var=cond[sl].reshape(shape), reliability=1.0 - pev / prior))
    # θ standard errors from AI⁻¹; df (Satterthwaite) are computed lazily by Internals
    if mme.structures and estimated:
        free = ~at_bound
        ai_inv = np.zeros_like(ev.AI)
        ai_inv[np.ix_(free, free)] = np.linalg.pinv(ev.AI[np.ix_(free, free)])
        se = np.sqrt(np.maximum(np.diag(ai_inv), 0.0))
        df_method = "Satterthwaite"
    elif mme.structures:
        ai_inv = np.zeros((model.k, model.k))
        se = np.full(model.k, np.nan)
        df_method = "asymptotic (variances given)"
    else:
        se = np.array([theta[0] * np.sqrt(2.0 / (mme.n - p))])
        ai_inv = np.diag(se ** 2)
        df_method = "residual"
    # lme4's isSingular: a variance at zero, or a G₀ (d > 1) of deficient rank
    G0s, _ = model.split(theta_report)
    se_mask, i = np.zeros(model.k, bool), 0
    singular = bool(np.any(at_bound))
    messages = ["a variance is estimated at zero"] if singular else []
    if estimated:
        for b, s, G in zip(design.blocks, mme.structures, G0s):
            i += s.n_params
            if G.shape[0] < 2:
                continue
            ev_G = np.linalg.eigvalsh(G)
            ratio = max(ev_G[0] / ev_G[-1], 0.0) if ev_G[-1] > 0 else 0.0
            # rank-deficient at θ̂ (the Λ form's optimum, ``boundary``); or heading there
            # when neither AI-REML nor the Λ form got further (the estimate stays PSD)
            if ratio <= SINGULAR_TOL or (not converged and ratio <= NEAR_SINGULAR_TOL):
                singular = True
                if boundary is not None:
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
                       if boundary is not None else "")
                    + ("" if converged else
                       "; the fit stopped short of the boundary optimum (logLik may be a "
                       "little below lme4's); simplify the term, e.g. fewer slopes or '||' "
                       f"for '{b.group}'"))
    if singular:
        warnings.warn("boundary (singular) fit: " + "; ".join(messages), SingularFitWarning,
                      stacklevel=3)
    n_params = p + model.k
    resid = ev.resid
    internals = Internals(design=design, model=model, theta=theta, F=F, ai=ev.AI,
                          vcov_theta_ai=ai_inv, at_bound=at_bound, estimated=estimated,
                          boundary=boundary)
    return Fit(formula=formula, method=model.method, nobs=mme.n,
               fixed_names=design.fixed_names, aliased=design.aliased, beta=ev.solution[:p].copy(),
               vcov_beta=vcov_beta, df_method=df_method,
               vc_table=_vc_table(model, np.where(at_bound, 0.0, theta_report),
                                  np.where(se_mask, np.nan, se)),
               blocks=tuple(blocks), loglik=loglik,
               n_params=n_params, converged=converged, n_iter=n_iter, history=history,
               singular=singular, estimated=estimated, fitted_values=mme.y - resid,
               residual_values=resid, internals=internals)
