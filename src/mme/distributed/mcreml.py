"""Monte-Carlo REML on the distributed PCG: variance components without C⁻¹.

REML's score for a variance σ²ₖ (V = Σₖ σ²ₖ Vₖ + σ²ₑ I, Vₖ = Zₖ Kₖ Zₖ') is

    ∂ℓ/∂σ²ₖ = ½ [ y'P Vₖ P y − tr(P Vₖ) ],

and both terms come from MME solutions: y'PVₖPy = ûₖ'Kₖ⁻¹ûₖ / σ⁴ₖ (ê'ê / σ⁴ₑ for the
residual). The trace, which exact REML takes from C⁻¹, is the expectation of the
same quadratic form for data simulated from the model at the current variances,
tr(P Vₖ) = E[y*'P Vₖ P y*] with y* = Σₖ Zₖ uₖ* + e*, uₖ* ~ N(0, σ²ₖ Kₖ),
e* ~ N(0, σ²ₑ I) (García-Cortés et al. 1992; Matilainen et al. 2012). Each sample
is one more right-hand side of the MME, solved with the data in one block PCG
(one Allreduce per iteration for all of them).

Updates are average-information Newton steps (Matilainen et al. 2013): the AI
matrix ½ y'P Vᵢ P Vⱼ P y is exact, from a second block solve whose right-hand sides
are the working variates Vᵢ P y. The samples use common random numbers: the
standard normal draws are fixed at the start and scaled by the current σ's, so the
Monte-Carlo score is a smooth function of θ, the iteration converges to a fixed
point θ̂_MC, and its Monte-Carlo error is

    Var_MC(θ̂) ≈ AI⁻¹ S AI⁻¹,   S = covariance of the sample mean of the score's trace part,

reported as ``mc_se``. Stopping rule: the Newton step is below ``step_tol`` ×
the Monte-Carlo SE for every parameter (iterating further moves θ by less than
its Monte-Carlo noise) — or below 1e-8 relative. With ``max_mc_se_ratio`` set,
samples are doubled (up to ``max_samples``) until every MC SE is at most that
fraction of the parameter's sampling SE (from AI⁻¹).

Draws do not depend on the number of ranks: uₖ* is drawn on rank 0 and the
residual draws come from one stream per block of 4,096 rows, so 1 and K ranks give
the same estimates to round-off.

Covered: scalar variance components (random terms with one column, any
relationship matrix) and R = σ²ₑI; multi-trait (cbind) models, weights and
structured residuals are refused (OptionError): their BLUP at known variances is
``blup.blup_distributed``.

References
----------
García-Cortés, L. A., Moreno, C., Varona, L. & Altarriba, J. (1992). Variance
component estimation by resampling. J. Anim. Breed. Genet. 109:358-363.

Matilainen, K., Mäntysaari, E. A., Lidauer, M. H., Strandén, I. & Thompson, R.
(2012). Employing a Monte Carlo algorithm in expectation maximization restricted
maximum likelihood estimation of the linear mixed model. J. Anim. Breed. Genet.
129:457-468.

Matilainen, K., Mäntysaari, E. A., Lidauer, M. H., Strandén, I. & Thompson, R.
(2013). Employing a Monte Carlo algorithm in Newton-type methods for restricted
maximum likelihood estimation of genetic parameters. PLoS ONE 8:e80821.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import DataError, OptionError
from ..engine.pcg import _tables
from .comm import Communicator, world
from .design import LocalDesign, build_local_design
from .operator import DistributedOperator
from .pcg import block_pcg
from .preconditioner import BlockPreconditioner

__all__ = ["MCREMLResult", "MCREMLState", "mc_reml", "mc_reml_design"]

#: rows per block of the residual draws (a block's draws are the same whoever holds it)
DRAW_BLOCK = 4096


@dataclass
class MCREMLResult:
    """Monte-Carlo REML estimates.

    ``variances`` {term: σ², "Residual": σ²ₑ}; ``se`` sampling SE (AI⁻¹);
    ``mc_se`` Monte-Carlo SE; ``history`` one dict per round (θ, step, MC SE,
    PCG iterations, seconds); ``fixed_effects``/``random_effects`` the BLUE/BLUP at
    the estimates.
    """

    variances: dict
    se: dict
    mc_se: dict
    n_iter: int
    converged: bool
    n_samples: int
    history: list = field(repr=False)
    fixed_effects: pd.DataFrame = field(repr=False, default=None)
    random_effects: pd.DataFrame = field(repr=False, default=None)
    ai: np.ndarray = field(repr=False, default=None)
    seconds: float = 0.0
    ranks: int = 1
    pcg_iterations: int = 0

    @property
    def table(self) -> pd.DataFrame:
        """group, estimate, std_error, mc_se."""
        return pd.DataFrame({"group": list(self.variances),
                             "estimate": list(self.variances.values()),
                             "std_error": [self.se[g] for g in self.variances],
                             "mc_se": [self.mc_se[g] for g in self.variances]})


@dataclass
class MCREMLState:
    """Where Monte-Carlo REML stands after a round: what a resumed run needs to take
    exactly the steps the uninterrupted run takes (``on_round`` / ``resume``).

    ``theta`` the next round's variances; ``n_iter`` rounds done; ``n_samples`` samples
    drawn so far (the draws are remade from the seed: ``n_samples`` is the first
    ``n_samples`` doubled some times); ``X`` and ``S`` the last round's PCG solutions
    (data and samples, dim × (1 + n_samples); working variates, dim × parameters),
    which start the next round's PCG — without them a resumed round's solutions would
    differ from the uninterrupted run's by the PCG tolerance, not round-off; ``ai``
    and ``mc_cov`` the last round's average information and Monte-Carlo covariance
    (the reported SEs); ``history`` the round records; ``converged`` the stopping
    rule's verdict; ``pcg_iterations`` the total so far.
    """

    theta: np.ndarray
    n_iter: int
    n_samples: int
    history: list
    converged: bool
    pcg_iterations: int
    ai: np.ndarray
    mc_cov: np.ndarray
    X: np.ndarray = field(repr=False)
    S: np.ndarray = field(repr=False)


def mc_reml(formula: str, data: pd.DataFrame, relmat: dict | None = None,
            start: dict | None = None, comm: Communicator | None = None,
            residual: str | None = None, weights: str | None = None,
            **kw) -> MCREMLResult:
    """Monte-Carlo AI-REML with this rank holding the records ``data`` (collective).

    ``start``: starting variances ({term: σ², "Residual": σ²ₑ}; default: half the
    variance of y for the residual, the rest shared by the terms). Keywords go to
    :func:`mc_reml_design` (``n_samples``, ``seed``, ``max_iter``, ``step_tol``,
    ``tol``, ``max_mc_se_ratio``, ``max_samples``, ``callback``, ``on_round``,
    ``resume``). ``residual`` and ``weights`` other than the default R = σ²ₑI are
    refused (OptionError).
    """
    comm = world() if comm is None else comm
    design = build_local_design(formula, data, comm, relmat,
                                kinv="root" if kw.get("ginv") == "root" else "all",
                                residual=residual, weights=weights)
    return mc_reml_design(design, comm, start=start, **kw)


def _start(design: LocalDesign, comm: Communicator, start: dict | None) -> np.ndarray:
    groups = [b.group for b in design.blocks]
    if start is not None:
        absent = [g for g in groups + ["Residual"] if g not in start]
        extra = [g for g in start if g not in groups + ["Residual"]]
        if absent or extra:
            raise DataError(f"start: give a variance for each of {groups + ['Residual']} "
                            f"(missing {absent}, unknown {extra})")
        theta = np.array([float(np.squeeze(start[g])) for g in groups + ["Residual"]])
        if not np.all(theta > 0):
            raise DataError(f"start: variances must be > 0, got {theta.tolist()}")
        return theta
    s = comm.allreduce(np.array([design.y.sum(), (design.y ** 2).sum(), design.n]),
                       "variance of y")
    var_y = max((s[1] - s[0] ** 2 / s[2]) / max(s[2] - 1, 1), 1e-12)
    b = len(groups)
    return np.array([0.5 * var_y / max(b, 1)] * b + [0.5 * var_y])


class _Draws:
    """Standard-normal draws fixed for the whole run (common random numbers)."""

    def __init__(self, design: LocalDesign, comm: Communicator, seed: int, ns: int,
                 first: int = 0):
        self.ZU = []            # per term: this rank's rows of Zₖ Kₖ^{1/2} zₖ (n_r × ns)
        owner = comm.rank == 0
        sources = design.kinv_sources()
        for k, b in enumerate(design.blocks):
            U = None
            if owner:
                U = _sample_k(sources[k], ns, np.random.default_rng([seed, 2, k, first]))
            U = comm.bcast_array(U, (b.n_levels, ns), f"draws of {b.group!r}")
            self.ZU.append(np.asarray(design.Z(k) @ U))
        # residual: one stream per block of DRAW_BLOCK rows (independent of the split)
        part = design.partition
        a = part.starts[design.rank]
        n = design.n
        E = np.empty((n, ns))
        for blk in range(a // DRAW_BLOCK, (a + n - 1) // DRAW_BLOCK + 1 if n else 0):
            lo, hi = blk * DRAW_BLOCK, (blk + 1) * DRAW_BLOCK
            full = np.random.default_rng([seed, 1, blk, first]).standard_normal(
                (DRAW_BLOCK, ns))
            s, e = max(lo, a), min(hi, a + n)
            E[s - a:e - a] = full[s - lo:e - lo]
        self.E = E

    def extend(self, other: "_Draws") -> None:
        self.ZU = [np.hstack([a, b]) for a, b in zip(self.ZU, other.ZU)]
        self.E = np.hstack([self.E, other.E])

    def simulate(self, theta: np.ndarray) -> np.ndarray:
        """This rank's rows of the simulated data at θ (n_r × ns)."""
        Y = np.sqrt(theta[-1]) * self.E
        for t, ZU in zip(theta[:-1], self.ZU):
            Y = Y + np.sqrt(t) * ZU
        return Y


