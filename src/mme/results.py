"""The fitted model: immutable, pandas out, an lme4-like summary.

Stable column names (other code relies on them):

- ``fixed_effects``: index ``term``; ``estimate, std_error, df, t_value, p_value``
- ``random_effects``: ``group, term, level, blup, pev, cond_var``
  (``pev`` = Var(u − û) = diagonal of Cᵘᵘ, Henderson's prediction-error variance,
  which accounts for the estimation of β; ``cond_var`` = Var(u | y, β = β̂), the
  diagonal of (Z'R⁻¹Z + G⁻¹)⁻¹, which is what lme4's ``condVar`` reports)
  ``reliability`` = 1 − PEV / (σ²ₖ Kᵢᵢ) (Kᵢᵢ = 1 + Fᵢ for a pedigree), ``accuracy`` = √reliability
- ``variance_components``: ``group, term1, term2, estimate, std_error``
  (``term2`` empty for a variance; the residual row has group ``Residual``)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

from ._errors import UnknownTermError
from .engine.estimate import Estimate
from .inference.satterthwaite import observed_information, satterthwaite_df, vcov_derivatives

#: the columns of ``Fit.random_effects``, in order
RANDOM_EFFECTS_COLUMNS = ("group", "term", "level", "blup", "pev", "cond_var", "reliability",
                          "accuracy")


def read_only(a) -> np.ndarray:
    """A read-only copy of ``a`` (results hand out arrays that cannot change them)."""
    out = np.array(a, dtype=float, copy=True)
    out.setflags(write=False)
    return out


def random_effects_frame(blocks, columns: dict) -> pd.DataFrame:
    """The long table of random effects: one row per (block, term, level).

    Parameters
    ----------
    blocks : sequence of objects with ``group``, ``terms``, ``levels``
    columns : dict name → list (one per block) of d × L arrays

    Returns
    -------
    DataFrame with ``group, term, level`` and the given columns.
    """
    frames = []
    for i, b in enumerate(blocks):
        # integer-coded levels (a RangeIndex, 10⁷ animals over MPI): the int64 column
        # a list of them gives, without 10⁷ Python ints
        levels = (b.levels.to_numpy() if isinstance(b.levels, pd.RangeIndex)
                  else list(b.levels))
        for a, term in enumerate(b.terms):
            frames.append(pd.DataFrame({"group": b.group, "term": term, "level": levels,
                                        **{k: np.asarray(v[i][a]) for k, v in columns.items()}}))
    if not frames:
        return pd.DataFrame(columns=["group", "term", "level", *columns])
    return pd.concat(frames, ignore_index=True)


@dataclass(eq=False)
class Internals:
    """What inference needs after the fit (kept off the public surface).

    It holds the ``Estimate`` and with it the MME and their CHOLMOD factor: a ``Fit``
    keeps the factor alive (about 9 GB at 1M animals) so that Kenward–Roger df,
    emmeans and anova on new contrasts can use it; ``Fit.release()`` drops it. The
    Satterthwaite pieces — the observed information of θ (2k score evaluations) and
    ∂Cˣˣ/∂θ — and Kenward–Roger's are computed on first use and cached here.
    """

    estimate: Estimate
    F: np.ndarray                 # C⁻¹[:, :p] at θ
    vcov_theta_ai: np.ndarray     # AI⁻¹ (0 rows/cols at the boundary)
    #: Kenward–Roger results by their options (``inference.kenward_roger``)
    kenward_roger_cache: dict = field(default_factory=dict)

    # -- views of the estimate ------------------------------------------------
    @property
    def likelihood(self):
        return self.estimate.likelihood

    @property
    def mme(self):
        return self.estimate.mme

    @property
    def design(self):
        return self.estimate.mme.design

    @property
    def theta(self) -> np.ndarray:
        """θ at which the MME are solved (inside the PD cone)."""
        return self.estimate.theta

    @property
    def theta_reported(self) -> np.ndarray:
        """θ̂ as reported: on a boundary fit the Λ form's exact (singular) one."""
        return self.estimate.theta_reported

    @property
    def at_bound(self) -> np.ndarray:
        return self.estimate.at_bound

    @property
    def estimated(self) -> bool:
        return self.estimate.estimated

    @property
    def boundary(self):
        return self.estimate.boundary

    @property
    def ai(self) -> np.ndarray:
        """The average-information matrix at θ."""
        return self.estimate.evaluation.AI

    def factor_at_estimate(self):
        """The MME with C and its factor at θ̂ (``MME.ensure``)."""
        self.mme.ensure(self.theta)
        return self.mme

    def release(self) -> None:
        self.mme.release()

    @property
    def has_variances(self) -> bool:
        """True when θ was estimated for a model with random terms (df need θ's covariance)."""
        return (bool(self.mme.structures) or not self.mme.residual.is_scalar) and self.estimated

    # -- lazily computed pieces ---------------------------------------------
    @cached_property
    def vcov_theta(self) -> np.ndarray:
        """Asymptotic Var(θ̂): inverse observed information (lmerTest's choice)."""
        k = self.mme.k
        if not self.has_variances:
            return np.zeros((k, k))
        J = observed_information(self.likelihood, self.theta, self.at_bound)
        free = ~self.at_bound
        out = np.zeros_like(J)
        out[np.ix_(free, free)] = np.linalg.pinv(J[np.ix_(free, free)])
        return out

    @cached_property
    def dvcov(self):
        """∂Cˣˣ/∂θᵢ, array (k, p, p); None without estimated variances."""
        if not self.has_variances:
            return None
        p = self.mme.p
        if not p:
            return np.zeros((self.mme.k, 0, 0))
        return vcov_derivatives(self.likelihood, self.theta, self.F)

    @cached_property
    def satterthwaite_pieces(self) -> tuple:
        """(∂Var(β̂)/∂φ, Var(φ̂)) for Satterthwaite's df: φ = θ, or on a boundary
        (singular G₀) φ = (λ, σ²ₑ) of the Λ form (``boundary.satterthwaite_pieces``)."""
        from .engine.boundary import satterthwaite_pieces
        if self.boundary is None or not self.mme.p or not self.mme.residual.is_scalar:
            # (a structured residual's boundary fit: θ-form pieces at θ moved inside)
            return self.dvcov, self.vcov_theta
        b = self.boundary
        return satterthwaite_pieces(self.likelihood, b.lam, float(b.theta[-1]))

    @cached_property
    def fixed_df(self) -> np.ndarray:
        """Default df of each coefficient: Satterthwaite (mixed), residual (fixed-only)."""
        mme = self.mme
        p = mme.p
        if not mme.structures and mme.residual.is_scalar:
            out = np.full(p, float(mme.n - p))
        elif not self.estimated:
            out = np.full(p, np.inf)
        elif not p:
            out = np.zeros(0)
        else:
            out = satterthwaite_df(np.eye(p), self.F[:p], *self.satterthwaite_pieces)
        return read_only(out)


