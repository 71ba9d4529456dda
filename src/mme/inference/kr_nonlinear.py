"""Kenward–Roger for covariance structures that are not linear in their parameters: a
spatial AR1 ⊗ AR1 residual (σ², ρ_col, ρ_row per field) and a factor-analytic G₀
(loadings Λ, specific variances ψ). Kenward & Roger (1997, Biometrics 53:983–997, eq. 2)
in full, on the dense marginal covariance V of the n records:

    Φ_A = Φ + 2 Φ [Σᵢⱼ 𝒲ᵢⱼ (Qᵢⱼ − PᵢΦPⱼ − ¼ Rᵢⱼ)] Φ,   Rᵢⱼ = X'V⁻¹ (∂²V/∂θᵢ∂θⱼ) V⁻¹X,

with Pᵢ, Qᵢⱼ and 𝒲 = 2 [tr(PVᵢPVⱼ)]⁻¹ as in :mod:`mme.inference.kenward_roger`. pbkrtest
(and that module) drop Rᵢⱼ because lme4's V is linear in θ; here Vᵢⱼ ≠ 0 within one
field's (σ², ρ_col, ρ_row) and between loadings of the same factor, and SAS's
``DDFM=KR`` keeps the term (``DDFM=KR(FIRSTORDER)`` drops it). The df and the F
scaling then follow pbkrtest's ``.KR_adjust`` (``kenward_roger._kr_adjust``) on
∂Φ/∂θᵢ = −ΦPᵢΦ, unchanged.

θ is the parameterisation the fit reports and the Satterthwaite df use: (σ², ρ_col,
ρ_row) per field, G₀'s elements, FA's free loadings and ψ. (Kenward–Roger with
nonlinear parameters is not invariant to reparameterisation; this is SAS's and
ASReml's choice of scale.)

The derivatives are analytic. V = Σₖ Zₖ (G₀ₖ ⊗ Kₖ) Zₖ' + R: a block's ∂V/∂θᵢ =
Σₑ Jₑᵢ Zₖ(Eₑ ⊗ Kₖ)Zₖ' with J = ∂vech G₀/∂θ (``BlockStructure.jacobian``) and, for FA,
∂²G₀/∂Λ[c,j]∂Λ[c',j] = e_c e_c'ᵀ + e_c' e_cᵀ; a field's R = σ² ρ_c^|Δc| ρ_r^|Δr| is
differentiated term by term; linear residuals (σ²ₑ, diag, us) by their unit matrices.

Memory and time: V, V⁻¹ and PVᵢ are dense n × n (k + 3 of them): about
8 (k + 3) n² bytes and k n³ flops. Fits with more than ``DENSE_MAX_N`` records are
refused (use Satterthwaite df, which needs no V).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._errors import DfMethodError
from .marginal import _block_covariance

#: the largest number of records for which V is formed (V, V⁻¹ and the k products PVᵢ
#: are dense n × n: at n = 4000 and k = 4 about 0.9 GB)
DENSE_MAX_N = 4000


def needs_dense(fit) -> bool:
    """True when V is not linear in θ (an FA G₀ or a spatial residual)."""
    mme = fit.internals.mme
    return (any(getattr(s, "fa_k", 0) for s in mme.structures)
            or getattr(mme.residual, "kind", "") == "ar1ar1")


def kenward_roger_dense(fit, second_order: bool = True):
    """The :class:`~mme.inference.kenward_roger.KenwardRoger` pieces from the dense V
    (see the module docstring). ``second_order=False`` drops the Rᵢⱼ term (SAS's
    ``DDFM=KR(FIRSTORDER)``; for a V linear in θ both are pbkrtest's)."""
    from .kenward_roger import KenwardRoger, _w_matrix

    it = fit.internals
    mme = it.mme
    design = mme.design
    n, p = design.n, mme.p
    if n > DENSE_MAX_N:
        raise DfMethodError(
            f"Kenward-Roger df for this covariance structure (not linear in its "
            f"parameters: FA loadings or AR1 correlations) form the dense n x n V; "
            f"n = {n} records exceeds DENSE_MAX_N = {DENSE_MAX_N}: use "
            f"df_method='satterthwaite'")
    theta = np.asarray(it.theta, float)
    Vs, V2 = _derivatives(mme, theta)
    k = len(Vs)
    V = _marginal(mme, theta)
    X = design.X.toarray()                             # dense-ok: n × p, n ≤ DENSE_MAX_N
    cV = np.linalg.cholesky(V)
    Vinv = _chol_inverse(cV)
    VinvX = Vinv @ X
    Phi = np.linalg.inv(X.T @ VinvX)
    Phi = 0.5 * (Phi + Phi.T)
    P = Vinv - VinvX @ Phi @ VinvX.T
    PV = [_dense(Vi, P) for Vi in Vs]                  # P Vᵢ (n × n)
    info = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            info[i, j] = info[j, i] = float(np.sum(PV[i] * PV[j].T))   # tr(PVᵢPVⱼ)
    W = _w_matrix(info)
    # Ãᵢ = VᵢV⁻¹XΦ; Φ(Qᵢⱼ − PᵢΦPⱼ)Φ = Ãᵢ'PÃⱼ
    G = VinvX @ Phi                                    # V⁻¹XΦ (n × p)
    At = [_times(Vi, G) for Vi in Vs]
    PAt = [P @ a for a in At]
    dvcov = np.array([G.T @ a for a in At])            # ∂Φ/∂θᵢ = ΦX'V⁻¹VᵢV⁻¹XΦ
    U = np.zeros((p, p))
    for i in range(k):
        for j in range(k):
            if W[i, j] != 0.0:
                U += W[i, j] * (At[i].T @ PAt[j])
    if second_order:
        for (i, j), Vij in V2.items():
            term = G.T @ _times(Vij, G)                # Φ Rᵢⱼ Φ
            U -= 0.25 * W[i, j] * term * (1.0 if i == j else 2.0)
    Phi_adj = Phi + 2.0 * U
    Phi_adj = 0.5 * (Phi_adj + Phi_adj.T)
    dvcov = 0.5 * (dvcov + np.transpose(dvcov, (0, 2, 1)))
    return KenwardRoger(vcov=Phi, vcov_adj=Phi_adj, dvcov=dvcov, information=info, W=W,
                        trace_method="exact", n_probes=0, trace_rel_se=np.zeros((k, k)))


# -- V and its derivatives ---------------------------------------------------------------
def _marginal(mme, theta) -> np.ndarray:
    design = mme.design
    idx = np.arange(design.n, dtype=np.int64)
    G0s, R0 = mme.split(theta)
    V = _dense(design.residual.covariance_rows(R0, idx))
    for block, G0 in zip(design.blocks, G0s):
        V += _dense(_block_covariance(block.Z.tocsc(), block, G0))
    return 0.5 * (V + V.T)


def _derivatives(mme, theta) -> tuple:
    """([∂V/∂θᵢ], {(i, j): ∂²V/∂θᵢ∂θⱼ, i ≤ j, the non-zero ones})."""
    design = mme.design
    idx = np.arange(design.n, dtype=np.int64)
    first, second = [], {}
    i0 = 0
    for s, block, m in zip(mme.structures, design.blocks, mme.sizes):
        th = theta[i0:i0 + m]
        Zc = block.Z.tocsc()
        basis = [_block_covariance(Zc, block, _E(s.d, a, b)) for a, b in s.pairs]
        J = s.jacobian(th)
        for i in range(m):
            Vi = sum((J[e, i] * basis[e] for e in np.flatnonzero(J[:, i])),
                     sp.csc_matrix((design.n, design.n)))
            first.append(sp.csc_matrix(Vi))
        if getattr(s, "fa_k", 0):
            for x, (c, j) in enumerate(s.loadings):
                for y in range(x, len(s.loadings)):
                    c2, j2 = s.loadings[y]
                    if j2 != j:
                        continue
                    D = np.zeros((s.d, s.d))
                    D[c, c2] += 1.0
                    D[c2, c] += 1.0
                    second[(i0 + x, i0 + y)] = _block_covariance(Zc, block, D)
        i0 += m
    res = design.residual
    kr = len(theta) - i0
    phi = theta[i0:]
    if getattr(res, "kind", "") == "ar1ar1":
        d1, d2 = _ar1ar1_derivatives(res, phi, idx)
        first += d1
        second.update({(i0 + a, i0 + b): M for (a, b), M in d2.items()})
    else:                      # σ²ₑ, diag, us (with weights): R linear in its parameters
        for j in range(kr):
            e = np.zeros(kr)
            e[j] = 1.0
            first.append(sp.csc_matrix(res.covariance_rows(res.R0(e), idx)))
    return first, second


def _ar1ar1_derivatives(res, phi, idx) -> tuple:
    """First and second derivatives of R = ⊕_fields σ² ρ_c^|Δc| ρ_r^|Δr| (observed rows)."""
    n = idx.size
    P = np.asarray(phi, float).reshape(len(res.fields), 3)
    first, second = [], {}
    for k, f in enumerate(res.fields):
        obs = f.rows[f.rows < res.n_obs]
        ci, ri = np.divmod(f.grid[f.rows < res.n_obs], f.n_r)
        Dc = np.abs(ci[:, None] - ci[None, :]).astype(float)
        Dr = np.abs(ri[:, None] - ri[None, :]).astype(float)
        s2, rc, rr = P[k]
        pc, pr = _pow(rc, Dc), _pow(rr, Dr)
        dpc, dpr = Dc * _pow(rc, Dc - 1), Dr * _pow(rr, Dr - 1)
        d2pc, d2pr = Dc * (Dc - 1) * _pow(rc, Dc - 2), Dr * (Dr - 1) * _pow(rr, Dr - 2)

        def place(M):
            out = np.zeros((n, n))
            out[np.ix_(obs, obs)] = M
            return out

        b = 3 * k
        first += [place(pc * pr), place(s2 * dpc * pr), place(s2 * pc * dpr)]
        second[(b, b + 1)] = place(dpc * pr)
        second[(b, b + 2)] = place(pc * dpr)
        second[(b + 1, b + 1)] = place(s2 * d2pc * pr)
        second[(b + 1, b + 2)] = place(s2 * dpc * dpr)
        second[(b + 2, b + 2)] = place(s2 * pc * d2pr)
    return first, second


def _pow(r: float, D: np.ndarray) -> np.ndarray:
    """r^D with 0 where D < 0 (the factor in front of it is 0 there: D·r^(D−1) at D = 0)."""
    out = np.zeros_like(D)
    ok = D >= 0
    out[ok] = r ** D[ok]
    return out


def _E(d: int, a: int, b: int) -> np.ndarray:
    E = np.zeros((d, d))
    E[a, b] = E[b, a] = 1.0
    return E


# -- dense helpers -----------------------------------------------------------------------
def _dense(M, left=None) -> np.ndarray:
    """M as a dense array, or left @ M."""
    if left is None:
        return M.toarray() if sp.issparse(M) else np.array(M, dtype=float)   # dense-ok: V pieces, n ≤ DENSE_MAX_N
    return np.asarray((M.T @ left.T).T) if sp.issparse(M) else left @ M


def _times(M, B: np.ndarray) -> np.ndarray:
    return np.asarray(M @ B)


def _chol_inverse(c: np.ndarray) -> np.ndarray:
    from scipy.linalg import cho_solve
    n = c.shape[0]
    inv = cho_solve((c, True), np.eye(n))
    return 0.5 * (inv + inv.T)
