"""Profile-likelihood confidence intervals, as lme4's ``confint(merMod, method="profile")``.

What lme4 does (``profile.merMod`` → ``devfun2``, lme4 1.1-31) and this module repeats:

- The **ML** deviance is profiled, whatever the fit's criterion: ``devfun2`` starts with
  ``refitML``, so the intervals of a REML fit are those of its ML refit.
- Parameters on lme4's "sdcor" scale, named as with ``oldNames = FALSE``: for each
  random term the standard deviations ``sd_<term>|<group>`` and correlations
  ``cor_<term_i>.<term_j>|<group>`` (lower triangle of G₀ column by column), then the
  residual ``sigma``, then the fixed effects by name.
- For a variance parameter ψ held at x, −2ℓ_ML(ψ = x) is minimised over the others
  (the SDs ≥ 0, the correlations in [−1, 1], σ > 0) with β at its conditional optimum;
  for a fixed effect β_j held at b, over θ with σ²ₑ and β₋ⱼ profiled out.
- ζ(x) = sign(x − x̂) √(D(x) − D̂); the limits are where ζ = ∓z (z = Φ⁻¹((1+level)/2)).
  A side that reaches its bound first (an SD at 0, a correlation at ±1) ends there —
  a variance estimated at 0 gets lower limit 0, never a negative SD.

Where lme4 reads the limits off an interpolating spline through a grid of profile
points, here each limit is the root of ζ(x) ∓ z found by ``scipy.optimize.brentq``
(so the two agree to the spline's interpolation error, about 1e-4 relative).

The deviance is evaluated in lme4's relative-factor form (``engine.boundary``:
u = (Λ ⊗ I)v, C* = T'W'WT + I ⊗ K⁻¹), which stays positive definite when an SD is 0
or a correlation is ±1; it uses the fit's W, K⁻¹ and weights (one CHOLMOD analysis of
C*'s pattern, one numeric factorization per deviance). The nuisance parameters are
re-optimised by L-BFGS-B (``scipy.optimize``), warm-started from the nearest point done.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from .._errors import OptionError, UnknownTermError
from ..engine.boundary import RelativeFactorForm
from ..engine.reml import Likelihood

__all__ = ["ProfileModel", "check_profilable", "lme4_parameters", "profile_intervals",
           "sdcor_of_theta"]

#: L-BFGS-B's stopping rules for the nuisance parameters (scaled to their estimates):
#: relative change of the deviance and projected gradient (central differences). On
#: sleepstudy the limits move by < 1e-9 relative against 1e-15 / 1e-9, at 1/3 the cost
INNER_FTOL = 1e-12
INNER_GTOL = 1e-7
#: most L-BFGS-B restarts off a lower bound of 0 (``minimize_box``)
MAX_RESTARTS = 5
#: brentq's tolerance on a limit, relative to the parameter's scale
ROOT_XTOL = 1e-9
#: most evaluations of ζ while looking for the far side of a limit
MAX_BRACKET_STEPS = 60


@dataclass(frozen=True)
class Parameter:
    """One variance parameter on lme4's sdcor scale."""

    name: str          # lme4's name (oldNames = FALSE)
    kind: str          # "sd", "cor" or "sigma"
    block: int         # index of the MME block (-1 for sigma)
    a: int             # row in G₀ (sd: a = b)
    b: int


def _psd_cholesky(R: np.ndarray):
    """Lower-triangular L with LL' = R for a PSD correlation matrix (pivots at 0 allowed:
    a correlation of ±1); None when R is not PSD."""
    d = R.shape[0]
    L = np.zeros_like(R)
    for j in range(d):
        dj = R[j, j] - L[j, :j] @ L[j, :j]
        if dj < -1e-10:
            return None
        L[j, j] = np.sqrt(max(dj, 0.0))
        for i in range(j + 1, d):
            num = R[i, j] - L[i, :j] @ L[j, :j]
            if L[j, j] > 1e-12:
                L[i, j] = num / L[j, j]
            elif abs(num) > 1e-8:
                return None
    return L


def lme4_block_order(structures) -> list:
    """The order in which lme4 lists random terms: ``mkReTrms`` reorders them by
    decreasing number of levels (``rev(order(nl))``) when a later term has more levels
    than an earlier one, and keeps the formula's order otherwise."""
    nl = np.array([s.L for s in structures])
    if len(nl) > 1 and np.any(np.diff(nl) > 0):
        return list(np.argsort(nl, kind="stable")[::-1])
    return list(range(len(structures)))


