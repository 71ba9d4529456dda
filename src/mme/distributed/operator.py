"""The distributed coefficient matrix of the MME: C V summed over ranks in one Allreduce.

    C V = Σ_r W_r' W_r V / σ²ₑ  +  G⁻¹ V,      rhs = Σ_r W_r' y_r / σ²ₑ

Each rank multiplies by its own rows of W (iteration on data: C is never formed,
Schaeffer & Kennedy 1986; the distributed form of BLUPF90's and MiX99's solvers),
the owner rank (rank 0) adds G⁻¹V = (⊕ₖ G₀ₖ⁻¹ ⊗ Kₖ⁻¹) V from the relationship
matrices it alone holds, and one ``Allreduce`` of a dim × k block sums the parts:
one collective per product, whatever the number of right-hand sides k.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

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
    comm : Communicator
    """

    def __init__(self, design: LocalDesign, G0s: list, sigma2_e: float, comm: Communicator):
        self.design, self.comm = design, comm
        self.s2e = float(sigma2_e)
        self.p, self.dim = design.p, design.dim
        self.W = design.W
        self.WT = design.W.T.tocsr()
        self.G0inv = [np.linalg.inv(G0) for G0 in G0s]
        self.owner = comm.rank == 0
        self.Ginv = ginv_matrix(design.blocks, G0s, p=self.p) if self.owner else None
        with comm.step("diag(C)"):
            local = np.asarray(self.W.multiply(self.W).sum(axis=0)).ravel() / self.s2e
            if self.owner:
                local = local + self.Ginv.diagonal()
        self.diag = comm.allreduce(local, "diag(C)")
        self.n_products = 0

    def local_product(self, V: np.ndarray) -> np.ndarray:
        """This rank's part of C V (V: dim or dim × k)."""
        out = self.WT @ (self.W @ V)
        out *= 1.0 / self.s2e
        if self.owner:
            out += self.Ginv @ V
        return out

    def matvec(self, V: np.ndarray, what: str = "C·V") -> np.ndarray:
        """C V on every rank (one Allreduce; a rank's failure is shared, not hung on)."""
        failed, local = None, None
        try:
            local = self.local_product(V)
        except Exception as exc:        # noqa: BLE001 — shared with the other ranks
            failed = exc
            local = np.zeros(V.shape)
        self.n_products += 1
        return self.comm.allreduce(local, what, failed=failed)

    def rhs(self, Y: np.ndarray, what: str = "right-hand sides") -> np.ndarray:
        """Σ_r W_r' Y_r / σ²ₑ for this rank's rows Y_r (n_r or n_r × k)."""
        failed, local = None, None
        shape = (self.dim,) + np.shape(Y)[1:]
        try:
            local = np.asarray(self.WT @ Y, dtype=float).reshape(shape) / self.s2e
        except Exception as exc:        # noqa: BLE001
            failed, local = exc, np.zeros(shape)
        return self.comm.allreduce(local, what, failed=failed)

    def residuals(self, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """This rank's Y_r − W_r X (records × k)."""
        return Y - self.W @ X

    @property
    def nnz_local(self) -> int:
        """Nonzeros this rank multiplies by per product (W, W' and G⁻¹ on the owner)."""
        return int(2 * self.W.nnz + (self.Ginv.nnz if self.Ginv is not None else 0))
