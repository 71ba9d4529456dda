"""Dense NumPy oracles for the relationship-matrix paths of ``mme.fit``.

Every comparison here is against a small dense computation written from the
textbook formulas, independent of the package's sparse MME/CHOLMOD code:

    V  = Σₖ Zₖ (G₀ₖ ⊗ Kₖ) Zₖ' + σ²ₑ I
    −2ℓ_REML = (n − p) log 2π + log|V| + log|X'V⁻¹X| + y'Py        (lme4's constants)
    −2ℓ_ML   = n log 2π + log|V| + (y − Xβ̂)'V⁻¹(y − Xβ̂),  β̂ the GLS estimate
    P  = V⁻¹ − V⁻¹X(X'V⁻¹X)⁻¹X'V⁻¹

The dense optimum is found by ``scipy.optimize.minimize`` (trust-exact, with the
analytic gradient and Hessian of −2ℓ, which are exact because V is linear in θ)
over log-variances, and for a d = 2 term over the Cholesky factor of G₀
(log of its diagonal, its off-diagonal element as is). Henderson's C is formed
densely as W'R⁻¹W + diag(0, G⁻¹) and inverted for BLUPs and PEVs.

The pedigree (125 animals: 20 founders without records, 3 generations from 4
sires each, 20 inbred, max F = 0.156, some unknown parents coded "0" and "NA"),
the records, the marker genotypes (gene dropping) and the phenotypes are
simulated here with fixed NumPy seeds. The relationship matrix of the oracle is
the tabular A of the simulated pedigree, computed here (not by ``mme``).

Item 6 and the genomic error paths state what the package SHOULD do for bad input
(an ``mme.MMEError`` subclass whose message names the culprit); a failure there
is a package defect, not a test to relax.
"""
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.linalg as sla
import scipy.optimize as so
import scipy.sparse as sp
from scipy import stats
from threadpoolctl import threadpool_limits

import mme

# ============================================================== tolerances ==
# Achieved values measured on this file's data (stated in each comment); each
# tolerance is 10-100x above the worst value achieved over the cases that use it.

#: the dense optimiser's own convergence: max |∂(−2ℓ)/∂φ| at its optimum
#: (achieved ≤ 8.5e-8 over the mixed models here, 2.8e-7 for the fixed-only one)
TOL_DENSE_GRAD = 1e-5
#: analytic gradient of the dense −2ℓ vs central differences, relative to its largest
#: element (achieved 9.5e-8: the O(h²) truncation error of the differences)
TOL_GRAD_FD = 1e-6
#: numerical (central-difference) Hessian of the dense REML logLik vs the analytic
#: one, relative (achieved 2.6e-7)
RTOL_NUM_HESS = 1e-5
#: relative step of the central differences for gradients and Hessians
H_STEP = 1e-4
#: |logLik(mme) − dense logLik| at the same θ (mme's estimate or given variances)
#: (achieved 1.5e-11 animal model, 8e-12 given variances REML and ML, 1e-11 slopes,
#:  4e-12 GBLUP, 9e-12 single step)
ATOL_LOGLIK_SAME_THETA = 1e-9
#: |logLik(mme) − logLik at the dense optimum| (mme stops at a Newton decrement
#: < 1e-9; achieved 3.1e-11 animal REML, 3.3e-11 animal ML, 2.1e-10 slopes,
#: 1.8e-11 GBLUP, 1.1e-11 single step)
ATOL_LOGLIK_OPTIMUM = 1e-8
#: max |θ(mme)/θ(dense optimum) − 1| (achieved 3.0e-6 animal REML, 1.9e-6 ML,
#: 3.7e-6 slopes, 3.1e-6 GBLUP, 5e-7 single step: AI-REML stops a few 1e-5 SE
#: short of the optimum)
RTOL_THETA_OPTIMUM = 1e-4
#: max |û(mme) − û(dense)| relative to max|û| (achieved ≤ 5.7e-13)
RTOL_BLUP = 1e-11
#: max |PEV(mme)/PEV(dense) − 1|, also cond_var and reliability (achieved ≤ 3.3e-14)
ATOL_RELIABILITY = 1e-13  # rounding of 1 − PEV/prior where PEV = prior (achieved 2.2e-16)
RTOL_PEV = 1e-12
#: reliabilities of a (levels, K⁻¹) relmat vs the same model with the Pedigree: the same
#: K⁻¹, the same AI-REML path; diag(K) by selected inverse vs 1 + F (achieved 4.4e-16)
ATOL_RELIABILITY_KINV = 1e-13
#: max |β̂(mme) − β̂(dense)| relative to max|β̂| (achieved ≤ 7.2e-14)
RTOL_BETA = 1e-12
#: SEs of θ (and of h²): mme (AI⁻¹) vs the dense average information at mme's θ
#: (achieved ≤ 3.4e-15)
RTOL_SE_AI = 1e-13
#: SEs of θ: AI vs observed information (numerical Hessian of the dense REML logLik);
#: a statistical, not a numerical, difference (see test_se_ai_vs_observed_information):
#: achieved 1.5e-2 (σ²_id) and 1.0e-2 (σ²ₑ) here, 1-5 % on four other simulated sets
RTOL_SE_OBSERVED = 0.10
#: fitted/residuals vs dense Xβ̂ + Zû, relative to max|y| (achieved 4.9e-15)
RTOL_FITTED = 1e-13
#: vcov (and fixed-effect SEs) vs dense (X'V⁻¹X)⁻¹, relative (achieved 3.1e-14)
RTOL_VCOV = 1e-12
#: LRT statistic vs 2(ℓ₁ − ℓ₀) of dense ML/REML optima (achieved 5.9e-11)
ATOL_CHISQ = 1e-9
#: LRT p-value vs scipy.stats.chi2 of the dense statistic, relative (achieved 3.1e-11)
RTOL_P = 1e-9
#: the oracle's H₂₂ (Legarra's H on the genotyped) equals G (achieved 1.4e-16);
#: also the pedigree's inbreeding vs diag(tabular A) − 1 (achieved 0)
ATOL_H22 = 1e-14
#: G with two constant (0 and 2) marker columns added vs G without (achieved 0:
#: their centred columns are exactly zero)
ATOL_G_CONSTANT_COLUMNS = 1e-14
#: the dense oracle's −2ℓ_REML − (−2ℓ_ML) = log|X'V⁻¹X| − p log 2π (achieved 4.4e-15)
ATOL_DENSE_IDENTITY = 1e-13
#: exact algebraic identities (h² = σ²_a/Σσ², AIC, BIC; achieved 0 to 1 ulp)
RTOL_IDENTITY = 1e-14
#: a printed number "shows" a value when it matches to 4 significant digits
RTOL_PRINTED = 5e-4
#: relative size of the perturbations of θ in the slope model's optimality check
PERTURB = 1e-3

LOG2PI = np.log(2.0 * np.pi)
SEED_ANIMAL = 7
SEED_SLOPES = 11
SEED_MARKERS = 23


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    # the dense oracles run ~40x faster with one thread than with NumPy's and the
    # system BLAS pools fighting over two cores
    with threadpool_limits(1):
        yield