def lme4_parameters(mme) -> list:
    """The variance parameters in lme4's order with lme4's names (``oldNames = FALSE``)."""
    out = []
    for bi in lme4_block_order(mme.structures):
        s = mme.structures[bi]
        terms, g = s.block.terms, s.block.group
        for j in range(s.d):
            out.append(Parameter(f"sd_{terms[j]}|{g}", "sd", bi, j, j))
            if s.kind == "us":
                for i in range(j + 1, s.d):
                    out.append(Parameter(f"cor_{terms[i]}.{terms[j]}|{g}", "cor", bi, i, j))
    out.append(Parameter("sigma", "sigma", -1, 0, 0))
    return out


def sdcor_of_theta(mme, params: list, theta: np.ndarray) -> np.ndarray:
    """lme4's sdcor parameters (``lme4_parameters``) from θ (G₀ per block, σ²ₑ); the
    correlation of a term whose SD is 0 is reported as 0."""
    G0s, R0 = mme.split(np.asarray(theta, float))
    out = []
    for q in params:
        if q.kind == "sigma":
            out.append(np.sqrt(float(R0[0, 0])))
            continue
        G = G0s[q.block]
        if q.kind == "sd":
            out.append(np.sqrt(max(G[q.a, q.a], 0.0)))
        else:
            den = np.sqrt(max(G[q.a, q.a], 0.0) * max(G[q.b, q.b], 0.0))
            out.append(float(np.clip(G[q.a, q.b] / den, -1, 1)) if den > 0 else 0.0)
    return np.array(out)


def check_profilable(fit, method: str) -> None:
    """Raise ``OptionError`` (naming what is in the way) unless ``fit`` is a model whose
    ML deviance can be written in lme4's form: estimated variances, at least one random
    term, σ²ₑ I residuals (prior weights allowed), unstructured or diagonal G₀."""
    mme = fit.internals.mme
    if not fit.internals.estimated:
        raise OptionError(
            f"confint(method={method!r}): this fit is a BLUP at known variances (variances=), "
            "nothing was estimated to profile or resample; method='Wald' gives the fixed "
            "effects' intervals at the given variances")
    if not mme.structures:
        raise OptionError(
            f"confint(method={method!r}) needs a random term; for a model without one, "
            "method='Wald' gives R's confint(lm) (t intervals with residual df)")
    if not mme.residual.is_scalar or mme.n_aug:
        raise OptionError(
            f"confint(method={method!r}) is lme4's, for σ²ₑ I residuals; this fit's residual "
            f"is structured ({mme.residual.kind!r}): use method='Wald'")
    for s in mme.structures:
        if s.fa_k:
            raise OptionError(
                f"confint(method={method!r}): the '{s.block.group}' term has a factor-analytic "
                "G₀ (structure='fa(k)'), which lme4's sd/cor parameters do not describe: use "
                "method='Wald'")


def minimize_box(f, x0: np.ndarray, lb: np.ndarray, ub: np.ndarray, scale: np.ndarray,
                 ftol: float = None, gtol: float = None, probe: np.ndarray = None) -> tuple:
    """min f over a box, in units of ``scale``: L-BFGS-B with central-difference
    gradients (the parameters are few; a deviance costs one factorization). Returns
    (value, argmin), never worse than the start.

    A deviance is even in an SD (or a diagonal λ) at 0, so its gradient vanishes there
    and L-BFGS-B stops on that bound, minimum or not: every coordinate left at a lower
    bound of 0 is tried at 1% and 10% of its natural size ``probe`` (default ``scale``),
    and the search restarts from a lower point (lme4's derivative-free bobyqa has no
    such trap)."""
    ftol = INNER_FTOL if ftol is None else ftol
    gtol = INNER_GTOL if gtol is None else gtol
    probe = scale if probe is None else probe
    x = np.clip(np.asarray(x0, float), lb, ub)
    fx = f(x)
    if x.size == 0:
        return fx, x
    bounds = optimize.Bounds(lb / scale, ub / scale)
    for _ in range(MAX_RESTARTS):
        res = optimize.minimize(lambda u: f(u * scale), x / scale, method="L-BFGS-B",
                                jac="3-point", bounds=bounds,
                                options={"ftol": ftol, "gtol": gtol, "maxiter": 500})
        xn = np.clip(np.asarray(res.x, float) * scale, lb, ub)
        fn = f(xn)
        if fn <= fx:
            x, fx = xn, fn
        best = (fx, None)
        for i in np.flatnonzero((x < lb + 1e-3 * probe) & (lb == 0)):
            for size in (0.01, 0.1):
                xt = x.copy()
                xt[i] = min(size * probe[i], ub[i])
                ft = f(xt)
                if ft < best[0] - 1e-12 * abs(best[0]):
                    best = (ft, xt)
        if best[1] is None:
            break
        fx, x = best
    return fx, x


