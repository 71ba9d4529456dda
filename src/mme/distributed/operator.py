"""The distributed coefficient matrix of the MME: C V summed over ranks in one Allreduce.

    C V = Σ_r W_r' R_r⁻¹ W_r V  +  G⁻¹ V,      rhs = Σ_r W_r' R_r⁻¹ y_r

R_r⁻¹ is the block of R⁻¹ of rank r's records (block-diagonal over rows of wide
data, which no rank splits: :mod:`mme.distributed.residual`); with R = σ²ₑI it is
the scalar 1/σ²ₑ and no matrix is formed.

Each rank multiplies by its own rows of W (iteration on data: C is never formed,
Schaeffer & Kennedy 1986; the distributed form of BLUPF90's and MiX99's solvers),
G⁻¹V = (⊕ₖ G₀ₖ⁻¹ ⊗ Kₖ⁻¹) V is added either by the owner rank (rank 0, which alone
holds the relationship matrices: ``ginv="root"``) or by every rank for its share of
G⁻¹'s rows (contiguous row blocks of equal nonzeros: ``ginv="split"``, when every
rank has built K⁻¹), and one ``Allreduce`` of a dim × k block sums the parts: one
collective per product, whatever the number of right-hand sides k. With "root",
rank 0 multiplies by W_0 *and* all of G⁻¹ (A⁻¹ has ~5–7 nonzeros per animal, more
than a record's row of W'W), so the others wait for it; "split" balances the work.
"""
from __future__ import annotations

import time

import numpy as np

from .._errors import OptionError
from ..model.covariance import ginv_matrix
from .comm import Communicator
from .design import LocalDesign

__all__ = ["DistributedOperator"]


class DistributedOperator:
    """C·V, the right-hand sides and diag(C) of the MME, from a rank's rows.

    Parameters
    ----------
    design : LocalDesign
    G0s : list of d × d arrays, one per random term
    sigma2_e : float
        σ²ₑ of R = σ²ₑI; with a structured residual or weights, R₀ is given as ``R0``.
    comm : Communicator
    R0 : t × t array, optional
        The residual covariance of ``design.residual`` (scalar σ²ₑ with weights, the
        variances of ``by()``/``diag()``, the traits' R₀ of ``us(trait)``).
    """

    def __init__(self, design: LocalDesign, G0s: list, sigma2_e: float, comm: Communicator,
                 ginv: str = "auto", R0: np.ndarray | None = None):
        self.design, self.comm = design, comm
        self.s2e = float(sigma2_e)
        self.p, self.dim = design.p, design.dim
        self.W = design.W
        self.WT = design.W.T.tocsr()
        #: this rank's block of R⁻¹ (None: R = σ²ₑI, applied as 1/σ²ₑ)
        self.Rinv = None
        if not design.residual.is_scalar:
            with comm.step("R⁻¹ of this rank's records"):
                self.Rinv = design.residual.rinv(
                    np.atleast_2d(self.s2e) if R0 is None else R0, design.n)
        self.G0inv = [np.linalg.inv(G0) for G0 in G0s]
        self.owner = comm.rank == 0
        with comm.step("G⁻¹"):
            have = all(b.Kinv is not None for b in design.blocks)
            if ginv == "auto":
                ginv = "split"
            if ginv not in ("split", "root"):
                raise OptionError(f"ginv must be 'split', 'root' or 'auto', got {ginv!r}")
        every = comm.allgather(have, "which ranks hold K⁻¹")
        if ginv == "split" and not all(every):
            ginv = "root"                  # K⁻¹ on rank 0 only: it applies G⁻¹
        self.ginv = ginv
        self.rows = slice(0, self.dim)     # G⁻¹'s rows this rank multiplies by
        self.Ginv = None
        with comm.step("G⁻¹"):
            if ginv == "root":
                if self.owner:
                    self.Ginv = ginv_matrix(design.blocks, G0s, p=self.p)
                else:
                    self.rows = slice(0, 0)
            else:
                G = ginv_matrix(design.blocks, G0s, p=self.p)
                cuts = np.searchsorted(G.indptr, np.linspace(0, G.nnz, comm.size + 1))
                cuts[0], cuts[-1] = 0, self.dim
                a, b = int(cuts[comm.rank]), int(cuts[comm.rank + 1])
                self.rows = slice(a, max(a, b))
                self.Ginv = G[self.rows]
                del G
        with comm.step("diag(C)"):
            if self.Rinv is None:      # no scaled copy of W (memory at 10⁷ records)
                local = np.asarray(self.W.multiply(self.W).sum(axis=0)).ravel() / self.s2e
            else:
                local = np.asarray(self.W.multiply(self.Rinv @ self.W).sum(axis=0)).ravel()
            if self.Ginv is not None:
                local[self.rows] += self.Ginv[:, self.rows].diagonal()
        self.diag = comm.allreduce(local, "diag(C)")
        self.n_products = 0
        self.seconds_local = 0.0      # this rank's W'W V and G⁻¹V
        self.seconds_reduce = 0.0     # the Allreduce (with waiting for the slowest rank)

    def rinv(self, A):
        """R_r⁻¹ A for this rank's rows A (dense, or sparse: then sparse)."""
        if self.Rinv is None:
            return A * (1.0 / self.s2e)
        return self.Rinv @ A

    def local_product(self, V: np.ndarray) -> np.ndarray:
        """This rank's part of C V (V: dim or dim × k)."""
        if self.Rinv is None:
            out = self.WT @ (self.W @ V)
            out *= 1.0 / self.s2e
        else:
            out = self.WT @ (self.Rinv @ (self.W @ V))
        if self.Ginv is not None:
            out[self.rows] += self.Ginv @ V
        return out

    def matvec(self, V: np.ndarray, what: str = "C·V") -> np.ndarray:
        """C V on every rank (one Allreduce; a rank's failure is shared, not hung on)."""
        failed, local = None, None
        t0 = time.perf_counter()
        try:
            local = self.local_product(V)
        except Exception as exc:        # noqa: BLE001 — shared with the other ranks
            failed = exc
            local = np.zeros(V.shape)
        t1 = time.perf_counter()
        out = self.comm.allreduce(local, what, failed=failed)
        self.n_products += 1
        self.seconds_local += t1 - t0
        self.seconds_reduce += time.perf_counter() - t1
        return out

    def rhs(self, Y: np.ndarray, what: str = "right-hand sides") -> np.ndarray:
        """Σ_r W_r' R_r⁻¹ Y_r for this rank's rows Y_r (n_r or n_r × k)."""
        failed, local = None, None
        shape = (self.dim,) + np.shape(Y)[1:]
        try:
            if self.Rinv is None:      # scale the dim × k result, not the n_r × k Y
                local = np.asarray(self.WT @ Y, dtype=float).reshape(shape) / self.s2e
            else:
                local = np.asarray(self.WT @ (self.Rinv @ np.asarray(Y, dtype=float)),
                                   dtype=float).reshape(shape)
        except Exception as exc:        # noqa: BLE001
            failed, local = exc, np.zeros(shape)
        return self.comm.allreduce(local, what, failed=failed)

    def residuals(self, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """This rank's Y_r − W_r X (records × k)."""
        return Y - self.W @ X

    @property
    def nnz_local(self) -> int:
        """Nonzeros this rank multiplies by per product (W, W' and its rows of G⁻¹)."""
        return int(2 * self.W.nnz + (self.Ginv.nnz if self.Ginv is not None else 0)
                   + (self.Rinv.nnz if self.Rinv is not None else 0))
