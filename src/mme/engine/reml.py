"""REML / ML log-likelihood, score and average information from the MME, and the
AI-REML iteration (Gilmour, Thompson & Cullis 1995; Johnson & Thompson 1995).

Parameters θ: the elements of each block's G₀ (see ``covariance``), then σ²ₑ.
One evaluation at θ costs one numeric factorization of C, one selected inversion
(``_core.selected_inverse``) and one solve with k right-hand sides (k = len(θ)):

    −2ℓ_REML = (n − p) log 2π + n log σ²ₑ + Σ log|G| + log|C| + y'Py
    −2ℓ_ML   = n log 2π       + n log σ²ₑ + Σ log|G| + log|C| − log|X'V⁻¹X| + y'Py
    y'Py     = (y'y − ŝ'W'y) / σ²ₑ,                    ŝ = [β̂; û] = C⁻¹ rhs
    score_i  = −½ [tr(G⁻¹Gᵢ) − tr(Cᵘᵘ G⁻¹GᵢG⁻¹) − û'G⁻¹GᵢG⁻¹û]     (block params)
    score_e  = −½ [(n − p − q + tr(Cᵘᵘ G⁻¹)) / σ²ₑ − ê'ê / σ⁴ₑ]
    AI_ij    = ½ wᵢ'P wⱼ,  wᵢ = Vᵢ P y,  P w = (w − W C⁻¹ W'w / σ²ₑ) / σ²ₑ

For ML, Cᵘᵘ is replaced by T⁻¹ = (Z'R⁻¹Z + G⁻¹)⁻¹ = Cᵘᵘ − Cᵘˣ (Cˣˣ)⁻¹ Cˣᵘ, p by 0,
and P by V⁻¹ (w'V⁻¹w = w'Pw + β_w'(Cˣˣ)⁻¹β_w), using the p columns F = C⁻¹[:, :p].
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .._errors import ConvergenceWarning, NotPositiveDefiniteError, OptionError
from ..model.covariance import is_positive_definite
from ..model.design import ols_residuals
from ..model.spatial import RHO_START
from .system import MME

log = logging.getLogger("mme")

LOG2PI = np.log(2.0 * np.pi)


@dataclass
class Evaluation:
    """Everything computed at one θ."""

    theta: np.ndarray
    m2ll: float
    solution: np.ndarray
    resid: np.ndarray
    S: list
    Q: list
    score: np.ndarray = None
    AI: np.ndarray = None
    F: np.ndarray = None  # C⁻¹[:, :p]
    cuu_diag: np.ndarray = None  # diag(Cᵘᵘ), when the traces were computed
    resid_w: np.ndarray = None   # ẽ = ỹ − W̃ŝ (weighted scale; ``resid`` is y − Wŝ)
    Rinvs: list = None           # R₀[o, o]⁻¹ per residual pattern
    T_cells: np.ndarray = None   # ⟨C⁻¹, B_cell⟩ per residual cell (structured R)
    tr_CGinv: float = 0.0

    @property
    def loglik(self) -> float:
        return -0.5 * self.m2ll


@dataclass(frozen=True)
class IterationRecord:
    """One row of ``Fit.iteration_log``."""

    iteration: int
    kind: str          # "start", "EM", "AI", "AI/2^k"
    theta: np.ndarray
    loglik: float
    step: float
    decrement: float
    seconds: float
    #: the average-information matrix at ``theta`` (the one the next step uses; its
    #: inverse gives the SEs there), or None where no AI was computed (a Λ-form row)
    ai: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        theta = np.array(self.theta, dtype=float, copy=True)
        theta.setflags(write=False)
        object.__setattr__(self, "theta", theta)
        if self.ai is not None:
            ai = np.array(self.ai, dtype=float, copy=True)
            ai.setflags(write=False)
            object.__setattr__(self, "ai", ai)


@dataclass
class REMLResult:
    theta: np.ndarray
    evaluation: Evaluation
    converged: bool
    n_iter: int
    history: list = field(default_factory=list)
    at_bound: np.ndarray = None
    handed_over: bool = False   # stopped for ``hand_over`` (see ``fit_variances``)


#: the estimation methods
METHODS = ("REML", "ML")
#: an FA(k) specific variance ψₐ is bounded below by this × G₀[a, a]
FA_PSI_FLOOR = 1e-4


class Likelihood:
    """The REML or ML log-likelihood of one MME as a function of θ, with its score
    and average information (lme4's ``mkLmerDevfun``, in Henderson's form).

    Parameters
    ----------
    mme : MME
    method : "REML" or "ML"
    """

    def __init__(self, mme: MME, method: str = "REML"):
        method = str(method).upper()
        if method not in METHODS:
            raise OptionError(f"method must be 'REML' or 'ML', got {method!r}")
        if method == "ML" and mme.n_aug:
            raise OptionError(f"method='ML' with {mme.n_aug} plot(s) of the field without a "
                              "record is not exact (the missing plots are carried as flat "
                              "unknowns, which is exact for REML only): use REML")
        self.mme = mme
        self.method = method
        self.sizes = mme.sizes
        self.k = mme.k
        self.q = mme.dim - mme.p

    def split(self, theta: np.ndarray) -> tuple:
        """(list of G₀ per block, R₀) from θ (``MME.split``)."""
        return self.mme.split(theta)

    @property
    def residual(self):
        return self.mme.residual

    def variance_index(self) -> np.ndarray:
        """Mask of θ entries that are variances (diagonals of each G₀ and of R₀)."""
        out = [s.param_variance_mask() for s in self.mme.structures]
        return np.concatenate(out + [self.residual.variance_mask()]).astype(bool)

    def log_scale_index(self) -> np.ndarray:
        """Mask of θ entries stepped on the log scale: the variance of each scalar
        (d = 1) G₀ and of a scalar or diagonal R₀. Elements of a d ≥ 2 G₀ or of an
        unstructured R₀ stay on the linear scale, where positive definiteness is
        checked as a whole."""
        out = []
        for s in self.mme.structures:
            # scalar variances, and an FA block's specific variances ψ (whose Heywood
            # optimum at 0 the log scale approaches without a hard bound)
            out += ([False] * len(s.loadings) + [True] * s.d if s.fa_k else
                    [True] * s.d if s.kind == "diag" else [s.d == 1] * s.n_params)
        return np.concatenate([np.array(out, bool), self.residual.log_scale_mask()])

    def lower_bounds(self, theta: np.ndarray, floor: float) -> np.ndarray:
        """Lower bound of each θ entry that is a variance (``floor``, scaled to θ); an
        FA specific variance ψₐ is kept ≥ ``FA_PSI_FLOOR`` × G₀[a, a] (at ψ = 0, a
        Heywood case, G₀ is near singular and the MME with it)."""
        out = np.full(theta.shape[0], floor)
        i = 0
        for s in self.mme.structures:
            if s.fa_k:
                G0 = s.G0(theta[i:i + s.n_params])
                m = len(s.loadings)
                out[i + m:i + m + s.d] = np.maximum(FA_PSI_FLOOR * np.diag(G0), floor)
            i += s.n_params
        return out

    def feasible(self, theta: np.ndarray) -> bool:
        G0s, R0 = self.split(theta)
        return (self.residual.feasible(R0)
                and all(is_positive_definite(G, 1e-12) for G in G0s))

    # ---------------------------------------------------------------------
    def evaluate(self, theta: np.ndarray, derivatives: bool = True) -> Evaluation:
        """−2ℓ at θ, the solution, residuals and (with ``derivatives``) score and AI.

        Leaves the factor at θ (``MME.ensure``).
        """
        mme, ml, res = self.mme, self.method == "ML", self.residual
        G0s, R0 = self.split(theta)
        mme.ensure(theta)
        n, p = mme.n, mme.p
        Rinvs = res.pattern_inverses(R0)
        r = res.rinv_cells(Rinvs)
        rhs = mme.rhs(r)
        sol = mme.solve(rhs)
        resid_w = mme.y - mme.W @ sol
        yPy = mme.yRy(r) - sol @ rhs
        logdet_G = sum(s.logdet_G(G) for s, G in zip(mme.structures, G0s))
        m2ll = res.logdet(R0) + logdet_G + mme.logdet() + yPy
        F = None
        if ml and p > 0:
            F = mme.fixed_columns()
            Cxx = F[:p]
            m2ll += n * LOG2PI + np.linalg.slogdet(Cxx)[1]
        else:
            m2ll += (n - mme.n_aug - p) * LOG2PI
        sw = res.sqrt_weights
        resid = resid_w[:n - mme.n_aug] if mme.n_aug else resid_w
        ev = Evaluation(theta=np.array(theta, float), m2ll=float(m2ll), solution=sol,
                        resid=resid if sw is None else resid / sw, S=[], Q=[], F=F,
                        resid_w=resid_w, Rinvs=Rinvs)
        if not derivatives:
            return ev
        return self.derivatives(ev)

    def derivatives(self, ev: Evaluation) -> Evaluation:
        """Add the score and average information to an evaluation made without them
        (the selected inverse and the AI solves, with the factor at ``ev.theta``)."""
        mme, res = self.mme, self.residual
        G0s, R0 = self.split(ev.theta)
        mme.ensure(ev.theta)
        if not mme.structures and res.is_scalar:
            ev.score, ev.AI = self._residual_only(ev, float(R0[0, 0]))
            return ev
        self._traces(ev, G0s)
        ev.score, ev.AI = self._score_ai(ev, G0s, R0)
        return ev

    def _traces(self, ev: Evaluation, G0s: list) -> None:
        """S per block from C⁻¹ at the G⁻¹ slots, diag Cᵘᵘ (PEV) and, for a structured
        R, ⟨C⁻¹, B_cell⟩ per residual cell — one selected inverse."""
        mme, ml = self.mme, self.method == "ML" and self.mme.p > 0
        p = mme.p
        rows = np.concatenate([s.rows for s in mme.structures] + [np.zeros(0, np.int64)])
        cols = np.concatenate([s.cols for s in mme.structures] + [np.zeros(0, np.int64)])
        diag = np.arange(p, mme.dim, dtype=np.int64)
        req_r, req_c = np.concatenate([rows, diag]), np.concatenate([cols, diag])
        Cxx_inv = np.linalg.inv(ev.F[:p]) if ml else None
        if self.residual.is_scalar:
            both = mme.selected_inverse(req_r, req_c)
        else:
            on_C, both = mme.cinv_on_pattern(req_r, req_c)
            if ml:
                # ML: T⁻¹ = (Z'R⁻¹Z + G⁻¹)⁻¹ = Cᵘᵘ − Fᵤ(Cˣˣ)⁻¹Fᵤ' on the uu block, nothing else
                pr, pc = mme.pattern_rows, mme.pattern_cols
                uu = (pr >= p) & (pc >= p)
                on_C = np.where(uu, on_C - np.einsum("ij,jk,ik->i", ev.F[pr], Cxx_inv,
                                                     ev.F[pc]), 0.0)
            ev.T_cells = mme.B_trace.T @ on_C
        cinv, ev.cuu_diag = both[:rows.shape[0]], both[rows.shape[0]:]
        if ml:
            cinv = cinv - np.einsum("ij,jk,ik->i", ev.F[rows], Cxx_inv, ev.F[cols])
        i = 0
        for s in mme.structures:
            m = s.rows.shape[0]
            ev.S.append(s.S(cinv[i:i + m]))
            ev.Q.append(s.Q(ev.solution[s.offset:s.offset + s.block.q]))
            i += m

    def _score_ai(self, ev: Evaluation, G0s: list, R0: np.ndarray) -> tuple:
        mme, ml, res = self.mme, self.method == "ML", self.residual
        n, p = mme.n, (0 if ml else mme.p)
        score, wv = [], []
        tr_CGinv = 0.0
        i0 = 0
        for s, G0, S, Q in zip(mme.structures, G0s, ev.S, ev.Q):
            G0inv = np.linalg.inv(G0)
            tr_CGinv += float(np.sum(G0inv * S))
            # score and working variates per element of G₀, then θ = its parameters
            # (the identity when unstructured; FA by the chain rule, J = ∂G₀/∂θ)
            sc_e = []
            for i in range(s.n_elements):
                E = s.E(i)
                M = G0inv @ E @ G0inv
                sc_e.append(-0.5 * (s.L * np.trace(G0inv @ E) - np.sum(M * (S + Q))))
            U = s.U(ev.solution[s.offset:s.offset + s.block.q])
            Zs = mme.block_Z(s)
            wv_e = [Zs @ (s.E(i) @ G0inv @ U).ravel() for i in range(s.n_elements)]
            if s.kind != "us":
                J = s.jacobian(ev.theta[i0:i0 + s.n_params])
                score += list(J.T @ np.array(sc_e))
                wv += list((np.column_stack(wv_e) @ J).T)
            else:
                score += sc_e
                wv += wv_e
            i0 += s.n_params
        ev.tr_CGinv = tr_CGinv
        e = ev.resid_w
        if res.is_scalar:
            s2e = float(R0[0, 0])
            score.append(-0.5 * ((n - p - self.q + tr_CGinv) / s2e - float(e @ e) / s2e ** 2))
            wv.append(e / s2e)
        else:
            Re = res.apply_rinv(ev.Rinvs, e)
            for i in range(res.n_params):
                Ms = res.derivative_mats(ev.Rinvs, i)
                tr_P = res.trace_rinv_dr(ev.Rinvs, i) - float(res.cell_weights(Ms) @ ev.T_cells)
                score.append(-0.5 * (tr_P - res.unit_quadratic(e, Ms)))
                wv.append(res.apply_dr(i, Re, ev.Rinvs))
        return np.array(score), self._ai(np.column_stack(wv), ev)

    def _ai(self, Wv: np.ndarray, ev: Evaluation) -> np.ndarray:
        """AI = ½ Wv'PWv, P w = R⁻¹w − R⁻¹W̃C⁻¹W̃'R⁻¹w (+ the ML term)."""
        mme = self.mme
        RWv = self.residual.apply_rinv(ev.Rinvs, Wv)
        B = mme.W.T @ RWv
        sol = mme.solve(B)
        AI = 0.5 * (Wv.T @ RWv - B.T @ sol)
        if self.method == "ML" and mme.p > 0:
            bw = sol[:mme.p]
            AI += 0.5 * bw.T @ np.linalg.solve(ev.F[:mme.p], bw)
        return 0.5 * (AI + AI.T)

    def _residual_only(self, ev: Evaluation, s2e: float) -> tuple:
        n = self.mme.n
        p = 0 if self.method == "ML" else self.mme.p
        ee = float(ev.resid_w @ ev.resid_w)
        score = np.array([-0.5 * ((n - p) / s2e - ee / s2e ** 2)])
        AI = np.array([[0.5 * ee / s2e ** 3]])
        ev.tr_CGinv = 0.0
        return score, AI

    def em_step(self, ev: Evaluation) -> np.ndarray:
        """One EM-REML (or EM-ML) update: G₀ ← (Q + S)/L; σ²ₑ ← E[e'e | y]/n (per
        level of a diagonal R₀: (ẽ_c'ẽ_c + ⟨C⁻¹, W̃_c'W̃_c⟩)/n_c). For an unstructured
        R₀ the update of each element uses the units that observe both levels (with
        missing levels an approximation, kept positive definite): a fallback only."""
        mme, res = self.mme, self.residual
        G0s, R0 = self.split(ev.theta)
        out = []
        for s, S, Q in zip(mme.structures, ev.S, ev.Q):
            out.append(s.theta_of((Q + S) / s.L))
        e = ev.resid_w
        if res.kind == "ar1ar1":
            R_new = R0          # no EM update of the spatial parameters: G moves alone
        elif res.is_scalar:
            p = 0 if self.method == "ML" else mme.p
            s2e = float(R0[0, 0])
            R_new = np.array([[(float(e @ e) + s2e * (p + self.q - ev.tr_CGinv)) / mme.n]])
        else:
            num, cnt = np.zeros((res.t, res.t)), np.zeros((res.t, res.t))
            for (pi, j, k), T in zip(res.cells, ev.T_cells):
                pat = res.patterns[pi]
                a, b = pat.levels[j], pat.levels[k]
                ee = float(e[pat.rows[:, j]] @ e[pat.rows[:, k]])
                val = ee + (T if j == k else 0.5 * T)
                num[a, b] += val
                cnt[a, b] += pat.n_units
                if a != b:
                    num[b, a] += val
                    cnt[b, a] += pat.n_units
            R_new = np.where(cnt > 0, num / np.maximum(cnt, 1), 0.0)
            if res.kind == "us":
                w, V = np.linalg.eigh(R_new)
                R_new = (V * np.maximum(w, 1e-6 * w[-1])) @ V.T
        return np.concatenate(out + [res.theta_of(R_new)])


#: consecutive failed AI steps (EM fallbacks) before ``fit_variances`` hands over
HAND_OVER_AFTER = 3
#: The lower bound of a variance: BOUND_REL × the largest |θ| at the start of the
#: iteration, fixed for the whole fit (a floor that moved with θ let a variance held at
#: it drift off "the bound" when another variance changed, and AI-REML then fell back to
#: EM for hundreds of rounds). A variance is *at the bound* when it equals this floor;
#: it is reported as 0 (``REMLResult.at_bound``).
BOUND_REL = 1e-10
#: Converged when the Newton decrement score'·AI⁻¹·score at θ falls below this: AI is
#: the information, so θ is then within √1e-9 ≈ 3e-5 standard errors of the optimum.
TOL_DECREMENT_ABS = 1e-9
#: A log-scale AI step multiplies a variance by at most e^LOG_STEP_MAX; a Newton step
#: that asks for more (a variance leaving its lower bound) is taken on the linear scale.
LOG_STEP_MAX = 1.0
#: ... and divides it by at most e^-LOG_STEP_MIN per step
LOG_STEP_MIN = -5.0


def ai_trial(theta: np.ndarray, delta: np.ndarray, step: float, log_mask: np.ndarray) -> np.ndarray:
    """θ after a fraction ``step`` of the AI (Newton) step ``delta``.

    ``delta`` solves AI·δ = score on the linear scale. For the entries in
    ``log_mask`` the same step is taken in log σ²: with D = diag(σ²) the score
    in log σ² is D·score and the AI matrix D·AI·D, so the Newton step there is
    δ/σ², and σ² ← σ²·exp(step·δ/σ²). The REML surface is closer to quadratic in
    log σ² than in σ² for a variance estimated from few levels (a department
    factor of 14 levels, say), and a decrease can never cross zero. With the
    moment start the 73k-record crossed benchmark takes 3 AI steps where linear
    steps from an equal split took 2 EM + 6 AI (benchmarks/results_crossed.md).
    """
    trial = theta + step * delta
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = step * delta / theta
    use_log = log_mask & (theta > 0) & (r <= LOG_STEP_MAX)
    trial[use_log] = theta[use_log] * np.exp(np.maximum(r[use_log], LOG_STEP_MIN))
    return trial


#: A log-scale variance whose linear Newton step crosses zero and which is already
#: below this many of its standard errors is tried at its lower bound at once
#: (log steps alone would approach a zero optimum by e^LOG_STEP_MIN per step).
BOUND_JUMP_SE = 0.1


def _heading_for_zero(ev: Evaluation, theta: np.ndarray, delta: np.ndarray,
                      free: np.ndarray, log_mask: np.ndarray) -> np.ndarray:
    """Mask of variances to try at their bound: θ + δ < 0 and θ < BOUND_JUMP_SE·SE."""
    out = np.zeros(theta.shape[0], dtype=bool)
    idx = np.flatnonzero(free & log_mask & (theta + delta < 0))
    if idx.size:
        try:
            cov = np.linalg.inv(ev.AI[np.ix_(free, free)])
        except np.linalg.LinAlgError:
            return out
        se = np.full(theta.shape[0], np.nan)
        se[free] = np.sqrt(np.maximum(np.diag(cov), 0.0))
        out[idx] = theta[idx] < BOUND_JUMP_SE * se[idx]
    return out


def _bound_step(ev: Evaluation, theta: np.ndarray, free: np.ndarray, pin: np.ndarray,
                lb: np.ndarray) -> np.ndarray:
    """The Newton step with the variances ``pin`` moved to their bound: δ_pin = lb − θ
    and, for the other free parameters F, the maximiser of the quadratic model given it,
    AI_FF δ_F = s_F − AI_F,pin δ_pin (the unconstrained step assumed the pinned variances
    would go below zero and overshoots the others)."""
    delta = np.zeros(theta.shape[0])
    delta[pin] = lb[pin] - theta[pin]
    F = free & ~pin
    if F.any():
        A = ev.AI[np.ix_(F, F)]
        g = ev.score[F] - ev.AI[np.ix_(F, pin)] @ delta[pin]
        try:
            delta[F] = np.linalg.solve(A, g)
        except np.linalg.LinAlgError:
            delta[F] = np.linalg.lstsq(A, g, rcond=None)[0]
    return delta


def _newton_step(ev: Evaluation, free: np.ndarray, damping: float = 0.0) -> np.ndarray:
    """δ with (AI + damping·diag(AI))[free, free] δ[free] = score[free], zero elsewhere."""
    delta = np.zeros(ev.score.shape[0])
    A, g = ev.AI[np.ix_(free, free)], ev.score[free]
    if damping:
        A = A + damping * np.diag(np.diag(A))
    try:
        delta[free] = np.linalg.solve(A, g)
    except np.linalg.LinAlgError:
        delta[free] = np.linalg.lstsq(A, g, rcond=None)[0]
    return delta


def _moment_variance(Z, r: np.ndarray) -> float | None:
    """σ²_g of one scalar random term from OLS residuals r, ignoring the other terms.

    The one-way ANOVA (moment) estimator (MSB − MSW)/n₀ on the levels j of the term,
    with the column weights zᵢⱼ of Z (1 for ``(1|g)``, x for ``(0 + x|g)``):
    wⱼ = Σᵢ zᵢⱼ², level means r̄ⱼ = Σᵢ zᵢⱼ rᵢ / wⱼ, W = Σⱼ wⱼ, over the J levels and n
    rows the term touches:

        MSB = (Σⱼ wⱼ r̄ⱼ² − (Σⱼ wⱼ r̄ⱼ)² / W) / (J − 1)
        MSW = (Σᵢ rᵢ² − Σⱼ wⱼ r̄ⱼ²) / (n − J)
        n₀  = (W − Σⱼ wⱼ² / W) / (J − 1)

    None when J < 2 or n ≤ J (not identified from the rows alone).
    """
    w = np.asarray(Z.multiply(Z).sum(axis=0)).ravel()
    seen = w > 0
    J = int(seen.sum())
    rows = np.diff(Z.tocsr().indptr) > 0
    n = int(rows.sum())
    if J < 2 or n <= J:
        return None
    w, S = w[seen], (Z.T @ r)[seen]       # Sⱼ = wⱼ r̄ⱼ
    W = float(w.sum())
    between = float(np.sum(S ** 2 / w))
    msb = (between - float(S.sum()) ** 2 / W) / (J - 1)
    msw = (float(r[rows] @ r[rows]) - between) / (n - J)
    n0 = (W - float(w @ w) / W) / (J - 1)
    return (msb - msw) / n0


def _decrement(ev: Evaluation, free: np.ndarray) -> float:
    """score'·AI⁻¹·score over the free parameters (NaN without derivatives)."""
    if ev.score is None or ev.AI is None:
        return float("nan")
    return float(ev.score[free] @ _newton_step(ev, free)[free])