class ProfileModel:
    """The ML deviance of a fit on lme4's sdcor scale, its optimum and its profiles."""

    def __init__(self, fit):
        self.fit = fit
        mme = fit.internals.mme
        self.mme = mme
        self.n, self.p = mme.n, mme.p
        self.params = lme4_parameters(mme)
        self.form = RelativeFactorForm(Likelihood(mme, "ML"))
        # λ entries that may move: Λ's off-diagonal is 0 for a diagonal G₀
        self.lam_free = np.concatenate(
            [[a == b or s.kind == "us" for a, b in tri]
             for s, tri in zip(mme.structures, self.form.tri)]).astype(bool)
        self.lower = np.array([-1.0 if q.kind == "cor" else 0.0 for q in self.params])
        self.upper = np.array([1.0 if q.kind == "cor" else np.inf for q in self.params])
        self.phi_hat, self.base = self._ml_optimum()
        sig = self.phi_hat[-1]
        # units of the optimisers: an SD's estimate, but at least 10% of σ̂ (an SD near 0
        # measured in its own tiny units would leave L-BFGS-B's steps and tolerances
        # meaningless); correlations in their own units
        self.scale = np.array([1.0 if q.kind == "cor" else max(v, 0.1 * sig) if q.kind == "sd"
                               else v for q, v in zip(self.params, self.phi_hat)])
        self.probe = np.array([1.0 if q.kind == "cor" else sig for q in self.params])
        self.lam_hat = self.lam_of(self.phi_hat)[0]
        self._starts = {}

    # -- parameter maps ------------------------------------------------------
    def phi_of_theta(self, theta: np.ndarray) -> np.ndarray:
        """sdcor parameters from θ (G₀ per block, σ²ₑ)."""
        return sdcor_of_theta(self.mme, self.params, theta)

    def G0s_of(self, phi: np.ndarray) -> list:
        """G₀ of each block (MME order) from sdcor parameters."""
        S = [np.zeros(s.d) for s in self.mme.structures]
        R = [np.eye(s.d) for s in self.mme.structures]
        for q, v in zip(self.params, phi):
            if q.kind == "sd":
                S[q.block][q.a] = v
            elif q.kind == "cor":
                R[q.block][q.a, q.b] = R[q.block][q.b, q.a] = v
        return [np.outer(s, s) * r for s, r in zip(S, R)], S, R

    def lam_of(self, phi: np.ndarray) -> tuple:
        """(λ, σ²ₑ) of the relative-factor form; (None, σ²ₑ) if the correlations are
        not positive semi-definite."""
        _, S, R = self.G0s_of(phi)
        sig = phi[-1]
        lam = []
        for s, r, tri in zip(S, R, self.form.tri):
            L = _psd_cholesky(r)
            if L is None:
                return None, sig ** 2
            Lam = s[:, None] * L / sig
            lam.append([Lam[a, b] for a, b in tri])
        return np.concatenate(lam), sig ** 2

    # -- deviances -----------------------------------------------------------
    def deviance(self, phi: np.ndarray) -> float:
        """−2ℓ_ML at sdcor parameters φ (β at its conditional optimum)."""
        lam, s2 = self.lam_of(phi)
        if lam is None or not s2 > 0:
            return np.inf
        return self.form.m2ll(lam, s2)

    def deviance_beta(self, lam: np.ndarray, j: int, b: float) -> float:
        """−2ℓ_ML at λ with β_j = b (β₋ⱼ and σ²ₑ profiled out)."""
        ld, pwrss, beta, cxx = self.form.ml_parts(lam)
        r2 = pwrss + (b - beta[j]) ** 2 / cxx[j, j]
        return ld + self.n * (1.0 + np.log(2.0 * np.pi * r2 / self.n))

    def _ml_optimum(self) -> tuple:
        """(φ̂, D̂): the ML optimum (lme4's ``refitML``), minimising the deviance over φ
        from the fit's θ̂ (REML or ML) — in the Λ form, so an optimum with an SD at 0 is
        reached exactly, where AI-REML would creep towards it."""
        phi0 = self.phi_of_theta(self.fit.internals.theta_reported)
        scale = np.array([1.0 if q.kind == "cor" else max(v, 0.1 * phi0[-1])
                          for q, v in zip(self.params, phi0)])
        sig = phi0[-1]
        probe = np.array([1.0 if q.kind == "cor" else sig for q in self.params])
        d, phi = minimize_box(self.deviance, phi0, self.lower, self.upper, scale, probe=probe)
        return phi, d

    # -- profiles --------------------------------------------------------------
    def _nearest_start(self, key, x: float, default: np.ndarray) -> np.ndarray:
        done = self._starts.get(key)
        if not done:
            return default
        xs = np.array([t[0] for t in done])
        return done[int(np.argmin(np.abs(xs - x)))][1]

    def profile_deviance(self, w: int, x: float) -> float:
        """min −2ℓ_ML over the other parameters with variance parameter ``w`` held at x."""
        free = np.arange(len(self.params)) != w
        start = self._nearest_start(w, x, self.phi_hat[free])

        def f(v):
            phi = np.empty(len(self.params))
            phi[free], phi[w] = v, x
            return self.deviance(phi)

        d, v = minimize_box(f, start, self.lower[free], self.upper[free], self.scale[free],
                            probe=self.probe[free])
        self._starts.setdefault(w, []).append((x, v))
        return d

    def profile_deviance_beta(self, j: int, b: float) -> float:
        """min −2ℓ_ML over θ with fixed effect ``j`` held at b."""
        key = ("beta", j)
        lam0 = self.lam_hat
        free = self.lam_free
        start = self._nearest_start(key, b, lam0[free])
        lb = self.form.bounds().lb[free]
        lscale = np.maximum(np.abs(lam0[free]), 0.1)     # λ: SDs relative to σ

        def f(v):
            lam = np.zeros_like(lam0)
            lam[free] = v
            return self.deviance_beta(lam, j, b)

        d, v = minimize_box(f, start, lb, np.full(lb.shape, np.inf), lscale,
                            probe=np.ones(lb.shape))
        self._starts.setdefault(key, []).append((b, v))
        return d

    def zeta(self, which, x: float) -> float:
        """Signed root deviance at x: ``which`` = index of a variance parameter, or
        ("beta", j) for a fixed effect."""
        if isinstance(which, tuple):
            j = which[1]
            xhat = self.beta_hat[j]
            d = self.profile_deviance_beta(j, x)
        else:
            xhat = self.phi_hat[which]
            d = self.profile_deviance(which, x)
        return float(np.sign(x - xhat) * np.sqrt(max(d - self.base, 0.0)))

    @property
    def beta_hat(self) -> np.ndarray:
        if not hasattr(self, "_beta_hat"):
            self._beta_hat = self.form.ml_parts(self.lam_hat)[2]
        return self._beta_hat

    def beta_se(self) -> np.ndarray:
        """Wald SEs of β̂ at the ML optimum (only to size the first step of a search)."""
        ld, pwrss, beta, cxx = self.form.ml_parts(self.lam_hat)
        return np.sqrt(np.diag(cxx) * pwrss / self.n)

    def limit(self, which, side: int, z: float) -> float:
        """The limit of ``which`` on ``side`` (−1 lower, +1 upper) where |ζ| = z."""
        if isinstance(which, tuple):
            xhat, lo, hi = self.beta_hat[which[1]], -np.inf, np.inf
            step = 0.5 * z * self.beta_se()[which[1]]
            scale = max(abs(xhat), self.beta_se()[which[1]])
        else:
            xhat, lo, hi = self.phi_hat[which], self.lower[which], self.upper[which]
            scale = self.scale[which]
            step = 0.25 * scale if self.params[which].kind != "cor" else 0.1
        bound = lo if side < 0 else hi
        if xhat == bound:
            return float(bound)
        prev_x, prev_z = xhat, 0.0
        x = float(np.clip(xhat + side * step, lo, hi))
        for _ in range(MAX_BRACKET_STEPS):
            zz = side * self.zeta(which, x)
            if zz >= z:
                break
            if x == bound:
                return float(bound)
            dist = abs(x - xhat)
            slope = (zz - prev_z) / abs(x - prev_x)
            grow = (z - zz) / slope * 1.2 if slope > 0 else dist
            grow = min(max(grow, 0.05 * dist), 4.0 * dist)
            prev_x, prev_z = x, zz
            x = float(np.clip(x + side * grow, lo, hi))
        else:
            return float("nan")
        g = lambda t: side * self.zeta(which, t) - z           # noqa: E731
        a, b = sorted((prev_x, x))
        return float(optimize.brentq(g, a, b, xtol=ROOT_XTOL * scale, rtol=1e-12))


def profile_intervals(fit, names: list, level: float) -> dict:
    """{name: (lower, upper)} of the profile intervals of the named parameters
    (lme4's names: variance parameters, then fixed effects)."""
    check_profilable(fit, "profile")
    pm = ProfileModel(fit)
    z = stats.norm.ppf(0.5 * (1.0 + level))
    index = {q.name: i for i, q in enumerate(pm.params)}
    index.update({n: ("beta", j) for j, n in enumerate(fit.fixed_names)})
    out = {}
    for name in names:
        if name not in index:
            raise UnknownTermError(f"no parameter {name!r} (parameters: {list(index)})")
        w = index[name]
        out[name] = (pm.limit(w, -1, z), pm.limit(w, +1, z))
    return out
