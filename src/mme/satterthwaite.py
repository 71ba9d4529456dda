"""Satterthwaite degrees of freedom for linear combinations of fixed effects,
computed from the MME — no n × n matrix (as lmerTest, Kuznetsova et al. 2017).

For a contrast l, Var(l'β̂) = l' Cˣˣ l with Cˣˣ the fixed block of C⁻¹, and

    df = 2 (l'Cˣˣl)² / (g' A g),   gᵢ = l' (∂Cˣˣ/∂θᵢ) l,

where A is the asymptotic covariance of θ̂ — the inverse of the observed REML
information, as lmerTest uses (its numerical Hessian of the deviance); here the
Hessian is the central difference of the analytic score. The derivatives of Cˣˣ
come from F = C⁻¹[:, :p] (p solves with the factor in hand), since
∂C⁻¹/∂θᵢ = −C⁻¹ (∂C/∂θᵢ) C⁻¹:

    block parameter θᵢ of G₀:  ∂Cˣˣ/∂θᵢ = Fᵤ' (Mᵢ ⊗ K⁻¹) Fᵤ,  Mᵢ = G₀⁻¹EᵢG₀⁻¹
    residual σ²ₑ:              ∂Cˣˣ/∂σ²ₑ = (W F)'(W F) / σ⁴ₑ
"""
from __future__ import annotations

import numpy as np

#: Relative step of the central differences of the score (observed information).
HESSIAN_STEP = 1e-4


def vcov_derivatives(model, theta: np.ndarray, F: np.ndarray) -> np.ndarray:
    """∂Cˣˣ/∂θᵢ for every parameter: array (k, p, p). F = C⁻¹[:, :p] at θ."""
    mme = model.mme
    G0s, s2e = model.split(theta)
    out = []
    for s, G0 in zip(mme.structures, G0s):
        G0inv = np.linalg.inv(G0)
        Fu = F[s.offset:s.offset + s.block.q]
        for i in range(s.n_params):
            D = -s.dC_dtheta(i, G0inv)          # Mᵢ ⊗ K⁻¹ (sparse)
            out.append(Fu.T @ (D @ Fu))
    WF = mme.W @ F
    out.append(WF.T @ WF / s2e ** 2)
    return np.array(out)


def observed_information(model, theta: np.ndarray, at_bound: np.ndarray | None = None) -> np.ndarray:
    """−∂²ℓ/∂θ∂θ' by central differences of the analytic score (2k evaluations)."""
    k = theta.shape[0]
    H = np.zeros((k, k))
    scale = np.maximum(np.abs(theta), 1e-3 * np.abs(theta).max())
    for i in range(k):
        h = HESSIAN_STEP * scale[i]
        up, dn = theta.copy(), theta.copy()
        up[i] += h
        dn[i] -= h
        if not (model.feasible(dn) and (at_bound is None or not at_bound[i])):
            dn = theta.copy()
            h_dn = 0.0
        else:
            h_dn = h
        s_up = model.evaluate(up).score
        s_dn = model.evaluate(dn).score
        H[:, i] = (s_up - s_dn) / (h + h_dn)
    # restore the factor at θ for whoever uses it next
    model.evaluate(theta, derivatives=False)
    return -0.5 * (H + H.T)


def satterthwaite_df(L: np.ndarray, vcov: np.ndarray, dvcov: np.ndarray,
                     vcov_theta: np.ndarray) -> np.ndarray:
    """df for each row l of L (m × p)."""
    L = np.atleast_2d(L)
    var = np.einsum("ij,jk,ik->i", L, vcov, L)
    g = np.einsum("ij,tjk,ik->it", L, dvcov, L)
    denom = np.einsum("it,ts,is->i", g, vcov_theta, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * var ** 2 / denom, np.inf)


def satterthwaite_F_df(L: np.ndarray, vcov: np.ndarray, dvcov: np.ndarray,
                       vcov_theta: np.ndarray) -> float:
    """Denominator df of the F test of Lβ = 0 (lmerTest's method: eigen-decompose
    L Cˣˣ L', one Satterthwaite df per orthogonal component, combine by
    Fai & Cornelius 1996)."""
    L = np.atleast_2d(L)
    VL = L @ vcov @ L.T
    w, P = np.linalg.eigh(VL)
    tol = 1e-8 * max(w.max(), 1e-300)
    keep = w > tol
    PL = (P[:, keep].T @ L)
    nu = satterthwaite_df(PL, vcov, dvcov, vcov_theta)
    q = int(keep.sum())
    nu_ok = nu[nu > 2]
    if len(nu_ok) < q:
        # lmerTest: if any nu <= 2 the combined df falls back to the smallest... use E-based formula only when all > 2
        E = np.sum(nu_ok / (nu_ok - 2)) + (q - len(nu_ok))
    else:
        E = np.sum(nu / (nu - 2))
    return float(2 * E / (E - q)) if E > q else float(np.min(nu))