def _check_resume(state: MCREMLState, design: LocalDesign, n_samples: int,
                  max_samples: int, m: int) -> None:
    """Refuse a state that cannot come from this model and these options."""
    ns = int(state.n_samples)
    doublings = ns // n_samples if ns % n_samples == 0 else 0
    # doubling happens while the samples are fewer than max_samples
    if not (doublings >= 1 and doublings & (doublings - 1) == 0
            and (ns == n_samples or ns // 2 < max_samples)):
        raise OptionError(f"resume: {ns} samples cannot follow from n_samples={n_samples} "
                          f"(doubled up to max_samples={max_samples})")
    want = {"theta": (m,), "X": (design.dim, 1 + ns), "S": (design.dim, m),
            "ai": (m, m), "mc_cov": (m, m)}
    for name, shape in want.items():
        got = np.shape(getattr(state, name))
        if got != shape:
            raise OptionError(f"resume: {name} has shape {got}, this model needs {shape}")


def _sample_k(source, ns: int, rng) -> np.ndarray:
    """ns draws from N(0, K) given the source of K⁻¹ (:mod:`mme.distributed.kinv`):
    CHOLMOD's factor of the whole K⁻¹ = P'LL'P, u = P'L'⁻¹z (rank 0 only; a
    pedigree's A⁻¹ is built whole for it and dropped after the draws)."""
    z = rng.standard_normal((source.n, ns))
    if source.is_identity:
        return z
    Kinv = source.matrix()
    if _is_identity(Kinv):
        return z
    from ..engine.cholesky import draw_with_precision
    return draw_with_precision(Kinv)(z)


def _is_identity(M) -> bool:
    M = sp.csr_matrix(M)
    return M.nnz == M.shape[0] and np.all(M.indices == np.arange(M.shape[0])) and \
        np.all(M.data == 1.0)


def mc_reml_design(design: LocalDesign, comm: Communicator, start: dict | None = None,
                   n_samples: int = 50, seed: int = 1, max_iter: int = 50,
                   step_tol: float = 0.05, tol: float = 1e-8,
                   max_mc_se_ratio: float | None = None, max_samples: int = 800,
                   preconditioner: str = "block", callback=None, ginv: str = "auto",
                   on_round=None, resume: MCREMLState | None = None) -> MCREMLResult:
    """Monte-Carlo AI-REML on a distributed design (see the module docstring).

    Parameters
    ----------
    n_samples : int
        Simulated data sets (right-hand sides besides the data).
    seed : int
    max_iter : int
        Most AI rounds.
    step_tol : float
        Stop when every |Newton step| ≤ step_tol × its Monte-Carlo SE.
    tol : float
        PCG relative residual.
    max_mc_se_ratio : float, optional
        Double the samples until every MC SE ≤ this × the sampling SE.
    on_round : callable, optional
        ``on_round(state)`` with an :class:`MCREMLState` after every round, on every
        rank (a checkpoint writer; the state's arrays are the run's own: copy to keep).
    resume : MCREMLState, optional
        Continue from a state ``on_round`` gave (the same on every rank): the rounds
        taken from there are those of the uninterrupted run (the same draws and PCG
        starts), to round-off. A converged state only returns its result.
    """
    comm.check_same("Monte-Carlo REML's parameters", n_samples=int(n_samples), seed=int(seed),
                    max_iter=int(max_iter), step_tol=float(step_tol), tol=float(tol),
                    max_mc_se_ratio=max_mc_se_ratio, max_samples=int(max_samples),
                    start=start)
    t_start = time.perf_counter()
    with comm.step("checking the model for Monte-Carlo REML"):
        if n_samples < 2:
            raise OptionError(f"n_samples must be at least 2, got {n_samples}")
        if design.multi_response:
            raise OptionError(f"Monte-Carlo REML covers one response; {design.formula!r} is "
                              "a cbind() multi-trait model: give its variances for BLUP "
                              "(blup_distributed, --variances) or estimate them with mme.fit")
        if not design.residual.is_scalar:
            raise OptionError(f"Monte-Carlo REML covers R = σ²ₑI; this model has "
                              f"{design.residual.describe()} (weights=/residual=): give "
                              "its variances for BLUP or estimate them with mme.fit")
        wide = [b.group for b in design.blocks if b.d != 1]
        if wide:
            raise OptionError(f"Monte-Carlo REML covers scalar variance components; "
                              f"{wide} have several columns (random slopes): use mme.fit")
        theta = _start(design, comm, start)
        if resume is not None:
            _check_resume(resume, design, n_samples, max_samples, len(theta))
    groups = [b.group for b in design.blocks] + ["Residual"]
    m = len(theta)
    ns = n_samples if resume is None else int(resume.n_samples)
    with comm.step("drawing the Monte-Carlo samples"):
        draws = _Draws(design, comm, seed, n_samples)
        drawn = n_samples
        while drawn < ns:           # a resumed run: the doublings before the checkpoint
            draws.extend(_Draws(design, comm, seed, drawn, first=drawn))
            drawn *= 2
    X_prev = S_prev = None       # last round's solutions: the next round's start
    history, converged = [], False
    ai = mc_cov = None
    pcg_total = 0
    it = 0
    if resume is not None:
        theta = np.array(resume.theta, dtype=float)
        X_prev, S_prev = np.array(resume.X, dtype=float), np.array(resume.S, dtype=float)
        history, converged = list(resume.history), bool(resume.converged)
        ai, mc_cov = np.array(resume.ai, dtype=float), np.array(resume.mc_cov, dtype=float)
        pcg_total, it = int(resume.pcg_iterations), int(resume.n_iter)
    step = np.full(m, np.inf)
    op = M = None
    while it < max_iter and not converged:
        it += 1
        t0 = time.perf_counter()
        G0s = [np.array([[t]]) for t in theta[:-1]]
        op = M = None           # last round's G⁻¹ rows freed before this round's are built
        op = DistributedOperator(design, G0s, theta[-1], comm, ginv=ginv)
        with comm.step("building the preconditioner"):
            M = BlockPreconditioner(op, preconditioner)
        Y = np.column_stack([design.y, draws.simulate(theta)])
        B = op.rhs(Y, "right-hand sides (data and samples)")
        res = block_pcg(op.matvec, B, M, tol=tol, X0=X_prev)
        X_prev = res.X
        # quadratic forms: ûₖ'Kₖ⁻¹ûₖ = θₖ ûₖ'G⁻¹ₖₖûₖ (each rank its rows of G⁻¹) and ê'ê
        # (each rank its records)
        E = op.residuals(Y, res.X)
        local = np.zeros((m, 1 + ns))
        local[-1] = np.einsum("ij,ij->j", E, E)
        off = design.p
        U = []
        for k, b in enumerate(design.blocks):
            U.append(res.X[off:off + b.q])
            local[k] = theta[k] * op.ginv_quadratic(k, res.X)
            off += b.q
        Q = comm.allreduce(local, "quadratic forms")
        d = 1.0 / (2.0 * theta ** 2)
        score = d * (Q[:, 0] - Q[:, 1:].mean(axis=1))
        S = np.atleast_2d(np.cov(Q[:, 1:])) * np.outer(d, d) / ns
        # average information from the working variates Vᵢ P y
        Wv = np.column_stack([design.Z(k) @ U[k][:, 0] / theta[k]
                              for k in range(m - 1)] + [E[:, 0] / theta[-1]])
        Bw = op.rhs(Wv, "right-hand sides (working variates)")
        rw = block_pcg(op.matvec, Bw, M, tol=tol, X0=S_prev)
        S_prev = rw.X
        PW = (Wv - design.W @ rw.X) / theta[-1]
        ai = comm.allreduce(0.5 * (Wv.T @ PW), "average information")
        ai = 0.5 * (ai + ai.T)
        try:
            ai_inv = np.linalg.inv(ai)
        except np.linalg.LinAlgError:
            raise DataError("the average-information matrix is singular: the variance "
                            "components are not identifiable from these data") from None
        mc_cov = ai_inv @ S @ ai_inv
        mc_se = np.sqrt(np.maximum(np.diag(mc_cov), 0.0))
        step = ai_inv @ score
        pcg_total += res.n_iter + rw.n_iter
        lam = 1.0
        while np.any(theta + lam * step <= 0) and lam > 1e-4:
            lam *= 0.5
        new = np.maximum(theta + lam * step, 1e-6 * theta)
        rec = {"iteration": it, "theta": theta.tolist(), "step": (new - theta).tolist(),
               "mc_se": mc_se.tolist(), "n_samples": ns, "pcg_iterations": res.n_iter,
               "pcg_iterations_ai": rw.n_iter, "seconds": time.perf_counter() - t0}
        history.append(rec)
        if callback is not None:
            callback(rec)
        small = np.all(np.abs(new - theta) <= np.maximum(step_tol * mc_se, 1e-8 * theta))
        theta = new
        if small:
            se = np.sqrt(np.maximum(np.diag(ai_inv), 0.0))
            if (max_mc_se_ratio is not None and np.any(mc_se > max_mc_se_ratio * se)
                    and ns < max_samples):
                with comm.step("drawing more Monte-Carlo samples"):
                    draws.extend(_Draws(design, comm, seed, ns, first=ns))
                ns *= 2
                X_prev = np.hstack([X_prev, np.tile(X_prev[:, :1], (1, ns // 2))])
            else:
                converged = True
        if on_round is not None:
            on_round(MCREMLState(theta=theta, n_iter=it, n_samples=ns, history=history,
                                 converged=converged, pcg_iterations=pcg_total, ai=ai,
                                 mc_cov=mc_cov, X=X_prev, S=S_prev))
    se = np.sqrt(np.maximum(np.diag(np.linalg.inv(ai)), 0.0))
    op = M = None               # freed before the result tables are made
    fixed, rand, _ = _tables(design, X_prev[:, 0])
    return MCREMLResult(
        variances=dict(zip(groups, theta.tolist())), se=dict(zip(groups, se.tolist())),
        mc_se=dict(zip(groups, np.sqrt(np.maximum(np.diag(mc_cov), 0.0)).tolist())),
        n_iter=it, converged=converged, n_samples=ns, history=history,
        fixed_effects=fixed, random_effects=rand, ai=ai,
        seconds=time.perf_counter() - t_start, ranks=comm.size, pcg_iterations=pcg_total)