def starting_values(model: Likelihood) -> np.ndarray:
    """Moment starts from the OLS residuals, where cheap and defined.

    A scalar term with K = I (``(1|g)``, ``(0 + x|g)``) starts at its one-way ANOVA
    estimate (``_moment_variance``, floored at 1% of the residual variance of the OLS
    fit, v); other blocks (d ≥ 2, or a pedigree/genomic K) share half of v with their
    diagonal scaled by the mean squared row sum of Z; σ²ₑ starts at what is left of
    v, at least 10% of it. On crossed designs the moment starts leave the AI
    iteration 3 steps instead of 5–6 from the optimum (benchmarks/results_crossed.md).
    """
    mme = model.mme
    n_obs = mme.n - mme.n_aug
    X, y = mme.W[:n_obs, :mme.p], mme.y[:n_obs]
    r = ols_residuals(X, y)
    v = max(float(r @ r) / max(len(y) - X.shape[1], 1), 1e-8 * max(float(y @ y) / len(y), 1e-300))
    if not model.residual.is_scalar:
        return _structured_starts(model, r, v)
    nb = len(mme.structures)
    theta, explained = [], 0.0
    for s in mme.structures:
        Z = mme.block_Z(s)
        Zcol_ms = np.array([
            float(np.mean(np.asarray(Z[:, a * s.L:(a + 1) * s.L].sum(axis=1)).ravel() ** 2))
            for a in range(s.d)])
        g = _moment_variance(Z, r) if s.d == 1 and s.block.k_is_identity else None
        if g is not None:
            G0 = np.array([[max(g, 0.01 * v / max(Zcol_ms[0], 1e-12))]])
        else:
            G0 = np.diag(0.5 * v / nb / np.maximum(Zcol_ms, 1e-12))
        explained += float(np.diag(G0) @ Zcol_ms)
        theta.append(s.theta_of(G0))
    return np.concatenate(theta + [np.array([max(v - explained, 0.1 * v)])])