@dataclass(frozen=True)
class FactorAnalytic:
    """An FA(k) G₀ = ΛΛ' + Ψ as ASReml reports it (``Fit.factor_analytic``).

    ``loadings`` (terms × fa1…fak, as estimated: Λ's upper triangle 0),
    ``rotated_loadings`` (Λ·V with Λ'Λ = V D V': orthogonal factors ordered by the
    variance they explain, the largest |loading| of each positive),
    ``specific_variances`` (ψ), ``G0`` (ΛΛ' + Ψ), ``correlations`` (of G0),
    ``percent_explained`` (100·diag(ΛΛ')/diag(G0) per term), ``scores`` (the genotypes'
    predicted rotated factor scores f̂ = (Λ*'G₀⁻¹ ⊗ I)û, levels × factors).
    """

    loadings: pd.DataFrame
    rotated_loadings: pd.DataFrame
    specific_variances: pd.Series
    G0: pd.DataFrame
    correlations: pd.DataFrame
    percent_explained: pd.Series
    scores: pd.DataFrame


@dataclass(frozen=True)
class RandomEffectsBlock:
    """The predicted effects of one random term (arrays d × L, read-only)."""

    group: str
    terms: tuple
    levels: pd.Index
    blup: np.ndarray       # d × L
    pev: np.ndarray        # d × L
    cond_var: np.ndarray   # d × L
    reliability: np.ndarray = None  # d × L: 1 − PEV / (G₀[a,a] · K[i,i])

    def __post_init__(self):
        for f in ("blup", "pev", "cond_var", "reliability"):
            object.__setattr__(self, f, read_only(getattr(self, f)))


