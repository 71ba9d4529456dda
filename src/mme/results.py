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

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class RandomEffectsBlock:
    group: str
    terms: tuple
    levels: pd.Index
    blup: np.ndarray       # d × L
    pev: np.ndarray        # d × L
    cond_var: np.ndarray   # d × L
    reliability: np.ndarray = None  # d × L: 1 − PEV / (G₀[a,a] · K[i,i])


@dataclass(frozen=True)
class Fit:
    """A fitted linear mixed model. Build it with :func:`mme.fit`."""

    formula: str
    method: str
    nobs: int
    fixed_names: tuple
    aliased: tuple
    beta: np.ndarray
    vcov_beta: np.ndarray
    df_method: str
    vc_table: pd.DataFrame
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
    internals: object = field(repr=False, default=None, compare=False)

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
        frames = []
        for b in self.blocks:
            for a, term in enumerate(b.terms):
                frames.append(pd.DataFrame({
                    "group": b.group, "term": term, "level": list(b.levels),
                    "blup": b.blup[a], "pev": b.pev[a], "cond_var": b.cond_var[a],
                    "reliability": b.reliability[a],
                    "accuracy": np.sqrt(np.clip(b.reliability[a], 0.0, 1.0))}))
        if not frames:
            return pd.DataFrame(columns=["group", "term", "level", "blup", "pev", "cond_var",
                                         "reliability", "accuracy"])
        return pd.concat(frames, ignore_index=True)

    @property
    def variance_components(self) -> pd.DataFrame:
        return self.vc_table.copy()

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
        """σ²_group / (Σ variances + σ²ₑ) with a delta-method SE from AI⁻¹.

        The denominator sums every variance in ``variance_components`` (for
        models with random slopes, interpret with care: it ignores covariances
        and the scale of the slope variables).
        """
        vc = self.vc_table
        var_rows = np.flatnonzero((vc["term2"] == "").to_numpy())
        sel = np.flatnonzero(((vc["group"] == group) & (vc["term1"] == term)
                              & (vc["term2"] == "")).to_numpy())
        if len(sel) != 1:
            raise KeyError(f"no variance for group {group!r}, term {term!r} in variance_components")
        theta = vc["estimate"].to_numpy()
        total = theta[var_rows].sum()
        h2 = theta[sel[0]] / total
        grad = np.zeros(len(theta))
        grad[var_rows] = -theta[sel[0]] / total ** 2
        grad[sel[0]] += 1.0 / total
        se = float(np.sqrt(grad @ self.internals.vcov_theta_ai @ grad))
        return pd.Series({"estimate": h2, "std_error": se}, name=f"h2({group})")

    # -- criteria --------------------------------------------------------------
    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + np.log(self.nobs) * self.n_params

    def fitted(self) -> np.ndarray:
        """Xβ̂ + Zû for the rows used in the fit."""
        return self.fitted_values.copy()

    def residuals(self) -> np.ndarray:
        """y − Xβ̂ − Zû for the rows used in the fit."""
        return self.residual_values.copy()

    # -- inference (implemented in their own modules) -------------------------
    def emmeans(self, specs, by=None, at=None, df_method="kenward-roger", level=0.95):
        """Estimated marginal means; see :func:`mme.emmeans.emmeans`."""
        from .inference.emmeans import emmeans
        return emmeans(self, specs, by=by, at=at, df_method=df_method, level=level)

    def anova(self, df_method="satterthwaite"):
        """Type-III Wald F tests per term; see :func:`mme.anova.anova`."""
        from .inference.anova import anova
        return anova(self, df_method=df_method)

    def confint(self, level=0.95, df_method="satterthwaite"):
        """Wald confidence intervals; see :func:`mme.anova.confint`."""
        from .inference.anova import confint
        return confint(self, level=level, df_method=df_method)

    def predict(self, newdata=None, include_random=True):
        """Predictions for new data; see :func:`mme.predict.predict`."""
        from .inference.predict import predict
        return predict(self, newdata, include_random=include_random)

    def marginal_covariance(self, rows=None, force=False):
        """V = ZGZ' + R for chosen rows, sparse; see :func:`mme.marginal.marginal_covariance`."""
        from .inference.marginal import marginal_covariance
        return marginal_covariance(self, rows, force=force)

    # -- printing ------------------------------------------------------------
    def __repr__(self) -> str:
        vc = ", ".join(f"{r.group}{'' if not r.term1 else '/' + r.term1}"
                       f"{'' if not r.term2 else ':' + r.term2}={r.estimate:.4g}"
                       for r in self.vc_table.itertuples())
        return (f"<mme.Fit {self.method} '{self.formula}' n={self.nobs} "
                f"logLik={self.loglik:.4f} {vc}>")

    def summary(self) -> str:
        """An lme4-like printed summary (returned as a string)."""
        lines = []
        kind = "Linear mixed model fit by " if self.blocks else "Linear model fit by "
        what = {"REML": "REML", "ML": "maximum likelihood"}[self.method]
        lines.append(f"{kind}{what} (mme, Henderson's MME + AI-REML)")
        lines.append(f"Formula: {self.formula}")
        lines.append("")
        crit = pd.DataFrame({"AIC": [self.aic], "BIC": [self.bic], "logLik": [self.loglik]})
        lines.append(crit.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        state = "converged" if self.converged else "NOT converged"
        if not self.estimated:
            state = "variances given (no REML)"
        lines.append(f"{state} in {self.n_iter} iterations" + (
            "; boundary (singular) fit" if self.singular else ""))
        lines.append("")
        lines.append("Variance components:")
        vc = self.vc_table.copy()
        vc["std_dev"] = np.where(vc["term2"] == "", np.sqrt(np.abs(vc["estimate"])), np.nan)
        lines.append(vc.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
        ngr = ", ".join(f"{b.group}, {len(b.levels)}" for b in self.blocks)
        lines.append(f"Number of obs: {self.nobs}" + (f"; groups: {ngr}" if ngr else ""))
        lines.append("")
        lines.append(f"Fixed effects (df: {self.df_method}):")
        lines.append(self.fixed_effects.to_string(float_format=lambda v: f"{v:.6g}"))
        if self.aliased:
            lines.append(f"Not estimable (aliased): {', '.join(self.aliased)}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return "<pre>" + self.summary().replace("<", "&lt;") + "</pre>"