def _structured_starts(model: Likelihood, r: np.ndarray, v: float) -> np.ndarray:
    """Starts for a structured R₀ (levels with their own scale: traits, sites).

    Each level c starts from the OLS residual variance of its rows, vᶜ; a random
    term's column a takes half of the residual variance of the rows it touches,
    shared among the blocks and scaled by its mean squared row sum (as for σ²ₑI);
    R₀[c, c] is what is left of vᶜ (≥ 10%), off-diagonal elements 0.
    """
    mme, res = model.mme, model.residual
    n, p = mme.n - mme.n_aug, mme.p
    r = r[:n]
    scale = n / max(n - p, 1)
    floor = 1e-8 * v
    nb = len(mme.structures)
    explained = np.zeros(n)
    theta = []
    for s in mme.structures:
        Z = mme.block_Z(s)[:n]
        g = _moment_variance(Z, r) if s.d == 1 and s.block.k_is_identity else None
        diag = []
        sums = []
        for a in range(s.d):
            rs = np.asarray(Z[:, a * s.L:(a + 1) * s.L].sum(axis=1)).ravel()
            on = rs != 0
            ms = float(np.mean(rs[on] ** 2)) if on.any() else 1.0
            va = max(float(np.mean(r[on] ** 2)) * scale, floor) if on.any() else v
            diag.append(max(g, 0.01 * va / ms) if g is not None else 0.5 * va / nb / ms)
            sums.append(rs)
        G0 = np.diag(diag)
        for a in range(s.d):
            explained += G0[a, a] * sums[a] ** 2
        theta.append(s.theta_of(G0))
    if res.kind == "ar1ar1":
        phi = []
        for rows in res.field_rows():
            vc = max(float(np.mean(r[rows] ** 2)) * scale, floor)
            phi += [max(vc - float(np.mean(explained[rows])), 0.1 * vc), RHO_START, RHO_START]
        return np.concatenate(theta + [np.array(phi)])
    R0 = np.zeros((res.t, res.t))
    for c, rows in enumerate(res.level_rows()):
        vc = max(float(np.mean(r[rows] ** 2)) * scale, floor)
        R0[c, c] = max(vc - float(np.mean(explained[rows])), 0.1 * vc)
    return np.concatenate(theta + [res.theta_of(R0)])