@dataclass(frozen=True)
class Fit:
    """A fitted linear mixed model. Build it with :func:`mme.fit`.

    Immutable: its arrays are read-only and its tables are new DataFrames on every
    access. It keeps the MME's Cholesky factor for later inference (Kenward–Roger,
    emmeans, anova); :meth:`release` drops it.
    """

    formula: str
    method: str
    nobs: int
    fixed_names: tuple
    aliased: tuple
    beta: np.ndarray
    vcov_beta: np.ndarray
    df_method: str
    _vc_table: pd.DataFrame
    blocks: tuple
    loglik: float
    n_params: int
    converged: bool
    n_iter: int
    history: tuple
    singular: bool
    estimated: bool              # False when the variances were given
    fitted_values: np.ndarray = field(repr=False)
    residual_values: np.ndarray = field(repr=False)
    internals: Internals = field(repr=False, default=None, compare=False)

    def __post_init__(self):
        for f in ("beta", "vcov_beta", "fitted_values", "residual_values"):
            object.__setattr__(self, f, read_only(getattr(self, f)))

    def release(self) -> None:
        """Drop the Cholesky factor of the MME (the largest thing a fit holds: ~9 GB at
        1M animals). Tables already computed stay; quantities that need the factor
        (Kenward–Roger df, new emmeans/anova/contrasts, marginal covariance) then raise
        ``mme.FactorReleasedError``. Satterthwaite df of the coefficients are kept."""
        _ = self.df_beta     # computed while the factor exists
        self.internals.release()

    @property
    def df_beta(self) -> np.ndarray:
        """df of each coefficient by ``df_method`` (computed on first use)."""
        return self.internals.fixed_df

    # -- tables --------------------------------------------------------------
    @property
    def fixed_effects(self) -> pd.DataFrame:
        se = np.sqrt(np.diag(self.vcov_beta))
        t = self.beta / se
        df = self.df_beta
        p = 2.0 * stats.t.sf(np.abs(t), df)
        out = pd.DataFrame({"estimate": self.beta, "std_error": se, "df": df,
                            "t_value": t, "p_value": p},
                           index=pd.Index(self.fixed_names, name="term"))
        return out

    @property
    def random_effects(self) -> pd.DataFrame:
        bs = self.blocks
        return random_effects_frame(bs, {
            "blup": [b.blup for b in bs], "pev": [b.pev for b in bs],
            "cond_var": [b.cond_var for b in bs], "reliability": [b.reliability for b in bs],
            "accuracy": [np.sqrt(np.clip(b.reliability, 0.0, 1.0)) for b in bs]})

    @property
    def variance_components(self) -> pd.DataFrame:
        return self._vc_table.copy()

    @property
    def vcov(self) -> pd.DataFrame:
        """Var(β̂): the fixed block of C⁻¹, as a DataFrame."""
        return pd.DataFrame(self.vcov_beta, index=self.fixed_names, columns=self.fixed_names)

    @property
    def iteration_log(self) -> pd.DataFrame:
        """One row per REML iteration: kind of step, log-likelihood, step length, the
        Newton decrement score'·AI⁻¹·score at the new θ (the convergence test), θ, seconds."""
        rows = [{"iteration": r.iteration, "kind": r.kind, "loglik": r.loglik, "step": r.step,
                 "decrement": r.decrement, "seconds": r.seconds,
                 **{f"theta{i}": t for i, t in enumerate(r.theta)}} for r in self.history]
        return pd.DataFrame(rows)

    def heritability(self, group: str, term: str = "(Intercept)") -> pd.Series:
        """σ²_group,term / (sum of the variances) with a delta-method SE from AI⁻¹
        (NaN at known variances: nothing was estimated).

        Univariate fits: the denominator sums every variance in ``variance_components``
        (for random slopes, interpret with care: it ignores covariances and the scale
        of the slope variables). Multi-trait fits (``cbind``): per trait — ``term`` is
        the trait's term (``"traitWWG"``) and the denominator sums that trait's
        variances (every group's ``traitWWG`` variance and the residual's ``WWG``).
        """
        vc = self._vc_table
        variance = (vc["term2"] == "").to_numpy()
        sel = np.flatnonzero(((vc["group"] == group) & (vc["term1"] == term)).to_numpy()
                             & variance)
        if len(sel) != 1:
            terms = sorted(set(vc.loc[(vc["group"] == group).to_numpy() & variance, "term1"]))
            raise UnknownTermError(f"no variance for group {group!r}, term {term!r} in "
                                   f"variance_components (that group's terms: {terms})")
        res = self.internals.mme.residual
        if res.factor == "trait" and term.startswith("trait") and term[5:] in res.levels:
            same = (vc["term1"] == term) | ((vc["group"] == "Residual") & (vc["term1"] == term[5:]))
            var_rows = np.flatnonzero(variance & same.to_numpy())
        else:
            var_rows = np.flatnonzero(variance)
        theta = vc["estimate"].to_numpy()
        total = theta[var_rows].sum()
        h2 = theta[sel[0]] / total
        grad = np.zeros(len(theta))
        grad[var_rows] = -theta[sel[0]] / total ** 2
        grad[sel[0]] += 1.0 / total
        # at known variances (``variances=``) θ has no sampling variance to carry: NaN
        se = (float(np.sqrt(grad @ self.internals.vcov_theta_ai @ grad)) if self.estimated
              else float("nan"))
        return pd.Series({"estimate": h2, "std_error": se}, name=f"h2({group}, {term})")

    def factor_analytic(self, group: str) -> FactorAnalytic:
        """Loadings, rotated loadings, specific variances, implied G₀ and correlations of
        a term fitted with ``structure={group: "fa(k)"}``."""
        mme = self.internals.mme
        i = 0
        for s, blk in zip(mme.structures, self.blocks):
            if s.block.group == group:
                break
            i += s.n_params
        else:
            raise UnknownTermError(f"no random group {group!r}")
        if not s.fa_k:
            raise UnknownTermError(f"group {group!r} is not factor analytic (structure='fa(k)')")
        theta = self.internals.theta_reported[i:i + s.n_params]
        Lam, psi = s.fa_parts(theta)
        G0 = Lam @ Lam.T + np.diag(psi)
        w, V = np.linalg.eigh(Lam.T @ Lam)
        V = V[:, ::-1]
        rot = Lam @ V
        rot = rot * np.where(rot[np.abs(rot).argmax(axis=0), range(rot.shape[1])] < 0, -1.0, 1.0)
        terms = list(s.block.terms)
        names = [f"fa{j + 1}" for j in range(s.fa_k)]
        sd = np.sqrt(np.diag(G0))
        U = np.asarray(blk.blup)                      # d × L
        scores = (rot.T @ np.linalg.solve(G0, U)).T   # L × k
        return FactorAnalytic(
            loadings=pd.DataFrame(Lam, index=terms, columns=names),
            rotated_loadings=pd.DataFrame(rot, index=terms, columns=names),
            specific_variances=pd.Series(psi, index=terms, name="psi"),
            G0=pd.DataFrame(G0, index=terms, columns=terms),
            correlations=pd.DataFrame(G0 / np.outer(sd, sd), index=terms, columns=terms),
            percent_explained=pd.Series(100 * np.sum(Lam ** 2, axis=1) / np.diag(G0),
                                        index=terms, name="percent_explained"),
            scores=pd.DataFrame(scores, index=pd.Index(list(blk.levels), name="level"),
                                columns=names))

    def genetic_correlation(self, group: str) -> pd.DataFrame:
        """Correlations between the terms of one random group (traits of a multi-trait
        animal term, direct and maternal effects of a ``covary`` block):
        r = G₀[a, b] / √(G₀[a, a] G₀[b, b]) with delta-method SEs from AI⁻¹.

        Returns a DataFrame with columns ``term1, term2, estimate, std_error``.
        """
        vc = self._vc_table
        rows = np.flatnonzero((vc["group"] == group).to_numpy())
        if not rows.size:
            raise UnknownTermError(f"no random group {group!r} (groups: "
                                   f"{sorted(set(vc['group']))})")
        var = {vc["term1"].iloc[i]: i for i in rows if vc["term2"].iloc[i] == ""}
        theta = vc["estimate"].to_numpy()
        out = []
        for i in rows:
            t1, t2 = vc["term1"].iloc[i], vc["term2"].iloc[i]
            if t2 == "":
                continue
            a, b = var[t1], var[t2]
            denom = np.sqrt(theta[a] * theta[b])
            r = theta[i] / denom
            grad = np.zeros(len(theta))
            grad[i] = 1.0 / denom
            grad[a] = -0.5 * r / theta[a]
            grad[b] = -0.5 * r / theta[b]
            se = (float(np.sqrt(max(grad @ self.internals.vcov_theta_ai @ grad, 0.0)))
                  if self.estimated else float("nan"))    # NaN at known variances
            out.append((t1, t2, r, se))
        if not out:
            raise UnknownTermError(f"group {group!r} has a single term: no correlation")
        return pd.DataFrame(out, columns=["term1", "term2", "estimate", "std_error"])

    # -- criteria --------------------------------------------------------------
    @property
    def estimation(self) -> str:
        """How the variances were obtained: ``"REML"``, ``"ML"``, ``"least squares"``
        (no random term: a linear model, as R's ``lm``) or ``"BLUP at known variances"``
        (``variances=``: nothing estimated but β and the BLUPs)."""
        from .engine.estimate import LEAST_SQUARES
        if not self.estimated:
            return "BLUP at known variances"
        if self.internals is not None and self.internals.estimate.route == LEAST_SQUARES:
            return "least squares"
        return self.method

    @property
    def loglik_kind(self) -> str:
        """What ``loglik`` is: ``"REML"``/``"ML"`` (maximised), ``"ML (as lm)"`` for a
        linear model (R's ``logLik(lm)``, whatever ``method``), or ``"REML at the given
        variances"``/``"ML at the given variances"`` (``variances=``: not maximised)."""
        est = self.estimation
        if est == "least squares":
            return "ML (as lm)"
        if est == "BLUP at known variances":
            return f"{self.method} at the given variances"
        return self.method

    @property
    def loglik_reml(self) -> float:
        """The REML log-likelihood at the fit's variances, for comparisons of REML fits
        with the same fixed effects (``inference.lrt``): R's ``logLik(lm, REML = TRUE)``
        for a linear model, ``loglik`` for a REML fit, NaN for an ML fit with random
        terms (not computed)."""
        est = self.internals.estimate if self.internals is not None else None
        if est is not None and est.linear_model_logliks is not None:
            return float(est.linear_model_logliks[1])
        return float(self.loglik) if self.method == "REML" else float("nan")

    @property
    def aic(self) -> float:
        """−2 logLik + 2 (p + k): R's AIC (``lm``: df = p + 1). NaN at known variances
        (``variances=``: the variances were not estimated and logLik not maximised)."""
        if not self.estimated:
            return float("nan")
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        """−2 logLik + log(n)(p + k); NaN at known variances (see ``aic``)."""
        if not self.estimated:
            return float("nan")
        return -2.0 * self.loglik + np.log(self.nobs) * self.n_params

    def _row_index(self) -> pd.Index:
        """The index of the rows used in the fit (the data's own labels, rows with
        missing values dropped); for a ``cbind`` fit (unit, trait) of the observed
        responses, unit = the wide row's position."""
        d = self.internals.design.data
        if ".unit" in d.columns and "trait" in d.columns and len(d) == self.nobs:
            return pd.MultiIndex.from_arrays([d[".unit"].to_numpy(), d["trait"].astype(str)],
                                             names=["unit", "trait"])
        if len(d) == len(self.fitted_values):
            return d.index.copy()
        return pd.RangeIndex(len(self.fitted_values))

    def fitted(self) -> pd.Series:
        """Xβ̂ + Zû for the rows used in the fit, indexed like the data (R's ``fitted``)."""
        return pd.Series(self.fitted_values.copy(), index=self._row_index(), name="fitted")

    def residuals(self) -> pd.Series:
        """y − Xβ̂ − Zû for the rows used in the fit, indexed like the data (R's
        ``residuals``, type "response")."""
        return pd.Series(self.residual_values.copy(), index=self._row_index(), name="residuals")

    # -- inference (implemented in their own modules) -------------------------
    def emmeans(self, specs, by=None, at=None, df_method="kenward-roger", level=0.95,
                contr=None, adjust=None, **options):
        """Estimated marginal means (and, for ``"pairwise ~ trt"`` or ``contr=``, their
        contrasts); see :func:`mme.inference.emmeans.emmeans`."""
        from .inference.emmeans import emmeans
        return emmeans(self, specs, by=by, at=at, df_method=df_method, level=level,
                       contr=contr, adjust=adjust, **options)

    def anova(self, df_method="satterthwaite"):
        """Type-III Wald F tests per term; see :func:`mme.inference.anova.anova`."""
        from .inference.anova import anova
        return anova(self, df_method=df_method)

    def confint(self, parm=None, level=0.95, method="profile", nsim=500, seed=None,
                df_method=None, tidy=False):
        """Confidence intervals as lme4's ``confint(merMod)``: ``method="profile"``
        (default; the ML deviance's profile), ``"Wald"`` or ``"boot"`` (parametric
        bootstrap, ``nsim`` replicates, ``seed``). Rows ``sd_(Intercept)|rep``, ``cor_…``,
        ``sigma``, then the fixed effects; columns ``"2.5 %"``, ``"97.5 %"`` (``tidy=True``:
        ``estimate, lower, upper``). See :func:`mme.inference.confint.confint`."""
        from .inference.confint import confint
        return confint(self, parm=parm, level=level, method=method, nsim=nsim, seed=seed,
                       df_method=df_method, tidy=tidy)

    def predict(self, newdata=None, include_random=True, interval=None, level=0.95):
        """Predictions for new data, with ``interval="confidence"`` or ``"prediction"`` a
        DataFrame ``fit, se_fit, lwr, upr``; see :func:`mme.inference.predict.predict`."""
        from .inference.predict import predict
        return predict(self, newdata, include_random=include_random, interval=interval,
                       level=level)

    def marginal_covariance(self, rows=None, force=False):
        """V = ZGZ' + R for chosen rows, sparse; see :func:`mme.inference.marginal.marginal_covariance`."""
        from .inference.marginal import marginal_covariance
        return marginal_covariance(self, rows, force=force)

    # -- printing ------------------------------------------------------------
    def __repr__(self) -> str:
        vc = ", ".join(f"{r.group}{'' if not r.term1 else '/' + r.term1}"
                       f"{'' if not r.term2 else ':' + r.term2}={r.estimate:.4g}"
                       for r in self._vc_table.itertuples())
        kind = "" if self.loglik_kind == self.method else f"({self.loglik_kind})"
        return (f"<mme.Fit {self.estimation} '{self.formula}' n={self.nobs} "
                f"logLik{kind}={self.loglik:.4f} {vc}>")

    def _heading(self) -> list:
        """The summary's first lines: what was fitted, how, and what logLik is."""
        est = self.estimation
        if est == "least squares":
            sigma = ("RSS/(n − p), as R's sigma(lm)" if self.method == "REML"
                     else "RSS/n (method='ML')")
            return ["Linear model fit by least squares (mme; as R's lm)",
                    f"logLik is lm's: maximum likelihood (σ² = RSS/n), df = p + 1 = "
                    f"{self.n_params}; residual variance below = {sigma}"]
        kind = "Linear mixed model" if self.blocks else "Linear model"
        if est == "BLUP at known variances":
            return [f"{kind}: BLUP at known variances (mme; no REML, variances given)",
                    f"logLik is the {self.method} log-likelihood at the given variances "
                    "(not maximised; no AIC/BIC, no SEs of the variances)"]
        what = {"REML": "REML", "ML": "maximum likelihood"}[self.method]
        return [f"{kind} fit by {what} (mme, Henderson's MME + AI-REML)"]

    def summary(self) -> str:
        """lme4's ``summary(lmer)`` as lmerTest prints it (scaled residuals, random effects
        with variances, SDs and correlations, fixed effects with df and p-values, their
        correlations; R's number formatting), returned as a string; see
        :mod:`mme.inference.summary`."""
        from .inference.summary import summary_text
        return summary_text(self)

    def methods_text(self) -> str:
        """The Materials-and-Methods paragraph of this fit (Markdown): the model in words
        and as the formula, covariance and residual structures, the estimation (REML/ML
        by AI-REML, EM fallbacks, the convergence criterion), the df method, software
        versions and references as they apply. See :mod:`mme.methods` (the command line
        writes the same text, with what the run knows, to ``methods.md``)."""
        from .methods import methods_text
        return methods_text(self)

    def _repr_html_(self) -> str:
        return "<pre>" + self.summary().replace("<", "&lt;") + "</pre>"