# ============================================================== simulation ==
def simulate_pedigree(rng, n_founders=20, n_gen=3, per_gen=35, n_sires=4):
    """Founders, then n_gen generations from n_sires sires of the previous one
    (so that half-sib matings make inbred animals); ~5 % unknown sires ("0"),
    ~5 % unknown dams ("NA")."""
    ids, sire, dam, sex = [], [], [], []
    for i in range(n_founders):
        ids.append(f"f{i:02d}")
        sire.append("0")
        dam.append("0")
        sex.append("M" if i < n_founders // 2 else "F")
    prev_m = [a for a, s in zip(ids, sex) if s == "M"]
    prev_f = [a for a, s in zip(ids, sex) if s == "F"]
    for g in range(1, n_gen + 1):
        sires = list(rng.choice(prev_m, size=min(n_sires, len(prev_m)), replace=False))
        cur_m, cur_f = [], []
        for j in range(per_gen):
            a = f"g{g}a{j:02d}"
            u = rng.random()
            s = str(rng.choice(sires)) if u > 0.05 else "0"
            d = str(rng.choice(prev_f)) if not 0.05 < u < 0.10 else "NA"
            x = "M" if j % 2 == 0 else "F"
            ids.append(a)
            sire.append(s)
            dam.append(d)
            sex.append(x)
            (cur_m if x == "M" else cur_f).append(a)
        prev_m, prev_f = cur_m, cur_f
    return pd.DataFrame({"id": ids, "sire": sire, "dam": dam, "sex": sex})


def tabular_A(pedf):
    """Numerator relationship matrix by the tabular method (parents listed first)."""
    pos = {a: i for i, a in enumerate(pedf["id"])}
    s = np.array([pos.get(v, -1) for v in pedf["sire"]])
    d = np.array([pos.get(v, -1) for v in pedf["dam"]])
    n = len(pos)
    A = np.zeros((n, n))
    for i in range(n):
        for j in range(i):
            v = (0.5 * A[j, s[i]] if s[i] >= 0 else 0.0) + (0.5 * A[j, d[i]] if d[i] >= 0 else 0.0)
            A[i, j] = A[j, i] = v
        A[i, i] = 1.0 + (0.5 * A[s[i], d[i]] if s[i] >= 0 and d[i] >= 0 else 0.0)
    return A


def gene_drop(pedf, n_markers, rng):
    """0/1/2 genotypes: founders (and unknown parents) draw alleles from base
    frequencies, offspring one random allele of each parent (unlinked loci)."""
    pos = {a: i for i, a in enumerate(pedf["id"])}
    p = rng.uniform(0.05, 0.95, n_markers)
    hap = np.zeros((len(pos), 2, n_markers), dtype=np.int8)
    cols = np.arange(n_markers)
    for i, (s, d) in enumerate(zip(pedf["sire"], pedf["dam"])):
        for k, par in enumerate((pos.get(s, -1), pos.get(d, -1))):
            if par < 0:
                hap[i, k] = rng.random(n_markers) < p
            else:
                hap[i, k] = hap[par, rng.integers(0, 2, n_markers), cols]
    return hap.sum(axis=1).astype(float)


def incidence(codes, L):
    Z = np.zeros((len(codes), L))
    Z[np.arange(len(codes)), codes] = 1.0
    return Z


# ============================================================ dense oracle ==
class DenseLMM:
    """V(θ) = Σᵢ θᵢ Vᵢ + σ²ₑ I, θ in mme's order: per block G₀'s variances, then
    its covariances (a, b), a > b; σ²ₑ last.

    blocks: list of (group, terms, [Z_term ...] (n × L each), K (L × L)).
    """

    def __init__(self, y, X, blocks):
        self.y, self.X = np.asarray(y, float), np.asarray(X, float)
        self.n, self.p = self.X.shape
        self.blocks = blocks
        self.Vi, self.labels = [], []
        for group, terms, Zs, K in blocks:
            for a, b in self.pairs(len(Zs)):
                M = Zs[a] @ K @ Zs[b].T
                self.Vi.append(M if a == b else M + M.T)
                self.labels.append((group, terms[a], "") if a == b else (group, terms[b], terms[a]))
        self.Vi.append(np.eye(self.n))
        self.labels.append(("Residual", "", ""))
        self.k = len(self.Vi)

    @staticmethod
    def pairs(d):
        return [(a, a) for a in range(d)] + [(a, b) for b in range(d) for a in range(b + 1, d)]

    def pieces(self, theta):
        V = sum(t * M for t, M in zip(theta, self.Vi))
        c = sla.cho_factor(V, lower=True)
        Vinv = sla.cho_solve(c, np.eye(self.n))
        ViX = Vinv @ self.X
        cx = sla.cho_factor(self.X.T @ ViX, lower=True)
        beta = sla.cho_solve(cx, ViX.T @ self.y)
        r = self.y - self.X @ beta
        P = Vinv - ViX @ sla.cho_solve(cx, ViX.T)
        return dict(V=V, Vinv=Vinv, P=P, cx=cx, beta=beta, r=r, Py=Vinv @ r,
                    logdetV=2 * np.log(np.diag(c[0])).sum(),
                    logdetXVX=2 * np.log(np.diag(cx[0])).sum())

    def m2ll(self, theta, method="REML"):
        q = self.pieces(theta)
        if method == "REML":
            return (self.n - self.p) * LOG2PI + q["logdetV"] + q["logdetXVX"] + q["r"] @ q["Py"]
        return self.n * LOG2PI + q["logdetV"] + q["r"] @ q["Py"]

    def loglik(self, theta, method="REML"):
        return -0.5 * self.m2ll(theta, method)

    def grad(self, theta, method="REML"):
        """∂(−2ℓ)/∂θᵢ = tr(M Vᵢ) − y'P Vᵢ P y, M = P (REML) or V⁻¹ (ML; y'Py = r'V⁻¹r)."""
        q = self.pieces(theta)
        M = q["P"] if method == "REML" else q["Vinv"]
        return np.array([np.sum(M * Vi) - q["Py"] @ Vi @ q["Py"] for Vi in self.Vi])

    def hess(self, theta, method="REML"):
        """∂²(−2ℓ)/∂θᵢ∂θⱼ = −tr(M Vᵢ M Vⱼ) + 2 y'P Vᵢ P Vⱼ P y."""
        q = self.pieces(theta)
        M = q["P"] if method == "REML" else q["Vinv"]
        MV = [M @ Vi for Vi in self.Vi]
        w = np.column_stack([Vi @ q["Py"] for Vi in self.Vi])
        T = np.array([[np.sum(A * B.T) for B in MV] for A in MV])
        return -T + 2.0 * w.T @ q["P"] @ w

    def average_information(self, theta):
        """AIᵢⱼ = ½ y'P Vᵢ P Vⱼ P y (information of ℓ_REML)."""
        q = self.pieces(theta)
        w = np.column_stack([Vi @ q["Py"] for Vi in self.Vi])
        return 0.5 * w.T @ q["P"] @ w

    def G(self, theta):
        out, i = [], 0
        for _, _, Zs, K in self.blocks:
            d = len(Zs)
            G0 = np.zeros((d, d))
            for a, b in self.pairs(d):
                G0[a, b] = G0[b, a] = theta[i]
                i += 1
            out.append(np.kron(G0, K))
        return sla.block_diag(*out)

    def henderson(self, theta):
        """β̂, û, PEV = diag(C⁻¹)ᵘᵘ, cond_var = diag((Z'R⁻¹Z + G⁻¹)⁻¹), Var(β̂) from the
        dense C = W'R⁻¹W + diag(0, G⁻¹) (u term-major within a block, as Gₖ = G₀ₖ ⊗ Kₖ)."""
        s2e = theta[-1]
        Z = np.hstack([Zt for _, _, Zs, _ in self.blocks for Zt in Zs])
        Gi = np.linalg.inv(self.G(theta))
        W = np.hstack([self.X, Z])
        C = W.T @ W / s2e
        C[self.p:, self.p:] += Gi
        Ci = np.linalg.inv(C)
        sol = Ci @ (W.T @ self.y) / s2e
        T = np.linalg.inv(Z.T @ Z / s2e + Gi)
        return dict(beta=sol[:self.p], u=sol[self.p:], pev=np.diag(Ci)[self.p:],
                    cond=np.diag(T), vcov=Ci[:self.p, :self.p], Z=Z)

    def gls_blup(self, theta):
        """β̂ = (X'V⁻¹X)⁻¹X'V⁻¹y and û = G Z'V⁻¹(y − Xβ̂), by V directly (no MME)."""
        q = self.pieces(theta)
        Z = np.hstack([Zt for _, _, Zs, _ in self.blocks for Zt in Zs])
        return q["beta"], self.G(theta) @ Z.T @ q["Py"], Z, sla.cho_solve(q["cx"], np.eye(self.p))


def parametrisation(model):
    """φ → (θ, ∂θ/∂φ, ∂²θ/∂φ²): log-variances; a d = 2 G₀ = LL' with
    φ = (log L₀₀, log L₁₁, L₁₀)."""
    dims = [len(Zs) for _, _, Zs, _ in model.blocks] + [1]
    k = model.k

    def f(phi):
        th, J, H = np.zeros(k), np.zeros((k, k)), np.zeros((k, k, k))
        i = 0
        for d in dims:
            if d == 1:
                e = np.exp(phi[i])
                th[i] = J[i, i] = H[i, i, i] = e
                i += 1
            elif d == 2:
                l00, l11, c = np.exp(phi[i]), np.exp(phi[i + 1]), phi[i + 2]
                th[i:i + 3] = l00 ** 2, c ** 2 + l11 ** 2, l00 * c
                J[i, i], H[i, i, i] = 2 * l00 ** 2, 4 * l00 ** 2
                J[i + 1, i + 1], J[i + 1, i + 2] = 2 * l11 ** 2, 2 * c
                H[i + 1, i + 1, i + 1], H[i + 1, i + 2, i + 2] = 4 * l11 ** 2, 2.0
                J[i + 2, i], J[i + 2, i + 2] = l00 * c, l00
                H[i + 2, i, i] = l00 * c
                H[i + 2, i, i + 2] = H[i + 2, i + 2, i] = l00
                i += 3
            else:  # pragma: no cover
                raise NotImplementedError(d)
        return th, J, H
    return f


def dense_optimum(model, method="REML", phi0=None):
    """(θ̂, logLik, |gradient in φ|) of the dense criterion by scipy.optimize."""
    param = parametrisation(model)

    def fun(phi):
        return model.m2ll(param(phi)[0], method)

    def jac(phi):
        th, J, _ = param(phi)
        return J.T @ model.grad(th, method)

    def hess(phi):
        th, J, H = param(phi)
        return J.T @ model.hess(th, method) @ J + np.einsum("i,ijk->jk", model.grad(th, method), H)

    phi0 = np.zeros(model.k) if phi0 is None else np.asarray(phi0, float)
    res = so.minimize(fun, phi0, jac=jac, hess=hess, method="trust-exact",
                      options=dict(gtol=1e-10, maxiter=200))
    return param(res.x)[0], -0.5 * res.fun, float(np.abs(jac(res.x)).max())


def numerical_hessian(f, x, steps):
    """Central differences: (f(x+eᵢ+eⱼ) − f(x+eᵢ−eⱼ) − f(x−eᵢ+eⱼ) + f(x−eᵢ−eⱼ)) / 4hᵢhⱼ."""
    k = len(x)
    H = np.zeros((k, k))
    for i in range(k):
        for j in range(i, k):
            ei, ej = np.zeros(k), np.zeros(k)
            ei[i], ej[j] = steps[i], steps[j]
            H[i, j] = H[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej)
                                 + f(x - ei - ej)) / (4 * steps[i] * steps[j])
    return H


