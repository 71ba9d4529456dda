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

from .._errors import DataError
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
        self.pairs = [(a, a) for a in range(d)] + [
            (a, b) for b in range(d) for a in range(b + 1, d)]
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
    def n_params(self) -> int:
        return len(self.pairs)

    # -- parameters -------------------------------------------------------
    def G0(self, theta: np.ndarray) -> np.ndarray:
        """G₀ (d × d) from this block's parameters."""
        G = np.zeros((self.d, self.d))
        for t, (a, b) in zip(theta, self.pairs):
            G[a, b] = G[b, a] = t
        return G

    def theta_of(self, G0: np.ndarray) -> np.ndarray:
        return np.array([G0[a, b] for a, b in self.pairs])

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
        if b.group not in variances:
            raise DataError(f"variances: no value for random term {b.group!r} "
                            f"(given: {sorted(variances)})")
        G0s.append(_known_matrix(variances[b.group], b.d, repr(b.group), list(b.terms)))
    if "Residual" not in variances:
        raise DataError("variances: a 'Residual' value is required")
    t = 1 if residual is None else residual.t
    value = variances["Residual"]
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
