"""Kenward–Roger small-sample inference for fixed effects, from the MME — no n × n
matrix (Kenward & Roger 1997, Biometrics 53:983–997; the numbers of pbkrtest's
``vcovAdj``, ``Lb_ddf`` and ``KRmodcomp``, Halekoh & Højsgaard 2014, JSS 59(9)).

With V = Σᵢ θᵢ Vᵢ (Vᵢ = Zₖ (Eᵢ ⊗ K) Zₖ' for an element θᵢ of G₀ of block k,
V_e = I for σ²ₑ; Rⱼ for the elements of a structured R₀, below), Φ = (X'V⁻¹X)⁻¹ = Cˣˣ
and P the REML projection, pbkrtest needs

    Pᵢ  = X'(∂V⁻¹/∂θᵢ)X = −X'V⁻¹VᵢV⁻¹X
    Qᵢⱼ = X'V⁻¹VᵢV⁻¹VⱼV⁻¹X
    Iᵢⱼ = tr(P Vᵢ P Vⱼ)                       (2 × the expected REML information)
    𝒲   = 2 I⁻¹,    Φ_A = Φ + 2 Φ [Σᵢⱼ 𝒲ᵢⱼ (Qᵢⱼ − PᵢΦPⱼ)] Φ

Everything reduces to MME quantities. With F = C⁻¹[:, :p], Fᵤ its random rows,
Γ = G⁻¹ (block diagonal, G₀ₖ⁻¹ ⊗ Kₖ⁻¹) and aᵢ = (Eᵢ G₀ₖ⁻¹ ⊗ I) placed in block k:

- Z'V⁻¹X = −Γ Fᵤ Φ⁻¹, hence ΦPᵢΦ = −∂Φ/∂θᵢ = −Fᵤ'(G₀⁻¹EᵢG₀⁻¹ ⊗ K⁻¹)Fᵤ (the
  Satterthwaite derivatives, ``satterthwaite.vcov_derivatives``);
- Qᵢⱼ − PᵢΦPⱼ = Aᵢ' P Aⱼ with Aᵢ = VᵢV⁻¹X, and Ãᵢ = AᵢΦ = −Z aᵢ Fᵤ (block
  parameter), Ã_e = W F / σ²ₑ (residual); P a = (a − W C⁻¹ W'a / σ²ₑ) / σ²ₑ, so
  Φ(Σ𝒲ᵢⱼ(Qᵢⱼ − PᵢΦPⱼ))Φ = Σ 𝒲ᵢⱼ Ãᵢ'PÃⱼ costs one solve with k·p right-hand sides;
- Z'PZ = Γ − Γ Cᵘᵘ Γ, so with Mᵢ = (Eᵢ⊗K) Z'PZ = aᵢ (I − Cᵘᵘ Γ):
  tr(PVᵢPVⱼ) = tr(MᵢMⱼ) and tr(PVᵢ) = tr(Mᵢ) — no K, only K⁻¹ (inside C and Γ);
- the residual rows by V = Σθⱼ Vⱼ + σ²ₑ I and PVP = P:
  tr(PVᵢP) = [tr(Mᵢ) − Σⱼ θⱼ tr(MᵢMⱼ)] / σ²ₑ,   tr(P²) = [tr(P) − Σⱼ θⱼ tr(PVⱼP)] / σ²ₑ,
  tr(P) = (n − p − q + tr(Cᵘᵘ Γ)) / σ²ₑ.

The traces tr(MᵢMⱼ) are the only part that does not scale:

- ``trace_method="exact"`` (default when q ≤ ``EXACT_MAX_Q`` = 5000 random effects):
  the dense q × q block Cᵘᵘ from q solves with the factor in hand (in chunks), then
  N = I − CᵘᵘΓ and tr(MᵢMⱼ) = Σ (aᵢN) ∘ (aⱼN)'. Memory about 3 q² doubles.
- ``trace_method="hutchinson"`` (default when q > 5000): Hutchinson's estimator with
  ``n_probes`` Rademacher vectors x in the q-space (fixed seed ``PROBE_SEED``):
  tr(MᵢMⱼ) ≈ mean x'MᵢMⱼx and tr(Mᵢ) ≈ mean x'Mᵢx from the same probes (so the
  residual rows, which subtract these, inherit the error of the combined matrix and
  not of its parts). Cost (number of block parameters + 1) solves per probe; the
  relative error is reported in ``trace_rel_se``.

Structured residuals (``model.residual``: ``by()``/``diag()`` and ``us()`` with missing
records, with or without weights). All in the weighted scale (W̃, ỹ, R̃ = ⊕ᵤ R₀[oᵤ,oᵤ];
KR is invariant under the fixed map y → W^{1/2}y). The residual parameters φⱼ (elements
of R₀) have Vⱼ = Rⱼ = ⊕ᵤ Eⱼ[oᵤ,oᵤ]; V stays linear in θ, so pbkrtest's Rᵢⱼ = 0 still
holds. With S = R⁻¹, Hⱼ = W̃'SRⱼSW̃ (= −∂C/∂φⱼ, on the pattern of C) and, for a block
parameter, Dᵢ = G₀⁻¹EᵢG₀⁻¹ ⊗ K⁻¹ (= −∂C/∂θᵢ), using PZ̃ = SW̃ C⁻¹[:, u] Γ:

- Ãⱼ = Rⱼ S W̃ F (residual), P a = S a − S W̃ C⁻¹ W̃'S a — the same one solve;
- block × block: tr(MᵢMⱼ) as above (Z̃'PZ̃ = Γ − ΓCᵘᵘΓ holds for any R);
- block × residual: tr(PVᵢPRⱼ) = tr(Dᵢ C⁻¹[u,:] Hⱼ C⁻¹[:,u]) (rows/columns of θᵢ's block);
- residual × residual, from −∂²(log|R| + log|G| + log|C|) = ∂²(log|V| + log|X'V⁻¹X|):
  tr(PRᵢPRⱼ) = Σₚ nₚ tr(Rₚ⁻¹EᵢRₚ⁻¹Eⱼ) − tr(C⁻¹ W̃'S(RᵢSRⱼ + RⱼSRᵢ)SW̃) + tr(C⁻¹HᵢC⁻¹Hⱼ),
  the middle term from C⁻¹ on the pattern of C (per residual cell, as ``engine.reml``).

``trace_method="exact"`` (default when dim = p + q ≤ ``exact_max_q``) forms the dense
C⁻¹ (q solves besides F; the products in row chunks; memory about 4 dim² doubles).
``"hutchinson"``: Rademacher probes x in the q-space for block × block (as above) and
block × residual (x'aᵢ[C⁻¹HⱼC⁻¹(0; Γx)]ᵤ, sharing the solve C⁻¹(0; Γx)), and probes z in
the n-space for residual × residual (z'PRᵢPRⱼz, the target itself); (1 + k) solves per
q-probe and (1 + kᵣ) per n-probe. A V that is not linear in θ (a spatial AR1 ⊗ AR1
residual, an FA G₀: Rᵢⱼ ≠ 0) goes to :mod:`mme.inference.kr_nonlinear` (dense V, with
Kenward & Roger's second-derivative term).

The df and the F scaling then follow pbkrtest's ``.KR_adjust`` / ``Lb_ddf`` literally.
pbkrtest needs a REML fit, and so does this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._errors import DfMethodError, OptionError
from ..model.covariance import ginv_matrix
from .kr_nonlinear import kenward_roger_dense, needs_dense

#: Largest number of random effects q for which the traces are computed exactly.
EXACT_MAX_Q = 5000
#: Default number of Hutchinson probes (large q only).
N_PROBES = 200
#: Seed of the Hutchinson probes: results are reproducible run to run.
PROBE_SEED = 20240917
#: Columns of C⁻¹ solved for at once when forming the dense Cᵘᵘ.
SOLVE_CHUNK = 512
#: pbkrtest uses a generalized inverse of the information when its smallest
#: absolute eigenvalue is at most this.
INFO_COND_TOL = 1e-10
#: Structured residual kinds whose R is linear in the parameters (``model.residual``).
LINEAR_RESIDUAL_KINDS = ("diag", "us")
#: G₀ structures whose parameters are elements of G₀ (θᵢ ↔ Eᵢ; not FA's loadings).
LINEAR_BLOCK_KINDS = ("us", "diag")



@dataclass(frozen=True)
class KenwardRoger:
    """The pieces of Kenward–Roger inference for one fit.

    Attributes
    ----------
    vcov : (p, p)        Φ = Cˣˣ, the unadjusted Var(β̂)
    vcov_adj : (p, p)    Φ_A, the bias-adjusted Var(β̂) (pbkrtest's ``vcovAdj``)
    dvcov : (k, p, p)    ∂Φ/∂θᵢ = −ΦPᵢΦ
    information : (k, k) tr(PVᵢPVⱼ) (pbkrtest's ``IE2``)
    W : (k, k)           2 × its inverse (pbkrtest's ``W``)
    trace_method : "exact" or "hutchinson"
    n_probes : number of Hutchinson probes (0 when exact)
    trace_rel_se : (k, k) estimated relative standard error of each trace (0 when exact);
        with a structured residual the off-diagonal ones are relative to √(IᵢᵢIⱼⱼ)
    """

    vcov: np.ndarray
    vcov_adj: np.ndarray
    dvcov: np.ndarray
    information: np.ndarray
    W: np.ndarray
    trace_method: str
    n_probes: int
    trace_rel_se: np.ndarray

    def df(self, L: np.ndarray) -> np.ndarray:
        """KR df of each row l of L (m × p) — pbkrtest's ``Lb_ddf(l, Φ, Φ_A)``."""
        L = np.atleast_2d(np.asarray(L, float))
        out = np.full(L.shape[0], np.nan)
        for r, l in enumerate(L):
            if l @ self.vcov @ l > 0:
                out[r] = _kr_adjust(l[None, :], self.vcov, self.dvcov, self.W, 1)[0]
        return out

    def ftest(self, L: np.ndarray, beta: np.ndarray) -> dict:
        """KR F test of Lβ = 0 (pbkrtest's ``KRmodcomp(model, L)``, as lmerTest reports it).

        Returns dict with ``num_df`` (rank of L), ``den_df``, ``F_value`` (scaled),
        ``F_unscaled`` and ``F_scaling``.
        """
        L = _full_row_rank(np.atleast_2d(np.asarray(L, float)))
        q = L.shape[0]
        ddf, scaling = _kr_adjust(L, self.vcov, self.dvcov, self.W, q)
        Lb = L @ beta
        wald = float(Lb @ np.linalg.solve(L @ self.vcov_adj @ L.T, Lb))
        return {"num_df": q, "den_df": ddf, "F_value": scaling * wald / q,
                "F_unscaled": wald / q, "F_scaling": scaling}


# ---------------------------------------------------------------------------------
def kenward_roger(fit, trace_method: str = "auto", n_probes: int = N_PROBES,
                  seed: int = PROBE_SEED, exact_max_q: int = EXACT_MAX_Q) -> KenwardRoger:
    """Kenward–Roger pieces of a REML fit (cached on the fit for the default arguments).

    Parameters
    ----------
    fit : mme.Fit
        A REML fit with at least one random term and estimated variances.
    trace_method : "auto", "exact" or "hutchinson"
        How tr(PVᵢPVⱼ) is computed; "auto" is exact when q ≤ ``exact_max_q``.
    n_probes, seed : Hutchinson probes and their seed (large q only).

    Raises
    ------
    DfMethodError
        ML fits (pbkrtest requires REML), models without random terms, or fits whose
        variances were given rather than estimated.
    """
    check_kenward_roger(fit)
    key = (trace_method, int(n_probes), int(seed), int(exact_max_q))
    cache = fit.internals.kenward_roger_cache
    if key not in cache:
        cache[key] = _compute(fit, trace_method, int(n_probes), int(seed), int(exact_max_q))
    return cache[key]


def check_kenward_roger(fit) -> None:
    """Raise DfMethodError unless Kenward–Roger applies to ``fit``."""
    res = fit.internals.mme.residual
    if not fit.blocks and res.is_scalar:
        raise DfMethodError("Kenward-Roger df need a random term; this model has none "
                            "(its df are the residual df: use df_method='residual')")
    if fit.method != "REML":
        raise DfMethodError("Kenward-Roger's method is only available for REML fits "
                            "(as pbkrtest); refit with method='REML' or use "
                            "df_method='satterthwaite'")
    if not fit.estimated:
        raise DfMethodError("Kenward-Roger df need estimated variances; these were given "
                            "(use df_method='asymptotic')")
    if needs_dense(fit):
        return          # FA G₀ or AR1 ⊗ AR1 residual: the dense-V route (kr_nonlinear)
    if not res.is_scalar and (res.kind not in LINEAR_RESIDUAL_KINDS
                              or getattr(fit.internals.mme, "n_aug", 0)):
        raise DfMethodError(f"Kenward-Roger df are implemented for residual structures "
                            f"linear in their parameters (σ²ₑ with or without weights, "
                            f"by()/diag(), us()) and for AR1 ⊗ AR1; this fit's residual is "
                            f"{res.kind!r}: use df_method='satterthwaite'")


def _compute(fit, trace_method, n_probes, seed, exact_max_q) -> KenwardRoger:
    if needs_dense(fit):
        return kenward_roger_dense(fit)
    if not fit.internals.mme.residual.is_scalar:
        return _compute_structured(fit, trace_method, n_probes, seed, exact_max_q)
    it = fit.internals
    model, theta = it.likelihood, np.asarray(it.theta, float)
    mme = model.mme
    p, dim = mme.p, mme.dim
    q = dim - p
    G0s, R0 = model.split(theta)
    s2e = float(R0[0, 0])
    Phi = np.array(fit.vcov_beta, float)
    F = it.F
    dvcov = it.dvcov
    mme.ensure(theta)

    blocks = _block_params(mme, G0s, p)   # list of (slice in u, a_i (q_k×q_k) csr, structure)
    kb = len(blocks)
    Gamma = ginv_matrix(mme.design.blocks, G0s)

    if trace_method == "auto":
        trace_method = "exact" if q <= exact_max_q else "hutchinson"
    if trace_method == "exact":
        trM, TMM, tr_CG = _traces_exact(mme, Gamma, blocks, p, q)
        rel_se = np.zeros((kb + 1, kb + 1))
        used = 0
    elif trace_method == "hutchinson":
        trM, TMM, rel_se = _traces_hutchinson(mme, Gamma, blocks, p, q, n_probes, seed,
                                              theta[:kb], s2e)
        tr_CG = _trace_Cuu_Gamma(mme, G0s)
        used = n_probes
    else:
        raise OptionError(f"trace_method must be 'auto', 'exact' or 'hutchinson', got {trace_method!r}")

    k = kb + 1
    info = np.zeros((k, k))
    info[:kb, :kb] = TMM
    th = theta[:kb]
    tr_PVP = (trM - TMM @ th) / s2e                       # tr(P Vᵢ P), i block
    tr_P = (mme.n - p - q + tr_CG) / s2e
    info[:kb, kb] = info[kb, :kb] = tr_PVP
    info[kb, kb] = (tr_P - th @ tr_PVP) / s2e
    W = _w_matrix(info)

    # Φ (Σ 𝒲ᵢⱼ (Qᵢⱼ − PᵢΦPⱼ)) Φ = Σ 𝒲ᵢⱼ Ãᵢ' P Ãⱼ
    At = []
    for sl, a, s in blocks:
        At.append(-(mme.block_Z(s) @ (a @ F[p + sl.start:p + sl.stop])))
    At.append((mme.W @ F) / s2e)
    A = np.hstack(At)                                       # n × k·p
    B = mme.W.T @ A
    APA = (A.T @ A - B.T @ mme.solve(B) / s2e) / s2e        # (k·p) × (k·p)
    U = np.zeros((p, p))
    for i in range(k):
        for j in range(k):
            U += W[i, j] * APA[i * p:(i + 1) * p, j * p:(j + 1) * p]
    Phi_adj = Phi + 2.0 * U
    Phi_adj = 0.5 * (Phi_adj + Phi_adj.T)
    return KenwardRoger(vcov=Phi, vcov_adj=Phi_adj, dvcov=np.asarray(dvcov), information=info,
                        W=W, trace_method=trace_method, n_probes=used, trace_rel_se=rel_se)


def _compute_structured(fit, trace_method, n_probes, seed, exact_max_q) -> KenwardRoger:
    """Kenward–Roger with a structured R (``diag``/``us`` R₀; see the module docstring)."""
    it = fit.internals
    model, theta = it.likelihood, np.asarray(it.theta, float)
    mme = model.mme
    res = mme.residual
    p, dim = mme.p, mme.dim
    q = dim - p
    G0s, R0 = model.split(theta)
    Rinvs = res.pattern_inverses(R0)
    Phi = np.array(fit.vcov_beta, float)
    F = it.F
    dvcov = it.dvcov
    mme.ensure(theta)

    blocks = _block_params(mme, G0s, p)
    Ds = _block_derivatives(mme, G0s)               # Dᵢ = G₀⁻¹EᵢG₀⁻¹ ⊗ K⁻¹ per θᵢ
    kb, kr = len(blocks), res.n_params
    k = kb + kr
    Eo = [_pattern_E(res, j) for j in range(kr)]   # Rⱼ per pattern: Eⱼ[o, o]
    H = [_on_pattern(mme, mme.B @ res.cell_weights(res.derivative_mats(Rinvs, j)))
         for j in range(kr)]                        # Hⱼ = W̃'SRⱼSW̃ (dim × dim, symmetric)
    Gamma = ginv_matrix(mme.design.blocks, G0s)

    if trace_method == "auto":
        trace_method = "exact" if dim <= exact_max_q else "hutchinson"
    if trace_method == "exact":
        BB, BR, RR = _structured_exact(mme, Gamma, blocks, Ds, H, Eo, Rinvs, F, p, q)
        rel_se = np.zeros((k, k))
        used = 0
    elif trace_method == "hutchinson":
        BB, BR, RR, rel_se = _structured_hutchinson(mme, Gamma, blocks, H, Eo, Rinvs,
                                                    p, q, n_probes, seed)
        used = n_probes
    else:
        raise OptionError("trace_method must be 'auto', 'exact' or 'hutchinson', "
                          f"got {trace_method!r}")

    info = np.zeros((k, k))
    info[:kb, :kb] = BB
    info[:kb, kb:] = BR
    info[kb:, :kb] = BR.T
    info[kb:, kb:] = RR
    W = _w_matrix(info)

    # Ã per parameter (n × p): −Z̃aᵢFᵤ (block), RⱼSW̃F (residual); U = Σ 𝒲ᵢⱼ Ãᵢ'PÃⱼ
    SWF = _apply_blocks(res, Rinvs, mme.W @ F)
    At = [-(mme.block_Z(s) @ (a @ F[p + sl.start:p + sl.stop])) for sl, a, s in blocks]
    At += [_apply_blocks(res, Eo[j], SWF) for j in range(kr)]
    A = np.hstack(At)                                       # n × k·p
    SA = _apply_blocks(res, Rinvs, A)
    B = mme.W.T @ SA
    APA = A.T @ SA - B.T @ mme.solve(B)                     # (k·p) × (k·p)
    U = np.zeros((p, p))
    for i in range(k):
        for j in range(k):
            U += W[i, j] * APA[i * p:(i + 1) * p, j * p:(j + 1) * p]
    Phi_adj = Phi + 2.0 * U
    Phi_adj = 0.5 * (Phi_adj + Phi_adj.T)
    return KenwardRoger(vcov=Phi, vcov_adj=Phi_adj, dvcov=np.asarray(dvcov), information=info,
                        W=W, trace_method=trace_method, n_probes=used, trace_rel_se=rel_se)


def _block_derivatives(mme, G0s) -> list:
    """Dᵢ = G₀⁻¹EᵢG₀⁻¹ ⊗ K⁻¹ (= −∂C/∂θᵢ on the block, q_k × q_k csr) per block θᵢ."""
    out = []
    for s, G0 in zip(mme.structures, G0s):
        G0inv = np.linalg.inv(G0)
        out += [sp.csr_matrix(-s.dC_dtheta(i, G0inv)) for i in range(s.n_params)]
    return out


def _pattern_E(res, j) -> list:
    """Eⱼ[o, o] per pattern: the unit blocks of Rⱼ = ∂R/∂φⱼ."""
    E = res.E(j)
    return [E[np.ix_(pt.levels, pt.levels)] for pt in res.patterns]


def _apply_blocks(res, mats, V: np.ndarray) -> np.ndarray:
    """(⊕ᵤ mats[pattern of u]) V for V (n,) or (n, m): a unit-block-diagonal product."""
    V = np.asarray(V, float)
    out = np.zeros_like(V)
    for pt, M in zip(res.patterns, mats):
        out[pt.rows] = np.einsum("jk,uk...->uj...", M, V[pt.rows])
    return out


def _on_pattern(mme, data: np.ndarray) -> sp.csr_matrix:
    """The symmetric matrix whose lower triangle has ``data`` at the slots of C."""
    L = sp.csc_matrix((data, mme.C.indices, mme.C.indptr), shape=mme.C.shape)
    return sp.csr_matrix(L + L.T - sp.diags(L.diagonal()))


def _structured_exact(mme, Gamma, blocks, Ds, H, Eo, Rinvs, F, p, q):
    """Exact block × block tr(MᵢMⱼ), block × residual tr(Dᵢ C⁻¹[u,:]HⱼC⁻¹[:,u]) and
    residual × residual tr(PRᵢPRⱼ), from the dense C⁻¹ (q solves; its first p columns
    are F)."""
    res = mme.residual
    dim = mme.dim
    kb, kr = len(blocks), len(H)
    Cinv = np.empty((dim, dim))
    Cinv[:, :p] = F
    Cinv[:, p:] = _solve_columns(mme, p + np.arange(q))
    Cinv = 0.5 * (Cinv + Cinv.T)
    # tr(PRᵢPRⱼ) = Σₚ nₚ tr(Rₚ⁻¹EᵢRₚ⁻¹Eⱼ) − tr(C⁻¹W̃'S(RᵢSRⱼ + RⱼSRᵢ)SW̃) + tr(C⁻¹HᵢC⁻¹Hⱼ)
    T_cells = mme.B_trace.T @ Cinv[mme.pattern_rows, mme.pattern_cols]   # ⟨C⁻¹, B_cell⟩
    RR = np.zeros((kr, kr))
    for i in range(kr):
        for j in range(i, kr):
            c, M = 0.0, []
            for pt, Ri, Ei, Ej in zip(res.patterns, Rinvs, Eo[i], Eo[j]):
                A = Ri @ Ei @ Ri @ Ej
                c += pt.n_units * float(np.trace(A))
                A = A @ Ri
                M.append(A + A.T)
            RR[i, j] = RR[j, i] = c - float(res.cell_weights(M) @ T_cells)
    _, BB, _ = _block_traces(Cinv[p:, p:].copy(), Gamma, blocks)
    # over row chunks r of C⁻¹, with Xⱼ = (HⱼC⁻¹)[r, :] and Yⱼ = (C⁻¹Hⱼ)[r, :]:
    #   tr(C⁻¹HᵢC⁻¹Hⱼ) = Σ_r Σ Xᵢ ∘ Yⱼ,
    #   tr(Dᵢ C⁻¹[u,:]HⱼC⁻¹[:,u]) = Σ_r Σ (C⁻¹[r, block] Dᵢ) ∘ Xⱼ[:, block]
    # (sparse × dense products only: O(nnz · dim) per parameter)
    cols = [np.arange(s.offset, s.offset + s.block.q) for s in mme.structures]
    owner = [c for s, c in zip(mme.structures, cols) for _ in range(s.n_params)]
    BR = np.zeros((kb, kr))
    HH = np.zeros((kr, kr))
    for a0 in range(0, dim, SOLVE_CHUNK):
        a1 = min(dim, a0 + SOLVE_CHUNK)
        Cr = Cinv[a0:a1]
        X = [Hj[a0:a1] @ Cinv for Hj in H]                 # (HⱼC⁻¹)[r, :]
        Y = [(Hj @ Cr.T).T for Hj in H]                    # (C⁻¹Hⱼ)[r, :]
        for i in range(kr):
            for j in range(i, kr):
                HH[i, j] += float(np.sum(X[i] * Y[j]))
        for i, (D, c) in enumerate(zip(Ds, owner)):
            CD = (D @ Cr[:, c].T).T                        # C⁻¹[r, block] Dᵢ
            for j in range(kr):
                BR[i, j] += float(np.sum(CD * X[j][:, c]))
    HH = np.triu(HH) + np.triu(HH, 1).T
    return BB, BR, RR + HH


def _structured_hutchinson(mme, Gamma, blocks, H, Eo, Rinvs, p, q, n_probes, seed):
    """Hutchinson estimates of the information with a structured R.

    Rademacher probes x (q-space) for block × block x'MᵢMⱼx and block × residual
    x'aᵢ[C⁻¹HⱼC⁻¹(0; Γx)]ᵤ; probes z (n-space) for residual × residual z'PRᵢPRⱼz.
    Returns (block × block, block × residual, residual × residual, relative SEs).
    """
    res = mme.residual
    dim, n = mme.dim, mme.n
    kb, kr = len(blocks), len(H)
    k = kb + kr
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_probes, 64))
    sBB, sBR, sRR = [], [], []
    done = 0

    def P_apply(v):                       # P v = S v − S W̃ C⁻¹ W̃' S v
        Sv = _apply_blocks(res, Rinvs, v)
        return Sv - _apply_blocks(res, Rinvs, mme.W @ mme.solve(mme.W.T @ Sv))

    while done < n_probes:
        c = min(chunk, n_probes - done)
        if kb:
            x = rng.choice(np.array([-1.0, 1.0]), size=(q, c))
            R = np.zeros((dim, c))
            R[p:] = Gamma @ x
            w = mme.solve(R)                              # C⁻¹(0; Γx)
            Nx = x - w[p:]
            Mx = []
            for sl, a, _ in blocks:
                v = np.zeros((q, c))
                v[sl] = a @ Nx[sl]
                Mx.append(v)
            bb = np.zeros((kb, kb, c))
            for j in range(kb):
                R = np.zeros((dim, c))
                R[p:] = Gamma @ Mx[j]
                NMx = Mx[j] - mme.solve(R)[p:]
                for i, (sl, a, _) in enumerate(blocks):
                    bb[i, j] = np.sum(x[sl] * (a @ NMx[sl]), axis=0)
            sBB.append(0.5 * (bb + bb.transpose(1, 0, 2)))
            br = np.zeros((kb, kr, c))
            for j in range(kr):
                z = mme.solve(H[j] @ w)[p:]                # [C⁻¹HⱼC⁻¹(0; Γx)]ᵤ
                for i, (sl, a, _) in enumerate(blocks):
                    br[i, j] = np.sum(x[sl] * (a @ z[sl]), axis=0)
            sBR.append(br)
        zr = rng.choice(np.array([-1.0, 1.0]), size=(n, c))
        Pz = P_apply(zr)
        RPz = [_apply_blocks(res, Eo[j], Pz) for j in range(kr)]
        PRz = [P_apply(_apply_blocks(res, Eo[j], zr)) for j in range(kr)]
        rr = np.zeros((kr, kr, c))
        for i in range(kr):
            for j in range(kr):
                rr[i, j] = np.sum(RPz[i] * PRz[j], axis=0)
        sRR.append(0.5 * (rr + rr.transpose(1, 0, 2)))
        done += c
    m = n_probes

    def mean_se(samples):
        S = np.concatenate(samples, axis=-1)
        return S.mean(axis=-1), S.std(axis=-1, ddof=1) / np.sqrt(m)

    BB, BR = np.zeros((kb, kb)), np.zeros((kb, kr))
    se = np.zeros((k, k))
    if kb:
        BB, se[:kb, :kb] = mean_se(sBB)
        BR, se[:kb, kb:] = mean_se(sBR)
        se[kb:, :kb] = se[:kb, kb:].T
    RRm, se[kb:, kb:] = mean_se(sRR)
    # relative to √(IᵢᵢIⱼⱼ) ≥ |Iᵢⱼ| (the entry's own size on the diagonal): a small
    # cross trace is not reported as inaccurate for an error that cannot matter
    d = np.sqrt(np.abs(np.concatenate([np.diag(BB), np.diag(RRm)])))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.nan_to_num(se / np.outer(d, d))
    return BB, BR, RRm, rel


def _block_params(mme, G0s, p) -> list:
    """(slice of the block in u, aᵢ = Eᵢ G₀⁻¹ ⊗ I (q_k × q_k, csr), structure) per θᵢ."""
    out = []
    for s, G0 in zip(mme.structures, G0s):
        G0inv = np.linalg.inv(G0)
        sl = slice(s.offset - p, s.offset - p + s.block.q)
        I = sp.identity(s.L, format="csr")
        for i in range(s.n_params):
            out.append((sl, sp.kron(sp.csr_matrix(s.E(i) @ G0inv), I, format="csr"), s))
    return out


def _w_matrix(info: np.ndarray) -> np.ndarray:
    ev = np.linalg.eigvalsh(info)
    if np.min(np.abs(ev)) > INFO_COND_TOL:
        W = 2.0 * np.linalg.inv(info)
    else:
        W = 2.0 * np.linalg.pinv(info)
    return 0.5 * (W + W.T)


def _trace_Cuu_Gamma(mme, G0s) -> float:
    """tr(Cᵘᵘ Γ) from the selected inverse (entries of C⁻¹ on the pattern of G⁻¹)."""
    rows = np.concatenate([s.rows for s in mme.structures])
    cols = np.concatenate([s.cols for s in mme.structures])
    cinv = mme.selected_inverse(rows, cols)
    out, i = 0.0, 0
    for s, G0 in zip(mme.structures, G0s):
        m = s.rows.shape[0]
        out += float(np.sum(np.linalg.inv(G0) * s.S(cinv[i:i + m])))
        i += m
    return out


def _solve_columns(mme, cols, row0: int = 0) -> np.ndarray:
    """C⁻¹[row0:, cols] by solves with unit vectors, ``SOLVE_CHUNK`` at a time."""
    dim = mme.dim
    cols = np.asarray(cols, dtype=np.int64)
    out = np.empty((dim - row0, cols.shape[0]))
    for j0 in range(0, cols.shape[0], SOLVE_CHUNK):
        j1 = min(cols.shape[0], j0 + SOLVE_CHUNK)
        R = np.zeros((dim, j1 - j0))
        R[cols[j0:j1], np.arange(j1 - j0)] = 1.0
        out[:, j0:j1] = mme.solve(R)[row0:]
    return out


def _traces_exact(mme, Gamma, blocks, p, q):
    """tr(Mᵢ), tr(MᵢMⱼ) and tr(CᵘᵘΓ) from the dense Cᵘᵘ (q solves)."""
    N = _solve_columns(mme, p + np.arange(q), row0=p)
    return _block_traces(N, Gamma, blocks)


def _block_traces(N, Gamma, blocks):
    """tr(Mᵢ), tr(MᵢMⱼ) and tr(CᵘᵘΓ) from the dense Cᵘᵘ, given as N (overwritten)."""
    q = N.shape[0]
    # N ← I − Cᵘᵘ Γ  (= −(Γ Cᵘᵘ)' since both are symmetric)
    GC = Gamma @ N
    tr_CG = float(np.trace(GC))
    N = -GC.T
    del GC
    N[np.diag_indices(q)] += 1.0
    kb = len(blocks)
    trM = np.zeros(kb)
    T = np.zeros((kb, kb))
    for i, (sli, ai, _) in enumerate(blocks):
        Mi = ai @ N[sli]                              # rows of block k(i), all q columns
        trM[i] = np.trace(Mi[:, sli])
        for j in range(i, kb):
            slj, aj, _ = blocks[j]
            Mj = Mi if j == i else aj @ N[slj]
            T[i, j] = T[j, i] = float(np.einsum("ab,ba->", Mi[:, slj], Mj[:, sli]))
    return trM, T, tr_CG


def _traces_hutchinson(mme, Gamma, blocks, p, q, n_probes, seed, theta_b, s2e):
    """Hutchinson estimates of tr(Mᵢ) and tr(MᵢMⱼ) with Rademacher probes in u-space.

    Also returns the estimated relative standard error of each entry of the
    information (block × block and block × residual).
    """
    dim = mme.dim
    kb = len(blocks)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_probes, 64))

    def N_apply(v):                       # (I − Cᵘᵘ Γ) v
        R = np.zeros((dim, v.shape[1]))
        R[p:] = Gamma @ v
        return v - mme.solve(R)[p:]

    samples_M = []                        # per probe: x'Mᵢx   (kb,)
    samples_MM = []                       # per probe: x'MᵢMⱼx (kb, kb)
    done = 0
    while done < n_probes:
        c = min(chunk, n_probes - done)
        x = rng.choice(np.array([-1.0, 1.0]), size=(q, c))
        Nx = N_apply(x)
        Mx = []
        for sl, a, _ in blocks:
            v = np.zeros((q, c))
            v[sl] = a @ Nx[sl]
            Mx.append(v)
        sM = np.array([np.sum(x * Mx[i], axis=0) for i in range(kb)])        # kb × c
        sMM = np.zeros((kb, kb, c))
        for j in range(kb):
            NMx = N_apply(Mx[j])
            for i, (sl, a, _) in enumerate(blocks):
                sMM[i, j] = np.sum(x[sl] * (a @ NMx[sl]), axis=0)
        sMM = 0.5 * (sMM + sMM.transpose(1, 0, 2))
        samples_M.append(sM)
        samples_MM.append(sMM)
        done += c
    sM = np.concatenate(samples_M, axis=1)
    sMM = np.concatenate(samples_MM, axis=2)
    trM = sM.mean(axis=1)
    T = sMM.mean(axis=2)
    # relative standard errors (block × block, block × residual)
    m = sM.shape[1]
    rel = np.zeros((kb + 1, kb + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel[:kb, :kb] = sMM.std(axis=2, ddof=1) / np.sqrt(m) / np.abs(T)
        comb = (sM - np.einsum("ijc,j->ic", sMM, theta_b)) / s2e
        rel[:kb, kb] = rel[kb, :kb] = comb.std(axis=1, ddof=1) / np.sqrt(m) / np.abs(comb.mean(axis=1))
    return trM, T, np.nan_to_num(rel)


# ---------------------------------------------------------------------------------
def _full_row_rank(L: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Rows spanning the row space of L (the KR test depends on that space only)."""
    if L.shape[0] == 1:
        return L
    U, s, Vt = np.linalg.svd(L, full_matrices=False)
    r = int(np.sum(s > tol * max(s[0], 1e-300)))
    if r == L.shape[0]:
        return L
    return s[:r, None] * Vt[:r]


def _div_zero(x: float, y: float, tol: float = 1e-14) -> float:
    """x / y, or 1 when both are below tol (pbkrtest's ``.divZero``)."""
    if abs(x) < tol and abs(y) < tol:
        return 1.0
    return x / y


def _kr_adjust(L, Phi, dvcov, W, q) -> tuple:
    """pbkrtest's ``.KR_adjust``: (denominator df, F scaling) for the hypothesis Lβ."""
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    U = np.einsum("ab,ibc->iac", Theta, dvcov)   # Θ ∂Φ/∂θᵢ  (= −ΘΦPᵢΦ; sign cancels)
    tr = np.einsum("iaa->i", U)
    A1 = float(tr @ W @ tr)
    A2 = float(np.einsum("ij,iab,jba->", W, U, U))
    B = (A1 + 6.0 * A2) / (2.0 * q)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        den = 3.0 * q + 2.0 * (1.0 - g)
        c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
        V0 = 1.0 + c1 * B
        V1 = 1.0 - c2 * B
        V2 = 1.0 - c3 * B
        if abs(V0) < 1e-10:
            V0 = 0.0
        rho = (1.0 / q) * _div_zero(1.0 - A2 / q, V1) ** 2 * V0 / V2
        df2 = 4.0 + (q + 2.0) / (q * rho - 1.0)
        scaling = 1.0 if abs(df2 - 2.0) < 1e-2 else df2 * (1.0 - A2 / q) / (df2 - 2.0)
    return float(df2), float(scaling)