# ========================================================= helpers on fits ==
def theta_of(fit, model):
    """mme's θ in the oracle's order, matched by (group, term1, term2)."""
    vc = fit.variance_components
    key = {(r.group, r.term1, r.term2): r.estimate for r in vc.itertuples()}
    assert set(key) == set(model.labels), (sorted(key), model.labels)
    return np.array([key[lab] for lab in model.labels])


def se_of(fit, model):
    vc = fit.variance_components
    key = {(r.group, r.term1, r.term2): r.std_error for r in vc.itertuples()}
    return np.array([key[lab] for lab in model.labels])


def random_effect_columns(fit, model, levels_pos, column):
    """mme's random_effects[column] in the oracle's order of u (block by block,
    term-major, levels in the oracle's K order)."""
    re_ = fit.random_effects
    out = []
    for (group, terms, Zs, K), pos in zip(model.blocks, levels_pos):
        for term in terms:
            sub = re_[(re_["group"] == group) & (re_["term"] == term)]
            v = np.full(K.shape[0], np.nan)
            v[[pos[str(lv)] for lv in sub["level"]]] = sub[column].to_numpy()
            out.append(v)
    return np.concatenate(out)


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) / np.asarray(b) - 1.0)))


# ================================================================ fixtures ==
@pytest.fixture(scope="module")
def animal():
    """The pedigree and y ~ sex + x + (1|id) data: 1-2 records on each of the 105
    non-founders (158 records), σ²_a = 0.6, σ²ₑ = 0.8."""
    rng = np.random.default_rng(SEED_ANIMAL)
    pedf = simulate_pedigree(rng)
    A = tabular_A(pedf)
    ped = mme.Pedigree.from_frame(pedf[["id", "sire", "dam"]])
    ids = list(pedf["id"])
    assert list(ped.ids) == ids                        # already parents-first
    assert (pedf["sire"] == "0").sum() > 20 and (pedf["dam"] == "NA").any()
    F = np.diag(A) - 1.0
    assert (F > 0).sum() == 20 and F.max() == 0.15625  # some inbreeding
    np.testing.assert_allclose(ped.inbreeding.to_numpy(), F, rtol=0, atol=ATOL_H22)
    pos = {a: i for i, a in enumerate(ids)}
    rec = [a for a in ids if not a.startswith("f")]
    rid = np.repeat(rec, rng.integers(1, 3, size=len(rec)))
    n = len(rid)
    codes = np.array([pos[a] for a in rid])
    bv = np.linalg.cholesky(A) @ rng.standard_normal(len(ids)) * np.sqrt(0.6)
    sex = pedf.set_index("id").loc[rid, "sex"].to_numpy()
    x = rng.normal(size=n)
    y = 10 + 0.8 * (sex == "M") + 0.5 * x + bv[codes] + rng.normal(size=n) * np.sqrt(0.8)
    df = pd.DataFrame({"y": y, "sex": sex, "x": x, "id": rid})
    X = np.column_stack([np.ones(n), (sex == "M").astype(float), x])
    Z = incidence(codes, len(ids))
    model = DenseLMM(y, X, [("id", ("(Intercept)",), [Z], A)])
    return dict(pedf=pedf, A=A, ped=ped, pos=pos, df=df, X=X, Z=Z, codes=codes, model=model)