def _polish(model: Likelihood, ev: Evaluation, theta: np.ndarray, at_bound: np.ndarray,
            lb: np.ndarray, var_mask: np.ndarray, log_mask: np.ndarray) -> tuple:
    """(θ, evaluation) after one more Newton step from a converged θ, if it does not
    lower log L; else the converged ones. Variances at the bound stay there."""
    free = ~(at_bound & (ev.score < 0))
    trial = ai_trial(theta, _newton_step(ev, free), 1.0, log_mask)
    trial[at_bound & ~free] = lb[at_bound & ~free]
    if not (np.all(trial[var_mask] >= lb[var_mask]) and model.feasible(trial)):
        return theta, ev
    try:
        cand = model.evaluate(trial, derivatives=False)
    except NotPositiveDefiniteError:
        return theta, ev
    if not cand.loglik >= ev.loglik:
        return theta, ev
    return trial, model.derivatives(cand)


def fit_variances(model: Likelihood, theta0: np.ndarray | None = None, max_iter: int = 200,
                  tol_ll: float = 1e-9, tol_decrement: float = 1e-9,
                  verbose: bool = False, hand_over=None, callback=None) -> REMLResult:
    """AI-REML (or AI-ML) from ``theta0`` (default ``starting_values``): AI steps with
    step-halving, EM as a fallback; variances kept ≥ a small bound, G₀ kept positive
    definite.

    Converged when the Newton decrement score'·AI⁻¹·score at the current θ is below
    ``TOL_DECREMENT_ABS`` (θ within ~3e-5 standard errors of the optimum), or when it
    and the last change in log-likelihood are both below their tolerances relative
    to |log L| (the floor set by rounding in very large models). ``hand_over(θ) -> bool``: when
    AI steps fail ``HAND_OVER_AFTER`` times running (EM fallbacks) at a θ for which it
    is true — a G₀ heading for the boundary of the PSD cone, where EM crawls — stop
    without a warning and say so (``handed_over``) for another method to finish.
    ``callback(record)`` is called with each ``IterationRecord`` (progress, checkpoints).
    """
    theta = starting_values(model) if theta0 is None else np.asarray(theta0, float)
    t0 = time.perf_counter()
    ev = model.evaluate(theta)
    var_mask = model.variance_index()
    # the floor of the variances, fixed for the fit (an FA ψ's own floor follows its G₀)
    floor = BOUND_REL * float(np.abs(theta).max())
    history = [IterationRecord(0, "start", theta.copy(), ev.loglik, 0.0,
                               _decrement(ev, np.ones(model.k, dtype=bool)),
                               time.perf_counter() - t0)]
    log_mask = var_mask & model.log_scale_index()
    converged = False
    at_bound = np.zeros(model.k, dtype=bool)
    it, fallbacks, handed_over, change = 0, 0, False, float("nan")
    damped = any(s.fa_k for s in model.mme.structures)
    stalled = False
    for it in range(1, max_iter + 1):
        t1 = time.perf_counter()
        lb = model.lower_bounds(theta, floor)
        free = ~(at_bound & (ev.score < 0))
        delta = _newton_step(ev, free)
        step, ev_new, kind = 1.0, None, "AI"
        to_bound = _heading_for_zero(ev, theta, delta, free, log_mask)
        if to_bound.any():
            # first the step with those variances at their bound (active set)
            trial = ai_trial(theta, _bound_step(ev, theta, free, to_bound, lb), 1.0,
                             log_mask & ~to_bound)
            trial[to_bound] = lb[to_bound]
            low = var_mask & (trial <= lb)
            trial[low] = lb[low]
            cand = None
            if model.feasible(trial):
                try:
                    cand = model.evaluate(trial, derivatives=False)
                except NotPositiveDefiniteError:
                    cand = None
            if cand is not None and cand.loglik >= ev.loglik:
                ev_new, new, at_bound, kind = model.derivatives(cand), trial, low, "AI (to bound)"
        for h in range(12 if ev_new is None else 0):
            if damped and h:
                # FA: V is not linear in the loadings and AI can be far from the
                # Hessian: shrink towards the scaled gradient (Levenberg–Marquardt)
                delta = _newton_step(ev, free, damping=4.0 ** h)
                step = 1.0
            trial = ai_trial(theta, delta, step, log_mask)
            low = var_mask & (trial <= lb)
            trial[low] = lb[low]
            if model.feasible(trial):
                try:
                    # the likelihood alone first: a rejected trial costs a factorization,
                    # not a whole round (selected inverse and AI solves)
                    cand = model.evaluate(trial, derivatives=False)
                except NotPositiveDefiniteError:
                    cand = None
                # never a step that lowers log L: the iteration keeps the best θ visited
                if cand is not None and cand.loglik >= ev.loglik:
                    ev_new, new = model.derivatives(cand), trial
                    at_bound = low
                    break
            step *= 0.5
            kind = f"AI/2^{h + 1}"
        if ev_new is None:
            new = model.em_step(ev)
            low = var_mask & (new <= lb)
            new[low] = lb[low]
            cand = model.evaluate(new) if model.feasible(new) else None
            if cand is None or not cand.loglik >= ev.loglik:
                # neither an AI step nor EM raises log L from θ: θ is the best point
                # there is to the precision of log L (converged if the decrement says so)
                stalled = True
            else:
                ev_new, kind, step, at_bound = cand, "EM (fallback)", 1.0, low
        if stalled:
            change = 0.0
            decrement_new = _decrement(ev, ~(at_bound & (ev.score < 0)))
            tol = max(1.0, abs(ev.loglik))
            converged = 0.0 <= decrement_new < max(TOL_DECREMENT_ABS, tol_decrement * tol)
            log.info("iter %d: no step raises log L (decrement %.3g): stop", it, decrement_new)
            if not converged:
                warnings.warn(f"REML stopped after {it - 1} iterations: no step from the last θ "
                              f"raises the log-likelihood and the Newton decrement is "
                              f"{decrement_new:.3g}", ConvergenceWarning, stacklevel=3)
            it -= 1
            break
        change = ev_new.loglik - ev.loglik
        theta, ev = ev_new.theta, ev_new
        fallbacks = fallbacks + 1 if kind == "EM (fallback)" else 0
        # the Newton decrement at the new θ: score and AI are already there, so the
        # test costs nothing and saves the confirming step
        decrement_new = _decrement(ev, ~(at_bound & (ev.score < 0)))
        rec = IterationRecord(it, kind, theta.copy(), ev.loglik, step, decrement_new,
                              time.perf_counter() - t1, ai=ev.AI)
        history.append(rec)
        if callback is not None:
            callback(rec)
        log.info("iter %d %s loglik=%.10g step=%.3g decrement=%.3g theta=%s (%.3fs)",
                 it, kind, ev.loglik, step, decrement_new, np.array2string(theta, precision=6),
                 rec.seconds)
        if verbose:
            print(f"iter {it:3d} {kind:14s} loglik {ev.loglik:.10f} step {step:.3g} "
                  f"decrement {decrement_new:.3g} theta {np.array2string(theta, precision=6)} "
                  f"({rec.seconds:.3f}s)")
        tol = max(1.0, abs(ev.loglik))
        if 0.0 <= decrement_new and (
                decrement_new < TOL_DECREMENT_ABS
                or (decrement_new < tol_decrement * tol and abs(change) < tol_ll * tol)):
            converged = True
            if at_bound.any() and decrement_new > 0.0:
                # a variance at its bound: one more Newton step on the others (one
                # factorization; kept only if log L does not drop) takes them from
                # ~√decrement SEs of the optimum to round-off, as lme4's profiled σ²ₑ
                t1 = time.perf_counter()
                theta_p, ev_p = _polish(model, ev, theta, at_bound, lb, var_mask, log_mask)
                if ev_p is not ev:
                    it += 1
                    change, theta, ev = ev_p.loglik - ev.loglik, theta_p, ev_p
                    rec = IterationRecord(it, "AI (polish)", theta.copy(), ev.loglik, 1.0,
                                          _decrement(ev, ~(at_bound & (ev.score < 0))),
                                          time.perf_counter() - t1)
                    history.append(rec)
                    if callback is not None:
                        callback(rec)
            break
        if hand_over is not None and fallbacks >= HAND_OVER_AFTER and hand_over(theta):
            handed_over = True
            break
    if not converged and not handed_over and not stalled:
        warnings.warn(f"REML did not converge in {max_iter} iterations; "
                      f"last log-likelihood change {change:.3g}", ConvergenceWarning, stacklevel=3)
    return REMLResult(theta=theta, evaluation=ev, converged=converged, n_iter=it,
                      history=history, at_bound=var_mask & (theta <= model.lower_bounds(theta, floor)),
                      handed_over=handed_over)
