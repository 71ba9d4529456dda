"""Covariance structures G = G₀ ⊗ K of the random terms, and σ²ₑ I of the residual.

A random block with d terms and L levels has effects u (d·L, term-major) with
Var(u) = G₀ ⊗ K: G₀ (d × d) estimated, K known (identity, pedigree A, genomic G).
Its parameters θ are the lower-triangle elements of G₀, (a, b) with a ≥ b, in the
order: variances first (0,0), (1,1), ..., then covariances (1,0), (2,0), (2,1), ...
(the order of lme4's ``as.data.frame(VarCorr(m))``).

For each parameter θᵢ = G₀[a, b], ∂G/∂θᵢ = Eᵢ ⊗ K with Eᵢ the symmetric unit
matrix, and everything REML needs reduces to d × d matrices:

    tr(G⁻¹ ∂G/∂θᵢ)        = L · tr(G₀⁻¹ Eᵢ)
    G⁻¹ (∂G/∂θᵢ) G⁻¹      = Mᵢ ⊗ K⁻¹,   Mᵢ = G₀⁻¹ Eᵢ G₀⁻¹
    tr(Cᵘᵘ (Mᵢ ⊗ K⁻¹))   = Σ Mᵢ ∘ S,   S[a, b] = tr(K⁻¹ Cᵘᵘ[b, a])
    û'(Mᵢ ⊗ K⁻¹)û         = Σ Mᵢ ∘ Q,   Q[a, b] = ûₐ' K⁻¹ û_b
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._errors import DataError, FormulaError
from .design import RandomBlock


class BlockStructure:
    """The G₀ ⊗ K⁻¹ pattern of one random block inside C, and its parameter algebra.

    Parameters
    ----------
    block : RandomBlock
    offset : int
        Index of the block's first column in C (after the p fixed effects and
        earlier blocks).
    """

    def __init__(self, block: RandomBlock, offset: int):
        self.block = block
        self.offset = offset
        d, L = block.d, block.n_levels
        self.d, self.L = d, L
        #: the lower-triangle elements of G₀ (variances first): the "element" space in
        #: which the REML derivatives are formed; the parameters θ map onto them
        self.pairs = [(a, a) for a in range(d)] + [
            (a, b) for b in range(d) for a in range(b + 1, d)]
        self.fa_k = parse_structure(block.structure, d, block.group)
        #: "us" (unstructured), "diag" (G₀ diagonal) or "fa" (ΛΛ' + Ψ)
        self.kind = ("fa" if self.fa_k else
                     "diag" if str(block.structure).strip() == "diag" else "us")
        #: FA(k): the free loadings Λ[a, j], j ≤ a (upper triangle of Λ's first k rows 0)
        self.loadings = ([(a, j) for j in range(self.fa_k) for a in range(j, d)]
                         if self.fa_k else [])
        K = block.Kinv.tocoo()
        lower = K.row >= K.col
        rows, cols, kvals, pair_of, weight = [], [], [], [], []
        for a in range(d):
            for b in range(a + 1):
                sel = lower if a == b else np.ones_like(lower)
                r = K.row[sel].astype(np.int64) + a * L
                c = K.col[sel].astype(np.int64) + b * L
                rows.append(r)
                cols.append(c)
                kvals.append(K.data[sel])
                pair_of.append(np.full(r.shape[0], a * d + b, dtype=np.int64))
                # S[a, a] sums K⁻¹ ∘ C over both triangles of the diagonal block.
                w = np.where(K.row[sel] != K.col[sel], 2.0, 1.0) if a == b else np.ones(r.shape[0])
                weight.append(w)
        #: global (row, col) of every G⁻¹ entry in C's lower triangle
        self.rows = np.concatenate(rows) + offset
        self.cols = np.concatenate(cols) + offset
        self.kvals = np.concatenate(kvals)
        self.pair_index = np.concatenate(pair_of)   # a * d + b, a ≥ b
        self.sweight = np.concatenate(weight) * self.kvals
        self.Kinv = block.Kinv

    @property
    def n_elements(self) -> int:
        """Lower-triangle elements of G₀."""
        return len(self.pairs)

    @property
    def n_params(self) -> int:
        """θ entries of the block: G₀'s elements (unstructured), or the free loadings
        and the d specific variances of FA(k)."""
        if self.kind == "diag":
            return self.d
        return len(self.loadings) + self.d if self.fa_k else len(self.pairs)

    # -- parameters -------------------------------------------------------
    def G0(self, theta: np.ndarray) -> np.ndarray:
        """G₀ (d × d) from this block's parameters (FA: ΛΛ' + Ψ)."""
        if self.fa_k:
            Lam, psi = self.fa_parts(theta)
            return Lam @ Lam.T + np.diag(psi)
        if self.kind == "diag":
            return np.diag(np.asarray(theta, dtype=float))
        G = np.zeros((self.d, self.d))
        for t, (a, b) in zip(theta, self.pairs):
            G[a, b] = G[b, a] = t
        return G

    def fa_parts(self, theta: np.ndarray) -> tuple:
        """(Λ (d × k), ψ (d,)) of an FA(k) block."""
        Lam = np.zeros((self.d, self.fa_k))
        m = len(self.loadings)
        for t, (a, j) in zip(theta[:m], self.loadings):
            Lam[a, j] = t
        return Lam, np.asarray(theta[m:m + self.d], dtype=float)

    def theta_of(self, G0: np.ndarray) -> np.ndarray:
        """θ for a given G₀ (FA: the principal-factor FA(k) approximation of G₀)."""
        if self.fa_k:
            Lam, psi = fa_approximation(G0, self.fa_k)
            return np.concatenate([[Lam[a, j] for a, j in self.loadings], psi])
        if self.kind == "diag":
            return np.diag(np.atleast_2d(G0)).copy()
        return np.array([G0[a, b] for a, b in self.pairs])

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        """∂G₀[a, b]/∂θ (n_elements × n_params): the identity when unstructured; for
        FA ∂(ΛΛ')[a, b]/∂Λ[c, j] = δₐ꜀Λ[b, j] + δ_b꜀Λ[a, j], ∂G₀[a, a]/∂ψₐ = 1."""
        if self.kind == "us":
            return np.eye(self.n_elements)
        if self.kind == "diag":
            return np.eye(self.n_elements)[:, :self.d]       # the variances come first
        Lam, _ = self.fa_parts(theta)
        J = np.zeros((self.n_elements, self.n_params))
        for e, (a, b) in enumerate(self.pairs):
            for p, (c, j) in enumerate(self.loadings):
                J[e, p] = (Lam[b, j] if a == c else 0.0) + (Lam[a, j] if b == c else 0.0)
            if a == b:
                J[e, len(self.loadings) + a] = 1.0
        return J

    def param_names(self) -> list:
        """(term1, term2) of each θ entry as ``variance_components`` shows them."""
        t = self.block.terms
        if self.fa_k:
            return ([(t[a], f"fa{j + 1}") for a, j in self.loadings]
                    + [(t[a], "psi") for a in range(self.d)])
        return [(t[a], "") if a == b else (t[b], t[a]) for a, b in self.pairs][:self.n_params]

    def param_variance_mask(self) -> np.ndarray:
        """θ entries that are variances (bounded below by 0)."""
        if self.fa_k:
            return np.array([False] * len(self.loadings) + [True] * self.d)
        return np.array([a == b for a, b in self.pairs][:self.n_params])

    def E(self, i: int) -> np.ndarray:
        a, b = self.pairs[i]
        E = np.zeros((self.d, self.d))
        E[a, b] = E[b, a] = 1.0
        return E

    # -- pieces of C and the likelihood -----------------------------------
    def ginv_values(self, G0inv: np.ndarray) -> np.ndarray:
        """Values of G⁻¹ = G₀⁻¹ ⊗ K⁻¹ at (rows, cols)."""
        a, b = np.divmod(self.pair_index, self.d)
        return G0inv[a, b] * self.kvals

    def logdet_G(self, G0: np.ndarray) -> float:
        sign, ld = np.linalg.slogdet(G0)
        return self.L * ld + self.d * self.block.logdet_K

    def S(self, cinv_at_slots: np.ndarray) -> np.ndarray:
        """S[a, b] = tr(K⁻¹ Cᵘᵘ[b, a]) from C⁻¹ at this block's G⁻¹ slots."""
        S = np.zeros(self.d * self.d)
        np.add.at(S, self.pair_index, self.sweight * cinv_at_slots)
        S = S.reshape(self.d, self.d)
        return np.tril(S) + np.tril(S, -1).T

    def U(self, u: np.ndarray) -> np.ndarray:
        """The block's BLUPs as a d × L array."""
        return u.reshape(self.d, self.L)

    def Q(self, u: np.ndarray) -> np.ndarray:
        """Q[a, b] = ûₐ' K⁻¹ û_b."""
        U = self.U(u)
        KU = (self.Kinv @ U.T)
        return U @ KU

    def working_variates(self, u: np.ndarray, G0inv: np.ndarray) -> list:
        """wᵢ = Z (Eᵢ G₀⁻¹ ⊗ I) û = Vᵢ P y, one n-vector per parameter."""
        U = self.U(u)
        Z = self.block.Z
        return [Z @ (self.E(i) @ G0inv @ U).ravel() for i in range(self.n_params)]

    def dC_dtheta(self, i: int, G0inv: np.ndarray) -> sp.csr_matrix:
        """∂C/∂θᵢ restricted to the block: −Mᵢ ⊗ K⁻¹ (q × q, full)."""
        M = G0inv @ self.E(i) @ G0inv
        return -sp.kron(sp.csr_matrix(M), self.Kinv, format="csr")


def parse_structure(spec, d: int, group: str) -> int:
    """0 for an unstructured G₀ (the default), k for ``"fa(k)"`` (1 ≤ k < d)."""
    import re
    if spec in (None, "us", "unstructured") or str(spec).strip() == "diag":
        return 0
    m = re.match(r"^\s*fa\s*\(\s*(\d+)\s*\)\s*$", str(spec))
    if not m:
        raise FormulaError(f"structure for {group!r}: {spec!r} is not understood; use "
                           "'fa(k)' or 'diag'")
    k = int(m.group(1))
    if d < 2 or not 1 <= k < d:
        raise FormulaError(f"structure for {group!r}: fa({k}) needs 1 ≤ k < d = {d} terms "
                           "(e.g. (0 + env | gen) with more environments than factors)")
    return k


#: iterations of the principal-factor fit of FA(k) to a G₀ (starting values, EM)
FA_ITERATIONS = 200


def fa_approximation(G0: np.ndarray, k: int) -> tuple:
    """(Λ, ψ) with ΛΛ' + diag(ψ) ≈ G₀ by iterated principal factors; Λ rotated so that
    its upper triangle is 0 (Λ = LQ) and its diagonal ≥ 0. A G₀ without covariances
    gets correlations of 0.5 first (Λ = 0 is a saddle point of the likelihood)."""
    G = np.array(G0, dtype=float)
    dg = np.sqrt(np.maximum(np.diag(G), 1e-300))
    if not np.any(G - np.diag(np.diag(G))):
        G = G + 0.5 * (np.outer(dg, dg) - np.diag(dg ** 2))
    psi = 0.5 * np.diag(G)
    for _ in range(FA_ITERATIONS):
        w, V = np.linalg.eigh(G - np.diag(psi))
        w, V = w[::-1][:k], V[:, ::-1][:, :k]
        Lam = V * np.sqrt(np.maximum(w, 0.0))
        psi = np.maximum(np.diag(G) - np.sum(Lam ** 2, axis=1), 0.01 * np.diag(G))
    # rotate: Λ' = QR → ΛQ = R' is lower triangular
    q, r = np.linalg.qr(Lam.T)
    Lam = Lam @ q
    Lam = Lam * np.where(np.diag(Lam[:k, :k]) < 0, -1.0, 1.0)
    return Lam, psi


def is_positive_definite(G0: np.ndarray, tol: float = 0.0) -> bool:
    """True when the smallest eigenvalue of symmetric G₀ is > tol · its largest (|.|)."""
    w = np.linalg.eigvalsh(G0)
    return w[0] > tol * max(abs(w[-1]), 1e-300)


#: ``variances=`` must give each G₀ with smallest/largest eigenvalue above this
KNOWN_G0_MIN_EIGEN_RATIO = 1e-12


def parse_variances(blocks, variances, residual=None) -> tuple:
    """(list of G₀ per block, R₀ (t × t)) from ``variances=`` as ``mme.fit`` and PCG take it.

    ``{"rep": 0.035, "Residual": 0.044}``; a term with d slopes takes a d × d matrix;
    a structured residual (``model.residual``) takes its t × t R₀ (``us``) or the t
    variances (``diag``/``by``). Every G₀ and R₀ must be symmetric positive definite;
    the errors name the term.
    """
    if not isinstance(variances, dict):
        raise DataError("variances must be a dict such as {'id': 0.5, 'Residual': 1.0}, "
                        f"got {type(variances).__name__}")
    groups = [b.group for b in blocks]
    unknown = sorted(set(variances) - set(groups) - {"Residual"})
    if unknown:
        raise DataError(f"variances: {unknown} are not random terms of the model "
                        f"(its terms: {groups}, and 'Residual')")
    G0s = []
    for b in blocks:
        if getattr(b, "structure", None) and b.group in variances:
            raise DataError(f"variances[{b.group!r}]: known variances of a structured "
                            f"({b.structure}) term are not supported; fit it unstructured")
        if b.group not in variances:
            raise DataError(f"variances: no value for random term {b.group!r} "
                            f"(given: {sorted(variances)})")
        G0s.append(_known_matrix(variances[b.group], b.d, repr(b.group), list(b.terms)))
    if "Residual" not in variances:
        raise DataError("variances: a 'Residual' value is required")
    value = variances["Residual"]
    if residual is not None and residual.kind == "ar1ar1":
        R0 = residual.theta_of(value)                    # (σ², ρ_col, ρ_row) per field
        if not residual.feasible(R0):
            raise DataError("variances['Residual'] of an ar1(col):ar1(row) residual: σ² > 0 "
                            f"and |ρ| < 1 per field, got {R0.tolist()}")
        return G0s, R0
    t = 1 if residual is None else residual.t
    if residual is not None and residual.kind == "diag" and np.ndim(value) == 1:
        value = np.diag(np.asarray(value, dtype=float))
    R0 = _known_matrix(value, t, "'Residual'",
                       list(residual.levels) if residual is not None else [""])
    if residual is not None and residual.kind == "diag" and np.any(R0 != np.diag(np.diag(R0))):
        raise DataError("variances['Residual'] must be diagonal for a by()/diag() residual")
    return G0s, R0


def _known_matrix(value, d: int, name: str, terms: list) -> np.ndarray:
    """A d × d positive-definite matrix (d = 1: a positive number) from ``variances=``."""
    try:
        G0 = np.atleast_2d(np.asarray(value, dtype=float))
    except (TypeError, ValueError) as exc:
        raise DataError(f"variances[{name}] is not numeric: {exc}") from exc
    if G0.shape != (d, d):
        raise DataError(f"variances[{name}] must be {d} × {d} for {terms}, got shape {G0.shape}")
    if not np.all(np.isfinite(G0)) or not np.allclose(G0, G0.T):
        raise DataError(f"variances[{name}] must be finite and symmetric")
    if not is_positive_definite(G0, KNOWN_G0_MIN_EIGEN_RATIO) or np.any(np.diag(G0) <= 0):
        raise DataError(f"variances[{name}] must be > 0 (a {d} × {d} matrix positive "
                        f"definite), got {G0.tolist()}")
    return G0


def ginv_matrix(blocks, G0s: list, p: int = 0) -> sp.csr_matrix:
    """G⁻¹ = blockdiag(0ₚ, G₀₁⁻¹ ⊗ K₁⁻¹, …) (dim × dim, sparse, both triangles).

    With p = 0 only the random part (q × q).
    """
    parts = [sp.kron(sp.csr_matrix(np.linalg.inv(G0)), b.Kinv, format="csr")
             for b, G0 in zip(blocks, G0s)]
    if p:
        parts = [sp.csr_matrix((p, p))] + parts
    if not parts:
        return sp.csr_matrix((p, p))
    return sp.block_diag(parts, format="csr")