@pytest.fixture(scope="module")
def animal_fit(animal):
    fit = mme.fit("y ~ sex + x + (1|id)", animal["df"], relmat={"id": animal["ped"]})
    th, ll, g = dense_optimum(animal["model"])
    return fit, th, ll, g


@pytest.fixture(scope="module")
def slopes():
    """(1 + x | id) with A: 4 records on each of 120 non-founders (480 records),
    G₀ = [[1, .3], [.3, .6]], σ²ₑ = 0.5."""
    rng = np.random.default_rng(SEED_SLOPES)
    pedf = simulate_pedigree(rng, per_gen=40)
    A = tabular_A(pedf)
    ped = mme.Pedigree.from_frame(pedf[["id", "sire", "dam"]])
    ids = list(pedf["id"])
    pos = {a: i for i, a in enumerate(ids)}
    rid = np.repeat([a for a in ids if not a.startswith("f")], 4)
    n = len(rid)
    codes = np.array([pos[a] for a in rid])
    G0 = np.array([[1.0, 0.3], [0.3, 0.6]])
    U = np.linalg.cholesky(A) @ rng.standard_normal((len(ids), 2)) @ np.linalg.cholesky(G0).T
    x = rng.uniform(-1.5, 1.5, size=n)
    y = 5 + 0.5 * x + U[codes, 0] + U[codes, 1] * x + rng.normal(size=n) * np.sqrt(0.5)
    df = pd.DataFrame({"y": y, "x": x, "id": rid})
    Z = incidence(codes, len(ids))
    model = DenseLMM(y, np.column_stack([np.ones(n), x]),
                     [("id", ("(Intercept)", "x"), [Z, Z * x[:, None]], A)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", mme.SingularFitWarning)
        warnings.simplefilter("error", mme.ConvergenceWarning)
        fit = mme.fit("y ~ x + (1 + x | id)", df, relmat={"id": ped})
    return dict(ped=ped, pos=pos, df=df, model=model, fit=fit)


@pytest.fixture(scope="module")
def markers(animal):
    """Gene-dropped genotypes (1,000 unlinked markers) of every animal in the pedigree."""
    rng = np.random.default_rng(SEED_MARKERS)
    M = gene_drop(animal["pedf"], 1000, rng)
    return pd.DataFrame(M, index=animal["pedf"]["id"].to_numpy(),
                        columns=[f"snp{j:04d}" for j in range(M.shape[1])])


# ========================================================= 1. the oracle itself ==
def test_dense_oracle_is_self_consistent(animal, animal_fit):
    """The REML/ML formulas: −2ℓ_REML − (−2ℓ_ML) = log|X'V⁻¹X| − p log 2π, the
    analytic gradient equals central differences, and the optimum is stationary."""
    model = animal["model"]
    fit, th, ll, g = animal_fit
    assert g < TOL_DENSE_GRAD
    q = model.pieces(th)
    assert model.m2ll(th) - model.m2ll(th, "ML") == pytest.approx(
        q["logdetXVX"] - model.p * LOG2PI, abs=ATOL_DENSE_IDENTITY)
    for method in ("REML", "ML"):
        t = th * np.array([1.1, 0.9])
        h = H_STEP * t
        num = [(model.m2ll(t + h[i] * np.eye(2)[i], method) - model.m2ll(t - h[i] * np.eye(2)[i], method))
               / (2 * h[i]) for i in range(2)]
        g_an = model.grad(t, method)
        assert np.abs(g_an - num).max() < TOL_GRAD_FD * np.abs(g_an).max()
    assert ll == pytest.approx(model.loglik(th), rel=RTOL_IDENTITY)


# ================================================ 2. REML with a pedigree ==
def test_pedigree_reml_matches_dense_optimum(animal, animal_fit):
    fit, th, ll, _ = animal_fit
    model = animal["model"]
    assert fit.converged and not fit.singular
    assert fit.nobs == model.n == 158
    theta = theta_of(fit, model)
    assert rel_err(theta, th) < RTOL_THETA_OPTIMUM
    assert abs(fit.loglik - ll) < ATOL_LOGLIK_OPTIMUM
    assert abs(fit.loglik - model.loglik(theta)) < ATOL_LOGLIK_SAME_THETA


def test_pedigree_blup_pev_match_dense_henderson(animal, animal_fit):
    fit, _, _, _ = animal_fit
    model = animal["model"]
    theta = theta_of(fit, model)
    h = model.henderson(theta)
    pos = [animal["pos"]]
    blup = random_effect_columns(fit, model, pos, "blup")
    assert len(blup) == 125 and np.isfinite(blup).all()    # animals without records included
    assert np.abs(blup - h["u"]).max() < RTOL_BLUP * np.abs(h["u"]).max()
    assert rel_err(random_effect_columns(fit, model, pos, "pev"), h["pev"]) < RTOL_PEV
    assert rel_err(random_effect_columns(fit, model, pos, "cond_var"), h["cond"]) < RTOL_PEV
    # reliability = 1 − PEV / (σ²_a A_ii): A_ii = 1 + F_i from the tabular A
    rel = 1.0 - h["pev"] / (theta[0] * np.diag(animal["A"]))
    # founders without information have reliability exactly 0: relative error is
    # undefined there, so an absolute floor at rounding level (reliabilities are ≤ 1)
    np.testing.assert_allclose(random_effect_columns(fit, model, pos, "reliability"), rel,
                               rtol=RTOL_PEV, atol=ATOL_RELIABILITY)
    beta = fit.fixed_effects["estimate"].to_numpy()
    assert list(fit.fixed_effects.index) == ["(Intercept)", "sexM", "x"]
    assert np.abs(beta - h["beta"]).max() < RTOL_BETA * np.abs(h["beta"]).max()
    # the MME solution is the GLS/BLUP of V (Henderson's equivalence)
    b_gls, u_gls, _, _ = model.gls_blup(theta)
    assert np.abs(beta - b_gls).max() < RTOL_BETA * np.abs(b_gls).max()
    assert np.abs(blup - u_gls).max() < RTOL_BLUP * np.abs(u_gls).max()


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_pedigree_loglik_at_given_variances(animal, method):
    model = animal["model"]
    for s2a, s2e in [(0.4, 0.9), (1.5, 0.2)]:
        fit = mme.fit("y ~ sex + x + (1|id)", animal["df"], method=method,
                      relmat={"id": animal["ped"]}, variances={"id": s2a, "Residual": s2e})
        assert not fit.estimated and fit.n_iter == 0
        assert abs(fit.loglik - model.loglik([s2a, s2e], method)) < ATOL_LOGLIK_SAME_THETA
        np.testing.assert_array_equal(fit.variance_components["estimate"], [s2a, s2e])
        h = model.henderson([s2a, s2e])
        blup = random_effect_columns(fit, model, [animal["pos"]], "blup")
        assert np.abs(blup - h["u"]).max() < RTOL_BLUP * np.abs(h["u"]).max()
        assert rel_err(random_effect_columns(fit, model, [animal["pos"]], "pev"), h["pev"]) < RTOL_PEV


def test_pedigree_ml_matches_dense_ml_optimum(animal):
    model = animal["model"]
    fit = mme.fit("y ~ sex + x + (1|id)", animal["df"], method="ML", relmat={"id": animal["ped"]})
    th, ll, g = dense_optimum(model, "ML")
    assert g < TOL_DENSE_GRAD
    assert rel_err(theta_of(fit, model), th) < RTOL_THETA_OPTIMUM
    assert abs(fit.loglik - ll) < ATOL_LOGLIK_OPTIMUM


# ============================================ 3. random slopes with A ==
def test_slopes_with_pedigree_loglik_and_optimum(slopes):
    model, fit = slopes["model"], slopes["fit"]
    assert fit.converged and not fit.singular
    theta = theta_of(fit, model)
    assert abs(fit.loglik - model.loglik(theta)) < ATOL_LOGLIK_SAME_THETA
    # dense optimisation over the Cholesky factor of G₀ (and log σ²ₑ)
    th, ll, g = dense_optimum(model)
    assert g < TOL_DENSE_GRAD
    assert rel_err(theta, th) < RTOL_THETA_OPTIMUM
    assert abs(fit.loglik - ll) < ATOL_LOGLIK_OPTIMUM
    # and no nearby θ does better: coordinate and random directions (G₀ stays PD)
    ll0 = model.loglik(theta)
    rng = np.random.default_rng(1)
    dirs = list(np.eye(model.k)) + list(rng.standard_normal((6, model.k)))
    for d in dirs:
        for sgn in (1.0, -1.0):
            assert model.loglik(theta * (1 + sgn * PERTURB * d)) < ll0


def test_slopes_with_pedigree_blup_pev(slopes):
    model, fit = slopes["model"], slopes["fit"]
    theta = theta_of(fit, model)
    h = model.henderson(theta)
    pos = [slopes["pos"]]
    blup = random_effect_columns(fit, model, pos, "blup")
    assert len(blup) == 2 * 140 and np.isfinite(blup).all()
    assert np.abs(blup - h["u"]).max() < RTOL_BLUP * np.abs(h["u"]).max()
    assert rel_err(random_effect_columns(fit, model, pos, "pev"), h["pev"]) < RTOL_PEV
    assert rel_err(random_effect_columns(fit, model, pos, "cond_var"), h["cond"]) < RTOL_PEV


# ====================================================== 4. GBLUP, single step ==
@pytest.fixture(scope="module")
def gblup(animal, markers):
    """50 genotyped animals of generations 2-3 with their 75 records; G (VanRaden,
    blended 5 % with I) inverted densely and passed as (levels, G⁻¹)."""
    rng = np.random.default_rng(SEED_MARKERS + 1)
    cand = [a for a in animal["pedf"]["id"] if a.startswith(("g2", "g3"))]
    geno = sorted(rng.choice(cand, size=50, replace=False))
    G = mme.genomic_relationship(markers.loc[geno], blend=0.05)
    assert list(G.index) == geno
    Ginv = sp.csc_matrix(np.linalg.inv(G.to_numpy()))
    df = animal["df"][animal["df"]["id"].isin(geno)].reset_index(drop=True)
    pos = {a: i for i, a in enumerate(geno)}
    codes = np.array([pos[a] for a in df["id"]])
    X = np.column_stack([np.ones(len(df)), (df["sex"] == "M").astype(float), df["x"]])
    model = DenseLMM(df["y"], X, [("id", ("(Intercept)",), [incidence(codes, len(geno))],
                                   G.to_numpy())])
    fit = mme.fit("y ~ sex + x + (1|id)", df, relmat={"id": (list(G.index), Ginv)})
    return dict(G=G, df=df, pos=pos, model=model, fit=fit)


@pytest.fixture(scope="module")
def single_step(animal, markers):
    """35 genotyped animals; H⁻¹ from mme.single_step_inverse; the oracle's H by
    Legarra et al. (2009): H = A + A₍·₂₎A₂₂⁻¹(G − A₂₂)A₂₂⁻¹A₍₂·₎ from the tabular A."""
    rng = np.random.default_rng(SEED_MARKERS + 2)
    ids = list(animal["pedf"]["id"])
    geno = sorted(rng.choice(ids[20:], size=35, replace=False))
    G = mme.genomic_relationship(markers.loc[geno], blend=0.05, A22=animal["ped"],
                                 tune="diag-offdiag")
    Hinv = mme.single_step_inverse(animal["ped"], G)
    A = animal["A"]
    g = [animal["pos"][a] for a in geno]
    A22i = np.linalg.inv(A[np.ix_(g, g)])
    H = A + A[:, g] @ A22i @ (G.to_numpy() - A[np.ix_(g, g)]) @ A22i @ A[g, :]
    np.testing.assert_allclose(H[np.ix_(g, g)], G.to_numpy(), rtol=0, atol=ATOL_H22)
    model = DenseLMM(animal["model"].y, animal["X"],
                     [("id", ("(Intercept)",), [animal["Z"]], H)])
    fit = mme.fit("y ~ sex + x + (1|id)", animal["df"],
                  relmat={"id": (list(animal["ped"].ids), Hinv)})
    return dict(H=H, pos=animal["pos"], model=model, fit=fit)


@pytest.mark.parametrize("case", ["gblup", "single_step"])
def test_genomic_fits_match_dense(case, request):
    c = request.getfixturevalue(case)
    model, fit = c["model"], c["fit"]
    assert fit.converged and not fit.singular
    theta = theta_of(fit, model)
    assert abs(fit.loglik - model.loglik(theta)) < ATOL_LOGLIK_SAME_THETA
    th, ll, g = dense_optimum(model)
    assert g < TOL_DENSE_GRAD
    assert rel_err(theta, th) < RTOL_THETA_OPTIMUM
    assert abs(fit.loglik - ll) < ATOL_LOGLIK_OPTIMUM
    h = model.henderson(theta)
    blup = random_effect_columns(fit, model, [c["pos"]], "blup")
    assert np.abs(blup - h["u"]).max() < RTOL_BLUP * np.abs(h["u"]).max()
    assert rel_err(random_effect_columns(fit, model, [c["pos"]], "pev"), h["pev"]) < RTOL_PEV
    assert rel_err(se_of(fit, model), np.sqrt(np.diag(np.linalg.inv(
        model.average_information(theta))))) < RTOL_SE_AI


# ================================================== 5. variance-component SEs ==
@pytest.mark.parametrize("case", ["animal", "slopes"])
def test_se_equals_dense_average_information(case, request, animal, animal_fit):
    if case == "animal":
        model, fit = animal["model"], animal_fit[0]
    else:
        c = request.getfixturevalue("slopes")
        model, fit = c["model"], c["fit"]
    theta = theta_of(fit, model)
    AI = model.average_information(theta)
    se = np.sqrt(np.diag(np.linalg.inv(AI)))
    assert rel_err(se_of(fit, model), se) < RTOL_SE_AI
    if case == "animal":
        # h² = σ²_a / (σ²_a + σ²ₑ), delta-method SE from the same AI⁻¹
        h2 = fit.heritability("id")
        grad = np.array([theta[1], -theta[0]]) / theta.sum() ** 2
        assert h2["estimate"] == pytest.approx(theta[0] / theta.sum(), rel=RTOL_IDENTITY)
        assert h2["std_error"] == pytest.approx(np.sqrt(grad @ np.linalg.inv(AI) @ grad),
                                                rel=RTOL_SE_AI)


def test_se_ai_vs_observed_information(animal, animal_fit):
    """AI-REML's information is the average information (Gilmour, Thompson & Cullis
    1995). With V linear in θ the observed information of ℓ_REML is
    I_O = y'PVᵢPVⱼPy − ½tr(PVᵢPVⱼ) and the expected one I_E = ½tr(PVᵢPVⱼ), so
    AI = ½y'PVᵢPVⱼPy = (I_O + I_E)/2: AI approximates both. I_O − I_E is a
    random quantity (y'PVᵢPVⱼPy about its expectation tr(PVᵢPVⱼ)) of relative size
    O(n^-1/2), not a rounding error; the SEs from AI and from the observed
    information (here by central differences of the dense REML logLik) agreed
    within 1.5 % on this data set and 1-5 % on four other simulated ones of
    158-496 records, hence the 10 % tolerance."""
    model, fit = animal["model"], animal_fit[0]
    theta = theta_of(fit, model)
    H = numerical_hessian(model.loglik, theta, H_STEP * theta)
    se_obs = np.sqrt(np.diag(np.linalg.inv(-H)))
    # the central differences are the exact Hessian of the dense criterion
    np.testing.assert_allclose(-H, 0.5 * model.hess(theta), rtol=RTOL_NUM_HESS)
    assert rel_err(se_of(fit, model), se_obs) < RTOL_SE_OBSERVED


# ============================================================= 6. bad input ==
def _raises(call, exc, *patterns):
    """call() raises exc (an MMEError subclass) whose message matches every pattern."""
    with pytest.raises(mme.MMEError) as info:
        call()
    assert isinstance(info.value, exc), f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg, flags=re.IGNORECASE), f"{p!r} not in message {msg!r}"
    return msg


@pytest.fixture(scope="module")
def two_terms(animal):
    df = animal["df"].copy()
    df["herd"] = np.arange(len(df)) % 6
    return df


class TestVariancesArgument:
    F1 = "y ~ sex + x + (1|herd) + (1|id)"

    def test_missing_term(self, animal, two_terms):
        _raises(lambda: mme.fit(self.F1, two_terms, relmat={"id": animal["ped"]},
                                variances={"id": 0.5, "Residual": 1.0}),
                mme.DataError, "'herd'")

    def test_missing_residual(self, animal, two_terms):
        _raises(lambda: mme.fit(self.F1, two_terms, relmat={"id": animal["ped"]},
                                variances={"id": 0.5, "herd": 0.2}),
                mme.DataError, "Residual")

    def test_wrong_shape_for_slope_term(self, slopes):
        _raises(lambda: mme.fit("y ~ x + (1 + x | id)", slopes["df"], relmat={"id": slopes["ped"]},
                                variances={"id": 0.5, "Residual": 1.0}),
                mme.DataError, "'id'", r"2\s*[×x]\s*2")
        _raises(lambda: mme.fit("y ~ x + (1 + x | id)", slopes["df"], relmat={"id": slopes["ped"]},
                                variances={"id": np.eye(3), "Residual": 1.0}),
                mme.DataError, "'id'", r"2\s*[×x]\s*2")

    @pytest.mark.parametrize("bad", ["herd", "id", "Residual"])
    def test_negative_variance(self, animal, two_terms, bad):
        v = {"herd": 0.2, "id": 0.5, "Residual": 1.0}
        v[bad] = -0.1
        _raises(lambda: mme.fit(self.F1, two_terms, relmat={"id": animal["ped"]}, variances=v),
                mme.MMEError, rf"'{bad}'", "-0.1|negative|> ?0|positive")

    def test_non_positive_definite_G0(self, slopes):
        G0 = np.array([[1.0, 2.0], [2.0, 1.0]])     # eigenvalues 3, −1
        _raises(lambda: mme.fit("y ~ x + (1 + x | id)", slopes["df"], relmat={"id": slopes["ped"]},
                                variances={"id": G0, "Residual": 1.0}),
                mme.MMEError, "'id'", "positive (semi-)?definite")


class TestRelmatArgument:
    F = "y ~ sex + x + (1|id)"

    def test_term_not_in_formula(self, animal):
        _raises(lambda: mme.fit(self.F, animal["df"], relmat={"dam": animal["ped"]}),
                mme.FormulaError, "'dam'")

    def test_levels_missing_from_pedigree(self, animal):
        pedf = animal["pedf"]
        drop = ["g3a33", "g3a34"]                    # last-generation animals with records
        assert set(drop) <= set(animal["df"]["id"])
        ped = mme.Pedigree.from_frame(pedf[~pedf["id"].isin(drop)][["id", "sire", "dam"]])
        _raises(lambda: mme.fit(self.F, animal["df"], relmat={"id": ped}),
                mme.DataError, "'id'", "g3a33", "g3a34")

    def test_non_square_kinv(self, animal):
        ped = animal["ped"]
        Kinv = ped.ainverse()[:, :-1]
        _raises(lambda: mme.fit(self.F, animal["df"], relmat={"id": (list(ped.ids), Kinv)}),
                mme.DataError, "'id'", r"\(125, 124\)|125\s*[×x]\s*124")

    def test_non_symmetric_kinv(self, animal):
        ped = animal["ped"]
        Kinv = ped.ainverse().tolil()
        Kinv[3, 40] += 0.3                            # upper triangle only
        _raises(lambda: mme.fit(self.F, animal["df"], relmat={"id": (list(ped.ids), Kinv.tocsc())}),
                mme.DataError, "'id'", "symmetric")

    def test_kinv_wrong_size_for_levels(self, animal):
        ped = animal["ped"]
        _raises(lambda: mme.fit(self.F, animal["df"],
                                relmat={"id": (list(ped.ids)[:-1], ped.ainverse())}),
                mme.DataError, "'id'", "125", "124")

    def test_kinv_not_positive_definite(self, animal):
        ped = animal["ped"]
        Kinv = ped.ainverse() - 2.0 * sp.identity(ped.n, format="csc")
        assert np.linalg.eigvalsh(Kinv.toarray())[0] < 0
        _raises(lambda: mme.fit(self.F, animal["df"], relmat={"id": (list(ped.ids), Kinv)}),
                mme.NotPositiveDefiniteError, "'id'")

    @pytest.mark.parametrize("with_logdet", [False, True])
    def test_reliability_of_a_kinv_relmat_as_the_pedigree(self, animal, animal_fit, with_logdet):
        """A relmat given as K⁻¹ alone (single-step H⁻¹, GBLUP G⁻¹ come so) reports
        reliabilities 1 − PEV/(σ²Kᵢᵢ) with diag(K) from K⁻¹ (selected inverse), as the
        pedigree fit's with 1 + F — not NaN."""
        ped = animal["ped"]
        rel = (list(ped.ids), ped.ainverse())
        if with_logdet:
            rel = rel + (float(ped.logdet_a()),)
        fit = mme.fit(self.F, animal["df"], relmat={"id": rel})
        ref = animal_fit[0].random_effects
        got = fit.random_effects
        assert np.isfinite(got["reliability"]).all()
        np.testing.assert_allclose(got["reliability"], ref["reliability"], rtol=0,
                                   atol=ATOL_RELIABILITY_KINV)
        # and against the dense oracle: 1 − PEV / (σ²ₐ diag(A))
        s2a = fit.variance_components.set_index("group").loc["id", "estimate"]
        Adiag = np.diag(animal["A"])[[animal["pos"][str(x)] for x in got["level"]]]
        np.testing.assert_allclose(got["reliability"], 1 - got["pev"] / (s2a * Adiag),
                                   rtol=0, atol=ATOL_RELIABILITY)

    def test_duplicated_levels(self, animal):
        ped = animal["ped"]
        levels = list(ped.ids)
        levels[-1] = levels[-2]
        _raises(lambda: mme.fit(self.F, animal["df"], relmat={"id": (levels, ped.ainverse())}),
                mme.DataError, "'id'", levels[-1])


# ============================================================== 7. max_iter ==
def test_max_iter_one_warns_and_is_not_converged(animal, animal_fit):
    assert animal_fit[0].n_iter > 1                  # the model needs more than one step
    with pytest.warns(mme.ConvergenceWarning):
        fit = mme.fit("y ~ sex + x + (1|id)", animal["df"], relmat={"id": animal["ped"]},
                      max_iter=1)
    assert fit.converged is False
    assert fit.n_iter == 1
    assert "NOT converged" in fit.summary()
    # the reported logLik is still the criterion at the reported θ
    assert abs(fit.loglik - animal["model"].loglik(theta_of(fit, animal["model"]))) \
        < ATOL_LOGLIK_SAME_THETA


# =============================================== 8. printing and accessors ==
def _numbers(text):
    return np.array([float(t) for t in re.findall(r"[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?", text)])


def _shows(text, value):
    nums = _numbers(text)
    return bool(np.any(np.abs(nums - value) <= RTOL_PRINTED * abs(value)))


def test_summary_and_repr_show_the_values(animal_fit):
    fit = animal_fit[0]
    s, r = fit.summary(), repr(fit)
    for text in (s, r):
        assert f"{fit.loglik:.4f}" in text
        for v in fit.variance_components["estimate"]:
            assert _shows(text, v), (v, text)
    for v in fit.fixed_effects["estimate"]:
        assert _shows(s, v), (v, s)
    for v in fit.fixed_effects["std_error"]:
        assert _shows(s, v), (v, s)
    assert f"{fit.aic:.4f}" in s and f"{fit.bic:.4f}" in s


def test_fitted_residuals_vcov_match_dense(animal, animal_fit):
    fit = animal_fit[0]
    model = animal["model"]
    theta = theta_of(fit, model)
    beta, u, Z, vcov = model.gls_blup(theta)
    y = model.y
    fitted = model.X @ beta + Z @ u
    scale = np.abs(y).max()
    assert np.abs(fit.fitted() - fitted).max() < RTOL_FITTED * scale
    assert np.abs(fit.residuals() - (y - fitted)).max() < RTOL_FITTED * scale
    assert np.abs(fit.residuals() - (y - fit.fitted())).max() < RTOL_FITTED * scale
    V = fit.vcov
    assert list(V.index) == list(V.columns) == ["(Intercept)", "sexM", "x"]
    np.testing.assert_allclose(V.to_numpy(), vcov, rtol=RTOL_VCOV, atol=0)
    np.testing.assert_allclose(fit.fixed_effects["std_error"], np.sqrt(np.diag(vcov)), rtol=RTOL_VCOV)
    assert fit.aic == pytest.approx(-2 * fit.loglik + 2 * 5, rel=RTOL_IDENTITY)
    assert fit.bic == pytest.approx(-2 * fit.loglik + np.log(158) * 5, rel=RTOL_IDENTITY)


# ==================================================================== 9. LRT ==
def test_lrt_fixed_covariate_with_pedigree_refits_ml(animal):
    """y ~ sex + x vs y ~ sex, both with (1|id) and A: lrt refits both by ML."""
    ped, df = animal["ped"], animal["df"]
    full = mme.fit("y ~ sex + x + (1|id)", df, relmat={"id": ped})
    null = mme.fit("y ~ sex + (1|id)", df, relmat={"id": ped})
    tab = mme.lrt(null, full)
    assert "ML" in tab.attrs["note"]
    m1 = animal["model"]
    m0 = DenseLMM(m1.y, animal["X"][:, :2], m1.blocks)
    _, ll1, g1 = dense_optimum(m1, "ML")
    _, ll0, g0 = dense_optimum(m0, "ML")
    assert max(g0, g1) < TOL_DENSE_GRAD
    assert abs(tab.loc["fit1", "loglik"] - ll1) < ATOL_LOGLIK_OPTIMUM
    assert abs(tab.loc["fit0", "loglik"] - ll0) < ATOL_LOGLIK_OPTIMUM
    chisq = 2 * (ll1 - ll0)
    assert chisq > 1.0
    row = tab.loc["fit1"]
    assert abs(row["chisq"] - chisq) < ATOL_CHISQ
    assert row["df"] == 1
    assert row["p_value"] == pytest.approx(stats.chi2.sf(chisq, 1), rel=RTOL_P)


def test_lrt_animal_term_reml(animal, animal_fit):
    """y ~ sex + x + (1|id) with A vs y ~ sex + x: same fixed effects, REML."""
    mixed = animal_fit[0]
    fixed = mme.fit("y ~ sex + x", animal["df"])
    tab = mme.lrt(fixed, mixed)
    assert "REML" in tab.attrs["note"]
    m1 = animal["model"]
    m0 = DenseLMM(m1.y, m1.X, [])
    _, ll1, _ = dense_optimum(m1)
    # fixed-only REML: σ̂² = RSS / (n − p) in closed form, and the optimiser agrees
    r = m1.y - m1.X @ np.linalg.lstsq(m1.X, m1.y, rcond=None)[0]
    ll0 = m0.loglik([r @ r / (m1.n - m1.p)])
    _, ll0_opt, g0 = dense_optimum(m0)
    assert g0 < TOL_DENSE_GRAD and abs(ll0_opt - ll0) < ATOL_LOGLIK_OPTIMUM
    assert abs(fixed.loglik_reml - ll0) < ATOL_LOGLIK_SAME_THETA   # loglik is lm's (ML)
    chisq = 2 * (ll1 - ll0)
    row = tab.loc["fit1"]
    assert abs(row["chisq"] - chisq) < ATOL_CHISQ
    assert row["df"] == 1
    assert row["p_value"] == pytest.approx(stats.chi2.sf(chisq, 1), rel=RTOL_P)


# ============================================== 10. genomic error paths ==
class TestGenomicErrors:
    @pytest.fixture(scope="class")
    def M(self, markers):
        return markers.iloc[20:40, :200].copy()

    def test_code_outside_0_2(self, M):
        bad = M.copy()
        bad.iloc[4, 7] = 3.0
        _raises(lambda: mme.genomic_relationship(bad), mme.DataError, r"\b4\b", r"\b7\b", "0..2|0, 1, 2")
        bad.iloc[4, 7] = -1.0
        _raises(lambda: mme.genomic_relationship(bad.to_numpy()), mme.DataError, r"\b4\b", r"\b7\b")

    def test_letter_coding(self, M):
        bad = M.astype(object)
        bad.iloc[2, 5] = "AG"
        _raises(lambda: mme.genomic_relationship(bad), mme.DataError, "genotype|cod")

    @pytest.mark.parametrize("value", [np.nan, np.inf])
    def test_missing_genotype(self, M, value):
        bad = M.copy()
        bad.iloc[6, 11] = value
        _raises(lambda: mme.genomic_relationship(bad), mme.DataError, r"\b6\b", r"\b11\b", "impute")

    def test_all_markers_monomorphic(self, M):
        mono = np.zeros((5, 8))
        mono[:, ::2] = 2.0                          # every column constant at 0 or 2
        _raises(lambda: mme.genomic_relationship(mono), mme.DataError, "monomorphic")

    def test_constant_columns_do_not_change_G(self, M):
        G = mme.genomic_relationship(M)
        M2 = M.copy()
        M2["mono0"], M2["mono2"] = 0.0, 2.0
        np.testing.assert_allclose(mme.genomic_relationship(M2).to_numpy(), G.to_numpy(),
                                   rtol=0, atol=ATOL_G_CONSTANT_COLUMNS)

    def test_shape(self):
        _raises(lambda: mme.genomic_relationship(np.ones(5)), mme.DataError, r"\(5,\)")
        _raises(lambda: mme.genomic_relationship(np.zeros((0, 3))), mme.DataError, r"\(0, 3\)")

    def test_ids(self, M):
        dup = M.copy()
        dup.index = list(M.index[:-1]) + [M.index[0]]
        _raises(lambda: mme.genomic_relationship(dup), mme.DataError, "duplicated", M.index[0])
        na = M.copy()
        na.index = [None] + list(M.index[1:])
        _raises(lambda: mme.genomic_relationship(na), mme.DataError, "missing id")

    def test_allele_freq(self, M):
        p = M.mean(axis=0) / 2
        _raises(lambda: mme.genomic_relationship(M, allele_freq=p.to_numpy()[:-1]),
                mme.DataError, "allele_freq", "200", r"\(199,\)")
        _raises(lambda: mme.genomic_relationship(M, allele_freq=p.drop("snp0003")),
                mme.DataError, "allele_freq", "snp0003")
        q = p.to_numpy().copy()
        q[9] = 1.2
        _raises(lambda: mme.genomic_relationship(M, allele_freq=q), mme.DataError, "allele_freq", r"\[0, 1\]")

    def test_blend_and_tune(self, M, animal):
        _raises(lambda: mme.genomic_relationship(M, blend=1.0), mme.DataError, "blend", "1.0")
        _raises(lambda: mme.genomic_relationship(M, tune="scale"), mme.DataError, "tune", "'scale'")
        _raises(lambda: mme.genomic_relationship(M, tune="mean"), mme.DataError, "A22")
        _raises(lambda: mme.genomic_relationship(M, method="vanraden2"), mme.DataError, "vanraden2")
        _raises(lambda: mme.genomic_relationship(M.iloc[:1], tune="diag-offdiag",
                                                 A22=animal["ped"]),
                mme.DataError, "diag-offdiag", "2 genotyped")

    def test_a22_mismatch(self, M, animal):
        ped = animal["ped"]
        _raises(lambda: mme.genomic_relationship(M.to_numpy(), blend=0.1, A22=ped),
                mme.DataError, "A22", "DataFrame")
        A22 = ped.relationship_matrix(M.index[1:])
        _raises(lambda: mme.genomic_relationship(M, blend=0.1, A22=A22), mme.DataError,
                "A22", M.index[0])
        _raises(lambda: mme.genomic_relationship(M.to_numpy(), blend=0.1, A22=A22.to_numpy()),
                mme.DataError, "A22", "19", "20")
        _raises(lambda: mme.genomic_relationship(M, A22=np.ones((20, 19)), blend=0.1),
                mme.DataError, "A22", r"\(20, 19\)")

    def test_single_step_bad_G(self, M, animal):
        ped = animal["ped"]
        G = mme.genomic_relationship(M, blend=0.05)
        _raises(lambda: mme.single_step_inverse(ped, G.to_numpy()), mme.DataError, "genotyped_ids")
        _raises(lambda: mme.single_step_inverse(ped, G.to_numpy(), list(G.index[:-1])),
                mme.DataError, r"\b20\b", r"\b19\b")
        _raises(lambda: mme.single_step_inverse(ped, G.to_numpy()[:, :-1], list(G.index)),
                mme.DataError, "square", r"\(20, 19\)")
        ids = list(G.index)
        _raises(lambda: mme.single_step_inverse(ped, G.to_numpy(), ids[:-1] + [ids[0]]),
                mme.DataError, "duplicated", ids[0])
        _raises(lambda: mme.single_step_inverse(ped, G.to_numpy(), [None] + ids[1:]),
                mme.DataError, "missing")
        Gn = G.copy()
        Gn.iloc[3, 3] = np.nan
        _raises(lambda: mme.single_step_inverse(ped, Gn), mme.DataError, "non-finite")
        _raises(lambda: mme.single_step_inverse(ped, G, ids[:-1] + ["g3a00"]),
                mme.DataError, "g3a00")
        _raises(lambda: mme.single_step_inverse(ped, G.rename(index={ids[2]: "nobody"},
                                                               columns={ids[2]: "nobody"})),
                mme.PedigreeError, "nobody")
        _raises(lambda: mme.single_step_inverse(ped, mme.genomic_relationship(M)),
                mme.NotPositiveDefiniteError, "G", "blend")

    def test_single_step_pedigree_argument(self, M, animal):
        G = mme.genomic_relationship(M, blend=0.05)
        _raises(lambda: mme.single_step_inverse(animal["pedf"], G), mme.DataError, "Pedigree")
