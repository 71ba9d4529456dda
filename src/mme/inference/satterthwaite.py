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
    G0s, R0 = model.split(theta)
    out = []
    i0 = 0
    for s, G0 in zip(mme.structures, G0s):
        G0inv = np.linalg.inv(G0)
        Fu = F[s.offset:s.offset + s.block.q]
        elems = [Fu.T @ (-s.dC_dtheta(i, G0inv) @ Fu)        # Mᵢ ⊗ K⁻¹ per element
                 for i in range(s.n_elements)]
        if s.kind != "us":   # chain rule to the block's parameters (FA, diagonal)
            J = s.jacobian(theta[i0:i0 + s.n_params])
            elems = list(np.tensordot(J.T, np.array(elems), axes=1))
        out += elems
        i0 += s.n_params
    WF = mme.W @ F
    res = mme.residual
    if res.is_scalar:
        out.append(WF.T @ WF / float(R0[0, 0]) ** 2)
    else:
        Rinvs = res.pattern_inverses(R0)
        out += [res.sandwich(WF, res.derivative_mats(Rinvs, i)) for i in range(res.n_params)]
    return np.array(out)


def observed_information(model, theta: np.ndarray, at_bound: np.ndarray | None = None) -> np.ndarray:
    """−∂²ℓ/∂θ∂θ' by central differences of the analytic score (2k evaluations).

    Leaves the factor elsewhere than θ: users of the factor call ``MME.ensure``.
    """
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


#: eigenvalues of L Var(β̂) L' at or below this × the largest are dropped (R's
#: ``sqrt(.Machine$double.eps)`` in lmerTest's ``contestMD``)
EIGEN_EPS = float(np.sqrt(np.finfo(float).eps))


def contrast_eigen(L: np.ndarray, vcov: np.ndarray) -> tuple:
    """(w, P) of L Var(β̂) L' = P diag(w) P', decreasing as R's ``eigen()``, the
    eigen-directions with w > ``EIGEN_EPS`` · w₁ only: the one home of the
    eigen-split behind the Wald F statistic and its Satterthwaite df."""
    L = np.atleast_2d(L)
    w, P = np.linalg.eigh(L @ vcov @ L.T)
    w, P = w[::-1], P[:, ::-1]
    keep = w > max(EIGEN_EPS * w[0], 0.0)
    return w[keep], P[:, keep]


def satterthwaite_F_df(L: np.ndarray, vcov: np.ndarray, dvcov: np.ndarray,
                       vcov_theta: np.ndarray) -> float:
    """Denominator df of the F test of Lβ = 0, as lmerTest's ``contestMD``:
    eigen-decompose L Cˣˣ L' (eigenvalues > √ε · the largest count), one
    Satterthwaite df νₘ per eigen-direction, then (``get_Fstat_ddf``) ν₁ if there is
    one, their mean if all are within 1e-8 of each other, 2 if any νₘ ≤ 2, and
    otherwise 2E/(E − q) with E = Σ νₘ/(νₘ − 2) (Fai & Cornelius 1996)."""
    L = np.atleast_2d(L)
    if L.shape[0] == 1:
        return float(satterthwaite_df(L, vcov, dvcov, vcov_theta)[0])
    w, P = contrast_eigen(L, vcov)
    q = w.shape[0]
    if q == 0:
        return float("nan")
    nu = satterthwaite_df(P.T @ L, vcov, dvcov, vcov_theta)
    if q == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < 1e-8):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2)))
    return 2.0 * E / (E - q)
